//! `http`: a blocking HTTP/1.1 client (ureq with rustls and webpki roots; no OpenSSL).
//!
//! - `http.get(url [, opts])`
//! - `http.post(url, body [, opts])` (a table body is sent as JSON)
//! - `http.request{method, url, body, headers, timeout, ...}`
//!
//! Options: `headers` (table of name → value), `timeout` (ms or `"30s"`, default 30 s,
//! capped by the task's deadline), `insecure` (skip TLS certificate verification),
//! `max_body` (bytes of response body kept, default 64 MiB; more is an error),
//! `follow_redirects` (default true), `read_only` (the request changes nothing: it is
//! sent in check mode too).
//!
//! In check mode a task's requests other than GET, HEAD and OPTIONS are not sent
//! (unless `read_only`): they return `{skipped = true, check_mode = true, ok = true,
//! body = "", headers = {}, duration_ms = 0}` (no `status`).
//!
//! Returns `{status, body, headers, ok, duration_ms}` (`ok`: status is 2xx; header
//! names lowercased, repeated headers joined with ", "), or `nil, err` when the request
//! could not be made (connection refused, DNS, TLS, timeout). A non-2xx status is data.
//! The request runs on a helper thread; when the task is stopped the call raises at
//! once and the thread is left to finish on its own timeout.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, LuaString, MultiValue, Table, Value as LV};
use ureq::http;

use super::{stop_to_lua, task_ctx};
use sloth_lua::cancel::{CancelToken, StopReason};
use sloth_lua::opts::Opts;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;
/// How often a waiting call checks the task's stop token.
const POLL: Duration = Duration::from_millis(20);

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "get",
        lua.create_function(|lua, (url, opts): (LuaString, Option<Table>)| {
            let mut o = Opts::of(lua, "http.get", opts)?;
            let req = Req::from_opts(lua, "http.get", "GET", &url, None, &mut o)?;
            o.finish()?;
            perform(lua, req)
        })?,
    )?;
    t.raw_set(
        "post",
        lua.create_function(|lua, (url, body, opts): (LuaString, LV, Option<Table>)| {
            let mut o = Opts::of(lua, "http.post", opts)?;
            let req = Req::from_opts(lua, "http.post", "POST", &url, Some(body), &mut o)?;
            o.finish()?;
            perform(lua, req)
        })?,
    )?;
    t.raw_set(
        "request",
        lua.create_function(|lua, spec: Table| {
            let mut o = Opts::new("http.request", spec);
            let method = o
                .string("method")?
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            let url: LuaString = match o.value("url")? {
                LV::String(s) => s,
                other => {
                    return Err(o.error(
                        "url",
                        format!("must be a string, got {}", other.type_name()),
                    ))
                }
            };
            let body = o.value("body")?;
            let body = (!body.is_nil()).then_some(body);
            let req = Req::from_opts(lua, "http.request", &method, &url, body, &mut o)?;
            o.finish()?;
            perform(lua, req)
        })?,
    )?;
    g.raw_set("http", t)
}

/// Run `f` on a helper thread and wait for it, checking `cancel` every [`POLL`].
/// On a stop the thread is abandoned (it must end on its own) and the reason returned;
/// past `limit` (a backstop for calls that cannot time out themselves, like name
/// resolution) it is abandoned too and the result is the error "timed out".
pub(crate) fn run_cancellable<T, F>(
    cancel: &CancelToken,
    name: &str,
    limit: Option<Duration>,
    f: F,
) -> Result<Result<T, String>, StopReason>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if let Some(r) = cancel.stopped() {
        return Err(r);
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Ok(Err(format!("starting a helper thread: {e}")));
    }
    let until = limit.map(|l| Instant::now() + l);
    loop {
        match rx.recv_timeout(POLL) {
            Ok(v) => return Ok(Ok(v)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(Err("the helper thread failed".into()))
            }
        }
        if let Some(r) = cancel.stopped() {
            return Err(r);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Ok(Err("timed out".into()));
        }
    }
}

struct Req {
    fname: &'static str,
    method: String,
    url: String,
    body: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    insecure: bool,
    max_body: u64,
    /// `max_body` was lowered to what the task's memory limit leaves.
    max_body_is_memory: bool,
    follow_redirects: bool,
    /// The request changes nothing on the server: it runs in check mode too.
    read_only: bool,
}

