//! One stop mechanism for everything a task does: the Lua instruction hook, sleeps,
//! child processes and blocking calls on shared objects all ask the same token.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Timeout,
}

/// How every error that unwinds a stopped task begins, wherever it is raised (the
/// instruction hook, a sleep, a blocking call on a shared object, a child process).
pub const STOPPED: &str = "sloth: task stopped";

impl StopReason {
    /// The error text that unwinds a task stopped for this reason.
    pub fn message(self) -> String {
        let why = match self {
            StopReason::Cancelled => "cancelled",
            StopReason::Timeout => "timeout exceeded",
        };
        format!("{STOPPED} ({why})")
    }
}

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

struct Inner {
    state: AtomicU8,
    deadline: Mutex<Option<Instant>>,
    lock: Mutex<()>,
    cv: Condvar,
}

/// Cheap to clone; all clones observe the same stop.
#[derive(Clone)]
pub struct CancelToken(Arc<Inner>);

impl Default for CancelToken {
    fn default() -> Self {
        Self::new(None)
    }
}

impl CancelToken {
    pub fn new(timeout: Option<Duration>) -> Self {
        CancelToken(Arc::new(Inner {
            state: AtomicU8::new(RUNNING),
            deadline: Mutex::new(timeout.map(|t| Instant::now() + t)),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }))
    }

    /// The time limit this token was created with, if any.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.deadline.lock()
    }

    /// (Re)start the time limit from now (a queued task starts its clock when it runs).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        *self.0.deadline.lock() = timeout.map(|t| Instant::now() + t);
    }

    /// Stop the task (idempotent; the first reason wins).
    pub fn cancel(&self) {
        self.stop(CANCELLED);
    }

    /// Record the stop; wakes sleepers when `notify` (callers holding the lock
    /// pass false: they are the sleeper).
    fn stop_with(&self, code: u8, notify: bool) {
        if self
            .0
            .state
            .compare_exchange(RUNNING, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && notify
        {
            let _g = self.0.lock.lock();
            self.0.cv.notify_all();
        }
    }

    fn stop(&self, code: u8) {
        self.stop_with(code, true)
    }

    fn poll(&self, notify: bool) -> Option<StopReason> {
        match self.0.state.load(Ordering::SeqCst) {
            CANCELLED => return Some(StopReason::Cancelled),
            TIMED_OUT => return Some(StopReason::Timeout),
            _ => {}
        }
        if let Some(d) = self.deadline() {
            if Instant::now() >= d {
                self.stop_with(TIMED_OUT, notify);
                return self.poll(false);
            }
        }
        None
    }

    /// `Some(reason)` once the task must stop; also trips the deadline.
    pub fn stopped(&self) -> Option<StopReason> {
        self.poll(true)
    }

    pub fn check(&self) -> Result<(), StopReason> {
        match self.stopped() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    /// Sleep for `dur`, waking early (with the reason) when the task is stopped.
    pub fn sleep(&self, dur: Duration) -> Result<(), StopReason> {
        let until = Instant::now() + dur;
        self.sleep_until(until)
    }

    pub fn sleep_until(&self, until: Instant) -> Result<(), StopReason> {
        let mut g = self.0.lock.lock();
        loop {
            if let Some(r) = self.poll(false) {
                return Err(r);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let mut wake = until;
            if let Some(d) = self.deadline() {
                wake = wake.min(d);
            }
            self.0.cv.wait_until(&mut g, wake);
        }
    }

    /// Time left before the deadline (None: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_wakes_on_cancel() {
        let t = CancelToken::new(None);
        let t2 = t.clone();
        let start = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.cancel();
        });
        assert_eq!(t.sleep(Duration::from_secs(10)), Err(StopReason::Cancelled));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn deadline_trips_timeout() {
        let t = CancelToken::new(Some(Duration::from_millis(30)));
        assert_eq!(t.sleep(Duration::from_secs(5)), Err(StopReason::Timeout));
        assert_eq!(t.stopped(), Some(StopReason::Timeout));
        t.cancel();
        assert_eq!(t.stopped(), Some(StopReason::Timeout), "first reason wins");
    }
}
