//! The machine output of a run, checked against its documented schemas
//! (docs/run.schema.json, docs/events.schema.json): the `--json` document of `run`
//! (changes, values, failures, a stopped rollout, masked secrets, every printed error)
//! and of `exec` (each host's output and exit code), and the `--events` stream.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value as J;

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the schema");
    let s: J = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&s).expect("a valid schema")
}

fn valid(v: &jsonschema::Validator, doc: &J) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
}

const SCRIPT: &str = r#"
-- A failed task (its error ends with a newline), values of every form, a change,
-- and a rollout that stops.
local ok_task = goroutine.async(function()
  file.content{ path = vars.dir .. "/" .. host.name .. ".conf", content = "x\n" }
  return 1, 2.5, "text", { 1, 2, 3 }, { name = host.name, nested = { true } }, nil
end, { delegate_to = "web-01", name = "values" })
local bad = goroutine.async(function() error("broken\n", 0) end, { delegate_to = "web-02", name = "bad" })
goroutine.await_all({ ok_task, bad })
local results = fleet.run("all", function()
  if host.name == "web-01" then error("first batch fails") end
  return "done"
end, { serial = 1, any_errors_fatal = true, name = "roll" })
"#;

#[test]
fn run_json_follows_its_schema_and_says_everything() {
    let fleet = TestFleet::web(3);
    let dir = fleet.path().display().to_string();
    let out = fleet.run(
        SCRIPT,
        &[
            "--json",
            "-e",
            &format!("dir={dir}"),
            "-e",
            "db_password=hunter2",
        ],
    );
    out.assert_code(1);
    let doc = json(&out);
    let run_schema = schema("run.schema.json");
    valid(&run_schema, &doc);
    assert_eq!(doc["schema"], 1);
    // The schema does say something: a changed document fails it.
    let mut wrong = doc.clone();
    wrong["tasks"][0]["started_at"] = J::from("yesterday");
    assert!(!run_schema.is_valid(&wrong));
    assert_eq!(doc["vars"]["db_password"], "***");
    assert_eq!(doc["vars"]["dir"], dir.as_str());
    let command: Vec<&str> = doc["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(command.contains(&"db_password=***"), "{command:?}");
    assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"));
    let tasks = doc["tasks"].as_array().unwrap();
    let values = tasks.iter().find(|t| t["name"] == "values").unwrap();
    assert_eq!(
        values["values"],
        serde_json::json!([1, 2.5, "text", [1, 2, 3], {"name": "web-01", "nested": [true]}, null])
    );
    assert_eq!(
        (values["changed"].clone(), values["changes"].clone()),
        (J::Bool(true), J::from(1))
    );
    let bad = tasks.iter().find(|t| t["name"] == "bad").unwrap();
    assert_eq!(bad["kind"], "lua");
    assert_eq!(bad["error"], "lua: web-02: broken", "no trailing newline");
    let roll: Vec<&J> = tasks.iter().filter(|t| t["name"] == "roll").collect();
    assert_eq!(roll.len(), 1, "the rollout stopped after its first batch");
    assert_eq!(roll[0]["batch"], serde_json::json!({"index": 1, "of": 3}));
    let skipped = doc["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped[0]["reason"], "any_errors_fatal");
    assert_eq!(
        skipped[0]["after_batch"],
        serde_json::json!({"index": 1, "of": 3})
    );
    // Every error printed is listed: the rollout's stop and each failed task.
    let errors: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("fleet.run: rollout stopped after batch 1/3")),
        "{errors:?}"
    );
    assert!(errors.contains(&"lua: web-02: broken"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("first batch fails")),
        "{errors:?}"
    );
    assert!(out.stderr.contains("rollout stopped"), "{out}");
    let changes = doc["hosts"]["web-01"]["changes"].as_array().unwrap();
    assert_eq!(changes[0]["resource"], "file.content");

    // Check mode, and a usage error: still one valid document.
    let out = fleet.run(SCRIPT, &["--json", "--check", "-e", &format!("dir={dir}")]);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["check"], true);
    let out = fleet.run(SCRIPT, &["--json", "-e", "no-equals-sign"]);
    out.assert_code(2);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["exit_code"], 2);
}

