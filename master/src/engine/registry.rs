//! The master's objects that tasks share by reference: task records (behind
//! handles) and, for later calls, channels, wait groups and locks. Implements
//! [`SharedBackend`] for the main script, local tasks, and (through the task
//! stream) remote tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sloth_lua::cancel::CancelToken;
use sloth_lua::shared_obj::SharedBackend;
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, SharedRef, Value};
use sloth_proto::protocol::{ErrorKind, TaskError};

use crate::engine::objects::Object;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Ok,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The outcome of a task, kept so that re-awaiting returns the same result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub result: Result<Data, TaskError>,
    pub duration: Duration,
}

pub struct TaskRecord {
    pub id: u64,
    pub name: String,
    /// Where it was sent: an agent's name, `local`, or `pool:NAME` until a pool
    /// picks an agent (see [`TaskRecord::host`]).
    pub target: String,
    ran_on: Mutex<Option<String>>,
    pub cancel: CancelToken,
    /// Started by `spawn`: nobody awaits it, so its failure is printed at once.
    pub spawned: bool,
    /// The batch of a rolling `fleet.run` it belongs to (`index` of `of`, from 1).
    pub batch: Option<(usize, usize)>,
    /// Wakes the remote driver when the task is cancelled.
    pub cancel_notify: tokio::sync::Notify,
    /// When the task started running (a pool task: when it left the queue).
    started: Mutex<Instant>,
    state: Mutex<Option<Outcome>>,
    /// Set once the outcome is recorded *and* what the task held is released.
    published: std::sync::atomic::AtomicBool,
    cv: Condvar,
    /// Wakes the main script's `await` (which runs on the async runtime) when the
    /// outcome is published.
    published_notify: tokio::sync::Notify,
}

impl TaskRecord {
    /// Where the task runs (or last ran).
    pub fn host(&self) -> String {
        self.ran_on
            .lock()
            .clone()
            .unwrap_or_else(|| self.target.clone())
    }

    pub fn elapsed(&self) -> Duration {
        self.started.lock().elapsed()
    }

    /// Start the duration clock now (a queued task starts when it is dispatched).
    pub fn restart_clock(&self) {
        *self.started.lock() = Instant::now();
    }

    pub fn set_host(&self, host: &str) {
        *self.ran_on.lock() = Some(host.to_string());
    }

    /// The outcome, once it is published (after the task's locks were released).
    pub fn outcome(&self) -> Option<Outcome> {
        if !self.published.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        self.state.lock().clone()
    }

    pub fn status(&self) -> Status {
        match &*self.state.lock() {
            None => Status::Running,
            Some(o) => match &o.result {
                Ok(_) => Status::Ok,
                Err(e) if e.kind == ErrorKind::Cancelled => Status::Cancelled,
                Err(_) => Status::Failed,
            },
        }
    }

    /// Ask the task to stop wherever it runs.
    pub fn request_cancel(&self) {
        self.cancel.cancel();
        self.cancel_notify.notify_one();
    }

    /// Wait for the outcome; `None` when `timeout` passes or `caller` is stopped first.
    pub fn wait(&self, timeout: Option<Duration>, caller: Option<&CancelToken>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.state.lock();
        loop {
            if let Some(o) = &*g {
                if self.published.load(std::sync::atomic::Ordering::SeqCst) {
                    return Some(o.clone());
                }
            }
            if caller.is_some_and(|c| c.stopped().is_some()) {
                return None;
            }
            let wake = next_look(deadline)?;
            self.cv.wait_until(&mut g, wake);
        }
    }

    /// [`TaskRecord::wait`] for an async caller (the main script on the runtime).
    pub async fn wait_async(
        &self,
        timeout: Option<Duration>,
        caller: Option<&CancelToken>,
    ) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let notified = self.published_notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(o) = self.outcome() {
                return Some(o);
            }
            if caller.is_some_and(|c| c.stopped().is_some()) {
                return None;
            }
            let wake = next_look(deadline)?;
            let _ = tokio::time::timeout_at(wake.into(), notified).await;
        }
    }
}

/// When a waiter looks again at its caller's stop token: in 50 ms, or at `deadline`
/// if sooner; `None` once the deadline has passed.
fn next_look(deadline: Option<Instant>) -> Option<Instant> {
    let now = Instant::now();
    match deadline {
        Some(d) if now >= d => None,
        Some(d) => Some(d.min(now + Duration::from_millis(50))),
        None => Some(now + Duration::from_millis(50)),
    }
}

type DoneHook = Box<dyn Fn(&TaskRecord, &Outcome) + Send + Sync>;

