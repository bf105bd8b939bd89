//! Test hosts that may be changed: throwaway containers of this machine's own root
//! tree, booted with systemd as PID 1 and a real `sloth-agent` inside
//! (`scripts/container.sh`, systemd-nspawn with a tmpfs overlay), or bare hosts with
//! only OpenSSH's sshd, each in its own network namespace ([`SshHost`], for
//! bootstrap). Packages, users and units installed there vanish with the container.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{agent_bin, certs_issue, TestFleet};

/// A booted container, stopped on drop.
pub struct Container {
    pub name: String,
    pub addr: String,
}

/// Why containers cannot run here, or `None` when they can. Not being root is the
/// one accepted reason (a developer's machine); as root a missing piece fails.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("containers need root (systemd-nspawn)".into());
    }
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("container.sh")
}

impl Container {
    /// Boot a container named after `host` (unique per test process), add it to
    /// `fleet`'s inventory as `host`, and bind `binds` (`(host path, container path)`,
    /// read-only) into it. Panics with the console's tail when it does not come up.
    pub fn boot(fleet: &mut TestFleet, host: &str, binds: &[(&Path, &str)]) -> Container {
        static N: AtomicU32 = AtomicU32::new(1);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("sloth-{pid}-{n}");
        // One address per container, in a range no other test uses.
        let addr = format!("127.77.{}.{}", pid % 200 + 1, n % 250 + 1);
        // The agent inside is the inventory's `host`.
        certs_issue(&fleet.certs, host);
        let mut cmd = Command::new("bash");
        cmd.env("AGENT_NAME", host)
            .arg(script())
            .args(["boot", &name, &addr, "7447"])
            .arg(&fleet.certs)
            .arg(agent_bin());
        for (from, to) in binds {
            cmd.arg(format!("{}:{to}", from.display()));
        }
        let out = cmd.output().expect("running scripts/container.sh");
        assert!(
            out.status.success(),
            "container {name} did not boot:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fleet.add_host(host, &format!("{addr}:7447"), &["containers"]);
        Container { name, addr }
    }

    /// Run `argv` inside the container (as its root, outside the agent), for checks
    /// a test makes of the container's state.
    pub fn sh(&self, script: &str) -> std::process::Output {
        let pid = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/unified/sloth-nspawn-{}/payload/init.scope/cgroup.procs",
            self.name
        ))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .expect("the container's init process");
        Command::new("nsenter")
            .args([
                "-t", &pid, "-m", "-u", "-i", "-p", "--", "/bin/sh", "-c", script,
            ])
            .output()
            .expect("nsenter")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.name])
            .status();
    }
}

/// A bare host for bootstrap tests: its own network namespace (reached at `ip`), sshd
/// letting root in with the test's key, no agent; with systemd as PID 1 or without.
pub struct SshHost {
    pub name: String,
    pub ip: String,
}

impl SshHost {
    /// Boot one; `keys` is an authorized_keys file (mode 0600).
    pub fn boot(keys: &Path, systemd: bool) -> SshHost {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("slothssh-{pid}-{n}");
        let index = (pid + n) % 250 + 1;
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .args(["ssh-host", &name, &index.to_string()])
            .arg(keys);
        if !systemd {
            cmd.arg("no-systemd");
        }
        let out = cmd.output().expect("running scripts/container.sh");
        assert!(
            out.status.success(),
            "ssh host {name} did not boot:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        SshHost {
            name,
            ip: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.name])
            .status();
    }
}
