//! The process backend of `service`, for hosts without an init system: a service
//! is one detached process (its own session, stdin from /dev/null, output to a log
//! file) whose pid is kept in a pid file. It runs when the pid file names a live
//! process with the wanted command line; stopping it signals its process group.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mlua::{Lua, Value as LV};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use sloth_lua::context::stop_to_lua;
use sloth_lua::opts::Opts;

use super::super::fsutil::{self, reason};
use super::super::outcome::tail;
use super::super::outcome::{Call, Outcome};
use super::{plan, planned, Want, Would, SETTLE};
use crate::exec::{self, env_pairs, os_reason};

/// The variable every service this backend starts gets: its pid file. It tells the
/// service this backend started from another program that took over its pid.
const MARKER: &str = "SLOTH_SERVICE_PIDFILE";
/// `stop_timeout` unless given.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(20);
/// How long a reloaded process is watched for dying of the signal.
const RELOAD_GRACE: Duration = Duration::from_millis(100);
/// The signals `reload_signal` may name.
const SIGNALS: &[(&str, Signal)] = &[
    ("HUP", Signal::HUP),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("TERM", Signal::TERM),
    ("WINCH", Signal::WINCH),
    ("ALRM", Signal::ALARM),
    ("CONT", Signal::CONT),
    ("KILL", Signal::KILL),
];

