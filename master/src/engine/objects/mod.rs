//! Channels, wait groups, mutexes, semaphores, atomics, once-guards and artifacts
//! living in the master, one file per kind. Every blocking wait honours the caller's
//! stop token, so a cancelled or lost task never leaves a thread stuck here; locks
//! and permits record their owner so that they are released when the owning task
//! ends. Which methods each kind has is said once, in `sloth_proto::graph::SharedKind`.

mod artifact;
mod atomic;
mod channel;
mod mutex;
mod once;
mod semaphore;
mod wait_group;

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, Value};

use crate::engine::registry::Caller;

pub use artifact::{Artifact, ArtifactSource};
pub use atomic::Atomic;
pub use channel::Channel;
pub use mutex::Lock;
pub use once::Once;
pub use semaphore::Semaphore;
pub use wait_group::WaitGroup;

pub enum Object {
    Channel(Channel),
    WaitGroup(WaitGroup),
    Mutex(Lock),
    Semaphore(Semaphore),
    Atomic(Atomic),
    Once(Once),
    Artifact(Artifact),
}

impl Object {
    pub fn channel(cap: usize) -> Object {
        Object::Channel(Channel::new(cap))
    }
    pub fn wait_group() -> Object {
        Object::WaitGroup(WaitGroup::default())
    }
    pub fn mutex() -> Object {
        Object::Mutex(Lock::default())
    }
    pub fn semaphore(n: i64) -> Object {
        Object::Semaphore(Semaphore::new(n))
    }
    pub fn atomic(v: i64) -> Object {
        Object::Atomic(Atomic::new(v))
    }
    pub fn once() -> Object {
        Object::Once(Once::default())
    }

    pub fn kind(&self) -> SharedKind {
        match self {
            Object::Channel(_) => SharedKind::Channel,
            Object::WaitGroup(_) => SharedKind::WaitGroup,
            Object::Mutex(_) => SharedKind::Mutex,
            Object::Semaphore(_) => SharedKind::Semaphore,
            Object::Atomic(_) => SharedKind::Atomic,
            Object::Once(_) => SharedKind::Once,
            Object::Artifact(_) => SharedKind::Artifact,
        }
    }

    /// Whether the object can hold something for a task (and must be told when
    /// that task ends).
    pub fn has_owners(&self) -> bool {
        matches!(
            self,
            Object::Mutex(_) | Object::Semaphore(_) | Object::Once(_)
        )
    }

    /// Give back whatever `task` holds (it ended).
    pub fn release_owner(&self, task: u64) {
        match self {
            Object::Mutex(l) => l.release_owner(task),
            Object::Semaphore(s) => s.release_owner(task),
            Object::Once(o) => o.release_owner(task),
            _ => {}
        }
    }

    /// Call `method`; `Err` is the message the caller's Lua error carries.
    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        match self {
            Object::Channel(o) => o.call(caller, method, args),
            Object::WaitGroup(o) => o.call(caller, method, args),
            Object::Mutex(o) => o.call(caller, method, args),
            Object::Semaphore(o) => o.call(caller, method, args),
            Object::Atomic(o) => o.call(method, args),
            Object::Once(o) => o.call(caller, method, args),
            Object::Artifact(o) => o.call(method, args),
        }
    }
}

/// The error for a method `kind` does not have.
fn unknown(kind: SharedKind, method: &str) -> Result<Data, String> {
    Err(format!(
        "{} has no method '{}'",
        kind.type_name(),
        method.escape_debug()
    ))
}

fn boolean(v: bool) -> Result<Data, String> {
    Ok(Data::scalars(vec![Value::Bool(v)]))
}

fn int(v: i64) -> Result<Data, String> {
    Ok(Data::scalars(vec![Value::Int(v)]))
}

/// A value and how to wait for changes to it.
pub(crate) struct Guarded<T> {
    pub(crate) m: Mutex<T>,
    cv: Condvar,
}

impl<T> Guarded<T> {
    pub(crate) fn new(v: T) -> Self {
        Guarded {
            m: Mutex::new(v),
            cv: Condvar::new(),
        }
    }

    /// Wait until `ready` holds; `Err` when the caller is stopped or the deadline passes.
    pub(crate) fn wait_for<'a>(
        &'a self,
        caller: &Caller,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut T) -> bool,
    ) -> Result<MutexGuard<'a, T>, WaitEnd> {
        let mut g = self.m.lock();
        loop {
            // A stopped caller never takes anything (a message, a lock): its task is
            // over, and what it took would be lost or held forever.
            if caller.cancel.stopped().is_some() {
                return Err(WaitEnd::Stopped);
            }
            if ready(&mut g) {
                return Ok(g);
            }
            let mut wake = Instant::now() + Duration::from_millis(50);
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(WaitEnd::TimedOut);
                }
                wake = wake.min(d);
            }
            self.cv.wait_until(&mut g, wake);
        }
    }

    pub(crate) fn notify(&self) {
        self.cv.notify_all();
    }
}

