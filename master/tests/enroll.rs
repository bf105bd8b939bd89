//! Trust from zero, against real agents over real QUIC: join tokens (an agent makes its
//! own key, enrolls once, for its own name, with the master of the CA its token pins),
//! renewal before expiry, expired certificates refused on each side, revocation (a
//! revoked master refused once the agent has the CRL; an older CRL never undoes it; a
//! revoked agent refused by the master).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use sloth_launcher::{AgentCommand, RunningAgent};
use sloth_transport::{self as tls, CertInfo, Lifetime};

/// An agent started with a join token (or a certificate), its files under `dir`.
struct TokenAgent {
    process: RunningAgent,
    dir: PathBuf,
}

impl TokenAgent {
    fn start(fleet: &TestFleet, name: &str, token: Option<&str>) -> TokenAgent {
        let extra: Vec<std::ffi::OsString> = match token {
            Some(t) => vec!["--token".into(), t.into()],
            None => Vec::new(),
        };
        TokenAgent::start_with(fleet, name, extra)
    }

    /// Start with `extra` arguments after the files' (`--token-file F`).
    fn start_with(fleet: &TestFleet, name: &str, extra: Vec<std::ffi::OsString>) -> TokenAgent {
        let dir = fleet.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cert".into(),
            dir.join("agent.crt").into(),
            "--key".into(),
            dir.join("agent.key").into(),
            "--ca".into(),
            dir.join("ca.crt").into(),
            "--audit-log".into(),
            dir.join("audit.log").into(),
        ];
        args.extend(extra);
        let process = AgentCommand::new(&agent_bin(), name, "127.0.0.1:0")
            .args(args)
            .env("SLOTH_LOG", "info")
            .stderr_to(&dir.join("agent.log"))
            .spawn()
            .unwrap()
            .wait_ready(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        TokenAgent { process, dir }
    }

    /// Start with a certificate the CA issued here (`certs issue` semantics).
    fn with_cert(fleet: &TestFleet, name: &str, lifetime: Lifetime) -> TokenAgent {
        let dir = fleet.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = sloth_master::pki::Pki::new(&fleet.certs);
        let pem = pki.issue_agent(name, &[], lifetime).unwrap();
        std::fs::write(dir.join("agent.crt"), &pem.cert).unwrap();
        tls::write_file_atomic(&dir.join("agent.key"), pem.key.as_bytes(), 0o600).unwrap();
        std::fs::copy(fleet.certs.join("ca.crt"), dir.join("ca.crt")).unwrap();
        TokenAgent::start(fleet, name, None)
    }

