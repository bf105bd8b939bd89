//! `sloth-master bootstrap` against real hosts: each a throwaway container in its own
//! network namespace with OpenSSH's sshd, reached by the real ssh client; the agent
//! installed as a real systemd unit, enrolled with a fresh token, then answering over
//! mutual TLS. A second run changes nothing; a host with another agent version is
//! upgraded; a host without systemd is refused; systemd restarts a crashed agent.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::container::{self, SshHost};
use common::*;

const SSH_OPTIONS: [&str; 6] = [
    "--ssh-option",
    "StrictHostKeyChecking=no",
    "--ssh-option",
    "UserKnownHostsFile=/dev/null",
    "--ssh-option",
    "LogLevel=ERROR",
];

/// A key pair, and an authorized_keys file for it.
fn ssh_key(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let keys = dir.join("authorized_keys");
    std::fs::copy(key.with_extension("pub"), &keys).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, keys)
}

/// A command on the host as root, over ssh.
fn on(host: &SshHost, key: &Path, script: &str) -> String {
    let out = Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .arg(format!("root@{}", host.ip))
        .arg(script)
        .output()
        .expect("ssh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bootstrap(fleet: &TestFleet, pattern: &str) -> Output {
    let inv = fleet.inventory();
    let mut args = vec![
        "bootstrap",
        pattern,
        "-i",
        inv.to_str().unwrap(),
        "--certs",
        fleet.certs.to_str().unwrap(),
    ];
    args.extend(SSH_OPTIONS);
    sloth_master(fleet.path(), &args)
}

#[test]
fn bootstrap_installs_enrolls_upgrades_and_then_changes_nothing() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let (key, keys) = ssh_key(fleet.path());
    let a = SshHost::boot(&keys, true);
    let b = SshHost::boot(&keys, true);
    let bare = SshHost::boot(&keys, false);
    for (name, h) in [("box-a", &a), ("box-b", &b), ("box-c", &bare)] {
        fleet.add_host(name, &format!("{}:7447", h.ip), &["boxes"]);
        fleet.set_vars(name, &format!("{{ ssh_identity = \"{}\" }}", key.display()));
    }

    // First run: two hosts get everything, the one without systemd is refused.
    let out = bootstrap(&fleet, "boxes");
    out.assert_code(1);
    for h in ["box-a", "box-b"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(h) && l.contains("enrolled"))
            .unwrap_or_else(|| panic!("{h}\n{out}"));
        for change in [
            "install 0.1.0",
            "write /etc/sloth/agent.toml",
            "write /etc/systemd/system/sloth-agent.service",
            "enroll (no certificate yet)",
            "certificate serial",
        ] {
            assert!(line.contains(change), "{h}: {change}\n{out}");
        }
    }
    assert!(
        out.stdout
            .contains("box-c        REFUSED  no systemd on this host (PID 1 is not systemd)"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("3 host(s): 2 changed, 0 unchanged, 1 failed"),
        "{out}"
    );
    assert_eq!(
        on(
            &bare,
            &key,
            "ls /usr/local/bin/sloth-agent /etc/sloth 2>&1 | head -1"
        ),
        "ls: cannot access '/usr/local/bin/sloth-agent': No such file or directory",
        "nothing written on the refused host"
    );

    // The agents serve: real systemd units, enabled, with the documented limits; the
    // key was made on the host; the spent token is gone.
    let out = fleet.run(
        "for _, h in ipairs(fleet.hosts('box-a,box-b')) do print('R', h, goroutine.await(goroutine.async(function() return host.name end, { delegate_to = h }))) end",
        &[],
    );
    assert_eq!(out.all("R").len(), 2, "{out}");
    for l in out.all("R") {
        assert_eq!(l[1..], ["true".to_string(), l[0].clone()], "{out}");
    }
    assert_eq!(
        on(&a, &key, "systemctl is-enabled sloth-agent; systemctl show -p LimitNOFILE -p Restart sloth-agent; stat -c '%a' /etc/sloth/agent.key /etc/sloth; test -e /etc/sloth/token || echo no-token"),
        "enabled\nRestart=on-failure\nLimitNOFILE=65536\n600\n700\nno-token"
    );

    // Second run: nothing changes, not even a file's time.
    let stamp = "stat -c '%Y' /usr/local/bin/sloth-agent /etc/sloth/agent.toml /etc/systemd/system/sloth-agent.service /etc/sloth/agent.crt; systemctl show -p MainPID --value sloth-agent";
    let before = on(&a, &key, stamp);
    let out = bootstrap(&fleet, "box-a,box-b");
    out.assert_code(0);
    for h in ["box-a", "box-b"] {
        assert!(
            out.stdout
                .contains(&format!("{h:<12} enrolled, version 0.1.0 (unchanged)")),
            "{out}"
        );
    }
    assert!(
        out.stdout
            .contains("2 host(s): 0 changed, 2 unchanged, 0 failed"),
        "{out}"
    );
    assert_eq!(on(&a, &key, stamp), before, "the second run touched box-a");

    // Another version on box-a: upgraded and restarted, its certificate kept.
    let serial = on(&a, &key, "md5sum < /etc/sloth/agent.crt");
    on(
        &a,
        &key,
        // (a running executable cannot be rewritten in place: a new file renamed over it)
        "cp /usr/local/bin/sloth-agent /tmp/real && printf '#!/bin/sh\\n[ \"$1\" = --version ] && echo sloth-agent 0.0.9 && exit 0\\nexec /tmp/real \"$@\"\\n' > /tmp/fake && chmod 755 /tmp/fake && mv -f /tmp/fake /usr/local/bin/sloth-agent",
    );
    let out = bootstrap(&fleet, "box-a,box-b");
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("box-a        enrolled, version 0.1.0 (changed: upgrade 0.0.9 to 0.1.0)"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("box-b        enrolled, version 0.1.0 (unchanged)"),
        "{out}"
    );
    assert_eq!(on(&a, &key, "md5sum < /etc/sloth/agent.crt"), serial);

    // systemd brings a killed agent back.
    let pid = on(&a, &key, "systemctl show -p MainPID --value sloth-agent");
    on(&a, &key, &format!("kill -9 {pid}"));
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let now = on(
            &a,
            &key,
            "systemctl show -p MainPID --value sloth-agent; systemctl is-active sloth-agent",
        );
        if now.ends_with("\nactive") && !now.starts_with(&pid) && !now.starts_with("0\n") {
            break;
        }
        assert!(Instant::now() < end, "not restarted: {now}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sloth_master(
        fleet.path(),
        &[
            "health",
            "box-a",
            "-i",
            fleet.inventory().to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
        ],
    );
    out.assert_code(0);
}

