//! What a run leaves for the recap and the `--json` document (schema 1, described by
//! docs/run.schema.json): per host the counts and every change, per task its times,
//! values, changes and error, the hosts a rollout skipped, and every error printed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value as J};
use sloth_proto::change::{Change, ChangeKind};
use sloth_proto::protocol::{ErrorKind, LogLevel};

use super::run_info::{rfc3339, RunInfo};
use super::values;
use crate::engine::registry::{Outcome, TaskRecord};

/// The version of the `--json` document's shape.
pub const SCHEMA: u32 = 1;

/// Changes kept per host for the recap and `--json` (a hostile or runaway agent
/// must not grow the master's memory without bound; the count stays exact).
pub const MAX_CHANGES_KEPT: usize = 10_000;

/// Bytes of diffs kept per host for `--json --diff`; past it a change is kept
/// without its diff (which was printed, with `--diff`, as it came).
pub const MAX_DIFF_BYTES_KEPT: usize = 64 * 1024 * 1024;

/// Bytes of a task's output kept per stream for `exec --json`.
pub const MAX_EXEC_OUTPUT: usize = 1024 * 1024;

#[derive(Default, Serialize, Clone, Debug)]
pub struct HostRecap {
    pub ok: u64,
    /// Resources that changed something (in check mode: would have).
    pub changed: u64,
    pub failed: u64,
    pub unreachable: u64,
    pub cancelled: u64,
    /// Hosts a stopped rollout never touched.
    pub skipped: u64,
    pub duration_ms: u64,
    /// Every change on this host (resources that changed, and handlers), in order.
    pub changes: Vec<ChangeReport>,
    /// Changes counted but not kept (past [`MAX_CHANGES_KEPT`] for this host).
    #[serde(skip_serializing_if = "is_zero")]
    pub changes_not_kept: u64,
    #[serde(skip)]
    diff_bytes: usize,
}

