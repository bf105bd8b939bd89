//! `goroutine.atomic_int(v)`: an integer every task updates in one step (wrapping
//! arithmetic, compare-and-swap).

use parking_lot::Mutex;
use sloth_proto::data::Data;
use sloth_proto::graph::SharedKind;

use super::{boolean, int, int_arg, unknown};

pub struct Atomic(Mutex<i64>);

impl Atomic {
    pub fn new(v: i64) -> Atomic {
        Atomic(Mutex::new(v))
    }

    pub fn call(&self, method: &str, args: Data) -> Result<Data, String> {
        let a = args.roots();
        let mut g = self.0.lock();
        match method {
            "get" => int(*g),
            "set" => {
                *g = int_arg(a, 0, 0, "atomic:set")?;
                Ok(Data::default())
            }
            "add" | "incr" => {
                *g = g.wrapping_add(int_arg(a, 0, 1, "atomic:add")?);
                int(*g)
            }
            "sub" | "decr" => {
                *g = g.wrapping_sub(int_arg(a, 0, 1, "atomic:sub")?);
                int(*g)
            }
            "swap" => {
                let old = *g;
                *g = int_arg(a, 0, 0, "atomic:swap")?;
                int(old)
            }
            "compare_and_swap" => {
                let old = int_arg(a, 0, 0, "atomic:compare_and_swap")?;
                let new = int_arg(a, 1, 0, "atomic:compare_and_swap")?;
                if *g == old {
                    *g = new;
                    boolean(true)
                } else {
                    boolean(false)
                }
            }
            _ => unknown(SharedKind::Atomic, method),
        }
    }
}