/// The options of the process backend (all absent on the systemd backend).
#[derive(Default)]
pub(crate) struct Options {
    pub command: Option<Vec<String>>,
    pub pidfile: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Option<Vec<(OsString, Option<OsString>)>>,
    pub log: Option<PathBuf>,
    pub stop_timeout: Option<Duration>,
    /// The signal and its name.
    pub reload_signal: Option<(Signal, &'static str)>,
}

impl Options {
    pub fn read(o: &mut Opts) -> mlua::Result<Options> {
        let command = command_arg(o)?;
        let pidfile = o.path("pidfile")?;
        let cwd = o.path("cwd")?;
        let env = match o.table("env")? {
            Some(t) => Some(env_pairs(&format!("{}: option 'env'", o.what()), &t)?),
            None => None,
        };
        let log = o.path("log")?;
        let stop_timeout = o.duration("stop_timeout")?;
        let reload_signal = match o.value("reload_signal")? {
            LV::Nil => None,
            LV::String(s) => {
                let text = s.to_string_lossy().to_string();
                Some(parse_signal(&text).ok_or_else(|| {
                    o.error(
                        "reload_signal",
                        format!(
                            "is not a signal name: '{text}' (one of {})",
                            SIGNALS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?)
            }
            other => {
                return Err(o.error(
                    "reload_signal",
                    format!(
                        "must be a signal name like \"HUP\", got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        Ok(Options {
            command,
            pidfile,
            cwd,
            env,
            log,
            stop_timeout,
            reload_signal,
        })
    }

    /// The first option given, for the error of a systemd call that has one.
    pub fn given(&self) -> Option<&'static str> {
        [
            ("command", self.command.is_some()),
            ("pidfile", self.pidfile.is_some()),
            ("cwd", self.cwd.is_some()),
            ("env", self.env.is_some()),
            ("log", self.log.is_some()),
            ("stop_timeout", self.stop_timeout.is_some()),
            ("reload_signal", self.reload_signal.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given)
        .map(|(k, _)| k)
    }
}

/// `command`: an array of words, never a string (which would have to be split, or
/// given to a shell: say which, as `{"/bin/sh", "-c", "..."}`).
fn command_arg(o: &mut Opts) -> mlua::Result<Option<Vec<String>>> {
    const LIKE: &str = "an array of words like {\"/usr/bin/app\", \"--port\", \"8080\"}";
    let t = match o.value("command")? {
        LV::Nil => return Ok(None),
        LV::Table(t) => t,
        LV::String(_) => {
            return Err(o.error(
                "command",
                format!(
                    "must be {LIKE}, got a string (it is not split; for a shell command \
                     write {{\"/bin/sh\", \"-c\", \"...\"}})"
                ),
            ))
        }
        other => {
            return Err(o.error(
                "command",
                format!("must be {LIKE}, got {}", other.type_name()),
            ))
        }
    };
    let mut argv = Vec::new();
    for (i, v) in t.sequence_values::<LV>().enumerate() {
        let word = match v? {
            LV::String(s) => match s.to_str() {
                Ok(s) => s.to_string(),
                Err(_) => {
                    return Err(o.error("command", format!("item #{} is not valid UTF-8", i + 1)))
                }
            },
            LV::Integer(n) => n.to_string(),
            other => {
                return Err(o.error(
                    "command",
                    format!(
                        "item #{} must be a string, got {}",
                        i + 1,
                        other.type_name()
                    ),
                ))
            }
        };
        if word.contains('\0') {
            return Err(o.error("command", format!("item #{} holds a NUL byte", i + 1)));
        }
        argv.push(word);
    }
    if t.pairs::<LV, LV>().count() != argv.len() {
        return Err(o.error(
            "command",
            format!("must be {LIKE} (an array, no other keys)"),
        ));
    }
    match argv.first() {
        None => Err(o.error("command", "must not be empty")),
        Some(p) if p.is_empty() => Err(o.error("command", "must name a program first, not ''")),
        Some(_) => Ok(Some(argv)),
    }
}

/// A signal name: `HUP`, `SIGHUP`, `hup`.
pub(crate) fn parse_signal(name: &str) -> Option<(Signal, &'static str)> {
    let up = name.trim().to_ascii_uppercase();
    let short = up.strip_prefix("SIG").unwrap_or(&up);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == short)
        .map(|(n, s)| (*s, *n))
}

/// The pid a pid file holds: its first line, a number above 1.
pub(crate) fn parse_pid(text: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(text).ok()?;
    let first = text.lines().next()?.trim();
    first.parse::<i32>().ok().filter(|p| *p > 1)
}

/// The words of a `/proc/PID/cmdline` (each ends with a NUL).
pub(crate) fn split_cmdline(b: &[u8]) -> Vec<&[u8]> {
    if b.is_empty() {
        return Vec::new();
    }
    b.strip_suffix(b"\0")
        .unwrap_or(b)
        .split(|c| *c == 0)
        .collect()
}

/// Is `actual` (a process's command line) `want` exactly? A script run through its
/// `#!` line shows as `INTERPRETER [ARG] SCRIPT ARGS...`, with the script's path as
/// the kernel got it: that is `want` too, when `is_script` says that path is a `#!`
/// script.
pub(crate) fn cmdline_matches(
    actual: &[&[u8]],
    want: &[String],
    is_script: impl Fn(&[u8]) -> bool,
) -> bool {
    let Some((prog, rest)) = want.split_first() else {
        return false;
    };
    if actual.len() == want.len() && actual.iter().zip(want).all(|(a, w)| *a == w.as_bytes()) {
        return true;
    }
    for extra in 1..=2 {
        if actual.len() != want.len() + extra {
            continue;
        }
        let script = actual[extra];
        let tail_same = actual[extra + 1..]
            .iter()
            .zip(rest)
            .all(|(a, w)| *a == w.as_bytes());
        // Found in PATH: the kernel got the full path of a bare name.
        let same_prog = script == prog.as_bytes()
            || (!prog.contains('/')
                && script.len() > prog.len()
                && script.ends_with(prog.as_bytes())
                && script[script.len() - prog.len() - 1] == b'/');
        if tail_same && same_prog && is_script(script) {
            return true;
        }
    }
    false
}

/// Does the file at `path` start with `#!`?
fn is_script(path: &[u8]) -> bool {
    let mut head = [0u8; 2];
    fs::File::open(std::ffi::OsStr::from_bytes(path))
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// What `/proc/PID/stat` says that matters here.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub pgrp: i32,
    pub session: i32,
}

/// Parse `/proc/PID/stat`: `pid (comm) state ppid pgrp session ...`; `comm` may
/// hold spaces and parentheses, the fields follow the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        session,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Is any live (not zombie) process in process group `pgid`?
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(read_stat)
            .is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X'))
    })
}

/// Did this backend start `pid` for `pidfile`? It leads its own session and its
/// environment names the pid file.
fn started_here(pid: i32, pidfile: &Path) -> bool {
    if read_stat(pid).is_none_or(|s| s.session != pid) {
        return false;
    }
    let want = [MARKER.as_bytes(), b"=", pidfile.as_os_str().as_bytes()].concat();
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_slice()))
}

/// What a pid file leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    NoPidFile,
    /// It names nothing of ours: why.
    Stale(String),
    /// The service, running `command` (or, with no `command` to compare, the
    /// process this backend started for the pid file).
    Running(i32),
    /// The process this backend started for the pid file, running another command.
    Other(i32),
}

fn probe(pidfile: &Path, command: Option<&[String]>) -> io::Result<Found> {
    let Some(text) = fsutil::read_if_exists(pidfile)? else {
        return Ok(Found::NoPidFile);
    };
    let Some(pid) = parse_pid(&text) else {
        return Ok(Found::Stale("it holds no pid".into()));
    };
    let gone = || Found::Stale(format!("pid {pid} is not running"));
    if !exec::alive(pid.into()) {
        return Ok(gone());
    }
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Ok(gone());
    };
    let words = split_cmdline(&raw);
    if let Some(cmd) = command {
        if cmdline_matches(&words, cmd, is_script) {
            return Ok(Found::Running(pid));
        }
    }
    if started_here(pid, pidfile) {
        return Ok(match command {
            Some(_) => Found::Other(pid),
            None => Found::Running(pid),
        });
    }
    let shown: Vec<String> = words
        .iter()
        .map(|w| String::from_utf8_lossy(w).to_string())
        .collect();
    Ok(Found::Stale(format!(
        "pid {pid} is another program: {}",
        shown.join(" ")
    )))
}

