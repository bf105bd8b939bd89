//! The pools API: `pool_create/submit/wait/close/stats` over the engine's pool
//! scheduler (`crate::engine::pool`). Behaviour under churn is documented there and
//! in docs/fleet.md, "Pools under churn".

use std::sync::Arc;
use std::time::Instant;

use mlua::{Function, Lua, MultiValue, Table, Value as LV};
use sloth_lua::context::parse_duration;
use sloth_lua::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::graph::{SharedKind, SharedRef};

use crate::engine::dispatch::TaskOpts;
use crate::engine::pool::{Pool, PoolSpec, Pools};
use crate::engine::registry::TaskRecord;
use crate::engine::runtime::Runtime;
use crate::lua::args::{capture_call, result_table, retry_policy, rt_err, script_stop};
use sloth_lua::opts::Opts;

fn stats_table(lua: &Lua, p: &Pool) -> mlua::Result<Table> {
    let st = p.stats();
    let t = lua.create_table()?;
    t.raw_set("name", p.name())?;
    t.raw_set("workers", p.workers())?;
    t.raw_set("active", st.active)?;
    t.raw_set("completed", st.completed)?;
    t.raw_set("failed", st.failed)?;
    t.raw_set("cancelled", st.cancelled)?;
    t.raw_set("queued", st.queued)?;
    t.raw_set("retried", st.retried)?;
    t.raw_set("requeued", st.requeued)?;
    t.raw_set("submitted", st.submitted)?;
    t.raw_set("closed", st.closed)?;
    let hosts = lua.create_table()?;
    for (h, s) in &st.hosts {
        let e = lua.create_table()?;
        e.raw_set("active", s.active)?;
        e.raw_set("completed", s.completed)?;
        e.raw_set("failed", s.failed)?;
        e.raw_set("requeued", s.requeued)?;
        e.raw_set("state", s.state.as_str())?;
        if let Some(err) = &s.last_error {
            e.raw_set("last_error", err.as_str())?;
        }
        hosts.raw_set(h.as_str(), e)?;
    }
    t.raw_set("hosts", hosts)?;
    Ok(t)
}

