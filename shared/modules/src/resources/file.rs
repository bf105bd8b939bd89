//! `file`: files, directories and links on the host.
//!
//! - `file.content{path, content | template (+ vars) | artifact, mode, owner, group,
//!   parents}`: a file with exactly this content.
//! - `file.directory{path, mode, owner, group}` (parents created).
//! - `file.symlink{path, target, force}`.
//! - `file.absent{path}`: nothing at `path` (a directory goes with its content).
//! - `file.line{path, line, regex, state, create, mode, owner, group}`: one line.
//! - `file.block{path, block, marker, state, create, mode, owner, group}`: a block
//!   between two marker lines.
//!
//! Contents are written atomically ([`fsutil::write_atomic`]); a file that already
//! matches is not touched (its mtime stays). Writing through a symlink updates its
//! target.

use std::fs;
use std::path::{Path, PathBuf};

use mlua::{AnyUserData, Lua, Table, Value as LV};
use regex::bytes::Regex;
use sloth_lua::artifact::{self, hash_file};
use sloth_lua::shared_obj::SharedObj;

use super::diff;
use super::fsutil::{self, final_attrs, kind_of, reason, Attrs};
use super::outcome::{self, args, artifact_opt, resource_fn, short, Call, Outcome};
use crate::template;

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "content", content)?;
    resource_fn(lua, t, "directory", directory)?;
    resource_fn(lua, t, "symlink", symlink)?;
    resource_fn(lua, t, "absent", absent)?;
    resource_fn(lua, t, "line", line)?;
    resource_fn(lua, t, "block", block)
}

/// Where new content comes from.
pub(crate) enum Source {
    Bytes(Vec<u8>),
    Artifact(AnyUserData),
}

fn content(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.content";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    let text = o.bytes("content")?;
    let tpl = o.string("template")?;
    let vars = o.value("vars")?;
    let tpl_name = o.string("template_name")?;
    let art = artifact_opt(&mut o)?;
    let attrs = Attrs::read(lua, &mut o, &call.ctx)?;
    let parents = o.bool("parents")?.unwrap_or(false);
    let given = [text.is_some(), tpl.is_some(), art.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err(o.missing(
            &["content", "template", "artifact"],
            call.fail("give exactly one of content, template or artifact"),
        ));
    }
    if tpl.is_none() && !vars.is_nil() {
        return Err(o.error("vars", "is only for template"));
    }
    o.finish()?;
    let source = match (text, tpl, art) {
        (Some(b), _, _) => Source::Bytes(b),
        (_, Some(t), _) => {
            let vars =
                template::vars_json(lua, vars).map_err(|e| call.fail(format!("vars: {e}")))?;
            let name = tpl_name.unwrap_or_else(|| path.display().to_string());
            let rendered = template::render(&name, &t, &vars, &template::Syntax::default())
                .map_err(|e| call.fail(format!("template: {e}")))?;
            Source::Bytes(rendered.into_bytes())
        }
        (_, _, Some(a)) => Source::Artifact(a),
        _ => return Err(call.fail("give exactly one of content, template or artifact")),
    };
    let real = fsutil::follow(&path).map_err(|e| call.fail(reason(&e)))?;
    let outcome = put_content(lua, &call, &real, source, &attrs, parents)?;
    call.done(lua, outcome)
}

/// `action` (`updated`), and the attributes that change on the existing `meta` with
/// it: `updated, mode 0644 -> 0600`.
fn with_attributes(action: &str, meta: Option<&fs::Metadata>, attrs: &Attrs) -> String {
    let todo = meta.map(|m| attrs.differences(m)).unwrap_or_default();
    if todo.is_empty() {
        action.to_string()
    } else {
        format!("{action}, {}", todo.join(", "))
    }
}