/// Where the pid file of `name` goes unless `pidfile` says, and whether that is
/// the shared `/tmp` fallback (whose directory must be ours alone).
fn default_pidfile(name: &str) -> (PathBuf, bool) {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return (
            Path::new("/run/sloth/services").join(format!("{name}.pid")),
            false,
        );
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        Some(d) => (
            PathBuf::from(d)
                .join("sloth/services")
                .join(format!("{name}.pid")),
            false,
        ),
        None => (
            PathBuf::from(format!("/tmp/sloth-services-{}", uid.as_raw()))
                .join(format!("{name}.pid")),
            true,
        ),
    }
}

/// What to do, from what was found.
enum Plan {
    Nothing,
    Start,
    Stop(i32),
    Restart(i32),
    Reload(i32),
}

/// The process side of every `service` function but `unit`.
pub(crate) fn apply(
    lua: &Lua,
    call: &Call,
    name: &str,
    want: Want,
    enabled: Option<bool>,
    o: Options,
    chosen: bool,
) -> mlua::Result<Outcome> {
    let why = if chosen {
        "backend = \"process\""
    } else {
        "this host runs no systemd (process backend)"
    };
    if enabled == Some(true) {
        return Err(call.fail(format!("enabling at boot needs systemd; {why}")));
    }
    if want == Want::Disabled {
        return Ok(
            Outcome::ok("ok (the process backend starts nothing at boot)")
                .with("enabled", LV::Boolean(false)),
        );
    }
    if o.command.is_none() && matches!(want, Want::Running | Want::Restarted) {
        return Err(command_required(call, why));
    }
    let (pidfile, shared_dir) = match &o.pidfile {
        Some(p) => (p.clone(), false),
        None => default_pidfile(name),
    };
    // One call at a time per pid file, also across agents on one machine (a
    // `--local-fleet`): the others then find the service running. Stopping what has
    // no pid file touches nothing.
    let nothing_to_stop = want == Want::Stopped && fsutil::lstat(&pidfile).ok().flatten().is_none();
    let lock = if call.check() || nothing_to_stop {
        None
    } else {
        if let Some(dir) = pidfile.parent() {
            prepare_dir(call, dir, shared_dir)?;
        }
        Some(Lock::take(call, &pidfile)?)
    };
    let gone_for_good = |lock: &Option<Lock>| {
        remove_pidfile(&pidfile);
        if let Some(l) = lock {
            l.remove();
        }
    };
    let key = format!("process:{}", pidfile.display());
    let found = match planned(lua, &key).filter(|_| call.check()) {
        // Check mode, after an earlier call of the task would have started or
        // stopped it (its pid is not known: 0).
        Some(w) => match (w.active, &w.command, &o.command) {
            (Some(false), _, _) => Found::NoPidFile,
            (_, Some(was), Some(now)) if was != now => Found::Other(0),
            _ => Found::Running(0),
        },
        None => probe(&pidfile, o.command.as_deref())
            .map_err(|e| call.fail(format!("pid file {}: {}", pidfile.display(), reason(&e))))?,
    };
    let stale = match &found {
        Found::Stale(why) => format!(" (stale pid file: {why})"),
        _ => String::new(),
    };
    let (todo, did, would) = match (want, &found) {
        (Want::Running, Found::Running(_)) => (Plan::Nothing, "ok".to_string(), String::new()),
        (Want::Running | Want::Reloaded, Found::Other(p)) => (
            Plan::Restart(*p),
            "restarted: command changed".into(),
            "would restart: command changed".into(),
        ),
        (Want::Running, _) => (
            Plan::Start,
            format!("started{stale}"),
            format!("would start{stale}"),
        ),
        (Want::Stopped, Found::Running(p) | Found::Other(p)) => {
            (Plan::Stop(*p), "stopped".into(), "would stop".into())
        }
        (Want::Stopped, Found::Stale(why)) => (
            Plan::Nothing,
            if call.check() {
                format!("ok (the stale pid file would be removed: {why})")
            } else {
                format!("ok (removed a stale pid file: {why})")
            },
            String::new(),
        ),
        (Want::Stopped, _) => (Plan::Nothing, "ok".into(), String::new()),
        (Want::Restarted, Found::Running(p) | Found::Other(p)) => (
            Plan::Restart(*p),
            "restarted".into(),
            "would restart".into(),
        ),
        (Want::Reloaded, Found::Running(p)) => {
            (Plan::Reload(*p), "reloaded".into(), "would reload".into())
        }
        (Want::Restarted | Want::Reloaded, _) => (
            Plan::Start,
            format!("started (it was not running){stale}"),
            format!("would start (it is not running){stale}"),
        ),
        (Want::Enabled | Want::Disabled, _) => (Plan::Nothing, "ok".into(), String::new()),
    };
    if matches!(todo, Plan::Start | Plan::Restart(_)) && o.command.is_none() {
        return Err(command_required(call, why));
    }
    let stop_timeout = o.stop_timeout.unwrap_or(STOP_TIMEOUT);
    let current = match found {
        Found::Running(p) | Found::Other(p) => Some(p),
        _ => None,
    };
    if call.check() {
        let (active, pid) = match todo {
            Plan::Nothing => (current.is_some(), current),
            Plan::Start | Plan::Restart(_) => (true, None),
            Plan::Stop(_) => (false, None),
            Plan::Reload(p) => (true, Some(p)),
        };
        let would_run = match todo {
            Plan::Nothing => None,
            Plan::Stop(_) => Some(false),
            _ => Some(true),
        };
        if let Some(active) = would_run {
            let command = o.command.clone().filter(|_| active);
            plan(
                lua,
                key,
                Would {
                    active: Some(active),
                    command,
                    enabled: None,
                },
            );
        }
        let outcome = match todo {
            Plan::Nothing => Outcome::ok(did),
            // Later resources of the task may look for the pid file.
            Plan::Stop(_) => Outcome::changed(would).planning(&pidfile, false),
            _ => Outcome::changed(would).planning(&pidfile, true),
        };
        return Ok(extras(outcome, active, pid));
    }
    let launch = |call: &Call| -> mlua::Result<i32> {
        match &o.command {
            Some(argv) => start(call, &pidfile, &o, argv),
            None => Err(command_required(call, why)),
        }
    };
    let (active, pid) = match todo {
        Plan::Nothing => {
            if want == Want::Stopped {
                gone_for_good(&lock);
            }
            return Ok(extras(Outcome::ok(did), current.is_some(), current));
        }
        Plan::Start => (true, Some(launch(call)?)),
        Plan::Stop(p) => {
            stop(call, p, stop_timeout)?;
            gone_for_good(&lock);
            (false, None)
        }
        Plan::Restart(p) => {
            stop(call, p, stop_timeout)?;
            remove_pidfile(&pidfile);
            (true, Some(launch(call)?))
        }
        Plan::Reload(p) => {
            let (sig, sig_name) = o.reload_signal.unwrap_or((Signal::HUP, "HUP"));
            reload(call, p, sig, sig_name)?;
            (true, Some(p))
        }
    };
    Ok(extras(Outcome::changed(did), active, pid))
}

