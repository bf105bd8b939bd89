//! `exec`: child processes for tasks.
//!
//! - `exec.run(cmd [, opts])` runs a command to completion and returns
//!   `{stdout, stderr, code, success, duration_ms, timed_out}` (plus `signal` when the
//!   child died of a signal it was not sent by us). `cmd` is a string run with
//!   `/bin/sh -c` or an array `{"ls", "-l"}` run directly. Options: `cwd`, `env`
//!   (variables added to the agent's environment; `false` removes one), `timeout` (ms or
//!   `"30s"`), `stdin` (a string fed to the child), `stream` (forward each output line to
//!   the task's log as it arrives), `shell` (`false`: split a string command on
//!   whitespace and run it directly; a string: the shell to use instead of `/bin/sh`).
//!   A non-zero exit is data; a command that cannot start is `nil, err`.
//!   The child runs in its own process group. When the task is stopped (cancelled or past
//!   its deadline) the whole group is killed and the call raises the stop; when the
//!   per-call `timeout` expires the group is killed and the table comes back with
//!   `timed_out = true`, `code = nil` and the output read so far.
//! - `exec.spawn(cmd [, {cwd, env, log}])` starts a long-running service detached from
//!   the task (own session, default signals, stdin from /dev/null, output appended to
//!   `log` or discarded)
//!   and returns `{pid = N}`; it outlives the task.
//! - `exec.kill(pid [, signal])` sends `signal` (default `"TERM"`; a name like `"KILL"`,
//!   `"SIGHUP"` or a number). A process that leads its own session (what `exec.spawn`
//!   starts) is signalled with its whole process group. Returns `true` or `nil, err`.
//! - `exec.alive(pid)` is true while the process exists and is not a zombie.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaString, MultiValue, Table, Value as LV};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};

use super::{stop_to_lua, task_ctx};
use crate::child_io::{abandon, wait_any, OutPipe};
use sloth_lua::cancel::StopReason;
use sloth_lua::context::TaskContext;
use sloth_lua::opts::Opts;
use sloth_proto::protocol::LogLevel;

/// Longest wait between two checks of the child (and of a stop of the task).
const POLL: Duration = Duration::from_millis(10);
/// First wait between two checks where the exit cannot be waited for directly (no
/// pidfd); it doubles up to [`POLL`], so a short command is not held up by the
/// polling.
const FIRST_NAP: Duration = Duration::from_micros(50);
/// After the child is gone, how long the output pipes may stay silent before they are
/// abandoned (a background grandchild can hold them open).
const DRAIN_IDLE: Duration = Duration::from_millis(250);
/// After the child is gone, how long its output is read at most, however chatty a
/// background grandchild holding the pipes is (and never past the call's timeout).
const DRAIN_MAX: Duration = Duration::from_secs(2);

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let exec = lua.create_table()?;
    exec.raw_set(
        "run",
        lua.create_function(|lua, (cmd, opts): (LV, Option<Table>)| run(lua, cmd, opts))?,
    )?;
    exec.raw_set(
        "spawn",
        lua.create_function(|lua, (cmd, opts): (LV, Option<Table>)| spawn(lua, cmd, opts))?,
    )?;
    exec.raw_set(
        "kill",
        lua.create_function(|lua, (pid, sig): (i64, Option<LV>)| kill(lua, pid, sig))?,
    )?;
    exec.raw_set("alive", lua.create_function(|_, pid: i64| Ok(alive(pid)))?)?;
    g.raw_set("exec", exec)
}

