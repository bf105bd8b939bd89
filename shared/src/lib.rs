//! Code shared by `sloth-master` and `sloth-agent`: the wire protocol and its
//! framing, the Lua capture codec, the task executor and the modules every task
//! has, TLS helpers, and the stop token. Nothing here opens a socket except the
//! thin async helpers in [`wire`].

pub mod artifact;
pub mod cancel;
pub mod capture;
pub mod data;
pub mod executor;
pub mod fuzz_targets;
pub mod graph;
pub mod modules;
pub mod protocol;
pub mod runner;
pub mod shared_obj;
pub mod tls;
pub mod wire;