struct Resp {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Req {
    fn from_opts(
        lua: &Lua,
        fname: &'static str,
        method: &str,
        url: &LuaString,
        body: Option<LV>,
        o: &mut Opts,
    ) -> mlua::Result<Req> {
        let err = |m: String| mlua::Error::runtime(format!("{fname}: {m}"));
        let mut headers = Vec::new();
        let mut json_body = false;
        let body = match body {
            None | Some(LV::Nil) => None,
            Some(LV::String(s)) => Some(s.as_bytes().to_vec()),
            Some(v @ LV::Table(_)) => {
                let j: serde_json::Value = lua
                    .from_value(v)
                    .map_err(|e| err(format!("body table cannot be sent as JSON: {e}")))?;
                json_body = true;
                Some(
                    serde_json::to_vec(&j)
                        .map_err(|e| err(format!("body cannot be sent as JSON: {e}")))?,
                )
            }
            Some(other) => {
                return Err(err(format!(
                    "body must be a string or a table, got {}",
                    other.type_name()
                )))
            }
        };
        if let Some(h) = o.table("headers")? {
            for pair in h.pairs::<String, LV>() {
                let (k, v) = pair?;
                let v = match v {
                    LV::String(s) => s.to_str()?.to_string(),
                    LV::Integer(i) => i.to_string(),
                    LV::Number(n) => n.to_string(),
                    LV::Boolean(b) => b.to_string(),
                    other => {
                        return Err(o.error(
                            "headers",
                            format!("'{k}' must be a string, got {}", other.type_name()),
                        ))
                    }
                };
                headers.push((k, v));
            }
        }
        let timeout = o.duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
        let insecure = o.bool("insecure")?.unwrap_or(false);
        let follow_redirects = o.bool("follow_redirects")?.unwrap_or(true);
        let max_body = match o.int("max_body")? {
            None => DEFAULT_MAX_BODY,
            Some(m) if m >= 0 => m as u64,
            Some(m) => return Err(o.error("max_body", format!("must be >= 0, got {m}"))),
        };
        let read_only = o.bool("read_only")?.unwrap_or(false);
        if json_body
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        Ok(Req {
            fname,
            method: method.to_string(),
            url: url.to_str()?.to_string(),
            body,
            headers,
            timeout,
            insecure,
            max_body,
            max_body_is_memory: false,
            follow_redirects,
            read_only,
        })
    }

    /// Perform the request (blocking). Errors are messages without the function name.
    fn send(self) -> Result<Resp, String> {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(self.insecure)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .tls_config(tls)
            .max_redirects(if self.follow_redirects { 10 } else { 0 })
            .allow_non_standard_methods(true)
            .user_agent(concat!("sloth/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let method = http::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("bad method '{}'", self.method))?;
        let mut b = http::Request::builder().method(method).uri(&self.url);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let res = match self.body {
            Some(body) => b.body(body).map(|r| agent.run(r)),
            None => b.body(()).map(|r| agent.run(r)),
        };
        let mut resp = match res {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(describe(&e)),
            Err(e) => return Err(format!("bad request: {e}")),
        };
        let status = resp.status().as_u16();
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in resp.headers() {
            let v = String::from_utf8_lossy(value.as_bytes()).to_string();
            match headers.iter_mut().find(|(k, _)| k == name.as_str()) {
                Some((_, existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&v);
                }
                None => headers.push((name.as_str().to_string(), v)),
            }
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(n) if self.max_body_is_memory => format!(
                    "reading the response body: larger than the {n} bytes the task's memory limit leaves"
                ),
                e => format!("reading the response body: {}", describe(&e)),
            })?;
        Ok(Resp {
            status,
            body,
            headers,
        })
    }
}

/// A readable message for a ureq error.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::Io(io) => super::exec::os_reason(io),
        ureq::Error::BodyExceedsLimit(n) => format!("response body larger than {n} bytes"),
        other => other.to_string(),
    }
}

fn perform(lua: &Lua, mut req: Req) -> mlua::Result<MultiValue> {
    let ctx = task_ctx(lua)?;
    let safe = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if ctx.mode.check && !ctx.orchestrator && !safe && !req.read_only {
        // Check mode: a request that may change something on the server is not sent.
        ctx.io.log(
            sloth_proto::protocol::LogLevel::Info,
            &format!("check mode: not sending: {} {}", req.method, req.url),
        );
        let t = lua.create_table()?;
        t.raw_set("skipped", true)?;
        t.raw_set("check_mode", true)?;
        t.raw_set("ok", true)?;
        t.raw_set("body", "")?;
        t.raw_set("headers", lua.create_table()?)?;
        t.raw_set("duration_ms", 0)?;
        return Ok(MultiValue::from_vec(vec![LV::Table(t)]));
    }
    if let Some(rem) = ctx.cancel.remaining() {
        req.timeout = req.timeout.min(rem.max(Duration::from_millis(1)));
    }
    if let Some(left) = sloth_lua::context::memory_left(lua).map(|m| m as u64) {
        if left < req.max_body {
            req.max_body = left;
            req.max_body_is_memory = true;
        }
    }
    let fname = req.fname;
    let url = req.url.clone();
    // ureq enforces the timeout itself; the backstop only covers what it cannot
    // interrupt (a hanging name lookup).
    let limit = req.timeout + Duration::from_millis(500);
    let start = Instant::now();
    let outcome = run_cancellable(&ctx.cancel, "sloth-http", Some(limit), move || req.send());
    let res = match outcome {
        Err(r) => return Err(stop_to_lua(r)),
        Ok(Err(msg)) | Ok(Ok(Err(msg))) => {
            return Ok(MultiValue::from_vec(vec![
                LV::Nil,
                LV::String(lua.create_string(format!("{fname}: {url}: {msg}"))?),
            ]))
        }
        Ok(Ok(Ok(r))) => r,
    };
    let t = lua.create_table()?;
    t.raw_set("status", res.status)?;
    t.raw_set("ok", (200..300).contains(&res.status))?;
    t.raw_set("body", lua.create_string(&res.body)?)?;
    let h = lua.create_table()?;
    for (k, v) in res.headers {
        h.raw_set(k, v)?;
    }
    t.raw_set("headers", h)?;
    t.raw_set("duration_ms", start.elapsed().as_millis() as i64)?;
    Ok(MultiValue::from_vec(vec![LV::Table(t)]))
}
