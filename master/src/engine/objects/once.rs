//! `goroutine.once()`: the first caller of `o:do(f)` runs `f` (the `begin`/`finish`
//! wire methods); the others wait until it is done. A runner that ends without
//! finishing (its task died) counts as done, so nobody waits forever.

use sloth_proto::data::Data;
use sloth_proto::graph::SharedKind;

use super::{boolean, stopped, unknown, Guarded};
use crate::engine::registry::Caller;

#[derive(PartialEq)]
enum OnceState {
    New,
    /// Being run by this task (`None`: the main script).
    Running(Option<u64>),
    Done,
}

pub struct Once(Guarded<OnceState>);

impl Default for Once {
    fn default() -> Once {
        Once(Guarded::new(OnceState::New))
    }
}

impl Once {
    pub fn release_owner(&self, task: u64) {
        let mut g = self.0.m.lock();
        if *g == OnceState::Running(Some(task)) {
            *g = OnceState::Done;
            self.0.notify();
        }
    }

    pub fn call(&self, caller: &Caller, method: &str, _args: Data) -> Result<Data, String> {
        match method {
            "begin" => {
                {
                    let mut g = self.0.m.lock();
                    if *g == OnceState::New {
                        *g = OnceState::Running(caller.task);
                        return boolean(true);
                    }
                }
                match self.0.wait_for(caller, None, |s| *s == OnceState::Done) {
                    Ok(_) => boolean(false),
                    Err(_) => Err(stopped()),
                }
            }
            "finish" => {
                *self.0.m.lock() = OnceState::Done;
                self.0.notify();
                Ok(Data::default())
            }
            "done" => boolean(*self.0.m.lock() == OnceState::Done),
            _ => unknown(SharedKind::Once, method),
        }
    }
}
