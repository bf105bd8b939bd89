//! A run under duress. Ctrl-C (or SIGTERM) stops everything it started, at once: the
//! script goes no further, the commands of the master's own script and of its local
//! tasks are killed, agents stop the remote tasks because the master closes its
//! connections, and a `--local-fleet`'s agents kill their tasks' commands before they
//! go. A stdout nobody reads holds back only the tasks that print. Real agents, real
//! commands; the assertions are on processes, files and results, not on times. So does an
//! `--events` FIFO nobody reads.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{kill_process, Pid, Signal};

/// Pids of the processes whose command line (arguments joined by spaces) contains
/// `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| cmdline(*pid).contains(marker))
        .collect()
}

/// Wait (at most `limit`) until `cond` holds; whether it did.
fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn interrupt(pid: u32) {
    let pid = Pid::from_raw(pid as i32).expect("a pid");
    kill_process(pid, Signal::INT).expect("sending SIGINT to the master");
}

fn files_in(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| n.to_string())
        .collect()
}

#[test]
fn an_interrupt_stops_the_script_its_commands_and_the_remote_tasks() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().display().to_string();
    // Three commands that would each leave a file 4 s later, and a step after them.
    let script = format!(
        r#"
local remote = goroutine.async(function() exec.run("sleep 4.1031; touch {d}/remote") end, {{ delegate_to = "web-01" }})
local here = goroutine.async(function() exec.run("sleep 4.1032; touch {d}/local") end)
print("READY")
exec.run("sleep 4.1033; touch {d}/main")
exec.run("touch {d}/after")
print("AFTER")
"#
    );
    let mut run = fleet.spawn_run(&script, &[]);
    assert!(run.wait_for("READY", Duration::from_secs(30)).is_some());
    // Each command is a shell and its `sleep`: all three running.
    let sleeps = || processes_with("sleep 4.103").len();
    assert!(
        eventually(Duration::from_secs(20), || sleeps() >= 6),
        "the three commands never all ran: {:?}",
        processes_with("sleep 4.103")
    );
    let started = Instant::now();
    interrupt(run.pid());
    let out = run.finish(Duration::from_secs(20));
    out.assert_code(130);
    assert!(out.stderr.contains("interrupted"), "{out}");
    assert!(!out.stdout.contains("AFTER"), "the script went on: {out}");
    // Every command is gone well before it would have finished: the master's own (the
    // script's and the local task's) killed by the master, the remote one by the
    // agent when the master closed its connection.
    assert!(
        eventually(Duration::from_secs(2), || sleeps() == 0),
        "still running after the master exited: {:?}",
        processes_with("sleep 4.103")
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{out}");
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(started.elapsed()) + Duration::from_millis(700),
    );
    let left = files_in(fleet.path(), &["remote", "local", "main", "after"]);
    assert!(
        left.is_empty(),
        "work went on after the interrupt: {left:?}\n{out}"
    );
    // The agent knows why its task stopped: the master closed the connection.
    let log = fleet.agent_log("web-01");
    assert!(log.contains("master interrupted"), "{log}");
}

/// A script cannot catch its interrupt: `pcall` around the call that was stopped
/// raises the stop again, so nothing after it runs (here: no file is written).
#[test]
fn an_interrupt_cannot_be_caught_by_the_script() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().display().to_string();
    let script = format!(
        r#"
print("READY")
for i = 1, 5 do
  local ok, err = pcall(goroutine.sleep, "20s")
  local f = io.open("{d}/after-" .. i, "w"); f:write(tostring(err)); f:close()
  xpcall(function() goroutine.sleep("20s") end, function(e) return e end)
  local g = io.open("{d}/xafter-" .. i, "w"); g:write("x"); g:close()
end
"#
    );
    let mut run = fleet.spawn_run(&script, &[]);
    assert!(run.wait_for("READY", Duration::from_secs(30)).is_some());
    std::thread::sleep(Duration::from_millis(300));
    interrupt(run.pid());
    let out = run.finish(Duration::from_secs(20));
    out.assert_code(130);
    let left = files_in(fleet.path(), &["after-1", "xafter-1"]);
    assert!(
        left.is_empty(),
        "the script went on after its interrupt: {left:?}\n{out}"
    );
}

