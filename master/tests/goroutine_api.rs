//! The goroutine API, locally and on real agents: spawn, wait groups, channels,
//! timeout, cancel, await_any, handles, atomics and mutexes.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `spawn` + `wait_group`: remote tasks call `wg:done()` on the master's wait group.
#[test]
fn spawn_and_wait_group_locally_and_remotely() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
for _, target in ipairs({ "local", "web-01", "web-02" }) do
  local wg = goroutine.wait_group()
  local results = goroutine.channel(100)
  local opts = target ~= "local" and { delegate_to = target } or nil
  wg:add(10)
  for i = 1, 10 do
    goroutine.spawn(function()
      goroutine.sleep(10 * (i % 3))
      results:send(i * 3)
      wg:done()
    end, opts)
  end
  local ok = wg:wait(10000)
  local sum, n = 0, 0
  while results:len() > 0 do
    local v = results:receive()
    sum, n = sum + v, n + 1
  end
  print("WG", target, tostring(ok), wg:count(), n, sum)
end
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(
        out.all("WG"),
        vec![
            vec!["local", "true", "0", "10", "165"],
            vec!["web-01", "true", "0", "10", "165"],
            vec!["web-02", "true", "0", "10", "165"],
        ],
        "{out}"
    );
}

/// Remote tasks send on a master channel; main receives everything, then sees it closed.
#[test]
fn channel_from_remote_tasks_to_main() {
    let fleet = TestFleet::web(3);
    let out = fleet.run(
        r#"
local ch = goroutine.channel()          -- unbuffered: every send waits for main
local hosts = fleet.hosts("web")
local hs = {}
for k, name in ipairs(hosts) do
  hs[k] = goroutine.async(function()
    for j = 1, 5 do ch:send({ from = host.name, v = j }) end
    return "sent"
  end, { delegate_to = name })
end
local got, per = 0, {}
for _ = 1, 15 do
  local msg, ok = ch:receive()
  if ok then
    got = got + msg.v
    per[msg.from] = (per[msg.from] or 0) + 1
  end
end
for k, h in ipairs(hs) do assert(select(2, goroutine.await(h)) == "sent") end
ch:close()
local v, ok = ch:receive()
print("CH", got, per["web-01"], per["web-02"], per["web-03"], tostring(v), tostring(ok),
      tostring(ch:is_closed()))
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("CH"), "45\t5\t5\t5\tnil\tfalse\ttrue", "{out}");
}

/// `goroutine.timeout(200, <infinite loop>)` gives up in well under 2 s, both ways.
#[test]
fn timeout_stops_an_infinite_loop_locally_and_remotely() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
print("T0")
local ok, err = goroutine.timeout(200, function() while true do end end)
print("LOCAL", tostring(ok), err)
print("T1")
local ok2, err2 = goroutine.timeout(200, function() while true do end end, { delegate_to = "web-01" })
print("REMOTE", tostring(ok2), err2)
print("T2")
local ok3, v = goroutine.timeout(2000, function() return "quick" end, { delegate_to = "web-01" })
print("QUICK", tostring(ok3), v)
local ok4, err4 = goroutine.timeout(200, function() goroutine.sleep(30000) end, { delegate_to = "web-01" })
print("SLEEP", tostring(ok4), err4)
print("T3")
"#,
        &[],
    );
    let local = out.one("LOCAL");
    assert_eq!(local[0], "false", "{out}");
    assert!(local[1].starts_with("timeout exceeded"), "{out}");
    let remote = out.one("REMOTE");
    assert_eq!(remote[0], "false", "{out}");
    assert!(remote[1].starts_with("timeout exceeded"), "{out}");
    assert!(remote[1].contains("web-01"), "{out}");
    assert_eq!(out.line("QUICK"), "true\tquick", "{out}");
    let sleep = out.one("SLEEP");
    assert_eq!(sleep[0], "false", "{out}");
    assert!(sleep[1].starts_with("timeout exceeded"), "{out}");
    let local_t = out.time_of("T1") - out.time_of("T0");
    let remote_t = out.time_of("T2") - out.time_of("T1");
    assert!(
        local_t < Duration::from_millis(1500),
        "local took {local_t:?}"
    );
    assert!(
        remote_t < Duration::from_millis(1500),
        "remote took {remote_t:?}"
    );
    assert!(
        local_t >= Duration::from_millis(190),
        "local took {local_t:?}"
    );
    assert!(
        remote_t >= Duration::from_millis(190),
        "remote took {remote_t:?}"
    );
    // Timeouts are failures of the run.
    out.assert_code(1);
}

/// A task that loops inside a coroutine is stopped at its deadline like any other, both
/// ways: the stop hook reaches the coroutines a task makes (it used to be abandoned as
/// "blocked in a C call", its thread spinning on).
#[test]
fn a_loop_inside_a_coroutine_is_stopped_at_its_deadline() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local function spin()
  local co = coroutine.wrap(function() while true do end end)
  co()
end
for _, target in ipairs({ "local", "web-01" }) do
  local t0 = sys.monotonic_ms()
  local opts = { timeout = 300 }
  if target ~= "local" then opts.delegate_to = target end
  local ok, err = goroutine.await(goroutine.async(spin, opts))
  print("CO", target, tostring(ok), err, tostring(sys.monotonic_ms() - t0 < 1500))
end
"#,
        &[],
    );
    let all = out.all("CO");
    assert_eq!(all.len(), 2, "{out}");
    for line in &all {
        assert_eq!(line[1], "false", "{out}");
        assert!(
            line[2].contains("ran past its time limit and was stopped"),
            "{out}"
        );
        assert_eq!(line[3], "true", "{out}");
    }
}