impl HostRecap {
    /// One word for how the host did: `failed`, `unreachable`, `skipped` (a stopped
    /// rollout never reached it), `cancelled` (every task it ran was cancelled) or `ok`.
    pub fn status(&self) -> &'static str {
        if self.failed > 0 {
            "failed"
        } else if self.unreachable > 0 {
            "unreachable"
        } else if self.skipped > 0 && self.ok == 0 {
            "skipped"
        } else if self.cancelled > 0 && self.ok == 0 {
            "cancelled"
        } else {
            "ok"
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One change as `--json` lists it.
#[derive(Serialize, Clone, Debug)]
pub struct ChangeReport {
    pub task_id: u64,
    pub task: String,
    /// `resource` or `handler`.
    pub kind: &'static str,
    pub resource: String,
    pub target: String,
    pub changed: bool,
    pub action: String,
    /// Check mode: nothing was changed.
    pub check: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Batch {
    pub index: usize,
    pub of: usize,
}

#[derive(Serialize, Clone, Debug)]
pub struct TaskReport {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub success: bool,
    /// Its return values (see `values.rs` for their JSON form); none when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<J>,
    /// Whether a resource of the task changed something, and how many did.
    pub changed: bool,
    pub changes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

impl TaskReport {
    /// It failed: not a success, and not cancelled (what the script asked for).
    fn failed(&self) -> bool {
        !self.success && self.kind != Some("cancelled")
    }
}

/// A host a stopped rollout never touched, and why.
#[derive(Serialize, Clone, Debug)]
pub struct SkipReport {
    pub host: String,
    pub reason: String,
    /// The batch the rollout stopped after.
    pub after_batch: Batch,
}

/// What is kept of a run.
pub struct Report {
    /// Keep every task (`--json`), not just the failed ones the recap names.
    keep_all: bool,
    /// Keep diffs (`--diff`).
    pub keep_diffs: bool,
    /// Keep each task's printed output (`exec --json`).
    pub keep_output: bool,
    recap: Mutex<BTreeMap<String, HostRecap>>,
    tasks: Mutex<Vec<TaskReport>>,
    changed_by_task: Mutex<HashMap<u64, u64>>,
    output_by_task: Mutex<HashMap<u64, (String, String)>>,
    skipped: Mutex<Vec<SkipReport>>,
    errors: Mutex<Vec<String>>,
}

/// A message as reports keep it: no trailing newline or blanks.
pub fn clean(msg: &str) -> String {
    msg.trim_end().to_string()
}

impl Report {
    pub fn new(keep_all: bool) -> Report {
        Report {
            keep_all,
            keep_diffs: false,
            keep_output: false,
            recap: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            changed_by_task: Mutex::new(HashMap::new()),
            output_by_task: Mutex::new(HashMap::new()),
            skipped: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub fn error(&self, msg: &str) {
        self.errors.lock().push(clean(msg));
    }

    /// Keep a change; whether it counts as a changed resource.
    pub fn change(&self, id: u64, host: &str, task: &str, c: &Change) -> bool {
        let counts = c.kind == ChangeKind::Resource && c.changed;
        let mut r = self.recap.lock();
        let h = r.entry(host.to_string()).or_default();
        if counts {
            h.changed += 1;
            *self.changed_by_task.lock().entry(id).or_default() += 1;
        }
        if c.changed || c.kind == ChangeKind::Handler {
            let diff = match &c.diff {
                Some(d) if self.keep_diffs && h.diff_bytes + d.len() <= MAX_DIFF_BYTES_KEPT => {
                    h.diff_bytes += d.len();
                    Some(d.clone())
                }
                _ => None,
            };
            if h.changes.len() < MAX_CHANGES_KEPT {
                h.changes.push(ChangeReport {
                    task_id: id,
                    task: task.to_string(),
                    kind: match c.kind {
                        ChangeKind::Resource => "resource",
                        ChangeKind::Handler => "handler",
                    },
                    resource: c.resource.clone(),
                    target: c.target.clone(),
                    changed: c.changed,
                    action: c.action.clone(),
                    check: c.check,
                    diff,
                    error: c.error.clone(),
                });
            } else {
                h.changes_not_kept += 1;
            }
        }
        counts
    }

    /// Keep a line of a task's output (`exec --json`): stdout lines are printed,
    /// stderr lines logged at info level by the task's command.
    pub fn output(&self, id: u64, level: LogLevel, text: &str) {
        if !self.keep_output {
            return;
        }
        let mut all = self.output_by_task.lock();
        let (out, err) = all.entry(id).or_default();
        let into = match level {
            LogLevel::Print => out,
            LogLevel::Info => err,
            _ => return,
        };
        if into.len() + text.len() < MAX_EXEC_OUTPUT {
            into.push_str(text);
            into.push('\n');
        }
    }

    /// The changes task `id` reported so far.
    pub fn changes_of(&self, id: u64) -> u64 {
        self.changed_by_task.lock().get(&id).copied().unwrap_or(0)
    }

    pub fn task_done(&self, rec: &TaskRecord, o: &Outcome) {
        let ms = o.duration.as_millis() as u64;
        let host = rec.host();
        {
            let mut r = self.recap.lock();
            let h = r.entry(host.clone()).or_default();
            h.duration_ms += ms;
            match &o.result {
                Ok(_) => h.ok += 1,
                Err(e) if e.kind == ErrorKind::Unreachable => h.unreachable += 1,
                Err(e) if e.kind == ErrorKind::Cancelled => h.cancelled += 1,
                Err(_) => h.failed += 1,
            }
        }
        // Without --json only failures are kept (the recap names each failed host's
        // first error): a long run of small tasks keeps no per-task report.
        if !self.keep_all && o.result.is_ok() {
            return;
        }
        let finished = SystemTime::now();
        let started = finished.checked_sub(o.duration).unwrap_or(finished);
        let changes = self
            .changed_by_task
            .lock()
            .get(&rec.id)
            .copied()
            .unwrap_or(0);
        self.tasks.lock().push(TaskReport {
            id: rec.id,
            name: rec.name.clone(),
            host: host.clone(),
            started_at: rfc3339(started),
            finished_at: rfc3339(finished),
            duration_ms: ms,
            success: o.result.is_ok(),
            values: o.result.as_ref().ok().map(values::to_json),
            changed: changes > 0,
            changes,
            kind: o.result.as_ref().err().map(|e| e.kind.as_str()),
            error: o
                .result
                .as_ref()
                .err()
                .map(|e| clean(&e.display_for(&host))),
            batch: rec.batch.map(|(index, of)| Batch { index, of }),
        });
    }

    pub fn skipped(&self, host: &str, reason: &str, after: usize, of: usize) {
        self.recap
            .lock()
            .entry(host.to_string())
            .or_default()
            .skipped += 1;
        self.skipped.lock().push(SkipReport {
            host: host.to_string(),
            reason: reason.to_string(),
            after_batch: Batch { index: after, of },
        });
    }

    /// Tasks that failed (not counting cancelled ones, which the script asked for).
    pub fn failed_tasks(&self) -> u64 {
        self.recap
            .lock()
            .values()
            .map(|h| h.failed + h.unreachable)
            .sum()
    }

    pub fn recap(&self) -> BTreeMap<String, HostRecap> {
        self.recap.lock().clone()
    }

    /// The failed tasks kept so far (a cancelled task did not fail: the script asked).
    pub fn failures(&self) -> Vec<TaskReport> {
        self.tasks
            .lock()
            .iter()
            .filter(|t| t.failed())
            .cloned()
            .collect()
    }

    /// The `--json` document.
    pub fn document(&self, info: &RunInfo, end: &RunEnd) -> J {
        let mut tasks = self.tasks.lock().clone();
        tasks.sort_by_key(|t| t.id);
        // Every error the run printed, failed tasks included.
        let mut errors = self.errors.lock().clone();
        for t in tasks.iter().filter(|t| t.failed()) {
            if let Some(e) = &t.error {
                // A printed error may name the task after the message (a spawned
                // task's failure): the same error, listed once.
                if !errors.iter().any(|p| p.starts_with(e.as_str())) {
                    errors.push(e.clone());
                }
            }
        }
        let vars: serde_json::Map<String, J> = info
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), J::from(v.as_str())))
            .collect();
        let mut doc = json!({
            "schema": SCHEMA,
            "run_id": info.id,
            "sloth_version": env!("CARGO_PKG_VERSION"),
            "command": info.command,
            "script": info.script,
            "vars": vars,
            "started_at": rfc3339(info.started),
            "finished_at": rfc3339(info.started + end.wall),
            "duration_ms": end.wall.as_millis() as u64,
            "check": end.check,
            "success": end.success,
            "exit_code": end.exit_code,
            "script_error": end.script_error.as_deref().map(clean),
            "hosts": self.recap(),
            "tasks": tasks,
            "skipped": self.skipped.lock().clone(),
            "errors": errors,
        });
        if let Some(cmd) = &end.exec {
            doc["exec"] = self.exec_section(cmd, &tasks);
        }
        doc
    }

    /// `exec --json`: per host the command's exit code and output.
    fn exec_section(&self, command: &str, tasks: &[TaskReport]) -> J {
        let outputs = self.output_by_task.lock();
        let mut hosts = serde_json::Map::new();
        for t in tasks {
            let (stdout, stderr) = outputs.get(&t.id).cloned().unwrap_or_default();
            let exit_code = match (&t.values, &t.error) {
                (Some(J::Array(v)), _) => v.first().cloned().unwrap_or(J::Null),
                (None, Some(e)) => e
                    .rsplit_once("exit code ")
                    .and_then(|(_, n)| n.trim().parse::<i64>().ok())
                    .map(J::from)
                    .unwrap_or(J::Null),
                _ => J::Null,
            };
            hosts.insert(
                t.host.clone(),
                json!({
                    "exit_code": exit_code,
                    "stdout": stdout,
                    "stderr": stderr,
                    "success": t.success,
                    "error": t.error,
                }),
            );
        }
        json!({ "command": command, "hosts": hosts })
    }
}

/// How a run ended, for its document.
pub struct RunEnd {
    pub wall: Duration,
    pub check: bool,
    pub success: bool,
    pub exit_code: i32,
    pub script_error: Option<String>,
    /// `sloth-master exec`: the command.
    pub exec: Option<String>,
}
