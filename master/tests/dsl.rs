//! The original project's task DSL (task():command():delegate_to()...build() and
//! workflow.define():tasks()) on real agents.

mod common;

use common::*;

#[test]
fn workflow_runs_a_dag_across_hosts() {
    let fleet = TestFleet::web(3);
    let out = fleet.run(
        r#"
local build = task("build"):description("compile"):command(function() return "v1.2" end):build()
local deploy = task("deploy"):command(function(inputs) return host.name .. ":" .. inputs.build end)
  :delegate_to("web"):depends_on({ "build" }):timeout("10s"):retries(1):build()
local verify = task("verify"):command(function(inputs)
  local n = 0
  for _, v in pairs(inputs.deploy) do if v:match(":v1.2$") then n = n + 1 end end
  return n
end):depends_on({ "deploy" }):build()
local broken = task("broken"):command(function() error("nope") end):delegate_to({ "web-01" }):build()
local after = task("after"):command(function() return 1 end):depends_on({ "broken" }):build()
local ok, res = workflow.define("release"):tasks({ build, deploy, verify, broken, after }):run()
print("WF", tostring(ok), res.build.value, res.verify.value, tostring(res.broken.success), tostring(res.after.skipped))
print("DEPLOY", res.deploy.value["web-01"], res.deploy.value["web-02"], res.deploy.value["web-03"])
print("BROKEN", res.broken.error)
local solo_ok, solo = task("solo"):command(function() return host.name end):delegate_to("web-02"):build():run()
print("SOLO", tostring(solo_ok), solo["web-02"])
print("CYCLE", pcall(function()
  local a = task("a"):command(function() end):depends_on({ "b" }):build()
  local b = task("b"):command(function() end):depends_on({ "a" }):build()
  return workflow.define("loop"):tasks({ a, b }):run()
end))
"#,
        &[],
    );
    assert_eq!(
        out.one("WF"),
        vec!["false", "v1.2", "3", "false", "true"],
        "{out}"
    );
    assert_eq!(
        out.one("DEPLOY"),
        vec!["web-01:v1.2", "web-02:v1.2", "web-03:v1.2"],
        "{out}"
    );
    assert!(
        out.line("BROKEN").contains("web-01") && out.line("BROKEN").contains("nope"),
        "{out}"
    );
    assert_eq!(out.one("SOLO"), vec!["true", "web-02"], "{out}");
    assert!(out.line("CYCLE").contains("dependency cycle"), "{out}");
}