fn command_required(call: &Call, why: &str) -> mlua::Error {
    call.fail(format!(
        "option 'command' is required to start it ({why}): an array of words like \
         {{\"/usr/bin/app\", \"--port\", \"8080\"}}"
    ))
}

fn extras(outcome: Outcome, active: bool, pid: Option<i32>) -> Outcome {
    let o = outcome.with("active", LV::Boolean(active));
    match pid {
        // 0: check mode, a process an earlier call would have started.
        Some(p) if p > 0 => o.with("pid", LV::Integer(p.into())),
        _ => o,
    }
}

fn remove_pidfile(pidfile: &Path) {
    // A pid file left behind is stale, and seen as such: nothing to fail for.
    let _ = fs::remove_file(pidfile);
}

/// Make the pid file's directory (0755 as root, else 0700). The shared `/tmp`
/// fallback must be a directory of this user that nobody else may write to.
fn prepare_dir(call: &Call, dir: &Path, shared: bool) -> mlua::Result<()> {
    let fail = |e: io::Error| call.fail(format!("{}: {}", dir.display(), reason(&e)));
    let root = rustix::process::geteuid().is_root();
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(if root { 0o755 } else { 0o700 })
            .create(dir)
            .map_err(fail)?;
    }
    if shared {
        let m = fs::symlink_metadata(dir).map_err(fail)?;
        let me = rustix::process::geteuid().as_raw();
        if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(call.fail(format!(
                "refusing the pid file directory {}: it must be a directory of uid {me} that \
                 no one else may write to (or give 'pidfile')",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The lock of a pid file: `PIDFILE.lock`, flock-ed while held (the file is
/// close-on-exec: a service started meanwhile does not inherit it).
struct Lock {
    path: PathBuf,
    _file: fs::File,
}

impl Lock {
    /// Take the lock of `pidfile`, waiting while another call holds it; the task's
    /// stop ends the wait.
    fn take(call: &Call, pidfile: &Path) -> mlua::Result<Lock> {
        let mut path = pidfile.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let fail =
            |e: io::Error| call.fail(format!("lock file {}: {}", path.display(), reason(&e)));
        loop {
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(&path)
                .map_err(fail)?;
            match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    // The holder before may have removed the file ([`Lock::remove`])
                    // while this call waited on it: then take the new one.
                    let held = f.metadata().map_err(fail)?;
                    match fs::metadata(&path) {
                        Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                            return Ok(Lock { path, _file: f })
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(fail(e)),
                    }
                }
                Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                    call.ctx.cancel.sleep(POLL).map_err(stop_to_lua)?;
                }
                Err(e) => return Err(fail(e.into())),
            }
        }
    }

    /// Remove the lock file (with the pid file, once the service is gone), still
    /// holding the lock: a call waiting on it then takes a new one.
    fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `exit code N` or `killed by signal N`.
fn status_text(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".into(),
    }
}

/// The last lines written to `log` after byte `from`, as ` | log: ...`.
fn log_tail(log: Option<&Path>, from: u64) -> String {
    let Some(path) = log else {
        return " (its output was discarded: 'log' keeps it)".into();
    };
    let mut buf = Vec::new();
    let read = fs::File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))?;
        f.read_to_end(&mut buf)
    });
    match read {
        Ok(_) if !buf.trim_ascii().is_empty() => format!(" | log: {}", tail(&buf, 3)),
        _ => String::new(),
    }
}

