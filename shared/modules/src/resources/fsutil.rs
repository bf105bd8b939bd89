//! File helpers the resources share: reading a file that may be missing, writing one
//! atomically (a temporary file in the same directory, synced, then renamed over
//! the old one, so an interrupted write leaves the old file whole), and the
//! attributes a resource manages (mode, owner, group): reading them from options,
//! comparing them with what is on disk, and applying them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mlua::{Lua, Value as LV};
use sloth_lua::cancel::CancelToken;
use sloth_lua::context::TaskContext;
use sloth_lua::opts::Opts;

use super::accounts;

/// The content of `path`, or `None` when there is no such file.
pub(crate) fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `lstat`, or `None` when nothing is at `path`.
pub(crate) fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What is at a path, in a word, for messages.
pub(crate) fn kind_of(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

/// An `io::Error` in words, without std's "(os error N)"; a permission error says
/// whether root would help.
pub(crate) fn reason(e: &io::Error) -> String {
    let base = crate::exec::os_reason(e);
    if e.kind() == io::ErrorKind::PermissionDenied && !rustix::process::geteuid().is_root() {
        format!(
            "{base} (running as uid {}, not root)",
            rustix::process::geteuid().as_raw()
        )
    } else {
        base
    }
}

/// `0644`.
pub(crate) fn fmt_mode(m: u32) -> String {
    format!("{:04o}", m & 0o7777)
}

/// Mode, owner and group a resource asks for (`None`: leave as is, or the default
/// for something new).
#[derive(Default, Clone, Debug)]
pub(crate) struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// How the user wrote them, for messages.
    pub owner_name: Option<String>,
    pub group_name: Option<String>,
}

impl Attrs {
    /// `mode` (an octal string), `owner` and `group` (a name or a numeric id) of `o`;
    /// names are looked up on this host.
    pub fn read(lua: &Lua, o: &mut Opts, ctx: &TaskContext) -> mlua::Result<Attrs> {
        let mut a = Attrs::default();
        match o.value("mode")? {
            LV::Nil => {}
            LV::String(s) => {
                let text = s.to_string_lossy().to_string();
                a.mode = Some(parse_mode(&text).ok_or_else(|| {
                    o.error(
                        "mode",
                        format!("must be an octal string like \"0644\", got '{text}'"),
                    )
                })?);
            }
            LV::Integer(_) | LV::Number(_) => {
                return Err(o.error(
                    "mode",
                    "must be an octal string like \"0644\" (a Lua number such as 0644 is read \
                     as decimal 644)",
                ))
            }
            other => {
                return Err(o.error(
                    "mode",
                    format!(
                        "must be an octal string like \"0644\", got {}",
                        other.type_name()
                    ),
                ))
            }
        }
        if let Some((name, id)) = id_option(o, "owner")? {
            a.uid = Some(match id {
                Some(id) => id,
                None => match accounts::uid_of(ctx, &name).map_err(|e| o.invalid("owner", e))? {
                    Some(id) => id,
                    // Check mode: an earlier `user.present` of this task would make it.
                    None if ctx.mode.check && planned(lua, "user", &name) => PLANNED_ID,
                    None => {
                        return Err(
                            o.error("owner", format!("names no user of this host: '{name}'"))
                        )
                    }
                },
            });
            a.owner_name = Some(name);
        }
        if let Some((name, id)) = id_option(o, "group")? {
            a.gid = Some(match id {
                Some(id) => id,
                None => match accounts::gid_of(ctx, &name).map_err(|e| o.invalid("group", e))? {
                    Some(id) => id,
                    None if ctx.mode.check && planned(lua, "group", &name) => PLANNED_ID,
                    None => {
                        return Err(
                            o.error("group", format!("names no group of this host: '{name}'"))
                        )
                    }
                },
            });
            a.group_name = Some(name);
        }
        Ok(a)
    }

    /// What must change on an existing `m` to match: `("mode", "0644", "0600")`, ...
    pub fn changes(&self, m: &fs::Metadata) -> Vec<(&'static str, String, String)> {
        let mut d = Vec::new();
        if let Some(want) = self.mode {
            let have = m.mode() & 0o7777;
            if have != want {
                d.push(("mode", fmt_mode(have), fmt_mode(want)));
            }
        }
        if let Some(want) = self.uid {
            if m.uid() != want {
                let name = self.owner_name.clone().unwrap_or_else(|| want.to_string());
                d.push(("owner", m.uid().to_string(), name));
            }
        }
        if let Some(want) = self.gid {
            if m.gid() != want {
                let name = self.group_name.clone().unwrap_or_else(|| want.to_string());
                d.push(("group", m.gid().to_string(), name));
            }
        }
        d
    }

