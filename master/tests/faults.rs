//! Faults: unreachable and dying agents, refused certificates, hostile bytes.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// An inventory host with nothing listening: `false, "unreachable: ..."` in seconds.
#[test]
fn unreachable_agent_fails_fast_with_its_name() {
    let mut fleet = TestFleet::web(1);
    fleet.add_host(
        "web-02",
        &format!("127.0.0.1:{}", dead_udp_port()),
        &["web"],
    );
    let out = fleet.run(
        r#"
local h = goroutine.async(function() return 1 end, { delegate_to = "web-02" })
local ok, err = goroutine.await(h)
print("R", tostring(ok), err)
local r = goroutine.await_all({ h })[1]
print("KIND", tostring(r.success), r.kind, r.host)
-- the reachable agent is not affected
print("OTHER", goroutine.await(goroutine.async(function() return host.name end, { delegate_to = "web-01" })))
"#,
        &[],
    );
    let r = out.one("R");
    assert_eq!(r[0], "false", "{out}");
    assert!(r[1].starts_with("unreachable"), "{out}");
    assert!(r[1].contains("web-02"), "{out}");
    assert_eq!(out.line("KIND"), "false\tunreachable\tweb-02", "{out}");
    assert_eq!(out.line("OTHER"), "true\tweb-01", "{out}");
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}\n{out}",
        out.elapsed
    );
    out.assert_code(1);
    // The recap counts it as unreachable.
    let recap = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("web-02"))
        .unwrap_or_default()
        .to_string();
    assert!(recap.contains("unreachable=1"), "{recap}\n{out}");
}

/// An agent SIGKILLed while its task sleeps: `agent_lost` within 5 s.
#[test]
fn agent_killed_mid_task_is_agent_lost() {
    let mut fleet = TestFleet::web(2);
    let mut run = fleet.spawn_run(
        r#"
local h = goroutine.async(function()
  print("IN_TASK")
  goroutine.sleep(30000)
  return "finished?"
end, { delegate_to = "web-01" })
local r = goroutine.await_all({ h })[1]
print("R", tostring(r.success), r.kind, r.host, r.error)
print("STATUS", h:status())
-- the other agent still works
print("OTHER", goroutine.await(goroutine.async(function() return host.name end, { delegate_to = "web-02" })))
"#,
        &[],
    );
    assert!(
        run.wait_for("IN_TASK", Duration::from_secs(20)).is_some(),
        "the task never started"
    );
    // Loss is noticed after the QUIC idle timeout (3 s) plus up to one keep-alive
    // interval (1 s): at worst about 4 s.
    std::thread::sleep(Duration::from_millis(1000));
    fleet.kill("web-01");
    let killed = Instant::now();
    let line = run.wait_for_at("R", Duration::from_secs(20));
    let detected = line
        .as_ref()
        .map(|(t, _)| t.saturating_duration_since(killed))
        .unwrap_or(Duration::MAX);
    let out = run.finish(RUN_TIMEOUT);
    assert!(line.is_some(), "no result\n{out}");
    eprintln!("agent loss noticed {detected:?} after the kill");
    let r = out.one("R");
    assert_eq!(&r[..3], ["false", "agent_lost", "web-01"], "{out}");
    assert!(r[3].starts_with("agent_lost"), "{out}");
    assert!(r[3].contains("web-01"), "{out}");
    assert!(
        detected < Duration::from_secs(5),
        "agent loss noticed after {detected:?}\n{out}"
    );
    assert_eq!(out.line("STATUS"), "failed", "{out}");
    assert_eq!(out.line("OTHER"), "true\tweb-02", "{out}");
    out.assert_code(1);
}

const CERT_PROBE: &str = r#"
local h = goroutine.async(function() return "served" end, { delegate_to = "web-09" })
local ok, err = goroutine.await(h)
print("R", tostring(ok), tostring(err))
"#;

fn assert_refused(out: &Output, host: &str, cause: &[&str]) {
    let r = out.one("R");
    assert_eq!(r[0], "false", "the task must not run\n{out}");
    let err = &r[1];
    assert!(
        err.contains(host),
        "the error must name {host}: {err}\n{out}"
    );
    for c in cause {
        assert!(
            err.contains(c),
            "the error must explain the cause ({c:?}): {err}\n{out}"
        );
    }
    out.assert_code(1);
}

