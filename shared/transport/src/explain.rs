//! One-line, human explanations of why a QUIC connection failed: names the host
//! and the cause (unknown CA, wrong name, wrong role, expired, timeout...) from the
//! master's or the agent's point of view.

use crate::config::{ALPN, ENROLL_ALPN};

/// Whose view an explanation is written from.
#[derive(Clone, Copy)]
enum Perspective {
    /// The master dialing an agent.
    Master,
    /// An agent accepting a connection from a master.
    Agent,
}

impl Perspective {
    /// The role of the other side.
    fn peer(self) -> &'static str {
        match self {
            Perspective::Master => "agent",
            Perspective::Agent => "master",
        }
    }
}

/// One-line explanation, for the master, of why the connection to agent `host` failed or
/// was lost. Names the host and the cause in plain words.
pub fn explain_connection_error(host: &str, err: &quinn::ConnectionError) -> String {
    explain(Perspective::Master, host, err)
}

/// One-line explanation, for an agent, of why an incoming connection from `peer` (the
/// master's address) failed or was lost.
pub fn explain_incoming_error(peer: &str, err: &quinn::ConnectionError) -> String {
    explain(Perspective::Agent, peer, err)
}

/// One-line explanation of why `Endpoint::connect` refused to start a connection to `host`.
pub fn explain_connect_error(host: &str, err: &quinn::ConnectError) -> String {
    use quinn::ConnectError as E;
    match err {
        E::InvalidServerName(name) => format!(
            "{host}: {name:?} is not a valid TLS server name (the inventory name must be a DNS name matching the agent's certificate)"
        ),
        E::InvalidRemoteAddress(addr) => format!("{host}: invalid address {addr}"),
        E::EndpointStopping => format!("{host}: the local QUIC endpoint is shutting down"),
        E::CidsExhausted => format!("{host}: too many connections (connection IDs exhausted)"),
        E::NoDefaultClientConfig => {
            format!("{host}: internal error: no TLS client configuration")
        }
        E::UnsupportedVersion => format!("{host}: unsupported QUIC version"),
    }
}

fn explain(side: Perspective, host: &str, err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    let peer = side.peer();
    match err {
        E::TransportError(te) => match crypto_alert(te.code) {
            Some(alert) => format!(
                "{host}: TLS: {}",
                explain_local_tls(side, host, alert, &te.reason)
            ),
            None => format!("{host}: protocol error: {te}"),
        },
        E::ConnectionClosed(close) => match crypto_alert(close.error_code) {
            Some(alert) => format!("{host}: {}", explain_peer_alert(side, alert)),
            None if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
                format!("{host}: the {peer} refused the connection (shutting down or overloaded?)")
            }
            None => format!("{host}: connection lost: aborted by the {peer}: {close}"),
        },
        E::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                format!(
                    "{host}: connection lost: the {peer} closed the connection (code {})",
                    close.error_code
                )
            } else {
                format!(
                    "{host}: connection lost: the {peer} closed the connection: {reason} (code {})",
                    close.error_code
                )
            }
        }
        E::Reset => format!("{host}: connection lost: reset by the {peer} (did it restart?)"),
        E::TimedOut => format!("{host}: timed out (no answer)"),
        E::LocallyClosed => format!("{host}: connection closed locally"),
        E::VersionMismatch => {
            format!("{host}: the {peer} does not support our QUIC version")
        }
        E::CidsExhausted => format!("{host}: connection IDs exhausted"),
    }
}

/// The TLS alert carried by a QUIC CRYPTO_ERROR code (0x100 + alert), if it is one.
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

