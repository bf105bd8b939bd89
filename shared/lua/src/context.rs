//! What a running task reaches outside its own Lua state ([`TaskContext`]: its host
//! name, its log and change sink, its shared-object backend, its stop token and its
//! mode), the argument helpers every Lua-facing function shares (durations), and the
//! [`LongWork`] hooks that C work which may run long calls.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mlua::{Lua, Value as LV};
use sloth_proto::change::{Change, Mode};
use sloth_proto::protocol::LogLevel;

use crate::cancel::{CancelToken, StopReason};
use crate::shared_obj::{NoBackend, SharedBackend};

/// What a running task can reach outside its own state.
pub trait TaskIo: Send + Sync {
    /// A log line or `print` output, streamed to the master as it happens.
    fn log(&self, level: LogLevel, line: &str);
    /// What a resource or handler did (changed or not), as it happens.
    fn change(&self, change: Change);
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
    /// Check mode and diffs (`run --check`, `--diff`).
    pub mode: Mode,
    /// The main script: it orchestrates the run (builds artifacts, reads files), so
    /// in check mode only its resources plan instead of acting; its raw calls
    /// (`exec.run`, `fs.write`, ...) run as usual.
    pub orchestrator: bool,
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
            mode: Mode::default(),
            orchestrator: false,
        }
    }
}

/// The [`TaskIo`] of [`TaskContext::offline`].
struct OfflineIo;

impl TaskIo for OfflineIo {
    fn log(&self, _: LogLevel, _: &str) {}
    fn change(&self, _: Change) {}
    fn backend(&self) -> Arc<dyn SharedBackend> {
        Arc::new(NoBackend)
    }
}

/// The context of the task this state runs.
pub fn task_ctx(lua: &Lua) -> mlua::Result<TaskContext> {
    lua.app_data_ref::<TaskContext>()
        .map(|c| c.clone())
        .ok_or_else(|| mlua::Error::runtime("no task context in this Lua state"))
}

/// Bytes this state may still allocate under the task's memory limit; `None` when it
/// has none. Module functions that gather data outside Lua (a command's output, a
/// file, a response body) keep no more than this: what they gather becomes Lua
/// strings, and held outside the limit it would escape it.
pub fn memory_left(lua: &Lua) -> Option<usize> {
    // mlua reads the limit only by setting one: put the same one straight back.
    let limit = lua.set_memory_limit(0).ok()?;
    let _ = lua.set_memory_limit(limit);
    (limit > 0).then(|| limit.saturating_sub(lua.used_memory()))
}

/// What a call that would change the host returns in check mode: `true, "skipped in
/// check mode"` (truthy, so `assert(fs.write(...))` goes on), after a log line that
/// names the call. `None` outside check mode: the caller goes ahead.
pub fn skip_in_check_mode(lua: &Lua, what: &str) -> mlua::Result<Option<mlua::MultiValue>> {
    let ctx = task_ctx(lua)?;
    if !ctx.mode.check || ctx.orchestrator {
        return Ok(None);
    }
    ctx.io
        .log(LogLevel::Info, &format!("check mode: skipped: {what}"));
    Ok(Some(mlua::MultiValue::from_vec(vec![
        LV::Boolean(true),
        LV::String(lua.create_string(SKIPPED_IN_CHECK_MODE)?),
    ])))
}

/// The second value of a call skipped in check mode.
pub const SKIPPED_IN_CHECK_MODE: &str = "skipped in check mode";

/// Turn a stop of the running task into the Lua error that unwinds it.
pub fn stop_to_lua(r: StopReason) -> mlua::Error {
    mlua::Error::runtime(r.message())
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
    sloth_proto::text::parse_duration(s)
}

/// What a process does around long work in C that the Lua instruction hook cannot
/// interrupt (a big JSON text, a big capture): the master's main script runs on its
/// async runtime's worker and hands the worker's duties to another thread, so that no
/// connection waits for it. Set once, at start-up; without it (agents, tools) the
/// calls below do nothing.
pub struct LongWork {
    /// Long work is known to be ahead (a big input).
    pub ahead: fn(),
    /// Called every so often during work whose length shows only as it goes.
    pub check: fn(),
}

static LONG_WORK: OnceLock<LongWork> = OnceLock::new();

/// Install the process's [`LongWork`] hooks (the first call wins).
pub fn set_long_work(hooks: LongWork) {
    let _ = LONG_WORK.set(hooks);
}

/// Long work is ahead (see [`LongWork::ahead`]).
pub fn long_work_ahead() {
    if let Some(h) = LONG_WORK.get() {
        (h.ahead)()
    }
}

/// Long work goes on (see [`LongWork::check`]); cheap enough for every few thousand
/// elements.
pub fn long_work_check() {
    if let Some(h) = LONG_WORK.get() {
        (h.check)()
    }
}

/// Inputs at least this big are long work ahead ([`long_work_ahead`]).
pub const LONG_INPUT: usize = 256 * 1024;

/// Units of work between two [`long_work_check`] calls: a value or table entry is
/// one, a string one more per 64 bytes.
pub const CHECK_EVERY: usize = 4096;

/// Counts work done in C and calls [`long_work_check`] every [`CHECK_EVERY`] units.
#[derive(Default)]
pub struct WorkMeter {
    done: usize,
}

impl WorkMeter {
    /// One value, table entry or string of `bytes` bytes (0 for others) done; a
    /// string of [`LONG_INPUT`] or more is long work ahead on its own.
    pub fn add(&mut self, bytes: usize) {
        if bytes >= LONG_INPUT {
            long_work_ahead();
        }
        let before = self.done;
        self.done = self.done.saturating_add(1 + bytes / 64);
        if before / CHECK_EVERY != self.done / CHECK_EVERY {
            long_work_check();
        }
    }
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
