//! `sloth-bench`: the benchmark table of issue #6.
//!
//! A benchmark here is a program that prints one table, not a timed test. The machine
//! is noisy, so every figure is measured beside its baseline in the same run, with the
//! repetitions of a measurement and of its baseline interleaved; medians and ratios
//! are what count.
//!
//! The sloth figures drive the real `sloth-master` and `sloth-agent` binaries (from
//! `--bin-dir`, default: the directory of this executable): the agents are started
//! here like a real deployment (certificates from `sloth-master certs init/issue` in a
//! temporary directory, an inventory TOML), and the scripts in `scripts/bench/` time
//! themselves with `sys.monotonic_ms` and print `BENCH name value` lines that are
//! parsed here. The baselines (a bare quinn request/response with the same mTLS and
//! transport configuration, and the sloth control protocol spoken directly over quinn)
//! run inside this process.
//!
//! Usage: `sloth-bench [--agents N] [--reps R] [--quick]` from the repository root
//! (`scripts/bench.sh` builds and runs it). See docs/benchmarks.md.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use sloth_launcher::{AgentCommand, RunningAgent};
use sloth_proto::protocol::Control;
use sloth_transport::wire;
use sloth_transport::{self as tls, Pem};

mod peers;

/// The same allocator as `sloth-master` and `sloth-agent`, so that the bare quinn
/// baselines measured in this process are not slowed by a different one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes of each request and each response of the bare quinn baseline.
const MSG_BYTES: usize = 100;
/// Tasks (or requests) in flight for the throughput rows.
const IN_FLIGHT: usize = 64;
/// Keep-alive and idle timeout: what the agent and the master use.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the agents of a run may take to print their readiness lines.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    name = "sloth-bench",
    about = "Benchmarks of sloth against bare quinn baselines; prints one table"
)]
struct Args {
    /// Agents for the fan-out rows (health, fleet.ping, master memory); default 200
    /// (8 with --quick).
    #[arg(long)]
    agents: Option<usize>,
    /// Repetitions of every measurement (interleaved with its baseline); default 5
    /// (1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds-scale run with small N and few samples (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Where sloth-master and sloth-agent are; default: next to this executable.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The repository root (scripts/bench/, examples/); default: the current directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Also time pdsh and Ansible over the same hosts (needs root, pdsh, OpenSSH's
    /// sshd and ansible; `scripts/bench.sh --peers` installs them).
    #[arg(long)]
    peers: bool,
    /// The `ansible` executable for --peers; default: `ansible` on PATH.
    #[arg(long)]
    ansible: Option<PathBuf>,
    /// Agents for the large fan-out rows (exec, health and master memory); default 1000
    /// (16 with --quick); 0 skips them.
    #[arg(long)]
    fanout: Option<usize>,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Params {
    agents: usize,
    /// Hosts of the large fan-out rows (0: skipped).
    fanout: usize,
    reps: usize,
    /// Repetitions of the peer rows (Ansible takes a minute per run at 200 hosts).
    peer_reps: usize,
    peers: bool,
    quick: bool,
    quinn_seq: usize,
    quinn_warmup: usize,
    quinn_conc: usize,
    await_n: usize,
    await_warmup: usize,
    pool_n: usize,
    pool_warmup: usize,
    local_n: usize,
    state_n: usize,
    ping_rounds: usize,
    hold_ms: u64,
    timeout: Duration,
}

impl Params {
    fn new(a: &Args) -> Params {
        let q = a.quick;
        let reps = a.reps.unwrap_or(if q { 1 } else { 5 }).max(1);
        Params {
            agents: a.agents.unwrap_or(if q { 8 } else { 200 }).max(4),
            fanout: a.fanout.unwrap_or(if q { 16 } else { 1000 }),
            reps,
            peer_reps: reps.min(3),
            peers: a.peers,
            quick: q,
            quinn_seq: if q { 300 } else { 2000 },
            quinn_warmup: if q { 50 } else { 200 },
            quinn_conc: if q { 3000 } else { 20000 },
            await_n: if q { 200 } else { 1000 },
            await_warmup: if q { 20 } else { 100 },
            pool_n: if q { 300 } else { 2000 },
            pool_warmup: if q { 64 } else { 256 },
            local_n: if q { 300 } else { 2000 },
            state_n: if q { 500 } else { 5000 },
            ping_rounds: if q { 3 } else { 5 },
            hold_ms: if q { 800 } else { 1500 },
            timeout: Duration::from_secs(if q { 60 } else { 300 }),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match real_main(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sloth-bench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn real_main(args: &Args) -> anyhow::Result<()> {
    let p = Params::new(args);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locating sloth-bench")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("sloth-bench has no parent directory"))?,
    };
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let bins = Bins {
        master: bin_dir.join("sloth-master"),
        agent: bin_dir.join("sloth-agent"),
        repo: repo.clone(),
    };
    for b in [&bins.master, &bins.agent] {
        if !b.is_file() {
            bail!(
                "{} not found (build with `cargo build --release --workspace`, or pass --bin-dir)",
                b.display()
            );
        }
    }
    if !repo.join("scripts/bench/await.sloth").is_file() {
        bail!(
            "{} is not the repository root (no scripts/bench/await.sloth); run from it or pass --repo",
            repo.display()
        );
    }
    let started = Instant::now();
    let tools = if args.peers {
        Some(peers::Tools::find(args.ansible.as_deref())?)
    } else {
        None
    };
    let mut b = Bench::new(p.clone(), bins, tools)?;
    let table = b.run_all();
    b.stop_agents();
    let took = started.elapsed();
    println!();
    println!(
        "sloth benchmarks: {} agents, {} rep(s){}, {} CPU(s), Linux {}, {}, commit {}",
        p.agents,
        p.reps,
        if p.quick { ", --quick" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel_release(),
        unix_date(),
        git_describe(&repo)
    );
    println!();
    print!("{}", table.render());
    println!();
    for n in &table.notes {
        println!("note: {n}");
    }
    println!("bench took {:.1} s", took.as_secs_f64());
    if !table.failed.is_empty() {
        // Missed targets are results; a measurement that could not run is a failure.
        bail!(
            "{} measurement(s) could not run: {}",
            table.failed.len(),
            table.failed.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Statistics and the table
// ---------------------------------------------------------------------------------------

fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// Nearest-rank percentile; `None` on no samples.
fn percentile(v: &[f64], pct: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if pct == 50.0 && s.len().is_multiple_of(2) {
        let m = s.len() / 2;
        return Some((s[m - 1] + s[m]) / 2.0);
    }
    let rank = ((pct / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Unit {
    Ms,
    PerSec,
    Bytes,
}

fn fmt_value(v: f64, u: Unit) -> String {
    match u {
        Unit::Ms => {
            if v < 1.0 {
                format!("{:.0} µs", v * 1000.0)
            } else if v < 10.0 {
                format!("{v:.2} ms")
            } else if v < 1000.0 {
                format!("{v:.1} ms")
            } else {
                format!("{:.2} s", v / 1000.0)
            }
        }
        Unit::PerSec => format!("{v:.0}/s"),
        Unit::Bytes => {
            if v.abs() < 1024.0 * 1024.0 {
                format!("{:.0} KB", v / 1024.0)
            } else {
                format!("{:.1} MB", v / (1024.0 * 1024.0))
            }
        }
    }
}

/// How a row is judged against its target.
#[derive(Clone, Debug)]
enum Target {
    None,
    /// ratio <= x
    RatioAtMost(f64),
    /// ratio >= x
    RatioAtLeast(f64),
    /// median <= x (in the row's unit)
    AtMost(f64),
}

#[derive(Clone, Debug)]
struct Row {
    id: String,
    name: String,
    unit: Unit,
    median: Option<f64>,
    p99: Option<f64>,
    /// Row id of the baseline, and the value the ratio is taken against.
    baseline: Option<(String, Option<f64>)>,
    target: Target,
    /// Why the row has no value.
    na: Option<String>,
}

impl Row {
    fn new(id: &str, name: impl Into<String>, unit: Unit) -> Row {
        Row {
            id: id.to_string(),
            name: name.into(),
            unit,
            median: None,
            p99: None,
            baseline: None,
            target: Target::None,
            na: None,
        }
    }

    fn samples(mut self, v: &[f64], with_p99: bool) -> Row {
        self.median = median(v);
        if with_p99 {
            self.p99 = percentile(v, 99.0);
        }
        self
    }

    fn against(mut self, base: &Row) -> Row {
        self.baseline = Some((base.id.clone(), base.median));
        self
    }

    fn target(mut self, t: Target) -> Row {
        self.target = t;
        self
    }

    fn na(mut self, why: impl Into<String>) -> Row {
        self.na = Some(why.into());
        self
    }

    fn ratio(&self) -> Option<f64> {
        let (_, b) = self.baseline.as_ref()?;
        let (m, b) = (self.median?, (*b)?);
        (b != 0.0).then_some(m / b)
    }

    fn verdict(&self) -> (String, String) {
        let (target, ok) = match &self.target {
            Target::None => return (String::new(), String::new()),
            Target::RatioAtMost(x) => (format!("≤ {x}×"), self.ratio().map(|r| r <= *x)),
            Target::RatioAtLeast(x) => (format!("≥ {x}×"), self.ratio().map(|r| r >= *x)),
            Target::AtMost(x) => (
                format!("≤ {}", fmt_value(*x, self.unit)),
                self.median.map(|m| m <= *x),
            ),
        };
        let ok = match ok {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a",
        };
        (target, ok.to_string())
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Measurements that failed to run (the parallel deployment example excepted).
    failed: Vec<String>,
}

impl Table {
    fn push(&mut self, r: Row) -> Row {
        self.rows.push(r.clone());
        r
    }

    fn render(&self) -> String {
        let header = [
            "#",
            "measurement",
            "median",
            "p99",
            "baseline",
            "ratio",
            "target",
            "met",
        ];
        let mut lines: Vec<[String; 8]> = Vec::new();
        // By row number (rows are measured in another order); 5, 5f, 5c stay as pushed.
        let number = |r: &Row| -> u32 {
            let digits: String = r.id.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(u32::MAX)
        };
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| number(r));
        for r in rows {
            let (target, ok) = r.verdict();
            let (median, p99) = match &r.na {
                Some(why) => {
                    // The full reason is on stderr; keep the table readable.
                    let short: String = why.chars().take(90).collect();
                    let more = if short.len() < why.len() { "…" } else { "" };
                    (format!("n/a: {short}{more}"), String::new())
                }
                None => (
                    r.median
                        .map(|v| fmt_value(v, r.unit))
                        .unwrap_or_else(|| "n/a".into()),
                    r.p99.map(|v| fmt_value(v, r.unit)).unwrap_or_default(),
                ),
            };
            lines.push([
                r.id.clone(),
                r.name.clone(),
                median,
                p99,
                r.baseline
                    .as_ref()
                    .map(|(id, _)| format!("#{id}"))
                    .unwrap_or_default(),
                r.ratio().map(|x| format!("{x:.2}×")).unwrap_or_default(),
                target,
                ok,
            ]);
        }
        // A Markdown table, so that a run can be pasted into docs/benchmarks.md.
        let mut table = comfy_table::Table::new();
        table
            .load_preset(comfy_table::presets::ASCII_MARKDOWN)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(header);
        for l in lines {
            table.add_row(l);
        }
        format!("{table}\n")
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

struct Bins {
    master: PathBuf,
    agent: PathBuf,
    repo: PathBuf,
}

/// What a finished `sloth-master` run left.
struct MasterRun {
    stdout: String,
    stderr: String,
    wall: Duration,
    /// User + system CPU of the process and of the descendants it waited for.
    cpu: Duration,
    code: Option<i32>,
}

impl MasterRun {
    /// The value of the `BENCH key value` line.
    fn bench(&self, key: &str) -> anyhow::Result<&str> {
        self.stdout
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("BENCH ")?;
                let (k, v) = rest.split_once(' ')?;
                (k == key).then_some(v.trim())
            })
            .ok_or_else(|| anyhow!("no 'BENCH {key}' line in the output{}", self.tail()))
    }

    fn bench_f64(&self, key: &str) -> anyhow::Result<f64> {
        let v = self.bench(key)?;
        v.parse()
            .map_err(|_| anyhow!("BENCH {key}: not a number: {v}"))
    }

    fn bench_list(&self, key: &str) -> anyhow::Result<Vec<f64>> {
        self.bench(key)?
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| anyhow!("BENCH {key}: not a number: {s}"))
            })
            .collect()
    }

    fn tail(&self) -> String {
        let pick = |s: &str| {
            let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
            v[v.len().saturating_sub(3)..].join(" / ")
        };
        let (o, e) = (pick(&self.stdout), pick(&self.stderr));
        format!(
            " (exit {:?}; stderr: {}; stdout: {})",
            self.code,
            if e.is_empty() { "-" } else { &e },
            if o.is_empty() { "-" } else { &o }
        )
    }
}

/// Spawn `cmd` with its output captured; wait at most `timeout`.
fn run_captured(mut cmd: Command, timeout: Duration) -> anyhow::Result<MasterRun> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (code, wall, cpu) = wait_timeout(child, start, timeout)?;
    Ok(MasterRun {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        wall,
        cpu,
        code,
    })
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Wait for `child` on a helper thread (exact exit time); kill it after `timeout`.
fn wait_timeout(
    child: Child,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, Duration, Duration)> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = wait_with_rusage(child);
        let _ = tx.send((r, Instant::now()));
    });
    let ((status, cpu), at) = match rx.recv_timeout(timeout.saturating_sub(start.elapsed())) {
        Ok(x) => x,
        Err(_) => {
            // Our own child, not yet reaped (the waiter still waits).
            if let Some(p) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            let _ = rx.recv();
            bail!("timed out after {} s", timeout.as_secs());
        }
    };
    let code = status.context("waiting for the child")?;
    Ok((code, at.duration_since(start), cpu))
}

/// Reap `child` with wait4(2): its exit code (`None` when killed by a signal) and the
/// CPU it and the descendants it waited for used.
///
/// Through libc: rustix has no wait4 with a `rusage` (nor getrusage), std no wait4 at
/// all; `/proc/<pid>/stat` gives the CPU only in clock ticks (10 ms), too coarse here.
fn wait_with_rusage(child: Child) -> (std::io::Result<Option<i32>>, Duration) {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: `pid` is our unreaped child; `status` and `ru` are valid to write.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break rc;
    };
    // The process is reaped; `child` is dropped without waiting (its pipes were taken).
    drop(child);
    if rc == -1 {
        return (Err(std::io::Error::last_os_error()), Duration::ZERO);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = std::process::ExitStatus::from_raw(status).code();
    (Ok(code), tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024.0)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn git_describe(repo: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["describe", "--always", "--dirty"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn unix_date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The agents of the run: real `sloth-agent` processes, each on its own loopback
/// address ([`host_ip`]), as hosts of a fleet would be.
struct Agent {
    name: String,
    addr: SocketAddr,
    process: RunningAgent,
}

/// Keep a sample, or record why measurement `key` failed (and say so on stderr).
fn record(
    samples: &mut Vec<f64>,
    r: anyhow::Result<f64>,
    key: &'static str,
    errs: &mut HashMap<&'static str, String>,
) {
    match r {
        Ok(v) => samples.push(v),
        Err(e) => {
            eprintln!("[bench] {key} failed: {e:#}");
            errs.insert(key, format!("{e:#}"));
        }
    }
}

/// Wall milliseconds to run `command` `n` times from this process, as many at a time
/// as there are CPUs: what the command itself costs a machine that also hosts every
/// agent (the floor under a fan-out of it over agents on this machine).
fn commands_floor(command: &str, n: usize) -> anyhow::Result<f64> {
    let workers = std::thread::available_parallelism().map_or(2, |p| p.get());
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let st = Command::new(command)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .with_context(|| format!("running {command}"))?;
                        if !st.success() {
                            bail!("{command} exited with {st}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a {command} worker thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// The address of host `i` (0-based): 127.1.0.1, 127.1.0.2, … 127.1.0.250, 127.1.1.1, …
/// The agent and, with --peers, the bench's sshd listen there.
fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn host_name(i: usize) -> String {
    format!("bench-{:03}", i + 1)
}

/// Inventory group of the first [`Bench::small`] hosts.
const SMALL_GROUP: &str = "small";

struct Bench {
    p: Params,
    bins: Bins,
    dir: tempfile::TempDir,
    agents: Vec<Agent>,
    /// Idle RSS of each agent, read right after it started.
    idle_rss: Vec<f64>,
    master_pem: Pem,
    ca_pem: String,
    inventory: PathBuf,
    /// Hosts that have a certificate in `certs()`.
    issued: usize,
    /// The peer tools (--peers).
    tools: Option<peers::Tools>,
}

impl Bench {
    fn new(p: Params, bins: Bins, tools: Option<peers::Tools>) -> anyhow::Result<Bench> {
        let dir = tempfile::Builder::new()
            .prefix("sloth-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let certs = dir.path().join("certs");
        eprintln!(
            "[bench] a fleet CA (sloth-master certs init) in {}",
            certs.display()
        );
        let init = Command::new(&bins.master)
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .stdout(Stdio::null())
            .output()
            .context("running sloth-master certs init")?;
        if !init.status.success() {
            bail!(
                "sloth-master certs init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let master_pem = tls::read_pem_files(&certs.join("master.crt"), &certs.join("master.key"))?;
        let ca_pem = fs::read_to_string(certs.join("ca.crt"))?;
        let agents = p.agents;
        let mut b = Bench {
            p,
            bins,
            inventory: dir.path().join("inventory.toml"),
            dir,
            agents: Vec::new(),
            idle_rss: Vec::new(),
            master_pem,
            ca_pem,
            issued: 0,
            tools,
        };
        b.start_agents(agents)?;
        Ok(b)
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Hosts of the small fan-out rows: 50 of the default 200.
    fn small(&self) -> usize {
        50.min(self.agents.len() / 2).max(1)
    }

    /// Certificates for hosts `issued..count` (`sloth-master certs issue NAME --san IP`,
    /// a few processes at a time).
    fn issue_certs(&mut self, count: usize) -> anyhow::Result<()> {
        if count <= self.issued {
            return Ok(());
        }
        eprintln!(
            "[bench] certificates for hosts {}..{count} (sloth-master certs issue)",
            self.issued + 1
        );
        let certs = self.certs();
        let todo: Vec<usize> = (self.issued..count).collect();
        for chunk in todo.chunks(8) {
            let mut kids = Vec::new();
            for &i in chunk {
                let c = Command::new(&self.bins.master)
                    .args(["certs", "issue", &host_name(i), "--san"])
                    .arg(host_ip(i).to_string())
                    .arg("--dir")
                    .arg(&certs)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("running sloth-master certs issue")?;
                kids.push((i, c));
            }
            for (i, c) in kids {
                let o = c.wait_with_output()?;
                if !o.status.success() {
                    bail!(
                        "sloth-master certs issue {} failed: {}",
                        host_name(i),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        self.issued = count;
        Ok(())
    }

    /// Start `count` agents (the running ones are stopped first) and write the
    /// inventory: every host in group `bench`, the first [`Bench::small`] also in
    /// [`SMALL_GROUP`].
    fn start_agents(&mut self, count: usize) -> anyhow::Result<()> {
        self.stop_agents();
        self.issue_certs(count)?;
        eprintln!("[bench] starting {count} agents");
        let log = self.dir.path().join("agents.log");
        let certs = self.certs();
        let cmds: Vec<AgentCommand> = (0..count)
            .map(|i| {
                let name = host_name(i);
                AgentCommand::new(&self.bins.agent, &name, &format!("{}:0", host_ip(i)))
                    .identity(
                        &certs.join(format!("{name}.crt")),
                        &certs.join(format!("{name}.key")),
                        &certs.join("ca.crt"),
                    )
                    // Audited as in production, into the bench's directory.
                    .args([
                        std::ffi::OsStr::new("--audit-log"),
                        self.dir
                            .path()
                            .join(format!("{name}.audit.log"))
                            .as_os_str(),
                    ])
                    .stderr_to(&log)
            })
            .collect();
        // Returning early kills and reaps every agent started so far.
        let started =
            sloth_launcher::launch_all(cmds, AGENT_START_TIMEOUT).map_err(|e| anyhow!(e))?;
        self.agents = started
            .into_iter()
            .map(|process| Agent {
                name: process.name().to_string(),
                addr: process.addr(),
                process,
            })
            .collect();
        let small = self.small();
        let mut inv = String::from("# sloth-bench: local agents\n");
        for (i, a) in self.agents.iter().enumerate() {
            let groups = if i < small {
                format!("[\"bench\", \"{SMALL_GROUP}\"]")
            } else {
                "[\"bench\"]".to_string()
            };
            inv.push_str(&format!(
                "\n[hosts.{}]\naddress = \"{}\"\ngroups = {groups}\n",
                a.name, a.addr
            ));
        }
        fs::write(&self.inventory, inv)?;
        // Let them settle, then read their idle RSS.
        std::thread::sleep(Duration::from_millis(300));
        self.idle_rss = self
            .agents
            .iter()
            .filter_map(|a| rss_bytes(a.process.pid()).ok())
            .collect();
        Ok(())
    }

    fn stop_agents(&mut self) {
        let mut processes: Vec<RunningAgent> = self.agents.drain(..).map(|a| a.process).collect();
        sloth_launcher::stop_all(&mut processes, Duration::from_secs(3));
    }

    /// `sloth-master` in the repository, its run history in the bench's directory.
    fn master(&self) -> Command {
        let mut c = Command::new(&self.bins.master);
        c.current_dir(&self.bins.repo)
            .env("SLOTH_STATE_DIR", self.dir.path().join("state"))
            .env("NO_COLOR", "1");
        c
    }

    fn master_cmd(&self, script: &str, vars: &[(&str, String)]) -> Command {
        let mut c = self.master();
        c.arg("run")
            .arg(format!("scripts/bench/{script}"))
            .arg("-i")
            .arg(&self.inventory)
            .arg("--certs")
            .arg(self.certs());
        for (k, v) in vars {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        c
    }

    /// Run a bench script to completion; an error unless it exited 0.
    fn script(&self, script: &str, vars: &[(&str, String)]) -> anyhow::Result<MasterRun> {
        let r = run_captured(self.master_cmd(script, vars), self.p.timeout)
            .with_context(|| format!("sloth-master run {script}"))?;
        if r.code != Some(0) {
            bail!("sloth-master run {script} failed{}", r.tail());
        }
        Ok(r)
    }

    fn agent_names(&self, n: usize) -> String {
        self.agents
            .iter()
            .take(n)
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    // -----------------------------------------------------------------------------------

    fn run_all(&mut self) -> Table {
        let mut t = Table::default();
        let reps = self.p.reps;
        let fail = |what: &str, e: &anyhow::Error| {
            eprintln!("[bench] {what} failed: {e:#}");
            format!("{e:#}")
        };

        // --- Latency and throughput against bare quinn --------------------------------
        let quinn = match QuinnBaseline::start(self) {
            Ok(q) => Some(q),
            Err(e) => {
                fail("bare quinn baseline", &e);
                None
            }
        };
        let (mut q_seq, mut q_rate) = (Vec::new(), Vec::new());
        let (mut aw_remote, mut aw_local, mut aw_config) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pool1, mut pool4, mut local_rate) = (Vec::new(), Vec::new(), Vec::new());
        let mut state_rate = Vec::new();
        let mut errs: HashMap<&str, String> = HashMap::new();
        let first = self.agents[0].name.clone();
        for rep in 1..=reps {
            eprintln!("[bench] latency and throughput, rep {rep}/{reps}");
            if let Some(q) = &quinn {
                match q.sequential(self.p.quinn_warmup, self.p.quinn_seq) {
                    Ok(v) => q_seq.extend(v),
                    Err(e) => {
                        errs.insert("q_seq", fail("bare quinn sequential", &e));
                    }
                }
            }
            let vars = |host: &str, payload: Option<&str>| {
                let mut v = vec![
                    ("host", host.to_string()),
                    ("n", self.p.await_n.to_string()),
                    ("warmup", self.p.await_warmup.to_string()),
                ];
                v.extend(payload.map(|p| ("payload", p.to_string())));
                v
            };
            for (vars, out, key, what) in [
                (
                    vars(&first, None),
                    &mut aw_remote,
                    "aw_remote",
                    "remote await",
                ),
                (
                    vars("local", None),
                    &mut aw_local,
                    "aw_local",
                    "local await",
                ),
                (
                    vars(&first, Some("config")),
                    &mut aw_config,
                    "aw_config",
                    "remote await carrying a config",
                ),
            ] {
                match self
                    .script("await.sloth", &vars)
                    .and_then(|r| r.bench_list("await_ms"))
                {
                    Ok(v) => out.extend(v),
                    Err(e) => {
                        errs.insert(key, fail(what, &e));
                    }
                }
            }
            if let Some(q) = &quinn {
                match q.concurrent(IN_FLIGHT, self.p.quinn_conc) {
                    Ok(v) => q_rate.push(v),
                    Err(e) => {
                        errs.insert("q_rate", fail("bare quinn concurrent", &e));
                    }
                }
            }
            for (hosts, out, key) in [(1, &mut pool1, "pool1"), (4, &mut pool4, "pool4")] {
                let vars = vec![
                    ("hosts", self.agent_names(hosts)),
                    ("n", self.p.pool_n.to_string()),
                    ("workers", IN_FLIGHT.to_string()),
                    ("warmup", self.p.pool_warmup.to_string()),
                ];
                match self
                    .script("pool.sloth", &vars)
                    .and_then(|r| r.bench_f64("pool_tasks_per_s"))
                {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        errs.insert(key, fail("remote pool", &e));
                    }
                }
            }
            let vars = vec![
                ("n", self.p.local_n.to_string()),
                ("window", IN_FLIGHT.to_string()),
            ];
            match self
                .script("local_async.sloth", &vars)
                .and_then(|r| r.bench_f64("local_tasks_per_s"))
            {
                Ok(v) => local_rate.push(v),
                Err(e) => {
                    errs.insert("local", fail("local async", &e));
                }
            }
            match executor_floor(self.p.state_n) {
                Ok(v) => state_rate.push(v),
                Err(e) => {
                    errs.insert("states", fail("executor floor", &e));
                }
            }
        }
        drop(quinn);
        let with_err = |r: Row, key: &str, v: &[f64], errs: &HashMap<&str, String>| match (
            v.is_empty(),
            errs.get(key),
        ) {
            (true, Some(e)) => r.na(e.clone()),
            (true, None) => r.na("no samples"),
            _ => r,
        };
        let r1 = t.push(with_err(
            Row::new(
                "1",
                format!("baseline: bare quinn req/resp ({MSG_BYTES} B each way, new stream, mTLS), sequential"),
                Unit::Ms,
            )
            .samples(&q_seq, true),
            "q_seq",
            &q_seq,
            &errs,
        ));
        let r2 = t.push(with_err(
            Row::new(
                "2",
                format!("baseline: bare quinn req/resp, {IN_FLIGHT} in flight"),
                Unit::PerSec,
            )
            .samples(&q_rate, false),
            "q_rate",
            &q_rate,
            &errs,
        ));
        let r3 = t.push(with_err(
            Row::new(
                "3",
                "remote await of a trivial closure, warm connection, sequential",
                Unit::Ms,
            )
            .samples(&aw_remote, true)
            .against(&r1)
            .target(Target::RatioAtMost(1.3)),
            "aw_remote",
            &aw_remote,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "3p",
                "remote await of a closure, the script holding a 100-host global config (201 tables), sequential",
                Unit::Ms,
            )
            .samples(&aw_config, true)
            .against(&r3),
            "aw_config",
            &aw_config,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "4",
                "local await of a trivial closure (master thread, no network), sequential",
                Unit::Ms,
            )
            .samples(&aw_local, true)
            .against(&r1),
            "aw_local",
            &aw_local,
            &errs,
        ));
        let r5f = with_err(
            Row::new(
                "5f",
                "floor: the executor alone, tasks/s on 2 threads (fresh state, run, drop; no network)",
                Unit::PerSec,
            )
            .samples(&state_rate, false)
            .against(&r2),
            "states",
            &state_rate,
            &errs,
        );
        // A remote task pays for a fresh state and for a request/response: the two
        // rates combine like resistors in series.
        let mut r5c = Row::new(
            "5c",
            "floor: composite 1 / (1/#5f + 1/#2), tasks/s",
            Unit::PerSec,
        );
        match (r5f.median, r2.median) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                r5c.median = Some(1.0 / (1.0 / a + 1.0 / b))
            }
            _ => r5c = r5c.na("rows 2 and 5f are needed"),
        }
        t.push(with_err(
            Row::new(
                "5",
                format!("remote tasks/s, fleet pool, {IN_FLIGHT} in flight, 1 agent"),
                Unit::PerSec,
            )
            .samples(&pool1, false)
            .against(&r5c)
            .target(Target::RatioAtLeast(0.7)),
            "pool1",
            &pool1,
            &errs,
        ));
        t.push(r5f);
        t.push(r5c);
        t.push(with_err(
            Row::new(
                "6",
                format!("remote tasks/s, fleet pool, {IN_FLIGHT} in flight, 4 agents"),
                Unit::PerSec,
            )
            .samples(&pool4, false)
            .against(&r2),
            "pool4",
            &pool4,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "7",
                format!("local async tasks/s, {IN_FLIGHT} in flight (no network)"),
                Unit::PerSec,
            )
            .samples(&local_rate, false)
            .against(&r2),
            "local",
            &local_rate,
            &errs,
        ));

        // --- Fan-out over N agents -----------------------------------------------------
        let n = self.agents.len();
        let (mut floor_cold, mut floor_warm, mut floor_close) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut health_wall, mut health_check) = (Vec::new(), Vec::new());
        let (mut ping_cold, mut ping_warm) = (Vec::new(), Vec::new());
        for rep in 1..=reps {
            eprintln!("[bench] fan-out over {n} agents, rep {rep}/{reps}");
            match self.fanout_floor() {
                Ok((c, w, close)) => {
                    floor_cold.push(c);
                    floor_warm.extend(w);
                    floor_close.push(close);
                }
                Err(e) => {
                    errs.insert("floor", fail("fan-out floor", &e));
                }
            }
            match self.health("bench", n) {
                Ok((wall, check)) => {
                    health_wall.push(wall);
                    health_check.push(check);
                }
                Err(e) => {
                    errs.insert("health", fail("health", &e));
                }
            }
            let vars = vec![("rounds", self.p.ping_rounds.to_string())];
            match self.script("ping.sloth", &vars).and_then(|r| {
                let up = r.bench_f64("ping_up")? as usize;
                if up != n {
                    bail!("only {up} of {n} agents answered the warm ping");
                }
                Ok((r.bench_f64("ping_cold_ms")?, r.bench_list("ping_warm_ms")?))
            }) {
                Ok((c, w)) => {
                    ping_cold.push(c);
                    ping_warm.extend(w);
                }
                Err(e) => {
                    errs.insert("ping", fail("fleet.ping", &e));
                }
            }
        }
        let r8 = t.push(with_err(
            Row::new(
                "8",
                format!(
                    "floor: in-process quinn dial + Hello/Welcome with facts to {n} agents, cold"
                ),
                Unit::Ms,
            )
            .samples(&floor_cold, false),
            "floor",
            &floor_cold,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "9",
                format!("`sloth-master health` over {n} agents, cold (process start to exit)"),
                Unit::Ms,
            )
            .samples(&health_wall, false)
            .against(&r8)
            .target(Target::AtMost(1000.0)),
            "health",
            &health_wall,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "10",
                format!("`sloth-master health` over {n} agents, its own \"checked in\" time"),
                Unit::Ms,
            )
            .samples(&health_check, false)
            .against(&r8),
            "health",
            &health_check,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "11",
                format!("fleet.ping over {n} agents, first call (dials, in-script)"),
                Unit::Ms,
            )
            .samples(&ping_cold, false)
            .against(&r8),
            "ping",
            &ping_cold,
            &errs,
        ));
        let r12 = t.push(with_err(
            Row::new(
                "12",
                format!("floor: in-process Ping/Pong on {n} open control streams, warm"),
                Unit::Ms,
            )
            .samples(&floor_warm, true),
            "floor",
            &floor_warm,
            &errs,
        ));
        t.push(with_err(
            Row::new(
                "13",
                format!("fleet.ping over {n} agents, warm (in-script)"),
                Unit::Ms,
            )
            .samples(&ping_warm, true)
            .against(&r12)
            .target(Target::AtMost(100.0)),
            "ping",
            &ping_warm,
            &errs,
        ));

        // --- Memory ---------------------------------------------------------------------
        t.push(if self.idle_rss.is_empty() {
            Row::new("14", "idle agent RSS", Unit::Bytes).na("could not read /proc")
        } else {
            Row::new(
                "14",
                format!("idle agent RSS (fresh, no connection; over {n} agents)"),
                Unit::Bytes,
            )
            .samples(&self.idle_rss, true)
            .target(Target::AtMost(10.0 * 1024.0 * 1024.0))
        });
        let used: Vec<f64> = self
            .agents
            .iter()
            .take(4)
            .filter_map(|a| rss_bytes(a.process.pid()).ok())
            .collect();
        t.push(
            Row::new(
                "15",
                "agent RSS after serving the tasks above (agents 1-4, read after the fan-out rows)",
                Unit::Bytes,
            )
            .samples(&used, false),
        );
        let (mut rss0, mut rss_n) = (Vec::new(), Vec::new());
        for rep in 1..=reps {
            eprintln!("[bench] master memory, rep {rep}/{reps}");
            for (connect, out) in [("0", &mut rss0), ("1", &mut rss_n)] {
                match self.hold(connect) {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        errs.insert("hold", fail("master memory", &e));
                    }
                }
            }
        }
        let r16 = t.push(with_err(
            Row::new(
                "16",
                format!("master RSS, script holding 0 connections ({n}-host inventory)"),
                Unit::Bytes,
            )
            .samples(&rss0, false),
            "hold",
            &rss0,
            &errs,
        ));
        let r17 = t.push(with_err(
            Row::new(
                "17",
                format!("master RSS, script holding {n} connections"),
                Unit::Bytes,
            )
            .samples(&rss_n, false)
            .against(&r16),
            "hold",
            &rss_n,
            &errs,
        ));
        let mut growth = Row::new(
            "18",
            "master RSS growth per connected agent ((#17 - #16) / N)",
            Unit::Bytes,
        )
        .target(Target::AtMost(200.0 * 1024.0));
        match (r16.median, r17.median) {
            (Some(a), Some(b)) => growth.median = Some((b - a) / n as f64),
            _ => growth = growth.na("master RSS not measured"),
        }
        t.push(growth);
        self.history_cost(&mut t, &mut errs);
        self.exec_and_peers(&mut t, &mut errs);
        self.stop_agents();

        // --- The parallel deployment example --------------------------------------------
        let (mut par, mut seq) = (Vec::new(), Vec::new());
        let mut deploy_err = None;
        let example = self.bins.repo.join("examples/parallel_deployment.sloth");
        if !example.is_file() {
            deploy_err = Some("examples/parallel_deployment.sloth does not exist".to_string());
        } else {
            for rep in 1..=reps {
                eprintln!("[bench] parallel_deployment, rep {rep}/{reps}");
                let r = self
                    .deploy(rep, "sequential")
                    .and_then(|s| Ok((s, self.deploy(rep, "parallel")?)));
                match r {
                    Ok((s, p)) => {
                        seq.push(s);
                        par.push(p);
                    }
                    Err(e) => {
                        deploy_err = Some(fail("parallel_deployment", &e));
                        break;
                    }
                }
            }
        }
        let mut r19 = Row::new(
            "19",
            "examples/parallel_deployment.sloth, 6 local hosts, -e mode=sequential",
            Unit::Ms,
        )
        .samples(&seq, false);
        let mut r20 = Row::new(
            "20",
            "examples/parallel_deployment.sloth, 6 local hosts, parallel",
            Unit::Ms,
        )
        .samples(&par, false)
        .against(&r19);
        if let Some(e) = &deploy_err {
            if seq.is_empty() || par.is_empty() {
                r19 = r19.na(e.clone());
                r20 = r20.na(e.clone());
                r20.baseline = None;
            }
        }
        t.push(r19);
        t.push(r20);

        self.large_fanout(&mut t, &mut errs);

        if let Some(c) = median(&floor_close) {
            t.notes.push(format!(
                "closing the {n} floor connections (endpoint.close + wait_idle, capped at 500 ms; Mesh::close waits only until each close frame is sent) took {} (median)",
                fmt_value(c, Unit::Ms)
            ));
        }
        let mut failed: Vec<String> = errs.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        failed.sort();
        t.failed = failed;
        t.notes.push(format!(
            "ratios are median / median of the baseline row; rows 3-7 per rep: {} awaits, {} pool tasks, {} local tasks; \
             row 1: {} requests per rep, row 2: {} requests per rep",
            self.p.await_n, self.p.pool_n, self.p.local_n, self.p.quinn_seq, self.p.quinn_conc
        ));
        t.notes.push(
            "rows 19-20 use the script's own \"total time (MODE)\" line (deploy and HTTP check, with resources)"
                .to_string(),
        );
        t.notes.push(format!(
            "rows 23-24 and 27-28: ratio = how many times longer the peer took than sloth's exec \
             over the same hosts; Ansible ran {} rep(s), the others all",
            self.p.peer_reps
        ));
        t
    }

    /// Rows 32-33: what recording a run in the history costs: the same pool run of
    /// 10,000 tasks (1,000 with --quick) over the small group, with `--no-history` and
    /// recorded, the repetitions interleaved; the wall time of the whole process (its
    /// recording thread flushes before it exits).
    fn history_cost(&mut self, t: &mut Table, errs: &mut HashMap<&'static str, String>) {
        let n = if self.p.quick { 1000 } else { 10_000 };
        let vars = vec![
            ("hosts", self.agent_names(self.small())),
            ("n", n.to_string()),
            ("workers", IN_FLIGHT.to_string()),
            ("warmup", "256".to_string()),
        ];
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut err = None;
        for rep in 1..=self.p.reps {
            eprintln!("[bench] run history cost, rep {rep}/{}", self.p.reps);
            for recorded in [false, true] {
                let mut c = self.master_cmd("pool.sloth", &vars);
                if !recorded {
                    c.arg("--no-history");
                }
                match run_captured(c, self.p.timeout) {
                    Ok(r) if r.code == Some(0) => {
                        let ms = r.wall.as_secs_f64() * 1000.0;
                        if recorded {
                            on.push(ms)
                        } else {
                            off.push(ms)
                        }
                    }
                    Ok(r) => err = Some(format!("pool.sloth exited {:?}{}", r.code, r.tail())),
                    Err(e) => err = Some(format!("{e:#}")),
                }
            }
        }
        let mut base = Row::new(
            "32",
            format!(
                "run of {n} pool tasks over {} agents, --no-history",
                self.small()
            ),
            Unit::Ms,
        )
        .samples(&off, false);
        let mut rec = Row::new(
            "33",
            "the same run, recorded in the history (SQLite)",
            Unit::Ms,
        )
        .samples(&on, false)
        .against(&base)
        .target(Target::RatioAtMost(1.05));
        if let Some(e) = err {
            errs.insert("history", e.clone());
            if off.is_empty() || on.is_empty() {
                base = base.na(e.clone());
                rec = rec.na(e);
                rec.baseline = None;
            }
        }
        t.push(base);
        t.push(rec);
    }

    /// Rows 21-28, 25c and 27c: a cold `exec` and `health` over the small group and
    /// over every agent, and with --peers pdsh and Ansible over the same hosts, the
    /// repetitions interleaved; the client-side CPU of sloth and pdsh at 200.
    fn exec_and_peers(&mut self, t: &mut Table, errs: &mut HashMap<&'static str, String>) {
        let n = self.agents.len();
        let small = self.small();
        let peers = match self.tools.take() {
            None => None,
            Some(tools) => {
                eprintln!("[bench] starting sshd on {n} host addresses for pdsh and Ansible");
                let ips: Vec<Ipv4Addr> = (0..n).map(host_ip).collect();
                match peers::Peers::start(tools, &self.dir.path().join("peers"), &ips) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("[bench] peers failed: {e:#}");
                        errs.insert("peers", format!("{e:#}"));
                        None
                    }
                }
            }
        };
        // Per size: exec, health, pdsh, ansible.
        let sizes = [(small, SMALL_GROUP), (n, "bench")];
        let mut got: [[Vec<f64>; 4]; 2] = Default::default();
        // CPU of the client side (the master process; pdsh and its ssh clients).
        let mut cpu: [[Vec<f64>; 4]; 2] = Default::default();
        let keys = [
            ["exec_small", "health_small", "pdsh_small", "ansible_small"],
            ["exec_all", "health_all", "pdsh_all", "ansible_all"],
        ];
        let reps = self.p.reps;
        for rep in 1..=reps {
            eprintln!(
                "[bench] exec, health (and peers) over {small} and {n} hosts, rep {rep}/{reps}"
            );
            for (k, &(size, pattern)) in sizes.iter().enumerate() {
                for (tool, key) in keys[k].iter().enumerate() {
                    let r = match (tool, &peers) {
                        (0, _) => self.exec(pattern, size).map(|(w, c)| (w, Some(c))),
                        (1, _) => self.health(pattern, size).map(|(wall, _)| (wall, None)),
                        (2, Some(p)) => p
                            .pdsh(size, "uptime", self.p.timeout)
                            .map(|(w, c)| (w, Some(c))),
                        (3, Some(p)) if rep <= self.p.peer_reps => {
                            p.ansible(size, "uptime", self.p.timeout).map(|w| (w, None))
                        }
                        _ => continue,
                    };
                    match r {
                        Ok((v, c)) => {
                            got[k][tool].push(v);
                            cpu[k][tool].extend(c);
                        }
                        Err(e) => {
                            eprintln!("[bench] {key} ({size} hosts) failed: {e:#}");
                            errs.insert(key, format!("{e:#}"));
                        }
                    }
                }
            }
        }
        drop(peers);
        let ids = [["21", "22", "23", "24"], ["25", "26", "27", "28"]];
        for (k, &(size, pattern)) in sizes.iter().enumerate() {
            let names = [
                format!("`sloth-master exec {pattern} -- uptime` over {size} hosts, cold (process start to exit)"),
                format!("`sloth-master health {pattern}` over {size} hosts, cold"),
                format!(
                    "peer: pdsh -R ssh -f {} uptime, the same {size} hosts (sshd, curve25519)",
                    peers::PDSH_FANOUT
                ),
                format!(
                    "peer: ansible -m command -a uptime -f {}, the same {size} hosts",
                    peers::ANSIBLE_FORKS
                ),
            ];
            // The peers' targets are ratios to sloth's exec over 200 hosts.
            let targets = match k {
                0 => [Target::None, Target::None, Target::None, Target::None],
                _ => [
                    Target::None,
                    Target::None,
                    Target::RatioAtLeast(10.0),
                    Target::RatioAtLeast(150.0),
                ],
            };
            let mut exec_row = None;
            for (tool, name) in names.into_iter().enumerate() {
                let v = &got[k][tool];
                let peer = tool >= 2;
                let mut r = Row::new(ids[k][tool], name, Unit::Ms)
                    .samples(v, false)
                    .target(targets[tool].clone());
                if let (true, Some(base)) = (peer, &exec_row) {
                    r = r.against(base);
                }
                if v.is_empty() {
                    r = match errs.get(keys[k][tool]).or(errs.get("peers")) {
                        Some(e) => r.na(e.clone()),
                        None if peer && !self.p.peers => r.na("not measured: run with --peers"),
                        None => r.na("no samples"),
                    };
                }
                let r = t.push(r);
                if tool == 0 {
                    exec_row = Some(r);
                }
            }
        }
        // What scales on a real fleet, where each host's side runs on its own CPU: the
        // client side's CPU, over all hosts.
        let k = 1;
        let base = t.push(
            Row::new(
                "25c",
                format!("CPU of the sloth-master process in #25 (user + system), {n} hosts"),
                Unit::Ms,
            )
            .samples(&cpu[k][0], false),
        );
        let mut r = Row::new(
            "27c",
            format!("CPU of pdsh and its ssh clients in #27, {n} hosts"),
            Unit::Ms,
        )
        .samples(&cpu[k][2], false)
        .against(&base);
        if cpu[k][2].is_empty() {
            r = r.na(if self.p.peers {
                "no samples"
            } else {
                "not measured: run with --peers"
            });
        }
        t.push(r);
    }

    /// Rows 29-31: `exec`, `health` and master memory over `--fanout` agents (1000),
    /// with default options; a host lost is a failed measurement.
    fn large_fanout(&mut self, t: &mut Table, errs: &mut HashMap<&'static str, String>) {
        let m = self.p.fanout;
        let (mut exec, mut health, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        let (mut exec_cpu, mut floor) = (Vec::new(), Vec::new());
        if m > 0 {
            match self.start_agents(m) {
                Err(e) => {
                    eprintln!("[bench] starting {m} agents failed: {e:#}");
                    errs.insert("fanout", format!("{e:#}"));
                }
                Ok(()) => {
                    for rep in 1..=self.p.reps {
                        eprintln!(
                            "[bench] exec, health and memory over {m} agents, rep {rep}/{}",
                            self.p.reps
                        );
                        record(
                            &mut floor,
                            commands_floor("uptime", m),
                            "fanout_floor",
                            errs,
                        );
                        match self.exec("bench", m) {
                            Ok((wall, cpu)) => {
                                exec.push(wall);
                                exec_cpu.push(cpu);
                            }
                            Err(e) => record(&mut exec, Err(e), "fanout_exec", errs),
                        }
                        let r = self.health("bench", m).map(|(wall, _)| wall);
                        record(&mut health, r, "fanout_health", errs);
                        record(&mut rss, self.hold("1"), "fanout_hold", errs);
                    }
                }
            }
            self.stop_agents();
        }
        let missing = |r: Row, key: &str, v: &[f64]| {
            if !v.is_empty() {
                r
            } else if m == 0 {
                r.na("skipped (--fanout 0)")
            } else if let Some(e) = errs.get(key).or(errs.get("fanout")) {
                r.na(e.clone())
            } else {
                r.na("no samples")
            }
        };
        let floor_row = Row::new(
            "29f",
            format!(
                "floor: the command alone, `uptime` run {m} times by one process, one per CPU at a time (no network, no agent)"
            ),
            Unit::Ms,
        )
        .samples(&floor, false);
        t.push(missing(floor_row.clone(), "fanout_floor", &floor));
        t.push(missing(
            Row::new(
                "29",
                format!(
                    "`sloth-master exec bench -- uptime` over {m} hosts, cold, default options"
                ),
                Unit::Ms,
            )
            .samples(&exec, false)
            .against(&floor_row)
            .target(Target::AtMost(2500.0)),
            "fanout_exec",
            &exec,
        ));
        t.push(missing(
            Row::new(
                "29c",
                format!("CPU of the sloth-master process in #29 (user + system), {m} hosts"),
                Unit::Ms,
            )
            .samples(&exec_cpu, false),
            "fanout_exec",
            &exec_cpu,
        ));
        t.push(missing(
            Row::new(
                "30",
                format!("`sloth-master health` over {m} hosts, cold, default options"),
                Unit::Ms,
            )
            .samples(&health, false)
            .target(Target::AtMost(2000.0)),
            "fanout_health",
            &health,
        ));
        t.push(missing(
            Row::new(
                "31",
                format!("master RSS, script holding {m} connections"),
                Unit::Bytes,
            )
            .samples(&rss, false)
            .target(Target::AtMost(100.0 * 1024.0 * 1024.0)),
            "fanout_hold",
            &rss,
        ));
    }

    /// `sloth-master exec PATTERN --json -- uptime`: (wall ms, CPU ms of the master
    /// process). Every one of the `want` hosts must have run it with exit 0: a lost
    /// host fails the measurement.
    fn exec(&self, pattern: &str, want: usize) -> anyhow::Result<(f64, f64)> {
        let mut c = self.master();
        c.args(["exec", pattern, "-i"])
            .arg(&self.inventory)
            .arg("--certs")
            .arg(self.certs())
            .args(["--json", "--", "uptime"]);
        let r = run_captured(c, self.p.timeout)?;
        let doc: serde_json::Value =
            serde_json::from_str(&r.stdout).map_err(|e| anyhow!("exec --json: {e}{}", r.tail()))?;
        let hosts = doc["hosts"]
            .as_object()
            .ok_or_else(|| anyhow!("exec --json has no hosts{}", r.tail()))?;
        let ok = hosts
            .values()
            .filter(|h| h["ok"].as_u64() == Some(1) && h["failed"].as_u64() == Some(0))
            .count();
        if ok != want || r.code != Some(0) {
            let first = doc["errors"]
                .as_array()
                .and_then(|e| e.first())
                .map(|e| e.to_string())
                .unwrap_or_default();
            bail!(
                "exec: {ok} of {want} hosts ok (exit {:?}); first error: {first}{}",
                r.code,
                r.tail()
            );
        }
        Ok((r.wall.as_secs_f64() * 1000.0, r.cpu.as_secs_f64() * 1000.0))
    }

    /// `sloth-master health --json` over every agent: (process wall ms, its own ms).
    fn health(&self, pattern: &str, want: usize) -> anyhow::Result<(f64, f64)> {
        let mut c = self.master();
        c.args(["health", pattern, "-i"])
            .arg(&self.inventory)
            .arg("--certs")
            .arg(self.certs())
            .arg("--json");
        let r = run_captured(c, self.p.timeout)?;
        if r.code != Some(0) {
            bail!("sloth-master health failed{}", r.tail());
        }
        let doc: serde_json::Value = serde_json::from_str(&r.stdout)
            .map_err(|e| anyhow!("health --json: {e}{}", r.tail()))?;
        let up = doc["up"]
            .as_u64()
            .ok_or_else(|| anyhow!("health --json has no \"up\"{}", r.tail()))?
            as usize;
        if up != want {
            bail!("health: only {up} of {want} agents up{}", r.tail());
        }
        let check = doc["duration_ms"]
            .as_f64()
            .ok_or_else(|| anyhow!("health --json has no duration_ms"))?;
        Ok((r.wall.as_secs_f64() * 1000.0, check))
    }

    /// Master VmRSS while `hold.sloth` holds `connect` ("0" or "1") connections.
    fn hold(&self, connect: &str) -> anyhow::Result<f64> {
        let vars = vec![
            ("connect", connect.to_string()),
            ("hold_ms", self.p.hold_ms.to_string()),
        ];
        let mut cmd = self.master_cmd("hold.sloth", &vars);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().context("spawning sloth-master")?;
        let pid = child.id();
        let err = drain(child.stderr.take());
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            if let Some(out) = out {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l.clone());
                    all.push_str(&l);
                    all.push('\n');
                }
            }
            all
        });
        let mut ready = None;
        let deadline = Instant::now() + self.p.timeout;
        while ready.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    if let Some(v) = l.strip_prefix("BENCH hold_ready ") {
                        ready = Some(v.trim().parse::<usize>().map_err(|_| {
                            anyhow!("hold.sloth printed a bad hold_ready count: {v}")
                        }));
                    }
                }
                Err(_) => break,
            }
        }
        let mut rss = Vec::new();
        if ready.is_some() {
            // Settle, then a few readings while the script sleeps.
            std::thread::sleep(Duration::from_millis(self.p.hold_ms / 4));
            for _ in 0..3 {
                if let Ok(v) = rss_bytes(pid) {
                    rss.push(v);
                }
                std::thread::sleep(Duration::from_millis(self.p.hold_ms / 10));
            }
        }
        let (code, _, cpu) = wait_timeout(child, start, self.p.timeout)?;
        let run = MasterRun {
            stdout: reader.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            wall: start.elapsed(),
            cpu,
            code,
        };
        let Some(up) = ready else {
            bail!("hold.sloth never got ready{}", run.tail());
        };
        let up = up?;
        let want = if connect == "0" { 0 } else { self.agents.len() };
        if up != want {
            bail!("hold.sloth connected {up} agents, expected {want}");
        }
        if code != Some(0) {
            bail!("hold.sloth failed{}", run.tail());
        }
        rss.iter()
            .copied()
            .reduce(f64::max)
            .ok_or_else(|| anyhow!("could not read the master's VmRSS"))
    }

