//! Foundation: values, captures, errors, exit codes and the local fleet, all across
//! real `sloth-agent` processes over QUIC with real certificates.

mod common;

use std::time::Duration;

use common::*;

/// Every kind of value and capture survives the trip to an agent and back.
#[test]
fn remote_closure_returns_every_kind_of_value() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
function top_level_helper(x)            -- a global function the script defined
  return "top:" .. x
end

local fmt = string.format               -- a library function captured by a local
local function inner(n) return n * 2 end
local function outer(n) return inner(n) + 1 end   -- calls another captured local

local h = goroutine.async(function()
  local t = { name = "cyc" }
  t.self = t
  local shared = { 10, 20 }
  local u = { a = shared, b = shared }
  return 1, 1.0, "a\0b\0\0c", t, u, outer(20), top_level_helper("x"),
         fmt("%05.1f|%s", 3.14159, "ok"), host.name
end, { delegate_to = "web-01" })

local ok, i, f, s, t, u, o, g, fs, hn = goroutine.await(h)
print("OK", tostring(ok))
print("INT", math.type(i), tostring(i))
print("FLOAT", math.type(f), tostring(f))
local bytes = {}
for k = 1, #s do bytes[#bytes + 1] = tostring(s:byte(k)) end
print("STR", #s, table.concat(bytes, ","))
print("CYCLE", tostring(t.self == t), tostring(t.self.self.name), tostring(getmetatable(t)))
print("SHARED", tostring(u.a == u.b), tostring(u.a[2]), tostring(rawequal(u.a, u.b)))
print("CLOSURE", tostring(o))
print("GLOBAL", g)
print("FMT", fs)
print("HOST", hn)

-- nil and boolean positions, trailing nils included
local h2 = goroutine.async(function()
  return nil, false, true, nil, 0, nil
end, { delegate_to = "web-01" })
local r = table.pack(goroutine.await(h2))
local parts = {}
for k = 1, r.n do parts[#parts + 1] = tostring(r[k]) .. ":" .. type(r[k]) end
print("NILS", r.n, table.concat(parts, ","))

-- the same through await_all's values table
local rs = goroutine.await_all({ goroutine.async(function()
  return 2, 2.5, "x"
end, { delegate_to = "web-01" }) })
print("ALL", tostring(rs[1].success), rs[1].host, math.type(rs[1].values[1]),
      math.type(rs[1].values[2]), rs[1].values[3], #rs[1].values)
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("OK"), "true", "{out}");
    assert_eq!(out.line("INT"), "integer\t1", "{out}");
    assert_eq!(out.line("FLOAT"), "float\t1.0", "{out}");
    assert_eq!(out.line("STR"), "6\t97,0,98,0,0,99", "{out}");
    assert_eq!(out.line("CYCLE"), "true\tcyc\tnil", "{out}");
    assert_eq!(out.line("SHARED"), "true\t20\ttrue", "{out}");
    assert_eq!(out.line("CLOSURE"), "41", "{out}");
    assert_eq!(out.line("GLOBAL"), "top:x", "{out}");
    assert_eq!(out.line("FMT"), "003.1|ok", "{out}");
    assert_eq!(out.line("HOST"), "web-01", "{out}");
    // 6 values; select('#') counts the leading `true` from await too.
    assert_eq!(
        out.line("NILS"),
        "7\ttrue:boolean,nil:nil,false:boolean,true:boolean,nil:nil,0:number,nil:nil",
        "{out}"
    );
    assert_eq!(
        out.line("ALL"),
        "true\tweb-01\tinteger\tfloat\tx\t3",
        "{out}"
    );
}

/// The Lua helpers that run every case locally and on web-01 and print a canonical dump.
const DUMP: &str = r#"
local function dump(v, seen, depth)
  seen = seen or {}
  depth = depth or 0
  local ty = type(v)
  if ty == "number" then return math.type(v) .. ":" .. string.format("%q", v)
  elseif ty == "string" then
    return '"' .. v:gsub("[^%w%p ]", function(c) return "\\" .. c:byte() end) .. '"'
  elseif ty ~= "table" then return ty .. ":" .. tostring(v) end
  if seen[v] then return "<ref" .. seen[v] .. ">" end
  seen.n = (seen.n or 0) + 1
  seen[v] = seen.n
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = dump(k, seen, depth + 1) .. "=" .. dump(v[k], seen, depth + 1)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function dump_all(...)
  local r = table.pack(...)
  local parts = {}
  for i = 1, r.n do parts[#parts + 1] = dump(r[i]) end
  return r.n .. "|" .. table.concat(parts, " ")
end

-- error texts name the host: "local" or "web-01"; compare them without it
local function unhost(s) return (s:gsub("web%-01", "HOST"):gsub("local", "HOST")) end

local function both(name, fn)
  local l = unhost(dump_all(goroutine.await(goroutine.async(fn))))
  local r = unhost(dump_all(goroutine.await(goroutine.async(fn, { delegate_to = "web-01" }))))
  print("LOCAL", name, l)
  print("REMOTE", name, r)
end
"#;

/// The same closures, run once locally and once on an agent, give the same results.
#[test]
fn local_and_remote_give_identical_results() {
    let fleet = TestFleet::web(1);
    let script = format!(
        r#"{DUMP}
function global_sq(x) return x * x end
local fmt = string.format
local base = {{ 1, 2, 3, n = "three" }}
local function add(a, b) return a + b end
local function sum(t) local s = 0 for _, v in ipairs(t) do s = add(s, v) end return s end

both("numbers", function() return 1, 1.0, -0.0, 2^53, math.maxinteger, 1/0, 7 // 2, 7 / 2 end)
both("strings", function() return "", "a\0b", string.rep("\255", 3), fmt("%d-%s", 5, "x") end)
both("nils", function() return nil, false, nil, true, nil end)
both("tables", function()
  local t = {{ k = base }}
  t.me = t
  local s = {{}}
  return t, {{ s, s }}, base
end)
both("closures", function() return sum(base), global_sq(9), add(0.5, 1) end)
both("mutate", function() base[1] = 100 return base[1] end)
both("after_mutate", function() return base[1] end)
both("error", function() error("bad " .. fmt("%d", 7)) end)
both("pcall", function() return pcall(error, "inner") end)
both("hostless", function() return type(host), type(host.vars) end)
"#
    );
    let out = fleet.run(&script, &[]);
    let local = out.all("LOCAL");
    let remote = out.all("REMOTE");
    assert_eq!(local.len(), 10, "{out}");
    assert_eq!(remote.len(), 10, "{out}");
    for (l, r) in local.iter().zip(&remote) {
        assert_eq!(l, r, "local and remote differ for case {}\n{out}", l[0]);
    }
    let get = |name: &str| -> String {
        local
            .iter()
            .find(|l| l[0] == name)
            .map(|l| l[1..].join("\t"))
            .unwrap_or_default()
    };
    assert_eq!(
        get("numbers"),
        "9|boolean:true integer:1 float:0x1p+0 float:-0x0p+0 float:0x1p+53 integer:9223372036854775807 float:1e9999 integer:3 float:0x1.cp+1",
        "{out}"
    );
    assert_eq!(
        get("strings"),
        r#"5|boolean:true "" "a\0b" "\255\255\255" "5-x""#,
        "{out}"
    );
    assert_eq!(
        get("nils"),
        "6|boolean:true nil:nil boolean:false nil:nil boolean:true nil:nil",
        "{out}"
    );
    assert_eq!(
        get("tables"),
        r#"4|boolean:true {"k"={integer:1=integer:1,integer:2=integer:2,integer:3=integer:3,"n"="three"},"me"=<ref1>} {integer:1={},integer:2=<ref2>} {integer:1=integer:1,integer:2=integer:2,integer:3=integer:3,"n"="three"}"#,
        "{out}"
    );
    assert_eq!(
        get("closures"),
        "4|boolean:true integer:6 integer:81 float:0x1.8p+0",
        "{out}"
    );
    // A task's mutation of a captured table does not reach the caller.
    assert_eq!(get("mutate"), "2|boolean:true integer:100", "{out}");
    assert_eq!(get("after_mutate"), "2|boolean:true integer:1", "{out}");
    assert_eq!(
        get("pcall"),
        r#"3|boolean:true boolean:false "inner""#,
        "{out}"
    );
    assert_eq!(
        get("hostless"),
        r#"3|boolean:true "table" "table""#,
        "{out}"
    );
    let error_line = script
        .lines()
        .position(|l| l.starts_with("both(\"error\""))
        .unwrap()
        + 1;
    assert_eq!(
        get("error"),
        format!(r#"2|boolean:false "lua: HOST: t.sloth:{error_line}: bad 7""#),
        "{out}"
    );
    // Two `error` cases failed: the run reports it.
    out.assert_code(1);
}

/// A captured coroutine is refused at the call, with the variable named; pcall catches it.
#[test]
fn capturing_a_coroutine_is_refused_at_the_call_site() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local co = coroutine.create(function() end)
local ok, err = pcall(goroutine.async, function() return coroutine.status(co) end,
                      { delegate_to = "web-01" })
print("CAP", tostring(ok))
print("MSG", tostring(err):match("[^\n]*"))
local ok2, err2 = pcall(goroutine.async, function() return coroutine.status(co) end)
print("CAPLOCAL", tostring(ok2), tostring(err2):match("[^\n]*"))
-- the run goes on
print("AFTER", goroutine.await(goroutine.async(function() return 42 end, { delegate_to = "web-01" })))
"#,
        &[],
    );
    assert_eq!(out.line("CAP"), "false", "{out}");
    let msg = out.line("MSG");
    assert!(
        msg.contains("cannot send upvalue 'co' (coroutine) to web-01"),
        "{msg}\n{out}"
    );
    let local = out.line("CAPLOCAL");
    assert!(local.starts_with("false\t"), "{out}");
    assert!(
        local.contains("cannot send upvalue 'co' (coroutine)"),
        "{out}"
    );
    assert_eq!(out.line("AFTER"), "true\t42", "{out}");
    out.assert_code(0);
}

/// The error a script catches from a refused capture is a plain Lua string (like every
/// library error), so `err:match(...)` works, and it carries no "runtime error:" noise.
#[test]
fn capture_error_is_a_plain_string() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
local co = coroutine.create(function() end)
local ok, err = pcall(goroutine.async, function() return co end, { delegate_to = "web-01" })
print("TYPE", type(err))
print("MSG", tostring(err))
"#,
        &[],
    );
    assert_eq!(out.line("TYPE"), "string", "{out}");
    assert_eq!(
        out.line("MSG"),
        "goroutine.async: cannot send upvalue 'co' (coroutine) to web-01",
        "{out}"
    );
}

