//! The one shape every resource call has: its arguments read strictly ([`args`]),
//! a [`Call`] that knows the resource, its target, the handlers it notifies and the
//! task's mode, and an [`Outcome`] that [`Call::done`] reports (a
//! [`Change`] to the master, handlers notified) and returns to Lua as
//! `{changed, action, diff, check, resource, target, ...}`.

use mlua::{Lua, Table, Value as LV};
use parking_lot::Mutex;
use sloth_lua::context::{stop_to_lua, task_ctx, TaskContext};
use sloth_lua::opts::{arg_error, type_of, Opts};
use sloth_proto::change::{Change, ChangeKind};

use super::handlers;
use crate::exec::{run_argv, Finished, ProcOpts, RunFail};

/// The options table of a resource call. A string argument is shorthand for
/// `{[primary] = string}` (`pkg.installed("curl")`), and so is a table's first
/// array item (`cmd.run{"make install", creates = ...}`).
pub(crate) fn args(lua: &Lua, resource: &str, arg: LV, primary: &str) -> mlua::Result<Opts> {
    match arg {
        LV::Table(t) => {
            let first: LV = t.raw_get(1)?;
            if first.is_nil() {
                return Ok(Opts::new(resource, t));
            }
            if !t.raw_get::<LV>(primary)?.is_nil() {
                return Err(arg_error(
                    resource,
                    format!("give '{primary}' once: as the first item or by name, not both"),
                ));
            }
            // A copy: the caller's table is left as it was.
            let copy = lua.create_table()?;
            for pair in t.pairs::<LV, LV>() {
                let (k, v) = pair?;
                if k == LV::Integer(1) {
                    copy.raw_set(primary, v)?;
                } else {
                    copy.raw_set(k, v)?;
                }
            }
            Ok(Opts::new(resource, copy))
        }
        LV::String(s) => {
            let t = lua.create_table()?;
            t.raw_set(primary, s)?;
            Ok(Opts::new(resource, t))
        }
        LV::Nil => Err(arg_error(
            resource,
            format!("expects a table of options (or a {primary} string)"),
        )),
        other => Err(arg_error(
            resource,
            format!(
                "expects a table of options (or a {primary} string), got {}",
                type_of(&other)
            ),
        )),
    }
}

/// One resource call in progress.
pub(crate) struct Call {
    pub ctx: TaskContext,
    pub resource: &'static str,
    pub target: String,
    notify: Vec<String>,
    show_diff: bool,
}

impl Call {
    /// Read the options every resource has (`notify`, `diff`) and name the target in
    /// `o`'s later errors. Call before [`Opts::finish`]. A notified handler must
    /// already be defined: that is checked here, before anything changes.
    pub fn new(
        lua: &Lua,
        resource: &'static str,
        target: impl Into<String>,
        o: &mut Opts,
    ) -> mlua::Result<Call> {
        // A loop of resource calls stops at the next one, whatever the instruction
        // hook saw in between (a call can take long in Rust: a big write, a command).
        let ctx = task_ctx(lua)?;
        if let Some(r) = ctx.cancel.stopped() {
            return Err(stop_to_lua(r));
        }
        let target = target.into();
        o.set_what(format!("{resource} {target}"));
        let notify = o.strings("notify")?.unwrap_or_default();
        for name in &notify {
            if !handlers::is_defined(lua, name)? {
                return Err(o.error(
                    "notify",
                    format!(
                        "names no handler of this task: '{name}' (define it first with \
                         handler(\"{name}\", function() ... end)){}",
                        handlers::suggestion(lua, name)?
                    ),
                ));
            }
        }
        let show_diff = o.bool("diff")?.unwrap_or(true);
        Ok(Call {
            ctx,
            resource,
            target,
            notify,
            show_diff,
        })
    }

    /// Check mode: work out what would change, change nothing.
    pub fn check(&self) -> bool {
        self.ctx.mode.check
    }

    /// Diffs were asked for (`--diff`) and this call did not turn them off
    /// (`diff = false`, for secrets).
    pub fn diffs(&self) -> bool {
        self.ctx.mode.diff && self.show_diff
    }

    /// Refuse a change when not root, before anything runs: tools would fail later
    /// with less clear words.
    pub fn need_root(&self) -> mlua::Result<()> {
        let uid = rustix::process::geteuid();
        if uid.is_root() {
            Ok(())
        } else {
            Err(self.fail(format!("needs root (running as uid {})", uid.as_raw())))
        }
    }

    /// Run a program for this call (the task's stop kills it): `Err` when it could not
    /// start (this call's error) or the task was stopped; its exit status is the
    /// caller's to judge.
    pub fn run(&self, argv: &[&str], opts: &ProcOpts) -> mlua::Result<Finished> {
        match run_argv(&self.ctx, argv, opts) {
            Ok(f) => Ok(f),
            Err(RunFail::Start(why)) => Err(self.fail(why)),
            Err(RunFail::Stopped(r)) => Err(stop_to_lua(r)),
        }
    }

