//! Runs one task in a fresh, isolated Lua state. The same code runs on agents and
//! on the master's worker threads, so local and remote tasks behave identically.
//!
//! The task library (the `exec`, `fs`, ... modules) lives in `sloth-modules`, above
//! this crate; an [`Executor`] is given it as a [`Library`], so that task states, and
//! the [`TaskState`] type that alone can receive code, stay in this crate.

use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value as LV, VmState};
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::Graph;
use sloth_proto::protocol::{ErrorKind, TaskError, TaskRequest};

use crate::cancel::{CancelToken, StopReason, STOPPED};
use crate::capture::{self, TaskState};
use crate::context::TaskContext;
use crate::shared_obj::NoBackend;

/// How often (in VM instructions) the hook checks for a stop.
const HOOK_EVERY: u32 = 1000;

/// The task library a task state is built with (`sloth_modules::LIBRARY`).
pub struct Library {
    /// Installs the library's globals into a fresh state (lazily where it can).
    pub install: fn(&Lua) -> mlua::Result<()>,
    /// The globals the library may add after [`Library::install`] (built on first
    /// use): the capture codec treats them as builtins, never as script globals.
    pub lazy_globals: fn() -> Vec<&'static str>,
    /// Runs after the task's body returned or raised, while the task is not stopped
    /// (the stop hook is still armed), and gives the task's final result: the
    /// library's handlers run here.
    pub after_body: fn(&Lua, mlua::Result<mlua::MultiValue>) -> mlua::Result<mlua::MultiValue>,
}

/// Builds task states with one [`Library`] and runs tasks in them. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Executor {
    library: &'static Library,
}

impl Executor {
    pub const fn new(library: &'static Library) -> Executor {
        Executor { library }
    }

    /// Make a state with the standard library, the task library and the capture
    /// codec, bound to the task `ctx`.
    pub fn new_state(&self, ctx: &TaskContext) -> mlua::Result<TaskState> {
        let lua = self.blank_state()?;
        bind(&lua, ctx);
        Ok(lua)
    }

    /// A fresh state with everything but a task: what the pre-warm pool keeps ready.
    pub fn blank_state(&self) -> mlua::Result<TaskState> {
        // SAFETY: the `debug` library is needed to read and set upvalues of shipped
        // closures; tasks are trusted code from an authenticated master
        // (docs/security.md). Only the libraries nearly every task uses are opened
        // here (`table` and `math` stay eager so that a task replacing `_G`'s
        // metatable, the "strict globals" idiom, still has them); the library opens
        // the others on first use.
        let lua = unsafe {
            Lua::unsafe_new_with(
                StdLib::STRING | StdLib::TABLE | StdLib::MATH,
                LuaOptions::new(),
            )
        };
        // Nothing built here is garbage: collecting while building is wasted work.
        lua.gc_stop();
        crate::protect::keep_protect_deps(&lua)?;
        (self.library.install)(&lua)?;
        defer_stop_guard(&lua)?;
        capture::install_lazy(&lua, Arc::new(NoBackend), self.library.lazy_globals)?;
        lua.gc_restart();
        lua.gc_collect()?;
        Ok(TaskState::new(lua))
    }

    /// Keep `n` fresh states ready for [`Executor::run_task`] (call once, at start-up;
    /// one pool per process).
    pub fn enable_prewarm(&self, n: usize) {
        let pool = Arc::new(StatePool {
            ready: Mutex::new(Vec::with_capacity(n)),
            retired: Mutex::new(Vec::new()),
            want: n,
            cv: Condvar::new(),
            executor: *self,
        });
        if POOL.set(pool.clone()).is_err() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("sloth-prewarm".into())
            .spawn(move || {
                // Refilling must never compete with running tasks for the CPU.
                lower_thread_priority();
                pool.refill_forever()
            });
    }

    /// Run one task to completion. Never panics on task input; every failure is a
    /// [`TaskError`] whose message does not yet name the host.
    pub fn run_task(
        &self,
        req: &TaskRequest,
        ctx: TaskContext,
        limits: &Limits,
    ) -> Result<Data, TaskError> {
        let lua = self.take_state().inspect(|l| bind(l, &ctx)).map_err(|e| {
            TaskError::new(ErrorKind::Lua, format!("setting up the task state: {e}"))
        })?;
        let outcome = execute(self.library, &lua, req, &ctx, limits);
        // Every value of the state is gone by now; the state itself is dropped elsewhere.
        retire_state(lua);
        outcome
    }

