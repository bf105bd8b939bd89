//! Channels, wait groups, mutexes, semaphores, atomics and once-guards living in
//! the master. Every blocking wait honours the caller's stop token, so a cancelled
//! or lost task never leaves a thread stuck here; locks and permits record their
//! owner so that they are released when the owning task ends.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, Value};

use crate::engine::registry::Caller;

pub enum Object {
    Channel(Channel),
    WaitGroup(Counter),
    Mutex(Lock),
    Semaphore(Semaphore),
    Atomic(Mutex<i64>),
    Once(Once),
    Artifact(Artifact),
}

/// Content shipped to hosts by `a:save()`: a file read in chunks on demand (never
/// held whole in memory), or bytes given by the script.
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub source: ArtifactSource,
}

pub enum ArtifactSource {
    File(std::path::PathBuf),
    Bytes(Vec<u8>),
}

impl Artifact {
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let len = len.min(sloth_lua::artifact::CHUNK * 4);
        match &self.source {
            ArtifactSource::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + len).min(b.len());
                Ok(b[start..end].to_vec())
            }
            ArtifactSource::File(p) => {
                use std::io::{Read, Seek, SeekFrom};
                let mut f =
                    std::fs::File::open(p).map_err(|e| format!("artifact {}: {e}", p.display()))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| format!("artifact {}: {e}", p.display()))?;
                let mut buf = Vec::with_capacity(len);
                f.take(len as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("artifact {}: {e}", p.display()))?;
                Ok(buf)
            }
        }
    }
}

/// A value and how to wait for changes to it.
pub struct Guarded<T> {
    m: Mutex<T>,
    cv: Condvar,
}

impl<T> Guarded<T> {
    fn new(v: T) -> Self {
        Guarded {
            m: Mutex::new(v),
            cv: Condvar::new(),
        }
    }

    /// Wait until `ready` holds; `Err` when the caller is stopped or the deadline passes.
    fn wait_for<'a>(
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

    fn notify(&self) {
        self.cv.notify_all();
    }
}

#[derive(Debug)]
enum WaitEnd {
    Stopped,
    TimedOut,
}

/// The error a blocked call of a stopped task returns.
fn stopped() -> String {
    sloth_lua::cancel::STOPPED.to_string()
}

pub struct ChanState {
    buf: VecDeque<Data>,
    cap: usize,
    closed: bool,
    /// Receivers blocked in `receive` right now (lets an unbuffered try_send succeed).
    receivers: usize,
    pushed: u64,
    popped: u64,
}

pub struct Channel(Guarded<ChanState>);
pub struct Counter(Guarded<i64>);
pub struct Lock(Guarded<Option<Option<u64>>>);
pub struct Semaphore {
    g: Guarded<(i64, HashMap<Option<u64>, i64>)>,
    size: i64,
}
pub struct Once(Guarded<OnceState>);

#[derive(PartialEq)]
pub enum OnceState {
    New,
    Running(Option<u64>),
    Done,
}