/// A task cannot outlive its deadline by mistake, either way (each of these used to
/// be abandoned as "blocked in a C call", its thread spinning on):
/// - a loop around `pcall`, `xpcall`, `load` or `coroutine.resume` (a retry loop that
///   never succeeds): a stopped task's protected calls raise its stop again;
/// - an `xpcall` message handler that loops: once stopped, it is not called;
/// - `debug.sethook`, which would take the stop hook away, is refused, in tasks and
///   in the main script;
/// - `__gc` finalizers, which run with hooks off, are refused by `setmetatable`.
#[test]
fn a_task_cannot_escape_its_deadline() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local p = pcall
local cases = {
  { "pcall", function() while true do pcall(function() while true do end end) end end },
  -- The script's own pcall, as an upvalue: the task gets its state's guarded one.
  { "upvalue", function() while true do p(function() while true do end end) end end },
  { "xpcall", function()
    while true do xpcall(function() while true do end end, function(e) return e end) end
  end },
  { "handler", function() xpcall(error, function() while true do end end, "x") end },
  { "sethook", function()
    local ok, err = pcall(debug.sethook)
    if not ok then print("REFUSED", host.name, err) end
    while true do end
  end },
  { "globalpcall", function() while true do _G.pcall(function() while true do end end) end end },
  { "require", function()
    local d = require("debug")
    if pcall(d.sethook) then print("UNGUARDED", host.name) end
    while true do end
  end },
  { "load", function() repeat local f = load(function() while true do end end) until f end },
  { "close", function()
    while true do
      local co = coroutine.create(function()
        local x <close> = setmetatable({}, { __close = function() while true do end end })
        coroutine.yield()
      end)
      coroutine.resume(co)
      coroutine.close(co)
    end
  end },
  { "resume", function()
    while true do coroutine.resume(coroutine.create(function() while true do end end)) end
  end },
  { "gc", function() setmetatable({}, { __gc = function() while true do end end }) end },
  { "debuggc", function() debug.setmetatable({}, { __gc = function() end }) end },
}
for _, target in ipairs({ "local", "web-01" }) do
  for _, c in ipairs(cases) do
    local t0 = sys.monotonic_ms()
    local opts = { timeout = 300 }
    if target ~= "local" then opts.delegate_to = target end
    local ok, err = goroutine.await(goroutine.async(c[2], opts))
    print("CASE", target, c[1], tostring(ok), err, tostring(sys.monotonic_ms() - t0 < 1500))
  end
end
print("MAIN", pcall(debug.sethook, function() end, "l"))
-- Unstopped, the guarded functions behave as Lua's own, in the script and in tasks.
local function same()
  local n = select('#', pcall(function() return nil, 2, nil end))
  local co = coroutine.wrap(function()
    return pcall(function() coroutine.yield("y"); return "r" end)
  end)
  local y, ok, r = co(), co()
  local _, e1 = pcall(function() setmetatable({}, 5) end)
  local _, e2 = pcall(function() xpcall(print) end)
  local _, e3 = pcall(function() load({}) end)
  local xok, xv = xpcall(function() error({ code = 7 }) end, function(e) return e.code end)
  return n, y, ok, r, e1, e2, e3, xok, xv
end
-- A global the task set itself before naming a guarded one is left as it is.
print("OWN", goroutine.await(goroutine.async(function()
  load = function() return "mine" end
  pcall(type, 1)
  return load()
end, { delegate_to = "web-01" })))
print("SAME", "local", same())
print("SAME", "web-01", select(2, goroutine.await(goroutine.async(same, { delegate_to = "web-01" }))))
"#,
        &[],
    );
    for same in out.all("SAME") {
        assert_eq!(same[1..5], ["4", "y", "true", "r"], "{same:?}\n{out}");
        // Named, and placed at the line of the call.
        for (at, want) in [
            (
                5,
                "bad argument #2 to 'setmetatable' (nil or table expected",
            ),
            (
                6,
                "bad argument #2 to 'xpcall' (function expected, got no value)",
            ),
            (
                7,
                "bad argument #1 to 'load' (function expected, got table)",
            ),
        ] {
            assert!(
                same[at].starts_with("t.sloth:") && same[at].contains(want),
                "{want}: {same:?}\n{out}"
            );
        }
        assert_eq!(same[8..], ["false", "7"], "{same:?}\n{out}");
    }
    assert_eq!(out.all("SAME").len(), 2, "{out}");
    let cases = out.all("CASE");
    assert_eq!(cases.len(), 24, "{out}");
    assert!(!out.stdout.contains("UNGUARDED"), "{out}");
    assert_eq!(out.one("OWN"), vec!["true", "mine"], "{out}");
    for c in &cases {
        let (case, ok, err, quick) = (&c[1], &c[2], &c[3], &c[4]);
        assert_eq!(ok, "false", "{c:?}\n{out}");
        assert_eq!(quick, "true", "{c:?}\n{out}");
        let want = match case.as_str() {
            "gc" => "setmetatable: __gc finalizers are not available",
            "debuggc" => "debug.setmetatable: __gc finalizers are not available",
            _ => "ran past its time limit and was stopped",
        };
        assert!(err.contains(want), "{c:?}\n{out}");
        assert!(err.contains(&c[0]), "names the host: {c:?}\n{out}");
    }
    // Task output comes prefixed with its host and task.
    for target in ["local", "web-01"] {
        let refused = format!("REFUSED\t{target}\tdebug.sethook is not available");
        assert!(out.stdout.contains(&refused), "{refused}\n{out}");
    }
    let main = out.one("MAIN");
    assert_eq!(main[0], "false", "{out}");
    assert!(main[1].contains("debug.sethook is not available"), "{out}");
}

