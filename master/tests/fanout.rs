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
    // The master waited until every close frame was sent: all 500 agents saw it
    // close (not their 3 s idle timeout). Without the wait, most of 200 did not.
    all_saw_the_master_close(&fleet, &names);

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

/// Every agent of `names` has logged the end of exactly one connection, closed by the
/// master ("master done"), within 2 s: well before the 3 s idle timeout that would end
/// a connection whose close frame was lost.
fn all_saw_the_master_close(fleet: &TestFleet, names: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for name in names {
        let ends = loop {
            let log = fleet.agent_log(name);
            let ends: Vec<String> = log
                .lines()
                .filter(|l| l.contains("master connection ended"))
                .map(str::to_string)
                .collect();
            if !ends.is_empty() || std::time::Instant::now() > deadline {
                break ends;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(ends.len(), 1, "{name}: {ends:?}");
        assert!(
            ends[0].contains("closed by peer: master done"),
            "{name}: {}",
            ends[0]
        );
    }
}

/// The `mtu_probes` and `mtu` of every "master connection ended" line in an agent's
/// log, waiting (up to 10 s) until there are `lines` of them.
fn connection_ends(fleet: &TestFleet, name: &str, lines: usize) -> Vec<(u64, u64)> {
    let field = |line: &str, key: &str| -> u64 {
        let at = line
            .find(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key} in: {line}"));
        line[at + key.len() + 2..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = fleet.agent_log(name);
        let ends: Vec<(u64, u64)> = log
            .lines()
            .filter(|l| l.contains("master connection ended"))
            .map(|l| (field(l, "mtu_probes"), field(l, "mtu")))
            .collect();
        if ends.len() >= lines || std::time::Instant::now() > deadline {
            assert_eq!(ends.len(), lines, "{name}'s log:\n{log}");
            return ends;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `exec` and `health` send only small frames: neither the master nor the agents
/// probe the path MTU on their connections (about half of a fresh connection's
/// datagrams otherwise). A run keeps probing, for its artifacts. Only `health` has the
/// facts sent in the Welcome, and a run's `fleet.info` still gets them.
#[test]
fn exec_and_health_do_not_probe_the_mtu_but_a_run_does() {
    let mut fleet = TestFleet::empty();
    fleet.add_agents(&["mtu-01".to_string(), "mtu-02".to_string()], "m");
    let inv = fleet.inventory();
    let inv = inv.to_str().unwrap();
    let certs = fleet.certs.to_str().unwrap();

    let out = sloth_master(
        fleet.path(),
        &["exec", "m", "-i", inv, "--certs", certs, "--", "true"],
    );
    out.assert_code(0);
    for name in ["mtu-01", "mtu-02"] {
        assert_eq!(connection_ends(&fleet, name, 1), vec![(0, 1200)], "{name}");
    }

    let out = sloth_master(
        fleet.path(),
        &["health", "m", "-i", inv, "--certs", certs, "--json"],
    );
    out.assert_code(0);
    let doc: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let text = doc.to_string();
    assert_eq!(
        text.matches("\"cpus\":").count(),
        2,
        "facts of both: {text}"
    );
    for name in ["mtu-01", "mtu-02"] {
        assert_eq!(connection_ends(&fleet, name, 2)[1], (0, 1200), "{name}");
    }

    let out = fleet.run(
        r#"
for _, h in ipairs(fleet.hosts("m")) do
  assert(goroutine.await(goroutine.async(function() return 1 end, { delegate_to = h })))
  local i = fleet.info(h)
  print("FACTS", h, i.connected, i.facts.cpus > 0)
end
goroutine.sleep(300)
"#,
        &[],
    );
    assert_eq!(
        out.all("FACTS"),
        vec![
            vec!["mtu-01", "true", "true"],
            vec!["mtu-02", "true", "true"]
        ],
        "{out}"
    );
    for name in ["mtu-01", "mtu-02"] {
        let (probes, mtu) = connection_ends(&fleet, name, 3)[2];
        assert!(
            probes > 0 && mtu > 1200,
            "{name}: {probes} probes, mtu {mtu}"
        );
    }
}