pub struct Registry {
    next_id: AtomicU64,
    tasks: Mutex<HashMap<u64, Arc<TaskRecord>>>,
    objects: Mutex<HashMap<u64, Arc<Object>>>,
    /// The objects a task can hold (mutexes, semaphores, onces): what a finished task
    /// may have to release, without walking every channel and counter of the run.
    holdable: Mutex<Vec<Arc<Object>>>,
    /// Signalled whenever any task finishes (await_any, pools).
    any_done: (Mutex<u64>, Condvar),
    /// Called once per finished task (recap, progress).
    on_done: Mutex<Vec<DoneHook>>,
    /// Task handles (userdata) alive in the master's states, per task that ever had
    /// one. A finished task whose handles are all gone (`live == 0`), and were never
    /// copied into a graph, can no longer be named: its record is forgotten, so a long
    /// run does not keep every result.
    handles: Mutex<HashMap<u64, HandleRefs>>,
}

#[derive(Default)]
struct HandleRefs {
    live: u32,
    /// Copied into a task, a message or a result: it may be named from anywhere, so
    /// the record is kept for the whole run.
    pinned: bool,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(HashMap::new()),
            objects: Mutex::new(HashMap::new()),
            holdable: Mutex::new(Vec::new()),
            any_done: (Mutex::new(0), Condvar::new()),
            on_done: Mutex::new(Vec::new()),
            handles: Mutex::new(HashMap::new()),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn on_done(&self, f: impl Fn(&TaskRecord, &Outcome) + Send + Sync + 'static) {
        self.on_done.lock().push(Box::new(f));
    }

    pub fn new_task(
        &self,
        name: Option<String>,
        host: &str,
        timeout: Option<Duration>,
        spawned: bool,
        batch: Option<(usize, usize)>,
    ) -> Arc<TaskRecord> {
        let id = self.next_id();
        let rec = Arc::new(TaskRecord {
            id,
            name: name.unwrap_or_else(|| format!("task-{id}")),
            target: host.to_string(),
            ran_on: Mutex::new(None),
            cancel: CancelToken::new(timeout),
            spawned,
            batch,
            cancel_notify: tokio::sync::Notify::new(),
            started: Mutex::new(Instant::now()),
            state: Mutex::new(None),
            published: std::sync::atomic::AtomicBool::new(false),
            cv: Condvar::new(),
            published_notify: tokio::sync::Notify::new(),
        });
        self.tasks.lock().insert(id, rec.clone());
        rec
    }

    pub fn task(&self, id: u64) -> Option<Arc<TaskRecord>> {
        self.tasks.lock().get(&id).cloned()
    }

    /// Task records kept: every running task, and every finished one that can still
    /// be named (a handle to it is alive or was copied into a graph).
    /// `goroutine.task_stats().kept` in the main script.
    pub fn task_count(&self) -> usize {
        self.tasks.lock().len()
    }

    fn handle_retained(&self, id: u64) {
        self.handles.lock().entry(id).or_default().live += 1;
    }

    fn handle_pinned(&self, id: u64) {
        self.handles.lock().entry(id).or_default().pinned = true;
    }

    fn handle_released(&self, id: u64) {
        let mut h = self.handles.lock();
        let Some(e) = h.get_mut(&id) else { return };
        e.live = e.live.saturating_sub(1);
        if e.live > 0 || e.pinned {
            return;
        }
        // The last handle is gone: forget the task if it is over. If not, the entry
        // stays (at zero) and `complete` forgets the task when it ends; both decide
        // under this lock.
        if self.forget_if_over(id) {
            h.remove(&id);
        }
    }

    /// Drop the record of task `id` if its outcome is out; whether it was. Callers
    /// hold the handles lock, so this and `complete` decide one after the other.
    fn forget_if_over(&self, id: u64) -> bool {
        let mut tasks = self.tasks.lock();
        let over = tasks
            .get(&id)
            .is_some_and(|r| r.published.load(Ordering::SeqCst));
        if over {
            tasks.remove(&id);
        }
        over
    }

    /// Forget a finished task no handle was ever made for, once its one caller has
    /// its outcome (`goroutine.timeout`, `fleet.run`): nothing else can name it. A task
    /// still running, or one a handle names, is kept.
    pub fn forget_unnamed(&self, id: u64) {
        let h = self.handles.lock();
        if !h.contains_key(&id) {
            self.forget_if_over(id);
        }
    }

