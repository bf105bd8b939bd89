//! What crosses the network between master and agents, as pure data: the value
//! [`graph`] that closures, arguments and results travel as, its checked form
//! [`data`] (what the master accepts back), where a shipped function was written
//! ([`origin`]), times and durations as text ([`text`]), and the [`protocol`] messages with their
//! length-prefixed, bounded framing. No Lua and no I/O: `sloth-lua` converts between
//! graphs and live states, and `sloth-transport` moves frames over QUIC streams.
//!
//! bincode (chosen by the user) is used only inside [`protocol`]'s encode and decode
//! functions, so the encoding can be swapped without touching any other crate.

pub mod change;
pub mod data;
pub mod graph;
pub mod origin;
pub mod protocol;
pub mod text;
