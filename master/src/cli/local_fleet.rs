//! `--local-fleet`: real `sloth-agent` processes on 127.0.0.1 with a throw-away
//! CA, stopped on exit, on error and on Ctrl-C (and killed by the kernel if the
//! master itself dies: the launcher sets their parent-death signal).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use parking_lot::Mutex;
use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
use sloth_launcher::{AgentCommand, RunningAgent};
use sloth_transport as tls;

use crate::engine::mesh::MasterCerts;

/// Pids of every agent this process started, so a signal handler can stop them.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Their throw-away certificate directories, removed by [`terminate_all`] too. Its
/// lock is held while a fleet being started writes into one, and `true` once
/// [`terminate_all`] ran: a start interrupted half-way writes no more (it would
/// make the removed directory again, keys and all) and launches nothing.
static DIRS: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

/// The most agents a local fleet may have (`--local-fleet N`, or an inventory's hosts).
pub const MAX_AGENTS: usize = 1000;

/// How long local agents may take to print their readiness line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long they get to exit after `SIGTERM` before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub struct LocalFleet {
    _dir: tempfile::TempDir,
    agents: Vec<RunningAgent>,
    pub addresses: HashMap<String, String>,
    pub certs: MasterCerts,
}

impl LocalFleet {
    /// Start one agent per name. Call from the main thread: the agents' parent-death
    /// signal is tied to the thread that starts them.
    pub fn start(names: &[String], extra_args: &[String]) -> anyhow::Result<LocalFleet> {
        if names.len() > MAX_AGENTS {
            return Err(anyhow!(
                "{} local agents is more than this machine should start (at most {MAX_AGENTS})",
                names.len()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("sloth-fleet-")
            .tempdir()
            .context("creating a temporary directory")?;
        {
            let mut dirs = DIRS.lock();
            if dirs.1 {
                return Err(anyhow!("interrupted"));
            }
            dirs.0.push(dir.path().to_path_buf());
        }
        // Writes into the directory unless the fleet was stopped meanwhile.
        let write = |stem: &str, pem: &tls::Pem| -> anyhow::Result<(PathBuf, PathBuf)> {
            let dirs = DIRS.lock();
            if dirs.1 {
                return Err(anyhow!("interrupted"));
            }
            tls::write_pem_files(dir.path(), stem, pem)
        };
        let ca = tls::generate_ca("sloth local fleet CA")?;
        let (ca_crt, _) = write("ca", &ca)?;
        let master = tls::issue_master(&ca, "master", tls::Lifetime::MASTER)?;
        write("master", &master)?;
        let bin = sloth_launcher::agent_binary().map_err(|e| anyhow!(e))?;
        // Local agents share the master's terminal: only their warnings.
        let log_filter = std::env::var("SLOTH_LOG").unwrap_or_else(|_| "warn".into());
        let mut cmds = Vec::with_capacity(names.len());
        for name in names {
            let pem =
                tls::issue_agent(&ca, name, &["127.0.0.1".to_string()], tls::Lifetime::AGENT)?;
            let (cert, key) = write(name, &pem)?;
            cmds.push(
                AgentCommand::new(&bin, name, "127.0.0.1:0")
                    .identity(&cert, &key, &ca_crt)
                    // Local agents audit into the fleet's directory, gone with it.
                    .args([
                        std::ffi::OsStr::new("--audit-log"),
                        dir.path().join(format!("{name}.audit.log")).as_os_str(),
                    ])
                    .args(extra_args)
                    .env("SLOTH_LOG", &log_filter),
            );
        }
        // Each agent is known to [`terminate_all`] as soon as it is spawned; one that
        // stopped the fleet meanwhile stops the launch (and the agents started).
        let mut registered = Vec::new();
        let launched = sloth_launcher::launch_all_watched(cmds, START_TIMEOUT, |pid| {
            let dirs = DIRS.lock();
            if dirs.1 {
                return false;
            }
            PIDS.lock().push(pid);
            registered.push(pid);
            true
        });
        let agents = match launched {
            Ok(a) => a,
            Err(e) => {
                // They were stopped (and reaped) by the launch: forget their pids.
                PIDS.lock().retain(|p| !registered.contains(p));
                return Err(anyhow!("local {e}"));
            }
        };
        let addresses = agents
            .iter()
            .map(|a| (a.name().to_string(), a.addr().to_string()))
            .collect();
        Ok(LocalFleet {
            _dir: dir,
            agents,
            addresses,
            certs: MasterCerts {
                own: master,
                ca: ca.cert.clone(),
                crl: None,
                renewer: None,
            },
        })
    }

    pub fn stop(&mut self) {
        sloth_launcher::stop_all(&mut self.agents, STOP_GRACE);
        let mine: Vec<u32> = self.agents.iter().map(RunningAgent::pid).collect();
        PIDS.lock().retain(|p| !mine.contains(p));
        self.agents.clear();
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// From a signal handler: stop every local agent within `grace`. `SIGTERM` first, so
/// that each kills the commands its tasks started (a `SIGKILL`ed agent would leave
/// them running), then `SIGKILL` for any still there.
pub fn terminate_all(grace: Duration) {
    // First: no fleet being started registers or writes anything from here on.
    let dirs = {
        let mut d = DIRS.lock();
        d.1 = true;
        std::mem::take(&mut d.0)
    };
    let pids: Vec<Pid> = PIDS
        .lock()
        .drain(..)
        .filter_map(|p| i32::try_from(p).ok().and_then(Pid::from_raw))
        .collect();
    for pid in &pids {
        let _ = kill_process(*pid, Signal::TERM);
    }
    let deadline = std::time::Instant::now() + grace;
    for pid in pids {
        // They are this process's children: reaped here, or killed at the deadline.
        loop {
            match waitpid(Some(pid), WaitOptions::NOHANG) {
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = kill_process(pid, Signal::KILL);
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                    break;
                }
                // Exited, or no longer ours to wait for.
                _ => break,
            }
        }
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
