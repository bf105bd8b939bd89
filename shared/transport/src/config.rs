//! The rustls and quinn configuration of master and agents: mutual TLS against the
//! fleet CA, TLS 1.3 only, ALPN [`ALPN`], no 0-RTT, the *ring* provider given
//! explicitly, and the transport parameters both sides share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::pem::{parse_certs, parse_key, Pem};

/// ALPN protocol identifier of the sloth wire protocol, version 1.
pub const ALPN: &[u8] = b"sloth/1";

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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

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