#[test]
fn exec_json_has_each_hosts_output_and_exit_code() {
    let fleet = TestFleet::web(2);
    let inv = fleet.inventory();
    let out = sloth_master(
        fleet.path(),
        &[
            "exec",
            "all",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--json",
            "--",
            "echo out-$(hostname) >/dev/null; echo to-stdout; echo to-stderr >&2; test -e /nonexistent",
        ],
    );
    out.assert_code(1);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["script"], "exec", "not a temporary path");
    let exec = &doc["exec"];
    assert!(exec["command"]
        .as_str()
        .unwrap()
        .ends_with("test -e /nonexistent"));
    for h in ["web-01", "web-02"] {
        let r = &exec["hosts"][h];
        assert_eq!(r["exit_code"], 1, "{r}");
        assert_eq!(r["stdout"], "to-stdout\n", "{r}");
        assert_eq!(r["stderr"], "to-stderr\n", "{r}");
        assert_eq!(r["success"], false);
    }
    let out = sloth_master(
        fleet.path(),
        &[
            "exec",
            "web-01",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            fleet.certs.to_str().unwrap(),
            "--json",
            "--",
            "echo",
            "fine",
        ],
    );
    out.assert_code(0);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["exec"]["hosts"]["web-01"]["exit_code"], 0);
    assert_eq!(doc["exec"]["hosts"]["web-01"]["stdout"], "fine\n");
}

#[test]
fn events_stream_the_run_as_it_happens() {
    let fleet = TestFleet::web(3);
    let dir = fleet.path().display().to_string();
    let events = fleet.path().join("events.jsonl");
    let out = fleet.run(
        &format!("print('hello')\n{SCRIPT}"),
        &[
            "--events",
            events.to_str().unwrap(),
            "-e",
            &format!("dir={dir}"),
        ],
    );
    out.assert_code(1);
    let v = schema("events.schema.json");
    let lines: Vec<J> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        valid(&v, l);
    }
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    for k in [
        "task_started",
        "task_finished",
        "change",
        "script_log",
        "batch_started",
        "batch_finished",
        "rollout_stopped",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    // Each task starts before it finishes, every task finishes once.
    let mut started = std::collections::BTreeSet::new();
    for l in &lines {
        let id = l["task_id"].as_u64();
        match l["event"].as_str() {
            Some("task_started") => assert!(started.insert(id.unwrap())),
            Some("task_finished") => assert!(started.remove(&id.unwrap()), "{l}"),
            _ => {}
        }
    }
    assert!(started.is_empty(), "unfinished: {started:?}");
    // --json and --events - cannot share stdout.
    let out = fleet.run("print(1)", &["--json", "--events", "-"]);
    out.assert_code(2);
}

/// `--events -`: standard output carries only event lines (the script's prints and the
/// recap go to stderr), and a spawned task's failure is listed once in `errors`.
#[test]
fn events_on_stdout_are_only_events() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"print("human line")
goroutine.spawn(function() error("spawned boom", 0) end, { name = "sp" })
goroutine.sleep(300)"#,
        &["--events", "-"],
    );
    out.assert_code(1);
    let v = schema("events.schema.json");
    for l in out.stdout.lines() {
        let e: J = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{out}"));
        valid(&v, &e);
    }
    assert!(out.stderr.contains("human line"), "{out}");
    assert!(out.stderr.contains("RECAP"), "{out}");
    let out = fleet.run(
        r#"goroutine.spawn(function() error("spawned boom", 0) end, { name = "sp" })
goroutine.sleep(300)"#,
        &["--json"],
    );
    let doc = json(&out);
    let errors: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        errors.iter().filter(|e| e.contains("spawned boom")).count(),
        1,
        "{errors:?}"
    );
}

