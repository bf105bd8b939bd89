//! Fleet pools under churn: agents killed, frozen and restarted while a pool runs.
//! Every result must be present, correct and arrive once, and no task may fail.

mod common;

use std::time::Duration;

use common::*;

/// Lua: a fleet pool over every host; prints progress, then a verdict line. Each task
/// sleeps 50 ms so that the run lasts ~25 s whatever the build: the churn below must
/// happen while it runs.
fn soak_script(tasks: u32, marker: &str, watch: &str) -> String {
    format!(
        r#"
assert(goroutine.pool_create("p", {{ delegate_to = "nodes", workers = 40, retries = 8 }}))
local N = {tasks}
local before
for i = 1, N do
  assert(goroutine.pool_submit("p", function(x) goroutine.sleep(50); return x * 2, host.name end, i))
  if i % 500 == 0 then
    print("SUBMITTED", i)
    if not before and io.open("{marker}") then
      before = goroutine.pool_stats("p").hosts["{watch}"].completed
    end
  end
end
goroutine.pool_close("p")
local ok, res = goroutine.pool_wait("p", "5m")
local seen, wrong, failed, errors = {{}}, 0, 0, {{}}
for i, r in ipairs(res) do
  if not r.success then
    failed = failed + 1
    if #errors < 5 then errors[#errors + 1] = r.error end
  elseif r.values[1] ~= i * 2 then
    wrong = wrong + 1
  end
end
local st = goroutine.pool_stats("p")
print("SOAK", tostring(ok), #res, failed, wrong, st.completed, st.failed, st.retried, st.requeued)
for h, s in pairs(st.hosts) do print("HOST", h, s.state, s.completed, s.requeued) end
print("WATCH", tostring(before), st.hosts["{watch}"].completed)
for _, e in ipairs(errors) do print("ERR", e) end
"#
    )
}

/// 20,000 tasks over 10 agents: 3 killed, 1 frozen (SIGSTOP for 5 s, then woken), 1
/// restarted on its address; nothing fails, every result is right and arrives once,
/// the restarted agent gets tasks again.
#[test]
fn a_pool_loses_nothing_under_churn() {
    let names: Vec<String> = (1..=10).map(|i| format!("node-{i:02}")).collect();
    let hosts: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["nodes"][..])).collect();
    let mut fleet = TestFleet::start(&hosts);
    let marker = fleet.path().join("restarted");
    let script = soak_script(20_000, &marker.display().to_string(), "node-05");
    let mut run = fleet.spawn_run(&script, &[]);
    let step = |run: &mut Running, n: u32| {
        let tag = format!("SUBMITTED\t{n}");
        if run.wait_for(&tag, Duration::from_secs(120)).is_none() {
            panic!("no progress to {n}");
        }
    };
    step(&mut run, 2000);
    fleet.kill("node-01");
    step(&mut run, 4000);
    fleet.stop("node-02");
    step(&mut run, 5000);
    fleet.restart("node-05");
    std::fs::write(&marker, "").unwrap();
    step(&mut run, 7000);
    fleet.kill("node-03");
    // Frozen well past the 3 s idle timeout: its tasks went elsewhere.
    std::thread::sleep(Duration::from_secs(5));
    fleet.resume("node-02");
    step(&mut run, 11000);
    fleet.kill("node-04");
    let out = run.finish(Duration::from_secs(300));
    let soak = out.one("SOAK");
    assert_eq!(
        soak[..6],
        ["true", "20000", "0", "0", "20000", "0"],
        "{out}"
    );
    let states: Vec<Vec<String>> = out.all("HOST");
    let state = |h: &str| states.iter().find(|s| s[0] == h).unwrap()[1].clone();
    for dead in ["node-01", "node-03", "node-04"] {
        assert_ne!(state(dead), "ready", "{dead} is dead\n{out}");
    }
    assert_eq!(state("node-05"), "ready", "{out}");
    let watch = out.one("WATCH");
    let before: u64 = watch[0].parse().expect("the restart was seen");
    let after: u64 = watch[1].parse().unwrap();
    assert!(
        after > before,
        "the restarted agent got no task: {before} -> {after}\n{out}"
    );
    let requeued: u64 = soak[7].parse().unwrap();
    let retried: u64 = soak[6].parse().unwrap();
    eprintln!("churn: retried {retried}, requeued {requeued}");
    out.assert_code(0);
}

/// A pool whose agents are all gone fails its queued tasks `unreachable`, naming the
/// hosts, once none has been reachable for the connect timeout — not before, and not
/// on the first failure.
#[test]
fn a_pool_with_no_reachable_agent_fails_unreachable() {
    let mut fleet = TestFleet::web(2);
    fleet.add_host(
        "web-09",
        &format!("127.0.0.1:{}", dead_udp_port()),
        &["web"],
    );
    fleet.kill("web-01");
    fleet.kill("web-02");
    let out = fleet.run(
        r#"
assert(goroutine.pool_create("p", { delegate_to = "web", workers = 4, retries = 1 }))
local hs = {}
for i = 1, 10 do hs[i] = goroutine.pool_submit("p", function() return 1 end) end
goroutine.pool_close("p")
local _, res = goroutine.pool_wait("p", "30s")
local kinds = {}
for _, r in ipairs(res) do kinds[r.kind or "ok"] = (kinds[r.kind or "ok"] or 0) + 1 end
print("KINDS", kinds.unreachable or 0, kinds.ok or 0)
print("ERR", (res[10].error:gsub("\t", " ")))
local st = goroutine.pool_stats("p")
print("STATE", st.hosts["web-01"].state ~= "ready", st.hosts["web-09"].state ~= "ready", st.retried)
"#,
        &[],
    );
    assert_eq!(out.one("KINDS"), vec!["10", "0"], "{out}");
    let err = out.line("ERR");
    for h in ["web-01", "web-02", "web-09"] {
        assert!(err.contains(h), "{err}");
    }
    assert!(err.contains("no agent has been reachable for"), "{err}");
    assert_eq!(out.one("STATE"), vec!["true", "true", "0"], "{out}");
}
