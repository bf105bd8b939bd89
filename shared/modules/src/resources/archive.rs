//! `archive.unpacked{artifact, dest, strip, force}`: the content of a tar or tar.gz
//! artifact in the directory `dest`, which the resource owns (it replaces it whole; a
//! non-empty directory it did not unpack is replaced only with `force = true`).
//!
//! - A marker file `dest/.sloth-archive` records the artifact's sha256: when it
//!   matches, nothing is done (nothing is fetched either).
//! - Otherwise the artifact is fetched into the host's artifact cache, unpacked into
//!   a new directory next to `dest`, the marker written, and the new directory swapped
//!   in for the old one (one atomic exchange where the filesystem has it, else two
//!   renames), so `dest` is never half-unpacked.
//! - `strip = N` drops the first N components of each entry's path (a top directory).
//! - Entries that would land outside `dest` (absolute paths, `..`, through a symlink
//!   of the archive, hard links to anything but an earlier entry) are refused; owners are not restored (files belong to the
//!   agent's user), modes and mtimes are.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use mlua::{Lua, Table, Value as LV};
use sloth_lua::artifact;
use sloth_lua::shared_obj::SharedObj;

use super::diff;
use super::fsutil::{self, kind_of, lstat, reason};
use super::outcome::{args, artifact_opt, resource_fn, short, Call, Outcome};

/// The marker file in `dest` naming what was unpacked there.
pub(crate) const MARKER: &str = ".sloth-archive";

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "unpacked", unpacked)
}

