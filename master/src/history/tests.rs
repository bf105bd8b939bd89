use super::query::{self, Filter};
use super::recorder::{ChangeRow, HostRow, Recorder, RunEnd, RunStart, TaskEnd};
use super::*;

fn start(id: &str, script_path: &str, pid: u32) -> RunStart {
    RunStart {
        id: id.into(),
        kind: "run",
        command: vec!["sloth-master".into(), "run".into(), "x.sloth".into()],
        script: "x.sloth".into(),
        script_path: Some(script_path.into()),
        script_sha256: Some("abc".into()),
        script_text: Some("print(1)".into()),
        vars: vec![("db_password".into(), "***".into())],
        inventory: None,
        inventory_sha256: None,
        user: "ops".into(),
        host: hostname(),
        pid,
        check: false,
        started_at: format!("2026-12-07T06:00:0{}.000Z", &id[id.len() - 1..]),
    }
}

fn host(name: &str, failed: u64) -> HostRow {
    HostRow {
        host: name.into(),
        status: if failed > 0 { "failed" } else { "ok" }.into(),
        ok: 1,
        changed: 0,
        failed,
        unreachable: 0,
        cancelled: 0,
        skipped: 0,
        error: None,
    }
}

fn end(hosts: Vec<HostRow>) -> RunEnd {
    RunEnd {
        finished_at: "2026-12-07T06:01:00.000Z".into(),
        status: "failed",
        exit_code: 1,
        error: None,
        hosts,
    }
}

