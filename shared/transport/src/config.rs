//! The rustls and quinn configuration of master and agents: mutual TLS against the
//! fleet CA, TLS 1.3 only, ALPN [`ALPN`], no 0-RTT, the *ring* provider given
//! explicitly, and the transport parameters both sides share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::crl::Crl;
use crate::pem::{parse_certs, parse_key, Pem};

/// ALPN protocol identifier of the sloth wire protocol, version 1.
pub const ALPN: &[u8] = b"sloth/1";
/// ALPN of an agent waiting to be enrolled (and of the master enrolling it).
pub const ENROLL_ALPN: &[u8] = b"sloth-enroll/1";

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

/// *ring* with the TLS 1.3 suites only, AES-128-GCM first: its SHA-256 key schedule and
/// transcript run on the CPU's SHA extensions where there are some, where the default
/// first choice (AES-256-GCM-SHA384) hashes with SHA-512 in software. On a cold fan-out
/// that is about 3 % of the master's CPU (docs/benchmarks.md). All three are TLS 1.3's
/// own suites; AES-128-GCM is the one every TLS 1.3 peer must support.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
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

/// A TLS server configuration as QUIC's: speaking only `alpn`, never accepting 0-RTT
/// (task requests would be replayable), with the shared `transport` parameters.
fn quic_server(
    mut tls: rustls::ServerConfig,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    // No session tickets: masters never resume (see `quic_client`).
    tls.send_tls13_tickets = 0;
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("TLS configuration not usable for QUIC: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// A TLS client configuration as QUIC's: speaking only `alpn`, never sending 0-RTT,
/// with the shared `transport` parameters.
fn quic_client(
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    // Every connection is a full handshake, so that each one checks the agent's
    // certificate (and its revocation) anew. Agents send no tickets either: storing
    // and sending them was work on both sides for nothing.
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("TLS configuration not usable for QUIC: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// QUIC server configuration of an agent: presents `own` (an agent certificate) and
/// requires a client certificate that chains to the fleet CA and allows ClientAuth (a
/// master certificate; agent certificates are refused). TLS 1.3 only, ALPN [`ALPN`],
/// no 0-RTT.
///
/// With a `crl`, masters it revokes are refused too (end-entity check; the CRL's own
/// expiry is not enforced: a fleet replaces its CRL when it revokes, not on a schedule).
pub fn agent_server_config(
    own: &Pem,
    ca_cert_pem: &str,
    crl: Option<&Crl>,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let roots = fleet_roots(ca_cert_pem)?;
    let (chain, key) = own_identity(own)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = crl {
        builder = builder
            .with_crls([crl.rustls()])
            .only_check_end_entity_revocation();
    }
    let client_verifier =
        Arc::new(NamingRefusals(builder.build().map_err(|e| {
            anyhow!("cannot build the master-certificate verifier: {e}")
        })?));
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow!("the agent certificate and key are not usable: {e}"))?;
    quic_server(tls, ALPN, transport)
}

/// QUIC client configuration of the master: verifies the agent certificate against the
/// fleet CA only (no system roots), with the dialed server name (the inventory host name)
/// matched against the certificate's SANs; authenticates with `own` (a master
/// certificate). TLS 1.3 only, ALPN [`ALPN`], no 0-RTT.
///
/// With a `crl`, agents it revokes are refused.
pub fn master_client_config(
    own: &Pem,
    ca_cert_pem: &str,
    crl: Option<&Crl>,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let roots = fleet_roots(ca_cert_pem)?;
    let (chain, key) = own_identity(own)?;
    let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = crl {
        builder = builder
            .with_crls([crl.rustls()])
            .only_check_end_entity_revocation();
    }
    let verifier = builder
        .build()
        .map_err(|e| anyhow!("cannot build the agent-certificate verifier: {e}"))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("the master certificate and key are not usable: {e}"))?;
    quic_client(tls, ALPN, transport)
}

/// QUIC server configuration of an agent waiting to be enrolled: presents its
/// throw-away self-signed `identity`, speaks only [`ENROLL_ALPN`], and admits only a
/// master whose certificate chains to the CA its join token pins (`pinned_ca`, a
/// `sha256:` fingerprint), shown in the handshake; with a `crl` of that CA (an agent
/// enrolling again), not a revoked one. Anyone else fails the handshake, before any
/// stream: a stranger cannot hold the agent's attention.
pub fn enrollment_server_config(
    identity: &Pem,
    pinned_ca: &str,
    crl: Option<&Crl>,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let (chain, key) = own_identity(identity)?;
    let verifier = Arc::new(PinnedCa {
        pin: pinned_ca.to_string(),
        crl: crl.cloned(),
        provider: provider.clone(),
    });
    let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow!("the enrollment certificate is not usable: {e}"))?;
    quic_server(tls, ENROLL_ALPN, transport)
}

/// QUIC client configuration of a master enrolling an agent: presents its master
/// certificate followed by the fleet CA certificate (the agent has only the CA's
/// fingerprint, from its token), speaks only [`ENROLL_ALPN`], and takes the agent's
/// self-signed certificate as is: the agent proves itself with its token, and the
/// master shows it nothing secret.
pub fn enrollment_client_config(
    own: &Pem,
    ca_cert_pem: &str,
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let (mut chain, key) = own_identity(own)?;
    chain.extend(parse_certs(ca_cert_pem).context("the fleet CA certificate")?);
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("TLS 1.3 is not available: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyHolder(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("the master certificate and key are not usable: {e}"))?;
    quic_client(tls, ENROLL_ALPN, transport)
}

/// The agent's check of an enrolling master: among the certificates it presented is
/// the CA whose fingerprint the token pins, and its own certificate is a master
/// certificate (ClientAuth) that this CA signed, valid now, not revoked by `crl`.
/// Returns the CA certificate (DER).
pub fn verify_enrolling_master(
    presented: &[CertificateDer<'_>],
    pinned_ca: &str,
    crl: Option<&Crl>,
) -> Result<CertificateDer<'static>, String> {
    let (ee, rest) = presented
        .split_first()
        .ok_or("the master presented no certificate")?;
    let ca = rest
        .iter()
        .find(|c| crate::cert_info::fingerprint(c.as_ref()) == pinned_ca)
        .ok_or_else(|| {
            let shown = rest
                .last()
                .map(|c| crate::cert_info::fingerprint(c.as_ref()))
                .unwrap_or_else(|| "none".into());
            format!(
                "this master's CA ({shown}) is not the one the join token pins ({pinned_ca}): a master of another fleet, or a token of another fleet"
            )
        })?
        .clone()
        .into_owned();
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("the pinned CA certificate is not usable: {e}"))?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = crl {
        builder = builder
            .with_crls([crl.rustls()])
            .only_check_end_entity_revocation();
    }
    let verifier = builder
        .build()
        .map_err(|e| format!("cannot build the master-certificate verifier: {e}"))?;
    verifier
        .verify_client_cert(ee, &[], rustls::pki_types::UnixTime::now())
        .map_err(|e| {
            format!("the master's certificate does not verify against the pinned CA: {e}")
        })?;
    Ok(ca)
}

/// The enrolling agent's client-certificate verifier: [`verify_enrolling_master`] in
/// the handshake. A refusal is logged with its reason and sent as `access_denied`.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    crl: Option<Crl>,
    provider: Arc<CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for PinnedCa {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let mut presented = vec![end_entity.clone()];
        presented.extend(intermediates.iter().cloned());
        match verify_enrolling_master(&presented, &self.pin, self.crl.as_ref()) {
            Ok(_) => Ok(rustls::server::danger::ClientCertVerified::assertion()),
            Err(why) => {
                tracing::warn!("refused an enrolling master: {why}");
                Err(rustls::CertificateError::ApplicationVerificationFailure.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The agent's check of the certificate it was issued: signed by the fleet CA, for its
/// `name`, an agent certificate (ServerAuth), valid now.
pub fn verify_issued_agent_cert(cert_pem: &str, ca_pem: &str, name: &str) -> Result<(), String> {
    let certs = parse_certs(cert_pem).map_err(|e| format!("{e:#}"))?;
    let ee = certs.first().ok_or("no certificate was issued")?;
    let roots = fleet_roots(ca_pem).map_err(|e| format!("{e:#}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("cannot build the agent-certificate verifier: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} is not a valid name: {e}"))?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        ee,
        &[],
        &server_name,
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .map(|_| ())
    .map_err(|e| format!("the issued certificate does not verify: {e}"))
}

/// The agent's master-certificate verifier, which also logs which certificate it
/// refused and why (name, serial, expiry): the TLS alert the master gets carries only
/// the reason's kind.
#[derive(Debug)]
struct NamingRefusals(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for NamingRefusals {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| match crate::CertInfo::of(end_entity) {
                Ok(info) => tracing::warn!(
                    "refused the master certificate {}, valid until {}: {e}",
                    info.describe(),
                    info.expiry()
                ),
                Err(_) => tracing::warn!("refused an unreadable master certificate: {e}"),
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The enrolling master's verifier of the agent's throw-away certificate: taken as is
/// (see [`enrollment_client_config`]), but the handshake signature must verify, so the
/// agent holds that certificate's key.
#[derive(Debug)]
struct KeyHolder(Arc<CryptoProvider>);

impl KeyHolder {
    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl rustls::client::danger::ServerCertVerifier for KeyHolder {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The keep-alive interval actually used: `keep_alive` should be well under
/// `idle_timeout`; if it is not, it is lowered to half the idle timeout (with a
/// warning). A zero `keep_alive` disables keep-alives; a zero `idle_timeout` has no
/// timeout to stay under.
pub fn effective_keep_alive(keep_alive: Duration, idle_timeout: Duration) -> Duration {
    if !idle_timeout.is_zero() && !keep_alive.is_zero() && keep_alive >= idle_timeout {
        let lowered = idle_timeout / 2;
        tracing::warn!(
            "keep-alive interval {keep_alive:?} is not below the idle timeout {idle_timeout:?}; using {lowered:?}"
        );
        return lowered;
    }
    keep_alive
}

/// Transport parameters shared by master and agents, with the keep-alive of
/// [`effective_keep_alive`]. A zero `idle_timeout` disables the idle timeout.
pub fn transport_config(
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Arc<quinn::TransportConfig> {
    let keep_alive = effective_keep_alive(keep_alive, idle_timeout);
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

/// The smallest UDP payload every QUIC path carries (RFC 9000, section 14).
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// For connections that carry only small frames (`exec`, `health`): no path-MTU
/// probes from either side. Ours stop in `transport`. The peer's stop because it may
/// not send datagrams larger than the `max_udp_payload_size` advertised from
/// `endpoint` (here the QUIC minimum), and quinn's discovery never probes past it. On a
/// fresh connection the probes and their acknowledgements are about half of the
/// datagrams; full-size packets pay off only for bulk data (artifacts).
pub fn without_mtu_probes(
    transport: &mut quinn::TransportConfig,
    endpoint: &mut quinn::EndpointConfig,
) {
    transport.mtu_discovery_config(None);
    // In range by definition (quinn accepts 1200..=65527).
    let _ = endpoint.max_udp_payload_size(MIN_UDP_PAYLOAD);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

    #[test]
    fn without_mtu_probes_advertises_the_quic_minimum() {
        let mut t = quinn::TransportConfig::default();
        let mut e = quinn::EndpointConfig::default();
        without_mtu_probes(&mut t, &mut e);
        assert_eq!(e.get_max_udp_payload_size(), u64::from(MIN_UDP_PAYLOAD));
    }

    #[test]
    fn only_tls13_suites_with_aes_128_gcm_first() {
        let p = provider();
        let suites: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
        assert!(p
            .cipher_suites
            .iter()
            .all(|s| s.version() == &rustls::version::TLS13));
    }
}
