//! An agent waiting to be enrolled: it has made its own key, listens with a throw-away
//! self-signed certificate and speaks only `sloth-enroll/1`. The handshake admits only
//! a master certificate signed by the CA its join token pins (and not revoked, when the
//! agent already has that CA's CRL), so nobody else gets a stream, let alone the token.
//! Then the agent sends the token and a signing request, checks the certificate it gets
//! (the pinned CA's, for its name, for its own key), installs it with that CA alone,
//! and serves. Connections are handled side by side: a slow or silent peer holds only
//! its own.

use std::time::Duration;

use anyhow::anyhow;
use sloth_proto::protocol::{self, Enroll, PROTOCOL_VERSION};
use sloth_transport::{self as tls, keys::NewKey, wire, Crl, JoinToken};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::audit::Session;
use crate::config::Config;
use crate::credentials::{self, Identity};

/// How long a handshake may take, and then the exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// The CRL to check enrolling masters against: the one on disk, when the CA certificate
/// on disk is the one the token pins (an agent enrolling again into its fleet).
pub fn known_crl(cfg: &Config, token: &JoinToken) -> Option<Crl> {
    let ca = std::fs::read_to_string(&cfg.ca).ok()?;
    let der = tls::parse_certs(&ca).ok()?.into_iter().next()?;
    if tls::cert_info::fingerprint(der.as_ref()) != token.ca_fingerprint {
        return None;
    }
    Crl::verified(&std::fs::read(&cfg.crl).ok()?, &ca).ok()
}

/// Wait for masters until one enrolls us; the identity installed.
pub async fn wait(
    endpoint: &quinn::Endpoint,
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
    crl: Option<Crl>,
) -> anyhow::Result<(Identity, Option<Session>)> {
    info!(
        name = %cfg.name,
        token = %token.id,
        "waiting to be enrolled (`sloth-master enroll {}` on the master)",
        cfg.name
    );
    let mut exchanges: JoinSet<Option<(Identity, Option<Session>)>> = JoinSet::new();
    // One enrollment installs; others that get that far are told it is done.
    let installing = std::sync::Arc::new(tokio::sync::Mutex::new(false));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let incoming = incoming
                    .ok_or_else(|| anyhow!("the endpoint closed while waiting to be enrolled"))?;
                let (cfg, token, key, crl, installing) = (
                    cfg.clone(),
                    token.clone(),
                    NewKey { key_pem: key.key_pem.clone(), request_der: key.request_der.clone() },
                    crl.clone(),
                    installing.clone(),
                );
                exchanges.spawn(async move {
                    one(incoming, &cfg, &token, &key, crl.as_ref(), &installing).await
                });
            }
            Some(done) = exchanges.join_next() => {
                if let Ok(Some(enrolled)) = done {
                    exchanges.abort_all();
                    return Ok(enrolled);
                }
            }
        }
    }
}

/// One connection, start to end (bounded); the identity if it enrolled us, with the
/// master that did (for the audit log).
async fn one(
    incoming: quinn::Incoming,
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
    crl: Option<&Crl>,
    installing: &tokio::sync::Mutex<bool>,
) -> Option<(Identity, Option<Session>)> {
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!("{}", tls::explain_incoming_error(&peer.to_string(), &e));
            return None;
        }
        Err(_) => return None,
    };
    let result = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange(&conn, cfg, token, key, crl, installing),
    )
    .await;
    match result {
        Ok(Ok(identity)) => {
            info!(%peer, serial = %identity.info.serial, expires = %identity.info.expiry(), "enrolled");
            // The handshake checked the master's chain against the token's pin.
            let session = match tls::CertInfo::of_connection(&conn) {
                Ok(master) => Some(Session { master, peer }),
                Err(e) => {
                    warn!(%peer, "the enrolling master's certificate cannot be read for the audit log: {e}");
                    None
                }
            };
            // Let the master read our confirmation before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            Some((identity, session))
        }
        Ok(Err(e)) => {
            error!(%peer, "enrollment failed: {e}");
            // The master reads why (the Refused frame) and closes first.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(protocol::codes::PROTOCOL.into(), b"enrollment failed");
            None
        }
        Err(_) => {
            warn!(%peer, "enrollment timed out");
            conn.close(protocol::codes::PROTOCOL.into(), b"enrollment timed out");
            None
        }
    }
}