    /// [`Attrs::changes`] as words for an action: `mode 0644 -> 0600`, ...
    pub fn differences(&self, m: &fs::Metadata) -> Vec<String> {
        self.changes(m)
            .into_iter()
            .map(|(what, from, to)| format!("{what} {from} -> {to}"))
            .collect()
    }

    /// Set mode, owner and group on `path` where they differ from `m` (a symlink
    /// is never followed: its own owner changes).
    pub fn apply(&self, path: &Path, m: &fs::Metadata) -> io::Result<()> {
        let chowned =
            self.uid.is_some_and(|u| u != m.uid()) || self.gid.is_some_and(|g| g != m.gid());
        if chowned {
            std::os::unix::fs::lchown(path, self.uid, self.gid)?;
        }
        if m.file_type().is_symlink() {
            return Ok(());
        }
        // A chown clears the set-id bits: the mode is set again after one.
        let mode = match (self.mode, chowned) {
            (Some(want), _) if chowned || m.mode() & 0o7777 != want => Some(want),
            (None, true) if m.mode() & 0o6000 != 0 => Some(m.mode() & 0o7777),
            _ => None,
        };
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

/// The id check mode gives a user or group that an earlier resource of the task
/// would create: it matches no file, so the change is reported; it is never applied
/// (nothing is applied in check mode).
const PLANNED_ID: u32 = u32::MAX;

/// Whether check mode has planned `kind` (`user`, `group`) `name` in this task.
fn planned(lua: &Lua, kind: &str, name: &str) -> bool {
    super::outcome::exists(lua, &super::outcome::plan_key(kind, name))
}

/// An octal mode string (`0644`, `644`, `0o644`, `04755`).
fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    if t.is_empty() || t.len() > 5 {
        return None;
    }
    u32::from_str_radix(t, 8).ok().filter(|m| *m <= 0o7777)
}

/// A user or group option: its text, and the id when it is numeric.
fn id_option(o: &mut Opts, key: &'static str) -> mlua::Result<Option<(String, Option<u32>)>> {
    match o.value(key)? {
        LV::Nil => Ok(None),
        // 4294967295 is -1 to chown(2): "leave it as it is", never an id.
        LV::Integer(i) => match u32::try_from(i).ok().filter(|id| *id != u32::MAX) {
            Some(id) => Ok(Some((i.to_string(), Some(id)))),
            None => Err(o.error(key, format!("is not a valid id: {i}"))),
        },
        LV::String(s) => {
            let name = s.to_string_lossy().to_string();
            if name.is_empty() {
                return Err(o.error(key, "must not be empty"));
            }
            let id = name.parse::<u32>().ok();
            if id == Some(u32::MAX) {
                return Err(o.error(key, format!("is not a valid id: {name}")));
            }
            Ok(Some((name, id)))
        }
        other => Err(o.error(
            key,
            format!("must be a name or a numeric id, got {}", other.type_name()),
        )),
    }
}

/// The file a path names once symlinks are followed, for resources that manage
/// contents: writing through a link updates its target instead of replacing the
/// link with a file. `Err` for a link to nowhere.
pub(crate) fn follow(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(p) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let to = fs::read_link(path)?;
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("is a symlink to {}, which does not exist", to.display()),
                ))
            }
            Err(e) => Err(e),
        },
        _ => Ok(path.to_path_buf()),
    }
}

/// Write `data` to `path` atomically, with `mode`, and `uid`/`gid` when given: a
/// temporary file next to it is written, synced, given its attributes, renamed
/// over `path`, and the directory synced. Readers see the old file or the new one.
/// A task stopped meanwhile (`stop`) ends the write within one [`WRITE_CHUNK`] and
/// removes the temporary file; only a process killed in the middle leaves one
/// (`.NAME.sloth-*`).
pub(crate) fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    stop: Option<&CancelToken>,
) -> io::Result<()> {
    write_atomic_with(path, mode, uid, gid, stop, |f| f.write_all(data))
}

/// Most bytes written to a file between two looks at the task's stop.
pub(crate) const WRITE_CHUNK: usize = 4 << 20;

/// A file being filled for a task: each write is at most [`WRITE_CHUNK`] bytes and
/// fails once the task is stopped.
pub(crate) struct Stoppable<'a> {
    file: &'a mut fs::File,
    stop: Option<&'a CancelToken>,
}

