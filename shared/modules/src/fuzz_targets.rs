//! The bodies of the fuzz targets (`shared/fuzz`, run by `scripts/fuzz.sh` under
//! AFL++), kept here so that `cargo test` replays every committed corpus entry and
//! every crash found through exactly the same code (`shared/modules/tests/fuzz_corpus.rs`).
//!
//! Each target takes arbitrary bytes and must return without panicking, whatever
//! they are; where the code under test makes a promise, the target checks it.

use std::collections::HashSet;
use std::sync::Arc;

use sloth_lua::capture;
use sloth_lua::context::TaskContext;
use sloth_lua::executor;
use sloth_lua::shared_obj::NoBackend;
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::{SharedKind, SharedRef, Value};
use sloth_proto::protocol::{self, Control, FrameDecoder, ToAgent, ToMaster};

/// The frame decoder: the bytes arrive in pieces (sizes taken from the input
/// itself), decoded as the message type the first byte picks, until the first error.
pub fn frame_decoder(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::default();
    let piece = 1 + (sel as usize >> 2);
    let mut body = rest;
    if sel & 0x80 != 0 {
        // Control streams start with the preamble.
        let (pre, after) = rest.split_at(rest.len().min(protocol::PREAMBLE_LEN));
        dec.push(pre);
        if !matches!(dec.preamble(), Ok(Some(_))) {
            return;
        }
        body = after;
    }
    for chunk in body.chunks(piece) {
        dec.push(chunk);
        loop {
            let r = match sel & 3 {
                0 => dec.next_message::<ToMaster>().map(|m| m.is_some()),
                1 => dec.next_message::<ToAgent>().map(|m| m.is_some()),
                _ => dec.next_message::<Control>().map(|m| m.is_some()),
            };
            match r {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => return,
            }
        }
    }
}

/// What an agent does with a task frame before running it: decode, then
/// [`executor::prepare`] — memory limit, host vars, validation and restore of the task
/// (bytecode, upvalues, globals) into a fresh task state. The function is not called:
/// agents run the code of an authenticated master by design (docs/security.md).
pub fn agent_task(data: &[u8]) {
    let Ok(ToAgent::Task(req)) = protocol::decode::<ToAgent>(data) else {
        return;
    };
    let Ok(state) = crate::EXECUTOR.new_state(&TaskContext::offline("fuzz", "fuzz")) else {
        return;
    };
    let limits = executor::Limits {
        memory_limit: Some(64 << 20),
    };
    let _ = executor::prepare(&state, &req, "fuzz", &limits);
}

/// The objects the master target's task was given.
fn given() -> HashSet<SharedRef> {
    [
        SharedRef {
            kind: SharedKind::Channel,
            id: 1,
        },
        SharedRef {
            kind: SharedKind::Atomic,
            id: 2,
        },
    ]
    .into()
}

/// What the master does with an agent's frame: decode it; a result or call
/// arguments must pass [`Data::check`] (scoped to the objects given), and what passes
/// is restored into a state like the main script's. Checked data must hold no code,
/// globals, builtins, `_ENV` or foreign references, and the restore must leave the
/// state's globals as they were.
pub fn master_data(data: &[u8]) {
    let graph = match protocol::decode::<ToMaster>(data) {
        Ok(ToMaster::Done { result: Ok(g), .. }) => g,
        Ok(ToMaster::Call { args, .. }) => args,
        _ => return,
    };
    let allowed = given();
    let Ok(d) = Data::check(graph, Refs::Only(&allowed)) else {
        return;
    };
    let g = d.graph();
    assert!(g.functions.is_empty() && g.protos.is_empty());
    assert!(g.globals.is_empty() && g.unsendable_globals.is_empty());
    let mut values = g.roots.iter().chain(
        g.tables
            .iter()
            .flat_map(|t| t.entries.iter().flat_map(|(k, v)| [k, v])),
    );
    assert!(!values.any(|v| match v {
        Value::Function(_) | Value::Builtin(_) | Value::Env => true,
        Value::Shared(r) => !allowed.contains(r),
        _ => false,
    }));
    let lua = main_like_state();
    let before = global_names(&lua);
    let _ = capture::restore_data(&lua, &d);
    assert_eq!(
        before,
        global_names(&lua),
        "restoring data changed the globals"
    );
}

/// All standard libraries and the capture codec, like the master's main state.
fn main_like_state() -> mlua::Lua {
    // SAFETY: `install` needs the debug library; the state runs no code of the input.
    let lua = unsafe { mlua::Lua::unsafe_new() };
    let _ = capture::install(&lua, Arc::new(NoBackend));
    lua
}

fn global_names(lua: &mlua::Lua) -> Vec<String> {
    let mut names: Vec<String> = lua
        .globals()
        .pairs::<String, mlua::Value>()
        .flatten()
        .map(|(k, v)| format!("{k}={:?}", v.to_pointer()))
        .collect();
    names.sort();
    names
}