/// The agent's certificate comes from another CA.
#[test]
fn agent_from_another_ca_is_refused() {
    let mut fleet = TestFleet::empty();
    let other = fleet.path().join("other-ca");
    certs_init(&other);
    certs_issue(&other, "web-09");
    let ca = other.join("ca.crt");
    fleet.add_custom_agent(
        &AgentSpec {
            name: "web-09",
            cert_dir: &other,
            cert_stem: "web-09",
            ca: &ca,
            extra_args: &[],
        },
        "web-09",
        &["web"],
    );
    let out = fleet.run(CERT_PROBE, &[]);
    assert_refused(&out, "web-09", &["CA"]);
    assert!(out.one("R")[1].starts_with("unreachable"), "{out}");
}

/// An agent whose certificate also names another host (`certs issue web-08 --san
/// web-09`) cannot answer for that host: the master takes an agent's identity from its
/// certificate's `sloth://agent/NAME`, not from its DNS names.
#[test]
fn an_extra_san_does_not_make_an_agent_another_host() {
    let mut fleet = TestFleet::empty();
    let out = sloth_master(
        fleet.path(),
        &[
            "certs",
            "issue",
            "web-08",
            "--san",
            "web-09",
            "--dir",
            fleet.certs.to_str().unwrap(),
        ],
    );
    out.assert_code(0);
    let certs = fleet.certs.clone();
    let ca = certs.join("ca.crt");
    fleet.add_custom_agent(
        &AgentSpec {
            name: "web-09",
            cert_dir: &certs,
            cert_stem: "web-08",
            ca: &ca,
            extra_args: &[],
        },
        "web-09",
        &["web"],
    );
    let out = fleet.run(CERT_PROBE, &[]);
    assert_refused(
        &out,
        "web-09",
        &["has the certificate of 'web-08' (agent), not of 'web-09'"],
    );
    assert!(out.one("R")[1].starts_with("unreachable"), "{out}");
}

/// An agent whose own certificate its `--ca` did not sign (a certificate of one fleet,
/// the CA of another) does not start, and says why: every master of either fleet would
/// be refused, or refuse it, with less clear words.
#[test]
fn an_agent_whose_ca_did_not_sign_its_certificate_does_not_start() {
    let fleet = TestFleet::empty();
    certs_issue(&fleet.certs, "web-09");
    let other = fleet.path().join("other-ca");
    certs_init(&other);
    let log = fleet.path().join("web-09.log");
    let started = sloth_launcher::AgentCommand::new(&agent_bin(), "web-09", "127.0.0.1:0")
        .identity(
            &fleet.certs.join("web-09.crt"),
            &fleet.certs.join("web-09.key"),
            &other.join("ca.crt"),
        )
        .args(["--audit-log", "off"])
        .stderr_to(&log)
        .spawn()
        .unwrap()
        .wait_ready(Duration::from_secs(30));
    let err = match started {
        Ok(_) => panic!("the agent started"),
        Err(e) => e,
    };
    assert!(
        err.contains("web-09.crt is not signed by the CA in") && err.contains("other-ca/ca.crt"),
        "{err}"
    );
}

/// An agent certificate presented by the master is refused by the agent.
#[test]
fn agent_certificate_used_as_master_is_refused() {
    let mut fleet = TestFleet::empty();
    fleet.add_agent("web-09", &["web"]);
    certs_issue(&fleet.certs, "web-05");
    let stolen = fleet.path().join("stolen");
    std::fs::create_dir(&stolen).unwrap();
    std::fs::copy(fleet.certs.join("ca.crt"), stolen.join("ca.crt")).unwrap();
    std::fs::copy(fleet.certs.join("web-05.crt"), stolen.join("master.crt")).unwrap();
    std::fs::copy(fleet.certs.join("web-05.key"), stolen.join("master.key")).unwrap();
    let out = fleet.run(CERT_PROBE, &["--certs", stolen.to_str().unwrap()]);
    assert_refused(&out, "web-09", &["master certificate"]);
    // And the agent says why in its own log.
    let log = fleet.agent_log("web-09");
    assert!(
        log.contains("not a master certificate") || log.contains("master"),
        "agent log: {log}"
    );
}

/// An agent holding web-01's certificate, listed in the inventory as web-09.
fn web01_listed_as_web09() -> TestFleet {
    let mut fleet = TestFleet::empty();
    certs_issue(&fleet.certs, "web-01");
    let certs = fleet.certs.clone();
    let ca = certs.join("ca.crt");
    fleet.add_custom_agent(
        &AgentSpec {
            name: "web-01",
            cert_dir: &certs,
            cert_stem: "web-01",
            ca: &ca,
            extra_args: &[],
        },
        "web-09",
        &["web"],
    );
    fleet
}

