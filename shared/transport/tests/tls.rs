//! The fleet PKI and the TLS configuration end to end: issuance, PEM files, and real
//! QUIC handshakes on loopback between a correct master, a master of another CA, an
//! agent certificate posing as a master, a wrong name and a master certificate posing
//! as an agent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use sloth_transport::*;
use std::net::{Ipv4Addr, SocketAddr};

fn fleet() -> (Pem, Pem, Pem) {
    let ca = generate_ca("test fleet CA").unwrap();
    let agent = issue_agent(&ca, "web-01", &["127.0.0.1".to_string()], Lifetime::AGENT).unwrap();
    let master = issue_master(&ca, "master", Lifetime::MASTER).unwrap();
    (ca, agent, master)
}

fn transport() -> Arc<quinn::TransportConfig> {
    transport_config(Duration::from_secs(2), Duration::from_secs(10))
}

#[test]
fn tls_generate_and_build_configs() {
    let (ca, agent, master) = fleet();
    assert!(ca.cert.contains("BEGIN CERTIFICATE"));
    assert!(ca.key.contains("BEGIN PRIVATE KEY"));
    assert!(!format!("{agent:?}").contains("PRIVATE KEY"));
    agent_server_config(&agent, &ca.cert, None, transport()).unwrap();
    master_client_config(&master, &ca.cert, None, transport()).unwrap();
    // The SAN URIs are in the certificates (IA5 strings appear verbatim in the DER).
    let agent_der = parse_certs(&agent.cert).unwrap().remove(0);
    let master_der = parse_certs(&master.cert).unwrap().remove(0);
    let contains = |der: &CertificateDer<'_>, s: &str| {
        der.as_ref().windows(s.len()).any(|w| w == s.as_bytes())
    };
    assert!(contains(&agent_der, "sloth://agent/web-01"));
    assert!(contains(&master_der, "sloth://master/master"));
}

#[test]
fn tls_invalid_names_are_refused() {
    let ca = generate_ca("test fleet CA").unwrap();
    for bad in [
        "", "web 01", "web_01", "-web", "web-", "a..b", ".web", "web.", "10.0.0.1", "wéb",
    ] {
        let err = issue_agent(&ca, bad, &[], Lifetime::AGENT).unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid agent name"),
            "{bad:?}: {err:#}"
        );
    }
    let err = issue_agent(&ca, "web-01", &["bad name".to_string()], Lifetime::AGENT).unwrap_err();
    assert!(format!("{err:#}").contains("bad name"), "{err:#}");
    assert!(issue_master(&ca, "bad/name", Lifetime::MASTER).is_err());
    // Extra SANs: IPv4, IPv6 and DNS names are accepted.
    issue_agent(
        &ca,
        "db-1.example.org",
        &["10.1.2.3".into(), "::1".into(), "db.internal".into()],
        Lifetime::AGENT,
    )
    .unwrap();
}

#[test]
fn tls_mismatched_ca_key_is_refused() {
    let ca1 = generate_ca("one").unwrap();
    let ca2 = generate_ca("two").unwrap();
    let franken = Pem {
        cert: ca1.cert.clone(),
        key: ca2.key.clone(),
    };
    let err = issue_agent(&franken, "web-01", &[], Lifetime::AGENT).unwrap_err();
    assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
    // A leaf certificate is not a CA.
    let agent = issue_agent(&ca1, "web-01", &[], Lifetime::AGENT).unwrap();
    let err = issue_agent(&agent, "web-02", &[], Lifetime::AGENT).unwrap_err();
    assert!(
        format!("{err:#}").contains("not allowed to sign"),
        "{err:#}"
    );
    // Own certificate and key that do not match.
    let other = issue_agent(&ca1, "web-02", &[], Lifetime::AGENT).unwrap();
    let mixed = Pem {
        cert: agent.cert.clone(),
        key: other.key,
    };
    let err = agent_server_config(&mixed, &ca1.cert, None, transport()).unwrap_err();
    assert!(format!("{err:#}").contains("not usable"), "{err:#}");
}

#[test]
fn tls_pem_files_round_trip_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sub/dir");
    let (ca, agent, _) = fleet();
    let (crt, key) = write_pem_files(&dir, "web-01", &agent).unwrap();
    assert_eq!(crt, dir.join("web-01.crt"));
    assert_eq!(key, dir.join("web-01.key"));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&crt), 0o644);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(read_pem_files(&crt, &key).unwrap(), agent);

    // Overwriting an existing, too-open key file leaves it 0600.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    write_pem_files(&dir, "web-01", &ca).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(read_pem_files(&crt, &key).unwrap(), ca);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

    let missing = dir.join("nope.crt");
    let err = read_pem_files(&missing, &key).unwrap_err().to_string();
    assert!(
        err.contains("nope.crt") && err.contains("not found"),
        "{err}"
    );
    let garbage = dir.join("garbage.crt");
    fs::write(&garbage, "hello").unwrap();
    let err = read_pem_files(&garbage, &key).unwrap_err().to_string();
    assert!(
        err.contains("garbage.crt") && err.contains("no certificate"),
        "{err}"
    );
    // A certificate where the key should be.
    let err = read_pem_files(&crt, &crt).unwrap_err().to_string();
    assert!(
        err.contains("web-01.crt") && err.contains("no private key"),
        "{err}"
    );
    let binary = dir.join("binary.key");
    fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let err = read_pem_files(&crt, &binary).unwrap_err().to_string();
    assert!(
        err.contains("binary.key") && err.contains("not a PEM"),
        "{err}"
    );
}

