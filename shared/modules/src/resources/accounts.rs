//! `user` and `group`: accounts, through the shadow utilities (`useradd`,
//! `usermod`, `userdel`, `groupadd`, `groupmod`, `groupdel`), read back through
//! the account database (`/etc/passwd` and `/etc/group`, then `getent` for NSS).
//!
//! - `user.present{name, uid, group, groups, append, shell, home, comment, system,
//!   create_home}`; `user.absent{name, remove_home}`.
//! - `group.present{name, gid, system}`; `group.absent{name}`.

use std::time::Duration;

use mlua::{Lua, Table, Value as LV};
use sloth_lua::context::TaskContext;

use super::outcome::{args, resource_fn, Call, Outcome};
use crate::exec::{run_argv, Finished, ProcOpts, RunFail};

pub(crate) fn install_user(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "present", user_present)?;
    resource_fn(lua, t, "absent", user_absent)
}

pub(crate) fn install_group(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "present", group_present)?;
    resource_fn(lua, t, "absent", group_absent)
}

/// One entry of the user database.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub comment: String,
    pub home: String,
    pub shell: String,
}

/// One entry of the group database.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

pub(crate) fn parse_passwd_line(line: &str) -> Option<Passwd> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(Passwd {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        comment: f[4].to_string(),
        home: f[5].to_string(),
        shell: f[6].to_string(),
    })
}

pub(crate) fn parse_group_line(line: &str) -> Option<Group> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 {
        return None;
    }
    Some(Group {
        name: f[0].to_string(),
        gid: f[2].parse().ok()?,
        members: f[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Look `key` up in a colon-separated database: the local file first, then
/// `getent DB KEY` (users and groups from LDAP and other NSS sources).
fn lookup(ctx: &TaskContext, db: &str, key: &str) -> Result<Option<String>, String> {
    let file = format!("/etc/{db}");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let by_id = key.parse::<u32>().is_ok();
        for line in text.lines() {
            let mut f = line.split(':');
            let name = f.next().unwrap_or_default();
            let id = f.nth(1).unwrap_or_default();
            if (!by_id && name == key) || (by_id && id == key) {
                return Ok(Some(line.to_string()));
            }
        }
    }
    let opts = ProcOpts {
        timeout: Some(Duration::from_secs(30)),
        ..ProcOpts::default()
    };
    match run_argv(ctx, &["getent", db, key], &opts) {
        Ok(f) if f.success() => Ok(String::from_utf8_lossy(&f.stdout)
            .lines()
            .next()
            .map(str::to_string)),
        // getent exits 2 for "no such entry".
        Ok(_) => Ok(None),
        Err(RunFail::Start(_)) => Ok(None),
        Err(RunFail::Stopped(r)) => Err(r.message().to_string()),
    }
}

pub(crate) fn user(ctx: &TaskContext, name: &str) -> Result<Option<Passwd>, String> {
    Ok(lookup(ctx, "passwd", name)?.and_then(|l| parse_passwd_line(&l)))
}

pub(crate) fn group(ctx: &TaskContext, name: &str) -> Result<Option<Group>, String> {
    Ok(lookup(ctx, "group", name)?.and_then(|l| parse_group_line(&l)))
}

/// The uid of user `name` on this host.
pub(crate) fn uid_of(ctx: &TaskContext, name: &str) -> Result<Option<u32>, String> {
    Ok(user(ctx, name)?.map(|p| p.uid))
}

/// The gid of group `name` on this host.
pub(crate) fn gid_of(ctx: &TaskContext, name: &str) -> Result<Option<u32>, String> {
    Ok(group(ctx, name)?.map(|g| g.gid))
}

/// The supplementary groups of `user` (those listing it as a member), sorted.
fn supplementary(user: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_group_line)
        .filter(|g| g.members.iter().any(|m| m == user))
        .map(|g| g.name)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Run an account tool; its failure is the call's error, with the tool's words.
fn tool(call: &Call, argv: &[&str]) -> mlua::Result<Finished> {
    let opts = ProcOpts {
        timeout: Some(Duration::from_secs(120)),
        ..ProcOpts::default()
    };
    call.run_ok(argv, &opts)
}

fn name_arg(o: &mut sloth_lua::opts::Opts, what: &str) -> mlua::Result<String> {
    let name = o.required_string("name")?;
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c))
        && !name.starts_with('-');
    if !valid {
        return Err(o.error("name", format!("is not a valid {what} name: '{name}'")));
    }
    Ok(name)
}

