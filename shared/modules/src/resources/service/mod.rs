//! `service`: long-running services, through systemd where it runs and as detached
//! processes with a pid file where no init system does (containers, `--local-fleet`).
//!
//! - `service.running{name, enabled}`: started unless it runs (and, when `enabled`
//!   is given, enabled or disabled at boot).
//! - `service.stopped{name, enabled}`: stopped if it runs (`enabled` as above).
//! - `service.restarted{name}`: always restarted (started when it was not running);
//!   always "changed", like Ansible.
//! - `service.reloaded{name}`: always reloaded (started when it was not running);
//!   always "changed".
//! - `service.enabled{name}`, `service.disabled{name}`: started at boot, or not.
//! - `service.unit{name, content | template (+ vars), enabled}`: the unit file
//!   `/etc/systemd/system/NAME` (`.service` added when the name has no unit suffix),
//!   written atomically and only when it differs, then `systemctl daemon-reload` (only
//!   then: the action says `written, daemon-reload`). Restarting the service for a new
//!   unit is the job of a handler (`notify = "restart app"`).
//!
//! `name` is a unit name (letters, digits and `@ . _ : -`; not starting with `-` or
//! `.`); a string argument is the name (`service.running("nginx")`).
//!
//! `backend = "systemd" | "process"` chooses how; the default is systemd when it
//! runs (`/run/systemd/system` exists), else the process backend.
//!
//! **systemd**: state from `systemctl show NAME -p LoadState -p ActiveState -p
//! UnitFileState ...`; changes with `systemctl start|stop|restart|reload|enable|disable
//! NAME`, as root (a change by another user fails before anything is done: "needs
//! root"). A unit systemd does not know is an error ("no such unit"), except in check
//! mode, where an earlier resource may have been about to write it. A start that fails
//! (at once, or within [`SETTLE`] after systemctl returned) is an error carrying
//! systemctl's words and the last lines of the unit's journal.
//!
//! **process**: one detached process per pid file. Options: `command` (an array of
//! words, run directly: required to start), `pidfile` (default
//! `/run/sloth/services/NAME.pid` as root, else `$XDG_RUNTIME_DIR/sloth/services/` or
//! `/tmp/sloth-services-UID/`), `cwd`, `env` (variables added; `false` removes one),
//! `log` (stdout and stderr appended; default discarded), `stop_timeout` (default
//! `"10s"`: SIGTERM to the process group, then SIGKILL) and `reload_signal` (default
//! `"HUP"`, sent to the main process). The service runs in its own session, so it
//! outlives the task and the agent; it must stay in the foreground (a command that
//! exits within [`SETTLE`] is an error with its exit status and the end of its log).
//! It runs when the pid file names a live process whose command line is `command`
//! exactly. A live process this backend started for the same pid file (it leads its
//! own session and its environment holds `SLOTH_SERVICE_PIDFILE=PIDFILE`) with another
//! command line is restarted ("restarted: command changed"); any other pid is stale
//! (the process is left alone) and the service is started again. Calls for one pid
//! file take turns (`PIDFILE.lock`, also across agents on one machine). `enabled =
//! true` and `service.enabled` are errors here (nothing starts at boot without an
//! init system); `enabled = false` and `service.disabled` hold already.
//!
//! Check mode starts, stops, signals and writes nothing, and reports what the real
//! run would (`would start`, `would restart`, ...) with the same `changed`. Within a
//! task it remembers what earlier `service` calls would have done: a service that
//! would have been started is running for the calls after it.
//!
//! The result table has, besides the common fields, `active` (running afterwards),
//! `pid` (process backend, while it runs) and `enabled` (systemd: starts at boot;
//! `unit_file_state` is systemd's own word for it).

mod process;
mod systemd;

use std::collections::HashMap;
use std::time::Duration;

use mlua::{Lua, Table, Value as LV};
use parking_lot::Mutex;
use sloth_lua::opts::Opts;

use super::outcome::{args, resource_fn, Call};

/// How long a freshly started service is watched for an early exit.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

/// Where systemd runs, this directory exists (what `sd_booted()` checks).
const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// The unit types systemd knows: a name ending in `.TYPE` keeps its suffix.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "running", running)?;
    resource_fn(lua, t, "stopped", stopped)?;
    resource_fn(lua, t, "restarted", restarted)?;
    resource_fn(lua, t, "reloaded", reloaded)?;
    resource_fn(lua, t, "enabled", enabled)?;
    resource_fn(lua, t, "disabled", disabled)?;
    resource_fn(lua, t, "unit", systemd::unit)
}

/// What a call asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Running,
    Stopped,
    Restarted,
    Reloaded,
    Enabled,
    Disabled,
}

fn running(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.running", Want::Running)
}

fn stopped(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.stopped", Want::Stopped)
}

fn restarted(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.restarted", Want::Restarted)
}

fn reloaded(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.reloaded", Want::Reloaded)
}

fn enabled(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.enabled", Want::Enabled)
}

fn disabled(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    apply(lua, arg, "service.disabled", Want::Disabled)
}

