//! Recording a run as it happens, off its path: the run hands rows to a channel, one
//! thread writes them in batches (a transaction each), and the run never waits for the
//! disk. A database that cannot be opened or written costs one warning on stderr, and
//! the run goes on unrecorded. The run's row is written first, as `running`; a master
//! killed before its end leaves it so, and [`super::query::mark_interrupted`] tells.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::params;
use serde::Serialize;

use super::Db;
use sloth_proto::text::rfc3339_millis;

/// Log lines kept per task by default (and for the main script); the rest are counted.
pub const DEFAULT_LOG_LINES: u32 = 1000;
/// The database size past which the oldest runs are pruned after a run.
pub const DEFAULT_MAX_SIZE: u64 = 512 * 1024 * 1024;
/// Rows written in one transaction at most.
const BATCH: usize = 4096;
/// How long the writer gathers rows after the first before it commits them (unless
/// the run's end comes): one commit per window instead of one per task. Meanwhile
/// it sleeps (parked, not waiting on the channel), so sending a row wakes nobody.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const INSERT_LOG: &str =
    "INSERT INTO logs (run, task_id, host, level, line) VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_CHANGE: &str = "INSERT INTO changes (run, task_id, host, resource, target, action, changed, check_mode, diff, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_TASK: &str = "INSERT INTO tasks (run, task_id, name, host, started_at, finished_at, duration_ms, success, kind, error, changes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const INSERT_HOST: &str = "INSERT OR REPLACE INTO hosts (run, host, status, ok, changed, failed, unreachable, cancelled, skipped, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const UPDATE_RUN: &str =
    "UPDATE runs SET finished_at = ?2, status = ?3, exit_code = ?4, error = ?5 WHERE key = ?1";
const INSERT_NOTE: &str =
    "INSERT INTO logs (run, task_id, host, level, line) VALUES (?1, ?2, ?3, 'note', ?4)";

/// How long the end of a run waits for its rows to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// A run as it starts.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub id: String,
    /// `run`, `exec` or `health`.
    pub kind: &'static str,
    pub command: Vec<String>,
    pub script: String,
    pub script_path: Option<String>,
    pub script_sha256: Option<String>,
    pub script_text: Option<String>,
    pub vars: Vec<(String, String)>,
    pub inventory: Option<String>,
    pub inventory_sha256: Option<String>,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub check: bool,
    pub started_at: String,
}

/// A task as it ended.
#[derive(Debug, Clone)]
pub struct TaskEnd {
    pub task_id: u64,
    pub name: String,
    pub host: String,
    pub finished: std::time::SystemTime,
    pub duration: Duration,
    pub success: bool,
    pub kind: Option<String>,
    pub error: Option<String>,
    pub changes: u64,
}

/// A change a resource or handler reported (as recorded, and as `history show` reads
/// it back).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<u64>,
    pub host: String,
    pub resource: String,
    pub target: String,
    pub action: String,
    pub changed: bool,
    pub check: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One host's part of the run (as recorded, and as `history show` reads it back).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    /// Not serialized: `history show --json` keys hosts by name.
    #[serde(skip)]
    pub host: String,
    pub status: String,
    pub ok: u64,
    pub changed: u64,
    pub failed: u64,
    pub unreachable: u64,
    pub cancelled: u64,
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run as it ended.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub finished_at: String,
    /// `ok`, `failed` or `interrupted`.
    pub status: &'static str,
    pub exit_code: i32,
    pub error: Option<String>,
    pub hosts: Vec<HostRow>,
}

enum Msg {
    Log {
        task_id: Option<u64>,
        host: String,
        level: &'static str,
        line: String,
    },
    Change(ChangeRow),
    Task(TaskEnd),
    End(RunEnd, mpsc::Sender<()>),
}

/// Where a run's rows go. Cheap to call from any thread.
pub struct Recorder {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    /// The writer thread, unparked when the end is sent.
    writer: std::thread::Thread,
    broken: Arc<AtomicBool>,
    path: String,
}

