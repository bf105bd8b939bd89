//! apk: `apk policy` for what is installed and on offer (the candidate is the newest
//! version from an untagged repository, or the installed one when newer), `apk add` /
//! `apk del` for changes, waiting for the database lock with `--wait`. A `version` is
//! added as the world constraint `name=version`, as `apk add name=version` does.

use std::collections::HashMap;
use std::time::Duration;

use super::{argv, must, secs_up, vercmp, Backend, Fail, Holder, Out, Pkg, Profile, Run, Want};

pub(crate) struct Apk;

const ENV: &[(&str, &str)] = &[("LC_ALL", "C")];

pub(crate) fn policy_argv(names: &[String]) -> Vec<String> {
    let mut a = argv(&["apk", "policy"]);
    a.extend(names.iter().cloned());
    a
}

/// `apk policy A B`: per name, its versions with their sources (`lib/apk/db/installed`
/// or `LAYER/installed` for the installed one, `@tag URL` for a tagged repository).
pub(crate) fn parse_policy(text: &str) -> HashMap<String, Vec<(String, Vec<String>)>> {
    let mut out: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent == 0 {
            cur = t.strip_suffix(" policy:").map(str::to_string);
            if let Some(n) = &cur {
                out.entry(n.clone()).or_default();
            }
            continue;
        }
        let Some(list) = cur.as_ref().and_then(|n| out.get_mut(n)) else {
            continue;
        };
        if indent <= 2 {
            if let Some(v) = t
                .strip_suffix(':')
                .and_then(|v| v.split_whitespace().next())
            {
                list.push((v.to_string(), Vec::new()));
            }
        } else if let Some(last) = list.last_mut() {
            last.1.push(t.to_string());
        }
    }
    out
}

fn is_installed_source(s: &str) -> bool {
    s == "lib/apk/db/installed" || s.ends_with("/installed")
}

/// The state of one package from its `apk policy` versions.
pub(crate) fn pkg_of(versions: &[(String, Vec<String>)]) -> Pkg {
    let installed = versions
        .iter()
        .find(|(_, src)| src.iter().any(|s| is_installed_source(s)))
        .map(|(v, _)| v.clone());
    let available: Vec<String> = versions
        .iter()
        .filter(|(_, src)| {
            src.iter()
                .any(|s| !is_installed_source(s) && !s.starts_with('@'))
        })
        .map(|(v, _)| v.clone())
        .collect();
    let candidate = available
        .iter()
        .chain(installed.iter())
        .max_by(|a, b| vercmp(a, b))
        .cloned();
    Pkg {
        installed,
        leftover: false,
        candidate,
        available,
    }
}

fn wait(lock: Duration) -> Vec<String> {
    vec!["--wait".into(), secs_up(lock).to_string()]
}

pub(crate) fn install_argv(items: &[(String, Want)], lock: Duration) -> Vec<String> {
    let mut a = argv(&["apk"]);
    a.extend(wait(lock));
    a.push("add".into());
    if items.iter().any(|(_, w)| matches!(w, Want::Latest(_))) {
        a.push("--upgrade".into());
    }
    for (name, want) in items {
        a.push(match want {
            Want::Any | Want::Latest(_) => name.clone(),
            Want::Exact(v) => format!("{name}={v}"),
        });
    }
    a
}

pub(crate) fn remove_argv(names: &[String], purge: bool, lock: Duration) -> Vec<String> {
    let mut a = argv(&["apk"]);
    a.extend(wait(lock));
    if purge {
        a.push("--purge".into());
    }
    a.push("del".into());
    a.extend(names.iter().cloned());
    a
}

pub(crate) fn refresh_argv(lock: Duration) -> Vec<String> {
    let mut a = argv(&["apk"]);
    a.extend(wait(lock));
    a.push("update".into());
    a
}

/// `ERROR: Unable to lock database: Resource temporarily unavailable` (apk names no
/// holder).
pub(crate) fn lock_holder(out: &Out) -> Option<Holder> {
    let text = out.text();
    let locked = text.contains("Unable to lock database")
        || (text.contains("Failed to open apk database") && text.contains("temporarily"));
    locked.then(Holder::default)
}

pub(crate) const PROFILE: Profile = Profile {
    id: "apk",
    programs: &["apk"],
    env: ENV,
    cache_paths: &["/var/cache/apk"],
    no_candidate: "apk policy shows no available version",
    lock_file: None,
};

