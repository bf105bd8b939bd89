//! The capture codec between two real Lua states (no network).

use mlua::{Function, Value as LV};
use sloth_lua::capture::{self, Encoder};
use sloth_lua::context::TaskContext;
use sloth_lua::executor;
use sloth_modules::EXECUTOR;
use sloth_proto::protocol;

fn state() -> capture::TaskState {
    EXECUTOR
        .new_state(&TaskContext::offline("test", "t"))
        .unwrap()
}

/// Capture `fn_src` (an expression returning a function) in one state, ship it
/// through the wire encoding, run it in another, and return its results there.
fn ship(setup: &str, fn_src: &str) -> (capture::TaskState, Vec<LV>) {
    let a = state();
    a.load(setup).set_name("@main.sloth").exec().unwrap();
    let f: Function = a.load(fn_src).set_name("@main.sloth").eval().unwrap();
    let mut enc = Encoder::new(&a);
    enc.push_function_root(&f).unwrap();
    enc.push_script_globals().unwrap();
    let graph = enc.finish();
    let bytes = protocol::encode(&graph).unwrap();
    let graph: sloth_proto::graph::Graph = protocol::decode(&bytes[4..]).unwrap();
    let b = state();
    let env = b.globals();
    let roots = capture::restore_task(&b, &graph, &env).unwrap();
    let LV::Function(g) = roots[0].clone() else {
        panic!("not a function")
    };
    let out: mlua::MultiValue = g.call(()).unwrap();
    (b, out.into_iter().collect())
}

#[test]
fn scalars_keep_their_types() {
    let (_l, v) = ship("", "local a, b, c = 1, 1.0, 'x\\0y' return function() return a, b, c, true, nil, math.maxinteger end");
    assert!(matches!(v[0], LV::Integer(1)));
    assert!(matches!(v[1], LV::Number(f) if f == 1.0));
    assert_eq!(v[2].as_string().unwrap().as_bytes().as_ref(), b"x\0y");
    assert!(matches!(v[3], LV::Boolean(true)));
    assert!(v[4].is_nil());
    assert!(matches!(v[5], LV::Integer(i64::MAX)));
}

#[test]
fn cycles_and_shared_subtables_keep_identity() {
    let (_l, v) = ship(
        "",
        "local t = {name='t'}; t.self = t; local s = {1,2}; local u = {a=s, b=s}
         return function() return t.self == t, u.a == u.b, u.a[2], t.self.self.name end",
    );
    assert!(matches!(v[0], LV::Boolean(true)));
    assert!(matches!(v[1], LV::Boolean(true)));
    assert!(matches!(v[2], LV::Integer(2)));
    assert_eq!(v[3].as_string().unwrap().to_str().unwrap(), "t");
}

#[test]
fn local_functions_globals_and_builtins_travel() {
    let (_l, v) = ship(
        "function greet(n) return 'hi ' .. n end
         counter = 41",
        "local fmt = string.format
         local function double(x) return x * 2 end
         return function() return fmt('%s=%d', greet('bob'), double(counter) + 1 - 41) end",
    );
    assert_eq!(v[0].as_string().unwrap().to_str().unwrap(), "hi bob=42");
}

#[test]
fn shared_upvalue_cells_stay_shared() {
    let (_l, v) = ship(
        "",
        "local n = 0
         local function inc() n = n + 1 end
         local function get() return n end
         return function() inc(); inc(); return get() end",
    );
    assert!(matches!(v[0], LV::Integer(2)));
}

#[test]
fn errors_keep_file_and_line() {
    let a = state();
    let f: Function = a
        .load("return function()\n  error('boom')\nend")
        .set_name("@deploy.sloth")
        .eval()
        .unwrap();
    let mut enc = Encoder::new(&a);
    enc.push_function_root(&f).unwrap();
    let graph = enc.finish();
    let b = state();
    let roots = capture::restore_task(&b, &graph, &b.globals()).unwrap();
    let LV::Function(g) = roots[0].clone() else {
        panic!()
    };
    let err = g.call::<()>(()).unwrap_err();
    assert_eq!(executor::error_text(&err), "deploy.sloth:2: boom");
}

#[test]
fn coroutine_is_refused_naming_the_variable() {
    let a = state();
    let f: Function = a
        .load("local worker = coroutine.create(function() end) return function() return worker end")
        .eval()
        .unwrap();
    let mut enc = Encoder::new(&a);
    let err = enc.push_function_root(&f).unwrap_err();
    assert_eq!(err.to_string(), "cannot send upvalue 'worker' (coroutine)");
    let f: Function = a
        .load(
            "local cfg = {conn = {co = coroutine.create(print)}} return function() return cfg end",
        )
        .eval()
        .unwrap();
    let err = Encoder::new(&a).push_function_root(&f).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot send upvalue 'cfg'.conn.co (coroutine)"
    );
}

