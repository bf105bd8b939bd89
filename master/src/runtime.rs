//! The master's script runtime: the main Lua state, and the `goroutine` functions
//! that capture closures and hand them to [`crate::dispatch`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{AnyUserData, Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LV};
use parking_lot::Mutex;
use sloth_lua::cancel::CancelToken;
use sloth_lua::capture::{self, Encoder};
use sloth_lua::context::{parse_duration, TaskContext, TaskIo};
use sloth_lua::executor;
use sloth_lua::protect::wrap_errors;
use sloth_lua::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::data::Data;
use sloth_proto::graph::{Graph, SharedKind, SharedRef, Value};
use sloth_proto::protocol::LogLevel;

use crate::dispatch::{self, TaskOpts};
use crate::inventory::Inventory;
use crate::mesh::Mesh;
use crate::objects::Object;
use crate::output::Output;
use crate::registry::{self, Caller, MasterBackend, Outcome, Registry, TaskRecord};

pub struct Runtime {
    pub handle: tokio::runtime::Handle,
    pub registry: Arc<Registry>,
    pub mesh: Option<Arc<Mesh>>,
    /// The hosts this run may reach (after --limit).
    pub inventory: Inventory,
    pub out: Arc<Output>,
    pub local_memory_limit: Option<usize>,
    /// The threads local tasks run on.
    pub runner: sloth_lua::runner::Runner,
    vars_cache: Mutex<HashMap<String, Graph>>,
}

impl Runtime {
    pub fn new(
        handle: tokio::runtime::Handle,
        mesh: Option<Arc<Mesh>>,
        inventory: Inventory,
        out: Arc<Output>,
    ) -> Arc<Runtime> {
        let registry = Registry::new();
        let rt = Arc::new(Runtime {
            handle,
            registry: registry.clone(),
            mesh,
            inventory,
            out: out.clone(),
            local_memory_limit: Some(1 << 30),
            // As many threads as local tasks may block at once; an idle one watches for
            // the next task for 200 µs before sleeping (sequential awaits find it awake).
            runner: sloth_lua::runner::Runner::new(
                "sloth-local",
                4096,
                Duration::from_micros(200),
                Duration::from_secs(10),
            ),
            vars_cache: Mutex::new(HashMap::new()),
        });
        registry.on_done(move |rec, o| {
            out.record(rec, o);
            if let Err(e) = &o.result {
                if rec.spawned {
                    out.unawaited_failure(&format!(
                        "{} ({})",
                        e.display_for(&rec.host()),
                        rec.name
                    ));
                }
            }
        });
        rt
    }

    /// The inventory vars of `host` as a graph (cached).
    pub fn host_vars(&self, host: &str) -> Graph {
        let mut cache = self.vars_cache.lock();
        if let Some(g) = cache.get(host) {
            return g.clone();
        }
        let mut g = Graph::default();
        let root = match self.inventory.get(host) {
            Some(h) => toml_table(&mut g, &h.vars),
            None => g.push_table(Vec::new()),
        };
        g.roots.push(root);
        cache.insert(host.to_string(), g.clone());
        g
    }

    /// Wait for every task still running (spawned ones, and asyncs nobody awaited).
    pub fn wait_unfinished(&self) {
        let running = self.registry.running();
        if running.is_empty() {
            return;
        }
        self.out.script_log(
            LogLevel::Info,
            &format!("waiting for {} unfinished task(s)...", running.len()),
        );
        for r in running {
            r.wait(None, None);
        }
    }
}

fn toml_value(g: &mut Graph, v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Str(s.as_bytes().to_vec()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Str(d.to_string().into_bytes()),
        toml::Value::Array(a) => {
            let entries = a
                .iter()
                .enumerate()
                .map(|(i, x)| (Value::Int(i as i64 + 1), toml_value(g, x)))
                .collect();
            g.push_table(entries)
        }
        toml::Value::Table(t) => toml_table(g, t),
    }
}

