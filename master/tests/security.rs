//! What the master accepts from agents.

mod common;

use common::*;

/// The master never loads bytecode an agent produced: a remote task that returns a
/// function fails with kind `capture` (a local one may return it).
#[test]
fn functions_do_not_come_back_from_agents() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local r = goroutine.await_all({ goroutine.async(function()
  return function() return "ran in master" end
end, { delegate_to = "web-01" }) })[1]
print("REMOTE", tostring(r.success), r.kind, r.error:match("functions cannot be sent from an agent") and "refused" or r.error)
local ok, f = goroutine.await(goroutine.async(function() return function() return 41 + 1 end end))
print("LOCAL", tostring(ok), f())
local ok2, t = goroutine.await(goroutine.async(function() return { n = 1, s = "x", l = { 1, 2 } } end, { delegate_to = "web-01" }))
print("DATA", tostring(ok2), t.n, t.s, #t.l)
"#,
        &[],
    );
    assert_eq!(
        out.one("REMOTE"),
        vec!["false", "capture", "refused"],
        "{out}"
    );
    assert_eq!(out.one("LOCAL"), vec!["true", "42"], "{out}");
    assert_eq!(out.one("DATA"), vec!["true", "1", "x", "2"], "{out}");
}
