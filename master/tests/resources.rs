//! Resources on real agents over real QUIC: files, guarded commands, git checkouts,
//! unpacked artifacts and handlers; check mode (nothing changes, and what it reports
//! is exactly what the real run then changes), diffs, the recap's `changed=` and the
//! changes in `--json`. Everything they touch lives in the test's temporary directory.
//! (Packages, users and units: `system_resources.rs`, `pkg.rs`, `service.rs`.)

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn changed_count(doc: &serde_json::Value, host: &str) -> u64 {
    doc["hosts"][host]["changed"].as_u64().unwrap_or(u64::MAX)
}

/// Every file under `dir` with its content, mode and mtime (to see that nothing moved).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes()
                    .to_vec()
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.push((
                p.display().to_string(),
                content,
                m.mode(),
                m.mtime(),
                m.mtime_nsec(),
            ));
        }
    }
    out.sort();
    out
}

/// A script of many resources of every kind that works without root, run on every
/// host; `vars.v` changes what it asks for.
fn site_script(root: &Path) -> String {
    format!(
        r#"
local root = "{root}"
local art = artifact.bytes(vars.v == "2" and "payload two\n" or "payload one\n", "blob")
local hs = {{}}
for _, h in ipairs(fleet.hosts("all")) do
  hs[#hs + 1] = goroutine.async(function()
    local d = root .. "/" .. host.name
    handler("note", function()
      file.content{{ path = d .. "/notified", content = "by " .. (vars.v or "1") .. "\n" }}
    end)
    file.directory{{ path = d, mode = "0750" }}
    file.directory{{ path = d .. "/conf.d" }}
    file.content{{ path = d .. "/app.conf", content = "version=" .. (vars.v or "1") .. "\n", mode = "0640", notify = "note" }}
    file.content{{ path = d .. "/motd", template = "hello {{{{ name }}}} v{{{{ v }}}}\n", vars = {{ name = host.name, v = vars.v or "1" }} }}
    file.content{{ path = d .. "/blob", artifact = art }}
    file.line{{ path = d .. "/hosts", line = "10.0.0.1 db" .. (vars.v or "1"), regex = "db[0-9]*$", create = true }}
    file.block{{ path = d .. "/conf.d/extra.conf", block = "a=1\nb=" .. (vars.v or "1"), create = true }}
    file.symlink{{ path = d .. "/current", target = d .. "/releases/" .. (vars.v or "1") }}
    if vars.v == "2" then file.absent{{ path = d .. "/old" }} else file.content{{ path = d .. "/old", content = "x" }} end
    cmd.run{{ "touch " .. d .. "/made-" .. (vars.v or "1"), creates = d .. "/made-" .. (vars.v or "1") }}
    cmd.run{{ "false", unless = "true" }}
    cmd.run{{ "touch " .. d .. "/made-" .. (vars.v or "1"), creates = d .. "/made-" .. (vars.v or "1") }}
    file.line{{ path = d .. "/app.conf", line = "version=" .. (vars.v or "1") }}
    return true
  end, {{ delegate_to = h, name = "site" }})
end
for _, r in ipairs(goroutine.await_all(hs)) do
  if not r.success then error(r.host .. ": " .. r.error) end
end
"#,
        root = root.display()
    )
}