/// `os.execute` for task states: the standard one blocks in `system()`, where neither
/// a cancel nor the task's deadline can reach it. This one runs the command like
/// `exec.run(cmd, {stream = true})` (its output goes to the master as the task's log
/// lines, its process group is killed when the task stops) and returns what Lua's
/// `os.execute` returns: `true, "exit", 0`, `nil, "exit", code` or `nil, "signal", n`.
pub(crate) fn install_os_execute(lua: &Lua, os_lib: &Table) -> mlua::Result<()> {
    let f = lua.create_function(|lua, cmd: Option<LuaString>| {
        let Some(cmd) = cmd else {
            // `os.execute()`: is a shell available?
            return Ok(MultiValue::from_vec(vec![LV::Boolean(true)]));
        };
        let opts = lua.create_table()?;
        opts.raw_set("stream", true)?;
        let mut out = run(lua, LV::String(cmd), Some(opts))?.into_iter();
        let first = out.next().unwrap_or(LV::Nil);
        let LV::Table(r) = first else {
            // It could not start: nil and the reason, like a failed system().
            let why = out.next().unwrap_or(LV::Nil);
            return Ok(MultiValue::from_vec(vec![LV::Nil, why, LV::Integer(127)]));
        };
        let (code, signal): (Option<i64>, Option<i64>) = (r.get("code")?, r.get("signal")?);
        // Skipped in check mode: as if it succeeded.
        let code = match r.get::<Option<bool>>("skipped")? {
            Some(true) => Some(0),
            _ => code,
        };
        Ok(MultiValue::from_vec(match (signal, code) {
            (Some(sig), _) => vec![
                LV::Nil,
                LV::String(lua.create_string("signal")?),
                LV::Integer(sig),
            ],
            (None, Some(0)) => vec![
                LV::Boolean(true),
                LV::String(lua.create_string("exit")?),
                LV::Integer(0),
            ],
            (None, c) => vec![
                LV::Nil,
                LV::String(lua.create_string("exit")?),
                LV::Integer(c.unwrap_or(1)),
            ],
        }))
    })?;
    os_lib.raw_set("execute", f)
}

/// `nil, "<msg>"` as a Lua return.
fn fail(lua: &Lua, msg: impl AsRef<str>) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        LV::Nil,
        LV::String(lua.create_string(msg.as_ref())?),
    ]))
}

/// An `io::Error` without std's " (os error N)" suffix.
pub(crate) fn os_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

fn os(s: &LuaString) -> OsString {
    OsStr::from_bytes(&s.as_bytes()).to_os_string()
}

/// The program and arguments of a command given as a string or an array.
pub(crate) struct CmdSpec {
    argv: Vec<OsString>,
    /// For messages.
    pub display: String,
    /// A plain string command run directly: how the shell would run it, for when
    /// there is no such program (the shell then says so, and exits 127).
    via_shell: Option<Vec<OsString>>,
}

/// Words of a shell builtin or keyword that is not (or not only) a program.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "[[", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done",
    "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi", "for", "getopts",
    "hash", "if", "jobs", "local", "read", "readonly", "return", "set", "shift", "source", "then",
    "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The words of `cmd` when `/bin/sh -c cmd` would only split it on blanks and run
/// the first word as a program: nothing to quote, expand, redirect, chain or assign,
/// and no builtin. Such a command is run directly, which saves a shell per command
/// (a third of the processes of a fanned-out `exec`).
fn plain_words(cmd: &[u8]) -> Option<Vec<OsString>> {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-_./:,+@%^= \t".contains(b);
    if !cmd.iter().all(plain) {
        return None;
    }
    let words: Vec<&[u8]> = cmd
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    let first = std::str::from_utf8(words.first()?).ok()?;
    if first.contains('=') || SHELL_WORDS.contains(&first) {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| OsStr::from_bytes(w).to_os_string())
            .collect(),
    )
}

