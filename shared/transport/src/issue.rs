//! Certificate issuance for the fleet PKI (feature `issue`, which only the master
//! enables): the fleet CA, agent certificates (ServerAuth, the agent's name as a DNS SAN)
//! — from a key made here or from an agent's signing request, whose key never left the
//! agent — master certificates (ClientAuth, the "master role"), and signed, numbered
//! certificate revocation lists. Agents never sign anything.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};

use crate::pem::{parse_certs, Pem};

/// Validity of the fleet CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `not_before` is back-dated by this much (at most a quarter of the lifetime) to
/// tolerate clock skew between machines.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub Duration);

impl Lifetime {
    /// Agent certificates: 30 days, renewed by the master after 20.
    pub const AGENT: Lifetime = Lifetime(Duration::from_secs(30 * 86400));
    /// Master certificates: 90 days (`sloth-master certs renew-master`).
    pub const MASTER: Lifetime = Lifetime(Duration::from_secs(90 * 86400));

    pub fn days(n: u64) -> Lifetime {
        Lifetime(Duration::from_secs(n * 86400))
    }

    /// `30d`, `12h`, `90s`: at least 10 seconds, at most the CA's 10 years.
    pub fn parse(s: &str) -> anyhow::Result<Lifetime> {
        let d = sloth_proto::text::parse_duration(s.trim())
            .map_err(|e| anyhow!("bad lifetime {s:?}: {e} (use e.g. 30d, 12h)"))?;
        if d < Duration::from_secs(10) {
            bail!("lifetime {s:?} is too short (at least 10s)");
        }
        if d > CA_VALIDITY {
            bail!("lifetime {s:?} is longer than the CA's 10 years");
        }
        Ok(Lifetime(d))
    }
}

/// Generates a fleet CA: ECDSA P-256, 10-year validity, `CA:TRUE, pathlen:0`, key usages
/// keyCertSign and cRLSign.
pub fn generate_ca(common_name: &str) -> anyhow::Result<Pem> {
    if common_name.trim().is_empty() {
        bail!("the CA common name must not be empty");
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY)?;
    let cert = params
        .self_signed(&key)
        .context("cannot self-sign the fleet CA certificate")?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues an agent certificate signed by the fleet CA.
///
/// Subject CN=`name`; SANs: DNS `name`, each of `extra_sans` (an IP address if it parses as
/// one, a DNS name otherwise) and URI `sloth://agent/<name>`; extended key usage
/// ServerAuth only, so the certificate cannot be used as a master (client) certificate.
pub fn issue_agent(
    ca: &Pem,
    name: &str,
    extra_sans: &[String],
    lifetime: Lifetime,
) -> anyhow::Result<Pem> {
    let key = new_key()?;
    let cert = agent_params(name, extra_sans, lifetime)?
        .signed_by(&key, &load_issuer(ca)?)
        .with_context(|| format!("cannot issue the agent certificate for {name:?}"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues an agent certificate for `name` (with `extra_sans`, as [`issue_agent`]) to the
/// key of a signing request (DER, PKCS#10) whose signature proves its sender holds that
/// key. Nothing else of the request is used: the names, usages and lifetime are ours.
/// Returns the certificate's PEM.
pub fn sign_agent_request(
    ca: &Pem,
    request_der: &[u8],
    name: &str,
    extra_sans: &[String],
    lifetime: Lifetime,
) -> anyhow::Result<String> {
    let csr = rcgen::CertificateSigningRequestParams::from_der(
        &rustls::pki_types::CertificateSigningRequestDer::from(request_der),
    )
    .map_err(|e| anyhow!("the certificate signing request is not valid: {e}"))?;
    let cert = agent_params(name, extra_sans, lifetime)?
        .signed_by(&csr.public_key, &load_issuer(ca)?)
        .with_context(|| format!("cannot issue the agent certificate for {name:?}"))?;
    Ok(cert.pem())
}

/// Subject CN=`name`; SANs DNS `name`, the extra SANs and URI `sloth://agent/<name>`;
/// ServerAuth only.
fn agent_params(
    name: &str,
    extra_sans: &[String],
    lifetime: Lifetime,
) -> anyhow::Result<CertificateParams> {
    check_agent_name(name).with_context(|| format!("invalid agent name {name:?}"))?;
    let mut sans = vec![SanType::DnsName(ia5(name)?)];
    for san in extra_sans {
        let san = san.trim();
        match san.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                validate_name(san).with_context(|| {
                    format!("invalid extra subject alternative name {san:?} (not an IP address, and not a valid DNS name)")
                })?;
                sans.push(SanType::DnsName(ia5(san)?));
            }
        }
    }
    sans.push(SanType::URI(ia5(&format!("sloth://agent/{name}"))?));
    leaf_params(name, sans, ExtendedKeyUsagePurpose::ServerAuth, lifetime)
}

/// Issues a master certificate signed by the fleet CA.
///
/// Subject CN=`name`; SAN URI `sloth://master/<name>`; extended key usage ClientAuth only
/// (the master role), so the certificate cannot act as an agent (server) certificate.
pub fn issue_master(ca: &Pem, name: &str, lifetime: Lifetime) -> anyhow::Result<Pem> {
    validate_name(name).with_context(|| format!("invalid master name {name:?}"))?;
    let sans = vec![SanType::URI(ia5(&format!("sloth://master/{name}"))?)];
    let key = new_key()?;
    let cert = leaf_params(name, sans, ExtendedKeyUsagePurpose::ClientAuth, lifetime)?
        .signed_by(&key, &load_issuer(ca)?)
        .with_context(|| format!("cannot issue the master certificate for {name:?}"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The serial number's bytes (big-endian, as in the certificate).
    pub serial: Vec<u8>,
    pub at: SystemTime,
}

/// A CRL signed by the CA, numbered `number` (agents take only a higher number than
/// the one they have), listing `revoked`, valid for the CA's lifetime (a fleet's CRL is
/// replaced when something is revoked, not on a schedule). Returns its DER.
pub fn sign_crl(ca: &Pem, number: u64, revoked: &[Revoked]) -> anyhow::Result<Vec<u8>> {
    let issuer = load_issuer(ca)?;
    let now = SystemTime::now();
    let to_time = |t: SystemTime| -> anyhow::Result<_> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs();
        Ok(rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs))
    };
    let params = rcgen::CertificateRevocationListParams {
        this_update: to_time(now)?,
        next_update: to_time(now + CA_VALIDITY)?,
        crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&r.serial),
                    revocation_time: to_time(r.at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| anyhow!("cannot sign the revocation list: {e}"))?;
    Ok(crl.der().to_vec())
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    lifetime: Lifetime,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, lifetime.0)?;
    Ok(params)
}

/// Re-creates the CA issuer from its PEM certificate and key, checking that they belong
/// together and that the certificate is allowed to sign certificates.
fn load_issuer(ca: &Pem) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_key = KeyPair::from_pem(&ca.key)
        .map_err(|e| anyhow!("the CA private key is not a usable PEM private key: {e}"))?;
    let ca_ders = parse_certs(&ca.cert).context("the CA certificate")?;
    let Some(ca_der) = ca_ders.first() else {
        bail!("the CA certificate PEM contains no certificate");
    };
    // The DER of the key's SubjectPublicKeyInfo appears verbatim inside the certificate
    // that certifies it (DER is canonical).
    let spki = ca_key.subject_public_key_info();
    if !ca_der
        .as_ref()
        .windows(spki.len())
        .any(|w| w == spki.as_slice())
    {
        bail!("the CA private key does not belong to the CA certificate");
    }
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key)
        .map_err(|e| anyhow!("cannot use the CA certificate as an issuer: {e}"))?;
    if !issuer.key_usages().is_empty()
        && !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign)
    {
        bail!("the CA certificate is not allowed to sign certificates (no keyCertSign key usage): is it really a CA certificate?");
    }
    Ok(issuer)
}