/// Cancelling a remote infinite loop frees the agent's only worker at once.
#[test]
fn cancel_frees_the_agent_for_the_next_task() {
    let mut fleet = TestFleet::empty();
    fleet.add_agent_with("web-01", &["web"], &["--max-tasks", "1"]);
    let out = fleet.run(
        r#"
local h = goroutine.async(function() while true do end end, { delegate_to = "web-01" })
goroutine.sleep(300)
print("BEFORE", h:status())
h:cancel()
print("CANCELLED")
local h2 = goroutine.async(function() return "next", host.name end, { delegate_to = "web-01" })
local r = goroutine.await_all({ h2 }, 5000)[1]
print("NEXT", tostring(r.success), tostring(r.values and r.values[1]), tostring(r.values and r.values[2]))
print("AFTER", h:status())
local ok, err = goroutine.await(h)
print("AWAIT", tostring(ok), err)
local r1 = goroutine.await_all({ h })[1]
print("KIND", r1.kind)
"#,
        &[],
    );
    assert_eq!(out.line("BEFORE"), "running", "{out}");
    assert_eq!(out.line("NEXT"), "true\tnext\tweb-01", "{out}");
    let waited = out.time_of("NEXT") - out.time_of("CANCELLED");
    assert!(
        waited < Duration::from_secs(1),
        "the next task ran {waited:?} after the cancel\n{out}"
    );
    assert_eq!(out.line("AFTER"), "cancelled", "{out}");
    let aw = out.one("AWAIT");
    assert_eq!(aw[0], "false", "{out}");
    assert!(aw[1].starts_with("cancelled"), "{out}");
    assert!(aw[1].contains("web-01"), "{out}");
    assert_eq!(out.line("KIND"), "cancelled", "{out}");
}

/// A task waiting in a full agent's queue and then cancelled never runs: the agent
/// drops it when the master stops the stream, whether or not the master had already
/// finished its side of it.
#[test]
fn cancel_of_a_task_queued_on_the_agent_drops_it() {
    let mut fleet = TestFleet::empty();
    fleet.add_agent_with("web-01", &["web"], &["--max-tasks", "1"]);
    let marker = tempfile::tempdir().expect("tempdir");
    let path = marker.path().join("ran");
    let out = fleet.run(
        &format!(
            r#"
local path = "{}"
local busy = goroutine.async(function() while true do end end, {{ delegate_to = "web-01" }})
goroutine.sleep(200)
local queued = goroutine.async(function() fs.write(path, "ran") return "ran" end, {{ delegate_to = "web-01" }})
goroutine.sleep(200)
print("QUEUED", queued:status())
queued:cancel()
busy:cancel()
local r = goroutine.await_all({{ goroutine.async(function() return "next" end, {{ delegate_to = "web-01" }}) }}, 5000)[1]
print("NEXT", tostring(r.success), tostring(r.values and r.values[1]))
goroutine.sleep(300)
print("KIND", goroutine.await_all({{ queued }})[1].kind)
print("RAN", tostring(fs.exists(path)))
-- Tasks that wait in the agent's queue and are not cancelled all run, in turn.
local hs = {{}}
for i = 1, 4 do
  hs[i] = goroutine.async(function() goroutine.sleep(50) return i end, {{ delegate_to = "web-01" }})
end
local sum = 0
for _, r in ipairs(goroutine.await_all(hs, 5000)) do
  if r.success then sum = sum + r.values[1] end
end
print("SUM", sum)
"#,
            path.display()
        ),
        &[],
    );
    assert_eq!(out.line("QUEUED"), "running", "{out}");
    assert_eq!(out.line("NEXT"), "true\tnext", "{out}");
    assert_eq!(out.line("KIND"), "cancelled", "{out}");
    assert_eq!(out.line("RAN"), "false", "{out}");
    assert_eq!(out.line("SUM"), "10", "{out}");
}

