//! `pkg`: packages, through the host's package manager: apt (Debian, Ubuntu), dnf
//! (Fedora, RHEL), apk (Alpine) or pacman (Arch), found in that order (apt-get and
//! dpkg-query, dnf and rpm, apk, pacman on `PATH`); `backend = "apt"|"dnf"|"apk"|
//! "pacman"` picks one. No supported one is an error: `no supported package manager
//! (apt, dnf, apk, pacman) on this host`.
//!
//! - `pkg.installed{name = "curl" | names = {"a", "b"}, version, refresh, cache_valid,
//!   lock_timeout, backend}` (or `pkg.installed("curl")`): installed, at any version;
//!   with `version` (a single name only) at exactly that version, upgraded or
//!   downgraded to it. A version is written as the package manager shows it: apt
//!   `1:2.3-1` (with the epoch, if any), dnf `VERSION-RELEASE` (`8.5.0-1.fc40`, no
//!   epoch), apk `8.5.0-r0`, pacman `8.5.0-1` (pacman only has the sync database's
//!   version).
//! - `pkg.latest{name | names, refresh, cache_valid, lock_timeout, backend}`:
//!   installed and at the candidate version (the newest the repositories offer that the
//!   package manager would install).
//! - `pkg.absent{name | names, purge, lock_timeout, backend}`: not installed. `purge`
//!   also removes configuration files (apt: `purge`, which also clears a package left
//!   in the `config-files` state; apk: `--purge`; pacman: `-Rn`; dnf: no effect).
//!   apt and dnf also remove the packages that depend on the ones removed.
//! - `pkg.refreshed{max_age, lock_timeout, backend}` (or `pkg.refreshed("1h")`, or
//!   `pkg.refreshed()`): the package cache (apt-get update, dnf makecache, apk update,
//!   pacman -Sy) refreshed when its last refresh is `max_age` old or older. The default
//!   `max_age` is `"0s"`: refresh on every call, which reports changed every time.
//!   Result field `age`: seconds since the last refresh before the call (nil: unknown).
//!
//! `refresh = true` refreshes the cache before installing, and `cache_valid = "1h"`
//! only when it is that old or older (the same rule as `pkg.refreshed`); either way only
//! when the cache can matter: `latest` always, `installed` only when a package is
//! missing or at another version than `version`. The refresh alone does not make the
//! call changed (result field `refreshed`). The time of the last refresh is the newest
//! of a stamp sloth writes after each refresh (`/var/cache/sloth/pkg-refresh-BACKEND`)
//! and the package manager's own files (apt: `/var/lib/apt/periodic/update-success-stamp`
//! and the files in `/var/lib/apt/lists`).
//!
//! The target is the names joined by spaces (`pkg.installed nginx curl: ...`). The
//! result has the usual fields plus `backend`, `versions` (name → installed version
//! after the call; in check mode, the version it would have, when known) and, for a
//! single name, `version`. Action: `installed 1.1`, `1.0 -> 1.1`, `removed 1.1`,
//! `purged 1.1` (with several names each is prefixed with `name:`), or `ok`; the diff is
//! `-version: 1.0` / `+version: 1.1` per changed package.
//!
//! Locks: a package manager busy with another process is waited for, at most
//! `lock_timeout` (default `"60s"`; apt: `DPkg::Lock::Timeout`, apk: `--wait`, pacman:
//! its `db.lck` polled, dnf: `exit_on_lock` and retries), then the call fails with `the
//! package manager is locked by another process (pid 1234, apt-get) and stayed locked
//! for 60s`.
//!
//! Check mode runs only read-only queries (dpkg-query, apt-cache policy, rpm -q, dnf
//! repoquery `-C`, apk policy, pacman -Q/-Si) and never refreshes: the candidate and the
//! versions available are what the current cache says. When a real run would refresh
//! first, a package the current cache does not know is reported as "would install"
//! with its version unknown instead of failing.
//!
//! Changing anything needs root: `needs root (running as uid N)`, before any changing
//! command runs (a call with nothing to change, or in check mode, does not need root).
//! Package names must start with a letter or digit and hold only letters, digits and
//! `. + _ : -`; versions the same plus `~`. A package no repository offers fails with
//! `no such package in the configured repositories (...)`, a version no repository
//! offers with `version V is not available (available: ...)`.

mod apk;
mod apt;
mod dnf;
mod pacman;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mlua::{Lua, Table, Value as LV};
use sloth_lua::cancel::StopReason;
use sloth_lua::context::{stop_to_lua, TaskContext};
use sloth_lua::opts::{arg_error, Opts};

use super::diff;
use super::fsutil;
use super::outcome::tail;
use super::outcome::{args, resource_fn, Call, Outcome};
use crate::exec::{run_argv, Finished, ProcOpts, RunFail};

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "installed", installed)?;
    resource_fn(lua, t, "latest", latest)?;
    resource_fn(lua, t, "absent", absent)?;
    resource_fn(lua, t, "refreshed", refreshed)
}

/// The backends, in the order they are looked for.
const BACKENDS: &[&str] = &["apt", "dnf", "apk", "pacman"];
/// How long a busy package manager is waited for by default.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Most a read-only query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between two attempts while the package manager is locked.
const LOCK_RETRY: Duration = Duration::from_secs(1);
/// Where sloth notes the time of each cache refresh.
const STAMP_DIR: &str = "/var/cache/sloth";

/// A finished command, as the backends parse it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Out {
    pub ok: bool,
    /// The exit code (`None`: killed or timed out).
    pub code: Option<i32>,
    /// `exit code N`, `timed out`, ...
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from_finished(f: &Finished) -> Out {
        let code = match &f.ended {
            crate::exec::Ended::Exited(s) => s.code(),
            crate::exec::Ended::TimedOut => None,
        };
        Out {
            ok: f.success(),
            code,
            status: f.status_text(),
            stdout: String::from_utf8_lossy(&f.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&f.stderr).into_owned(),
        }
    }

    /// Both streams, for messages that may be on either.
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Why a command gave no usable answer.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The call's error (without the `resource target:` prefix).
    Msg(String),
    /// The task was stopped.
    Stopped(StopReason),
}

