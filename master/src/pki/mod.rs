//! The fleet's PKI as the master runs it, on the certificate directory: the CA and the
//! master certificate (`init`, `renew-master`), agent certificates issued here
//! (`issue`), by enrollment with a join token (the agent's key never leaves it) or by
//! renewal over an agent's mutual-TLS connection, revocation (a CRL signed by the CA,
//! numbered), and the records of all of it ([`store`]). The network side of enrolling
//! is [`enroll`]; renewal rides on the mesh ([`crate::engine::mesh::AgentRenewer`]).
//!
//! Files: `ca.crt`, `ca.key` (only where certificates are issued), `master.crt`,
//! `master.key`, `crl.der` (once something is revoked), `ledger.json`, `tokens.json`.

pub mod enroll;
pub mod store;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use sloth_transport::{self as tls, CertInfo, Crl, JoinToken, Lifetime, Pem};

use store::{Issued, Redemption, Revocation, Store, TokenRecord};

/// Common name of the fleet CA.
const CA_COMMON_NAME: &str = "sloth fleet CA";
/// Name of the master certificate.
pub const MASTER_NAME: &str = "master";
/// Join tokens live at most this long.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
/// How often one agent's certificate may be renewed at most.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(600);
/// Certificates this close to expiry are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86400);

/// The certificate directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

