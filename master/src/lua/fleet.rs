//! The `fleet` module of the main script: host patterns, host info, ping.

use std::sync::Arc;

use mlua::{Function, Lua, Table, Value as LV};
use sloth_lua::capture;
use sloth_proto::data::{Data, Refs};
use sloth_proto::protocol::{Facts, LogLevel};

use crate::engine::dispatch::{self, TaskOpts};
use crate::engine::events::Rollout;
use crate::engine::rollout::{self, Serial};
use crate::engine::runtime::Runtime;
use crate::lua::args::{capture_call, result_table, rt_err, script_stop, task_opts};
use sloth_lua::opts::{type_of, Opts};

pub fn facts_table(lua: &Lua, f: &Facts) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("hostname", f.hostname.as_str())?;
    t.raw_set("os", f.os.as_str())?;
    t.raw_set("arch", f.arch.as_str())?;
    t.raw_set("kernel", f.kernel.as_str())?;
    t.raw_set("cpus", f.cpus)?;
    t.raw_set("mem_total", f.mem_total)?;
    t.raw_set("mem_available", f.mem_available)?;
    t.raw_set("load", lua.create_sequence_from(f.load)?)?;
    t.raw_set("uptime", f.uptime)?;
    let disk = lua.create_table()?;
    disk.raw_set("total", f.disk_total)?;
    disk.raw_set("available", f.disk_available)?;
    t.raw_set("disk", disk)?;
    Ok(t)
}

