//! Connections to agents: one QUIC connection per agent, dialed lazily and
//! concurrently, reused by every task, re-dialed after it is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use sloth_proto::protocol::{codes, Control, ErrorKind, Facts, TaskError};
use sloth_transport::wire;
use sloth_transport::{self as tls, CertInfo, Crl, Pem};

use crate::engine::inventory::Inventory;
use crate::engine::transport::{BoxFuture, Link, TaskStream, Transport};

/// Tunables for talking to agents.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// Whether connections probe the path MTU (quinn's MTU discovery, both ways).
    /// Bulk data (artifacts, large results) then travels in full-size packets. A
    /// command that sends only small frames (`exec`, `health`) turns it off: on a
    /// fresh connection the probes and their acknowledgements are about half of
    /// the datagrams, and the agents' share of them is CPU on every host.
    pub probe_mtu: bool,
    /// Whether each agent sends its facts in the Welcome (`health` shows them).
    /// Otherwise `fleet.info` asks for them with `PingFacts` when a script wants them.
    pub welcome_facts: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            connect_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            probe_mtu: true,
            welcome_facts: false,
        }
    }
}

/// A connected, handshaken agent.
pub struct AgentConn {
    /// The inventory name it was dialed as.
    pub host: String,
    pub conn: Connection,
    pub agent_version: String,
    /// The facts the agent sent in its Welcome, collected when it answered, if
    /// [`MeshConfig::welcome_facts`] asked for them.
    pub facts: Option<Facts>,
    /// When the Welcome arrived.
    pub welcomed: Instant,
    /// The agent's certificate (name, serial, validity), as it presented it.
    pub cert: Option<CertInfo>,
    control: tokio::sync::Mutex<(SendStream, wire::FrameReader<RecvStream>, u64)>,
}