/// Runs one command (read-only queries of the backends go through this, so their
/// parsing can be tested with canned output).
pub(crate) type Run<'a> = dyn FnMut(&[String]) -> Result<Out, Fail> + 'a;

/// `argv failed (exit code N): <last lines of stderr, else stdout>`.
pub(crate) fn failed(argv: &[String], out: &Out) -> String {
    let mut why = tail(out.stderr.as_bytes(), 3);
    if why.is_empty() {
        why = tail(out.stdout.as_bytes(), 3);
    }
    format!(
        "{} failed ({}){}",
        argv.join(" "),
        out.status,
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        }
    )
}

/// Run a query that must succeed.
pub(crate) fn must(run: &mut Run, argv: Vec<String>) -> Result<Out, Fail> {
    let out = run(&argv)?;
    if out.ok {
        Ok(out)
    } else {
        Err(Fail::Msg(failed(&argv, &out)))
    }
}

/// `["a", "b"]` as owned strings.
pub(crate) fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Whole seconds, rounded up (lock waits of the tools are in seconds).
pub(crate) fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What one package looks like on this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pkg {
    /// The version installed (fully installed: a half-installed package has none).
    pub installed: Option<String>,
    /// Something of it is left that removal would clear (configuration files of a
    /// removed package, a half-installed package).
    pub leftover: bool,
    /// The version the package manager would install (`None`: none available).
    pub candidate: Option<String>,
    /// The versions the repositories offer.
    pub available: Vec<String>,
}

/// Which version an install asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Want {
    /// Whatever the package manager installs.
    Any,
    /// Exactly this one (an upgrade or a downgrade).
    Exact(String),
    /// The candidate, this one.
    Latest(String),
}

/// Who holds the package manager's lock.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Holder {
    pub pid: Option<u32>,
    pub name: Option<String>,
}

/// What a package manager is, as data (one `PROFILE` per backend).
pub(crate) struct Profile {
    pub id: &'static str,
    /// The programs it needs on the host.
    pub programs: &'static [&'static str],
    /// Variables every command of this backend runs with.
    pub env: &'static [(&'static str, &'static str)],
    /// Files, or directories of files, whose newest mtime shows the last refresh.
    pub cache_paths: &'static [&'static str],
    /// How the absence of a candidate shows, for the error.
    pub no_candidate: &'static str,
    /// A lock file that exists while the package manager runs (polled before each
    /// attempt), and what to say when it outlives the wait.
    pub lock_file: Option<(&'static str, &'static str)>,
}

/// Every backend's profile, in the order [`detect`] tries them.
const PROFILES: [&Profile; 4] = [
    &apt::PROFILE,
    &dnf::PROFILE,
    &apk::PROFILE,
    &pacman::PROFILE,
];

/// One package manager: how to read the state of packages and the commands that
/// change it. The command builders and parsers are pure (unit-tested per backend).
pub(crate) trait Backend {
    fn profile(&self) -> &'static Profile;
    /// The state of `names` (in that order). `repos`: also what the repositories offer
    /// (candidate, available versions). `check`: check mode (no cache refresh, even
    /// an implicit one).
    fn query(
        &self,
        run: &mut Run,
        names: &[String],
        repos: bool,
        check: bool,
    ) -> Result<Vec<Pkg>, Fail>;
    /// The command installing `items`, waiting at most `lock` for a busy lock.
    fn install_argv(&self, items: &[(String, Want)], lock: Duration) -> Vec<String>;
    fn remove_argv(&self, names: &[String], purge: bool, lock: Duration) -> Vec<String>;
    fn refresh_argv(&self, lock: Duration) -> Vec<String>;
    /// A refresh that exited 0 but did not refresh everything: why.
    fn refresh_problem(&self, _out: &Out) -> Option<String> {
        None
    }
    /// The failed command failed because another process holds the lock.
    fn locked(&self, out: &Out) -> Option<Holder>;
}

fn backend(id: &str) -> Box<dyn Backend> {
    match id {
        "dnf" => Box::new(dnf::Dnf),
        "apk" => Box::new(apk::Apk),
        "pacman" => Box::new(pacman::Pacman),
        _ => Box::new(apt::Apt),
    }
}

/// The programs backend `id` needs.
fn programs(id: &str) -> &'static [&'static str] {
    PROFILES
        .iter()
        .find(|p| p.id == id)
        .map_or(&[], |p| p.programs)
}

/// The backend to use: `choice` when given (its programs must be there), else the
/// first of [`BACKENDS`] whose programs `has`.
pub(crate) fn detect(
    choice: Option<&str>,
    has: impl Fn(&str) -> bool,
) -> Result<&'static str, String> {
    if let Some(c) = choice {
        let id = BACKENDS.iter().find(|b| **b == c).copied().unwrap_or("apt");
        let missing: Vec<&str> = programs(id).iter().copied().filter(|p| !has(p)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "backend '{id}' was asked for, but {} not found on this host",
                if missing.len() == 1 {
                    format!("{} was", missing[0])
                } else {
                    format!("{} were", missing.join(", "))
                }
            ));
        }
        return Ok(id);
    }
    BACKENDS
        .iter()
        .copied()
        .find(|b| programs(b).iter().all(|p| has(p)))
        .ok_or_else(|| "no supported package manager (apt, dnf, apk, pacman) on this host".into())
}

