//! apt: `dpkg-query` for what is installed, `apt-cache policy` for the candidate and
//! the versions on offer, `apt-get` for changes (non-interactive, keeping changed
//! configuration files, waiting for the dpkg lock with `DPkg::Lock::Timeout`).

use std::collections::HashMap;
use std::time::Duration;

use super::{argv, failed, must, secs_up, Backend, Fail, Holder, Out, Pkg, Profile, Run, Want};

pub(crate) struct Apt;

const ENV: &[(&str, &str)] = &[
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
    // Messages are parsed: no translations.
    ("LC_ALL", "C"),
];

pub(crate) fn dpkg_query_argv(name: &str) -> Vec<String> {
    argv(&["dpkg-query", "-W", "-f", "${Status}\t${Version}\n", name])
}

/// The installed version and whether anything is left of a package that is not
/// (fully) installed, from `dpkg-query -W -f '${Status}\t${Version}\n'`. dpkg-query
/// exits 1 for a package it never heard of.
pub(crate) fn parse_dpkg_query(
    argv: &[String],
    out: &Out,
) -> Result<(Option<String>, bool), String> {
    if !out.ok {
        return if out.code == Some(1) {
            Ok((None, false))
        } else {
            Err(failed(argv, out))
        };
    }
    let mut installed = None;
    let mut leftover = false;
    for line in out.stdout.lines() {
        let (status, version) = line.split_once('\t').unwrap_or((line, ""));
        // `want flag status`, e.g. `install ok installed`, `deinstall ok config-files`.
        match status.split_whitespace().nth(2) {
            Some("installed" | "triggers-awaited" | "triggers-pending") => {
                installed = Some(version.trim().to_string());
            }
            Some("not-installed") | None => {}
            Some(_) => leftover = true,
        }
    }
    if installed.is_some() {
        leftover = false;
    }
    Ok((installed, leftover))
}

pub(crate) fn policy_argv(names: &[String]) -> Vec<String> {
    let mut a = argv(&["apt-cache", "policy"]);
    a.extend(names.iter().cloned());
    a
}

/// One package in `apt-cache policy` output.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Policy {
    pub installed: Option<String>,
    pub candidate: Option<String>,
    /// Every version in the table, with whether a repository offers it (and not only
    /// the dpkg status file, which lists what is installed).
    pub versions: Vec<(String, bool)>,
}

fn version_field(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v != "(none)").then(|| v.to_string())
}

/// `apt-cache policy A B ...`: a section per package apt knows (none for one it does
/// not), keyed by the name as given.
pub(crate) fn parse_policy(text: &str) -> HashMap<String, Policy> {
    let mut out = HashMap::new();
    let mut cur: Option<(String, Policy)> = None;
    let mut in_table = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if let Some(name) = line.strip_suffix(':') {
                if let Some((n, p)) = cur.take() {
                    out.insert(n, p);
                }
                cur = Some((name.to_string(), Policy::default()));
                in_table = false;
            }
            continue;
        }
        let Some((_, p)) = cur.as_mut() else { continue };
        let t = line.trim_start();
        if let Some(v) = t.strip_prefix("Installed:") {
            p.installed = version_field(v);
        } else if let Some(v) = t.strip_prefix("Candidate:") {
            p.candidate = version_field(v);
        } else if t.starts_with("Version table:") {
            in_table = true;
        } else if in_table {
            // Version lines are indented 5 (` *** 1.0 500` for the installed one),
            // their sources 8 (`        500 http://... Packages`).
            let indent = line.len() - line.trim_start_matches([' ', '*']).len();
            if indent < 8 {
                let v = t.trim_start_matches('*').split_whitespace().next();
                if let Some(v) = v {
                    p.versions.push((v.to_string(), false));
                }
            } else if !t.contains("/var/lib/dpkg/status") {
                if let Some(last) = p.versions.last_mut() {
                    last.1 = true;
                }
            }
        }
    }
    if let Some((n, p)) = cur {
        out.insert(n, p);
    }
    out
}

fn lock_opt(lock: Duration) -> [String; 2] {
    [
        "-o".into(),
        format!("DPkg::Lock::Timeout={}", secs_up(lock)),
    ]
}