pub(crate) fn command_spec(fname: &str, cmd: &LV, shell: &LV) -> mlua::Result<CmdSpec> {
    match cmd {
        LV::String(s) => {
            let display = s.to_string_lossy().to_string();
            let sh_argv = || vec!["/bin/sh".into(), "-c".into(), os(s)];
            match shell {
                LV::Nil => Ok(match plain_words(&s.as_bytes()) {
                    Some(argv) => CmdSpec {
                        argv,
                        display,
                        via_shell: Some(sh_argv()),
                    },
                    None => CmdSpec {
                        argv: sh_argv(),
                        display,
                        via_shell: None,
                    },
                }),
                LV::Boolean(true) => Ok(CmdSpec {
                    argv: sh_argv(),
                    display,
                    via_shell: None,
                }),
                LV::String(sh) => Ok(CmdSpec {
                    argv: vec![os(sh), "-c".into(), os(s)],
                    display,
                    via_shell: None,
                }),
                LV::Boolean(false) => {
                    let argv: Vec<OsString> = s
                        .as_bytes()
                        .split(|b| b.is_ascii_whitespace())
                        .filter(|w| !w.is_empty())
                        .map(|w| OsStr::from_bytes(w).to_os_string())
                        .collect();
                    if argv.is_empty() {
                        return Err(mlua::Error::runtime(format!("{fname}: empty command")));
                    }
                    Ok(CmdSpec {
                        argv,
                        display,
                        via_shell: None,
                    })
                }
                other => Err(mlua::Error::runtime(format!(
                    "{fname}: option 'shell' must be a boolean or a shell path, got {}",
                    other.type_name()
                ))),
            }
        }
        LV::Table(t) => {
            let mut argv = Vec::new();
            for v in t.sequence_values::<LV>() {
                match v? {
                    LV::String(s) => argv.push(os(&s)),
                    LV::Integer(i) => argv.push(i.to_string().into()),
                    LV::Number(n) => argv.push(n.to_string().into()),
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "{fname}: command arguments must be strings, got {}",
                            other.type_name()
                        )))
                    }
                }
            }
            if argv.is_empty() {
                return Err(mlua::Error::runtime(format!("{fname}: empty command")));
            }
            let display = argv
                .iter()
                .map(|a| a.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(" ");
            Ok(CmdSpec {
                argv,
                display,
                via_shell: None,
            })
        }
        other => Err(mlua::Error::runtime(format!(
            "{fname}: command must be a string or an array of strings, got {}",
            other.type_name()
        ))),
    }
}

/// How to start a child: what `exec.run` and `exec.spawn` options say, and what
/// resources ask for when they run a package manager, `systemctl` or `git`.
#[derive(Default, Clone)]
pub(crate) struct ProcOpts {
    pub cwd: Option<OsString>,
    /// Variables added to the environment (`None`: removed).
    pub env: Vec<(OsString, Option<OsString>)>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// Forward each output line to the task's log as it arrives.
    pub stream: bool,
    /// Most output kept from both streams together, past each one's own cap (the
    /// task's memory left, see [`keep_within_memory`]); the rest is dropped and
    /// `truncated` is set.
    pub keep_max: Option<usize>,
}

impl ProcOpts {
    /// `cwd` and `env` of an options table, and with `full` also `timeout`, `stdin`
    /// and `stream` (`exec.run` has them all, `exec.spawn` only the first two).
    fn read(o: &mut Opts, full: bool) -> mlua::Result<ProcOpts> {
        let mut p = ProcOpts {
            cwd: o
                .bytes("cwd")?
                .map(|b| OsStr::from_bytes(&b).to_os_string()),
            ..ProcOpts::default()
        };
        if let Some(env) = o.table("env")? {
            p.env = env_pairs(o.what(), &env)?;
        }
        if full {
            p.timeout = o.duration("timeout")?;
            p.stdin = o.bytes("stdin")?;
            p.stream = o.bool("stream")?.unwrap_or(false);
        }
        Ok(p)
    }
}

/// The variables of an `env` option (`false` removes one).
pub(crate) fn env_pairs(
    fname: &str,
    env: &Table,
) -> mlua::Result<Vec<(OsString, Option<OsString>)>> {
    let mut out = Vec::new();
    for pair in env.pairs::<LuaString, LV>() {
        let (k, v) = pair?;
        // `A=B` would set A to "B=...": the kernel splits an entry at its first '='.
        let key = k.as_bytes();
        if key.is_empty() || key.contains(&b'=') || key.contains(&0) {
            return Err(mlua::Error::runtime(format!(
                "{fname}: env name '{}' is not a variable name (empty, or with '=' or NUL)",
                k.to_string_lossy()
            )));
        }
        let value = match v {
            LV::String(s) => Some(os(&s)),
            LV::Integer(i) => Some(i.to_string().into()),
            LV::Number(n) => Some(n.to_string().into()),
            LV::Boolean(true) => Some("1".into()),
            LV::Boolean(false) => None,
            other => {
                return Err(mlua::Error::runtime(format!(
                    "{fname}: env value for '{}' must be a string, got {}",
                    k.to_string_lossy(),
                    other.type_name()
                )))
            }
        };
        out.push((os(&k), value));
    }
    Ok(out)
}