/// Does systemd run this host?
pub(crate) fn systemd_booted() -> bool {
    std::fs::symlink_metadata(SYSTEMD_RUN_DIR).is_ok_and(|m| m.is_dir())
}

/// Every function but `unit`: options read, the backend chosen, the work done there.
fn apply(lua: &Lua, arg: LV, r: &'static str, want: Want) -> mlua::Result<Table> {
    let mut o = args(lua, r, arg, "name")?;
    let name = name_arg(&mut o)?;
    let call = Call::new(lua, r, name.clone(), &mut o)?;
    let backend = o.choice("backend", &["systemd", "process"])?;
    let enabled = match want {
        Want::Running | Want::Stopped => o.bool("enabled")?,
        Want::Enabled => Some(true),
        Want::Disabled => Some(false),
        Want::Restarted | Want::Reloaded => None,
    };
    // The process options are taken by every call that may start, stop or signal, so
    // one options table can serve them all.
    let popts = match want {
        Want::Enabled | Want::Disabled => process::Options::default(),
        _ => process::Options::read(&mut o)?,
    };
    let chosen = backend.is_some();
    let systemd = match backend {
        Some(b) => b == "systemd",
        None => systemd_booted(),
    };
    if systemd {
        if let Some(key) = popts.given() {
            return Err(o.error(key, "is for the process backend"));
        }
    }
    o.finish()?;
    let outcome = if systemd {
        systemd::apply(lua, &call, &name, want, enabled)?
    } else {
        process::apply(lua, &call, &name, want, enabled, popts, chosen)?
    };
    call.done(lua, outcome)
}

/// The `name` option, checked as a unit name.
fn name_arg(o: &mut Opts) -> mlua::Result<String> {
    let name = o.required_string("name")?;
    if let Err(why) = check_name(&name) {
        return Err(o.error(
            "name",
            format!("is not a valid unit name: '{name}' ({why})"),
        ));
    }
    Ok(name)
}

/// A name systemd accepts (and that is safe in a file name): letters, digits and
/// `@ . _ : -`, not starting with `-` (an option) or `.` (`..`, a hidden file).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 255 {
        return Err("longer than 255 bytes".into());
    }
    if name.starts_with('-') {
        return Err("it must not start with '-'".into());
    }
    if name.starts_with('.') {
        return Err("it must not start with '.'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "@._:-".contains(*c)))
    {
        return Err(format!(
            "only letters, digits and @ . _ : - are allowed, not {c:?}"
        ));
    }
    Ok(())
}

/// The unit file name of `name`: as it is when it ends in a unit type
/// (`app.socket`), else with `.service` added.
pub(crate) fn unit_file_name(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && UNIT_TYPES.contains(&ext) => name.to_string(),
        _ => format!("{name}.service"),
    }
}

/// Check mode: the state a service would be in after the earlier calls of this task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Would {
    pub active: Option<bool>,
    /// Process backend: the command it would run.
    pub command: Option<Vec<String>>,
    /// systemd: enabled at boot.
    pub enabled: Option<bool>,
}

/// What check mode has planned for services in this task, by backend and service
/// (`systemd:app.service`, `process:/run/sloth/services/app.pid`).
#[derive(Default)]
struct Planned(HashMap<String, Would>);

/// The state the earlier calls of this task would have left `key` in (check mode).
pub(crate) fn planned(lua: &Lua, key: &str) -> Option<Would> {
    lua.app_data_ref::<Mutex<Planned>>()
        .and_then(|p| p.lock().0.get(key).cloned())
}

/// In check mode, note the state this call would leave `key` in (what it does not
/// say stays as planned before).
pub(crate) fn plan(lua: &Lua, key: String, would: Would) {
    if lua.app_data_ref::<Mutex<Planned>>().is_none() {
        lua.set_app_data(Mutex::new(Planned::default()));
    }
    if let Some(p) = lua.app_data_ref::<Mutex<Planned>>() {
        let mut p = p.lock();
        let w = p.0.entry(key).or_default();
        if would.active.is_some() {
            w.active = would.active;
        }
        if would.command.is_some() {
            w.command = would.command;
        }
        if would.enabled.is_some() {
            w.enabled = would.enabled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_checked() {
        for ok in [
            "nginx",
            "nginx.service",
            "getty@tty1.service",
            "app_2:blue-green.timer",
            "a",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "..",
            "a/b",
            "../etc/passwd",
            "a b",
            "a\nb",
            "a$b",
            "nginx;reboot",
            "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name(&"x".repeat(255)).is_ok());
        let e = check_name("a/b").unwrap_err();
        assert!(e.contains("'/'"), "{e}");
    }

    #[test]
    fn the_unit_suffix_is_added_when_missing() {
        assert_eq!(unit_file_name("app"), "app.service");
        assert_eq!(unit_file_name("app.service"), "app.service");
        assert_eq!(unit_file_name("app.socket"), "app.socket");
        assert_eq!(unit_file_name("backup.timer"), "backup.timer");
        assert_eq!(unit_file_name("getty@.service"), "getty@.service");
        assert_eq!(unit_file_name("app.v2"), "app.v2.service");
        assert_eq!(unit_file_name("my.conf"), "my.conf.service");
    }
}