impl Object {
    pub fn channel(cap: usize) -> Object {
        Object::Channel(Channel(Guarded::new(ChanState {
            buf: VecDeque::new(),
            cap,
            closed: false,
            receivers: 0,
            pushed: 0,
            popped: 0,
        })))
    }
    pub fn wait_group() -> Object {
        Object::WaitGroup(Counter(Guarded::new(0)))
    }
    pub fn mutex() -> Object {
        Object::Mutex(Lock(Guarded::new(None)))
    }
    pub fn semaphore(n: i64) -> Object {
        Object::Semaphore(Semaphore {
            g: Guarded::new((n, HashMap::new())),
            size: n,
        })
    }
    pub fn atomic(v: i64) -> Object {
        Object::Atomic(Mutex::new(v))
    }
    pub fn once() -> Object {
        Object::Once(Once(Guarded::new(OnceState::New)))
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

    /// Give back whatever `task` holds (it ended).
    pub fn release_owner(&self, task: u64) {
        let owner = Some(task);
        match self {
            Object::Mutex(l) => {
                let mut g = l.0.m.lock();
                if *g == Some(owner) {
                    *g = None;
                    l.0.notify();
                }
            }
            Object::Semaphore(s) => {
                let mut g = s.g.m.lock();
                if let Some(n) = g.1.remove(&owner) {
                    g.0 += n;
                    s.g.notify();
                }
            }
            Object::Once(o) => {
                let mut g = o.0.m.lock();
                if *g == OnceState::Running(owner) {
                    *g = OnceState::Done;
                    o.0.notify();
                }
            }
            _ => {}
        }
    }

    pub fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let kind = self.kind().type_name();
        let unknown = || Err(format!("{kind} has no method '{method}'"));
        let a = args.roots();
        let b = |v: bool| Ok(Data::scalars(vec![Value::Bool(v)]));
        let i = |v: i64| Ok(Data::scalars(vec![Value::Int(v)]));
        let owner = caller.task;
        match self {
            Object::Channel(ch) => ch.call(caller, method, args),
            Object::WaitGroup(c) => match method {
                "add" | "done" => {
                    let n = if method == "done" {
                        -1
                    } else {
                        int_arg(a, 0, 1, "wg:add")?
                    };
                    let mut g = c.0.m.lock();
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
                    c.0.notify();
                    Ok(Data::default())
                }
                "wait" => {
                    let deadline = duration_arg(a, 0)?.map(|d| Instant::now() + d);
                    match c.0.wait_for(caller, deadline, |n| *n <= 0) {
                        Ok(_) => b(true),
                        Err(WaitEnd::TimedOut) => b(false),
                        Err(WaitEnd::Stopped) => Err(stopped()),
                    }
                }
                "count" => i(*c.0.m.lock()),
                _ => unknown(),
            },
            Object::Mutex(l) => match method {
                "lock" => {
                    let deadline = duration_arg(a, 0)?.map(|d| Instant::now() + d);
                    match l.0.wait_for(caller, deadline, |h| h.is_none()) {
                        Ok(mut g) => {
                            *g = Some(owner);
                            b(true)
                        }
                        Err(WaitEnd::TimedOut) => b(false),
                        Err(WaitEnd::Stopped) => Err(stopped()),
                    }
                }
                "try_lock" => {
                    let mut g = l.0.m.lock();
                    if g.is_none() {
                        *g = Some(owner);
                        b(true)
                    } else {
                        b(false)
                    }
                }
                "unlock" => {
                    let mut g = l.0.m.lock();
                    match *g {
                        None => Err("mutex: unlock of an unlocked mutex".into()),
                        Some(_) => {
                            *g = None;
                            l.0.notify();
                            Ok(Data::default())
                        }
                    }
                }
                "is_locked" => b(l.0.m.lock().is_some()),
                _ => unknown(),
            },
            Object::Semaphore(s) => match method {
                "acquire" | "try_acquire" => {
                    let n = int_arg(a, 0, 1, "semaphore:acquire")?;
                    if n < 1 || n > s.size {
                        return Err(format!(
                            "semaphore: cannot acquire {n} of {} permits",
                            s.size
                        ));
                    }
                    let deadline = if method == "try_acquire" {
                        Some(Instant::now())
                    } else {
                        duration_arg(a, 1)?.map(|d| Instant::now() + d)
                    };
                    match s.g.wait_for(caller, deadline, |st| st.0 >= n) {
                        Ok(mut g) => {
                            g.0 -= n;
                            *g.1.entry(owner).or_insert(0) += n;
                            b(true)
                        }
                        Err(WaitEnd::TimedOut) => b(false),
                        Err(WaitEnd::Stopped) => Err(stopped()),
                    }
                }
                "release" => {
                    let n = int_arg(a, 0, 1, "semaphore:release")?;
                    let mut g = s.g.m.lock();
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
                    s.g.notify();
                    Ok(Data::default())
                }
                "available" => i(s.g.m.lock().0),
                _ => unknown(),
            },
            Object::Atomic(m) => {
                let mut g = m.lock();
                match method {
                    "get" => i(*g),
                    "set" => {
                        *g = int_arg(a, 0, 0, "atomic:set")?;
                        Ok(Data::default())
                    }
                    "add" | "incr" => {
                        *g = g.wrapping_add(int_arg(a, 0, 1, "atomic:add")?);
                        i(*g)
                    }
                    "sub" | "decr" => {
                        *g = g.wrapping_sub(int_arg(a, 0, 1, "atomic:sub")?);
                        i(*g)
                    }
                    "swap" => {
                        let old = *g;
                        *g = int_arg(a, 0, 0, "atomic:swap")?;
                        i(old)
                    }
                    "compare_and_swap" => {
                        let old = int_arg(a, 0, 0, "atomic:compare_and_swap")?;
                        let new = int_arg(a, 1, 0, "atomic:compare_and_swap")?;
                        if *g == old {
                            *g = new;
                            b(true)
                        } else {
                            b(false)
                        }
                    }
                    _ => unknown(),
                }
            }
            Object::Artifact(art) => match method {
                "sha256" => Ok(Data::scalars(vec![Value::Str(
                    art.sha256.clone().into_bytes(),
                )])),
                "size" => i(art.size as i64),
                "name" => Ok(Data::scalars(vec![Value::Str(
                    art.name.clone().into_bytes(),
                )])),
                "read" => {
                    let off = int_arg(a, 0, 0, "artifact:read")?;
                    let len = int_arg(a, 1, sloth_lua::artifact::CHUNK as i64, "artifact:read")?;
                    if off < 0 || len < 0 {
                        return Err("artifact:read: negative offset or length".into());
                    }
                    let bytes = art.read(off as u64, len as usize)?;
                    Ok(Data::scalars(vec![Value::Str(bytes)]))
                }
                _ => unknown(),
            },
            Object::Once(o) => match method {
                "begin" => {
                    {
                        let mut g = o.0.m.lock();
                        if *g == OnceState::New {
                            *g = OnceState::Running(owner);
                            return b(true);
                        }
                    }
                    match o.0.wait_for(caller, None, |s| *s == OnceState::Done) {
                        Ok(_) => b(false),
                        Err(_) => Err(stopped()),
                    }
                }
                "finish" => {
                    *o.0.m.lock() = OnceState::Done;
                    o.0.notify();
                    Ok(Data::default())
                }
                "done" => b(*o.0.m.lock() == OnceState::Done),
                _ => unknown(),
            },
        }
    }
}

impl Channel {
    fn call(&self, caller: &Caller, method: &str, args: Data) -> Result<Data, String> {
        let b = |v: bool| Ok(Data::scalars(vec![Value::Bool(v)]));
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
            "len" => Ok(Data::scalars(vec![Value::Int(
                self.0.m.lock().buf.len() as i64
            )])),
            "cap" => Ok(Data::scalars(vec![Value::Int(self.0.m.lock().cap as i64)])),
            "is_closed" => b(self.0.m.lock().closed),
            other => Err(format!("channel has no method '{other}'")),
        }
    }
}

fn int_arg(a: &[Value], i: usize, default: i64, what: &str) -> Result<i64, String> {
    match a.get(i) {
        None | Some(Value::Nil) => Ok(default),
        Some(Value::Int(n)) => Ok(*n),
        Some(Value::Float(f)) if f.fract() == 0.0 => Ok(*f as i64),
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
