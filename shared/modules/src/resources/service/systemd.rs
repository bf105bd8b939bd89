//! The systemd backend of `service`, and `service.unit`: `systemctl` and the unit
//! files of `/etc/systemd/system`.

use std::path::PathBuf;
use std::time::Duration;

use mlua::{Lua, Table, Value as LV};
use sloth_lua::context::stop_to_lua;

use super::super::file::{put_content, Source};
use super::super::fsutil::{self, reason, Attrs};
use super::super::outcome::tail;
use super::super::outcome::{self, args, Call, Outcome};
use super::{check_name, plan, planned, systemd_booted, unit_file_name, Want, Would, SETTLE};
use crate::exec::{run_argv, Finished, ProcOpts};
use crate::template;

/// Where `service.unit` writes.
const UNIT_DIR: &str = "/etc/systemd/system";
/// How long a query (`systemctl show`, `journalctl`) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What `systemctl show` says of a unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnitState {
    /// `loaded`, `not-found`, `masked`, `error`, `bad-setting`.
    pub load: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`, ...
    pub active: String,
    pub sub: String,
    /// `enabled`, `disabled`, `static`, `masked`, ... (empty for a unit with no file).
    pub file: String,
    /// How the last run ended: `success`, `exit-code`, `signal`, `timeout`, ...
    pub result: String,
}

impl UnitState {
    /// Running (or reloading): nothing to start.
    fn active(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading" | "refreshing")
    }

    /// Something to stop: not inactive, not failed.
    fn stoppable(&self) -> bool {
        !matches!(self.active.as_str(), "inactive" | "failed" | "")
    }

    /// Started at boot, or nothing `systemctl enable` could add (a static unit has
    /// no `[Install]` section; generated and transient ones no file of their own).
    fn enabled(&self) -> bool {
        matches!(
            self.file.as_str(),
            "enabled"
                | "enabled-runtime"
                | "static"
                | "indirect"
                | "generated"
                | "transient"
                | "alias"
        )
    }

    /// Something `systemctl disable` would remove.
    fn disableable(&self) -> bool {
        matches!(
            self.file.as_str(),
            "enabled" | "enabled-runtime" | "linked" | "linked-runtime"
        )
    }

    fn masked(&self) -> bool {
        self.load == "masked" || self.file.starts_with("masked")
    }
}

/// The `KEY=value` lines of `systemctl show`.
pub(crate) fn parse_show(text: &str) -> UnitState {
    let mut s = UnitState::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "LoadState" => s.load = v,
            "ActiveState" => s.active = v,
            "SubState" => s.sub = v,
            "UnitFileState" => s.file = v,
            "Result" => s.result = v,
            _ => {}
        }
    }
    s
}

/// Run `systemctl ARGS` (the task's stop kills it); `Err` only when it could not run.
fn systemctl(call: &Call, args: &[&str], timeout: Option<Duration>) -> mlua::Result<Finished> {
    let mut argv = vec!["systemctl"];
    argv.extend_from_slice(args);
    let opts = ProcOpts {
        timeout,
        ..ProcOpts::default()
    };
    call.run(&argv, &opts)
}

/// `systemctl show NAME`: the unit's state.
pub(crate) fn show(call: &Call, name: &str) -> mlua::Result<UnitState> {
    let f = systemctl(
        call,
        &[
            "show",
            name,
            "-p",
            "LoadState",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "-p",
            "UnitFileState",
            "-p",
            "Result",
        ],
        Some(QUERY_TIMEOUT),
    )?;
    if !f.success() {
        return Err(call.fail(failure(&format!("systemctl show {name}"), &f)));
    }
    let s = parse_show(&String::from_utf8_lossy(&f.stdout));
    if s.load.is_empty() {
        return Err(call.fail(format!(
            "systemctl show {name} gave no LoadState: {}",
            tail(&f.stdout, 3)
        )));
    }
    Ok(s)
}

/// `CMD failed (exit code N): its stderr`.
fn failure(what: &str, f: &Finished) -> String {
    let err = tail(&f.stderr, 4);
    format!(
        "{what} failed ({}){}",
        f.status_text(),
        if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        }
    )
}

/// The unit's last journal lines, ` | journal: ...`, or nothing.
fn journal(call: &Call, name: &str) -> String {
    let opts = ProcOpts {
        timeout: Some(QUERY_TIMEOUT),
        ..ProcOpts::default()
    };
    let argv = [
        "journalctl",
        "-u",
        name,
        "-n",
        "5",
        "--no-pager",
        "-q",
        "-o",
        "cat",
    ];
    match run_argv(&call.ctx, &argv, &opts) {
        Ok(f) if f.success() && !f.stdout.trim_ascii().is_empty() => {
            format!(" | journal: {}", tail(&f.stdout, 5))
        }
        _ => String::new(),
    }
}

/// `systemctl VERB NAME`, its failure an error (with the journal for a start).
fn act(call: &Call, verb: &str, name: &str) -> mlua::Result<()> {
    let f = systemctl(call, &["--no-ask-password", verb, name], None)?;
    if f.success() {
        return Ok(());
    }
    let mut msg = failure(&format!("systemctl {verb} {name}"), &f);
    if matches!(verb, "start" | "restart" | "reload") {
        msg += &journal(call, name);
    }
    Err(call.fail(msg))
}

/// A started unit that fails right away (a simple service whose program exits at
/// once) is only seen afterwards: look again once, after [`SETTLE`].
fn settled(call: &Call, name: &str) -> mlua::Result<UnitState> {
    let mut s = show(call, name)?;
    if matches!(s.active.as_str(), "active" | "activating") {
        call.ctx.cancel.sleep(SETTLE).map_err(stop_to_lua)?;
        s = show(call, name)?;
    }
    if s.active == "failed" {
        return Err(call.fail(format!(
            "failed right after it started (ActiveState=failed, Result={}){}",
            s.result,
            journal(call, name)
        )));
    }
    Ok(s)
}

/// One step of the work: `(did, would, systemctl verb)`.
type Step = (&'static str, &'static str, &'static str);

const START: Step = ("started", "start", "start");
const STOP: Step = ("stopped", "stop", "stop");
const RESTART: Step = ("restarted", "restart", "restart");
const RELOAD: Step = ("reloaded", "reload", "reload");
const ENABLE: Step = ("enabled", "enable", "enable");
const DISABLE: Step = ("disabled", "disable", "disable");
const START_INACTIVE: Step = (
    "started (it was not running)",
    "start (it is not running)",
    "start",
);

/// The action of `steps`: `started, enabled`, or `would start, enable`.
fn action(steps: &[Step], check: bool, note: &str) -> String {
    if check {
        let words: Vec<&str> = steps.iter().map(|s| s.1).collect();
        format!("would {}{note}", words.join(", "))
    } else {
        let words: Vec<&str> = steps.iter().map(|s| s.0).collect();
        format!("{}{note}", words.join(", "))
    }
}

/// The systemd side of every `service` function but `unit`.
pub(crate) fn apply(
    lua: &Lua,
    call: &Call,
    name: &str,
    want: Want,
    enabled: Option<bool>,
) -> mlua::Result<Outcome> {
    if !systemd_booted() {
        return Err(call.fail(
            "this host runs no systemd (no /run/systemd/system): use backend = \"process\"",
        ));
    }
    let mut s = show(call, name)?;
    let unknown = s.load == "not-found";
    // In check mode an unknown unit is taken as coming only when an earlier resource
    // of the task would bring it: its unit file, or a package.
    let may_come = call.check()
        && (outcome::exists(lua, &PathBuf::from(UNIT_DIR).join(unit_file_name(name)))
            || outcome::exists(lua, &outcome::plan_key("pkg", "installed")));
    if unknown && !may_come {
        return Err(call.fail(format!(
            "no such unit: systemd knows no {} (LoadState=not-found)",
            unit_file_name(name)
        )));
    }
    let key = format!("systemd:{}", unit_file_name(name));
    if call.check() {
        // An earlier resource of the run (`service.unit`, a package) may have been
        // about to install it: report what the real run would do with a fresh unit,
        // inactive and disabled.
        if unknown {
            s.active = "inactive".into();
            s.file = "disabled".into();
        }
        // What the earlier calls of the task would have done to it.
        if let Some(w) = planned(lua, &key) {
            if let Some(a) = w.active {
                s.active = if a { "active" } else { "inactive" }.into();
            }
            if let Some(e) = w.enabled {
                s.file = if e { "enabled" } else { "disabled" }.into();
            }
        }
    }
    let note = if unknown {
        " (the unit does not exist yet)"
    } else {
        ""
    };
    let mut steps: Vec<Step> = Vec::new();
    let not_running = if unknown { START } else { START_INACTIVE };
    match want {
        Want::Running if !s.active() => steps.push(START),
        Want::Stopped if s.stoppable() => steps.push(STOP),
        Want::Restarted => steps.push(if s.active() { RESTART } else { not_running }),
        Want::Reloaded => steps.push(if s.active() { RELOAD } else { not_running }),
        _ => {}
    }
    match enabled {
        Some(true) if !s.enabled() => {
            if s.masked() {
                return Err(call.fail(format!(
                    "is masked, so it cannot be enabled (systemctl unmask {name})"
                )));
            }
            steps.push(ENABLE);
        }
        Some(false) if s.disableable() => steps.push(DISABLE),
        _ => {}
    }
    if s.masked() && steps.iter().any(|st| st.2 != "stop" && st.2 != "disable") {
        return Err(call.fail(format!(
            "is masked, so it cannot be started (systemctl unmask {name})"
        )));
    }
    if steps.is_empty() {
        return extras(lua, Outcome::ok(format!("ok{note}")), &s);
    }
    let outcome = Outcome::changed(action(&steps, call.check(), note));
    if call.check() {
        let after = predicted(&s, &steps);
        let would = Would {
            active: Some(after.active()),
            command: None,
            enabled: Some(after.enabled()),
        };
        plan(lua, key, would);
        return extras(lua, outcome, &after);
    }
    call.need_root()?;
    let mut started = false;
    for st in &steps {
        act(call, st.2, name)?;
        started |= matches!(st.2, "start" | "restart");
    }
    let after = if started {
        settled(call, name)?
    } else {
        show(call, name)?
    };
    extras(lua, outcome, &after)
}

/// What the state would be after `steps` (check mode).
fn predicted(s: &UnitState, steps: &[Step]) -> UnitState {
    let mut after = s.clone();
    for st in steps {
        match st.2 {
            "start" | "restart" | "reload" => after.active = "active".into(),
            "stop" => after.active = "inactive".into(),
            "enable" => after.file = "enabled".into(),
            "disable" => after.file = "disabled".into(),
            _ => {}
        }
    }
    after
}

/// The result table's `active`, `enabled` and `unit_file_state`.
fn extras(lua: &Lua, outcome: Outcome, s: &UnitState) -> mlua::Result<Outcome> {
    Ok(outcome
        .with("active", LV::Boolean(s.active()))
        .with("enabled", LV::Boolean(s.enabled()))
        .with("unit_file_state", LV::String(lua.create_string(&s.file)?)))
}

/// `service.unit{name, content | template (+ vars), enabled}`.
pub(crate) fn unit(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "service.unit";
    let mut o = args(lua, R, arg, "name")?;
    let name = o.required_string("name")?;
    if let Err(why) = check_name(&name) {
        return Err(o.error(
            "name",
            format!("is not a valid unit name: '{name}' ({why})"),
        ));
    }
    let file_name = unit_file_name(&name);
    let call = Call::new(lua, R, file_name.clone(), &mut o)?;
    let text = o.bytes("content")?;
    let tpl = o.string("template")?;
    let vars = o.value("vars")?;
    let enabled = o.bool("enabled")?;
    if text.is_some() == tpl.is_some() {
        return Err(o.missing(
            &["content", "template"],
            call.fail("give exactly one of content or template"),
        ));
    }
    if tpl.is_none() && !vars.is_nil() {
        return Err(o.error("vars", "is only for template"));
    }
    o.finish()?;
    if !systemd_booted() {
        return Err(
            call.fail("unit files need systemd, and this host runs none (no /run/systemd/system)")
        );
    }
    let path = PathBuf::from(UNIT_DIR).join(&file_name);
    let bytes = match (text, tpl) {
        (Some(b), _) => b,
        (None, Some(t)) => {
            let vars =
                template::vars_json(lua, vars).map_err(|e| call.fail(format!("vars: {e}")))?;
            template::render(&file_name, &t, &vars, &template::Syntax::default())
                .map_err(|e| call.fail(format!("template: {e}")))?
                .into_bytes()
        }
        (None, None) => return Err(call.fail("give exactly one of content or template")),
    };
    let fail = |e: std::io::Error| call.fail(format!("{}: {}", path.display(), reason(&e)));
    // In check mode, an earlier `service.unit` of the task may have planned it.
    let old = match outcome::planned_content(lua, &path) {
        Some(planned) if call.check() => Some(planned),
        _ => fsutil::read_if_exists(&path).map_err(fail)?,
    };
    let rewrite = old.as_deref() != Some(bytes.as_slice());
    if rewrite && !call.check() {
        call.need_root()?;
    }
    let attrs = Attrs {
        mode: Some(0o644),
        ..Attrs::default()
    };
    let mut outcome = put_content(lua, &call, &path, Source::Bytes(bytes), &attrs, false)?;
    if rewrite {
        outcome.action = if call.check() {
            "would write, daemon-reload".into()
        } else {
            let f = systemctl(&call, &["--no-ask-password", "daemon-reload"], None)?;
            if !f.success() {
                return Err(call.fail(format!(
                    "{} written, but {}",
                    path.display(),
                    failure("systemctl daemon-reload", &f)
                )));
            }
            "written, daemon-reload".into()
        };
    }
    if let Some(want) = enabled {
        // A unit only about to be written (check mode) is not known to systemd yet.
        let state = Some(show(&call, &file_name)?).filter(|s| s.load != "not-found");
        let step = match &state {
            Some(s) if want && !s.enabled() => Some(ENABLE),
            Some(s) if !want && s.disableable() => Some(DISABLE),
            None if want => Some(ENABLE),
            _ => None,
        };
        if let Some(st) = step {
            if !call.check() {
                call.need_root()?;
                act(&call, st.2, &file_name)?;
            }
            let word = if call.check() {
                format!("would {}", st.1)
            } else {
                st.0.to_string()
            };
            outcome.action = if outcome.changed {
                format!("{}, {word}", outcome.action)
            } else {
                word
            };
            outcome.changed = true;
        }
        let now = match (call.check(), step) {
            (true, Some(st)) => st.2 == "enable",
            (true, None) => state.as_ref().is_some_and(|s| s.enabled()),
            (false, _) => show(&call, &file_name)?.enabled(),
        };
        if call.check() {
            let would = Would {
                active: None,
                command: None,
                enabled: Some(now),
            };
            plan(lua, format!("systemd:{file_name}"), would);
        }
        outcome = outcome.with("enabled", LV::Boolean(now));
    }
    let outcome = outcome.with(
        "path",
        LV::String(lua.create_string(path.display().to_string())?),
    );
    call.done(lua, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_is_parsed() {
        let s = parse_show(
            "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\
             Result=success\nUnrelated=x=y\n",
        );
        assert_eq!(
            s,
            UnitState {
                load: "loaded".into(),
                active: "active".into(),
                sub: "running".into(),
                file: "enabled".into(),
                result: "success".into(),
            }
        );
        assert!(s.active() && s.enabled() && s.stoppable() && s.disableable());

        // Any order; a unit systemd does not know has an empty UnitFileState.
        let s = parse_show("UnitFileState=\nActiveState=inactive\nLoadState=not-found\n");
        assert_eq!(
            (s.load.as_str(), s.active.as_str(), s.file.as_str()),
            ("not-found", "inactive", "")
        );
        assert!(!s.active() && !s.enabled() && !s.stoppable());

        let s = parse_show("LoadState=loaded\nActiveState=failed\nUnitFileState=disabled\n");
        assert!(!s.active() && !s.stoppable() && !s.enabled() && !s.disableable());

        let s = parse_show("LoadState=masked\nActiveState=inactive\nUnitFileState=masked\n");
        assert!(s.masked() && !s.enabled());

        let s = parse_show("LoadState=loaded\nActiveState=activating\nUnitFileState=static\n");
        assert!(!s.active() && s.stoppable() && s.enabled() && !s.disableable());

        // Noise is ignored, values are trimmed.
        let s = parse_show("garbage line\n\nActiveState= reloading \r\n");
        assert!(s.active());
        assert_eq!(s.load, "");
    }

    #[test]
    fn actions_name_every_step_and_check_mode_says_would() {
        assert_eq!(action(&[START, ENABLE], false, ""), "started, enabled");
        assert_eq!(action(&[START, ENABLE], true, ""), "would start, enable");
        assert_eq!(action(&[STOP], true, " (x)"), "would stop (x)");
        let after = predicted(
            &parse_show("LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n"),
            &[START, ENABLE],
        );
        assert!(after.active() && after.enabled());
    }
}
