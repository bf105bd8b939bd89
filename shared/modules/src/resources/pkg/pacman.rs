//! pacman: `pacman -Q` for what is installed, `pacman -Si` for the sync database's
//! version (the only one pacman installs: the candidate, and the only version a
//! `version` can ask for), `pacman -S --needed` / `-R` for changes. pacman does not
//! wait for its lock: `/var/lib/pacman/db.lck` is polled before each attempt, and an
//! attempt that still finds it locked is retried, until `lock_timeout` passes.
//! `refresh` is `pacman -Sy` (Arch supports no partial upgrades: prefer refreshing
//! together with a full upgrade).

use std::time::Duration;

use super::{argv, failed, Backend, Fail, Holder, Out, Pkg, Profile, Run, Want};

pub(crate) struct Pacman;

const ENV: &[(&str, &str)] = &[("LC_ALL", "C")];
const LOCK_FILE: &str = "/var/lib/pacman/db.lck";

fn not_found(out: &Out) -> bool {
    out.code == Some(1) && out.text().contains("was not found")
}

/// `pacman -Q NAME`: `NAME VERSION`, or exit 1 `error: package 'NAME' was not found`.
pub(crate) fn parse_q(argv: &[String], out: &Out) -> Result<Option<String>, String> {
    if !out.ok {
        return if not_found(out) {
            Ok(None)
        } else {
            Err(failed(argv, out))
        };
    }
    Ok(out
        .stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string))
}

/// `pacman -Si NAME`: the `Version` of the first block (the first repository that
/// has it, the one pacman installs from).
pub(crate) fn parse_si(argv: &[String], out: &Out) -> Result<Option<String>, String> {
    if !out.ok {
        return if not_found(out) {
            Ok(None)
        } else {
            Err(failed(argv, out))
        };
    }
    Ok(out.stdout.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "Version").then(|| v.trim().to_string())
    }))
}

pub(crate) fn install_argv(items: &[(String, Want)]) -> Vec<String> {
    let mut a = argv(&["pacman", "-S", "--noconfirm", "--needed"]);
    a.extend(items.iter().map(|(n, _)| n.clone()));
    a
}

pub(crate) fn remove_argv(names: &[String], purge: bool) -> Vec<String> {
    let mut a = argv(&["pacman", if purge { "-Rn" } else { "-R" }, "--noconfirm"]);
    a.extend(names.iter().cloned());
    a
}

/// `error: failed to init transaction (unable to lock database)` / `error: could not
/// lock database: File exists` (no holder named).
pub(crate) fn lock_holder(out: &Out) -> Option<Holder> {
    let text = out.text();
    (text.contains("unable to lock database") || text.contains("could not lock database"))
        .then(Holder::default)
}

pub(crate) const PROFILE: Profile = Profile {
    id: "pacman",
    programs: &["pacman"],
    env: ENV,
    cache_paths: &["/var/lib/pacman/sync"],
    no_candidate: "pacman -Si finds it in no sync database",
    lock_file: Some((
        LOCK_FILE,
        "if no package manager is running, the lock file /var/lib/pacman/db.lck is stale: remove it",
    )),
};

impl Backend for Pacman {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn query(
        &self,
        run: &mut Run,
        names: &[String],
        repos: bool,
        _check: bool,
    ) -> Result<Vec<Pkg>, Fail> {
        let mut pkgs = Vec::new();
        for n in names {
            let a = argv(&["pacman", "-Q", n]);
            let out = run(&a)?;
            let mut p = Pkg {
                installed: parse_q(&a, &out).map_err(Fail::Msg)?,
                ..Pkg::default()
            };
            if repos {
                let a = argv(&["pacman", "-Si", n]);
                let out = run(&a)?;
                p.candidate = parse_si(&a, &out).map_err(Fail::Msg)?;
                p.available = p.candidate.iter().cloned().collect();
            }
            pkgs.push(p);
        }
        Ok(pkgs)
    }

    fn install_argv(&self, items: &[(String, Want)], _lock: Duration) -> Vec<String> {
        install_argv(items)
    }

