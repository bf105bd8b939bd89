//! What a certificate says about its holder: the name in its `sloth://ROLE/NAME` URI,
//! its serial number, its SHA-256 fingerprint and its validity. The agent's audit log
//! names masters with it, `health` shows how long agents' certificates have left, and
//! renewal and expiry checks read it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A certificate's identity and validity.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `NAME` from the certificate's `sloth://ROLE/NAME` URI (every certificate
    /// `sloth-master` issues has one), else `None`.
    pub name: Option<String>,
    /// `master` or `agent`, from the same URI.
    pub role: Option<String>,
    /// The serial number in lower-case hex (what a revocation names).
    pub serial: String,
    /// `sha256:` and the hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    #[serde(skip)]
    pub not_before: SystemTime,
    #[serde(skip)]
    pub not_after: SystemTime,
    /// The subject alternative names besides the certificate's own name and URI: DNS
    /// names and IP addresses (`certs issue --san`), which a renewal carries over.
    #[serde(skip)]
    pub extra_sans: Vec<String>,
}

/// An IP address SAN (4 or 16 bytes) as text.
fn ip_text(b: &[u8]) -> Option<String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| Ipv4Addr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| Ipv6Addr::from(a).to_string()),
        _ => None,
    }
}

impl CertInfo {
    /// Read a DER certificate, or say why it cannot be read.
    pub fn of(cert: &CertificateDer<'_>) -> Result<CertInfo, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let san = parsed.subject_alternative_name().ok().flatten();
        let names: &[GeneralName] = san.map_or(&[], |s| &s.value.general_names);
        let uri = names
            .iter()
            .find_map(|g| match g {
                GeneralName::URI(u) => u.strip_prefix("sloth://"),
                _ => None,
            })
            .and_then(|rest| rest.split_once('/'));
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH
            }
        };
        let name = uri.map(|(_, name)| name.to_string());
        let extra_sans = names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) if Some(*d) != name.as_deref() => Some(d.to_string()),
                GeneralName::IPAddress(b) => ip_text(b),
                _ => None,
            })
            .collect();
        Ok(CertInfo {
            name,
            role: uri.map(|(role, _)| role.to_string()),
            serial: hex(strip_zeros(parsed.raw_serial())),
            fingerprint: fingerprint(cert.as_ref()),
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            extra_sans,
        })
    }

    /// Whether the first certificate of `cert_pem` was signed by the first of `ca_pem`
    /// (`Err`: one of them cannot be read).
    pub fn signed_by(cert_pem: &str, ca_pem: &str) -> Result<bool, String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let first = |pem: &str, what: &str| -> Result<CertificateDer<'static>, String> {
            crate::parse_certs(pem)
                .map_err(|e| format!("{what}: {e:#}"))?
                .into_iter()
                .next()
                .ok_or_else(|| format!("{what}: no certificate"))
        };
        let (cert_der, ca_der) = (
            first(cert_pem, "the certificate")?,
            first(ca_pem, "the CA")?,
        );
        let (_, cert) = X509Certificate::from_der(cert_der.as_ref())
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let (_, ca) = X509Certificate::from_der(ca_der.as_ref())
            .map_err(|e| format!("the CA certificate cannot be parsed: {e}"))?;
        Ok(cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
    }

    /// The first certificate of a PEM text.
    pub fn of_pem(pem: &str) -> Result<CertInfo, String> {
        let certs = crate::parse_certs(pem).map_err(|e| format!("{e:#}"))?;
        let first = certs.first().ok_or("no certificate in the PEM text")?;
        CertInfo::of(first)
    }

    /// The identity of a connection's peer: its end-entity certificate (the first one
    /// it presented). On a connection the agent accepted, the TLS layer has verified it
    /// against the fleet CA.
    pub fn of_connection(conn: &quinn::Connection) -> Result<CertInfo, String> {
        let certs = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or("the peer presented no certificate")?;
        let first = certs.first().ok_or("the peer presented no certificate")?;
        CertInfo::of(first)
    }

    /// How logs name the holder: `NAME (serial S)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (serial {})",
            self.name.as_deref().unwrap_or("(unnamed)"),
            self.serial
        )
    }

    /// From `not_before` to `not_after`.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// Whether a third of its lifetime or less is left: time to renew.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        self.remaining(now) < self.lifetime() / 3
    }

    /// `not_after` in RFC 3339, for messages.
    pub fn expiry(&self) -> String {
        sloth_proto::text::rfc3339_seconds(self.not_after).to_string()
    }
}

/// `sha256:` and the hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(der)))
}

/// A DER integer's bytes without the leading zeros of a positive number: how serials
/// are compared and shown.
pub(crate) fn strip_zeros(b: &[u8]) -> &[u8] {
    let mut b = b;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    b
}

/// The bytes of a hex serial (as [`CertInfo::serial`] gives it), or `None`.
pub fn serial_bytes(hex_serial: &str) -> Option<Vec<u8>> {
    let h = hex_serial.trim().to_ascii_lowercase();
    let h = if h.len() % 2 == 1 { format!("0{h}") } else { h };
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A serial as people may type it (any case, `0x`, leading zeros) in the form
/// [`CertInfo::serial`] gives: lower-case hex of its bytes without leading zero bytes.
pub fn normalize_serial(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(hex(strip_zeros(&serial_bytes(t)?)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::Lifetime;

    #[test]
    fn reads_the_name_role_serial_fingerprint_and_validity_of_issued_certificates() {
        let ca = crate::generate_ca("test CA").unwrap();
        let master = crate::issue_master(&ca, "ops-7", Lifetime::days(90)).unwrap();
        let id = CertInfo::of_pem(&master.cert).unwrap();
        assert_eq!(id.name.as_deref(), Some("ops-7"));
        assert_eq!(id.role.as_deref(), Some("master"));
        assert!(!id.serial.is_empty());
        assert!(id.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id.fingerprint.len(), "sha256:".len() + 64);
        assert_eq!(id.describe(), format!("ops-7 (serial {})", id.serial));
        let left = id.remaining(SystemTime::now());
        assert!(left > Duration::from_secs(89 * 86400) && left <= Duration::from_secs(90 * 86400));
        assert!(!id.due_for_renewal(SystemTime::now()));
        assert!(id.due_for_renewal(SystemTime::now() + Duration::from_secs(61 * 86400)));
        assert!(id.expired(SystemTime::now() + Duration::from_secs(91 * 86400)));

        let agent = crate::issue_agent(&ca, "web-01", &[], Lifetime::days(30)).unwrap();
        let id2 = CertInfo::of_pem(&agent.cert).unwrap();
        assert_eq!(id2.role.as_deref(), Some("agent"));
        assert_eq!(id2.name.as_deref(), Some("web-01"));
        assert_ne!(id.serial, id2.serial, "each certificate has its own serial");
        assert_ne!(id.fingerprint, id2.fingerprint);
    }

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(normalize_serial("0A1B").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("000a1b").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("0x00ff").as_deref(), Some("ff"));
        assert_eq!(normalize_serial("a1b").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("zz"), None);
        assert_eq!(normalize_serial(""), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(CertInfo::of(&junk).is_err());
        let empty = CertificateDer::from(Vec::new());
        assert!(CertInfo::of(&empty).is_err());
        assert!(CertInfo::of_pem("not pem").is_err());
    }
}
