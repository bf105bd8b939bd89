//! The task modules against the real system: real child processes, real files, a real
//! HTTP server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Value as LV};
use parking_lot::Mutex;
use sloth_lua::cancel::CancelToken;
use sloth_lua::context::{TaskContext, TaskIo};
use sloth_lua::executor;
use sloth_lua::shared_obj::{NoBackend, SharedBackend};
use sloth_modules::EXECUTOR;
use sloth_proto::protocol::LogLevel;

/// Records every log line with the moment it arrived.
#[derive(Default)]
struct Sink {
    lines: Mutex<Vec<(LogLevel, String, Instant)>>,
}

impl TaskIo for Sink {
    fn log(&self, level: LogLevel, line: &str) {
        self.lines
            .lock()
            .push((level, line.to_string(), Instant::now()));
    }
    fn change(&self, _: sloth_proto::change::Change) {}
    fn backend(&self) -> Arc<dyn SharedBackend> {
        Arc::new(NoBackend)
    }
}

fn state_with(cancel: CancelToken) -> (sloth_lua::capture::TaskState, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let ctx = TaskContext {
        host: "test".into(),
        task_name: "t".into(),
        io: sink.clone(),
        cancel,
        mode: Default::default(),
        orchestrator: false,
    };
    (EXECUTOR.new_state(&ctx).unwrap(), sink)
}

fn state() -> sloth_lua::capture::TaskState {
    state_with(CancelToken::default()).0
}

fn eval<T: mlua::FromLuaMulti>(lua: &Lua, src: &str) -> T {
    match lua.load(src).set_name("@test").eval::<T>() {
        Ok(v) => v,
        Err(e) => panic!("{}", executor::error_text(&e)),
    }
}

/// Pids of live (non-zombie) processes whose command line starts with `marker`.
fn procs_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.starts_with(marker) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if !matches!(state, Some('Z') | Some('X') | None) {
            found.push(pid);
        }
    }
    found
}

/// Kills a process this test started (and its group, when it leads one) when the
/// test ends, passed or not.
struct KillOnDrop(i64);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use rustix::process::{getpgid, kill_process, kill_process_group, Pid, Signal};
        let pid = i32::try_from(self.0).ok().filter(|p| *p > 1);
        if let Some(p) = pid.and_then(Pid::from_raw) {
            if getpgid(Some(p)).is_ok_and(|g| g == p) {
                let _ = kill_process_group(p, Signal::KILL);
            }
            let _ = kill_process(p, Signal::KILL);
        }
    }
}

/// Wait (bounded) until no live process carries `marker`.
fn assert_gone(marker: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = procs_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "processes with '{marker}' still alive: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_run_captures_output_and_exit_code() {
    let lua = state();
    let (out, err, code, success, dur, timed_out): (String, String, i64, bool, i64, bool) = eval(
        &lua,
        r#"local r = exec.run("echo hi; echo oops >&2; exit 3")
           return r.stdout, r.stderr, r.code, r.success, r.duration_ms, r.timed_out"#,
    );
    assert_eq!(out, "hi\n");
    assert_eq!(err, "oops\n");
    assert_eq!(code, 3);
    assert!(!success);
    assert!((0..5000).contains(&dur));
    assert!(!timed_out);

    let (code, success): (i64, bool) = eval(
        &lua,
        r#"local r = exec.run("true") return r.code, r.success"#,
    );
    assert_eq!((code, success), (0, true));
    let (code, out): (i64, String) = eval(
        &lua,
        r#"local r = exec.run("no-such-command-sloth-xyz") return r.code, r.stderr"#,
    );
    assert_eq!(code, 127, "command not found is data: {out}");
    assert!(out.contains("not found"), "the shell's own message: {out}");
}