/// Copy `from` to `to` on the host.
fn put(host: &SshHost, key: &Path, from: &Path, to: &str) {
    let st = Command::new("scp")
        .args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .arg(from)
        .arg(format!("root@{}:{to}", host.ip))
        .status()
        .expect("scp");
    assert!(st.success(), "scp {} {to}", from.display());
}

/// scripts/install-agent.sh, as configuration management would run it: with systemd,
/// the same files as bootstrap (a later bootstrap finds nothing to change); without,
/// the documented fallback — the agent under another supervisor — enrolls too.
#[test]
fn install_agent_sh_writes_what_bootstrap_would() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let (key, keys) = ssh_key(fleet.path());
    let d = SshHost::boot(&keys, true);
    let bare = SshHost::boot(&keys, false);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for h in [&d, &bare] {
        on(h, &key, "mkdir -p /tmp/inst/scripts /tmp/inst/agent");
        put(
            h,
            &key,
            &repo.join("scripts/install-agent.sh"),
            "/tmp/inst/scripts/",
        );
        put(
            h,
            &key,
            &repo.join("agent/sloth-agent.service"),
            "/tmp/inst/agent/",
        );
        put(
            h,
            &key,
            &repo.join("agent/agent.toml.in"),
            "/tmp/inst/agent/",
        );
        put(h, &key, &agent_bin(), "/tmp/inst/sloth-agent");
    }
    fleet.add_host("box-d", &format!("{}:7447", d.ip), &["boxes"]);
    fleet.add_host("box-e", &format!("{}:7447", bare.ip), &["boxes"]);
    for name in ["box-d", "box-e"] {
        fleet.set_vars(name, &format!("{{ ssh_identity = \"{}\" }}", key.display()));
    }
    let token = |name: &str| {
        let out = sloth_master(
            fleet.path(),
            &[
                "token",
                "create",
                name,
                "--dir",
                fleet.certs.to_str().unwrap(),
            ],
        );
        out.assert_code(0);
        out.stdout.trim().to_string()
    };
    let run = |h: &SshHost, args: &str| {
        on(h, &key, &format!("sh /tmp/inst/scripts/install-agent.sh --binary /tmp/inst/sloth-agent {args} 2>&1; echo rc=$?"))
    };
    // The token on stdin (--token-file -): not in the process list.
    let out = on(
        &d,
        &key,
        &format!(
            "printf '%s' '{}' | sh /tmp/inst/scripts/install-agent.sh --binary /tmp/inst/sloth-agent --name box-d --token-file - 2>&1; echo rc=$?",
            token("box-d")
        ),
    );
    assert!(
        out.contains("service active")
            && out.contains("now on the master: sloth-master enroll box-d")
            && out.ends_with("rc=0"),
        "{out}"
    );
    let out = run(
        &bare,
        &format!("--name box-e --token {} --no-systemd", token("box-e")),
    );
    assert!(
        out.contains("run under your supervisor") && out.ends_with("rc=0"),
        "{out}"
    );
    // The fallback: the agent under another supervisor (here, a detached shell).
    on(&bare, &key, "setsid /usr/local/bin/sloth-agent --config /etc/sloth/agent.toml >/tmp/agent.out 2>/tmp/agent.err < /dev/null & sleep 0.3");
    let inv = fleet.inventory();
    let out = sloth_master(
        fleet.path(),
        &[
            "enroll",
            "boxes",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
        ],
    );
    out.assert_code(0);
    assert!(
        out.stdout.contains("box-d        enrolled")
            && out.stdout.contains("box-e        enrolled"),
        "{out}"
    );
    let out = sloth_master(
        fleet.path(),
        &[
            "health",
            "boxes",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
        ],
    );
    out.assert_code(0);
    // Running it again changes nothing; bootstrap agrees there is nothing to do.
    let out = run(&d, "--name box-d");
    assert!(
        out.contains("(changed: nothing); service active") && out.ends_with("rc=0"),
        "{out}"
    );
    let out = bootstrap(&fleet, "box-d");
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("box-d        enrolled, version 0.1.0 (unchanged)"),
        "{out}"
    );
    // Bad usage is refused before anything is written.
    let out = run(&d, "--name 'bad name!'");
    assert!(out.contains("bad name") && out.ends_with("rc=2"), "{out}");
}