    /// A state from the pre-warm pool (when it was built with this executor's
    /// library), or a new one.
    fn take_state(&self) -> mlua::Result<TaskState> {
        if let Some(p) = POOL
            .get()
            .filter(|p| std::ptr::eq(p.executor.library, self.library))
        {
            let got = p.ready.lock().pop();
            p.cv.notify_one();
            if let Some(l) = got {
                return Ok(l);
            }
        }
        self.blank_state()
    }
}

/// Give a blank state its task: module calls and shared objects now reach `ctx`.
pub fn bind(lua: &Lua, ctx: &TaskContext) {
    capture::set_backend(lua, ctx.io.backend());
    lua.set_app_data(ctx.clone());
}

/// Fresh (never used) states made ahead of time on a background thread, so that a
/// task does not pay for building its state. Every task still gets its own state.
struct StatePool {
    ready: Mutex<Vec<TaskState>>,
    /// Used states waiting to be dropped by the pool's thread, off the task's path.
    retired: Mutex<Vec<TaskState>>,
    want: usize,
    cv: Condvar,
    executor: Executor,
}

static POOL: OnceLock<Arc<StatePool>> = OnceLock::new();

/// Give the calling thread the lowest scheduling priority (nice 19).
fn lower_thread_priority() {
    // On Linux the nice value is per thread: PRIO_PROCESS with a thread id changes
    // that thread only.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
}

