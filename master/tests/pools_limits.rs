//! Pools, agent limits and the error returns of the goroutine API, on real agents.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 200 tasks over 3 agents with retries = 2; one agent is SIGKILLed mid-way: every
/// result arrives exactly once, in submit order, and the pool counts retries.
#[test]
fn fleet_pool_survives_a_killed_agent() {
    let mut fleet = TestFleet::web(3);
    let mut run = fleet.spawn_run(
        r#"
assert(goroutine.pool_create("p", { workers = 12, delegate_to = "web", retries = 2 }))
for i = 1, 200 do
  goroutine.pool_submit("p", function(x) goroutine.sleep(60) return x * 7, host.name end, i)
end
print("SUBMITTED")
local ok, results = goroutine.pool_wait("p")
local good, bad = 0, 0
for i, r in ipairs(results) do
  if r.success and r.values[1] == i * 7 then good = good + 1 else bad = bad + 1; print("BAD", i, r.error) end
end
local st = goroutine.pool_stats("p")
print("POOL", tostring(ok), #results, good, bad, st.completed, st.failed, st.retried > 0 and "retried" or "none")
"#,
        &[],
    );
    assert!(run.wait_for("SUBMITTED", Duration::from_secs(30)).is_some());
    std::thread::sleep(Duration::from_millis(400));
    fleet.kill("web-02");
    let out = run.finish(Duration::from_secs(60));
    out.assert_code(0);
    assert_eq!(
        out.one("POOL"),
        vec!["true", "200", "200", "0", "200", "0", "retried"],
        "{out}"
    );
}

/// 10,000 trivial remote tasks through a pool of 64 in flight: all correct.
#[test]
fn ten_thousand_tasks_through_a_pool() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
goroutine.pool_create("p", { workers = 64, delegate_to = "web" })
for i = 1, 10000 do goroutine.pool_submit("p", function(x) return x + 1 end, i) end
local ok, results = goroutine.pool_wait("p")
local good = 0
for i, r in ipairs(results) do if r.success and r.values[1] == i + 1 then good = good + 1 end end
local st = goroutine.pool_stats("p")
print("BIG", #results, good, st.completed, st.hosts["web-01"].completed + st.hosts["web-02"].completed)
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(
        out.one("BIG"),
        vec!["10000", "10000", "10000", "10000"],
        "{out}"
    );
}

/// A task that allocates without bound fails with a clear error; the agent keeps serving.
#[test]
fn memory_bomb_fails_cleanly_and_agent_keeps_serving() {
    let mut fleet = TestFleet::empty();
    fleet.add_agent_with("web-01", &["web"], &["--memory-limit", "64MiB"]);
    let out = fleet.run(
        r#"
local ok, err = goroutine.await(goroutine.async(function()
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
end, { delegate_to = "web-01" }))
print("BOMB", tostring(ok), err:match("out of memory") and "oom" or err)
local ok2, v = goroutine.await(goroutine.async(function() return 41 + 1 end, { delegate_to = "web-01" }))
print("AFTER", tostring(ok2), v)
"#,
        &[],
    );
    assert_eq!(out.one("BOMB"), vec!["false", "oom"], "{out}");
    assert_eq!(out.one("AFTER"), vec!["true", "42"], "{out}");
    assert!(out.stdout.contains("web-01"), "{out}");
}

/// Over its limits the agent refuses with kind `refused` instead of queueing forever.
#[test]
fn agent_at_capacity_refuses() {
    let mut fleet = TestFleet::empty();
    fleet.add_agent_with("web-01", &["web"], &["--max-tasks", "1", "--queue", "0"]);
    let out = fleet.run(
        r#"
local slow = goroutine.async(function() goroutine.sleep(1500) return "slow" end, { delegate_to = "web-01" })
goroutine.sleep(300)
local r = goroutine.await_all({ goroutine.async(function() return "fast" end, { delegate_to = "web-01" }) })[1]
print("REFUSED", tostring(r.success), r.kind, r.error:match("capacity") and "capacity" or r.error)
print("SLOW", goroutine.await(slow))
"#,
        &[],
    );
    assert_eq!(
        out.one("REFUSED"),
        vec!["false", "refused", "capacity"],
        "{out}"
    );
    assert_eq!(out.one("SLOW"), vec!["true", "slow"], "{out}");
}

/// The error returns of the API, locally and remotely.
#[test]
fn error_returns() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
print("UNKNOWN_SUBMIT", goroutine.pool_submit("nope", function() end))
print("UNKNOWN_CLOSE", goroutine.pool_close("nope"))
print("UNKNOWN_STATS", tostring(goroutine.pool_stats("nope")))
goroutine.pool_create("p", { workers = 1 })
print("DUP", goroutine.pool_create("p", {}))
print("CLOSE", goroutine.pool_close("p"), goroutine.pool_close("p"))
print("CLOSED_SUBMIT", goroutine.pool_submit("p", function() end))
for _, target in ipairs({ "local", "web-01" }) do
  local opts = target ~= "local" and { delegate_to = target } or nil
  local ch = goroutine.channel(1)
  ch:close()
  local ok, sent, err = goroutine.await(goroutine.async(function()
    local ok, e = pcall(function() ch:send(1) end)
    return ok, e
  end, opts))
  print("CLOSED_SEND", target, tostring(ok), tostring(sent), tostring(err))
  local h = goroutine.async(function() goroutine.sleep(5000) end, opts)
  goroutine.sleep(100)
  h:cancel()
  local ok2, e2 = h:await()
  print("CANCELLED", target, tostring(ok2), e2:match("^cancelled") and "cancelled" or e2, h:status())
  local sem = goroutine.semaphore(2)
  local ok3, released, e3 = goroutine.await(goroutine.async(function()
    sem:acquire()
    sem:release()
    return pcall(function() sem:release() end)
  end, opts))
  print("OVER_RELEASE", target, tostring(ok3), tostring(released), tostring(e3))
end
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("UNKNOWN_SUBMIT")[0], "nil", "{out}");
    assert!(
        out.line("UNKNOWN_SUBMIT").contains("no pool named 'nope'"),
        "{out}"
    );
    assert_eq!(
        out.one("UNKNOWN_CLOSE"),
        vec!["false", "pool_close: no pool named 'nope'"],
        "{out}"
    );
    assert_eq!(out.one("UNKNOWN_STATS"), vec!["nil"], "{out}");
    assert!(out.line("DUP").contains("already exists"), "{out}");
    assert_eq!(out.one("CLOSE"), vec!["true", "true"], "{out}");
    assert!(out.line("CLOSED_SUBMIT").contains("is closed"), "{out}");
    for target in ["local", "web-01"] {
        let rows = out.all("CLOSED_SEND");
        let row = rows.iter().find(|r| r[0] == target).unwrap();
        // The task succeeded; inside it, pcall(ch:send) failed with the channel's error.
        assert_eq!(row[1..3], ["true", "false"], "{out}");
        assert!(
            row[3].ends_with(": channel: send on a closed channel"),
            "{out}"
        );
        let rows = out.all("CANCELLED");
        let row = rows.iter().find(|r| r[0] == target).unwrap();
        assert_eq!(&row[1..], &["false", "cancelled", "cancelled"], "{out}");
        let rows = out.all("OVER_RELEASE");
        let row = rows.iter().find(|r| r[0] == target).unwrap();
        assert_eq!(row[1..3], ["true", "false"], "{out}");
        assert!(
            row[3].ends_with(": semaphore: released 1 permit(s) but this task holds 0"),
            "{out}"
        );
    }
}

