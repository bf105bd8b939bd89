//! What the master accepts from agents.

mod common;

use common::*;

/// No task returns code: a task (remote or local, same rule) that returns a function
/// fails with kind `capture`, and the message names the value.
#[test]
fn functions_do_not_come_back_from_tasks() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local r = goroutine.await_all({ goroutine.async(function()
  return function() return "ran in master" end
end, { delegate_to = "web-01" }) })[1]
print("REMOTE", tostring(r.success), r.kind, r.error:match("return value #1 %(function%)") and "refused" or r.error)
local l = goroutine.await_all({ goroutine.async(function() return function() return 41 + 1 end end) })[1]
print("LOCAL", tostring(l.success), l.kind, l.error:match("return value #1 %(function%)") and "refused" or l.error)
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
    assert_eq!(
        out.one("LOCAL"),
        vec!["false", "capture", "refused"],
        "{out}"
    );
    assert_eq!(out.one("DATA"), vec!["true", "1", "x", "2"], "{out}");
}
