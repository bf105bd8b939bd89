//! `fs`: files on the machine the task runs on. Paths and contents are binary-safe
//! Lua strings. Every operational failure returns `nil, "fs.<fn>: <path>: <reason>"`;
//! only arguments of the wrong type raise. In check mode the writers (`write`,
//! `append`, `mkdir`, `rm`, `copy`, `chmod`, `symlink`) change nothing and return
//! `true, "skipped in check mode"`.
//!
//! - `read(path)` → string
//! - `write(path, data [, mode])` → true (creates or truncates; `mode` like `420` or
//!   `"0644"` is applied to the file)
//! - `append(path, data)` → true
//! - `exists(path)` → boolean (follows symlinks, like `test -e`)
//! - `mkdir(path [, mode])` → true (with parents; an existing directory is fine)
//! - `rm(path [, {recursive = true, force = true}])` → true (`force`: a missing path
//!   is not an error; a symlink is removed, never followed)
//! - `ls(path)` → sorted array of entry names
//! - `stat(path)` → `{size, mode, is_dir, is_file, is_symlink, mtime}` (a symlink
//!   reports `is_symlink = true` and the rest from its target when it resolves)
//! - `copy(src, dst)` → true (into `dst/<name>` when `dst` is a directory)
//! - `chmod(path, mode)` → true
//! - `symlink(target, link [, {force = true}])` → true (`force` atomically replaces an
//!   existing link or file through a temporary link and a rename)
//! - `readlink(path)` → string

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use mlua::{Lua, LuaString, MultiValue, Table, Value as LV};

use sloth_lua::context::skip_in_check_mode;
use sloth_lua::opts::Opts;