#[test]
fn an_interrupt_leaves_no_command_of_a_local_fleet_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(
        dir.path().join("lf.sloth"),
        format!(
            r#"
fleet.run("all", function() exec.run("sleep 4.2041; touch {d}/" .. host.name) end)
exec.run("touch {d}/after")
"#
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(master_bin());
    cmd.current_dir(dir.path())
        .args(["run", "lf.sloth", "--local-fleet", "2"]);
    let run = Running::spawn(cmd);
    let sleeps = || processes_with("sleep 4.2041").len();
    assert!(
        eventually(Duration::from_secs(20), || sleeps() >= 4),
        "the commands never ran on both agents: {:?}",
        processes_with("sleep 4.2041")
    );
    let started = Instant::now();
    interrupt(run.pid());
    let out = run.finish(Duration::from_secs(20));
    out.assert_code(130);
    assert!(
        eventually(Duration::from_secs(2), || sleeps() == 0),
        "the local agents' commands outlived them: {:?}",
        processes_with("sleep 4.2041")
    );
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(started.elapsed()) + Duration::from_millis(700),
    );
    let left = files_in(dir.path(), &["local-01", "local-02", "after"]);
    assert!(
        left.is_empty(),
        "work went on after the interrupt: {left:?}\n{out}"
    );
}

/// Ctrl-C while a big local fleet is still being made (certificates issued, agents
/// starting) leaves nothing: no agent, no certificate directory (private keys
/// included). And a local fleet is never bigger than the machine should start.
///
/// The moments are what the test sees happen, not fixed delays: on a fast machine
/// 300 agents are up within 1.5 s, and an interrupt after the run has ended tests
/// nothing.
#[test]
fn an_interrupt_while_a_local_fleet_starts_leaves_nothing() {
    enum When {
        /// While the certificates are being issued.
        After(Duration),
        /// Once this many agents are running.
        Agents(usize),
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ok.sloth"), "print('ran')").unwrap();
    let marker = tmp.path().display().to_string();
    for when in [
        When::After(Duration::from_millis(150)),
        When::Agents(1),
        When::Agents(100),
    ] {
        let mut cmd = std::process::Command::new(master_bin());
        cmd.current_dir(tmp.path()).env("TMPDIR", tmp.path()).args([
            "run",
            "ok.sloth",
            "--no-history",
            "--local-fleet",
            "300",
        ]);
        let run = Running::spawn(cmd);
        let moment = match when {
            When::After(delay) => {
                std::thread::sleep(delay);
                format!("after {} ms", delay.as_millis())
            }
            When::Agents(n) => {
                let up = eventually(Duration::from_secs(30), || {
                    processes_with(&marker).len() >= n
                });
                assert!(up, "{n} agent(s) never ran");
                format!("with {n} agent(s) running")
            }
        };
        interrupt(run.pid());
        let out = run.finish(Duration::from_secs(30));
        assert!(matches!(out.code, 130 | 2), "{moment}: {out}");
        assert!(
            eventually(Duration::from_secs(3), || processes_with(&marker)
                .is_empty()),
            "agents left {moment}: {:?}",
            processes_with(&marker)
        );
        let left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("sloth-fleet-"))
            .collect();
        assert!(left.is_empty(), "{moment}: {left:?}\n{out}");
    }
    let out = sloth_master(tmp.path(), &["run", "ok.sloth", "--local-fleet", "100000"]);
    out.assert_code(2);
    assert!(out.stderr.contains("at most 1000"), "{out}");
}