impl AgentConn {
    pub fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

struct Slot {
    address: String,
    conn: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<AgentConn>>,
    /// The last failed dial: tasks that waited for it share its error instead of
    /// each dialing again (N tasks to a dead host fail together, not one by one).
    failed: Option<(Instant, TaskError)>,
}

pub struct Mesh {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    slots: HashMap<String, Slot>,
    /// Handshakes under way at once. A burst of hundreds of handshakes on one UDP
    /// socket overflows its receive buffer, and QUIC's retransmission back-off then
    /// turns a few dropped packets into seconds: dial in waves instead.
    handshakes: tokio::sync::Semaphore,
    pub cfg: MeshConfig,
    /// The fleet's CRL (DER), handed to every agent on connect.
    crl: Option<Vec<u8>>,
    renewer: Option<Arc<dyn AgentRenewer>>,
    /// Renewals under way: closing the mesh lets them finish (bounded).
    renewals: parking_lot::Mutex<tokio::task::JoinSet<()>>,
}

/// How many handshakes run at once (see [`Mesh::handshakes`]): each brings about four
/// packets of certificates back, well within the receive buffer.
pub const MAX_HANDSHAKES: usize = 96;
/// The longest one handshake holds its turn.
const HANDSHAKE_TURN: Duration = Duration::from_millis(200);
/// How long an agent that has answered may take to finish the handshake.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The master's certificate material.
pub struct MasterCerts {
    pub own: Pem,
    pub ca: String,
    /// The fleet's revocation list: agents it revokes are refused, and every agent
    /// connected to is handed it.
    pub crl: Option<Crl>,
    /// Where the CA key is at hand: renews agent certificates that are due.
    pub renewer: Option<Arc<dyn AgentRenewer>>,
}

/// Issues a renewed certificate for agent `name` (authenticated by its connection, where
/// it presented the certificate `presented`) to the key of `csr`; the error is what the
/// agent is told.
pub trait AgentRenewer: Send + Sync {
    fn renew(&self, name: &str, presented: &CertInfo, csr: &[u8]) -> Result<String, String>;
}

/// A host that cannot be reached is reported with the address that was dialed (the
/// QUIC and TLS explanations name only the host): `ADDRESS: why`, the host being added
/// where the error is shown.
fn naming_address(mut e: TaskError, host: &str, address: &str) -> TaskError {
    if e.kind == ErrorKind::Unreachable && !e.message.contains(address) {
        let why = e
            .message
            .strip_prefix(host)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(&e.message);
        e.message = format!("{address}: {why}");
    }
    e
}

impl Mesh {
    /// Must be called inside the tokio runtime.
    pub fn new(
        inventory: &Inventory,
        certs: &MasterCerts,
        cfg: MeshConfig,
    ) -> anyhow::Result<Mesh> {
        let mut transport = tls::transport_config(cfg.keep_alive, cfg.idle_timeout);
        let mut endpoint_config = quinn::EndpointConfig::default();
        if let Some(t) = Arc::get_mut(&mut transport) {
            // Agents never open streams towards the master: advertising none saves the
            // per-stream state quinn would pre-allocate for each connection.
            t.max_concurrent_bidi_streams(0u32.into());
            t.max_concurrent_uni_streams(0u32.into());
            if !cfg.probe_mtu {
                tls::without_mtu_probes(t, &mut endpoint_config);
            }
        }
        let client =
            tls::master_client_config(&certs.own, &certs.ca, certs.crl.as_ref(), transport)?;
        let endpoint = client_endpoint(endpoint_config)?;
        let slots = inventory
            .hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    Slot {
                        address: h.address.clone(),
                        conn: tokio::sync::Mutex::new(SlotState::default()),
                    },
                )
            })
            .collect();
        Ok(Mesh {
            endpoint,
            client,
            slots,
            handshakes: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
            cfg,
            crl: certs.crl.as_ref().map(|c| c.der().to_vec()),
            renewer: certs.renewer.clone(),
            renewals: parking_lot::Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    /// The live connection to `host`, dialing (and handshaking) if needed.
    pub async fn connect(&self, host: &str) -> Result<Arc<AgentConn>, TaskError> {
        let slot = self.slots.get(host).ok_or_else(|| {
            TaskError::new(
                ErrorKind::Unreachable,
                format!("'{host}' is not in the inventory"),
            )
        })?;
        let arrived = Instant::now();
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.conn.as_ref() {
            if c.is_alive() {
                return Ok(c.clone());
            }
        }
        if let Some((at, err)) = &guard.failed {
            if *at >= arrived {
                return Err(err.clone());
            }
        }
        // The connect timeout runs from the dial, not from the wait for a turn. A turn
        // ends when the handshake does, or after HANDSHAKE_TURN: the burst of packets
        // comes at the start, and a dead host must not hold a turn for seconds.
        let turn = self.handshakes.acquire().await.ok();
        let dialed = async {
            let dial = self.dial(host, &slot.address);
            tokio::pin!(dial);
            tokio::select! {
                r = &mut dial => return r,
                _ = tokio::time::sleep(HANDSHAKE_TURN) => drop(turn),
            }
            dial.await
        }
        .await;
        match dialed.map_err(|e| naming_address(e, host, &slot.address)) {
            Ok(conn) => {
                let conn = Arc::new(conn);
                if let (Some(r), Some(cert)) = (&self.renewer, &conn.cert) {
                    if cert.due_for_renewal(std::time::SystemTime::now()) {
                        self.renewals.lock().spawn(renew(conn.clone(), r.clone()));
                    }
                }
                guard.conn = Some(conn.clone());
                guard.failed = None;
                Ok(conn)
            }
            Err(e) => {
                guard.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Dial `host`: it must answer (its TLS server hello) within the connect timeout,
    /// and then finish the handshake within [`FINISH_TIMEOUT`] (or the connect timeout
    /// if that is longer). A down host is reported within the connect timeout; a live
    /// one that a loaded machine makes slow (lost packets and QUIC's back-off) is not
    /// given up on.
    async fn dial(&self, host: &str, address: &str) -> Result<AgentConn, TaskError> {
        let unreachable = |m: String| TaskError::new(ErrorKind::Unreachable, m);
        let connect_timeout = self.cfg.connect_timeout;
        let no_answer = || {
            unreachable(format!(
                "no answer from {address} within {} ms (agent down or address wrong?)",
                connect_timeout.as_millis()
            ))
        };
        let start = Instant::now();
        let answered = async {
            let addr = resolve(address).await.map_err(unreachable)?;
            let mut connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, host)
                .map_err(|e| unreachable(tls::explain_connect_error(host, &e)))?;
            connecting
                .handshake_data()
                .await
                .map_err(|e| unreachable(tls::explain_connection_error(host, &e)))?;
            Ok::<_, TaskError>(connecting)
        };
        let connecting = tokio::time::timeout(connect_timeout, answered)
            .await
            .map_err(|_| no_answer())??;
        let finish = FINISH_TIMEOUT.max(connect_timeout);
        tokio::time::timeout(finish, self.finish_dial(host, address, connecting, start))
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(format!(
                    "{address} answered but did not finish the handshake within {} ms of answering (agent or master overloaded?)",
                    finish.as_millis()
                )))
            })
    }

    /// The rest of a dial once the agent has answered: TLS, then the sloth handshake
    /// on the control stream.
    async fn finish_dial(
        &self,
        host: &str,
        address: &str,
        connecting: quinn::Connecting,
        start: Instant,
    ) -> Result<AgentConn, TaskError> {
        let unreachable = |m: String| TaskError::new(ErrorKind::Unreachable, m);
        let conn = connecting
            .await
            .map_err(|e| unreachable(tls::explain_connection_error(host, &e)))?;
        // The agent's identity is the name in its certificate's `sloth://agent/NAME`,
        // not any DNS name it also carries: an extra `--san db-01` on web-08's
        // certificate must not make web-08 answer for db-01.
        let cert = CertInfo::of_connection(&conn).ok();
        if let Some(info) = &cert {
            let named = info.name.as_deref().map(|n| n == host);
            if info.role.as_deref() != Some("agent") || named == Some(false) {
                conn.close(0u32.into(), b"wrong agent");
                return Err(unreachable(format!(
                    "the agent at {address} has the certificate of '{}' ({}), not of '{host}'",
                    info.name.as_deref().unwrap_or("?"),
                    info.role.as_deref().unwrap_or("no sloth role"),
                )));
            }
        }
        // With TLS 1.3 a refused client certificate shows up only now, on the first stream.
        let explain = |conn: &Connection, fallback: String| match conn.close_reason() {
            Some(r) => unreachable(tls::explain_connection_error(host, &r)),
            None => unreachable(fallback),
        };
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| unreachable(tls::explain_connection_error(host, &e)))?;
        let mut recv = wire::FrameReader::new(recv);
        match wire::master_handshake(&mut send, &mut recv, self.cfg.welcome_facts).await {
            Ok(Some(Control::Welcome {
                agent_name,
                agent_version,
                max_tasks,
                facts,
            })) => {
                if agent_name != host {
                    conn.close(0u32.into(), b"wrong agent");
                    return Err(unreachable(format!(
                        "the agent at {address} says it is '{agent_name}', not '{host}'"
                    )));
                }
                tracing::debug!(
                    host,
                    handshake_ms = start.elapsed().as_millis() as u64,
                    max_tasks,
                    "agent connected"
                );
                // The fleet's CRL first: the agent handles control frames in order, so
                // it has taken it before it answers anything this connection asks.
                if let Some(der) = &self.crl {
                    let crl = Control::Crl { der: der.clone() };
                    if let Err(e) = wire::write_frame(&mut send, &crl).await {
                        return Err(explain(&conn, format!("handing over the CRL: {e}")));
                    }
                }
                Ok(AgentConn {
                    host: host.to_string(),
                    cert,
                    conn,
                    agent_version,
                    facts,
                    welcomed: Instant::now(),
                    control: tokio::sync::Mutex::new((send, recv, 0)),
                })
            }
            Ok(Some(Control::Reject { reason })) => Err(TaskError::new(
                ErrorKind::Refused,
                format!("the agent refused us: {reason}"),
            )),
            Ok(Some(other)) => Err(unreachable(format!(
                "unexpected handshake answer {other:?}"
            ))),
            Ok(None) => Err(explain(&conn, "the agent closed the handshake".into())),
            Err(wire::HandshakeError::Version(why)) => {
                conn.close(codes::VERSION_MISMATCH.into(), b"version mismatch");
                Err(TaskError::new(
                    ErrorKind::Refused,
                    format!("the agent refused us: {why}"),
                ))
            }
            Err(e) => Err(explain(&conn, format!("handshake: {e}"))),
        }
    }

    /// Round trip on the control stream; with `facts`, also fetch fresh facts.
    pub async fn ping(
        &self,
        host: &str,
        facts: bool,
    ) -> Result<(Duration, Option<Facts>), TaskError> {
        let c = self.connect(host).await?;
        let mut g = c.control.lock().await;
        g.2 += 1;
        let seq = g.2;
        let start = Instant::now();
        let msg = if facts {
            Control::PingFacts { seq }
        } else {
            Control::Ping { seq }
        };
        let lost = |m: String| TaskError::new(ErrorKind::AgentLost, m);
        let io = async {
            wire::write_frame(&mut g.0, &msg)
                .await
                .map_err(|e| lost(e.to_string()))?;
            loop {
                match g.1.next::<Control>().await {
                    Ok(Some(Control::Pong { seq: s, facts })) if s == seq => return Ok(facts),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(lost("control stream closed".into())),
                    Err(e) => return Err(lost(e.to_string())),
                }
            }
        };
        let facts = tokio::time::timeout(self.cfg.connect_timeout, io)
            .await
            .map_err(|_| {
                lost(format!(
                    "no answer to ping within {} ms",
                    self.cfg.connect_timeout.as_millis()
                ))
            })??;
        Ok((start.elapsed(), facts))
    }

    /// Facts no older than `fresh` and the round-trip time: from the Welcome of a
    /// connection that was just made (its handshake measured the RTT), otherwise from a
    /// `PingFacts` round trip. Saves `health` a second round trip and a second
    /// collection of facts on every host it has just dialed.
    pub async fn fresh_facts(
        &self,
        host: &str,
        fresh: Duration,
    ) -> Result<(Duration, Option<Facts>), TaskError> {
        let c = self.connect(host).await?;
        if let Some(facts) = c.facts.as_ref().filter(|_| c.welcomed.elapsed() <= fresh) {
            return Ok((c.conn.rtt(), Some(facts.clone())));
        }
        self.ping(host, true).await
    }

    /// The connection if one is up right now (no dialing).
    pub async fn current(&self, host: &str) -> Option<Arc<AgentConn>> {
        let slot = self.slots.get(host)?;
        let g = slot.conn.lock().await;
        g.conn.as_ref().filter(|c| c.is_alive()).cloned()
    }

    pub fn address(&self, host: &str) -> Option<&str> {
        self.slots.get(host).map(|s| s.address.as_str())
    }

    /// Close every connection and wait until each one this mesh holds has sent its
    /// close frame: a millisecond or two, where waiting for the endpoint to go idle
    /// (the draining period, 3 PTO, ~80 ms on loopback) would add that to every
    /// command. Bounded by 20 ms plus 0.1 ms per connection, at most 100 ms; an agent
    /// that misses the frame drops the connection at its idle timeout.
    pub async fn close(&self) {
        // A renewal started by this run finishes first (a short run would otherwise
        // cut it off every time): it is bounded by RENEW_TIMEOUT.
        let mut renewals = std::mem::take(&mut *self.renewals.lock());
        while renewals.join_next().await.is_some() {}
        self.close_connections(b"master done").await;
    }

    /// The run was interrupted: close every connection now, without waiting for
    /// renewals (each agent stops the tasks it runs for a connection that closes).
    pub async fn abort(&self) {
        self.close_connections(b"master interrupted").await;
    }

    async fn close_connections(&self, reason: &[u8]) {
        let open = self.endpoint.open_connections() as u64;
        // Every live connection, with the datagrams it had sent, closed right after
        // they are counted: from its close on, quinn sends nothing but close frames,
        // so its next datagram is one. (A slot busy dialing is closed by the endpoint
        // below, unwatched.)
        let live: Vec<(Connection, u64)> = self
            .slots
            .values()
            .filter_map(|s| s.conn.try_lock().ok().and_then(|g| g.conn.clone()))
            .filter(|c| c.is_alive())
            .map(|c| {
                let before = c.conn.stats().udp_tx.datagrams;
                c.conn.close(0u32.into(), reason);
                (c.conn.clone(), before)
            })
            .collect();
        self.endpoint.close(0u32.into(), reason);
        let cap = Duration::from_micros(20_000 + 100 * open).min(Duration::from_millis(100));
        let _ = tokio::time::timeout(cap, closes_sent(&live)).await;
    }
}

