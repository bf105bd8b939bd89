//! Running scripts on a host with the system's OpenSSH client: `ssh -o BatchMode=yes`
//! (never a password prompt), the user, port and identity from the host's inventory
//! vars (`ssh_user`, default root; `ssh_port`, default 22; `ssh_host`, default the
//! host part of its address; `ssh_identity`), extra `-o` options from the command line,
//! `sudo -n` for a user that is not root. The script and any payload go on stdin,
//! never on the command line. Every call is bounded; a timed-out ssh is killed.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::engine::inventory::Host;

/// How to reach one host.
#[derive(Debug, Clone)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub identity: Option<String>,
    /// `-o` options for every connection.
    pub options: Vec<String>,
}

/// What a remote command did.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Target {
    /// From the inventory host and the command's `--ssh-option`s.
    pub fn of(host: &Host, options: &[String]) -> Result<Target, String> {
        let text = |k: &str| -> Result<Option<String>, String> {
            match host.vars.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!(
                    "var {k} must be a string, got {}",
                    other.type_str()
                )),
            }
        };
        let port = match host.vars.get("ssh_port") {
            None => 22,
            Some(toml::Value::Integer(p)) => {
                u16::try_from(*p).map_err(|_| format!("var ssh_port {p} is not a port number"))?
            }
            Some(other) => {
                return Err(format!(
                    "var ssh_port must be a number, got {}",
                    other.type_str()
                ))
            }
        };
        let address_host = host
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .unwrap_or_else(|| host.address.clone());
        let target = Target {
            user: text("ssh_user")?.unwrap_or_else(|| "root".into()),
            host: text("ssh_host")?.unwrap_or(address_host),
            port,
            identity: text("ssh_identity")?,
            options: options.to_vec(),
        };
        // ssh would read a leading '-' as an option (`-oProxyCommand=...` runs a command
        // here): refused, whatever the inventory says.
        for (what, v) in [("ssh_user", &target.user), ("the ssh host", &target.host)] {
            if v.is_empty()
                || v.starts_with('-')
                || v.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!("{what} {v:?} is not a user or host name"));
            }
        }
        Ok(target)
    }

    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-p", &self.port.to_string()]);
        if let Some(i) = &self.identity {
            c.args(["-i", i]);
        }
        for o in &self.options {
            c.args(["-o", o]);
        }
        c.arg("--")
            .arg(format!("{}@{}", self.user, self.host))
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// The shell that runs a script from stdin as root.
    fn shell(&self) -> &'static str {
        if self.user == "root" {
            "sh -s"
        } else {
            "sudo -n sh -s"
        }
    }

    /// Run `script` as root on the host.
    pub async fn script(&self, script: &str, timeout: Duration) -> Result<Ran, String> {
        self.run(self.shell(), script.as_bytes(), timeout).await
    }

    /// Copy `bytes` to `path` on the host (mode 0600 until the apply script sets its
    /// own), through `cat`.
    pub async fn upload(&self, bytes: &[u8], path: &str, timeout: Duration) -> Result<Ran, String> {
        let remote = format!("umask 077; cat > '{path}'");
        let remote = if self.user == "root" {
            remote
        } else {
            format!("sudo -n sh -c \"{remote}\"")
        };
        self.run(&remote, bytes, timeout).await
    }

    async fn run(&self, remote: &str, stdin: &[u8], timeout: Duration) -> Result<Ran, String> {
        let mut child = self
            .command(remote)
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e} (is OpenSSH's client installed?)"))?;
        let mut input = child.stdin.take().ok_or("no stdin for ssh")?;
        let data = stdin.to_vec();
        let feed = async move {
            let _ = input.write_all(&data).await;
            let _ = input.shutdown().await;
        };
        let work = async {
            let (_, out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        let out = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| {
                format!(
                    "ssh to {} did not finish within {} s",
                    self.host,
                    timeout.as_secs()
                )
            })?
            .map_err(|e| format!("ssh: {e}"))?;
        Ok(Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(address: &str, vars: &str) -> Host {
        Host {
            name: "web-01".into(),
            address: address.into(),
            groups: vec![],
            vars: toml::from_str(vars).unwrap(),
        }
    }

    #[test]
    fn targets_come_from_the_inventory() {
        let t = Target::of(&host("10.0.0.5:7447", ""), &[]).unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("root", "10.0.0.5", 22)
        );
        let t = Target::of(
            &host(
                "[::1]:7447",
                "ssh_user = \"deploy\"\nssh_port = 2222\nssh_identity = \"/k\"",
            ),
            &["StrictHostKeyChecking=accept-new".into()],
        )
        .unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("deploy", "::1", 2222)
        );
        assert_eq!(t.shell(), "sudo -n sh -s");
        let t = Target::of(
            &host("web-01.lan:7447", "ssh_host = \"bastion-web-01\""),
            &[],
        )
        .unwrap();
        assert_eq!(t.host, "bastion-web-01");
        assert!(Target::of(&host("a:1", "ssh_port = \"22\""), &[]).is_err());
        assert!(Target::of(&host("a:1", "ssh_port = 70000"), &[]).is_err());
        let e = Target::of(
            &host("a:1", "ssh_user = \"-oProxyCommand=touch /tmp/x\""),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("is not a user or host name"), "{e}");
        assert!(Target::of(&host("a:1", "ssh_host = \"-x\""), &[]).is_err());
    }
}
