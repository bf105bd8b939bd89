//! Starting `sloth-agent` processes and knowing when they serve.
//!
//! An agent that is ready prints one [`Ready`] line on its stdout, a JSON object
//! such as `{"event":"ready","name":"web-01","addr":"127.0.0.1:7447","pid":4242,
//! "version":"0.1.0"}`, and nothing else there. The agent writes it with
//! [`Ready::line`]; everything that starts agents (`--local-fleet`, the tests, the
//! bench) reads it with [`Ready::parse`] through [`AgentCommand`], so the format lives
//! here only.
//!
//! Agents started here get `SIGKILL` when the thread that started them exits (Linux's
//! parent-death signal), so a crashed or killed parent never leaves agents behind.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

/// The one line a ready agent prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Always `"ready"`: what the line announces.
    pub event: String,
    /// The agent's name (its certificate's name).
    pub name: String,
    /// The address it accepts QUIC connections on (the port resolved).
    pub addr: SocketAddr,
    pub pid: u32,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// It waits to be enrolled (`sloth-master enroll`) before it serves tasks.
    #[serde(default)]
    pub enrolling: bool,
}

impl Ready {
    pub fn new(name: &str, addr: SocketAddr, version: &str) -> Ready {
        Ready {
            event: "ready".into(),
            name: name.into(),
            addr,
            pid: std::process::id(),
            version: version.into(),
            enrolling: false,
        }
    }

    /// The line of an agent that waits to be enrolled.
    pub fn enrolling(mut self) -> Ready {
        self.enrolling = true;
        self
    }

    /// The line to print (without the newline).
    pub fn line(&self) -> String {
        // A struct of strings, an address and a number always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read a readiness line; the error says what was wrong with it.
    pub fn parse(line: &str) -> Result<Ready, String> {
        let short: String = line.chars().take(200).collect();
        let r: Ready = serde_json::from_str(line.trim())
            .map_err(|e| format!("not a readiness line ({e}): {short:?}"))?;
        if r.event != "ready" {
            return Err(format!(
                "not a readiness line (event {:?}): {short:?}",
                r.event
            ));
        }
        Ok(r)
    }
}

/// Where `sloth-agent` is: `$SLOTH_AGENT_BIN`, or next to the running executable (or
/// one directory up, as for test binaries in `target/debug/deps`).
pub fn agent_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SLOTH_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let mut candidates = vec![me.with_file_name("sloth-agent")];
    if let Some(parent) = me.parent().and_then(|p| p.parent()) {
        candidates.push(parent.join("sloth-agent"));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        format!(
            "cannot find the sloth-agent binary next to {} (build it with `cargo build --release`, or set SLOTH_AGENT_BIN)",
            me.display()
        )
    })
}

/// Where an agent's stderr goes.
enum Stderr {
    Inherit,
    /// A file; its tail is quoted when the agent fails to start.
    File(PathBuf),
    Null,
}

/// How to start one agent: `sloth-agent --listen ADDR --name NAME --cert --key --ca`
/// and any further arguments.
pub struct AgentCommand {
    bin: PathBuf,
    name: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stderr: Stderr,
}

impl AgentCommand {
    pub fn new(bin: &Path, name: &str, listen: &str) -> AgentCommand {
        AgentCommand {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            args: vec![
                "--listen".into(),
                listen.into(),
                "--name".into(),
                name.into(),
            ],
            env: Vec::new(),
            stderr: Stderr::Inherit,
        }
    }

    /// `--cert`, `--key` and `--ca`.
    pub fn identity(mut self, cert: &Path, key: &Path, ca: &Path) -> AgentCommand {
        for (flag, path) in [("--cert", cert), ("--key", key), ("--ca", ca)] {
            self.args.push(flag.into());
            self.args.push(path.into());
        }
        self
    }

