//! The agent's certificates while it runs: the TLS configuration it serves with,
//! rebuilt when a master hands it a newer CRL (signed by the fleet CA, a higher number:
//! from then on the revoked masters are refused, and their open connections closed) or
//! renews its certificate (a new key made here, a certificate for it, installed so that
//! a crash leaves a usable pair; presented from the next connection on).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use sloth_proto::protocol::{codes, Control};
use sloth_transport::{self as tls, keys, wire, CertInfo, Crl, Pem};
use tracing::{info, warn};

use crate::credentials::{self, Identity, Paths};

pub struct Pki {
    endpoint: Endpoint,
    transport: Arc<quinn::TransportConfig>,
    paths: Paths,
    name: String,
    identity: Mutex<Identity>,
    /// Open master connections by `stable_id`, with their certificate's serial.
    sessions: Mutex<HashMap<usize, (String, Connection)>>,
    /// Held while the identity changes (a CRL taken, a renewal), so that two masters'
    /// connections never interleave: one renewal at a time, and a CRL taken during one
    /// is not lost when it ends.
    changing: tokio::sync::Mutex<()>,
}

impl Pki {
    pub fn new(
        endpoint: Endpoint,
        transport: Arc<quinn::TransportConfig>,
        paths: Paths,
        name: &str,
        identity: Identity,
    ) -> Pki {
        Pki {
            endpoint,
            transport,
            paths,
            name: name.to_string(),
            identity: Mutex::new(identity),
            sessions: Mutex::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The server configuration for `id`: its certificate, the fleet CA, its CRL.
    pub fn server_config(
        id: &Identity,
        transport: Arc<quinn::TransportConfig>,
    ) -> anyhow::Result<quinn::ServerConfig> {
        tls::agent_server_config(&id.own, &id.ca, id.crl.as_ref(), transport)
    }

    /// Serve with `change` applied to the current identity (call holding `changing`).
    fn serve_with(&self, change: impl FnOnce(&mut Identity)) -> Result<(), String> {
        let mut id = self.identity.lock().clone();
        change(&mut id);
        let cfg = Self::server_config(&id, self.transport.clone()).map_err(|e| format!("{e:#}"))?;
        self.endpoint.set_server_config(Some(cfg));
        *self.identity.lock() = id;
        Ok(())
    }

    pub fn session_started(&self, conn: &Connection, serial: &str) {
        self.sessions
            .lock()
            .insert(conn.stable_id(), (serial.to_string(), conn.clone()));
    }

    pub fn session_ended(&self, conn: &Connection) {
        self.sessions.lock().remove(&conn.stable_id());
    }

    /// A master handed us a CRL: taken only if the fleet CA signed it and it is newer
    /// than ours. Returns its number when taken.
    pub async fn offer_crl(&self, der: &[u8]) -> Result<Option<u64>, String> {
        let _changing = self.changing.lock().await;
        let id = self.identity.lock().clone();
        let offered = Crl::verified(der, &id.ca)?;
        if let Some(have) = &id.crl {
            if !have.is_replaced_by(&offered) {
                if offered.number < have.number {
                    warn!(
                        "a master handed us CRL #{}, older than ours (#{}): kept ours",
                        offered.number, have.number
                    );
                }
                return Ok(None);
            }
        }
        // Revocation fails closed: a CRL that cannot be kept on disk still applies, until
        // the agent restarts (and the next master hands it over again).
        if let Err(e) = credentials::save_crl(&self.paths, &offered) {
            warn!(
                crl = offered.number,
                "the fleet's new CRL cannot be kept on disk ({e:#}): it applies until this \
                 agent restarts; make its file writable"
            );
        }
        let number = offered.number;
        let revoked = offered.revoked.clone();
        self.serve_with(|id| id.crl = Some(offered))?;
        info!(
            crl = number,
            revoked = revoked.len(),
            "took the fleet's new CRL"
        );
        // Masters already connected with a certificate it revokes are cut off now.
        let cut: Vec<(String, Connection)> = self
            .sessions
            .lock()
            .values()
            .filter(|(serial, _)| revoked.contains(serial))
            .cloned()
            .collect();
        for (serial, conn) in cut {
            warn!(
                serial,
                "closing the connection of a master whose certificate is revoked"
            );
            conn.close(codes::PROTOCOL.into(), b"master certificate revoked");
        }
        Ok(Some(number))
    }

    /// The renewal exchange on the control stream, after the master's `RenewRequest`.
    /// Returns the new certificate's serial.
    pub async fn renew(
        &self,
        send: &mut SendStream,
        recv: &mut wire::FrameReader<RecvStream>,
    ) -> Result<String, String> {
        let Ok(_changing) = self.changing.try_lock() else {
            let busy = "a renewal (or a CRL) is being installed from another master's connection";
            let _ = wire::write_frame(
                send,
                &Control::RenewDone {
                    error: Some(busy.into()),
                },
            )
            .await;
            return Err(busy.into());
        };
        let name = self.name.clone();
        let key = tokio::task::spawn_blocking(move || keys::new_key_and_request(&name))
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map_err(|e| format!("{e:#}"))?;
        wire::write_frame(
            send,
            &Control::RenewCsr {
                csr: key.request_der.clone(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let cert_pem = match recv.next::<Control>().await.map_err(|e| e.to_string())? {
            Some(Control::Renewed { cert_pem }) => cert_pem,
            Some(Control::RenewDone { error }) => {
                return Err(format!(
                    "the master could not renew us: {}",
                    error.unwrap_or_default()
                ))
            }
            other => return Err(format!("unexpected answer: {other:?}")),
        };
        let installed = self.install_renewed(&key, &cert_pem);
        let done = Control::RenewDone {
            error: installed.as_ref().err().cloned(),
        };
        wire::write_frame(send, &done)
            .await
            .map_err(|e| e.to_string())?;
        installed
    }

    fn install_renewed(&self, key: &keys::NewKey, cert_pem: &str) -> Result<String, String> {
        let ca = self.identity.lock().ca.clone();
        tls::verify_issued_agent_cert(cert_pem, &ca, &self.name)?;
        if !tls::keys::key_matches(&key.key_pem, cert_pem).map_err(|e| format!("{e:#}"))? {
            return Err("the renewed certificate does not certify our new key".into());
        }
        credentials::install(&self.paths, &key.key_pem, cert_pem, None)
            .map_err(|e| format!("{e:#}"))?;
        let info = CertInfo::of_pem(cert_pem)?;
        let serial = info.serial.clone();
        info!(serial, expires = %info.expiry(), "installed the renewed certificate");
        self.serve_with(|id| {
            id.own = Pem {
                cert: cert_pem.to_string(),
                key: key.key_pem.clone(),
            };
            id.info = info;
        })?;
        Ok(serial)
    }
}