/// A plain command runs without a shell, and behaves as the shell would run it; a
/// command with shell syntax or a builtin still goes through `/bin/sh`.
#[test]
fn exec_run_plain_commands_skip_the_shell_only() {
    use std::os::unix::fs::PermissionsExt;
    // A script without a #! line cannot be exec'd directly; the shell must run it.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("no-shebang");
    std::fs::write(&script, "exit 7\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let lua = state();
    lua.globals()
        .set("script", script.to_string_lossy().to_string())
        .expect("set global");
    let (direct, piped, builtin, code): (String, String, String, i64) = eval(
        &lua,
        r#"local a = exec.run("cat /proc/self/stat").stdout
           local b = exec.run("cat /proc/self/stat | cat").stdout
           local c = exec.run("cd / && pwd").stdout
           local d = exec.run(script).code
           return a, b, c, d"#,
    );
    // Field 4 of /proc/self/stat is the parent pid; the command follows ") ".
    let ppid = |stat: &str| -> u32 {
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        after
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        ppid(&direct),
        std::process::id(),
        "plain: no shell in between: {direct}"
    );
    assert_ne!(
        ppid(&piped),
        std::process::id(),
        "a pipe runs under the shell: {piped}"
    );
    assert_eq!(builtin, "/\n");
    assert_eq!(code, 7, "a script without #! still runs, through the shell");
}

#[test]
fn json_encode_keeps_every_key() {
    let lua = state();
    let (mixed, sparse, seq, empty, arr, nested, null): (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    ) = eval(
        &lua,
        r#"return json.encode({1, 2, x = 3}), json.encode({[1] = "a", [3] = "c"}),
                  json.encode({10, 20, 30}), json.encode({}), json.encode(json.decode("[]")),
                  json.encode({a = {b = {1.5, true}}}), json.encode({v = json.null})"#,
    );
    assert_eq!(mixed, r#"{"1":1,"2":2,"x":3}"#);
    assert_eq!(sparse, r#"{"1":"a","3":"c"}"#);
    assert_eq!(seq, "[10,20,30]");
    assert_eq!(empty, "{}");
    assert_eq!(arr, "[]");
    assert_eq!(nested, r#"{"a":{"b":[1.5,true]}}"#);
    assert_eq!(null, r#"{"v":null}"#);
    let errs: (String, String, String) = eval(
        &lua,
        r#"local t = {} t.self = t
           local function err(v) local ok, e = pcall(json.encode, v) return e end
           return err({f = print}), err(t), err({[true] = 1})"#,
    );
    assert_eq!(errs.0, "json.encode: cannot serialize <function>");
    assert!(
        errs.1
            .starts_with("json.encode: tables nested more than 128 deep"),
        "{}",
        errs.1
    );
    assert_eq!(
        errs.2,
        "json.encode: a table key of type boolean cannot be a JSON object key"
    );
    let (holes, clash): (String, String) = eval(
        &lua,
        r#"local t = json.decode("[1,2,3]") t[2] = nil
           local ok, e = pcall(json.encode, {[1] = "a", ["1"] = "b"})
           return json.encode(t), e"#,
    );
    assert_eq!(holes, "[1,null,3]");
    assert!(clash.contains(r#"both become the JSON key "1""#), "{clash}");
}

#[test]
fn exec_run_returns_when_the_child_exits_not_at_the_next_poll() {
    let lua = state();
    // The quickest of five runs of `true`, measured around the call: the wait ends
    // when the child exits (it used to end at the next 10 ms poll).
    let best: f64 = eval(
        &lua,
        r#"local best = math.huge
           for _ = 1, 5 do
             local t0 = sys.monotonic_ms()
             local r = exec.run({"true"})
             assert(r.success)
             best = math.min(best, sys.monotonic_ms() - t0)
           end
           return best"#,
    );
    assert!(best < 5.0, "exec.run of `true` took at best {best:.2} ms");
}

#[test]
fn exec_run_argv_cwd_env_stdin_shell() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    lua.globals()
        .set("DIR", dir.path().to_str().unwrap())
        .unwrap();
    let (a, b, c, d, e): (String, String, String, String, String) = eval(
        &lua,
        r#"local a = exec.run({"printf", "%s|", "a b", "c"}).stdout
           local b = exec.run("pwd", {cwd = DIR}).stdout
           local c = exec.run("echo $SLOTH_A-$SLOTH_B", {env = {SLOTH_A = "x", SLOTH_B = 42}}).stdout
           local d = exec.run("tr a-z A-Z", {stdin = "hello\nworld\n"}).stdout
           local e = exec.run("echo  $HOME  x", {shell = false}).stdout
           return a, b, c, d, e"#,
    );
    assert_eq!(a, "a b|c|");
    assert_eq!(
        std::fs::canonicalize(b.trim()).unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
    assert_eq!(c, "x-42\n");
    assert_eq!(d, "HELLO\nWORLD\n");
    assert_eq!(e, "$HOME x\n", "shell = false runs the words directly");

    // Binary-safe output.
    let n: i64 = eval(&lua, r#"return #exec.run("printf 'a\\000b'").stdout"#);
    assert_eq!(n, 3);
}

#[test]
fn exec_run_that_cannot_start_returns_nil_err() {
    let lua = state();
    let (v, err): (LV, String) = eval(&lua, r#"return exec.run({"/nonexistent/sloth-prog"})"#);
    assert!(v.is_nil());
    assert!(
        err.starts_with("exec.run: /nonexistent/sloth-prog: No such file or directory"),
        "{err}"
    );
    let (v, err): (LV, String) = eval(
        &lua,
        r#"return exec.run("true", {cwd = "/nonexistent-dir-sloth"})"#,
    );
    assert!(v.is_nil());
    assert!(
        err.ends_with("true: cwd /nonexistent-dir-sloth: not a directory that exists"),
        "names the directory, not the command: {err}"
    );
    // Wrong argument types raise, and so does an env name the kernel would split.
    let bad = lua
        .load(r#"exec.run("true", {env = {["A=B"] = "1"}})"#)
        .exec()
        .unwrap_err();
    assert!(
        executor::error_text(&bad).contains("env name 'A=B' is not a variable name"),
        "{bad}"
    );
    let bad = lua.load("exec.run(42 == 42)").exec().unwrap_err();
    assert!(executor::error_text(&bad).contains("exec.run"), "{bad}");
    let bad = lua
        .load(r#"exec.run("true", {timeout = "soon"})"#)
        .exec()
        .unwrap_err();
    assert!(executor::error_text(&bad).contains("timeout"), "{bad}");
}

#[test]
fn exec_run_timeout_kills_the_process_group() {
    let lua = state();
    let start = Instant::now();
    let (timed_out, code, success, out): (bool, LV, bool, String) = eval(
        &lua,
        r#"local r = exec.run("echo partial; sleep 30.1111; echo never", {timeout = 1000})
           return r.timed_out, r.code, r.success, r.stdout"#,
    );
    let took = start.elapsed();
    assert!(timed_out);
    assert!(code.is_nil());
    assert!(!success);
    assert_eq!(out, "partial\n");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    assert_gone("sleep 30.1111");

    // String durations work too.
    let timed_out: bool = eval(
        &lua,
        r#"return exec.run("sleep 30.1112", {timeout = "200ms"}).timed_out"#,
    );
    assert!(timed_out);
    assert_gone("sleep 30.1112");
}

#[test]
fn exec_run_pid_of_background_child_is_killed_on_timeout() {
    let lua = state();
    let (pid_line, timed_out): (String, bool) = eval(
        &lua,
        r#"local r = exec.run("sleep 30.1113 & echo $!; wait", {timeout = 500})
           return r.stdout, r.timed_out"#,
    );
    assert!(timed_out);
    let pid: u32 = pid_line.trim().parse().unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while procs_with("sleep 30.1113").contains(&pid) {
        assert!(Instant::now() < until, "background sleep {pid} survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_run_returns_when_a_background_child_keeps_the_pipes_open() {
    let lua = state();
    let start = Instant::now();
    let (out, code): (String, i64) = eval(
        &lua,
        r#"local r = exec.run("sleep 30.5555 & echo $!")
           return r.stdout, r.code"#,
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(code, 0);
    let pid: i64 = out.trim().parse().unwrap();
    let _guard = KillOnDrop(pid);
    assert_eq!(
        procs_with("sleep 30.5555"),
        vec![pid as u32],
        "not killed on a normal exit"
    );
    // The test's own background child.
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a process id");
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    assert_gone("sleep 30.5555");
}

#[test]
fn handler_is_built_when_a_task_first_names_it() {
    let lua = state();
    let (before, kind, after, required): (bool, String, bool, bool) = eval(
        &lua,
        r#"local before = rawget(_G, "handler") ~= nil
           local kind = type(handler)
           local after = rawget(_G, "handler") ~= nil
           -- A global function, not a module: require does not find it.
           local required = pcall(require, "handler")
           return before, kind, after, required"#,
    );
    assert!(!before, "a fresh state builds `handler` only when named");
    assert_eq!(kind, "function");
    assert!(after);
    assert!(!required);
    // Built lazily, it still checks its arguments like any module function.
    let (ok, err): (bool, String) = eval(&lua, r#"return pcall(handler, 42, print)"#);
    assert!(!ok);
    assert!(err.contains("handler"), "{err}");
}

/// A background grandchild that keeps writing to the pipes after the command exited
/// holds the call at most DRAIN_MAX (2 s) after the exit, and never past the call's
/// timeout; what was read comes back with the command's exit status.
#[test]
fn exec_run_returns_despite_a_chatty_background_child() {
    let lua = state();
    for (opts, max_ms) in [("{ timeout = 1200 }", 1_900u128), ("{}", 3_000)] {
        let t0 = Instant::now();
        let (code, first, pid): (i64, String, i64) = eval(
            &lua,
            &format!(
                r#"local r = exec.run("sh -c 'while :; do echo tick; sleep 0.0531; done' & echo $!", {opts})
                   return r.code, r.stdout:match("^[^\n]*"), tonumber(r.stdout:match("^(%d+)"))"#
            ),
        );
        let _guard = KillOnDrop(pid);
        let ms = t0.elapsed().as_millis();
        assert_eq!(code, 0, "{opts}");
        assert_eq!(first, pid.to_string(), "{opts}");
        assert!(ms < max_ms, "{opts}: returned after {ms} ms");
    }
}

/// The error wrapper of the module functions is built on first use, after the task's
/// own code has run: globals the task assigned by then (`type`, `table`, `error`, a
/// forgotten `local`) must not change how module errors come out.
#[test]
fn module_errors_stay_clean_whatever_globals_the_task_assigned() {
    let lua = state();
    let (ok, err): (bool, String) = eval(
        &lua,
        r#"local real_pcall = pcall
           type = "web"; table = { name = "users" }
           error = function(m) print("swallowed: " .. tostring(m)) end
           return real_pcall(exec.run, 123)"#,
    );
    assert!(!ok, "the error was swallowed");
    assert!(err.starts_with("exec.run: "), "{err}");
    assert!(!err.contains("upvalue"), "{err}");
    // And a call that should work, works.
    let lua = state();
    let out: String = eval(
        &lua,
        r#"local real_pcall = pcall
           type = "web"; table = { name = "users" }; error = print
           local r = exec.run("echo hi")
           return r.stdout"#,
    );
    assert_eq!(out, "hi\n");
}

#[test]
fn exec_run_reads_both_pipes_at_once_and_keeps_everything() {
    let lua = state();
    // 1 MiB on stderr before a byte on stdout, then 3 MiB on stdout: far more than
    // a pipe holds, so a reader that waited on one pipe alone would hang the child.
    let (out, err, ok): (i64, i64, bool) = eval(
        &lua,
        r#"local r = exec.run("head -c 1048576 /dev/zero >&2; head -c 3145728 /dev/zero; echo -n x >&2")
           return #r.stdout, #r.stderr, r.success"#,
    );
    assert!(ok);
    assert_eq!(out, 3 * 1024 * 1024);
    assert_eq!(err, 1024 * 1024 + 1);
}

#[test]
fn exec_run_leaves_a_background_child_a_pipe_that_still_reads() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("wrote-after");
    lua.globals().set("MARK", marker.to_str().unwrap()).unwrap();
    // The call returns once the pipes stay quiet after the shell exits; the
    // background child writes to its inherited stdout later. Had the pipe been
    // closed, `echo` would die of SIGPIPE before creating the marker.
    let (out, took): (String, f64) = eval(
        &lua,
        r#"local t0 = sys.monotonic_ms()
           local r = exec.run("echo now; (sleep 0.6; echo later; echo ok > '" .. MARK .. "') &")
           return r.stdout, sys.monotonic_ms() - t0"#,
    );
    assert_eq!(
        out, "now\n",
        "what came after the call returned is not its output"
    );
    assert!(took < 600.0, "returned after {took} ms");
    let until = Instant::now() + Duration::from_secs(5);
    while !marker.exists() {
        assert!(
            Instant::now() < until,
            "the background child never got past its write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ok\n");
}

#[test]
fn exec_run_raises_when_the_task_is_cancelled() {
    let cancel = CancelToken::new(None);
    let (lua, _sink) = state_with(cancel.clone());
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let start = Instant::now();
    let err = lua
        .load(r#"exec.run("sleep 30.2222; echo never")"#)
        .exec()
        .unwrap_err();
    let took = start.elapsed();
    t.join().unwrap();
    assert!(
        executor::error_text(&err).contains("cancelled"),
        "{}",
        executor::error_text(&err)
    );
    assert!(took < Duration::from_millis(1300), "took {took:?}");
    assert_gone("sleep 30.2222");
}

/// After the command exits, while a background grandchild still holds its pipes, the
/// command stays unreaped (a zombie keeps its pid, which is also its group's id): a stop
/// in that drain kills the grandchild's group with no chance that the id was handed to
/// another process. The command is reaped when the call ends.
#[test]
fn exec_run_keeps_the_exited_command_unreaped_while_it_drains_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("leader");
    let cancel = CancelToken::new(None);
    let (lua, _sink) = state_with(cancel.clone());
    let watch = {
        let pid_file = pid_file.clone();
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(5);
            let pid = loop {
                if let Ok(s) = std::fs::read_to_string(&pid_file) {
                    if let Ok(pid) = s.trim().parse::<u32>() {
                        break pid;
                    }
                }
                assert!(Instant::now() < until, "the command never started");
                std::thread::sleep(Duration::from_millis(10));
            };
            // Well into the drain (the command exits at once; the drain lasts 2 s).
            std::thread::sleep(Duration::from_millis(600));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            cancel.cancel();
            (pid, stat)
        })
    };
    let src = format!(
        r#"return exec.run("echo $$ > {}; sh -c 'while :; do echo tick; sleep 0.0444; done' & exit 0")"#,
        pid_file.display()
    );
    let err = lua.load(&src).exec().unwrap_err();
    let (pid, stat) = watch.join().unwrap();
    assert!(
        executor::error_text(&err).contains("cancelled"),
        "{}",
        executor::error_text(&err)
    );
    // `PID (sh) Z ...`: exited, not reaped.
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert_eq!(
        state,
        Some("Z"),
        "the command was reaped mid-drain: {stat:?}"
    );
    assert_gone("while :; do echo tick; sleep 0.0444");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the command was never reaped"
    );
}

/// What `exec.run`, `fs.read` and `http.get` gather outside Lua counts against the
/// task's memory limit: they keep no more than it leaves (a command's output is cut
/// and flagged, a file or body too big is an error), instead of holding it all
/// outside the limit and then failing to make a string of it.
#[test]
fn module_functions_gather_no_more_than_the_memory_limit_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'f'; 20 << 20]).unwrap();
    let port = http_server();
    let lua = state();
    let limit = lua.used_memory() + (8 << 20);
    lua.set_memory_limit(limit).unwrap();
    let (truncated, kept, code): (bool, i64, i64) = eval(
        &lua,
        r#"local r = exec.run("head -c 30000000 /dev/zero; head -c 30000000 /dev/zero >&2")
           local kept = #r.stdout + #r.stderr
           return r.truncated, kept, r.code"#,
    );
    assert!(truncated);
    assert_eq!(code, 0);
    assert!(kept > 4 << 20 && kept <= 8 << 20, "kept {kept} bytes");
    let read_err = |path: &str| -> String {
        let (data, err): (Option<String>, String) = eval(
            &lua,
            &format!(r#"collectgarbage(); return fs.read("{path}")"#),
        );
        assert!(data.is_none(), "{path}: read whole");
        err
    };
    for path in [big.to_str().unwrap(), "/dev/zero"] {
        let err = read_err(path);
        assert!(
            err.starts_with(&format!("fs.read: {path}: more than the ")),
            "{err}"
        );
        assert!(
            err.ends_with("bytes the task's memory limit leaves"),
            "{err}"
        );
    }
    let (body, err): (Option<String>, String) = eval(
        &lua,
        &format!(r#"collectgarbage(); return http.get("http://127.0.0.1:{port}/big")"#),
    );
    assert!(body.is_none());
    assert!(
        err.contains("larger than the") && err.contains("the task's memory limit leaves"),
        "{err}"
    );
    // A small file is read as before, within the limit.
    let small = dir.path().join("small");
    std::fs::write(&small, "fits\n").unwrap();
    let data: String = eval(&lua, &format!(r#"return fs.read("{}")"#, small.display()));
    assert_eq!(data, "fits\n");
}

/// A loop whose time goes into resource calls (big writes) stops at the task's
/// deadline: the write in progress ends within a chunk and leaves no temporary file,
/// and the next resource call raises. The instruction hook alone would not see it: a
/// Lua loop of a few instructions per 128 MiB write reaches it seldom.
#[test]
fn a_loop_of_big_writes_stops_at_the_deadline_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let (lua, _sink) = state_with(CancelToken::new(Some(Duration::from_millis(600))));
    let start = Instant::now();
    let src = format!(
        r#"local D = "{}"
           local s = string.rep("0123456789abcdef", 4 * 1024 * 1024) -- 64 MiB
           for i = 1, 40 do
             file.content{{ path = D .. "/big", content = (i % 2 == 0) and s or (s .. "x"), diff = false }}
             fs.append(D .. "/log", "iteration " .. i .. "\n")
           end"#,
        dir.path().display()
    );
    let err = lua.load(&src).exec().unwrap_err();
    let took = start.elapsed();
    assert!(
        executor::error_text(&err).contains("timeout exceeded"),
        "{}",
        executor::error_text(&err)
    );
    assert!(took < Duration::from_secs(4), "stopped after {took:?}");
    let done = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(300));
    let later = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert_eq!(done, later, "the loop went on after the stop");
    assert!(done.lines().count() < 40, "never stopped: {done}");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".sloth-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn exec_run_raises_at_the_task_deadline() {
    let (lua, _sink) = state_with(CancelToken::new(Some(Duration::from_millis(400))));
    let start = Instant::now();
    // pcall cannot swallow the stop for good: the next call raises again.
    let err = lua
        .load(r#"pcall(exec.run, "sleep 30.3333"); exec.run("true")"#)
        .exec()
        .unwrap_err();
    assert!(
        executor::error_text(&err).contains("timeout exceeded"),
        "{}",
        executor::error_text(&err)
    );
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert_gone("sleep 30.3333");
}

#[test]
fn exec_run_streams_lines_while_the_command_runs() {
    let (lua, sink) = state_with(CancelToken::default());
    let (out, err): (String, String) = eval(
        &lua,
        r#"local r = exec.run("echo one; echo warn-line >&2; sleep 1; printf two", {stream = true})
           return r.stdout, r.stderr"#,
    );
    let returned = Instant::now();
    assert_eq!(out, "one\ntwo");
    assert_eq!(err, "warn-line\n");
    let lines = sink.lines.lock();
    let one = lines
        .iter()
        .find(|(_, l, _)| l == "one")
        .expect("line 'one' streamed");
    assert_eq!(one.0, LogLevel::Print);
    assert!(
        returned.duration_since(one.2) > Duration::from_millis(700),
        "'one' arrived only {:?} before the command ended",
        returned.duration_since(one.2)
    );
    let warn = lines
        .iter()
        .find(|(_, l, _)| l == "warn-line")
        .expect("stderr streamed");
    assert_eq!(warn.0, LogLevel::Info);
    assert!(
        lines.iter().any(|(_, l, _)| l == "two"),
        "unterminated last line streamed"
    );

    // Without stream nothing reaches the log.
    drop(lines);
    let before = sink.lines.lock().len();
    let _: mlua::Value = eval(&lua, r#"return exec.run("echo quiet")"#);
    assert_eq!(sink.lines.lock().len(), before);
}

/// The `SigIgn` and `SigBlk` masks of process `pid` (hex, as /proc shows them).
fn signal_masks(pid: i64) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("SigIgn:"), field("SigBlk:"))
}

#[test]
fn exec_spawn_starts_services_with_default_signals_whatever_the_agent_ignores() {
    // This thread plays an agent started under `nohup` (SIGHUP ignored) that also
    // has SIGUSR1 blocked: a service it starts must see neither, or its reload by
    // signal would silently do nothing.
    // SAFETY: plain signal-disposition and mask calls; both are put back below.
    let restore_mask = unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut usr1: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut usr1);
        libc::sigaddset(&mut usr1, libc::SIGUSR1);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, &mut old);
        old
    };
    let lua = state();
    let pid: i64 = eval(&lua, r#"return exec.spawn("exec sleep 30.6666").pid"#);
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_SETMASK, &restore_mask, std::ptr::null_mut());
    }
    let _guard = KillOnDrop(pid);
    let until = Instant::now() + Duration::from_secs(3);
    while procs_with("sleep 30.6666").is_empty() {
        assert!(Instant::now() < until, "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ignored, blocked) = signal_masks(pid);
    let mask = |hex: &str| u64::from_str_radix(hex, 16).unwrap();
    // Signals 32 and 33 (bits 31 and 32) are glibc's own; whatever they are, they stay.
    let glibc_own = (1u64 << 31) | (1u64 << 32);
    assert_eq!(
        mask(&ignored) & !glibc_own,
        0,
        "signals ignored in the service: {ignored}"
    );
    assert_eq!(
        mask(&blocked) & !glibc_own,
        0,
        "signals blocked in the service: {blocked}"
    );
    // And it takes SIGHUP as a service should: by default, it ends.
    let ok: bool = eval(&lua, &format!(r#"return exec.kill({pid}, "HUP")"#));
    assert!(ok);
    assert_gone("sleep 30.6666");
}

#[test]
fn exec_spawn_kill_alive() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("svc.log");
    lua.globals().set("LOG", log.to_str().unwrap()).unwrap();
    let pid: i64 = eval(
        &lua,
        r#"local p = exec.spawn("echo started; echo err >&2; sleep 30.4444", {log = LOG, env = {X = "1"}})
           return p.pid"#,
    );
    assert!(pid > 1);
    let _guard = KillOnDrop(pid);
    // The service leads its own session.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[3], pid.to_string(), "session id is the pid: {stat}");
    let until = Instant::now() + Duration::from_secs(3);
    while procs_with("sleep 30.4444").is_empty() {
        assert!(Instant::now() < until, "service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive: bool = eval(&lua, &format!("return exec.alive({pid})"));
    assert!(alive);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("started") && text.contains("err") {
            break;
        }
        assert!(Instant::now() < until, "log holds only {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let ok: bool = eval(&lua, &format!("return exec.kill({pid})"));
    assert!(ok);
    assert_gone("sleep 30.4444");
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let alive: bool = eval(&lua, &format!("return exec.alive({pid})"));
        if !alive {
            break;
        }
        assert!(Instant::now() < until, "spawned pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Signals by name, errors as data.
    let pid: i64 = eval(&lua, r#"return exec.spawn({"sleep", "30.4445"}).pid"#);
    let _guard2 = KillOnDrop(pid);
    let ok: bool = eval(&lua, &format!(r#"return exec.kill({pid}, "SIGKILL")"#));
    assert!(ok);
    assert_gone("sleep 30.4445");
    let (v, err): (LV, String) = eval(&lua, "return exec.kill(2147483000)");
    assert!(v.is_nil());
    assert!(err.contains("No such process"), "{err}");
    let (v, err): (LV, String) = eval(&lua, r#"return exec.spawn({"/nonexistent/sloth-svc"})"#);
    assert!(v.is_nil());
    assert!(err.contains("No such file or directory"), "{err}");
    let (v, _err): (LV, String) = eval(&lua, "return exec.kill(0)");
    assert!(v.is_nil());
    assert!(lua.load(r#"exec.kill(1, "NOPE")"#).exec().is_err());
    let alive: bool = eval(&lua, "return exec.alive(2147483000)");
    assert!(!alive);
}

// ---------------------------------------------------------------- fs

#[test]
fn fs_roundtrip() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    lua.globals()
        .set("D", dir.path().to_str().unwrap())
        .unwrap();
    let v: mlua::Table = eval(
        &lua,
        r#"local r = {}
           r.mkdir = fs.mkdir(D .. "/a/b/c")
           r.mkdir_again = fs.mkdir(D .. "/a/b/c")
           r.write = fs.write(D .. "/a/f.txt", "hello\0world")
           r.append = fs.append(D .. "/a/f.txt", "!")
           r.read = fs.read(D .. "/a/f.txt")
           r.exists = fs.exists(D .. "/a/f.txt")
           r.missing = fs.exists(D .. "/nope")
           fs.write(D .. "/a/z", "z")
           r.ls = table.concat(fs.ls(D .. "/a"), ",")
           local st = fs.stat(D .. "/a/f.txt")
           r.size, r.is_file, r.is_dir, r.is_symlink, r.mtime = st.size, st.is_file, st.is_dir, st.is_symlink, st.mtime
           r.dir_is_dir = fs.stat(D .. "/a/b").is_dir
           r.copy = fs.copy(D .. "/a/f.txt", D .. "/a/b")
           r.copied = fs.read(D .. "/a/b/f.txt")
           r.chmod = fs.chmod(D .. "/a/z", "0600")
           r.mode = fs.stat(D .. "/a/z").mode
           fs.chmod(D .. "/a/z", 420)
           r.mode2 = fs.stat(D .. "/a/z").mode
           fs.write(D .. "/a/secret", "s", "0640")
           r.mode3 = fs.stat(D .. "/a/secret").mode
           r.rm_file = fs.rm(D .. "/a/z")
           r.rm_tree = fs.rm(D .. "/a/b", {recursive = true})
           r.gone = fs.exists(D .. "/a/b")
           r.rm_forced = fs.rm(D .. "/a/b", {force = true})
           return r"#,
    );
    for k in [
        "mkdir",
        "mkdir_again",
        "write",
        "append",
        "exists",
        "copy",
        "chmod",
        "rm_file",
        "rm_tree",
        "rm_forced",
    ] {
        assert!(v.get::<bool>(k).unwrap(), "{k}");
    }
    assert_eq!(
        v.get::<mlua::LuaString>("read")
            .unwrap()
            .as_bytes()
            .as_ref(),
        b"hello\0world!"
    );
    assert!(!v.get::<bool>("missing").unwrap());
    assert_eq!(v.get::<String>("ls").unwrap(), "b,f.txt,z");
    assert_eq!(v.get::<i64>("size").unwrap(), 12);
    assert!(v.get::<bool>("is_file").unwrap());
    assert!(!v.get::<bool>("is_dir").unwrap());
    assert!(!v.get::<bool>("is_symlink").unwrap());
    assert!(v.get::<i64>("mtime").unwrap() > 1_600_000_000);
    assert!(v.get::<bool>("dir_is_dir").unwrap());
    assert_eq!(
        v.get::<mlua::LuaString>("copied")
            .unwrap()
            .as_bytes()
            .as_ref(),
        b"hello\0world!"
    );
    assert_eq!(v.get::<i64>("mode").unwrap(), 0o600);
    assert_eq!(v.get::<i64>("mode2").unwrap(), 0o644);
    assert_eq!(v.get::<i64>("mode3").unwrap(), 0o640);
    assert!(!v.get::<bool>("gone").unwrap());
}

#[test]
fn fs_failures_return_nil_and_reason() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    lua.globals().set("D", d.as_str()).unwrap();
    let cases = [
        (
            r#"return fs.read(D .. "/missing")"#,
            format!("fs.read: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.write(D .. "/no/dir/f", "x")"#,
            format!("fs.write: {d}/no/dir/f: No such file or directory"),
        ),
        (
            r#"return fs.ls(D .. "/missing")"#,
            format!("fs.ls: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.stat(D .. "/missing")"#,
            format!("fs.stat: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.rm(D .. "/missing")"#,
            format!("fs.rm: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.copy(D .. "/missing", D .. "/x")"#,
            format!("fs.copy: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.chmod(D .. "/missing", "0644")"#,
            format!("fs.chmod: {d}/missing: No such file or directory"),
        ),
        (
            r#"return fs.readlink(D .. "/missing")"#,
            format!("fs.readlink: {d}/missing: No such file or directory"),
        ),
        (
            r#"fs.mkdir(D .. "/full"); fs.write(D .. "/full/f", "x"); return fs.rm(D .. "/full")"#,
            format!("fs.rm: {d}/full: Directory not empty"),
        ),
        (
            r#"fs.write(D .. "/file", "x"); return fs.mkdir(D .. "/file/sub")"#,
            format!("fs.mkdir: {d}/file/sub: Not a directory"),
        ),
    ];
    for (src, want) in cases {
        let (v, err): (LV, String) = eval(&lua, src);
        assert!(v.is_nil(), "{src}");
        assert_eq!(err, want, "{src}");
    }
    // Wrong types and malformed modes raise.
    assert!(lua.load(r#"fs.read({})"#).exec().is_err());
    assert!(lua.load(r#"fs.chmod(D .. "/file", "rwx")"#).exec().is_err());
}

#[test]
fn fs_symlink_force_replaces_atomically() {
    let lua = state();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    lua.globals().set("D", d.as_str()).unwrap();
    let (a, again, err, b, forced, c, is_link, leftovers): (
        bool,
        LV,
        String,
        String,
        bool,
        String,
        bool,
        i64,
    ) = eval(
        &lua,
        r#"fs.mkdir(D .. "/releases/v1"); fs.mkdir(D .. "/releases/v2")
           fs.write(D .. "/releases/v2/VERSION", "2")
           local a = fs.symlink(D .. "/releases/v1", D .. "/current")
           local again, err = fs.symlink(D .. "/releases/v2", D .. "/current")
           local b = fs.readlink(D .. "/current")
           local forced = fs.symlink(D .. "/releases/v2", D .. "/current", {force = true})
           local c = fs.readlink(D .. "/current")
           local is_link = fs.stat(D .. "/current").is_symlink
           return a, again, err, b, forced, c, is_link, #fs.ls(D)"#,
    );
    assert!(a);
    assert!(again.is_nil());
    assert_eq!(err, format!("fs.symlink: {d}/current: File exists"));
    assert_eq!(b, format!("{d}/releases/v1"));
    assert!(forced);
    assert_eq!(c, format!("{d}/releases/v2"));
    assert!(is_link);
    assert_eq!(leftovers, 2, "no temporary links left behind");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("current/VERSION")).unwrap(),
        "2"
    );
    // force onto a path that does not exist yet also works; onto a directory it fails.
    let (ok, v, err): (bool, LV, String) = eval(
        &lua,
        r#"local ok = fs.symlink("target", D .. "/fresh", {force = true})
           return ok, fs.symlink("x", D .. "/releases/v1", {force = true})"#,
    );
    assert!(ok);
    assert!(v.is_nil());
    assert!(
        err.starts_with(&format!("fs.symlink: {d}/releases/v1: ")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_link(dir.path().join("fresh")).unwrap(),
        std::path::PathBuf::from("target")
    );
}

// ---------------------------------------------------------------- http / net

/// A tiny HTTP/1.1 server: `/hello` 200, `/missing` 404, `/echo` echoes method, content
/// type and body, `/slow` answers after 5 s.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

fn serve(mut conn: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    let mut content_type = String::new();
    let mut custom = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                "x-custom" => custom = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        body.extend_from_slice(&chunk[..n]);
    }
    let (status, reply): (&str, Vec<u8>) = match path.as_str() {
        "/hello" => ("200 OK", b"hello".to_vec()),
        "/missing" => ("404 Not Found", b"no such page".to_vec()),
        "/echo" => {
            let mut r = format!("{method}|{content_type}|{custom}|").into_bytes();
            r.extend_from_slice(&body);
            ("200 OK", r)
        }
        "/slow" => {
            std::thread::sleep(Duration::from_secs(5));
            ("200 OK", b"late".to_vec())
        }
        "/big" => ("200 OK", vec![b'b'; 20 << 20]),
        _ => ("500 Internal Server Error", b"?".to_vec()),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Test: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n\r\n",
        reply.len()
    )
    .into_bytes();
    resp.extend_from_slice(&reply);
    let _ = conn.write_all(&resp);
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn http_get_post_request_and_status_as_data() {
    let lua = state();
    let port = http_server();
    lua.globals()
        .set("BASE", format!("http://127.0.0.1:{port}"))
        .unwrap();
    let (status, ok, body, xtest, cookies, dur): (i64, bool, String, String, String, i64) = eval(
        &lua,
        r#"local r = http.get(BASE .. "/hello")
           return r.status, r.ok, r.body, r.headers["x-test"], r.headers["set-cookie"], r.duration_ms"#,
    );
    assert_eq!((status, ok, body.as_str()), (200, true, "hello"));
    assert_eq!(xtest, "yes");
    assert_eq!(cookies, "a=1, b=2");
    assert!((0..5000).contains(&dur));

    let (status, ok, body): (i64, bool, String) = eval(
        &lua,
        r#"local r = http.get(BASE .. "/missing") return r.status, r.ok, r.body"#,
    );
    assert_eq!((status, ok, body.as_str()), (404, false, "no such page"));

    let body: String = eval(
        &lua,
        r#"return http.post(BASE .. "/echo", "payload", {headers = {["Content-Type"] = "text/plain", ["X-Custom"] = "c1"}}).body"#,
    );
    assert_eq!(body, "POST|text/plain|c1|payload");

    let body: String = eval(
        &lua,
        r#"return http.post(BASE .. "/echo", {name = "web", n = 2}).body"#,
    );
    let (prefix, json) = body.split_at("POST|application/json||".len());
    assert_eq!(prefix, "POST|application/json||");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v, serde_json::json!({"name": "web", "n": 2}));

    let body: String = eval(
        &lua,
        r#"return http.request{method = "put", url = BASE .. "/echo", body = "x", headers = {["X-Custom"] = 7}}.body"#,
    );
    assert_eq!(body, "PUT||7|x");
    let body: String = eval(&lua, r#"return http.request{url = BASE .. "/echo"}.body"#);
    assert_eq!(body, "GET|||");
}

#[test]
fn http_failures_return_nil_err() {
    let lua = state();
    let port = http_server();
    let dead = closed_port();
    lua.globals()
        .set("BASE", format!("http://127.0.0.1:{port}"))
        .unwrap();
    lua.globals()
        .set("DEAD", format!("http://127.0.0.1:{dead}/x"))
        .unwrap();
    let (v, err): (LV, String) = eval(&lua, "return http.get(DEAD)");
    assert!(v.is_nil());
    assert!(
        err.starts_with(&format!("http.get: http://127.0.0.1:{dead}/x: "))
            && err.to_lowercase().contains("refused"),
        "{err}"
    );

    let start = Instant::now();
    let (v, err): (LV, String) = eval(&lua, r#"return http.get(BASE .. "/slow", {timeout = 300})"#);
    assert!(v.is_nil());
    assert!(err.contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_millis(2000));

    let (v, err): (LV, String) = eval(&lua, r#"return http.get("not a url")"#);
    assert!(v.is_nil());
    assert!(err.starts_with("http.get: not a url: "), "{err}");
    assert!(
        lua.load("http.get(BASE, 5)").exec().is_err(),
        "bad opts raise"
    );
}

/// An HTTPS server with a self-signed certificate answering "secure" to every request.
fn https_server() -> u16 {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let chain = vec![ck.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(sock) = conn else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut stream = rustls::StreamOwned::new(tls, sock);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                );
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    port
}

#[test]
fn https_works_through_rustls() {
    let lua = state();
    let port = https_server();
    lua.globals()
        .set("URL", format!("https://127.0.0.1:{port}/"))
        .unwrap();
    let (status, body): (i64, String) = eval(
        &lua,
        r#"local r = assert(http.get(URL, {insecure = true})) return r.status, r.body"#,
    );
    assert_eq!((status, body.as_str()), (200, "secure"));
    // Without `insecure` the self-signed certificate is refused: an error, not a raise.
    let (v, err): (LV, String) = eval(&lua, "return http.get(URL)");
    assert!(v.is_nil());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn http_honours_task_cancellation() {
    let cancel = CancelToken::new(None);
    let (lua, _sink) = state_with(cancel.clone());
    let port = http_server();
    lua.globals()
        .set("URL", format!("http://127.0.0.1:{port}/slow"))
        .unwrap();
    let c2 = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.cancel();
    });
    let start = Instant::now();
    let err = lua.load("http.get(URL)").exec().unwrap_err();
    assert!(executor::error_text(&err).contains("cancelled"));
    assert!(start.elapsed() < Duration::from_millis(1000));
}

#[test]
fn net_tcp_check_open_and_closed() {
    let lua = state();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    let dead = closed_port();
    let (ok, latency): (bool, f64) = eval(
        &lua,
        &format!(r#"return net.tcp_check("127.0.0.1", {port})"#),
    );
    assert!(ok);
    assert!((0.0..3000.0).contains(&latency), "{latency}");
    let (ok, err): (bool, String) = eval(
        &lua,
        &format!(r#"return net.tcp_check("127.0.0.1", {dead}, 500)"#),
    );
    assert!(!ok);
    assert_eq!(
        err,
        format!("net.tcp_check: 127.0.0.1:{dead}: Connection refused")
    );
    let (ok, err): (bool, String) = eval(
        &lua,
        r#"return net.tcp_check("no-such-host.invalid", 80, 1000)"#,
    );
    assert!(!ok);
    assert!(err.contains("cannot resolve"), "{err}");
    let (ok, _): (bool, f64) = eval(
        &lua,
        &format!(r#"return net.tcp_check("localhost", {port}, "2s")"#),
    );
    assert!(ok);
    assert!(lua
        .load("net.tcp_check('127.0.0.1', 70000)")
        .exec()
        .is_err());
}

// ---------------------------------------------------------------- template / sys

#[test]
fn template_render_and_errors() {
    let lua = state();
    let out: String = eval(
        &lua,
        r#"local r, e = template.render([[
server {{ name }}:{{ port }}
{% for h in hosts %}
  upstream {{ h.addr }}{% if h.backup %} backup{% endif %};
{% endfor %}
tls={{ tls | default("off") }}
]], {name = "web", port = 8080, hosts = {{addr = "10.0.0.1"}, {addr = "10.0.0.2", backup = true}}, fn = print})
           return assert(r, e)"#,
    );
    assert_eq!(
        out,
        "server web:8080\n  upstream 10.0.0.1;\n  upstream 10.0.0.2 backup;\ntls=off\n"
    );

    let (v, err): (LV, String) = eval(
        &lua,
        r#"return template.render("line one\n{% if x %}\nyes\n{% endfor %}\n", {x = true})"#,
    );
    assert!(v.is_nil());
    assert!(
        err.starts_with("template.render: template, line 4: syntax error"),
        "{err}"
    );

    let (v, err): (LV, String) = eval(
        &lua,
        r#"return template.render("a\n{{ missing.field }}", {}, {name = "app.conf.j2"})"#,
    );
    assert!(v.is_nil());
    assert_eq!(
        err,
        "template.render: app.conf.j2, line 2: undefined value: `missing` is undefined"
    );
    // The name of what is undefined, the template and the line, in every position.
    for (src, name) in [
        ("a\nb\n{{ tier }}", "`tier` is undefined"),
        (
            "{% for x in items %}{{ x }}{% endfor %}",
            "`items` is undefined",
        ),
        ("{{ x | upper }}", "`x` is undefined"),
        ("{{ a.b.c }}", "`a.b` is undefined"),
    ] {
        let (_, err): (LV, String) = eval(
            &lua,
            &format!("return template.render({src:?}, {{a = {{}}}}, {{name = 'app.conf.j2'}})"),
        );
        assert!(
            err.starts_with("template.render: app.conf.j2, line "),
            "{err}"
        );
        assert!(err.ends_with(name), "{src}: {err}");
    }
    let lenient: String = eval(
        &lua,
        r#"return template.render("[{{ missing }}]", nil, {strict = false})"#,
    );
    assert_eq!(lenient, "[]");
    assert!(lua.load(r#"template.render("x", 5)"#).exec().is_err());
}

#[test]
fn sys_hostname_and_facts() {
    let lua = state();
    let host: String = eval(&lua, "return sys.hostname()");
    let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host, want.trim());

    let f: mlua::Table = eval(&lua, "return sys.facts()");
    assert_eq!(f.get::<String>("os").unwrap(), "linux");
    assert_eq!(f.get::<String>("arch").unwrap(), std::env::consts::ARCH);
    assert!(!f.get::<String>("kernel").unwrap().is_empty());
    assert!(f.get::<i64>("cpus").unwrap() >= 1);
    let total = f.get::<i64>("mem_total").unwrap();
    let avail = f.get::<i64>("mem_available").unwrap();
    assert!(total > 16 * 1024 * 1024 && avail > 0 && avail <= total);
    let load: mlua::Table = f.get("load").unwrap();
    let l1: f64 = load.get("1m").unwrap();
    assert!(l1 >= 0.0);
    assert_eq!(load.get::<f64>(1).unwrap(), l1);
    assert!(load.get::<f64>("15m").unwrap() >= 0.0);
    assert!(f.get::<i64>("uptime").unwrap() > 0);
    let disk: mlua::Table = f.get("disk").unwrap();
    let dt: i64 = disk.get("total").unwrap();
    let da: i64 = disk.get("available").unwrap();
    assert!(dt > 0 && da >= 0 && da <= dt);
    assert_eq!(disk.get::<String>("path").unwrap(), "/");

    let facts = sloth_modules::sys::collect_facts();
    assert_eq!(facts.hostname, host);
    assert_eq!(facts.os, "linux");
    assert!(facts.cpus >= 1 && facts.mem_total > 0 && facts.disk_total > 0);
}

#[test]
fn modules_are_requirable() {
    let lua = state();
    let same: bool = eval(
        &lua,
        r#"return require("exec") == exec and require("fs") == fs and require("http") == http
           and require("net") == net and require("sys") == sys and require("template") == template"#,
    );
    assert!(same);
}

/// A handler runs once per task: notified again by a later handler's change, it does
/// not run again, and the task's log says so instead of dropping it silently.
#[test]
fn a_handler_notified_after_it_ran_is_said_not_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let (lua, sink) = state_with(CancelToken::default());
    let src = format!(
        r#"local D = "{}"
           local runs = {{}}
           handler("h1", function() runs[#runs + 1] = "h1" end)
           handler("h2", function()
             runs[#runs + 1] = "h2"
             file.content{{ path = D .. "/b2", content = "x\n", notify = "h1" }}
           end)
           file.content{{ path = D .. "/a", content = "a\n", notify = {{ "h1", "h2" }} }}
           return runs"#,
        dir.path().display()
    );
    let body = lua.load(&src).call::<mlua::MultiValue>(());
    let out = sloth_modules::resources::handlers::after_body(&lua, body).unwrap();
    assert!(out.len() == 1, "{out:?}");
    let runs: Vec<String> = match out.into_iter().next() {
        Some(mlua::Value::Table(t)) => t.sequence_values().map(|v| v.unwrap()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(runs, ["h1", "h2"]);
    let lines = sink.lines.lock();
    assert!(
        lines.iter().any(|(l, t, _)| *l == LogLevel::Warn
            && t == "handler h1: notified again after it ran; a handler runs once per task"),
        "{:?}",
        lines.iter().map(|(_, t, _)| t).collect::<Vec<_>>()
    );
}

/// In check mode `os.tmpname` still gives a name, but the file it made is gone.
#[test]
fn os_tmpname_leaves_no_file_in_check_mode() {
    let ctx = TaskContext {
        host: "test".into(),
        task_name: "t".into(),
        io: Arc::new(Sink::default()),
        cancel: CancelToken::default(),
        mode: sloth_proto::change::Mode {
            check: true,
            diff: false,
        },
        orchestrator: false,
    };
    let lua = EXECUTOR.new_state(&ctx).unwrap();
    let name: String = eval(&lua, "return os.tmpname()");
    assert!(name.starts_with("/tmp/"), "{name}");
    assert!(!std::path::Path::new(&name).exists(), "{name} left behind");
}
