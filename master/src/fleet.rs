//! The `fleet` module of the main script: host patterns, host info, ping.

use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table};
use sloth_shared::protocol::Facts;

use crate::runtime::Runtime;

fn rt_err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

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
                t.raw_set("vars", lua.to_value(&h.vars)?)?;
                let conn = match &rt.mesh {
                    Some(m) => rt.handle.block_on(m.current(&name)),
                    None => None,
                };
                t.raw_set("connected", conn.is_some())?;
                if let Some(c) = conn {
                    t.raw_set("latency_ms", c.conn.rtt().as_secs_f64() * 1000.0)?;
                    t.raw_set("agent_version", c.agent_version.as_str())?;
                    t.raw_set("facts", facts_table(lua, &c.facts)?)?;
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
                let results = rt.handle.block_on(async {
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
    lua.globals().raw_set("fleet", fleet)
}