impl Backend for Apk {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn query(
        &self,
        run: &mut Run,
        names: &[String],
        _repos: bool,
        _check: bool,
    ) -> Result<Vec<Pkg>, Fail> {
        let out = must(run, policy_argv(names))?;
        let mut policies = parse_policy(&out.stdout);
        Ok(names
            .iter()
            .map(|n| policies.remove(n).map(|v| pkg_of(&v)).unwrap_or_default())
            .collect())
    }

    fn install_argv(&self, items: &[(String, Want)], lock: Duration) -> Vec<String> {
        install_argv(items, lock)
    }

    fn remove_argv(&self, names: &[String], purge: bool, lock: Duration) -> Vec<String> {
        remove_argv(names, purge, lock)
    }

    fn refresh_argv(&self, lock: Duration) -> Vec<String> {
        refresh_argv(lock)
    }

    fn locked(&self, out: &Out) -> Option<Holder> {
        lock_holder(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exit, ok, Canned};
    use super::*;

    /// apk 2 style (`lib/apk/db/installed`), a tagged repository, and an apk 3 layer.
    const POLICY: &str = "\
curl policy:
  8.4.0-r0:
    lib/apk/db/installed
  8.5.0-r0:
    https://dl-cdn.alpinelinux.org/alpine/v3.19/main
  8.9.0-r0:
    @edge https://dl-cdn.alpinelinux.org/alpine/edge/main
busybox policy:
  1.36.1-r15:
    root/installed
    https://dl-cdn.alpinelinux.org/alpine/v3.19/main
";

    #[test]
    fn policy_gives_installed_candidate_and_versions() {
        let p = parse_policy(POLICY);
        let curl = pkg_of(&p["curl"]);
        assert_eq!(curl.installed.as_deref(), Some("8.4.0-r0"));
        assert_eq!(
            curl.candidate.as_deref(),
            Some("8.5.0-r0"),
            "tagged repositories do not count"
        );
        assert_eq!(curl.available, vec!["8.5.0-r0".to_string()]);
        let bb = pkg_of(&p["busybox"]);
        assert_eq!(bb.installed.as_deref(), Some("1.36.1-r15"));
        assert_eq!(bb.candidate, bb.installed);
        let local = pkg_of(&[("2.0-r0".into(), vec!["lib/apk/db/installed".into()])]);
        assert_eq!(local.candidate.as_deref(), Some("2.0-r0"));
        assert!(local.available.is_empty());
    }

    #[test]
    fn query_is_one_policy_call() {
        let c = Canned::new(vec![("apk policy curl nope", ok(POLICY))]);
        let pkgs = c.query(&Apk, &["curl", "nope"], true, true).unwrap();
        assert_eq!(pkgs[0].candidate.as_deref(), Some("8.5.0-r0"));
        assert_eq!(pkgs[1], Pkg::default());
        let c = Canned::new(vec![(
            "apk policy curl",
            exit(
                1,
                "",
                "ERROR: Unable to lock database: Resource temporarily unavailable\n",
            ),
        )]);
        assert!(c.query(&Apk, &["curl"], true, true).is_err());
    }

    #[test]
    fn commands_are_built() {
        let s = |v: Vec<String>| v.join(" ");
        let items = vec![("curl".to_string(), Want::Exact("8.4.0-r0".into()))];
        assert_eq!(
            s(install_argv(&items, Duration::from_secs(60))),
            "apk --wait 60 add curl=8.4.0-r0"
        );
        let items = vec![("curl".to_string(), Want::Latest("8.5.0-r0".into()))];
        assert_eq!(
            s(install_argv(&items, Duration::from_secs(2))),
            "apk --wait 2 add --upgrade curl"
        );
        let items = vec![("a".to_string(), Want::Any), ("b".to_string(), Want::Any)];
        assert_eq!(
            s(install_argv(&items, Duration::ZERO)),
            "apk --wait 0 add a b"
        );
        let n = vec!["curl".to_string()];
        assert_eq!(
            s(remove_argv(&n, false, Duration::from_secs(5))),
            "apk --wait 5 del curl"
        );
        assert_eq!(
            s(remove_argv(&n, true, Duration::from_secs(5))),
            "apk --wait 5 --purge del curl"
        );
        assert_eq!(
            s(refresh_argv(Duration::from_secs(60))),
            "apk --wait 60 update"
        );
    }

    #[test]
    fn lock_failures_are_recognised() {
        let out = exit(
            99,
            "",
            "ERROR: Unable to lock database: Resource temporarily unavailable\nERROR: Failed to open apk database: Resource temporarily unavailable\n",
        );
        assert_eq!(lock_holder(&out), Some(Holder::default()));
        assert_eq!(
            lock_holder(&exit(
                1,
                "",
                "ERROR: unable to select packages:\n  nope (no such package)\n"
            )),
            None
        );
    }
}