    fn remove_argv(&self, names: &[String], purge: bool, _lock: Duration) -> Vec<String> {
        remove_argv(names, purge)
    }

    fn refresh_argv(&self, _lock: Duration) -> Vec<String> {
        argv(&["pacman", "-Sy", "--noconfirm"])
    }

    fn locked(&self, out: &Out) -> Option<Holder> {
        lock_holder(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exit, ok, Canned};
    use super::*;

    const SI: &str = "\
Repository      : core
Name            : curl
Version         : 8.5.0-1
Description     : command line tool and library for transferring data with URLs
Architecture    : x86_64
Depends On      : ca-certificates  krb5  libidn2

Repository      : testing
Name            : curl
Version         : 8.6.0-1
";

    #[test]
    fn q_and_si_are_parsed() {
        let a = argv(&["pacman", "-Q", "curl"]);
        assert_eq!(
            parse_q(&a, &ok("curl 8.5.0-1\n")),
            Ok(Some("8.5.0-1".into()))
        );
        assert_eq!(
            parse_q(&a, &exit(1, "", "error: package 'curl' was not found\n")),
            Ok(None)
        );
        assert!(parse_q(&a, &exit(1, "", "error: could not open database\n")).is_err());
        let a = argv(&["pacman", "-Si", "curl"]);
        assert_eq!(parse_si(&a, &ok(SI)), Ok(Some("8.5.0-1".into())));
        assert_eq!(
            parse_si(&a, &exit(1, "", "error: package 'nope' was not found\n")),
            Ok(None)
        );
    }

    #[test]
    fn query_asks_q_and_si_per_name() {
        let c = Canned::new(vec![
            (
                "pacman -Q curl",
                exit(1, "", "error: package 'curl' was not found\n"),
            ),
            ("pacman -Si curl", ok(SI)),
        ]);
        let pkgs = c.query(&Pacman, &["curl"], true, false).unwrap();
        assert_eq!(pkgs[0].installed, None);
        assert_eq!(pkgs[0].candidate.as_deref(), Some("8.5.0-1"));
        assert_eq!(pkgs[0].available, vec!["8.5.0-1".to_string()]);
        let c = Canned::new(vec![("pacman -Q curl", ok("curl 8.5.0-1\n"))]);
        let pkgs = c.query(&Pacman, &["curl"], false, false).unwrap();
        assert_eq!(pkgs[0].installed.as_deref(), Some("8.5.0-1"));
    }

    #[test]
    fn commands_are_built() {
        let s = |v: Vec<String>| v.join(" ");
        let items = vec![
            ("curl".to_string(), Want::Latest("8.5.0-1".into())),
            ("jq".to_string(), Want::Any),
        ];
        assert_eq!(
            s(Pacman.install_argv(&items, Duration::ZERO)),
            "pacman -S --noconfirm --needed curl jq"
        );
        let n = vec!["jq".to_string()];
        assert_eq!(
            s(Pacman.remove_argv(&n, false, Duration::ZERO)),
            "pacman -R --noconfirm jq"
        );
        assert_eq!(
            s(Pacman.remove_argv(&n, true, Duration::ZERO)),
            "pacman -Rn --noconfirm jq"
        );
        assert_eq!(
            s(Pacman.refresh_argv(Duration::ZERO)),
            "pacman -Sy --noconfirm"
        );
        assert_eq!(
            PROFILE.lock_file.map(|(f, _)| f),
            Some("/var/lib/pacman/db.lck")
        );
    }

    #[test]
    fn lock_failures_are_recognised() {
        let out = exit(
            1,
            "",
            "error: failed to init transaction (unable to lock database)\nerror: could not lock \
             database: File exists\n  if you're sure a package manager is not already running, \
             you can remove /var/lib/pacman/db.lck\n",
        );
        assert_eq!(lock_holder(&out), Some(Holder::default()));
        assert_eq!(
            lock_holder(&exit(1, "", "error: target not found: nope\n")),
            None
        );
    }
}