/// Whatever else writes to stdout during a `--json` run (the script's `io.write`, a
/// command it starts with `os.execute`) goes to stderr: stdout is the document alone.
/// And a document that cannot be written is an error (exit 1), not a silent success.
#[test]
fn json_stdout_is_the_document_alone_and_must_be_written() {
    let fleet = TestFleet::web(1);
    let script = r#"io.write("from io.write\n")
os.execute("echo from os.execute")
print("from print")
io.stdout:write("from io.stdout\n")"#;
    for flag in ["--json", "--events"] {
        let mut args = vec![flag];
        if flag == "--events" {
            args.push("-");
        }
        let out = fleet.run(script, &args);
        out.assert_code(0);
        if flag == "--json" {
            let doc = json(&out);
            assert_eq!(doc["success"], true, "{out}");
        } else {
            for l in out.stdout.lines() {
                let _: J = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{out}"));
            }
        }
        for line in [
            "from io.write",
            "from os.execute",
            "from print",
            "from io.stdout",
        ] {
            // (Events carry the script's `print` lines in their JSON.)
            assert!(
                flag == "--events" || !out.stdout.contains(line),
                "{flag}: {line} on stdout\n{out}"
            );
            assert!(out.stderr.contains(line), "{flag}: {line} lost\n{out}");
        }
    }
    // A full disk under the document: said, and exit 1.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = fleet
        .command("ok.sloth", "print('hi')", &["--json"])
        .stdin(std::process::Stdio::null())
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: cannot write the JSON document to standard output"),
        "{stderr}"
    );
}

/// `run --check-first --json`: the findings go to stderr; stdout is one document,
/// which says why the script did not run.
#[test]
fn check_first_keeps_stdout_for_the_document() {
    let fleet = TestFleet::web(2);
    let out = fleet.run("fs.wirte('/tmp/x', 'y')", &["--check-first", "--json"]);
    out.assert_code(1);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["exit_code"], 1);
    assert!(
        doc["errors"][0]
            .as_str()
            .unwrap()
            .contains("the check found 1 error(s); not running it"),
        "{doc:#}"
    );
    assert!(out.stderr.contains("unknown function fs.wirte"), "{out}");
    // Warnings only: the run goes on, stdout still one document.
    let out = fleet.run(
        "local t = {}\ngoroutine.await(goroutine.async(function() t.x = 1 end, { delegate_to = 'web-01' }))",
        &["--check-first", "--json"],
    );
    out.assert_code(0);
    json(&out);
    assert!(out.stderr.contains("warning:"), "{out}");
    // --limit narrows the hosts the check accepts.
    let out = fleet.run(
        "goroutine.await(goroutine.async(function() end, { delegate_to = 'web-01' }))",
        &["--check-first", "--limit", "web-02"],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("web-01"), "{out}");
}

/// An interrupted run (SIGTERM) still reports its end: exit 130, the document with the
/// task that was running as cancelled, and `run_finished` last in the stream.
#[test]
fn an_interrupted_run_reports_its_end() {
    let fleet = TestFleet::web(1);
    let events = fleet.path().join("int.jsonl");
    let run = fleet.spawn_run(
        r#"local h = goroutine.async(function() goroutine.sleep(30000) end, { delegate_to = "web-01", name = "long" })
print("STARTED")
goroutine.await(h)"#,
        &["--json", "--events", events.to_str().unwrap()],
    );
    // With --json the script's prints go to stderr: wait for the task to be running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("task_started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = rustix::process::Pid::from_raw(run.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = run.finish(std::time::Duration::from_secs(20));
    out.assert_code(130);
    let doc = json(&out);
    valid(&schema("run.schema.json"), &doc);
    assert_eq!(doc["exit_code"], 130);
    assert_eq!(doc["tasks"][0]["name"], "long");
    assert_eq!(doc["tasks"][0]["kind"], "cancelled");
    assert_eq!(doc["hosts"]["web-01"]["cancelled"], 1);
    let text = std::fs::read_to_string(&events).unwrap();
    let last: J = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["exit_code"], 130);
}

/// A task's `task_finished` event comes before anything the script does once its
/// `await` returned: a dashboard never sees the script (or a rolling batch) move on
/// while a task it waited for still looks running.
#[test]
fn events_put_a_task_end_before_what_the_script_does_next() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"for i = 1, 30 do
  local where = (i % 2 == 0) and { delegate_to = "web-01", name = "t" .. i } or { name = "t" .. i }
  local h = goroutine.async(function() return i end, where)
  print("awaited", select(2, goroutine.await(h)))