pub(crate) fn install_argv(items: &[(String, Want)], lock: Duration) -> Vec<String> {
    let mut a = argv(&["apt-get", "install", "-y", "-q"]);
    a.extend(lock_opt(lock));
    a.extend(argv(&[
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]));
    if items.iter().any(|(_, w)| matches!(w, Want::Exact(_))) {
        a.push("--allow-downgrades".into());
    }
    for (name, want) in items {
        a.push(match want {
            Want::Any => name.clone(),
            Want::Exact(v) | Want::Latest(v) => format!("{name}={v}"),
        });
    }
    a
}

pub(crate) fn remove_argv(names: &[String], purge: bool, lock: Duration) -> Vec<String> {
    let mut a = argv(&[
        "apt-get",
        if purge { "purge" } else { "remove" },
        "-y",
        "-q",
    ]);
    a.extend(lock_opt(lock));
    a.extend(names.iter().cloned());
    a
}

pub(crate) fn refresh_argv(lock: Duration) -> Vec<String> {
    let mut a = argv(&["apt-get", "update", "-q"]);
    a.extend(lock_opt(lock));
    a
}

/// Who holds the lock, when `text` says apt could not get it: `Could not get lock
/// /var/lib/dpkg/lock-frontend. It is held by process 157 (apt-get)` (on stderr, or on
/// stdout as `Waiting for cache lock: ...` while it waited).
pub(crate) fn lock_holder(text: &str) -> Option<Holder> {
    const SIGNS: &[&str] = &[
        "Could not get lock",
        "Unable to acquire the dpkg frontend lock",
        "Unable to lock directory",
        "Unable to lock the administration directory",
        "Unable to lock the download directory",
    ];
    if !SIGNS.iter().any(|s| text.contains(s)) {
        return None;
    }
    let mut h = Holder::default();
    if let Some(i) = text.find("held by process ") {
        let rest = &text[i + "held by process ".len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        h.pid = digits.parse().ok();
        let rest = &rest[digits.len()..];
        if let Some(r) = rest.strip_prefix(" (") {
            if let Some(end) = r.find(')') {
                h.name = Some(r[..end].to_string()).filter(|n| !n.is_empty());
            }
        }
    }
    Some(h)
}

/// `apt-get update` exits 0 when a repository could not be fetched: its errors and
/// `W: Failed to fetch` warnings.
pub(crate) fn update_problem(out: &Out) -> Option<String> {
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| {
            l.starts_with("E: ")
                || l.starts_with("W: Failed to fetch")
                || l.starts_with("W: Some index files failed to download")
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

pub(crate) const PROFILE: Profile = Profile {
    id: "apt",
    programs: &["apt-get", "apt-cache", "dpkg-query"],
    env: ENV,
    cache_paths: &[
        "/var/lib/apt/periodic/update-success-stamp",
        "/var/lib/apt/lists",
    ],
    no_candidate: "apt-cache policy shows no candidate",
    lock_file: None,
};

impl Backend for Apt {
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
            let a = dpkg_query_argv(n);
            let out = run(&a)?;
            let (installed, leftover) = parse_dpkg_query(&a, &out).map_err(Fail::Msg)?;
            pkgs.push(Pkg {
                installed,
                leftover,
                ..Pkg::default()
            });
        }
        if repos {
            let out = must(run, policy_argv(names))?;
            let mut policies = parse_policy(&out.stdout);
            for (n, p) in names.iter().zip(pkgs.iter_mut()) {
                if let Some(pol) = policies.remove(n) {
                    p.candidate = pol.candidate;
                    p.available = pol
                        .versions
                        .into_iter()
                        .filter(|(_, repo)| *repo)
                        .map(|(v, _)| v)
                        .collect();
                }
            }
        }
        Ok(pkgs)
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

    fn refresh_problem(&self, out: &Out) -> Option<String> {
        update_problem(out)
    }

    fn locked(&self, out: &Out) -> Option<Holder> {
        lock_holder(&out.text())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exit, ok, Canned};
    use super::*;

    /// Captured from Debian 12 (apt 2.6) with a local flat repository.
    const POLICY: &str = "\
sloth-test-hello:
  Installed: 1.0
  Candidate: 1.1
  Version table:
     1.1 500
        500 file:/srv/sloth-repo ./ Packages
 *** 1.0 500
        500 file:/srv/sloth-repo ./ Packages
        100 /var/lib/dpkg/status
coreutils:
  Installed: 9.1-1
  Candidate: 9.1-1
  Version table:
 *** 9.1-1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
local-only:
  Installed: 2.0
  Candidate: 2.0
  Package pin: 2.0
  Version table:
 *** 2.0 100
        100 /var/lib/dpkg/status
mail-transport-agent:
  Installed: (none)
  Candidate: (none)
  Version table:
";

    #[test]
    fn policy_is_parsed_per_package() {
        let p = parse_policy(POLICY);
        assert_eq!(p.len(), 4);
        let h = &p["sloth-test-hello"];
        assert_eq!(h.installed.as_deref(), Some("1.0"));
        assert_eq!(h.candidate.as_deref(), Some("1.1"));
        assert_eq!(h.versions, vec![("1.1".into(), true), ("1.0".into(), true)]);
        assert_eq!(p["coreutils"].versions, vec![("9.1-1".into(), true)]);
        assert_eq!(p["local-only"].versions, vec![("2.0".into(), false)]);
        assert_eq!(p["local-only"].candidate.as_deref(), Some("2.0"));
        let m = &p["mail-transport-agent"];
        assert_eq!((m.installed.as_ref(), m.candidate.as_ref()), (None, None));
        assert!(m.versions.is_empty());
        assert!(
            parse_policy("").is_empty(),
            "an unknown package prints nothing"
        );
    }

    #[test]
    fn dpkg_status_is_parsed() {
        let a = dpkg_query_argv("x");
        let p = |o: Out| parse_dpkg_query(&a, &o);
        assert_eq!(
            p(ok("install ok installed\t9.1-1\n")),
            Ok((Some("9.1-1".into()), false))
        );
        assert_eq!(
            p(ok("hold ok installed\t1:2.0-1\n")),
            Ok((Some("1:2.0-1".into()), false))
        );
        assert_eq!(p(ok("deinstall ok config-files\t1.0\n")), Ok((None, true)));
        assert_eq!(
            p(ok("install reinstreq half-installed\t1.0\n")),
            Ok((None, true))
        );
        assert_eq!(p(ok("unknown ok not-installed\t\n")), Ok((None, false)));
        // Multi-arch: one instance installed is enough.
        assert_eq!(
            p(ok(
                "deinstall ok config-files\t1.0\ninstall ok installed\t1.1\n"
            )),
            Ok((Some("1.1".into()), false))
        );
        assert_eq!(
            p(exit(1, "", "dpkg-query: no packages found matching x\n")),
            Ok((None, false))
        );
        let e = p(exit(2, "", "dpkg-query: error: bad\n")).unwrap_err();
        assert!(e.contains("dpkg-query -W -f ${Status}\t${Version}\n x failed (exit code 2): dpkg-query: error: bad"), "{e}");
    }

    #[test]
    fn query_runs_dpkg_query_per_name_then_one_policy() {
        let fmt = "${Status}\t${Version}\n";
        let c = Canned::new(vec![
            (
                &format!("dpkg-query -W -f {fmt} sloth-test-hello"),
                ok("install ok installed\t1.0\n"),
            ),
            (
                &format!("dpkg-query -W -f {fmt} nope"),
                exit(1, "", "dpkg-query: no packages found matching nope\n"),
            ),
            ("apt-cache policy sloth-test-hello nope", ok(POLICY)),
        ]);
        let pkgs = c
            .query(&Apt, &["sloth-test-hello", "nope"], true, false)
            .unwrap();
        assert_eq!(pkgs[0].installed.as_deref(), Some("1.0"));
        assert_eq!(pkgs[0].candidate.as_deref(), Some("1.1"));
        assert_eq!(
            pkgs[0].available,
            vec!["1.1".to_string(), "1.0".to_string()]
        );
        assert_eq!(pkgs[1], Pkg::default());
        // Without repositories (absent), no apt-cache.
        let c = Canned::new(vec![(
            &format!("dpkg-query -W -f {fmt} a"),
            ok("deinstall ok config-files\t1\n"),
        )]);
        let pkgs = c.query(&Apt, &["a"], false, true).unwrap();
        assert!(pkgs[0].leftover);
        // A broken sources list is an error naming the command.
        let c = Canned::new(vec![
            (&format!("dpkg-query -W -f {fmt} a"), ok("")),
            (
                "apt-cache policy a",
                exit(
                    100,
                    "",
                    "E: Malformed entry 1 in list file /etc/apt/sources.list\n",
                ),
            ),
        ]);
        let e = c.query(&Apt, &["a"], true, false).unwrap_err();
        assert!(
            e.starts_with("apt-cache policy a failed (exit code 100): E: Malformed"),
            "{e}"
        );
    }

    #[test]
    fn commands_are_built() {
        let s = |v: Vec<String>| v.join(" ");
        let items = vec![
            ("a".to_string(), Want::Any),
            ("b".to_string(), Want::Latest("1.1".into())),
        ];
        assert_eq!(
            s(install_argv(&items, Duration::from_secs(60))),
            "apt-get install -y -q -o DPkg::Lock::Timeout=60 -o Dpkg::Options::=--force-confdef \
             -o Dpkg::Options::=--force-confold a b=1.1"
        );
        let items = vec![("h".to_string(), Want::Exact("1:1.0-1".into()))];
        assert_eq!(
            s(install_argv(&items, Duration::from_millis(1500))),
            "apt-get install -y -q -o DPkg::Lock::Timeout=2 -o Dpkg::Options::=--force-confdef \
             -o Dpkg::Options::=--force-confold --allow-downgrades h=1:1.0-1"
        );
        let n = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            s(remove_argv(&n, false, Duration::from_secs(5))),
            "apt-get remove -y -q -o DPkg::Lock::Timeout=5 a b"
        );
        assert_eq!(
            s(remove_argv(&n, true, Duration::ZERO)),
            "apt-get purge -y -q -o DPkg::Lock::Timeout=0 a b"
        );
        assert_eq!(
            s(refresh_argv(Duration::from_secs(60))),
            "apt-get update -q -o DPkg::Lock::Timeout=60"
        );
    }

    #[test]
    fn lock_failures_are_recognised() {
        // Captured: apt-get install while another apt-get ran a package's preinst.
        let waited = exit(
            100,
            "Waiting for cache lock: Could not get lock /var/lib/dpkg/lock-frontend. It is held \
             by process 157 (apt-get)...\n",
            "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is \
             another process using it?\n",
        );
        assert_eq!(
            Apt.locked(&waited),
            Some(Holder {
                pid: Some(157),
                name: Some("apt-get".into())
            })
        );
        let no_wait = exit(
            100,
            "",
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 \
             (unattended-upgr)\nE: Unable to acquire the dpkg frontend lock \
             (/var/lib/dpkg/lock-frontend), is another process using it?\n",
        );
        assert_eq!(
            Apt.locked(&no_wait),
            Some(Holder {
                pid: Some(4242),
                name: Some("unattended-upgr".into())
            })
        );
        // Older apt: no holder named.
        let old = exit(
            100,
            "",
            "E: Could not get lock /var/lib/apt/lists/lock - open (11: Resource temporarily \
             unavailable)\nE: Unable to lock directory /var/lib/apt/lists/\n",
        );
        assert_eq!(Apt.locked(&old), Some(Holder::default()));
        let other = exit(
            100,
            "",
            "E: Version '9' for 'sloth-test-hello' was not found\n",
        );
        assert_eq!(Apt.locked(&other), None);
    }

    #[test]
    fn update_failures_are_found_even_with_exit_0() {
        let out = exit(
            100,
            "Get:1 file:/srv ./ InRelease\n",
            "E: Failed to fetch file:/nonexist/./Packages  File not found\nE: Some index files \
             failed to download. They have been ignored, or old ones used instead.\n",
        );
        let p = update_problem(&out).unwrap();
        assert!(p.starts_with("E: Failed to fetch file:/nonexist"), "{p}");
        let out = ok("Hit:1 http://deb.debian.org bookworm InRelease\nW: Failed to fetch http://x/InRelease  Could not resolve 'x'\n");
        assert!(update_problem(&out).unwrap().contains("Could not resolve"));
        assert_eq!(
            update_problem(&ok(
                "Hit:1 file:/srv ./ Packages\nReading package lists...\n"
            )),
            None
        );
    }
}
