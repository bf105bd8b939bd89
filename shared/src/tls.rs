//! Fleet PKI and the QUIC/TLS configuration of master and agents.
//!
//! One CA per fleet (generated with rcgen). Agent certificates carry the agent's name as a
//! DNS SAN and the extended key usage *ServerAuth only*; master certificates carry the
//! extended key usage *ClientAuth only* (the "master role"). The agent requires a client
//! certificate that chains to the fleet CA and allows ClientAuth, so an agent certificate
//! (stolen from another agent) cannot be used to command the fleet, and a master
//! certificate cannot impersonate an agent. The master verifies the agent certificate
//! against the fleet CA only, with the inventory name it dialed as the TLS server name.
//!
//! Everything here uses the *ring* provider explicitly (`builder_with_provider`), TLS 1.3
//! only, ALPN [`ALPN`] on both sides and no 0-RTT, so nothing depends on a process-wide
//! default `CryptoProvider`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN protocol identifier of the sloth wire protocol, version 1.
pub const ALPN: &[u8] = b"sloth/1";

/// Validity of the fleet CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of agent and master certificates (there is no renewal tooling yet; the CA's
/// own expiry bounds the useful life of every certificate anyway).
const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `not_before` is back-dated by this much to tolerate clock skew between machines.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Initial RTT estimate: quinn's default (333 ms) makes a lost handshake packet cost ~1 s.
const INITIAL_RTT: Duration = Duration::from_millis(60);
/// Concurrent bidirectional streams (one per task plus the control stream).
const MAX_CONCURRENT_BIDI_STREAMS: u32 = 4096;
/// Per-stream receive window.
const STREAM_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window (bounds the memory one peer can make us buffer).
const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;
/// Per-connection send window.
const SEND_WINDOW: u64 = 32 * 1024 * 1024;

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// PEM `CERTIFICATE` block(s); the first is the end-entity certificate.
    pub cert: String,
    /// PEM private key (PKCS#8 `PRIVATE KEY` as written by this module).
    pub key: String,
}

impl fmt::Debug for Pem {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Certificate generation
// ---------------------------------------------------------------------------------------

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
pub fn issue_agent(ca: &Pem, name: &str, extra_sans: &[String]) -> anyhow::Result<Pem> {
    validate_name(name).with_context(|| format!("invalid agent name {name:?}"))?;
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
    issue_leaf(ca, name, sans, ExtendedKeyUsagePurpose::ServerAuth)
        .with_context(|| format!("cannot issue the agent certificate for {name:?}"))
}

/// Issues a master certificate signed by the fleet CA.
///
/// Subject CN=`name`; SAN URI `sloth://master/<name>`; extended key usage ClientAuth only
/// (the master role), so the certificate cannot act as an agent (server) certificate.
pub fn issue_master(ca: &Pem, name: &str) -> anyhow::Result<Pem> {
    validate_name(name).with_context(|| format!("invalid master name {name:?}"))?;
    let sans = vec![SanType::URI(ia5(&format!("sloth://master/{name}"))?)];
    issue_leaf(ca, name, sans, ExtendedKeyUsagePurpose::ClientAuth)
        .with_context(|| format!("cannot issue the master certificate for {name:?}"))
}

fn issue_leaf(
    ca: &Pem,
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> anyhow::Result<Pem> {
    let issuer = load_issuer(ca)?;
    let key = new_key()?;
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
    set_validity(&mut params, LEAF_VALIDITY)?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate with the fleet CA")?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
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
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW);
    params.not_after = epoch + (now + validity);
    Ok(())
}

/// Checks that `name` is usable as an agent/master name and as a TLS server name:
/// letters, digits, '-' and '.', dot-separated labels of 1..=63 characters that neither
/// start nor end with '-', at most 253 characters, not an IP address.
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

// ---------------------------------------------------------------------------------------
// PEM files
// ---------------------------------------------------------------------------------------

/// Writes `<dir>/<stem>.crt` (mode 0644) and `<dir>/<stem>.key` (mode 0600), creating `dir`
/// (mode 0700) if needed. Each file is written to a fresh temporary file created with its
/// final mode and then renamed into place, so the key is never readable by others, not
/// even briefly, and an existing file is replaced atomically.
pub fn write_pem_files(dir: &Path, stem: &str, pem: &Pem) -> anyhow::Result<(PathBuf, PathBuf)> {
    if stem.is_empty() || stem.contains('/') || stem.starts_with('.') {
        bail!("invalid file name stem {stem:?}");
    }
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file_atomic(&key_path, pem.key.as_bytes(), 0o600)?;
    write_file_atomic(&cert_path, pem.cert.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("invalid file path {}", path.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from `mode`; it can never have added any.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// Reads a certificate and its private key from PEM files. Errors name the file and the
/// problem (missing file, not PEM, no certificate / no private key in it).
pub fn read_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Pem> {
    let cert_text = read_text(cert, "certificate")?;
    match parse_certs(&cert_text) {
        Ok(certs) if !certs.is_empty() => {}
        Ok(_) => bail!(
            "{}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)",
            cert.display()
        ),
        Err(e) => bail!("{}: {e:#}", cert.display()),
    }
    let key_text = read_text(key, "private key")?;
    match parse_key(&key_text) {
        Ok(_) => {}
        Err(e) => bail!("{}: {e:#}", key.display()),
    }
    if let Ok(meta) = fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "private key file {} is accessible by group/others (mode {:o}); run chmod 600 on it",
                key.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    Ok(Pem {
        cert: cert_text,
        key: key_text,
    })
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
            anyhow!(
                "{}: not a PEM {what} file (binary content; DER is not supported, convert it to PEM)",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{}: {what} file not found", path.display())
        }
        Err(e) => bail!("{}: cannot read the {what} file: {e}", path.display()),
    }
}

/// Parses all `CERTIFICATE` blocks of a PEM string.
fn parse_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("not valid PEM: {e}"))
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM string.
fn parse_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => {
            bail!("no private key found (expected a PEM \"BEGIN PRIVATE KEY\" block)")
        }
        Err(e) => bail!("not valid PEM: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// rustls / quinn configuration
// ---------------------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn fleet_roots(ca_cert_pem: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let certs = parse_certs(ca_cert_pem).context("the fleet CA certificate")?;
    if certs.is_empty() {
        bail!("the fleet CA certificate PEM contains no certificate");
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            anyhow!("the fleet CA certificate is not usable as a trust anchor: {e}")
        })?;
    }
    Ok(Arc::new(roots))
}