impl StatePool {
    fn refill_forever(&self) {
        loop {
            {
                let mut g = self.ready.lock();
                while g.len() >= self.want && self.retired.lock().is_empty() {
                    self.cv.wait(&mut g);
                }
            }
            let old: Vec<TaskState> = std::mem::take(&mut *self.retired.lock());
            drop(old);
            if self.ready.lock().len() >= self.want {
                continue;
            }
            match self.executor.blank_state() {
                Ok(l) => self.ready.lock().push(l),
                Err(e) => {
                    tracing::warn!("cannot pre-build a Lua state: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A state that holds more than this when its task ends is dropped on the task's own
/// thread, and the process's allocator is then asked to give memory back to the
/// system ([`on_big_state_dropped`]).
pub const BIG_STATE: usize = 32 << 20;

static RELEASE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// What to call after a big state is dropped: the binary's allocator returning the
/// freed memory to the system (mimalloc's `mi_collect`), so a process that once ran a
/// task of hundreds of MiB does not keep them. Set once, at start-up.
pub fn on_big_state_dropped(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Hand a used state to the pool's thread to drop (dropping costs tens of µs). A big
/// one is dropped here, on the thread whose allocator heap holds its memory, and that
/// memory handed back at once (its task is over; the caller has its result).
fn retire_state(lua: TaskState) {
    if lua.used_memory() > BIG_STATE {
        drop(lua);
        if let Some(release) = RELEASE_MEMORY.get() {
            release();
        }
        return;
    }
    match POOL.get() {
        Some(p) => {
            let mut r = p.retired.lock();
            // Under sustained load the (lowest-priority) pool thread may lag: never
            // let dead states pile up, drop inline past a small bound.
            if r.len() >= 16 {
                drop(r);
                drop(lua);
                return;
            }
            r.push(lua);
            drop(r);
            p.cv.notify_one();
        }
        None => drop(lua),
    }
}

/// Arm the instruction hook that stops runaway Lua when the token says so. It is the
/// state's global hook, which every coroutine the code creates inherits: a loop inside
/// `coroutine.wrap` is stopped like any other (a per-thread hook would leave it
/// running).
pub fn arm_stop_hook(lua: &Lua, cancel: CancelToken) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| match cancel.stopped() {
            Some(_) => Err(mlua::Error::runtime(STOPPED)),
            None => Ok(VmState::Continue),
        },
    )
}

/// A stopped task (or script) cannot catch its stop. Once it is stopped:
/// - `pcall`, `xpcall`, `load` (whose reader runs protected), `coroutine.resume` and
///   `coroutine.close` (which runs `__close` handlers protected) raise the stop again,
///   so a loop around them ends (otherwise the stop hook's error was caught at every
///   turn, and the task ran on past its deadline, its thread abandoned);
/// - `xpcall` calls no message handler (Lua runs the handler of an error raised in a
///   hook with hooks off, where a loop could never be stopped).
///
/// And `setmetatable` and `debug.setmetatable` refuse `__gc` (finalizers run with hooks
/// off too, in a task or in the state's drop), and `debug.sethook`, which would take
/// the hook away, is refused. Errors of the functions it wraps keep their names and
/// the caller's position. It returns the guards of the libraries a task state opens
/// later (`debug`, `coroutine`), kept in the registry, and the four wrapped functions,
/// which the caller makes the globals.
const STOP_GUARD_SRC: &str = r##"
local stopped, sethook_refused, raw = ...
raw = raw or { pcall = pcall, xpcall = xpcall, setmetatable = setmetatable, load = load }
local raw_pcall, raw_xpcall, raw_setmetatable, raw_load = raw.pcall, raw.xpcall, raw.setmetatable, raw.load
local error, rawget, type, select, gsub = error, rawget, type, select, string.gsub
local GC = "__gc finalizers are not available: they run where sloth cannot stop them"
local function pass(ok, ...)
  if not ok then
    local why = stopped()
    if why then error(why, 0) end
  end
  return ok, ...
end
-- The error of a C function called through raw_pcall, named and placed at the caller
-- of its wrapper.
local function fail(name, e)
  if type(e) == "string" then e = gsub(e, "to '%?'", "to '" .. name .. "'", 1) end
  error(e, 3)
end
-- `setmetatable` or `debug.setmetatable` (`raw`), refusing `__gc`.
local function without_gc(name, raw)
  return function(v, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then error(name .. ": " .. GC, 2) end
    local ok, r = raw_pcall(raw, v, mt)
    if not ok then fail(name, r) end
    return r
  end
end
local wrapped = {}
wrapped.pcall = function(...)
  if select("#", ...) == 0 then error("bad argument #1 to 'pcall' (value expected)", 2) end
  return pass(raw_pcall(...))
end
wrapped.xpcall = function(f, ...)
  local h = ...
  if type(h) ~= "function" then
    local got = select("#", ...) == 0 and "no value" or type(h)
    error("bad argument #2 to 'xpcall' (function expected, got " .. got .. ")", 2)
  end
  return pass(raw_xpcall(f, function(e)
    if stopped() then return e end
    return h(e)
  end, select(2, ...)))
end
wrapped.setmetatable = without_gc("setmetatable", raw_setmetatable)
wrapped.load = function(...)
  local ok, f, e = raw_pcall(raw_load, ...)
  if not ok then fail("load", f) end
  if f == nil then
    local why = stopped()
    if why then error(why, 0) end
  end
  return f, e
end
local guards = {}
function guards.debug(debug)
  debug.setmetatable = without_gc("debug.setmetatable", debug.setmetatable)
  debug.sethook = function() error(sethook_refused, 2) end
end
function guards.coroutine(co)
  local raw_resume, raw_close = co.resume, co.close
  co.resume = function(c, ...)
    if type(c) ~= "thread" then
      error("bad argument #1 to 'resume' (coroutine expected, got " .. type(c) .. ")", 2)
    end
    return pass(raw_resume(c, ...))
  end
  -- `close` runs the coroutine's pending `__close` handlers protected.
  co.close = function(c)
    if type(c) ~= "thread" then
      error("bad argument #1 to 'close' (coroutine expected, got " .. type(c) .. ")", 2)
    end
    return pass(raw_close(c))
  end
end
return guards, wrapped
"##;

/// Where [`guard_stop`] keeps the guards of libraries opened later.
const GUARDS_KEY: &str = "sloth.stop.guards";
/// Where [`defer_stop_guard`] keeps the functions it took out of the globals.
const DEFERRED_KEY: &str = "sloth.stop.deferred";

/// The globals the stop guard replaces: a task state builds them on first use
/// ([`defer_stop_guard`]).
pub const GUARDED_GLOBALS: &[&str] = &["pcall", "xpcall", "setmetatable", "load"];

/// Install the stop guard (`STOP_GUARD_SRC`) into a fresh state, before any code runs in it, and guard
/// its `debug` and `coroutine` libraries if they are open. The stop it checks is the
/// one of the task bound to the state ([`bind`]), or the main script's.
pub fn guard_stop(lua: &Lua) -> mlua::Result<()> {
    run_stop_guard(lua, None)
}

/// For a task state: take [`GUARDED_GLOBALS`] out of the globals; the first use of any
/// of them installs the guard ([`install_deferred_stop_guard`], called by the task
/// library's lazy globals), so a task that never names them does not pay for it.
pub fn defer_stop_guard(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    let raw = lua.create_table_with_capacity(0, GUARDED_GLOBALS.len())?;
    for name in GUARDED_GLOBALS {
        raw.raw_set(*name, g.raw_get::<LV>(*name)?)?;
        g.raw_set(*name, LV::Nil)?;
    }
    lua.set_named_registry_value(DEFERRED_KEY, raw)
}

/// Install the guard [`defer_stop_guard`] put off (once; later calls do nothing). A
/// global the task has set meanwhile (its own `load`, say) is left as it is. Nothing
/// changes unless it all succeeds (it may fail under the task's memory limit).
/// Whether it installed it now (which guarded the `debug` and `coroutine` globals open
/// by then).
pub fn install_deferred_stop_guard(lua: &Lua) -> mlua::Result<bool> {
    let Some(raw) = lua.named_registry_value::<Option<Table>>(DEFERRED_KEY)? else {
        return Ok(false);
    };
    run_stop_guard(lua, Some(raw))?;
    lua.unset_named_registry_value(DEFERRED_KEY)?;
    Ok(true)
}

fn run_stop_guard(lua: &Lua, raw: Option<Table>) -> mlua::Result<()> {
    let deferred = raw.is_some();
    // Compiled once per process; every state loads the same bytecode.
    static BYTECODE: OnceLock<Vec<u8>> = OnceLock::new();
    let bytecode = match BYTECODE.get() {
        Some(b) => b,
        None => {
            let f = lua
                .load(STOP_GUARD_SRC)
                .set_name("=sloth-stop")
                .into_function()?;
            BYTECODE.get_or_init(|| f.dump(true))
        }
    };
    let chunk = lua
        .load(&bytecode[..])
        .set_mode(mlua::chunk::ChunkMode::Binary)
        .set_name("=sloth-stop")
        .into_function()?;
    let stopped = lua.create_function(|lua, ()| {
        Ok(lua
            .app_data_ref::<TaskContext>()
            .and_then(|c| c.cancel.stopped())
            .map(|r| r.message()))
    })?;
    let (guards, wrapped): (Table, Table) = chunk.call((stopped, SETHOOK_REFUSED, raw))?;
    let g = lua.globals();
    let mut set = Vec::with_capacity(GUARDED_GLOBALS.len());
    for name in GUARDED_GLOBALS {
        if !deferred || g.raw_get::<LV>(*name)?.is_nil() {
            set.push((*name, wrapped.raw_get::<Function>(*name)?));
        }
    }
    for (name, f) in set {
        g.raw_set(name, f)?;
    }
    lua.set_named_registry_value(GUARDS_KEY, &guards)?;
    for lib in ["debug", "coroutine"] {
        if let LV::Table(t) = g.raw_get::<LV>(lib)? {
            guards.raw_get::<Function>(lib)?.call::<()>(t)?;
        }
    }
    Ok(())
}

/// What `debug.sethook` says: it would replace the hook that stops code at its
/// deadline (a task, or the main script when interrupted), and a loop after it would
/// run on for ever.
pub const SETHOOK_REFUSED: &str =
    "debug.sethook is not available: sloth's own hook stops tasks and scripts at their deadline";

/// Guard a library a task state opened after [`guard_stop`]: `debug` (`sethook`
/// refused, `setmetatable` without `__gc`) or `coroutine` (`resume` and `close` pass a
/// stop on).
pub fn guard_lib(lua: &Lua, name: &str, lib: &Table) -> mlua::Result<()> {
    if install_deferred_stop_guard(lua)? {
        // `lib`, now a global, was guarded with the rest.
        return Ok(());
    }
    let guards: Table = lua.named_registry_value(GUARDS_KEY)?;
    guards.raw_get::<Function>(name)?.call(lib)
}

/// The debug library's functions for sloth's own use (the capture codec): the state's
/// `debug` global if it has one, or else a table of its own, made without touching the
/// globals or `package.loaded`. A task state's global `debug` stays unset until the
/// task names it, which opens it guarded ([`guard_lib`], through the task library's
/// lazy globals): a task that never does pays for no guard.
pub fn open_debug(lua: &Lua) -> mlua::Result<Table> {
    if let LV::Table(t) = lua.globals().raw_get::<LV>("debug")? {
        return Ok(t);
    }
    // SAFETY: luaopen_debug only pushes a new table of the library's C functions.
    unsafe {
        lua.exec_raw::<Table>((), |l| {
            mlua::ffi::luaopen_debug(l);
        })
    }
}

/// Remove what [`arm_stop_hook`] armed.
pub fn disarm_stop_hook(lua: &Lua) {
    lua.remove_global_hook();
    lua.remove_hook();
}

pub struct Limits {
    pub memory_limit: Option<usize>,
}

fn execute(
    library: &Library,
    state: &TaskState,
    req: &TaskRequest,
    ctx: &TaskContext,
    limits: &Limits,
) -> Result<Data, TaskError> {
    let lua: Lua = (**state).clone();
    let cancel = ctx.cancel.clone();
    let (f, args) = prepare(state, req, &ctx.host, limits)?;
    arm_stop_hook(&lua, cancel.clone())
        .map_err(|e| TaskError::new(ErrorKind::Lua, e.to_string()))?;
    let result = f.call::<mlua::MultiValue>(args);
    let result = match cancel.stopped() {
        None => (library.after_body)(&lua, result),
        Some(_) => result,
    };
    disarm_stop_hook(&lua);
    let _ = lua.set_memory_limit(0);
    if let Some(reason) = cancel.stopped() {
        return Err(stop_error(reason));
    }
    match result {
        Ok(values) => {
            let values: Vec<LV> = values.into_iter().collect();
            capture::encode_data(&lua, &values, "return value")
                .map_err(|e| TaskError::new(ErrorKind::Capture, format!("{e} back to the master")))
        }
        Err(e) => Err(lua_error(&e, limits.memory_limit)),
    }
}

/// Everything before a task runs: its memory limit (first, so that a task too large
/// to restore fails as out of memory instead of taking the process down), `host`, then
/// the task itself. Returns the function and its arguments.
pub fn prepare(
    state: &TaskState,
    req: &TaskRequest,
    host: &str,
    limits: &Limits,
) -> Result<(mlua::Function, mlua::MultiValue), TaskError> {
    let lua: &Lua = state;
    if let Some(limit) = limits.memory_limit {
        let used = lua.used_memory();
        let _ = lua.set_memory_limit(used.saturating_add(limit));
    }
    let env = lua.globals();
    let host_tbl = host_table(lua, host, &req.host_vars, req.mode.check)
        .map_err(|e| TaskError::new(ErrorKind::Capture, format!("host vars: {e}")))?;
    env.raw_set("host", host_tbl)
        .map_err(|e| TaskError::new(ErrorKind::Lua, e.to_string()))?;
    let roots = capture::restore_task(state, &req.payload, &env).map_err(|e| {
        TaskError::new(
            ErrorKind::Capture,
            format!("restoring the task: {}", error_text(&e)),
        )
    })?;
    let mut roots = roots.into_iter();
    let Some(LV::Function(f)) = roots.next() else {
        return Err(TaskError::new(
            ErrorKind::Capture,
            "the task carries no function",
        ));
    };
    Ok((f, roots.collect()))
}

fn stop_error(reason: StopReason) -> TaskError {
    match reason {
        StopReason::Cancelled => TaskError::new(ErrorKind::Cancelled, "task cancelled"),
        StopReason::Timeout => TaskError::new(
            ErrorKind::Timeout,
            "the task ran past its time limit and was stopped",
        ),
    }
}

/// Classify an error raised by task code.
pub fn lua_error(e: &mlua::Error, memory_limit: Option<usize>) -> TaskError {
    if is_memory_error(e) {
        let limit = memory_limit
            .map(|l| format!(" of {} MiB", l / (1024 * 1024)))
            .unwrap_or_default();
        return TaskError::new(
            ErrorKind::Lua,
            format!("out of memory: the task exceeded its memory limit{limit} and was stopped"),
        );
    }
    TaskError::new(ErrorKind::Lua, error_text(e))
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// The message of a Lua error without mlua's wrapping and without the traceback.
pub fn error_text(e: &mlua::Error) -> String {
    let s = match e {
        mlua::Error::RuntimeError(s) => s.clone(),
        mlua::Error::CallbackError { cause, .. } => return error_text(cause),
        mlua::Error::WithContext { context, cause } => {
            return format!("{context}: {}", error_text(cause))
        }
        mlua::Error::ExternalError(ext) => ext.to_string(),
        other => other.to_string(),
    };
    match s.find("\nstack traceback:") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `host = {name = ..., vars = {...}, check = bool}` for the task.
fn host_table(lua: &Lua, name: &str, vars: &Graph, check: bool) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("name", name)?;
    t.raw_set("check", check)?;
    let vars_v = if vars.roots.is_empty() {
        LV::Table(lua.create_table()?)
    } else {
        let vars = Data::check(vars.clone(), Refs::Any).map_err(mlua::Error::runtime)?;
        capture::restore_data(lua, &vars)?
            .into_iter()
            .next()
            .unwrap_or(LV::Nil)
    };
    t.raw_set("vars", vars_v)?;
    Ok(t)
}

/// Wall-clock helper shared by master and agent.
pub fn elapsed_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}
