//! Command line and config file of the agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

use crate::audit;

#[derive(Parser, Debug, Default)]
#[command(
    name = "sloth-agent",
    version,
    about = "Runs sloth tasks sent by an authenticated master"
)]
pub struct Args {
    /// Address to listen on (UDP), e.g. 0.0.0.0:7447 or 127.0.0.1:0.
    #[arg(long)]
    pub listen: Option<String>,
    /// This agent's certificate (signed by the fleet CA; `sloth-master certs issue NAME`).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// This agent's private key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The fleet CA certificate; only masters signed by it are served.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The agent's name as tasks see it (`host.name`); default: the certificate file's stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Tasks run at once; more wait in a queue.
    #[arg(long)]
    pub max_tasks: Option<u32>,
    /// Tasks that may wait for a worker before new ones are refused.
    #[arg(long)]
    pub queue: Option<u32>,
    /// Memory limit per task's Lua state, e.g. 256MiB, 1G.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Time limit for a task that sets none, e.g. 1h, 30m.
    #[arg(long)]
    pub task_timeout: Option<String>,
    /// Where to append the audit log (a JSON line per master session and per task), or
    /// `off`; default /var/log/sloth/audit.log for root, else
    /// $XDG_STATE_HOME/sloth/audit.log (~/.local/state/sloth/audit.log).
    #[arg(long)]
    pub audit_log: Option<String>,
    /// Size at which the audit log is rotated, e.g. 10MiB.
    #[arg(long)]
    pub audit_log_max_size: Option<String>,
    /// Rotated audit logs kept (audit.log.1 … audit.log.N).
    #[arg(long)]
    pub audit_log_keep: Option<u32>,
    /// A join token (`sloth-master token create NAME`): with no certificate yet (or an
    /// expired one), the agent makes its own key and waits for `sloth-master enroll`.
    #[arg(long)]
    pub token: Option<String>,
    /// Read the join token from this file (kept out of the process list and the
    /// config); the agent deletes it once enrolled.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The fleet's revocation list, kept from what masters hand over (default: crl.der
    /// beside the CA certificate).
    #[arg(long)]
    pub crl: Option<PathBuf>,
    /// Read settings from a TOML file (same keys as the flags, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    name: Option<String>,
    max_tasks: Option<u32>,
    queue: Option<u32>,
    memory_limit: Option<String>,
    task_timeout: Option<String>,
    audit_log: Option<String>,
    audit_log_max_size: Option<String>,
    audit_log_keep: Option<u32>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    crl: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub name: String,
    pub max_tasks: u32,
    pub queue: u32,
    pub memory_limit: usize,
    pub task_timeout: Duration,
    pub audit: audit::Settings,
    pub token: Option<String>,
    /// Where the token came from, deleted once enrolled.
    pub token_file: Option<PathBuf>,
    pub crl: PathBuf,
}

impl Config {
    /// Where the agent's identity lives.
    pub fn paths(&self) -> crate::credentials::Paths {
        crate::credentials::Paths {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            crl: self.crl.clone(),
        }
    }
}

