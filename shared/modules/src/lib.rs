//! The task library: the modules every task has, on agents and on the master
//! (`log`, `print`, `json`, `goroutine.sleep` and `select`, and the system modules
//! `exec`, `fs`, `http`, `net`, `sys`, `template`). Module functions find the running
//! task's [`TaskContext`](sloth_lua::context::TaskContext) (host, log sink, stop token) in the state's app data.
//!
//! [`EXECUTOR`] runs tasks with this library; it is what agents and the master use.

use std::time::Duration;

use mlua::{Lua, MultiValue, Table, Value as LV};
use sloth_lua::context::{parse_duration, stop_to_lua, task_ctx};
use sloth_lua::executor::{Executor, Library};
use sloth_lua::protect::wrap_table;
use sloth_proto::protocol::LogLevel;

mod check_mode;
mod child_io;
pub mod exec;
pub mod fs;
pub mod fuzz_targets;
pub mod http;
pub mod json;
pub mod net;
pub mod options;
pub mod resources;
pub mod sys;
pub mod template;

/// This library, as the executor takes it.
pub static LIBRARY: Library = Library {
    install: install_task_modules_lazy,
    lazy_globals,
    after_body: resources::handlers::after_body,
};

/// Runs tasks in fresh states with this library.
pub const EXECUTOR: Executor = Executor::new(&LIBRARY);

/// The globals [`install_task_modules_lazy`] builds on first use.
fn lazy_names() -> impl Iterator<Item = &'static str> {
    LAZY_STD_LIBS
        .iter()
        .map(|(name, _)| *name)
        .chain(MODULES.iter().copied())
        .chain(resources::MODULES.iter().copied())
        .chain([HANDLER])
        .chain(sloth_lua::executor::GUARDED_GLOBALS.iter().copied())
}

fn lazy_globals() -> Vec<&'static str> {
    lazy_names().collect()
}

/// The module tables every task state has. The main state builds them all at start;
/// a task state builds each one the first time the task names it (see
/// [`install_task_modules_lazy`]), so a task pays only for what it uses.
pub const MODULES: &[&str] = &[
    "goroutine",
    "json",
    "exec",
    "fs",
    "http",
    "net",
    "sys",
    "template",
];

/// Build the module table `name` (one of [`MODULES`]), or `None` for another name.
fn build_module(lua: &Lua, name: &str) -> mlua::Result<Option<Table>> {
    let scratch = lua.create_table()?;
    match name {
        "goroutine" => {
            let goroutine = lua.create_table()?;
            install_sleep(lua, &goroutine)?;
            install_select(lua, &goroutine)?;
            scratch.raw_set("goroutine", goroutine)?;
        }
        "json" => json::install(lua, &scratch)?,
        "exec" => exec::install(lua, &scratch)?,
        "fs" => fs::install(lua, &scratch)?,
        "http" => http::install(lua, &scratch)?,
        "net" => net::install(lua, &scratch)?,
        "sys" => sys::install(lua, &scratch)?,
        "template" => template::install(lua, &scratch)?,
        other => {
            if !resources::build(lua, other, &scratch)? {
                return Ok(None);
            }
        }
    }
    scratch.raw_get(name)
}

/// Install every task module into `lua`'s globals at once (the main script's state).
pub fn install_task_modules(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    install_log(lua, &g)?;
    resources::handlers::install(lua, &g)?;
    let loaded: Table = lua.named_registry_value::<Table>("_LOADED")?;
    for name in MODULES.iter().chain(resources::MODULES) {
        if let Some(t) = build_module(lua, name)? {
            g.raw_set(*name, &t)?;
            loaded.raw_set(*name, t)?;
        }
    }
    loaded.raw_set("log", g.raw_get::<LV>("log")?)?;
    Ok(())
}

/// The one global function of the task library that [`install_task_modules_lazy`]
/// builds on first use, like the modules (building it loads a protected wrapper, an
/// eighth of a fresh state's cost, and few tasks define handlers).
const HANDLER: &str = "handler";

/// Standard libraries a task state opens on first use: `string`, `table` and `math`
/// (and the base library) are always there; these cost more to open than most tasks
/// spend running, and most never touch them.
pub const LAZY_STD_LIBS: &[(&str, mlua::StdLib)] = &[
    ("io", mlua::StdLib::IO),
    ("os", mlua::StdLib::OS),
    ("utf8", mlua::StdLib::UTF8),
    ("coroutine", mlua::StdLib::COROUTINE),
    ("debug", mlua::StdLib::DEBUG),
    ("package", mlua::StdLib::PACKAGE),
    // `require` comes with the package library.
    ("require", mlua::StdLib::PACKAGE),
];

