//! The master's config file, `sloth.toml`, against real agents: found with `--config`,
//! in the current directory, or in the XDG config directory; its paths are relative
//! to it, so commands work from any directory; flags win over it; a bad file is a
//! usage error naming the file. And `health` names the address of a down host.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const SCRIPT: &str = r#"
local ok, v = goroutine.await(goroutine.async(function() return host.name end, { delegate_to = "web-01" }))
print("HOST", tostring(ok), v)
local slow = goroutine.await_all({ goroutine.async(function() goroutine.sleep(5000) end, { delegate_to = "web-01" }) })[1]
print("SLOW", tostring(slow.success), slow.kind)
local own = goroutine.await_all({ goroutine.async(function() goroutine.sleep(100) return 1 end,
  { delegate_to = "web-01", timeout = "10s" }) })[1]
print("OWN", tostring(own.success))
"#;

fn master(cwd: &Path, config_home: &Path) -> Command {
    let mut cmd = Command::new(master_bin());
    cmd.current_dir(cwd).env("XDG_CONFIG_HOME", config_home);
    cmd
}

/// A fleet directory with `conf/sloth.toml` pointing (relatively) at its certificates
/// and inventory, with a 1 s task timeout; the script in `conf/t.sloth`.
fn configured() -> (TestFleet, std::path::PathBuf) {
    let fleet = TestFleet::web(1);
    let inv = fleet.inventory();
    let conf = fleet.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("sloth.toml"),
        format!(
            "certs = \"../certs\"\ninventory = \"../{}\"\nconnect_timeout = \"2s\"\ntask_timeout = \"1s\"\n",
            inv.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::write(conf.join("t.sloth"), SCRIPT).unwrap();
    (fleet, conf)
}

fn assert_configured_run(out: &Output) {
    assert_eq!(out.one("HOST"), vec!["true", "web-01"], "{out}");
    assert_eq!(
        out.one("SLOW"),
        vec!["false", "timeout"],
        "task_timeout applies\n{out}"
    );
    assert_eq!(
        out.one("OWN"),
        vec!["true"],
        "a task's own timeout wins\n{out}"
    );
    assert!(out.elapsed < Duration::from_secs(4), "{out}");
}

/// From the directory of the file, from anywhere with `--config` (before or after the
/// command), and from anywhere through `$XDG_CONFIG_HOME/sloth/sloth.toml`: the same
/// certificates, inventory and timeouts.
#[test]
fn the_config_file_is_found_and_its_paths_are_relative_to_it() {
    let (fleet, conf) = configured();
    let none = fleet.path().join("no-config-home");
    let elsewhere = tempfile::tempdir().unwrap();

    let out = Running::spawn({
        let mut c = master(&conf, &none);
        c.args(["run", "t.sloth"]);
        c
    })
    .finish(RUN_TIMEOUT);
    assert_configured_run(&out);

    let file = conf.join("sloth.toml");
    let script = conf.join("t.sloth");
    for args in [
        vec![
            "--config",
            file.to_str().unwrap(),
            "run",
            script.to_str().unwrap(),
        ],
        vec![
            "run",
            script.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ],
    ] {
        let out = Running::spawn({
            let mut c = master(elsewhere.path(), &none);
            c.args(&args);
            c
        })
        .finish(RUN_TIMEOUT);
        assert_configured_run(&out);
    }

    // The XDG config directory, with the same relative paths (relative to that file).
    let home = fleet.path().join("xdg");
    std::fs::create_dir_all(home.join("sloth")).unwrap();
    std::fs::write(
        home.join("sloth/sloth.toml"),
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("../", "../../"),
    )
    .unwrap();
    let out = Running::spawn({
        let mut c = master(elsewhere.path(), &home);
        c.args(["run", script.to_str().unwrap()]);
        c
    })
    .finish(RUN_TIMEOUT);
    assert_configured_run(&out);

    // `health` and `exec` read it too.
    let out = Running::spawn({
        let mut c = master(elsewhere.path(), &home);
        c.args(["exec", "all", "--", "echo", "hi"]);
        c
    })
    .finish(RUN_TIMEOUT);
    out.assert_code(0);
    assert!(
        out.stdout.contains("web-01") && out.stdout.contains("hi"),
        "{out}"
    );
}

/// A flag on the command line wins over the file: another certificate directory is
/// looked for where the flag says, and the error names it.
#[test]
fn flags_win_over_the_file() {
    let (fleet, conf) = configured();
    let none = fleet.path().join("no-config-home");
    let out = Running::spawn({
        let mut c = master(&conf, &none);
        c.args(["run", "t.sloth", "--certs", "/nonexistent/pki"]);
        c
    })
    .finish(RUN_TIMEOUT);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("no master certificate in /nonexistent/pki"),
        "{out}"
    );

    let out = Running::spawn({
        let mut c = master(&conf, &none);
        c.args(["run", "t.sloth", "--task-timeout", "30s"]);
        c
    })
    .finish(RUN_TIMEOUT);
    assert_eq!(out.one("SLOW"), vec!["true", "nil"], "{out}");
}

