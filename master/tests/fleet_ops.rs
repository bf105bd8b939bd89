//! Fleet operations on real agents: health, exec, rolling deploys.

mod common;

use std::time::Duration;

use common::*;

fn health(fleet: &TestFleet, json: bool) -> Output {
    let inv = fleet.inventory();
    let mut args = vec![
        "health",
        "-i",
        inv.to_str().unwrap(),
        "--certs",
        fleet.certs.to_str().unwrap(),
        "--connect-timeout",
        "2s",
    ];
    if json {
        args.push("--json");
    }
    sloth_master(fleet.path(), &args)
}

/// 20 agents: all up; then one SIGKILLed and one SIGSTOPped: both reported down,
/// exit 1, within the connect timeout plus a margin; --json matches the table.
#[test]
fn health_over_twenty_agents() {
    let mut fleet = TestFleet::web(20);
    let out = health(&fleet, false);
    out.assert_code(0);
    assert!(out.stdout.contains("20 up, 0 down"), "{out}");
    fleet.kill("web-05");
    fleet.stop("web-13");
    let out = health(&fleet, false);
    fleet.resume("web-13");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("18 up, 2 down"), "{out}");
    for line in out.stdout.lines() {
        if line.contains("web-05") || line.contains("web-13") {
            assert!(line.contains("down"), "{line}\n{out}");
        }
    }
    // Connect timeout 2 s (x2 for connect + ping at most) plus start-up margin.
    assert!(
        out.elapsed < Duration::from_secs(7),
        "took {:?}",
        out.elapsed
    );
    fleet.stop("web-13");
    let js = health(&fleet, true);
    fleet.resume("web-13");
    assert_eq!(js.code, 1, "{js}");
    let doc: serde_json::Value =
        serde_json::from_str(&js.stdout).expect("health --json is one JSON document");
    assert_eq!(doc["up"], 18);
    assert_eq!(doc["down"], 2);
    let hosts = doc["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 20);
    for h in hosts {
        let name = h["host"].as_str().unwrap();
        let up = h["up"].as_bool().unwrap();
        assert_eq!(up, name != "web-05" && name != "web-13", "{name}: {h}");
        if !up {
            assert!(h["error"].as_str().unwrap().contains(name), "{h}");
        } else {
            // Facts and latency of a host just dialed come from its Welcome.
            assert!(h["latency_ms"].as_f64().is_some_and(|l| l > 0.0), "{h}");
            assert!(h["cpus"].as_u64().is_some_and(|c| c >= 1), "{h}");
            assert_eq!(h["load"].as_array().map(Vec::len), Some(3), "{h}");
            assert!(h["uptime_s"].as_f64().is_some_and(|u| u > 0.0), "{h}");
            assert!(h["mem_used_percent"].as_f64().is_some(), "{h}");
        }
    }
}