/// An executable named `prog` on `PATH` (or in the usual system directories, for an
/// agent started with a short `PATH`).
fn on_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.iter().any(|d| {
        fs::metadata(d.join(prog))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// A package name the package managers accept and no shell or option parser can
/// misread: a letter or digit first, then letters, digits and `. + _ : -`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    check_word(name, "package name", ".+_:-")
}

/// A version: like a name, plus `~` (Debian pre-releases).
pub(crate) fn check_version(v: &str) -> Result<(), String> {
    check_word(v, "version", ".+_:~-")
}

fn check_word(w: &str, what: &str, extra: &str) -> Result<(), String> {
    let first_ok = w.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = w
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if w.is_empty() {
        return Err(format!("is empty (a {what} is needed)"));
    }
    if !first_ok || !rest_ok {
        let allowed: Vec<String> = extra.chars().map(|c| c.to_string()).collect();
        return Err(format!(
            "is not a valid {what}: '{w}' (it must start with a letter or digit and hold \
             only letters, digits and {})",
            allowed.join(" ")
        ));
    }
    Ok(())
}

/// `name` or `names`: a list of valid names, duplicates dropped.
fn read_names(o: &mut Opts) -> mlua::Result<Vec<String>> {
    let one = o.string("name")?;
    let many = o.strings("names")?;
    let (key, list) = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(o.error(
                "names",
                "and option 'name' exclude each other: give one of them",
            ))
        }
        (Some(n), None) => ("name", vec![n]),
        (None, Some(l)) if l.is_empty() => {
            return Err(o.error("names", "must not be empty"));
        }
        (None, Some(l)) => ("names", l),
        (None, None) => {
            return Err(o.missing(
                &["name", "names"],
                o.error("name", "(or 'names') is required"),
            ))
        }
    };
    let mut names: Vec<String> = Vec::new();
    for n in list {
        check_name(&n).map_err(|e| o.error(key, e))?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ok(names)
}

/// `d` for messages: `60s`, `1.5s`, `500ms`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The error of a package manager that stayed locked for the whole wait.
pub(crate) fn locked_message(holder: &Holder, waited: Duration, hint: Option<&str>) -> String {
    let who = match (&holder.pid, &holder.name) {
        (Some(p), Some(n)) => format!(" (pid {p}, {n})"),
        (Some(p), None) => format!(" (pid {p})"),
        (None, Some(n)) => format!(" ({n})"),
        (None, None) => String::new(),
    };
    format!(
        "the package manager is locked by another process{who} and stayed locked for {}{}",
        fmt_duration(waited),
        hint.map(|h| format!("; {h}")).unwrap_or_default()
    )
}

/// The age of a cache last refreshed at the newest of `times`: `None` when unknown
/// (nothing found, or a time more than a minute in the future: a clock that went
/// back, where refreshing is the safe answer).
pub(crate) fn age_of(times: &[SystemTime], now: SystemTime) -> Option<Duration> {
    let newest = times.iter().max()?;
    match now.duration_since(*newest) {
        Ok(age) => Some(age),
        Err(e) if e.duration() <= Duration::from_secs(60) => Some(Duration::ZERO),
        Err(_) => None,
    }
}

/// The mtime of a file, or the newest mtime of the files directly in a directory
/// (lock files aside).
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let m = fs::metadata(path).ok()?;
    if !m.is_dir() {
        return m.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "lock" && e.file_name() != "db.lck")
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            if m.is_file() {
                m.modified().ok()
            } else {
                None
            }
        })
        .max()
}

fn stamp_path(b: &dyn Backend) -> PathBuf {
    Path::new(STAMP_DIR).join(format!("pkg-refresh-{}", b.profile().id))
}

/// How long ago the cache of `b` was last refreshed, when known.
fn cache_age(b: &dyn Backend) -> Option<Duration> {
    let mut times: Vec<SystemTime> = b
        .profile()
        .cache_paths
        .iter()
        .filter_map(|p| newest_mtime(Path::new(p)))
        .collect();
    times.extend(newest_mtime(&stamp_path(b)));
    age_of(&times, SystemTime::now())
}

/// Refresh when the last one is `max_age` old or older (or unknown).
fn stale(age: Option<Duration>, max_age: Duration) -> bool {
    age.is_none_or(|a| a >= max_age)
}

/// Runs the backend's commands for one call.
struct Host<'a> {
    ctx: &'a TaskContext,
    b: &'a dyn Backend,
}

impl Host<'_> {
    fn run(&self, argv: &[String], timeout: Option<Duration>) -> Result<Out, Fail> {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let p = ProcOpts {
            env: self
                .b
                .profile()
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), Some(OsString::from(v))))
                .collect(),
            timeout,
            ..ProcOpts::default()
        };
        match run_argv(self.ctx, &refs, &p) {
            Ok(f) => Ok(Out::from_finished(&f)),
            Err(RunFail::Start(why)) => Err(Fail::Msg(why)),
            Err(RunFail::Stopped(r)) => Err(Fail::Stopped(r)),
        }
    }

    fn query(&self, names: &[String], repos: bool, check: bool) -> Result<Vec<Pkg>, Fail> {
        let mut run = |argv: &[String]| self.run(argv, Some(QUERY_TIMEOUT));
        self.b.query(&mut run, names, repos, check)
    }

    /// Run a changing command built by `build` (given the lock wait left), retrying
    /// while another process holds the lock, for at most `lock_timeout` in all.
    fn change(
        &self,
        build: &dyn Fn(Duration) -> Vec<String>,
        lock_timeout: Duration,
    ) -> Result<Out, Fail> {
        let start = Instant::now();
        let left = || lock_timeout.saturating_sub(start.elapsed());
        loop {
            if let Some((file, hint)) = self.b.profile().lock_file {
                while Path::new(file).exists() {
                    if left().is_zero() {
                        return Err(Fail::Msg(locked_message(
                            &Holder::default(),
                            lock_timeout,
                            Some(hint),
                        )));
                    }
                    self.ctx
                        .cancel
                        .sleep(Duration::from_millis(200).min(left()))
                        .map_err(Fail::Stopped)?;
                }
            }
            let argv = build(left());
            let out = self.run(&argv, None)?;
            if out.ok {
                return Ok(out);
            }
            match self.b.locked(&out) {
                Some(holder) if left().is_zero() => {
                    let hint = self.b.profile().lock_file.map(|(_, h)| h);
                    return Err(Fail::Msg(locked_message(&holder, lock_timeout, hint)));
                }
                Some(_) => {
                    self.ctx
                        .cancel
                        .sleep(LOCK_RETRY.min(left()))
                        .map_err(Fail::Stopped)?;
                }
                None => return Err(Fail::Msg(failed(&argv, &out))),
            }
        }
    }

    /// Refresh the cache and note when.
    fn refresh(&self, lock_timeout: Duration) -> Result<(), Fail> {
        let b = self.b;
        let out = self.change(&|left| b.refresh_argv(left), lock_timeout)?;
        if let Some(why) = b.refresh_problem(&out) {
            return Err(Fail::Msg(format!(
                "refreshing the package cache failed: {why}"
            )));
        }
        let stamp = stamp_path(b);
        fs::create_dir_all(STAMP_DIR)
            .and_then(|_| {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                fsutil::write_atomic(
                    &stamp,
                    format!("{now}\n").as_bytes(),
                    0o644,
                    None,
                    None,
                    None,
                )
            })
            .map_err(|e| {
                Fail::Msg(format!(
                    "the cache was refreshed, but its stamp {} could not be written: {}",
                    stamp.display(),
                    fsutil::reason(&e)
                ))
            })
    }
}

