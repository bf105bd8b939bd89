//! The QUIC transport and the PKI of master and agents: the fleet's TLS configuration,
//! enrollment's included ([`config`]), certificates as PEM files ([`pem`]), what a
//! certificate says about its holder ([`cert_info`]), revocation lists ([`crl`]), join
//! tokens ([`token`]), the keys agents make for themselves ([`keys`]), plain-words
//! explanations of connection failures ([`explain`]), the async framing of protocol
//! messages on QUIC streams ([`wire`]), the async runtime and shutdown signals of both
//! processes ([`process`]), and, behind the `issue` feature that only the master
//! enables, certificate issuance and CRL signing ([`issue`]).
//!
//! One CA per fleet. Agent certificates carry the agent's name as a DNS SAN and the
//! extended key usage *ServerAuth only*; master certificates carry *ClientAuth only*
//! (the "master role"). The agent requires a client certificate that chains to the
//! fleet CA and allows ClientAuth, so an agent certificate (stolen from another agent)
//! cannot command the fleet, and a master certificate cannot impersonate an agent. The
//! master verifies the agent certificate against the fleet CA only, with the inventory
//! name it dialed as the TLS server name. Both sides refuse what the fleet's CRL revokes.

pub mod cert_info;
pub mod config;
pub mod crl;
pub mod explain;
#[cfg(feature = "issue")]
pub mod issue;
pub mod keys;
pub mod pem;
pub mod process;
pub mod token;
pub mod wire;

pub use cert_info::CertInfo;
pub use config::{
    agent_server_config, effective_keep_alive, enrollment_client_config, enrollment_server_config,
    master_client_config, transport_config, verify_enrolling_master, verify_issued_agent_cert,
    without_mtu_probes, ALPN, ENROLL_ALPN, MIN_UDP_PAYLOAD,
};
pub use crl::Crl;
pub use explain::{
    explain_connect_error, explain_connection_error, explain_enroll_error, explain_incoming_error,
};
#[cfg(feature = "issue")]
pub use issue::{
    check_agent_name, generate_ca, issue_agent, issue_master, sign_agent_request, sign_crl,
    Lifetime, RESERVED_NAMES,
};
pub use pem::{
    certificate_with, create_private_dir, parse_certs, parse_key, read_pem_files, recover_pair,
    replace_pair, write_file_atomic, write_pem_files, Pem,
};
pub use token::JoinToken;