/// Whether the directory a file goes in is there (or, in check mode, would be by
/// now): `Ok(true)` when it is missing and `parents` says to create it.
fn parent_ready(lua: &Lua, call: &Call, dir: &Path, parents: bool) -> mlua::Result<bool> {
    match outcome::lstat(lua, dir).map_err(|e| call.fail(reason(&e)))? {
        Some(m) if m.is_dir() => Ok(false),
        // A link to a directory (`/bin` on a merged /usr, a release's `current`).
        Some(m) if m.file_type().is_symlink() && fs::metadata(dir).is_ok_and(|t| t.is_dir()) => {
            Ok(false)
        }
        Some(m) => Err(call.fail(format!("{} is {}", dir.display(), kind_of(&m)))),
        None if parents => Ok(true),
        // Check mode: an earlier resource of this task would have made it.
        None if call.check() && outcome::exists(lua, dir) => Ok(false),
        None => Err(call.fail(format!(
            "the directory {} does not exist (parents = true creates it)",
            dir.display()
        ))),
    }
}

/// Make `path` hold `source` with `attrs` (what `file.content` does once its options
/// are read; `service.unit` writes unit files with it). Honours check mode and diffs.
pub(crate) fn put_content(
    lua: &Lua,
    call: &Call,
    path: &Path,
    source: Source,
    attrs: &Attrs,
    parents: bool,
) -> mlua::Result<Outcome> {
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let meta = outcome::lstat(lua, path).map_err(fail)?;
    if let Some(m) = &meta {
        if !m.is_file() {
            return Err(call.fail(format!("exists and is {}, not a file", kind_of(m))));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let make_parents = parent_ready(lua, call, dir, parents)?;
    // The new content, whether it matches what is there, and the old content when
    // it was read (for the diff).
    let (new_bytes, same, mut old): (Option<Vec<u8>>, bool, Option<Vec<u8>>) = match &source {
        Source::Bytes(b) => {
            let old = match (outcome::planned_content(lua, path), &meta) {
                (Some(planned), _) => Some(planned),
                (None, Some(_)) => fsutil::read_if_exists(path).map_err(fail)?,
                (None, None) => None,
            };
            let same = old.as_deref() == Some(b.as_slice());
            (Some(b.clone()), same, old)
        }
        Source::Artifact(u) => {
            let obj = u.borrow::<SharedObj>()?;
            let (sha, size) = artifact::describe(obj.backend(), obj.r)
                .map_err(|e| call.fail(format!("artifact: {e}")))?;
            let same = match (outcome::planned_content(lua, path), &meta) {
                // Check mode: what an earlier resource of this task would have written.
                (Some(planned), _) => artifact::hash_bytes(&planned) == sha,
                (None, Some(m)) if m.len() == size => {
                    hash_file(path).map(|(h, _)| h == sha).map_err(fail)?
                }
                _ => false,
            };
            (None, same, None)
        }
    };
    let (mode, uid, gid) = final_attrs(attrs, meta.as_ref());
    if same {
        let Some(m) = &meta else {
            return Ok(Outcome::ok("ok"));
        };
        let todo = attrs.changes(m);
        if todo.is_empty() {
            return Ok(Outcome::ok("ok"));
        }
        if !call.check() {
            attrs.apply(path, m).map_err(fail)?;
        }
        let d = diff::properties(&path.display().to_string(), &todo);
        return Ok(Outcome::changed(attrs.differences(m).join(", ")).with_diff(Some(d)));
    }
    // Attributes that change with the content are said too.
    let attr_changes = meta.as_ref().map(|m| attrs.changes(m)).unwrap_or_default();
    let action = with_attributes(
        if meta.is_some() { "updated" } else { "created" },
        meta.as_ref(),
        attrs,
    );
    let label = path.display().to_string();
    // An artifact's old content, for the diff: read when small enough to diff.
    let old_unread = match (&meta, &old, call.diffs()) {
        (Some(m), None, true) if m.len() <= diff::MAX_INPUT as u64 => {
            old = fsutil::read_if_exists(path).map_err(fail)?;
            None
        }
        (Some(m), None, true) => Some(m.len()),
        _ => None,
    };
    let d = match (&source, &new_bytes) {
        (_, Some(b)) if call.diffs() => diff::unified(&label, old.as_deref(), Some(b)),
        (Source::Artifact(u), _) if call.diffs() && call.check() => {
            let obj = u.borrow::<SharedObj>()?;
            let (sha, size) = artifact::describe(obj.backend(), obj.r)
                .map_err(|e| call.fail(format!("artifact: {e}")))?;
            Some(format!(
                "--- before: {label}\n+++ after: {label}\ncontent would become the artifact's: {size} bytes, sha256 {}\n",
                short(&sha, 16)
            ))
        }
        _ => None,
    };
    let d = diff::with_properties(d, &label, &attr_changes).filter(|_| call.diffs());
    if call.check() {
        match (&new_bytes, &source) {
            (Some(b), _) => outcome::plan_content(lua, path, b),
            // An artifact small enough is fetched (into the artifact cache only), so
            // that later resources of the task see the content it would write.
            (None, Source::Artifact(u)) => {
                let obj = u.borrow::<SharedObj>()?;
                let (_, size) = artifact::describe(obj.backend(), obj.r)
                    .map_err(|e| call.fail(format!("artifact: {e}")))?;
                let content = if size <= diff::MAX_INPUT as u64 {
                    artifact::fetch(lua, obj.r, obj.backend())?
                        .ok()
                        .and_then(|f| fs::read(&f.path).ok())
                } else {
                    None
                };
                match content {
                    Some(b) => outcome::plan_content(lua, path, &b),
                    None => outcome::plan(lua, path, true),
                }
            }
            (None, Source::Bytes(_)) => outcome::plan(lua, path, true),
        }
        return Ok(Outcome::changed(action).with_diff(d));
    }
    if make_parents {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    let d = match source {
        Source::Bytes(b) => {
            fsutil::write_atomic(path, &b, mode, uid, gid, Some(&call.ctx.cancel)).map_err(fail)?;
            d
        }
        Source::Artifact(u) => {
            let obj = u.borrow::<SharedObj>()?;
            let fetched = artifact::fetch(lua, obj.r, obj.backend())?
                .map_err(|e| call.fail(format!("artifact: {e}")))?;
            // Copied as a stream: an artifact may be far larger than memory.
            fsutil::write_atomic_with(path, mode, uid, gid, Some(&call.ctx.cancel), |f| {
                let mut from = fs::File::open(&fetched.path)?;
                std::io::copy(&mut from, f).map(|_| ())
            })
            .map_err(fail)?;
            let now = format!(
                "the artifact's {} bytes, sha256 {}",
                fetched.size,
                short(&fetched.sha256, 16)
            );
            match (
                call.diffs(),
                old_unread,
                fetched.size <= diff::MAX_INPUT as u64,
            ) {
                (false, _, _) => None,
                (true, Some(old_size), _) => Some(diff::unread_before(&label, old_size, &now)),
                (true, None, true) => {
                    let bytes = fs::read(path).map_err(fail)?;
                    diff::unified(&label, old.as_deref(), Some(&bytes))
                }
                (true, None, false) => Some(format!(
                    "--- before: {}\n+++ after: {label}\ncontent is now {now}\n",
                    if meta.is_some() {
                        label.as_str()
                    } else {
                        "/dev/null"
                    },
                )),
            }
            .map(|content| diff::with_properties(Some(content), &label, &attr_changes))
            .unwrap_or(None)
        }
    };
    Ok(Outcome::changed(action).with_diff(d))
}

fn directory(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.directory";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    let attrs = Attrs::read(lua, &mut o, &call.ctx)?;
    o.finish()?;
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let outcome = match outcome::lstat(lua, &path).map_err(fail)? {
        // Check mode: an earlier resource of this task would have made it.
        None if call.check() && outcome::exists(lua, &path) => Outcome::ok("ok"),
        Some(m) if m.is_dir() => {
            let todo = attrs.changes(&m);
            if todo.is_empty() {
                Outcome::ok("ok")
            } else {
                if !call.check() {
                    attrs.apply(&path, &m).map_err(fail)?;
                }
                let d = call
                    .diffs()
                    .then(|| diff::properties(&path.display().to_string(), &todo));
                Outcome::changed(attrs.differences(&m).join(", ")).with_diff(d)
            }
        }
        Some(m) => return Err(call.fail(format!("exists and is {}, not a directory", kind_of(&m)))),
        None => {
            if !call.check() {
                let mut b = fs::DirBuilder::new();
                b.recursive(true);
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o755);
                b.create(&path).map_err(fail)?;
                let m = fs::symlink_metadata(&path).map_err(fail)?;
                // The umask may have narrowed the mode asked for.
                let want = Attrs {
                    mode: Some(attrs.mode.unwrap_or(0o755)),
                    ..attrs.clone()
                };
                want.apply(&path, &m).map_err(fail)?;
            }
            let d = call.diffs().then(|| {
                format!(
                    "--- before: /dev/null\n+++ after: {}\n+directory, mode {}\n",
                    path.display(),
                    fsutil::fmt_mode(attrs.mode.unwrap_or(0o755))
                )
            });
            Outcome::changed("created")
                .with_diff(d)
                .planning(&path, true)
        }
    };
    call.done(lua, outcome)
}

fn symlink(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.symlink";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    let target = PathBuf::from(o.required_string("target")?);
    let force = o.bool("force")?.unwrap_or(false);
    let attrs = Attrs::read(lua, &mut o, &call.ctx)?;
    if attrs.mode.is_some() {
        return Err(o.error("mode", "does not apply to a symlink"));
    }
    o.finish()?;
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let label = path.display().to_string();
    let (action, before) = match outcome::lstat(lua, &path).map_err(fail)? {
        Some(m) if m.file_type().is_symlink() => {
            let old = fs::read_link(&path).map_err(fail)?;
            if old == target {
                let todo = attrs.differences(&m);
                if todo.is_empty() {
                    return call.done(lua, Outcome::ok("ok"));
                }
                if !call.check() {
                    attrs.apply(&path, &m).map_err(fail)?;
                }
                return call.done(lua, Outcome::changed(todo.join(", ")));
            }
            ("retargeted", old.display().to_string())
        }
        Some(m) if m.is_file() && force => ("replaced a file", "(a file)".to_string()),
        Some(m) => {
            return Err(call.fail(format!(
                "exists and is {}{}",
                kind_of(&m),
                if m.is_file() {
                    " (force = true replaces it)"
                } else {
                    ""
                }
            )))
        }
        None => ("created", "(none)".to_string()),
    };
    if !call.check() {
        crate::fs::replace_symlink(&target, &path).map_err(fail)?;
        if attrs.uid.is_some() || attrs.gid.is_some() {
            std::os::unix::fs::lchown(&path, attrs.uid, attrs.gid).map_err(fail)?;
        }
    }
    let d = diff::property(&label, "target", &before, &target.display().to_string());
    call.done(
        lua,
        Outcome::changed(action)
            .with_diff(Some(d))
            .planning(&path, true),
    )
}

fn absent(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.absent";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    o.finish()?;
    if path == Path::new("/") {
        return Err(call.fail("refusing to remove /"));
    }
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let label = path.display().to_string();
    let outcome = match outcome::lstat(lua, &path).map_err(fail)? {
        None => Outcome::ok("ok"),
        Some(m) if m.is_dir() => {
            let n = fs::read_dir(&path).map(|r| r.count()).unwrap_or(0);
            if !call.check() {
                fs::remove_dir_all(&path).map_err(fail)?;
            }
            let d =
                format!("--- before: {label}\n+++ after: /dev/null\n-directory ({n} entries)\n");
            Outcome::changed("removed a directory")
                .with_diff(Some(d))
                .planning(&path, false)
        }
        Some(m) => {
            let d = if m.is_file() && call.diffs() && m.len() <= 1 << 20 {
                let old = fsutil::read_if_exists(&path).map_err(fail)?;
                diff::unified(&label, old.as_deref(), None)
            } else {
                Some(format!(
                    "--- before: {label}\n+++ after: /dev/null\n-{}\n",
                    kind_of(&m)
                ))
            };
            if !call.check() {
                fs::remove_file(&path).map_err(fail)?;
            }
            Outcome::changed(format!("removed {}", kind_of(&m)))
                .with_diff(d)
                .planning(&path, false)
        }
    };
    call.done(lua, outcome)
}

/// Shared by `line` and `block`: edit an existing text file (or create it) with
/// `edit`, atomically, keeping its attributes unless asked otherwise.
fn edit_file(
    lua: &Lua,
    call: &Call,
    path: &Path,
    attrs: &Attrs,
    create: bool,
    edit: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> mlua::Result<Outcome> {
    let fail = |e: std::io::Error| call.fail(reason(&e));
    let real = fsutil::follow(path).map_err(fail)?;
    let meta = outcome::lstat(lua, &real).map_err(fail)?;
    if let Some(m) = &meta {
        if !m.is_file() {
            return Err(call.fail(format!("exists and is {}, not a file", kind_of(m))));
        }
    }
    // In check mode, what earlier resources of this task would have written.
    let old = match (outcome::planned_content(lua, &real), &meta) {
        (Some(planned), _) => Some(planned),
        (None, Some(_)) => fsutil::read_if_exists(&real).map_err(fail)?,
        (None, None) => None,
    };
    if old.is_none() && create {
        parent_ready(lua, call, real.parent().unwrap_or(Path::new("/")), false)?;
    }
    let new = match (&old, edit(old.as_deref().unwrap_or_default())) {
        (_, None) => None,
        // Check mode: an earlier resource of this task would have made it.
        (None, Some(_)) if !create && call.check() && outcome::exists(lua, &real) => {
            return Ok(Outcome::changed("updated"))
        }
        (None, Some(_)) if !create => {
            return Err(call.fail("does not exist (create = true creates it)"))
        }
        (_, Some(n)) => Some(n),
    };
    let label = real.display().to_string();
    match new {
        None => {
            // Content is right; attributes may not be.
            let Some(m) = &meta else {
                return Ok(Outcome::ok("ok"));
            };
            let todo = attrs.changes(m);
            if todo.is_empty() {
                return Ok(Outcome::ok("ok"));
            }
            if !call.check() {
                attrs.apply(&real, m).map_err(fail)?;
            }
            let d = call.diffs().then(|| diff::properties(&label, &todo));
            Ok(Outcome::changed(attrs.differences(m).join(", ")).with_diff(d))
        }
        Some(new) => {
            let d = if call.diffs() {
                let props = meta.as_ref().map(|m| attrs.changes(m)).unwrap_or_default();
                diff::with_properties(
                    diff::unified(&label, old.as_deref(), Some(&new)),
                    &label,
                    &props,
                )
            } else {
                None
            };
            if call.check() {
                outcome::plan_content(lua, &real, &new);
            } else {
                let (mode, uid, gid) = final_attrs(attrs, meta.as_ref());
                fsutil::write_atomic(&real, &new, mode, uid, gid, Some(&call.ctx.cancel))
                    .map_err(fail)?;
            }
            let action = if old.is_some() { "updated" } else { "created" };
            Ok(Outcome::changed(with_attributes(action, meta.as_ref(), attrs)).with_diff(d))
        }
    }
}

/// `state = "present"` (the default) or `"absent"`, for a line or a block.
fn wants_present(o: &mut sloth_lua::opts::Opts) -> mlua::Result<bool> {
    Ok(o.choice("state", &["present", "absent"])?
        .unwrap_or("present")
        == "present")
}

fn line(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.line";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    let present = wants_present(&mut o)?;
    let text = o.string("line")?;
    let pattern = match o.string("regex")? {
        Some(r) => Some(
            Regex::new(&r)
                .map_err(|e| o.error("regex", format!("is not a valid regular expression: {e}")))?,
        ),
        None => None,
    };
    let create = o.bool("create")?.unwrap_or(false);
    let attrs = Attrs::read(lua, &mut o, &call.ctx)?;
    o.finish()?;
    if let Some(t) = &text {
        if t.contains('\n') {
            return Err(call.fail("option 'line' must be one line (no newline)"));
        }
    }
    let spec = match (present, text, pattern) {
        (true, Some(line), regex) => LineEdit::Present { line, regex },
        (true, None, _) => {
            return Err(call.fail("option 'line' is required with state = \"present\""))
        }
        (false, line, regex) if line.is_some() || regex.is_some() => {
            LineEdit::Absent { line, regex }
        }
        (false, _, _) => return Err(call.fail("state = \"absent\" needs 'line' or 'regex'")),
    };
    let create = create && present;
    let outcome = edit_file(lua, &call, &path, &attrs, create, |old| {
        edit_line(old, &spec)
    })?;
    call.done(lua, outcome)
}

/// What `file.line` does to a file's lines.
pub(crate) enum LineEdit {
    /// The last line matching `regex` becomes `line`; with no match (or no regex),
    /// `line` is appended unless it is already there.
    Present { line: String, regex: Option<Regex> },
    /// Every line equal to `line` or matching `regex` goes.
    Absent {
        line: Option<String>,
        regex: Option<Regex>,
    },
}

/// The edited text, or `None` when it already satisfies `spec`.
pub(crate) fn edit_line(old: &[u8], spec: &LineEdit) -> Option<Vec<u8>> {
    let mut lines: Vec<&[u8]> = split_lines(old);
    // A file with CRLF line ends (edited on Windows): lines are compared without
    // their '\r', and a line written gets one too.
    let bare = |l: &[u8]| -> Vec<u8> { l.strip_suffix(b"\r").unwrap_or(l).to_vec() };
    let crlf = lines.first().is_some_and(|l| l.ends_with(b"\r"));
    match spec {
        LineEdit::Present { line, regex } => {
            let want = line.as_bytes();
            let mut written = want.to_vec();
            if crlf {
                written.push(b'\r');
            }
            let hit = regex
                .as_ref()
                .and_then(|r| lines.iter().rposition(|l| r.is_match(&bare(l))));
            match hit {
                Some(i) if bare(lines[i]) == want => None,
                Some(i) => {
                    lines[i] = &written;
                    Some(join_lines(&lines, old))
                }
                None if lines.iter().any(|l| bare(l) == want) => None,
                None => {
                    lines.push(&written);
                    Some(join_lines(&lines, b"\n"))
                }
            }
        }
        LineEdit::Absent { line, regex } => {
            let before = lines.len();
            lines.retain(|l| {
                let l = bare(l);
                !(line.as_ref().is_some_and(|t| t.as_bytes() == l.as_slice())
                    || regex.as_ref().is_some_and(|r| r.is_match(&l)))
            });
            (lines.len() != before).then(|| join_lines(&lines, old))
        }
    }
}

fn split_lines(b: &[u8]) -> Vec<&[u8]> {
    if b.is_empty() {
        return Vec::new();
    }
    let body = b.strip_suffix(b"\n").unwrap_or(b);
    body.split(|c| *c == b'\n').collect()
}

/// Lines joined with `\n`; a trailing newline when `model` had one (or was empty).
fn join_lines(lines: &[&[u8]], model: &[u8]) -> Vec<u8> {
    let mut out = lines.join(&b'\n');
    if !lines.is_empty() && (model.is_empty() || model.ends_with(b"\n")) {
        out.push(b'\n');
    }
    out
}

fn block(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "file.block";
    let mut o = args(lua, R, arg, "path")?;
    let path = o.required_path("path")?;
    let call = Call::new(lua, R, path.display().to_string(), &mut o)?;
    let present = wants_present(&mut o)?;
    let text = o.string("block")?;
    let marker = o
        .string("marker")?
        .unwrap_or_else(|| "# {mark} SLOTH MANAGED BLOCK".into());
    let create = o.bool("create")?.unwrap_or(false);
    let attrs = Attrs::read(lua, &mut o, &call.ctx)?;
    o.finish()?;
    if !marker.contains("{mark}") || marker.contains('\n') {
        return Err(call.fail("option 'marker' must be one line containing {mark}"));
    }
    let begin = marker.replace("{mark}", "BEGIN");
    let end = marker.replace("{mark}", "END");
    let body = match (present, text) {
        (true, Some(t)) => Some(t),
        (true, None) => {
            return Err(call.fail("option 'block' is required with state = \"present\""))
        }
        (false, _) => None,
    };
    let create = create && present;
    let outcome = edit_file(lua, &call, &path, &attrs, create, |old| {
        edit_block(old, &begin, &end, body.as_deref())
    })?;
    call.done(lua, outcome)
}

/// The text with the block between `begin` and `end` lines set to `body` (`None`:
/// the block and its markers removed), or `None` when nothing changes. A missing
/// block is appended at the end.
pub(crate) fn edit_block(
    old: &[u8],
    begin: &str,
    end: &str,
    body: Option<&str>,
) -> Option<Vec<u8>> {
    let lines = split_lines(old);
    let b = lines.iter().position(|l| *l == begin.as_bytes());
    let e = b.and_then(|b| {
        lines[b + 1..]
            .iter()
            .position(|l| *l == end.as_bytes())
            .map(|i| b + 1 + i)
    });
    let mut block: Vec<&[u8]> = Vec::new();
    if let Some(text) = body {
        block.push(begin.as_bytes());
        block.extend(split_lines(text.as_bytes()));
        block.push(end.as_bytes());
    }
    let out: Vec<&[u8]> = match (b, e) {
        (Some(b), Some(e)) => {
            if lines[b..=e] == block[..] {
                return None;
            }
            let mut v = lines[..b].to_vec();
            v.extend(block.iter().copied());
            v.extend(lines[e + 1..].iter().copied());
            v
        }
        _ if body.is_none() => return None,
        _ => {
            let mut v = lines.clone();
            v.extend(block.iter().copied());
            v
        }
    };
    let mut text = out.join(&b'\n');
    if !out.is_empty() {
        text.push(b'\n');
    }
    (text != old).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(line: &str, regex: Option<&str>) -> LineEdit {
        LineEdit::Present {
            line: line.into(),
            regex: regex.map(|r| Regex::new(r).unwrap()),
        }
    }

    fn s(b: Option<Vec<u8>>) -> Option<String> {
        b.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn crlf_files_keep_their_line_ends() {
        let old = b"k=1\r\nj=2\r\n";
        assert_eq!(s(edit_line(old, &present("j=2", None))), None);
        assert_eq!(
            s(edit_line(old, &present("k=5", Some("^k=")))),
            Some("k=5\r\nj=2\r\n".into())
        );
        assert_eq!(
            s(edit_line(old, &present("x=3", None))),
            Some("k=1\r\nj=2\r\nx=3\r\n".into())
        );
        let gone = edit_line(
            old,
            &LineEdit::Absent {
                line: Some("k=1".into()),
                regex: None,
            },
        );
        assert_eq!(s(gone), Some("j=2\r\n".into()));
    }

    #[test]
    fn a_line_is_appended_once() {
        let e = present("b=2", None);
        assert_eq!(s(edit_line(b"a=1\n", &e)).as_deref(), Some("a=1\nb=2\n"));
        assert_eq!(edit_line(b"a=1\nb=2\n", &e), None);
        // A file without a final newline gets one before the new line.
        assert_eq!(s(edit_line(b"a=1", &e)).as_deref(), Some("a=1\nb=2\n"));
        assert_eq!(s(edit_line(b"", &e)).as_deref(), Some("b=2\n"));
    }

    #[test]
    fn the_last_matching_line_is_replaced() {
        let e = present("port=8080", Some("^port="));
        assert_eq!(
            s(edit_line(b"port=1\nx\nport=2\n", &e)).as_deref(),
            Some("port=1\nx\nport=8080\n")
        );
        assert_eq!(edit_line(b"port=8080\n", &e), None);
        assert_eq!(
            s(edit_line(b"x\n", &e)).as_deref(),
            Some("x\nport=8080\n"),
            "no match: appended"
        );
    }

    #[test]
    fn absent_lines_go() {
        let e = LineEdit::Absent {
            line: None,
            regex: Some(Regex::new("^#").unwrap()),
        };
        assert_eq!(s(edit_line(b"#a\nb\n#c\n", &e)).as_deref(), Some("b\n"));
        assert_eq!(edit_line(b"b\n", &e), None);
        let e = LineEdit::Absent {
            line: Some("b".into()),
            regex: None,
        };
        assert_eq!(s(edit_line(b"a\nb\n", &e)).as_deref(), Some("a\n"));
    }

    #[test]
    fn blocks_are_added_replaced_and_removed() {
        let (b, e) = ("# BEGIN X", "# END X");
        let added = s(edit_block(b"a\n", b, e, Some("one\ntwo"))).unwrap();
        assert_eq!(added, "a\n# BEGIN X\none\ntwo\n# END X\n");
        assert_eq!(edit_block(added.as_bytes(), b, e, Some("one\ntwo")), None);
        assert_eq!(edit_block(added.as_bytes(), b, e, Some("one\ntwo\n")), None);
        let replaced = s(edit_block(
            b"a\n# BEGIN X\nold\n# END X\nz\n",
            b,
            e,
            Some("new"),
        ))
        .unwrap();
        assert_eq!(replaced, "a\n# BEGIN X\nnew\n# END X\nz\n");
        let removed = s(edit_block(replaced.as_bytes(), b, e, None)).unwrap();
        assert_eq!(removed, "a\nz\n");
        assert_eq!(edit_block(b"a\n", b, e, None), None);
    }
}
