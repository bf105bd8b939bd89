//! `net.tcp_check(host, port [, timeout_ms])` → `true, latency_ms` when a TCP
//! connection opens, `false, err` otherwise. The timeout (default 3000 ms, also a
//! string like `"2s"`) covers name resolution and connecting, and is capped by the
//! task's deadline; a stopped task raises.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaString, MultiValue, Table, Value as LV};

use super::exec::os_reason;
use super::http::run_cancellable;
use super::{stop_to_lua, task_ctx};
use sloth_lua::context::parse_duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "tcp_check",
        lua.create_function(|lua, (host, port, timeout): (LuaString, i64, LV)| {
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| mlua::Error::runtime(format!("net.tcp_check: bad port {port}")))?;
            let mut timeout = parse_duration(&timeout)
                .map_err(|e| mlua::Error::runtime(format!("net.tcp_check: timeout: {e}")))?
                .unwrap_or(DEFAULT_TIMEOUT);
            let ctx = task_ctx(lua)?;
            if let Some(rem) = ctx.cancel.remaining() {
                timeout = timeout.min(rem);
            }
            let host = host.to_str()?.to_string();
            let what = format!("{host}:{port}");
            let outcome =
                run_cancellable(&ctx.cancel, "sloth-tcp-check", Some(timeout), move || {
                    check(&host, port, timeout)
                });
            let res = match outcome {
                Err(r) => return Err(stop_to_lua(r)),
                Ok(Err(msg)) | Ok(Ok(Err(msg))) => Err(msg),
                Ok(Ok(Ok(latency))) => Ok(latency),
            };
            Ok(match res {
                Ok(latency) => MultiValue::from_vec(vec![
                    LV::Boolean(true),
                    LV::Number(latency.as_secs_f64() * 1000.0),
                ]),
                Err(msg) => MultiValue::from_vec(vec![
                    LV::Boolean(false),
                    LV::String(lua.create_string(format!("net.tcp_check: {what}: {msg}"))?),
                ]),
            })
        })?,
    )?;
    g.raw_set("net", t)
}

/// Resolve and connect; the latency of the successful connect.
fn check(host: &str, port: u16, timeout: Duration) -> Result<Duration, String> {
    if timeout.is_zero() {
        return Err("timed out".into());
    }
    let until = Instant::now() + timeout;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {}", os_reason(&e)))?
        .collect();
    if addrs.is_empty() {
        return Err("cannot resolve: no addresses".into());
    }
    let mut last = String::from("timed out");
    for addr in addrs {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let start = Instant::now();
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let latency = start.elapsed();
                let _ = s.shutdown(std::net::Shutdown::Both);
                return Ok(latency);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = "timed out".into(),
            Err(e) => last = os_reason(&e),
        }
    }
    Err(last)
}
