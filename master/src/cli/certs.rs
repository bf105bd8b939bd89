//! `sloth-master certs ...` and `sloth-master token ...`: the fleet CA and the master
//! certificate, agent certificates, revocation, the list of what was issued, and join
//! tokens — the printing around [`crate::pki`].

use std::path::Path;
use std::time::SystemTime;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use sloth_transport::Lifetime;

use super::args::{CertsCmd, TokenCmd};
use crate::pki::{store, Pki, RevokeTarget};

/// Lifetimes from flags, else sloth.toml, else the defaults.
pub struct Lifetimes {
    pub agent: Option<String>,
    pub master: Option<String>,
}

fn lifetime(
    flag: Option<&str>,
    config: Option<&str>,
    default: Lifetime,
) -> anyhow::Result<Lifetime> {
    match flag.or(config) {
        Some(s) => Lifetime::parse(s),
        None => Ok(default),
    }
}

pub fn certs(
    cmd: CertsCmd,
    dir: &dyn Fn(Option<&Path>) -> std::path::PathBuf,
    lt: &Lifetimes,
) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Init {
            dir: d,
            force,
            master_lifetime,
        } => {
            let dir = dir(d.as_deref());
            let lifetime = lifetime(
                master_lifetime.as_deref(),
                lt.master.as_deref(),
                Lifetime::MASTER,
            )?;
            Pki::new(&dir).init(force, lifetime)?;
            outln!(
                "wrote {} (fleet CA certificate)",
                dir.join("ca.crt").display()
            );
            outln!(
                "wrote {} (fleet CA private key, mode 0600: keep it secret, it can mint masters)",
                dir.join("ca.key").display()
            );
            outln!(
                "wrote {} (master certificate, valid {})",
                dir.join("master.crt").display(),
                sloth_proto::text::format_duration(lifetime.0)
            );
            outln!(
                "wrote {} (master private key, mode 0600)",
                dir.join("master.key").display()
            );
            Ok(())
        }
        CertsCmd::Issue {
            name,
            sans,
            dir: d,
            out,
            lifetime: l,
            force,
        } => {
            let dir = dir(d.as_deref());
            let lifetime = lifetime(l.as_deref(), lt.agent.as_deref(), Lifetime::AGENT)?;
            let out = out.unwrap_or_else(|| dir.clone());
            // Checked before anything is signed or recorded. The CA's and the master's
            // names are never an agent's (whatever the directory is called), so their
            // files are never replaced, even with --force.
            sloth_transport::check_agent_name(&name)
                .map_err(|e| anyhow::anyhow!("invalid agent name {name:?}: {e:#}"))?;
            let crt = out.join(format!("{name}.crt"));
            for path in [crt, out.join(format!("{name}.key"))] {
                if path.exists() && !force {
                    anyhow::bail!(
                        "{} exists: replace it with --force (the agent using it keeps a valid certificate until `sloth-master certs revoke`)",
                        path.display()
                    );
                }
            }
            let pem = Pki::new(&dir).issue_agent(&name, &sans, lifetime)?;
            let (crt, key) = sloth_transport::write_pem_files(&out, &name, &pem)?;
            outln!(
                "wrote {} (agent certificate for {name}, valid {})",
                crt.display(),
                sloth_proto::text::format_duration(lifetime.0)
            );
            outln!("wrote {} (agent private key, mode 0600)", key.display());
            outln!(
                "install both on {name} together with {}",
                dir.join("ca.crt").display()
            );
            Ok(())
        }
        CertsCmd::RenewMaster {
            dir: d,
            lifetime: l,
        } => {
            let dir = dir(d.as_deref());
            let lifetime = lifetime(l.as_deref(), lt.master.as_deref(), Lifetime::MASTER)?;
            let info = Pki::new(&dir).renew_master(lifetime)?;
            outln!(
                "wrote {} (master certificate, serial {}, valid until {})",
                dir.join("master.crt").display(),
                info.serial,
                info.expiry()
            );
            Ok(())
        }
        CertsCmd::Revoke {
            name,
            serial,
            dir: d,
        } => {
            let dir = dir(d.as_deref());
            let target = match (&name, &serial) {
                (_, Some(s)) => RevokeTarget::Serial(s),
                (Some(n), None) => RevokeTarget::Name(n),
                (None, None) => anyhow::bail!("give a name or --serial"),
            };
            let (done, number) = Pki::new(&dir).revoke(target)?;
            for r in &done {
                outln!("revoked {} (serial {})", r.name, r.serial);
            }
            outln!(
                "wrote {} (CRL #{number}); agents refuse revoked masters once a master hands them this CRL (every connection does: e.g. `sloth-master health`)",
                dir.join("crl.der").display()
            );
            Ok(())
        }
        CertsCmd::List { dir: d, json } => {
            let pki = Pki::new(&dir(d.as_deref()));
            let ledger = pki.ledger()?;
            // A revocation that died before writing its CRL: the ledger is ahead.
            let on_disk = pki.crl().ok().flatten().map_or(0, |c| c.number);
            if ledger.crl_number > on_disk {
                errln!(
                    "warning: the ledger records CRL #{} but crl.der is #{on_disk} (a `certs revoke` \
                     was interrupted?): run that `certs revoke` again to write the CRL",
                    ledger.crl_number
                );
            }
            let now = SystemTime::now();
            let state = |i: &store::Issued| {
                if ledger.revoked.iter().any(|r| r.serial == i.serial) {
                    "revoked"
                } else if store::parse_time(&i.not_after).is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "valid"
                }
            };
            if json {
                let rows: Vec<serde_json::Value> = ledger
                    .issued
                    .iter()
                    .map(|i| {
                        let mut v = serde_json::to_value(i).unwrap_or_default();
                        v["state"] = state(i).into();
                        v
                    })
                    .collect();
                super::output::print_doc(&serde_json::json!({
                    "certificates": rows,
                    "crl_number": ledger.crl_number,
                }));
                return Ok(());
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(vec![
                "name", "role", "serial", "expires", "state", "issued", "via",
            ]);
            for i in &ledger.issued {
                t.add_row(vec![
                    i.name.clone(),
                    i.role.clone(),
                    i.serial.clone(),
                    i.not_after.clone(),
                    state(i).to_string(),
                    i.issued_at.clone(),
                    i.via.clone(),
                ]);
            }
            outln!("{t}");
            outln!(
                "{} certificate(s), {} revoked; CRL #{}",
                ledger.issued.len(),
                ledger.revoked.len(),
                ledger.crl_number
            );
            Ok(())
        }
    }
}