    /// [`Call::run`], and a non-zero exit is this call's error too, with the program's
    /// own words: `useradd -u 0 -- x failed (exit code 4): useradd: UID 0 is not unique`.
    pub fn run_ok(&self, argv: &[&str], opts: &ProcOpts) -> mlua::Result<Finished> {
        let f = self.run(argv, opts)?;
        if f.success() {
            return Ok(f);
        }
        let err = tail(&f.stderr, 3);
        Err(self.fail(format!(
            "{} failed ({}){}",
            argv.join(" "),
            f.status_text(),
            if err.is_empty() {
                String::new()
            } else {
                format!(": {err}")
            }
        )))
    }

    /// The error this call raises: `resource target: cause`.
    pub fn fail(&self, cause: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("{} {}: {cause}", self.resource, self.target))
    }

    /// Report the outcome (a [`Change`] to the master, handlers notified when
    /// something changed) and return the result table.
    pub fn done(self, lua: &Lua, outcome: Outcome) -> mlua::Result<Table> {
        let check = self.check();
        if outcome.changed {
            handlers::notify(lua, &self.notify)?;
        }
        if let (true, true, Some((path, exists))) = (check, outcome.changed, &outcome.plans) {
            plan(lua, path, *exists);
        }
        let diff = if self.diffs() { outcome.diff } else { None };
        let t = lua.create_table()?;
        t.raw_set("changed", outcome.changed)?;
        t.raw_set("action", outcome.action.as_str())?;
        t.raw_set("check", check)?;
        t.raw_set("resource", self.resource)?;
        t.raw_set("target", self.target.as_str())?;
        if let Some(d) = &diff {
            t.raw_set("diff", d.as_str())?;
        }
        for (k, v) in outcome.extra {
            t.raw_set(k, v)?;
        }
        self.ctx.io.change(Change {
            kind: ChangeKind::Resource,
            resource: self.resource.to_string(),
            target: self.target,
            changed: outcome.changed,
            action: outcome.action,
            diff,
            check,
            error: None,
        });
        Ok(t)
    }
}

/// The end of a program's error output for a message: its last `n` non-blank lines,
/// joined with ` | `, after the first line that says `fatal:`, `error:` or `E:` when
/// that one is further up (git, apt and others say why there, then add advice).
pub(crate) fn tail(b: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(b);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let from = lines.len().saturating_sub(n);
    let cause = lines[..from].iter().find(|l| {
        let l = l.trim_start();
        l.starts_with("fatal:") || l.starts_with("error:") || l.starts_with("E:")
    });
    let mut out: Vec<&str> = cause.into_iter().copied().collect();
    out.extend(&lines[from..]);
    out.join(" | ")
}

/// What check mode has planned so far in this task: paths earlier resources would
/// have created or removed. Later resources consult it (a file in a directory that
/// would have been made; a command whose `creates` would have been made), so that
/// check mode reports what the real run would do instead of failing on a missing
/// prerequisite. Unused outside check mode.
#[derive(Default)]
struct Plan {
    created: std::collections::HashSet<std::path::PathBuf>,
    removed: std::collections::HashSet<std::path::PathBuf>,
    /// The content files would have by now.
    contents: std::collections::HashMap<std::path::PathBuf, Vec<u8>>,
}

/// In check mode, note the content `path` would have by now.
pub(crate) fn plan_content(lua: &Lua, path: &std::path::Path, content: &[u8]) {
    plan(lua, path, true);
    if let Some(p) = lua.app_data_ref::<Mutex<Plan>>() {
        p.lock()
            .contents
            .insert(path.to_path_buf(), content.to_vec());
    }
}

/// The content an earlier resource of this task would have given `path` (check
/// mode only).
pub(crate) fn planned_content(lua: &Lua, path: &std::path::Path) -> Option<Vec<u8>> {
    lua.app_data_ref::<Mutex<Plan>>()
        .and_then(|p| p.lock().contents.get(path).cloned())
}

/// In check mode, note that `path` would exist (`true`) or be gone (`false`).
pub(crate) fn plan(lua: &Lua, path: &std::path::Path, exists: bool) {
    if lua.app_data_ref::<Mutex<Plan>>().is_none() {
        lua.set_app_data(Mutex::new(Plan::default()));
    }
    if let Some(p) = lua.app_data_ref::<Mutex<Plan>>() {
        let mut p = p.lock();
        let path = path.to_path_buf();
        if exists {
            // A removal planned above stays: what was below it is still gone (a
            // directory made again is empty).
            p.created.insert(path);
        } else {
            p.created.retain(|c| !c.starts_with(&path));
            p.contents.retain(|c, _| !c.starts_with(&path));
            p.removed.insert(path);
        }
    }
}

