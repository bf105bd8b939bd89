//! `pkg.*` against the real apt and dpkg, inside throwaway containers
//! (`common::container`) whose apt sources are replaced by a local flat repository
//! built here: `sloth-test-hello` 1.0 and 1.1 (each installs
//! /usr/local/share/sloth-test-hello/VERSION), `sloth-test-other` 2.0, and
//! `sloth-test-slow` 1.0, whose preinst sleeps (an apt-get installing it holds the
//! dpkg lock). No test reaches a network mirror.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::container::{self, Container};
use common::*;

/// Where the repository is bound inside the container.
const REPO: &str = "/srv/sloth-repo";

/// Task helpers every script starts with: `on_box(f)` runs `f` on the container and
/// returns its values (raising its error), `show(tag, ...)` prints the values.
const PRELUDE: &str = r##"
function on_box(f)
  local res = table.pack(goroutine.await(goroutine.async(f, { delegate_to = "box" })))
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end
function show(tag, ...)
  local out = {}
  for i = 1, select("#", ...) do out[i] = tostring((select(i, ...))) end
  print(tag, table.concat(out, "\t"))
end
"##;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A flat apt repository (Packages, Packages.gz, Packages.xz and the .debs) in a
/// temporary directory; the repository itself is `dir/repo`.
fn build_repo() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sloth-pkg-repo-")
        .tempdir()
        .unwrap();
    let repo = dir.path().join("repo");
    fs::create_dir(&repo).unwrap();
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o755)).unwrap();
    let debs: &[(&str, &str, Option<&str>)] = &[
        ("sloth-test-hello", "1.0", None),
        ("sloth-test-hello", "1.1", None),
        ("sloth-test-other", "2.0", None),
        (
            "sloth-test-slow",
            "1.0",
            Some("#!/bin/sh\ntouch /run/sloth-test-slow.started\nsleep 60\n"),
        ),
    ];
    for (name, version, preinst) in debs {
        let root = dir.path().join(format!("{name}_{version}"));
        let share = root.join("usr/local/share").join(name);
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(&share).unwrap();
        write(
            &root.join("DEBIAN/control"),
            &format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: sloth \
                 tests <tests@example.invalid>\nDescription: sloth pkg test package\n"
            ),
            0o644,
        );
        write(&share.join("VERSION"), &format!("{version}\n"), 0o644);
        if let Some(p) = preinst {
            write(&root.join("DEBIAN/preinst"), p, 0o755);
        }
        let out = Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&repo)
            .output()
            .expect("dpkg-deb");
        assert!(
            out.status.success(),
            "dpkg-deb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null \
             && gzip -kf Packages && xz -kf Packages && chmod 644 *",
        )
        .current_dir(&repo)
        .output()
        .expect("dpkg-scanpackages");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// `c.sh(script)`, asserting it succeeds; its stdout.