use super::exec::os_reason;

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "read",
        lua.create_function(|lua, p: LuaString| {
            let path = path_of(&p);
            match read_within(&path, sloth_lua::context::memory_left(lua)) {
                Ok(data) => ok1(LV::String(lua.create_string(&data)?)),
                Err(e) => fail(lua, "read", &path, &e),
            }
        })?,
    )?;
    t.raw_set(
        "write",
        lua.create_function(|lua, (p, data, mode): (LuaString, LuaString, Option<LV>)| {
            let path = path_of(&p);
            let mode = mode.map(|m| parse_mode("fs.write", &m)).transpose()?;
            if let Some(done) = skip_in_check_mode(lua, &format!("fs.write {}", path.display()))? {
                return Ok(done);
            }
            let mut o = fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            if let Some(m) = mode {
                o.mode(m);
            }
            let res = o.open(&path).and_then(|mut f| {
                f.write_all(&data.as_bytes())?;
                if let Some(m) = mode {
                    f.set_permissions(fs::Permissions::from_mode(m))?;
                }
                Ok(())
            });
            done(lua, "write", &path, res)
        })?,
    )?;
    t.raw_set(
        "append",
        lua.create_function(|lua, (p, data): (LuaString, LuaString)| {
            let path = path_of(&p);
            if let Some(done) = skip_in_check_mode(lua, &format!("fs.append {}", path.display()))? {
                return Ok(done);
            }
            let res = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&data.as_bytes()));
            done(lua, "append", &path, res)
        })?,
    )?;
    t.raw_set(
        "exists",
        lua.create_function(|_, p: LuaString| Ok(fs::metadata(path_of(&p)).is_ok()))?,
    )?;
    t.raw_set(
        "mkdir",
        lua.create_function(|lua, (p, mode): (LuaString, Option<LV>)| {
            let path = path_of(&p);
            let mode = mode.map(|m| parse_mode("fs.mkdir", &m)).transpose()?;
            if let Some(done) = skip_in_check_mode(lua, &format!("fs.mkdir {}", path.display()))? {
                return Ok(done);
            }
            let mut b = fs::DirBuilder::new();
            b.recursive(true);
            if let Some(m) = mode {
                std::os::unix::fs::DirBuilderExt::mode(&mut b, m);
            }
            done(lua, "mkdir", &path, b.create(&path))
        })?,
    )?;
    t.raw_set(
        "rm",
        lua.create_function(|lua, (p, opts): (LuaString, Option<Table>)| {
            let path = path_of(&p);
            let (recursive, force) = flags(opts, "fs.rm", ["recursive", "force"])?.into();
            if let Some(done) = skip_in_check_mode(lua, &format!("fs.rm {}", path.display()))? {
                return Ok(done);
            }
            let res = match fs::symlink_metadata(&path) {
                Err(e) if force && e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
                Ok(m) if m.is_dir() && recursive => fs::remove_dir_all(&path),
                Ok(m) if m.is_dir() => fs::remove_dir(&path),
                Ok(_) => fs::remove_file(&path),
            };
            done(lua, "rm", &path, res)
        })?,
    )?;
    t.raw_set(
        "ls",
        lua.create_function(|lua, p: LuaString| {
            let path = path_of(&p);
            let names = fs::read_dir(&path).and_then(|rd| {
                let mut names = Vec::new();
                for entry in rd {
                    names.push(entry?.file_name());
                }
                Ok(names)
            });
            match names {
                Ok(mut names) => {
                    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                    let t = lua.create_table_with_capacity(names.len(), 0)?;
                    for (i, n) in names.iter().enumerate() {
                        t.raw_set(i + 1, lua.create_string(n.as_bytes())?)?;
                    }
                    ok1(LV::Table(t))
                }
                Err(e) => fail(lua, "ls", &path, &e),
            }
        })?,
    )?;
    t.raw_set(
        "stat",
        lua.create_function(|lua, p: LuaString| {
            let path = path_of(&p);
            let lm = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => return fail(lua, "stat", &path, &e),
            };
            let is_symlink = lm.file_type().is_symlink();
            let m = if is_symlink {
                fs::metadata(&path).unwrap_or(lm)
            } else {
                lm
            };
            let t = lua.create_table()?;
            t.raw_set("size", m.len())?;
            t.raw_set("mode", m.mode() & 0o7777)?;
            t.raw_set("is_dir", m.is_dir())?;
            t.raw_set("is_file", m.is_file())?;
            t.raw_set("is_symlink", is_symlink)?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or_else(|| m.mtime());
            t.raw_set("mtime", mtime)?;
            t.raw_set("uid", m.uid())?;
            t.raw_set("gid", m.gid())?;
            ok1(LV::Table(t))
        })?,
    )?;
    t.raw_set(
        "copy",
        lua.create_function(|lua, (src, dst): (LuaString, LuaString)| {
            let src = path_of(&src);
            let mut dst = path_of(&dst);
            let what = format!("fs.copy {} {}", src.display(), dst.display());
            if let Some(done) = skip_in_check_mode(lua, &what)? {
                return Ok(done);
            }
            if dst.is_dir() {
                if let Some(name) = src.file_name() {
                    dst.push(name);
                }
            }
            match fs::copy(&src, &dst) {
                Ok(_) => ok1(LV::Boolean(true)),
                Err(e) => {
                    // Name the side that failed.
                    let which = if fs::metadata(&src).is_err() {
                        &src
                    } else {
                        &dst
                    };
                    fail(lua, "copy", which, &e)
                }
            }
        })?,
    )?;
    t.raw_set(
        "chmod",
        lua.create_function(|lua, (p, mode): (LuaString, LV)| {
            let path = path_of(&p);
            let m = parse_mode("fs.chmod", &mode)?;
            if let Some(done) = skip_in_check_mode(lua, &format!("fs.chmod {}", path.display()))? {
                return Ok(done);
            }
            done(
                lua,
                "chmod",
                &path,
                fs::set_permissions(&path, fs::Permissions::from_mode(m)),
            )
        })?,
    )?;
    t.raw_set(
        "symlink",
        lua.create_function(
            |lua, (target, link, opts): (LuaString, LuaString, Option<Table>)| {
                let target = path_of(&target);
                let link = path_of(&link);
                let [force] = flags(opts, "fs.symlink", ["force"])?;
                let what = format!("fs.symlink {} {}", target.display(), link.display());
                if let Some(done) = skip_in_check_mode(lua, &what)? {
                    return Ok(done);
                }
                let res = if force {
                    replace_symlink(&target, &link)
                } else {
                    std::os::unix::fs::symlink(&target, &link)
                };
                done(lua, "symlink", &link, res)
            },
        )?,
    )?;
    t.raw_set(
        "readlink",
        lua.create_function(|lua, p: LuaString| {
            let path = path_of(&p);
            match fs::read_link(&path) {
                Ok(t) => ok1(LV::String(lua.create_string(t.as_os_str().as_bytes())?)),
                Err(e) => fail(lua, "readlink", &path, &e),
            }
        })?,
    )?;
    g.raw_set("fs", t)
}