/// Install the task modules into a task state lazily: `log` and `print` at once, and
/// each of [`MODULES`] on first use, through an `__index` metamethod on the globals
/// (and on `package.loaded`, for `require`). A loaded module is a plain global from
/// then on, with its functions already wrapped as [`wrap_errors`] does. Building all
/// of them costs more than the rest of a small task, so most tasks never pay for it.
pub fn install_task_modules_lazy(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    install_log(lua, &g)?;
    let loaded: Table = lua.named_registry_value::<Table>("_LOADED")?;
    loaded.raw_set("log", g.raw_get::<LV>("log")?)?;
    let index = lua.create_function(|lua, (table, key): (LV, LV)| {
        let LV::String(k) = &key else {
            return Ok(LV::Nil);
        };
        // Any global a task reads and has not set lands here: no allocation for those.
        let name: &'static str = match k.to_str() {
            Ok(n) => match lazy_names().find(|l| *l == &*n) {
                Some(l) => l,
                None => return Ok(LV::Nil),
            },
            Err(_) => return Ok(LV::Nil),
        };
        let g = lua.globals();
        if let Some(&(_, lib)) = LAZY_STD_LIBS.iter().find(|(l, _)| *l == name) {
            thread_local! {
                static OPENING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
            }
            // Opening a library looks it up in package.loaded first, which lands here
            // again: answer nil to that inner lookup.
            if OPENING.get() {
                return Ok(LV::Nil);
            }
            if g.raw_get::<LV>(name)?.is_nil() {
                OPENING.set(true);
                let opened = lua.load_std_libs(lib);
                OPENING.set(false);
                opened?;
                if name == "os" {
                    // A task's os.execute stops with the task (exec.rs).
                    if let LV::Table(os_lib) = g.raw_get::<LV>("os")? {
                        exec::install_os_execute(lua, &os_lib)?;
                        check_mode::guard_os(lua, &os_lib)?;
                    }
                }
                if name == "io" {
                    if let LV::Table(io_lib) = g.raw_get::<LV>("io")? {
                        check_mode::guard_io(lua, &io_lib)?;
                    }
                }
                if name == "debug" || name == "coroutine" {
                    if let LV::Table(lib) = g.raw_get::<LV>(name)? {
                        if let Err(e) = sloth_lua::executor::guard_lib(lua, name, &lib) {
                            // Not open at all rather than open unguarded.
                            g.raw_set(name, LV::Nil)?;
                            lua.named_registry_value::<Table>("_LOADED")?
                                .raw_set(name, LV::Nil)?;
                            return Err(e);
                        }
                    }
                }
                sloth_lua::capture::forget_builtins(lua);
            }
            return g.raw_get::<LV>(name);
        }
        let guarded = sloth_lua::executor::GUARDED_GLOBALS.contains(&name);
        if guarded || name == HANDLER {
            // Global functions, not modules: `require` does not find them.
            let is_globals = matches!(&table, LV::Table(t) if t.to_pointer() == g.to_pointer());
            if !is_globals {
                return Ok(LV::Nil);
            }
            if guarded {
                sloth_lua::executor::install_deferred_stop_guard(lua)?;
            } else if g.raw_get::<LV>(name)?.is_nil() {
                resources::handlers::install(lua, &g)?;
                sloth_lua::capture::forget_builtins(lua);
            }
            return g.raw_get::<LV>(name);
        }
        // Reached through package.loaded (require) when the global is already built.
        if let LV::Table(t) = g.raw_get::<LV>(name)? {
            return Ok(LV::Table(t));
        }
        let Some(t) = build_module(lua, name)? else {
            return Ok(LV::Nil);
        };
        wrap_table(lua, &t, name)?;
        g.raw_set(name, &t)?;
        let loaded: Table = lua.named_registry_value::<Table>("_LOADED")?;
        loaded.raw_set(name, &t)?;
        // The state's builtin map (if already built) does not know this module yet.
        sloth_lua::capture::forget_builtins(lua);
        Ok(LV::Table(t))
    })?;
    let mt = lua.create_table()?;
    mt.raw_set("__index", index)?;
    g.set_metatable(Some(mt.clone()))?;
    loaded.set_metatable(Some(mt))?;
    Ok(())
}

/// `goroutine.sleep(ms)`: sleeps, and wakes at once when the task is stopped.
pub fn install_sleep(lua: &Lua, goroutine: &Table) -> mlua::Result<()> {
    goroutine.raw_set(
        "sleep",
        lua.create_function(|lua, ms: LV| {
            let d = parse_duration(&ms)
                .map_err(|e| mlua::Error::runtime(format!("goroutine.sleep: {e}")))?
                .unwrap_or(Duration::ZERO);
            let ctx = task_ctx(lua)?;
            ctx.cancel.sleep(d).map_err(stop_to_lua)
        })?,
    )
}

