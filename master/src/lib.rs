//! `sloth-master` as a library: the [`engine`] (registry, dispatch, mesh, inventory,
//! rollout; no Lua), the [`lua`] bindings on top of it, and the [`cli`] (commands,
//! terminal and JSON output, the local fleet) on top of both. The binary is
//! `src/main.rs`, a few lines over [`cli::main`].

pub mod cli;
pub mod engine;
pub mod lint;
pub mod lua;
