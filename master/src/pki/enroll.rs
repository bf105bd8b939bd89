//! The master's side of enrollment: dial an agent that waits with a join token (its
//! listener speaks only `sloth-enroll/1`), show it our master certificate and the
//! fleet CA (it checks the CA against the fingerprint its token pins), take its token
//! and signing request, and answer with its certificate — or with why not. The agent's
//! private key never travels; the token is spent before the certificate leaves.

use std::time::Duration;

use sloth_proto::protocol::{self, Enroll, PROTOCOL_VERSION};
use sloth_transport::{self as tls, wire, CertInfo, Lifetime};

use super::Pki;

/// An agent enrolled.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub serial: String,
    /// RFC 3339.
    pub expires: String,
}

/// Enroll inventory host `host` at `address`. Every step is bounded by `timeout`; the
/// error names the host and the cause, as the agent was told it.
pub async fn enroll_host(
    pki: &Pki,
    host: &str,
    address: &str,
    lifetime: Lifetime,
    timeout: Duration,
) -> Result<Enrolled, String> {
    tokio::time::timeout(timeout, exchange(pki, host, address, lifetime))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{host}: no enrollment within {} s (is the agent at {address} waiting with a token?)",
                timeout.as_secs()
            ))
        })
}

async fn exchange(
    pki: &Pki,
    host: &str,
    address: &str,
    lifetime: Lifetime,
) -> Result<Enrolled, String> {
    let fail = |e: String| format!("{host}: {e}");
    let own = pki.master_checked().map_err(|e| fail(format!("{e:#}")))?;
    let ca = pki.ca_cert().map_err(|e| fail(format!("{e:#}")))?;
    let crl = pki.crl().map_err(|e| fail(format!("{e:#}")))?;
    let transport = tls::transport_config(Duration::from_secs(1), Duration::from_secs(10));
    let cfg =
        tls::enrollment_client_config(&own, &ca, transport).map_err(|e| fail(format!("{e:#}")))?;
    let endpoint = crate::engine::mesh::client_endpoint(quinn::EndpointConfig::default())
        .map_err(|e| fail(format!("{e:#}")))?;
    let addr = crate::engine::mesh::resolve(address).await.map_err(fail)?;
    let conn = endpoint
        .connect_with(cfg, addr, "sloth-enrollment")
        .map_err(|e| tls::explain_connect_error(host, &e))?
        .await
        .map_err(|e| tls::explain_enroll_error(host, &e))?;
    let result = talk(
        pki,
        host,
        &conn,
        &ca,
        crl.as_ref().map(|c| c.der().to_vec()),
        lifetime,
    )
    .await;
    // With TLS 1.3 the agent judges our certificate after our side of the handshake is
    // done: its refusal (a TLS alert) closes the connection under the first stream.
    let refused_by_tls = match conn.close_reason() {
        Some(reason @ quinn::ConnectionError::ConnectionClosed(_)) => {
            Some(tls::explain_enroll_error(host, &reason))
        }
        _ => None,
    };
    conn.close(0u32.into(), b"enrollment over");
    endpoint.wait_idle().await;
    match (result, refused_by_tls) {
        (Ok(e), _) => Ok(e),
        (Err(_), Some(why)) => Err(why),
        (Err(e), None) => Err(fail(e)),
    }
}

async fn talk(
    pki: &Pki,
    host: &str,
    conn: &quinn::Connection,
    ca: &str,
    crl: Option<Vec<u8>>,
    lifetime: Lifetime,
) -> Result<Enrolled, String> {
    let lost = |e: &dyn std::fmt::Display| format!("the enrollment connection failed: {e}");
    let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut recv = wire::FrameReader::new(recv);
    wire::write_preamble(&mut send, PROTOCOL_VERSION)
        .await
        .map_err(|e| lost(&e))?;
    let theirs = recv.preamble().await.map_err(|e| lost(&e))?;
    if theirs != PROTOCOL_VERSION {
        return Err(protocol::version_mismatch(theirs, PROTOCOL_VERSION));
    }
    let refuse = |reason: String| Enroll::Refused { reason };
    let request = recv.next::<Enroll>().await.map_err(|e| lost(&e))?;
    let (token_id, secret, name, csr) = match request {
        Some(Enroll::Request {
            token_id,
            secret,
            name,
            csr,
        }) => (token_id, secret, name, csr),
        Some(Enroll::Refused { reason }) => {
            return Err(format!("the agent refused: {}", printable(&reason)))
        }
        Some(_) => return Err("the agent answered out of turn instead of its request".into()),
        None => return Err("the agent closed the enrollment without a request".into()),
    };
    // The name it asks for must be the one the master will dial it by.
    let issued = if name != host {
        Err(format!(
            "the agent asks to be '{}', but the inventory names it '{host}' (start it with --name {host})",
            printable(&name)
        ))
    } else {
        let (pki, host) = (pki.clone(), host.to_string());
        tokio::task::spawn_blocking(move || pki.redeem(&token_id, &secret, &host, &csr, lifetime))
            .await
            .unwrap_or_else(|e| Err(format!("internal error: {e}")))
    };
    let cert = match issued {
        Ok(c) => c,
        Err(reason) => {
            let _ = wire::write_frame(&mut send, &refuse(reason.clone())).await;
            let _ = send.finish();
            // Let the refusal reach the agent before the connection closes.
            let _ = tokio::time::timeout(Duration::from_secs(2), recv.next::<Enroll>()).await;
            return Err(format!("enrollment refused: {reason}"));
        }
    };
    let info = CertInfo::of_pem(&cert)?;
    wire::write_frame(
        &mut send,
        &Enroll::Issued {
            cert_pem: cert,
            ca_pem: ca.to_string(),
            crl,
        },
    )
    .await
    .map_err(|e| lost(&e))?;
    let _ = send.finish();
    match recv.next::<Enroll>().await.map_err(|e| lost(&e))? {
        Some(Enroll::Enrolled) => Ok(Enrolled {
            expires: info.expiry(),
            serial: info.serial,
        }),
        Some(Enroll::Refused { reason }) => Err(format!(
            "the agent did not install its certificate (serial {}): {}",
            info.serial,
            printable(&reason)
        )),
        _ => Err(format!(
            "the agent did not confirm its certificate (serial {})",
            info.serial
        )),
    }
}

/// Text from whoever answered at the agent's address (not authenticated yet), safe to
/// print: control characters (terminal escapes) gone, length bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(1000).collect()
}