/// Until every connection of `live` (closed, each with the number of datagrams it had
/// sent before) has sent one more datagram, its close frame, or ended otherwise (the
/// agent closed it first, or it timed out: no frame of ours is due then).
async fn closes_sent(live: &[(Connection, u64)]) {
    let mut waiting: Vec<&(Connection, u64)> = live.iter().collect();
    loop {
        waiting.retain(|(c, before)| {
            matches!(
                c.close_reason(),
                Some(quinn::ConnectionError::LocallyClosed)
            ) && c.stats().udp_tx.datagrams <= *before
        });
        if waiting.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Renew an agent's certificate over its connection (a third or less of its lifetime
/// left): the agent makes a new key and sends a signing request for it; the renewer
/// signs it for the name the agent was dialed by; the agent installs it and presents it
/// from its next connection on. Bounded, logged, never in the way of tasks.
async fn renew(c: Arc<AgentConn>, renewer: Arc<dyn AgentRenewer>) {
    let host = c.host.clone();
    let work = async {
        let mut g = c.control.lock().await;
        let (send, recv, _) = &mut *g;
        wire::write_frame(send, &Control::RenewRequest)
            .await
            .map_err(|e| e.to_string())?;
        let csr = loop {
            match recv.next::<Control>().await.map_err(|e| e.to_string())? {
                Some(Control::RenewCsr { csr }) => break csr,
                Some(Control::RenewDone { error }) => {
                    return Err(error.unwrap_or_else(|| "the agent gave up".into()))
                }
                // A late answer to an abandoned ping.
                Some(Control::Pong { .. }) => continue,
                Some(other) => return Err(format!("unexpected answer {other:?}")),
                None => return Err("the agent closed its control stream".into()),
            }
        };
        let (r, name) = (renewer.clone(), host.clone());
        let presented = c
            .cert
            .clone()
            .ok_or_else(|| "the agent's certificate could not be read".to_string())?;
        let signed = tokio::task::spawn_blocking(move || r.renew(&name, &presented, &csr))
            .await
            .unwrap_or_else(|e| Err(format!("internal error: {e}")));
        let cert_pem = match signed {
            Ok(c) => c,
            Err(e) => {
                let _ = wire::write_frame(
                    send,
                    &Control::RenewDone {
                        error: Some(e.clone()),
                    },
                )
                .await;
                return Err(e);
            }
        };
        let serial = CertInfo::of_pem(&cert_pem)
            .map(|i| i.serial)
            .unwrap_or_default();
        wire::write_frame(send, &Control::Renewed { cert_pem })
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match recv.next::<Control>().await.map_err(|e| e.to_string())? {
                Some(Control::RenewDone { error: None }) => return Ok(serial),
                Some(Control::RenewDone { error: Some(e) }) => return Err(e),
                Some(Control::Pong { .. }) => continue,
                Some(other) => return Err(format!("unexpected answer {other:?}")),
                None => return Err("the agent closed its control stream".into()),
            }
        }
    };
    match tokio::time::timeout(RENEW_TIMEOUT, work).await {
        Ok(Ok(serial)) => tracing::info!(host, serial, "renewed the agent's certificate"),
        Ok(Err(e)) => tracing::warn!(host, "renewing the agent's certificate failed: {e}"),
        Err(_) => tracing::warn!(host, "renewing the agent's certificate timed out"),
    }
}

/// The longest a renewal may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve '{address}': {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("'{address}' resolves to no address"))
}

