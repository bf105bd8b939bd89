//! dnf: `rpm -q` for what is installed, `dnf repoquery --available` for the versions on
//! offer and the candidate (`--latest-limit 1`), `dnf` for changes. Versions are
//! `VERSION-RELEASE` (no epoch). dnf has no bounded lock wait of its own: it runs with
//! `exit_on_lock` and is retried until `lock_timeout` passes. In check mode the
//! queries use the cache only (`-C`): no metadata is downloaded.

use std::collections::HashMap;
use std::time::Duration;

use super::{argv, failed, must, Backend, Fail, Holder, Out, Pkg, Profile, Run, Want};

pub(crate) struct Dnf;

const ENV: &[(&str, &str)] = &[("LC_ALL", "C")];
const RPM_QF: &str = "%{VERSION}-%{RELEASE}\n";
const REPO_QF: &str = "%{name}\t%{version}-%{release}\n";
const EXIT_ON_LOCK: &str = "--setopt=exit_on_lock=True";

pub(crate) fn rpm_argv(name: &str) -> Vec<String> {
    argv(&["rpm", "-q", "--qf", RPM_QF, name])
}

/// The installed version from `rpm -q --qf '%{VERSION}-%{RELEASE}\n' NAME` (several
/// lines for an install-only package such as a kernel: the last one). rpm exits 1
/// with `package NAME is not installed`.
pub(crate) fn parse_rpm(argv: &[String], out: &Out) -> Result<Option<String>, String> {
    if !out.ok {
        return if out.code == Some(1) && out.stdout.contains("is not installed") {
            Ok(None)
        } else {
            Err(failed(argv, out))
        };
    }
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string))
}

pub(crate) fn repoquery_argv(names: &[String], latest: bool, check: bool) -> Vec<String> {
    let mut a = argv(&["dnf", "-q"]);
    if check {
        a.push("-C".into());
    }
    a.extend(argv(&["repoquery", "--available"]));
    if latest {
        a.extend(argv(&["--latest-limit", "1"]));
    }
    a.extend(argv(&["--qf", REPO_QF]));
    a.extend(names.iter().cloned());
    a
}

/// `name<TAB>version-release` lines (dnf 4 adds blank lines) → versions per name,
/// in the order listed.
pub(crate) fn parse_repoquery(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let Some((name, ver)) = line.trim().split_once('\t') else {
            continue;
        };
        let list = out.entry(name.to_string()).or_default();
        if !list.iter().any(|v| v == ver) {
            list.push(ver.to_string());
        }
    }
    out
}

pub(crate) fn install_argv(items: &[(String, Want)]) -> Vec<String> {
    let mut a = argv(&["dnf", "-y", EXIT_ON_LOCK, "install"]);
    for (name, want) in items {
        a.push(match want {
            Want::Any => name.clone(),
            Want::Exact(v) | Want::Latest(v) => format!("{name}-{v}"),
        });
    }
    a
}

pub(crate) fn remove_argv(names: &[String]) -> Vec<String> {
    let mut a = argv(&["dnf", "-y", EXIT_ON_LOCK, "remove"]);
    a.extend(names.iter().cloned());
    a
}

pub(crate) fn refresh_argv() -> Vec<String> {
    argv(&["dnf", "-y", EXIT_ON_LOCK, "makecache", "--refresh"])
}