    /// Further arguments, after the others.
    pub fn args<I, S>(mut self, args: I) -> AgentCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> AgentCommand {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Append the agent's stderr to `path` (created if missing).
    pub fn stderr_to(mut self, path: &Path) -> AgentCommand {
        self.stderr = Stderr::File(path.to_path_buf());
        self
    }

    pub fn stderr_null(mut self) -> AgentCommand {
        self.stderr = Stderr::Null;
        self
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Start the agent; [`Starting::wait_ready`] waits for its readiness line.
    pub fn spawn(self) -> Result<Starting, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = match &self.stderr {
            Stderr::Inherit => {
                cmd.stderr(Stdio::inherit());
                None
            }
            Stderr::Null => {
                cmd.stderr(Stdio::null());
                None
            }
            Stderr::File(p) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        format!("agent {}: cannot open {}: {e}", self.name, p.display())
                    })?;
                cmd.stderr(f);
                Some(p.clone())
            }
        };
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "agent {}: cannot start {}: {e}",
                self.name,
                self.bin.display()
            )
        })?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(out).lines();
                let _ = tx.send(lines.next().and_then(Result::ok));
                // Keep draining so the agent never blocks on a full pipe.
                for _ in lines {}
            });
        }
        Ok(Starting {
            name: self.name,
            child: Some(child),
            log,
            args: self.args,
            first_line: rx,
        })
    }
}

/// The process `cmd` starts gets `SIGKILL` when the thread that started it exits,
/// however that happens.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one prctl(2)
    // system call, which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// An agent started whose readiness line has not been read yet. Dropped before it is
/// ready, it kills and reaps the agent.
pub struct Starting {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    args: Vec<OsString>,
    first_line: mpsc::Receiver<Option<String>>,
}

