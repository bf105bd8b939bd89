//! What the engine needs from the network to run a task on an agent: a [`Link`] per
//! host, and [`TaskStream`]s of protocol frames on it. The mesh implements it over
//! QUIC (engine/mesh.rs); the engine's unit tests drive dispatch, retries, the pool
//! scheduler and cancellation through an in-memory fake (engine/fake.rs), so none of
//! that needs Lua, sockets or agent processes to be tested.
//!
//! Errors are already [`TaskError`]s: a link that cannot be had is `unreachable` (or
//! `refused`), a link lost on the way is `agent_lost`, with the cause explained.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sloth_proto::protocol::{TaskError, ToMaster};
use sloth_transport::wire::WireError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Links to the hosts of the inventory.
pub trait Transport: Send + Sync {
    /// The live link to `host`, dialing it if there is none.
    fn link<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Arc<dyn Link>, TaskError>>;
    /// How long a dial may take before its host counts as unreachable.
    fn connect_timeout(&self) -> Duration;
}

/// One live connection to an agent.
pub trait Link: Send + Sync {
    /// Open a task stream. Waits while the agent grants no more streams; an error
    /// means the task certainly never reached the agent.
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn TaskStream>, TaskError>>;
    /// Resolves once the link is gone.
    fn closed(&self) -> BoxFuture<'_, ()>;
    /// Whether the link is gone.
    fn is_closed(&self) -> bool;
    /// The error for a task lost with this link: the link's close reason explained
    /// when it has one, `fallback` otherwise.
    fn lost(&self, fallback: String) -> TaskError;
}

/// A task's stream, both ways: encoded [`ToAgent`] frames out, [`ToMaster`] in.
///
/// [`ToAgent`]: sloth_proto::protocol::ToAgent
pub trait TaskStream: Send {
    /// Write one encoded frame.
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), String>>;
    /// Nothing more will be sent (the agent sees the end of its input).
    fn finish(&mut self);
    /// The next frame from the agent; `None` when it ended its side. Cancel-safe: a
    /// frame half read when the future is dropped is kept for the next call.
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<ToMaster>, WireError>>;
    /// End the stream both ways with an application error code.
    fn abort(&mut self, code: u32);
    /// After the last frame: take the agent's end of stream, so that dropping the
    /// stream sends nothing more.
    fn take_fin(&mut self);
}