/// `goroutine.select(cases [, timeout])`: the first ready case wins; returns its
/// index and the received value (`index, value, ok`), or `default`'s index at once,
/// or `nil, "timeout exceeded"`. Works on any channel, local or proxied.
pub fn install_select(lua: &Lua, goroutine: &Table) -> mlua::Result<()> {
    use mlua::{AnyUserData, ObjectLike};
    goroutine.raw_set(
        "select",
        lua.create_function(|lua, (cases, timeout): (Table, LV)| {
            let limit = parse_duration(&timeout)
                .map_err(|e| mlua::Error::runtime(format!("goroutine.select: {e}")))?;
            let deadline = limit.map(|d| std::time::Instant::now() + d);
            let ctx = task_ctx(lua)?;
            let mut default_idx = None;
            let mut parsed: Vec<(i64, AnyUserData, Option<LV>)> = Vec::new();
            for (i, c) in cases.sequence_values::<Table>().enumerate() {
                let c = c.map_err(|_| {
                    mlua::Error::runtime(format!(
                        "goroutine.select: case #{} must be a table",
                        i + 1
                    ))
                })?;
                let idx = i as i64 + 1;
                let bad = |msg: String| {
                    mlua::Error::runtime(format!("goroutine.select: case #{idx}: {msg}"))
                };
                // Strict like every options table: a typo must not make a case that
                // is never ready.
                for pair in c.pairs::<LV, LV>() {
                    let (k, _) = pair?;
                    let known = matches!(&k, LV::String(s)
                        if matches!(s.as_bytes().as_ref(), b"channel" | b"send" | b"receive" | b"default"));
                    if !known {
                        return Err(bad(format!(
                            "unknown key {} (a case has channel and send or receive = true, \
                             or default = true)",
                            match &k {
                                LV::String(s) => format!("'{}'", s.to_string_lossy()),
                                other => other.type_name().to_string(),
                            }
                        )));
                    }
                }
                if c.raw_get::<Option<bool>>("default")?.unwrap_or(false) {
                    default_idx = Some(idx);
                    continue;
                }
                let ch: AnyUserData = c
                    .raw_get("channel")
                    .map_err(|_| bad("has no channel".into()))?;
                let send: LV = c.raw_get("send")?;
                let receive = c.raw_get::<Option<bool>>("receive")? == Some(true);
                match (send.is_nil(), receive) {
                    (false, false) => parsed.push((idx, ch, Some(send))),
                    (true, true) => parsed.push((idx, ch, None)),
                    (false, true) => return Err(bad("give send or receive, not both".into())),
                    (true, false) => {
                        return Err(bad(
                            "give send = VALUE or receive = true (a nil cannot be a case's \
                             value: send it with ch:send(nil))"
                                .into(),
                        ))
                    }
                }
            }
            let mut pause = Duration::from_micros(500);
            loop {
                for (idx, ch, send) in &parsed {
                    match send {
                        Some(v) => {
                            let ok: bool = ch.call_method("try_send", v.clone())?;
                            if ok {
                                return Ok((LV::Integer(*idx), LV::Nil, LV::Boolean(true)));
                            }
                            let closed: bool = ch.call_method("is_closed", ())?;
                            if closed {
                                return Err(mlua::Error::runtime(format!(
                                    "goroutine.select: case #{idx}: send on a closed channel"
                                )));
                            }
                        }
                        None => {
                            let (v, ok): (LV, bool) = ch.call_method("try_receive", ())?;
                            if ok {
                                return Ok((LV::Integer(*idx), v, LV::Boolean(true)));
                            }
                            let closed: bool = ch.call_method("is_closed", ())?;
                            if closed {
                                return Ok((LV::Integer(*idx), LV::Nil, LV::Boolean(false)));
                            }
                        }
                    }
                }
                if let Some(d) = default_idx {
                    return Ok((LV::Integer(d), LV::Nil, LV::Boolean(false)));
                }
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    let msg = lua.create_string("timeout exceeded: select: no case was ready")?;
                    return Ok((LV::Nil, LV::String(msg), LV::Boolean(false)));
                }
                ctx.cancel.sleep(pause).map_err(stop_to_lua)?;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        })?,
    )
}

fn join_args(lua: &Lua, args: MultiValue) -> mlua::Result<String> {
    let tostring: mlua::Function = lua.globals().raw_get("tostring")?;
    let mut parts = Vec::with_capacity(args.len());
    for a in args {
        let s: mlua::LuaString = tostring.call(a)?;
        parts.push(s.to_string_lossy().to_string());
    }
    Ok(parts.join("\t"))
}

fn install_log(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let log = lua.create_table()?;
    for (name, level) in [
        ("debug", LogLevel::Debug),
        ("info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
    ] {
        log.raw_set(
            name,
            lua.create_function(move |lua, args: MultiValue| {
                let line = join_args(lua, args)?;
                task_ctx(lua)?.io.log(level, &line);
                Ok(())
            })?,
        )?;
    }
    g.raw_set("log", log)?;
    g.raw_set(
        "print",
        lua.create_function(|lua, args: MultiValue| {
            let line = join_args(lua, args)?;
            task_ctx(lua)?.io.log(LogLevel::Print, &line);
            Ok(())
        })?,
    )?;
    Ok(())
}
