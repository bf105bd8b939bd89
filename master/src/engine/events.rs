//! What the engine reports while a run goes: task log lines, what resources changed,
//! the script's own log,
//! finished tasks, skipped hosts and progress. The CLI's `Output` implements it (the
//! terminal, or `--json`); the engine never prints.

use sloth_proto::change::Change;
use sloth_proto::protocol::LogLevel;

use crate::engine::registry::{Outcome, TaskRecord};

pub trait Events: Send + Sync {
    /// A line a task logged or printed, as it happens.
    fn task_log(&self, host: &str, task: &str, level: LogLevel, text: &str);
    /// What a resource or handler of task `id` (0: the main script) did, changed or
    /// not, as it happens.
    fn task_change(&self, id: u64, host: &str, task: &str, change: &Change);
    /// A line of the main script (its `print` and `log`, and the engine's notes).
    fn script_log(&self, level: LogLevel, text: &str);
    /// A task finished (every task, exactly once).
    fn task_done(&self, rec: &TaskRecord, outcome: &Outcome);
    /// A task nobody awaits failed: say so now, it would go unseen otherwise.
    fn unawaited_failure(&self, msg: &str);
    /// A rollout skipped `host` (an earlier batch failed).
    fn host_skipped(&self, host: &str);
    /// Progress of a fan-out or pool of `len` tasks, until the value is dropped.
    fn progress(&self, len: u64, what: &str) -> Box<dyn Progress + '_>;
}

/// A live progress indicator.
pub trait Progress {
    fn set(&self, done: u64);
}
