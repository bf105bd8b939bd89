//! `sloth-master bootstrap`: put an agent on hosts that have only SSH, and leave them
//! enrolled and serving. Per host, over the system's OpenSSH client ([`ssh`]): probe
//! what is there, plan what is missing ([`plan`]: the binary, `/etc/sloth/agent.toml`,
//! the systemd unit, a certificate), copy and write exactly that, restart the unit,
//! enroll the agent with a fresh single-use join token (its key is made on the host),
//! then dial it over mutual TLS and check its version. A host that already has all of
//! it is left alone ("enrolled, version X"). Hosts go in parallel.

pub mod plan;
pub mod ssh;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sloth_transport::Lifetime;

use crate::engine::inventory::Host;
use crate::engine::mesh::Mesh;
use crate::pki::{enroll, Pki};
use plan::{Desired, Plan, Probe};

/// How long each SSH step may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a bootstrap join token lives (one use, for one name).
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The agent binary to install.
pub struct AgentBinary {
    pub bytes: Vec<u8>,
    pub version: String,
    /// `uname -m` spelling.
    pub arch: String,
}

impl AgentBinary {
    /// Read `path`, its architecture from its ELF header and its version from
    /// `--version`.
    pub fn load(path: &Path) -> Result<AgentBinary, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let arch = elf_arch(&bytes)
            .ok_or_else(|| {
                format!(
                    "{} is not a Linux executable this master knows",
                    path.display()
                )
            })?
            .to_string();
        let out = std::process::Command::new(path)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} --version: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .trim()
            .strip_prefix("sloth-agent ")
            .ok_or_else(|| {
                format!(
                    "{} is not sloth-agent (its --version says {:?})",
                    path.display(),
                    text.trim()
                )
            })?
            .to_string();
        Ok(AgentBinary {
            bytes,
            version,
            arch,
        })
    }
}

/// The machine of a 64- or 32-bit little-endian ELF executable, as `uname -m` says it.
pub fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        0x28 => Some("armv7l"),
        0x03 => Some("i686"),
        0xf3 => Some("riscv64"),
        _ => None,
    }
}

/// The settings of one bootstrap run.
pub struct Options {
    pub ssh_options: Vec<String>,
    /// Lifetime of the certificates enrolled.
    pub lifetime: Lifetime,
    /// How long to wait for an agent to be ready to enroll.
    pub wait: Duration,
}

/// What happened to one host.
#[derive(Debug, Clone)]
pub struct Done {
    pub version: String,
    /// The changes made (empty: nothing to do).
    pub changes: Vec<String>,
    /// The certificate's serial when it was enrolled now.
    pub serial: Option<String>,
}

/// Why a host was not bootstrapped.
#[derive(Debug, Clone)]
pub enum Failure {
    /// It cannot take the agent as planned (no systemd, another architecture...).
    Refused(String),
    Failed(String),
}

/// Bootstrap one host.
pub async fn host(
    pki: &Pki,
    mesh: &Arc<Mesh>,
    h: &Host,
    agent: &AgentBinary,
    opts: &Options,
) -> Result<Done, Failure> {
    let failed = Failure::Failed;
    let target = ssh::Target::of(h, &opts.ssh_options).map_err(failed)?;
    let ran = target
        .script(plan::PROBE_SCRIPT, PROBE_TIMEOUT)
        .await
        .map_err(failed)?;
    if !ran.ok {
        return Err(Failure::Failed(format!(
            "ssh {}@{}:{}: {}",
            target.user,
            target.host,
            target.port,
            last_line(&ran.stderr)
        )));
    }
    let probe = Probe::parse(&ran.stdout).map_err(failed)?;
    let ca_pem = pki
        .ca_cert()
        .map_err(|e| Failure::Failed(format!("{e:#}")))?;
    let want = Desired {
        name: h.name.clone(),
        port: port_of(&h.address),
        version: agent.version.clone(),
        arch: agent.arch.clone(),
        ca_pem,
    };
    let plan = Plan::decide(&probe, &want, SystemTime::now()).map_err(Failure::Refused)?;
    if plan.changes_nothing() {
        verify(mesh, &h.name, &agent.version)
            .await
            .map_err(failed)?;
        return Ok(Done {
            version: agent.version.clone(),
            changes: vec![],
            serial: None,
        });
    }
    if plan.copy_binary {
        let up = target
            .upload(
                &agent.bytes,
                &format!("{}.new", plan::BINARY),
                UPLOAD_TIMEOUT,
            )
            .await
            .map_err(failed)?;
        if !up.ok {
            return Err(Failure::Failed(format!(
                "copying the agent: {}",
                last_line(&up.stderr)
            )));
        }
    }
    let token = if plan.enroll {
        let (pki2, name) = (pki.clone(), h.name.clone());
        let t = tokio::task::spawn_blocking(move || pki2.create_token(&name, TOKEN_TTL, 1))
            .await
            .map_err(|e| Failure::Failed(format!("internal error: {e}")))?
            .map_err(|e| Failure::Failed(format!("{e:#}")))?;
        Some(t.text())
    } else {
        None
    };
    let applied = target
        .script(&plan.apply_script(&want, token.as_deref()), APPLY_TIMEOUT)
        .await
        .map_err(failed)?;
    if !applied.ok {
        return Err(Failure::Failed(format!(
            "installing: {}",
            applied
                .stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ")
        )));
    }
    let serial = if plan.enroll {
        let e = enroll::enroll_host(pki, &h.name, &h.address, opts.lifetime, opts.wait)
            .await
            .map_err(failed)?;
        Some(e.serial)
    } else {
        None
    };
    verify(mesh, &h.name, &agent.version)
        .await
        .map_err(failed)?;
    Ok(Done {
        version: agent.version.clone(),
        changes: plan.reasons,
        serial,
    })
}

/// The agent answers over mutual TLS with the version we installed.
async fn verify(mesh: &Arc<Mesh>, host: &str, version: &str) -> Result<(), String> {
    mesh.ping(host, false)
        .await
        .map_err(|e| format!("the agent does not answer: {}", e.display_for(host)))?;
    let running = mesh
        .current(host)
        .await
        .map(|c| c.agent_version.clone())
        .unwrap_or_default();
    if running != version {
        return Err(format!(
            "the agent answers with version {running}, not {version} (restart it: systemctl restart sloth-agent)"
        ));
    }
    Ok(())
}

/// The port of an inventory address (`host:port`), 7447 when it has none.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(7447)
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no error output)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_from_elf_headers() {
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_arch(&own), Some(std::env::consts::ARCH));
        let mut arm = own.clone();
        arm[18] = 0xb7;
        arm[19] = 0;
        assert_eq!(elf_arch(&arm), Some("aarch64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert_eq!(port_of("10.0.0.1:7500"), 7500);
        assert_eq!(port_of("[::1]:7447"), 7447);
    }
}
