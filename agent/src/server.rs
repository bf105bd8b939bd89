//! The QUIC server: enrolls first when it has no certificate yet (`enroll`), then
//! accepts connections from masters, answers the control-stream handshake (and the
//! CRLs and renewals that come on it: `pki`), and runs one task per bidirectional
//! stream.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::{Connection, RecvStream, SendStream};
use sloth_proto::protocol::{self, codes, Control, ErrorKind, TaskError, ToAgent, ToMaster};
use sloth_transport::{self as tls, wire};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Event, Session, TaskInfo};
use crate::config::Config;
use crate::credentials::{self, Startup};
use crate::pki::Pki;
use crate::{enroll, worker};
use sloth_lua::runner::Runner;

/// State shared by every connection of this agent.
pub struct Agent {
    pub cfg: Config,
    pub workers: Arc<Semaphore>,
    pub waiting: AtomicU32,
    /// The threads tasks run on (at most `max_tasks` run at once: `workers`).
    pub runner: Runner,
    pub audit: AuditLog,
    pub pki: Pki,
    /// Task threads lost in C calls they never returned from (`worker::STUCK_AFTER`).
    pub stuck: AtomicU32,
}

/// How long an idle task thread watches for the next task before it sleeps: longer
/// than a round trip to the master, so a script that awaits task after task finds
/// it awake.
pub const RUNNER_SPIN: Duration = Duration::from_micros(500);
/// Streams a master may open beyond the tasks admission takes: the control stream,
/// and tasks that are refused with a reason rather than held back by QUIC.
const STREAM_HEADROOM: u32 = 64;

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let startup = credentials::startup(&cfg.paths(), &cfg.name, cfg.token.as_deref())?;
    // An audit log that cannot be opened stops the agent before it serves anyone.
    let audit = AuditLog::open(&cfg.audit)?;
    let mut transport = tls::transport_config(Duration::from_secs(1), Duration::from_secs(3));
    // quinn allocates the state of every stream a peer may open when the connection
    // starts: allow what admission can take (running, queued, and room to refuse a
    // few more with a reason) rather than a fixed large number; masters open no
    // unidirectional streams.
    if let Some(t) = Arc::get_mut(&mut transport) {
        let streams = cfg
            .max_tasks
            .saturating_add(cfg.queue)
            .saturating_add(STREAM_HEADROOM);
        t.max_concurrent_bidi_streams(streams.into());
        t.max_concurrent_uni_streams(0u32.into());
    }
    let shutdown = sloth_transport::process::shutdown_signal();
    tokio::pin!(shutdown);
    let (endpoint, identity) = match startup {
        Startup::Serve(id) => {
            let endpoint = bind(&cfg, Pki::server_config(&id, transport.clone())?)?;
            announce(&cfg, &endpoint, false)?;
            (endpoint, *id)
        }
        Startup::Enroll(token) => {
            let name = cfg.name.clone();
            let key = tokio::task::spawn_blocking(move || tls::keys::new_key_and_request(&name))
                .await
                .context("making the agent's key")??;
            let temp = tls::keys::enrollment_identity(&key.key_pem, &cfg.name)?;
            let crl = enroll::known_crl(&cfg, &token);
            let server = tls::enrollment_server_config(
                &temp,
                &token.ca_fingerprint,
                crl.as_ref(),
                transport.clone(),
            )?;
            let endpoint = bind(&cfg, server)?;
            announce(&cfg, &endpoint, true)?;
            let (id, session) = tokio::select! {
                r = enroll::wait(&endpoint, &cfg, &token, &key, crl) => r?,
                _ = &mut shutdown => {
                    info!("shutting down before enrollment");
                    endpoint.close(codes::SHUTDOWN.into(), b"agent shutting down");
                    return Ok(());
                }
            };
            endpoint.set_server_config(Some(Pki::server_config(&id, transport.clone())?));
            // Recorded like a renewal; a log that cannot take the line has said so.
            if let Some(session) = &session {
                let _ = audit.note(
                    &cfg.name,
                    Event::Enrolled,
                    session,
                    &format!("certificate serial {}, token {}", id.info.serial, token.id),
                );
            }
            // The token is spent: its file goes.
            if let Some(p) = &cfg.token_file {
                if let Err(e) = std::fs::remove_file(p) {
                    warn!("cannot remove the spent token file {}: {e}", p.display());
                }
            }
            info!("serving");
            (endpoint, id)
        }
    };
    if id_expires_soon(&identity) {
        warn!(
            "the agent certificate {} expires on {}: a master with the CA key renews it when it connects",
            cfg.cert.display(),
            identity.info.expiry()
        );
    }
    sloth_modules::EXECUTOR.enable_prewarm(8);
    let agent = Arc::new(Agent {
        workers: Arc::new(Semaphore::new(cfg.max_tasks as usize)),
        waiting: AtomicU32::new(0),
        runner: Runner::new(
            "sloth-task",
            cfg.max_tasks as usize,
            RUNNER_SPIN,
            Duration::from_secs(30),
        ),
        audit,
        pki: Pki::new(
            endpoint.clone(),
            transport,
            cfg.paths(),
            &cfg.name,
            identity,
        ),
        cfg,
        stuck: AtomicU32::new(0),
    });
    tokio::spawn(restart_when_idle(agent.clone(), endpoint.clone()));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let agent = agent.clone();
                tokio::spawn(async move {
                    let peer = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => handle_connection(agent, conn).await,
                        Err(e) => warn!("{}", tls::explain_incoming_error(&peer.to_string(), &e)),
                    }
                });
            }
            _ = &mut shutdown => {
                info!("shutting down");
                endpoint.close(codes::SHUTDOWN.into(), b"agent shutting down");
                break;
            }
        }
    }
    endpoint.wait_idle().await;
    Ok(())
}

