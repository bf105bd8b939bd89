//! The `goroutine` table of the main state: `async`, `await`, `await_all`,
//! `await_any`, `spawn`, channels, wait groups, mutexes and the rest, plus the
//! master-only `artifact` table. The functions capture closures at the call site and
//! hand them to [`crate::engine::dispatch`].

use mlua::{Function, Lua, MultiValue, Table, Value as LV};
use sloth_lua::capture;
use sloth_lua::context::parse_duration;
use sloth_lua::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, SharedRef};
use std::sync::Arc;

use crate::engine::dispatch;
use crate::engine::objects::Object;
use crate::engine::registry::{self, Caller};
use crate::engine::runtime::Runtime;
use crate::lua::args::{
    capture_call, duration_value, handle_arg, handle_ud, handles_and_deadline, parse_opts,
    result_table, rt_err, script_stop, spawn_task, wait_for_progress,
};

pub fn install(
    lua: &Lua,
    g: &Table,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    let main_caller = Caller::main_script();
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
                script_stop(&rt)?;
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
                    script_stop(&rt)?;
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
                );
                rt.registry.forget_unnamed(rec.id);
                Ok(MultiValue::from_iter(capture::restore_data(
                    lua,
                    &out.map_err(rt_err)?,
                )?))
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
    {
        let rt = rt.clone();
        g.raw_set(
            "task_stats",
            lua.create_function(move |lua, ()| {
                let reg = &rt.registry;
                let t = lua.create_table()?;
                t.raw_set("kept", reg.task_count())?;
                t.raw_set("running", reg.running().len())?;
                Ok(t)
            })?,
        )?;
    }
    install_artifact(lua, rt.clone(), backend.clone())?;
    crate::lua::pools::install(lua, g, rt, backend)?;
    Ok(())
}

/// The main script's own `await` when it runs in its async thread (see
/// [`crate::lua::on_runtime`]): it waits without blocking the runtime's thread, which
/// then handles the answer and resumes the script itself.
pub fn await_async(lua: &Lua, rt: Arc<Runtime>) -> mlua::Result<Function> {
    let caller = Caller::main_script();
    lua.create_async_function(move |lua, (h, timeout): (LV, LV)| {
        let (rt, caller) = (rt.clone(), caller.clone());
        let rec = handle_arg(&rt, &h, "goroutine.await");
        let timeout = parse_duration(&timeout).map_err(|e| rt_err(format!("goroutine.await: {e}")));
        async move {
            let (rec, timeout) = (rec?, timeout?);
            let out = registry::await_task(&rec, &caller, timeout)
                .await
                .map_err(rt_err)?;
            Ok(MultiValue::from_iter(capture::restore_data(&lua, &out)?))
        }
    })
}

/// `artifact.file(path)` and `artifact.bytes(s [, name])` (master only).
fn install_artifact(
    lua: &Lua,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    use crate::engine::objects::{Artifact, ArtifactSource};
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