fn own_identity(
    own: &Pem,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = parse_certs(&own.cert).context("our certificate")?;
    if chain.is_empty() {
        bail!("our certificate PEM contains no certificate");
    }
    let key = parse_key(&own.key).context("our private key")?;
    Ok((chain, key))
}

/// QUIC server configuration of an agent: presents `own` (an agent certificate) and
/// requires a client certificate that chains to the fleet CA and allows ClientAuth (a
/// master certificate; agent certificates are refused). TLS 1.3 only, ALPN [`ALPN`],
/// no 0-RTT.
pub fn agent_server_config(
    own: &Pem,
    ca_cert_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let roots = fleet_roots(ca_cert_pem)?;
    let (chain, key) = own_identity(own)?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| anyhow!("cannot build the master-certificate verifier: {e}"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow!("the agent certificate and key are not usable: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Never 0-RTT: task requests would be replayable.
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("TLS configuration not usable for QUIC: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// QUIC client configuration of the master: verifies the agent certificate against the
/// fleet CA only (no system roots), with the dialed server name (the inventory host name)
/// matched against the certificate's SANs; authenticates with `own` (a master
/// certificate). TLS 1.3 only, ALPN [`ALPN`], no 0-RTT.
pub fn master_client_config(
    own: &Pem,
    ca_cert_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let roots = fleet_roots(ca_cert_pem)?;
    let (chain, key) = own_identity(own)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("the master certificate and key are not usable: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("TLS configuration not usable for QUIC: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Transport parameters shared by master and agents.
///
/// `keep_alive` should be well under `idle_timeout`; if it is not, it is lowered to half
/// the idle timeout (with a warning). A zero `keep_alive` disables keep-alives, a zero
/// `idle_timeout` disables the idle timeout.
pub fn transport_config(
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Arc<quinn::TransportConfig> {
    let mut keep_alive = keep_alive;
    if !idle_timeout.is_zero() && !keep_alive.is_zero() && keep_alive >= idle_timeout {
        let lowered = idle_timeout / 2;
        tracing::warn!(
            "keep-alive interval {keep_alive:?} is not below the idle timeout {idle_timeout:?}; using {lowered:?}"
        );
        keep_alive = lowered;
    }
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval((!keep_alive.is_zero()).then_some(keep_alive));
    t.max_idle_timeout(if idle_timeout.is_zero() {
        None
    } else {
        Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX)),
        )
    });
    t.initial_rtt(INITIAL_RTT);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    Arc::new(t)
}

// ---------------------------------------------------------------------------------------
// Human explanations of connection failures
// ---------------------------------------------------------------------------------------

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
        format!("the {peer}'s certificate has expired (or the clocks disagree)")
    } else if has("NotValidYet") || has("not valid yet") {
        format!("the {peer}'s certificate is not valid yet (clock skew?)")
    } else if has("Revoked") {
        format!("the {peer}'s certificate has been revoked")
    } else if has("BadSignature") || has("BadEncoding") {
        format!("the {peer}'s certificate does not verify against this fleet's CA (wrong CA, or a damaged certificate?)")
    } else if has("peer sent no certificates") || has("NoCertificatesPresented") {
        format!("the {peer} presented no certificate")
    } else if has("NoApplicationProtocol") || alert == ALERT_NO_APPLICATION_PROTOCOL {
        format!(
            "the {peer} does not speak {} (ALPN mismatch: not a sloth {peer}, or an incompatible version?)",
            String::from_utf8_lossy(ALPN)
        )
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
        ALERT_CERTIFICATE_EXPIRED => format!(
            "the {peer} refused our certificate as expired or not yet valid (or the clocks disagree)"
        ),
        ALERT_CERTIFICATE_REVOKED => {
            format!("the {peer} refused our certificate as revoked")
        }
        ALERT_CERTIFICATE_REQUIRED => {
            format!("the {peer} requires a certificate and we sent none")
        }
        // rustls answers a certificate whose signature does not verify against the
        // trusted CA (same CA name, other key) with decrypt_error too.
        ALERT_DECRYPT_ERROR => format!(
            "the {peer} refused our certificate: its signature does not verify against the CA the {peer} trusts (wrong CA? {peer} of another fleet? or certificate and key do not match)"
        ),
        ALERT_NO_APPLICATION_PROTOCOL => format!(
            "the {peer} does not speak {} (ALPN mismatch: not a sloth {peer}, or an incompatible version?)",
            String::from_utf8_lossy(ALPN)
        ),
        ALERT_PROTOCOL_VERSION | ALERT_HANDSHAKE_FAILURE => format!(
            "the {peer} could not agree on TLS parameters with us ({})",
            alert_name(alert)
        ),
        other => format!("the {peer} aborted the TLS handshake ({})", alert_name(other)),
    }
}

fn alert_name(alert: u8) -> String {
    format!("TLS alert {:?}", rustls::AlertDescription::from(alert))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn fleet() -> (Pem, Pem, Pem) {
        let ca = generate_ca("test fleet CA").unwrap();
        let agent = issue_agent(&ca, "web-01", &["127.0.0.1".to_string()]).unwrap();
        let master = issue_master(&ca, "master").unwrap();
        (ca, agent, master)
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        transport_config(Duration::from_secs(2), Duration::from_secs(10))
    }

    #[test]
    fn tls_generate_and_build_configs() {
        let (ca, agent, master) = fleet();
        assert!(ca.cert.contains("BEGIN CERTIFICATE"));
        assert!(ca.key.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{agent:?}").contains("PRIVATE KEY"));
        agent_server_config(&agent, &ca.cert, transport()).unwrap();
        master_client_config(&master, &ca.cert, transport()).unwrap();
        // The SAN URIs are in the certificates (IA5 strings appear verbatim in the DER).
        let agent_der = parse_certs(&agent.cert).unwrap().remove(0);
        let master_der = parse_certs(&master.cert).unwrap().remove(0);
        let contains = |der: &CertificateDer<'_>, s: &str| {
            der.as_ref().windows(s.len()).any(|w| w == s.as_bytes())
        };
        assert!(contains(&agent_der, "sloth://agent/web-01"));
        assert!(contains(&master_der, "sloth://master/master"));
    }

    #[test]
    fn tls_invalid_names_are_refused() {
        let ca = generate_ca("test fleet CA").unwrap();
        for bad in [
            "", "web 01", "web_01", "-web", "web-", "a..b", ".web", "web.", "10.0.0.1", "wéb",
        ] {
            let err = issue_agent(&ca, bad, &[]).unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid agent name"),
                "{bad:?}: {err:#}"
            );
        }
        let err = issue_agent(&ca, "web-01", &["bad name".to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("bad name"), "{err:#}");
        assert!(issue_master(&ca, "bad/name").is_err());
        // Extra SANs: IPv4, IPv6 and DNS names are accepted.
        issue_agent(
            &ca,
            "db-1.example.org",
            &["10.1.2.3".into(), "::1".into(), "db.internal".into()],
        )
        .unwrap();
    }

    #[test]
    fn tls_mismatched_ca_key_is_refused() {
        let ca1 = generate_ca("one").unwrap();
        let ca2 = generate_ca("two").unwrap();
        let franken = Pem {
            cert: ca1.cert.clone(),
            key: ca2.key.clone(),
        };
        let err = issue_agent(&franken, "web-01", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
        // A leaf certificate is not a CA.
        let agent = issue_agent(&ca1, "web-01", &[]).unwrap();
        let err = issue_agent(&agent, "web-02", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("not allowed to sign"),
            "{err:#}"
        );
        // Own certificate and key that do not match.
        let other = issue_agent(&ca1, "web-02", &[]).unwrap();
        let mixed = Pem {
            cert: agent.cert.clone(),
            key: other.key,
        };
        let err = agent_server_config(&mixed, &ca1.cert, transport()).unwrap_err();
        assert!(format!("{err:#}").contains("not usable"), "{err:#}");
    }

    #[test]
    fn tls_pem_files_round_trip_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sub/dir");
        let (ca, agent, _) = fleet();
        let (crt, key) = write_pem_files(&dir, "web-01", &agent).unwrap();
        assert_eq!(crt, dir.join("web-01.crt"));
        assert_eq!(key, dir.join("web-01.key"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&crt), 0o644);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(read_pem_files(&crt, &key).unwrap(), agent);

        // Overwriting an existing, too-open key file leaves it 0600.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_pem_files(&dir, "web-01", &ca).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(read_pem_files(&crt, &key).unwrap(), ca);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

        let missing = dir.join("nope.crt");
        let err = read_pem_files(&missing, &key).unwrap_err().to_string();
        assert!(
            err.contains("nope.crt") && err.contains("not found"),
            "{err}"
        );
        let garbage = dir.join("garbage.crt");
        fs::write(&garbage, "hello").unwrap();
        let err = read_pem_files(&garbage, &key).unwrap_err().to_string();
        assert!(
            err.contains("garbage.crt") && err.contains("no certificate"),
            "{err}"
        );
        // A certificate where the key should be.
        let err = read_pem_files(&crt, &crt).unwrap_err().to_string();
        assert!(
            err.contains("web-01.crt") && err.contains("no private key"),
            "{err}"
        );
        let binary = dir.join("binary.key");
        fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = read_pem_files(&crt, &binary).unwrap_err().to_string();
        assert!(
            err.contains("binary.key") && err.contains("not a PEM"),
            "{err}"
        );
    }

    #[test]
    fn tls_transport_config_clamps_keep_alive() {
        // Must not panic, whatever the inputs.
        transport_config(Duration::from_secs(30), Duration::from_secs(10));
        transport_config(Duration::ZERO, Duration::ZERO);
        transport_config(Duration::from_secs(1), Duration::MAX);
    }

    struct Agent {
        addr: SocketAddr,
        endpoint: quinn::Endpoint,
        task: tokio::task::JoinHandle<Vec<String>>,
    }

    /// An agent endpoint on 127.0.0.1 that echoes one bidi stream per connection and
    /// records how each incoming connection ended.
    fn start_agent(agent: &Pem, ca_cert: &str) -> Agent {
        let config = agent_server_config(agent, ca_cert, transport()).unwrap();
        let endpoint =
            quinn::Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while let Some(incoming) = ep.accept().await {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        outcomes.push(explain_incoming_error("master", &e));
                        continue;
                    }
                };
                match conn.accept_bi().await {
                    Ok((mut send, mut recv)) => {
                        let data = recv.read_to_end(1024).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                        let _ = send.stopped().await;
                        outcomes.push("ok".to_string());
                    }
                    Err(e) => outcomes.push(explain_incoming_error("master", &e)),
                }
            }
            outcomes
        });
        Agent {
            addr,
            endpoint,
            task,
        }
    }

    fn client_endpoint(own: &Pem, ca_cert: &str) -> quinn::Endpoint {
        let mut ep = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        ep.set_default_client_config(master_client_config(own, ca_cert, transport()).unwrap());
        ep
    }

    /// Dials `server_name` at `addr`, exchanges one message on a bidi stream, and returns
    /// the explanation of the failure, if any.
    async fn exchange(
        ep: &quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Vec<u8>, String> {
        let connecting = ep
            .connect(addr, server_name)
            .map_err(|e| explain_connect_error(server_name, &e))?;
        let conn = connecting
            .await
            .map_err(|e| explain_connection_error(server_name, &e))?;
        let lost = |e: quinn::ConnectionError| explain_connection_error(server_name, &e);
        let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
        send.write_all(b"hello agent").await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => lost(e),
            other => other.to_string(),
        })?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(1024).await.map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e)) => lost(e),
            other => other.to_string(),
        })?;
        conn.close(0u32.into(), b"done");
        Ok(reply)
    }

    async fn stop(agent: Agent, clients: &[&quinn::Endpoint]) -> Vec<String> {
        for c in clients {
            c.wait_idle().await;
        }
        agent.endpoint.close(0u32.into(), b"bye");
        agent.task.await.unwrap()
    }

    #[tokio::test]
    async fn tls_loopback_correct_master_exchanges_bytes() {
        let (ca, agent, master) = fleet();
        let a = start_agent(&agent, &ca.cert);
        let ep = client_endpoint(&master, &ca.cert);
        let reply = exchange(&ep, a.addr, "web-01").await.unwrap();
        assert_eq!(reply, b"hello agent");
        let outcomes = stop(a, &[&ep]).await;
        assert_eq!(outcomes, vec!["ok".to_string()]);
    }

    #[tokio::test]
    async fn tls_loopback_master_of_another_ca_is_refused() {
        let (ca, agent, _) = fleet();
        let other_ca = generate_ca("another fleet").unwrap();
        let other_master = issue_master(&other_ca, "master").unwrap();
        let a = start_agent(&agent, &ca.cert);
        let ep = client_endpoint(&other_master, &other_ca.cert);
        let err = exchange(&ep, a.addr, "web-01").await.unwrap_err();
        println!("{err}");
        assert!(err.starts_with("web-01: "), "{err}");
        assert!(err.contains("not signed by this fleet's CA"), "{err}");

        // Same wrong master, but trusting the right CA: now the agent refuses it.
        let ep2 = client_endpoint(&other_master, &ca.cert);
        let err = exchange(&ep2, a.addr, "web-01").await.unwrap_err();
        println!("{err}");
        assert!(err.contains("the agent refused our certificate"), "{err}");
        assert!(err.contains("CA"), "{err}");
        let outcomes = stop(a, &[&ep, &ep2]).await;
        println!("{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| o.contains("not signed by this fleet's CA")),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn tls_loopback_agent_cert_as_master_is_refused() {
        let (ca, agent, _) = fleet();
        let thief = issue_agent(&ca, "web-07", &[]).unwrap();
        let a = start_agent(&agent, &ca.cert);
        // The client side accepts any usable cert/key; the agent must refuse it.
        let ep = client_endpoint(&thief, &ca.cert);
        let err = exchange(&ep, a.addr, "web-01").await.unwrap_err();
        println!("{err}");
        assert!(
            err.starts_with("web-01: the agent refused our certificate"),
            "{err}"
        );
        assert!(err.contains("not a master certificate"), "{err}");
        let outcomes = stop(a, &[&ep]).await;
        println!("{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| o.contains("not a master certificate")),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn tls_loopback_wrong_name_is_refused() {
        let (ca, agent, master) = fleet();
        let a = start_agent(&agent, &ca.cert);
        let ep = client_endpoint(&master, &ca.cert);
        let err = exchange(&ep, a.addr, "web-02").await.unwrap_err();
        println!("{err}");
        assert_eq!(
            err,
            "web-02: TLS: the agent's certificate is for another name \
             (expected web-02; it is for web-01, 127.0.0.1)"
        );
        stop(a, &[&ep]).await;
    }

    #[tokio::test]
    async fn tls_loopback_master_cert_as_agent_is_refused() {
        let (ca, _, master) = fleet();
        // A master certificate (ClientAuth only) cannot serve as an agent certificate.
        let a = start_agent(&master, &ca.cert);
        let ep = client_endpoint(&master, &ca.cert);
        let err = exchange(&ep, a.addr, "master").await.unwrap_err();
        println!("{err}");
        assert!(err.contains("not an agent certificate"), "{err}");
        stop(a, &[&ep]).await;
    }

    #[test]
    fn tls_explanations_of_simple_errors() {
        use quinn::ConnectionError as E;
        assert_eq!(
            explain_connection_error("web-01", &E::TimedOut),
            "web-01: timed out (no answer)"
        );
        assert!(
            explain_connection_error("web-01", &E::Reset).starts_with("web-01: connection lost: ")
        );
        let e = quinn::ConnectError::InvalidServerName("bad name".into());
        assert!(explain_connect_error("bad name", &e).contains("not a valid TLS server name"));
    }
}
