//! `sloth-master` as a library: the [`engine`] (registry, dispatch, mesh, inventory,
//! rollout; no Lua), the [`lua`] bindings on top of it, the fleet's [`pki`]
//! (certificates, join tokens, enrollment, revocation; on the engine's mesh), the
//! script checker ([`lint`]), the run [`history`] (SQLite), putting agents on hosts over SSH ([`bootstrap`]), and the
//! [`cli`] (commands, terminal and JSON output, the
//! local fleet) on top of all. The binary is
//! `src/main.rs`, a few lines over [`cli::main`].

/// `println!` that never panics: a closed stdout (`sloth-master … | head`) must not
/// stop a run half-way, with its end never reaching the recap or the history.
/// What cannot be written is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see `outln!`): `2>&1 | head` closes stderr too.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod bootstrap;
pub mod cli;
pub mod engine;
pub mod history;
pub mod lint;
pub mod lua;
pub mod pki;
