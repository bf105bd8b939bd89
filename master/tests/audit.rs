//! The agent's audit log, against real agents: every task it runs is on record with the
//! certificate of the master that sent it, before that master hears the result; an
//! agent that cannot write its log refuses tasks, and one that cannot open it does not
//! start.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use sloth_transport as tls;

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn identity(cert: &Path) -> tls::CertInfo {
    let pem = std::fs::read_to_string(cert).unwrap();
    tls::CertInfo::of(&tls::parse_certs(&pem).unwrap()[0]).unwrap()
}

/// Each task leaves a start and an end line naming the master's certificate (name,
/// serial, fingerprint), the task, the line of the script it was written on, how it
/// ended and how many changes it made; the end line is on disk when `await` returns.
#[test]
fn tasks_are_recorded_with_the_master_that_sent_them() {
    let fleet = TestFleet::web(1);
    let target = fleet.path().join("motd");
    let out = fleet.run_named(
        "audit.sloth",
        &format!(
            r#"
local ok = goroutine.await(goroutine.async(function()
  return file.content({{ path = "{target}", content = "hi\n" }}).changed
end, {{ delegate_to = "web-01", name = "write-motd" }}))
local f = io.open("{log}")
local text = f:read("a")
f:close()
print("SEEN", select(2, text:gsub('"event":"task_end"', "")))
local bad = goroutine.await_all({{ goroutine.async(function() error("boom") end,
  {{ delegate_to = "web-01", name = "fails" }}) }})[1]
print("BAD", tostring(bad.success))
"#,
            target = target.display(),
            log = fleet.agents[0].audit_log().display(),
        ),
        &[],
    );
    out.assert_code(1);
    assert_eq!(
        out.one("SEEN"),
        vec!["1"],
        "the end line comes before the result\n{out}"
    );
    let master = identity(&fleet.certs.join("master.crt"));
    let l = lines(&fleet.agents[0].audit_log());
    let events: Vec<&str> = l.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "connect",
            "task_start",
            "task_end",
            "task_start",
            "task_end"
        ],
        "{l:#?}"
    );
    for e in &l {
        assert_eq!(e["agent"], "web-01");
        assert_eq!(e["master"]["name"], "master");
        assert_eq!(e["master"]["role"], "master");
        assert_eq!(e["master"]["serial"], master.serial.as_str());
        assert_eq!(e["master"]["fingerprint"], master.fingerprint.as_str());
        assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(sloth_proto::text::parse_rfc3339(e["time"].as_str().unwrap()).is_some());
    }
    assert_eq!(l[1]["task"], "write-motd");
    assert_eq!(l[1]["origin"], "audit.sloth:2", "where the function starts");
    assert_eq!(l[1]["mode"], "apply");
    assert_eq!(l[2]["outcome"], "ok");
    assert_eq!(l[2]["changes"], 1);
    assert!(l[2]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(l[3]["task"], "fails");
    assert_eq!(l[4]["outcome"], "error");
    assert_eq!(l[4]["error_kind"], "lua");
    assert!(l[4]["error"].as_str().unwrap().contains("boom"), "{}", l[4]);
    // Check mode is on record as such.
    let out = fleet.run(
        "goroutine.await(goroutine.async(function() end, { delegate_to = 'web-01' }))",
        &["--check"],
    );
    out.assert_code(0);
    let l = lines(&fleet.agents[0].audit_log());
    assert_eq!(l[l.len() - 2]["mode"], "check", "{l:#?}");
}

/// The attacker holds a valid master certificate that is not the operator's (stolen,
/// or minted by whoever got the CA key). Its tasks run — the certificate is valid — but
/// the agent's record names that certificate, not the operator's, by serial and
/// fingerprint: what revoking it needs.
#[test]
fn a_second_master_certificate_is_told_apart() {
    let fleet = TestFleet::web(1);
    let other = fleet.path().join("intruder-certs");
    std::fs::create_dir_all(&other).unwrap();
    let ca = tls::read_pem_files(&fleet.certs.join("ca.crt"), &fleet.certs.join("ca.key")).unwrap();
    tls::write_pem_files(
        &other,
        "master",
        &tls::issue_master(&ca, "intruder", tls::Lifetime::MASTER).unwrap(),
    )
    .unwrap();
    std::fs::copy(fleet.certs.join("ca.crt"), other.join("ca.crt")).unwrap();
    let out = fleet.run(
        "goroutine.await(goroutine.async(function() return 1 end, { delegate_to = 'web-01', name = 'probe' }))",
        &["--certs", other.to_str().unwrap()],
    );
    out.assert_code(0);
    let theirs = identity(&other.join("master.crt"));
    let ours = identity(&fleet.certs.join("master.crt"));
    assert_ne!(theirs.serial, ours.serial);
    let l = lines(&fleet.agents[0].audit_log());
    let start = l.iter().find(|e| e["event"] == "task_start").unwrap();
    assert_eq!(start["task"], "probe");
    assert_eq!(start["master"]["name"], "intruder");
    assert_eq!(start["master"]["serial"], theirs.serial.as_str());
    assert_eq!(start["master"]["fingerprint"], theirs.fingerprint.as_str());
}

/// A full disk (`/dev/full` takes the open, fails every write): no task runs unrecorded.
/// Each is refused, naming the agent and the cause, and the run carries on.
#[test]
fn an_agent_that_cannot_write_its_log_refuses_tasks() {
    let mut fleet = TestFleet::web(1);
    fleet.add_agent_with("db-01", &["db"], &["--audit-log", "/dev/full"]);
    let marker = fleet.path().join("ran");
    let out = fleet.run(
        &format!(
            r#"
local r = goroutine.await_all({{ goroutine.async(function()
  io.open("{marker}", "w"):close()
end, {{ delegate_to = "db-01" }}) }})[1]
print("DB", tostring(r.success), r.kind, r.error)
print("WEB", tostring(goroutine.await(goroutine.async(function() return true end, {{ delegate_to = "web-01" }}))))
"#,
            marker = marker.display()
        ),
        &[],
    );
    let db = out.one("DB");
    assert_eq!(db[..2], ["false", "refused"], "{out}");
    let db = &db[2];
    assert!(
        db.contains("agent db-01 refuses the task: cannot write the audit log /dev/full"),
        "{out}"
    );
    assert!(db.contains("No space left on device"), "{out}");
    assert_eq!(out.one("WEB"), vec!["true"], "{out}");
    assert!(!marker.exists(), "the refused task must not have run");
}

/// An audit log that cannot be opened stops the agent at start, with the path and the
/// cause.
#[test]
fn an_unopenable_log_stops_the_agent_at_start() {
    let fleet = TestFleet::empty();
    certs_issue(&fleet.certs, "web-01");
    let blocker = fleet.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let agent = |audit: &str| {
        Command::new(agent_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                "web-01",
                "--audit-log",
                audit,
            ])
            .arg("--cert")
            .arg(fleet.certs.join("web-01.crt"))
            .arg("--key")
            .arg(fleet.certs.join("web-01.key"))
            .arg("--ca")
            .arg(fleet.certs.join("ca.crt"))
            .output()
            .unwrap()
    };
    let bad = blocker.join("audit.log");
    let out = agent(bad.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("opening the audit log {}", bad.display())),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no readiness line: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