/// A global that fails half-way (after registering a table, a function and its
/// prototype) is taken back out whole. Twenty pairs, so that in whatever order the
/// globals are walked some failing global registers first what a good global then
/// needs: the good ones still work, and see the values they share.
#[test]
fn a_global_that_fails_half_way_leaves_the_others_whole() {
    let (_l, v) = ship(
        r#"
for i = 1, 20 do
  local t = { i }
  local function get() return t[1] end
  _G["bad" .. i] = { t, get, coroutine.create(print) }
  _G["good" .. i] = function() return get() end
end
"#,
        r#"return function()
  local sum = 0
  for i = 1, 20 do
    sum = sum + _G["good" .. i]()
    assert(not pcall(function() return _G["bad" .. i] end))
  end
  return sum
end"#,
    );
    assert!(matches!(v[0], LV::Integer(210)), "{v:?}");
}

#[test]
fn unsendable_globals_fail_only_when_used() {
    let (_l, v) = ship(
        "bad = coroutine.create(print); good = 7",
        "return function() local ok, e = pcall(function() return bad end) return good, ok, e end",
    );
    assert!(matches!(v[0], LV::Integer(7)));
    assert!(matches!(v[1], LV::Boolean(false)));
    let msg = v[2].to_string().unwrap();
    assert!(
        msg.contains("global 'bad'") && msg.contains("coroutine"),
        "{msg}"
    );
}

/// Every kind of path an error can name, each rendered only when it fails.
#[test]
fn refusals_name_the_path_through_tables_functions_and_globals() {
    let a = state();
    let refuse = |src: &str| -> String {
        let f: Function = a.load(src).eval().unwrap();
        let mut enc = Encoder::new(&a);
        match enc.push_function_root(&f) {
            Err(e) => e.to_string(),
            Ok(()) => {
                enc.push_script_globals().unwrap();
                let g = enc.finish();
                g.unsendable_globals
                    .iter()
                    .map(|u| format!("{}: {}", u.name, u.reason))
                    .collect()
            }
        }
    };
    assert_eq!(
        refuse("local list = {1, 2, coroutine.create(print)} return function() return list end"),
        "cannot send upvalue 'list'[3] (coroutine)"
    );
    assert_eq!(
        refuse("local m = {[{}] = coroutine.create(print)} return function() return m end"),
        "cannot send upvalue 'm'[key] (coroutine)"
    );
    assert_eq!(
        refuse("local m = {[coroutine.create(print)] = 1} return function() return m end"),
        "cannot send upvalue 'm' key (coroutine)"
    );
    assert_eq!(
        refuse(
            "local co = coroutine.create(print)
             local function helper() return co end
             return function() return helper() end"
        ),
        "cannot send upvalue 'helper' (upvalue 'co') (coroutine)"
    );
    assert_eq!(
        refuse(
            "settings = {hosts = {{name = 'a', link = coroutine.create(print)}}}
             return function() return 1 end"
        ),
        "settings: cannot send global 'settings'.hosts[1].link (coroutine)"
    );
}

/// Tables whose entries mix plain data with tables, functions, builtins and table
/// keys, and more tables than one restore call hands over at a time, come back whole
/// and with their identities.
#[test]
fn big_and_mixed_tables_travel_whole() {
    let (_l, v) = ship(
        "",
        r#"
local shared = {tag = 'shared'}
local key = {}
local t = {1, 2.5, 'three', true, [key] = 'by table', fmt = string.format, self = nil,
           f = function(x) return x + 1 end, again = shared, also = shared, [0.5] = 'half'}
t.self = t
local many = {}
for i = 1, 300 do many[i] = {i = i, up = shared, name = 'n' .. i} end
return function()
  local k
  for kk, vv in pairs(t) do if type(kk) == 'table' then k = kk end end
  local sum = 0
  for i = 1, #many do sum = sum + many[i].i; assert(many[i].up == t.again) end
  return t[1], t[2], t[3], t[4], t[k], t.fmt('%d', 7), t.f(1), t.again == t.also,
         t.self == t, t[0.5], #many, sum, many[300].name
end
"#,
    );
    assert!(matches!(v[0], LV::Integer(1)));
    assert!(matches!(v[1], LV::Number(f) if f == 2.5));
    assert_eq!(v[2].as_string().unwrap().to_str().unwrap(), "three");
    assert!(matches!(v[3], LV::Boolean(true)));
    assert_eq!(v[4].as_string().unwrap().to_str().unwrap(), "by table");
    assert_eq!(v[5].as_string().unwrap().to_str().unwrap(), "7");
    assert!(matches!(v[6], LV::Integer(2)));
    assert!(matches!(v[7], LV::Boolean(true)));
    assert!(matches!(v[8], LV::Boolean(true)));
    assert_eq!(v[9].as_string().unwrap().to_str().unwrap(), "half");
    assert!(matches!(v[10], LV::Integer(300)));
    assert!(matches!(v[11], LV::Integer(45150)));
    assert_eq!(v[12].as_string().unwrap().to_str().unwrap(), "n300");
}