/// An agent with task threads stuck in C calls (see `worker::STUCK_AFTER`) restarts
/// itself in place (the same pid, arguments and environment) as soon as no other task
/// runs or waits: the only way to take back the CPU and the task slots the lost
/// threads hold. Masters see the connection close (`agent restarting`) and dial again.
async fn restart_when_idle(agent: Arc<Agent>, endpoint: quinn::Endpoint) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let stuck = agent.stuck.load(Ordering::SeqCst) as usize;
        if stuck == 0 {
            continue;
        }
        let running =
            (agent.cfg.max_tasks as usize).saturating_sub(agent.workers.available_permits());
        if running > stuck || agent.waiting.load(Ordering::SeqCst) > 0 {
            continue;
        }
        warn!("restarting in place: {stuck} task thread(s) stuck in C calls");
        let bound = endpoint.local_addr().ok();
        endpoint.close(codes::SHUTDOWN.into(), b"agent restarting");
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| "sloth-agent".into());
        let args: Vec<OsString> = args.collect();
        // The address it was bound to, so an agent started on port 0 keeps its port.
        let args = match bound {
            Some(addr) => listening_on(args, addr),
            None => args,
        };
        // Only returns on failure; every descriptor of ours is close-on-exec.
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .exec();
        error!("cannot restart in place ({err}): exiting, for the service manager to restart");
        std::process::exit(1);
    }
}

/// `args` with `--listen` set to `addr`: the value replaced where the flag is given,
/// else the flag added (a flag wins over the config file).
fn listening_on(args: Vec<OsString>, addr: std::net::SocketAddr) -> Vec<OsString> {
    let addr = OsString::from(addr.to_string());
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut found = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--listen" {
            found = true;
            out.push(a);
            it.next();
            out.push(addr.clone());
        } else if a.to_string_lossy().starts_with("--listen=") {
            found = true;
            let mut flag = OsString::from("--listen=");
            flag.push(&addr);
            out.push(flag);
        } else {
            out.push(a);
        }
    }
    if !found {
        out.push("--listen".into());
        out.push(addr);
    }
    out
}

fn bind(cfg: &Config, server: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::server(server, cfg.listen)
        .with_context(|| format!("listening on {}", cfg.listen))
}

/// The one line on stdout: what launchers wait for (sloth_launcher::Ready).
fn announce(cfg: &Config, endpoint: &quinn::Endpoint, enrolling: bool) -> anyhow::Result<()> {
    let addr = endpoint.local_addr().context("reading the bound address")?;
    let mut ready = sloth_launcher::Ready::new(&cfg.name, addr, env!("CARGO_PKG_VERSION"));
    if enrolling {
        ready = ready.enrolling();
    }
    // Not println!: an agent whose stdout is gone (a launcher that stopped reading,
    // a restart in place) keeps serving.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", ready.line()).and_then(|()| out.flush());
    info!(name = %cfg.name, %addr, enrolling, "agent ready");
    Ok(())
}

