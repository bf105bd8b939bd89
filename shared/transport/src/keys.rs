//! The keys an agent makes for itself: a new ECDSA P-256 key with a certificate
//! signing request for its name (enrollment, renewal), so its private key never leaves
//! the host; and the throw-away self-signed certificate its enrollment listener
//! presents before it has a real one.

use anyhow::{anyhow, Context};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

use crate::pem::Pem;

/// A fresh private key and a signing request for it.
pub struct NewKey {
    /// PEM (PKCS#8), to be written mode 0600 where the agent keeps its key.
    pub key_pem: String,
    /// The signing request (PKCS#10 DER) naming `name`; its signature proves the key.
    pub request_der: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("request_der", &self.request_der.len())
            .finish_non_exhaustive()
    }
}

/// A new key, and a request for a certificate naming `name`.
pub fn new_key_and_request(name: &str) -> anyhow::Result<NewKey> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow!("cannot generate an ECDSA P-256 key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let request = params
        .serialize_request(&key)
        .context("cannot make the certificate signing request")?;
    Ok(NewKey {
        key_pem: key.serialize_pem(),
        request_der: request.der().to_vec(),
    })
}

/// Whether the PEM key is the one the certificate certifies.
pub fn key_matches(key_pem: &str, cert_pem: &str) -> anyhow::Result<bool> {
    let spki = public_key_of(key_pem)?;
    let der = crate::pem::parse_certs(cert_pem)?
        .into_iter()
        .next()
        .context("no certificate")?;
    Ok(der
        .as_ref()
        .windows(spki.len())
        .any(|w| w == spki.as_slice()))
}

/// The public key (SubjectPublicKeyInfo DER) of a PEM private key: what an issued
/// certificate must certify.
pub fn public_key_of(key_pem: &str) -> anyhow::Result<Vec<u8>> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| anyhow!("not a usable private key: {e}"))?;
    Ok(rcgen::PublicKeyData::subject_public_key_info(&key))
}

/// A self-signed certificate for `key_pem`, valid one day, for the enrollment listener
/// (the master cannot verify it and does not need to: see docs/security.md).
pub fn enrollment_identity(key_pem: &str, name: &str) -> anyhow::Result<Pem> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| anyhow!("not a usable private key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} (enrolling)"));
    params.subject_alt_names = vec![SanType::DnsName(
        rcgen::string::Ia5String::try_from("sloth-enrollment").map_err(|e| anyhow!("{e}"))?,
    )];
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(86400)).into();
    let cert = params
        .self_signed(&key)
        .context("cannot make the enrollment certificate")?;
    Ok(Pem {
        cert: cert.pem(),
        key: key_pem.to_string(),
    })
}

#[cfg(all(test, feature = "issue"))]
mod tests {
    use super::*;
    use crate::issue::Lifetime;
    use crate::CertInfo;

    #[test]
    fn a_request_gets_a_certificate_for_its_own_key_and_the_name_we_choose() {
        let ca = crate::generate_ca("fleet").unwrap();
        let new = new_key_and_request("web-01").unwrap();
        // The request may ask for any name: the certificate names who we say.
        let cert =
            crate::issue::sign_agent_request(&ca, &new.request_der, "web-01", &[], Lifetime::AGENT)
                .unwrap();
        let info = CertInfo::of_pem(&cert).unwrap();
        assert_eq!(info.name.as_deref(), Some("web-01"));
        assert_eq!(info.role.as_deref(), Some("agent"));
        let spki = public_key_of(&new.key_pem).unwrap();
        let der = &crate::parse_certs(&cert).unwrap()[0];
        assert!(
            der.as_ref()
                .windows(spki.len())
                .any(|w| w == spki.as_slice()),
            "the certificate certifies the agent's own key"
        );
        // A tampered request does not verify.
        let mut bad = new.request_der.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(
            crate::issue::sign_agent_request(&ca, &bad, "web-01", &[], Lifetime::AGENT).is_err()
        );
        assert!(
            crate::issue::sign_agent_request(&ca, b"junk", "web-01", &[], Lifetime::AGENT).is_err()
        );
        // The enrollment certificate is self-signed for the same key.
        let id = enrollment_identity(&new.key_pem, "web-01").unwrap();
        assert!(CertInfo::of_pem(&id.cert).is_ok());
        assert!(!format!("{new:?}").contains("PRIVATE"));
    }
}
