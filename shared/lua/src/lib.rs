//! The Lua side of sloth, shared by master and agents: the capture codec that turns
//! live closures into graphs and back ([`capture`]), shared objects that travel by
//! reference ([`shared_obj`], [`artifact`]), the one stop token every blocking call
//! honours ([`cancel`]), what a task reaches outside its state ([`context`]), error
//! hygiene for sloth's own functions ([`protect`]), strict option tables ([`opts`]), the [`executor`] that runs one
//! task in a fresh state, and the [`runner`] threads tasks run on.
//!
//! The task library itself (`exec`, `fs`, `http`, ...) is `sloth-modules`, which
//! builds on this crate and hands the executor an [`executor::Library`]. Nothing here
//! opens a socket.

pub mod artifact;
pub mod cancel;
pub mod capture;
pub mod context;
pub mod executor;
pub mod opts;
pub mod protect;
pub mod runner;
pub mod shared_obj;