/// dnf 4 with `exit_on_lock` exits 200 with `RPMDB already locked by 1234` and `The
/// application with PID 1234 is: dnf`; rpm and dnf 5 name the transaction lock.
pub(crate) fn lock_holder(out: &Out) -> Option<Holder> {
    let text = out.text();
    const SIGNS: &[&str] = &[
        "already locked by",
        "Waiting for process with pid",
        "can't create transaction lock",
        "Failed to obtain rpm transaction lock",
    ];
    if out.code != Some(200) && !SIGNS.iter().any(|s| text.contains(s)) {
        return None;
    }
    let number_after = |key: &str| -> Option<u32> {
        let i = text.find(key)?;
        let digits: String = text[i + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let pid = number_after("locked by ").or_else(|| number_after("with pid "));
    let name = pid.and_then(|p| {
        let key = format!("The application with PID {p} is: ");
        let i = text.find(&key)?;
        let rest = &text[i + key.len()..];
        Some(rest.lines().next().unwrap_or_default().trim().to_string()).filter(|n| !n.is_empty())
    });
    Some(Holder { pid, name })
}

pub(crate) const PROFILE: Profile = Profile {
    id: "dnf",
    programs: &["dnf", "rpm"],
    env: ENV,
    cache_paths: &["/var/cache/dnf", "/var/cache/libdnf5"],
    no_candidate: "dnf repoquery finds no available version",
    lock_file: None,
};

impl Backend for Dnf {
    fn profile(&self) -> &'static Profile {
        &PROFILE
    }

    fn query(
        &self,
        run: &mut Run,
        names: &[String],
        repos: bool,
        check: bool,
    ) -> Result<Vec<Pkg>, Fail> {
        let mut pkgs = Vec::new();
        for n in names {
            let a = rpm_argv(n);
            let out = run(&a)?;
            pkgs.push(Pkg {
                installed: parse_rpm(&a, &out).map_err(Fail::Msg)?,
                ..Pkg::default()
            });
        }
        if repos {
            let mut all = parse_repoquery(&must(run, repoquery_argv(names, false, check))?.stdout);
            let mut newest =
                parse_repoquery(&must(run, repoquery_argv(names, true, check))?.stdout);
            for (n, p) in names.iter().zip(pkgs.iter_mut()) {
                p.available = all.remove(n).unwrap_or_default();
                p.candidate = newest.remove(n).and_then(|v| v.into_iter().next());
            }
        }
        Ok(pkgs)
    }

    fn install_argv(&self, items: &[(String, Want)], _lock: Duration) -> Vec<String> {
        install_argv(items)
    }

    fn remove_argv(&self, names: &[String], _purge: bool, _lock: Duration) -> Vec<String> {
        remove_argv(names)
    }

    fn refresh_argv(&self, _lock: Duration) -> Vec<String> {
        refresh_argv()
    }

    fn locked(&self, out: &Out) -> Option<Holder> {
        lock_holder(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exit, ok, Canned};
    use super::*;

    #[test]
    fn rpm_output_is_parsed() {
        let a = rpm_argv("curl");
        assert_eq!(a.join(" "), "rpm -q --qf %{VERSION}-%{RELEASE}\n curl");
        assert_eq!(
            parse_rpm(&a, &ok("8.6.0-7.fc40\n")),
            Ok(Some("8.6.0-7.fc40".into()))
        );
        assert_eq!(
            parse_rpm(&a, &ok("6.8.5-301.fc40\n6.9.7-200.fc40\n")),
            Ok(Some("6.9.7-200.fc40".into()))
        );
        assert_eq!(
            parse_rpm(&a, &exit(1, "package curl is not installed\n", "")),
            Ok(None)
        );
        assert!(parse_rpm(&a, &exit(1, "", "error: rpmdb open failed\n")).is_err());
    }

    #[test]
    fn repoquery_lists_versions_per_name() {
        // dnf 4 prints a blank line after each formatted entry.
        let text = "curl\t8.6.0-7.fc40\n\ncurl\t8.6.0-8.fc40\n\nwget2\t2.1.0-9.fc40\n\n";
        let m = parse_repoquery(text);
        assert_eq!(m["curl"], vec!["8.6.0-7.fc40", "8.6.0-8.fc40"]);
        assert_eq!(m["wget2"], vec!["2.1.0-9.fc40"]);
        assert!(parse_repoquery("").is_empty());
    }

    #[test]
    fn query_uses_rpm_then_two_repoqueries() {
        let n = vec!["curl".to_string(), "nope".to_string()];
        assert_eq!(
            repoquery_argv(&n, true, true).join(" "),
            "dnf -q -C repoquery --available --latest-limit 1 --qf %{name}\t%{version}-%{release}\n curl nope"
        );
        let c = Canned::new(vec![
            ("rpm -q --qf %{VERSION}-%{RELEASE}\n curl", ok("8.6.0-7.fc40\n")),
            (
                "rpm -q --qf %{VERSION}-%{RELEASE}\n nope",
                exit(1, "package nope is not installed\n", ""),
            ),
            (
                "dnf -q repoquery --available --qf %{name}\t%{version}-%{release}\n curl nope",
                ok("curl\t8.6.0-7.fc40\ncurl\t8.6.0-8.fc40\n"),
            ),
            (
                "dnf -q repoquery --available --latest-limit 1 --qf %{name}\t%{version}-%{release}\n curl nope",
                ok("curl\t8.6.0-8.fc40\n"),
            ),
        ]);
        let pkgs = c.query(&Dnf, &["curl", "nope"], true, false).unwrap();
        assert_eq!(pkgs[0].installed.as_deref(), Some("8.6.0-7.fc40"));
        assert_eq!(pkgs[0].candidate.as_deref(), Some("8.6.0-8.fc40"));
        assert_eq!(pkgs[0].available.len(), 2);
        assert_eq!(pkgs[1], Pkg::default());
    }

    #[test]
    fn commands_are_built() {
        let s = |v: Vec<String>| v.join(" ");
        let items = vec![
            ("curl".to_string(), Want::Exact("8.6.0-7.fc40".into())),
            ("jq".to_string(), Want::Any),
        ];
        assert_eq!(
            s(Dnf.install_argv(&items, Duration::from_secs(60))),
            "dnf -y --setopt=exit_on_lock=True install curl-8.6.0-7.fc40 jq"
        );
        assert_eq!(
            s(Dnf.remove_argv(&["jq".to_string()], true, Duration::ZERO)),
            "dnf -y --setopt=exit_on_lock=True remove jq"
        );
        assert_eq!(
            s(Dnf.refresh_argv(Duration::ZERO)),
            "dnf -y --setopt=exit_on_lock=True makecache --refresh"
        );
    }

    #[test]
    fn lock_failures_are_recognised() {
        let out = exit(
            200,
            "",
            "RPMDB already locked by 4321\nThe application with PID 4321 is: dnf\n  Memory : 100 M RSS\n",
        );
        assert_eq!(
            lock_holder(&out),
            Some(Holder {
                pid: Some(4321),
                name: Some("dnf".into())
            })
        );
        let out = exit(1, "", "error: can't create transaction lock on /var/lib/rpm/.rpm.lock (Resource temporarily unavailable)\n");
        assert_eq!(lock_holder(&out), Some(Holder::default()));
        assert_eq!(
            lock_holder(&exit(1, "", "Error: Unable to find a match: nope\n")),
            None
        );
    }
}