/// A chatty task on web-01 (3,000 lines of 100 bytes) and a quiet one on web-02 that
/// sleeps 4.5 s; the script prints both results on its `RESULT` line.
const STALL_SCRIPT: &str = r#"
local chatty = goroutine.async(function()
  for i = 1, 3000 do print(string.rep("x", 100) .. " " .. i) end
  return "printed"
end, { delegate_to = "web-01" })
local quiet = goroutine.async(function()
  goroutine.sleep(4500)
  return "slept"
end, { delegate_to = "web-02" })
local q_ok, q = goroutine.await(quiet)
local c_ok, c = goroutine.await(chatty)
print("RESULT", tostring(q_ok), tostring(q), tostring(c_ok), tostring(c))
"#;

/// `run` of [`STALL_SCRIPT`] on a two-agent fleet, stdout and stderr piped.
fn stall_run(fleet: &TestFleet, extra: &[&std::ffi::OsStr]) -> std::process::Child {
    let script = fleet.path().join("stall.sloth");
    std::fs::write(&script, STALL_SCRIPT).unwrap();
    let mut cmd = std::process::Command::new(master_bin());
    cmd.current_dir(fleet.path())
        .env("XDG_CONFIG_HOME", fleet.path().join("no-config"))
        .env("SLOTH_STATE_DIR", test_state_dir())
        .args(["run", script.to_str().unwrap(), "-i"])
        .arg(fleet.inventory())
        .arg("--certs")
        .arg(&fleet.certs)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

/// Everything a pipe brings until its end, on a thread of its own.
fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Both tasks of [`STALL_SCRIPT`] succeeded (the quiet one while the other was held
/// back), and the run exited 0.
fn assert_stall_result(fleet: &TestFleet, stdout: &str, stderr: &str, code: Option<i32>) {
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or("");
    assert_eq!(
        result,
        "RESULT\ttrue\tslept\ttrue\tprinted",
        "{stderr}\n{}",
        fleet.agent_log("web-02")
    );
    assert_eq!(code, Some(0), "{stderr}");
}

/// A master whose stdout nobody reads for a while (`sloth-master run … | less`, the
/// pager paused) holds back only the tasks that print: its connections stay alive,
/// and a task on another agent that prints nothing finishes meanwhile. Everything
/// printed arrives once the reader comes back.
#[test]
fn a_stalled_stdout_holds_back_the_printing_tasks_only() {
    let fleet = TestFleet::web(2);
    let mut child = stall_run(&fleet, &[]);
    let stderr = read_all(child.stderr.take().unwrap());
    // Nobody reads stdout for 6 s: 300 KB of lines fill the pipe long before.
    std::thread::sleep(Duration::from_secs(6));
    let stdout = read_all(child.stdout.take().unwrap()).join().unwrap();
    let status = child.wait().unwrap();
    assert_stall_result(&fleet, &stdout, &stderr.join().unwrap(), status.code());
    assert_eq!(stdout.matches(&"x".repeat(100)).count(), 3000);
}

/// The same with `--events` into a FIFO whose reader pauses (a dashboard that
/// stalled): the events are written by a thread of their own, so the connections stay
/// alive and the quiet task finishes meanwhile; every event arrives once the reader
/// reads again, in order, the run's end last.
#[test]
fn a_stalled_events_reader_holds_back_the_printing_tasks_only() {
    use std::io::Read;
    let fleet = TestFleet::web(2);
    let fifo = fleet.path().join("events.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let mut child = stall_run(&fleet, &["--events".as_ref(), fifo.as_os_str()]);
    // Stdout and stderr are read all along; only the events stall.
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    // Opening the read end waits for the master to open the write end.
    let mut events = std::fs::File::open(&fifo).unwrap();
    // Nobody reads the events for 6 s: 3,000 log events fill the FIFO long before.
    std::thread::sleep(Duration::from_secs(6));
    let mut text = String::new();
    events.read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert_stall_result(&fleet, &stdout, &stderr, status.code());
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let logged: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "log" && e["host"] == "web-01")
        .filter_map(|e| e["line"].as_str()?.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        logged,
        (1..=3000).collect::<Vec<u64>>(),
        "log events lost or out of order"
    );
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(serde_json::json!("run_finished")),
        "{text}"
    );
}
