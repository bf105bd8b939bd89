//! The run history on the command line: recording each `run`, `exec` and `health`
//! ([`record`]), `sloth-master history` (the runs, one run whole, pruning), and
//! `run --rerun-failed [ID]` / `--limit @failed` ([`rerun_limit`]).

use std::path::Path;
use std::time::SystemTime;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use sha2::{Digest, Sha256};

use super::args::{HistoryCmd, HistorySettings};
use super::output::{self, Output};
use super::{FleetArgs, EXIT_OK, EXIT_USAGE};
use crate::history::query::{self, Filter};
use crate::history::recorder::{Recorder, RunStart};
use crate::history::{self, Db};

/// Start recording the run `out` has started (a warning, and no recording, when the
/// database cannot be used).
pub(super) fn record(
    out: &Output,
    fa: &FleetArgs,
    kind: &'static str,
    script: Option<&Path>,
    exec_command: Option<&str>,
    check: bool,
) {
    let Some(db) = &fa.history.db else {
        return;
    };
    let Some(info) = out.run_info() else {
        return;
    };
    let text = match (script, exec_command) {
        (_, Some(cmd)) => Some(cmd.to_string()),
        (Some(p), None) => std::fs::read_to_string(p).ok(),
        (None, None) => None,
    };
    let inventory_text = fa.inventory.as_deref().and_then(|p| std::fs::read(p).ok());
    let start = RunStart {
        id: info.id.clone(),
        kind,
        command: info.command.clone(),
        script: info.script.clone(),
        script_path: script
            .filter(|_| exec_command.is_none())
            .and_then(|p| p.canonicalize().ok())
            .map(|p| p.display().to_string()),
        script_sha256: text.as_deref().map(|t| sha256(t.as_bytes())),
        script_text: text,
        vars: info.vars.clone(),
        inventory: fa.inventory.as_ref().map(|p| p.display().to_string()),
        inventory_sha256: inventory_text.as_deref().map(sha256),
        user: history::user(),
        host: history::hostname(),
        pid: std::process::id(),
        check,
        started_at: sloth_proto::text::rfc3339_millis(info.started),
    };
    match Recorder::start(db, start, fa.history.log_lines, fa.history.max_size) {
        Ok(r) => out.record_to(r),
        Err(e) => errln!("warning: this run is not recorded in the history: {e}"),
    }
}

/// Record a `health` check: each host up or down (with why).
pub(super) fn record_health(
    fa: &FleetArgs,
    rows: &[crate::engine::health::HostHealth],
    exit_code: i32,
) {
    let Some(db) = &fa.history.db else {
        return;
    };
    let info = output::RunInfo::new("health", &[]);
    let start = RunStart {
        id: info.id.clone(),
        kind: "health",
        command: info.command.clone(),
        script: "health".into(),
        script_path: None,
        script_sha256: None,
        script_text: None,
        vars: vec![],
        inventory: fa.inventory.as_ref().map(|p| p.display().to_string()),
        inventory_sha256: fa
            .inventory
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| sha256(&b)),
        user: history::user(),
        host: history::hostname(),
        pid: std::process::id(),
        check: false,
        started_at: sloth_proto::text::rfc3339_millis(info.started),
    };
    let rec = match Recorder::start(db, start, fa.history.log_lines, fa.history.max_size) {
        Ok(r) => r,
        Err(e) => {
            errln!("warning: this check is not recorded in the history: {e}");
            return;
        }
    };
    let hosts = rows
        .iter()
        .map(|r| crate::history::recorder::HostRow {
            host: r.host.clone(),
            status: if r.up { "up" } else { "down" }.into(),
            ok: u64::from(r.up),
            changed: 0,
            failed: 0,
            unreachable: u64::from(!r.up),
            cancelled: 0,
            skipped: 0,
            error: r.error.clone(),
        })
        .collect();
    rec.finish(crate::history::recorder::RunEnd {
        finished_at: sloth_proto::text::rfc3339_millis(SystemTime::now()),
        status: if exit_code == EXIT_OK { "ok" } else { "failed" },
        exit_code,
        error: None,
        hosts,
    });
}

pub(super) fn sha256(bytes: &[u8]) -> String {
    sloth_transport::cert_info::hex(&Sha256::digest(bytes))
}

/// The history database for reading, with runs whose master is gone marked
/// `interrupted`; `Ok(None)` when nothing was recorded yet.
fn open(settings: &HistorySettings) -> Result<Option<Db>, String> {
    let Some(path) = &settings.read_db else {
        return Err(
            "no run history: no state directory (HOME and XDG_STATE_HOME are unset; give --state DIR)"
                .into(),
        );
    };
    let Some(db) = Db::open_existing(path)? else {
        return Ok(None);
    };
    if !db.read_only {
        query::mark_interrupted(&db).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(db))
}