/// Under 7 days left.
fn id_expires_soon(id: &credentials::Identity) -> bool {
    id.info.remaining(std::time::SystemTime::now()) < Duration::from_secs(7 * 86400)
}

async fn handle_connection(agent: Arc<Agent>, conn: Connection) {
    let peer = conn.remote_address();
    // TLS has verified the certificate against the fleet CA; the audit log names it.
    let master = match tls::CertInfo::of_connection(&conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(%peer, "refusing a master: {e}");
            conn.close(codes::PROTOCOL.into(), b"unreadable client certificate");
            return;
        }
    };
    // The control stream comes first; a peer that never opens it is dropped.
    let control = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await;
    let (mut csend, crecv) = match control {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!("{}", tls::explain_incoming_error(&peer.to_string(), &e));
            return;
        }
        Err(_) => {
            conn.close(codes::PROTOCOL.into(), b"no control stream");
            return;
        }
    };
    let mut crecv = wire::FrameReader::new(crecv);
    // The preamble (magic, protocol version) comes before any bincode, in both
    // directions: whatever version the master is, it learns ours.
    let theirs = match tokio::time::timeout(Duration::from_secs(10), crecv.preamble()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(%peer, "bad handshake: {e}");
            conn.close(codes::PROTOCOL.into(), b"not a sloth master");
            return;
        }
        Err(_) => {
            conn.close(codes::PROTOCOL.into(), b"no preamble");
            return;
        }
    };
    if wire::write_preamble(&mut csend, protocol::PROTOCOL_VERSION)
        .await
        .is_err()
    {
        return;
    }
    if theirs != protocol::PROTOCOL_VERSION {
        warn!(%peer, "{}", protocol::version_mismatch(theirs, protocol::PROTOCOL_VERSION));
        let _ = csend.finish();
        // Give the master a moment to read our preamble and close first.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        conn.close(codes::VERSION_MISMATCH.into(), b"version mismatch");
        return;
    }
    let hello = match tokio::time::timeout(Duration::from_secs(10), crecv.next::<Control>()).await {
        Ok(Ok(Some(Control::Hello(h)))) => h,
        Ok(Ok(_)) | Err(_) => {
            conn.close(
                codes::PROTOCOL.into(),
                b"expected a hello on the control stream",
            );
            return;
        }
        Ok(Err(e)) => {
            warn!(%peer, "bad control frame: {e}");
            conn.close(codes::BAD_FRAME.into(), b"bad frame");
            return;
        }
    };
    if let Err(why) = hello.check_compatible() {
        let _ = wire::write_frame(
            &mut csend,
            &Control::Reject {
                reason: why.clone(),
            },
        )
        .await;
        let _ = csend.finish();
        warn!(%peer, "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.close(codes::VERSION_MISMATCH.into(), b"version mismatch");
        return;
    }
    let facts = if hello.want_facts {
        Some(
            tokio::task::spawn_blocking(worker::facts)
                .await
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let welcome = Control::Welcome {
        agent_name: agent.cfg.name.clone(),
        agent_version: protocol::AGENT_VERSION.to_string(),
        max_tasks: agent.cfg.max_tasks,
        facts,
    };
    if wire::write_frame(&mut csend, &welcome).await.is_err() {
        return;
    }
    info!(%peer, master = %master.describe(), "master connected");
    agent.pki.session_started(&conn, &master.serial);
    let session = Arc::new(Session { master, peer });
    // A failure is logged; each task then refuses itself for the same reason.
    let _ = agent
        .audit
        .record(&agent.cfg.name, Event::Connect, &session, None, None);
    tokio::spawn(control_loop(agent.clone(), session.clone(), csend, crecv));
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let agent = agent.clone();
                let session = session.clone();
                tokio::spawn(async move { task_stream(agent, session, send, recv).await });
            }
            Err(e) => {
                // What the connection cost on the wire, for whoever tunes a fleet's
                // network (and the tests that check which commands probe the MTU).
                let s = conn.stats();
                info!(
                    %peer,
                    datagrams_out = s.udp_tx.datagrams,
                    mtu = s.path.current_mtu,
                    mtu_probes = s.path.sent_plpmtud_probes,
                    "master connection ended: {e}"
                );
                break;
            }
        }
    }
    agent.pki.session_ended(&conn);
}

