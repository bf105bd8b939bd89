//! `cmd.run{cmd, creates, removes, unless, only_if, changed_when, cwd, env, timeout,
//! stdin, shell}`: a command guarded so that it runs only when needed.
//!
//! - `creates = path`: skipped when `path` exists; `removes = path`: skipped when
//!   it does not.
//! - `unless = command`: skipped when it exits 0; `only_if = command`: skipped
//!   unless it exits 0. Guards are read-only by contract and run in check mode too.
//! - A skipped command is not "changed". One that runs is "changed", unless
//!   `changed_when(result)` returns false (it sees `{stdout, stderr, code}`).
//! - In check mode the command itself never runs: when its guards say it would,
//!   it is reported as "would run" (changed, even with `changed_when`, which can
//!   only judge real output).
//! - A non-zero exit is an error naming the command, its exit code and the end of
//!   its stderr.

use mlua::{Lua, Table, Value as LV};
use sloth_lua::context::stop_to_lua;

use super::outcome::{self, args, resource_fn, tail, Call, Outcome};
use crate::exec::{command_spec, env_pairs, run_process, Finished, ProcOpts, RunFail};

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "run", run)
}

fn run(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "cmd.run";
    let mut o = args(lua, R, arg, "cmd")?;
    let cmd = o.value("cmd")?;
    if let LV::String(c) = &cmd {
        if c.as_bytes().iter().all(|b| b.is_ascii_whitespace()) {
            return Err(o.error("cmd", "must not be empty"));
        }
    }
    let shell = o.value("shell")?;
    let spec = command_spec(R, &cmd, &shell)?;
    let call = Call::new(lua, R, spec.display.clone(), &mut o)?;
    let creates = o.path("creates")?;
    let removes = o.path("removes")?;
    let unless = o.value("unless")?;
    let only_if = o.value("only_if")?;
    let changed_when = o.function("changed_when")?;
    let mut p = ProcOpts {
        cwd: o.path("cwd")?.map(Into::into),
        timeout: o.duration("timeout")?,
        stdin: o.bytes("stdin")?,
        keep_max: crate::exec::keep_within_memory(lua),
        ..ProcOpts::default()
    };
    if let Some(env) = o.table("env")? {
        p.env = env_pairs(R, &env)?;
    }
    p.stream = o.bool("stream")?.unwrap_or(false);
    o.finish()?;
    let guard_spec = |v: &LV, key: &str| -> mlua::Result<Option<crate::exec::CmdSpec>> {
        match v {
            LV::Nil => Ok(None),
            v => command_spec(
                &format!("{R} {}: option '{key}'", spec.display),
                v,
                &LV::Nil,
            )
            .map(Some),
        }
    };
    let unless = guard_spec(&unless, "unless")?;
    let only_if = guard_spec(&only_if, "only_if")?;

    let skip = |why: String| Outcome::ok(format!("skipped: {why}"));
    let outcome = if let Some(path) = creates.as_ref().filter(|c| outcome::exists(lua, c)) {
        skip(format!("{} exists", path.display()))
    } else if let Some(path) = removes.as_ref().filter(|r| !outcome::exists(lua, r)) {
        skip(format!("{} does not exist", path.display()))
    } else if let Some(g) = unless.as_ref().filter(|g| guard(&call, g, &p)) {
        skip(format!("unless '{}' succeeded", g.display))
    } else if let Some(g) = only_if.as_ref().filter(|g| !guard(&call, g, &p)) {
        skip(format!("only_if '{}' failed", g.display))
    } else if call.check() {
        // What the command is declared to make or remove, later resources see.
        let planned = Outcome::changed("would run");
        match (&creates, &removes) {
            (Some(c), _) => planned.planning(c, true),
            (None, Some(r)) => planned.planning(r, false),
            (None, None) => planned,
        }
    } else {
        let done = match run_process(&call.ctx, &spec, &p) {
            Ok(d) => d,
            Err(RunFail::Start(why)) => return Err(call.fail(why)),
            Err(RunFail::Stopped(r)) => return Err(stop_to_lua(r)),
        };
        if !done.success() {
            let err = tail(&done.stderr, 3);
            return Err(call.fail(format!(
                "{}{}",
                done.status_text(),
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            )));
        }
        let result = result_table(lua, &done)?;
        let changed = match &changed_when {
            None => true,
            Some(f) => match f.call::<LV>(result.clone())? {
                LV::Boolean(b) => b,
                LV::Nil => false,
                other => {
                    return Err(call.fail(format!(
                        "changed_when must return a boolean, got {}",
                        other.type_name()
                    )))
                }
            },
        };
        let o = if changed {
            Outcome::changed("ran")
        } else {
            Outcome::ok("ran (changed_when: no change)")
        };
        o.with("stdout", result.raw_get("stdout")?)
            .with("stderr", result.raw_get("stderr")?)
            .with("code", result.raw_get("code")?)
    };
    call.done(lua, outcome)
}

/// A guard command exits 0 (a guard that cannot start counts as failing).
fn guard(call: &Call, g: &crate::exec::CmdSpec, p: &ProcOpts) -> bool {
    let quiet = ProcOpts {
        stream: false,
        stdin: None,
        ..p.clone()
    };
    match run_process(&call.ctx, g, &quiet) {
        Ok(d) => d.success(),
        Err(_) => false,
    }
}

fn result_table(lua: &Lua, d: &Finished) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("stdout", lua.create_string(&d.stdout)?)?;
    t.raw_set("stderr", lua.create_string(&d.stderr)?)?;
    if let crate::exec::Ended::Exited(s) = &d.ended {
        t.raw_set("code", s.code())?;
    }
    Ok(t)
}
