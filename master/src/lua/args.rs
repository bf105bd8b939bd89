//! Argument helpers of the master's Lua functions: option tables (checked keys,
//! `delegate_to`, `timeout`, `retries`), capturing a call at its call site, task
//! handles, result tables and waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{AnyUserData, Function, Lua, Table, Value as LV};
use sloth_lua::capture::{self, Encoder};
use sloth_lua::context::parse_duration;
use sloth_lua::opts::Opts;
use sloth_lua::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::graph::{Graph, SharedKind, SharedRef, Value};

use crate::engine::dispatch::{self, TaskOpts};
use crate::engine::registry::{Outcome, TaskRecord};
use crate::engine::retry::RetryPolicy;
use crate::engine::runtime::Runtime;

/// A Lua runtime error with this message.
pub fn rt_err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

/// An error once the script is stopped (the run was interrupted): a wait that
/// returns then does not let the script go on to its next step.
pub fn script_stop(rt: &Runtime) -> mlua::Result<()> {
    rt.script_cancel.check().map_err(|r| rt_err(r.message()))
}

/// The keys of a task's options table (`goroutine.async`, `spawn`, `spawn_many`,
/// `timeout`).
pub const TASK_KEYS: &[&str] = &["delegate_to", "timeout", "retries", "retry_errors", "name"];

/// Parse a task's options table (`delegate_to`, `timeout`, `retries`, `retry_errors`,
/// `name`); every unknown key is refused.
pub fn parse_opts(rt: &Runtime, opts: Option<&Table>, what: &str) -> mlua::Result<TaskOpts> {
    let Some(t) = opts else {
        return Ok(TaskOpts::default());
    };
    let mut o = Opts::new(what, t.clone());
    let opts = task_opts(rt, &mut o, true)?;
    o.finish()?;
    Ok(opts)
}

/// The task options of `o` (`delegate_to` only when `targeted`): `timeout`,
/// `retries`, `retry_errors`, `name`.
pub fn task_opts(rt: &Runtime, o: &mut Opts, targeted: bool) -> mlua::Result<TaskOpts> {
    let mut opts = TaskOpts::default();
    if targeted {
        if let Some(pattern) = o.string("delegate_to")? {
            opts.target = Some(
                rt.inventory
                    .resolve_one(&pattern)
                    .map_err(|e| o.invalid("delegate_to", e))?,
            );
        }
    }
    opts.timeout = o.duration("timeout")?;
    opts.retry = retry_policy(o)?;
    opts.name = o.string("name")?;
    Ok(opts)
}

/// `retries` (an integer >= 0) and `retry_errors` (a boolean) of an options table.
pub fn retry_policy(o: &mut Opts) -> mlua::Result<RetryPolicy> {
    let retries = match o.int("retries")? {
        None => 0,
        Some(n) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => return Err(o.error("retries", format!("must be an integer >= 0, got {n}"))),
    };
    let retry_errors = o.bool("retry_errors")?.unwrap_or(false);
    Ok(RetryPolicy {
        retries,
        retry_errors,
    })
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

pub fn handle_ud(
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
                    let restored = capture::restore_data(lua, g)?;
                    // How many came back: `values` may have nil holes (`return 1, nil, 3`).
                    t.raw_set("n", restored.len())?;
                    let values = lua.create_sequence_from(restored)?;
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

pub fn duration_value(v: &LV, what: &str) -> mlua::Result<Value> {
    Ok(
        match parse_duration(v).map_err(|e| rt_err(format!("{what}: {e}")))? {
            Some(d) => Value::Int(d.as_millis() as i64),
            None => Value::Nil,
        },
    )
}

/// Wait until some task finishes after `seen` (or 100 ms pass); `false` once the
/// deadline has passed.
pub fn wait_for_progress(rt: &Runtime, seen: u64, deadline: Option<Instant>) -> bool {
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
pub fn handles_and_deadline(
    rt: &Runtime,
    hs: &Table,
    timeout: &LV,
    what: &str,
) -> mlua::Result<(Vec<Arc<TaskRecord>>, Option<Instant>)> {
    let timeout = parse_duration(timeout).map_err(|e| rt_err(format!("{what}: {e}")))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    Ok((handles_of(rt, hs, what)?, deadline))
}

pub fn handles_of(rt: &Runtime, hs: &Table, what: &str) -> mlua::Result<Vec<Arc<TaskRecord>>> {
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
