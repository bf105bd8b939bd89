//! Runs one task in a fresh, isolated Lua state. The same code runs on agents and
//! on the master's worker threads, so local and remote tasks behave identically.

use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Table, Value as LV, VmState};

use crate::cancel::{CancelToken, StopReason};
use crate::capture::{self, TaskState};
use crate::data::{Data, Refs};
use crate::graph::Graph;
use crate::modules;
use crate::protocol::{ErrorKind, LogLevel, TaskError, TaskRequest};
use crate::shared_obj::{NoBackend, SharedBackend};

/// What a running task can reach outside its own state.
pub trait TaskIo: Send + Sync {
    /// A log line or `print` output, streamed to the master as it happens.
    fn log(&self, level: LogLevel, line: &str);
    /// Where calls on shared objects (channels, wait groups, ...) go.
    fn backend(&self) -> Arc<dyn SharedBackend>;
}

/// Everything module functions need, stored in each state's app data.
#[derive(Clone)]
pub struct TaskContext {
    /// The name tasks see as `host.name` (`local` on the master).
    pub host: String,
    pub task_name: String,
    pub io: Arc<dyn TaskIo>,
    pub cancel: CancelToken,
}

impl TaskContext {
    /// A context with no master behind it: log lines are dropped and shared objects
    /// are refused ([`NoBackend`]). For benchmarks and tests of the executor alone.
    pub fn offline(host: &str, task_name: &str) -> TaskContext {
        TaskContext {
            host: host.to_string(),
            task_name: task_name.to_string(),
            io: Arc::new(OfflineIo),
            cancel: CancelToken::default(),
        }
    }
}

/// The [`TaskIo`] of [`TaskContext::offline`].
struct OfflineIo;

impl TaskIo for OfflineIo {
    fn log(&self, _: LogLevel, _: &str) {}
    fn backend(&self) -> Arc<dyn SharedBackend> {
        Arc::new(NoBackend)
    }
}

/// How often (in VM instructions) the hook checks for a stop.
const HOOK_EVERY: u32 = 1000;
/// Marker in the error raised by the hook.
const STOP_MARKER: &str = "sloth: task stopped";

/// Make a state with the standard library, the task modules and the capture codec,
/// bound to the task `ctx`.
pub fn new_state(ctx: &TaskContext) -> mlua::Result<TaskState> {
    let lua = blank_state()?;
    bind(&lua, ctx);
    Ok(lua)
}

/// A fresh state with everything but a task: what the pre-warm pool keeps ready.
pub fn blank_state() -> mlua::Result<TaskState> {
    // SAFETY: the `debug` library is needed to read and set upvalues of shipped
    // closures; tasks are trusted code from an authenticated master (docs/security.md).
    // Only the libraries nearly every task uses are opened here (`table` and `math`
    // stay eager so that a task replacing `_G`'s metatable, the "strict globals"
    // idiom, still has them); the others open on first use
    // (modules::install_task_modules_lazy).
    let lua = unsafe {
        Lua::unsafe_new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH,
            LuaOptions::new(),
        )
    };
    // Nothing built here is garbage: collecting while building is wasted work.
    lua.gc_stop();
    modules::install_task_modules_lazy(&lua)?;
    capture::install_lazy(&lua, Arc::new(NoBackend))?;
    lua.gc_restart();
    lua.gc_collect()?;
    Ok(TaskState::new(lua))
}

/// Give a blank state its task: module calls and shared objects now reach `ctx`.
pub fn bind(lua: &Lua, ctx: &TaskContext) {
    capture::set_backend(lua, ctx.io.backend());
    lua.set_app_data(ctx.clone());
}

/// Fresh (never used) states made ahead of time on a background thread, so that a
/// task does not pay for building its state. Every task still gets its own state.
pub struct StatePool {
    ready: Mutex<Vec<TaskState>>,
    /// Used states waiting to be dropped by the pool's thread, off the task's path.
    retired: Mutex<Vec<TaskState>>,
    want: usize,
    cv: Condvar,
}

static POOL: OnceLock<Arc<StatePool>> = OnceLock::new();

