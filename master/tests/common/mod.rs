//! Test harness: a fleet of real `sloth-agent` processes on 127.0.0.1, with real
//! certificates made by `sloth-master certs`, and a way to run scripts against it.
//!
//! Every test binary includes this module but not every one uses all of it.
#![allow(dead_code)]

pub mod container;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use sloth_launcher::{AgentCommand, RunningAgent};

/// Hard limit for one `sloth-master` invocation: a hang fails the test instead of CI.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the master looks for `sloth/sloth.toml` in tests: nowhere, so a config file
/// of the machine's user cannot change what a test runs.
pub const NO_CONFIG_HOME: &str = "/nonexistent/sloth-tests-config";

pub fn master_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sloth-master"))
}

/// `target/debug/sloth-agent`, next to the master binary.
pub fn agent_bin() -> PathBuf {
    let p = master_bin().with_file_name("sloth-agent");
    assert!(
        p.exists(),
        "{} does not exist: build it with `cargo build` or run `cargo test --workspace`",
        p.display()
    );
    p
}

/// The result of one finished `sloth-master` run.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; -1 when killed by a signal (or by the harness after [`RUN_TIMEOUT`]).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// Every stdout line with the time it arrived (since the start of the run).
    pub timed_lines: Vec<(Duration, String)>,
}