/// Resolve `delegate_to` of a pool: a pattern string or a list of patterns.
fn pool_targets(rt: &Runtime, v: &LV) -> Result<Option<Vec<String>>, String> {
    let patterns: Vec<String> = match v {
        LV::Nil => return Ok(None),
        LV::String(s) => vec![s.to_string_lossy().to_string()],
        LV::Table(t) => t
            .sequence_values::<String>()
            .collect::<mlua::Result<_>>()
            .map_err(|e| format!("delegate_to list: {e}"))?,
        other => {
            return Err(format!(
                "delegate_to must be a pattern or a list, got {}",
                other.type_name()
            ))
        }
    };
    let mut hosts: Vec<String> = Vec::new();
    for p in patterns {
        for h in rt.inventory.resolve(&p).map_err(|e| e.to_string())? {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    if hosts.is_empty() {
        return Err("delegate_to matches no host".into());
    }
    Ok(Some(hosts))
}

pub fn install(
    lua: &Lua,
    g: &Table,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    let pools = Arc::new(Pools::default());
    {
        let (rt, pools) = (rt.clone(), pools.clone());
        g.raw_set(
            "pool_create",
            lua.create_function(move |lua, (name, opts): (String, Option<Table>)| {
                let fail = |m: String| Ok((LV::Nil, Some(format!("pool_create '{name}': {m}"))));
                if pools.get(&name).is_some() {
                    return fail("a pool with this name already exists".into());
                }
                let opts = match opts {
                    Some(t) => t,
                    None => lua.create_table()?,
                };
                let mut o = Opts::new("goroutine.pool_create", opts);
                let targets = match pool_targets(&rt, &o.value("delegate_to")?) {
                    Ok(t) => t,
                    Err(e) => return fail(e),
                };
                let workers = match o.int("workers")? {
                    None => targets.as_ref().map(|t| t.len() * 4).unwrap_or(4),
                    Some(n) if n >= 1 => n as usize,
                    Some(n) => return Err(o.error("workers", format!("must be >= 1, got {n}"))),
                };
                let retry = retry_policy(&mut o)?;
                let timeout = o.duration("timeout")?;
                let queue_cap = match o.int("queue")? {
                    None => (workers * 4).max(256),
                    Some(n) if n >= 1 => n as usize,
                    Some(n) => return Err(o.error("queue", format!("must be >= 1, got {n}"))),
                };
                o.finish()?;
                let spec = PoolSpec {
                    name: name.clone(),
                    workers,
                    queue_cap,
                    targets,
                    retry,
                    timeout,
                };
                if pools.create(&rt, spec).is_none() {
                    return fail("a pool with this name already exists".into());
                }
                Ok((LV::Boolean(true), None))
            })?,
        )?;
    }
    {
        let (rt, pools, backend) = (rt.clone(), pools.clone(), backend.clone());
        g.raw_set(
            "pool_submit",
            lua.create_function(
                move |lua, (name, f, args): (String, Function, MultiValue)| {
                    let Some(pool) = pools.get(&name) else {
                        return Ok((
                            LV::Nil,
                            Some(format!("pool_submit: no pool named '{name}'")),
                        ));
                    };
                    if pool.is_closed() {
                        return Ok((
                            LV::Nil,
                            Some(format!("pool_submit: pool '{name}' is closed")),
                        ));
                    }
                    let args: Vec<LV> = args.into_iter().collect();
                    let target = TaskOpts {
                        target: pool.targets().map(|t| t.join(",")),
                        ..TaskOpts::default()
                    };
                    let payload = capture_call(lua, &f, &args, "goroutine.pool_submit", &target)?;
                    let rec = match pool.submit(&rt, payload) {
                        Ok(rec) => rec,
                        Err(e) => return Ok((LV::Nil, Some(format!("pool_submit: {e}")))),
                    };
                    let ud = lua.create_userdata(SharedObj::new(
                        SharedRef {
                            kind: SharedKind::Handle,
                            id: rec.id,
                        },
                        backend.clone(),
                    ))?;
                    Ok((LV::UserData(ud), None))
                },
            )?,
        )?;
    }
    {
        let (pools, rt) = (pools.clone(), rt.clone());
        g.raw_set(
            "pool_wait",
            lua.create_function(move |lua, (name, timeout): (String, LV)| {
                let Some(pool) = pools.get(&name) else {
                    return Ok((
                        LV::Boolean(false),
                        LV::String(
                            lua.create_string(format!("pool_wait: no pool named '{name}'"))?,
                        ),
                    ));
                };
                let timeout =
                    parse_duration(&timeout).map_err(|e| rt_err(format!("pool_wait: {e}")))?;
                let deadline = timeout.map(|t| Instant::now() + t);
                let recs: Vec<Arc<TaskRecord>> = pool.submitted();
                let out = lua.create_table()?;
                let mut timed_out = false;
                {
                    let progress = rt.out.progress(recs.len() as u64, &format!("pool {name}"));
                    for rec in &recs {
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        timed_out |= rec.wait(left, None).is_none();
                        progress.set(pool.finished());
                    }
                }
                script_stop(&rt)?;
                for (i, rec) in recs.iter().enumerate() {
                    out.raw_set(i + 1, result_table(lua, rec, rec.outcome().as_ref())?)?;
                }
                if timed_out {
                    return Ok((
                        LV::Boolean(false),
                        LV::String(lua.create_string(format!(
                            "timeout exceeded: pool '{name}' still has unfinished tasks"
                        ))?),
                    ));
                }
                Ok((LV::Boolean(true), LV::Table(out)))
            })?,
        )?;
    }
    {
        let pools = pools.clone();
        g.raw_set(
            "pool_close",
            lua.create_function(move |lua, name: String| {
                let Some(pool) = pools.get(&name) else {
                    let err = lua.create_string(format!("pool_close: no pool named '{name}'"))?;
                    return Ok(MultiValue::from_iter([LV::Boolean(false), LV::String(err)]));
                };
                pool.close();
                Ok(MultiValue::from_iter([LV::Boolean(true)]))
            })?,
        )?;
    }
    {
        let pools = pools.clone();
        g.raw_set(
            "pool_stats",
            lua.create_function(move |lua, name: String| match pools.get(&name) {
                Some(p) => Ok(LV::Table(stats_table(lua, &p)?)),
                None => Ok(LV::Nil),
            })?,
        )?;
    }
    Ok(())
}