/// `await_any`, `h:status()`, `h.id`, `h.host`, and re-awaiting.
#[test]
fn handles_await_any_status_and_reawait() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
local slow = goroutine.async(function() goroutine.sleep(3000) return "slow" end, { delegate_to = "web-01" })
local fast = goroutine.async(function() goroutine.sleep(100) return "fast", 2 end, { delegate_to = "web-02" })
local failing = goroutine.async(function() error("nope", 0) end, { delegate_to = "web-02", name = "failer" })
local loc = goroutine.async(function() return 5 end)
print("IDS", type(slow.id), tostring(slow.id ~= fast.id), tostring(fast.id ~= failing.id))
print("HOSTS", slow.host, fast.host, loc.host)
print("STATUS0", slow:status())
local i, ok, a, b = goroutine.await_any({ slow, fast })
print("ANY", i, tostring(ok), a, b)
print("STATUS1", slow:status(), fast:status())
print("AWAIT1", goroutine.await(fast))
print("AWAIT2", fast:await())
print("AWAIT3", goroutine.await(fast))
goroutine.await(failing)
print("FAIL1", goroutine.await(failing))
print("FAIL2", failing:await())
goroutine.await(loc)
print("STATUS2", failing:status(), loc:status())
local n, ok2, err = goroutine.await_any({ failing })
print("ANYFAIL", n, tostring(ok2), err)
local ti, tok, terr = goroutine.await_any({ slow }, 100)
print("ANYTIMEOUT", tostring(ti), tostring(tok), terr)
slow:cancel()
"#,
        &[],
    );
    let ids = out.one("IDS");
    assert_eq!(ids, ["number", "true", "true"], "{out}");
    assert_eq!(out.line("HOSTS"), "web-01\tweb-02\tlocal", "{out}");
    assert_eq!(out.line("STATUS0"), "running", "{out}");
    assert_eq!(out.line("ANY"), "2\ttrue\tfast\t2", "{out}");
    let any_at = out.time_of("ANY");
    assert!(
        any_at < Duration::from_millis(2500),
        "await_any waited for the slow one\n{out}"
    );
    assert_eq!(out.line("STATUS1"), "running\tok", "{out}");
    assert_eq!(out.line("AWAIT1"), "true\tfast\t2", "{out}");
    assert_eq!(out.line("AWAIT2"), "true\tfast\t2", "{out}");
    assert_eq!(out.line("AWAIT3"), "true\tfast\t2", "{out}");
    assert_eq!(out.line("FAIL1"), "false\tlua: web-02: nope", "{out}");
    assert_eq!(out.line("FAIL2"), "false\tlua: web-02: nope", "{out}");
    assert_eq!(out.line("STATUS2"), "failed\tok", "{out}");
    assert_eq!(out.line("ANYFAIL"), "1\tfalse\tlua: web-02: nope", "{out}");
    let t = out.one("ANYTIMEOUT");
    assert_eq!(t[..2], ["nil", "false"], "{out}");
    assert!(t[2].starts_with("timeout exceeded"), "{out}");
    out.assert_code(1);
}

/// 50 remote tasks increment one master atomic.
#[test]
fn atomic_int_incremented_by_fifty_remote_tasks() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
local counter = goroutine.atomic_int(0)
local hs = {}
for i = 1, 50 do
  hs[i] = goroutine.async(function()
    counter:incr()
    return counter:get() > 0
  end, { delegate_to = (i % 2 == 0) and "web-01" or "web-02" })
end
local okc = 0
for _, r in ipairs(goroutine.await_all(hs)) do
  if r.success and r.values[1] == true then okc = okc + 1 end
end
print("ATOMIC", counter:get(), okc)
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("ATOMIC"), "50\t50", "{out}");
}

/// A mutex held by a remote task is released when its agent is SIGKILLed.
#[test]
fn mutex_of_a_killed_agent_becomes_free() {
    let mut fleet = TestFleet::web(1);
    let mut run = fleet.spawn_run(
        r#"
local m = goroutine.mutex()
local h = goroutine.async(function()
  m:lock()
  print("LOCKED")
  goroutine.sleep(30000)
end, { delegate_to = "web-01" })
goroutine.sleep(1500)
print("HELD", tostring(m:is_locked()), tostring(m:try_lock()))
local got = m:lock(5000)
print("GOT", tostring(got))
print("STATUS", h:status())
m:unlock()
"#,
        &[],
    );
    assert!(
        run.wait_for("LOCKED", Duration::from_secs(20)).is_some(),
        "the task never took the lock"
    );
    fleet.kill("web-01");
    let killed = Instant::now();
    let got = run.wait_for_at("GOT", Duration::from_secs(20));
    let out = run.finish(RUN_TIMEOUT);
    assert!(got.is_some(), "{out}");
    assert_eq!(out.line("HELD"), "true\tfalse", "{out}");
    assert_eq!(out.line("GOT"), "true", "{out}");
    let after = got.unwrap().0.saturating_duration_since(killed);
    eprintln!("lock freed {after:?} after the kill");
    assert!(
        after < Duration::from_secs(6),
        "freed {after:?} after the kill\n{out}"
    );
    assert_eq!(out.line("STATUS"), "failed", "{out}");
}

/// A task's `os.execute` stops with the task (its process group is killed at the
/// deadline) and keeps Lua's return values; its output comes back as log lines.
/// Locally and on an agent alike.
#[test]
fn os_execute_in_a_task_is_stopped_at_its_deadline() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
for _, target in ipairs({ "local", "web-01" }) do
  local opts = target ~= "local" and { delegate_to = target } or {}
  print("RES", target, goroutine.await(goroutine.async(function()
    local a, b, c = os.execute("echo hello-from-sh; exit 3")
    local d, e, f = os.execute("true")
    local g, h, i = os.execute("kill -9 $$")
    return table.concat({ tostring(a), b, c, tostring(d), e, f, tostring(g), h, i }, " "), os.execute()
  end, opts)))
  local t0 = sys.monotonic_ms()
  opts.timeout = "300ms"
  local ok, err = goroutine.await(goroutine.async(function()
    os.execute("sleep 30.4321")
    return "slept"
  end, opts))
  print("TIMEOUT", target, tostring(ok), err:match("^timeout exceeded") and "timeout" or err,
    string.format("%.0f", sys.monotonic_ms() - t0))
