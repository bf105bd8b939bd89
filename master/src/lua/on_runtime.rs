//! The main script runs on the async runtime (see [`run`]): its body is a Lua thread
//! that the runtime's worker drives, and `goroutine.await` in it yields to the runtime
//! instead of blocking a thread of its own. The answer that completes a task then
//! resumes the script on the thread that received it: on the master, a remote await
//! crosses no more threads than a bare request does.
//!
//! Nothing may hold the worker for long, or every connection would wait. Each function
//! of the main state that may wait (a command, a file, a lock, the terminal) or run long
//! in C (a string pattern, a sort) first hands the worker's duties to another thread
//! ([`leave_worker`]); so does the stop hook once the script has computed for
//! [`BUSY`] without yielding, and so does C work that may run long while it goes (a
//! big JSON text or capture: `sloth_lua::context::LongWork`). After that the script runs on as a plain thread until it
//! next yields.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, MultiValue, Table, Value as LV, VmState};

use sloth_lua::cancel::CancelToken;

use crate::engine::runtime::{leave_worker, script_turn, set_script_turn, Runtime};

/// How long the script may compute on the worker before it hands the worker over.
pub const BUSY: Duration = Duration::from_millis(1);

/// How many Lua instructions pass between two looks at the stop token and the clock.
const HOOK_EVERY: u32 = 1000;

/// Which functions of a table may wait or run long.
enum Waits {
    /// Every function but these.
    AllBut(&'static [&'static str]),
    /// Only these.
    Only(&'static [&'static str]),
}

/// The tables whose functions are wrapped. sloth's own modules are listed by what
/// never waits (anything new waits until shown otherwise); the standard library by what
/// may.
const TABLES: &[(&str, Waits)] = &[
    (
        "goroutine",
        Waits::AllBut(&[
            "async",
            "spawn",
            "spawn_many",
            "channel",
            "wait_group",
            "mutex",
            "once",
            "semaphore",
            "atomic_int",
            "task_stats",
            "pool_create",
            "pool_stats",
            // The dispatcher of `install`, which waits in the right place itself.
            "await",
        ]),
    ),
    ("json", Waits::AllBut(&["encode", "decode"])),
    ("sys", Waits::AllBut(&["monotonic_ms", "hostname"])),
    ("template", Waits::AllBut(&[])),
    ("exec", Waits::AllBut(&[])),
    ("fs", Waits::AllBut(&[])),
    ("http", Waits::AllBut(&[])),
    ("net", Waits::AllBut(&[])),
    ("fleet", Waits::AllBut(&["hosts"])),
    ("artifact", Waits::AllBut(&["bytes"])),
    ("log", Waits::AllBut(&[])),
    ("file", Waits::AllBut(&[])),
    ("pkg", Waits::AllBut(&[])),
    ("service", Waits::AllBut(&[])),
    ("user", Waits::AllBut(&[])),
    ("group", Waits::AllBut(&[])),
    ("cmd", Waits::AllBut(&[])),
    ("git", Waits::AllBut(&[])),
    ("archive", Waits::AllBut(&[])),
    ("io", Waits::AllBut(&["type"])),
    (
        "os",
        Waits::Only(&["execute", "exit", "remove", "rename", "tmpname"]),
    ),
    (
        "string",
        Waits::Only(&["find", "gmatch", "gsub", "match", "rep"]),
    ),
    ("table", Waits::Only(&["concat", "sort"])),
];

/// Global functions that may wait or run long.
const GLOBALS: &[&str] = &["print", "warn", "dofile", "loadfile", "require"];

/// Methods of open files (`io.open`'s handles, `io.stdout`) that may wait.
const FILE_METHODS: &[&str] = &["read", "write", "lines", "flush", "close", "seek"];

/// `wrap(f)`: `f`, after [`leave_worker`]. A tail call, so `f`'s errors keep their
/// level (sloth's functions raise at their caller's line).
const WRAP_SRC: &str = r#"
local leave = ...
return function(f)
  return function(...)
    leave()
    return f(...)
  end
end
"#;

/// The `await` dispatcher: the async `await` in the script's own thread where it may
/// yield; the blocking one elsewhere (inside a coroutine of the script's, or under a
/// C function such as `table.sort`'s comparator). The script's thread is a coroutine
/// only to the runtime: to the script, `coroutine.running`, `isyieldable` and `yield`
/// behave as in a main thread.
const AWAIT_SRC: &str = r#"
local sync, async, co, error, method, is_handle = ...
local running, isyieldable, yield = co.running, co.isyieldable, co.yield
local main
local function await(h, t)
  if main ~= nil and running() == main and isyieldable() then return async(h, t) end
  return sync(h, t)
end
-- A handle's `h:await(t)`, the same wait as `goroutine.await(h, t)`.
local function await_method(h, ...)
  if main ~= nil and running() == main and isyieldable() and is_handle(h) then
    return async(h, ...)
  end
  return method(h, ...)
end
co.running = function()
  local th, ismain = running()
  return th, ismain or th == main
end
co.isyieldable = function()
  return running() ~= main and isyieldable()
end
co.yield = function(...)
  if running() == main then error("attempt to yield from outside a coroutine", 2) end
  return yield(...)
end
return await, function(th) main = th end, await_method
"#;

/// Where the dispatcher keeps its setter for the script's thread.
const SET_MAIN_KEY: &str = "sloth.on_runtime.set_main";