// TLS alert numbers (RFC 8446 §6, RFC 7301).
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_ACCESS_DENIED: u8 = 49;
const ALERT_DECRYPT_ERROR: u8 = 51;
const ALERT_PROTOCOL_VERSION: u8 = 70;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// We failed the handshake: usually our verification of the peer's certificate. rustls
/// only reports the cause as text (`reason`), e.g. "invalid peer certificate: UnknownIssuer".
fn explain_local_tls(side: Perspective, host: &str, alert: u8, reason: &str) -> String {
    let peer = side.peer();
    let has = |needle: &str| reason.contains(needle);
    if has("UnknownIssuer") {
        format!("the {peer}'s certificate is not signed by this fleet's CA (wrong CA?)")
    } else if has("NotValidForName") || has("not valid for name") {
        let presented = reason
            .split_once("is only valid for ")
            .map(|(_, names)| format!("; it is for {}", presented_names(names)))
            .unwrap_or_default();
        format!("the {peer}'s certificate is for another name (expected {host}{presented})")
    } else if has("InvalidPurpose") || has("extended key usage") {
        match side {
            Perspective::Master => format!(
                "the {peer}'s certificate is not an agent certificate (a master certificate used as an agent?)"
            ),
            Perspective::Agent => format!(
                "the {peer}'s certificate is not a master certificate (an agent certificate used as a master?)"
            ),
        }
    } else if has("Expired") || has("expired") {
        let when = expired_on(reason)
            .map(|t| format!(" on {t}"))
            .unwrap_or_default();
        match side {
            Perspective::Master => format!(
                "the agent's certificate for {host} expired{when} (re-enroll it: `sloth-master token create {host}`, then start the agent with the token; or the clocks disagree)"
            ),
            Perspective::Agent => format!("the master's certificate expired{when} (or the clocks disagree)"),
        }
    } else if has("NotValidYet") || has("not valid yet") {
        format!("the {peer}'s certificate is not valid yet (clock skew?)")
    } else if has("Revoked") {
        match side {
            Perspective::Master => format!(
                "the agent's certificate for {host} has been revoked (`sloth-master certs list` shows it)"
            ),
            Perspective::Agent => "the master's certificate has been revoked".to_string(),
        }
    } else if has("BadSignature") || has("BadEncoding") {
        format!("the {peer}'s certificate does not verify against this fleet's CA (wrong CA, or a damaged certificate?)")
    } else if has("peer sent no certificates") || has("NoCertificatesPresented") {
        format!("the {peer} presented no certificate")
    } else if has("NoApplicationProtocol") || alert == ALERT_NO_APPLICATION_PROTOCOL {
        alpn_mismatch(side)
    } else if reason.is_empty() {
        format!("handshake failed ({})", alert_name(alert))
    } else {
        format!("handshake failed: {reason}")
    }
}

/// Turns rustls' list of presented names (`DnsName("web-01"), IpAddress(10.0.0.1) or
/// UniformResourceIdentifier("sloth://agent/web-01")`) into `web-01, 10.0.0.1`: the names
/// a server name can match. Falls back to the raw text if it has none of those.
fn presented_names(raw: &str) -> String {
    let mut names = Vec::new();
    for (prefix, suffix) in [("DnsName(\"", "\")"), ("IpAddress(", ")")] {
        let mut rest = raw;
        while let Some(start) = rest.find(prefix) {
            rest = &rest[start + prefix.len()..];
            let Some(end) = rest.find(suffix) else { break };
            names.push(&rest[..end]);
            rest = &rest[end + suffix.len()..];
        }
    }
    if names.is_empty() {
        raw.to_string()
    } else {
        names.join(", ")
    }
}

