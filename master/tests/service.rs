//! `service`: the process backend against a real agent on this machine (no init
//! system here), and the systemd backend inside a throwaway container
//! (`common::container`) with systemd as PID 1.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::container::{self, Container};
use common::*;

/// `s` as a Lua long string.
fn lua(s: &str) -> String {
    assert!(!s.contains("]==]"));
    format!("[==[{s}]==]")
}

/// Run `body` as a task on `host`; the main script prints `R` and what
/// `goroutine.await` returned.
fn task(fleet: &TestFleet, host: &str, body: &str, args: &[&str]) -> Output {
    let script = format!(
        "local h = goroutine.async(function()\n{body}\nend, {{ delegate_to = \"{host}\", name = \"svc\" }})\n\
         print(\"R\", goroutine.await(h))\n"
    );
    let out = fleet.run(&script, args);
    println!("{out}");
    out
}

/// The values the task returned (the task must have succeeded).
fn values(out: &Output) -> Vec<String> {
    let r = out.one("R");
    assert_eq!(r[0], "true", "the task failed\n{out}");
    out.assert_code(0);
    r[1..].to_vec()
}

/// A task body: call `service.FUNC{OPTS}` and return changed, action, pid, active.
fn call(func: &str, opts: &str) -> String {
    format!(
        "local r = service.{func}{{{opts}}}\n\
         return tostring(r.changed), r.action, tostring(r.pid), tostring(r.active), tostring(r.enabled)"
    )
}

/// A task body: call `service.FUNC{OPTS}` in pcall and return the error.
fn error_of(func: &str, opts: &str) -> String {
    format!(
        "local ok, err = pcall(service.{func}, {{{opts}}})\n\
         if ok then return 'no error' end\n\
         return tostring(err)"
    )
}

/// The words of a process's command line.
fn argv_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    raw.split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).to_string())
        .collect()
}

/// Pids of live processes whose command line holds `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if process_alive(pid) && argv_of(pid).iter().any(|w| w.contains(marker)) {
            out.push(pid);
        }
    }
    out
}

