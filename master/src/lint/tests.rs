//! The checker on small scripts: each kind of finding, with its line, and the code it
//! must leave alone.

use super::{check, Finding, Level};
use crate::engine::inventory::Inventory;

fn inventory() -> Inventory {
    Inventory::parse(
        r#"
[hosts.web-01]
address = "10.0.0.11"
groups = ["web"]
[hosts.web-02]
address = "10.0.0.12"
groups = ["web"]
[hosts.db-01]
address = "10.0.0.21"
groups = ["db"]
"#,
        "test",
    )
    .expect("a valid inventory")
}

fn lint(src: &str) -> Vec<Finding> {
    check("t.sloth", src, Some(&inventory()))
}

fn rendered(src: &str) -> Vec<String> {
    lint(src).iter().map(|f| f.render("t.sloth")).collect()
}

#[test]
fn syntax_errors_come_from_lua_with_their_line() {
    let f = lint("local x = 1\nif x then\n  print(x)\n");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].level, Level::Error);
    assert_eq!(f[0].line, 4, "{f:?}");
    assert!(f[0].message.starts_with("syntax error: "), "{f:?}");
}

#[test]
fn unknown_module_functions_are_named_with_a_suggestion() {
    let r = rendered(
        "local h = goroutine.async(function()\n  fs.wirte('/tmp/x', 'y')\nend)\nexec.runn('ls')\n",
    );
    assert_eq!(
        r,
        vec![
            "t.sloth:2: error: unknown function fs.wirte (did you mean 'fs.write'?)",
            "t.sloth:4: error: unknown function exec.runn (did you mean 'exec.run'?)",
        ]
    );
    // Nothing close: the module's functions are listed.
    let r = rendered("net.zzzzzzzz()");
    assert_eq!(
        r,
        vec!["t.sloth:1: error: unknown function net.zzzzzzzz (net has tcp_check)"]
    );
}

#[test]
fn locals_shadow_modules() {
    assert!(lint("local fs = { wirte = print }\nfs.wirte('x')").is_empty());
    assert!(lint("local function f(file) return file.nope end").is_empty());
    assert!(lint("for _, exec in ipairs({}) do exec.whatever() end").is_empty());
    // ... but only in their scope.
    let r = rendered("do local fs = {} end\nfs.wirte('x', 'y')");
    assert_eq!(r.len(), 1, "{r:?}");
}

#[test]
fn unknown_keys_in_literal_option_tables() {
    let r = rendered(
        r#"local r = exec.run("pwd", { cdw = "/etc", timout = "1s" })
file.content{ path = "/x", content = "y", mdoe = "0644" }
goroutine.async(function() end, { delegate_to = "web-01", retires = 2 })
template.render("x", {}, { stirct = false })
cmd.run{ "make", creates = "/x" }
"#,
    );
    assert_eq!(r.len(), 5, "{r:#?}");
    assert!(
        r[0].starts_with("t.sloth:1: error: exec.run: unknown option 'cdw' (did you mean 'cwd'?)")
    );
    assert!(r[1].starts_with(
        "t.sloth:1: error: exec.run: unknown option 'timout' (did you mean 'timeout'?)"
    ));
    assert!(r[2].starts_with(
        "t.sloth:2: error: file.content: unknown option 'mdoe' (did you mean 'mode'?)"
    ));
    assert!(r[3].starts_with(
        "t.sloth:3: error: goroutine.async: unknown option 'retires' (did you mean 'retries'?)"
    ));
    assert!(r[4].starts_with(
        "t.sloth:4: error: template.render: unknown option 'stirct' (did you mean 'strict'?)"
    ));
}

#[test]
fn hosts_and_patterns_must_match_the_inventory() {
    let r = rendered(
        r#"goroutine.async(function() end, { delegate_to = "web-03" })
for _, h in ipairs(fleet.hosts("dbs")) do end
fleet.run("web", function() end)
fleet.info("db-01")
goroutine.async(function() end, { delegate_to = "db-01" })
"#,
    );
    assert_eq!(r.len(), 2, "{r:#?}");
    assert!(
        r[0].starts_with("t.sloth:1: error: goroutine.async: delegate_to: "),
        "{r:?}"
    );
    assert!(r[0].contains("web-03"), "{r:?}");
    assert!(r[1].starts_with("t.sloth:2: error: fleet.hosts: "), "{r:?}");
    // Without an inventory, names are not checked.
    let none = check("t.sloth", "fleet.hosts('dbs')", None);
    assert!(none.is_empty());
}

#[test]
fn tasks_changing_what_they_captured_are_warned() {
    let r = rendered(
        r#"local results, count = {}, 0
summary = {}
for _, h in ipairs(fleet.hosts("all")) do
  goroutine.async(function()
    local mine = {}
    mine.x = 1
    results[host.name] = "done"
    count = count + 1
    summary.last = host.name
    host.vars.seen = true
    local function inner() mine.y = 2 end
    inner()
  end, { delegate_to = h })
end
results.local_change = true
"#,
    );
    assert_eq!(
        r,
        vec![
            "t.sloth:7: warning: a task assigns into 'results', which it captured: the task runs on a copy, so the change stays on the host; return values instead",
            "t.sloth:8: warning: a task assigns to 'count', which it captured: the task runs on a copy, so the change stays on the host; return values instead",
            "t.sloth:9: warning: a task assigns into 'summary', which it captured: the task runs on a copy, so the change stays on the host; return values instead",
        ]
    );
    assert!(lint("local r = {}\nr.x = 1").is_empty());
}

#[test]
fn clean_scripts_have_no_findings() {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/parallel_deployment.sloth"),
    )
    .expect("the example");
    let f = check("parallel_deployment.sloth", &src, None);
    assert!(f.is_empty(), "{f:#?}");
}