/// The inventory says web-09 but the agent there holds web-01's certificate.
#[test]
fn agent_with_another_hosts_certificate_is_refused() {
    let fleet = web01_listed_as_web09();
    let out = fleet.run(CERT_PROBE, &[]);
    assert_refused(&out, "web-09", &["web-01", "name"]);
}

/// Connection errors name the host once: `unreachable: web-09: ...`, not
/// `unreachable: web-09: web-09: ...`.
#[test]
fn connection_errors_name_the_host_once() {
    let fleet = web01_listed_as_web09();
    let out = fleet.run(CERT_PROBE, &[]);
    let err = out.one("R")[1].clone();
    assert!(err.starts_with("unreachable: web-09: "), "{out}");
    assert!(
        !err.contains("web-09: web-09:"),
        "host named twice: {err}\n{out}"
    );
}

/// The agent holds the right certificate but is started with another `--name`.
#[test]
fn agent_with_another_name_is_refused() {
    let mut fleet = TestFleet::empty();
    certs_issue(&fleet.certs, "web-09");
    let certs = fleet.certs.clone();
    let ca = certs.join("ca.crt");
    fleet.add_custom_agent(
        &AgentSpec {
            name: "db-01",
            cert_dir: &certs,
            cert_stem: "web-09",
            ca: &ca,
            extra_args: &[],
        },
        "web-09",
        &["web"],
    );
    let out = fleet.run(CERT_PROBE, &[]);
    assert_refused(&out, "web-09", &["db-01"]);
}

fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const SIMPLE: &str = r#"
print("R", goroutine.await(goroutine.async(function() return host.name, 6 * 7 end, { delegate_to = "web-01" })))
"#;

/// web-01 still runs a task and returns its result.
fn assert_web01_serves(fleet: &TestFleet) {
    let out = fleet.run(SIMPLE, &[]);
    out.assert_code(0);
    assert_eq!(out.line("R"), "true\tweb-01\t42", "{out}");
}

/// Raw UDP garbage, oversized datagrams and QUIC-looking junk at the agent's port.
#[test]
fn agent_survives_udp_garbage() {
    let mut fleet = TestFleet::web(1);
    let target = fleet.addr("web-01");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..300u64 {
        let len = [1, 7, 21, 64, 1200, 1350, 1500, 9000, 65000][(i % 9) as usize];
        let mut b = pseudo_random_bytes(i + 1, len);
        if i % 3 == 0 {
            // Long-header Initial packet of QUIC v1, then junk.
            b[0] = 0xc3;
            if b.len() > 5 {
                b[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = sock.send_to(&b, &target);
    }
    // An all-zero and an all-0xff datagram of the maximum size.
    let _ = sock.send_to(&vec![0u8; 65507], &target);
    let _ = sock.send_to(&vec![0xffu8; 65507], &target);
    std::thread::sleep(Duration::from_millis(200));
    assert!(fleet.alive("web-01"), "{}", fleet.agent_log("web-01"));
    assert_web01_serves(&fleet);
}

/// How the agent must answer a hostile task stream: by resetting it with `code`
/// (`RESET_STREAM`), without sending any byte, within 5 s. Anything else (data, a clean
/// end, another code, a lost connection, a hang) fails the step named `what`.
async fn assert_stream_reset(recv: &mut quinn::RecvStream, code: u32, what: &str) {
    let got = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
    match got {
        Ok(Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c)))) => assert_eq!(
            c,
            quinn::VarInt::from_u32(code),
            "{what}: the agent reset the stream with the wrong code"
        ),
        other => {
            panic!("{what}: expected the agent to reset the stream with code {code}, got {other:?}")
        }
    }
}