/// A client endpoint with large socket buffers, so that hundreds of simultaneous
/// handshakes do not overflow the receive queue.
/// The UDP buffers the master's socket asks for: room for the answers of
/// [`MAX_HANDSHAKES`] handshakes and of many agents' results at once.
const SOCKET_BUFFER: usize = 32 << 20;

/// Size the socket's buffers. The kernel caps a request at `net.core.rmem_max` /
/// `wmem_max`; as root, `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` go past the cap. Otherwise
/// the smaller buffer is used (said at debug level): handshakes are paced by
/// [`MAX_HANDSHAKES`] either way.
fn size_buffers(socket: &socket2::Socket) {
    use rustix::net::sockopt;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    // Linux reports twice the size it grants (bookkeeping included): compare with that.
    if socket.recv_buffer_size().unwrap_or(0) < 2 * SOCKET_BUFFER
        && sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER).is_err()
    {
        tracing::debug!(
            bytes = socket.recv_buffer_size().unwrap_or(0),
            "UDP receive buffer capped by net.core.rmem_max (not root)"
        );
    }
    if socket.send_buffer_size().unwrap_or(0) < 2 * SOCKET_BUFFER {
        let _ = sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER);
    }
}

/// The master's UDP endpoint, with its forced buffers.
pub fn client_endpoint(config: quinn::EndpointConfig) -> anyhow::Result<Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    // Dual-stack where the machine has IPv6 (agents may have v4 or v6 addresses),
    // IPv4 only otherwise.
    let dual = || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
        s.bind(&any.into())?;
        Ok(s)
    };
    let socket = match dual() {
        Ok(s) => s,
        Err(_) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .context("creating UDP socket")?;
            let any: SocketAddr = ([0, 0, 0, 0], 0).into();
            s.bind(&any.into()).context("binding UDP socket")?;
            s
        }
    };
    size_buffers(&socket);
    socket
        .set_nonblocking(true)
        .context("UDP socket non-blocking")?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    let endpoint =
        Endpoint::new(config, None, socket.into(), runtime).context("creating QUIC endpoint")?;
    Ok(endpoint)
}