end
goroutine.sleep(200)
print("SLEEPERS", (exec.run("pgrep -fc '^sleep 30.4321' || true").stdout:gsub("%s", "")))
"#,
        &[],
    );
    for target in ["local", "web-01"] {
        let res = out
            .all("RES")
            .into_iter()
            .find(|f| f[0] == target)
            .unwrap_or_else(|| panic!("no line for {target}\n{out}"));
        assert_eq!(
            res[1..],
            ["true", "nil exit 3 true exit 0 nil signal 9", "true"],
            "{out}"
        );
        let t = out
            .all("TIMEOUT")
            .into_iter()
            .find(|f| f[0] == target)
            .unwrap_or_else(|| panic!("no line for {target}\n{out}"));
        assert_eq!(t[1..3], ["false", "timeout"], "{out}");
        let ms: u64 = t[3].parse().unwrap();
        assert!(
            ms < 1500,
            "{target}: os.execute stopped after {ms} ms\n{out}"
        );
    }
    assert!(
        out.stdout.contains("hello-from-sh") || out.stderr.contains("hello-from-sh"),
        "{out}"
    );
    assert_eq!(out.line("SLEEPERS"), "0", "{out}");
}

/// A task stuck in a C call the stop hook cannot reach (`io.popen(...):read`) is given
/// up 2 s after its deadline, locally and on an agent, with an error that says so.
#[test]
fn a_task_blocked_in_a_c_call_is_abandoned_after_its_deadline() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
for _, target in ipairs({ "local", "web-01" }) do
  local t0 = sys.monotonic_ms()
  local ok, err = goroutine.await(goroutine.async(function()
    return io.popen("sleep 4.321"):read("a")
  end, { delegate_to = target ~= "local" and target or nil, timeout = "300ms" }))
  print("STUCK", target, tostring(ok), err:match("did not stop the task at its deadline") and "abandoned" or err:match("did not stop at its deadline") and "abandoned" or err,
    string.format("%.0f", sys.monotonic_ms() - t0))
end
"#,
        &[],
    );
    for f in out.all("STUCK") {
        assert_eq!(f[1..3], ["false", "abandoned"], "{out}");
        let ms: u64 = f[3].parse().unwrap();
        assert!(
            (2000..4000).contains(&ms),
            "{}: given up after {ms} ms\n{out}",
            f[0]
        );
    }
    assert_eq!(out.all("STUCK").len(), 2, "{out}");
}

