//! Strict options everywhere: every function of every module (main script and task
//! states) is listed either as taking an options table, with its keys, or as taking
//! none; and every one that takes a table refuses an unknown key, naming it with the
//! keys it knows — exactly the keys listed (what `sloth-master check` relies on).

mod common;

use std::collections::BTreeSet;

use common::*;
use sloth_master::lua::options;

/// Lua that prints `FN name` for every function of the sloth modules and globals of the
/// state it runs in (the standard library left out).
const LIST: &str = r#"
local std = { string = 1, table = 1, math = 1, io = 1, os = 1, utf8 = 1, coroutine = 1,
  debug = 1, package = 1, _G = 1, vars = 1, host = 1 }
local base = { assert = 1, collectgarbage = 1, dofile = 1, error = 1, getmetatable = 1,
  ipairs = 1, load = 1, loadfile = 1, next = 1, pairs = 1, pcall = 1, rawequal = 1,
  rawget = 1, rawlen = 1, rawset = 1, require = 1, select = 1, setmetatable = 1,
  tonumber = 1, tostring = 1, type = 1, warn = 1, xpcall = 1 }
local out = {}
local function list(names)
  for _, name in ipairs(names) do
    local v = _G[name]
    if type(v) == "function" and not base[name] then
      out[#out + 1] = name
    elseif type(v) == "table" and not std[name] then
      for k, f in pairs(v) do
        out[#out + 1] = (type(f) == "function" and "" or "field ") .. name .. "." .. k
      end
    end
  end
end
"#;

fn listed(out: &Output, tag: &str) -> BTreeSet<String> {
    out.all(tag).into_iter().map(|f| f.join("\t")).collect()
}

#[test]
fn every_function_is_classified() {
    let fleet = TestFleet::web(1);
    // The main state has every global built; a task state builds modules on first
    // use, so the task names them all first.
    let script = format!(
        r#"{LIST}
local names = {{}}
for k in pairs(_G) do names[#names + 1] = k end
list(names)
for _, n in ipairs(out) do print("MAIN", n) end
local modules = {{ "goroutine", "json", "exec", "fs", "http", "net", "sys", "template", "log",
  "file", "pkg", "service", "user", "group", "cmd", "git", "archive", "print", "handler" }}
local h = goroutine.async(function()
  out = {{}}
  list(modules)
  return out
end)
local ok, task = goroutine.await(h)
assert(ok, task)
for _, n in ipairs(task) do print("TASK", n) end
"#
    );
    let out = fleet.run(&script, &[]);
    out.assert_code(0);
    let with_table = |tables: &[sloth_lua::opts::OptionTable]| -> BTreeSet<String> {
        tables.iter().map(|t| t.function.to_string()).collect()
    };
    let modules: BTreeSet<String> = with_table(sloth_modules::options::OPTION_TABLES)
        .into_iter()
        .chain(
            sloth_modules::options::NO_OPTIONS
                .iter()
                .map(|s| s.to_string()),
        )
        .collect();
    let master: BTreeSet<String> = with_table(options::OPTION_TABLES)
        .into_iter()
        .chain(options::NO_OPTIONS.iter().map(|s| s.to_string()))
        .collect();
    let fields: BTreeSet<String> = sloth_modules::options::FIELDS
        .iter()
        .map(|f| format!("field {f}"))
        .collect();
    let modules: BTreeSet<String> = modules.union(&fields).cloned().collect();
    let task = listed(&out, "TASK");
    let main = listed(&out, "MAIN");
    let unclassified: Vec<&String> = task.iter().filter(|f| !modules.contains(*f)).collect();
    assert!(
        unclassified.is_empty(),
        "task functions missing from sloth_modules::options: {unclassified:?}"
    );
    let both: BTreeSet<String> = modules.union(&master).cloned().collect();
    let unclassified: Vec<&String> = main.iter().filter(|f| !both.contains(*f)).collect();
    assert!(
        unclassified.is_empty(),
        "main-script functions missing from the option registries: {unclassified:?}"
    );
    // And nothing listed that does not exist.
    let gone: Vec<&String> = both.iter().filter(|f| !main.contains(*f)).collect();
    assert!(gone.is_empty(), "listed but not defined: {gone:?}");
    assert!(main.len() > 80, "{} functions", main.len());
}

#[test]
fn every_option_table_refuses_unknown_keys_naming_the_known_ones() {
    let fleet = TestFleet::web(1);
    let mut script = String::new();
    let all: Vec<_> = options::all().collect();
    for (i, t) in all.iter().enumerate() {
        let call = t.sample.replace("OPTS", "sloth_probe = 1");
        script += &format!(
            "do local ok, err = pcall(function() return {call} end)\n\
             print('PROBE', {i}, tostring(ok), (tostring(err):gsub('[\\t\\n]', ' '))) end\n"
        );
    }
    // Check mode: a function that failed to refuse would still change nothing.
    let out = fleet.run(&script, &["--check"]);
    out.assert_code(0);
    let probes = out.all("PROBE");
    assert_eq!(probes.len(), all.len(), "{out}");
    for p in probes {
        let t = all[p[0].parse::<usize>().unwrap()];
        let err = &p[2];
        assert_eq!(p[1], "false", "{} accepted an unknown key", t.function);
        let mut keys = t.keys.to_vec();
        keys.sort_unstable();
        assert!(
            err.contains("unknown option 'sloth_probe'")
                && err.contains(&format!("(known: {})", keys.join(", "))),
            "{}: {err}\nwanted known: {}",
            t.function,
            keys.join(", ")
        );
        assert!(
            err.contains(t.function),
            "{}: the error does not name the function: {err}",
            t.function
        );
    }
}

/// A typo in a key a function needs is reported as the typo, not as the missing key:
/// `nmae` is named (with the suggestion), wherever the function notices what is
/// missing first. Case is a typo too (`CWD`).
#[test]
fn a_misspelt_required_key_is_named_as_the_typo() {
    let fleet = TestFleet::web(1);
    let out = fleet.run(
        r#"
for i, f in ipairs({
  function() return service.running{ nmae = "x" } end,
  function() return pkg.installed{ nam = "x" } end,
  function() return group.present{ nmae = "x" } end,
  function() return archive.unpacked{ src = "x", dset = "/y" } end,
  function() return file.content{ path = "/tmp/zz", contnt = "x" } end,
  function() return exec.run("pwd", { CWD = "/" }) end,
}) do
  local ok, err = pcall(f)
  print("E", i, tostring(ok), err)
end
"#,
        &["--check"],
    );
    let e = out.all("E");
    assert_eq!(e.len(), 6, "{out}");
    let expect = [
        "unknown option 'nmae' (did you mean 'name'?)",
        "unknown option 'nam' (did you mean 'name'?)",
        "unknown option 'nmae' (did you mean 'name'?)",
        "unknown option 'dset' (did you mean 'dest'?)",
        "unknown option 'contnt' (did you mean 'content'?)",
        "unknown option 'CWD' (did you mean 'cwd'?)",
    ];
    for (line, want) in e.iter().zip(expect) {
        assert_eq!(line[1], "false", "{out}");
        assert!(line[2].contains(want), "{} wanted {want}\n{out}", line[2]);
        assert!(!line[2].contains("traceback"), "{out}");
    }
}