    /// One run of the parallel deployment example on 6 local hosts; its "total time" in ms.
    fn deploy(&self, rep: usize, mode: &str) -> anyhow::Result<f64> {
        let inv = self.deploy_inventory()?;
        let site = self.bins.repo.join("examples/site");
        let mut c = self.master();
        c.args(["run", "examples/parallel_deployment.sloth", "-i"])
            .arg(&inv)
            .arg("--local-fleet")
            .arg("-e")
            .arg(format!("version=bench-{rep}-{mode}"))
            .arg("-e")
            .arg("cleanup=1")
            .arg("-e")
            .arg(format!("site={}", site.display()))
            .env("NO_COLOR", "1");
        if mode == "sequential" {
            c.arg("-e").arg("mode=sequential");
        }
        let r = run_captured(c, self.p.timeout)?;
        if r.code != Some(0) {
            bail!("the example failed ({mode}){}", r.tail());
        }
        let prefix = format!("total time ({mode}): ");
        r.stdout
            .lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix(&prefix)?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .ok_or_else(|| anyhow!("no \"{prefix}N ms\" line in its output{}", r.tail()))
    }

    /// examples/fleet.toml with the app directories in our temp dir and HTTP ports
    /// shifted by 10000, so that the benchmark never touches a demo somebody runs.
    fn deploy_inventory(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("deploy.toml");
        if path.is_file() {
            return Ok(path);
        }
        let src = self.bins.repo.join("examples/fleet.toml");
        let text =
            fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let mut doc: toml::Table = text
            .parse()
            .with_context(|| format!("parsing {}", src.display()))?;
        let apps = self.dir.path().join("deploy");
        if let Some(toml::Value::Table(hosts)) = doc.get_mut("hosts") {
            for (name, h) in hosts.iter_mut() {
                let Some(toml::Value::Table(vars)) =
                    h.as_table_mut().and_then(|h| h.get_mut("vars"))
                else {
                    continue;
                };
                if let Some(toml::Value::Integer(port)) = vars.get_mut("http_port") {
                    *port += 10000;
                }
                if vars.contains_key("app_dir") {
                    vars.insert(
                        "app_dir".into(),
                        toml::Value::String(apps.join(name).display().to_string()),
                    );
                }
            }
        }
        fs::write(&path, toml::to_string(&doc)?)?;
        Ok(path)
    }

