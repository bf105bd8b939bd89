//! `goroutine.semaphore(n)`: n permits; each holder's permits are given back when
//! its task ends.

use std::collections::HashMap;
use std::time::Instant;

use sloth_proto::data::Data;
use sloth_proto::graph::SharedKind;

use super::{boolean, duration_arg, int, int_arg, stopped, unknown, Guarded, WaitEnd};
use crate::engine::registry::Caller;

pub struct Semaphore {
    /// Permits free, and how many each holder has (`None`: the main script).
    g: Guarded<(i64, HashMap<Option<u64>, i64>)>,
    size: i64,
}

impl Semaphore {
    pub fn new(n: i64) -> Semaphore {
        Semaphore {
            g: Guarded::new((n, HashMap::new())),
            size: n,
        }
    }

    pub fn release_owner(&self, task: u64) {
        let mut g = self.g.m.lock();
        if let Some(n) = g.1.remove(&Some(task)) {
            g.0 += n;
            self.g.notify();
        }
    }

    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let a = args.roots();
        let owner = caller.task;
        match method {
            "acquire" | "try_acquire" => {
                let n = int_arg(a, 0, 1, "semaphore:acquire")?;
                if n < 1 || n > self.size {
                    return Err(format!(
                        "semaphore: cannot acquire {n} of {} permits",
                        self.size
                    ));
                }
                let deadline = if method == "try_acquire" {
                    Some(Instant::now())
                } else {
                    duration_arg(a, 1)?.map(|d| Instant::now() + d)
                };
                match self.g.wait_for(caller, deadline, |st| st.0 >= n) {
                    Ok(mut g) => {
                        g.0 -= n;
                        *g.1.entry(owner).or_insert(0) += n;
                        boolean(true)
                    }
                    Err(WaitEnd::TimedOut) => boolean(false),
                    Err(WaitEnd::Stopped) => Err(stopped()),
                }
            }
            "release" => {
                let n = int_arg(a, 0, 1, "semaphore:release")?;
                let mut g = self.g.m.lock();
                let held = g.1.get(&owner).copied().unwrap_or(0);
                if n < 1 || n > held {
                    return Err(format!(
                        "semaphore: released {n} permit(s) but this {} holds {held}",
                        if owner.is_some() { "task" } else { "script" }
                    ));
                }
                g.0 += n;
                if held == n {
                    g.1.remove(&owner);
                } else {
                    g.1.insert(owner, held - n);
                }
                self.g.notify();
                Ok(Data::default())
            }
            "available" => int(self.g.m.lock().0),
            _ => unknown(SharedKind::Semaphore, method),
        }
    }
}