/// 100 concurrent asyncs over 3 agents all come back right.
#[test]
fn hundred_concurrent_asyncs_over_three_agents() {
    let fleet = TestFleet::web(3);
    let out = fleet.run(
        r#"
local hosts = fleet.hosts("web")
local hs = {}
for i = 1, 100 do
  hs[i] = goroutine.async(function()
    goroutine.sleep(20)
    return i * i, host.name
  end, { delegate_to = hosts[(i % #hosts) + 1] })
end
local sum, bad, per = 0, 0, {}
for i, r in ipairs(goroutine.await_all(hs)) do
  if r.success and r.values[1] == i * i and r.values[2] == r.host then
    sum = sum + r.values[1]
    per[r.host] = (per[r.host] or 0) + 1
  else
    bad = bad + 1
    print("BAD", i, tostring(r.error))
  end
end
print("HOSTS", table.concat(hosts, ","))
print("SUM", sum, bad)
print("PER", per["web-01"], per["web-02"], per["web-03"])
"#,
        &[],
    );
    out.assert_code(0);
    assert_eq!(out.line("HOSTS"), "web-01,web-02,web-03", "{out}");
    // sum of i^2 for 1..100
    assert_eq!(out.line("SUM"), "338350\t0", "{out}");
    assert_eq!(out.line("PER"), "33\t34\t33", "{out}");
}

/// A Lua error names the host, the script file and the line of the `error` call.
#[test]
fn remote_lua_error_names_host_file_and_line() {
    let fleet = TestFleet::web(1);
    let out = fleet.run_named(
        "boom.sloth",
        r#"-- line 1
local h = goroutine.async(function()
  local x = 1
  if x == 1 then
    error("boom")
  end
end, { delegate_to = "web-01" })
local ok, err = goroutine.await(h)
print("ERR", tostring(ok), err)
local r = goroutine.await_all({ h })[1]
print("KIND", tostring(r.success), r.kind, r.host)
"#,
        &[],
    );
    assert_eq!(
        out.line("ERR"),
        "false\tlua: web-01: boom.sloth:5: boom",
        "{out}"
    );
    assert_eq!(out.line("KIND"), "false\tlua\tweb-01", "{out}");
    out.assert_code(1);
}

/// Exit codes: 0, 1 and 2, with one-line explanations.
#[test]
fn exit_codes() {
    let fleet = TestFleet::web(1);

    let ok = fleet.run(
        r#"print("R", goroutine.await(goroutine.async(function() return 1 end, { delegate_to = "web-01" })))"#,
        &[],
    );
    ok.assert_code(0);
    assert_eq!(ok.line("R"), "true\t1", "{ok}");

    let script_err = fleet.run_named("err.sloth", "local x = nil\nprint(x.field)\n", &[]);
    script_err.assert_code(1);
    assert!(
        script_err.stderr.contains("err.sloth:2"),
        "the error should name the line\n{script_err}"
    );

    let nope = fleet.run(
        r#"
local ok, err = pcall(goroutine.async, function() return 1 end, { delegate_to = "nope" })
print("NOPE", tostring(ok), (tostring(err):match("[^\n]*")))
goroutine.async(function() return 1 end, { delegate_to = "nope" })
"#,
        &[],
    );
    let line = nope.line("NOPE");
    assert!(line.starts_with("false\t"), "{nope}");
    assert!(
        line.contains("'nope'"),
        "the error should quote 'nope': {line}"
    );
    nope.assert_code(1);
    assert!(nope.stderr.contains("nope"), "{nope}");

    let dir = fleet.path();
    std::fs::write(dir.join("x.sloth"), "print('hi')\n").unwrap();
    let missing_inv = sloth_master(dir, &["run", "x.sloth", "-i", "missing.toml"]);
    missing_inv.assert_code(2);
    let err_lines: Vec<&str> = missing_inv.stderr.lines().collect();
    assert_eq!(err_lines.len(), 1, "one line of explanation\n{missing_inv}");
    assert!(err_lines[0].contains("missing.toml"), "{missing_inv}");
    assert!(!missing_inv.stdout.contains("hi"), "{missing_inv}");

    let inv = fleet.inventory();
    let missing_certs = sloth_master(
        dir,
        &[
            "run",
            "x.sloth",
            "-i",
            inv.to_str().unwrap(),
            "--certs",
            "no-such-dir",
        ],
    );
    missing_certs.assert_code(2);
    assert!(
        missing_certs.stderr.contains("no-such-dir"),
        "{missing_certs}"
    );
    assert_eq!(missing_certs.stderr.lines().count(), 1, "{missing_certs}");

    let missing_script = sloth_master(dir, &["run", "nothere.sloth"]);
    missing_script.assert_code(2);
    assert!(
        missing_script.stderr.contains("nothere.sloth"),
        "{missing_script}"
    );

    let bad_var = sloth_master(dir, &["run", "x.sloth", "-e", "novalue"]);
    bad_var.assert_code(2);
}

/// `--local-fleet 3` without inventory: local-01..03, tasks run, no agent left behind.
#[test]
fn local_fleet_without_inventory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lf.sloth"),
        r#"
local hosts = fleet.hosts("all")
print("HOSTS", table.concat(hosts, ","))
local hs = {}
for i, name in ipairs(hosts) do
  hs[i] = goroutine.async(function() return host.name, i * 10 end, { delegate_to = name })
end
for i, r in ipairs(goroutine.await_all(hs)) do
  print("TASK", i, tostring(r.success), r.host, tostring(r.values and r.values[1]),
        tostring(r.values and r.values[2]))
end
print("READY")
goroutine.sleep(300)
"#,
    )
    .unwrap();
    let mut cmd = std::process::Command::new(master_bin());
    cmd.current_dir(dir.path())
        .args(["run", "lf.sloth", "--local-fleet", "3"]);
    let mut run = Running::spawn(cmd);
    assert!(
        run.wait_for("READY", Duration::from_secs(30)).is_some(),
        "no READY"
    );
    let agents = children_named(run.pid(), "sloth-agent");
    let cmdlines: Vec<String> = agents.iter().map(|p| cmdline(*p)).collect();
    let out = run.finish(RUN_TIMEOUT);
    out.assert_code(0);
    assert_eq!(out.line("HOSTS"), "local-01,local-02,local-03", "{out}");
    assert_eq!(
        out.all("TASK"),
        vec![
            vec!["1", "true", "local-01", "local-01", "10"],
            vec!["2", "true", "local-02", "local-02", "20"],
            vec!["3", "true", "local-03", "local-03", "30"],
        ],
        "{out}"
    );
    assert_eq!(agents.len(), 3, "three agents while running: {cmdlines:?}");
    assert!(
        cmdlines.iter().all(|c| c.contains("sloth-fleet-")),
        "{cmdlines:?}"
    );
    // Their temporary certificate directory is gone, and so are they.
    let tmp = cmdlines[0]
        .split(' ')
        .skip_while(|a| *a != "--ca")
        .nth(1)
        .map(|ca| std::path::Path::new(ca).parent().unwrap().to_path_buf())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while agents.iter().any(|p| process_alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &agents {
        assert!(
            !process_alive(*p),
            "agent {p} still running after the run\n{out}"
        );
    }
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}