    /// The protocol floor of the fan-out rows: from this process, dial every agent
    /// concurrently with the master's TLS and transport configuration, send a Hello
    /// asking for facts, read the Welcome (what `health` does); then `ping_rounds` rounds of
    /// Ping/Pong on the open control streams. Returns (cold ms, warm ms per round,
    /// ms to close the endpoint and wait for it to drain, capped at 500 ms).
    fn fanout_floor(&self) -> anyhow::Result<(f64, Vec<f64>, f64)> {
        let rt = runtime(1)?;
        let targets: Vec<(String, SocketAddr)> = self
            .agents
            .iter()
            .map(|a| (a.name.clone(), a.addr))
            .collect();
        // The same wire as `health`: no path-MTU probes either way.
        let mut transport = tls::transport_config(KEEP_ALIVE, IDLE_TIMEOUT);
        let mut endpoint_config = quinn::EndpointConfig::default();
        if let Some(t) = Arc::get_mut(&mut transport) {
            tls::without_mtu_probes(t, &mut endpoint_config);
        }
        let client = tls::master_client_config(&self.master_pem, &self.ca_pem, None, transport)?;
        let rounds = self.p.ping_rounds;
        rt.block_on(async move {
            let endpoint = big_buffer_endpoint(endpoint_config)?;
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (i, (name, addr)) in targets.into_iter().enumerate() {
                let (ep, cfg) = (endpoint.clone(), client.clone());
                set.spawn(async move {
                    let r = async {
                        let conn = ep.connect_with(cfg, addr, &name)?.await?;
                        let (mut send, recv) = conn.open_bi().await?;
                        let mut recv = wire::FrameReader::new(recv);
                        match wire::master_handshake(&mut send, &mut recv, true).await? {
                            Some(Control::Welcome { facts: Some(_), .. }) => {}
                            other => bail!("{name}: expected a Welcome with facts, got {other:?}"),
                        }
                        anyhow::Ok((conn, send, recv))
                    }
                    .await;
                    (i, r)
                });
            }
            let mut conns: Vec<Option<(Connection, SendStream, wire::FrameReader<RecvStream>)>> =
                Vec::new();
            while let Some(j) = set.join_next().await {
                let (i, r) = j?;
                if conns.len() <= i {
                    conns.resize_with(i + 1, || None);
                }
                conns[i] = Some(r?);
            }
            let cold = start.elapsed().as_secs_f64() * 1000.0;
            let mut conns: Vec<_> = conns.into_iter().flatten().collect();
            let mut warm = Vec::new();
            for round in 0..rounds {
                let seq = round as u64 + 2;
                let start = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                for (conn, mut send, mut recv) in conns.drain(..) {
                    set.spawn(async move {
                        control_rtt(&mut send, &mut recv, Control::Ping { seq }, seq).await?;
                        anyhow::Ok((conn, send, recv))
                    });
                }
                while let Some(j) = set.join_next().await {
                    conns.push(j??);
                }
                warm.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            for (conn, _, _) in &conns {
                conn.close(0u32.into(), b"bench done");
            }
            // How long QUIC keeps the closed connections draining (at most 500 ms
            // here): what Mesh::close no longer waits for.
            let closing = Instant::now();
            endpoint.close(0u32.into(), b"bench done");
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
            let close = closing.elapsed().as_secs_f64() * 1000.0;
            anyhow::Ok((cold, warm, close))
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_agents();
    }
}

/// One request on a control stream, waiting for the Pong with `seq`.
async fn control_rtt(
    send: &mut SendStream,
    recv: &mut wire::FrameReader<RecvStream>,
    msg: Control,
    seq: u64,
) -> anyhow::Result<()> {
    wire::write_frame(send, &msg).await?;
    loop {
        match recv.next::<Control>().await? {
            Some(Control::Pong { seq: s, .. }) if s == seq => return Ok(()),
            Some(_) => continue,
            None => bail!("control stream closed"),
        }
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// A client endpoint asking for 8 MiB socket buffers (the master asks for 32 MiB and
/// forces them as root; at 200 agents dialed at once, 8 MiB is enough).
fn big_buffer_endpoint(config: quinn::EndpointConfig) -> anyhow::Result<Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    let bind: SocketAddr = ([127, 0, 0, 1], 0).into();
    socket.bind(&bind.into())?;
    socket.set_nonblocking(true)?;
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    Ok(Endpoint::new(config, None, socket.into(), runtime)?)
}

// ---------------------------------------------------------------------------------------
// The bare quinn baseline
// ---------------------------------------------------------------------------------------

/// An echo-style server and a client in this process, each on its own runtime with
/// one worker thread (like the agent and the master), with the fleet's mTLS
/// (agent_server_config / master_client_config) and transport configuration.
struct QuinnBaseline {
    server_rt: tokio::runtime::Runtime,
    client_rt: tokio::runtime::Runtime,
    server: Endpoint,
    addr: SocketAddr,
    client_cfg: quinn::ClientConfig,
    server_name: String,
}

impl QuinnBaseline {
    fn start(b: &Bench) -> anyhow::Result<QuinnBaseline> {
        let name = b.agents[0].name.clone();
        let certs = b.certs();
        let own = tls::read_pem_files(
            &certs.join(format!("{name}.crt")),
            &certs.join(format!("{name}.key")),
        )?;
        let transport = || tls::transport_config(KEEP_ALIVE, IDLE_TIMEOUT);
        let server_cfg = tls::agent_server_config(&own, &b.ca_pem, None, transport())?;
        let client_cfg = tls::master_client_config(&b.master_pem, &b.ca_pem, None, transport())?;
        let server_rt = runtime(1)?;
        let client_rt = runtime(1)?;
        let server = {
            let _g = server_rt.enter();
            Endpoint::server(server_cfg, ([127, 0, 0, 1], 0).into())?
        };
        let addr = server.local_addr()?;
        let ep = server.clone();
        server_rt.spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if recv.read_to_end(64 * 1024).await.is_ok() {
                                let _ = send.write_all(&[7u8; MSG_BYTES]).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        Ok(QuinnBaseline {
            server_rt,
            client_rt,
            server,
            addr,
            client_cfg,
            server_name: name,
        })
    }

    /// A fresh client endpoint and connection (handshake done).
    async fn connect(&self) -> anyhow::Result<(Endpoint, Connection)> {
        let ep = Endpoint::client(([127, 0, 0, 1], 0).into())?;
        let conn = ep
            .connect_with(self.client_cfg.clone(), self.addr, &self.server_name)?
            .await?;
        Ok((ep, conn))
    }

    /// Per-request latencies (ms) of `n` sequential requests after `warmup`.
    fn sequential(&self, warmup: usize, n: usize) -> anyhow::Result<Vec<f64>> {
        self.client_rt.block_on(async {
            let (ep, conn) = self.connect().await?;
            for _ in 0..warmup {
                request(&conn).await?;
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t0 = Instant::now();
                request(&conn).await?;
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            Ok(out)
        })
    }

    /// Requests/s with `in_flight` concurrent requesters, `total` requests.
    fn concurrent(&self, in_flight: usize, total: usize) -> anyhow::Result<f64> {
        self.client_rt.block_on(async {
            let (ep, conn) = self.connect().await?;
            for _ in 0..in_flight {
                request(&conn).await?;
            }
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..in_flight {
                let (conn, next) = (conn.clone(), next.clone());
                set.spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        request(&conn).await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            let rate = total as f64 / start.elapsed().as_secs_f64();
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            Ok(rate)
        })
    }
}

impl Drop for QuinnBaseline {
    fn drop(&mut self) {
        self.server.close(0u32.into(), b"done");
        let _ = &self.server_rt;
    }
}

/// Tasks per second that `executor::run_task` alone sustains on 2 threads: a fresh
/// Lua state for each (built inline, as an agent does once its pre-warmed states are
/// used up), the trivial closure of rows 3-7 restored and called, the result encoded,
/// the state dropped. Nothing else: no capture, network or scheduling. On 2 cores this
/// is a ceiling for row 5.
fn executor_floor(per_thread: usize) -> anyhow::Result<f64> {
    use sloth_lua::context::TaskContext;
    use sloth_lua::executor::Limits;
    use sloth_lua::shared_obj::NoBackend;
    use sloth_modules::EXECUTOR;
    use sloth_proto::protocol::TaskRequest;

    let ctx = || TaskContext::offline("bench", "floor");
    let main = EXECUTOR
        .new_state(&ctx())
        .map_err(|e| anyhow!("main state: {e}"))?;
    sloth_lua::capture::install(&main, Arc::new(NoBackend)).map_err(|e| anyhow!("capture: {e}"))?;
    let f: mlua::Function = main
        .load("return function() return 1 end")
        .eval()
        .map_err(|e| anyhow!("closure: {e}"))?;
    let mut enc = sloth_lua::capture::Encoder::new(&main);
    enc.push_function_root(&f)
        .map_err(|e| anyhow!("capture: {e}"))?;
    let req = Arc::new(TaskRequest {
        task_id: 1,
        name: "floor".into(),
        payload: enc.finish(),
        host_vars: Default::default(),
        timeout_ms: None,
        mode: Default::default(),
    });
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let req = req.clone();
            std::thread::spawn(move || {
                let lim = Limits {
                    memory_limit: Some(512 << 20),
                };
                for _ in 0..per_thread {
                    sloth_modules::EXECUTOR
                        .run_task(&req, ctx(), &lim)
                        .map_err(|e| anyhow!("run_task: {}", e.message))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow!("a floor thread panicked"))??;
    }
    Ok((2 * per_thread) as f64 / start.elapsed().as_secs_f64())
}

/// One request/response on a new bidirectional stream.
async fn request(conn: &Connection) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[1u8; MSG_BYTES]).await?;
    send.finish()?;
    let resp = recv.read_to_end(64 * 1024).await?;
    if resp.len() != MSG_BYTES {
        bail!("bare quinn: got {} bytes back", resp.len());
    }
    Ok(())
}
