//! The main script's Lua state: the task modules, the master's own functions
//! (`goroutine`, `fleet`, `artifact`, the DSL) and the capture codec, and running a
//! script in it.

use std::path::Path;
use std::sync::Arc;

use mlua::{Lua, LuaOptions, StdLib, Table};
use sloth_lua::capture;
use sloth_lua::context::{TaskContext, TaskIo};
use sloth_lua::executor;
use sloth_lua::protect::wrap_errors;
use sloth_lua::shared_obj::SharedBackend;
use sloth_proto::change::Change;
use sloth_proto::protocol::LogLevel;

use crate::engine::events::Events;
use crate::engine::registry::{Caller, MasterBackend};
use crate::engine::runtime::Runtime;

/// `print` and `log` of the main script.
struct MainIo {
    out: Arc<dyn Events>,
    backend: Arc<dyn SharedBackend>,
}

impl TaskIo for MainIo {
    fn log(&self, level: LogLevel, line: &str) {
        self.out.script_log(level, line);
    }
    fn change(&self, change: Change) {
        self.out.task_change(0, MAIN_HOST, "main", &change);
    }
    fn backend(&self) -> Arc<dyn SharedBackend> {
        self.backend.clone()
    }
}

/// The host name the main script's resources report under.
pub const MAIN_HOST: &str = "master";

/// Run a script file to completion in a new main state (then the handlers its own
/// resources notified).
pub fn run_script(rt: &Arc<Runtime>, path: &Path, vars: &[(String, String)]) -> Result<(), String> {
    let code = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "script".into());
    let lua = main_state(rt, vars).map_err(|e| format!("setting up the script state: {e}"))?;
    let body = lua
        .load(code)
        .set_name(format!("@{name}"))
        .into_function()
        .and_then(|f| crate::lua::on_runtime::run(rt, &lua, f));
    // Handlers act on the host like a task does: in check mode their raw calls are
    // skipped too (the script's own orchestration is over).
    if let Some(mut ctx) = lua.app_data_ref::<TaskContext>().map(|c| c.clone()) {
        ctx.orchestrator = false;
        lua.set_app_data(ctx);
    }
    sloth_modules::resources::handlers::after_body(&lua, body)
        .map(|_| ())
        .map_err(|e| executor::error_text(&e))
}

/// The main state: task modules, then the master-only functions, then the codec.
pub fn main_state(rt: &Arc<Runtime>, vars: &[(String, String)]) -> mlua::Result<Lua> {
    // SAFETY: see executor::new_state; the debug library reads closures' upvalues.
    let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL, LuaOptions::new()) };
    // The script's hook stops it when interrupted and hands the runtime's worker over:
    // nothing may catch the stop or take the hook away (the stop is the one of `ctx`,
    // set below).
    executor::guard_stop(&lua)?;
    let caller = Caller {
        task: None,
        // Stopped when the run is interrupted: blocking calls return, `exec.run` kills
        // its command, and the stop hook ends the script.
        cancel: rt.script_cancel.clone(),
    };
    let backend: Arc<dyn SharedBackend> = Arc::new(MasterBackend {
        registry: rt.registry.clone(),
        caller: caller.clone(),
    });
    let ctx = TaskContext {
        host: MAIN_HOST.into(),
        task_name: "main".into(),
        io: Arc::new(MainIo {
            out: rt.out.clone(),
            backend: backend.clone(),
        }),
        cancel: caller.cancel.clone(),
        mode: rt.mode,
        orchestrator: true,
    };
    sloth_modules::install_task_modules(&lua)?;
    let g = lua.globals();
    let goroutine: Table = g.raw_get("goroutine")?;
    crate::lua::goroutine::install(&lua, &goroutine, rt.clone(), backend.clone())?;
    crate::lua::fleet::install(&lua, rt.clone())?;
    // What may wait hands the runtime's worker over first; `await` and a handle's
    // `:await` yield to it.
    crate::lua::on_runtime::install(&lua, crate::lua::goroutine::await_async(&lua, rt.clone())?)?;
    // The original project's task DSL, written in Lua on top of goroutine.
    lua.load(include_str!("dsl.lua"))
        .set_name("=sloth-dsl")
        .exec()?;
    // The script's `io.write` comes out line by line, in order with its `print`s,
    // even into a pipe.
    lua.load("io.stdout:setvbuf('line')")
        .set_name("=sloth-stdout")
        .exec()?;
    // The task modules, and the master's own: their errors reach scripts as plain strings.
    wrap_errors(&lua, sloth_modules::MODULES)?;
    wrap_errors(&lua, sloth_modules::resources::MODULES)?;
    wrap_errors(&lua, &["fleet", "artifact"])?;
    capture::install(&lua, backend)?;
    lua.set_app_data(ctx);
    // Stops the script when told, and hands the runtime's worker over when it
    // computes for long, in every coroutine of the script's too.
    crate::lua::on_runtime::arm_hook(&lua, rt.script_cancel.clone())?;
    let v = lua.create_table()?;
    for (k, val) in vars {
        v.raw_set(k.as_str(), val.as_str())?;
    }
    g.raw_set("vars", v)?;
    let host = lua.create_table()?;
    host.raw_set("name", MAIN_HOST)?;
    host.raw_set("check", rt.mode.check)?;
    host.raw_set("vars", lua.create_table()?)?;
    g.raw_set("host", host)?;
    Ok(lua)
}
