//! Certificate revocation lists as master and agents check them: a CRL counts only if
//! the fleet CA signed it, and a newer one (a higher CRL number) replaces an older one,
//! never the reverse. The master hands its CRL to every agent it connects to; from
//! then on the agent refuses the revoked masters (rustls checks the end-entity
//! certificate against it in the handshake).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateRevocationListDer;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::cert_info::{hex, strip_zeros};

/// A CRL that the fleet CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    /// Its CRL number: each new CRL of the fleet has a higher one.
    pub number: u64,
    /// The revoked serial numbers, lower-case hex.
    pub revoked: BTreeSet<String>,
    pub this_update: SystemTime,
}

/// The largest CRL taken from the network (a fleet's CRL lists ~40 bytes per revoked
/// certificate).
pub const MAX_CRL_BYTES: usize = 4 << 20;

impl Crl {
    /// Parse `der` and check that the CA of `ca_pem` signed it; anything else (not a
    /// CRL, another issuer, a bad signature, no CRL number) is an error saying so.
    pub fn verified(der: &[u8], ca_pem: &str) -> Result<Crl, String> {
        if der.len() > MAX_CRL_BYTES {
            return Err(format!(
                "the revocation list is {} bytes (at most {MAX_CRL_BYTES})",
                der.len()
            ));
        }
        let ca_der = crate::parse_certs(ca_pem)
            .map_err(|e| format!("the CA certificate: {e:#}"))?
            .into_iter()
            .next()
            .ok_or("no CA certificate")?;
        let (_, ca) = X509Certificate::from_der(ca_der.as_ref())
            .map_err(|e| format!("the CA certificate cannot be parsed: {e}"))?;
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| format!("not a certificate revocation list: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the revocation list".into());
        }
        if crl.issuer() != ca.subject() {
            return Err(format!(
                "the revocation list is issued by '{}', not by this fleet's CA '{}'",
                crl.issuer(),
                ca.subject()
            ));
        }
        crl.verify_signature(ca.public_key())
            .map_err(|e| format!("the revocation list is not signed by this fleet's CA ({e})"))?;
        let number = crl
            .crl_number()
            .ok_or("the revocation list has no CRL number")?;
        let number = u64::try_from(number)
            .map_err(|_| "the revocation list's CRL number does not fit 64 bits".to_string())?;
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| hex(strip_zeros(r.raw_serial())))
            .collect();
        let secs = crl.last_update().timestamp().max(0) as u64;
        Ok(Crl {
            der: der.to_vec(),
            number,
            revoked,
            this_update: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// For rustls' verifiers.
    pub fn rustls(&self) -> CertificateRevocationListDer<'static> {
        CertificateRevocationListDer::from(self.der.clone())
    }

    /// Whether the certificate with this serial (hex, as [`crate::CertInfo`] gives it)
    /// is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }

    /// Whether `offered` should replace `self`: only a higher number does.
    pub fn is_replaced_by(&self, offered: &Crl) -> bool {
        offered.number > self.number
    }
}

#[cfg(all(test, feature = "issue"))]
mod tests {
    use super::*;
    use crate::issue::{sign_crl, Lifetime, Revoked};
    use crate::CertInfo;

    #[test]
    fn a_crl_counts_only_when_the_fleet_ca_signed_it() {
        let ca = crate::generate_ca("fleet").unwrap();
        let master = crate::issue_master(&ca, "ops", Lifetime::MASTER).unwrap();
        let serial = CertInfo::of_pem(&master.cert).unwrap().serial;
        let der = sign_crl(
            &ca,
            7,
            &[Revoked {
                serial: crate::cert_info::serial_bytes(&serial).unwrap(),
                at: SystemTime::now(),
            }],
        )
        .unwrap();
        let crl = Crl::verified(&der, &ca.cert).unwrap();
        assert_eq!(crl.number, 7);
        assert!(crl.is_revoked(&serial), "{:?} {serial}", crl.revoked);
        assert!(!crl.is_revoked("01"));

        let newer = Crl::verified(&sign_crl(&ca, 8, &[]).unwrap(), &ca.cert).unwrap();
        assert!(crl.is_replaced_by(&newer));
        assert!(
            !newer.is_replaced_by(&crl),
            "an older CRL never replaces a newer one"
        );
        assert!(!crl.is_replaced_by(&crl.clone()));

        // Another CA's list (same name, other key), garbage, an empty input.
        let other = crate::generate_ca("fleet").unwrap();
        let forged = sign_crl(&other, 99, &[]).unwrap();
        let e = Crl::verified(&forged, &ca.cert).unwrap_err();
        assert!(e.contains("not signed by this fleet's CA"), "{e}");
        let named = crate::generate_ca("another fleet").unwrap();
        let e = Crl::verified(&sign_crl(&named, 1, &[]).unwrap(), &ca.cert).unwrap_err();
        assert!(e.contains("not by this fleet's CA"), "{e}");
        assert!(Crl::verified(b"garbage", &ca.cert).is_err());
        assert!(Crl::verified(&[], &ca.cert).is_err());
        let mut flipped = der.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 0x40;
        assert!(Crl::verified(&flipped, &ca.cert).is_err());
    }
}