/// Which certificates to revoke.
pub enum RevokeTarget<'a> {
    /// Every unexpired certificate issued to this name.
    Name(&'a str),
    Serial(&'a str),
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The fleet CA certificate (PEM).
    pub fn ca_cert(&self) -> anyhow::Result<String> {
        let p = self.path("ca.crt");
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (run `sloth-master certs init --dir {}` first?)",
                p.display(),
                self.dir.display()
            )
        })
    }

    /// The CA certificate and key: only on the machine that issues certificates.
    pub fn ca(&self) -> anyhow::Result<Pem> {
        tls::read_pem_files(&self.path("ca.crt"), &self.path("ca.key")).with_context(|| {
            format!(
                "cannot load the fleet CA from {} (this needs ca.key: run it where the CA lives)",
                self.dir.display()
            )
        })
    }

    pub fn has_ca_key(&self) -> bool {
        self.path("ca.key").is_file()
    }

    /// The master certificate and key (after completing a renewal cut short).
    pub fn master(&self) -> anyhow::Result<Pem> {
        tls::recover_pair(&self.path("master.key"), &self.path("master.crt"), None)?;
        tls::read_pem_files(&self.path("master.crt"), &self.path("master.key")).with_context(
            || {
                format!(
                    "no master certificate in {} (run `sloth-master certs init --dir {}` or use --local-fleet)",
                    self.dir.display(),
                    self.dir.display()
                )
            },
        )
    }

    /// The master certificate, refused when it has expired (the message says so and
    /// names it), with a warning on stderr when it expires within 7 days.
    pub fn master_checked(&self) -> anyhow::Result<Pem> {
        let own = self.master()?;
        let path = self.path("master.crt");
        let key = self.path("master.key");
        if !tls::keys::key_matches(&own.key, &own.cert)
            .with_context(|| key.display().to_string())?
        {
            bail!(
                "{} does not belong to {} (the key of another certificate?)",
                key.display(),
                path.display()
            );
        }
        let info = CertInfo::of_pem(&own.cert).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let now = SystemTime::now();
        if info.expired(now) {
            bail!(
                "the master certificate {} expired on {}: renew it with `sloth-master certs renew-master` where ca.key is",
                path.display(),
                info.expiry()
            );
        }
        if info.remaining(now) < EXPIRY_WARNING {
            errln!(
                "warning: the master certificate {} expires on {} ({} days): renew it with `sloth-master certs renew-master`",
                path.display(),
                info.expiry(),
                info.remaining(now).as_secs() / 86400
            );
        }
        Ok(own)
    }

    /// The fleet's CRL, if anything was ever revoked; a damaged or foreign one is an
    /// error (it would not protect anyone).
    pub fn crl(&self) -> anyhow::Result<Option<Crl>> {
        let p = self.path("crl.der");
        let der = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        };
        let ca = self.ca_cert()?;
        Crl::verified(&der, &ca)
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", p.display()))
    }

    /// Create the CA and the master certificate. Refuses to replace a CA unless
    /// `force` (every certificate it issued would stop working).
    pub fn init(&self, force: bool, master_lifetime: Lifetime) -> anyhow::Result<()> {
        if !force {
            for f in ["ca.crt", "ca.key"] {
                let p = self.path(f);
                if p.exists() {
                    bail!(
                        "{} already exists: refusing to replace the fleet CA (every agent and master \
                         certificate it issued would stop working); use --force to replace it anyway",
                        p.display()
                    );
                }
            }
        }
        let ca = tls::generate_ca(CA_COMMON_NAME).context("cannot generate the fleet CA")?;
        let master = tls::issue_master(&ca, MASTER_NAME, master_lifetime)?;
        tls::create_private_dir(&self.dir)
            .with_context(|| format!("cannot create directory {}", self.dir.display()))?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        // A new CA starts new records, written before its files: a crash never leaves
        // a CA and master in place that the ledger does not know (an interrupted init
        // leaves no `ca.crt`, and runs again).
        store
            .save_ledger(&store::Ledger::default())
            .and_then(|()| store.save_tokens(&store::Tokens::default()))
            .map_err(|e| anyhow!(e))?;
        record(&store, &master.cert, "init")?;
        let _ = std::fs::remove_file(self.path("crl.der"));
        tls::write_pem_files(&self.dir, "master", &master)?;
        tls::write_pem_files(&self.dir, "ca", &ca)?;
        Ok(())
    }

    /// An agent certificate with a key made here (copy both to the agent).
    pub fn issue_agent(
        &self,
        name: &str,
        sans: &[String],
        lifetime: Lifetime,
    ) -> anyhow::Result<Pem> {
        let ca = self.ca()?;
        let pem = tls::issue_agent(&ca, name, sans, lifetime)?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        record(&store, &pem.cert, "issue")?;
        Ok(pem)
    }

    /// A new master key and certificate in place of the old ones.
    pub fn renew_master(&self, lifetime: Lifetime) -> anyhow::Result<CertInfo> {
        let ca = self.ca()?;
        let master = tls::issue_master(&ca, MASTER_NAME, lifetime)?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        // Recorded before it is put in place: a crash leaves at worst a recorded
        // certificate nobody uses, never one in use that the ledger cannot revoke.
        record(&store, &master.cert, "renew-master")?;
        // The key and certificate replaced together: a crash leaves one pair or the other.
        tls::replace_pair(
            &self.path("master.key"),
            &self.path("master.crt"),
            &master.key,
            &master.cert,
            None,
        )?;
        CertInfo::of_pem(&master.cert).map_err(|e| anyhow!(e))
    }

    /// An agent certificate for the key of `csr`, named `name` (renewal over the
    /// agent's connection: the caller has authenticated the agent as `name`, presenting
    /// the certificate with `serial`). Refused for a revoked certificate (the mesh's CRL
    /// may be older than the ledger), and when one was renewed for `name` in the last
    /// [`RENEW_INTERVAL`] that the agent does not present yet (an agent that never
    /// installs what it gets cannot have certificates signed on every connection).
    pub fn renew_agent(
        &self,
        name: &str,
        presented: &CertInfo,
        csr: &[u8],
        lifetime: Lifetime,
    ) -> anyhow::Result<String> {
        let serial = presented.serial.as_str();
        let ca = self.ca()?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        let ledger = store.ledger().map_err(|e| anyhow!(e))?;
        if ledger.revoked.iter().any(|r| r.serial == serial) {
            bail!("the certificate {serial} of {name} is revoked: no renewal");
        }
        let now = SystemTime::now();
        if let Some(recent) = ledger.issued.iter().rev().find(|i| {
            i.name == name
                && i.via == "renew"
                && i.serial != serial
                && store::parse_time(&i.issued_at).is_some_and(|t| t + RENEW_INTERVAL > now)
        }) {
            bail!(
                "a certificate for {name} was renewed at {} (serial {}), which it does not present yet: not again before {}",
                recent.issued_at,
                recent.serial,
                humanish(RENEW_INTERVAL)
            );
        }
        // The renewed certificate keeps the extra names the CA gave the one it replaces.
        let cert = tls::sign_agent_request(&ca, csr, name, &presented.extra_sans, lifetime)?;
        record(&store, &cert, "renew")?;
        Ok(cert)
    }

    /// Revoke, and write the new CRL (signed, numbered one higher). Returns what was
    /// revoked and the CRL's number.
    pub fn revoke(&self, target: RevokeTarget) -> anyhow::Result<(Vec<Revocation>, u64)> {
        let ca = self.ca()?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        let mut ledger = store.ledger().map_err(|e| anyhow!(e))?;
        let now = SystemTime::now();
        let already: Vec<String> = ledger.revoked.iter().map(|r| r.serial.clone()).collect();
        let new: Vec<Revocation> = match target {
            RevokeTarget::Name(name) => ledger
                .issued
                .iter()
                .filter(|i| i.name == name && !already.contains(&i.serial))
                .filter(|i| store::parse_time(&i.not_after).is_none_or(|t| t > now))
                .map(|i| Revocation {
                    serial: i.serial.clone(),
                    name: i.name.clone(),
                    at: store::now(),
                })
                .collect(),
            RevokeTarget::Serial(serial) => {
                let Some(serial) = tls::cert_info::normalize_serial(serial) else {
                    bail!("'{serial}' is not a serial number (hex, as `certs list` shows)");
                };
                if already.contains(&serial) {
                    vec![]
                } else {
                    // A serial the ledger does not know is revoked only when it is whole
                    // (this CA's serials have 128 bits; 64 at the very least): a prefix
                    // or a typo revokes nothing real and is refused.
                    let name = match ledger.issued.iter().find(|i| i.serial == serial) {
                        Some(i) => i.name.clone(),
                        None if serial.len() >= 16 => "(not in the ledger)".into(),
                        None => bail!(
                            "no certificate with serial {serial} in the ledger, and too short to \
                             be a whole serial: give it whole, as `sloth-master certs list` shows it"
                        ),
                    };
                    vec![Revocation {
                        serial,
                        name,
                        at: store::now(),
                    }]
                }
            }
        };
        let on_disk = self.crl().ok().flatten().map_or(0, |c| c.number);
        // Nothing new, but a CRL the ledger recorded never reached the disk: write it.
        let behind = ledger.crl_number > on_disk;
        if new.is_empty() && !behind {
            match target {
                RevokeTarget::Name(name) => bail!(
                    "nothing to revoke: no unexpired, unrevoked certificate was issued to '{name}' (`sloth-master certs list`)"
                ),
                RevokeTarget::Serial(s) => bail!("serial {s} is already revoked"),
            }
        }
        ledger.revoked.extend(new.iter().cloned());
        // Past both the ledger's number and the CRL on disk: a revocation that died
        // between writing them never leaves two different CRLs with one number.
        ledger.crl_number = ledger.crl_number.max(on_disk) + 1;
        let entries: Vec<tls::issue::Revoked> = ledger
            .revoked
            .iter()
            .filter_map(|r| {
                Some(tls::issue::Revoked {
                    serial: tls::cert_info::serial_bytes(&r.serial)?,
                    at: store::parse_time(&r.at).unwrap_or(now),
                })
            })
            .collect();
        let der = tls::sign_crl(&ca, ledger.crl_number, &entries)?;
        // The ledger first: what it records is in every later CRL (each is made from
        // the whole ledger). A revocation that dies before the CRL is written is
        // reported behind by `certs list`, and made good by the next one; the other
        // order let a CRL the ledger never recorded be undone by the next.
        store.save_ledger(&ledger).map_err(|e| anyhow!(e))?;
        tls::write_file_atomic(&self.path("crl.der"), &der, 0o644)?;
        Ok((new, ledger.crl_number))
    }

    /// A join token for `names` (a name or a `*` pattern), valid `ttl`, `uses` times.
    pub fn create_token(&self, names: &str, ttl: Duration, uses: u32) -> anyhow::Result<JoinToken> {
        if names.trim().is_empty() {
            bail!("a token needs the agent name (or a pattern like web-*) it may enroll");
        }
        if names
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-.*".contains(c)))
        {
            bail!("'{names}' is not an agent name or pattern (letters, digits, '-', '.', '*')");
        }
        // A name (not a pattern) must be one a certificate can be issued for: a token
        // for `10.0.0.1` or `master` could never be redeemed.
        if names.contains('*') {
            if names.bytes().any(|b| b.is_ascii_uppercase()) {
                bail!(
                    "use lower case ('{}'): names are DNS names",
                    names.to_ascii_lowercase()
                );
            }
        } else {
            tls::check_agent_name(names).map_err(|e| anyhow!("'{names}': {e:#}"))?;
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            bail!("a token's lifetime must be between 1s and 30 days");
        }
        if uses == 0 {
            bail!("a token must be usable at least once");
        }
        // Tokens are signed by nobody: checking the CA key is here is what keeps a
        // master without it from handing out tokens it cannot honour.
        let ca = self.ca()?;
        let fp = ca_fingerprint(&ca.cert)?;
        let token = JoinToken::generate(&fp).map_err(|e| anyhow!(e))?;
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        let mut tokens = store.tokens().map_err(|e| anyhow!(e))?;
        let now = SystemTime::now();
        // Records of tokens dead for a month go.
        tokens.tokens.retain(|t| {
            store::parse_time(&t.expires).is_none_or(|e| e + Duration::from_secs(30 * 86400) > now)
        });
        tokens.tokens.push(TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            names: names.to_string(),
            expires: store::rfc3339(now + ttl),
            uses_left: uses,
            created: store::now(),
            redeemed: vec![],
        });
        store.save_tokens(&tokens).map_err(|e| anyhow!(e))?;
        Ok(token)
    }

    pub fn tokens(&self) -> anyhow::Result<Vec<TokenRecord>> {
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        Ok(store.tokens().map_err(|e| anyhow!(e))?.tokens)
    }

    /// Remove a token (it can no longer enroll anyone).
    pub fn remove_token(&self, id: &str) -> anyhow::Result<()> {
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        let mut tokens = store.tokens().map_err(|e| anyhow!(e))?;
        let before = tokens.tokens.len();
        tokens.tokens.retain(|t| t.id != id);
        if tokens.tokens.len() == before {
            bail!("no token with id {id} (`sloth-master token list`)");
        }
        store.save_tokens(&tokens).map_err(|e| anyhow!(e))
    }

    /// Spend one use of a token for agent `name` and issue its certificate for the key
    /// of `csr`. The error is the reason the agent is told.
    pub fn redeem(
        &self,
        token_id: &str,
        secret: &str,
        name: &str,
        csr: &[u8],
        lifetime: Lifetime,
    ) -> Result<String, String> {
        let ca = self.ca().map_err(|e| format!("{e:#}"))?;
        let store = Store::lock(&self.dir)?;
        let mut tokens = store.tokens()?;
        let rec = tokens
            .tokens
            .iter_mut()
            .find(|t| t.id == token_id)
            .ok_or("unknown join token (not created by this master, or removed)")?;
        if rec.secret_sha256 != tls::token::hash_secret(secret) {
            return Err("wrong join token secret".into());
        }
        let expires = store::parse_time(&rec.expires).ok_or("the token's record is damaged")?;
        if SystemTime::now() >= expires {
            return Err(format!("the join token expired at {}", rec.expires));
        }
        if rec.uses_left == 0 {
            let last = rec
                .redeemed
                .last()
                .map(|r| format!(" (last by {} at {})", r.name, r.at))
                .unwrap_or_default();
            return Err(format!("the join token was already used{last}"));
        }
        if !crate::engine::inventory::glob_match(&rec.names, name) {
            return Err(format!(
                "the join token is for '{}', not for '{name}'",
                rec.names
            ));
        }
        let cert =
            tls::sign_agent_request(&ca, csr, name, &[], lifetime).map_err(|e| format!("{e:#}"))?;
        let info = CertInfo::of_pem(&cert)?;
        rec.uses_left -= 1;
        rec.redeemed.push(Redemption {
            name: name.to_string(),
            serial: info.serial.clone(),
            at: store::now(),
        });
        // The token is spent before the certificate leaves: a crash here loses a use,
        // never grants an extra one.
        store.save_tokens(&tokens)?;
        record(&store, &cert, "enroll").map_err(|e| format!("{e:#}"))?;
        Ok(cert)
    }

    /// Every certificate issued, with its state.
    pub fn ledger(&self) -> anyhow::Result<store::Ledger> {
        let store = Store::lock(&self.dir).map_err(|e| anyhow!(e))?;
        store.ledger().map_err(|e| anyhow!(e))
    }
}

