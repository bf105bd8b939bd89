//! The engine: everything a run does except Lua and the terminal. It holds the task
//! registry and shared objects, dispatches tasks to local runner threads or agents
//! with one retry policy, keeps the mesh of agent connections, parses the inventory
//! and its host patterns, and plans rollouts. It reports through [`events::Events`].
//! No mlua here: the Lua bindings (`crate::lua`) sit on top of it.

pub mod dispatch;
pub mod events;
#[cfg(test)]
mod fake;
pub mod health;
pub mod inventory;
pub mod mesh;
pub mod objects;
pub mod pool;
pub mod registry;
pub mod retry;
pub mod rollout;
pub mod runtime;
pub mod transport;