/// A task whose captured data does not fit the memory limit fails while it is
/// restored, with an error that says so; the process carries on.
#[test]
fn a_task_too_big_for_its_memory_limit_fails_while_restored() {
    let a = state();
    let f: Function = a
        .load(
            "local big = {} for i = 1, 20000 do big[i] = string.rep('x', 1000) .. i end
             return function() return #big end",
        )
        .eval()
        .unwrap();
    let mut enc = Encoder::new(&a);
    enc.push_function_root(&f).unwrap();
    let req = protocol::TaskRequest {
        task_id: 1,
        name: "big".into(),
        payload: enc.finish(),
        host_vars: Default::default(),
        timeout_ms: None,
        mode: Default::default(),
    };
    let run = |limit| {
        EXECUTOR.run_task(
            &req,
            TaskContext::offline("test", "big"),
            &executor::Limits {
                memory_limit: Some(limit),
            },
        )
    };
    let err = run(4 << 20).unwrap_err();
    assert!(err.message.contains("memory"), "{}", err.message);
    let ok = run(256 << 20).unwrap();
    assert_eq!(format!("{:?}", ok.roots()), "[Int(20000)]");
}

/// More table entries than a receiver decodes, in one table or across several, are
/// refused with the value's path before they are all copied.
#[test]
fn more_entries_than_a_receiver_decodes_are_refused() {
    let a = state();
    let limit = sloth_proto::graph::MAX_DECODED_ELEMENTS;
    for (src, path) in [
        (
            format!(
                "local t = {{}} for i = 1, {} do t[i] = i end return t",
                limit + 1
            ),
            "return value #1",
        ),
        (
            format!(
                "local half = {} local t = {{ a = {{}}, b = {{}} }}
                 for i = 1, half do t.a[i] = i; t.b[i] = i end return t",
                limit / 2 + 1
            ),
            "return value #1.",
        ),
    ] {
        let v: LV = a.load(src.as_str()).eval().unwrap();
        let err = capture::encode_data(&a, &[v], "return value").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("cannot send {path}")), "{text}");
        assert!(
            text.ends_with(&format!("more than {limit} table entries in one value")),
            "{text}"
        );
    }
}

/// A builtin the script drops is never collected: a function or table of the
/// script's made at its address afterwards would otherwise travel as that builtin.
/// (The main state's builtins include Lua functions, such as the DSL's.)
#[test]
fn a_builtin_the_script_drops_stays_alive() {
    let a = state();
    a.load("function helper() return 'builtin' end")
        .exec()
        .unwrap();
    capture::install(&a, std::sync::Arc::new(sloth_lua::shared_obj::NoBackend)).unwrap();
    let alive: bool = a
        .load(
            "local seen = setmetatable({}, { __mode = 'v' })
             seen[1] = helper
             helper = nil
             collectgarbage('collect'); collectgarbage('collect')
             return seen[1] ~= nil",
        )
        .eval()
        .unwrap();
    assert!(alive);
}

/// A global that fails after its entries were counted gives its share of the element
/// budget back: the good global after it still fits. (The globals are walked in hash
/// order, so this catches the fault whenever a bad global comes first, two runs in
/// three.)
#[test]
fn a_failed_global_gives_its_element_budget_back() {
    let limit = sloth_proto::graph::MAX_DECODED_ELEMENTS;
    let (_l, v) = ship(
        &format!(
            "local function fill(n) local t = {{}} for i = 1, n do t[i] = i end return t end
             bad1 = fill({bad}); bad1.co = coroutine.create(print)
             bad2 = fill({bad}); bad2.co = coroutine.create(print)
             good = fill({good})",
            bad = limit / 2 + 100_000,
            good = limit / 2,
        ),
        "return function() return #good end",
    );
    assert!(
        matches!(v[0], LV::Integer(n) if n as usize == limit / 2),
        "{v:?}"
    );
}