/// The promise: on the same hosts, what `--check` reports as changing is exactly what
/// the real run then changes; check mode changes nothing; a second real run changes
/// nothing.
#[test]
fn check_mode_reports_exactly_what_the_real_run_changes() {
    let fleet = TestFleet::web(3);
    let root = fleet.path().join("site");
    std::fs::create_dir(&root).unwrap();
    let script = site_script(&root);
    for v in ["1", "2"] {
        let before = snapshot(&root);
        let check = fleet.run(&script, &["--check", "--json", "-e", &format!("v={v}")]);
        check.assert_code(0);
        assert_eq!(snapshot(&root), before, "check mode changed files\n{check}");
        let planned = json(&check);
        assert_eq!(planned["check"], true);

        let real = fleet.run(&script, &["--json", "-e", &format!("v={v}")]);
        real.assert_code(0);
        let done = json(&real);
        let (p, d) = (changed_set(&planned), changed_set(&done));
        assert!(!d.is_empty(), "the real run changed nothing\n{real}");
        assert_eq!(p, d, "check mode and the real run disagree (v={v})");
        for h in ["web-01", "web-02", "web-03"] {
            assert_eq!(changed_count(&planned, h), changed_count(&done, h));
        }
        // Handlers: notified in both, "would run" in check mode.
        for h in ["web-01", "web-02", "web-03"] {
            let handlers = |doc: &serde_json::Value| -> Vec<String> {
                doc["hosts"][h]["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["kind"] == "handler")
                    .map(|c| c["action"].as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(handlers(&planned), vec!["would run"]);
            assert_eq!(handlers(&done), vec!["ran"]);
        }

        // Again: nothing to do on any host, and no file touched (same mtimes).
        let settled = snapshot(&root);
        let again = fleet.run(&script, &["--json", "-e", &format!("v={v}")]);
        again.assert_code(0);
        let again = json(&again);
        for h in ["web-01", "web-02", "web-03"] {
            assert_eq!(changed_count(&again, h), 0, "{h}: {}", again["hosts"][h]);
        }
        assert_eq!(snapshot(&root), settled, "a second run touched files");
    }
    let d = root.join("web-02");
    assert_eq!(
        std::fs::read_to_string(d.join("app.conf")).unwrap(),
        "version=2\n"
    );
    assert_eq!(
        std::fs::metadata(d.join("app.conf")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o750);
    assert_eq!(
        std::fs::read_to_string(d.join("motd")).unwrap(),
        "hello web-02 v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("blob")).unwrap(),
        "payload two\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("hosts")).unwrap(),
        "10.0.0.1 db2\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("conf.d/extra.conf")).unwrap(),
        "# BEGIN SLOTH MANAGED BLOCK\na=1\nb=2\n# END SLOTH MANAGED BLOCK\n"
    );
    assert_eq!(
        std::fs::read_link(d.join("current")).unwrap(),
        d.join("releases/2")
    );
    assert!(!d.join("old").exists());
    assert!(d.join("made-1").exists() && d.join("made-2").exists());
    assert_eq!(
        std::fs::read_to_string(d.join("notified")).unwrap(),
        "by 2\n"
    );
}

/// The recap counts changes per host; `--diff` prints unified diffs under each host's
/// prefix, in check mode too.
#[test]
fn recap_counts_changes_and_diff_shows_them_under_the_host() {
    let fleet = TestFleet::web(2);
    let root = fleet.path().join("d");
    let script = format!(
        r#"
local hs = {{}}
for _, h in ipairs(fleet.hosts("all")) do
  hs[#hs + 1] = goroutine.async(function()
    local p = "{root}/" .. host.name .. ".conf"
    file.directory{{ path = "{root}" }}
    file.content{{ path = p, content = "a\nport=" .. (vars.port or "80") .. "\nz\n" }}
    file.content{{ path = p .. ".secret", content = "token=" .. (vars.port or "80") .. "\n", diff = false }}
  end, {{ delegate_to = h, name = "conf" }})
end
goroutine.await_all(hs)
"#,
        root = root.display()
    );
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert!(out.stdout.contains("changed=3"), "{out}");
    let out = fleet.run(&script, &["-e", "port=81", "--check", "--diff"]);
    out.assert_code(0);
    for h in ["web-01", "web-02"] {
        let p = format!("[{h} conf]");
        assert!(
            out.stdout.contains(&format!(
                "{p} would change: file.content {}/{h}.conf (updated)",
                root.display()
            )),
            "{out}"
        );
        assert!(out.stdout.contains(&format!("{p}   -port=80")), "{out}");
        assert!(out.stdout.contains(&format!("{p}   +port=81")), "{out}");
        assert!(
            out.stdout.contains(&format!("{p}   @@ -1,3 +1,3 @@")),
            "{out}"
        );
    }
    // diff = false: the secret's content never appears.
    assert!(!out.stdout.contains("token="), "{out}");
    assert!(out.stdout.contains("RECAP (check mode"), "{out}");
    assert!(out.stdout.contains("changed=2"), "{out}");
    assert_eq!(
        std::fs::read_to_string(root.join("web-01.conf")).unwrap(),
        "a\nport=80\nz\n",
        "check mode wrote"
    );
    // --json lists every change with its diff (when asked for).
    let out = fleet.run(&script, &["-e", "port=82", "--json", "--diff"]);
    out.assert_code(0);
    let doc = json(&out);
    let changes = doc["hosts"]["web-01"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let conf = changes
        .iter()
        .find(|c| c["target"].as_str().unwrap().ends_with("web-01.conf"))
        .unwrap();
    assert!(
        conf["diff"].as_str().unwrap().contains("+port=82"),
        "{conf}"
    );
    let secret = changes
        .iter()
        .find(|c| c["target"].as_str().unwrap().ends_with(".secret"))
        .unwrap();
    assert!(secret.get("diff").is_none(), "{secret}");
    let task = &doc["tasks"].as_array().unwrap()[0];
    assert_eq!(task["changed"], true, "{task}");
    assert_eq!(task["changes"], 2, "{task}");
}

/// Check mode skips raw calls that change a host (and says so), runs those marked
/// read-only, and tells the task through `host.check`.
#[test]
fn check_mode_skips_raw_calls_that_change_the_host() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("raw");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("keep"), "keep").unwrap();
    let script = format!(
        r#"
local a = artifact.bytes("bytes", "a")
local h = goroutine.async(function()
  local d = "{d}"
  local r = exec.run("touch " .. d .. "/ran")
  print("exec", r.skipped, r.check_mode, r.success, r.code)
  local ro = exec.run({{"cat", d .. "/keep"}}, {{ read_only = true }})
  print("read_only", ro.stdout, ro.code)
  print("spawn", exec.spawn({{"touch", d .. "/spawned"}}).skipped)
  print("write", fs.write(d .. "/written", "x"))
  print("rm", fs.rm(d .. "/keep"))
  print("save", a:save(d .. "/saved"))
  print("os", os.remove(d .. "/keep"), os.execute("touch " .. d .. "/osx"))
  local f = io.open(d .. "/io", "w")
  print("io", f:write("x") ~= nil, f:close())
  io.output(d .. "/io2"); io.write("y"); io.output(io.stdout)
  local post = http.post("http://127.0.0.1:9/deploy", "x", {{ timeout = 200 }})
  print("http", post and post.skipped, post and post.check_mode)
  print("read", io.open(d .. "/keep", "r") ~= nil)
  print("check", host.check)
end, {{ delegate_to = "web-01" }})
goroutine.await(h)
print("main check", host.check)
-- The main script's handlers act on the master like a task: skipped in check mode.
handler("main", function() exec.run({{"touch", "{d}/by-main-handler"}}) end)
file.content{{ path = "{d}/main-conf", content = "x", notify = "main" }}
"#,
        d = d.display()
    );
    let out = fleet.run(&script, &["--check"]);
    out.assert_code(0);
    assert_eq!(out.task_line("exec"), "true\ttrue\ttrue\tnil", "{out}");
    assert_eq!(out.task_line("read_only"), "keep\t0");
    assert_eq!(out.task_line("spawn"), "true");
    assert_eq!(out.task_line("write"), "true\tskipped in check mode");
    assert_eq!(out.task_line("rm"), "true\tskipped in check mode");
    assert_eq!(out.task_line("save"), "true\tskipped in check mode");
    assert_eq!(out.task_line("os"), "true\ttrue\texit\t0", "{out}");
    assert!(
        out.stdout.contains("check mode: skipped: os.remove("),
        "{out}"
    );
    assert_eq!(out.task_line("io"), "true\ttrue", "{out}");
    assert_eq!(out.task_line("http"), "true\ttrue", "{out}");
    assert!(
        out.stdout
            .contains("check mode: not sending: POST http://127.0.0.1:9/deploy"),
        "{out}"
    );
    assert_eq!(out.task_line("read"), "true");
    assert_eq!(out.task_line("check"), "true");
    assert_eq!(out.line("main check"), "true");
    assert!(
        out.stdout.contains("check mode: not running: touch"),
        "{out}"
    );
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["keep"], "check mode changed the host");
    // Without --check the same calls act.
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert!(d.join("ran").exists() && d.join("written").exists() && !d.join("keep").exists());
    assert!(d.join("by-main-handler").exists() && d.join("io").exists());
    assert_eq!(out.task_line("check"), "false");
}

/// Guarded commands: each guard keeps the command from running (not "changed"), a
/// command that runs is "changed" unless changed_when says otherwise, check mode
/// runs guards but never the command, and a failure names the command and its
/// exit code.
#[test]
fn guarded_commands_run_only_when_needed() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("cmd");
    std::fs::create_dir(&d).unwrap();
    let script = format!(
        r#"
local h = goroutine.async(function()
  local d = "{d}"
  local function show(tag, r) print(tag, r.changed, r.action) end
  show("creates", cmd.run{{ "touch " .. d .. "/a", creates = d .. "/a" }})
  show("creates2", cmd.run{{ "touch " .. d .. "/a", creates = d .. "/a" }})
  show("removes", cmd.run{{ "rm " .. d .. "/nothing", removes = d .. "/nothing" }})
  show("unless", cmd.run{{ "touch " .. d .. "/u", unless = {{"test", "-d", d}} }})
  show("only_if", cmd.run{{ "touch " .. d .. "/o", only_if = "test -e " .. d .. "/missing" }})
  local r = cmd.run{{ "echo same", changed_when = function(r) return not r.stdout:find("same") end }}
  print("changed_when", r.changed, r.action, ((r.stdout or ""):gsub("\n", "")))
  local ok, err = pcall(cmd.run, {{ "echo boom >&2; exit 3" }})
  print("fails", ok, err)
  print("empty", pcall(cmd.run, {{ cmd = "  " }}))
end, {{ delegate_to = "web-01" }})
local ok, err = goroutine.await(h)
print("done", ok, err)
"#,
        d = d.display()
    );
    let check = fleet.run(&script, &["--check"]);
    check.assert_code(0);
    assert_eq!(check.task_line("creates"), "true\twould run", "{check}");
    // What a command declares it creates, later steps of check mode see.
    assert!(
        check.task_line("creates2").starts_with("false\tskipped: "),
        "{check}"
    );
    assert!(!d.join("a").exists(), "check mode ran a command");
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert_eq!(out.task_line("creates"), "true\tran", "{out}");
    assert!(
        out.task_line("creates2").starts_with("false\tskipped: "),
        "{out}"
    );
    assert!(out.task_line("removes").contains("does not exist"), "{out}");
    assert!(
        out.task_line("unless")
            .starts_with("false\tskipped: unless"),
        "{out}"
    );
    assert!(
        out.task_line("only_if")
            .starts_with("false\tskipped: only_if"),
        "{out}"
    );
    assert_eq!(
        out.task_line("changed_when"),
        "false\tran (changed_when: no change)\tsame"
    );
    let fails = out.task_line("fails");
    assert!(
        fails.contains("cmd.run echo boom >&2; exit 3: exit code 3: boom"),
        "{fails}"
    );
    assert!(
        out.task_line("empty")
            .contains("cmd.run: option 'cmd' must not be empty"),
        "{out}"
    );
    assert!(!d.join("u").exists() && !d.join("o").exists());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A checkout of a local bare repository: cloned, left alone, moved to a new commit
/// or a tag, planned in check mode without fetching, local changes refused unless
/// forced.
#[test]
fn git_checkouts_follow_the_revision_asked_for() {
    let fleet = TestFleet::web(1);
    let work = fleet.path().join("work");
    let bare = fleet.path().join("repo.git");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("f"), "one\n").unwrap();
    git(&work, &["add", "f"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dest = fleet.path().join("checkout");
    let script = format!(
        r#"
local h = goroutine.async(function()
  local r = git.checkout{{ repo = "{bare}", dest = "{dest}", version = vars.version, force = vars.force == "1" }}
  return r.changed, r.action, r.revision
end, {{ delegate_to = "web-01" }})
local ok, changed, action, rev = goroutine.await(h)
print("r", ok, changed, action, rev)
"#,
        bare = bare.display(),
        dest = dest.display()
    );
    let check = fleet.run(&script, &["--check", "-e", "version=main"]);
    check.assert_code(0);
    assert!(
        check.line("r").starts_with("true\ttrue\twould clone at "),
        "{check}"
    );
    assert!(!dest.exists());
    let out = fleet.run(&script, &["-e", "version=main"]);
    assert!(
        out.line("r")
            .starts_with(&format!("true\ttrue\tcloned at {}", &first[..12])),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    let out = fleet.run(&script, &["-e", "version=main"]);
    assert_eq!(out.line("r"), format!("true\tfalse\tok\t{first}"));

    // A new commit upstream: check plans it (no fetch), the real run moves to it.
    std::fs::write(work.join("f"), "two\n").unwrap();
    git(&work, &["commit", "-qam", "two"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let check = fleet.run(&script, &["--check", "-e", "version=main"]);
    assert_eq!(
        check.line("r"),
        format!(
            "true\ttrue\tupdated {} -> {}\t{second}",
            &first[..12],
            &second[..12]
        )
    );
    assert_eq!(
        git(&dest, &["rev-parse", "HEAD"]),
        first,
        "check mode moved the checkout"
    );
    let out = fleet.run(&script, &["-e", "version=main"]);
    assert!(out.line("r").starts_with("true\ttrue\tupdated "), "{out}");
    assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "two\n");
    // Back to an annotated tag.
    let out = fleet.run(&script, &["-e", "version=v1"]);
    assert_eq!(
        out.line("r"),
        format!(
            "true\ttrue\tupdated {} -> {}\t{first}",
            &second[..12],
            &first[..12]
        )
    );

    // Local changes: refused, then discarded with force.
    std::fs::write(dest.join("f"), "local edit\n").unwrap();
    let out = fleet.run(&script, &["-e", "version=v1"]);
    assert!(
        out.line("r")
            .contains("has local changes (force = true discards them)"),
        "{out}"
    );
    let out = fleet.run(&script, &["-e", "version=v1", "-e", "force=1"]);
    assert!(out.line("r").contains("local changes discarded"), "{out}");
    assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    let out = fleet.run(&script, &["-e", "version=nope"]);
    assert!(
        out.line("r").contains("no branch, tag or commit 'nope'"),
        "{out}"
    );
}

/// An archive artifact is unpacked once: the marker makes a second run a no-op
/// (nothing fetched), a new artifact replaces the tree whole, check mode plans it.
#[test]
fn archives_are_unpacked_once_and_replaced_whole() {
    let fleet = TestFleet::web(1);
    let src = fleet.path().join("src");
    std::fs::create_dir_all(src.join("site/css")).unwrap();
    let dest = fleet.path().join("releases/site");
    let pack = |version: &str| {
        std::fs::write(src.join("site/index.html"), format!("v{version}\n")).unwrap();
        std::fs::write(src.join("site/css/s.css"), "body{}\n").unwrap();
        let tgz = fleet.path().join(format!("site-{version}.tgz"));
        let st = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&src)
            .arg("site")
            .status()
            .unwrap();
        assert!(st.success());
        tgz
    };
    let script = |tgz: &Path| {
        format!(
            r#"
local a = assert(artifact.file("{tgz}"))
local h = goroutine.async(function()
  local r = archive.unpacked{{ artifact = a, dest = "{dest}", strip = 1 }}
  return r.changed, r.action, r.artifact
end, {{ delegate_to = "web-01" }})
print("r", goroutine.await(h))
"#,
            tgz = tgz.display(),
            dest = dest.display()
        )
    };
    let one = script(&pack("1"));
    let check = fleet.run(&one, &["--check"]);
    assert_eq!(check.line("r"), "true\ttrue\twould unpack\tnil", "{check}");
    assert!(!dest.exists());
    let out = fleet.run(&one, &[]);
    assert_eq!(
        out.line("r"),
        "true\ttrue\tunpacked 3 entries\ttransferred",
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("index.html")).unwrap(),
        "v1\n"
    );
    let out = fleet.run(&one, &[]);
    assert_eq!(out.line("r"), "true\tfalse\tok\tnil", "{out}");
    std::fs::write(dest.join("stray"), "left by hand").unwrap();
    let two = script(&pack("2"));
    let out = fleet.run(&two, &[]);
    assert!(out.line("r").starts_with("true\ttrue\tunpacked"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dest.join("index.html")).unwrap(),
        "v2\n"
    );
    assert!(!dest.join("stray").exists(), "the tree is replaced whole");
    let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(leftovers, vec!["site"], "no temporary directory is left");
    // A directory it did not unpack is replaced only with force = true.
    let foreign = fleet.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("data"), "keep me").unwrap();
    let forced = |force: bool| {
        format!(
            r#"
local a = assert(artifact.file("{tgz}"))
local h = goroutine.async(function()
  local r = archive.unpacked{{ artifact = a, dest = "{dest}", strip = 1, force = {force} }}
  return r.changed
end, {{ delegate_to = "web-01" }})
print("r", goroutine.await(h))
"#,
            tgz = fleet.path().join("site-2.tgz").display(),
            dest = foreign.display()
        )
    };
    let out = fleet.run(&forced(false), &[]);
    assert!(out.line("r").contains("holds no .sloth-archive"), "{out}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("data")).unwrap(),
        "keep me"
    );
    assert_eq!(fleet.run(&forced(true), &[]).line("r"), "true\ttrue");
    assert!(!foreign.join("data").exists());
    // Not an archive: a clear error, the old tree stays.
    let bad = fleet.path().join("bad.tgz");
    std::fs::write(&bad, vec![b'x'; 2000]).unwrap();
    let out = fleet.run(&script(&bad), &[]);
    assert!(out.line("r").contains("archive.unpacked"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dest.join("index.html")).unwrap(),
        "v2\n"
    );
}

/// Handlers run once after the body when something notified them changed; also after
/// a later failure (the default), not with on_failure = false; "would run" in check
/// mode; their outcome is in the recap and --json.
#[test]
fn handlers_run_once_after_the_body_even_when_it_fails() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("h");
    std::fs::create_dir(&d).unwrap();
    let script = format!(
        r#"
local h = goroutine.async(function()
  local d = "{d}"
  handler("restart", function() print("restart ran") end)
  handler("quiet", function() print("quiet ran") end, {{ on_failure = false }})
  handler("never", function() print("never ran") end)
  file.content{{ path = d .. "/a", content = vars.v or "1", notify = {{"restart", "quiet"}} }}
  file.content{{ path = d .. "/b", content = "same", notify = "restart" }}
  file.content{{ path = d .. "/c", content = "same", notify = "never" }}
  if vars.fail == "1" then error("a later step failed") end
  return "body done"
end, {{ delegate_to = "web-01", name = "deploy" }})
print("result", goroutine.await(h))
"#,
        d = d.display()
    );
    std::fs::write(d.join("c"), "same").unwrap();
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    assert_eq!(out.stdout.matches("restart ran").count(), 1, "{out}");
    assert_eq!(out.stdout.matches("quiet ran").count(), 1, "{out}");
    assert!(!out.stdout.contains("never ran"), "{out}");
    assert!(
        out.stdout.contains("[web-01 deploy] handler restart: ran"),
        "{out}"
    );

    // Nothing changed: no handler.
    let out = fleet.run(&script, &[]);
    assert!(!out.stdout.contains(" ran"), "{out}");

    // A later failure: "restart" still runs, "quiet" does not; the task fails with
    // the body's error.
    let out = fleet.run(&script, &["-e", "v=2", "-e", "fail=1", "--json"]);
    out.assert_code(1);
    let doc = json(&out);
    let handlers: Vec<(String, String)> = doc["hosts"]["web-01"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "handler")
        .map(|c| {
            (
                c["target"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        handlers,
        vec![
            ("restart".to_string(), "ran".to_string()),
            (
                "quiet".to_string(),
                "not run: the task failed (on_failure = false)".to_string()
            )
        ]
    );
    assert!(out.stderr.contains("restart ran"), "{out}");
    assert!(
        doc["tasks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("a later step failed"),
        "{doc}"
    );

    // Check mode: reported as would run, the handler's own resources plan only.
    let out = fleet.run(&script, &["-e", "v=3", "--check"]);
    out.assert_code(0);
    assert!(out.stdout.contains("handler restart: would run"), "{out}");
    assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "2");

    // Notifying a handler the task does not define is an error at the call.
    let out = fleet.run(
        r#"
local h = goroutine.async(function()
  handler("restart", function() end)
  file.content{ path = "/tmp/sloth-never-written", content = "x", notify = "restrat" }
end, { delegate_to = "web-01" })
print("r", goroutine.await(h))
"#,
        &[],
    );
    let r = out.line("r");
    assert!(
        r.contains("option 'notify' names no handler of this task: 'restrat'"),
        "{r}"
    );
    assert!(r.contains("(did you mean 'restart'?)"), "{r}");
    assert!(!Path::new("/tmp/sloth-never-written").exists());
}

/// Bad arguments get an error at the call that names the argument, before anything
/// changes.
#[test]
fn bad_resource_arguments_are_named() {
    let fleet = TestFleet::web(1);
    let p = fleet.path().join("x.conf");
    let script = format!(
        r#"
local p = "{p}"
local h = goroutine.async(function()
  local cases = {{
    {{ "unknown", function() file.content{{ path = p, content = "x", mdoe = "0644", ownr = "root" }} end }},
    {{ "relative", function() file.content{{ path = "etc/x", content = "x" }} end }},
    {{ "rwx", function() file.content{{ path = p, content = "x", mode = "rwx" }} end }},
    {{ "number", function() file.content{{ path = p, content = "x", mode = 0644 }} end }},
    {{ "two", function() file.content{{ path = p, content = "x", template = "y" }} end }},
    {{ "owner", function() file.content{{ path = p, content = "x", owner = "no-such-user-here" }} end }},
    {{ "type", function() file.directory(42) end }},
    {{ "state", function() file.line{{ path = p, line = "x", state = "presnt" }} end }},
    {{ "regex", function() file.line{{ path = p, line = "x", regex = "(" }} end }},
    {{ "tpl", function() file.content{{ path = p, template = "{{{{ missing }}}}" }} end }},
    {{ "dir", function() file.content{{ path = "/", content = "x" }} end }},
  }}
  for _, c in ipairs(cases) do
    local ok, err = pcall(c[2])
    print(c[1], ok, err)
  end
end, {{ delegate_to = "web-01" }})
goroutine.await(h)
"#,
        p = p.display()
    );
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    let e = |tag: &str| out.task_line(tag);
    assert!(
        e("unknown").contains(
            "unknown options 'mdoe' (did you mean 'mode'?), 'ownr' (did you mean 'owner'?)"
        ),
        "{out}"
    );
    assert!(
        e("relative").contains("option 'path' must be an absolute path, got 'etc/x'"),
        "{out}"
    );
    assert!(
        e("rwx").contains("option 'mode' must be an octal string like \"0644\", got 'rwx'"),
        "{out}"
    );
    assert!(e("number").contains("is read as decimal 644"), "{out}");
    assert!(
        e("two").contains("give exactly one of content, template or artifact"),
        "{out}"
    );
    assert!(
        e("owner").contains("option 'owner' names no user of this host: 'no-such-user-here'"),
        "{out}"
    );
    assert!(
        e("type")
            .contains("file.directory: expects a table of options (or a path string), got number"),
        "{out}"
    );
    assert!(e("state").contains("did you mean 'present'?"), "{out}");
    assert!(
        e("regex").contains("option 'regex' is not a valid regular expression"),
        "{out}"
    );
    assert!(
        e("tpl").contains("template:") && e("tpl").contains("undefined"),
        "{out}"
    );
    assert!(
        e("dir").contains("exists and is a directory, not a file"),
        "{out}"
    );
    assert!(!p.exists(), "a bad call wrote");
}

/// A resource that needs root says so, before it changes anything, when the agent runs
/// as another user (here `nobody`: the master and its local agent are started with
/// setpriv when the test runs as root).
#[test]
fn resources_that_need_root_say_so() {
    let dir = tempfile::Builder::new()
        .prefix("sloth-nonroot-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = dir.path().join("t.sloth");
    std::fs::write(
        &script,
        r#"
local h = goroutine.async(function()
  -- Never as root: this test must not create users on the machine.
  assert(exec.run({ "id", "-u" }).stdout ~= "0\n", "the agent runs as root")
  print("user", pcall(user.present, { name = "sloth-not-created" }))
  print("group", pcall(group.absent, "root"))
  local p = os.tmpname()
  print("owner", pcall(file.content, { path = p, content = "x", owner = "root" }))
  print("left", fs.exists(p) and (fs.read(p) == "" and "empty temp file" or "WRITTEN") or "nothing")
  os.remove(p)
end, { delegate_to = "local-01" })
local ok, err = goroutine.await(h)
print("done", ok, err)
"#,
    )
    .unwrap();
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(master_bin());
        c
    } else {
        std::process::Command::new(master_bin())
    };
    cmd.current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("HOME", dir.path())
        .arg("run")
        .arg(&script)
        .args(["--local-fleet", "1"]);
    let out = Running::spawn(cmd).finish(RUN_TIMEOUT);
    out.assert_code(0);
    assert_eq!(out.line("done"), "true\tnil", "{out}");
    let uid = rustix::process::geteuid();
    let who = if uid.is_root() { 65534 } else { uid.as_raw() };
    assert_eq!(
        out.task_line("user"),
        format!("false\tuser.present sloth-not-created: needs root (running as uid {who})")
    );
    assert_eq!(
        out.task_line("group"),
        format!("false\tgroup.absent root: needs root (running as uid {who})")
    );
    let owner = out.task_line("owner");
    assert!(
        owner.starts_with("false\tfile.content ")
            && owner.contains(&format!("(running as uid {who}, not root)")),
        "{owner}"
    );
    assert_ne!(out.task_line("left"), "WRITTEN", "{out}");
}

/// Check mode follows what earlier resources of the task would remove and create: a
/// directory cleaned and made again, files below a directory made with its parents.
#[test]
fn check_mode_follows_removals_and_parents() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("plan");
    std::fs::create_dir_all(d.join("build")).unwrap();
    std::fs::write(d.join("build/old"), "old").unwrap();
    std::fs::write(d.join("build/stamp"), "v1").unwrap();
    let script = format!(
        r#"
local h = goroutine.async(function()
  local d = "{d}"
  file.absent(d .. "/build")
  file.directory(d .. "/build")
  file.content{{ path = d .. "/build/stamp", content = "v1" }}
  file.directory(d .. "/releases/1.0/static")
  file.content{{ path = d .. "/releases/config.yml", content = "a: 1\n" }}
  file.line{{ path = d .. "/releases/1.0/env", line = "A=1", create = true }}
end, {{ delegate_to = "web-01" }})
assert(goroutine.await(h))
"#,
        d = d.display()
    );
    let check = fleet.run(&script, &["--check", "--json"]);
    check.assert_code(0);
    assert!(d.join("build/old").exists(), "check mode removed a file");
    let real = fleet.run(&script, &["--json"]);
    real.assert_code(0);
    let (planned, done) = (changed_set(&json(&check)), changed_set(&json(&real)));
    assert_eq!(planned, done);
    assert_eq!(done.len(), 6, "{done:?}");
}

/// A file whose owner is fixed keeps the set-id bits it is asked to have: a chown
/// clears them, so the mode is set again after it, and a second run finds nothing.
#[test]
fn fixing_an_owner_keeps_setid_bits() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let fleet = TestFleet::web(1);
    let p = fleet.path().join("tool");
    std::fs::write(&p, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let script = format!(
        r##"
local h = goroutine.async(function()
  local r = file.content{{ path = "{p}", content = "#!/bin/sh\n", mode = "4755", owner = "root", group = "root" }}
  return r.changed, r.action
end, {{ delegate_to = "web-01" }})
print("r", goroutine.await(h))
"##,
        p = p.display()
    );
    let out = fleet.run(&script, &[]);
    assert_eq!(
        out.line("r"),
        "true\ttrue\towner 65534 -> root, group 65534 -> root",
        "{out}"
    );
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o4755));
    assert_eq!(fleet.run(&script, &[]).line("r"), "true\tfalse\tok");
}

/// What `--diff` and the action say about files, as an operator reviews them: a big
/// file's one-line change is a hunk (never "created from /dev/null"), a mode changed
/// together with the content is in the action and the diff, a directory's creation
/// and mode change have diffs, a file under a symlinked directory is written, and
/// `owner = 4294967295` (chown's "leave it") is refused.
#[test]
fn diffs_and_actions_say_everything_that_changes() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("files");
    std::fs::create_dir_all(d.join("real")).unwrap();
    std::os::unix::fs::symlink("real", d.join("current")).unwrap();
    let big: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(d.join("big.txt"), &big).unwrap();
    std::fs::write(d.join("small.conf"), "a\n").unwrap();
    std::fs::set_permissions(
        d.join("small.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let script = format!(
        r#"
local h = goroutine.async(function()
  local d = "{d}"
  local big = fs.read(d .. "/big.txt"):gsub("\n20000\n", "\nTWENTY\n")
  file.content{{ path = d .. "/big.txt", content = big }}
  file.content{{ path = d .. "/small.conf", content = "b\n", mode = "0600" }}
  file.directory{{ path = d .. "/made", mode = "0750" }}
  file.content{{ path = d .. "/current/app.yml", content = "x: 1\n" }}
  local ok, err = pcall(file.content, {{ path = d .. "/nobody", content = "x", owner = "4294967295" }})
  print("OWNER", ok, err)
end, {{ delegate_to = "web-01", name = "files" }})
assert(goroutine.await(h))
"#,
        d = d.display()
    );
    let out = fleet.run(&script, &["--json", "--diff"]);
    out.assert_code(0);
    let doc = json(&out);
    let changes = doc["hosts"]["web-01"]["changes"]
        .as_array()
        .unwrap()
        .clone();
    let change = |suffix: &str| {
        changes
            .iter()
            .find(|c| c["target"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no change of {suffix}: {changes:?}"))
            .clone()
    };
    let b = change("big.txt");
    let diff = b["diff"].as_str().unwrap();
    assert!(!diff.contains("/dev/null"), "{diff}");
    assert!(diff.contains("-20000\n+TWENTY\n"), "{diff}");
    assert_eq!(b["action"], "updated", "{b}");
    let s = change("small.conf");
    assert_eq!(s["action"], "updated, mode 0644 -> 0600", "{s}");
    let diff = s["diff"].as_str().unwrap();
    assert!(diff.contains("-a\n+b\n"), "{diff}");
    assert!(diff.contains("-mode: 0644\n+mode: 0600\n"), "{diff}");
    let m = change("made");
    assert!(
        m["diff"]
            .as_str()
            .unwrap()
            .contains("+directory, mode 0750"),
        "{m}"
    );
    assert_eq!(change("current/app.yml")["action"], "created");
    assert_eq!(
        std::fs::read_to_string(d.join("real/app.yml")).unwrap(),
        "x: 1\n"
    );
    assert!(
        out.stderr.contains("OWNER\tfalse\tfile.content ")
            && out
                .stderr
                .contains("option 'owner' is not a valid id: 4294967295"),
        "{out}"
    );
    assert!(!d.join("nobody").exists());
    // The directory's mode alone: one -/+ pair, nothing empty.
    let again = format!(
        r#"
local h = goroutine.async(function()
  file.directory{{ path = "{d}/made", mode = "0755" }}
end, {{ delegate_to = "web-01", name = "files" }})
assert(goroutine.await(h))
"#,
        d = d.display()
    );
    let out = fleet.run(&again, &["--json", "--diff"]);
    out.assert_code(0);
    let doc = json(&out);
    let c = &doc["hosts"]["web-01"]["changes"][0];
    assert_eq!(c["action"], "mode 0750 -> 0755", "{c}");
    assert!(
        c["diff"]
            .as_str()
            .unwrap()
            .ends_with("-mode: 0750\n+mode: 0755\n"),
        "{c}"
    );
}

/// Check mode knows what an earlier `file.content{artifact = ...}` of the task would
/// write: the same artifact again is no change, and a `file.line` the artifact
/// already holds is none either, as in the real run.
#[test]
fn check_mode_knows_the_content_an_artifact_would_write() {
    let fleet = TestFleet::web(1);
    let d = fleet.path().join("art");
    std::fs::create_dir_all(&d).unwrap();
    let script = format!(
        r#"
local a = artifact.bytes("listen 80\nworkers 4\n", "app.conf")
local h = goroutine.async(function()
  local p = "{d}/app.conf"
  local r = {{}}
  r[#r + 1] = file.content{{ path = p, artifact = a }}.changed
  r[#r + 1] = file.content{{ path = p, artifact = a }}.changed
  r[#r + 1] = file.line{{ path = p, line = "workers 4" }}.changed
  r[#r + 1] = file.line{{ path = p, line = "user www" }}.changed
  return table.concat((function() local s = {{}} for i, v in ipairs(r) do s[i] = tostring(v) end return s end)(), ",")
end, {{ delegate_to = "web-01" }})
print("r", select(2, goroutine.await(h)))
"#,
        d = d.display()
    );
    let check = fleet.run(&script, &["--check", "--json"]);
    check.assert_code(0);
    assert!(!d.join("app.conf").exists(), "check mode wrote");
    let real = fleet.run(&script, &["--json"]);
    real.assert_code(0);
    assert_eq!(changed_count(&json(&check), "web-01"), 2, "{check}");
    assert_eq!(changed_count(&json(&real), "web-01"), 2, "{real}");
    assert_eq!(
        std::fs::read_to_string(d.join("app.conf")).unwrap(),
        "listen 80\nworkers 4\nuser www\n"
    );
}
