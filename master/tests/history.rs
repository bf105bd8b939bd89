//! The run history against real runs and a real SQLite file: failed and unreachable
//! hosts recorded and `--rerun-failed` touching only those; a master killed with
//! SIGKILL shown as interrupted; two runs at once both recorded whole; a read-only
//! state directory costing a warning, not the run; `history show --json` agreeing with
//! the run's own `--json`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as J;

const SCRIPT: &str = r#"
local results = fleet.run("all", function()
  print("RAN " .. host.name)
  if host.name == "web-02" then error("web-02 is broken", 0) end
  return host.name
end)
"#;

fn state(fleet: &TestFleet) -> String {
    fleet.path().join("state").display().to_string()
}

fn history(fleet: &TestFleet, args: &[&str]) -> Output {
    let st = state(fleet);
    let mut all = vec!["history"];
    all.extend(args);
    all.extend(["--state", &st]);
    sloth_master(fleet.path(), &all)
}

fn runs(fleet: &TestFleet) -> Vec<J> {
    let out = history(fleet, &["--json"]);
    out.assert_code(0);
    json(&out)["runs"].as_array().unwrap().clone()
}

fn ran_on(out: &Output) -> Vec<String> {
    let mut hosts: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split("RAN ").nth(1).map(str::to_string))
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn failed_hosts_are_recorded_and_rerun_alone() {
    let mut fleet = TestFleet::web(3);
    let dead = format!("127.0.0.1:{}", dead_udp_port());
    fleet.add_host("db-01", &dead, &["db"]);
    let st = state(&fleet);
    let base = ["--state", st.as_str(), "--connect-timeout", "1s"];
    let out = fleet.run_named(
        "deploy.sloth",
        SCRIPT,
        &[&base[..], &["--json", "-e", "db_password=hunter2"]].concat(),
    );
    out.assert_code(1);
    let own = json(&out);
    let id = own["run_id"].as_str().unwrap().to_string();

    let r = &runs(&fleet)[0];
    assert_eq!(r["id"], id.as_str());
    assert_eq!(r["status"], "failed");
    assert_eq!(r["exit_code"], 1);
    assert_eq!(r["hosts"], 4);
    assert_eq!(r["failed_hosts"], 2);
    assert_eq!(r["vars"]["db_password"], "***", "secrets masked");
    assert!(!r["command"].to_string().contains("hunter2"));

    // `history show --json` agrees with the run's own document.
    let out = history(&fleet, &["show", &id, "--json"]);
    out.assert_code(0);
    let shown = json(&out);
    assert_eq!(shown["exit_code"], own["exit_code"]);
    for (host, recap) in own["hosts"].as_object().unwrap() {
        for k in ["ok", "failed", "unreachable", "changed"] {
            assert_eq!(shown["host_results"][host][k], recap[k], "{host} {k}");
        }
    }
    let own_tasks = own["tasks"].as_array().unwrap();
    let shown_tasks = shown["tasks"].as_array().unwrap();
    assert_eq!(own_tasks.len(), shown_tasks.len());
    for (a, b) in own_tasks.iter().zip(shown_tasks) {
        for k in ["id", "name", "host", "success", "kind", "error"] {
            assert_eq!(a[k], b[k], "task {k}");
        }
    }
    assert!(shown["logs"].to_string().contains("RAN web-01"));
    assert_eq!(shown["script_text"], SCRIPT);
    let only = json(&history(
        &fleet,
        &["show", &id, "--json", "--host", "web-02"],
    ));
    assert_eq!(only["host_results"].as_object().unwrap().len(), 1);
    assert!(only["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["host"] == "web-02"));
    let out = history(&fleet, &["show", &id]);
    assert!(
        out.stdout.contains("lua: web-02: web-02 is broken") && out.stdout.contains("RECAP"),
        "{out}"
    );

    // The rerun reaches only the hosts that failed or were unreachable.
    let out = fleet.run_named(
        "deploy.sloth",
        SCRIPT,
        &[&base[..], &["--rerun-failed"]].concat(),
    );
    out.assert_code(1);
    assert_eq!(ran_on(&out), ["web-02"], "{out}");
    assert!(
        out.stderr
            .contains(&format!("that failed in run {id}: db-01, web-02")),
        "{out}"
    );
    assert!(out.stdout.contains("db-01"), "db-01 tried again: {out}");
    assert!(!out.stdout.contains("web-01"), "{out}");
    // --limit @failed is the same; --rerun-failed=ID names the run.
    let out = fleet.run_named(
        "deploy.sloth",
        SCRIPT,
        &[&base[..], &["--limit", "@failed"]].concat(),
    );
    assert_eq!(ran_on(&out), ["web-02"], "{out}");
    let out = fleet.run_named(
        "deploy.sloth",
        SCRIPT,
        &[&base[..], &[format!("--rerun-failed={id}").as_str()]].concat(),
    );
    assert_eq!(ran_on(&out), ["web-02"], "{out}");
    // Filters.
    let failed = json(&history(&fleet, &["--failed", "--json"]));
    assert_eq!(failed["runs"].as_array().unwrap().len(), 4);
    let on_web01 = json(&history(&fleet, &["--host", "web-01", "--json"]));
    assert_eq!(
        on_web01["runs"].as_array().unwrap().len(),
        1,
        "only the first run reached web-01"
    );

    // A changed script: refused, unless --force.
    let changed = format!("{SCRIPT}\n-- edited\n");
    let out = fleet.run_named(
        "deploy.sloth",
        &changed,
        &[&base[..], &["--rerun-failed"]].concat(),
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains("deploy.sloth changed since run") && out.stderr.contains("--force"),
        "{out}"
    );
    let out = fleet.run_named(
        "deploy.sloth",
        &changed,
        &[&base[..], &["--rerun-failed", "--force"]].concat(),
    );
    assert_eq!(ran_on(&out), ["web-02"], "{out}");
    // No such run, no earlier run.
    let out = fleet.run_named(
        "deploy.sloth",
        SCRIPT,
        &[&base[..], &["--rerun-failed=20200101T000000Z-00000000"]].concat(),
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains("no run 20200101T000000Z-00000000"),
        "{out}"
    );
    let out = fleet.run_named(
        "other.sloth",
        SCRIPT,
        &[&base[..], &["--rerun-failed"]].concat(),
    );
    out.assert_code(2);
    assert!(out.stderr.contains("no earlier run of"), "{out}");
    // exec and health are recorded too.
    let inv = fleet.inventory();
    let common = [
        "-i",
        inv.to_str().unwrap(),
        "--certs",
        fleet.certs.to_str().unwrap(),
        "--state",
        st.as_str(),
        "--connect-timeout",
        "1s",
    ];
    sloth_master(
        fleet.path(),
        &[&["exec", "web"][..], &common, &["--", "true"]].concat(),
    )
    .assert_code(0);
    sloth_master(fleet.path(), &[&["health"][..], &common].concat()).assert_code(1);
    let kinds: Vec<String> = runs(&fleet)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds[..2], ["health", "exec"]);
    let health = &runs(&fleet)[0];
    let shown = json(&history(
        &fleet,
        &["show", health["id"].as_str().unwrap(), "--json"],
    ));
    assert_eq!(shown["host_results"]["db-01"]["status"], "down");
    assert!(shown["host_results"]["db-01"]["error"]
        .as_str()
        .unwrap()
        .contains(&dead));
    // Pruning.
    let out = history(&fleet, &["prune", "--older-than", "0s"]);
    out.assert_code(0);
    assert!(out.stdout.starts_with("removed "), "{out}");
    assert!(runs(&fleet).is_empty());
}

/// A master killed with SIGKILL cannot record its end: `history` shows the run as
/// interrupted.
#[test]
fn a_killed_master_leaves_an_interrupted_run() {
    let fleet = TestFleet::web(1);
    let st = state(&fleet);
    let run = fleet.spawn_run(
        "print('STARTED') goroutine.await(goroutine.async(function() goroutine.sleep(30000) end, { delegate_to = 'web-01' }))",
        &["--state", &st],
    );
    let mut run = run;
    assert!(run.wait_for("STARTED", Duration::from_secs(20)).is_some());
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_raw(run.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let _ = run.finish(Duration::from_secs(10));
    let r = &runs(&fleet)[0];
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("the master stopped before the run ended"));
    let out = history(&fleet, &[]);
    assert!(out.stdout.contains("interrupted"), "{out}");
}

/// Two masters at once, each with many tasks: both runs recorded whole.
#[test]
fn two_runs_at_once_are_both_recorded() {
    let fleet = TestFleet::web(2);
    let st = state(&fleet);
    let script = r#"
local hs = {}
for i = 1, 150 do
  hs[#hs + 1] = goroutine.async(function() print("task " .. i) return i end, { delegate_to = (i % 2 == 0) and "web-01" or "web-02" })
end
goroutine.await_all(hs)
"#;
    let a = fleet.spawn_run(script, &["--state", &st]);
    let b = fleet.spawn_run(script, &["--state", &st]);
    let started = Instant::now();
    a.finish(Duration::from_secs(60)).assert_code(0);
    b.finish(Duration::from_secs(60)).assert_code(0);
    assert!(started.elapsed() < Duration::from_secs(60));
    let all = runs(&fleet);
    assert_eq!(all.len(), 2);
    for r in &all {
        assert_eq!(r["status"], "ok");
        let shown = json(&history(
            &fleet,
            &["show", r["id"].as_str().unwrap(), "--json"],
        ));
        assert_eq!(shown["tasks"].as_array().unwrap().len(), 150, "{}", r["id"]);
        assert_eq!(
            shown["logs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["task_id"].is_u64())
                .count(),
            150
        );
    }
}

/// A state directory that cannot be written (a read-only mount): one warning, and the
/// run goes on and succeeds.
#[test]
fn a_read_only_state_directory_costs_a_warning_not_the_run() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: a read-only mount needs root");
        return;
    }
    let fleet = TestFleet::web(1);
    let ro = fleet.path().join("ro-state");
    std::fs::create_dir_all(&ro).unwrap();
    let script = fleet.path().join("t.sloth");
    std::fs::write(
        &script,
        "print('R', goroutine.await(goroutine.async(function() return 7 end, { delegate_to = 'web-01' })))",
    )
    .unwrap();
    let ro_s = ro.display().to_string();
    // sloth-master ARGS with the state directory mounted read-only.
    let read_only = |args: &[&str]| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.current_dir(fleet.path())
            .args([
                "-m",
                "sh",
                "-c",
                "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"",
                "sh",
                &ro_s,
            ])
            .arg(master_bin())
            .args(args)
            .env("XDG_CONFIG_HOME", NO_CONFIG_HOME);
        Running::spawn(cmd).finish(RUN_TIMEOUT)
    };
    let (inv, certs) = (fleet.inventory(), fleet.certs.clone());
    let run_args = [
        "run",
        script.to_str().unwrap(),
        "-i",
        inv.to_str().unwrap(),
        "--certs",
        certs.to_str().unwrap(),
        "--state",
        &ro_s,
    ];
    let out = read_only(&run_args);
    out.assert_code(0);
    assert_eq!(out.one("R"), vec!["true", "7"], "{out}");
    assert!(
        out.stderr
            .contains("warning: this run is not recorded in the history")
            && out.stderr.contains("ro-state")
            && out.stderr.contains("Read-only file system"),
        "the warning says why: {out}"
    );
    assert!(!Path::new(&ro).join("history.db").exists());

    // A history recorded before the mount became read-only is still read.
    let id = json(&fleet.run("print(1)", &["--state", &ro_s, "--json"]))["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = read_only(&["history", "--json", "--state", &ro_s]);
    out.assert_code(0);
    assert_eq!(json(&out)["runs"][0]["id"], id.as_str(), "{out}");
    let out = read_only(&run_args);
    out.assert_code(0);
    assert!(out.stderr.contains("not recorded"), "{out}");
}

/// Output that cannot be written (`sloth-master run ... 2>&1 | head -1`: stdout and
/// stderr closed by the reader) costs the output only: the run ends as it would have
/// (exit 1, web-02 failed, not a panic's 101), recorded whole; a rerun then reaches
/// exactly the failed host, and a rerun of another script's run is refused by name.
#[test]
fn closed_output_costs_the_output_not_the_run_or_its_record() {
    let fleet = TestFleet::web(3);
    let st = state(&fleet);
    let mut cmd = fleet.command("deploy.sloth", SCRIPT, &["--state", &st]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Close the reading ends before the master writes anything.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the master did not end with its output closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    let r = &runs(&fleet)[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(
        (r["hosts"].as_u64(), r["failed_hosts"].as_u64()),
        (Some(3), Some(1))
    );
    let id = r["id"].as_str().unwrap().to_string();
    let out = fleet.run_named("deploy.sloth", SCRIPT, &["--state", &st, "--rerun-failed"]);
    assert_eq!(ran_on(&out), ["web-02"], "{out}");
    let out = fleet.run_named(
        "other.sloth",
        SCRIPT,
        &["--state", &st, &format!("--rerun-failed={id}")],
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("run {id} ran another script")),
        "{out}"
    );
}

/// A run that failed on no agent (its only failure was a task on the master) has no
/// host to rerun: `--rerun-failed` says so and exits 2, instead of "nothing to rerun"
/// and 0, which would turn a red run green without running anything.
#[test]
fn a_failure_on_the_master_alone_is_not_rerun_as_nothing() {
    let fleet = TestFleet::web(1);
    let st = state(&fleet);
    let base = ["--state", st.as_str()];
    let script = r#"fleet.run("all", function() return 1 end)
goroutine.await(goroutine.async(function() error("x") end))"#;
    let out = fleet.run_named("local.sloth", script, &base);
    out.assert_code(1);
    let out = fleet.run_named(
        "local.sloth",
        script,
        &[&base[..], &["--rerun-failed"]].concat(),
    );
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("failed (exit code 1) with no failed agent to rerun")
            && out.stderr.contains("run the whole script again"),
        "{out}"
    );
    // With every host fine and the run a success, there is nothing to rerun (exit 0).
    let ok = "fleet.run(\"all\", function() return 1 end)";
    fleet.run_named("fine.sloth", ok, &base).assert_code(0);
    let out = fleet.run_named("fine.sloth", ok, &[&base[..], &["--rerun-failed"]].concat());
    out.assert_code(0);
    assert!(out.stderr.contains("nothing to rerun"), "{out}");
}

/// `--rerun-failed` while the script's only run is still going says so, rather than
/// that there is no earlier run.
#[test]
fn rerunning_a_run_still_going_says_it_is_running() {
    let fleet = TestFleet::web(1);
    let st = state(&fleet);
    let base = ["--state", st.as_str()];
    let slow = "print('GOING')\ngoroutine.sleep(4000)";
    let mut going = fleet.spawn_run(slow, &base);
    assert!(going.wait_for("GOING", Duration::from_secs(30)).is_some());
    let out = fleet.run(slow, &[&base[..], &["--rerun-failed"]].concat());
    out.assert_code(2);
    assert!(
        out.stderr
            .contains(") is still running: rerun its failed hosts once it has ended"),
        "{out}"
    );
    going.finish(Duration::from_secs(30)).assert_code(0);
}