impl Starting {
    /// Wait up to `timeout` for the readiness line. On failure the agent is killed,
    /// and the error names it, says why, and quotes the end of its stderr log.
    pub fn wait_ready(mut self, timeout: Duration) -> Result<RunningAgent, String> {
        let line = self.first_line.recv_timeout(timeout);
        let outcome = match line {
            Ok(Some(l)) => Ready::parse(&l),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                Err(format!("exited before it was ready{status}"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("not ready within {} ms", timeout.as_millis()))
            }
        };
        match (outcome, self.child.take()) {
            (Ok(ready), Some(child)) => Ok(RunningAgent {
                ready,
                child,
                log: self.log.take(),
                args: std::mem::take(&mut self.args),
            }),
            (Ok(_), None) => Err(format!("agent {}: no process", self.name)),
            (Err(why), child) => {
                if let Some(mut c) = child {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Err(format!(
                    "agent {}: {why}{}",
                    self.name,
                    log_tail(self.log.as_deref())
                ))
            }
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last lines of an agent's stderr log, for an error message.
fn log_tail(log: Option<&Path>) -> String {
    let Some(path) = log else {
        return String::new();
    };
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return String::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its log ({}) ends:\n  {tail}", path.display())
    }
}

/// Start every agent at once and wait until all are ready (or one fails, or
/// `timeout` passes: then every one of them is stopped).
pub fn launch_all(cmds: Vec<AgentCommand>, timeout: Duration) -> Result<Vec<RunningAgent>, String> {
    launch_all_watched(cmds, timeout, |_| true)
}

/// [`launch_all`], telling `spawned` each agent's pid as it starts; when it returns
/// false (the caller is being stopped), every agent started is stopped and the launch
/// fails.
pub fn launch_all_watched(
    cmds: Vec<AgentCommand>,
    timeout: Duration,
    mut spawned: impl FnMut(u32) -> bool,
) -> Result<Vec<RunningAgent>, String> {
    let deadline = Instant::now() + timeout;
    let mut starting = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        let s = cmd.spawn()?;
        let keep = s.child.as_ref().is_none_or(|c| spawned(c.id()));
        starting.push(s);
        if !keep {
            // Dropping them kills them.
            return Err("stopped while the agents started".into());
        }
    }
    let mut ready = Vec::with_capacity(starting.len());
    for s in starting {
        // Each waits for what is left of the common deadline; the others keep
        // starting meanwhile. Returning early drops (kills) the rest.
        ready.push(s.wait_ready(deadline.saturating_duration_since(Instant::now()))?);
    }
    Ok(ready)
}

/// A ready agent. Dropping it does not stop it: call [`RunningAgent::stop`].
pub struct RunningAgent {
    pub ready: Ready,
    child: Child,
    log: Option<PathBuf>,
    args: Vec<OsString>,
}

impl RunningAgent {
    pub fn name(&self) -> &str {
        &self.ready.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.ready.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr log, if it goes to a file.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The arguments it was started with (after the binary).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Send `sig` (a child not yet reaped: the pid is still ours).
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        kill_process(Pid::from_child(&self.child), sig).map_err(Into::into)
    }

    /// `SIGTERM`, then `SIGKILL` if it has not exited within `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        stop_all(std::slice::from_mut(self), grace);
    }
}

/// [`RunningAgent::stop`] for many at once: all get `SIGTERM` first, then share one
/// grace period.
pub fn stop_all(agents: &mut [RunningAgent], grace: Duration) {
    for a in agents.iter() {
        let _ = a.signal(Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    for a in agents.iter_mut() {
        loop {
            match a.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = a.child.kill();
                    let _ = a.child.wait();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let r = Ready::new("web-01", "127.0.0.1:7447".parse().unwrap(), "1.2.3");
        let line = r.line();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(Ready::parse(&line).unwrap(), r);
        assert_eq!(Ready::parse(&format!("  {line}\r")).unwrap(), r);
    }

    #[test]
    fn other_lines_are_refused_with_the_reason() {
        let e = Ready::parse("sloth-agent web-01 listening on 127.0.0.1:1").unwrap_err();
        assert!(e.starts_with("not a readiness line"), "{e}");
        let e = Ready::parse(
            r#"{"event":"bye","name":"a","addr":"127.0.0.1:1","pid":1,"version":"1"}"#,
        )
        .unwrap_err();
        assert!(e.contains("event \"bye\""), "{e}");
        let e =
            Ready::parse(r#"{"event":"ready","name":"a","addr":"nowhere","pid":1,"version":"1"}"#)
                .unwrap_err();
        assert!(e.contains("not a readiness line"), "{e}");
    }

    #[test]
    fn a_program_that_exits_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("sloth-launcher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("err.log");
        std::fs::write(&log, "first\nboom: bad certificate\n").unwrap();
        // `false` ignores its arguments and exits 1 without printing anything.
        let e = AgentCommand::new(Path::new("/bin/false"), "web-01", "127.0.0.1:0")
            .stderr_to(&log)
            .spawn()
            .unwrap()
            .wait_ready(Duration::from_secs(10))
            .err()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.starts_with("agent web-01: exited before it was ready"),
            "{e}"
        );
        assert!(e.contains("boom: bad certificate"), "{e}");
    }

    #[test]
    fn a_silent_program_times_out_and_is_killed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sloth-launcher-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Takes any arguments, prints nothing, never gets ready.
        let silent = dir.join("silent-agent");
        std::fs::write(&silent, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread forking while the file was open for writing can make
        // the exec fail with ETXTBSY for a moment: try again.
        let mut tries = 0;
        let starting = loop {
            match AgentCommand::new(&silent, "web-02", "127.0.0.1:0")
                .stderr_null()
                .spawn()
            {
                Err(e) if e.contains("Text file busy") && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        let pid = starting.child.as_ref().unwrap().id();
        let started = Instant::now();
        let e = starting
            .wait_ready(Duration::from_millis(300))
            .err()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e, "agent web-02: not ready within 300 ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Killed and reaped: the pid is gone.
        let gone = rustix::process::test_kill_process(Pid::from_raw(pid as i32).unwrap());
        assert!(gone.is_err(), "pid {pid} still alive");
    }
}
