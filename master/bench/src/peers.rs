//! The peers of the fan-out rows: pdsh and Ansible, both over OpenSSH.
//!
//! Every agent's loopback address also gets a real `sshd` (port [`SSH_PORT`]), so the
//! three tools reach the same hosts. OpenSSH caps one daemon at 16 listen addresses,
//! so there is one daemon per 16 hosts, each with the bench's own configuration, host
//! key and authorized key. They run in a private mount namespace (`unshare --mount`),
//! where `/run` is a fresh tmpfs (for `/run/sshd`) and the login user's shell start-up
//! files are hidden behind `/dev/null`: the machine is left as it was, and a login costs
//! what it costs on a stock host. (On the development VM, root's `.bashrc` runs
//! `pyenv init`, whose lock made pdsh over 200 hosts take 90 s instead of 6 s.)
//!
//! The tools themselves are installed by `scripts/bench.sh --peers`: pdsh and OpenSSH
//! from Debian, ansible-core from PyPI in a venv under its temporary directory.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use sloth_launcher::die_with_parent;

use crate::{run_captured, MasterRun};

/// The port of the bench's sshd on every host address.
pub const SSH_PORT: u16 = 2222;
/// OpenSSH's MAX_LISTEN_SOCKS: listen addresses one daemon accepts.
const ADDRS_PER_SSHD: usize = 16;
/// pdsh's fan-out (its default is 32).
pub const PDSH_FANOUT: usize = 64;
/// Ansible's forks.
pub const ANSIBLE_FORKS: usize = 50;

/// Where the peer tools are.
pub struct Tools {
    pub pdsh: PathBuf,
    pub ssh: PathBuf,
    pub ansible: PathBuf,
    pub sshd: PathBuf,
    pub ssh_keygen: PathBuf,
    pub unshare: PathBuf,
}

impl Tools {
    /// Find the tools; `ansible` is the path `--ansible` gave, if any.
    pub fn find(ansible: Option<&Path>) -> anyhow::Result<Tools> {
        let which = |name: &str| -> anyhow::Result<PathBuf> {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow!(
                        "--peers: `{name}` is not installed (scripts/bench.sh --peers installs it)"
                    )
                })
        };
        let ansible = match ansible {
            Some(p) if p.is_file() => p.to_path_buf(),
            Some(p) => bail!("--ansible {}: no such file", p.display()),
            None => which("ansible")?,
        };
        if !rustix::process::geteuid().is_root() {
            bail!("--peers needs root: it runs sshd in its own mount namespace");
        }
        Ok(Tools {
            pdsh: which("pdsh")?,
            ssh: which("ssh")?,
            ansible,
            sshd: which("sshd")?,
            ssh_keygen: which("ssh-keygen")?,
            unshare: which("unshare")?,
        })
    }
}

/// Running sshd daemons on the host addresses, and the client side for pdsh and Ansible.
pub struct Peers {
    tools: Tools,
    dir: PathBuf,
    hosts: Vec<Ipv4Addr>,
    ssh_config: PathBuf,
    /// `unshare` → `sh` → one sshd per 16 addresses, all in one process group.
    daemons: Child,
}

