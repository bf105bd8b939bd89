//! `git.checkout{repo, dest, version, force, timeout}`: a working tree of `repo` at
//! `dest`, with `version` (a branch, a tag or a commit; default the remote's HEAD)
//! checked out as a detached HEAD. Uses the `git` program.
//!
//! - A missing `dest` is cloned; an existing one must be a clone of `repo` (its
//!   `origin`), is fetched, and is moved to the revision when it is elsewhere.
//! - Local changes in the tree are an error, unless `force = true` throws them away.
//! - Check mode reads the remote with `git ls-remote` and changes nothing (no clone,
//!   no fetch).
//! - The result has `revision` (the full commit id) and, when it moved, `before`.

use std::path::Path;
use std::time::Duration;

use mlua::{Lua, Table, Value as LV};

use super::diff;
use super::fsutil::{kind_of, lstat, reason};
use super::outcome::tail;
use super::outcome::{args, resource_fn, Call, Outcome};
use crate::exec::{Finished, ProcOpts};

pub(crate) fn install(lua: &Lua, t: &Table) -> mlua::Result<()> {
    resource_fn(lua, t, "checkout", checkout)
}

/// A full commit id.
fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `version` names in `git ls-remote REPO` output (`SHA\tREF` lines):
/// a peeled tag (`refs/tags/V^{}`) over the tag object, then a branch, then any ref
/// ending in `/V`; `HEAD` for `HEAD`.
pub(crate) fn pick_remote_ref(ls_remote: &str, version: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(s, _)| s.to_string())
    };
    if version == "HEAD" {
        return find("HEAD");
    }
    find(&format!("refs/tags/{version}^{{}}"))
        .or_else(|| find(&format!("refs/heads/{version}")))
        .or_else(|| find(&format!("refs/tags/{version}")))
}

fn checkout(lua: &Lua, arg: LV) -> mlua::Result<Table> {
    const R: &str = "git.checkout";
    let mut o = args(lua, R, arg, "dest")?;
    let dest = o.required_path("dest")?;
    let call = Call::new(lua, R, dest.display().to_string(), &mut o)?;
    let repo = o.required_string("repo")?;
    let version = o.string("version")?.unwrap_or_else(|| "HEAD".into());
    let force = o.bool("force")?.unwrap_or(false);
    let timeout = o.duration("timeout")?.unwrap_or(Duration::from_secs(300));
    o.finish()?;
    if repo.starts_with('-') || version.starts_with('-') || version.is_empty() {
        return Err(call.fail("repo and version must not start with '-'"));
    }
    let g = Git {
        call: &call,
        timeout,
    };
    let dest_s = dest.display().to_string();
    let existing = lstat(&dest).map_err(|e| call.fail(reason(&e)))?;
    let outcome = match existing {
        None => {
            let want = g.remote_commit(&repo, &version)?;
            if call.check() {
                Outcome::changed(format!("would clone at {}", short(&want))).planning(&dest, true)
            } else {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| call.fail(reason(&e)))?;
                }
                g.run(
                    None,
                    &["clone", "--quiet", "--no-checkout", "--", &repo, &dest_s],
                )?;
                let sha = g.local_commit(&dest, &version)?;
                g.run(
                    Some(&dest),
                    &["checkout", "--quiet", "--force", "--detach", &sha],
                )?;
                Outcome::changed(format!("cloned at {}", short(&sha)))
                    .with("revision", LV::String(lua.create_string(&sha)?))
            }
            .with_diff(Some(diff::property(&dest_s, "revision", "(none)", &want)))
        }
        Some(m) if !m.is_dir() => {
            return Err(call.fail(format!("exists and is {}, not a git checkout", kind_of(&m))))
        }
        Some(_) => {
            if !dest.join(".git").exists() {
                return Err(call.fail("exists and is not a git checkout (no .git)"));
            }
            let origin = g.output(Some(&dest), &["config", "--get", "remote.origin.url"])?;
            if origin.trim() != repo {
                return Err(call.fail(format!("is a checkout of {}, not of {repo}", origin.trim())));
            }
            let head = g.output(Some(&dest), &["rev-parse", "--verify", "HEAD^{commit}"])?;
            let head = head.trim().to_string();
            let dirty = !g
                .output(
                    Some(&dest),
                    &["status", "--porcelain", "--untracked-files=no"],
                )?
                .trim()
                .is_empty();
            if dirty && !force {
                return Err(call.fail("has local changes (force = true discards them)".to_string()));
            }
            let want = if call.check() {
                g.remote_commit(&repo, &version)?
            } else {
                g.run(
                    Some(&dest),
                    &["fetch", "--quiet", "--tags", "--force", "origin"],
                )?;
                g.local_commit(&dest, &version)?
            };
            if want == head && !dirty {
                Outcome::ok("ok").with("revision", LV::String(lua.create_string(&head)?))
            } else {
                if !call.check() {
                    g.run(
                        Some(&dest),
                        &["checkout", "--quiet", "--force", "--detach", &want],
                    )?;
                }
                let action = match (want == head, dirty) {
                    (true, _) => "local changes discarded".to_string(),
                    (false, true) => format!(
                        "updated {} -> {}, local changes discarded",
                        short(&head),
                        short(&want)
                    ),
                    (false, false) => format!("updated {} -> {}", short(&head), short(&want)),
                };
                Outcome::changed(action)
                    .with("revision", LV::String(lua.create_string(&want)?))
                    .with("before", LV::String(lua.create_string(&head)?))
                    .with_diff(Some(diff::property(&dest_s, "revision", &head, &want)))
            }
        }
    };
    call.done(lua, outcome)
}