pub fn install(lua: &Lua, rt: Arc<Runtime>) -> mlua::Result<()> {
    let fleet = lua.create_table()?;
    {
        let rt = rt.clone();
        fleet.raw_set(
            "hosts",
            lua.create_function(move |lua, pattern: Option<String>| {
                let p = pattern.unwrap_or_else(|| "all".into());
                let hosts = rt
                    .inventory
                    .resolve(&p)
                    .map_err(|e| rt_err(format!("fleet.hosts: {e}")))?;
                lua.create_sequence_from(hosts)
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        fleet.raw_set(
            "info",
            lua.create_function(move |lua, name: String| {
                let Some(h) = rt.inventory.get(&name) else {
                    return Err(rt_err(format!("fleet.info: unknown host '{name}'")));
                };
                let t = lua.create_table()?;
                t.raw_set("name", h.name.as_str())?;
                t.raw_set("address", h.address.as_str())?;
                t.raw_set(
                    "groups",
                    lua.create_sequence_from(h.groups.iter().map(|s| s.as_str()))?,
                )?;
                // The same conversion the host's tasks see as host.vars.
                let vars = Data::check(rt.host_vars(&name), Refs::Any)
                    .map_err(|e| rt_err(format!("fleet.info: {name}: vars: {e}")))?;
                let vars = capture::restore_data(lua, &vars)?.into_iter().next();
                t.raw_set("vars", vars.unwrap_or(LV::Nil))?;
                let conn = match &rt.mesh {
                    Some(m) => rt.block_on(async {
                        let c = m.current(&name).await?;
                        // A run's Welcomes carry no facts: one round trip for them.
                        let facts = match &c.facts {
                            Some(f) => Some(f.clone()),
                            None => m.ping(&name, true).await.ok().and_then(|(_, f)| f),
                        };
                        Some((c, facts))
                    }),
                    None => None,
                };
                t.raw_set("connected", conn.is_some())?;
                if let Some((c, facts)) = conn {
                    t.raw_set("latency_ms", c.conn.rtt().as_secs_f64() * 1000.0)?;
                    t.raw_set("agent_version", c.agent_version.as_str())?;
                    if let Some(f) = facts {
                        t.raw_set("facts", facts_table(lua, &f)?)?;
                    }
                }
                Ok(t)
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        fleet.raw_set(
            "ping",
            lua.create_function(move |lua, pattern: Option<String>| {
                let p = pattern.unwrap_or_else(|| "all".into());
                let hosts = rt
                    .inventory
                    .resolve(&p)
                    .map_err(|e| rt_err(format!("fleet.ping: {e}")))?;
                let mesh = rt.mesh.clone().ok_or_else(|| {
                    rt_err("fleet.ping: no fleet configured (use -i or --local-fleet)")
                })?;
                // Gathered on the worker thread: each answer wakes no second thread.
                let pings = rt.handle.spawn(async move {
                    let mut set = tokio::task::JoinSet::new();
                    for h in hosts {
                        let m = mesh.clone();
                        set.spawn(async move {
                            let r = m.ping(&h, false).await;
                            (h, r)
                        });
                    }
                    let mut out = Vec::new();
                    while let Some(r) = set.join_next().await {
                        if let Ok(r) = r {
                            out.push(r);
                        }
                    }
                    out
                });
                let results = rt
                    .block_on(pings)
                    .map_err(|e| rt_err(format!("fleet.ping: {e}")))?;
                let t = lua.create_table()?;
                for (h, r) in results {
                    let e = lua.create_table()?;
                    match r {
                        Ok((d, _)) => {
                            e.raw_set("ok", true)?;
                            e.raw_set("latency_ms", d.as_secs_f64() * 1000.0)?;
                        }
                        Err(err) => {
                            e.raw_set("ok", false)?;
                            e.raw_set("error", err.display_for(&h))?;
                        }
                    }
                    t.raw_set(h, e)?;
                }
                Ok(t)
            })?,
        )?;
    }
    {
        let rt = rt.clone();
        fleet.raw_set(
            "run",
            lua.create_function(
                move |lua, (pattern, f, opts): (String, Function, Option<Table>)| {
                    let r = fleet_run(lua, &rt, &pattern, &f, opts);
                    script_stop(&rt)?;
                    r
                },
            )?,
        )?;
    }
    lua.globals().raw_set("fleet", fleet)
}

fn serial_of(v: &LV) -> mlua::Result<Vec<Serial>> {
    let one = |v: &LV| -> mlua::Result<Serial> {
        match v {
            LV::Integer(n) if *n >= 1 => Ok(Serial::Count(*n as usize)),
            LV::Number(n) if *n >= 1.0 && n.is_finite() && *n <= 1e9 => {
                Ok(Serial::Count(*n as usize))
            }
            LV::String(s) => Serial::parse_str(&s.to_string_lossy())
                .map_err(|e| rt_err(format!("fleet.run: {e}"))),
            other => Err(rt_err(format!(
                "fleet.run: serial entries must be numbers >= 1 or strings like \"25%\", got {}",
                other.type_name()
            ))),
        }
    };
    match v {
        LV::Nil => Ok(Vec::new()),
        LV::Table(t) => t.sequence_values::<LV>().map(|x| one(&x?)).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// `fleet.run(pattern, fn, opts)`: run `fn` on every matched host, in rolling
/// batches when `serial` is given; stop when a batch fails too much.
fn fleet_run(
    lua: &Lua,
    rt: &Arc<Runtime>,
    pattern: &str,
    f: &Function,
    opts: Option<Table>,
) -> mlua::Result<Table> {
    let hosts = rt
        .inventory
        .resolve(pattern)
        .map_err(|e| rt_err(format!("fleet.run: {e}")))?;
    let (serial, max_fail, fatal, base) = match opts {
        Some(t) => {
            let mut o = Opts::new("fleet.run", t);
            let serial = serial_of(&o.value("serial")?)?;
            let max_fail = match o.value("max_fail_percentage")? {
                LV::Nil => None,
                LV::Integer(i) => Some(i as f64),
                LV::Number(n) => Some(n),
                other => {
                    return Err(o.error(
                        "max_fail_percentage",
                        format!("must be a number, got {}", type_of(&other)),
                    ))
                }
            };
            if let Some(m) = max_fail.filter(|m| !(0.0..=100.0).contains(m)) {
                return Err(o.error(
                    "max_fail_percentage",
                    format!("must be between 0 and 100, got {m}"),
                ));
            }
            let fatal = o.bool("any_errors_fatal")?.unwrap_or(false);
            // The task options proper (timeout, retries, name...): hosts come from
            // the pattern, so no delegate_to.
            let base = task_opts(rt, &mut o, false)?;
            o.finish()?;
            (serial, max_fail, fatal, base)
        }
        None => (Vec::new(), None, false, TaskOpts::default()),
    };
    let plan = rollout::batches(&hosts, &serial);
    let results = lua.create_table()?;
    let total = plan.len();
    for (bi, batch) in plan.iter().enumerate() {
        if total > 1 {
            rt.out.script_log(
                LogLevel::Info,
                &format!("fleet.run: batch {}/{total}: {}", bi + 1, batch.join(", ")),
            );
        }
        rt.out.rollout(Rollout::BatchStarted {
            index: bi + 1,
            of: total,
            hosts: batch,
        });
        let mut recs = Vec::new();
        for h in batch {
            let mut o = base.clone();
            o.target = Some(h.clone());
            o.batch = Some((bi + 1, total));
            if o.name.is_none() {
                o.name = Some("fleet.run".into());
            }
            let payload = capture_call(lua, f, &[], "fleet.run", &o)?;
            recs.push(dispatch::start(rt, payload, &o));
        }
        let mut failed = 0;
        for (h, rec) in batch.iter().zip(&recs) {
            let o = rec.wait(None, None);
            if !matches!(&o, Some(x) if x.result.is_ok()) {
                failed += 1;
            }
            results.raw_set(h.as_str(), result_table(lua, rec, o.as_ref())?)?;
            rt.registry.forget_unnamed(rec.id);
        }
        rt.out.rollout(Rollout::BatchFinished {
            index: bi + 1,
            of: total,
            failed,
        });
        if rollout::should_stop(failed, batch.len(), max_fail, fatal) && bi + 1 < total {
            let untouched: Vec<String> = plan[bi + 1..].iter().flatten().cloned().collect();
            let why = if fatal {
                "any_errors_fatal".to_string()
            } else {
                match max_fail {
                    Some(m) => format!(
                        "{failed} of {} failed ({:.0}% > max_fail_percentage {m})",
                        batch.len(),
                        failed as f64 * 100.0 / batch.len() as f64
                    ),
                    None => "every host of the batch failed".into(),
                }
            };
            rt.out.script_log(
                LogLevel::Error,
                &format!(
                    "fleet.run: rollout stopped after batch {}/{total}: {why}; not touched: {}",
                    bi + 1,
                    untouched.join(", ")
                ),
            );
            rt.out.rollout(Rollout::Stopped {
                after: bi + 1,
                of: total,
                reason: &why,
                skipped: &untouched,
            });
            break;
        }
    }
    Ok(results)
}