#[derive(Debug)]
pub(crate) enum WaitEnd {
    Stopped,
    TimedOut,
}

/// The error a blocked call of a stopped task returns.
pub(crate) fn stopped() -> String {
    sloth_lua::cancel::STOPPED.to_string()
}

pub(crate) fn int_arg(a: &[Value], i: usize, default: i64, what: &str) -> Result<i64, String> {
    match a.get(i) {
        None | Some(Value::Nil) => Ok(default),
        Some(Value::Int(n)) => Ok(*n),
        // A float with no fraction that an integer can hold (1e300 is no integer here:
        // `as` would clamp it to the largest one without a word).
        Some(Value::Float(f))
            if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 =>
        {
            Ok(*f as i64)
        }
        Some(_) => Err(format!("{what}: argument #{} must be an integer", i + 1)),
    }
}

/// Argument `i` as a timeout: milliseconds, or a string like "30s".
pub fn duration_arg(a: &[Value], i: usize) -> Result<Option<Duration>, String> {
    match a.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Int(n)) if *n >= 0 => Ok(Some(Duration::from_millis(*n as u64))),
        Some(Value::Float(f)) if *f >= 0.0 => Ok(Some(Duration::from_micros((*f * 1000.0) as u64))),
        Some(Value::Str(s)) => {
            sloth_lua::context::parse_duration_str(&String::from_utf8_lossy(s)).map(Some)
        }
        Some(_) => Err("timeout must be milliseconds or a string like \"30s\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sloth_lua::cancel::CancelToken;

    fn every_kind() -> Vec<Object> {
        vec![
            Object::channel(1),
            Object::wait_group(),
            Object::mutex(),
            Object::semaphore(2),
            Object::atomic(0),
            Object::once(),
            Object::Artifact(Artifact {
                name: "a".into(),
                sha256: "00".into(),
                size: 2,
                source: ArtifactSource::Bytes(b"hi".to_vec()),
            }),
        ]
    }

    /// A stopped caller: blocking methods return at once instead of waiting.
    fn stopped_caller() -> Caller {
        let cancel = CancelToken::new(None);
        cancel.cancel();
        Caller {
            task: Some(1),
            cancel,
        }
    }

    #[test]
    fn every_listed_method_is_implemented_and_nothing_else_is() {
        let caller = stopped_caller();
        for obj in every_kind() {
            let kind = obj.kind();
            let listed = kind.methods().iter().chain(kind.wire_methods());
            for m in listed {
                if let Err(e) = obj.call(&caller, m, Data::default()) {
                    assert!(
                        !e.contains("has no method"),
                        "{}:{m}: {e}",
                        kind.type_name()
                    );
                }
            }
            let e = obj
                .call(&caller, "format_disk", Data::default())
                .expect_err("not a method");
            assert!(e.contains("has no method 'format_disk'"), "{e}");
            assert!(!kind.accepts("format_disk"));
        }
    }

    #[test]
    fn a_task_that_ends_gives_back_its_lock_permits_and_once() {
        let free = Caller {
            task: Some(7),
            cancel: CancelToken::new(None),
        };
        let other = Caller {
            task: Some(8),
            cancel: CancelToken::new(None),
        };
        let try_ = |o: &Object, c: &Caller, m: &str| {
            o.call(c, m, Data::default()).expect("a call").roots()[0] == Value::Bool(true)
        };
        let lock = Object::mutex();
        assert!(try_(&lock, &free, "try_lock"));
        assert!(!try_(&lock, &other, "try_lock"));
        lock.release_owner(7);
        assert!(try_(&lock, &other, "try_lock"));

        let sem = Object::semaphore(1);
        assert!(try_(&sem, &free, "try_acquire"));
        assert!(!try_(&sem, &other, "try_acquire"));
        sem.release_owner(8); // holds nothing: changes nothing
        assert!(!try_(&sem, &other, "try_acquire"));
        sem.release_owner(7);
        assert!(try_(&sem, &other, "try_acquire"));

        let once = Object::once();
        assert!(try_(&once, &free, "begin"));
        assert!(!try_(&once, &free, "done"));
        once.release_owner(7);
        assert!(try_(&once, &other, "done"));
    }
}