    fn addr(&self) -> String {
        self.process.addr().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn cert(&self) -> CertInfo {
        CertInfo::of_pem(&std::fs::read_to_string(self.dir.join("agent.crt")).unwrap()).unwrap()
    }
}

/// `sloth-master ARGS` with the fleet's certificates (and inventory, for commands that
/// reach hosts) unless ARGS name others.
fn master(fleet: &TestFleet, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let certs = fleet.certs.to_str().unwrap().to_string();
    let inv = fleet.inventory().to_str().unwrap().to_string();
    let reaches_hosts = matches!(args[0], "enroll" | "health");
    if reaches_hosts && !args.contains(&"--certs") {
        all.extend(["--certs", &certs]);
    }
    if reaches_hosts && !args.contains(&"-i") {
        all.extend(["-i", &inv]);
    }
    if !reaches_hosts && !args.contains(&"--dir") {
        all.extend(["--dir", &certs]);
    }
    let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sloth_master(fleet.path(), &refs)
}

fn token(fleet: &TestFleet, names: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", names];
    args.extend(extra);
    let out = master(fleet, &args);
    out.assert_code(0);
    out.stdout.trim().to_string()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A token file other users can read is named in a warning (they could enroll a
/// machine under the agent's name first); the agent still enrolls with it, then deletes
/// it.
#[test]
fn a_token_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let mut fleet = TestFleet::empty();
    let t = token(&fleet, "web-02", &["--ttl", "10m"]);
    let dir = fleet.path().join("agent-web-02");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, &t).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = TokenAgent::start_with(
        &fleet,
        "web-02",
        vec!["--token-file".into(), file.clone().into()],
    );
    let said = a.log();
    assert!(
        said.contains("can be read by other users (mode 0644)") && said.contains("chmod 600"),
        "{said}"
    );
    fleet.add_host("web-02", &a.addr(), &["web"]);
    master(&fleet, &["enroll", "web-02"]).assert_code(0);
    wait_until(
        "the spent token file to go",
        Duration::from_secs(10),
        || !file.exists(),
    );
}

/// The agent makes its key, the master never sees it; the enrolled agent serves tasks;
/// a second enrollment of a serving agent is told it is already enrolled.
#[test]
fn an_agent_enrolls_with_a_token_and_keeps_its_key() {
    let mut fleet = TestFleet::empty();
    let t = token(&fleet, "web-01", &["--ttl", "10m"]);
    let a = TokenAgent::start(&fleet, "web-01", Some(&t));
    assert!(!a.dir.join("agent.key").exists());
    fleet.add_host("web-01", &a.addr(), &["web"]);
    // Before enrollment, a run says what to do.
    let out = fleet.run(
        "goroutine.await(goroutine.async(function() end, { delegate_to = 'web-01' }))",
        &[],
    );
    assert!(
        out.stdout
            .contains("waiting to be enrolled? `sloth-master enroll HOST`"),
        "{out}"
    );

    let out = master(&fleet, &["enroll", "web-01"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("web-01       enrolled (serial"),
        "{out}"
    );
    // The agent's audit log names the master that enrolled it, and the token.
    let audit = std::fs::read_to_string(a.dir.join("audit.log")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("\"event\":\"enrolled\""))
        .unwrap_or_else(|| panic!("no enrolled line: {audit}"));
    let token_id = tls::JoinToken::parse(&t).unwrap().id;
    assert!(
        line.contains("\"role\":\"master\"") && line.contains(&format!("token {token_id}")),
        "{line} (token {t})"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !fleet.certs.join("web-01.key").exists(),
        "the key stayed on the agent"
    );
    let info = a.cert();
    assert_eq!(info.name.as_deref(), Some("web-01"));
    let days = info.remaining(std::time::SystemTime::now()).as_secs() / 86400;
    assert!((29..=30).contains(&days), "30 days by default: {days}");
    // The CA certificate came with it, checked against the token's pin.
    assert_eq!(
        std::fs::read_to_string(a.dir.join("ca.crt")).unwrap(),
        std::fs::read_to_string(fleet.certs.join("ca.crt")).unwrap()
    );

    let out = fleet.run(
        "print('R', goroutine.await(goroutine.async(function() return host.name end, { delegate_to = 'web-01' })))",
        &[],
    );
    assert_eq!(out.one("R"), vec!["true", "web-01"], "{out}");
    let out = master(&fleet, &["health"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("29d") || out.stdout.contains("30d"),
        "{out}"
    );

    let out = master(&fleet, &["enroll", "web-01"]);
    out.assert_code(1);
    assert!(out.stdout.contains("not waiting to be enrolled"), "{out}");
    let out = master(&fleet, &["token", "list"]);
    assert!(
        out.stdout.contains("used") && out.stdout.contains("web-01"),
        "{out}"
    );
    let out = master(&fleet, &["certs", "list"]);
    assert!(out.stdout.contains("enroll"), "{out}");
}

/// Every way a token is refused ends with the reason on both sides, and the agent
/// goes on waiting: used (replayed), expired, bound to another name, an inventory name
/// other than the agent's, and a master of another CA than the token pins (which never
/// sees the token).
#[test]
fn bad_tokens_are_refused_on_both_sides() {
    let mut fleet = TestFleet::empty();
    let once = token(&fleet, "web-*", &[]);
    let first = TokenAgent::start(&fleet, "web-01", Some(&once));
    let replay = TokenAgent::start(&fleet, "web-02", Some(&once));
    let short = token(&fleet, "web-03", &["--ttl", "1s"]);
    let expired = TokenAgent::start(&fleet, "web-03", Some(&short));
    let for_web = token(&fleet, "web-04", &[]);
    let wrong_name = TokenAgent::start(&fleet, "db-01", Some(&for_web));
    let renamed_tok = token(&fleet, "web-05", &[]);
    let renamed = TokenAgent::start(&fleet, "web-09", Some(&renamed_tok));
    for (host, a) in [
        ("web-01", &first),
        ("web-02", &replay),
        ("web-03", &expired),
        ("db-01", &wrong_name),
        ("web-05", &renamed),
    ] {
        fleet.add_host(host, &a.addr(), &["all-of-them"]);
    }
    std::thread::sleep(Duration::from_millis(1200));
    let out = master(&fleet, &["enroll", "web-01"]);
    out.assert_code(0);
    let out = master(&fleet, &["enroll", "all-of-them"]);
    out.assert_code(1);
    let line = |h: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(h))
            .unwrap_or_else(|| panic!("{h}\n{out}"))
            .to_string()
    };
    assert!(
        line("web-01").contains("not waiting to be enrolled"),
        "{out}"
    );
    let cases = [
        (
            "web-02",
            &replay,
            "the join token was already used (last by web-01 at",
        ),
        ("web-03", &expired, "the join token expired at"),
        (
            "db-01",
            &wrong_name,
            "the join token is for 'web-04', not for 'db-01'",
        ),
        (
            "web-05",
            &renamed,
            "the agent asks to be 'web-09', but the inventory names it 'web-05'",
        ),
    ];
    for (host, agent, why) in cases {
        assert!(line(host).contains(why), "{host}: {why}\n{out}");
        wait_until("the agent's log", Duration::from_secs(5), || {
            agent.log().contains(why)
        });
        assert!(!agent.dir.join("agent.crt").exists());
        assert!(process_alive(agent.process.pid()), "{host} goes on waiting");
    }

    // A master of another fleet: the agent refuses before showing its token.
    let other = fleet.path().join("other-ca");
    sloth_master(
        fleet.path(),
        &["certs", "init", "--dir", other.to_str().unwrap()],
    )
    .assert_code(0);
    let t = token(&fleet, "web-06", &[]);
    let pinned = TokenAgent::start(&fleet, "web-06", Some(&t));
    fleet.add_host("web-06", &pinned.addr(), &[]);
    let out = master(
        &fleet,
        &["enroll", "web-06", "--certs", other.to_str().unwrap()],
    );
    out.assert_code(1);
    assert!(
        out.stdout.contains("the agent refused our master certificate: it is not signed by the CA the agent's join token pins"),
        "{out}"
    );
    wait_until("the agent's log", Duration::from_secs(5), || {
        let log = pinned.log();
        log.contains("refused an enrolling master: this master's CA")
            && log.contains("is not the one the join token pins")
    });
    let tokens = sloth_master::pki::Pki::new(&fleet.certs).tokens().unwrap();
    let rec = tokens.iter().find(|r| r.names == "web-06").unwrap();
    assert_eq!(
        rec.uses_left, 1,
        "the token was never shown to the other master"
    );
    // The right master then enrolls it.
    master(&fleet, &["enroll", "web-06"]).assert_code(0);
}

/// A peer that connects and then says nothing — the right fleet's master certificate,
/// but no stream — holds only its own connection: the real enrollment goes through
/// meanwhile.
#[test]
fn a_silent_peer_does_not_block_enrollment() {
    let mut fleet = TestFleet::empty();
    let t = token(&fleet, "web-01", &[]);
    let a = TokenAgent::start(&fleet, "web-01", Some(&t));
    fleet.add_host("web-01", &a.addr(), &["web"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _silent = rt.block_on(async {
        let own = tls::read_pem_files(
            &fleet.certs.join("master.crt"),
            &fleet.certs.join("master.key"),
        )
        .unwrap();
        let ca = std::fs::read_to_string(fleet.certs.join("ca.crt")).unwrap();
        let cfg = tls::enrollment_client_config(
            &own,
            &ca,
            tls::transport_config(Duration::from_secs(1), Duration::from_secs(30)),
        )
        .unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(cfg, a.process.addr(), "sloth-enrollment")
            .unwrap()
            .await
            .unwrap();
        (ep, conn)
    });
    let started = Instant::now();
    let out = master(&fleet, &["enroll", "web-01"]);
    out.assert_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// A certificate a third or less of whose lifetime is left is renewed when a master
/// with the CA key connects: the agent makes a new key, gets a certificate for it and
/// presents it from then on — and still serves after the old one's expiry.
#[test]
fn certificates_are_renewed_before_they_expire() {
    let mut fleet = TestFleet::empty();
    let a = TokenAgent::with_cert(&fleet, "web-01", Lifetime(Duration::from_secs(15)));
    fleet.add_host("web-01", &a.addr(), &["web"]);
    let first = a.cert();
    let issued = Instant::now();
    let task = "print('R', goroutine.await(goroutine.async(function() return 1 end, { delegate_to = 'web-01' })))";
    assert_eq!(fleet.run(task, &[]).one("R"), vec!["true", "1"]);
    assert_eq!(a.cert().serial, first.serial, "not due yet");
    // Due once less than a third of the lifetime (15 s + 3.75 s back-dated) is left.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(issued.elapsed()));
    assert_eq!(fleet.run(task, &[]).one("R"), vec!["true", "1"]);
    wait_until("the renewed certificate", Duration::from_secs(10), || {
        a.cert().serial != first.serial
    });
    let renewed = a.cert();
    assert!(renewed.not_after > first.not_after + Duration::from_secs(86400));
    assert!(
        first.expired(std::time::SystemTime::now())
            || first.remaining(std::time::SystemTime::now()) < Duration::from_secs(6)
    );
    // Past the old certificate's expiry, the agent still serves, with the new one.
    std::thread::sleep(Duration::from_secs(16).saturating_sub(issued.elapsed()));
    assert!(first.expired(std::time::SystemTime::now()));
    assert_eq!(fleet.run(task, &[]).one("R"), vec!["true", "1"]);
    let audit = std::fs::read_to_string(a.dir.join("audit.log")).unwrap();
    assert!(audit.contains("\"event\":\"cert_renewed\""), "{audit}");
    let out = master(&fleet, &["certs", "list"]);
    assert!(out.stdout.contains("renew"), "{out}");
}

/// An expired agent certificate is refused by the master, an expired master
/// certificate by the agent (and by the master itself before it dials); each message
/// says "expired" and names the certificate.
#[test]
fn expired_certificates_are_refused_on_each_side() {
    let mut fleet = TestFleet::empty();
    let a = TokenAgent::with_cert(&fleet, "web-01", Lifetime(Duration::from_secs(2)));
    fleet.add_host("web-01", &a.addr(), &["web"]);
    let b = TokenAgent::with_cert(&fleet, "web-02", Lifetime::AGENT);
    fleet.add_host("web-02", &b.addr(), &["web"]);
    // Validity is checked to the second: a second past `not_after`.
    std::thread::sleep(Duration::from_millis(3500));
    let out = master(&fleet, &["health"]);
    out.assert_code(1);
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains("web-01"))
        .unwrap()
        .to_string();
    assert!(
        row.contains("the agent's certificate for web-01 expired on"),
        "{out}"
    );

    // A master certificate that expired: the master says so before dialing...
    let old = fleet.path().join("old-master");
    std::fs::create_dir_all(&old).unwrap();
    let ca = tls::read_pem_files(&fleet.certs.join("ca.crt"), &fleet.certs.join("ca.key")).unwrap();
    let pem = tls::issue_master(&ca, "old-ops", Lifetime(Duration::from_secs(1))).unwrap();
    tls::write_pem_files(&old, "master", &pem).unwrap();
    std::fs::copy(fleet.certs.join("ca.crt"), old.join("ca.crt")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let out = master(&fleet, &["health", "--certs", old.to_str().unwrap()]);
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!(
            "the master certificate {} expired on",
            old.join("master.crt").display()
        )),
        "{out}"
    );
    // ...and the agent refuses it when it is shown anyway.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let ep = master_endpoint(&old);
        let Ok(connecting) = ep.connect(b.process.addr(), "web-02") else {
            return true;
        };
        match connecting.await {
            // TLS 1.3: the client finishes its side before the server judges its
            // certificate; the agent's verdict closes the connection.
            Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
                .await
                .is_ok(),
            Err(_) => true,
        }
    });
    assert!(refused, "the agent served an expired master certificate");
    let serial = CertInfo::of_pem(&pem.cert).unwrap().serial;
    wait_until("the agent's log", Duration::from_secs(5), || {
        let log = b.log();
        log.contains(&format!(
            "refused the master certificate old-ops (serial {serial})"
        )) && log.contains("expired")
    });
}