    /// Record a task's outcome (first one wins), release what it held, wake waiters.
    pub fn complete(&self, rec: &TaskRecord, result: Result<Data, TaskError>) {
        let outcome = Outcome {
            result,
            duration: rec.elapsed(),
        };
        {
            let mut g = rec.state.lock();
            if g.is_some() {
                return;
            }
            *g = Some(outcome.clone());
        }
        // The status says "failed" from here on; waiters are woken only after the
        // task's locks are free, so after `await` returns they are.
        self.release_owner(rec.id);
        // Reported (recap, `task_finished`, history) before anyone waiting for it
        // wakes: what the script does next comes after it in the events.
        for f in self.on_done.lock().iter() {
            f(rec, &outcome);
        }
        {
            let _g = rec.state.lock();
            rec.published
                .store(true, std::sync::atomic::Ordering::SeqCst);
            rec.cv.notify_all();
        }
        rec.published_notify.notify_waiters();
        // Handles were made for it and all are gone (and none was copied anywhere), or
        // it was spawned (no handle ever exists): nothing can name this task any more.
        let forget = rec.spawned || {
            let mut h = self.handles.lock();
            let gone = h.get(&rec.id).is_some_and(|e| e.live == 0 && !e.pinned);
            if gone {
                h.remove(&rec.id);
            }
            gone
        };
        if forget {
            self.tasks.lock().remove(&rec.id);
        }
        let (m, cv) = &self.any_done;
        *m.lock() += 1;
        cv.notify_all();
    }

    /// Block until some task finishes after `seen` (a value from [`Registry::done_count`]).
    pub fn wait_any_done(&self, seen: u64, until: Instant) {
        let (m, cv) = &self.any_done;
        let mut g = m.lock();
        if *g == seen {
            cv.wait_until(&mut g, until);
        }
    }

    pub fn done_count(&self) -> u64 {
        *self.any_done.0.lock()
    }

    pub fn add_object(&self, obj: Object) -> SharedRef {
        let id = self.next_id();
        let kind = obj.kind();
        let obj = Arc::new(obj);
        if obj.has_owners() {
            self.holdable.lock().push(obj.clone());
        }
        self.objects.lock().insert(id, obj);
        SharedRef { kind, id }
    }

    pub fn object(&self, id: u64) -> Option<Arc<Object>> {
        self.objects.lock().get(&id).cloned()
    }

    /// Locks and permits held by a task are released when it ends, however it ends.
    pub fn release_owner(&self, task: u64) {
        let objs: Vec<Arc<Object>> = self.holdable.lock().clone();
        for o in objs {
            o.release_owner(task);
        }
    }

    /// Every task that has not finished yet.
    pub fn running(&self) -> Vec<Arc<TaskRecord>> {
        self.tasks
            .lock()
            .values()
            .filter(|t| t.status() == Status::Running)
            .cloned()
            .collect()
    }
}

/// Who is calling: the main script (task `None`) or a task, with its stop token.
#[derive(Clone)]
pub struct Caller {
    pub task: Option<u64>,
    pub cancel: CancelToken,
}

impl Caller {
    /// The main script's own calls: nothing stops them from here (an interrupted
    /// script is ended by its stop hook, and its tasks by `Runtime::interrupt`).
    pub fn main_script() -> Caller {
        Caller {
            task: None,
            cancel: CancelToken::new(None),
        }
    }
}

/// The master-side implementation of every shared-object method.
pub struct MasterBackend {
    pub registry: Arc<Registry>,
    pub caller: Caller,
}

impl SharedBackend for MasterBackend {
    fn call(&self, obj: SharedRef, method: &str, args: Data) -> Result<Data, String> {
        // A call may wait (a channel, a lock): never on the runtime's worker.
        crate::engine::runtime::leave_worker();
        call(&self.registry, &self.caller, obj, method, args)
    }

    fn retain(&self, obj: SharedRef) {
        if obj.kind == SharedKind::Handle {
            self.registry.handle_retained(obj.id);
        }
    }

    fn release(&self, obj: SharedRef) {
        if obj.kind == SharedKind::Handle {
            self.registry.handle_released(obj.id);
        }
    }

    fn pin(&self, obj: SharedRef) {
        if obj.kind == SharedKind::Handle {
            self.registry.handle_pinned(obj.id);
        }
    }
}

/// Dispatch one shared-object call (also used for calls proxied from agents).
pub fn call(
    reg: &Arc<Registry>,
    caller: &Caller,
    obj: SharedRef,
    method: &str,
    args: Data,
) -> Result<Data, String> {
    match obj.kind {
        SharedKind::Handle => handle_call(reg, caller, obj.id, method, args),
        _ => match reg.object(obj.id) {
            Some(o) => o.call(caller, method, args),
            None => Err(format!(
                "{}#{} no longer exists",
                obj.kind.type_name(),
                obj.id
            )),
        },
    }
}

/// `true, v1, v2...` or `false, err` as one graph.
pub fn outcome_graph(rec: &TaskRecord, o: &Outcome) -> Data {
    match &o.result {
        Ok(g) => g.clone().prepend(Value::Bool(true)),
        Err(e) => Data::scalars(vec![
            Value::Bool(false),
            Value::Str(e.display_for(&rec.host()).into_bytes()),
        ]),
    }
}