/// The error a [`Fail`] raises for `call`.
fn raise(call: &Call, f: Fail) -> mlua::Error {
    match f {
        Fail::Msg(m) => call.fail(m),
        Fail::Stopped(r) => stop_to_lua(r),
    }
}

/// What a call wants.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Goal {
    Installed(Option<String>),
    Latest,
    Absent { purge: bool },
}

/// One change to one package.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub name: String,
    pub from: Option<String>,
    /// The version after (`None`: removed, or not known before a refresh).
    pub to: Option<String>,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepKind {
    Install(Want),
    Remove,
    Purge,
}

/// Would a refresh help reach `goal`? `latest` needs fresh candidates; `installed`
/// only when a package is missing or at another version.
pub(crate) fn refresh_helps(goal: &Goal, pkgs: &[Pkg]) -> bool {
    match goal {
        Goal::Latest => true,
        Goal::Installed(None) => pkgs.iter().any(|p| p.installed.is_none()),
        Goal::Installed(Some(v)) => pkgs.iter().any(|p| p.installed.as_ref() != Some(v)),
        Goal::Absent { .. } => false,
    }
}

/// The steps from `pkgs` (the state of `names`) to `goal`. `refresh_pending`: a real
/// run would refresh the cache first (check mode), so what the current cache lacks
/// is not an error yet.
pub(crate) fn plan(
    goal: &Goal,
    names: &[String],
    pkgs: &[Pkg],
    refresh_pending: bool,
    no_candidate: &str,
) -> Result<Vec<Step>, String> {
    let several = names.len() > 1;
    let who = |n: &str| {
        if several {
            format!("{n}: ")
        } else {
            String::new()
        }
    };
    let mut steps = Vec::new();
    for (name, p) in names.iter().zip(pkgs) {
        let from = p.installed.clone();
        let missing = || {
            format!(
                "{}no such package in the configured repositories ({no_candidate})",
                who(name)
            )
        };
        let step = |to: Option<String>, kind: StepKind| Step {
            name: name.clone(),
            from: from.clone(),
            to,
            kind,
        };
        match goal {
            Goal::Installed(None) => {
                if p.installed.is_some() {
                    continue;
                }
                match &p.candidate {
                    Some(c) => steps.push(step(Some(c.clone()), StepKind::Install(Want::Any))),
                    None if refresh_pending => steps.push(step(None, StepKind::Install(Want::Any))),
                    None => return Err(missing()),
                }
            }
            Goal::Installed(Some(v)) => {
                if p.installed.as_ref() == Some(v) {
                    continue;
                }
                if !p.available.contains(v) && !refresh_pending {
                    if p.available.is_empty() && p.installed.is_none() {
                        return Err(missing());
                    }
                    return Err(format!(
                        "{}version {v} is not available (available: {})",
                        who(name),
                        if p.available.is_empty() {
                            "none".to_string()
                        } else {
                            p.available.join(", ")
                        }
                    ));
                }
                steps.push(step(
                    Some(v.clone()),
                    StepKind::Install(Want::Exact(v.clone())),
                ));
            }
            Goal::Latest => match (&p.candidate, &p.installed) {
                (Some(c), Some(i)) if c == i => {}
                (Some(c), _) => steps.push(step(
                    Some(c.clone()),
                    StepKind::Install(Want::Latest(c.clone())),
                )),
                // Installed, but no repository has it: it is as new as it gets.
                (None, Some(_)) => {}
                (None, None) if refresh_pending => {
                    steps.push(step(None, StepKind::Install(Want::Any)))
                }
                (None, None) => return Err(missing()),
            },
            Goal::Absent { purge } => {
                if p.installed.is_some() || (*purge && p.leftover) {
                    steps.push(step(
                        None,
                        if *purge {
                            StepKind::Purge
                        } else {
                            StepKind::Remove
                        },
                    ));
                }
            }
        }
    }
    Ok(steps)
}