/// A second master certificate of the fleet, in a directory of its own (`ops2/`), made
/// outside the ledger as another operator's tool could: the directory and its serial.
fn second_master(fleet: &TestFleet) -> (std::path::PathBuf, String) {
    let ca = sloth_master::pki::Pki::new(&fleet.certs).ca().unwrap();
    let ops2 = fleet.path().join("ops2");
    std::fs::create_dir_all(&ops2).unwrap();
    let pem = tls::issue_master(&ca, "ops2", Lifetime::MASTER).unwrap();
    tls::write_pem_files(&ops2, "master", &pem).unwrap();
    std::fs::copy(fleet.certs.join("ca.crt"), ops2.join("ca.crt")).unwrap();
    (ops2, CertInfo::of_pem(&pem.cert).unwrap().serial)
}

/// A revoked master is refused by an agent once any master handed it the CRL; an older
/// CRL handed over later does not undo the revocation; a revoked agent is refused by
/// the master.
#[test]
fn revocation_reaches_agents_and_is_never_undone() {
    let mut fleet = TestFleet::empty();
    let a = TokenAgent::with_cert(&fleet, "web-01", Lifetime::AGENT);
    fleet.add_host("web-01", &a.addr(), &["web"]);
    let pki = sloth_master::pki::Pki::new(&fleet.certs);
    let ca = pki.ca().unwrap();
    let (ops2, ops2_serial) = second_master(&fleet);
    let as_ops2 = |fleet: &TestFleet| master(fleet, &["health", "--certs", ops2.to_str().unwrap()]);
    as_ops2(&fleet).assert_code(0);

    // CRL #1 revokes something else; keep it as the "older" one.
    pki.issue_agent("spare-01", &[], Lifetime::AGENT).unwrap();
    master(&fleet, &["certs", "revoke", "spare-01"]).assert_code(0);
    let older = std::fs::read(fleet.certs.join("crl.der")).unwrap();
    // CRL #2 revokes ops2.
    let out = master(&fleet, &["certs", "revoke", "--serial", &ops2_serial]);
    out.assert_code(0);
    assert!(out.stdout.contains("CRL #2"), "{out}");
    // Not yet on the agent: ops2 is still served.
    as_ops2(&fleet).assert_code(0);
    // Our master hands the agent CRL #2 on connecting.
    master(&fleet, &["health"]).assert_code(0);
    wait_until("the agent's CRL", Duration::from_secs(5), || {
        a.dir.join("crl.der").exists()
    });
    let out = as_ops2(&fleet);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("the agent refused our master certificate: it has been revoked"),
        "{out}"
    );
    assert!(a.log().contains(&format!(
        "refused the master certificate ops2 (serial {ops2_serial})"
    )));

    // An older CRL (#1, properly signed) handed over later changes nothing.
    std::fs::write(fleet.certs.join("crl.der"), &older).unwrap();
    master(&fleet, &["health"]).assert_code(0);
    wait_until("the agent's log", Duration::from_secs(5), || {
        a.log()
            .contains("a master handed us CRL #1, older than ours (#2): kept ours")
    });
    as_ops2(&fleet).assert_code(1);
    let on_disk =
        tls::Crl::verified(&std::fs::read(a.dir.join("crl.der")).unwrap(), &ca.cert).unwrap();
    assert_eq!(on_disk.number, 2);
    // The agent keeps refusing after a restart (it kept the CRL).
    // A revoked agent is refused by the master.
    master(&fleet, &["certs", "revoke", "web-01"]).assert_code(0);
    let out = master(&fleet, &["health"]);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("the agent's certificate for web-01 has been revoked"),
        "{out}"
    );
}