/// Start `argv` detached (own session, stdin from /dev/null, output appended to the
/// log), write its pid file, and watch it for [`SETTLE`]: a command that is already
/// gone by then is an error. Returns the pid.
fn start(call: &Call, pidfile: &Path, o: &Options, argv: &[String]) -> mlua::Result<i32> {
    if let Some(r) = call.ctx.cancel.stopped() {
        return Err(stop_to_lua(r));
    }
    if let Some(cwd) = &o.cwd {
        if !cwd.is_dir() {
            return Err(call.fail(format!(
                "option 'cwd': {} is not a directory",
                cwd.display()
            )));
        }
    }
    let (stdout, stderr, log_from) = match &o.log {
        None => (Stdio::null(), Stdio::null(), 0),
        Some(path) => {
            let opened = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .and_then(|f| {
                    let len = f.metadata()?.len();
                    Ok((f.try_clone()?, f, len))
                });
            match opened {
                Ok((a, b, len)) => (Stdio::from(a), Stdio::from(b), len),
                Err(e) => {
                    return Err(call.fail(format!("log file {}: {}", path.display(), reason(&e))))
                }
            }
        }
    };
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let Some(d) = &o.cwd {
        command.current_dir(d);
    }
    for (k, v) in o.env.iter().flatten() {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    command.env(MARKER, pidfile);
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    exec::detach_as_service(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| call.fail(format!("cannot start {}: {}", argv[0], os_reason(&e))))?;
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(call.fail("the new process has no usable pid"));
    };
    // Reap the service when it exits, so it never lingers as a zombie of the agent;
    // the exit status tells a command that ends at once.
    let (tx, exited) = mpsc::channel::<ExitStatus>();
    let reaper = std::thread::Builder::new()
        .name("sloth-service-reaper".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
    if let Err(e) = reaper {
        let _ = kill(pid, true, Signal::KILL);
        return Err(call.fail(format!("starting a reaper thread: {}", os_reason(&e))));
    }
    if let Err(e) = fsutil::write_atomic(
        pidfile,
        format!("{pid}\n").as_bytes(),
        0o644,
        None,
        None,
        None,
    ) {
        let _ = kill(pid, true, Signal::KILL);
        return Err(call.fail(format!("pid file {}: {}", pidfile.display(), reason(&e))));
    }
    match exited.recv_timeout(SETTLE) {
        Ok(status) => {
            remove_pidfile(pidfile);
            Err(call.fail(format!(
                "{} exited at once ({}; a service must stay in the foreground){}",
                argv[0],
                status_text(&status),
                log_tail(o.log.as_deref(), log_from)
            )))
        }
        Err(_) => Ok(pid),
    }
}

/// Send `sig` to `pid` (with its process group when `group`); a process already
/// gone is no error.
fn kill(pid: i32, group: bool, sig: Signal) -> Result<(), Errno> {
    // Never 0, 1 or negative: those address groups of processes or init.
    let Some(p) = Pid::from_raw(pid).filter(|_| pid > 1) else {
        return Err(Errno::SRCH);
    };
    let sent = if group {
        rustix::process::kill_process_group(p, sig)
    } else {
        rustix::process::kill_process(p, sig)
    };
    match sent {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

fn signal(call: &Call, pid: i32, group: bool, sig: Signal, name: &str) -> mlua::Result<()> {
    kill(pid, group, sig).map_err(|e| {
        call.fail(format!(
            "sending SIG{name} to pid {pid}: {}",
            reason(&io::Error::from(e))
        ))
    })
}

/// Gone: the process, and with `group` every live member of its group.
fn gone(pid: i32, group: bool) -> bool {
    !exec::alive(pid.into()) && (!group || !group_alive(pid))
}

/// Wait up to `max` for [`gone`]; the task's stop ends the wait with an error.
fn wait_gone(call: &Call, pid: i32, group: bool, max: Duration) -> mlua::Result<bool> {
    let deadline = Instant::now() + max;
    loop {
        if gone(pid, group) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        call.ctx
            .cancel
            .sleep(POLL.min(deadline - now))
            .map_err(stop_to_lua)?;
    }
}

/// SIGTERM to the process (its group when it leads one), up to `timeout` for it to
/// go, then SIGKILL.
fn stop(call: &Call, pid: i32, timeout: Duration) -> mlua::Result<()> {
    let group = read_stat(pid).is_some_and(|s| s.pgrp == pid);
    signal(call, pid, group, Signal::TERM, "TERM")?;
    if wait_gone(call, pid, group, timeout)? {
        return Ok(());
    }
    signal(call, pid, group, Signal::KILL, "KILL")?;
    if wait_gone(call, pid, group, KILL_WAIT)? {
        return Ok(());
    }
    Err(call.fail(format!(
        "pid {pid} is still running {} s after SIGKILL",
        KILL_WAIT.as_secs()
    )))
}

/// Send the reload signal to the main process; one that dies of it is an error.
fn reload(call: &Call, pid: i32, sig: Signal, name: &str) -> mlua::Result<()> {
    signal(call, pid, false, sig, name)?;
    call.ctx.cancel.sleep(RELOAD_GRACE).map_err(stop_to_lua)?;
    if !exec::alive(pid.into()) {
        return Err(call.fail(format!(
            "pid {pid} exited on SIG{name} (does the program handle it? reload_signal \
             names another)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn pid_files_are_parsed() {
        assert_eq!(parse_pid(b"1234\n"), Some(1234));
        assert_eq!(parse_pid(b"  77  \n"), Some(77));
        assert_eq!(parse_pid(b"4321"), Some(4321));
        assert_eq!(parse_pid(b"99\nmore lines\n"), Some(99));
        for bad in [
            &b""[..],
            b"\n",
            b"abc\n",
            b"-5\n",
            b"0\n",
            b"1\n",
            b"12 34\n",
            b"99999999999\n",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_pid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn command_lines_are_split_on_nul() {
        assert_eq!(
            split_cmdline(b"sleep\x00300\x00"),
            vec![&b"sleep"[..], &b"300"[..]]
        );
        // An empty argument stays one.
        assert_eq!(
            split_cmdline(b"a\x00\x00b\x00"),
            vec![&b"a"[..], &b""[..], &b"b"[..]]
        );
        // A process that rewrote its command line may leave no final NUL.
        assert_eq!(split_cmdline(b"nginx: master"), vec![&b"nginx: master"[..]]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn command_lines_are_compared_word_by_word() {
        let no_script = |_: &[u8]| false;
        let want = words(&["/usr/bin/perl", "serve.pl", "8080"]);
        let actual = split_cmdline(b"/usr/bin/perl\x00serve.pl\x008080\x00");
        assert!(cmdline_matches(&actual, &want, no_script));
        // Same words joined differently are another command.
        let spaced = split_cmdline(b"/usr/bin/perl serve.pl 8080\x00");
        assert!(!cmdline_matches(&spaced, &want, no_script));
        let other = split_cmdline(b"/usr/bin/perl\x00serve.pl\x008081\x00");
        assert!(!cmdline_matches(&other, &want, no_script));
        let more = split_cmdline(b"/usr/bin/perl\x00serve.pl\x008080\x00x\x00");
        assert!(!cmdline_matches(&more, &want, no_script));
        let fewer = split_cmdline(b"/usr/bin/perl\x00serve.pl\x00");
        assert!(!cmdline_matches(&fewer, &want, no_script));
        assert!(!cmdline_matches(&[], &want, no_script));
        assert!(!cmdline_matches(&actual, &[], no_script));
        let empty_arg = words(&["sh", "-c", ""]);
        assert!(cmdline_matches(
            &split_cmdline(b"sh\x00-c\x00\x00"),
            &empty_arg,
            no_script
        ));
    }

    #[test]
    fn scripts_run_through_their_interpreter_match() {
        let script = |p: &[u8]| p.ends_with(b"run.sh");
        let want = words(&["/opt/app/run.sh", "--port", "80"]);
        let seen = split_cmdline(b"/bin/sh\x00/opt/app/run.sh\x00--port\x0080\x00");
        assert!(cmdline_matches(&seen, &want, script));
        // `#!/usr/bin/env bash`: two words before the script.
        let env = split_cmdline(b"/usr/bin/env\x00bash\x00/opt/app/run.sh\x00--port\x0080\x00");
        assert!(cmdline_matches(&env, &want, script));
        // Found in PATH: the kernel saw the full path.
        let bare = words(&["run.sh", "--port", "80"]);
        assert!(cmdline_matches(&seen, &bare, script));
        // Not a script, or other arguments: no match.
        assert!(!cmdline_matches(&seen, &want, |_| false));
        let other = split_cmdline(b"/bin/sh\x00/opt/app/run.sh\x00--port\x0081\x00");
        assert!(!cmdline_matches(&other, &want, script));
        let suffix_only = split_cmdline(b"/bin/sh\x00/opt/app/xrun.sh\x00--port\x0080\x00");
        assert!(!cmdline_matches(&suffix_only, &bare, script));
    }

    #[test]
    fn proc_stat_is_parsed() {
        let s = parse_stat("4242 (sleep) S 1 4242 4242 0 -1 4194560 106 0 0 0").unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                pgrp: 4242,
                session: 4242
            }
        );
        // A command name with spaces and parentheses.
        let s = parse_stat("77 (a) b (c) Z 1 70 60 0").unwrap();
        assert_eq!((s.state, s.pgrp, s.session), ('Z', 70, 60));
        assert_eq!(parse_stat("77 (x"), None);
        assert_eq!(parse_stat("77 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(parse_signal("HUP").map(|s| s.1), Some("HUP"));
        assert_eq!(parse_signal("sigusr1").map(|s| s.1), Some("USR1"));
        assert_eq!(parse_signal(" SIGTERM ").map(|s| s.1), Some("TERM"));
        assert!(parse_signal("HUPP").is_none());
        assert!(parse_signal("").is_none());
        assert!(parse_signal("9").is_none());
    }

    #[test]
    fn this_process_is_found_by_its_pid_file_only_with_its_command() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("me.pid");
        assert_eq!(probe(&pidfile, None).unwrap(), Found::NoPidFile);
        let me = std::process::id() as i32;
        fs::write(&pidfile, format!("{me}\n")).unwrap();
        let raw = fs::read(format!("/proc/{me}/cmdline")).unwrap();
        let argv: Vec<String> = split_cmdline(&raw)
            .iter()
            .map(|w| String::from_utf8_lossy(w).to_string())
            .collect();
        assert_eq!(probe(&pidfile, Some(&argv)).unwrap(), Found::Running(me));
        // Not started by this backend: another command makes it stale, not "ours".
        let other = words(&["/bin/sleep", "300"]);
        assert!(matches!(
            probe(&pidfile, Some(&other)).unwrap(),
            Found::Stale(why) if why.contains("another program")
        ));
        assert!(matches!(probe(&pidfile, None).unwrap(), Found::Stale(_)));
        fs::write(&pidfile, "garbage").unwrap();
        assert!(matches!(
            probe(&pidfile, Some(&argv)).unwrap(),
            Found::Stale(why) if why.contains("no pid")
        ));
    }
}