/// `await` on a task's handle for the main script, which runs on the async runtime:
/// the same as the handle's `await` method, without blocking the runtime's thread.
pub async fn await_task(
    rec: &TaskRecord,
    caller: &Caller,
    timeout: Option<Duration>,
) -> Result<Data, String> {
    let got = rec.wait_async(timeout, Some(&caller.cancel)).await;
    await_outcome(rec, caller, timeout, got)
}

/// What `await` returns: the outcome, or a timeout (`got` is `None`).
fn await_outcome(
    rec: &TaskRecord,
    caller: &Caller,
    timeout: Option<Duration>,
    got: Option<Outcome>,
) -> Result<Data, String> {
    // A stopped caller (an interrupted script, a cancelled task) goes no further,
    // even when the task ended meanwhile.
    if let Some(r) = caller.cancel.stopped() {
        return Err(r.message());
    }
    match got {
        Some(o) => Ok(outcome_graph(rec, &o)),
        None => {
            let ms = timeout.map(|t| t.as_millis()).unwrap_or(0);
            Ok(Data::scalars(vec![
                Value::Bool(false),
                Value::Str(
                    format!(
                        "timeout exceeded: {}: await gave up after {ms} ms (the task is still running)",
                        rec.host()
                    )
                    .into_bytes(),
                ),
            ]))
        }
    }
}

fn handle_call(
    reg: &Arc<Registry>,
    caller: &Caller,
    id: u64,
    method: &str,
    args: Data,
) -> Result<Data, String> {
    let rec = reg
        .task(id)
        .ok_or_else(|| format!("no task with id {id}"))?;
    let s = |v: &str| Data::string(v);
    match method {
        "await" | "result" => {
            let timeout = crate::engine::objects::duration_arg(args.roots(), 0)?;
            let got = rec.wait(timeout, Some(&caller.cancel));
            await_outcome(&rec, caller, timeout, got)
        }
        "status" => Ok(s(rec.status().as_str())),
        "host" => Ok(s(&rec.host())),
        "cancel" => {
            let running = rec.status() == Status::Running;
            if running {
                rec.request_cancel();
            }
            Ok(Data::scalars(vec![Value::Bool(running)]))
        }
        other => Err(format!("handle has no method '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sloth_lua::shared_obj::SharedObj;

    fn backend(reg: &Arc<Registry>) -> Arc<dyn SharedBackend> {
        Arc::new(MasterBackend {
            registry: reg.clone(),
            caller: Caller {
                task: None,
                cancel: CancelToken::new(None),
            },
        })
    }

    fn handle(reg: &Arc<Registry>, rec: &TaskRecord) -> SharedObj {
        let r = SharedRef {
            kind: SharedKind::Handle,
            id: rec.id,
        };
        SharedObj::new(r, backend(reg))
    }

    #[test]
    fn a_finished_task_whose_handles_are_gone_is_forgotten() {
        let reg = Registry::new();
        // Handles dropped after the end.
        let a = reg.new_task(None, "local", None, false, None);
        let (h1, h2) = (handle(&reg, &a), handle(&reg, &a));
        reg.complete(&a, Ok(Data::default()));
        drop(h1);
        assert!(reg.task(a.id).is_some(), "one handle is still alive");
        drop(h2);
        assert!(reg.task(a.id).is_none());
        // Handle dropped before the end: forgotten when it ends, not before.
        let b = reg.new_task(None, "local", None, false, None);
        drop(handle(&reg, &b));
        assert!(reg.task(b.id).is_some(), "still running");
        reg.complete(&b, Ok(Data::default()));
        assert!(reg.task(b.id).is_none());
        // No handle was ever made (internal tasks): kept.
        let c = reg.new_task(None, "local", None, false, None);
        reg.complete(&c, Ok(Data::default()));
        assert!(reg.task(c.id).is_some());
        // Spawned (fire and forget): no handle can exist, forgotten when it ends.
        let d = reg.new_task(None, "local", None, true, None);
        assert!(reg.task(d.id).is_some(), "running");
        reg.complete(&d, Ok(Data::default()));
        assert!(reg.task(d.id).is_none());
        assert_eq!(reg.task_count(), 1);
    }

    #[test]
    fn a_handle_copied_into_a_graph_keeps_its_task() {
        let reg = Registry::new();
        let a = reg.new_task(None, "local", None, false, None);
        let h = handle(&reg, &a);
        let copied = h.to_graph_ref();
        reg.complete(&a, Ok(Data::default()));
        drop(h);
        // Some task or message may still name it.
        assert_eq!(reg.task(copied.id).map(|r| r.id), Some(a.id));
    }
}
