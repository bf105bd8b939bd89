//! What the user sees: task logs prefixed by host, the changes resources made (with
//! their diffs under `--diff`), the script's own prints, progress, the per-host recap;
//! the `--json` document ([`report`], schema 1) and the `--events` stream
//! ([`stream`]) for machines.

pub mod machine;
mod report;
mod run_info;
mod stream;
mod values;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use sloth_proto::change::{Change, ChangeKind, Mode};
use sloth_proto::protocol::LogLevel;

use crate::engine::events::{Events, Progress, Rollout};
use crate::engine::registry::{Outcome, TaskRecord};
pub use report::{HostRecap, RunEnd, MAX_CHANGES_KEPT, MAX_DIFF_BYTES_KEPT, SCHEMA};
pub use run_info::{is_secret, masked_command, RunInfo, MASK, SECRET_WORDS};
pub use stream::EventStream;

pub struct Output {
    pub json: bool,
    /// Print each change's diff under its host (`--diff`).
    pub show_diffs: bool,
    /// The run is in check mode (the recap says so).
    pub check: bool,
    color: bool,
    /// Progress bars only on a terminal (never when piped or with --json).
    interactive: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    report: report::Report,
    run: Mutex<Option<RunInfo>>,
    events: Option<EventStream>,
    /// Keep the `--json` document for the caller instead of printing it (a command
    /// that prints one document made of several parts).
    keep_json: bool,
    kept: Mutex<Option<serde_json::Value>>,
    /// Stdout carries JSON (`--json`, `--events -`): human lines go to stderr.
    stdout_is_machine: bool,
    /// The run's end was reported (by the run, or by an interrupt: first wins).
    finished: std::sync::atomic::AtomicBool,
    /// Where the run is recorded (the history database), once the run has started.
    history: std::sync::OnceLock<crate::history::recorder::Recorder>,
}

impl Output {
    pub fn new(json: bool) -> Output {
        let color =
            !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let interactive = !json && std::io::stdout().is_terminal();
        Output {
            json,
            show_diffs: false,
            check: false,
            color,
            interactive,
            bar: Mutex::new(None),
            report: report::Report::new(json),
            run: Mutex::new(None),
            events: None,
            keep_json: false,
            kept: Mutex::new(None),
            stdout_is_machine: json,
            finished: std::sync::atomic::AtomicBool::new(false),
            history: std::sync::OnceLock::new(),
        }
    }

    /// This output for a run in `mode`: check mode is named in the recap, diffs are
    /// printed with `--diff` (and kept for `--json`).
    pub fn with_mode(mut self, mode: Mode) -> Output {
        self.check = mode.check;
        self.show_diffs = mode.diff && !self.json;
        self.report.keep_diffs = mode.diff;
        self
    }

    /// Stream the run's events (`--events`).
    pub fn with_events(mut self, events: Option<EventStream>) -> Output {
        // A progress bar would tear through events on the terminal.
        if events.is_some() {
            self.interactive = false;
        }
        // Events on stdout: human output moves to stderr, uncoloured, as with --json.
        if events.as_ref().is_some_and(EventStream::is_stdout) {
            self.stdout_is_machine = true;
            self.color = false;
        }
        self.events = events;
        self
    }

