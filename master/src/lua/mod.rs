//! The Lua bindings of the master, on top of the engine: the main script's state
//! ([`main_state`]), the `goroutine` and `artifact` tables ([`goroutine`]), worker
//! pools ([`pools`]), `fleet` ([`fleet`]), the helpers they share ([`args`]), and the
//! original project's DSL (`dsl.lua`, written in Lua on top of `goroutine`).

pub mod args;
pub mod fleet;
pub mod goroutine;
pub mod main_state;
pub mod on_runtime;
pub mod options;
pub mod pools;
