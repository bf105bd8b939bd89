//! Fan-out to hundreds of real agents with the default connect timeout: `exec`,
//! `health` and `run` reach every one, and a host that is really down is still
//! reported, within its connect timeout. Asserts "no host lost", never a time.

mod common;

use std::time::Duration;

use common::*;

const AGENTS: usize = 500;

#[test]
fn five_hundred_agents_none_lost() {
    let mut fleet = TestFleet::empty();
    let names: Vec<String> = (1..=AGENTS).map(|i| format!("fan-{i:03}")).collect();
    fleet.add_agents(&names, "fan");
    fleet.add_host(
        "fan-dead",
        &format!("127.0.0.1:{}", dead_udp_port()),
        &["gone"],
    );
    let inv = fleet.inventory();
    let inv = inv.to_str().unwrap();
    let certs = fleet.certs.to_str().unwrap();

    // exec: every agent runs the command (cold: the first dial of this process).
    let out = sloth_master(
        fleet.path(),
        &["exec", "fan", "-i", inv, "--certs", certs, "--", "true"],
    );
    let ok = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("fan-") && l.ends_with("exit 0"))
        .count();
    assert_eq!(ok, AGENTS, "exec reached {ok} of {AGENTS} agents\n{out}");
    out.assert_code(0);

    // health: every agent is up, and the dead host is down, both in one table.
    let out = sloth_master(
        fleet.path(),
        &["health", "all", "-i", inv, "--certs", certs, "--json"],
    );
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let text = doc.to_string();
    let up = text.matches("\"up\":true").count();
    assert_eq!(
        up,
        AGENTS,
        "health saw {up} of {AGENTS} agents up\n{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.contains("fan-dead"), "{text}");
    assert_eq!(out.code, 1, "one host is down: exit 1\n{out}");
    assert!(
        out.elapsed < Duration::from_secs(30),
        "health took {:?}",
        out.elapsed
    );

    // run: a task on every host, all answered.
    let out = fleet.run(
        r#"
local hs = {}
for _, h in ipairs(fleet.hosts("fan")) do
  hs[#hs + 1] = goroutine.async(function() return host.name end, { delegate_to = h })
end
local ok = 0
for _, r in ipairs(goroutine.await_all(hs)) do
  if r.success and r.values[1] == r.host then ok = ok + 1 end
end
print("RUN", ok)
local dead = goroutine.await_all({ goroutine.async(function() end, { delegate_to = "fan-dead" }) })[1]
print("DEAD", dead.kind, dead.duration_ms < 10000)
"#,
        &[],
    );
    assert_eq!(out.one("RUN"), vec![AGENTS.to_string()], "{out}");
    assert_eq!(out.one("DEAD"), vec!["unreachable", "true"], "{out}");
}