/// Check mode's view of `path`: `Some(true)` when an earlier resource of this task
/// would have made it or something below it (parents come with their children),
/// `Some(false)` when one would have removed it or a directory above it (and nothing
/// was planned there since), `None` when the plan says nothing (the disk does).
pub(crate) fn planned_state(lua: &Lua, path: &std::path::Path) -> Option<bool> {
    let p = lua.app_data_ref::<Mutex<Plan>>()?;
    let p = p.lock();
    if p.created.iter().any(|c| c.starts_with(path)) {
        return Some(true);
    }
    if p.removed.iter().any(|r| path.starts_with(r)) {
        return Some(false);
    }
    None
}

/// Whether `path` exists, or would by now in check mode.
pub(crate) fn exists(lua: &Lua, path: &std::path::Path) -> bool {
    planned_state(lua, path).unwrap_or_else(|| std::fs::symlink_metadata(path).is_ok())
}

/// `lstat` as check mode sees it: nothing at a path an earlier resource of the task
/// would have removed.
pub(crate) fn lstat(
    lua: &Lua,
    path: &std::path::Path,
) -> std::io::Result<Option<std::fs::Metadata>> {
    if planned_state(lua, path) == Some(false) {
        return Ok(None);
    }
    super::fsutil::lstat(path)
}

/// The key check mode's plan notes something that is not a path under (an account,
/// a unit a package may bring): no file can have this name.
pub(crate) fn plan_key(kind: &str, name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("\0sloth-{kind}/{name}"))
}

/// `s` cut to at most `n` characters (a digest for messages; never panics on text
/// from a file).
pub(crate) fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// What a resource found and did.
pub(crate) struct Outcome {
    pub changed: bool,
    /// In check mode: the path this change would create (`Some(true)`) or remove
    /// (`Some(false)`), noted in the task's plan.
    pub plans: Option<(std::path::PathBuf, bool)>,
    pub action: String,
    pub diff: Option<String>,
    /// Resource-specific fields of the result table.
    pub extra: Vec<(&'static str, LV)>,
}

impl Outcome {
    /// Nothing to do: the host already matches.
    pub fn ok(action: impl Into<String>) -> Outcome {
        Outcome {
            changed: false,
            plans: None,
            action: action.into(),
            diff: None,
            extra: Vec::new(),
        }
    }

    /// Something changed (or would, in check mode).
    pub fn changed(action: impl Into<String>) -> Outcome {
        Outcome {
            changed: true,
            ..Outcome::ok(action)
        }
    }

    /// In check mode, this change would make `path` exist (or, `false`, remove it).
    pub fn planning(mut self, path: &std::path::Path, exists: bool) -> Outcome {
        self.plans = Some((path.to_path_buf(), exists));
        self
    }

    pub fn with_diff(mut self, diff: Option<String>) -> Outcome {
        self.diff = diff;
        self
    }

    pub fn with(mut self, key: &'static str, value: LV) -> Outcome {
        self.extra.push((key, value));
        self
    }
}

/// The `artifact` option: an artifact (`artifact.file`/`artifact.bytes`), or `None`
/// when absent.
pub(crate) fn artifact_opt(o: &mut Opts) -> mlua::Result<Option<mlua::AnyUserData>> {
    use sloth_lua::shared_obj::SharedObj;
    use sloth_proto::graph::SharedKind;
    match o.value("artifact")? {
        LV::Nil => Ok(None),
        LV::UserData(u)
            if u.borrow::<SharedObj>()
                .map(|x| x.r.kind == SharedKind::Artifact)
                .unwrap_or(false) =>
        {
            Ok(Some(u))
        }
        other => Err(o.error(
            "artifact",
            format!(
                "must be an artifact (artifact.file/bytes), got {}",
                type_of(&other)
            ),
        )),
    }
}

/// Install `f` as `t[name]`: a resource function taking one argument (a table, or
/// its primary string).
pub(crate) fn resource_fn(
    lua: &Lua,
    t: &Table,
    name: &'static str,
    f: fn(&Lua, LV) -> mlua::Result<Table>,
) -> mlua::Result<()> {
    t.raw_set(name, lua.create_function(move |lua, arg: LV| f(lua, arg))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_tails_keep_the_cause() {
        let git = b"fatal: '/nope' does not appear to be a git repository\n\
            fatal: Could not read from remote repository.\n\n\
            Please make sure you have the correct access rights\n\
            and the repository exists.\n\n";
        assert_eq!(
            tail(git, 2),
            "fatal: '/nope' does not appear to be a git repository | \
             Please make sure you have the correct access rights | and the repository exists."
        );
        assert_eq!(tail(b"a\n\nb\n", 3), "a | b");
        assert_eq!(tail(b"", 3), "");
        assert_eq!(short("\u{20ac}\u{20ac}\u{20ac}", 2), "\u{20ac}\u{20ac}");
    }
}