impl Recorder {
    /// Open the database at `path` and record the run's start; the error is the one
    /// warning the caller prints.
    pub fn start(
        path: &std::path::Path,
        run: RunStart,
        log_lines: u32,
        max_size: u64,
    ) -> Result<Recorder, String> {
        let db = Db::open(path)?;
        let key =
            insert_run(&db, &run).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let broken = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            db,
            rows: Rows {
                run: key,
                log_lines,
                logs_kept: HashMap::new(),
            },
            max_size,
            broken: broken.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sloth-history".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the history writer: {e}"))?;
        Ok(Recorder {
            tx: Mutex::new(Some(tx)),
            writer: thread.thread().clone(),
            broken,
            path: path.display().to_string(),
        })
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(m);
        }
    }

    pub fn log(&self, task_id: Option<u64>, host: &str, level: &'static str, line: &str) {
        self.send(Msg::Log {
            task_id,
            host: host.to_string(),
            level,
            line: line.to_string(),
        });
    }

    pub fn change(&self, c: ChangeRow) {
        self.send(Msg::Change(c));
    }

    pub fn task(&self, t: TaskEnd) {
        self.send(Msg::Task(t));
    }

    /// Record the end, and wait (bounded) for everything to be written. Later calls
    /// do nothing.
    pub fn finish(&self, end: RunEnd) {
        let Some(tx) = self.tx.lock().take() else {
            return;
        };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(Msg::End(end, done_tx)).is_err() {
            return;
        }
        drop(tx);
        self.writer.unpark();
        if done_rx.recv_timeout(FLUSH_TIMEOUT).is_err() && !self.broken.load(Ordering::Relaxed) {
            errln!(
                "warning: run history: {} took over {} s to record this run; it may be incomplete",
                self.path,
                FLUSH_TIMEOUT.as_secs()
            );
        }
    }
}

struct Writer {
    db: Db,
    rows: Rows,
    max_size: u64,
    broken: Arc<AtomicBool>,
}

/// What the writer keeps count of between batches.
struct Rows {
    /// The run's `key` in `runs`.
    run: i64,
    log_lines: u32,
    /// Lines kept and lines dropped, per task (`None`: the main script).
    logs_kept: HashMap<Option<u64>, (u32, u64)>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(BATCH);
        while let Ok(first) = rx.recv() {
            let window = std::time::Instant::now() + BATCH_WINDOW;
            let mut ended = matches!(first, Msg::End(..));
            batch.push(first);
            'gather: while !ended && batch.len() < BATCH {
                loop {
                    match rx.try_recv() {
                        Ok(m) => {
                            ended = matches!(m, Msg::End(..));
                            batch.push(m);
                            if ended || batch.len() >= BATCH {
                                break 'gather;
                            }
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => break 'gather,
                    }
                }
                let left = window.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                // Woken early by `finish` (the end is in the channel).
                std::thread::park_timeout(left);
            }
            let mut done = None;
            let result = self.write(&mut batch, &mut done);
            if let Err(e) = result {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    errln!(
                        "warning: run history: cannot write {}: {e}; the run goes on unrecorded",
                        self.db.path.display()
                    );
                }
            }
            batch.clear();
            if let Some(done) = done {
                if !self.broken.load(Ordering::Relaxed) {
                    self.cap_size();
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// One transaction for the batch; `done` gets the end's signal.
    fn write(
        &mut self,
        batch: &mut Vec<Msg>,
        done: &mut Option<mpsc::Sender<()>>,
    ) -> rusqlite::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            for m in batch.drain(..) {
                if let Msg::End(_, d) = m {
                    *done = Some(d);
                }
            }
            return Ok(());
        }
        let tx = self.db.conn.unchecked_transaction()?;
        let rows = &mut self.rows;
        for m in batch.drain(..) {
            match m {
                Msg::Log {
                    task_id,
                    host,
                    level,
                    line,
                } => {
                    let kept = rows.logs_kept.entry(task_id).or_insert((0, 0));
                    if kept.0 >= rows.log_lines {
                        kept.1 += 1;
                        continue;
                    }
                    kept.0 += 1;
                    tx.prepare_cached(INSERT_LOG)?.execute(params![
                        rows.run,
                        task_id.map(|t| t as i64),
                        host,
                        level,
                        line
                    ])?;
                }
                Msg::Change(c) => {
                    tx.prepare_cached(INSERT_CHANGE)?.execute(params![
                        rows.run,
                        c.task_id.map(|t| t as i64),
                        c.host,
                        c.resource,
                        c.target,
                        c.action,
                        c.changed,
                        c.check,
                        c.diff,
                        c.error
                    ])?;
                }
                Msg::Task(t) => {
                    rows.note_cut(&tx, Some(t.task_id), &t.host)?;
                    let started = t.finished.checked_sub(t.duration).unwrap_or(t.finished);
                    tx.prepare_cached(INSERT_TASK)?.execute(params![
                        rows.run,
                        t.task_id as i64,
                        t.name,
                        t.host,
                        rfc3339_millis(started),
                        rfc3339_millis(t.finished),
                        t.duration.as_millis() as i64,
                        t.success,
                        t.kind,
                        t.error,
                        t.changes as i64
                    ])?;
                }
                Msg::End(end, d) => {
                    rows.note_cut(&tx, None, "master")?;
                    for h in &end.hosts {
                        tx.prepare_cached(INSERT_HOST)?.execute(params![
                            rows.run,
                            h.host,
                            h.status,
                            h.ok as i64,
                            h.changed as i64,
                            h.failed as i64,
                            h.unreachable as i64,
                            h.cancelled as i64,
                            h.skipped as i64,
                            h.error
                        ])?;
                    }
                    tx.prepare_cached(UPDATE_RUN)?.execute(params![
                        rows.run,
                        end.finished_at,
                        end.status,
                        end.exit_code,
                        end.error
                    ])?;
                    *done = Some(d);
                }
            }
        }
        tx.commit()
    }