/// The peer failed the handshake and told us why with a TLS alert: usually it refused our
/// certificate.
fn explain_peer_alert(side: Perspective, alert: u8) -> String {
    let peer = side.peer();
    let ours = match side {
        Perspective::Master => "a master certificate",
        Perspective::Agent => "an agent certificate",
    };
    match alert {
        ALERT_UNKNOWN_CA => format!(
            "the {peer} refused our certificate: it is not signed by the CA the {peer} trusts (wrong CA? {peer} of another fleet?)"
        ),
        ALERT_UNSUPPORTED_CERTIFICATE => format!(
            "the {peer} refused our certificate: it is not {ours} ({}?)",
            match side {
                Perspective::Master => "an agent certificate used by the master",
                Perspective::Agent => "a master certificate used by an agent",
            }
        ),
        ALERT_BAD_CERTIFICATE | ALERT_CERTIFICATE_UNKNOWN | ALERT_ACCESS_DENIED => format!(
            "the {peer} refused our certificate (not {ours} of this fleet's CA?)"
        ),
        ALERT_CERTIFICATE_EXPIRED => match side {
            Perspective::Master => "the agent refused our master certificate as expired or not yet valid (renew it: `sloth-master certs renew-master`; or the clocks disagree)".to_string(),
            Perspective::Agent => format!("the {peer} refused our certificate as expired or not yet valid (or the clocks disagree)"),
        },
        ALERT_CERTIFICATE_REVOKED => match side {
            Perspective::Master => "the agent refused our master certificate: it has been revoked".to_string(),
            Perspective::Agent => format!("the {peer} refused our certificate as revoked"),
        },
        ALERT_CERTIFICATE_REQUIRED => {
            format!("the {peer} requires a certificate and we sent none")
        }
        // rustls answers a certificate whose signature does not verify against the
        // trusted CA (same CA name, other key) with decrypt_error too.
        ALERT_DECRYPT_ERROR => format!(
            "the {peer} refused our certificate: its signature does not verify against the CA the {peer} trusts (wrong CA? {peer} of another fleet? or certificate and key do not match)"
        ),
        ALERT_NO_APPLICATION_PROTOCOL => alpn_mismatch(side),
        ALERT_PROTOCOL_VERSION | ALERT_HANDSHAKE_FAILURE => format!(
            "the {peer} could not agree on TLS parameters with us ({})",
            alert_name(alert)
        ),
        other => format!("the {peer} aborted the TLS handshake ({})", alert_name(other)),
    }
}

/// No common ALPN: most often an agent waiting to be enrolled (it speaks only
/// [`ENROLL_ALPN`]), or a master enrolling an agent that already serves.
fn alpn_mismatch(side: Perspective) -> String {
    match side {
        Perspective::Master => format!(
            "the agent does not speak {} (is it waiting to be enrolled? `sloth-master enroll HOST`; or not a sloth agent, or an incompatible version)",
            String::from_utf8_lossy(ALPN)
        ),
        Perspective::Agent => format!(
            "the master does not speak {} (an enrollment for an agent that is already enrolled? or an incompatible version)",
            String::from_utf8_lossy(ALPN)
        ),
    }
}

/// `not_after` of rustls' "certificate expired: ... is not valid after T (...)" text,
/// as RFC 3339.
fn expired_on(reason: &str) -> Option<String> {
    let after = reason.split("not valid after ").nth(1)?;
    let secs: u64 = after
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()?;
    Some(
        sloth_proto::text::rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string(),
    )
}

/// Why an enrollment dial failed, for the master: the agent is not waiting to be
/// enrolled (it already serves), or the usual reasons.
pub fn explain_enroll_error(host: &str, err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match err {
        E::ConnectionClosed(close)
            if crypto_alert(close.error_code) == Some(ALERT_NO_APPLICATION_PROTOCOL) =>
        {
            format!(
                "{host}: the agent is not waiting to be enrolled (it does not speak {}): already enrolled?",
                String::from_utf8_lossy(ENROLL_ALPN)
            )
        }
        E::ConnectionClosed(close)
            if crypto_alert(close.error_code) == Some(ALERT_ACCESS_DENIED) =>
        {
            format!(
                "{host}: the agent refused our master certificate: it is not signed by the CA the agent's join token pins (a token of another fleet?), or the agent's CRL revokes it"
            )
        }
        other => explain(Perspective::Master, host, other),
    }
}

fn alert_name(alert: u8) -> String {
    format!("TLS alert {:?}", rustls::AlertDescription::from(alert))
}