/// A task stuck for good in a C call the stop hook cannot reach (a string pattern that
/// backtracks without end) is given up by the master at its deadline. The agent counts
/// its thread lost `STUCK_AFTER` (5 s) after the stop and, as soon as no other task
/// runs, restarts itself in place: the same pid, the lost thread's CPU taken back,
/// and tasks served again.
#[test]
fn an_agent_with_a_thread_stuck_in_a_c_call_restarts_itself_once_idle() {
    let mut fleet = TestFleet::web(1);
    let pid = fleet.pid("web-01");
    let out = fleet.run(
        r#"
local ok, err = goroutine.await(goroutine.async(function()
  return string.rep("a", 30000):find(".-.-.-.-b")
end, { delegate_to = "web-01", timeout = "500ms" }))
print("STUCK", tostring(ok), err:match("did not stop the task at its deadline") and "abandoned" or err)
"#,
        &[],
    );
    assert_eq!(out.one("STUCK"), ["false", "abandoned"], "{out}");
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // utime and stime: fields 14 and 15, counted after the ")" that ends the name.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet.agent_log("web-01").contains("restarting in place") {
        assert!(
            Instant::now() < deadline,
            "no restart: {}",
            fleet.agent_log("web-01")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(fleet.alive("web-01"), "{}", fleet.agent_log("web-01"));
    assert_eq!(fleet.pid("web-01"), pid);
    // The lost thread is gone: the process no longer burns a CPU.
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks() - before;
    assert!(used < 30, "{used} ticks of CPU in 1 s after the restart");
    let out = fleet.run(
        r#"print("AGAIN", goroutine.await(goroutine.async(function() return 7 end, { delegate_to = "web-01" })))"#,
        &[],
    );
    let log = fleet.agent_log("web-01");
    assert_eq!(out.one("AGAIN"), ["true", "7"], "{out}\n{log}");
    assert!(log.contains("its thread is stuck in a C call"), "{log}");
}

/// An agent gives the memory of a big task back to the system when the task ends,
/// rather than keep its peak for good (it kept 430 MB after a 400 MB task).
#[test]
fn an_agent_gives_back_the_memory_of_a_big_task() {
    let fleet = TestFleet::web(1);
    let pid = fleet.pid("web-01");
    let rss_mib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    let out = fleet.run(
        r#"
local ok, n = goroutine.await(goroutine.async(function()
  local t = {}
  for i = 1, 20 do t[i] = string.rep(string.char(64 + i), 10 * 1024 * 1024) end
  return #t
end, { delegate_to = "web-01" }))
print("BIG", tostring(ok), tostring(n))
"#,
        &[],
    );
    assert_eq!(out.one("BIG"), ["true", "20"], "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while rss_mib() > 64 {
        assert!(
            Instant::now() < deadline,
            "the agent still holds {} MiB after a 200 MiB task",
            rss_mib()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A task that replaces the metatable of `_G` ("strict globals") still has `table`,
/// `math` and `string`, and its shared objects still work.
#[test]
fn strict_globals_in_a_task_keep_the_core_libraries() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local ch = goroutine.channel(1)
for _, target in ipairs({ "local", "web-01" }) do
  local ok, v = goroutine.await(goroutine.async(function()
    setmetatable(_G, { __index = function(_, k) error("undefined global " .. k, 2) end })
    ch:send(math.max(2, 3))
    local bad = pcall(function() return undefined_thing end)
    return table.concat({ string.format("%d", ch:receive()), tostring(bad) }, " ")
  end, { delegate_to = target ~= "local" and target or nil }))
  print("STRICT", target, tostring(ok), v)
end
"#,
        &[],
    );
    out.assert_code(0);
    for f in out.all("STRICT") {
        assert_eq!(f[1..], ["true", "3 false"], "{out}");
    }
    assert_eq!(out.all("STRICT").len(), 2, "{out}");
}

/// Channels keep Go's promises with senders on agents and on the master: a blocked
/// sender's value is never delivered after its send failed (stopped, or the channel
/// closed: the send raises), an unbuffered channel buffers nothing, blocked senders
/// are served in the order they came, and a value too big for a frame is refused at
/// the send (an error the task can handle), never lost on its way.
#[test]
fn channels_deliver_only_what_a_send_delivered() {
    let fleet = TestFleet::web(2);
    let out = fleet.run(
        r#"
local u = goroutine.channel()
local h = goroutine.async(function() u:send("phantom"); return "sent" end,
  { delegate_to = "web-01", timeout = 300 })
print("TIMED", (goroutine.await(h)))
print("LEN", u:len(), select(2, u:receive(300)))
local u2 = goroutine.channel()
local h2 = goroutine.async(function() u2:send("ghost") end)
goroutine.sleep(100); h2:cancel(); goroutine.await(h2)
print("CANCELLED", select(2, u2:receive(300)))
local u3 = goroutine.channel()
goroutine.spawn(function() goroutine.sleep(200); u3:close() end)
local ok, err = pcall(u3.send, u3, "late")
print("CLOSED", ok, err, (u3:receive(100)))
local u4 = goroutine.channel()
local s1 = goroutine.async(function() u4:send(1) end, { delegate_to = "web-01" })
local s2 = goroutine.async(function() u4:send(2) end, { delegate_to = "web-02" })
goroutine.sleep(300)
print("UNBUFFERED", u4:len(), (u4:receive()), (u4:receive()))
goroutine.await_all({ s1, s2 })
local b = goroutine.channel(1)
b:send(0)
local hs = {}
for i = 1, 4 do
  hs[i] = goroutine.async(function() b:send(i) end)
  goroutine.sleep(150)
end
local order = {}
for i = 1, 5 do order[i] = tostring((b:receive())) end
goroutine.await_all(hs)
print("FIFO", table.concat(order, " "))
local big = string.rep("y", 65 * 1024 * 1024)
local ok2, e2 = pcall(b.send, b, big)
print("BIG LOCAL", ok2, (tostring(e2):gsub("%d+ bytes", "N bytes")))
local r = goroutine.async(function()
  local ok, e = pcall(b.send, b, string.rep("z", 65 * 1024 * 1024))
  return ok, e
end, { delegate_to = "web-01" })
local _, rok, rerr = goroutine.await(r)
print("BIG REMOTE", rok, rerr ~= nil)
local l = goroutine.async(function() return string.rep("x", 65 * 1024 * 1024) end)
local lok, lerr = goroutine.await(l)
print("BIG LOCAL RESULT", lok, (lerr:gsub("%d+ bytes", "N bytes")))
local a = goroutine.async(function()
  local ok, e = l:await("5s")
  return ok, e
end, { delegate_to = "web-02", timeout = "20s" })
local _, aok, aerr = goroutine.await(a)
print("BIG AWAIT", aok, aerr == lerr)
"#,
        &[],
    );
    // The sender that timed out is a failed task.
    out.assert_code(1);
    assert_eq!(out.line("TIMED"), "false", "{out}");
    assert_eq!(out.line("LEN"), "0\tfalse", "{out}");
    assert_eq!(out.line("CANCELLED"), "false", "{out}");
    assert_eq!(
        out.line("CLOSED"),
        "false\tchannel: send on a closed channel\tnil",
        "{out}"
    );
    assert_eq!(out.line("UNBUFFERED"), "0\t1\t2", "{out}");
    assert_eq!(out.line("FIFO"), "0 1 2 3 4", "{out}");
    assert_eq!(
        out.line("BIG LOCAL"),
        "false\tchannel: the value takes N bytes; a channel carries at most N bytes (what a frame to an agent can hold)",
        "{out}"
    );
    assert_eq!(out.line("BIG REMOTE"), "false\ttrue", "{out}");
    // A local result is held to a remote one's frame: the same failure either way.
    assert_eq!(
        out.line("BIG LOCAL RESULT"),
        "false\tcapture: local: the result cannot be sent back: it takes N bytes, more than a frame to or from an agent can hold (N bytes)",
        "{out}"
    );
    assert_eq!(out.line("BIG AWAIT"), "false\ttrue", "{out}");
}

/// Results are encoded on the agent's task thread: a remote result too big for a
/// frame is that task's capture error naming the host, a big one that fits arrives
/// whole, and tasks on the same agent around them are answered.
#[test]
fn remote_results_big_and_too_big() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local opts = { delegate_to = "web-01", timeout = "60s" }
local too_big = goroutine.async(function() return string.rep("x", 65 * 1024 * 1024) end, opts)
local fits = goroutine.async(function() return string.rep("y", 20 * 1024 * 1024) .. "end" end, opts)
local small = goroutine.async(function() return 42 end, opts)
local ok, err = goroutine.await(too_big)
print("TOO BIG", ok, (err:gsub("%d+ bytes", "N bytes")))
local ok2, v = goroutine.await(fits)
print("FITS", ok2, #v, v:sub(-4))
print("SMALL", goroutine.await(small))
"#,
        &[],
    );
    out.assert_code(1);
    assert_eq!(
        out.line("TOO BIG"),
        "false\tcapture: web-01: the result cannot be sent back: it takes N bytes, more than a frame to or from an agent can hold (N bytes)",
        "{out}"
    );
    assert_eq!(
        out.line("FITS"),
        format!("true\t{}\tyend", 20 * 1024 * 1024 + 3),
        "{out}"
    );
    assert_eq!(out.line("SMALL"), "true\t42", "{out}");
    // The agent's audit log records the failure the master got, not an "ok".
    let audit = std::fs::read_to_string(fleet.agents[0].audit_log()).unwrap();
    let ends: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "task_end")
        .collect();
    assert_eq!(ends.len(), 3, "{audit}");
    let failed: Vec<&serde_json::Value> = ends.iter().filter(|l| l["outcome"] == "error").collect();
    assert_eq!(failed.len(), 1, "{audit}");
    assert_eq!(failed[0]["error_kind"], "capture", "{audit}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("the result cannot be sent back")),
        "{audit}"
    );
}