fn unpacked(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "archive.unpacked";
    let mut o = args(lua, R, arg, "dest")?;
    let dest = o.required_path("dest")?;
    let call = Call::new(lua, R, dest.display().to_string(), &mut o)?;
    let art = artifact_opt(&mut o)?.ok_or_else(|| {
        o.missing(
            &["artifact"],
            o.error("artifact", "is required (artifact.file/bytes)"),
        )
    })?;
    let force = o.bool("force")?.unwrap_or(false);
    let strip = match o.int("strip")? {
        None => 0,
        Some(n) if (0..=64).contains(&n) => n as usize,
        Some(n) => return Err(o.error("strip", format!("must be between 0 and 64, got {n}"))),
    };
    o.finish()?;
    if dest == Path::new("/") {
        return Err(call.fail("refusing to replace /"));
    }
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let obj = art.borrow::<SharedObj>()?;
    let (sha, _size) = artifact::describe(obj.backend(), obj.r)
        .map_err(|e| call.fail(format!("artifact: {e}")))?;
    let label = dest.display().to_string();
    let before = match lstat(&dest).map_err(fail)? {
        None => None,
        Some(m) if m.is_dir() => Some(
            fsutil::read_if_exists(&dest.join(MARKER))
                .map_err(fail)?
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default(),
        ),
        Some(m) => return Err(call.fail(format!("exists and is {}, not a directory", kind_of(&m)))),
    };
    if before.as_deref() == Some(sha.as_str()) {
        return call.done(lua, Outcome::ok("ok"));
    }
    // A directory this resource did not make is not replaced by surprise.
    if before.as_deref() == Some("") && !force {
        let empty = fs::read_dir(&dest)
            .map(|mut d| d.next().is_none())
            .map_err(fail)?;
        if !empty {
            return Err(call.fail(format!(
                "exists, is not empty and holds no {MARKER}: it was not unpacked by \
                 archive.unpacked (force = true replaces it)"
            )));
        }
    }
    let was = match &before {
        None => "(none)".to_string(),
        Some(s) if s.is_empty() => "(a directory without a marker)".to_string(),
        Some(s) => format!("sha256 {}", short(s, 16)),
    };
    let d = diff::property(
        &label,
        "content",
        &was,
        &format!("sha256 {}", short(&sha, 16)),
    );
    if call.check() {
        return call.done(
            lua,
            Outcome::changed("would unpack")
                .with_diff(Some(d))
                .planning(&dest, true),
        );
    }
    let fetched = artifact::fetch(lua, obj.r, obj.backend())?
        .map_err(|e| call.fail(format!("artifact: {e}")))?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(fail)?;
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "dest".into());
    let fresh = tempfile::Builder::new()
        .prefix(&format!(".{base}.sloth-unpack-"))
        .tempdir_in(parent)
        .map_err(fail)?;
    let entries = unpack(&fetched.path, fresh.path(), strip).map_err(|e| call.fail(e))?;
    fs::write(fresh.path().join(MARKER), format!("{sha}\n")).map_err(fail)?;
    fs::set_permissions(
        fresh.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(fail)?;
    // Swap the trees in one step where the filesystem can (the old one lands at the
    // fresh path and goes); else the old tree moves aside, the new one into place.
    let fresh = fresh.keep();
    let swapped = before.is_some()
        && rustix::fs::renameat_with(
            rustix::fs::CWD,
            &fresh,
            rustix::fs::CWD,
            &dest,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_ok();
    let old = if swapped {
        Some(fresh.clone())
    } else {
        let old = match &before {
            Some(_) => {
                let aside = tempfile::Builder::new()
                    .prefix(&format!(".{base}.sloth-old-"))
                    .tempdir_in(parent)
                    .map_err(fail)?
                    .keep();
                fs::remove_dir(&aside).map_err(fail)?;
                fs::rename(&dest, &aside).map_err(fail)?;
                Some(aside)
            }
            None => None,
        };
        if let Err(e) = fs::rename(&fresh, &dest) {
            // Put the old tree back; the new one is thrown away.
            if let Some(a) = &old {
                let _ = fs::rename(a, &dest);
            }
            let _ = fs::remove_dir_all(&fresh);
            return Err(fail(e));
        }
        old
    };
    fsutil::sync_dir(parent);
    if let Some(a) = old {
        let _ = fs::remove_dir_all(a);
    }
    let noun = if entries == 1 { "entry" } else { "entries" };
    let outcome = Outcome::changed(format!("unpacked {entries} {noun}"))
        .with_diff(Some(d))
        .with("entries", LV::Integer(entries as i64))
        .with("artifact", LV::String(lua.create_string(fetched.how)?));
    call.done(lua, outcome)
}

/// The format of an archive, from its first bytes.
fn is_gzip(path: &Path) -> std::io::Result<bool> {
    let mut head = [0u8; 2];
    let mut f = fs::File::open(path)?;
    let n = f.read(&mut head)?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}

/// Unpack the tar (or tar.gz) at `archive` into the empty directory `into`; the
/// number of entries, or why not.
pub(crate) fn unpack(archive: &Path, into: &Path, strip: usize) -> Result<usize, String> {
    let file = fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let gz = is_gzip(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_ownerships(false);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let mut n = 0;
    let entries = ar
        .entries()
        .map_err(|e| format!("not a tar or tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("an entry has a bad path: {e}"))?
            .into_owned();
        let Some(rel) = relative(&raw, strip)? else {
            continue;
        };
        let target = into.join(&rel);
        // Every directory on the way must be a real directory we made: an entry must
        // not write through a symlink the archive planted.
        let mut at = into.to_path_buf();
        for c in rel.parent().map(|p| p.components()).into_iter().flatten() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "entry {} goes through a symlink of the archive",
                        raw.display()
                    ))
                }
                Ok(_) => {}
                Err(_) => fs::create_dir_all(&at).map_err(|e| format!("{}: {e}", at.display()))?,
            }
        }
        // Whatever an earlier entry left at this path goes first (never written
        // through: a symlink is replaced, not followed).
        if let Ok(m) = fs::symlink_metadata(&target) {
            if !m.is_dir() {
                fs::remove_file(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            }
        }
        if entry.header().entry_type() == tar::EntryType::Link {
            // A hard link names an earlier entry: inside the tree, made here.
            let to = entry
                .link_name()
                .map_err(|e| format!("entry {} has a bad link name: {e}", raw.display()))?
                .ok_or_else(|| format!("hard link {} names nothing", raw.display()))?;
            let to = relative(&to, strip)?
                .ok_or_else(|| format!("hard link {} names a stripped path", raw.display()))?;
            let source = inside(into, &to)
                .ok_or_else(|| format!("hard link {} goes through a symlink", raw.display()))?;
            fs::hard_link(&source, &target)
                .map_err(|e| format!("hard link {}: {e}", raw.display()))?;
        } else {
            entry
                .unpack(&target)
                .map_err(|e| format!("unpacking {}: {e}", raw.display()))?;
        }
        n += 1;
    }
    Ok(n)
}