fn toml_table(g: &mut Graph, t: &toml::Table) -> Value {
    let entries = t
        .iter()
        .map(|(k, v)| (Value::Str(k.as_bytes().to_vec()), toml_value(g, v)))
        .collect();
    g.push_table(entries)
}

/// `print` and `log` of the main script.
struct MainIo {
    out: Arc<Output>,
    backend: Arc<dyn SharedBackend>,
}

impl TaskIo for MainIo {
    fn log(&self, level: LogLevel, line: &str) {
        self.out.script_log(level, line);
    }
    fn backend(&self) -> Arc<dyn SharedBackend> {
        self.backend.clone()
    }
}

/// Run a script file to completion in a new main state.
pub fn run_script(rt: &Arc<Runtime>, path: &Path, vars: &[(String, String)]) -> Result<(), String> {
    let code = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "script".into());
    let lua = main_state(rt, vars).map_err(|e| format!("setting up the script state: {e}"))?;
    lua.load(code)
        .set_name(format!("@{name}"))
        .exec()
        .map_err(|e| executor::error_text(&e))
}

/// The main state: task modules, then the master-only functions, then the codec.
pub fn main_state(rt: &Arc<Runtime>, vars: &[(String, String)]) -> mlua::Result<Lua> {
    // SAFETY: see executor::new_state; the debug library reads closures' upvalues.
    let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new()) };
    let caller = Caller {
        task: None,
        cancel: CancelToken::new(None),
    };
    let backend: Arc<dyn SharedBackend> = Arc::new(MasterBackend {
        registry: rt.registry.clone(),
        caller: caller.clone(),
    });
    let ctx = TaskContext {
        host: "master".into(),
        task_name: "main".into(),
        io: Arc::new(MainIo {
            out: rt.out.clone(),
            backend: backend.clone(),
        }),
        cancel: caller.cancel.clone(),
    };
    sloth_modules::install_task_modules(&lua)?;
    let g = lua.globals();
    let goroutine: Table = g.raw_get("goroutine")?;
    install_goroutine(&lua, &goroutine, rt.clone(), backend.clone())?;
    crate::fleet::install(&lua, rt.clone())?;
    // The original project's task DSL, written in Lua on top of goroutine.
    lua.load(include_str!("lua/dsl.lua"))
        .set_name("=sloth-dsl")
        .exec()?;
    // The task modules, and the master's own: their errors reach scripts as plain strings.
    wrap_errors(&lua, sloth_modules::MODULES)?;
    wrap_errors(&lua, &["fleet", "artifact"])?;
    sloth_lua::shared_obj::install_methods(&lua)?;
    capture::install(&lua, backend)?;
    lua.set_app_data(ctx);
    let v = lua.create_table()?;
    for (k, val) in vars {
        v.raw_set(k.as_str(), val.as_str())?;
    }
    g.raw_set("vars", v)?;
    let host = lua.create_table()?;
    host.raw_set("name", "master")?;
    host.raw_set("vars", lua.create_table()?)?;
    g.raw_set("host", host)?;
    Ok(lua)
}

/// A Lua runtime error with this message.
pub fn rt_err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

/// Parse an options table (`delegate_to`, `timeout`, `retries`, `retry_errors`, `name`).
pub fn parse_opts(rt: &Runtime, opts: Option<&Table>, what: &str) -> mlua::Result<TaskOpts> {
    let o = TaskOpts::default();
    let Some(t) = opts else { return Ok(o) };
    check_keys(
        t,
        &["delegate_to", "timeout", "retries", "retry_errors", "name"],
        what,
    )?;
    parse_opts_checked(rt, t, what, o)
}

