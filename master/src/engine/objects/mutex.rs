//! `goroutine.mutex()`: one holder at a time, released when its task ends.

use std::time::Instant;

use sloth_proto::data::Data;
use sloth_proto::graph::SharedKind;

use super::{boolean, duration_arg, stopped, unknown, Guarded, WaitEnd};
use crate::engine::registry::Caller;

/// `None`: free; `Some(owner)`: held by that task (`None` inside: the main script).
pub struct Lock(Guarded<Option<Option<u64>>>);

impl Default for Lock {
    fn default() -> Lock {
        Lock(Guarded::new(None))
    }
}

impl Lock {
    pub fn release_owner(&self, task: u64) {
        let mut g = self.0.m.lock();
        if *g == Some(Some(task)) {
            *g = None;
            self.0.notify();
        }
    }

    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let owner = caller.task;
        match method {
            "lock" => {
                let deadline = duration_arg(args.roots(), 0)?.map(|d| Instant::now() + d);
                match self.0.wait_for(caller, deadline, |h| h.is_none()) {
                    Ok(mut g) => {
                        *g = Some(owner);
                        boolean(true)
                    }
                    Err(WaitEnd::TimedOut) => boolean(false),
                    Err(WaitEnd::Stopped) => Err(stopped()),
                }
            }
            "try_lock" => {
                let mut g = self.0.m.lock();
                if g.is_none() {
                    *g = Some(owner);
                    boolean(true)
                } else {
                    boolean(false)
                }
            }
            "unlock" => {
                let mut g = self.0.m.lock();
                match *g {
                    None => Err("mutex: unlock of an unlocked mutex".into()),
                    Some(_) => {
                        *g = None;
                        self.0.notify();
                        Ok(Data::default())
                    }
                }
            }
            "is_locked" => boolean(self.0.m.lock().is_some()),
            _ => unknown(SharedKind::Mutex, method),
        }
    }
}