/// `select` cases are strict: a typo, an empty case or a case with both send and
/// receive raise at once, instead of a case that is never ready (which, without a
/// timeout, waited forever).
#[test]
fn select_refuses_cases_it_cannot_run() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local c = goroutine.channel(1)
for _, case in ipairs({
  { channel = c, recieve = true },
  { channel = c },
  { channel = c, send = 1, receive = true },
}) do
  local ok, err = pcall(goroutine.select, { case })
  print("SEL", ok, err)
end
c:close()
print("CLOSED", pcall(goroutine.select, { { channel = c, send = 1 } }, 100))
"#,
        &[],
    );
    out.assert_code(0);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("SEL"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("case #1: unknown key 'recieve'"), "{out}");
    assert!(
        lines[1].contains("case #1: give send = VALUE or receive = true"),
        "{out}"
    );
    assert!(
        lines[2].contains("case #1: give send or receive, not both"),
        "{out}"
    );
    assert!(
        out.line("CLOSED")
            .contains("case #1: send on a closed channel"),
        "{out}"
    );
}

/// Arguments that have no exact meaning are refused, not clamped: an atomic set to a
/// float no integer can hold, a `max_fail_percentage` outside 0-100.
#[test]
fn out_of_range_numbers_are_refused_not_clamped() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local a = goroutine.atomic_int(1)
print("SET", pcall(a.set, a, 1e300))
print("ADD", pcall(a.add, a, 2^64))
local before = a:get()
a:set(2^52)
print("KEPT", before, a:get())
print("PCT", pcall(fleet.run, "all", function() end, { max_fail_percentage = 150 }))
"#,
        &[],
    );
    out.assert_code(0);
    assert!(out.line("SET").starts_with("false\t"), "{out}");
    assert!(out.line("SET").contains("must be an integer"), "{out}");
    assert!(out.line("ADD").starts_with("false\t"), "{out}");
    assert_eq!(out.line("KEPT"), "1\t4503599627370496", "{out}");
    assert!(
        out.line("PCT")
            .contains("max_fail_percentage' must be between 0 and 100, got 150"),
        "{out}"
    );
}

/// `await_all` (and `fleet.run`) results say how many values came back, nils included.
#[test]
fn results_count_their_values_nils_included() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local h = goroutine.async(function() return 1, nil, 3, nil end, { delegate_to = "web-01" })
local r = goroutine.await_all({ h })[1]
print("N", r.n, r.values[1], r.values[3])
local f = fleet.run("web-01", function() return nil, "b" end)["web-01"]
print("F", f.n, tostring(f.values[1]), f.values[2])
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("N"), "4\t1\t3", "{out}");
    assert_eq!(out.line("F"), "2\tnil\tb", "{out}");
}

/// The main script runs on the runtime's worker (`lua::on_runtime`). An agent's answer
/// is still taken while the script computes in pure Lua (the stop hook hands the worker
/// over), and while it waits in a command (`os.execute` hands it over first): neither
/// holds back the connections.
#[test]
fn the_script_holds_back_no_answer_while_it_computes_or_waits() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local function start(v)
  return goroutine.async(function() return v end, { delegate_to = "web-01" })
end
goroutine.await(start(0)) -- connected
local h = start(1)
local t0 = sys.monotonic_ms()
while goroutine.task_stats().running > 0 and sys.monotonic_ms() - t0 < 5000 do end
print("BUSY", goroutine.task_stats().running, tostring(sys.monotonic_ms() - t0 < 5000))
print("BUSYAWAIT", goroutine.await(h))
-- The same inside a coroutine of the script's: it has the script's hook too.
h = start(3)
local co = coroutine.wrap(function()
  t0 = sys.monotonic_ms()
  while goroutine.task_stats().running > 0 and sys.monotonic_ms() - t0 < 5000 do end
  return goroutine.task_stats().running, tostring(sys.monotonic_ms() - t0 < 5000)
end)
print("COBUSY", co())
goroutine.await(h)
h = start(2)
os.execute("sleep 1")
local r = goroutine.await_all({ h })[1]
print("WAITED", tostring(r.success), r.values[1], tostring(r.duration_ms < 800), r.duration_ms)
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("BUSY"), vec!["0", "true"], "{out}");
    assert_eq!(out.one("BUSYAWAIT"), vec!["true", "1"], "{out}");
    assert_eq!(out.one("COBUSY"), vec!["0", "true"], "{out}");
    assert_eq!(out.one("WAITED")[..3], ["true", "2", "true"], "{out}");
}