/// Create `link -> target` next to `link` under a temporary name, then rename it over
/// `link`: readers see the old link or the new one, never no link.
pub(crate) fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let dir = match link.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = link
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "link".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{base}.sloth-tmp-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::os::unix::fs::symlink(target, &tmp) {
            Ok(()) => {
                return fs::rename(&tmp, link).inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick a temporary link name",
    ))
}

fn path_of(s: &LuaString) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&s.as_bytes()))
}

/// The whole file, unless it holds more than `limit` bytes (the task's memory left):
/// a file that grows, or never ends (`/dev/zero`), is not read past it.
fn read_within(path: &Path, limit: Option<usize>) -> io::Result<Vec<u8>> {
    let Some(limit) = limit else {
        return fs::read(path);
    };
    let mut data = Vec::new();
    fs::File::open(path)?
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() > limit {
        return Err(io::Error::other(format!(
            "more than the {} bytes the task's memory limit leaves",
            limit
        )));
    }
    Ok(data)
}

fn ok1(v: LV) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![v]))
}

fn fail(lua: &Lua, fname: &str, path: &Path, e: &io::Error) -> mlua::Result<MultiValue> {
    let msg = format!("fs.{fname}: {}: {}", path.display(), os_reason(e));
    Ok(MultiValue::from_vec(vec![
        LV::Nil,
        LV::String(lua.create_string(msg)?),
    ]))
}

fn done(lua: &Lua, fname: &str, path: &Path, res: io::Result<()>) -> mlua::Result<MultiValue> {
    match res {
        Ok(()) => ok1(LV::Boolean(true)),
        Err(e) => fail(lua, fname, path, &e),
    }
}

/// The boolean options `keys` of an options table (each `false` when absent); any
/// other key is refused.
fn flags<const N: usize>(
    opts: Option<Table>,
    fname: &'static str,
    keys: [&'static str; N],
) -> mlua::Result<[bool; N]> {
    let mut out = [false; N];
    let Some(t) = opts else { return Ok(out) };
    let mut o = Opts::new(fname, t);
    for (i, k) in keys.iter().enumerate() {
        out[i] = o.bool(k)?.unwrap_or(false);
    }
    o.finish()?;
    Ok(out)
}

/// A permission mode: an integer (`420`) or an octal string (`"0644"`, `"644"`,
/// `"0o644"`).
pub(crate) fn parse_mode(fname: &str, v: &LV) -> mlua::Result<u32> {
    let bad = |what: String| mlua::Error::runtime(format!("{fname}: bad mode {what}"));
    match v {
        LV::Integer(i) => u32::try_from(*i)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| bad(i.to_string())),
        LV::Number(n) if n.fract() == 0.0 && *n >= 0.0 && *n <= 4095.0 => Ok(*n as u32),
        LV::String(s) => {
            let text = s.to_string_lossy();
            let digits = text.trim();
            let digits = digits.strip_prefix("0o").unwrap_or(digits);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad(format!("'{text}' (use an octal string like \"0644\")")))
        }
        other => Err(bad(format!(
            "of type {} (use an integer or an octal string)",
            other.type_name()
        ))),
    }
}