/// One field of a built [`quinn::TransportConfig`] as its `Debug` output shows it
/// (quinn has no getters): `keep_alive_interval` is `Some(5s)` or `None`,
/// `max_idle_timeout` is `Some(MILLISECONDS)` or `None`. Panics with the whole output
/// when the field is not there, so a quinn that prints it differently fails here
/// instead of passing.
fn transport_field(t: &quinn::TransportConfig, field: &str) -> String {
    let dbg = format!("{t:?}");
    let key = format!("{field}: ");
    let at = dbg
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {dbg}"))
        + key.len();
    let rest = &dbg[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

#[test]
fn tls_transport_config_clamps_keep_alive() {
    let s = Duration::from_secs;
    // At or above the idle timeout: half the idle timeout.
    assert_eq!(effective_keep_alive(s(30), s(10)), s(5));
    assert_eq!(effective_keep_alive(s(10), s(10)), s(5));
    // Already below, disabled, or no idle timeout: unchanged.
    assert_eq!(effective_keep_alive(s(2), s(10)), s(2));
    assert_eq!(effective_keep_alive(Duration::ZERO, s(10)), Duration::ZERO);
    assert_eq!(effective_keep_alive(s(30), Duration::ZERO), s(30));
    // The configuration built from them carries the clamped interval and the idle
    // timeout (in ms), or none of either when zero; an idle timeout too large for QUIC
    // becomes the largest one, not a panic.
    let cases = [
        ((s(30), s(10)), ("Some(5s)", "Some(10000)")),
        ((s(10), s(10)), ("Some(5s)", "Some(10000)")),
        ((s(2), s(10)), ("Some(2s)", "Some(10000)")),
        ((Duration::ZERO, s(10)), ("None", "Some(10000)")),
        ((s(30), Duration::ZERO), ("Some(30s)", "None")),
        ((Duration::ZERO, Duration::ZERO), ("None", "None")),
        (
            (s(1), Duration::MAX),
            ("Some(1s)", "Some(4611686018427387903)"),
        ),
    ];
    for ((keep_alive, idle), (want_keep_alive, want_idle)) in cases {
        let t = transport_config(keep_alive, idle);
        assert_eq!(
            (
                transport_field(&t, "keep_alive_interval"),
                transport_field(&t, "max_idle_timeout")
            ),
            (want_keep_alive.to_string(), want_idle.to_string()),
            "transport_config({keep_alive:?}, {idle:?})"
        );
    }
}

struct Agent {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// An agent endpoint on 127.0.0.1 that echoes one bidi stream per connection and
/// records how each incoming connection ended.
fn start_agent(agent: &Pem, ca_cert: &str) -> Agent {
    let config = agent_server_config(agent, ca_cert, None, transport()).unwrap();
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while let Some(incoming) = ep.accept().await {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    outcomes.push(explain_incoming_error("master", &e));
                    continue;
                }
            };
            match conn.accept_bi().await {
                Ok((mut send, mut recv)) => {
                    let data = recv.read_to_end(1024).await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                    let _ = send.stopped().await;
                    outcomes.push("ok".to_string());
                }
                Err(e) => outcomes.push(explain_incoming_error("master", &e)),
            }
        }
        outcomes
    });
    Agent {
        addr,
        endpoint,
        task,
    }
}

fn client_endpoint(own: &Pem, ca_cert: &str) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    ep.set_default_client_config(master_client_config(own, ca_cert, None, transport()).unwrap());
    ep
}

/// Dials `server_name` at `addr`, exchanges one message on a bidi stream, and returns
/// the explanation of the failure, if any.
async fn exchange(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    let connecting = ep
        .connect(addr, server_name)
        .map_err(|e| explain_connect_error(server_name, &e))?;
    let conn = connecting
        .await
        .map_err(|e| explain_connection_error(server_name, &e))?;
    let lost = |e: quinn::ConnectionError| explain_connection_error(server_name, &e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
    send.write_all(b"hello agent").await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(e) => lost(e),
        other => other.to_string(),
    })?;
    send.finish().map_err(|e| e.to_string())?;
    let reply = recv.read_to_end(1024).await.map_err(|e| match e {
        quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e)) => lost(e),
        other => other.to_string(),
    })?;
    conn.close(0u32.into(), b"done");
    Ok(reply)
}

async fn stop(agent: Agent, clients: &[&quinn::Endpoint]) -> Vec<String> {
    for c in clients {
        c.wait_idle().await;
    }
    agent.endpoint.close(0u32.into(), b"bye");
    agent.task.await.unwrap()
}