/// `into/rel` when no directory on the way (nor `rel` itself) is a symlink.
fn inside(into: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = into.to_path_buf();
    for c in rel.components() {
        at.push(c);
        if fs::symlink_metadata(&at).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    Some(at)
}

/// An entry's path with `strip` leading components dropped, checked to stay inside
/// the destination; `None` for what stripping leaves empty.
fn relative(raw: &Path, strip: usize) -> Result<Option<PathBuf>, String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(format!(
                    "entry {} would land outside the destination",
                    raw.display()
                ))
            }
        }
    }
    if parts.len() <= strip {
        return Ok(None);
    }
    Ok(Some(parts[strip..].iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &[u8])], gz: bool) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            for (name, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.finish().unwrap();
        }
        let bytes = if gz {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&buf).unwrap();
            e.finish().unwrap()
        } else {
            buf
        };
        fs::write(f.path(), bytes).unwrap();
        f
    }

    #[test]
    fn tar_and_tar_gz_unpack_with_strip() {
        for gz in [false, true] {
            let t = tarball(&[("top/a.txt", b"a"), ("top/sub/b.txt", b"b")], gz);
            let d = tempfile::tempdir().unwrap();
            assert_eq!(unpack(t.path(), d.path(), 1).unwrap(), 2);
            assert_eq!(fs::read(d.path().join("a.txt")).unwrap(), b"a");
            assert_eq!(fs::read(d.path().join("sub/b.txt")).unwrap(), b"b");
        }
    }

    #[test]
    fn entries_outside_the_destination_are_refused() {
        assert!(relative(Path::new("../x"), 0).is_err());
        assert!(relative(Path::new("/etc/passwd"), 0).is_err());
        assert!(relative(Path::new("a/../../x"), 0).is_err());
        assert_eq!(
            relative(Path::new("./a/b"), 1).unwrap(),
            Some(PathBuf::from("b"))
        );
        assert_eq!(relative(Path::new("top"), 1).unwrap(), None);
    }

    /// A tar with a file, a hard link and a symlink (each `(name, kind, data or target)`).
    fn tar_with_links(entries: &[(&str, tar::EntryType, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            for (name, kind, what) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_mode(0o644);
                if *kind == tar::EntryType::Regular {
                    h.set_size(what.len() as u64);
                    h.set_cksum();
                    b.append_data(&mut h, name, what.as_bytes()).unwrap();
                } else {
                    h.set_size(0);
                    b.append_link(&mut h, name, what).unwrap();
                }
            }
            b.finish().unwrap();
        }
        fs::write(f.path(), buf).unwrap();
        f
    }

    #[test]
    fn hard_links_point_inside_the_tree() {
        use std::os::unix::fs::MetadataExt;
        let t = tar_with_links(&[
            ("top/a", tar::EntryType::Regular, "content"),
            ("top/b", tar::EntryType::Link, "top/a"),
        ]);
        let d = tempfile::tempdir().unwrap();
        assert_eq!(unpack(t.path(), d.path(), 1).unwrap(), 2);
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        assert_eq!(fs::read(&b).unwrap(), b"content");
        assert_eq!(
            fs::metadata(&a).unwrap().ino(),
            fs::metadata(&b).unwrap().ino()
        );

        // A hard link to anything outside is refused, stripped or not.
        let outside = tempfile::NamedTempFile::new().unwrap();
        let bad = tar_with_links(&[(
            "evil",
            tar::EntryType::Link,
            outside.path().to_str().unwrap(),
        )]);
        let d = tempfile::tempdir().unwrap();
        let e = unpack(bad.path(), d.path(), 0).unwrap_err();
        assert!(e.contains("outside the destination"), "{e}");
        let bad = tar_with_links(&[("evil", tar::EntryType::Link, "../../etc/passwd")]);
        assert!(unpack(bad.path(), d.path(), 0).is_err());
    }

    #[test]
    fn nothing_is_written_through_a_symlink_of_the_archive() {
        let outside = tempfile::tempdir().unwrap();
        let t = tar_with_links(&[
            (
                "s",
                tar::EntryType::Symlink,
                outside.path().to_str().unwrap(),
            ),
            ("s/x", tar::EntryType::Regular, "planted"),
        ]);
        let d = tempfile::tempdir().unwrap();
        let e = unpack(t.path(), d.path(), 0).unwrap_err();
        assert!(e.contains("goes through a symlink"), "{e}");
        assert!(!outside.path().join("x").exists());
        // A file entry over a symlink replaces the link, never writes through it.
        let target = outside.path().join("victim");
        fs::write(&target, "safe").unwrap();
        let t = tar_with_links(&[
            ("v", tar::EntryType::Symlink, target.to_str().unwrap()),
            ("v", tar::EntryType::Regular, "new"),
        ]);
        let d = tempfile::tempdir().unwrap();
        unpack(t.path(), d.path(), 0).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"safe");
        assert_eq!(fs::read(d.path().join("v")).unwrap(), b"new");
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(
            f.path(),
            b"this is not a tarball at all, just some text........",
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        assert!(unpack(f.path(), d.path(), 0).is_err());
    }
}