/// Revocation fails closed: an agent that cannot keep the CRL on disk (its file is not
/// writable) still applies it, and refuses the revoked master until it restarts.
#[test]
fn a_crl_the_agent_cannot_write_still_applies() {
    let mut fleet = TestFleet::empty();
    let a = TokenAgent::with_cert(&fleet, "web-01", Lifetime::AGENT);
    fleet.add_host("web-01", &a.addr(), &["web"]);
    let (ops2, ops2_serial) = second_master(&fleet);
    let as_ops2 = |fleet: &TestFleet| master(fleet, &["health", "--certs", ops2.to_str().unwrap()]);
    as_ops2(&fleet).assert_code(0);
    // Nothing can be renamed over a directory: the CRL cannot be written, even as root.
    std::fs::create_dir(a.dir.join("crl.der")).unwrap();
    master(&fleet, &["certs", "revoke", "--serial", &ops2_serial]).assert_code(0);
    master(&fleet, &["health"]).assert_code(0);
    wait_until("the agent's warning", Duration::from_secs(5), || {
        a.log()
            .contains("the fleet's new CRL cannot be kept on disk")
    });
    let out = as_ops2(&fleet);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("the agent refused our master certificate: it has been revoked"),
        "{out}"
    );
}

/// An agent whose own certificate its CRL revokes does not start as if nothing
/// happened: it says so (or, given a join token, enrolls again).
#[test]
fn an_agent_revoked_by_its_own_crl_does_not_serve() {
    let fleet = TestFleet::empty();
    let dir = fleet.path().join("agent-web-01");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = sloth_master::pki::Pki::new(&fleet.certs);
    let pem = pki.issue_agent("web-01", &[], Lifetime::AGENT).unwrap();
    std::fs::write(dir.join("agent.crt"), &pem.cert).unwrap();
    tls::write_file_atomic(&dir.join("agent.key"), pem.key.as_bytes(), 0o600).unwrap();
    std::fs::copy(fleet.certs.join("ca.crt"), dir.join("ca.crt")).unwrap();
    master(&fleet, &["certs", "revoke", "web-01"]).assert_code(0);
    std::fs::copy(fleet.certs.join("crl.der"), dir.join("crl.der")).unwrap();
    let started = AgentCommand::new(&agent_bin(), "web-01", "127.0.0.1:0")
        .identity(
            &dir.join("agent.crt"),
            &dir.join("agent.key"),
            &dir.join("ca.crt"),
        )
        .args(["--audit-log", "off"])
        .stderr_to(&dir.join("agent.log"))
        .spawn()
        .unwrap()
        .wait_ready(Duration::from_secs(30));
    let err = match started {
        Ok(_) => panic!("a revoked agent started serving"),
        Err(e) => e,
    };
    assert!(err.contains("is revoked by the fleet's CRL"), "{err}");
    // With a join token it waits to enroll again instead.
    let t = token(&fleet, "web-01", &[]);
    let a = TokenAgent::start(&fleet, "web-01", Some(&t));
    wait_until("the agent's warning", Duration::from_secs(5), || {
        a.log()
            .contains("is revoked: enrolling again with the join token")
    });
}