/// An authenticated master that sends garbage and oversized frames on real QUIC streams.
///
/// What the agent does (agent/src/server.rs): a control stream that does not open with
/// the preamble closes the connection with `PROTOCOL`; a task stream whose first frame
/// cannot be read (over the size limit, cut short, not decodable as a `ToAgent`) is
/// reset with `BAD_FRAME`, one that decodes to something other than a task with
/// `PROTOCOL`; the connection itself stays up and keeps answering pings.
#[test]
fn agent_survives_bad_frames_from_an_authenticated_master() {
    use sloth_proto::protocol::{codes, encode, Control, ToAgent};
    use sloth_transport::wire;

    let mut fleet = TestFleet::web(1);
    let addr: std::net::SocketAddr = fleet.addr("web-01").parse().unwrap();
    let certs = fleet.certs.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ep = master_endpoint(&certs);

        // 1. Garbage instead of the preamble and hello on the control stream: the agent
        //    closes the connection with PROTOCOL.
        let conn = ep.connect(addr, "web-01").unwrap().await.unwrap();
        let (mut s, _r) = conn.open_bi().await.unwrap();
        s.write_all(&[0, 0, 0, 16]).await.unwrap();
        s.write_all(&pseudo_random_bytes(7, 16)).await.unwrap();
        s.finish().unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the agent kept a connection whose control stream opened with garbage");
        match &closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code,
                    quinn::VarInt::from_u32(codes::PROTOCOL),
                    "{closed:?}"
                );
                assert_eq!(&c.reason[..], b"not a sloth master", "{closed:?}");
            }
            other => panic!("expected the agent to close with PROTOCOL, got {other:?}"),
        }

        // 2. A proper hello, then hostile task streams.
        let conn = ep.connect(addr, "web-01").unwrap().await.unwrap();
        let (mut cs, cr) = conn.open_bi().await.unwrap();
        let mut cr = wire::FrameReader::new(cr);
        let welcome = wire::master_handshake(&mut cs, &mut cr, false)
            .await
            .unwrap();
        assert!(
            matches!(welcome, Some(Control::Welcome { .. })),
            "{welcome:?}"
        );
        let reply = ToAgent::Reply {
            call_id: 1,
            result: Err("no call was made".into()),
        };
        let bad: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "a length far over the limit",
                u32::MAX.to_be_bytes().to_vec(),
                codes::BAD_FRAME,
            ),
            (
                "a length just over the limit",
                ((64u32 << 20) + 1).to_be_bytes().to_vec(),
                codes::BAD_FRAME,
            ),
            (
                "a length that promises more than is sent, then end of stream",
                [&1000u32.to_be_bytes()[..], &pseudo_random_bytes(3, 10)].concat(),
                codes::BAD_FRAME,
            ),
            (
                "a complete frame of garbage",
                [&64u32.to_be_bytes()[..], &pseudo_random_bytes(4, 64)].concat(),
                codes::BAD_FRAME,
            ),
            (
                "a zero-length frame",
                0u32.to_be_bytes().to_vec(),
                codes::BAD_FRAME,
            ),
            ("half a header", vec![0, 0], codes::BAD_FRAME),
            (
                // Its variant index is not one of ToAgent's: it does not decode.
                "a control message where a task is expected",
                encode(&Control::Ping { seq: 1 }).unwrap(),
                codes::BAD_FRAME,
            ),
            (
                // Well formed, but not a task.
                "a reply where a task is expected",
                encode(&reply).unwrap(),
                codes::PROTOCOL,
            ),
        ];
        for (what, b, code) in &bad {
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            // Buffered at once: the agent cannot have refused anything yet.
            s.write_all(b).await.unwrap();
            s.finish().unwrap();
            assert_stream_reset(&mut r, *code, what).await;
        }
        // A large garbage frame within the limit, streamed: the agent reads all of it
        // before it can tell, so every write is accepted.
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(&(8u32 << 20).to_be_bytes()).await.unwrap();
        s.write_all(&pseudo_random_bytes(9, 8 << 20)).await.unwrap();
        s.finish().unwrap();
        assert_stream_reset(&mut r, codes::BAD_FRAME, "an 8 MiB frame of garbage").await;
        // The connection survived all of it and still answers pings.
        assert!(
            conn.close_reason().is_none(),
            "the agent closed the connection: {:?}",
            conn.close_reason()
        );
        wire::write_frame(&mut cs, &Control::Ping { seq: 77 })
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match cr.next::<Control>().await {
                    Ok(Some(Control::Pong { seq, .. })) => return Some(seq),
                    Ok(Some(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await;
        assert_eq!(pong.ok().flatten(), Some(77), "no pong after bad frames");
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    });
    assert!(fleet.alive("web-01"), "{}", fleet.agent_log("web-01"));
    assert_web01_serves(&fleet);
}

