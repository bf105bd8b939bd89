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