/// Without a config file the certificate directory is ./certs, and the error says how
/// to point elsewhere.
#[test]
fn missing_certificates_say_where_to_configure_them() {
    let fleet = TestFleet::web(1);
    let empty = tempfile::tempdir().unwrap();
    let inv = fleet.inventory();
    let out = Running::spawn({
        let mut c = master(empty.path(), Path::new(NO_CONFIG_HOME));
        c.args(["health", "-i", inv.to_str().unwrap()]);
        c
    })
    .finish(RUN_TIMEOUT);
    out.assert_code(2);
    assert!(
        out.stderr.contains("no master certificate in certs")
            && out
                .stderr
                .contains("set `certs` in sloth.toml or pass --certs DIR"),
        "{out}"
    );
}

/// `certs init` and `certs issue` use the file's certificate directory.
#[test]
fn certs_commands_use_the_configured_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sloth.toml"), "certs = \"pki\"\n").unwrap();
    let sub = dir.path().join("somewhere/else");
    std::fs::create_dir_all(&sub).unwrap();
    let cfg = dir.path().join("sloth.toml");
    for args in [vec!["certs", "init"], vec!["certs", "issue", "web-01"]] {
        let out = Running::spawn({
            let mut c = master(&sub, Path::new(NO_CONFIG_HOME));
            c.args(&args).args(["--config", cfg.to_str().unwrap()]);
            c
        })
        .finish(RUN_TIMEOUT);
        out.assert_code(0);
    }
    for f in [
        "ca.crt",
        "master.crt",
        "master.key",
        "web-01.crt",
        "web-01.key",
    ] {
        assert!(dir.path().join("pki").join(f).exists(), "{f}");
    }
    assert!(!sub.join("certs").exists());
}

/// A bad file is a usage error (exit 2) that names the file and what is wrong, before
/// anything runs.
#[test]
fn a_bad_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = Path::new(NO_CONFIG_HOME);
    let run = |toml: &str, extra: &[&str]| {
        std::fs::write(dir.path().join("sloth.toml"), toml).unwrap();
        Running::spawn({
            let mut c = master(dir.path(), home);
            c.args(["run", "t.sloth"]).args(extra);
            c
        })
        .finish(RUN_TIMEOUT)
    };
    let out = run("cert = \"pki\"\n", &[]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("sloth.toml:1: unknown field `cert`, expected one of"),
        "{out}"
    );
    let out = run("task_timeout = \"soonish\"\n", &[]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("sloth.toml:1: bad duration")
            && out.stderr.contains("(in `task_timeout = \"soonish\"`)"),
        "{out}"
    );
    let out = run("certs = [\n", &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("sloth.toml:"), "{out}");
    let out = run("", &["--config", "/nonexistent/sloth.toml"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("--config /nonexistent/sloth.toml: no such file"),
        "{out}"
    );
}

/// `health` shows each host's address, and a down host's error names the address that
/// did not answer (so does a task's error in `run`).
#[test]
fn health_names_the_address_of_a_down_host() {
    let mut fleet = TestFleet::web(1);
    let dead = format!("127.0.0.1:{}", dead_udp_port());
    fleet.add_host("db-01", &dead, &["db"]);
    let out = sloth_master(
        fleet.path(),
        &[
            "health",
            "-i",
            fleet.inventory().to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--connect-timeout",
            "1s",
        ],
    );
    out.assert_code(1);
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains("db-01"))
        .unwrap_or_else(|| panic!("{out}"));
    let error = row
        .split("unreachable: db-01: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(error.contains(&dead), "the error names {dead}\n{out}");
    let web = fleet.addr("web-01");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("web-01") && l.contains(&web)),
        "{out}"
    );
    let out = fleet.run(
        "local r = goroutine.await_all({ goroutine.async(function() end, { delegate_to = 'db-01' }) })[1] print('R', r.error)",
        &["--connect-timeout", "1s"],
    );
    let r = out.line("R");
    assert!(
        r.starts_with("unreachable: db-01: ") && r.contains(&dead),
        "{out}"
    );
}
