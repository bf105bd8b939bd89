//! Resources: declarative, idempotent operations on the host a task runs on. Each
//! one reads the host's state, works out whether anything must change, changes it
//! (or, in check mode, only says it would), and reports one [`Change`] with the
//! same shape for every resource: `changed`, what it did, and a diff where one
//! applies. Failures raise an error naming the resource, its target and the cause.
//!
//! - [`file`]: contents (string, template, artifact), directories, symlinks,
//!   absence, mode and owner, a line or a marked block in a file.
//! - [`pkg`]: packages through apt, dnf, apk or pacman.
//! - [`service`]: systemd units, or detached processes with a pid file where no
//!   init system runs.
//! - [`accounts`]: users and groups.
//! - [`cmd`]: guarded commands; [`git`]: checkouts; [`archive`]: unpacked artifacts.
//! - [`handlers`]: named functions resources notify, run once after the task body.
//!
//! [`Change`]: sloth_proto::change::Change

pub(crate) mod accounts;
pub(crate) mod archive;
pub(crate) mod cmd;
pub(crate) mod diff;
pub(crate) mod file;
pub(crate) mod fsutil;
pub(crate) mod git;
pub mod handlers;
pub(crate) mod outcome;
pub(crate) mod pkg;
pub(crate) mod service;

use mlua::{Lua, Table};

/// The resource module tables, built on first use like the other modules.
pub const MODULES: &[&str] = &[
    "file", "pkg", "service", "user", "group", "cmd", "git", "archive",
];

/// Build resource module `name` into `scratch` (one of [`MODULES`]); false for
/// another name.
pub(crate) fn build(lua: &Lua, name: &str, scratch: &Table) -> mlua::Result<bool> {
    let t = lua.create_table()?;
    match name {
        "file" => file::install(lua, &t)?,
        "pkg" => pkg::install(lua, &t)?,
        "service" => service::install(lua, &t)?,
        "user" => accounts::install_user(lua, &t)?,
        "group" => accounts::install_group(lua, &t)?,
        "cmd" => cmd::install(lua, &t)?,
        "git" => git::install(lua, &t)?,
        "archive" => archive::install(lua, &t)?,
        _ => return Ok(false),
    }
    scratch.raw_set(name, t)?;
    Ok(true)
}