    /// Keep every task's printed output (`exec --json`).
    pub fn keeping_output(mut self) -> Output {
        self.report.keep_output = true;
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

    /// Record the run from now on (its start is already written).
    pub fn record_to(&self, rec: crate::history::recorder::Recorder) {
        let _ = self.history.set(rec);
    }

    /// The run's identity, once started.
    pub fn run_info(&self) -> Option<RunInfo> {
        self.run.lock().clone()
    }

    /// The run starts: what identifies it in the document and the events.
    pub fn run_started(&self, info: RunInfo) {
        self.emit(
            "run_started",
            json!({
                "schema": SCHEMA,
                "run_id": info.id,
                "sloth_version": env!("CARGO_PKG_VERSION"),
                "command": info.command,
                "script": info.script,
                "vars": info.vars.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "check": self.check,
            }),
        );
        *self.run.lock() = Some(info);
    }

    fn emit(&self, event: &str, fields: serde_json::Value) {
        if let Some(e) = &self.events {
            e.emit(event, fields);
        }
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
        if self.stdout_is_machine {
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
    fn task_line(&self, host: &str, task: &str, level: LogLevel, text: &str) {
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

    /// A change, as it happens: a line for each one that changed something (or a
    /// handler), with its diff under it with `--diff`.
    fn change_line(&self, host: &str, task: &str, c: &Change) {
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

    /// An error of the run: printed on stderr, kept for `--json`.
    pub fn error(&self, msg: &str) {
        self.report.error(msg);
        if self.json {
            errln!("error: {msg}");
        } else {
            errln!("{} {msg}", self.paint("31", "error:"));
        }
    }

    /// Tasks that failed (not counting cancelled ones, which the script asked for).
    pub fn failed_tasks(&self) -> u64 {
        self.report.failed_tasks()
    }

    pub fn recap(&self) -> std::collections::BTreeMap<String, HostRecap> {
        self.report.recap()
    }

    /// The closing recap: one line per host, or a summary plus failures when long.
    pub fn print_recap(&self, wall: Duration) {
        if self.json {
            return;
        }
        let recap = self.report.recap();
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
            let status = match h.status() {
                s @ ("failed" | "unreachable") => self.paint("31", s),
                "skipped" => self.paint("33", "skipped (rollout stopped)"),
                "cancelled" => self.paint("33", "cancelled"),
                s => self.paint("32", s),
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
        let failures = self.report.failures();
        let mut shown = 0;
        for (host, h) in &recap {
            if !bad(h) || shown >= screen {
                continue;
            }
            if let Some(t) = failures
                .iter()
                .filter(|t| &t.host == host)
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

    /// The run ended: the `run_finished` event, and with `--json` the one document on
    /// stdout (or kept, see [`Output::keeping_json`]).
    pub fn finish(&self, end: &RunEnd) {
        if self
            .finished
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        if let Some(h) = self.history.get() {
            h.finish(history_end(end, &self.report.recap()));
        }
        self.emit(
            "run_finished",
            json!({
                "success": end.success,
                "exit_code": end.exit_code,
                "duration_ms": end.wall.as_millis() as u64,
                "script_error": end.script_error.as_deref().map(report::clean),
            }),
        );
        // Written by their own thread: every event is out before the run ends.
        if let Some(e) = &self.events {
            e.flush(None);
        }
        if !self.json {
            return;
        }
        let info = self
            .run
            .lock()
            .clone()
            .unwrap_or_else(|| RunInfo::new("", &[]));
        let doc = self.report.document(&info, end);
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
    fn task_started(&self, rec: &TaskRecord) {
        self.emit(
            "task_started",
            json!({
                "task_id": rec.id,
                "name": rec.name,
                "host": rec.host(),
                "batch": rec.batch.map(|(index, of)| json!({"index": index, "of": of})),
            }),
        );
    }

    /// Room for `bytes` now in the stream [`Output::line`] writes to, and in the
    /// `--events` queue (see [`EventStream::has_room`]): a pipe with at
    /// least `PIPE_BUF` free (and `bytes` within it), a file, a terminal.
    fn output_ready(&self, bytes: usize) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use std::os::fd::AsFd;
        const PIPE_BUF: usize = 4096;
        if bytes > PIPE_BUF {
            return false;
        }
        let (out, err) = (std::io::stdout(), std::io::stderr());
        let fd = if self.stdout_is_machine {
            err.as_fd()
        } else {
            out.as_fd()
        };
        let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&now)).is_ok_and(|n| n == 1)
            && fds[0].revents().contains(PollFlags::OUT)
            && self.events.as_ref().is_none_or(|e| e.has_room(bytes))
    }

    fn task_log(&self, id: u64, host: &str, task: &str, level: LogLevel, text: &str) {
        self.report.output(id, level, text);
        if let Some(h) = self.history.get() {
            h.log(Some(id), host, level.as_str(), text);
        }
        if let Some(e) = &self.events {
            e.emit_log(
                json!({"task_id": id, "host": host, "task": task, "level": level.as_str(), "line": text}),
            );
        }
        self.task_line(host, task, level, text);
    }

    fn task_change(&self, id: u64, host: &str, task: &str, c: &Change) {
        self.report.change(id, host, task, c);
        if let Some(h) = self.history.get() {
            h.change(crate::history::recorder::ChangeRow {
                task_id: Some(id),
                host: host.to_string(),
                resource: c.resource.clone(),
                target: c.target.clone(),
                action: c.action.clone(),
                changed: c.changed,
                check: c.check,
                diff: c.diff.clone(),
                error: c.error.clone(),
            });
        }
        self.emit(
            "change",
            json!({
                "task_id": id, "host": host, "task": task,
                "kind": match c.kind { ChangeKind::Resource => "resource", ChangeKind::Handler => "handler" },
                "resource": c.resource, "target": c.target, "changed": c.changed,
                "action": c.action, "check": c.check, "error": c.error,
            }),
        );
        self.change_line(host, task, c);
    }

    fn script_log(&self, level: LogLevel, text: &str) {
        if level == LogLevel::Error {
            self.report.error(text);
        }
        if let Some(h) = self.history.get() {
            h.log(None, "master", level.as_str(), text);
        }
        self.emit("script_log", json!({"level": level.as_str(), "line": text}));
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

    fn task_done(&self, rec: &TaskRecord, o: &Outcome) {
        self.report.task_done(rec, o);
        let host = rec.host();
        let err = o.result.as_ref().err();
        if let Some(h) = self.history.get() {
            h.task(crate::history::recorder::TaskEnd {
                task_id: rec.id,
                name: rec.name.clone(),
                host: host.clone(),
                finished: std::time::SystemTime::now(),
                duration: o.duration,
                success: o.result.is_ok(),
                kind: err.map(|e| e.kind.as_str().to_string()),
                error: err.map(|e| report::clean(&e.display_for(&host))),
                changes: self.report.changes_of(rec.id),
            });
        }
        self.emit(
            "task_finished",
            json!({
                "task_id": rec.id,
                "name": rec.name,
                "host": host,
                "success": o.result.is_ok(),
                "kind": err.map(|e| e.kind.as_str()),
                "error": err.map(|e| report::clean(&e.display_for(&host))),
                "duration_ms": o.duration.as_millis() as u64,
                "batch": rec.batch.map(|(index, of)| json!({"index": index, "of": of})),
            }),
        );
    }

    fn unawaited_failure(&self, msg: &str) {
        self.report.error(msg);
        self.line(&format!("{} {msg}", self.paint("31", "task failed:")));
    }

    fn rollout(&self, event: Rollout<'_>) {
        match event {
            Rollout::BatchStarted { index, of, hosts } => self.emit(
                "batch_started",
                json!({"index": index, "of": of, "hosts": hosts}),
            ),
            Rollout::BatchFinished { index, of, failed } => self.emit(
                "batch_finished",
                json!({"index": index, "of": of, "failed": failed}),
            ),
            Rollout::Stopped {
                after,
                of,
                reason,
                skipped,
            } => {
                for h in skipped {
                    self.report.skipped(h, reason, after, of);
                }
                self.emit(
                    "rollout_stopped",
                    json!({"after_batch": after, "of": of, "reason": reason, "skipped": skipped}),
                );
            }
        }
    }

    fn progress(&self, len: u64, what: &str) -> Box<dyn Progress + '_> {
        Box::new(Output::progress(self, len, what))
    }
}

/// A run's end as the history records it.
fn history_end(
    end: &RunEnd,
    recap: &std::collections::BTreeMap<String, HostRecap>,
) -> crate::history::recorder::RunEnd {
    let hosts = recap
        .iter()
        .map(|(host, r)| crate::history::recorder::HostRow {
            host: host.clone(),
            status: r.status().to_string(),
            ok: r.ok,
            changed: r.changed,
            failed: r.failed,
            unreachable: r.unreachable,
            cancelled: r.cancelled,
            skipped: r.skipped,
            error: None,
        })
        .collect();
    crate::history::recorder::RunEnd {
        finished_at: run_info::rfc3339(std::time::SystemTime::now()),
        status: match end.exit_code {
            0 => "ok",
            super::EXIT_INTERRUPTED => "interrupted",
            _ => "failed",
        },
        exit_code: end.exit_code,
        error: end.script_error.as_deref().map(report::clean),
        hosts,
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

/// Print a JSON document on stdout (what `--json` gives a machine); see
/// [`machine`] for where stdout goes and what a failed write does.
pub fn print_doc(doc: &serde_json::Value) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => machine::write_doc(&s),
        Err(e) => errln!("error: cannot encode the JSON report: {e}"),
    }
}