/// `sloth-master history ...`.
pub(super) fn command(
    cmd: Option<HistoryCmd>,
    list: Filter,
    json: bool,
    settings: &HistorySettings,
) -> i32 {
    let fail = |e: String| {
        errln!("error: {e}");
        EXIT_USAGE
    };
    let db = match open(settings) {
        Ok(Some(db)) => db,
        Ok(None) => {
            if json || matches!(cmd, Some(HistoryCmd::Show { json: true, .. })) {
                output::print_doc(&serde_json::json!({ "runs": [] }));
            } else if let Some(HistoryCmd::Show { id, .. }) = &cmd {
                return fail(format!("no run {id}: nothing was recorded yet"));
            } else {
                outln!("no runs recorded yet");
            }
            return EXIT_OK;
        }
        Err(e) => return fail(e),
    };
    let path = db.path.display().to_string();
    let sql = |e: rusqlite::Error| format!("{path}: {e}");
    match cmd {
        None => match query::list(&db, &list) {
            Ok(runs) => {
                if json {
                    output::print_doc(&serde_json::json!({ "runs": runs }));
                } else {
                    print_list(&runs);
                }
                EXIT_OK
            }
            Err(e) => fail(sql(e)),
        },
        Some(HistoryCmd::Show { id, host, json }) => {
            match query::detail(&db, &id, host.as_deref()) {
                Ok(Some(d))
                    if host.is_some()
                        && d.host_results.is_empty()
                        && d.tasks.is_empty()
                        && d.changes.is_empty() =>
                {
                    fail(format!(
                        "host {} has no part in run {id}",
                        host.as_deref().unwrap_or_default()
                    ))
                }
                Ok(Some(d)) => {
                    if json {
                        output::print_doc(&serde_json::to_value(&d).unwrap_or_default());
                    } else {
                        print_detail(&d);
                    }
                    EXIT_OK
                }
                Ok(None) => fail(format!(
                    "no run {id} in {path} (`sloth-master history` lists them)"
                )),
                Err(e) => fail(sql(e)),
            }
        }
        Some(HistoryCmd::Prune { older_than }) => {
            let age = match sloth_proto::text::parse_duration(&older_than) {
                Ok(a) => a,
                Err(e) => return fail(format!("--older-than: {e}")),
            };
            let before = SystemTime::now()
                .checked_sub(age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match query::prune(&db, &sloth_proto::text::rfc3339_millis(before)) {
                Ok(n) => {
                    outln!(
                        "removed {n} run(s) started before {}; the history is {} now",
                        sloth_proto::text::rfc3339_seconds(before),
                        bytes(db.size())
                    );
                    EXIT_OK
                }
                Err(e) => fail(sql(e)),
            }
        }
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}

fn print_list(runs: &[query::RunSummary]) {
    if runs.is_empty() {
        outln!("no runs match");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "run", "started", "kind", "script", "status", "exit", "hosts", "failed", "by",
    ]);
    // For `exec`, the command it ran (what follows `--`), shortened.
    let what = |r: &query::RunSummary| -> String {
        let Some(dashes) = r
            .command
            .iter()
            .position(|a| a == "--")
            .filter(|_| r.kind == "exec")
        else {
            return r.script.clone();
        };
        let cmd = r.command[dashes + 1..].join(" ");
        match cmd.char_indices().nth(40) {
            Some((cut, _)) => format!("{}…", &cmd[..cut]),
            None => cmd,
        }
    };
    for r in runs {
        t.add_row(vec![
            r.id.clone(),
            r.started_at.clone(),
            r.kind.clone(),
            what(r),
            r.status.clone(),
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            r.hosts.to_string(),
            r.failed_hosts.to_string(),
            format!("{}@{}", r.user, r.host),
        ]);
    }
    outln!("{t}");
}

fn print_detail(d: &query::RunDetail) {
    let r = &d.run;
    outln!("run {} ({}), {}", r.id, r.kind, r.status);
    outln!("  command:  {}", r.command.join(" "));
    outln!("  by:       {}@{}", r.user, r.host);
    outln!(
        "  started:  {}   finished: {}   exit: {}",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("-"),
        r.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
    if let Some(sha) = &r.script_sha256 {
        outln!(
            "  script:   {} (sha256 {})",
            r.script,
            &sha[..sha.len().min(16)]
        );
    }
    if let Some(e) = &r.error {
        outln!("  error:    {e}");
    }
    outln!("\nRECAP");
    for (h, x) in &d.host_results {
        // A health check has no tasks to count: up or down, and why.
        if r.kind == "health" {
            match &x.error {
                Some(e) => outln!("  {h:<12} {}: {e}", x.status),
                None => outln!("  {h:<12} {}", x.status),
            }
            continue;
        }
        outln!(
            "  {h:<12} ok={:<4} changed={:<4} failed={:<3} unreachable={:<3} {}",
            x.ok,
            x.changed,
            x.failed,
            x.unreachable,
            x.status
        );
    }
    let errors: Vec<&query::TaskDetail> = d.tasks.iter().filter(|t| !t.success).collect();
    if !errors.is_empty() {
        outln!("\nERRORS");
        for t in errors {
            outln!("  {}", t.error.as_deref().unwrap_or("?"));
        }
    }
    if !d.changes.is_empty() {
        outln!("\nCHANGES");
        for c in &d.changes {
            outln!("  {:<12} {} {}: {}", c.host, c.resource, c.target, c.action);
            if let Some(diff) = &c.diff {
                for l in diff.lines() {
                    outln!("      {l}");
                }
            }
        }
    }
    if !d.logs.is_empty() {
        outln!("\nLOG");
        for l in &d.logs {
            outln!("  [{}] {}", l.host, l.line);
        }
    }
}

/// `--rerun-failed [ID]` or `--limit @failed`: the hosts of an earlier run of `script`
/// (run `id`, else its last one) that failed or were unreachable, as a `--limit`
/// pattern, with that run's id. `Err((exit code, message))`; `Ok(None)` when there is
/// nothing to rerun.
pub(super) fn rerun_limit(
    script: &Path,
    id: Option<&str>,
    force: bool,
    settings: &HistorySettings,
) -> Result<Option<(String, String)>, (i32, String)> {
    let usage = |m: String| (EXIT_USAGE, m);
    let db = open(settings)
        .map_err(usage)?
        .ok_or_else(|| usage("no run history yet: nothing to rerun".into()))?;
    let path = script
        .canonicalize()
        .map_err(|e| usage(format!("cannot read script {}: {e}", script.display())))?;
    let sql = |e: rusqlite::Error| usage(format!("{}: {e}", db.path.display()));
    let earlier = match id {
        Some(id) => query::run(&db, id).map_err(sql)?.ok_or_else(|| {
            usage(format!(
                "no run {id} in the history (`sloth-master history`)"
            ))
        })?,
        None => match query::last_run_of(&db, &path.display().to_string()).map_err(sql)? {
            Some(run) => run,
            None => {
                let running =
                    query::running_run_of(&db, &path.display().to_string()).map_err(sql)?;
                return Err(usage(match running {
                    Some(id) => format!(
                        "the last run of {} ({id}) is still running: rerun its failed hosts \
                         once it has ended",
                        script.display()
                    ),
                    None => format!(
                        "no earlier run of {} in the history ({})",
                        script.display(),
                        db.path.display()
                    ),
                }));
            }
        },
    };
    if earlier.kind != "run" {
        return Err(usage(format!(
            "run {} is `{}`, not a script run",
            earlier.id, earlier.kind
        )));
    }
    let now = std::fs::read(&path)
        .map(|b| sha256(&b))
        .map_err(|e| usage(format!("cannot read script {}: {e}", script.display())))?;
    let then_path = earlier.script_path.as_deref().unwrap_or("?");
    if then_path != path.display().to_string() && !force {
        return Err(usage(format!(
            "run {} ran another script ({then_path}), not {}: give that script, or rerun \
             these hosts with this one anyway with --force",
            earlier.id,
            script.display()
        )));
    }
    if earlier.script_sha256.as_deref() != Some(now.as_str()) && !force {
        return Err(usage(format!(
            "{} changed since run {} (sha256 {} then, {} now): rerun it anyway with --force",
            script.display(),
            earlier.id,
            earlier
                .script_sha256
                .as_deref()
                .map(|s| &s[..s.len().min(12)])
                .unwrap_or("?"),
            &now[..12]
        )));
    }
    let hosts =
        query::failed_hosts(&db, &earlier.id, crate::engine::dispatch::LOCAL).map_err(sql)?;
    if hosts.is_empty() {
        // A failed run with no host to rerun failed in the script itself or in its
        // tasks on the master: "nothing to rerun" would turn it green unrerun.
        if earlier.status != "ok" {
            return Err(usage(format!(
                "run {} {} (exit code {}) with no failed agent to rerun (the script itself, or \
                 its tasks on the master, did not succeed): --rerun-failed reruns failed hosts \
                 only; run the whole script again",
                earlier.id,
                match earlier.status.as_str() {
                    "running" => "is still running",
                    "interrupted" => "was interrupted",
                    _ => "failed",
                },
                earlier
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none yet".into())
            )));
        }
        errln!(
            "nothing to rerun: run {} had no failed or unreachable hosts",
            earlier.id
        );
        return Ok(None);
    }
    errln!(
        "rerunning {} on the {} host(s) that failed in run {}: {}",
        script.display(),
        hosts.len(),
        earlier.id,
        hosts.join(", ")
    );
    Ok(Some((earlier.id, hosts.join(","))))
}

/// A run-id shaped value (`20261207T054500Z-3f2a9c1b`).
pub(super) fn looks_like_run_id(v: &str) -> bool {
    let mut parts = v.splitn(2, '-');
    let (Some(stamp), Some(tail)) = (parts.next(), parts.next()) else {
        return false;
    };
    stamp.len() == 16
        && stamp.ends_with('Z')
        && stamp.as_bytes().get(8) == Some(&b'T')
        && tail.len() == 8
        && tail.chars().all(|c| c.is_ascii_hexdigit())
}
