//! Who is on the other end of a connection, as its (already verified) certificate says:
//! the name in its `sloth://ROLE/NAME` URI, the certificate's serial number and the
//! SHA-256 fingerprint of the certificate. The agent's audit log records it for every
//! master that connects.

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A peer certificate's identity.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `NAME` from the certificate's `sloth://ROLE/NAME` URI (every certificate
    /// `sloth-master certs` issues has one), else `None`.
    pub name: Option<String>,
    /// `master` or `agent`, from the same URI.
    pub role: Option<String>,
    /// The serial number in hex (what a revocation list names).
    pub serial: String,
    /// `sha256:` and the hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
}

impl PeerIdentity {
    /// The identity in a certificate, or why it cannot be read.
    pub fn of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| format!("the peer certificate cannot be parsed: {e}"))?;
        let uri = parsed
            .valid_uri_names()
            .find_map(|u| u.strip_prefix("sloth://"))
            .and_then(|rest| rest.split_once('/'));
        Ok(PeerIdentity {
            name: uri.map(|(_, name)| name.to_string()),
            role: uri.map(|(role, _)| role.to_string()),
            serial: hex(parsed.serial()),
            fingerprint: format!("sha256:{}", hex(&Sha256::digest(cert.as_ref()))),
        })
    }

    /// The identity of a connection's peer: its end-entity certificate (the first one
    /// it presented). On a connection the agent accepted, the TLS layer has verified it
    /// against the fleet CA.
    pub fn of_connection(conn: &quinn::Connection) -> Result<PeerIdentity, String> {
        let certs = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or("the peer presented no certificate")?;
        let first = certs.first().ok_or("the peer presented no certificate")?;
        PeerIdentity::of(first)
    }

    /// How logs name the peer: `NAME (serial S)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (serial {})",
            self.name.as_deref().unwrap_or("(unnamed)"),
            self.serial
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(all(test, feature = "issue"))]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_role_serial_and_fingerprint_of_issued_certificates() {
        let ca = crate::generate_ca("test CA").unwrap();
        let master = crate::issue_master(&ca, "ops-7").unwrap();
        let der = &crate::parse_certs(&master.cert).unwrap()[0];
        let id = PeerIdentity::of(der).unwrap();
        assert_eq!(id.name.as_deref(), Some("ops-7"));
        assert_eq!(id.role.as_deref(), Some("master"));
        assert!(!id.serial.is_empty());
        assert!(id.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id.fingerprint.len(), "sha256:".len() + 64);
        assert_eq!(id.describe(), format!("ops-7 (serial {})", id.serial));

        let agent = crate::issue_agent(&ca, "web-01", &[]).unwrap();
        let der2 = &crate::parse_certs(&agent.cert).unwrap()[0];
        let id2 = PeerIdentity::of(der2).unwrap();
        assert_eq!(id2.role.as_deref(), Some("agent"));
        assert_eq!(id2.name.as_deref(), Some("web-01"));
        assert_ne!(id.serial, id2.serial, "each certificate has its own serial");
        assert_ne!(id.fingerprint, id2.fingerprint);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(PeerIdentity::of(&junk).is_err());
        let empty = CertificateDer::from(Vec::new());
        assert!(PeerIdentity::of(&empty).is_err());
    }
}