/// Wait up to 3 s for `f`.
fn eventually(f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Kills what a test leaves running, also when it fails: every process whose
/// command line holds the marker (with its process group), and the test's own
/// children. Declared after the fleet, so it runs while the agent still reaps.
struct Cleanup {
    marker: String,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in pids_with(&self.marker) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pid_in(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

#[test]
fn process_backend_on_a_local_agent() {
    let mut fleet = TestFleet::start(&[("web-01", &["web"])]);
    let marker = format!("sloth-svc-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        marker: marker.clone(),
        children: Vec::new(),
    };
    // The pid file's directory does not exist yet: the first start makes it.
    let dir = fleet.path().join("svc");
    let pidfile = dir.join("run").join("app.pid");
    let log = fleet.path().join("app.log");
    let hup = fleet.path().join("hup");
    let script = format!(
        "trap \"echo hup >> {}\" HUP; echo started; while :; do sleep 0.1; done",
        hup.display()
    );
    let cmd1 = vec!["/bin/sh".to_string(), "-c".into(), script, marker.clone()];
    let mut cmd2 = cmd1.clone();
    cmd2.push("v2".into());
    let lua_list = |c: &[String]| {
        format!(
            "{{{}}}",
            c.iter().map(|w| lua(w)).collect::<Vec<_>>().join(", ")
        )
    };
    let base = format!(
        "name = \"sloth-t\", backend = \"process\", pidfile = {}, log = {}, stop_timeout = \"3s\"",
        lua(&pidfile.display().to_string()),
        lua(&log.display().to_string())
    );
    let with1 = format!("{base}, command = {}", lua_list(&cmd1));
    let with2 = format!("{base}, command = {}", lua_list(&cmd2));

    // Check mode: it would start; nothing starts, no pid file, no directory.
    let v = values(&task(
        &fleet,
        "web-01",
        &call("running", &with1),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would start"]);
    assert_eq!(v[3], "true", "active as it would be");
    assert!(!dir.exists(), "check mode made the pid file's directory");
    assert!(pids_with(&marker).is_empty(), "check mode started it");

    // Started: its pid in the pid file, its command line exactly the command.
    let v = values(&task(&fleet, "web-01", &call("running", &with1), &[]));
    assert_eq!(&v[..2], ["true", "started"]);
    let p1: u32 = v[2].parse().expect("a pid");
    assert_eq!(v[3], "true");
    assert!(process_alive(p1));
    assert_eq!(argv_of(p1), cmd1);
    assert_eq!(pid_in(&pidfile), Some(p1));
    assert!(
        eventually(|| std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started"))),
        "its output goes to the log"
    );

    // Again: unchanged, same process.
    let v = values(&task(&fleet, "web-01", &call("running", &with1), &[]));
    assert_eq!(&v[..3], ["false", "ok", &p1.to_string()]);

    // It outlives its agent, and the next agent finds it by its pid file.
    fleet.kill("web-01");
    assert!(process_alive(p1), "the service died with its agent");
    fleet.restart("web-01");
    let v = values(&task(&fleet, "web-01", &call("running", &with1), &[]));
    assert_eq!(&v[..3], ["false", "ok", &p1.to_string()]);

    // Check mode, one task: later calls see what earlier ones would have done.
    let body = format!(
        "local a = service.stopped{{{with1}}}\n\
         local b = service.stopped{{{with1}}}\n\
         local c = service.running{{{with1}}}\n\
         local d = service.running{{{with2}}}\n\
         local e = service.running{{{with2}}}\n\
         return a.action, b.action, c.action, d.action, e.action"
    );
    let v = values(&task(&fleet, "web-01", &body, &["--check"]));
    assert_eq!(
        v,
        [
            "would stop",
            "ok",
            "would start",
            "would restart: command changed",
            "ok"
        ]
    );
    assert_eq!(pid_in(&pidfile), Some(p1));

    // Check mode of stopped and restarted: reported, not done.
    let v = values(&task(
        &fleet,
        "web-01",
        &call("stopped", &with1),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would stop"]);
    let v = values(&task(
        &fleet,
        "web-01",
        &call("restarted", &with1),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would restart"]);
    let v = values(&task(
        &fleet,
        "web-01",
        &call("reloaded", &with1),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would reload"]);
    assert!(process_alive(p1));
    assert!(!hup.exists());

    // Reloaded: the signal reaches the service, which keeps running.
    let v = values(&task(&fleet, "web-01", &call("reloaded", &with1), &[]));
    assert_eq!(&v[..3], ["true", "reloaded", &p1.to_string()]);
    assert!(
        eventually(|| std::fs::read_to_string(&hup).is_ok_and(|h| h.contains("hup"))),
        "SIGHUP was not delivered"
    );
    assert!(process_alive(p1));

    // A new command line: restarted.
    let v = values(&task(&fleet, "web-01", &call("running", &with2), &[]));
    assert_eq!(&v[..2], ["true", "restarted: command changed"]);
    let p2: u32 = v[2].parse().expect("a pid");
    assert_ne!(p2, p1);
    assert!(!process_alive(p1), "the old process still runs");
    assert_eq!(argv_of(p2), cmd2);
    assert_eq!(pid_in(&pidfile), Some(p2));

    // Restarted: always, a new process.
    let v = values(&task(&fleet, "web-01", &call("restarted", &with2), &[]));
    assert_eq!(&v[..2], ["true", "restarted"]);
    let p3: u32 = v[2].parse().expect("a pid");
    assert_ne!(p3, p2);
    assert!(!process_alive(p2));

    // Stopped, found by its pid file without the command: gone and reaped (no zombie
    // of the agent that started it), the pid file removed. Then unchanged.
    let v = values(&task(&fleet, "web-01", &call("stopped", &base), &[]));
    assert_eq!(&v[..4], ["true", "stopped", "nil", "false"]);
    assert!(!process_alive(p3));
    assert!(
        eventually(|| !Path::new(&format!("/proc/{p3}")).exists()),
        "the stopped service was left a zombie"
    );
    assert!(!pidfile.exists());
    assert!(
        !dir.join("run/app.pid.lock").exists(),
        "the lock file stayed"
    );
    let v = values(&task(&fleet, "web-01", &call("stopped", &base), &[]));
    assert_eq!(&v[..2], ["false", "ok"]);
    assert!(pids_with(&marker).is_empty(), "{:?}", pids_with(&marker));

    // Stale pid files: a dead pid, and the pid of another program (left alone).
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();
    let v = values(&task(&fleet, "web-01", &call("running", &with1), &[]));
    assert_eq!(v[0], "true");
    assert!(
        v[1].starts_with(&format!(
            "started (stale pid file: pid {dead_pid} is not running"
        )),
        "{v:?}"
    );
    let p4: u32 = v[2].parse().expect("a pid");
    assert_eq!(pid_in(&pidfile), Some(p4));
    values(&task(&fleet, "web-01", &call("stopped", &with1), &[]));
    assert!(!process_alive(p4));

    let other = Command::new("sleep").arg("300").spawn().unwrap();
    let other_pid = other.id();
    cleanup.children.push(other);
    std::fs::write(&pidfile, format!("{other_pid}\n")).unwrap();
    let v = values(&task(&fleet, "web-01", &call("stopped", &base), &[]));
    assert_eq!(v[0], "false", "{v:?}");
    assert!(v[1].contains("stale pid file"), "{v:?}");
    assert!(process_alive(other_pid), "stopped killed another program");
    std::fs::write(&pidfile, format!("{other_pid}\n")).unwrap();
    let v = values(&task(&fleet, "web-01", &call("running", &with1), &[]));
    assert!(
        v[1].starts_with(&format!(
            "started (stale pid file: pid {other_pid} is another program"
        )),
        "{v:?}"
    );
    let p5: u32 = v[2].parse().expect("a pid");
    assert!(process_alive(other_pid), "running killed another program");
    assert_eq!(pid_in(&pidfile), Some(p5));
    let v = values(&task(&fleet, "web-01", &call("stopped", &with1), &[]));
    assert_eq!(&v[..2], ["true", "stopped"]);
    assert!(!process_alive(p5) && process_alive(other_pid));

    // Enabling needs systemd; disabled holds already.
    let e = values(&task(
        &fleet,
        "web-01",
        &error_of("running", &format!("{with1}, enabled = true")),
        &[],
    ));
    assert!(e[0].contains("enabling at boot needs systemd"), "{e:?}");
    let e = values(&task(
        &fleet,
        "web-01",
        &error_of("enabled", "name = \"sloth-t\", backend = \"process\""),
        &[],
    ));
    assert!(e[0].contains("enabling at boot needs systemd"), "{e:?}");
    let v = values(&task(
        &fleet,
        "web-01",
        &call("disabled", "name = \"sloth-t\", backend = \"process\""),
        &[],
    ));
    assert_eq!(v[0], "false");
    assert!(pids_with(&marker).is_empty(), "{:?}", pids_with(&marker));

    // Mistakes name the option (or the cause) before anything runs.
    let pf = format!("pidfile = {}", lua(&pidfile.display().to_string()));
    let cases: Vec<(&str, String, &str)> = vec![
        ("running", format!("name = \"x\", backend = \"process\", {pf}, command = \"sleep 300\""), "option 'command' must be an array of words"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, command = {{}}"), "option 'command' must not be empty"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, command = {{\"sleep\", x = 1}}"), "option 'command' must be an array"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}"), "option 'command' is required"),
        ("running", "name = \"x\", backend = \"process\", pidfile = \"run/x.pid\", command = {\"sleep\", \"1\"}".into(), "option 'pidfile' must be an absolute path"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, log = \"x.log\", command = {{\"sleep\", \"1\"}}"), "option 'log' must be an absolute path"),
        ("reloaded", format!("name = \"x\", backend = \"process\", {pf}, reload_signal = \"HUPP\""), "option 'reload_signal' is not a signal name: 'HUPP'"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, stop_timeout = \"soon\", command = {{\"sleep\", \"1\"}}"), "option 'stop_timeout'"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, comand = {{\"sleep\", \"1\"}}"), "unknown option 'comand' (did you mean 'command'?)"),
        ("running", "name = \"x\", backend = \"systemd\", command = {\"sleep\", \"1\"}".into(), "option 'command' is for the process backend"),
        ("running", "name = \"../x\", backend = \"process\", command = {\"sleep\", \"1\"}".into(), "option 'name' is not a valid unit name"),
        ("running", format!("name = \"x\", backend = \"procss\", {pf}"), "option 'backend' must be one of systemd, process"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, enabled = \"yes\", command = {{\"sleep\", \"1\"}}"), "option 'enabled' must be a boolean"),
        ("running", format!("name = \"x\", backend = \"process\", {pf}, command = {{\"/nonexistent/sloth-prog\"}}"), "cannot start /nonexistent/sloth-prog"),
        (
            "running",
            format!(
                "name = \"x\", backend = \"process\", {pf}, log = {}, command = {{\"/bin/sh\", \"-c\", \"echo oops-{marker} >&2; exit 3\"}}",
                lua(&fleet.path().join("bad.log").display().to_string())
            ),
            "exited at once (exit code 3",
        ),
    ];
    for (func, opts, want) in &cases {
        let e = values(&task(&fleet, "web-01", &error_of(func, opts), &[]));
        assert!(
            e[0].contains(want),
            "service.{func}{{{opts}}}: expected {want:?} in {e:?}"
        );
    }
    let e = values(&task(
        &fleet,
        "web-01",
        &error_of(cases[14].0, &cases[14].1),
        &[],
    ));
    assert!(e[0].contains(&format!("log: oops-{marker}")), "{e:?}");
    assert!(!pidfile.exists(), "a failed start left its pid file");
    drop(cleanup);
}

#[test]
fn agents_sharing_a_pid_file_start_one_process() {
    let fleet = TestFleet::start(&[("a-1", &["a"]), ("a-2", &["a"]), ("a-3", &["a"])]);
    let marker = format!("sloth-svc-shared-{}", std::process::id());
    let _cleanup = Cleanup {
        marker: marker.clone(),
        children: Vec::new(),
    };
    let pidfile = fleet.path().join("shared.pid");
    let opts = format!(
        "name = \"shared\", backend = \"process\", pidfile = {}, command = {{\"/bin/sh\", \"-c\", \"while :; do sleep 0.1; done\", {}}}",
        lua(&pidfile.display().to_string()),
        lua(&marker)
    );
    let script = |func: &str| {
        format!(
            "local hs = {{}}\n\
             for _, h in ipairs(fleet.hosts(\"a\")) do\n\
               hs[#hs + 1] = goroutine.async(function()\n\
                 local r = service.{func}{{{opts}}}\n\
                 return r.action\n\
               end, {{ delegate_to = h }})\n\
             end\n\
             for _, r in ipairs(goroutine.await_all(hs)) do print(\"R\", r.success, r.values[1] or r.error) end\n"
        )
    };
    let actions = |out: &Output| -> Vec<String> {
        out.assert_code(0);
        let mut a: Vec<String> = out.all("R").into_iter().map(|r| r.join(" ")).collect();
        a.sort();
        a
    };
    let out = fleet.run(&script("running"), &[]);
    println!("{out}");
    assert_eq!(actions(&out), ["true ok", "true ok", "true started"]);
    assert_eq!(pids_with(&marker).len(), 1, "{:?}", pids_with(&marker));
    let out = fleet.run(&script("stopped"), &[]);
    println!("{out}");
    assert_eq!(actions(&out), ["true ok", "true ok", "true stopped"]);
    assert!(pids_with(&marker).is_empty(), "{:?}", pids_with(&marker));
}

/// The test unit: a shell that notes each SIGHUP, reloaded by systemd with one.
const UNIT: &str = r#"[Unit]
Description=sloth service test

[Service]
ExecStart=/bin/sh -c 'trap "echo hup >> /run/sloth-svc-hup" HUP; while :; do sleep 0.1; done'
ExecReload=/bin/kill -HUP $MAINPID

[Install]
WantedBy=multi-user.target
"#;

fn sh(c: &Container, script: &str) -> String {
    let out = c.sh(script);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn systemd_backend_in_a_container() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let c = Container::boot(&mut fleet, "box", &[]);
    let unit = format!("name = \"sloth-svc\", content = {}", lua(UNIT));

    // The unit file: written and daemon-reload; then unchanged, no daemon-reload.
    let v = values(&task(&fleet, "box", &call("unit", &unit), &["--check"]));
    assert_eq!(&v[..2], ["true", "would write, daemon-reload"]);
    assert_eq!(
        sh(
            &c,
            "test -e /etc/systemd/system/sloth-svc.service && echo there"
        ),
        ""
    );
    let v = values(&task(&fleet, "box", &call("unit", &unit), &[]));
    assert_eq!(v[0], "true");
    assert!(v[1].contains("daemon-reload"), "{v:?}");
    assert_eq!(sh(&c, "cat /etc/systemd/system/sloth-svc.service"), UNIT);
    let v = values(&task(&fleet, "box", &call("unit", &unit), &[]));
    assert_eq!(&v[..2], ["false", "ok"]);

    // Check mode: would start and enable; nothing happens.
    let svc = "name = \"sloth-svc\", enabled = true";
    let v = values(&task(&fleet, "box", &call("running", svc), &["--check"]));
    assert_eq!(&v[..2], ["true", "would start, enable"]);
    assert_eq!(
        sh(
            &c,
            "systemctl is-active sloth-svc; systemctl is-enabled sloth-svc"
        ),
        "inactive\ndisabled\n"
    );

    // Running and enabled; then unchanged.
    let v = values(&task(&fleet, "box", &call("running", svc), &[]));
    assert_eq!(&v[..2], ["true", "started, enabled"]);
    assert_eq!((v[3].as_str(), v[4].as_str()), ("true", "true"));
    assert_eq!(
        sh(
            &c,
            "systemctl is-active sloth-svc; systemctl is-enabled sloth-svc"
        ),
        "active\nenabled\n"
    );
    let v = values(&task(&fleet, "box", &call("running", svc), &[]));
    assert_eq!(&v[..2], ["false", "ok"]);

    // Check mode of stopped: would stop, still active.
    let v = values(&task(
        &fleet,
        "box",
        &call("stopped", "name = \"sloth-svc\""),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would stop"]);
    let v = values(&task(
        &fleet,
        "box",
        &call("restarted", "name = \"sloth-svc\""),
        &["--check"],
    ));
    assert_eq!(&v[..2], ["true", "would restart"]);
    assert_eq!(sh(&c, "systemctl is-active sloth-svc"), "active\n");

    // Restarted: a new main process.
    let main_pid = || {
        sh(&c, "systemctl show -p MainPID --value sloth-svc")
            .trim()
            .to_string()
    };
    let before = main_pid();
    let v = values(&task(
        &fleet,
        "box",
        &call("restarted", "name = \"sloth-svc\""),
        &[],
    ));
    assert_eq!(&v[..2], ["true", "restarted"]);
    let after = main_pid();
    assert!(
        before != after && after != "0",
        "MainPID {before} -> {after}"
    );

    // Reloaded: ExecReload's SIGHUP reaches it, same main process.
    let v = values(&task(
        &fleet,
        "box",
        &call("reloaded", "name = \"sloth-svc\""),
        &[],
    ));
    assert_eq!(&v[..2], ["true", "reloaded"]);
    assert!(
        eventually(|| sh(&c, "cat /run/sloth-svc-hup 2>/dev/null").contains("hup")),
        "the reload did not reach the service"
    );
    assert_eq!(main_pid(), after);

    // Stopped and disabled; then unchanged.
    let off = "name = \"sloth-svc\", enabled = false";
    let v = values(&task(&fleet, "box", &call("stopped", off), &[]));
    assert_eq!(&v[..2], ["true", "stopped, disabled"]);
    assert_eq!((v[3].as_str(), v[4].as_str()), ("false", "false"));
    assert_eq!(
        sh(
            &c,
            "systemctl is-active sloth-svc; systemctl is-enabled sloth-svc"
        ),
        "inactive\ndisabled\n"
    );
    let v = values(&task(&fleet, "box", &call("stopped", off), &[]));
    assert_eq!(&v[..2], ["false", "ok"]);

    // enabled / disabled alone.
    let v = values(&task(
        &fleet,
        "box",
        &call("enabled", "name = \"sloth-svc\""),
        &[],
    ));
    assert_eq!(&v[..2], ["true", "enabled"]);
    let v = values(&task(
        &fleet,
        "box",
        &call("disabled", "name = \"sloth-svc\""),
        &[],
    ));
    assert_eq!(&v[..2], ["true", "disabled"]);
    assert_eq!(
        sh(
            &c,
            "systemctl is-active sloth-svc; systemctl is-enabled sloth-svc"
        ),
        "inactive\ndisabled\n"
    );

    // A unit systemd does not know: an error naming it (check mode: would start).
    let e = values(&task(
        &fleet,
        "box",
        &error_of("running", "name = \"sloth-no-such-unit\""),
        &[],
    ));
    assert!(
        e[0].contains("service.running sloth-no-such-unit: no such unit"),
        "{e:?}"
    );
    // Check mode too, when nothing earlier in the task would bring the unit.
    let e = values(&task(
        &fleet,
        "box",
        &error_of("running", "name = \"sloth-no-such-unit\""),
        &["--check"],
    ));
    assert!(
        e[0].contains("service.running sloth-no-such-unit: no such unit"),
        "{e:?}"
    );

    // Check mode of a new unit and its service in one task.
    let new_unit = format!("name = \"sloth-new\", content = {}", lua(UNIT));
    // Later calls of the task see what earlier ones would have done.
    let body = format!(
        "local u = service.unit{{{new_unit}}}\n\
         local r = service.running{{name = \"sloth-new\", enabled = true}}\n\
         local again = service.running{{name = \"sloth-new\", enabled = true}}\n\
         local re = service.restarted{{name = \"sloth-new\"}}\n\
         local s = service.stopped{{name = \"sloth-new.service\", enabled = false}}\n\
         local s2 = service.stopped{{name = \"sloth-new\"}}\n\
         return u.action, r.action, again.action, re.action, s.action, s2.action"
    );
    let v = values(&task(&fleet, "box", &body, &["--check"]));
    assert_eq!(
        v,
        [
            "would write, daemon-reload",
            "would start, enable (the unit does not exist yet)",
            "ok (the unit does not exist yet)",
            "would restart (the unit does not exist yet)",
            "would stop, disable (the unit does not exist yet)",
            "ok (the unit does not exist yet)",
        ]
    );
    assert_eq!(
        sh(
            &c,
            "test -e /etc/systemd/system/sloth-new.service && echo there"
        ),
        ""
    );

    // A service whose program fails: the error says so, with the journal's words.
    let bad = "[Service]\nExecStart=/bin/sh -c 'echo boom-sloth >&2; exit 3'\n";
    let body = format!(
        "service.unit{{name = \"sloth-bad\", content = {}}}\n{}",
        lua(bad),
        error_of("running", "name = \"sloth-bad\"")
    );
    let e = values(&task(&fleet, "box", &body, &[]));
    assert!(e[0].contains("service.running sloth-bad: "), "{e:?}");
    assert!(e[0].contains("failed"), "{e:?}");

    // Needs systemd's unit names.
    let e = values(&task(
        &fleet,
        "box",
        &error_of("unit", "name = \"a/b\", content = \"\""),
        &[],
    ));
    assert!(
        e[0].contains("option 'name' is not a valid unit name"),
        "{e:?}"
    );
    drop(c);
}