impl Pki {
    /// What the mesh needs: the master certificate (refused when expired), the CA,
    /// the CRL, and — where `ca.key` is — the renewal of agent certificates that are
    /// due, for `agent_lifetime`.
    pub fn master_certs(
        &self,
        agent_lifetime: Lifetime,
    ) -> anyhow::Result<crate::engine::mesh::MasterCerts> {
        let renewer: Option<std::sync::Arc<dyn crate::engine::mesh::AgentRenewer>> =
            self.has_ca_key().then(|| {
                std::sync::Arc::new(Renewer {
                    pki: self.clone(),
                    lifetime: agent_lifetime,
                }) as std::sync::Arc<dyn crate::engine::mesh::AgentRenewer>
            });
        let own = self.master_checked()?;
        let crl = self.crl()?;
        // Our own CRL revoking our own certificate: say so now, not as every agent's
        // refusal once it has taken that CRL from us.
        if let (Some(crl), Ok(info)) = (&crl, CertInfo::of_pem(&own.cert)) {
            if crl.is_revoked(&info.serial) {
                bail!(
                    "{}: the master certificate (serial {}) is revoked by this fleet's CRL \
                     (crl.der): make a new one with `sloth-master certs renew-master`",
                    self.path("master.crt").display(),
                    info.serial
                );
            }
        }
        Ok(crate::engine::mesh::MasterCerts {
            own,
            ca: self.ca_cert()?,
            crl,
            renewer,
        })
    }
}