/// 16 random bytes, positive (rcgen would derive the serial from the key: the same key
/// signed twice would repeat it).
fn random_serial() -> anyhow::Result<rcgen::SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness for a serial number: {e}"))?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow!("cannot generate an ECDSA P-256 key: {e}"))
}

fn ia5(s: &str) -> anyhow::Result<rcgen::string::Ia5String> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|e| anyhow!("{s:?} is not valid in a certificate name (IA5String): {e}"))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW.min(validity / 4));
    params.not_after = epoch + (now + validity);
    Ok(())
}

/// Checks that `name` is usable as an agent/master name and as a TLS server name:
/// letters, digits, '-' and '.', dot-separated labels of 1..=63 characters that neither
/// start nor end with '-', at most 253 characters, not an IP address.
/// The names an agent cannot have: the fleet's own. A certificate named so would be
/// mistaken for the CA's or the master's files, and revoked with them.
pub const RESERVED_NAMES: [&str; 2] = ["ca", "master"];

/// A name an agent certificate may be issued for: a DNS name, in lower case (DNS names
/// compare without case, so `WEB-01` and `web-01` would be one host with two
/// certificates that revoke separately), and not one of [`RESERVED_NAMES`].
pub fn check_agent_name(name: &str) -> anyhow::Result<()> {
    validate_name(name)?;
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        bail!(
            "use lower case ('{}'): names are DNS names, which compare without case",
            name.to_ascii_lowercase()
        );
    }
    if RESERVED_NAMES.contains(&name) {
        bail!("'{name}' is the fleet's own (the CA, the master): choose another name");
    }
    Ok(())
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("the name is empty");
    }
    if name.len() > 253 {
        bail!("the name is longer than 253 characters");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        bail!("the character {bad:?} is not allowed (use letters, digits, '-' and '.')");
    }
    for label in name.split('.') {
        if label.is_empty() {
            bail!("empty label (the name starts or ends with '.', or contains \"..\")");
        }
        if label.len() > 63 {
            bail!("the label {label:?} is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            bail!("the label {label:?} starts or ends with '-'");
        }
    }
    if name.parse::<IpAddr>().is_ok() {
        bail!("an IP address is not a name (give it as an extra SAN instead)");
    }
    rustls::pki_types::DnsName::try_from(name)
        .map_err(|_| anyhow!("not a valid DNS name (e.g. the last label is all digits)"))?;
    Ok(())
}
