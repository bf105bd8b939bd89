//! `goroutine.wait_group()`: a counter tasks add to and mark done; `wait` blocks
//! until it is back at zero.

use std::time::Instant;

use sloth_proto::data::Data;
use sloth_proto::graph::SharedKind;

use super::{boolean, duration_arg, int, int_arg, stopped, unknown, Guarded, WaitEnd};
use crate::engine::registry::Caller;

pub struct WaitGroup(Guarded<i64>);

impl Default for WaitGroup {
    fn default() -> WaitGroup {
        WaitGroup(Guarded::new(0))
    }
}

impl WaitGroup {
    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let a = args.roots();
        match method {
            "add" | "done" => {
                let n = if method == "done" {
                    -1
                } else {
                    int_arg(a, 0, 1, "wg:add")?
                };
                let mut g = self.0.m.lock();
                let Some(next) = g.checked_add(n) else {
                    return Err(format!("wait_group: counter overflow ({} {n:+})", *g));
                };
                if next < 0 {
                    return Err(format!(
                        "wait_group: counter would go negative ({} {n:+}): more done() than add()",
                        *g
                    ));
                }
                *g = next;
                self.0.notify();
                Ok(Data::default())
            }
            "wait" => {
                let deadline = duration_arg(a, 0)?.map(|d| Instant::now() + d);
                match self.0.wait_for(caller, deadline, |n| *n <= 0) {
                    Ok(_) => boolean(true),
                    Err(WaitEnd::TimedOut) => boolean(false),
                    Err(WaitEnd::Stopped) => Err(stopped()),
                }
            }
            "count" => int(*self.0.m.lock()),
            _ => unknown(SharedKind::WaitGroup, method),
        }
    }
}