fn humanish(d: Duration) -> String {
    format!("{} later", sloth_proto::text::format_duration(d))
}

/// `sha256:...` of a PEM CA certificate.
pub fn ca_fingerprint(ca_pem: &str) -> anyhow::Result<String> {
    let der = tls::parse_certs(ca_pem)?
        .into_iter()
        .next()
        .context("no CA certificate")?;
    Ok(tls::cert_info::fingerprint(der.as_ref()))
}

/// Add an issued certificate to the ledger.
fn record(store: &Store, cert_pem: &str, via: &str) -> anyhow::Result<()> {
    let info = CertInfo::of_pem(cert_pem).map_err(|e| anyhow!(e))?;
    let mut ledger = store.ledger().map_err(|e| anyhow!(e))?;
    ledger.issued.push(Issued {
        serial: info.serial.clone(),
        name: info.name.clone().unwrap_or_default(),
        role: info.role.clone().unwrap_or_default(),
        not_after: info.expiry(),
        issued_at: store::now(),
        via: via.to_string(),
    });
    store.save_ledger(&ledger).map_err(|e| anyhow!(e))
}

/// The mesh's renewal of agent certificates, by this CA.
pub struct Renewer {
    pub pki: Pki,
    pub lifetime: Lifetime,
}

impl crate::engine::mesh::AgentRenewer for Renewer {
    fn renew(&self, name: &str, presented: &CertInfo, csr: &[u8]) -> Result<String, String> {
        self.pki
            .renew_agent(name, presented, csr, self.lifetime)
            .map_err(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests;