/// Long work in C that the instruction hook cannot see (decoding and encoding a big
/// JSON text, encoding a few huge strings, capturing a big table) hands the worker
/// over too: an agent's answer is taken meanwhile, not after it.
#[test]
fn big_json_and_captures_hold_back_no_answer() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local function start(v)
  return goroutine.async(function() return v end, { delegate_to = "web-01" })
end
goroutine.await(start(0)) -- connected
local parts = {}
for i = 1, 300000 do parts[i] = '{"a":' .. i .. ',"b":"xxxxxxxxxxxxxxxx"}' end
local text = "[" .. table.concat(parts, ",") .. "]"
parts = nil
local function timed(what, f)
  -- Resumed after the await, the script holds the worker again (a new turn).
  goroutine.await(start(0))
  local h = start(what)
  local t0 = sys.monotonic_ms()
  local v = f()
  local took = sys.monotonic_ms() - t0
  local r = goroutine.await_all({ h })[1]
  print(what, tostring(r.success), tostring(took > 100), tostring(r.duration_ms < took / 2),
    took, r.duration_ms)
  return v
end
local v = timed("DECODE", function() return json.decode(text) end)
timed("ENCODE", function() return json.encode(v) end)
local big = string.rep("x", 24 * 1024 * 1024)
timed("BIGSTRING", function() return json.encode({ big, big }) end)
local n = timed("CAPTURE", function()
  return goroutine.async(function() return #v end, { delegate_to = "web-01" })
end)
print("CAPTURED", select(2, goroutine.await(n)))
"#,
        &[],
    );
    out.assert_code(0);
    for what in ["DECODE", "ENCODE", "BIGSTRING", "CAPTURE"] {
        assert_eq!(
            out.one(what)[..3],
            ["true", "true", "true"][..],
            "{what}\n{out}"
        );
    }
    assert_eq!(out.one("CAPTURED"), vec!["300000"], "{out}");
}

/// `goroutine.await` yields to the runtime only from the script's own thread; inside a
/// coroutine of the script's, under `pcall`, or under a C function (a sort comparator,
/// a `gsub` callback) it still waits and returns. To the script its thread is still
/// the main one.
#[test]
fn await_works_wherever_the_script_calls_it() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local function one(x)
  return goroutine.await(goroutine.async(function() return x end, { delegate_to = "web-01" }))
end
print("PCALL", pcall(one, 1))
local co = coroutine.wrap(function()
  local _, v = one(2)
  coroutine.yield(v)
  return 3
end)
print("CO", co(), co())
local t = { 3, 1, 2 }
table.sort(t, function(a, b)
  local _, x = one(a)
  local _, y = one(b)
  return x < y
end)
print("SORT", table.concat(t, ","))
print("GSUB", (string.gsub("a b", "%a", function(c)
  local _, v = one(c .. c)
  return v
end)))
print("MAIN", tostring(coroutine.isyieldable()), tostring(select(2, coroutine.running())))
print("YIELD", pcall(coroutine.yield, 1))
-- A handle's own method waits the same way, on the script's thread and in a coroutine.
local h = goroutine.async(function() return "m" end, { delegate_to = "web-01" })
print("METHOD", h:await("5s"))
print("METHOD_CO", coroutine.wrap(function() return select(2, h:await()) end)())
local slow = goroutine.async(function() goroutine.sleep(2000) end, { delegate_to = "web-01" })
print("METHOD_TIMEOUT", slow:await("50ms"))
slow:cancel()
print("NOT_A_HANDLE", pcall(function() return goroutine.channel(1):await() end))
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("PCALL"), vec!["true", "true", "1"], "{out}");
    assert_eq!(out.one("CO"), vec!["2", "3"], "{out}");
    assert_eq!(out.one("SORT"), vec!["1,2,3"], "{out}");
    assert_eq!(out.one("GSUB"), vec!["aa bb"], "{out}");
    assert_eq!(out.one("MAIN"), vec!["false", "true"], "{out}");
    let y = out.one("YIELD");
    assert_eq!(y[0], "false", "{out}");
    assert!(
        y[1].contains("attempt to yield from outside a coroutine"),
        "{out}"
    );
    assert_eq!(out.one("METHOD"), vec!["true", "m"], "{out}");
    assert_eq!(out.one("METHOD_CO"), vec!["m"], "{out}");
    let t = out.one("METHOD_TIMEOUT");
    assert_eq!(t[0], "false", "{out}");
    assert!(t[1..].join(" ").contains("timeout"), "{out}");
    let n = out.one("NOT_A_HANDLE");
    assert_eq!(n[0], "false", "{out}");
    assert!(n[1..].join(" ").contains("has no method 'await'"), "{out}");
}

/// An argument of the wrong type names the function it was given to, in the script and
/// in tasks.
#[test]
fn a_bad_argument_names_its_function() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
print("ASYNC", select(2, pcall(goroutine.async, 42)))
print("READ", select(2, pcall(fs.read, {})))
print("REMOTE", select(2, goroutine.await(goroutine.async(function()
  return select(2, pcall(fs.read, {}))
end, { delegate_to = "web-01" }))))
"#,
        &[],
    );
    out.assert_code(0);
    assert!(
        out.line("ASYNC")
            .starts_with("bad argument #1 to 'goroutine.async': "),
        "{out}"
    );
    assert!(
        out.line("READ")
            .starts_with("bad argument #1 to 'fs.read': "),
        "{out}"
    );
    assert!(
        out.line("REMOTE")
            .starts_with("bad argument #1 to 'fs.read': "),
        "{out}"
    );
}