impl Config {
    pub fn from_args(a: Args) -> anyhow::Result<Config> {
        let f = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let base = a
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let rel = |p: PathBuf| match (&base, p.is_relative()) {
            (Some(b), true) => b.join(p),
            _ => p,
        };
        let listen = a
            .listen
            .or(f.listen)
            .unwrap_or_else(|| "0.0.0.0:7447".to_string());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("--listen '{listen}' is not an address like 0.0.0.0:7447"))?;
        let need =
            |v: Option<PathBuf>, fv: Option<PathBuf>, what: &str| -> anyhow::Result<PathBuf> {
                match (v, fv) {
                    (Some(p), _) => Ok(p),
                    (None, Some(p)) => Ok(rel(p)),
                    (None, None) => bail!("--{what} is required (or `{what} = ...` in --config)"),
                }
            };
        let cert = need(a.cert, f.cert, "cert")?;
        let key = need(a.key, f.key, "key")?;
        let ca = need(a.ca, f.ca, "ca")?;
        let name = match a.name.or(f.name) {
            Some(n) => n,
            None => cert
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .context("cannot derive the agent name from the certificate path; pass --name")?,
        };
        let max_tasks = a.max_tasks.or(f.max_tasks).unwrap_or(64);
        if max_tasks == 0 {
            anyhow::bail!("--max-tasks (max_tasks): must be at least 1, got 0");
        }
        let queue = a.queue.or(f.queue).unwrap_or(1024);
        let memory_limit = match a.memory_limit.or(f.memory_limit) {
            Some(s) => parse_size(&s)?,
            None => 512 * 1024 * 1024,
        };
        let task_timeout = match a.task_timeout.or(f.task_timeout) {
            Some(s) => sloth_proto::text::parse_time_limit(&s)
                .map_err(|e| anyhow::anyhow!("--task-timeout (task_timeout): {e}"))?,
            None => Duration::from_secs(3600),
        };
        let audit_path = match (a.audit_log, f.audit_log) {
            (Some(off), _) | (None, Some(off)) if off == "off" => None,
            (Some(p), _) => Some(PathBuf::from(p)),
            (None, Some(p)) => Some(rel(PathBuf::from(p))),
            (None, None) => Some(
                audit::default_path(rustix::process::geteuid().is_root()).context(
                    "no place for the audit log (neither XDG_STATE_HOME nor HOME is set); \
                     pass --audit-log PATH or --audit-log off",
                )?,
            ),
        };
        let audit = audit::Settings {
            path: audit_path,
            max_size: match a.audit_log_max_size.or(f.audit_log_max_size) {
                Some(s) => parse_size(&s).context("--audit-log-max-size")? as u64,
                None => 10 * 1024 * 1024,
            },
            keep: a.audit_log_keep.or(f.audit_log_keep).unwrap_or(5),
        };
        let crl = match (a.crl, f.crl) {
            (Some(p), _) => p,
            (None, Some(p)) => rel(p),
            (None, None) => ca
                .parent()
                .map(|d| d.join("crl.der"))
                .unwrap_or_else(|| PathBuf::from("crl.der")),
        };
        let token_file = a.token_file.or(f.token_file.map(&rel));
        let token = match (a.token.or(f.token), &token_file) {
            (Some(_), Some(_)) => bail!("give the join token once: --token or --token-file"),
            (Some(t), None) => Some(t),
            (None, Some(p)) => match std::fs::read_to_string(p) {
                Ok(t) => {
                    warn_if_others_can_read(p);
                    Some(t.trim().to_string())
                }
                // Gone once enrolled.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => bail!("cannot read the token file {}: {e}", p.display()),
            },
            (None, None) => None,
        };
        Ok(Config {
            listen,
            cert,
            key,
            ca,
            name,
            max_tasks,
            queue,
            memory_limit,
            task_timeout,
            audit,
            token,
            token_file,
            crl,
        })
    }
}

/// A memory size: a number of bytes with an optional unit, every spelling binary
/// (`64MiB`, `64MB`, `64M` and `64m` are all 64 × 2^20), as memory limits usually are.
///
/// Not the `bytesize` crate: its parser reads `MB` and `G` as decimal (10^6, 10^9) and
/// accepts fractions, so `--memory-limit 1G` would silently become 7 % smaller than the
/// documented 1 GiB for every existing configuration.
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .with_context(|| format!("bad size '{s}' (use e.g. 256MiB, 1G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => bail!("bad size unit '{other}' in '{s}' (use KiB, MiB or GiB)"),
    };
    Ok(n.saturating_mul(mult))
}

/// A token file that other users can read lets any of them enroll a machine under this
/// agent's name first (the token is good for one use, until it expires): say so. The
/// agent still uses it: the operator may have reasons (a group of installers).
fn warn_if_others_can_read(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(p) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the token file {} can be read by other users (mode {mode:04o}): any of them can \
             enroll a machine under this agent's name first; make it readable by its owner \
             only (chmod 600)",
            p.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn zero_tasks_or_a_zero_time_limit_are_refused() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "sloth-agent",
                "--cert",
                "a.crt",
                "--key",
                "a.key",
                "--ca",
                "ca.crt",
            ];
            argv.extend_from_slice(extra);
            Config::from_args(Args::try_parse_from(argv).expect("flags parse"))
        };
        assert!(config(&["--max-tasks", "1", "--task-timeout", "1s"]).is_ok());
        let e = config(&["--max-tasks", "0"]).unwrap_err().to_string();
        assert!(
            e.contains("--max-tasks (max_tasks): must be at least 1"),
            "{e}"
        );
        let e = config(&["--task-timeout", "0s"]).unwrap_err().to_string();
        assert!(e.contains("'0s' is no time at all"), "{e}");
    }
}
