//! An agent waiting to be enrolled: it has made its own key, listens with a throw-away
//! self-signed certificate and speaks only `sloth-enroll/1`. A master that dials it
//! must present a master certificate signed by the CA its join token pins (checked
//! before the token is shown to anyone); then the agent sends the token and a signing
//! request, checks the certificate it gets (the pinned CA's, for its name, for its own
//! key), installs it, and serves.

use std::time::Duration;

use anyhow::anyhow;
use sloth_proto::protocol::{self, Enroll, PROTOCOL_VERSION};
use sloth_transport::{self as tls, keys::NewKey, wire, Crl, JoinToken};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::credentials::{self, Identity};

/// How long one master may take over an enrollment.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Wait for masters until one enrolls us; the identity installed.
pub async fn wait(
    endpoint: &quinn::Endpoint,
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
) -> anyhow::Result<Identity> {
    info!(
        name = %cfg.name,
        token = %token.id,
        "waiting to be enrolled (`sloth-master enroll {}` on the master)",
        cfg.name
    );
    loop {
        let incoming = endpoint
            .accept()
            .await
            .ok_or_else(|| anyhow!("the endpoint closed while waiting to be enrolled"))?;
        let peer = incoming.remote_address();
        let conn = match tokio::time::timeout(EXCHANGE_TIMEOUT, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!("{}", tls::explain_incoming_error(&peer.to_string(), &e));
                continue;
            }
            Err(_) => continue,
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&conn, cfg, token, key)).await {
            Ok(Ok(identity)) => {
                info!(%peer, serial = %identity.info.serial, expires = %identity.info.expiry(), "enrolled");
                // Let the master read our confirmation before the connection goes.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                return Ok(identity);
            }
            Ok(Err(e)) => {
                error!(%peer, "enrollment failed: {e}");
                // The master reads why (the Refused frame) and closes first.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(protocol::codes::PROTOCOL.into(), b"enrollment failed");
            }
            Err(_) => {
                warn!(%peer, "enrollment timed out");
                conn.close(protocol::codes::PROTOCOL.into(), b"enrollment timed out");
            }
        }
    }
}

async fn exchange(
    conn: &quinn::Connection,
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
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
    // The master first: only one of the pinned CA sees the token.
    let presented = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|b| *b)
        .unwrap_or_default();
    if let Err(reason) = tls::verify_enrolling_master(&presented, &token.ca_fingerprint) {
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
        Some(Enroll::Refused { reason }) => return Err(format!("the master refused: {reason}")),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    let installed = check_and_install(cfg, token, key, &cert_pem, &ca_pem, crl.as_deref());
    let reply = match &installed {
        Ok(_) => Enroll::Enrolled,
        Err(e) => refuse(e.clone()),
    };
    let _ = wire::write_frame(&mut send, &reply).await;
    let _ = send.finish();
    installed
}

/// The certificate must come from the pinned CA, name us, and certify our key.
fn check_and_install(
    cfg: &Config,
    token: &JoinToken,
    key: &NewKey,
    cert_pem: &str,
    ca_pem: &str,
    crl: Option<&[u8]>,
) -> Result<Identity, String> {
    let ca_der = tls::parse_certs(ca_pem)
        .map_err(|e| format!("the CA certificate: {e:#}"))?
        .into_iter()
        .next()
        .ok_or("no CA certificate")?;
    if tls::cert_info::fingerprint(ca_der.as_ref()) != token.ca_fingerprint {
        return Err("the CA certificate sent is not the one the token pins".into());
    }
    tls::verify_issued_agent_cert(cert_pem, ca_pem, &cfg.name)?;
    if !credentials::key_matches(&key.key_pem, cert_pem).map_err(|e| format!("{e:#}"))? {
        return Err("the certificate does not certify our key".into());
    }
    let crl = crl
        .map(|der| Crl::verified(der, ca_pem))
        .transpose()
        .map_err(|e| format!("the revocation list: {e}"))?;
    let paths = cfg.paths();
    credentials::install(&paths, &key.key_pem, cert_pem, Some(ca_pem))
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
        ca: ca_pem.to_string(),
        crl,
        info,
    })
}