/// Refuse option tables with keys other than `known` (a typo must not be ignored).
pub fn check_keys(t: &Table, known: &[&str], what: &str) -> mlua::Result<()> {
    for pair in t.pairs::<LV, LV>() {
        let (k, _) = pair?;
        match &k {
            LV::String(s) if known.contains(&s.to_string_lossy().as_str()) => {}
            other => {
                return Err(rt_err(format!(
                    "{what}: unknown option {} (known: {})",
                    other.to_string().unwrap_or_default(),
                    known.join(", ")
                )))
            }
        }
    }
    Ok(())
}

fn parse_opts_checked(
    rt: &Runtime,
    t: &Table,
    what: &str,
    mut o: TaskOpts,
) -> mlua::Result<TaskOpts> {
    let target: LV = t.raw_get("delegate_to")?;
    match target {
        LV::Nil => {}
        LV::String(s) => {
            let pattern = s.to_string_lossy().to_string();
            o.target = Some(
                rt.inventory
                    .resolve_one(&pattern)
                    .map_err(|e| rt_err(format!("{what}: delegate_to: {e}")))?,
            );
        }
        other => {
            return Err(rt_err(format!(
                "{what}: delegate_to must be a host name, got {}",
                other.type_name()
            )))
        }
    }
    o.timeout = parse_duration(&t.raw_get::<LV>("timeout")?)
        .map_err(|e| rt_err(format!("{what}: timeout: {e}")))?;
    o.retries = match t.raw_get::<LV>("retries")? {
        LV::Nil => 0,
        LV::Integer(i) if i >= 0 => i as u32,
        _ => {
            return Err(rt_err(format!(
                "{what}: retries must be a non-negative integer"
            )))
        }
    };
    o.retry_errors = t.raw_get::<Option<bool>>("retry_errors")?.unwrap_or(false);
    o.name = t.raw_get::<Option<String>>("name")?;
    Ok(o)
}

/// Capture `f` (and `args`) at the call site; errors name the variable and target.
pub fn capture_call(
    lua: &Lua,
    f: &Function,
    args: &[LV],
    what: &str,
    opts: &TaskOpts,
) -> mlua::Result<Graph> {
    let target = opts.target.as_deref().unwrap_or(dispatch::LOCAL);
    let mut enc = Encoder::new(lua);
    let fail = |e: capture::CaptureError| rt_err(format!("{what}: {e} to {target}"));
    enc.push_function_root(f).map_err(fail)?;
    for (i, a) in args.iter().enumerate() {
        enc.push_root(a, &format!("argument #{}", i + 1))
            .map_err(fail)?;
    }
    enc.push_script_globals().map_err(fail)?;
    Ok(enc.finish())
}

fn handle_ud(
    lua: &Lua,
    backend: &Arc<dyn SharedBackend>,
    rec: &TaskRecord,
) -> mlua::Result<AnyUserData> {
    lua.create_userdata(SharedObj::new(
        SharedRef {
            kind: SharedKind::Handle,
            id: rec.id,
        },
        backend.clone(),
    ))
}

/// The task record behind a handle argument.
pub fn handle_arg(rt: &Runtime, v: &LV, what: &str) -> mlua::Result<Arc<TaskRecord>> {
    let err = || {
        rt_err(format!(
            "{what}: expected a task handle, got {}",
            v.type_name()
        ))
    };
    let LV::UserData(ud) = v else {
        return Err(err());
    };
    let obj = ud.borrow::<SharedObj>().map_err(|_| err())?;
    if obj.r.kind != SharedKind::Handle {
        return Err(err());
    }
    rt.registry.task(obj.r.id).ok_or_else(err)
}

