//! Every shared-object function used from inside a task, once locally and once on a
//! real agent: the two runs must print the same lines.

mod common;

use common::*;

#[test]
fn shared_objects_behave_the_same_locally_and_remotely() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
for _, target in ipairs({ "local", "web-01" }) do
  local opts = target ~= "local" and { delegate_to = target } or nil
  local ch, sem, m = goroutine.channel(2), goroutine.semaphore(2), goroutine.mutex()
  local n, once, wg = goroutine.atomic_int(5), goroutine.once(), goroutine.wait_group()
  local ok, r = goroutine.await(goroutine.async(function()
    local t = {}
    -- channel: send/try_send/len/cap/receive/try_receive/close/is_closed/range
    ch:send("a"); t[#t + 1] = tostring(ch:try_send("b")); t[#t + 1] = tostring(ch:try_send("c"))
    t[#t + 1] = ch:len() .. "/" .. ch:cap()
    local v, got = ch:receive(); t[#t + 1] = v .. tostring(got)
    local v2, got2 = ch:try_receive(); t[#t + 1] = v2 .. tostring(got2)
    t[#t + 1] = tostring(select(2, ch:try_receive()))
    -- select: default, ready receive, timeout
    t[#t + 1] = tostring(goroutine.select({ { channel = ch, receive = true }, { default = true } }))
    ch:send("s")
    local idx, sv = goroutine.select({ { channel = ch, receive = true } }, 1000)
    t[#t + 1] = idx .. sv
    t[#t + 1] = tostring(goroutine.select({ { channel = ch, receive = true } }, 30))
    ch:send("r1"); ch:close()
    local seen = {}
    ch:range(function(x) seen[#seen + 1] = x end)
    t[#t + 1] = table.concat(seen, ",") .. tostring(ch:is_closed())
    t[#t + 1] = tostring(pcall(ch.send, ch, 1))
    -- semaphore
    t[#t + 1] = tostring(sem:acquire()) .. tostring(sem:try_acquire()) .. tostring(sem:try_acquire()) .. sem:available()
    sem:release(); sem:release()
    t[#t + 1] = tostring(sem:available()) .. tostring(pcall(sem.release, sem))
    -- mutex
    t[#t + 1] = tostring(m:lock()) .. tostring(m:is_locked()) .. tostring(m:try_lock())
    m:unlock()
    t[#t + 1] = tostring(m:is_locked()) .. tostring(pcall(m.unlock, m))
    -- atomic
    t[#t + 1] = table.concat({ n:get(), n:add(3), n:sub(1), n:incr(), n:decr(), n:swap(10), tostring(n:compare_and_swap(10, 11)), tostring(n:compare_and_swap(10, 12)), n:get() }, ",")
    n:set(0)
    -- once
    local runs = 0
    once:run(function() runs = runs + 1 end); once:run(function() runs = runs + 1 end)
    t[#t + 1] = runs .. tostring(once:done())
    -- wait group
    wg:add(2); wg:done(); t[#t + 1] = wg:count() .. tostring(wg:wait(20)); wg:done()
    t[#t + 1] = tostring(wg:wait(1000)) .. tostring(pcall(wg.done, wg))
    -- sleep
    goroutine.sleep("10ms")
    return table.concat(t, " ")
  end, opts))
  print("BOTH", target, tostring(ok), r)
  print("AFTER", target, n:get(), tostring(m:is_locked()), sem:available())
end
"#,
        &[],
    );
    out.assert_code(0);
    let rows = out.all("BOTH");
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..2], ["local", "true"], "{out}");
    assert_eq!(rows[1][..2], ["web-01", "true"], "{out}");
    assert_eq!(rows[0][2..], rows[1][2..], "local and remote differ\n{out}");
    // The task returns one item per check, joined by spaces: each is compared at its
    // place, so a wrong value cannot hide behind the same word elsewhere in the line.
    let expected = [
        ("ch:try_send into a free slot", "true"),
        ("ch:try_send into a full channel", "false"),
        ("ch:len() / ch:cap()", "2/2"),
        ("ch:receive() of a buffered value", "atrue"),
        ("ch:try_receive() of a buffered value", "btrue"),
        ("ch:try_receive() on an empty channel: ok", "false"),
        ("select with nothing ready takes the default case (2)", "2"),
        ("select with a ready receive: index and value", "1s"),
        ("select that times out: no index", "nil"),
        ("ch:range() then ch:is_closed()", "r1true"),
        ("pcall(ch:send) on a closed channel", "false"),
        (
            "sem:acquire, try_acquire, try_acquire over the limit, available",
            "truetruefalse0",
        ),
        (
            "sem:available() after release, pcall(over-release)",
            "2false",
        ),
        ("m:lock, is_locked, try_lock while held", "truetruefalse"),
        (
            "m:is_locked() after unlock, pcall(unlock unlocked)",
            "falsefalse",
        ),
        (
            "atomic get, add, sub, incr, decr, swap, cas ok, cas stale, get",
            "5,8,7,8,7,7,true,false,11",
        ),
        ("once:run twice: runs, once:done()", "1true"),
        ("wg:count() at 1, wg:wait(20) times out", "1false"),
        ("wg:wait() at 0, pcall(wg:done below 0)", "truefalse"),
    ];
    let got: Vec<&str> = rows[0][2].split(' ').collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "one item per check expected in {:?}\n{out}",
        rows[0][2]
    );
    for ((what, want), got) in expected.iter().zip(&got) {
        assert_eq!(got, want, "{what}\n{out}");
    }
    assert_eq!(
        out.all("AFTER"),
        vec![
            vec!["local", "0", "false", "2"],
            vec!["web-01", "0", "false", "2"],
        ],
        "{out}"
    );
}