/// `h:cancel()` on a local infinite loop stops it promptly (instruction hook).
#[test]
fn local_cancel_is_prompt() {
    let fleet = TestFleet::web(1);
    let start = Instant::now();
    let out = fleet.run(
        r#"
local h = goroutine.async(function() while true do end end)
goroutine.sleep(200)
h:cancel()
print("LOOP", goroutine.await(h))
"#,
        &[],
    );
    assert!(out.line("LOOP").contains("cancelled"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A long run of tasks whose handles the script drops does not keep every task: the
/// master forgets a finished task once no handle to it is left (and none was copied
/// anywhere). Every handle the script still holds keeps working meanwhile.
///
/// Counted, not measured: `goroutine.task_stats().kept` is the number of task records
/// the master's registry holds. After a full collection (the handles' `__gc` runs in
/// it) only the one task whose handle is still alive is left, however many ran.
#[test]
fn dropped_handles_let_the_master_forget_finished_tasks() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local function batch(n)
  local hs = {}
  for i = 1, n do
    hs[#hs + 1] = goroutine.async(function() return i end)
    if #hs == 64 then
      for _, r in ipairs(goroutine.await_all(hs)) do assert(r.success, r.error) end
      hs = {}
    end
  end
  for _, r in ipairs(goroutine.await_all(hs)) do assert(r.success, r.error) end
end
local function stats(tag)
  collectgarbage()
  collectgarbage()
  local st = goroutine.task_stats()
  print(tag, st.kept, st.running)
end
local kept = goroutine.async(function() return "kept" end)
print("FIRST", goroutine.await(kept))
stats("START")
batch(4000)
stats("BEFORE")
batch(40000)
stats("AFTER")
-- Tasks that never get a handle are forgotten once their caller has the outcome.
for i = 1, 300 do
  local ok, v = goroutine.timeout(1000, function() return i end)
  assert(ok and v == i, tostring(v))
end
for i = 1, 50 do
  local r = fleet.run("all", function() return i end)
  assert(r["web-01"].success, r["web-01"].error)
end
stats("UNNAMED")
-- Its record is still there: awaiting again returns the same result.
print("KEPT", goroutine.await(kept))
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("FIRST"), "true\tkept", "{out}");
    // Records kept, tasks running: only `kept`'s record, however many tasks finished
    // (every one succeeded: `batch` asserts it). Before the master forgot tasks, this
    // was 4001 and then 44001.
    assert_eq!(out.one("START"), vec!["1", "0"], "{out}");
    assert_eq!(out.one("BEFORE"), vec!["1", "0"], "{out}");
    assert_eq!(out.one("AFTER"), vec!["1", "0"], "{out}");
    assert_eq!(out.one("UNNAMED"), vec!["1", "0"], "{out}");
    assert_eq!(out.line("KEPT"), "true\tkept", "{out}");
}