fn user_present(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "user.present";
    let mut o = args(lua, R, arg, "name")?;
    let name = name_arg(&mut o, "user")?;
    let call = Call::new(lua, R, name.clone(), &mut o)?;
    let uid = o.int("uid")?;
    let primary = o.string("group")?;
    let groups = o.strings("groups")?;
    let append = o.bool("append")?.unwrap_or(false);
    let shell = o.string("shell")?;
    let home = o.path("home")?;
    let comment = o.string("comment")?;
    let system = o.bool("system")?.unwrap_or(false);
    let create_home = o.bool("create_home")?.unwrap_or(true);
    o.finish()?;
    if let Some(u) = uid {
        if u32::try_from(u).is_err() {
            return Err(call.fail(format!("option 'uid' is not a valid id: {u}")));
        }
    }
    call.need_root()?;
    let ctx = call.ctx.clone();
    // Groups must exist before anything changes.
    let mut wanted_groups: Vec<String> = groups.clone().unwrap_or_default();
    wanted_groups.sort();
    wanted_groups.dedup();
    for g in primary.iter().chain(wanted_groups.iter()) {
        let planned =
            call.check() && super::outcome::exists(lua, &super::outcome::plan_key("group", g));
        if !planned && group(&ctx, g).map_err(|e| call.fail(e))?.is_none() {
            return Err(call.fail(format!("group '{g}' does not exist on this host")));
        }
    }
    let uid_s = uid.map(|u| u.to_string());
    let home_s = home.as_ref().map(|h| h.display().to_string());
    // Check mode: an earlier resource of this task would have created (or removed)
    // the user; its options then are what it would have.
    let key = super::outcome::plan_key("user", &name);
    let planned = call
        .check()
        .then(|| super::outcome::planned_state(lua, &key))
        .flatten();
    let asked = Planned::of(&[
        ("uid", uid_s.clone()),
        ("group", primary.clone()),
        ("groups", groups.as_ref().map(|_| wanted_groups.join(","))),
        ("shell", shell.clone()),
        ("home", home_s.clone()),
        ("comment", comment.clone()),
    ]);
    let existing = match planned {
        Some(false) => None,
        _ => user(&ctx, &name).map_err(|e| call.fail(e))?,
    };
    let outcome = match existing {
        None if planned == Some(true) => {
            let then = Planned::read(lua, &key);
            match asked.differences(&then) {
                d if d.is_empty() => Outcome::ok("ok"),
                d => Outcome::changed(d.join(", ")),
            }
        }
        None => {
            if call.check() {
                super::outcome::plan_content(lua, &key, &asked.0);
            }
            let mut argv: Vec<&str> = vec!["useradd"];
            if let Some(u) = &uid_s {
                argv.extend(["-u", u]);
            }
            if let Some(g) = &primary {
                argv.extend(["-g", g]);
            }
            let joined = wanted_groups.join(",");
            if !wanted_groups.is_empty() {
                argv.extend(["-G", &joined]);
            }
            if let Some(s) = &shell {
                argv.extend(["-s", s]);
            }
            if let Some(h) = &home_s {
                argv.extend(["-d", h]);
            }
            if let Some(c) = &comment {
                argv.extend(["-c", c]);
            }
            if system {
                argv.push("-r");
            }
            argv.push(if create_home { "-m" } else { "-M" });
            argv.extend(["--", &name]);
            if !call.check() {
                tool(&call, &argv)?;
            }
            Outcome::changed("created").planning(&super::outcome::plan_key("user", &name), true)
        }
        Some(p) => {
            let mut changes = Vec::new();
            let mut argv: Vec<String> = vec!["usermod".into()];
            if let Some(u) = uid {
                if i64::from(p.uid) != u {
                    changes.push(format!("uid {} -> {u}", p.uid));
                    argv.extend(["-u".into(), u.to_string()]);
                }
            }
            if let Some(g) = &primary {
                let gid = gid_of(&ctx, g).map_err(|e| call.fail(e))?;
                if gid != Some(p.gid) {
                    changes.push(format!("group {} -> {g}", p.gid));
                    argv.extend(["-g".into(), g.clone()]);
                }
            }
            if groups.is_some() {
                let have = supplementary(&name);
                let missing: Vec<&String> =
                    wanted_groups.iter().filter(|g| !have.contains(g)).collect();
                let extra: Vec<&String> =
                    have.iter().filter(|g| !wanted_groups.contains(g)).collect();
                if !missing.is_empty() || (!append && !extra.is_empty()) {
                    let mut words = Vec::new();
                    if !missing.is_empty() {
                        words.push(format!(
                            "+{}",
                            missing
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(",+")
                        ));
                    }
                    if !append && !extra.is_empty() {
                        words.push(format!(
                            "-{}",
                            extra
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(",-")
                        ));
                    }
                    changes.push(format!("groups {}", words.join(" ")));
                    argv.extend(["-G".into(), wanted_groups.join(",")]);
                    if append {
                        argv.push("-a".into());
                    }
                }
            }
            if let Some(s) = &shell {
                if &p.shell != s {
                    changes.push(format!("shell {} -> {s}", p.shell));
                    argv.extend(["-s".into(), s.clone()]);
                }
            }
            if let Some(h) = &home_s {
                if &p.home != h {
                    changes.push(format!("home {} -> {h}", p.home));
                    argv.extend(["-d".into(), h.clone()]);
                }
            }
            if let Some(c) = &comment {
                if &p.comment != c {
                    changes.push(format!("comment '{}' -> '{c}'", p.comment));
                    argv.extend(["-c".into(), c.clone()]);
                }
            }
            if changes.is_empty() {
                Outcome::ok("ok")
            } else {
                argv.extend(["--".into(), name.clone()]);
                if !call.check() {
                    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                    tool(&call, &refs)?;
                }
                Outcome::changed(changes.join(", "))
            }
        }
    };
    let after = if call.check() {
        None
    } else {
        user(&ctx, &name).map_err(|e| call.fail(e))?
    };
    let outcome = match after {
        Some(p) => outcome
            .with("uid", LV::Integer(p.uid.into()))
            .with("home", LV::String(lua.create_string(&p.home)?)),
        None => outcome,
    };
    call.done(lua, outcome)
}