pub fn token(
    cmd: TokenCmd,
    dir: &dyn Fn(Option<&Path>) -> std::path::PathBuf,
) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            names,
            ttl,
            uses,
            dir: d,
        } => {
            let ttl = sloth_proto::text::parse_duration(&ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let pki = Pki::new(&dir(d.as_deref()));
            let token = pki.create_token(&names, ttl, uses)?;
            // The token on stdout alone (scripts take it with $(...)); the rest on stderr.
            outln!("{}", token.text());
            errln!(
                "join token {} for '{names}': {uses} use(s), valid {} (until {}); give it to the agent in a file (`sloth-agent --token-file FILE`, or `install-agent.sh --token-file FILE`), then run `sloth-master enroll HOST`",
                token.id,
                sloth_proto::text::format_duration(ttl),
                store::rfc3339(SystemTime::now() + ttl)
            );
            Ok(())
        }
        TokenCmd::List { dir: d, json } => {
            let tokens = Pki::new(&dir(d.as_deref())).tokens()?;
            if json {
                super::output::print_doc(&serde_json::json!({ "tokens": tokens }));
                return Ok(());
            }
            let now = SystemTime::now();
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(vec![
                "id",
                "names",
                "expires",
                "uses left",
                "state",
                "used by",
            ]);
            for r in &tokens {
                let state = if store::parse_time(&r.expires).is_some_and(|e| e <= now) {
                    "expired"
                } else if r.uses_left == 0 {
                    "used"
                } else {
                    "valid"
                };
                let used: Vec<String> = r.redeemed.iter().map(|u| u.name.clone()).collect();
                t.add_row(vec![
                    r.id.clone(),
                    r.names.clone(),
                    r.expires.clone(),
                    r.uses_left.to_string(),
                    state.to_string(),
                    used.join(", "),
                ]);
            }
            outln!("{t}");
            Ok(())
        }
        TokenCmd::Remove { id, dir: d } => {
            Pki::new(&dir(d.as_deref())).remove_token(&id)?;
            outln!("removed join token {id}");
            Ok(())
        }
    }
}