impl Output {
    /// Fields (tab separated, as Lua's `print` writes them) of every stdout line whose
    /// first field is `tag`, tag excluded.
    pub fn all(&self, tag: &str) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                (f.next() == Some(tag)).then(|| f.map(str::to_string).collect())
            })
            .collect()
    }

    /// The fields of the single stdout line tagged `tag` (panics with the whole output
    /// when there is not exactly one).
    pub fn one(&self, tag: &str) -> Vec<String> {
        let all = self.all(tag);
        assert_eq!(all.len(), 1, "expected one line tagged {tag:?}\n{self}");
        all.into_iter().next().unwrap()
    }

    /// When the single line tagged `tag` arrived (since the start of the run).
    pub fn time_of(&self, tag: &str) -> Duration {
        let hits: Vec<Duration> = self
            .timed_lines
            .iter()
            .filter(|(_, l)| l.split('\t').next() == Some(tag))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(hits.len(), 1, "expected one line tagged {tag:?}\n{self}");
        hits[0]
    }

    /// The fields after `tag` of the single line a task printed tagged `tag`
    /// (`[host task] tag\t...`), joined with tabs (like [`Output::line`]).
    pub fn task_line(&self, tag: &str) -> String {
        let hits: Vec<&str> = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix('[').and_then(|r| r.split_once("] ")))
            .map(|(_, rest)| rest)
            .filter(|rest| rest.split('\t').next() == Some(tag))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one task line tagged {tag:?}\n{self}"
        );
        hits[0]
            .split_once('\t')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default()
    }

    /// `one(tag)` joined back with tabs.
    pub fn line(&self, tag: &str) -> String {
        self.one(tag).join("\t")
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit code {} (timed out: {}, {:?}) ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.code, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A `sloth-master` process still running; stdout is readable line by line.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    stdout: Vec<(Instant, String)>,
    stderr_thread: Option<std::thread::JoinHandle<String>>,
    started: Instant,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        // Runs are recorded in a state directory of the tests', never in the user's.
        if !cmd.get_envs().any(|(k, _)| k == "SLOTH_STATE_DIR") {
            cmd.env("SLOTH_STATE_DIR", test_state_dir());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env_remove("SLOTH_AGENT_BIN");
        let started = Instant::now();
        let mut child = cmd.spawn().expect("starting sloth-master");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr_thread = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            String::from_utf8_lossy(&s).to_string()
        });
        Running {
            child,
            lines: rx,
            stdout: Vec::new(),
            stderr_thread: Some(stderr_thread),
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `timeout`) for a stdout line whose first tab-separated field is
    /// `tag` (or that equals it, or ends with it: a task's `print` comes prefixed with
    /// `[host task]`); returns it, or None.
    pub fn wait_for(&mut self, tag: &str, timeout: Duration) -> Option<String> {
        self.wait_for_at(tag, timeout).map(|(_, l)| l)
    }

    /// [`Running::wait_for`], with the time the line arrived.
    pub fn wait_for_at(&mut self, tag: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let matches = |l: &str| l == tag || l.split('\t').next() == Some(tag) || l.ends_with(tag);
        if let Some(hit) = self.stdout.iter().find(|(_, l)| matches(l)) {
            return Some(hit.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.stdout.push((t, l.clone()));
                    if matches(&l) {
                        return Some((t, l));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Wait for the process to end (killing it after `timeout`) and collect its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        let elapsed = self.started.elapsed();
        // The reader thread ends when the pipe closes (local agents may hold it a
        // little longer; do not wait forever for them).
        let drain_until = Instant::now() + Duration::from_secs(5);
        loop {
            let left = drain_until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.stdout.push(l),
                Err(_) => break,
            }
        }
        let stderr = self
            .stderr_thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let started = self.started;
        Output {
            code: status.and_then(|s| s.code()).unwrap_or(-1),
            stdout: self
                .stdout
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            stderr,
            timed_out,
            elapsed,
            timed_lines: self
                .stdout
                .iter()
                .map(|(t, l)| (t.saturating_duration_since(started), l.clone()))
                .collect(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The run history of this test process's masters (unless a test gives its own):
/// under `$SLOTH_STATE_DIR` when the test command set one (`scripts/test.sh` does, and
/// removes it after), else in the build's own temporary directory — never a directory
/// per test process left in `/tmp`.
pub fn test_state_dir() -> PathBuf {
    let base = std::env::var_os("SLOTH_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    base.join(format!("sloth-test-state-{}", std::process::id()))
}

/// `sloth-master ARGS` in `cwd`, to completion (or [`RUN_TIMEOUT`]).
pub fn sloth_master(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(master_bin());
    cmd.current_dir(cwd)
        .args(args)
        .env("XDG_CONFIG_HOME", NO_CONFIG_HOME);
    Running::spawn(cmd).finish(RUN_TIMEOUT)
}

/// `sloth-master certs init --dir DIR`.
pub fn certs_init(dir: &Path) {
    let out = sloth_master(
        Path::new("/"),
        &["certs", "init", "--dir", dir.to_str().unwrap()],
    );
    out.assert_code(0);
}

/// `sloth-master certs issue NAME --dir DIR`.
pub fn certs_issue(dir: &Path, name: &str) {
    let out = sloth_master(
        Path::new("/"),
        &["certs", "issue", name, "--dir", dir.to_str().unwrap()],
    );
    out.assert_code(0);
}

/// A running agent process.
pub struct Agent {
    pub name: String,
    pub addr: String,
    pub process: RunningAgent,
    pub log: PathBuf,
    /// Everything but `--listen` and `--name`, to restart it.
    args: Vec<std::ffi::OsString>,
}

impl Agent {
    /// Its `--audit-log`.
    pub fn audit_log(&self) -> PathBuf {
        let at = self
            .args
            .iter()
            .position(|a| a == "--audit-log")
            .expect("test agents have an audit log");
        PathBuf::from(&self.args[at + 1])
    }
}

/// How to start one agent.
pub struct AgentSpec<'a> {
    /// `--name`
    pub name: &'a str,
    /// Certificate and key: `DIR/STEM.crt`, `DIR/STEM.key`.
    pub cert_dir: &'a Path,
    pub cert_stem: &'a str,
    /// `--ca`
    pub ca: &'a Path,
    pub extra_args: &'a [&'a str],
}

/// How long an agent may take to print its readiness line.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Start `sloth-agent` on a free port and wait for its readiness line.
pub fn start_agent(spec: &AgentSpec, log_dir: &Path) -> Agent {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--cert".into(),
        spec.cert_dir.join(format!("{}.crt", spec.cert_stem)).into(),
        "--key".into(),
        spec.cert_dir.join(format!("{}.key", spec.cert_stem)).into(),
        "--ca".into(),
        spec.ca.into(),
    ];
    args.extend(spec.extra_args.iter().map(|a| a.into()));
    spawn_agent(spec.name, args, "127.0.0.1:0", log_dir)
}

fn spawn_agent(name: &str, args: Vec<std::ffi::OsString>, listen: &str, log_dir: &Path) -> Agent {
    let args = with_audit_log(name, args, log_dir);
    let (starting, log) = launch_agent(name, args.clone(), listen, log_dir);
    ready(name, starting, log, args)
}

/// Agents in tests keep their audit log beside their stderr log (as root, the default
/// would be /var/log/sloth), unless the test chose a place.
fn with_audit_log(
    name: &str,
    mut args: Vec<std::ffi::OsString>,
    log_dir: &Path,
) -> Vec<std::ffi::OsString> {
    if !args.iter().any(|a| a == "--audit-log") {
        args.push("--audit-log".into());
        args.push(
            log_dir
                .join(format!("audit-{}-{}.log", name, unique()))
                .into(),
        );
    }
    args
}

/// Start the process; [`ready`] waits for it.
fn launch_agent(
    name: &str,
    args: Vec<std::ffi::OsString>,
    listen: &str,
    log_dir: &Path,
) -> (sloth_launcher::Starting, PathBuf) {
    let log = log_dir.join(format!("agent-{}-{}.log", name, unique()));
    let starting = AgentCommand::new(&agent_bin(), name, listen)
        .args(args)
        .stderr_to(&log)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    (starting, log)
}

fn ready(
    name: &str,
    starting: sloth_launcher::Starting,
    log: PathBuf,
    args: Vec<std::ffi::OsString>,
) -> Agent {
    let process = starting
        .wait_ready(AGENT_START_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(process.name(), name);
    let addr = process.addr().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    Agent {
        name: name.to_string(),
        addr,
        process,
        log,
        args,
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// One inventory host.
#[derive(Clone, Debug)]
pub struct Host {
    pub address: String,
    pub groups: Vec<String>,
    /// Raw TOML inline table for `vars`, e.g. `{ role = "web" }`.
    pub vars: Option<String>,
}

/// A fleet of real agents with certificates from `sloth-master certs`.
pub struct TestFleet {
    pub dir: tempfile::TempDir,
    /// The certificate directory (`ca.crt`, `master.crt`, `NAME.crt`, ...).
    pub certs: PathBuf,
    pub agents: Vec<Agent>,
    pub hosts: BTreeMap<String, Host>,
}

impl TestFleet {
    /// Certificates, no agents yet.
    pub fn empty() -> TestFleet {
        let dir = tempfile::Builder::new()
            .prefix("sloth-test-")
            .tempdir()
            .unwrap();
        let certs = dir.path().join("certs");
        certs_init(&certs);
        TestFleet {
            dir,
            certs,
            agents: Vec::new(),
            hosts: BTreeMap::new(),
        }
    }

    /// One agent per name, each in the groups given.
    pub fn start(hosts: &[(&str, &[&str])]) -> TestFleet {
        let mut f = TestFleet::empty();
        for (name, groups) in hosts {
            f.add_agent(name, groups);
        }
        f
    }

    /// `web-01..web-N`, all in group `web`.
    pub fn web(n: usize) -> TestFleet {
        let names: Vec<String> = (1..=n).map(|i| format!("web-{i:02}")).collect();
        let hosts: Vec<(&str, &[&str])> =
            names.iter().map(|n| (n.as_str(), &["web"][..])).collect();
        TestFleet::start(&hosts)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a certificate for `name`, start its agent, add it to the inventory.
    pub fn add_agent(&mut self, name: &str, groups: &[&str]) {
        self.add_agent_with(name, groups, &[]);
    }

    pub fn add_agent_with(&mut self, name: &str, groups: &[&str], extra_args: &[&str]) {
        certs_issue(&self.certs, name);
        let certs = self.certs.clone();
        let ca = certs.join("ca.crt");
        self.add_custom_agent(
            &AgentSpec {
                name,
                cert_dir: &certs,
                cert_stem: name,
                ca: &ca,
                extra_args,
            },
            name,
            groups,
        );
    }

    /// Many agents in group `group` at once: certificates issued in-process, every
    /// process started before any is waited for.
    pub fn add_agents(&mut self, names: &[String], group: &str) {
        use sloth_transport as tls;
        let ca =
            tls::read_pem_files(&self.certs.join("ca.crt"), &self.certs.join("ca.key")).unwrap();
        for n in names {
            let pem = tls::issue_agent(&ca, n, &[], tls::Lifetime::AGENT).unwrap();
            tls::write_pem_files(&self.certs, n, &pem).unwrap();
        }
        let launched: Vec<_> = names
            .iter()
            .map(|n| {
                let args: Vec<std::ffi::OsString> = vec![
                    "--cert".into(),
                    self.certs.join(format!("{n}.crt")).into(),
                    "--key".into(),
                    self.certs.join(format!("{n}.key")).into(),
                    "--ca".into(),
                    self.certs.join("ca.crt").into(),
                ];
                let args = with_audit_log(n, args, self.dir.path());
                let (starting, log) = launch_agent(n, args.clone(), "127.0.0.1:0", self.dir.path());
                (n, starting, log, args)
            })
            .collect();
        for (n, starting, log, args) in launched {
            let a = ready(n, starting, log, args);
            self.add_host(&a.name.clone(), &a.addr, &[group]);
            self.agents.push(a);
        }
    }

    /// Start an agent from `spec` and list it in the inventory as `inventory_name`.
    pub fn add_custom_agent(&mut self, spec: &AgentSpec, inventory_name: &str, groups: &[&str]) {
        let a = start_agent(spec, self.dir.path());
        self.add_host(inventory_name, &a.addr, groups);
        self.agents.push(a);
    }

    /// An inventory entry (no agent started).
    pub fn add_host(&mut self, name: &str, address: &str, groups: &[&str]) {
        self.hosts.insert(
            name.to_string(),
            Host {
                address: address.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                vars: None,
            },
        );
    }

    pub fn set_vars(&mut self, name: &str, vars: &str) {
        self.hosts.get_mut(name).unwrap().vars = Some(vars.to_string());
    }

    pub fn inventory_text(&self) -> String {
        let mut s = String::new();
        for (name, h) in &self.hosts {
            s += &format!("[hosts.{name}]\naddress = \"{}\"\n", h.address);
            let groups: Vec<String> = h.groups.iter().map(|g| format!("\"{g}\"")).collect();
            s += &format!("groups = [{}]\n", groups.join(", "));
            if let Some(v) = &h.vars {
                s += &format!("vars = {v}\n");
            }
            s += "\n";
        }
        s
    }

    /// Write the inventory, return its path.
    pub fn inventory(&self) -> PathBuf {
        let p = self.dir.path().join("inventory.toml");
        std::fs::write(&p, self.inventory_text()).unwrap();
        p
    }

    fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    fn agent_mut(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.agent(name).process.pid()
    }

    pub fn addr(&self, name: &str) -> String {
        self.agent(name).addr.clone()
    }

    /// The agent's stderr so far.
    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.agent(name).log).unwrap_or_default()
    }

    /// Is the agent process still running (not exited)?
    pub fn alive(&mut self, name: &str) -> bool {
        matches!(
            self.agent_mut(name).process.child_mut().try_wait(),
            Ok(None)
        )
    }

    fn signal(&self, name: &str, sig: Signal) {
        if let Err(e) = self.agent(name).process.signal(sig) {
            panic!("kill({name}, {sig:?}): {e}");
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, name: &str) {
        self.signal(name, Signal::KILL);
        let _ = self.agent_mut(name).process.child_mut().wait();
    }

    /// Start a killed agent again on the same address.
    pub fn restart(&mut self, name: &str) {
        let dir = self.dir.path().to_path_buf();
        let a = self.agent_mut(name);
        let _ = a.process.child_mut().kill();
        let _ = a.process.child_mut().wait();
        let fresh = spawn_agent(name, a.args.clone(), &a.addr.clone(), &dir);
        assert_eq!(fresh.addr, a.addr);
        *a = fresh;
    }

    /// SIGSTOP (freeze).
    pub fn stop(&self, name: &str) {
        self.signal(name, Signal::STOP);
    }

    /// SIGCONT.
    pub fn resume(&self, name: &str) {
        self.signal(name, Signal::CONT);
    }

    pub fn script_path(&self, file_name: &str, script: &str) -> PathBuf {
        let p = self.dir.path().join(file_name);
        std::fs::write(&p, script).unwrap();
        p
    }

    pub fn command(&self, file_name: &str, script: &str, extra_args: &[&str]) -> Command {
        let script = self.script_path(file_name, script);
        let inv = self.inventory();
        let mut cmd = Command::new(master_bin());
        // Also when a test spawns it itself rather than through `Running::spawn`: runs
        // are recorded in the tests' state directory, never in the user's.
        cmd.current_dir(self.dir.path())
            .env("XDG_CONFIG_HOME", NO_CONFIG_HOME)
            .env("SLOTH_STATE_DIR", test_state_dir())
            .arg("run")
            .arg(&script);
        // Extra arguments may replace the inventory or the certificate directory.
        if !extra_args.iter().any(|a| *a == "-i" || *a == "--inventory") {
            cmd.arg("-i").arg(&inv);
        }
        if !extra_args.contains(&"--certs") {
            cmd.arg("--certs").arg(&self.certs);
        }
        cmd.args(extra_args);
        cmd
    }

    /// `sloth-master run t.sloth -i INV --certs D EXTRA...`, to completion.
    pub fn run(&self, script: &str, extra_args: &[&str]) -> Output {
        self.run_named("t.sloth", script, extra_args)
    }

    pub fn run_named(&self, file_name: &str, script: &str, extra_args: &[&str]) -> Output {
        Running::spawn(self.command(file_name, script, extra_args)).finish(RUN_TIMEOUT)
    }

    /// Start a run and return at once; read its stdout with [`Running::wait_for`].
    pub fn spawn_run(&self, script: &str, extra_args: &[&str]) -> Running {
        Running::spawn(self.command("t.sloth", script, extra_args))
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.process.child_mut().kill();
            let _ = a.process.child_mut().wait();
        }
    }
}

/// The `--json` document a run printed.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// `(host, resource, target)` of every resource a `--json` document reports as
/// changing (or, in check mode, as going to change).
pub fn changed_set(doc: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for (host, h) in doc["hosts"].as_object().expect("hosts") {
        for c in h["changes"].as_array().expect("changes") {
            if c["kind"] == "resource" && c["changed"] == true {
                set.insert((
                    host.clone(),
                    c["resource"].as_str().unwrap_or_default().to_string(),
                    c["target"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    set
}

/// A UDP port on 127.0.0.1 with nothing listening (bound, then closed).
pub fn dead_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Process ids whose parent is `ppid` and whose command name is `comm`.
pub fn children_named(ppid: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        if field("PPid:").and_then(|p| p.parse::<u32>().ok()) == Some(ppid)
            && field("Name:").as_deref() == Some(comm)
        {
            out.push(pid);
        }
    }
    out
}

/// Is `pid` a live (not zombie) process?
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // "pid (comm) S ..."; comm may contain spaces, the state follows the last ')'.
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined with spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A QUIC client endpoint that presents the fleet's master certificate from `certs`
/// (for tests that talk to agents with hand-made frames). Call inside a tokio runtime.
pub fn master_endpoint(certs: &Path) -> quinn::Endpoint {
    use sloth_transport as tls;
    let own = tls::read_pem_files(&certs.join("master.crt"), &certs.join("master.key")).unwrap();
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    let transport = tls::transport_config(Duration::from_secs(1), Duration::from_secs(4));
    let client = tls::master_client_config(&own, &ca, None, transport).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    ep
}
