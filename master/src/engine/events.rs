//! What the engine reports while a run goes: tasks started and finished, their log
//! lines, what resources changed, the script's own log, rollout batches, and progress.
//! The CLI's `Output` implements it (the terminal, `--json`, `--events`); the engine
//! never prints.

use sloth_proto::change::Change;
use sloth_proto::protocol::LogLevel;

use crate::engine::registry::{Outcome, TaskRecord};

pub trait Events: Send + Sync {
    /// A task was created and handed to where it runs (every task, exactly once).
    fn task_started(&self, rec: &TaskRecord);
    /// A line task `id` logged or printed, as it happens.
    fn task_log(&self, id: u64, host: &str, task: &str, level: LogLevel, text: &str);
    /// Whether `bytes` more of output can be written now without waiting for its
    /// reader (a pager that paused): when not, the engine reports from a blocking
    /// thread, never from the async runtime's.
    fn output_ready(&self, _bytes: usize) -> bool {
        true
    }
    /// What a resource or handler of task `id` (0: the main script) did, changed or
    /// not, as it happens.
    fn task_change(&self, id: u64, host: &str, task: &str, change: &Change);
    /// A line of the main script (its `print` and `log`, and the engine's notes).
    fn script_log(&self, level: LogLevel, text: &str);
    /// A task finished (every task, exactly once).
    fn task_done(&self, rec: &TaskRecord, outcome: &Outcome);
    /// A task nobody awaits failed: say so now, it would go unseen otherwise.
    fn unawaited_failure(&self, msg: &str);
    /// A rolling `fleet.run` moved on.
    fn rollout(&self, event: Rollout<'_>);
    /// Progress of a fan-out or pool of `len` tasks, until the value is dropped.
    fn progress(&self, len: u64, what: &str) -> Box<dyn Progress + '_>;
}

/// The steps of a rolling `fleet.run` (batches are numbered from 1).
#[derive(Debug, Clone, Copy)]
pub enum Rollout<'a> {
    BatchStarted {
        index: usize,
        of: usize,
        hosts: &'a [String],
    },
    BatchFinished {
        index: usize,
        of: usize,
        failed: usize,
    },
    /// The rollout stopped after batch `after`: `skipped` were never touched.
    Stopped {
        after: usize,
        of: usize,
        reason: &'a str,
        skipped: &'a [String],
    },
}

/// A live progress indicator.
pub trait Progress {
    fn set(&self, done: u64);
}
