//! Micro-benchmark of the task executor, without any network: what building a task
//! state, capturing a closure and running a task cost on this machine.
//!
//!     cargo run --release -p sloth-modules --example exec_bench
//!
//! It prints one line per step (mean µs over 5,000 runs). `scripts/bench.sh` is the
//! benchmark of record; this is the tool for finding where a task's time goes.

#[global_allocator]
static GA: mimalloc::MiMalloc = mimalloc::MiMalloc;
use mlua::{Function, Lua};
use sloth_lua::capture::Encoder;
use sloth_lua::context::TaskContext;
use sloth_lua::executor::Limits;
use sloth_lua::shared_obj::NoBackend;
use sloth_modules::EXECUTOR;
use sloth_proto::graph::Graph;
use sloth_proto::protocol::{self, TaskRequest};
use std::sync::Arc;
use std::time::Instant;

fn ctx() -> TaskContext {
    TaskContext::offline("t", "t")
}

fn time<F: FnMut()>(name: &str, n: u32, mut f: F) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:40} {:8.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    let n = 5000;
    time("Lua::new (all libs, safe)", n, || {
        let l = Lua::new();
        drop(l);
    });
    time("unsafe_new ALL", n, || {
        let l = unsafe { Lua::unsafe_new_with(mlua::StdLib::ALL, mlua::LuaOptions::new()) };
        drop(l);
    });
    time("new_with NONE", n, || {
        let l = Lua::new_with(mlua::StdLib::NONE, mlua::LuaOptions::new()).unwrap();
        drop(l);
    });
    time("new_with STRING|TABLE|MATH", n, || {
        let l = Lua::new_with(
            mlua::StdLib::STRING | mlua::StdLib::TABLE | mlua::StdLib::MATH,
            mlua::LuaOptions::new(),
        )
        .unwrap();
        drop(l);
    });
    time("blank_state + drop", n, || {
        let l = EXECUTOR.blank_state().unwrap();
        drop(l);
    });
    let states: Vec<_> = (0..n).map(|_| EXECUTOR.blank_state().unwrap()).collect();
    let t = Instant::now();
    drop(states);
    println!(
        "{:40} {:8.2} us",
        "drop only",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let main = EXECUTOR.new_state(&ctx()).unwrap();
    sloth_lua::capture::install(&main, Arc::new(NoBackend)).unwrap();
    let f: Function = main
        .load("local i = 1 return function() return i end")
        .set_name("@main.sloth")
        .eval()
        .unwrap();
    let mut g = Graph::default();
    time("encode trivial closure", n, || {
        let mut e = Encoder::new(&main);
        e.push_function_root(&f).unwrap();
        e.push_script_globals().unwrap();
        g = e.finish();
    });
    let req = TaskRequest {
        task_id: 1,
        name: "x".into(),
        payload: g.clone(),
        host_vars: Graph::default(),
        timeout_ms: None,
        mode: Default::default(),
    };
    // A deployment script's inventory as a global: 100 hosts of 3 fields and a
    // 2-entry list each (201 tables), which every task of the script carries.
    main.load(
        "config = { app = 'web', version = '1.2.3', port = 8080, hosts = {} }
         for i = 1, 100 do
           config.hosts[i] = { name = 'web-' .. i, port = 8000 + i, roles = { 'app', 'cache' } }
         end",
    )
    .exec()
    .unwrap();
    let mut big = Graph::default();
    time("encode closure + 100-host config global", n / 10, || {
        let mut e = Encoder::new(&main);
        e.push_function_root(&f).unwrap();
        e.push_script_globals().unwrap();
        big = e.finish();
    });
    main.load("config = nil").exec().unwrap();
    let big_req = TaskRequest {
        task_id: 1,
        name: "x".into(),
        payload: big,
        host_vars: Graph::default(),
        timeout_ms: None,
        mode: Default::default(),
    };
    time("bincode encode+decode req", n, || {
        let b = protocol::encode(&req).unwrap();
        let _r: TaskRequest = protocol::decode(&b[4..]).unwrap();
    });
    let lim = Limits {
        memory_limit: Some(512 << 20),
    };
    time("bincode encode+decode req with config", n / 10, || {
        let b = protocol::encode(&big_req).unwrap();
        let _r: TaskRequest = protocol::decode(&b[4..]).unwrap();
    });
    time("run_task (no prewarm)", n, || {
        EXECUTOR.run_task(&req, ctx(), &lim).unwrap();
    });
    time("run_task with config (no prewarm)", n / 10, || {
        EXECUTOR.run_task(&big_req, ctx(), &lim).unwrap();
    });
    EXECUTOR.enable_prewarm(8);
    std::thread::sleep(std::time::Duration::from_millis(200));
    time("run_task (prewarm, serial)", n, || {
        EXECUTOR.run_task(&req, ctx(), &lim).unwrap();
    });
}