/// Whether account `key` exists, or would by now in check mode.
fn account_exists(
    lua: &Lua,
    call: &Call,
    key: &std::path::Path,
    on_host: impl FnOnce() -> Result<bool, String>,
) -> mlua::Result<bool> {
    match call
        .check()
        .then(|| super::outcome::planned_state(lua, key))
        .flatten()
    {
        Some(b) => Ok(b),
        None => on_host().map_err(|e| call.fail(e)),
    }
}

/// The options an account was planned with in check mode (`uid=1001\nshell=/bin/sh`),
/// to tell a later call of the same task whether it would change anything.
struct Planned(Vec<u8>);

impl Planned {
    fn of(options: &[(&str, Option<String>)]) -> Planned {
        let mut s = String::new();
        for (k, v) in options {
            if let Some(v) = v {
                s.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
            }
        }
        Planned(s.into_bytes())
    }

    fn read(lua: &Lua, key: &std::path::Path) -> Planned {
        Planned(super::outcome::planned_content(lua, key).unwrap_or_default())
    }

    fn get(&self, key: &str) -> Option<String> {
        String::from_utf8_lossy(&self.0)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
    }

    /// What asking for `self` would change on an account planned with `then`: each
    /// option given that differs (one not given then has a value check mode cannot
    /// know, so it counts as a change).
    fn differences(&self, then: &Planned) -> Vec<String> {
        String::from_utf8_lossy(&self.0)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                match then.get(k) {
                    Some(old) if old == v => None,
                    Some(old) => Some(format!("{k} {old} -> {v}")),
                    None => Some(format!("{k} -> {v}")),
                }
            })
            .collect()
    }
}

fn user_absent(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "user.absent";
    let mut o = args(lua, R, arg, "name")?;
    let name = name_arg(&mut o, "user")?;
    let call = Call::new(lua, R, name.clone(), &mut o)?;
    let remove_home = o.bool("remove_home")?.unwrap_or(false);
    o.finish()?;
    call.need_root()?;
    let key = super::outcome::plan_key("user", &name);
    let exists = account_exists(lua, &call, &key, || {
        user(&call.ctx, &name).map(|u| u.is_some())
    })?;
    let outcome = match exists {
        false => Outcome::ok("ok"),
        true => {
            if !call.check() {
                let mut argv = vec!["userdel"];
                if remove_home {
                    argv.push("-r");
                }
                argv.extend(["--", &name]);
                tool(&call, &argv)?;
            }
            Outcome::changed("removed").planning(&super::outcome::plan_key("user", &name), false)
        }
    };
    call.done(lua, outcome)
}