/// `health --check SCRIPT --json` prints one document: the health part and the check
/// script's run, whose failure names the host and sets the exit code.
#[test]
fn health_check_json_is_one_document() {
    let fleet = TestFleet::web(2);
    let inv = fleet.inventory();
    let check = fleet.path().join("check.sloth");
    std::fs::write(
        &check,
        r#"
local hs = {}
for _, h in ipairs(fleet.hosts("all")) do
  hs[#hs + 1] = goroutine.async(function()
    if host.name == "web-02" then error("disk full", 0) end
    return "fine"
  end, { delegate_to = h })
end
goroutine.await_all(hs)
"#,
    )
    .unwrap();
    let out = sloth_master(
        fleet.path(),
        &[
            "health",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--check",
            check.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.code, 1, "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout).expect("health --check --json is one JSON document");
    assert_eq!(doc["health"]["up"], 2, "{doc}");
    assert_eq!(doc["check"]["success"], false, "{doc}");
    let tasks = doc["check"]["tasks"].as_array().unwrap();
    let failed: Vec<_> = tasks.iter().filter(|t| t["success"] == false).collect();
    assert_eq!(failed.len(), 1, "{doc}");
    assert_eq!(failed[0]["host"], "web-02", "{doc}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("disk full"),
        "{doc}"
    );
}

/// `exec` over 6 hosts with one failing command: every host's output appears
/// prefixed, exit code 1, and the summary names the failed host.
#[test]
fn exec_over_six_hosts_with_one_failure() {
    let fleet = TestFleet::web(6);
    let inv = fleet.inventory();
    let out = sloth_master(
        fleet.path(),
        &[
            "exec",
            "web",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--",
            "echo out-$SLOTH_T; if [ \"$(cat /proc/self/comm 2>/dev/null)\" = x ]; then :; fi; test -e /nonexistent-$(hostname) && true; exit 0",
        ],
    );
    out.assert_code(0);
    // A command whose outcome depends on the host: fail on web-04 only, via a marker file.
    let marker = fleet.path().join("fail-on");
    std::fs::write(&marker, "web-04").unwrap();
    let cmd = format!(
        "echo hello-from-task; test \"$(cat {})\" != \"$SLOTH_HOST\"",
        marker.display()
    );
    let script = format!(
        r#"
local hs = {{}}
for _, h in ipairs(fleet.hosts("web")) do
  hs[#hs + 1] = goroutine.async(function()
    local r = exec.run({cmd:?}, {{ stream = true, env = {{ SLOTH_HOST = host.name }} }})
    if not r.success then error("exit code " .. tostring(r.code), 0) end
  end, {{ delegate_to = h, name = "exec" }})
end
for _, r in ipairs(goroutine.await_all(hs)) do
  print("SUMMARY", r.host, r.success and "ok" or r.error)
end
"#
    );
    let out = fleet.run(&script, &[]);
    assert_eq!(out.code, 1, "{out}");
    for i in 1..=6 {
        assert!(
            out.stdout
                .contains(&format!("[web-{i:02} exec] hello-from-task")),
            "{out}"
        );
    }
    let failed: Vec<Vec<String>> = out
        .all("SUMMARY")
        .into_iter()
        .filter(|r| r[1] != "ok")
        .collect();
    assert_eq!(
        failed,
        vec![vec![
            "web-04".to_string(),
            "lua: web-04: exit code 1".to_string()
        ]],
        "{out}"
    );

    // The `exec` command itself: a failing command exits 1 and names the hosts.
    let out = sloth_master(
        fleet.path(),
        &[
            "exec",
            "web-0[1]",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert_eq!(
        out.code, 2,
        "ranges are not a pattern form: usage error\n{out}"
    );
    let out = sloth_master(
        fleet.path(),
        &[
            "exec",
            "web:!web-06",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--",
            "echo line-$((6*7)); exit 3",
        ],
    );
    assert_eq!(out.code, 1, "{out}");
    for i in 1..=5 {
        assert!(
            out.stdout.contains(&format!("[web-{i:02} exec] line-42")),
            "{out}"
        );
        assert!(
            out.stdout.contains(&format!("web-{i:02}")) && out.stdout.contains("exit code 3"),
            "{out}"
        );
    }
    assert!(
        !out.stdout.contains("web-06"),
        "excluded host was touched\n{out}"
    );
}

/// `fleet.run` with serial = 2 over 6 hosts where host 3 fails and
/// max_fail_percentage = 40: the rollout stops after the failing batch; later
/// hosts are never touched; the recap says so.
#[test]
fn rolling_deploy_stops_after_failing_batch() {
    let fleet = TestFleet::web(6);
    let touched = fleet.path().join("touched");
    std::fs::create_dir_all(&touched).unwrap();
    let script = format!(
        r#"
local results = fleet.run("web", function()
  fs.write({dir:?} .. "/" .. host.name, "x")
  if host.name == "web-03" then error("health check failed") end
  return "deployed"
end, {{ serial = 2, max_fail_percentage = 40 }})
local names = {{}}
for name, r in pairs(results) do names[#names + 1] = name .. "=" .. (r.success and "ok" or r.kind) end
table.sort(names)
print("RESULTS", table.concat(names, ","))
"#,
        dir = touched.display().to_string()
    );
    let out = fleet.run(&script, &[]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.one("RESULTS"),
        vec!["web-01=ok,web-02=ok,web-03=lua,web-04=ok"],
        "{out}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&touched)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(files, vec!["web-01", "web-02", "web-03", "web-04"]);
    assert!(
        out.stdout.contains("rollout stopped after batch 2/3")
            || out.stderr.contains("rollout stopped after batch 2/3"),
        "{out}"
    );
    for h in ["web-05", "web-06"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(h))
            .unwrap_or_default();
        assert!(
            line.contains("skipped"),
            "recap must say {h} was skipped\n{out}"
        );
    }
}

/// `--json`: stdout is exactly one JSON document with per-task results, the per-host
/// recap and errors; human output goes to stderr.
#[test]
fn json_output_is_one_document() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
print("hello from the script")
local a = goroutine.async(function() return 1 end, { delegate_to = "web-01", name = "good" })
local b = goroutine.async(function() error("bad thing") end, { delegate_to = "web-02", name = "bad" })
goroutine.await_all({ a, b })
"#,
        &["--json"],
    );
    assert_eq!(out.code, 1, "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["success"], false);
    assert_eq!(doc["exit_code"], 1);
    assert_eq!(doc["hosts"]["web-01"]["ok"], 1);
    assert_eq!(doc["hosts"]["web-02"]["failed"], 1);
    let tasks = doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    let bad = tasks.iter().find(|t| t["name"] == "bad").unwrap();
    assert_eq!(bad["kind"], "lua");
    assert!(
        bad["error"].as_str().unwrap().contains("web-02")
            && bad["error"].as_str().unwrap().contains("bad thing")
    );
    assert!(out.stderr.contains("hello from the script"), "{out}");
}