/// What `steps` did (or would do), for the action: `installed 1.1`, `1.0 -> 1.1`,
/// `removed 1.1`, each prefixed with `name:` when the call has several names.
pub(crate) fn action(steps: &[Step], several: bool) -> String {
    if steps.is_empty() {
        return "ok".into();
    }
    steps
        .iter()
        .map(|s| {
            let what = match (&s.kind, &s.from, &s.to) {
                (StepKind::Install(_), None, Some(to)) => format!("installed {to}"),
                (StepKind::Install(_), None, None) => {
                    "installed (version known after the cache refresh)".into()
                }
                (StepKind::Install(_), Some(from), Some(to)) => format!("{from} -> {to}"),
                (StepKind::Install(_), Some(from), None) => {
                    format!("{from} -> (version known after the cache refresh)")
                }
                (StepKind::Remove, from, _) => {
                    format!("removed {}", from.as_deref().unwrap_or("(leftovers)"))
                }
                (StepKind::Purge, from, _) => {
                    format!(
                        "purged {}",
                        from.as_deref().unwrap_or("(configuration files)")
                    )
                }
            };
            if several {
                format!("{}: {what}", s.name)
            } else {
                what
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `-version: 1.0` / `+version: 1.1` per step.
pub(crate) fn diff_of(steps: &[Step]) -> Option<String> {
    if steps.is_empty() {
        return None;
    }
    let none = "(none)";
    Some(
        steps
            .iter()
            .map(|s| {
                let to = match (&s.kind, &s.to) {
                    (StepKind::Install(_), None) => "(known after the cache refresh)",
                    (_, to) => to.as_deref().unwrap_or(none),
                };
                diff::property(&s.name, "version", s.from.as_deref().unwrap_or(none), to)
            })
            .collect(),
    )
}

fn installed(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    ensure(lua, arg, "pkg.installed", Kind::Installed)
}

fn latest(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    ensure(lua, arg, "pkg.latest", Kind::Latest)
}

fn absent(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    ensure(lua, arg, "pkg.absent", Kind::Absent)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Installed,
    Latest,
    Absent,
}

fn ensure(lua: &Lua, arg: LV, r: &'static str, kind: Kind) -> mlua::Result<Table> {
    let mut o = args(lua, r, arg, "name")?;
    let names = read_names(&mut o)?;
    let choice = o.choice("backend", BACKENDS)?;
    let call = Call::new(lua, r, names.join(" "), &mut o)?;
    let version = match kind {
        Kind::Installed => o.string("version")?,
        _ => None,
    };
    if let Some(v) = &version {
        if names.len() > 1 {
            return Err(o.error(
                "version",
                format!("needs a single package name (got {})", names.len()),
            ));
        }
        check_version(v).map_err(|e| o.error("version", e))?;
    }
    let (refresh, cache_valid) = match kind {
        Kind::Absent => (None, None),
        _ => (o.bool("refresh")?, o.duration("cache_valid")?),
    };
    if refresh == Some(false) && cache_valid.is_some() {
        return Err(o.error("cache_valid", "has no effect with refresh = false"));
    }
    let purge = match kind {
        Kind::Absent => o.bool("purge")?.unwrap_or(false),
        _ => false,
    };
    let lock_timeout = o.duration("lock_timeout")?.unwrap_or(DEFAULT_LOCK_TIMEOUT);
    o.finish()?;

    let id = detect(choice, on_path).map_err(|e| call.fail(e))?;
    let b = backend(id);
    let host = Host {
        ctx: &call.ctx,
        b: b.as_ref(),
    };
    let goal = match kind {
        Kind::Installed => Goal::Installed(version),
        Kind::Latest => Goal::Latest,
        Kind::Absent => Goal::Absent { purge },
    };
    let repos = kind != Kind::Absent;
    let mut pkgs = host
        .query(&names, repos, call.check())
        .map_err(|f| raise(&call, f))?;
    let mut refreshed = false;
    let mut refresh_pending = false;
    let wants_refresh = match (refresh, cache_valid) {
        (_, Some(max_age)) => stale(cache_age(b.as_ref()), max_age),
        (Some(r), None) => r,
        (None, None) => false,
    };
    if wants_refresh && refresh_helps(&goal, &pkgs) {
        if call.check() {
            refresh_pending = true;
        } else {
            call.need_root()?;
            host.refresh(lock_timeout).map_err(|f| raise(&call, f))?;
            refreshed = true;
            pkgs = host
                .query(&names, repos, false)
                .map_err(|f| raise(&call, f))?;
        }
    }
    let steps = plan(
        &goal,
        &names,
        &pkgs,
        refresh_pending,
        b.profile().no_candidate,
    )
    .map_err(|e| call.fail(e))?;

    // Versions after the call (planned ones in check mode).
    let mut after: Vec<Option<String>> = pkgs.iter().map(|p| p.installed.clone()).collect();
    if !steps.is_empty() {
        for s in &steps {
            if let Some(i) = names.iter().position(|n| *n == s.name) {
                after[i] = s.to.clone();
            }
        }
        if !call.check() {
            call.need_root()?;
            let installs: Vec<(String, Want)> = steps
                .iter()
                .filter_map(|s| match &s.kind {
                    StepKind::Install(w) => Some((s.name.clone(), w.clone())),
                    _ => None,
                })
                .collect();
            let removes: Vec<String> = steps
                .iter()
                .filter(|s| !matches!(s.kind, StepKind::Install(_)))
                .map(|s| s.name.clone())
                .collect();
            let bref = b.as_ref();
            if !installs.is_empty() {
                host.change(&|left| bref.install_argv(&installs, left), lock_timeout)
                    .map_err(|f| raise(&call, f))?;
            }
            if !removes.is_empty() {
                host.change(
                    &|left| bref.remove_argv(&removes, purge, left),
                    lock_timeout,
                )
                .map_err(|f| raise(&call, f))?;
            }
            let now = host
                .query(&names, false, false)
                .map_err(|f| raise(&call, f))?;
            verify(&steps, &names, &now).map_err(|e| call.fail(e))?;
            after = now.into_iter().map(|p| p.installed).collect();
        }
    }

    let outcome = if steps.is_empty() {
        Outcome::ok("ok")
    } else {
        // Check mode: what a package installs (units, users) cannot be known; later
        // resources that need one accept it as possibly there.
        Outcome::changed(action(&steps, names.len() > 1))
            .with_diff(diff_of(&steps))
            .planning(&super::outcome::plan_key("pkg", "installed"), true)
    };
    let versions = lua.create_table()?;
    for (n, v) in names.iter().zip(&after) {
        if let Some(v) = v {
            versions.raw_set(n.as_str(), v.as_str())?;
        }
    }
    let mut outcome = outcome
        .with("backend", LV::String(lua.create_string(id)?))
        .with("versions", LV::Table(versions));
    if let (1, Some(Some(v))) = (names.len(), after.first()) {
        outcome = outcome.with("version", LV::String(lua.create_string(v)?));
    }
    if kind != Kind::Absent {
        outcome = outcome.with("refreshed", LV::Boolean(refreshed));
    }
    call.done(lua, outcome)
}

/// After a real run: every package is where its step put it.
pub(crate) fn verify(steps: &[Step], names: &[String], now: &[Pkg]) -> Result<(), String> {
    for s in steps {
        let Some(p) = names
            .iter()
            .position(|n| *n == s.name)
            .and_then(|i| now.get(i))
        else {
            continue;
        };
        let have = p.installed.as_deref();
        let bad = match &s.kind {
            StepKind::Install(Want::Any) => have.is_none(),
            StepKind::Install(Want::Exact(v) | Want::Latest(v)) => have != Some(v.as_str()),
            StepKind::Remove => have.is_some(),
            StepKind::Purge => have.is_some() || p.leftover,
        };
        if bad {
            let want = match &s.kind {
                StepKind::Install(Want::Any) => "installed".to_string(),
                StepKind::Install(Want::Exact(v) | Want::Latest(v)) => format!("at {v}"),
                StepKind::Remove => "removed".to_string(),
                StepKind::Purge => "purged".to_string(),
            };
            return Err(format!(
                "the package manager succeeded, but {} is not {want} (installed: {})",
                s.name,
                have.unwrap_or("none")
            ));
        }
    }
    Ok(())
}

fn refreshed(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "pkg.refreshed";
    let mut o = match arg {
        LV::Nil => Opts::new(R, lua.create_table()?),
        other => args(lua, R, other, "max_age")?,
    };
    let choice = o.choice("backend", BACKENDS)?;
    let id = detect(choice, on_path).map_err(|e| arg_error(R, e))?;
    let call = Call::new(lua, R, id, &mut o)?;
    let max_age = o.duration("max_age")?.unwrap_or(Duration::ZERO);
    let lock_timeout = o.duration("lock_timeout")?.unwrap_or(DEFAULT_LOCK_TIMEOUT);
    o.finish()?;
    let b = backend(id);
    let age = cache_age(b.as_ref());
    let outcome = if stale(age, max_age) {
        if !call.check() {
            call.need_root()?;
            let host = Host {
                ctx: &call.ctx,
                b: b.as_ref(),
            };
            host.refresh(lock_timeout).map_err(|f| raise(&call, f))?;
        }
        Outcome::changed(match age {
            Some(a) => format!("refreshed (last refresh {} ago)", fmt_age(a)),
            None => "refreshed (no earlier refresh known)".into(),
        })
    } else {
        Outcome::ok(format!(
            "ok (last refresh {} ago)",
            fmt_age(age.unwrap_or_default())
        ))
    };
    let outcome = outcome
        .with("backend", LV::String(lua.create_string(id)?))
        .with(
            "age",
            age.map_or(LV::Nil, |a| LV::Integer(a.as_secs() as i64)),
        );
    call.done(lua, outcome)
}

/// A cache age for the action: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn fmt_age(a: Duration) -> String {
    let s = a.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Compare two versions the way rpm does (apk and pacman versions compare the
/// same way for all practical purposes): runs of digits numerically, runs of letters
/// as text, a digit run above a letter run, `~` below everything (even the end), other
/// characters only separate. apk's pre-release suffixes (`_alpha`, `_beta`, `_pre`,
/// `_rc`) count as `~`.
pub(crate) fn vercmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    fn norm(v: &str) -> String {
        let mut s = v.to_string();
        for suf in ["_alpha", "_beta", "_pre", "_rc"] {
            s = s.replace(suf, &format!("~{}", &suf[1..]));
        }
        s
    }
    let (a, b) = (norm(a), norm(b));
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~';
    loop {
        while a.first().is_some_and(|c| sep(*c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|c| sep(*c)) {
            b = &b[1..];
        }
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (true, false) => return Less,
            (false, true) => return Greater,
            (false, false) => {}
        }
        let (Some(&ca), Some(_)) = (a.first(), b.first()) else {
            break;
        };
        let numeric = ca.is_ascii_digit();
        let take = |s: &[u8]| -> usize {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (na, nb) = (take(a), take(b));
        if nb == 0 {
            // `b` has the other kind of run here: numbers are newer than letters.
            return if numeric { Greater } else { Less };
        }
        let (sa, sb) = (&a[..na], &b[..nb]);
        let ord = if numeric {
            let trim = |s: &[u8]| -> Vec<u8> {
                let t: Vec<u8> = s.iter().copied().skip_while(|c| *c == b'0').collect();
                t
            };
            let (ta, tb) = (trim(sa), trim(sb));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Equal,
        (true, false) => Less,
        _ => Greater,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cmp::Ordering::*;
    use std::collections::VecDeque;

    /// A runner answering each command with the next canned output, checking the
    /// command is the one expected.
    pub(crate) struct Canned(pub VecDeque<(String, Out)>);

    pub(crate) fn ok(stdout: &str) -> Out {
        Out {
            ok: true,
            code: Some(0),
            status: "exit code 0".into(),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    pub(crate) fn exit(code: i32, stdout: &str, stderr: &str) -> Out {
        Out {
            ok: code == 0,
            code: Some(code),
            status: format!("exit code {code}"),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    impl Canned {
        pub(crate) fn new(items: Vec<(&str, Out)>) -> Canned {
            Canned(items.into_iter().map(|(a, o)| (a.to_string(), o)).collect())
        }

        /// Run `b.query` against the canned answers; all of them must be used.
        pub(crate) fn query(
            mut self,
            b: &dyn Backend,
            names: &[&str],
            repos: bool,
            check: bool,
        ) -> Result<Vec<Pkg>, String> {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut run = |argv: &[String]| -> Result<Out, Fail> {
                let (want, out) = self
                    .0
                    .pop_front()
                    .unwrap_or_else(|| panic!("unexpected command: {}", argv.join(" ")));
                assert_eq!(argv.join(" "), want, "command");
                Ok(out)
            };
            let r = b
                .query(&mut run, &names, repos, check)
                .map_err(|f| match f {
                    Fail::Msg(m) => m,
                    Fail::Stopped(r) => r.message(),
                });
            assert!(self.0.is_empty(), "commands not run: {:?}", self.0);
            r
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn pkg(installed: Option<&str>, candidate: Option<&str>, available: &[&str]) -> Pkg {
        Pkg {
            installed: installed.map(str::to_string),
            leftover: false,
            candidate: candidate.map(str::to_string),
            available: names(available),
        }
    }

    #[test]
    fn names_and_versions_are_checked() {
        for good in ["curl", "libc6:amd64", "g++", "python3.11", "lib_x-1", "0ad"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-rf", "--purge", "a b", "a;rm", "$(x)", "a*", "a=1", "/etc/x", ".x", "a/b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let e = check_name("-y").unwrap_err();
        assert!(e.contains("is not a valid package name: '-y'"), "{e}");
        assert!(check_name("").unwrap_err().contains("is empty"));
        for good in [
            "1.0",
            "1:2.3-1",
            "1.0~rc1-1",
            "8.5.0-r0",
            "2.3+dfsg-1ubuntu1",
        ] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in ["", "-1", "1 2", "1.0*", ">1", "1;x", "~1"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backends_are_detected_in_order_or_chosen() {
        let has = |set: &'static [&'static str]| move |p: &str| set.contains(&p);
        assert_eq!(
            detect(
                None,
                has(&["apt-get", "apt-cache", "dpkg-query", "dnf", "rpm"])
            ),
            Ok("apt")
        );
        assert_eq!(detect(None, has(&["dnf", "rpm", "apk"])), Ok("dnf"));
        // dnf without rpm is no dnf host.
        assert_eq!(detect(None, has(&["dnf", "apk"])), Ok("apk"));
        assert_eq!(detect(None, has(&["pacman"])), Ok("pacman"));
        assert_eq!(
            detect(None, has(&["rpm"])),
            Err("no supported package manager (apt, dnf, apk, pacman) on this host".into())
        );
        assert_eq!(
            detect(
                Some("dnf"),
                has(&["apt-get", "apt-cache", "dpkg-query", "dnf", "rpm"])
            ),
            Ok("dnf")
        );
        let e = detect(Some("pacman"), has(&["apt-get"])).unwrap_err();
        assert_eq!(
            e,
            "backend 'pacman' was asked for, but pacman was not found on this host"
        );
        let e = detect(Some("apt"), has(&["apt-get"])).unwrap_err();
        assert!(e.contains("apt-cache, dpkg-query were not found"), "{e}");
    }

    #[test]
    fn lock_messages_name_the_holder_and_the_wait() {
        let h = Holder {
            pid: Some(1234),
            name: Some("apt-get".into()),
        };
        assert_eq!(
            locked_message(&h, Duration::from_secs(60), None),
            "the package manager is locked by another process (pid 1234, apt-get) and \
             stayed locked for 60s"
        );
        assert_eq!(
            locked_message(
                &Holder::default(),
                Duration::from_millis(1500),
                Some("hint")
            ),
            "the package manager is locked by another process and stayed locked for 1.5s; hint"
        );
        let h = Holder {
            pid: Some(7),
            name: None,
        };
        assert!(locked_message(&h, Duration::from_millis(200), None)
            .contains("(pid 7) and stayed locked for 200ms"));
        assert_eq!(secs_up(Duration::from_millis(1500)), 2);
        assert_eq!(secs_up(Duration::from_secs(2)), 2);
        assert_eq!(secs_up(Duration::ZERO), 0);
    }

    #[test]
    fn cache_age_is_the_newest_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = |ago: u64| now - Duration::from_secs(ago);
        assert_eq!(age_of(&[], now), None);
        assert_eq!(
            age_of(&[t(500), t(30), t(9000)], now),
            Some(Duration::from_secs(30))
        );
        // A little in the future (clock jitter): fresh; far: unknown.
        assert_eq!(
            age_of(&[now + Duration::from_secs(5)], now),
            Some(Duration::ZERO)
        );
        assert_eq!(age_of(&[now + Duration::from_secs(3600)], now), None);
        assert!(stale(None, Duration::from_secs(3600)));
        assert!(
            stale(Some(Duration::ZERO), Duration::ZERO),
            "max_age 0 always refreshes"
        );
        assert!(!stale(
            Some(Duration::from_secs(10)),
            Duration::from_secs(3600)
        ));
        assert!(stale(
            Some(Duration::from_secs(3600)),
            Duration::from_secs(3600)
        ));
        assert_eq!(fmt_age(Duration::from_secs(42)), "42s");
        assert_eq!(fmt_age(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(fmt_age(Duration::from_secs(3 * 86_400)), "3d");

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_mtime(dir.path()), None, "an empty directory");
        fs::write(dir.path().join("lock"), "").unwrap();
        assert_eq!(newest_mtime(dir.path()), None, "lock files do not count");
        fs::write(dir.path().join("Packages"), "x").unwrap();
        assert!(newest_mtime(dir.path()).is_some());
        assert!(newest_mtime(&dir.path().join("nope")).is_none());
    }

    #[test]
    fn installed_plans_only_what_is_missing() {
        let n = names(&["a", "b"]);
        let pkgs = [
            pkg(Some("1.0"), Some("1.1"), &["1.0", "1.1"]),
            pkg(None, Some("2.0"), &["2.0"]),
        ];
        let steps = plan(&Goal::Installed(None), &n, &pkgs, false, "x").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].name, "b");
        assert_eq!(steps[0].kind, StepKind::Install(Want::Any));
        assert_eq!(action(&steps, true), "b: installed 2.0");
        assert_eq!(
            diff_of(&steps).unwrap(),
            "--- before: b\n+++ after: b\n-version: (none)\n+version: 2.0\n"
        );
        // Already there: nothing, and no refresh needed.
        let steps = plan(&Goal::Installed(None), &n[..1], &pkgs[..1], false, "x").unwrap();
        assert!(steps.is_empty());
        assert_eq!(action(&steps, false), "ok");
        assert!(!refresh_helps(&Goal::Installed(None), &pkgs[..1]));
        assert!(refresh_helps(&Goal::Installed(None), &pkgs));
        assert!(refresh_helps(&Goal::Latest, &pkgs[..1]));
        assert!(!refresh_helps(&Goal::Absent { purge: true }, &pkgs));
    }

    #[test]
    fn unknown_packages_and_versions_are_errors() {
        let n = names(&["nope"]);
        let none = [pkg(None, None, &[])];
        let e = plan(
            &Goal::Installed(None),
            &n,
            &none,
            false,
            "apt-cache policy shows no candidate",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "no such package in the configured repositories (apt-cache policy shows no candidate)"
        );
        let e = plan(&Goal::Latest, &n, &none, false, "c").unwrap_err();
        assert!(e.starts_with("no such package"), "{e}");
        let e = plan(&Goal::Installed(Some("1.0".into())), &n, &none, false, "c").unwrap_err();
        assert!(e.starts_with("no such package"), "{e}");
        // Several names: the error says which.
        let n2 = names(&["a", "nope"]);
        let e = plan(
            &Goal::Installed(None),
            &n2,
            &[pkg(None, Some("1"), &["1"]), pkg(None, None, &[])],
            false,
            "c",
        )
        .unwrap_err();
        assert!(e.starts_with("nope: no such package"), "{e}");
        // A version nobody offers.
        let p = [pkg(Some("1.0"), Some("1.1"), &["1.1", "1.0"])];
        let e = plan(&Goal::Installed(Some("9".into())), &n, &p, false, "c").unwrap_err();
        assert_eq!(e, "version 9 is not available (available: 1.1, 1.0)");
        // Check mode before a refresh the real run would make: planned, version unknown.
        let steps = plan(&Goal::Installed(None), &n, &none, true, "c").unwrap();
        assert_eq!(steps[0].to, None);
        assert_eq!(
            action(&steps, false),
            "installed (version known after the cache refresh)"
        );
        let steps = plan(&Goal::Installed(Some("9".into())), &n, &p, true, "c").unwrap();
        assert_eq!(action(&steps, false), "1.0 -> 9");
    }

    #[test]
    fn pins_and_latest_move_versions_both_ways() {
        let n = names(&["h"]);
        let p = [pkg(Some("1.1"), Some("1.1"), &["1.1", "1.0"])];
        let steps = plan(&Goal::Installed(Some("1.0".into())), &n, &p, false, "c").unwrap();
        assert_eq!(steps[0].kind, StepKind::Install(Want::Exact("1.0".into())));
        assert_eq!(action(&steps, false), "1.1 -> 1.0");
        assert!(
            plan(&Goal::Installed(Some("1.1".into())), &n, &p, false, "c")
                .unwrap()
                .is_empty()
        );
        assert!(plan(&Goal::Latest, &n, &p, false, "c").unwrap().is_empty());
        let p = [pkg(Some("1.0"), Some("1.1"), &["1.1", "1.0"])];
        let steps = plan(&Goal::Latest, &n, &p, false, "c").unwrap();
        assert_eq!(steps[0].kind, StepKind::Install(Want::Latest("1.1".into())));
        assert_eq!(action(&steps, false), "1.0 -> 1.1");
        assert_eq!(
            diff_of(&steps).unwrap(),
            "--- before: h\n+++ after: h\n-version: 1.0\n+version: 1.1\n"
        );
        // Installed from nowhere (no repository has it): latest as it is.
        let p = [pkg(Some("0.9"), None, &[])];
        assert!(plan(&Goal::Latest, &n, &p, false, "c").unwrap().is_empty());
        assert!(verify(&steps, &n, &[pkg(Some("1.1"), None, &[])]).is_ok());
        let e = verify(&steps, &n, &[pkg(Some("1.0"), None, &[])]).unwrap_err();
        assert!(e.contains("h is not at 1.1 (installed: 1.0)"), "{e}");
    }

    #[test]
    fn absent_removes_or_purges() {
        let n = names(&["a", "b", "c"]);
        let mut rc = pkg(None, Some("1"), &["1"]);
        rc.leftover = true;
        let pkgs = [pkg(Some("1.0"), None, &[]), pkg(None, None, &[]), rc];
        let steps = plan(&Goal::Absent { purge: false }, &n, &pkgs, false, "c").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(action(&steps, true), "a: removed 1.0");
        let steps = plan(&Goal::Absent { purge: true }, &n, &pkgs, false, "c").unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            action(&steps, true),
            "a: purged 1.0, c: purged (configuration files)"
        );
        assert!(diff_of(&steps).unwrap().contains("+version: (none)"));
        let mut left = pkg(None, None, &[]);
        left.leftover = true;
        let e = verify(
            &steps,
            &n,
            &[pkg(None, None, &[]), pkg(None, None, &[]), left],
        )
        .unwrap_err();
        assert!(e.contains("c is not purged"), "{e}");
    }

    #[test]
    fn versions_compare_like_the_package_managers() {
        assert_eq!(vercmp("1.0", "1.0"), Equal);
        assert_eq!(vercmp("1.10", "1.9"), Greater);
        assert_eq!(vercmp("1.0", "1.0.1"), Less);
        assert_eq!(vercmp("1.0a", "1.0"), Greater);
        assert_eq!(vercmp("1.0~rc1", "1.0"), Less);
        assert_eq!(vercmp("1.0_rc1-r0", "1.0-r0"), Less);
        assert_eq!(vercmp("8.5.0-r1", "8.5.0-r0"), Greater);
        assert_eq!(vercmp("8.5.0-r0", "8.4.10-r3"), Greater);
        assert_eq!(vercmp("2.0", "2.0a"), Less);
        assert_eq!(
            vercmp("1.0.1", "1.0a"),
            Greater,
            "a number is newer than letters"
        );
        assert_eq!(vercmp("010", "10"), Equal);
        assert_eq!(vercmp("1.0-1.fc40", "1.0-1.fc39"), Greater);
    }
}