/// Put [`leave_worker`] in front of everything in the main state that may wait or run
/// long, and make `goroutine.await` and a handle's `:await` yield where they can (the
/// shared objects' method table is built here if it is not yet). Run before the DSL is
/// loaded and the capture codec is installed: both must see the wrapped functions.
pub fn install(lua: &Lua, await_async: Function) -> mlua::Result<()> {
    // Long work in C (a big JSON text, a big capture) hands the worker over too.
    sloth_lua::context::set_long_work(sloth_lua::context::LongWork {
        ahead: leave_worker,
        check: leave_if_busy,
    });
    let leave = lua.create_function(|_, ()| {
        leave_worker();
        Ok(())
    })?;
    let wrap: Function = lua.load(WRAP_SRC).set_name("=sloth-wait").call(leave)?;
    let g = lua.globals();
    for (name, waits) in TABLES {
        if let LV::Table(t) = g.raw_get::<LV>(*name)? {
            wrap_table(&wrap, &t, waits)?;
        }
    }
    wrap_table(&wrap, &g, &Waits::Only(GLOBALS))?;
    if let Some(methods) = file_methods(lua)? {
        wrap_table(&wrap, &methods, &Waits::Only(FILE_METHODS))?;
    }
    let goroutine: Table = g.raw_get("goroutine")?;
    let sync: Function = goroutine.raw_get("await")?;
    let sync: Function = wrap.call(sync)?;
    let methods = sloth_lua::shared_obj::method_table(lua)?;
    let is_handle = lua.create_function(|_, v: LV| {
        Ok(match v {
            LV::UserData(ud) => ud
                .borrow::<sloth_lua::shared_obj::SharedObj>()
                .is_ok_and(|o| o.to_graph_ref().kind == sloth_proto::graph::SharedKind::Handle),
            _ => false,
        })
    })?;
    let (dispatch, set_main, await_method): (Function, Function, Function) =
        lua.load(AWAIT_SRC).set_name("=sloth-await").call((
            sync,
            await_async,
            g.raw_get::<Table>("coroutine")?,
            g.raw_get::<Function>("error")?,
            methods.raw_get::<Function>("await")?,
            is_handle,
        ))?;
    goroutine.raw_set("await", dispatch)?;
    methods.raw_set("await", await_method)?;
    lua.set_named_registry_value(SET_MAIN_KEY, set_main)
}

/// The method table of open files, from `io.stdout`'s metatable.
fn file_methods(lua: &Lua) -> mlua::Result<Option<Table>> {
    let io: Table = lua.globals().raw_get("io")?;
    let LV::UserData(stdout) = io.raw_get::<LV>("stdout")? else {
        return Ok(None);
    };
    let Ok(mt) = stdout.metatable() else {
        return Ok(None);
    };
    Ok(match mt.get::<LV>("__index")? {
        LV::Table(t) => Some(t),
        _ => None,
    })
}

fn wrap_table(wrap: &Function, t: &Table, waits: &Waits) -> mlua::Result<()> {
    let funcs: Vec<(String, Function)> = t
        .pairs::<LV, LV>()
        .filter_map(|p| match p {
            Ok((LV::String(k), LV::Function(f))) => Some((k.to_string_lossy(), f)),
            _ => None,
        })
        .filter(|(k, _)| match waits {
            Waits::AllBut(never) => !never.contains(&k.as_str()),
            Waits::Only(these) => these.contains(&k.as_str()),
        })
        .collect();
    for (k, f) in funcs {
        t.raw_set(k, wrap.call::<Function>(f)?)?;
    }
    Ok(())
}

/// Run the script's body to its end on the async runtime (see the module's doc).
/// Call from a thread outside the runtime; the script stops at `rt.script_cancel`.
pub fn run(rt: &Arc<Runtime>, lua: &Lua, body: Function) -> mlua::Result<MultiValue> {
    // Created after `arm_hook`: the thread has its hook, and so do its coroutines.
    let thread = lua.create_thread(body)?;
    if let Some(set_main) = lua.named_registry_value::<Option<Function>>(SET_MAIN_KEY)? {
        set_main.call::<()>(thread.clone())?;
    }
    let turns = Turns(Box::pin(thread.into_async::<MultiValue>(())?));
    let joined = rt.handle.block_on(rt.handle.spawn(turns));
    joined.map_err(|e| mlua::Error::runtime(format!("the script's task failed: {e}")))?
}

/// The main state's instruction hook, for its every thread and coroutine: stop the
/// script when `stop` says so (as tasks' `executor::arm_stop_hook` does), and hand the
/// worker over once the script has computed for [`BUSY`].
pub fn arm_hook(lua: &Lua, stop: CancelToken) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            if stop.stopped().is_some() {
                return Err(mlua::Error::runtime(sloth_lua::cancel::STOPPED));
            }
            leave_if_busy();
            Ok(VmState::Continue)
        },
    )
}

/// Hand the worker over if this turn of the script has computed for [`BUSY`].
fn leave_if_busy() {
    if script_turn().is_some_and(|t| t >= BUSY) {
        leave_worker();
    }
}

/// The script's future, noting when each turn (poll) begins for [`leave_if_busy`].
struct Turns<F>(Pin<Box<F>>);

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        set_script_turn(Some(Instant::now()));
        let r = self.0.as_mut().poll(cx);
        set_script_turn(None);
        r
    }
}