impl Transport for Mesh {
    fn link<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Arc<dyn Link>, TaskError>> {
        Box::pin(async move { Ok(self.connect(host).await? as Arc<dyn Link>) })
    }

    fn connect_timeout(&self) -> Duration {
        self.cfg.connect_timeout
    }
}

impl Link for AgentConn {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn TaskStream>, TaskError>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await.map_err(|e| {
                TaskError::new(
                    ErrorKind::AgentLost,
                    tls::explain_connection_error(&self.host, &e),
                )
            })?;
            Ok(Box::new(QuicTaskStream {
                send,
                recv: wire::FrameReader::new(recv),
            }) as Box<dyn TaskStream>)
        })
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.conn.closed().await;
        })
    }

    fn is_closed(&self) -> bool {
        !self.is_alive()
    }

    fn lost(&self, fallback: String) -> TaskError {
        let why = match self.conn.close_reason() {
            Some(r) => tls::explain_connection_error(&self.host, &r),
            None => fallback,
        };
        TaskError::new(ErrorKind::AgentLost, why)
    }
}

/// A task's bidirectional QUIC stream.
struct QuicTaskStream {
    send: SendStream,
    recv: wire::FrameReader<RecvStream>,
}

impl TaskStream for QuicTaskStream {
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            tokio::io::AsyncWriteExt::write_all(&mut self.send, frame)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn finish(&mut self) {
        // Already finished or reset: nothing more to end.
        let _ = self.send.finish();
    }