impl Peers {
    /// Start sshd on every address in `hosts`, in `dir` (created), and check that a
    /// login works.
    pub fn start(tools: Tools, dir: &Path, hosts: &[Ipv4Addr]) -> anyhow::Result<Peers> {
        // A daemon left over from elsewhere would answer in ours' place.
        for a in hosts {
            let addr = SocketAddr::from((*a, SSH_PORT));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                bail!("something already listens on {addr}; stop it first");
            }
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for key in ["host_key", "client_key"] {
            let path = dir.join(key);
            let _ = fs::remove_file(&path);
            let out = Command::new(&tools.ssh_keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "sloth-bench", "-f"])
                .arg(&path)
                .stdin(Stdio::null())
                .output()
                .context("running ssh-keygen")?;
            if !out.status.success() {
                bail!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("client_key.pub"), &authorized).context("writing authorized_keys")?;
        let common = format!(
            "Port {SSH_PORT}\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized}\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             UseDNS no\n\
             StrictModes no\n\
             PidFile none\n\
             MaxStartups 1000:30:1000\n\
             MaxSessions 100\n\
             LogLevel ERROR\n\
             Subsystem sftp internal-sftp\n",
            host_key = dir.join("host_key").display(),
            authorized = authorized.display(),
        );
        let mut configs = Vec::new();
        for (i, chunk) in hosts.chunks(ADDRS_PER_SSHD).enumerate() {
            let mut text = common.clone();
            for a in chunk {
                text.push_str(&format!("ListenAddress {a}\n"));
            }
            let path = dir.join(format!("sshd-{i:03}.conf"));
            fs::write(&path, text)?;
            configs.push(path);
        }
        let ssh_config = dir.join("ssh_config");
        fs::write(
            &ssh_config,
            format!(
                "Host *\n  Port {SSH_PORT}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
                 BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
                 GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  \
                 KexAlgorithms curve25519-sha256\n",
                key = dir.join("client_key").display()
            ),
        )?;
        // The namespace: a private /run with /run/sshd, and the login user's shell
        // start-up files hidden. The daemons stay in the foreground (-D), so that they
        // die with this process group.
        let home = login_home()?;
        let script = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 sloth-bench /run\n\
             mkdir -m 0755 /run/sshd\n\
             for f in {home}/.bashrc {home}/.profile {home}/.bash_profile {home}/.bash_login; do\n  \
               if [ -e \"$f\" ]; then mount --bind /dev/null \"$f\"; fi\n\
             done\n\
             for c in \"$@\"; do \"{sshd}\" -D -e -f \"$c\" & done\n\
             wait\n",
            sshd = tools.sshd.display()
        );
        let log = fs::File::create(dir.join("sshd.log"))?;
        // A private PID namespace too: when `unshare` dies (with the bench, below),
        // --kill-child kills the shell, which is PID 1 there, and the kernel then kills
        // every sshd in the namespace, however the bench ended.
        let mut cmd = Command::new(&tools.unshare);
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .args(["sh", "-c"])
        .arg(script)
        .arg("sloth-bench-sshd")
        .args(&configs)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0);
        // `unshare` dies with the bench.
        die_with_parent(&mut cmd);
        let daemons = cmd.spawn().context("starting sshd (unshare)")?;
        let mut peers = Peers {
            tools,
            dir: dir.to_path_buf(),
            hosts: hosts.to_vec(),
            ssh_config,
            daemons,
        };
        peers.wait_listening(Duration::from_secs(20))?;
        // One real login before any timing: a broken setup fails here, clearly.
        let first = hosts
            .first()
            .ok_or_else(|| anyhow!("no hosts for the peers"))?;
        let mut ssh = Command::new(&peers.tools.ssh);
        ssh.arg("-F")
            .arg(&peers.ssh_config)
            .arg(first.to_string())
            .arg("true");
        let r = run_captured(ssh, Duration::from_secs(20))?;
        if r.code != Some(0) {
            bail!("ssh to the bench's sshd on {first} failed{}", r.tail());
        }
        Ok(peers)
    }

    fn wait_listening(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let hosts = self.hosts.clone();
        for a in hosts {
            let addr = SocketAddr::from((a, SSH_PORT));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                let exited = matches!(self.daemons.try_wait(), Ok(Some(_)));
                if exited || Instant::now() > deadline {
                    let log = fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
                    bail!(
                        "sshd is not listening on {addr} ({}); sshd.log: {}",
                        if exited {
                            "the namespace's shell exited".to_string()
                        } else {
                            format!("after {} s", within.as_secs())
                        },
                        log.lines().take(5).collect::<Vec<_>>().join(" / ")
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn host_file(&self, n: usize, name: &str, header: &str) -> anyhow::Result<PathBuf> {
        let n = n.min(self.hosts.len());
        let mut text = String::from(header);
        for a in &self.hosts[..n] {
            text.push_str(&format!("{a}\n"));
        }
        let path = self.dir.join(format!("{name}-{n}"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// `pdsh -R ssh -f 64 -w ^HOSTS CMD` over the first `n` hosts: (wall ms, CPU ms of
    /// pdsh and its ssh clients). Every host must have printed a line.
    pub fn pdsh(&self, n: usize, command: &str, timeout: Duration) -> anyhow::Result<(f64, f64)> {
        let hosts = self.host_file(n, "pdsh-hosts", "")?;
        let mut c = Command::new(&self.tools.pdsh);
        c.args(["-R", "ssh", "-f", &PDSH_FANOUT.to_string(), "-w"])
            .arg(format!("^{}", hosts.display()))
            .arg(command)
            .env(
                "PDSH_SSH_ARGS_APPEND",
                format!("-F {}", self.ssh_config.display()),
            );
        let r = run_captured(c, timeout).context("pdsh")?;
        let answered = self.answered(&r, |l| l.split_once(':').map(|(h, _)| h.trim()));
        if r.code != Some(0) || answered < n {
            bail!("pdsh: {answered} of {n} hosts answered{}", r.tail());
        }
        Ok((r.wall.as_secs_f64() * 1000.0, r.cpu.as_secs_f64() * 1000.0))
    }

    /// `ansible all -m command -a CMD -f 50` over the first `n` hosts, with Ansible's
    /// stock SSH settings (ControlPersist included) plus the bench's ssh_config; wall ms.
    /// Every host must report rc=0.
    pub fn ansible(&self, n: usize, command: &str, timeout: Duration) -> anyhow::Result<f64> {
        let inventory = self.host_file(n, "ansible-hosts", "[bench]\n")?;
        let home = self.dir.join("ansible");
        // A new control path directory per run: each run starts cold, like sloth's.
        let control = home.join(format!("cp-{}", unique()));
        fs::create_dir_all(&control)?;
        let mut c = Command::new(&self.tools.ansible);
        c.arg("all")
            .arg("-i")
            .arg(&inventory)
            .args(["-m", "command", "-a", command])
            .args(["-f", &ANSIBLE_FORKS.to_string()])
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control)
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            .env(
                "ANSIBLE_SSH_EXTRA_ARGS",
                format!("-F {}", self.ssh_config.display()),
            )
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_DEPRECATION_WARNINGS", "False")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False");
        let r = run_captured(c, timeout).context("ansible");
        // ControlPersist leaves one ssh master per host for 60 s: end them now.
        stop_processes_mentioning(&control.to_string_lossy());
        let r = r?;
        let answered = self.answered(&r, |l| {
            l.contains(" | CHANGED | rc=0")
                .then(|| l.split(" | ").next())
                .flatten()
        });
        if r.code != Some(0) || answered < n {
            bail!("ansible: {answered} of {n} hosts reported rc=0{}", r.tail());
        }
        Ok(r.wall.as_secs_f64() * 1000.0)
    }

    /// Distinct hosts of ours named by the stdout lines (`host_of` picks the name).
    fn answered<'a>(
        &self,
        r: &'a MasterRun,
        host_of: impl Fn(&'a str) -> Option<&'a str>,
    ) -> usize {
        let mut seen: Vec<&str> = r.stdout.lines().filter_map(host_of).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.iter()
            .filter(|h| h.parse::<Ipv4Addr>().is_ok_and(|a| self.hosts.contains(&a)))
            .count()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        use rustix::process::{kill_process_group, Pid, Signal};
        let pgid = i32::try_from(self.daemons.id())
            .ok()
            .and_then(Pid::from_raw);
        // The process group we created; the shell is not yet reaped.
        if let Some(g) = pgid {
            let _ = kill_process_group(g, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemons.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (the namespace dies with its shell anyway).
        // A process group id names no other process even after the shell is reaped,
        // as long as a member of the group lives.
        if let Some(g) = pgid {
            let _ = kill_process_group(g, Signal::KILL);
        }
        let _ = self.daemons.wait();
    }
}

/// The home directory of the user the bench runs as (from the password database, not
/// `$HOME`, which `sudo -E` would carry over from another user).
///
/// Through libc: the password database is libc's (NSS), rustix has no getpwuid.
fn login_home() -> anyhow::Result<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at
    // once, on this thread, before any other call that could overwrite it.
    unsafe {
        let pw = libc::getpwuid(rustix::process::geteuid().as_raw());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            bail!("--peers: the current user has no home directory in the password database");
        }
        Ok(std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned())
    }
}

/// A name no other run of this process uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// SIGTERM every process whose command line contains `needle` (the bench's own ssh
/// control masters, which detach from us).
fn stop_processes_mentioning(needle: &str) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
        let Some(pid) = pid
            .filter(|p| *p > 0)
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            // A pid read from /proc; at worst the process is gone.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}