end
fleet.run("all", function() return 1 end, { name = "rolled", serial = 1 })
print("rolled out")"#,
        &["--events", "-"],
    );
    out.assert_code(0);
    let events: Vec<J> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let index = |pred: &dyn Fn(&J) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("missing event\n{out}"))
    };
    for i in 1..=30 {
        let finished = index(&|e| e["event"] == "task_finished" && e["name"] == format!("t{i}"));
        let printed =
            index(&|e| e["event"] == "script_log" && e["line"] == format!("awaited\t{i}"));
        assert!(
            finished < printed,
            "t{i}: task_finished after the script went on\n{out}"
        );
    }
    let finished = index(&|e| e["event"] == "task_finished" && e["name"] == "rolled");
    let batch = index(&|e| e["event"] == "batch_finished");
    let printed = index(&|e| e["event"] == "script_log" && e["line"] == "rolled out");
    assert!(finished < batch && batch < printed, "{out}");
}

/// Usage errors found before a run could start still give `--json` its one document
/// (exit 2): a bad `exec` pattern or `--timeout`, an `--events` path that cannot be
/// made, a bad sloth.toml. `exec --timeout 0s` is refused, not run into certain
/// failure.
#[test]
fn early_usage_errors_still_give_the_json_document() {
    let fleet = TestFleet::web(1);
    let inv = fleet.inventory();
    let inv = inv.to_str().unwrap();
    let certs = fleet.certs.to_str().unwrap();
    let script = fleet.script_path("ok.sloth", "print('hi')");
    let script = script.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "exec",
                "all",
                "-i",
                inv,
                "--certs",
                certs,
                "--json",
                "--timeout",
                "5min",
                "--",
                "true",
            ],
            "--timeout: bad duration",
        ),
        (
            vec![
                "exec",
                "all",
                "-i",
                inv,
                "--certs",
                certs,
                "--json",
                "--timeout",
                "0s",
                "--",
                "true",
            ],
            "--timeout: '0s' is no time at all",
        ),
        (
            vec![
                "exec", "nope", "-i", inv, "--certs", certs, "--json", "--", "true",
            ],
            "nope",
        ),
        (
            vec![
                "run",
                script,
                "-i",
                inv,
                "--certs",
                certs,
                "--json",
                "--events",
                "/nonexistent/x",
            ],
            "--events /nonexistent/x",
        ),
    ];
    for (args, says) in cases {
        let out = sloth_master(fleet.path(), &args);
        out.assert_code(2);
        let doc = json(&out);
        assert_eq!(doc["exit_code"], 2, "{args:?}\n{out}");
        assert_eq!(doc["success"], false, "{args:?}\n{out}");
        assert!(doc.to_string().contains(says), "{args:?}: {says}\n{out}");
        assert!(out.stderr.contains(says), "{args:?}: {says}\n{out}");
    }
    // A bad sloth.toml, with the line it is on.
    let dir = fleet.path().join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sloth.toml"),
        "# c\nconnect_timeout = \"3 parsecs\"\n",
    )
    .unwrap();
    let out = sloth_master(&dir, &["run", script, "--local-fleet", "1", "--json"]);
    out.assert_code(2);
    let doc = json(&out);
    assert_eq!(doc["exit_code"], 2, "{out}");
    assert!(out.stderr.contains("sloth.toml:2: "), "{out}");
}

/// A cancellation is not a failure: the recap's line for a host names its real first
/// error, and `--json`'s `errors` lists no cancellation.
#[test]
fn the_recap_names_the_real_failure_not_a_cancellation() {
    let fleet = TestFleet::web(1);
    let script = r#"
local h = goroutine.async(function() goroutine.sleep(5000) end, { delegate_to = "web-01", name = "long" })
goroutine.sleep(100)
h:cancel(); h:await()
local f = goroutine.async(function() error("the real failure", 0) end, { delegate_to = "web-01", name = "broken" })
f:await()
"#;
    let out = fleet.run(script, &[]);
    out.assert_code(1);
    assert!(
        out.stdout.contains("! lua: web-01: the real failure"),
        "{out}"
    );
    assert!(!out.stdout.contains("! cancelled"), "{out}");
    let out = fleet.run(script, &["--json"]);
    let doc = json(&out);
    let errors = doc["errors"].to_string();
    assert!(errors.contains("the real failure"), "{errors}");
    assert!(!errors.contains("cancelled"), "{errors}");
}