fn sh_ok(c: &Container, script: &str) -> String {
    let out = c.sh(script);
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container named `box` in `fleet` whose apt knows only the local repository; with
/// `update`, its cache is refreshed, else it is left empty (no lists, no stamps).
fn boot(fleet: &mut TestFleet, repo: &tempfile::TempDir, update: bool) -> Container {
    let c = Container::boot(fleet, "box", &[(&repo.path().join("repo"), REPO)]);
    sh_ok(
        &c,
        &format!(
            "rm -f /etc/apt/sources.list.d/* && \
             echo 'deb [trusted=yes] file:{REPO} ./' > /etc/apt/sources.list && \
             find /var/lib/apt/lists -maxdepth 1 -type f -delete && \
             rm -rf /var/cache/sloth /var/lib/apt/periodic/update-success-stamp"
        ),
    );
    if update {
        sh_ok(&c, "apt-get update -q >/dev/null");
    }
    c
}

/// The version dpkg has installed, or None.
fn dpkg_version(c: &Container, name: &str) -> Option<String> {
    let out = c.sh(&format!(
        "dpkg-query -W -f '${{Status}} ${{Version}}' {name}"
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(|v| v.trim().to_string())
}

fn skip() -> bool {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

#[test]
fn installed_is_idempotent_and_check_mode_changes_nothing() {
    if skip() {
        return;
    }
    let repo = build_repo();
    let mut fleet = TestFleet::empty();
    let c = boot(&mut fleet, &repo, true);
    let install = script(
        r#"
show("A", on_box(function()
  local r = pkg.installed("sloth-test-hello")
  return r.changed, r.action, r.version, r.check, r.backend
end))
show("B", on_box(function()
  local r = pkg.installed{name = "sloth-test-hello"}
  return r.changed, r.action, r.version
end))
"#,
    );

    // Check mode: planned, and dpkg still has nothing.
    let out = fleet.run(&install, &["--check"]);
    out.assert_code(0);
    assert_eq!(
        out.one("A"),
        ["true", "installed 1.1", "1.1", "true", "apt"],
        "{out}"
    );
    assert_eq!(out.one("B"), ["true", "installed 1.1", "1.1"], "{out}");
    assert!(
        out.stdout
            .contains("would change: pkg.installed sloth-test-hello (installed 1.1)"),
        "{out}"
    );
    assert_eq!(dpkg_version(&c, "sloth-test-hello"), None);

    // For real: installed once, then unchanged.
    let out = fleet.run(&install, &[]);
    out.assert_code(0);
    assert_eq!(
        out.one("A"),
        ["true", "installed 1.1", "1.1", "false", "apt"],
        "{out}"
    );
    assert_eq!(out.one("B"), ["false", "ok", "1.1"], "{out}");
    assert_eq!(dpkg_version(&c, "sloth-test-hello").as_deref(), Some("1.1"));
    let listed = sh_ok(&c, "dpkg-query -W sloth-test-hello");
    assert_eq!(listed.trim(), "sloth-test-hello\t1.1");
    assert_eq!(
        sh_ok(&c, "cat /usr/local/share/sloth-test-hello/VERSION").trim(),
        "1.1"
    );

    // Several names: only the missing one is installed; versions per name.
    let out = fleet.run(
        &script(
            r#"
show("M", on_box(function()
  local r = pkg.installed{names = {"sloth-test-hello", "sloth-test-other"}}
  return r.changed, r.action, r.versions["sloth-test-hello"], r.versions["sloth-test-other"], r.target
end))
"#,
        ),
        &[],
    );
    out.assert_code(0);
    assert_eq!(
        out.one("M"),
        [
            "true",
            "sloth-test-other: installed 2.0",
            "1.1",
            "2.0",
            "sloth-test-hello sloth-test-other"
        ],
        "{out}"
    );

    // Absent: planned in check mode, then removed once.
    let absent = script(
        r#"
show("R", on_box(function()
  local r = pkg.absent{names = {"sloth-test-hello", "sloth-test-other"}}
  return r.changed, r.action, r.versions["sloth-test-hello"]
end))
show("S", on_box(function()
  local r = pkg.absent("sloth-test-hello")
  return r.changed, r.action
end))
"#,
    );
    let out = fleet.run(&absent, &["--check"]);
    out.assert_code(0);
    assert_eq!(
        out.one("R"),
        [
            "true",
            "sloth-test-hello: removed 1.1, sloth-test-other: removed 2.0",
            "nil"
        ],
        "{out}"
    );
    assert_eq!(dpkg_version(&c, "sloth-test-hello").as_deref(), Some("1.1"));
    let out = fleet.run(&absent, &[]);
    out.assert_code(0);
    assert_eq!(out.one("S"), ["false", "ok"], "{out}");
    assert_eq!(dpkg_version(&c, "sloth-test-hello"), None);
    assert_eq!(dpkg_version(&c, "sloth-test-other"), None);
    let out = fleet.run(&absent, &[]);
    out.assert_code(0);
    assert_eq!(out.one("R"), ["false", "ok", "nil"], "{out}");
}

#[test]
fn a_pinned_version_then_latest_moves_both_ways() {
    if skip() {
        return;
    }
    let repo = build_repo();
    let mut fleet = TestFleet::empty();
    let c = boot(&mut fleet, &repo, true);
    let pin = script(
        r#"
show("PIN", on_box(function()
  local r = pkg.installed{name = "sloth-test-hello", version = "1.0"}
  return r.changed, r.action, r.version
end))
"#,
    );
    let latest = script(
        r#"
show("LATEST", on_box(function()
  local r = pkg.latest("sloth-test-hello")
  return r.changed, r.action, r.version, r.diff
end))
"#,
    );
    let out = fleet.run(&pin, &[]);
    out.assert_code(0);
    assert_eq!(out.one("PIN"), ["true", "installed 1.0", "1.0"], "{out}");
    assert_eq!(
        sh_ok(&c, "cat /usr/local/share/sloth-test-hello/VERSION").trim(),
        "1.0"
    );
    let out = fleet.run(&pin, &[]);
    assert_eq!(out.one("PIN"), ["false", "ok", "1.0"], "{out}");

    // latest in check mode: planned, still 1.0.
    let out = fleet.run(&latest, &["--check", "--diff"]);
    out.assert_code(0);
    assert_eq!(
        out.one("LATEST")[..3],
        ["true", "1.0 -> 1.1", "1.1"],
        "{out}"
    );
    assert_eq!(dpkg_version(&c, "sloth-test-hello").as_deref(), Some("1.0"));

    // For real, with the diff.
    let out = fleet.run(&latest, &["--diff"]);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("changed: pkg.latest sloth-test-hello (1.0 -> 1.1)"),
        "{out}"
    );
    assert!(out.stdout.contains("-version: 1.0"), "{out}");
    assert!(out.stdout.contains("+version: 1.1"), "{out}");
    assert_eq!(
        out.one("LATEST")[..3],
        ["true", "1.0 -> 1.1", "1.1"],
        "{out}"
    );
    assert_eq!(dpkg_version(&c, "sloth-test-hello").as_deref(), Some("1.1"));
    let out = fleet.run(&latest, &[]);
    assert_eq!(out.one("LATEST"), ["false", "ok", "1.1", "nil"], "{out}");

    // Back down to the pin (a downgrade), then purge.
    let out = fleet.run(&pin, &[]);
    out.assert_code(0);
    assert_eq!(out.one("PIN"), ["true", "1.1 -> 1.0", "1.0"], "{out}");
    assert_eq!(dpkg_version(&c, "sloth-test-hello").as_deref(), Some("1.0"));
    let out = fleet.run(
        &script(
            r#"
show("PURGE", on_box(function()
  local r = pkg.absent{name = "sloth-test-hello", purge = true}
  return r.changed, r.action
end))
"#,
        ),
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("PURGE"), ["true", "purged 1.0"], "{out}");
    let out = c.sh("dpkg-query -W sloth-test-hello");
    assert!(!out.status.success(), "purged: dpkg no longer knows it");
}

#[test]
fn refreshed_respects_max_age_and_check_mode() {
    if skip() {
        return;
    }
    let repo = build_repo();
    let mut fleet = TestFleet::empty();
    // An empty cache: no lists, no stamps.
    let c = boot(&mut fleet, &repo, false);
    let lists = "find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' | wc -l";
    let refresh = script(
        r#"
show("H1", on_box(function()
  local r = pkg.refreshed{max_age = "1h"}
  return r.changed, r.action, r.target, r.age
end))
show("H2", on_box(function()
  local r = pkg.refreshed{max_age = "1h"}
  return r.changed
end))
"#,
    );
    // Check mode: would refresh, and apt-get update did not run.
    let out = fleet.run(&refresh, &["--check"]);
    out.assert_code(0);
    assert_eq!(
        out.one("H1"),
        ["true", "refreshed (no earlier refresh known)", "apt", "nil"],
        "{out}"
    );
    assert_eq!(
        sh_ok(&c, lists).trim(),
        "0",
        "check mode refreshed the cache"
    );

    // A package the empty cache does not know: in check mode, planned with its
    // version unknown (a real run refreshes first).
    let install = script(
        r#"
show("I", on_box(function()
  local r = pkg.installed{name = "sloth-test-hello", cache_valid = "1h"}
  return r.changed, r.action, r.version, r.refreshed
end))
"#,
    );
    let out = fleet.run(&install, &["--check"]);
    out.assert_code(0);
    assert_eq!(
        out.one("I"),
        [
            "true",
            "installed (version known after the cache refresh)",
            "nil",
            "false"
        ],
        "{out}"
    );
    // Without the refresh option, the same package is unknown.
    let out = fleet.run(
        &script(r#"on_box(function() pkg.installed("sloth-test-hello") end)"#),
        &["--check"],
    );
    out.assert_code(1);
    assert!(
        out.to_string()
            .contains("no such package in the configured repositories"),
        "{out}"
    );

    // For real: the first refresh changes, the second (within max_age) does not.
    let out = fleet.run(&refresh, &[]);
    out.assert_code(0);
    assert_eq!(
        out.one("H1")[..3],
        ["true", "refreshed (no earlier refresh known)", "apt"],
        "{out}"
    );
    assert_eq!(out.one("H2"), ["false"], "{out}");
    assert_ne!(sh_ok(&c, lists).trim(), "0");
    assert!(sh_ok(&c, "cat /var/cache/sloth/pkg-refresh-apt")
        .trim()
        .parse::<u64>()
        .is_ok());

    // max_age 0 (the default) refreshes every time.
    let out = fleet.run(
        &script(
            r#"
show("Z", on_box(function()
  local r = pkg.refreshed()
  return r.changed, r.age ~= nil and r.age < 60
end))
"#,
        ),
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("Z"), ["true", "true"], "{out}");

    // The cache is fresh now: cache_valid does not refresh again, and installs.
    let out = fleet.run(&install, &[]);
    out.assert_code(0);
    assert_eq!(
        out.one("I"),
        ["true", "installed 1.1", "1.1", "false"],
        "{out}"
    );
    // refresh = true refreshes only when it can matter: latest does.
    let out = fleet.run(
        &script(
            r#"
show("L", on_box(function()
  local r = pkg.latest{name = "sloth-test-hello", refresh = true}
  return r.changed, r.refreshed
end))
show("K", on_box(function()
  local r = pkg.installed{name = "sloth-test-hello", refresh = true}
  return r.changed, r.refreshed
end))
"#,
        ),
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.one("L"), ["false", "true"], "{out}");
    assert_eq!(out.one("K"), ["false", "false"], "{out}");
}

#[test]
fn unknown_packages_and_bad_input_are_errors() {
    if skip() {
        return;
    }
    let repo = build_repo();
    let mut fleet = TestFleet::empty();
    let _c = boot(&mut fleet, &repo, true);

    let out = fleet.run(
        &script(r#"on_box(function() pkg.installed("sloth-test-nope") end)"#),
        &[],
    );
    out.assert_code(1);
    assert!(
        out.to_string().contains(
            "pkg.installed sloth-test-nope: no such package in the configured repositories \
             (apt-cache policy shows no candidate)"
        ),
        "{out}"
    );

    // Mistakes raise before anything runs; each caught in the task.
    let out = fleet.run(
        &script(
            r#"
local cases = {
  unknown_key = function() pkg.installed{name = "sloth-test-hello", verison = "1.0"} end,
  version_with_names = function()
    pkg.installed{names = {"sloth-test-hello", "sloth-test-other"}, version = "1.0"}
  end,
  both = function() pkg.installed{name = "a", names = {"b"}} end,
  empty = function() pkg.latest{names = {}} end,
  option_name = function() pkg.absent("-y") end,
  shell_name = function() pkg.installed("a;reboot") end,
  bad_version = function() pkg.installed{name = "sloth-test-hello", version = "1.0 2"} end,
  no_version = function() pkg.installed{name = "sloth-test-hello", version = "9.9"} end,
  other_backend = function() pkg.installed{name = "curl", backend = "pacman"} end,
  purge_on_installed = function() pkg.installed{name = "curl", purge = true} end,
}
for _, k in ipairs({"unknown_key", "version_with_names", "both", "empty", "option_name",
                    "shell_name", "bad_version", "no_version", "other_backend",
                    "purge_on_installed"}) do
  local f = cases[k]
  show("E", k, on_box(function()
    local ok, err = pcall(f)
    return ok, (tostring(err):gsub("\n", " "))
  end))
end
"#,
        ),
        &[],
    );
    out.assert_code(0);
    let errors: Vec<Vec<String>> = out.all("E");
    let err = |k: &str| -> String {
        let row = errors
            .iter()
            .find(|r| r[0] == k)
            .unwrap_or_else(|| panic!("no case {k}\n{out}"));
        assert_eq!(row[1], "false", "{k} did not fail\n{out}");
        row[2].clone()
    };
    let e = err("unknown_key");
    assert!(
        e.contains(
            "pkg.installed sloth-test-hello: unknown option 'verison' (did you mean 'version'?)"
        ),
        "{e}"
    );
    assert!(e.contains("known: "), "{e}");
    let e = err("version_with_names");
    assert!(
        e.contains("option 'version' needs a single package name (got 2)"),
        "{e}"
    );
    assert!(err("both").contains("exclude each other"));
    assert!(err("empty").contains("option 'names' must not be empty"));
    let e = err("option_name");
    assert!(
        e.contains("option 'name' is not a valid package name: '-y'"),
        "{e}"
    );
    assert!(err("shell_name").contains("is not a valid package name: 'a;reboot'"));
    assert!(err("bad_version").contains("option 'version' is not a valid version"));
    let e = err("no_version");
    assert!(
        e.contains(
            "pkg.installed sloth-test-hello: version 9.9 is not available (available: 1.1, 1.0)"
        ),
        "{e}"
    );
    let e = err("other_backend");
    assert!(
        e.contains("backend 'pacman' was asked for, but pacman was not found on this host"),
        "{e}"
    );
    assert!(err("purge_on_installed").contains("unknown option 'purge'"));
}

#[test]
fn a_locked_package_manager_fails_within_the_lock_timeout() {
    if skip() {
        return;
    }
    let repo = build_repo();
    let mut fleet = TestFleet::empty();
    let c = boot(&mut fleet, &repo, true);
    // Another apt-get holds the dpkg lock while the package's preinst sleeps. (A
    // `flock` on the lock file would not do: apt locks with fcntl, which flock locks
    // do not exclude.)
    sh_ok(
        &c,
        "DEBIAN_FRONTEND=noninteractive nohup apt-get install -y -q sloth-test-slow \
         </dev/null >/run/slow.log 2>&1 &",
    );
    sh_ok(
        &c,
        "for i in $(seq 200); do [ -e /run/sloth-test-slow.started ] && exit 0; sleep 0.05; \
         done; cat /run/slow.log; exit 1",
    );
    let holder = sh_ok(&c, "pgrep -o -x apt-get");

    // Check mode reads only: no lock needed.
    let install = script(
        r#"
show("I", on_box(function()
  local r = pkg.installed{name = "sloth-test-hello", lock_timeout = "2s"}
  return r.changed, r.action
end))
"#,
    );
    let out = fleet.run(&install, &["--check"]);
    out.assert_code(0);
    assert_eq!(out.one("I"), ["true", "installed 1.1"], "{out}");

    let started = Instant::now();
    let out = fleet.run(&install, &[]);
    let took = started.elapsed();
    out.assert_code(1);
    let text = out.to_string();
    assert!(
        text.contains(&format!(
            "pkg.installed sloth-test-hello: the package manager is locked by another process \
             (pid {}, apt-get) and stayed locked for 2s",
            holder.trim()
        )),
        "{out}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "did not wait: {took:?}");
    assert_eq!(dpkg_version(&c, "sloth-test-hello"), None);
}
