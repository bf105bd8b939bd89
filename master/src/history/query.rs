//! Reading the history back: the runs (newest first, filtered by host or failure), one
//! run whole (its hosts, tasks, changes, logs), the hosts that failed, and pruning.
//! Before any of that, runs still marked `running` whose master is gone (killed, the
//! machine rebooted) are marked `interrupted`.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::recorder::{ChangeRow, HostRow};
use super::Db;

/// One run, as `history` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub id: String,
    pub kind: String,
    pub command: Vec<String>,
    pub script: String,
    pub script_path: Option<String>,
    pub script_sha256: Option<String>,
    pub vars: serde_json::Value,
    pub inventory: Option<String>,
    pub inventory_sha256: Option<String>,
    pub user: String,
    pub host: String,
    pub check: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// Hosts of the run, and how many failed or were unreachable.
    pub hosts: u64,
    pub failed_hosts: u64,
}

const SUMMARY: &str =
    "SELECT r.id, r.kind, r.command, r.script, r.script_path, r.script_sha256, r.vars,
        r.inventory, r.inventory_sha256, r.user, r.host, r.check_mode, r.started_at, r.finished_at,
        r.status, r.exit_code, r.error,
        (SELECT COUNT(*) FROM hosts h WHERE h.run = r.key),
        (SELECT COUNT(*) FROM hosts h WHERE h.run = r.key AND (h.failed > 0 OR h.unreachable > 0))
    FROM runs r";

fn summary(r: &Row<'_>) -> rusqlite::Result<RunSummary> {
    let command: String = r.get(2)?;
    let vars: String = r.get(6)?;
    Ok(RunSummary {
        id: r.get(0)?,
        kind: r.get(1)?,
        command: serde_json::from_str(&command).unwrap_or_default(),
        script: r.get(3)?,
        script_path: r.get(4)?,
        script_sha256: r.get(5)?,
        vars: serde_json::from_str(&vars).unwrap_or(serde_json::Value::Null),
        inventory: r.get(7)?,
        inventory_sha256: r.get(8)?,
        user: r.get(9)?,
        host: r.get(10)?,
        check: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
        status: r.get(14)?,
        exit_code: r.get(15)?,
        error: r.get(16)?,
        hosts: r.get::<_, i64>(17)?.max(0) as u64,
        failed_hosts: r.get::<_, i64>(18)?.max(0) as u64,
    })
}

/// Which runs to list.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub limit: usize,
    /// Only runs that reached this host.
    pub host: Option<String>,
    /// Only runs that did not succeed (failed, interrupted).
    pub failed: bool,
}

/// Runs still `running` whose master process is gone on this machine become
/// `interrupted` (a master elsewhere cannot be checked: it stays `running`).
pub fn mark_interrupted(db: &Db) -> rusqlite::Result<usize> {
    let here = super::hostname();
    let mut stmt = db
        .conn
        .prepare("SELECT id, pid FROM runs WHERE status = 'running' AND host = ?1")?;
    let running: Vec<(String, i64)> = stmt
        .query_map(params![here], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = 0;
    for (id, pid) in running {
        if !master_alive(pid) {
            n += db.conn.execute(
                "UPDATE runs SET status = 'interrupted',
                        finished_at = (SELECT MAX(t.finished_at) FROM tasks t WHERE t.run = runs.key),
                        error = 'the master stopped before the run ended (killed, or the machine went down)'
                 WHERE id = ?1 AND status = 'running'",
                params![id],
            )?;
        }
    }
    Ok(n)
}

/// A sloth-master process with this pid runs here.
fn master_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "sloth-master")
        .unwrap_or(false)
}

/// Runs, newest first.
pub fn list(db: &Db, f: &Filter) -> rusqlite::Result<Vec<RunSummary>> {
    let mut sql = format!("{SUMMARY} WHERE 1 = 1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    match (&f.host, f.failed) {
        (Some(h), false) => {
            sql += " AND EXISTS (SELECT 1 FROM hosts h WHERE h.run = r.key AND h.host = ?)";
            args.push(Box::new(h.clone()));
        }
        // The runs where this host failed or was unreachable.
        (Some(h), true) => {
            sql += &format!(" AND ? IN ({})", failed_hosts_of("r.key"));
            args.push(Box::new(h.clone()));
        }
        (None, true) => sql += " AND r.status IN ('failed', 'interrupted')",
        (None, false) => {}
    }
    sql += " ORDER BY r.started_at DESC, r.id DESC LIMIT ?";
    args.push(Box::new(f.limit.max(1) as i64));
    let mut stmt = db.conn.prepare(&sql)?;
    let rows = stmt.query_map(
        rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
        summary,
    )?;
    rows.collect()
}

/// One run's summary.
pub fn run(db: &Db, id: &str) -> rusqlite::Result<Option<RunSummary>> {
    db.conn
        .query_row(&format!("{SUMMARY} WHERE r.id = ?1"), params![id], summary)
        .optional()
}

/// The last run (kind `run`) of the script at `script_path` that reached a host (runs
/// that stopped before any task, like a refused `--rerun-failed`, do not count).
pub fn last_run_of(db: &Db, script_path: &str) -> rusqlite::Result<Option<RunSummary>> {
    db.conn
        .query_row(
            &format!(
                "{SUMMARY} WHERE r.kind = 'run' AND r.script_path = ?1 AND r.status != 'running'
                   AND (EXISTS (SELECT 1 FROM hosts h WHERE h.run = r.key)
                        OR EXISTS (SELECT 1 FROM tasks t WHERE t.run = r.key))
                 ORDER BY r.started_at DESC, r.id DESC LIMIT 1"
            ),
            params![script_path],
            summary,
        )
        .optional()
}