/// Build the `Command` for `argv` with the cwd and environment of `p`.
fn base_command(argv: &[OsString], p: &ProcOpts) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    if let Some(d) = &p.cwd {
        c.current_dir(d);
    }
    for (k, v) in &p.env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Signal a whole process group.
fn kill_group(pgid: u32, sig: Signal) {
    // Never group 1: `kill(-1)` would address every process.
    let pgid = i32::try_from(pgid).ok().filter(|p| *p > 1);
    if let Some(p) = pgid.and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// Kill the child's process group and reap the child.
fn kill_and_reap(child: &mut Child) {
    kill_group(child.id(), Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// How a child's run ended.
pub(crate) enum Ended {
    Exited(ExitStatus),
    /// Past its own `timeout`: killed with its group.
    TimedOut,
}

/// A child that ran to its end.
pub(crate) struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub ended: Ended,
    pub truncated: bool,
    pub duration: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        matches!(&self.ended, Ended::Exited(s) if s.success())
    }

    /// `exit code N`, `killed by signal N` or `timed out`.
    pub fn status_text(&self) -> String {
        match &self.ended {
            Ended::Exited(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended".into(),
            },
            Ended::TimedOut => "timed out".into(),
        }
    }
}

/// Why a child gave no [`Finished`].
pub(crate) enum RunFail {
    /// It could not start (or its I/O could not be set up): the reason.
    Start(String),
    /// The task was stopped; the child's group was killed.
    Stopped(StopReason),
}

/// `exec.run`: options from Lua, the run, and the result table.
fn run(lua: &Lua, cmd: LV, opts: Option<Table>) -> mlua::Result<MultiValue> {
    const F: &str = "exec.run";
    let ctx = task_ctx(lua)?;
    let mut o = Opts::of(lua, F, opts)?;
    let shell = o.value("shell")?;
    let spec = command_spec(F, &cmd, &shell)?;
    let mut p = ProcOpts::read(&mut o, true)?;
    p.keep_max = keep_within_memory(lua);
    let read_only = o.bool("read_only")?.unwrap_or(false);
    o.finish()?;
    if ctx.mode.check && !ctx.orchestrator && !read_only {
        return skipped_in_check_mode(lua, &spec.display);
    }
    let done = match run_process(&ctx, &spec, &p) {
        Ok(d) => d,
        Err(RunFail::Start(why)) => return fail(lua, format!("{F}: {why}")),
        Err(RunFail::Stopped(r)) => return Err(stop_to_lua(r)),
    };
    let t = lua.create_table()?;
    t.raw_set("stdout", lua.create_string(&done.stdout)?)?;
    t.raw_set("stderr", lua.create_string(&done.stderr)?)?;
    match &done.ended {
        Ended::Exited(status) => {
            t.raw_set("code", status.code())?;
            t.raw_set("success", status.success())?;
            if let Some(sig) = status.signal() {
                t.raw_set("signal", sig)?;
            }
            t.raw_set("timed_out", false)?;
        }
        Ended::TimedOut => {
            t.raw_set("code", LV::Nil)?;
            t.raw_set("success", false)?;
            t.raw_set("timed_out", true)?;
        }
    }
    if done.truncated {
        t.raw_set("truncated", true)?;
    }
    t.raw_set("duration_ms", done.duration.as_millis() as i64)?;
    Ok(MultiValue::from_vec(vec![LV::Table(t)]))
}

/// What `exec.run` returns in check mode for a command not marked `read_only`:
/// `{skipped = true, check_mode = true, success = true, stdout = "", stderr = "",
/// timed_out = false, duration_ms = 0}` (no `code`: nothing ran).
fn skipped_in_check_mode(lua: &Lua, display: &str) -> mlua::Result<MultiValue> {
    let ctx = task_ctx(lua)?;
    ctx.io.log(
        LogLevel::Info,
        &format!("check mode: not running: {display}"),
    );
    let t = lua.create_table()?;
    t.raw_set("skipped", true)?;
    t.raw_set("check_mode", true)?;
    t.raw_set("success", true)?;
    t.raw_set("stdout", "")?;
    t.raw_set("stderr", "")?;
    t.raw_set("timed_out", false)?;
    t.raw_set("duration_ms", 0)?;
    Ok(MultiValue::from_vec(vec![LV::Table(t)]))
}

/// Run `argv` directly (no shell) to its end, for resources: its output is kept
/// (and streamed to the task's log when `p.stream`), the task's stop kills it.
pub(crate) fn run_argv(
    ctx: &TaskContext,
    argv: &[&str],
    p: &ProcOpts,
) -> Result<Finished, RunFail> {
    let spec = CmdSpec {
        argv: argv.iter().map(OsString::from).collect(),
        display: argv.join(" "),
        via_shell: None,
    };
    if spec.argv.is_empty() {
        return Err(RunFail::Start("empty command".into()));
    }
    run_process(ctx, &spec, p)
}

/// Children of `exec.run` (and the resources) in this process not yet reaped.
static RUNNING_CHILDREN: AtomicUsize = AtomicUsize::new(0);

/// Counts one child in [`RUNNING_CHILDREN`] until it is dropped (after the reap).
struct Running;

impl Running {
    fn start() -> Running {
        RUNNING_CHILDREN.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING_CHILDREN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait up to `limit` until every child `exec.run` started in this process has been
/// reaped; false if some still run. A process about to exit calls it after stopping
/// its tasks, whose runs then kill their children's groups within [`POLL`].
pub fn wait_for_children(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while RUNNING_CHILDREN.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Run a child to its end: its output read and its exit waited for in one loop
/// (pidfd), its group killed when the task stops or `p.timeout` passes.
pub(crate) fn run_process(
    ctx: &TaskContext,
    spec: &CmdSpec,
    p: &ProcOpts,
) -> Result<Finished, RunFail> {
    let cancel = ctx.cancel.clone();
    if let Some(r) = cancel.stopped() {
        return Err(RunFail::Stopped(r));
    }
    let piped_stdin = p.stdin.is_some();
    let start_child = |argv: &[OsString]| -> io::Result<Child> {
        let mut command = base_command(argv, p);
        command
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.spawn()
    };
    let start = Instant::now();
    // Counted from before the spawn, so a waiter never misses a child being started.
    let _running = Running::start();
    let spawned = match (start_child(&spec.argv), &spec.via_shell) {
        (Err(e), Some(sh)) if e.raw_os_error() != Some(Errno::AGAIN.raw_os_error()) => {
            start_child(sh)
        }
        (r, _) => r,
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // A missing working directory fails the spawn like a missing program:
            // say which it was.
            if let Some(d) = p.cwd.as_ref().filter(|d| !Path::new(d).is_dir()) {
                return Err(RunFail::Start(format!(
                    "{}: cwd {}: not a directory that exists",
                    spec.display,
                    Path::new(d).display()
                )));
            }
            return Err(RunFail::Start(format!(
                "{}: {}",
                spec.display,
                os_reason(&e)
            )));
        }
    };

    let setup = (|| -> io::Result<(OutPipe, OutPipe)> {
        let level = |l| p.stream.then_some(l);
        let out = OutPipe::new(
            child.stdout.take().map(OwnedFd::from),
            level(LogLevel::Print),
        )?;
        let err = OutPipe::new(
            child.stderr.take().map(OwnedFd::from),
            level(LogLevel::Info),
        )?;
        if let (Some(data), Some(mut pipe)) = (p.stdin.clone(), child.stdin.take()) {
            std::thread::Builder::new()
                .name("sloth-exec-stdin".into())
                .spawn(move || {
                    // A child that exits without reading its input is not an error.
                    let _ = pipe.write_all(&data);
                })?;
        }
        Ok((out, err))
    })();
    let (mut out, mut err) = match setup {
        Ok(pipes) => pipes,
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(RunFail::Start(format!(
                "{}: setting up its input and output: {}",
                spec.display,
                os_reason(&e)
            )));
        }
    };

    let deadline = p.timeout.map(|t| start + t);
    let exit_fd = pidfd(child.id());
    let io = ctx.io.as_ref();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut keep_left = p.keep_max.unwrap_or(usize::MAX);
    let mut backoff = FIRST_NAP;
    // Set once the child is gone: how it ended, since when the pipes are quiet, and
    // when reading what they still bring stops, come what may.
    let mut ended: Option<(Gone, Instant, Instant)> = None;
    let gone = |how: Gone| {
        let now = Instant::now();
        let mut drain_until = now + DRAIN_MAX;
        if let Some(d) = deadline {
            drain_until = drain_until.min(d.max(now));
        }
        (how, now, drain_until)
    };
    let ended = loop {
        let got = out.read_ready(&mut chunk, io, &mut keep_left)
            + err.read_ready(&mut chunk, io, &mut keep_left);
        if ended.is_none() {
            let exited = match has_exited(&child) {
                Ok(s) => s,
                Err(e) => {
                    kill_and_reap(&mut child);
                    abandon([&mut out, &mut err]);
                    return Err(RunFail::Start(format!(
                        "{}: waiting for the child: {}",
                        spec.display,
                        os_reason(&e)
                    )));
                }
            };
            if exited {
                ended = Some(gone(Gone::Exited));
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                kill_and_reap(&mut child);
                ended = Some(gone(Gone::TimedOut));
            }
        } else if got > 0 {
            if let Some((_, quiet_since, _)) = &mut ended {
                *quiet_since = Instant::now();
            }
        }
        if let Some(r) = cancel.stopped() {
            // The child, or what it left behind holding the pipes: the whole group.
            kill_and_reap(&mut child);
            abandon([&mut out, &mut err]);
            return Err(RunFail::Stopped(r));
        }
        let mut nap = POLL;
        let done = match &ended {
            // Both pipes at their end.
            Some(_) if !out.is_open() && !err.is_open() => true,
            // A background grandchild holds them open: give up once they stay silent,
            // or at the latest DRAIN_MAX after the exit (or at the timeout).
            Some((_, quiet_since, drain_until)) => {
                let quiet_left = DRAIN_IDLE.saturating_sub(quiet_since.elapsed());
                let drain_left = drain_until.saturating_duration_since(Instant::now());
                if quiet_left.is_zero() || drain_left.is_zero() {
                    abandon([&mut out, &mut err]);
                    true
                } else {
                    nap = quiet_left.min(drain_left).min(POLL);
                    false
                }
            }
            None => {
                // With a pidfd the wait ends the moment the child exits.
                if exit_fd.is_none() {
                    nap = backoff;
                    backoff = (backoff * 2).min(POLL);
                }
                if let Some(d) = deadline {
                    nap = nap.min(d.saturating_duration_since(Instant::now()));
                }
                false
            }
        };
        if done {
            if let Some((how, _, _)) = ended {
                break how;
            }
        }
        let exit = exit_fd.as_ref().filter(|_| ended.is_none());
        wait_any([&out, &err], exit, nap);
    };
    let ended = match ended {
        Gone::TimedOut => Ended::TimedOut,
        // Reaped only now: until here its pid (its group's id) could not be reused.
        Gone::Exited => match child.wait() {
            Ok(status) => Ended::Exited(status),
            Err(e) => {
                return Err(RunFail::Start(format!(
                    "{}: waiting for the child: {}",
                    spec.display,
                    os_reason(&e)
                )))
            }
        },
    };
    let (stdout, out_cut) = out.into_output();
    let (stderr, err_cut) = err.into_output();
    Ok(Finished {
        stdout,
        stderr,
        ended,
        truncated: out_cut || err_cut,
        duration: start.elapsed(),
    })
}

/// The output a command run for `lua`'s task may keep: what its memory limit leaves,
/// less room for the result table and the strings' own headers.
pub(crate) fn keep_within_memory(lua: &Lua) -> Option<usize> {
    const RESULT_ROOM: usize = 64 * 1024;
    sloth_lua::context::memory_left(lua).map(|m| m.saturating_sub(RESULT_ROOM))
}

/// How the child left the wait loop; [`Ended`] once it is reaped.
enum Gone {
    Exited,
    TimedOut,
}

/// Whether the child has exited, without reaping it. A zombie keeps its pid, which is
/// also its process group's id: a stop during the drain after the exit can still kill
/// that group (a background grandchild holding the pipes) with no chance that the id
/// was given to another process in between.
fn has_exited(child: &Child) -> io::Result<bool> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other("child without a valid pid"))?;
    let how = rustix::process::WaitIdOptions::EXITED
        | rustix::process::WaitIdOptions::NOHANG
        | rustix::process::WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(rustix::process::WaitId::Pid(pid), how) {
            Ok(status) => return Ok(status.is_some()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A pidfd of `pid`: readable once the process has exited, so the wait for a child
/// ends the moment it exits instead of at the next poll. `None` where the kernel has
/// no pidfd_open (before Linux 5.3); the caller then polls.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

fn spawn(lua: &Lua, cmd: LV, opts: Option<Table>) -> mlua::Result<MultiValue> {
    const F: &str = "exec.spawn";
    let ctx = task_ctx(lua)?;
    if let Some(r) = ctx.cancel.stopped() {
        return Err(stop_to_lua(r));
    }
    let spec = command_spec(F, &cmd, &LV::Boolean(true))?;
    let mut o = Opts::of(lua, F, opts)?;
    let mut command = base_command(&spec.argv, &ProcOpts::read(&mut o, false)?);
    let log = o.bytes("log")?;
    o.finish()?;
    if ctx.mode.check && !ctx.orchestrator {
        ctx.io.log(
            LogLevel::Info,
            &format!("check mode: not starting: {}", spec.display),
        );
        let t = lua.create_table()?;
        t.raw_set("skipped", true)?;
        t.raw_set("check_mode", true)?;
        return Ok(MultiValue::from_vec(vec![LV::Table(t)]));
    }

    let (stdout, stderr) = match log {
        None => (Stdio::null(), Stdio::null()),
        Some(path) => {
            let path = OsStr::from_bytes(&path).to_os_string();
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|f| Ok((f.try_clone()?, f)));
            match file {
                Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
                Err(e) => {
                    return fail(
                        lua,
                        format!(
                            "{F}: log file {}: {}",
                            path.to_string_lossy(),
                            os_reason(&e)
                        ),
                    )
                }
            }
        }
    };
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    detach_as_service(&mut command);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return fail(lua, format!("{F}: {}: {}", spec.display, os_reason(&e))),
    };
    let pid = child.id();
    // Reap the service when it exits so it never lingers as a zombie of this process.
    let _ = std::thread::Builder::new()
        .name("sloth-exec-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    let t = lua.create_table()?;
    t.raw_set("pid", pid)?;
    Ok(MultiValue::from_vec(vec![LV::Table(t)]))
}

/// Start `command` the way a service manager starts a service: in a session of its
/// own, with every signal at its default disposition and none blocked. A signal the
/// agent's own parent ignored (an agent started under `nohup` ignores `SIGHUP`) would
/// otherwise stay ignored in the service, whose reload by that signal would then do
/// nothing; a shell cannot even `trap` a signal ignored on entry.
pub(crate) fn detach_as_service(command: &mut Command) {
    // SAFETY: between fork and exec the closure makes only async-signal-safe system
    // calls (setsid, signal, sigemptyset, sigprocmask), allocates nothing, takes no
    // lock and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            // The standard signals and the real-time ones; glibc keeps the two
            // between them (32 and 33) for itself and refuses to change them.
            for sig in (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// The signal `v` names; `None` is signal 0 (only checks that the process exists).
fn signal_number(v: &LV) -> Result<Option<Signal>, String> {
    let name = match v {
        LV::Integer(i) => {
            let n = i32::try_from(*i)
                .ok()
                .filter(|n| (0..=64).contains(n))
                .ok_or_else(|| format!("bad signal number {i}"))?;
            if n == 0 {
                return Ok(None);
            }
            return Ok(Some(Signal::from_named_raw(n).unwrap_or_else(|| {
                // SAFETY: `n` is in 1..=64, a valid non-zero Linux signal number (the
                // unnamed ones are the real-time signals). The `Signal` is only sent to a
                // process with kill(2), as `kill -N pid` from a shell would; which
                // number is the caller's choice.
                unsafe { Signal::from_raw_unchecked(n) }
            })));
        }
        LV::String(s) => s.to_string_lossy().to_ascii_uppercase(),
        other => {
            return Err(format!(
                "signal must be a name or a number, got {}",
                other.type_name()
            ))
        }
    };
    let short = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(Some(match short {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "KILL" => Signal::KILL,
        "TERM" => Signal::TERM,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "ALRM" => Signal::ALARM,
        "WINCH" => Signal::WINCH,
        "PIPE" => Signal::PIPE,
        "ABRT" => Signal::ABORT,
        _ => return Err(format!("unknown signal '{name}'")),
    }))
}

/// `pid` as a process id, when it is one (positive and in range).
fn pid_of(pid: i64) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok().filter(|p| *p > 0)?)
}

fn kill(lua: &Lua, pid: i64, sig: Option<LV>) -> mlua::Result<MultiValue> {
    const F: &str = "exec.kill";
    let signal = match sig {
        None | Some(LV::Nil) => Some(Signal::TERM),
        Some(v) => match signal_number(&v) {
            Ok(s) => s,
            Err(e) => return Err(mlua::Error::runtime(format!("{F}: {e}"))),
        },
    };
    let Some(p) = pid_of(pid) else {
        return fail(lua, format!("{F}: {pid}: not a process id"));
    };
    if let Some(done) = sloth_lua::context::skip_in_check_mode(lua, &format!("{F} {pid}"))? {
        return Ok(done);
    }
    // A session leader is signalled with its group. pid 1 is never widened to a group
    // (`kill(-1)` would address every process).
    let leads = |id: rustix::io::Result<Pid>| id.is_ok_and(|id| id == p);
    let group = p != Pid::INIT
        && leads(rustix::process::getsid(Some(p)))
        && leads(rustix::process::getpgid(Some(p)));
    let sent = match (signal, group) {
        (Some(s), true) => rustix::process::kill_process_group(p, s),
        (Some(s), false) => rustix::process::kill_process(p, s),
        (None, true) => rustix::process::test_kill_process_group(p),
        (None, false) => rustix::process::test_kill_process(p),
    };
    match sent {
        Ok(()) => Ok(MultiValue::from_vec(vec![LV::Boolean(true)])),
        Err(e) => fail(lua, format!("{F}: {pid}: {}", os_reason(&e.into()))),
    }
}

/// True while `pid` exists and has not exited (zombies count as gone).
pub(crate) fn alive(pid: i64) -> bool {
    let Some(p) = pid_of(pid) else {
        return false;
    };
    // Signal 0 only checks for existence and permission.
    match rustix::process::test_kill_process(p) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => rustix::process::test_kill_process(p).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::plain_words;

    fn words(cmd: &str) -> Option<Vec<String>> {
        plain_words(cmd.as_bytes())
            .map(|w| w.iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn plain_commands_are_split_on_blanks() {
        assert_eq!(words("uptime"), Some(vec!["uptime".into()]));
        assert_eq!(
            words("  ls -l\t/tmp  "),
            Some(vec!["ls".into(), "-l".into(), "/tmp".into()])
        );
        assert_eq!(
            words("systemctl restart nginx@a.service"),
            Some(vec![
                "systemctl".into(),
                "restart".into(),
                "nginx@a.service".into()
            ])
        );
        assert_eq!(
            words("env A=1 printenv A"),
            Some(vec![
                "env".into(),
                "A=1".into(),
                "printenv".into(),
                "A".into()
            ])
        );
    }

    #[test]
    fn anything_the_shell_would_interpret_is_left_to_it() {
        for cmd in [
            "",
            "   ",
            "echo $HOME",
            "ls *.rs",
            "echo 'a b'",
            "echo \"a\"",
            "a\\ b",
            "a | b",
            "a > f",
            "a < f",
            "a && b",
            "a; b",
            "a &",
            "(a)",
            "echo ~",
            "echo `id`",
            "echo a#b",
            "a\nb",
            "X=1 cmd",
            "cd /tmp",
            "exit 3",
            "export A=1",
            ". ./env",
            "if true",
            "ulimit -n",
            "umask 022",
            "echo {a,b}",
            "ls [ab]",
            "ls ?",
        ] {
            assert_eq!(words(cmd), None, "{cmd:?} must go through the shell");
        }
    }
}