    fn recv(
        &mut self,
    ) -> BoxFuture<'_, Result<Option<sloth_proto::protocol::ToMaster>, wire::WireError>> {
        Box::pin(self.recv.next())
    }

    fn abort(&mut self, code: u32) {
        // Either side may be closed already: then there is nothing left to end.
        let _ = self.send.reset(code.into());
        let _ = self.recv.get_mut().stop(code.into());
    }

    fn take_fin(&mut self) {
        wire::take_fin(self.recv.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_errors_name_the_address_once() {
        let e = |kind, m: &str| TaskError::new(kind, m);
        let named = naming_address(
            e(ErrorKind::Unreachable, "web-01: timed out (no answer)"),
            "web-01",
            "10.0.0.1:7447",
        );
        assert_eq!(named.message, "10.0.0.1:7447: timed out (no answer)");
        assert_eq!(
            named.display_for("web-01"),
            "unreachable: web-01: 10.0.0.1:7447: timed out (no answer)"
        );
        let already = "no answer from 10.0.0.1:7447 within 3000 ms";
        let kept = naming_address(
            e(ErrorKind::Unreachable, already),
            "web-01",
            "10.0.0.1:7447",
        );
        assert_eq!(kept.message, already);
        let refused = naming_address(e(ErrorKind::Refused, "version"), "web-01", "a:1");
        assert_eq!(refused.message, "version");
    }
}