/// Keep `n` fresh states ready for [`run_task`] (call once, at start-up).
pub fn enable_prewarm(n: usize) {
    let pool = Arc::new(StatePool {
        ready: Mutex::new(Vec::with_capacity(n)),
        retired: Mutex::new(Vec::new()),
        want: n,
        cv: Condvar::new(),
    });
    if POOL.set(pool.clone()).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("sloth-prewarm".into())
        .spawn(move || {
            // Refilling must never compete with running tasks for the CPU.
            // SAFETY: setpriority on this thread's own id.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            prewarm_loop(&pool)
        });
}

fn prewarm_loop(pool: &StatePool) {
    loop {
        {
            let mut g = pool.ready.lock();
            while g.len() >= pool.want && pool.retired.lock().is_empty() {
                pool.cv.wait(&mut g);
            }
        }
        let old: Vec<TaskState> = std::mem::take(&mut *pool.retired.lock());
        drop(old);
        if pool.ready.lock().len() >= pool.want {
            continue;
        }
        match blank_state() {
            Ok(l) => pool.ready.lock().push(l),
            Err(e) => {
                tracing::warn!("cannot pre-build a Lua state: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Hand a used state to the pool's thread to drop (dropping costs tens of µs).
fn retire_state(lua: TaskState) {
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

fn take_state() -> mlua::Result<TaskState> {
    if let Some(p) = POOL.get() {
        let got = p.ready.lock().pop();
        p.cv.notify_one();
        if let Some(l) = got {
            return Ok(l);
        }
    }
    blank_state()
}

/// Arm the instruction hook that stops runaway Lua when the token says so.
pub fn arm_stop_hook(lua: &Lua, cancel: CancelToken) -> mlua::Result<()> {
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| match cancel.stopped() {
            Some(_) => Err(mlua::Error::runtime(STOP_MARKER)),
            None => Ok(VmState::Continue),
        },
    )
}

pub struct Limits {
    pub memory_limit: Option<usize>,
}

/// Run one task to completion. Never panics on task input; every failure is a
/// [`TaskError`] whose message does not yet name the host.
pub fn run_task(req: &TaskRequest, ctx: TaskContext, limits: &Limits) -> Result<Data, TaskError> {
    let lua = take_state()
        .inspect(|l| bind(l, &ctx))
        .map_err(|e| TaskError::new(ErrorKind::Lua, format!("setting up the task state: {e}")))?;
    let outcome = execute(&lua, req, &ctx, limits);
    // Every value of the state is gone by now; the state itself is dropped elsewhere.
    retire_state(lua);
    outcome
}

fn execute(
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
    lua.remove_hook();
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
    let host_tbl = host_table(lua, host, &req.host_vars)
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

/// `host = {name = ..., vars = {...}}` for the task.
fn host_table(lua: &Lua, name: &str, vars: &Graph) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("name", name)?;
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

/// Parse a duration given to the Lua API: a number of milliseconds, or a string
/// like `"30s"`, `"500ms"`, `"2m"`, `"1h"`.
pub fn parse_duration(v: &LV) -> Result<Option<Duration>, String> {
    match v {
        LV::Nil => Ok(None),
        LV::Integer(i) if *i >= 0 => Ok(Some(Duration::from_millis(*i as u64))),
        LV::Number(n) if *n >= 0.0 && n.is_finite() => {
            Ok(Some(Duration::from_micros((*n * 1000.0) as u64)))
        }
        LV::String(s) => parse_duration_str(&s.to_string_lossy()).map(Some),
        other => Err(format!(
            "expected a duration in ms or a string like \"30s\", got {}",
            match other {
                LV::Integer(i) => i.to_string(),
                LV::Number(n) => n.to_string(),
                o => o.type_name().to_string(),
            }
        )),
    }
}

pub fn parse_duration_str(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration '{s}' (use e.g. \"500ms\", \"30s\", \"2m\")"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "us" => n / 1000.0,
        _ => return Err(format!("bad duration unit in '{s}' (use ms, s, m or h)")),
    };
    Ok(Duration::from_micros((ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration_str("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration_str("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration_str("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration_str("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration_str("5 parsecs").is_err());
        assert!(parse_duration_str("").is_err());
    }
}
