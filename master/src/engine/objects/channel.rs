//! `goroutine.channel(cap)`: a FIFO of values between tasks, buffered (`cap` > 0)
//! or unbuffered (a send waits until a receiver took the value), closable.

use std::collections::VecDeque;
use std::time::Instant;

use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, Value};

use super::{boolean, duration_arg, int, stopped, unknown, Guarded, WaitEnd};
use crate::engine::registry::Caller;

struct ChanState {
    buf: VecDeque<Data>,
    cap: usize,
    closed: bool,
    /// Receivers blocked in `receive` right now (lets an unbuffered try_send succeed).
    receivers: usize,
    pushed: u64,
    popped: u64,
}

pub struct Channel(Guarded<ChanState>);

impl Channel {
    pub fn new(cap: usize) -> Channel {
        Channel(Guarded::new(ChanState {
            buf: VecDeque::new(),
            cap,
            closed: false,
            receivers: 0,
            pushed: 0,
            popped: 0,
        }))
    }

    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let b = boolean;
        match method {
            "send" | "try_send" => {
                let msg = args.first_only();
                let try_only = method == "try_send";
                let mut g = self.0.m.lock();
                if g.closed {
                    return if try_only {
                        b(false)
                    } else {
                        Err("channel: send on a closed channel".into())
                    };
                }
                let has_room = |s: &ChanState| {
                    if s.cap == 0 {
                        s.receivers > s.buf.len()
                    } else {
                        s.buf.len() < s.cap
                    }
                };
                if try_only && !has_room(&g) {
                    return b(false);
                }
                if !try_only && g.cap > 0 && !has_room(&g) {
                    drop(g);
                    g = match self
                        .0
                        .wait_for(caller, None, |s| s.closed || s.buf.len() < s.cap)
                    {
                        Ok(g) => g,
                        Err(_) => return Err(stopped()),
                    };
                    if g.closed {
                        return Err("channel: send on a closed channel".into());
                    }
                }
                g.buf.push_back(msg);
                g.pushed += 1;
                let my_seq = g.pushed;
                self.0.notify();
                if g.cap == 0 && !try_only {
                    // Unbuffered: the sender waits until a receiver took the value.
                    drop(g);
                    if self
                        .0
                        .wait_for(caller, None, |s| s.popped >= my_seq || s.closed)
                        .is_err()
                    {
                        return Err(stopped());
                    }
                }
                b(true)
            }
            "receive" | "try_receive" => {
                let deadline = if method == "try_receive" {
                    Some(Instant::now())
                } else {
                    duration_arg(args.roots(), 0)?.map(|d| Instant::now() + d)
                };
                {
                    let mut g = self.0.m.lock();
                    g.receivers += 1;
                    self.0.notify();
                }
                let res = self
                    .0
                    .wait_for(caller, deadline, |s| !s.buf.is_empty() || s.closed);
                let out = match res {
                    Ok(mut g) => {
                        g.receivers -= 1;
                        match g.buf.pop_front() {
                            Some(v) => {
                                g.popped += 1;
                                self.0.notify();
                                Ok(v.first_only().append(Value::Bool(true)))
                            }
                            None => Ok(Data::scalars(vec![Value::Nil, Value::Bool(false)])),
                        }
                    }
                    Err(end) => {
                        self.0.m.lock().receivers -= 1;
                        match end {
                            WaitEnd::TimedOut => {
                                Ok(Data::scalars(vec![Value::Nil, Value::Bool(false)]))
                            }
                            WaitEnd::Stopped => Err(stopped()),
                        }
                    }
                };
                out
            }
            "close" => {
                let mut g = self.0.m.lock();
                if g.closed {
                    return Err("channel: close of a closed channel".into());
                }
                g.closed = true;
                self.0.notify();
                Ok(Data::default())
            }
            "len" => int(self.0.m.lock().buf.len() as i64),
            "cap" => int(self.0.m.lock().cap as i64),
            "is_closed" => b(self.0.m.lock().closed),
            _ => unknown(SharedKind::Channel, method),
        }
    }
}