/// Answers pings (and fact requests), takes the CRLs and renewals the master brings,
/// for as long as the connection lives.
async fn control_loop(
    agent: Arc<Agent>,
    session: Arc<Session>,
    mut send: SendStream,
    mut recv: wire::FrameReader<RecvStream>,
) {
    let name = agent.cfg.name.clone();
    loop {
        match recv.next::<Control>().await {
            Ok(Some(Control::Crl { der })) => match agent.pki.offer_crl(&der).await {
                Ok(Some(number)) => {
                    let _ = agent.audit.note(
                        &name,
                        Event::CrlInstalled,
                        &session,
                        &format!("CRL #{number}"),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(master = %session.master.describe(), "refused the CRL the master handed us: {e}")
                }
            },
            Ok(Some(Control::RenewRequest)) => match agent.pki.renew(&mut send, &mut recv).await {
                Ok(serial) => {
                    let _ = agent.audit.note(
                        &name,
                        Event::CertRenewed,
                        &session,
                        &format!("new certificate serial {serial}"),
                    );
                }
                Err(e) => {
                    warn!(master = %session.master.describe(), "renewing our certificate failed: {e}")
                }
            },
            Ok(Some(Control::Ping { seq })) => {
                if wire::write_frame(&mut send, &Control::Pong { seq, facts: None })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some(Control::PingFacts { seq })) => {
                let facts = tokio::task::spawn_blocking(worker::facts).await.ok();
                if wire::write_frame(&mut send, &Control::Pong { seq, facts })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// One task: read the request, wait for a worker, run it, stream events back.
async fn task_stream(
    agent: Arc<Agent>,
    session: Arc<Session>,
    mut send: SendStream,
    recv: RecvStream,
) {
    let mut recv = wire::FrameReader::new(recv);
    let req = match recv.next::<ToAgent>().await {
        Ok(Some(ToAgent::Task(req))) => *req,
        Ok(Some(_)) => {
            let _ = send.reset(codes::PROTOCOL.into());
            let _ = recv.get_mut().stop(codes::PROTOCOL.into());
            return;
        }
        Ok(None) => return,
        Err(e) => {
            warn!("refusing a task stream: {e}");
            let _ = send.reset(codes::BAD_FRAME.into());
            let _ = recv.get_mut().stop(codes::BAD_FRAME.into());
            return;
        }
    };
    let done = |result: Result<_, TaskError>, duration_us| ToMaster::Done {
        result,
        duration_us,
    };
    // Admission: run now, wait in the bounded queue, or refuse.
    let mut queued = false;
    let permit = match agent.workers.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if agent.waiting.fetch_add(1, Ordering::SeqCst) >= agent.cfg.queue {
                agent.waiting.fetch_sub(1, Ordering::SeqCst);
                let msg = format!(
                    "agent {} is at capacity ({} running, {} queued)",
                    agent.cfg.name, agent.cfg.max_tasks, agent.cfg.queue
                );
                let err = TaskError::new(ErrorKind::Refused, msg);
                let _ = agent.audit.record(
                    &agent.cfg.name,
                    Event::TaskRefused,
                    &session,
                    Some(&TaskInfo::of(&req)),
                    Some(&crate::audit::Ending::error(&err)),
                );
                let _ = wire::write_frame(&mut send, &done(Err(err), 0)).await;
                let _ = send.finish();
                return;
            }
            let acquired = tokio::select! {
                p = agent.workers.clone().acquire_owned() => p.ok(),
                // The master gave up (cancel) while the task waited.
                () = worker::master_gave_up(&mut recv, &send) => None,
            };
            agent.waiting.fetch_sub(1, Ordering::SeqCst);
            queued = true;
            match acquired {
                Some(p) => p,
                None => return,
            }
        }
    };
    worker::run(agent, session, req, send, recv, permit, queued).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_listens_where_the_agent_was_bound() {
        let addr: std::net::SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            listening_on(os(&["--listen", "127.0.0.1:0", "--name", "a"]), addr),
            os(&["--listen", "127.0.0.1:40123", "--name", "a"])
        );
        assert_eq!(
            listening_on(os(&["--listen=127.0.0.1:0"]), addr),
            os(&["--listen=127.0.0.1:40123"])
        );
        assert_eq!(
            listening_on(os(&["--config", "agent.toml"]), addr),
            os(&["--config", "agent.toml", "--listen", "127.0.0.1:40123"])
        );
    }
}