async fn exchange(
    conn: &quinn::Connection,
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
    crl: Option<&Crl>,
    installing: &tokio::sync::Mutex<bool>,
) -> Result<Identity, String> {
    let (mut send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| format!("no enrollment stream: {e}"))?;
    let mut recv = wire::FrameReader::new(recv);
    let theirs = recv
        .preamble()
        .await
        .map_err(|e| format!("not a sloth master: {e}"))?;
    wire::write_preamble(&mut send, PROTOCOL_VERSION)
        .await
        .map_err(|e| e.to_string())?;
    if theirs != PROTOCOL_VERSION {
        return Err(protocol::version_mismatch(theirs, PROTOCOL_VERSION));
    }
    let refuse = |reason: String| Enroll::Refused { reason };
    // The handshake checked the master against the pin; checked again here, so the
    // token never goes out on a connection that was not.
    let presented = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|b| *b)
        .unwrap_or_default();
    if let Err(reason) = tls::verify_enrolling_master(&presented, &token.ca_fingerprint, crl) {
        let _ = wire::write_frame(&mut send, &refuse(reason.clone())).await;
        let _ = send.finish();
        return Err(reason);
    }
    let request = Enroll::Request {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        name: cfg.name.clone(),
        csr: key.request_der.clone(),
    };
    wire::write_frame(&mut send, &request)
        .await
        .map_err(|e| e.to_string())?;
    let (cert_pem, ca_pem, crl) = match recv.next::<Enroll>().await.map_err(|e| e.to_string())? {
        Some(Enroll::Issued {
            cert_pem,
            ca_pem,
            crl,
        }) => (cert_pem, ca_pem, crl),
        Some(Enroll::Refused { reason }) => {
            return Err(format!("the master refused: {}", printable(&reason)))
        }
        Some(_) => return Err("the master answered out of turn".into()),
        None => return Err("the master closed the enrollment without an answer".into()),
    };
    let installed = {
        let mut done = installing.lock().await;
        if *done {
            Err("already enrolled by another master's connection".to_string())
        } else {
            let r = check_and_install(cfg, token, key, &cert_pem, &ca_pem, crl.as_deref());
            *done = r.is_ok();
            r
        }
    };
    let reply = match &installed {
        Ok(_) => Enroll::Enrolled,
        Err(e) => refuse(e.clone()),
    };
    let _ = wire::write_frame(&mut send, &reply).await;
    let _ = send.finish();
    installed
}

/// The certificate must come from the pinned CA, name us, and certify our key. Only the
/// pinned CA certificate is kept, whatever else came with it; the CRL of a previous CA
/// goes.
fn check_and_install(
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
    cert_pem: &str,
    ca_text: &str,
    crl: Option<&[u8]>,
) -> Result<Identity, String> {
    let ca_pem = tls::certificate_with(ca_text, &token.ca_fingerprint)
        .ok_or("the CA certificate sent is not the one the token pins")?;
    tls::verify_issued_agent_cert(cert_pem, &ca_pem, &cfg.name)?;
    if !tls::keys::key_matches(&key.key_pem, cert_pem).map_err(|e| format!("{e:#}"))? {
        return Err("the certificate does not certify our key".into());
    }
    let crl = crl
        .map(|der| Crl::verified(der, &ca_pem))
        .transpose()
        .map_err(|e| format!("the revocation list: {e}"))?;
    let paths = cfg.paths();
    credentials::drop_crl(&paths).map_err(|e| format!("{e:#}"))?;
    credentials::install(&paths, &key.key_pem, cert_pem, Some(&ca_pem))
        .map_err(|e| format!("{e:#}"))?;
    if let Some(c) = &crl {
        credentials::save_crl(&paths, c).map_err(|e| format!("{e:#}"))?;
    }
    let info = tls::CertInfo::of_pem(cert_pem)?;
    Ok(Identity {
        own: tls::Pem {
            cert: cert_pem.to_string(),
            key: key.key_pem.clone(),
        },
        ca: ca_pem,
        crl,
        info,
    })
}

/// Text from the other side, safe to log: control characters gone, length bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(1000).collect()
}