fn group_present(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "group.present";
    let mut o = args(lua, R, arg, "name")?;
    let name = name_arg(&mut o, "group")?;
    let call = Call::new(lua, R, name.clone(), &mut o)?;
    let gid = o.int("gid")?;
    let system = o.bool("system")?.unwrap_or(false);
    o.finish()?;
    if let Some(g) = gid {
        if u32::try_from(g).is_err() {
            return Err(call.fail(format!("option 'gid' is not a valid id: {g}")));
        }
    }
    call.need_root()?;
    let gid_s = gid.map(|g| g.to_string());
    let key = super::outcome::plan_key("group", &name);
    let planned = call
        .check()
        .then(|| super::outcome::planned_state(lua, &key))
        .flatten();
    let asked = Planned::of(&[("gid", gid_s.clone())]);
    let existing = match planned {
        Some(false) => None,
        _ => group(&call.ctx, &name).map_err(|e| call.fail(e))?,
    };
    let outcome = match existing {
        None if planned == Some(true) => match asked.differences(&Planned::read(lua, &key)) {
            d if d.is_empty() => Outcome::ok("ok"),
            d => Outcome::changed(d.join(", ")),
        },
        None => {
            if call.check() {
                super::outcome::plan_content(lua, &key, &asked.0);
            }
            if !call.check() {
                let mut argv = vec!["groupadd"];
                if let Some(g) = &gid_s {
                    argv.extend(["-g", g]);
                }
                if system {
                    argv.push("-r");
                }
                argv.extend(["--", &name]);
                tool(&call, &argv)?;
            }
            Outcome::changed("created").planning(&super::outcome::plan_key("group", &name), true)
        }
        Some(g) => match (&gid_s, gid) {
            (Some(s), Some(want)) if i64::from(g.gid) != want => {
                if !call.check() {
                    tool(&call, &["groupmod", "-g", s, "--", &name])?;
                }
                Outcome::changed(format!("gid {} -> {want}", g.gid))
            }
            _ => Outcome::ok("ok"),
        },
    };
    let outcome = match (
        call.check(),
        group(&call.ctx, &name).map_err(|e| call.fail(e))?,
    ) {
        (false, Some(g)) => outcome.with("gid", LV::Integer(g.gid.into())),
        _ => outcome,
    };
    call.done(lua, outcome)
}

fn group_absent(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "group.absent";
    let mut o = args(lua, R, arg, "name")?;
    let name = name_arg(&mut o, "group")?;
    let call = Call::new(lua, R, name.clone(), &mut o)?;
    o.finish()?;
    call.need_root()?;
    let key = super::outcome::plan_key("group", &name);
    let exists = account_exists(lua, &call, &key, || {
        group(&call.ctx, &name).map(|g| g.is_some())
    })?;
    let outcome = match exists {
        false => Outcome::ok("ok"),
        true => {
            if !call.check() {
                tool(&call, &["groupdel", "--", &name])?;
            }
            Outcome::changed("removed").planning(&super::outcome::plan_key("group", &name), false)
        }
    };
    call.done(lua, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_lines_are_parsed() {
        let p = parse_passwd_line("bob:x:1001:1002:Bob B,,,:/home/bob:/bin/bash").unwrap();
        assert_eq!(
            (
                p.name.as_str(),
                p.uid,
                p.gid,
                p.home.as_str(),
                p.shell.as_str()
            ),
            ("bob", 1001, 1002, "/home/bob", "/bin/bash")
        );
        assert_eq!(parse_passwd_line("broken:x"), None);
        assert_eq!(parse_passwd_line("bad:x:notanumber:1:::"), None);
        let g = parse_group_line("docker:x:999:bob,alice").unwrap();
        assert_eq!((g.gid, g.members.len()), (999, 2));
        let g = parse_group_line("empty:x:5:").unwrap();
        assert!(g.members.is_empty());
    }
}