#[tokio::test]
async fn tls_loopback_correct_master_exchanges_bytes() {
    let (ca, agent, master) = fleet();
    let a = start_agent(&agent, &ca.cert);
    let ep = client_endpoint(&master, &ca.cert);
    let reply = exchange(&ep, a.addr, "web-01").await.unwrap();
    assert_eq!(reply, b"hello agent");
    let outcomes = stop(a, &[&ep]).await;
    assert_eq!(outcomes, vec!["ok".to_string()]);
}

/// A client session store that keeps what the default one does and counts the TLS 1.3
/// tickets it is handed.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, g)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, v)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, v)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A master that wants to resume sessions (its own rustls configuration, ready to store
/// tickets) gets none from an agent: each of its connections is a full handshake,
/// where the agent checks its certificate again. A resumed session would skip that
/// check, so a master certificate that expired since would still be let in.
#[tokio::test]
async fn tls_loopback_agent_issues_no_session_ticket_to_resume_with() {
    let (ca, agent, master) = fleet();
    let a = start_agent(&agent, &ca.cert);
    let store = Arc::new(CountingTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(16),
        tickets: Default::default(),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certs(&ca.cert).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            parse_certs(&master.cert).unwrap(),
            parse_key(&master.key).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::store(store.clone());
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    for _ in 0..2 {
        let reply = exchange(&ep, a.addr, "web-01").await.unwrap();
        assert_eq!(reply, b"hello agent");
    }
    let outcomes = stop(a, &[&ep]).await;
    assert_eq!(outcomes, ["ok", "ok"]);
    assert_eq!(
        store.tickets.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the agent handed out session tickets"
    );
}

#[tokio::test]
async fn tls_loopback_master_of_another_ca_is_refused() {
    let (ca, agent, _) = fleet();
    let other_ca = generate_ca("another fleet").unwrap();
    let other_master = issue_master(&other_ca, "master", Lifetime::MASTER).unwrap();
    let a = start_agent(&agent, &ca.cert);
    let ep = client_endpoint(&other_master, &other_ca.cert);
    let err = exchange(&ep, a.addr, "web-01").await.unwrap_err();
    println!("{err}");
    assert!(err.starts_with("web-01: "), "{err}");
    assert!(err.contains("not signed by this fleet's CA"), "{err}");

    // Same wrong master, but trusting the right CA: now the agent refuses it.
    let ep2 = client_endpoint(&other_master, &ca.cert);
    let err = exchange(&ep2, a.addr, "web-01").await.unwrap_err();
    println!("{err}");
    assert!(err.contains("the agent refused our certificate"), "{err}");
    assert!(err.contains("CA"), "{err}");
    let outcomes = stop(a, &[&ep, &ep2]).await;
    println!("{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.contains("not signed by this fleet's CA")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn tls_loopback_agent_cert_as_master_is_refused() {
    let (ca, agent, _) = fleet();
    let thief = issue_agent(&ca, "web-07", &[], Lifetime::AGENT).unwrap();
    let a = start_agent(&agent, &ca.cert);
    // The client side accepts any usable cert/key; the agent must refuse it.
    let ep = client_endpoint(&thief, &ca.cert);
    let err = exchange(&ep, a.addr, "web-01").await.unwrap_err();
    println!("{err}");
    assert!(
        err.starts_with("web-01: the agent refused our certificate"),
        "{err}"
    );
    assert!(err.contains("not a master certificate"), "{err}");
    let outcomes = stop(a, &[&ep]).await;
    println!("{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.contains("not a master certificate")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn tls_loopback_wrong_name_is_refused() {
    let (ca, agent, master) = fleet();
    let a = start_agent(&agent, &ca.cert);
    let ep = client_endpoint(&master, &ca.cert);
    let err = exchange(&ep, a.addr, "web-02").await.unwrap_err();
    println!("{err}");
    assert_eq!(
        err,
        "web-02: TLS: the agent's certificate is for another name \
         (expected web-02; it is for web-01, 127.0.0.1)"
    );
    stop(a, &[&ep]).await;
}

#[tokio::test]
async fn tls_loopback_master_cert_as_agent_is_refused() {
    let (ca, _, master) = fleet();
    // A master certificate (ClientAuth only) cannot serve as an agent certificate.
    let a = start_agent(&master, &ca.cert);
    let ep = client_endpoint(&master, &ca.cert);
    let err = exchange(&ep, a.addr, "master").await.unwrap_err();
    println!("{err}");
    assert!(err.contains("not an agent certificate"), "{err}");
    stop(a, &[&ep]).await;
}

#[test]
fn tls_explanations_of_simple_errors() {
    use quinn::ConnectionError as E;
    assert_eq!(
        explain_connection_error("web-01", &E::TimedOut),
        "web-01: timed out (no answer)"
    );
    assert!(explain_connection_error("web-01", &E::Reset).starts_with("web-01: connection lost: "));
    let e = quinn::ConnectError::InvalidServerName("bad name".into());
    assert!(explain_connect_error("bad name", &e).contains("not a valid TLS server name"));
}