impl Write for Stoppable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(r) = self.stop.and_then(CancelToken::stopped) {
            // Not `Interrupted`: `write_all` would retry it.
            return Err(io::Error::other(r.message()));
        }
        self.file.write(&buf[..buf.len().min(WRITE_CHUNK)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// [`write_atomic`] with the content written by `fill` (a copy from a file, as a
/// stream).
pub(crate) fn write_atomic_with(
    path: &Path,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    stop: Option<&CancelToken>,
    fill: impl FnOnce(&mut Stoppable<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("/"),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.sloth-", short_name(&base)))
        .tempfile_in(dir)?;
    // On any error from here on, `tmp` is removed as it drops.
    fill(&mut Stoppable {
        file: tmp.as_file_mut(),
        stop,
    })?;
    keep_xattrs(path, tmp.as_file());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(tmp.as_file(), uid, gid)?;
    }
    // After chown, which clears set-id bits.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Extended attributes a rewritten file keeps from the one it replaces: the user's
/// (`user.*`), its POSIX ACLs and its SELinux label. Never file capabilities
/// (`security.capability`): new content does not inherit the old one's privileges.
/// Best effort: a filesystem without them, or one that refuses, changes nothing.
fn keep_xattrs(old: &Path, new: &fs::File) {
    const KEEP: [&str; 4] = [
        "user.",
        "system.posix_acl_access",
        "system.posix_acl_default",
        "security.selinux",
    ];
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::listxattr(old, &mut names[..]) else {
        return;
    };
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(text) = std::str::from_utf8(name) else {
            continue;
        };
        if !KEEP.iter().any(|k| text.starts_with(k)) {
            continue;
        }
        if let Ok(len) = rustix::fs::getxattr(old, text, &mut value[..]) {
            let _ =
                rustix::fs::fsetxattr(new, text, &value[..len], rustix::fs::XattrFlags::empty());
        }
    }
}

/// A file name cut to leave room for the temporary file's prefix and suffix within
/// the 255 bytes a name may have (at a character boundary).
fn short_name(base: &str) -> &str {
    const KEEP: usize = 200;
    if base.len() <= KEEP {
        return base;
    }
    let mut end = KEEP;
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    &base[..end]
}

/// Make a rename in `dir` durable (best effort: some filesystems refuse).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The attributes a rewritten file keeps: what was asked for, else what the old
/// file had, else 0644 and this process's ids.
pub(crate) fn final_attrs(
    want: &Attrs,
    old: Option<&fs::Metadata>,
) -> (u32, Option<u32>, Option<u32>) {
    let mode = want
        .mode
        .or(old.map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let me = rustix::process::geteuid().as_raw();
    // Keep the old owner only where it differs from ours (chown needs root then).
    let uid = want.uid.or(old.map(|m| m.uid()).filter(|u| *u != me));
    let my_gid = rustix::process::getegid().as_raw();
    let gid = want.gid.or(old.map(|m| m.gid()).filter(|g| *g != my_gid));
    (mode, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0o755"), Some(0o755));
        assert_eq!(parse_mode("04755"), Some(0o4755));
        assert_eq!(parse_mode("rwx"), None);
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("77777"), None);
        assert_eq!(parse_mode(""), None);
        assert_eq!(fmt_mode(0o644), "0644");
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_keep_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("conf");
        write_atomic(&p, b"one\n", 0o600, None, None, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        write_atomic(&p, b"two\n", 0o640, None, None, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        // A user attribute survives the rewrite (where the filesystem has them).
        if rustix::fs::setxattr(&p, "user.tag", b"keep", rustix::fs::XattrFlags::empty()).is_ok() {
            write_atomic(&p, b"three\n", 0o640, None, None, None).unwrap();
            let mut v = [0u8; 16];
            let n = rustix::fs::getxattr(&p, "user.tag", &mut v[..]).unwrap();
            assert_eq!(&v[..n], b"keep");
        }
        // A name near the 255-byte limit: the temporary name is cut to fit.
        for name in ["n".repeat(255), "é".repeat(127)] {
            let long = d.path().join(&name);
            write_atomic(&long, b"x\n", 0o644, None, None, None).unwrap();
            assert_eq!(fs::read(&long).unwrap(), b"x\n");
        }
    }

    #[test]
    fn a_write_that_fails_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("conf");
        fs::write(&p, b"old\n").unwrap();
        // A target that cannot be replaced by a file: the rename fails.
        let sub = d.path().join("dir");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("x"), b"x").unwrap();
        assert!(write_atomic(&sub, b"new\n", 0o644, None, None, None).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old\n");
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains("sloth-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