#[test]
fn a_run_is_recorded_whole_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/history.db");
    let rec = Recorder::start(
        &path,
        start("r1", "/srv/x.sloth", std::process::id()),
        3,
        u64::MAX,
    )
    .unwrap();
    for i in 0..10 {
        rec.log(Some(1), "web-01", "print", &format!("line {i}"));
    }
    rec.change(ChangeRow {
        task_id: Some(1),
        host: "web-01".into(),
        resource: "file.content".into(),
        target: "/etc/motd".into(),
        action: "updated".into(),
        changed: true,
        check: false,
        diff: Some("-a\n+b\n".into()),
        error: None,
    });
    rec.task(TaskEnd {
        task_id: 1,
        name: "motd".into(),
        host: "web-01".into(),
        finished: std::time::SystemTime::now(),
        duration: std::time::Duration::from_millis(1000),
        success: false,
        kind: Some("lua".into()),
        error: Some("lua: web-01: boom".into()),
        changes: 1,
    });
    rec.finish(end(vec![host("web-01", 1), host("web-02", 0)]));
    rec.finish(end(vec![])); // a second end does nothing

    let db = Db::open_existing(&path).unwrap().unwrap();
    let runs = query::list(
        &db,
        &Filter {
            limit: 10,
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        (r.status.as_str(), r.exit_code, r.hosts, r.failed_hosts),
        ("failed", Some(1), 2, 1)
    );
    assert_eq!(r.vars["db_password"], "***");
    assert_eq!(query::failed_hosts(&db, "r1", "local").unwrap(), ["web-01"]);
    let d = query::detail(&db, "r1", None).unwrap().unwrap();
    assert_eq!(d.tasks[0].error.as_deref(), Some("lua: web-01: boom"));
    assert_eq!(d.changes[0].diff.as_deref(), Some("-a\n+b\n"));
    // Three lines kept, then the note of the seven not kept.
    let lines: Vec<&str> = d.logs.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines[..3], ["line 0", "line 1", "line 2"]);
    assert!(
        lines[3].starts_with("(7 more line(s) not kept"),
        "{lines:?}"
    );
    assert_eq!(d.script_text.as_deref(), Some("print(1)"));
    let only = query::detail(&db, "r1", Some("web-02")).unwrap().unwrap();
    assert!(only.tasks.is_empty() && only.host_results.len() == 1);
    assert!(query::detail(&db, "nope", None).unwrap().is_none());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    for f in ["history.db", "history.db-wal", "history.db-shm"] {
        let p = path.parent().unwrap().join(f);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn runs_are_found_by_script_host_and_failure_and_killed_ones_marked_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    for (id, ok) in [("r1", true), ("r2", false)] {
        let rec = Recorder::start(
            &path,
            start(id, "/srv/x.sloth", std::process::id()),
            10,
            u64::MAX,
        )
        .unwrap();
        // `local`: the master's own tasks, one of which failed in r2.
        let mut e = end(vec![
            host("web-01", u64::from(!ok)),
            host("web-02", 0),
            host("local", u64::from(!ok)),
        ]);
        e.status = if ok { "ok" } else { "failed" };
        rec.finish(e);
    }
    // A master that died mid-run: its row stays `running` with a dead pid.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let rec = Recorder::start(&path, start("r3", "/srv/x.sloth", pid), 10, u64::MAX).unwrap();
    // It saw one task fail on web-02, one of its own fail on the master and one on
    // web-01 cancelled before it died.
    for (id, on, kind) in [
        (1, "web-02", "lua"),
        (2, "local", "lua"),
        (3, "web-01", "cancelled"),
    ] {
        rec.task(TaskEnd {
            task_id: id,
            name: "deploy".into(),
            host: on.into(),
            finished: std::time::SystemTime::now(),
            duration: std::time::Duration::from_millis(5),
            success: false,
            kind: Some(kind.into()),
            error: Some("boom".into()),
            changes: 0,
        });
    }
    drop(rec);
    let db = Db::open_existing(&path).unwrap().unwrap();
    // The writer thread ends on its own once the recorder is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while query::detail(&db, "r3", None).unwrap().unwrap().tasks.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "r3's tasks never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A run that stopped before reaching any host (a usage error): never "the last run".
    let rec = Recorder::start(&path, start("r4", "/srv/x.sloth", 1), 10, u64::MAX).unwrap();
    rec.finish(RunEnd {
        exit_code: 2,
        ..end(vec![])
    });
    assert_eq!(query::run(&db, "r3").unwrap().unwrap().status, "running");
    assert_eq!(query::mark_interrupted(&db).unwrap(), 1);
    assert_eq!(
        query::run(&db, "r3").unwrap().unwrap().status,
        "interrupted"
    );
    // The last run of the script that reached a host: the interrupted r3, not r4; its
    // failed hosts come from its tasks (not the master's own).
    let last = query::last_run_of(&db, "/srv/x.sloth").unwrap().unwrap();
    assert_eq!(last.id, "r3");
    assert_eq!(query::failed_hosts(&db, "r3", "local").unwrap(), ["web-02"]);
    // Per-host results win over tasks: r2's failed host is web-01 only.
    assert_eq!(query::failed_hosts(&db, "r2", "local").unwrap(), ["web-01"]);
    let failed = query::list(
        &db,
        &Filter {
            limit: 10,
            failed: true,
            ..Filter::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = failed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r4", "r3", "r2"]);
    // --host with --failed: where that host failed (r2 for web-01; r3 for web-02, by
    // its task), not every failed run that reached it.
    let failed_on = |h: &str| -> Vec<String> {
        query::list(
            &db,
            &Filter {
                limit: 10,
                failed: true,
                host: Some(h.into()),
            },
        )
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
    };
    assert_eq!(failed_on("web-01"), ["r2"]);
    assert_eq!(failed_on("web-02"), ["r3"]);
    let on = query::list(
        &db,
        &Filter {
            limit: 10,
            host: Some("web-02".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(on.len(), 2);
    assert_eq!(query::prune(&db, "2026-12-07T06:00:02.000Z").unwrap(), 1);
    assert!(query::run(&db, "r1").unwrap().is_none());
    assert!(
        query::failed_hosts(&db, "r1", "local").unwrap().is_empty(),
        "its rows went with it"
    );
}

#[test]
fn past_the_size_cap_the_oldest_runs_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    for i in 0..6 {
        let id = format!("r{i}");
        let rec = Recorder::start(
            &path,
            start(&id, "/x", std::process::id()),
            10_000,
            500 * 1024,
        )
        .unwrap();
        for j in 0..1000 {
            rec.log(
                Some(1),
                "web-01",
                "print",
                &format!("{id} {j} {}", "x".repeat(40)),
            );
        }
        rec.finish(end(vec![]));
    }
    let db = Db::open_existing(&path).unwrap().unwrap();
    assert!(db.size() <= 500 * 1024, "{} bytes", db.size());
    let runs = query::list(
        &db,
        &Filter {
            limit: 100,
            ..Filter::default()
        },
    )
    .unwrap();
    assert!(
        runs.len() < 6 && runs[0].id == "r5",
        "{:?}",
        runs.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
}

#[test]
fn an_unusable_place_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let e = Recorder::start(&file.join("history.db"), start("r1", "/x", 1), 10, 1)
        .err()
        .unwrap();
    assert!(e.contains("plain"), "{e}");
    std::fs::write(
        dir.path().join("junk.db"),
        "not sqlite at all, not at all, not at all",
    )
    .unwrap();
    assert!(Db::open(&dir.path().join("junk.db")).is_err());
}

#[test]
fn uris_keep_odd_file_names_whole() {
    assert_eq!(
        sqlite_uri(Path::new("/st ate/a?b#c%d.db"), "immutable=1").unwrap(),
        "file:/st%20ate/a%3Fb%23c%25d.db?immutable=1"
    );
    // And such a name opens read-only as itself.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd ?#%.db");
    drop(Db::open(&path).unwrap());
    let uri = sqlite_uri(&path, "immutable=1").unwrap();
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}