fn short(sha: &str) -> String {
    super::outcome::short(sha, 12)
}

struct Git<'a> {
    call: &'a Call,
    timeout: Duration,
}

impl Git<'_> {
    /// Run git (never prompting for credentials); its failure is the call's error.
    fn run(&self, dir: Option<&Path>, args: &[&str]) -> mlua::Result<Finished> {
        let mut argv: Vec<String> = vec!["git".into()];
        if let Some(d) = dir {
            argv.extend(["-C".into(), d.display().to_string()]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let opts = ProcOpts {
            timeout: Some(self.timeout),
            env: vec![
                ("GIT_TERMINAL_PROMPT".into(), Some("0".into())),
                // `git status` must not refresh the index (check mode changes nothing).
                ("GIT_OPTIONAL_LOCKS".into(), Some("0".into())),
                ("GIT_ASKPASS".into(), Some("/bin/false".into())),
                ("LC_ALL".into(), Some("C".into())),
            ],
            ..ProcOpts::default()
        };
        let f = self.call.run(&refs, &opts)?;
        if f.success() {
            return Ok(f);
        }
        Err(self.call.fail(format!(
            "git {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            f.status_text(),
            tail(&f.stderr, 3)
        )))
    }

    fn output(&self, dir: Option<&Path>, args: &[&str]) -> mlua::Result<String> {
        Ok(String::from_utf8_lossy(&self.run(dir, args)?.stdout).to_string())
    }

    /// The commit `version` names on the remote (a full id is taken as it is).
    fn remote_commit(&self, repo: &str, version: &str) -> mlua::Result<String> {
        if is_sha(version) {
            return Ok(version.to_lowercase());
        }
        let out = self.output(None, &["ls-remote", "--", repo])?;
        pick_remote_ref(&out, version).ok_or_else(|| {
            self.call.fail(format!(
                "the repository {repo} has no branch or tag '{version}' (an abbreviated \
                 commit id needs a full 40-character id)"
            ))
        })
    }

    /// The commit `version` names in the clone at `dir`, after a fetch: the remote
    /// branch, else a tag or commit.
    fn local_commit(&self, dir: &Path, version: &str) -> mlua::Result<String> {
        let candidates = if version == "HEAD" {
            vec!["refs/remotes/origin/HEAD^{commit}".to_string()]
        } else {
            vec![
                format!("refs/remotes/origin/{version}^{{commit}}"),
                format!("refs/tags/{version}^{{commit}}"),
                format!("{version}^{{commit}}"),
            ]
        };
        for c in &candidates {
            let argv = ["rev-parse", "--verify", "--quiet", c.as_str()];
            let mut full: Vec<String> = vec!["git".into(), "-C".into(), dir.display().to_string()];
            full.extend(argv.iter().map(|a| a.to_string()));
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let opts = ProcOpts {
                timeout: Some(self.timeout),
                ..ProcOpts::default()
            };
            let f = self.call.run(&refs, &opts)?;
            let sha = String::from_utf8_lossy(&f.stdout).trim().to_string();
            if f.success() && is_sha(&sha) {
                return Ok(sha);
            }
        }
        Err(self.call.fail(format!(
            "the repository has no branch, tag or commit '{version}'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LS: &str = "1111111111111111111111111111111111111111\tHEAD\n\
        1111111111111111111111111111111111111111\trefs/heads/main\n\
        2222222222222222222222222222222222222222\trefs/heads/dev\n\
        3333333333333333333333333333333333333333\trefs/tags/v1\n\
        4444444444444444444444444444444444444444\trefs/tags/v1^{}\n\
        5555555555555555555555555555555555555555\trefs/tags/light\n";

    #[test]
    fn remote_refs_resolve_to_commits() {
        assert_eq!(
            pick_remote_ref(LS, "HEAD").as_deref(),
            Some("1111111111111111111111111111111111111111")
        );
        assert_eq!(
            pick_remote_ref(LS, "dev").as_deref(),
            Some("2222222222222222222222222222222222222222")
        );
        // An annotated tag resolves to the commit it points at.
        assert_eq!(
            pick_remote_ref(LS, "v1").as_deref(),
            Some("4444444444444444444444444444444444444444")
        );
        assert_eq!(
            pick_remote_ref(LS, "light").as_deref(),
            Some("5555555555555555555555555555555555555555")
        );
        assert_eq!(pick_remote_ref(LS, "nope"), None);
        assert!(is_sha("4444444444444444444444444444444444444444"));
        assert!(!is_sha("4444"));
    }
}
