//! `goroutine.channel(cap)`: a FIFO of values between tasks, buffered (`cap` > 0)
//! or unbuffered (a send waits until a receiver took the value), closable.
//!
//! As in Go: a blocked sender's value waits with the sender, in arrival order, and is
//! taken from there by a receiver (or moved into the buffer when room frees). A sender
//! that is stopped (cancelled, past its deadline) or whose channel is closed takes its
//! value back: it is never delivered after the send failed. A value too big for a
//! frame is refused at the send, where it can still be handled, not lost on its way
//! to an agent.

use std::collections::VecDeque;
use std::time::Instant;

use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, Value};
use sloth_proto::protocol::{encoded_size, MAX_VALUE};

use super::{boolean, duration_arg, int, stopped, unknown, Guarded, WaitEnd};
use crate::engine::registry::Caller;

struct ChanState {
    buf: VecDeque<Data>,
    cap: usize,
    closed: bool,
    /// Receivers blocked in `receive` right now (lets an unbuffered try_send succeed).
    receivers: usize,
    /// Blocked senders, oldest first, each with its value.
    senders: VecDeque<(u64, Data)>,
    next_sender: u64,
}

impl ChanState {
    fn sending(&self, id: u64) -> bool {
        self.senders.iter().any(|(s, _)| *s == id)
    }

    fn take_back(&mut self, id: u64) {
        self.senders.retain(|(s, _)| *s != id);
    }

    /// The next value for a receiver: the buffer's oldest (a blocked sender's value
    /// then moves into the room it left), else a blocked sender's. Once closed, only
    /// the buffer: the blocked senders' sends fail.
    fn take(&mut self) -> Option<Data> {
        if self.closed {
            return self.buf.pop_front();
        }
        match self.buf.pop_front() {
            Some(v) => {
                if self.cap > 0 {
                    if let Some((_, w)) = self.senders.pop_front() {
                        self.buf.push_back(w);
                    }
                }
                Some(v)
            }
            None => self.senders.pop_front().map(|(_, v)| v),
        }
    }
}

pub struct Channel(Guarded<ChanState>);

impl Channel {
    pub fn new(cap: usize) -> Channel {
        Channel(Guarded::new(ChanState {
            buf: VecDeque::new(),
            cap,
            closed: false,
            receivers: 0,
            senders: VecDeque::new(),
            next_sender: 0,
        }))
    }

    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let b = boolean;
        match method {
            "send" | "try_send" => {
                let msg = args.first_only();
                let size = encoded_size(msg.graph()).map_err(|e| format!("channel: {e}"))?;
                if size > MAX_VALUE {
                    return Err(format!(
                        "channel: the value takes {size} bytes; a channel carries at most \
                         {MAX_VALUE} bytes (what a frame to an agent can hold)"
                    ));
                }
                let try_only = method == "try_send";
                let mut g = self.0.m.lock();
                if g.closed {
                    return if try_only {
                        b(false)
                    } else {
                        Err("channel: send on a closed channel".into())
                    };
                }
                // Room in the buffer, with nobody queued before us.
                if g.cap > 0 && g.buf.len() < g.cap && g.senders.is_empty() {
                    g.buf.push_back(msg);
                    self.0.notify();
                    return b(true);
                }
                if try_only {
                    // Unbuffered: handed over at once to a receiver already waiting.
                    let waiting = g.receivers > g.buf.len() + g.senders.len();
                    if g.cap == 0 && waiting {
                        g.buf.push_back(msg);
                        self.0.notify();
                        return b(true);
                    }
                    return b(false);
                }
                let id = g.next_sender;
                g.next_sender += 1;
                g.senders.push_back((id, msg));
                self.0.notify();
                drop(g);
                let done = self
                    .0
                    .wait_for(caller, None, |s| !s.sending(id) || s.closed);
                match done {
                    Ok(mut g) => {
                        if g.sending(id) {
                            // Closed while we waited: nobody took the value.
                            g.take_back(id);
                            self.0.notify();
                            return Err("channel: send on a closed channel".into());
                        }
                        b(true)
                    }
                    Err(_) => {
                        let mut g = self.0.m.lock();
                        if !g.sending(id) {
                            // Taken just before the stop: the send happened.
                            return Err(stopped());
                        }
                        g.take_back(id);
                        self.0.notify();
                        Err(stopped())
                    }
                }
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
                let res = self.0.wait_for(caller, deadline, |s| {
                    !s.buf.is_empty() || !s.senders.is_empty() || s.closed
                });
                match res {
                    Ok(mut g) => {
                        g.receivers -= 1;
                        match g.take() {
                            Some(v) => {
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
                }
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
            // Values buffered now (blocked senders' values are not buffered).
            "len" => {
                let g = self.0.m.lock();
                int(g.buf.len().min(g.cap) as i64)
            }
            "cap" => int(self.0.m.lock().cap as i64),
            "is_closed" => b(self.0.m.lock().closed),
            _ => unknown(SharedKind::Channel, method),
        }
    }
}