/// The id of a run of `script_path` still running (its master alive), if any.
pub fn running_run_of(db: &Db, script_path: &str) -> rusqlite::Result<Option<String>> {
    db.conn
        .query_row(
            "SELECT id FROM runs WHERE kind = 'run' AND script_path = ?1 AND status = 'running'
             ORDER BY started_at DESC LIMIT 1",
            params![script_path],
            |r| r.get(0),
        )
        .optional()
}

/// SQL selecting the hosts that failed or were unreachable in the run whose key is
/// the SQL expression `run`: from its per-host results or, for a run whose master was
/// killed before it wrote them, from its tasks that failed before (cancelled ones are
/// not failures). The one definition behind [`failed_hosts`] and `history --host H
/// --failed`; `run` is in every branch, so each reads one run through its index.
fn failed_hosts_of(run: &str) -> String {
    format!(
        "SELECT host FROM hosts WHERE run = {run} AND (failed > 0 OR unreachable > 0)
         UNION
         SELECT host FROM tasks WHERE run = {run} AND success = 0
           AND COALESCE(kind, '') != 'cancelled'
           AND NOT EXISTS (SELECT 1 FROM hosts WHERE run = {run})"
    )
}

/// The hosts of a run that failed or were unreachable, in name order (see
/// [`failed_hosts_of`]), but for `master_host` (where the master's own tasks ran).
pub fn failed_hosts(db: &Db, id: &str, master_host: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db.conn.prepare(&format!(
        "SELECT host FROM ({}) WHERE host NOT IN ('', ?2) ORDER BY host",
        failed_hosts_of("(SELECT key FROM runs WHERE id = ?1)")
    ))?;
    let rows = stmt.query_map(params![id, master_host], |r| r.get(0))?;
    rows.collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskDetail {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub success: bool,
    pub changes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<u64>,
    pub host: String,
    pub level: String,
    pub line: String,
}

/// One run, whole (or one host's part of it).
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub script_text: Option<String>,
    pub host_results: std::collections::BTreeMap<String, HostRow>,
    pub tasks: Vec<TaskDetail>,
    pub changes: Vec<ChangeRow>,
    pub logs: Vec<LogLine>,
}

pub fn detail(db: &Db, id: &str, host: Option<&str>) -> rusqlite::Result<Option<RunDetail>> {
    let Some(run) = run(db, id)? else {
        return Ok(None);
    };
    let (key, script_text): (i64, Option<String>) = db.conn.query_row(
        "SELECT key, script_text FROM runs WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let host_ok = |h: &str| host.is_none_or(|want| want == h);
    let mut host_results = std::collections::BTreeMap::new();
    let mut stmt = db.conn.prepare(
        "SELECT host, status, ok, changed, failed, unreachable, cancelled, skipped, error FROM hosts WHERE run = ?1 ORDER BY host",
    )?;
    let n = |r: &Row<'_>, i| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    for row in stmt.query_map(params![key], |r| {
        Ok(HostRow {
            host: r.get(0)?,
            status: r.get(1)?,
            ok: n(r, 2)?,
            changed: n(r, 3)?,
            failed: n(r, 4)?,
            unreachable: n(r, 5)?,
            cancelled: n(r, 6)?,
            skipped: n(r, 7)?,
            error: r.get(8)?,
        })
    })? {
        let h = row?;
        if host_ok(&h.host) {
            host_results.insert(h.host.clone(), h);
        }
    }
    let mut stmt = db.conn.prepare(
        "SELECT task_id, name, host, started_at, finished_at, duration_ms, success, changes, kind, error
         FROM tasks WHERE run = ?1 ORDER BY task_id",
    )?;
    let tasks: Vec<TaskDetail> = stmt
        .query_map(params![key], |r| {
            Ok(TaskDetail {
                id: n(r, 0)?,
                name: r.get(1)?,
                host: r.get(2)?,
                started_at: r.get(3)?,
                finished_at: r.get(4)?,
                duration_ms: n(r, 5)?,
                success: r.get(6)?,
                changes: n(r, 7)?,
                kind: r.get(8)?,
                error: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|t| host_ok(&t.host))
        .collect();
    let mut stmt = db.conn.prepare(
        "SELECT task_id, host, resource, target, action, changed, check_mode, diff, error
         FROM changes WHERE run = ?1 ORDER BY rowid",
    )?;
    let changes: Vec<ChangeRow> = stmt
        .query_map(params![key], |r| {
            Ok(ChangeRow {
                task_id: r.get::<_, Option<i64>>(0)?.map(|t| t.max(0) as u64),
                host: r.get(1)?,
                resource: r.get(2)?,
                target: r.get(3)?,
                action: r.get(4)?,
                changed: r.get(5)?,
                check: r.get(6)?,
                diff: r.get(7)?,
                error: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|c| host_ok(&c.host))
        .collect();
    let mut stmt = db
        .conn
        .prepare("SELECT task_id, host, level, line FROM logs WHERE run = ?1 ORDER BY rowid")?;
    let logs: Vec<LogLine> = stmt
        .query_map(params![key], |r| {
            Ok(LogLine {
                task_id: r.get::<_, Option<i64>>(0)?.map(|t| t.max(0) as u64),
                host: r.get(1)?,
                level: r.get(2)?,
                line: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|l| host_ok(&l.host))
        .collect();
    Ok(Some(RunDetail {
        run,
        script_text,
        host_results,
        tasks,
        changes,
        logs,
    }))
}

/// Remove the runs that started before `before` (RFC 3339); how many went.
pub fn prune(db: &Db, before: &str) -> rusqlite::Result<usize> {
    let n = db.conn.execute(
        "DELETE FROM runs WHERE started_at < ?1 AND status != 'running'",
        params![before],
    )?;
    db.vacuum()?;
    Ok(n)
}
