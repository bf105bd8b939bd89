//! `--local-fleet`: real `sloth-agent` processes on 127.0.0.1 with a throw-away
//! CA, stopped on exit, on error and on Ctrl-C (and killed by the kernel if the
//! master itself dies, via PR_SET_PDEATHSIG).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use sloth_transport as tls;

use crate::mesh::MasterCerts;

/// Pids of every agent this process started, so a signal handler can stop them.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Their throw-away certificate directories, removed by [`kill_all`] too.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub struct LocalFleet {
    _dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    pub addresses: HashMap<String, String>,
    pub certs: MasterCerts,
}

/// Where the agent binary is: $SLOTH_AGENT_BIN, or next to this executable.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLOTH_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating sloth-master")?;
    let mut candidates = vec![me.with_file_name("sloth-agent")];
    if let Some(parent) = me.parent().and_then(|p| p.parent()) {
        candidates.push(parent.join("sloth-agent"));
    }
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    bail!(
        "cannot find the sloth-agent binary next to {} (build it with `cargo build --release`, or set SLOTH_AGENT_BIN)",
        me.display()
    )
}

impl LocalFleet {
    /// Start one agent per name. Call from the main thread: the agents' parent-death
    /// signal is tied to the thread that starts them.
    pub fn start(names: &[String], extra_args: &[String]) -> anyhow::Result<LocalFleet> {
        let dir = tempfile::Builder::new()
            .prefix("sloth-fleet-")
            .tempdir()
            .context("creating a temporary directory")?;
        let ca = tls::generate_ca("sloth local fleet CA")?;
        tls::write_pem_files(dir.path(), "ca", &ca)?;
        let master = tls::issue_master(&ca, "master")?;
        tls::write_pem_files(dir.path(), "master", &master)?;
        DIRS.lock().push(dir.path().to_path_buf());
        let bin = agent_binary()?;
        let mut fleet = LocalFleet {
            children: Vec::new(),
            addresses: HashMap::new(),
            certs: MasterCerts {
                own: master,
                ca: ca.cert.clone(),
            },
            _dir: dir,
        };
        let (tx, rx) = mpsc::channel::<(String, Result<String, String>)>();
        for name in names {
            let pem = tls::issue_agent(&ca, name, &["127.0.0.1".to_string()])?;
            let (cert, key) = tls::write_pem_files(fleet._dir.path(), name, &pem)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg("--ca")
                .arg(fleet._dir.path().join("ca.crt"))
                .arg("--name")
                .arg(name)
                .args(extra_args)
                // Local agents share the master's terminal: only their warnings.
                .env(
                    "SLOTH_LOG",
                    std::env::var("SLOTH_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            PIDS.lock().push(child.id());
            let stdout = child.stdout.take();
            fleet.children.push((name.clone(), child));
            let tx = tx.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let Some(out) = stdout else {
                    let _ = tx.send((name, Err("no stdout".into())));
                    return;
                };
                let mut lines = BufReader::new(out).lines();
                let first = match lines.next() {
                    Some(Ok(l)) => match l.rsplit_once(" listening on ") {
                        Some((_, addr)) => Ok(addr.trim().to_string()),
                        None => Err(format!("unexpected first line: {l}")),
                    },
                    _ => Err("the agent exited before it was ready".into()),
                };
                let _ = tx.send((name, first));
                // Keep draining so the agent never blocks on a full pipe.
                for _ in lines {}
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(20);
        while fleet.addresses.len() < names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, Ok(addr))) => {
                    fleet.addresses.insert(name, addr);
                }
                Ok((name, Err(e))) => bail!("local agent {name} failed to start: {e}"),
                Err(_) => bail!("local agents did not start within 20 s"),
            }
        }
        Ok(fleet)
    }

    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            // SAFETY: plain kill(2) on a child we started and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (_, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        let mine: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        PIDS.lock().retain(|p| !mine.contains(p));
        self.children.clear();
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// From a signal handler: kill every local agent at once.
pub fn kill_all() {
    for pid in PIDS.lock().drain(..) {
        // SAFETY: kill(2) on pids we started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    for dir in DIRS.lock().drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