    /// Past the size cap, the oldest runs go (never this one) until it is under 90 %.
    fn cap_size(&self) {
        if self.db.size() <= self.max_size {
            return;
        }
        let target = self.max_size / 10 * 9;
        while self.db.size() > target {
            let removed = self.db.conn.execute(
                "DELETE FROM runs WHERE key = (SELECT key FROM runs WHERE key != ?1 ORDER BY started_at LIMIT 1)",
                params![self.rows.run],
            );
            match removed {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = self.db.vacuum();
                }
            }
        }
    }
}

impl Rows {
    /// The note that a task's (or the script's) log was cut, once it ends.
    fn note_cut(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        task_id: Option<u64>,
        host: &str,
    ) -> rusqlite::Result<()> {
        if let Some((_, dropped)) = self.logs_kept.remove(&task_id) {
            if dropped > 0 {
                tx.prepare_cached(INSERT_NOTE)?.execute(params![
                    self.run,
                    task_id.map(|t| t as i64),
                    host,
                    format!(
                        "({dropped} more line(s) not kept: history_log_lines is {})",
                        self.log_lines
                    )
                ])?;
            }
        }
        Ok(())
    }
}

/// The run's row; its key.
fn insert_run(db: &Db, r: &RunStart) -> rusqlite::Result<i64> {
    let vars: serde_json::Map<String, serde_json::Value> = r
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    db.conn.execute(
        "INSERT INTO runs (id, kind, command, script, script_path, script_sha256, script_text, vars, inventory,
                           inventory_sha256, user, host, pid, check_mode, started_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 'running')",
        params![
            r.id,
            r.kind,
            serde_json::to_string(&r.command).unwrap_or_default(),
            r.script,
            r.script_path,
            r.script_sha256,
            r.script_text,
            serde_json::Value::Object(vars).to_string(),
            r.inventory,
            r.inventory_sha256,
            r.user,
            r.host,
            r.pid as i64,
            r.check,
            r.started_at
        ],
    )?;
    Ok(db.conn.last_insert_rowid())
}
