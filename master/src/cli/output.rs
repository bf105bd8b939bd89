//! What the user sees: task logs prefixed by host, the changes resources made (with
//! their diffs under `--diff`), the script's own prints, the per-host recap, and the
//! `--json` document.

use crate::engine::events::{Events, Progress};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use sloth_proto::change::{Change, ChangeKind, Mode};
use sloth_proto::protocol::{ErrorKind, LogLevel};

use crate::engine::registry::{Outcome, TaskRecord};

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
    /// Bytes of diffs kept for this host (bounded by [`MAX_DIFF_BYTES_KEPT`]).
    #[serde(skip)]
    diff_bytes: usize,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Changes kept per host for the recap and `--json` (a hostile or runaway agent
/// must not grow the master's memory without bound; the count stays exact).
pub const MAX_CHANGES_KEPT: usize = 10_000;

/// Bytes of diffs kept per host for `--json --diff`; past it a change is kept
/// without its diff (which was printed, with `--diff`, as it came).
pub const MAX_DIFF_BYTES_KEPT: usize = 64 * 1024 * 1024;

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
pub struct TaskReport {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Resources of this task that changed something.
    pub changed: u64,
}

pub struct Output {
    pub json: bool,
    /// Print each change's diff under its host (`--diff`).
    pub show_diffs: bool,
    /// Keep diffs for `--json` (`--diff`); without it a diff an agent sends anyway
    /// is dropped.
    keep_diffs: bool,
    /// The run is in check mode (the recap says so).
    pub check: bool,
    color: bool,
    /// Progress bars only on a terminal (never when piped or with --json).
    interactive: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    recap: Mutex<BTreeMap<String, HostRecap>>,
    tasks: Mutex<Vec<TaskReport>>,
    /// Changed resources per task id.
    changed_by_task: Mutex<std::collections::HashMap<u64, u64>>,
    errors: Mutex<Vec<String>>,
    /// Keep the `--json` document for the caller instead of printing it (a command
    /// that prints one document made of several parts).
    keep_json: bool,
    kept: Mutex<Option<serde_json::Value>>,
}

impl Output {
    pub fn new(json: bool) -> Output {
        let color =
            !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let interactive = !json && std::io::stdout().is_terminal();
        Output {
            json,
            show_diffs: false,
            keep_diffs: false,
            check: false,
            color,
            interactive,
            bar: Mutex::new(None),
            recap: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            changed_by_task: Mutex::new(std::collections::HashMap::new()),
            errors: Mutex::new(Vec::new()),
            keep_json: false,
            kept: Mutex::new(None),
        }
    }

    /// This output for a run in `mode`: check mode is named in the recap, diffs are
    /// printed with `--diff`.
    pub fn with_mode(mut self, mode: Mode) -> Output {
        self.check = mode.check;
        self.show_diffs = mode.diff && !self.json;
        self.keep_diffs = mode.diff;
        self
    }

    /// Like [`Output::new`] with `--json`, but [`Output::print_json`] keeps the
    /// document for [`Output::take_json`] instead of printing it.
    pub fn keeping_json() -> Output {
        Output {
            keep_json: true,
            ..Output::new(true)
        }
    }

    /// The document [`Output::print_json`] kept (see [`Output::keeping_json`]).
    pub fn take_json(&self) -> Option<serde_json::Value> {
        self.kept.lock().take()
    }

    /// Human output goes to stdout, or to stderr when stdout carries JSON.
    fn line(&self, s: &str) {
        if let Some(bar) = self.bar.lock().as_ref() {
            // Print above the bar instead of through it.
            bar.suspend(|| {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{s}");
            });
            return;
        }
        if self.json {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{s}");
        } else {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{s}");
        }
    }

    /// Show a progress bar for a fan-out or pool of `len` tasks (terminal only).
    /// The bar lives until [`Progress`] is dropped.
    pub fn progress(&self, len: u64, what: &str) -> Bar<'_> {
        if self.interactive && len > 1 {
            let bar = indicatif::ProgressBar::new(len);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            *self.bar.lock() = Some(bar);
        }
        Bar { out: self }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// A line a task logged or printed, as it happens.
    pub fn task_log(&self, host: &str, task: &str, level: LogLevel, text: &str) {
        let prefix = self.paint("36", &format!("[{host} {task}]"));
        for l in text.split('\n') {
            match level {
                LogLevel::Print | LogLevel::Info => self.line(&format!("{prefix} {l}")),
                LogLevel::Debug => {
                    if std::env::var_os("SLOTH_DEBUG").is_some() {
                        self.line(&format!("{prefix} debug: {l}"))
                    }
                }
                LogLevel::Warn => self.line(&format!("{prefix} {} {l}", self.paint("33", "warn:"))),
                LogLevel::Error => {
                    self.line(&format!("{prefix} {} {l}", self.paint("31", "error:")))
                }
            }
        }
    }

    /// What a resource or handler did: counted for the recap, kept for `--json`,
    /// and shown (a line for each change, its diff with `--diff`).
    pub fn task_change(&self, id: u64, host: &str, task: &str, c: &Change) {
        let counts = c.kind == ChangeKind::Resource && c.changed;
        {
            let mut r = self.recap.lock();
            let h = r.entry(host.to_string()).or_default();
            if counts {
                h.changed += 1;
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
        }
        if counts {
            *self.changed_by_task.lock().entry(id).or_default() += 1;
        }
        if !c.changed && c.kind == ChangeKind::Resource {
            return;
        }
        let prefix = self.paint("36", &format!("[{host} {task}]"));
        let line = match c.kind {
            ChangeKind::Resource if c.check => {
                format!(
                    "{} {} ({})",
                    self.paint("33", "would change:"),
                    c.label(),
                    c.action
                )
            }
            ChangeKind::Resource => {
                format!(
                    "{} {} ({})",
                    self.paint("33", "changed:"),
                    c.label(),
                    c.action
                )
            }
            ChangeKind::Handler => match &c.error {
                Some(e) => format!("{} {}: {e}", self.paint("31", "handler failed:"), c.target),
                None => format!("{} {}: {}", self.paint("35", "handler"), c.target, c.action),
            },
        };
        self.line(&format!("{prefix} {line}"));
        if let (true, Some(d)) = (self.show_diffs, &c.diff) {
            for l in d.lines() {
                let painted = if l.starts_with("+++") || l.starts_with("---") {
                    self.paint("1", l)
                } else if l.starts_with('+') {
                    self.paint("32", l)
                } else if l.starts_with('-') {
                    self.paint("31", l)
                } else if l.starts_with("@@") {
                    self.paint("36", l)
                } else {
                    l.to_string()
                };
                self.line(&format!("{prefix}   {painted}"));
            }
        }
    }

    /// `print` and `log.*` in the main script.
    pub fn script_log(&self, level: LogLevel, text: &str) {
        match level {
            LogLevel::Print | LogLevel::Info => self.line(text),
            LogLevel::Debug => {
                if std::env::var_os("SLOTH_DEBUG").is_some() {
                    self.line(&format!("debug: {text}"))
                }
            }
            LogLevel::Warn => self.line(&format!("{} {text}", self.paint("33", "warn:"))),
            LogLevel::Error => self.line(&format!("{} {text}", self.paint("31", "error:"))),
        }
    }

    /// A failure nobody awaited (spawned tasks): shown at once, never lost.
    pub fn unawaited_failure(&self, msg: &str) {
        self.line(&format!("{} {msg}", self.paint("31", "task failed:")));
    }

    pub fn error(&self, msg: &str) {
        self.errors.lock().push(msg.to_string());
        if self.json {
            eprintln!("error: {msg}");
        } else {
            eprintln!("{} {msg}", self.paint("31", "error:"));
        }
    }

    pub fn record(&self, rec: &TaskRecord, o: &Outcome) {
        let ms = o.duration.as_millis() as u64;
        {
            let mut r = self.recap.lock();
            let h = r.entry(rec.host()).or_default();
            h.duration_ms += ms;
            match &o.result {
                Ok(_) => h.ok += 1,
                Err(e) if e.kind == ErrorKind::Unreachable => h.unreachable += 1,
                Err(e) if e.kind == ErrorKind::Cancelled => h.cancelled += 1,
                Err(_) => h.failed += 1,
            }
        }
        // Without --json only failures are listed (the recap names each failed host's
        // first error); successes are counted above. A long run of small tasks then
        // keeps no per-task report.
        if !self.json && o.result.is_ok() {
            return;
        }
        self.tasks.lock().push(TaskReport {
            id: rec.id,
            name: rec.name.clone(),
            host: rec.host(),
            success: o.result.is_ok(),
            kind: o.result.as_ref().err().map(|e| e.kind.as_str()),
            error: o.result.as_ref().err().map(|e| e.display_for(&rec.host())),
            duration_ms: ms,
            changed: self
                .changed_by_task
                .lock()
                .get(&rec.id)
                .copied()
                .unwrap_or(0),
        });
    }

    /// Tasks that failed (not counting cancelled ones, which the script asked for).
    /// A host a stopped rollout did not touch.
    pub fn skipped(&self, host: &str) {
        self.recap
            .lock()
            .entry(host.to_string())
            .or_default()
            .skipped += 1;
    }

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

    /// The closing recap: one line per host, or a summary plus failures when long.
    pub fn print_recap(&self, wall: Duration) {
        if self.json {
            return;
        }
        let recap = self.recap.lock().clone();
        if recap.is_empty() {
            return;
        }
        let screen = 40;
        self.line("");
        if self.check {
            self.line(&self.paint(
                "1",
                "RECAP (check mode: nothing was changed; changed= counts what would change)",
            ));
        } else {
            self.line(&self.paint("1", "RECAP"));
        }
        let width = recap.keys().map(|k| k.len()).max().unwrap_or(5).max(5);
        let bad = |h: &HostRecap| h.failed + h.unreachable > 0;
        let show_all = recap.len() <= screen;
        for (host, h) in &recap {
            if !show_all && !bad(h) {
                continue;
            }
            let status = if h.unreachable > 0 {
                self.paint("31", "unreachable")
            } else if h.failed > 0 {
                self.paint("31", "failed")
            } else if h.skipped > 0 && h.ok == 0 {
                self.paint("33", "skipped (rollout stopped)")
            } else {
                self.paint("32", "ok")
            };
            let mut l = format!(
                "  {host:<width$}  ok={:<4} changed={:<4} failed={:<3} unreachable={:<3}",
                h.ok, h.changed, h.failed, h.unreachable
            );
            if h.cancelled > 0 {
                l.push_str(&format!(" cancelled={:<3}", h.cancelled));
            }
            l.push_str(&format!(" busy={:>8}  {status}", fmt_ms(h.duration_ms)));
            self.line(&l);
        }
        // Why each failed host failed (its first failure), so the recap is enough to act on.
        let tasks = self.tasks.lock().clone();
        let mut shown = 0;
        for (host, h) in &recap {
            if !bad(h) || shown >= screen {
                continue;
            }
            if let Some(t) = tasks
                .iter()
                .filter(|t| &t.host == host && !t.success)
                .min_by_key(|t| t.id)
            {
                if let Some(e) = &t.error {
                    let first = e.lines().next().unwrap_or_default();
                    self.line(&format!("  {} {first}", self.paint("31", "!")));
                    shown += 1;
                }
            }
        }
        let hosts = recap.len();
        let failed_hosts = recap.values().filter(|h| bad(h)).count();
        let tasks: u64 = recap
            .values()
            .map(|h| h.ok + h.failed + h.unreachable + h.cancelled)
            .sum();
        self.line(&format!(
            "  {hosts} host(s), {tasks} task(s), {failed_hosts} host(s) with failures, {} wall time",
            fmt_ms(wall.as_millis() as u64)
        ));
    }

    /// The one document `--json` prints on stdout.
    pub fn print_json(
        &self,
        script: &str,
        success: bool,
        exit_code: i32,
        script_error: Option<&str>,
        wall: Duration,
    ) {
        if !self.json {
            return;
        }
        let mut tasks = self.tasks.lock().clone();
        tasks.sort_by_key(|t| t.id);
        let doc = serde_json::json!({
            "script": script,
            "success": success,
            "check": self.check,
            "exit_code": exit_code,
            "duration_ms": wall.as_millis() as u64,
            "script_error": script_error,
            "hosts": self.recap(),
            "tasks": tasks,
            "errors": self.errors.lock().clone(),
        });
        if self.keep_json {
            *self.kept.lock() = Some(doc);
            return;
        }
        print_doc(&doc);
    }
}

/// A live progress bar (a no-op when not on a terminal).
pub struct Bar<'a> {
    out: &'a Output,
}

impl Progress for Bar<'_> {
    fn set(&self, done: u64) {
        if let Some(b) = self.out.bar.lock().as_ref() {
            b.set_position(done);
        }
    }
}

impl Drop for Bar<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.out.bar.lock().take() {
            b.finish_and_clear();
        }
    }
}

impl Events for Output {
    fn task_log(&self, host: &str, task: &str, level: LogLevel, text: &str) {
        Output::task_log(self, host, task, level, text)
    }
    fn task_change(&self, id: u64, host: &str, task: &str, change: &Change) {
        Output::task_change(self, id, host, task, change)
    }
    fn script_log(&self, level: LogLevel, text: &str) {
        Output::script_log(self, level, text)
    }
    fn task_done(&self, rec: &TaskRecord, outcome: &Outcome) {
        self.record(rec, outcome)
    }
    fn unawaited_failure(&self, msg: &str) {
        Output::unawaited_failure(self, msg)
    }
    fn host_skipped(&self, host: &str) {
        self.skipped(host)
    }
    fn progress(&self, len: u64, what: &str) -> Box<dyn Progress + '_> {
        Box::new(Output::progress(self, len, what))
    }
}

pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Print a JSON document on stdout (what `--json` gives a machine).
pub fn print_doc(doc: &serde_json::Value) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode the JSON report: {e}"),
    }
}