/// A master key that is not the master certificate's own (a key copied from another
/// issue) is refused before any dial, naming both files, instead of rustls's
/// `keys may not be consistent: KeyMismatch` from deep in the connection setup.
#[test]
fn a_master_key_from_another_certificate_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("pki");
    certs_init(&certs);
    certs_issue(&certs, "web-01");
    std::fs::copy(certs.join("web-01.key"), certs.join("master.key")).unwrap();
    let inv = dir.path().join("hosts.toml");
    std::fs::write(&inv, "[hosts.web-01]\naddress = \"127.0.0.1:9\"\n").unwrap();
    let out = sloth_master(
        dir.path(),
        &[
            "health",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            certs.to_str().unwrap(),
        ],
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!(
            "{} does not belong to {}",
            certs.join("master.key").display(),
            certs.join("master.crt").display()
        )),
        "{out}"
    );
}

/// `certs issue` does not replace an agent's existing files without `--force`, and
/// never the fleet's own (`certs issue master` would have put an agent certificate in
/// place of the master's).
#[test]
fn certs_issue_replaces_files_only_when_told_and_never_the_fleets_own() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("pki");
    certs_init(&certs);
    certs_issue(&certs, "web-01");
    let d = certs.to_str().unwrap();
    let first = std::fs::read(certs.join("web-01.crt")).unwrap();
    let again = sloth_master(dir.path(), &["certs", "issue", "web-01", "--dir", d]);
    again.assert_code(2);
    assert!(
        again
            .stderr
            .contains("web-01.crt exists: replace it with --force"),
        "{again}"
    );
    assert_eq!(std::fs::read(certs.join("web-01.crt")).unwrap(), first);
    let forced = sloth_master(
        dir.path(),
        &["certs", "issue", "web-01", "--dir", d, "--force"],
    );
    forced.assert_code(0);
    assert_ne!(std::fs::read(certs.join("web-01.crt")).unwrap(), first);
    let master = std::fs::read(certs.join("master.crt")).unwrap();
    let ca_key = std::fs::read(certs.join("ca.key")).unwrap();
    // However the CA's directory is spelled (a symlink, `./`, `..`), and with --force.
    std::os::unix::fs::symlink(&certs, dir.path().join("calink")).unwrap();
    let spelled = format!("{d}/../{}", certs.file_name().unwrap().to_str().unwrap());
    for name in ["master", "ca"] {
        for out_dir in [d, "calink", spelled.as_str()] {
            for extra in [&[][..], &["--force"][..]] {
                let mut args = vec!["certs", "issue", name, "--dir", d, "--out", out_dir];
                args.extend_from_slice(extra);
                let out = sloth_master(dir.path(), &args);
                out.assert_code(2);
                assert!(out.stderr.contains("is the fleet's own"), "{out}");
            }
        }
    }
    assert_eq!(std::fs::read(certs.join("master.crt")).unwrap(), master);
    assert_eq!(std::fs::read(certs.join("ca.key")).unwrap(), ca_key);
    // Names are DNS names: upper case is refused (WEB-01 and web-01 would be one host
    // with two certificates that revoke separately), for certificates and tokens.
    let out = sloth_master(dir.path(), &["certs", "issue", "WEB-02", "--dir", d]);
    out.assert_code(2);
    assert!(out.stderr.contains("use lower case ('web-02')"), "{out}");
    for bad in ["master", "10.0.0.1", "WEB-03"] {
        let out = sloth_master(dir.path(), &["token", "create", bad, "--dir", d]);
        out.assert_code(2);
    }
}