/// A frozen (SIGSTOPped) agent mid-task is lost like a dead one; once thawed it serves
/// again.
#[test]
fn frozen_agent_mid_task_is_agent_lost() {
    let fleet = TestFleet::web(1);
    let mut run = fleet.spawn_run(
        r#"
local h = goroutine.async(function()
  print("IN_TASK")
  goroutine.sleep(30000)
end, { delegate_to = "web-01" })
local r = goroutine.await_all({ h })[1]
print("R", tostring(r.success), r.kind, r.host)
"#,
        &[],
    );
    assert!(run.wait_for("IN_TASK", Duration::from_secs(20)).is_some());
    fleet.stop("web-01");
    let stopped = Instant::now();
    let line = run.wait_for_at("R", Duration::from_secs(20));
    fleet.resume("web-01");
    let out = run.finish(RUN_TIMEOUT);
    let (at, _) = line.unwrap_or_else(|| panic!("no result\n{out}"));
    assert_eq!(out.line("R"), "false\tagent_lost\tweb-01", "{out}");
    let after = at.saturating_duration_since(stopped);
    assert!(
        after < Duration::from_secs(6),
        "noticed after {after:?}\n{out}"
    );
    out.assert_code(1);
    assert_web01_serves(&fleet);
}

/// A frozen agent never answers the handshake: `unreachable` within the connect timeout.
#[test]
fn frozen_agent_is_unreachable_within_the_connect_timeout() {
    let fleet = TestFleet::web(1);
    fleet.stop("web-01");
    let out = fleet.run(
        r#"
print("T0")
local ok, err = goroutine.await(goroutine.async(function() return 1 end, { delegate_to = "web-01" }))
print("R", tostring(ok), err)
print("T1")
"#,
        &["--connect-timeout", "1s"],
    );
    fleet.resume("web-01");
    let r = out.one("R");
    assert_eq!(r[0], "false", "{out}");
    assert!(r[1].starts_with("unreachable: web-01"), "{out}");
    let took = out.time_of("T1") - out.time_of("T0");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "took {took:?}\n{out}"
    );
    out.assert_code(1);
}

/// After an agent is lost and comes back on the same address, the same run re-dials it.
#[test]
fn lost_agent_that_comes_back_is_redialed() {
    let mut fleet = TestFleet::web(1);
    let mut run = fleet.spawn_run(
        r#"
local h = goroutine.async(function()
  print("IN_TASK")
  goroutine.sleep(30000)
end, { delegate_to = "web-01" })
local ok, err = goroutine.await(h)
print("LOST", tostring(ok), err)
goroutine.sleep(1500)
local ok2, v = goroutine.await(goroutine.async(function() return "back", host.name end, { delegate_to = "web-01" }))
print("BACK", tostring(ok2), v)
"#,
        &[],
    );
    assert!(run.wait_for("IN_TASK", Duration::from_secs(20)).is_some());
    fleet.kill("web-01");
    let lost = run.wait_for("LOST", Duration::from_secs(20));
    fleet.restart("web-01");
    let out = run.finish(RUN_TIMEOUT);
    assert!(lost.is_some(), "{out}");
    let l = out.one("LOST");
    assert_eq!(l[0], "false", "{out}");
    assert!(l[1].starts_with("agent_lost: web-01"), "{out}");
    assert_eq!(out.line("BACK"), "true\tback", "{out}");
}

/// A task's time limit runs from the call and bounds everything: dialing an agent that
/// does not answer, and retries with it. The task ends `timeout` at its limit, not
/// `unreachable` at the connect timeout (3 s) or after the last retry.
#[test]
fn a_task_limit_bounds_dialing_and_retries() {
    let mut fleet = TestFleet::web(1);
    let dead = format!("127.0.0.1:{}", dead_udp_port());
    fleet.add_host("db-01", &dead, &["db"]);
    let out = fleet.run(
        r#"
local t0 = sys.monotonic_ms()
local ok, err = goroutine.await(goroutine.async(function() return 1 end,
  { delegate_to = "db-01", timeout = "600ms" }))
print("DIAL", ok, (err:match("^[^:]+")), sys.monotonic_ms() - t0 < 2000)
t0 = sys.monotonic_ms()
ok, err = goroutine.await(goroutine.async(function() return 1 end,
  { delegate_to = "db-01", timeout = "1500ms", retries = 5 }))
print("RETRY", ok, (err:match("^[^:]+")), sys.monotonic_ms() - t0 < 2500)
"#,
        &[],
    );
    out.assert_code(1);
    assert_eq!(out.line("DIAL"), "false\ttimeout exceeded\ttrue", "{out}");
    assert_eq!(out.line("RETRY"), "false\ttimeout exceeded\ttrue", "{out}");
}
