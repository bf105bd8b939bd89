//! `sloth-master check` and `run --check-first` as a user runs them: findings with
//! their lines, exit codes 0 (clean or warnings only), 1 (errors), 2 (unreadable), and
//! a script with errors never started.

mod common;

use common::*;

const BAD: &str = r#"local results = {}
for _, h in ipairs(fleet.hosts("web")) do
  goroutine.async(function()
    fs.wirte("/tmp/sloth-check-never", "y")
    exec.run("pwd", { cdw = "/etc", timout = "1s" })
    results[host.name] = true
  end, { delegate_to = "web-09" })
end
print("STARTED")
"#;

#[test]
fn check_finds_problems_before_anything_runs() {
    let fleet = TestFleet::web(2);
    let dir = fleet.path();
    std::fs::write(dir.join("bad.sloth"), BAD).unwrap();
    let inv = fleet.inventory();
    let inv = inv.to_str().unwrap();
    let out = sloth_master(dir, &["check", "bad.sloth", "-i", inv]);
    out.assert_code(1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        lines[0].starts_with(
            "bad.sloth:4: error: unknown function fs.wirte (did you mean 'fs.write'?)"
        ),
        "{out}"
    );
    assert!(
        lines[1].contains(":5: error: exec.run: unknown option 'cdw' (did you mean 'cwd'?)"),
        "{out}"
    );
    assert!(
        lines[2].contains(":5: error: exec.run: unknown option 'timout' (did you mean 'timeout'?)"),
        "{out}"
    );
    assert!(
        lines[3].contains(":6: warning: a task assigns into 'results', which it captured"),
        "{out}"
    );
    assert!(
        lines[4]
            .contains(":7: error: goroutine.async: delegate_to: unknown host or group 'web-09'"),
        "{out}"
    );
    assert_eq!(lines[5], "bad.sloth: 4 error(s), 1 warning(s)");

    // --check-first: the same report (on stderr), and the script never starts.
    let out = fleet.run_named("bad.sloth", BAD, &["--check-first"]);
    out.assert_code(1);
    assert!(!out.stdout.contains("STARTED"), "{out}");
    assert!(out.stderr.contains("4 error(s), 1 warning(s)"), "{out}");

    // Warnings only: exit 0, and --check-first runs the script.
    let warned = "local n = 0\nlocal h = goroutine.async(function() n = n + 1 end, { delegate_to = 'web-01' })\ngoroutine.await(h)\nprint('STARTED')\n";
    std::fs::write(dir.join("warn.sloth"), warned).unwrap();
    let out = sloth_master(dir, &["check", "warn.sloth", "-i", inv]);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("warn.sloth:2: warning: a task assigns to 'n'"),
        "{out}"
    );
    let out = fleet.run_named("warn.sloth", warned, &["--check-first"]);
    out.assert_code(0);
    assert!(out.stdout.contains("STARTED"), "{out}");

    // Clean: exit 0.
    std::fs::write(dir.join("ok.sloth"), "print(fs.read('/etc/hostname'))\n").unwrap();
    let out = sloth_master(dir, &["check", "ok.sloth"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "ok.sloth: no problems found");

    // Unreadable script or inventory: exit 2.
    let out = sloth_master(dir, &["check", "missing.sloth"]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("cannot read script missing.sloth"),
        "{out}"
    );
    std::fs::write(dir.join("bad.toml"), "[hosts.x]\nadress = 1\n").unwrap();
    let out = sloth_master(dir, &["check", "ok.sloth", "-i", "bad.toml"]);
    out.assert_code(2);
    // A syntax error is an error with its line.
    std::fs::write(dir.join("syntax.sloth"), "if x then\n").unwrap();
    let out = sloth_master(dir, &["check", "syntax.sloth"]);
    out.assert_code(1);
    assert!(
        out.stdout
            .starts_with("syntax.sloth:2: error: syntax error: 'end' expected"),
        "{out}"
    );
    assert!(!std::path::Path::new("/tmp/sloth-check-never").exists());
}

/// `run --check-first --local-fleet N` (no inventory) checks host names against the
/// fleet it would start (`local-01` … `local-0N`), before starting it.
#[test]
fn check_first_knows_the_hosts_of_a_local_fleet() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("l9.sloth"),
        "fleet.run(\"local-09\", function() end)\nprint('STARTED')\n",
    )
    .unwrap();
    let out = sloth_master(
        dir.path(),
        &[
            "run",
            "l9.sloth",
            "--no-history",
            "--local-fleet",
            "2",
            "--check-first",
        ],
    );
    out.assert_code(1);
    assert!(
        out.stderr.contains("unknown host or group 'local-09'"),
        "{out}"
    );
    assert!(!out.stdout.contains("STARTED"), "{out}");
    std::fs::write(
        dir.path().join("l2.sloth"),
        "fleet.run(\"local-02\", function() end)\nprint('STARTED')\n",
    )
    .unwrap();
    let out = sloth_master(
        dir.path(),
        &[
            "run",
            "l2.sloth",
            "--no-history",
            "--local-fleet",
            "2",
            "--check-first",
        ],
    );
    out.assert_code(0);
    assert!(out.stdout.contains("STARTED"), "{out}");
}
