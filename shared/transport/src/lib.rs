//! The QUIC transport of master and agents: the fleet's TLS configuration ([`config`]),
//! certificates as PEM files ([`pem`]), plain-words explanations of connection
//! failures ([`explain`]), the async framing of protocol messages on QUIC streams
//! ([`wire`]), the identity a peer's certificate gives ([`identity`]), the async runtime and shutdown signals of both processes ([`process`]),
//! and, behind the `issue` feature that only the master enables, certificate issuance
//! ([`issue`]).
//!
//! One CA per fleet. Agent certificates carry the agent's name as a DNS SAN and the
//! extended key usage *ServerAuth only*; master certificates carry *ClientAuth only*
//! (the "master role"). The agent requires a client certificate that chains to the
//! fleet CA and allows ClientAuth, so an agent certificate (stolen from another agent)
//! cannot command the fleet, and a master certificate cannot impersonate an agent. The
//! master verifies the agent certificate against the fleet CA only, with the inventory
//! name it dialed as the TLS server name.

pub mod config;
pub mod explain;
pub mod identity;
#[cfg(feature = "issue")]
pub mod issue;
pub mod pem;
pub mod process;
pub mod wire;

pub use config::{
    agent_server_config, effective_keep_alive, master_client_config, transport_config, ALPN,
};
pub use explain::{explain_connect_error, explain_connection_error, explain_incoming_error};
pub use identity::PeerIdentity;
#[cfg(feature = "issue")]
pub use issue::{generate_ca, issue_agent, issue_master};
pub use pem::{parse_certs, parse_key, read_pem_files, write_pem_files, Pem};