/// One `await_all`-shaped result table.
pub fn result_table(lua: &Lua, rec: &TaskRecord, o: Option<&Outcome>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("host", rec.host().as_str())?;
    t.raw_set("name", rec.name.as_str())?;
    t.raw_set("id", rec.id)?;
    match o {
        Some(o) => {
            t.raw_set("duration_ms", o.duration.as_millis() as u64)?;
            match &o.result {
                Ok(g) => {
                    t.raw_set("success", true)?;
                    let values = lua.create_sequence_from(capture::restore_data(lua, g)?)?;
                    t.raw_set("values", values)?;
                }
                Err(e) => {
                    t.raw_set("success", false)?;
                    t.raw_set("error", e.display_for(&rec.host()))?;
                    t.raw_set("kind", e.kind.as_str())?;
                }
            }
        }
        None => {
            t.raw_set("success", false)?;
            t.raw_set("duration_ms", rec.elapsed().as_millis() as u64)?;
            t.raw_set(
                "error",
                format!(
                    "timeout exceeded: {}: not finished when the wait ended (still running)",
                    rec.host()
                ),
            )?;
            t.raw_set("kind", "timeout")?;
        }
    }
    Ok(t)
}

fn install_goroutine(
    lua: &Lua,
    g: &Table,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    let main_caller = Caller {
        task: None,
        cancel: CancelToken::new(None),
    };
    {
        let (rt, backend) = (rt.clone(), backend.clone());
        g.raw_set(
            "async",
            lua.create_function(move |lua, (f, opts): (Function, Option<Table>)| {
                let opts = parse_opts(&rt, opts.as_ref(), "goroutine.async")?;
                let payload = capture_call(lua, &f, &[], "goroutine.async", &opts)?;
                let rec = dispatch::start(&rt, payload, &opts);
                handle_ud(lua, &backend, &rec)
            })?,
        )?;
    }
    {
        let (rt, caller) = (rt.clone(), main_caller.clone());
        g.raw_set(
            "await",
            lua.create_function(move |lua, (h, timeout): (LV, LV)| {
                let rec = handle_arg(&rt, &h, "goroutine.await")?;
                let args = Data::scalars(vec![duration_value(&timeout, "goroutine.await")?]);
                let out = registry::call(
                    &rt.registry,
                    &caller,
                    SharedRef {
                        kind: SharedKind::Handle,
                        id: rec.id,
                    },
                    "await",
                    args,
                )
                .map_err(rt_err)?;
                Ok(MultiValue::from_iter(capture::restore_data(lua, &out)?))
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        g.raw_set(
            "await_all",
            lua.create_function(move |lua, (hs, timeout): (Table, LV)| {
                let (recs, deadline) =
                    handles_and_deadline(&rt, &hs, &timeout, "goroutine.await_all")?;
                let out = lua.create_table()?;
                let progress = rt.out.progress(recs.len() as u64, "await_all");
                let mut outcomes = vec![None; recs.len()];
                // Wait in completion order so the bar moves as tasks finish.
                loop {
                    let seen = rt.registry.done_count();
                    let mut pending = 0;
                    for (i, rec) in recs.iter().enumerate() {
                        if outcomes[i].is_none() {
                            outcomes[i] = rec.outcome();
                            if outcomes[i].is_none() {
                                pending += 1;
                            }
                        }
                    }
                    progress.set((recs.len() - pending) as u64);
                    if pending == 0 || !wait_for_progress(&rt, seen, deadline) {
                        break;
                    }
                }
                drop(progress);
                for (i, rec) in recs.iter().enumerate() {
                    out.raw_set(i + 1, result_table(lua, rec, outcomes[i].as_ref())?)?;
                }
                Ok(out)
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        g.raw_set(
            "await_any",
            lua.create_function(move |lua, (hs, timeout): (Table, LV)| {
                let (recs, deadline) =
                    handles_and_deadline(&rt, &hs, &timeout, "goroutine.await_any")?;
                if recs.is_empty() {
                    return Err(rt_err("goroutine.await_any: no handles given"));
                }
                loop {
                    let seen = rt.registry.done_count();
                    for (i, rec) in recs.iter().enumerate() {
                        if let Some(o) = rec.outcome() {
                            let g = registry::outcome_graph(rec, &o);
                            let mut vals = vec![LV::Integer(i as i64 + 1)];
                            vals.extend(capture::restore_data(lua, &g)?);
                            return Ok(MultiValue::from_iter(vals));
                        }
                    }
                    if !wait_for_progress(&rt, seen, deadline) {
                        return Ok(MultiValue::from_iter([
                            LV::Nil,
                            LV::Boolean(false),
                            LV::String(lua.create_string(
                                "timeout exceeded: await_any: no task finished in time",
                            )?),
                        ]));
                    }
                }
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        g.raw_set(
            "spawn",
            lua.create_function(move |lua, (f, opts): (Function, Option<Table>)| {
                let opts = parse_opts(&rt, opts.as_ref(), "goroutine.spawn")?;
                let payload = capture_call(lua, &f, &[], "goroutine.spawn", &opts)?;
                spawn_task(&rt, payload, &opts);
                Ok(())
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        g.raw_set(
            "spawn_many",
            lua.create_function(move |lua, (n, f, opts): (i64, Function, Option<Table>)| {
                let opts = parse_opts(&rt, opts.as_ref(), "goroutine.spawn_many")?;
                for id in 1..=n.max(0) {
                    let payload =
                        capture_call(lua, &f, &[LV::Integer(id)], "goroutine.spawn_many", &opts)?;
                    spawn_task(&rt, payload, &opts);
                }
                Ok(())
            })?,
        )?;
    }
    {
        let (rt, caller) = (rt.clone(), main_caller.clone());
        g.raw_set(
            "timeout",
            lua.create_function(move |lua, (ms, f, opts): (LV, Function, Option<Table>)| {
                let mut o = parse_opts(&rt, opts.as_ref(), "goroutine.timeout")?;
                o.timeout = Some(
                    parse_duration(&ms)
                        .map_err(|e| rt_err(format!("goroutine.timeout: {e}")))?
                        .ok_or_else(|| rt_err("goroutine.timeout: a time limit is required"))?,
                );
                let payload = capture_call(lua, &f, &[], "goroutine.timeout", &o)?;
                let rec = dispatch::start(&rt, payload, &o);
                let out = registry::call(
                    &rt.registry,
                    &caller,
                    SharedRef {
                        kind: SharedKind::Handle,
                        id: rec.id,
                    },
                    "await",
                    Data::default(),
                )
                .map_err(rt_err)?;
                Ok(MultiValue::from_iter(capture::restore_data(lua, &out)?))
            })?,
        )?;
    }
    let object_ctor =
        |name: &'static str, make: fn(i64) -> Result<Object, String>| -> mlua::Result<()> {
            let (rt, backend) = (rt.clone(), backend.clone());
            g.raw_set(
                name,
                lua.create_function(move |lua, n: Option<i64>| {
                    let obj = make(n.unwrap_or(i64::MIN))
                        .map_err(|e| rt_err(format!("goroutine.{name}: {e}")))?;
                    let r = rt.registry.add_object(obj);
                    lua.create_userdata(SharedObj::new(r, backend.clone()))
                })?,
            )
        };
    object_ctor("channel", |n| {
        let cap = if n == i64::MIN { 0 } else { n };
        if cap < 0 {
            return Err(format!("capacity must be >= 0, got {cap}"));
        }
        Ok(Object::channel(cap as usize))
    })?;
    object_ctor("wait_group", |_| Ok(Object::wait_group()))?;
    object_ctor("mutex", |_| Ok(Object::mutex()))?;
    object_ctor("once", |_| Ok(Object::once()))?;
    object_ctor("semaphore", |n| {
        if n == i64::MIN || n < 1 {
            return Err("the number of permits must be >= 1".into());
        }
        Ok(Object::semaphore(n))
    })?;
    object_ctor("atomic_int", |n| {
        Ok(Object::atomic(if n == i64::MIN { 0 } else { n }))
    })?;
    install_artifact(lua, rt.clone(), backend.clone())?;
    crate::pools::install(lua, g, rt, backend)?;
    Ok(())
}

/// A duration option (ms number or "30s" string) as a Rust error string.
pub fn parse_duration_opt(v: &LV) -> Result<Option<Duration>, String> {
    parse_duration(v)
}

fn duration_value(v: &LV, what: &str) -> mlua::Result<Value> {
    Ok(
        match parse_duration(v).map_err(|e| rt_err(format!("{what}: {e}")))? {
            Some(d) => Value::Int(d.as_millis() as i64),
            None => Value::Nil,
        },
    )
}

/// `artifact.file(path)` and `artifact.bytes(s [, name])` (master only).
fn install_artifact(
    lua: &Lua,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    use crate::objects::{Artifact, ArtifactSource};
    use sloth_lua::artifact::{hash_bytes, hash_file};
    let t = lua.create_table()?;
    {
        let (rt, backend) = (rt.clone(), backend.clone());
        t.raw_set(
            "file",
            lua.create_function(move |lua, path: String| {
                let p = std::path::PathBuf::from(&path);
                let (sha256, size) = match hash_file(&p) {
                    Ok(x) => x,
                    Err(e) => return Ok((LV::Nil, Some(format!("artifact.file: {path}: {e}")))),
                };
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or(path.clone());
                let r = rt.registry.add_object(Object::Artifact(Artifact {
                    name,
                    sha256,
                    size,
                    source: ArtifactSource::File(p),
                }));
                Ok((
                    LV::UserData(lua.create_userdata(SharedObj::new(r, backend.clone()))?),
                    None,
                ))
            })?,
        )?;
    }
    t.raw_set(
        "bytes",
        lua.create_function(
            move |lua, (data, name): (mlua::LuaString, Option<String>)| {
                let bytes = data.as_bytes().to_vec();
                let r = rt.registry.add_object(Object::Artifact(Artifact {
                    name: name.unwrap_or_else(|| "bytes".into()),
                    sha256: hash_bytes(&bytes),
                    size: bytes.len() as u64,
                    source: ArtifactSource::Bytes(bytes),
                }));
                lua.create_userdata(SharedObj::new(r, backend.clone()))
            },
        )?,
    )?;
    lua.globals().raw_set("artifact", t)
}

/// Wait until some task finishes after `seen` (or 100 ms pass); `false` once the
/// deadline has passed.
fn wait_for_progress(rt: &Runtime, seen: u64, deadline: Option<Instant>) -> bool {
    let now = Instant::now();
    if deadline.is_some_and(|d| now >= d) {
        return false;
    }
    let mut until = now + Duration::from_millis(100);
    if let Some(d) = deadline {
        until = until.min(d);
    }
    rt.registry.wait_any_done(seen, until);
    true
}

/// The handles of a table and the deadline of an optional timeout (await_all/await_any).
fn handles_and_deadline(
    rt: &Runtime,
    hs: &Table,
    timeout: &LV,
    what: &str,
) -> mlua::Result<(Vec<Arc<TaskRecord>>, Option<Instant>)> {
    let timeout = parse_duration(timeout).map_err(|e| rt_err(format!("{what}: {e}")))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    Ok((handles_of(rt, hs, what)?, deadline))
}

fn handles_of(rt: &Runtime, hs: &Table, what: &str) -> mlua::Result<Vec<Arc<TaskRecord>>> {
    let n = hs.raw_len();
    (1..=n)
        .map(|i| handle_arg(rt, &hs.raw_get::<LV>(i)?, &format!("{what}: element #{i}")))
        .collect()
}

/// Start a fire-and-forget task: its failure is printed with its host and counted.
pub fn spawn_task(rt: &Arc<Runtime>, payload: Graph, opts: &TaskOpts) {
    let opts = TaskOpts {
        spawned: true,
        ..opts.clone()
    };
    dispatch::start(rt, payload, &opts);
}
