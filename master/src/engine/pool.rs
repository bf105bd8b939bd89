//! The pool scheduler. A local pool runs N tasks at once on master threads; a fleet
//! pool keeps N tasks in flight across its agents, always sending the next one to
//! the least-loaded *ready* agent. Nothing is dropped: a full queue blocks
//! [`Pool::submit`]. The Lua API (`pool_create/submit/wait/close/stats`) is in
//! `crate::lua::pools`.
//!
//! Under churn (see docs/fleet.md, "Pools under churn"):
//! - a task that never reached an agent (no connection, no stream, refused at
//!   admission) goes back to the queue at once and does not use up `retries`;
//! - a task whose agent was lost after it was sent may have run: it is re-queued
//!   while `retries` last (at-least-once execution, exactly-once results);
//! - a host that fails is `lost`: out of the rotation, probed in the background with
//!   back-off (`probing`), never by a real task, and `ready` again when a probe
//!   connects (after a restart on the same address, say);
//! - queued tasks fail (`unreachable`, naming the hosts) only when no agent of the
//!   pool has been reachable for the connect timeout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sloth_proto::graph::Graph;
use sloth_proto::protocol::{ErrorKind, TaskError};

use crate::engine::dispatch;
use crate::engine::registry::{Status, TaskRecord};
use crate::engine::retry::RetryPolicy;
use crate::engine::runtime::Runtime;

/// Where a host of a fleet pool stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum HostState {
    #[default]
    Ready,
    /// Out of the rotation until a probe connects.
    Lost,
    /// A probe is dialing it now.
    Probing,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Lost => "lost",
            HostState::Probing => "probing",
        }
    }
}

/// First and longest wait between two probes of a lost host.
const PROBE_FIRST: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);
/// A host that refused a task at admission (at capacity) gets none for this long.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Clone)]
struct HostStats {
    state: HostState,
    active: u64,
    completed: u64,
    failed: u64,
    /// Tasks sent back to the queue because of this host (never reached it, or lost with it).
    requeued: u64,
    /// Lost: when to probe next, and the wait after that.
    next_probe: Instant,
    probe_delay: Duration,
    /// Why it was last lost.
    last_error: Option<String>,
    /// At capacity: no task until then.
    busy_until: Option<Instant>,
}

impl Default for HostStats {
    fn default() -> Self {
        HostStats {
            state: HostState::Ready,
            active: 0,
            completed: 0,
            failed: 0,
            requeued: 0,
            next_probe: Instant::now(),
            probe_delay: PROBE_FIRST,
            last_error: None,
            busy_until: None,
        }
    }
}

struct Queued {
    rec: Arc<TaskRecord>,
    payload: Arc<Graph>,
    /// Attempts that may have run (they use up `retries`).
    attempts: u32,
    /// Times it was sent back without reaching an agent (free).
    requeues: u32,
    /// Host of the last failed attempt (avoid it when another is possible).
    avoid: Option<String>,
}

struct State {
    closed: bool,
    queue: VecDeque<Queued>,
    in_flight: usize,
    submitted: Vec<Arc<TaskRecord>>,
    completed: u64,
    failed: u64,
    /// Cancelled (queued or running): not failures, the script asked.
    cancelled: u64,
    /// Re-sent after an agent was lost with them (they may have run twice).
    retried: u64,
    /// Sent back to the queue because they never reached an agent.
    requeued: u64,
    /// Since when no host of the pool is ready (fleet pools).
    none_ready_since: Option<Instant>,
    hosts: BTreeMap<String, HostStats>,
}

impl State {
    /// Take `h` out of the rotation (it will be probed).
    fn lose(&mut self, h: &str, why: &str) {
        let hs = self.hosts.entry(h.to_string()).or_default();
        if hs.state == HostState::Ready {
            hs.state = HostState::Lost;
            hs.probe_delay = PROBE_FIRST;
            hs.next_probe = Instant::now() + PROBE_FIRST;
        }
        hs.last_error = Some(why.to_string());
        if !self.hosts.values().any(|s| s.state == HostState::Ready) {
            self.none_ready_since.get_or_insert_with(Instant::now);
        }
    }
}

/// What a pool is asked to be.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: String,
    /// Tasks in flight at once.
    pub workers: usize,
    /// Queued tasks before [`Pool::submit`] waits for room.
    pub queue_cap: usize,
    /// The pool's agents; `None`: a local pool.
    pub targets: Option<Vec<String>>,
    pub retry: RetryPolicy,
    /// Each task's timeout, from when it starts.
    pub timeout: Option<Duration>,
}

/// Counters of a pool and of each of its hosts, as `pool_stats` shows them.
#[derive(Clone, Debug)]
pub struct PoolStats {
    pub active: usize,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub queued: usize,
    pub retried: u64,
    pub requeued: u64,
    pub submitted: usize,
    pub closed: bool,
    pub hosts: Vec<(String, HostStatsView)>,
}

/// One host of a fleet pool.
#[derive(Clone, Debug)]
pub struct HostStatsView {
    pub state: HostState,
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub requeued: u64,
    pub last_error: Option<String>,
}

/// Why [`Pool::submit`] took nothing.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("pool '{0}' is closed")]
    Closed(String),
}

pub struct Pool {
    name: String,
    workers: usize,
    queue_cap: usize,
    targets: Option<Vec<String>>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    state: Mutex<State>,
    /// Signalled on every change (room in the queue, a task done).
    changed: Condvar,
    wake: tokio::sync::Notify,
}

/// The pools of a run, by name.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Pools {
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.lock().get(name).cloned()
    }

    /// Start a pool; `None` if one of that name exists.
    pub fn create(&self, rt: &Arc<Runtime>, spec: PoolSpec) -> Option<Arc<Pool>> {
        let mut pools = self.pools.lock();
        if pools.contains_key(&spec.name) {
            return None;
        }
        let pool = Pool::start(rt, spec);
        pools.insert(pool.name.clone(), pool.clone());
        Some(pool)
    }
}

impl Pool {
    /// Start the pool's dispatcher on the run's runtime.
    pub fn start(rt: &Arc<Runtime>, spec: PoolSpec) -> Arc<Pool> {
        let hosts = spec
            .targets
            .iter()
            .flatten()
            .map(|h| (h.clone(), HostStats::default()))
            .collect();
        let pool = Arc::new(Pool {
            name: spec.name,
            workers: spec.workers.max(1),
            queue_cap: spec.queue_cap.max(1),
            targets: spec.targets,
            retry: spec.retry,
            timeout: spec.timeout,
            state: Mutex::new(State {
                closed: false,
                queue: VecDeque::new(),
                in_flight: 0,
                submitted: Vec::new(),
                completed: 0,
                failed: 0,
                cancelled: 0,
                retried: 0,
                requeued: 0,
                none_ready_since: None,
                hosts,
            }),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
        });
        rt.handle.spawn(dispatcher(rt.clone(), pool.clone()));
        pool
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The pool's agents; `None` for a local pool.
    pub fn targets(&self) -> Option<&[String]> {
        self.targets.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Queue a task; blocks (never drops) while the queue is full. Its record is
    /// named `NAME#N` and belongs to the pool until a worker runs it.
    pub fn submit(&self, rt: &Runtime, payload: Graph) -> Result<Arc<TaskRecord>, SubmitError> {
        let mut st = self.state.lock();
        while st.queue.len() >= self.queue_cap && !st.closed {
            self.changed.wait_for(&mut st, Duration::from_millis(100));
        }
        if st.closed {
            return Err(SubmitError::Closed(self.name.clone()));
        }
        let n = st.submitted.len() + 1;
        let target_name = if self.targets.is_some() {
            format!("pool:{}", self.name)
        } else {
            dispatch::LOCAL.to_string()
        };
        let rec = rt.registry.new_task(
            Some(format!("{}#{n}", self.name)),
            &target_name,
            None,
            false,
            None,
        );
        rt.out.task_started(&rec);
        st.submitted.push(rec.clone());
        st.queue.push_back(Queued {
            rec: rec.clone(),
            payload: Arc::new(payload),
            attempts: 0,
            requeues: 0,
            avoid: None,
        });
        drop(st);
        self.wake.notify_one();
        Ok(rec)
    }

    /// No more submissions; what is queued still runs.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
        self.wake.notify_one();
    }

    /// Every task submitted so far, in order.
    pub fn submitted(&self) -> Vec<Arc<TaskRecord>> {
        self.state.lock().submitted.clone()
    }

    /// Tasks that have ended (completed or failed) so far.
    pub fn finished(&self) -> u64 {
        let st = self.state.lock();
        st.completed + st.failed + st.cancelled
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.state.lock();
        PoolStats {
            active: st.in_flight,
            completed: st.completed,
            failed: st.failed,
            cancelled: st.cancelled,
            queued: st.queue.len(),
            retried: st.retried,
            requeued: st.requeued,
            submitted: st.submitted.len(),
            closed: st.closed,
            hosts: st
                .hosts
                .iter()
                .map(|(h, s)| {
                    let view = HostStatsView {
                        state: s.state,
                        active: s.active,
                        completed: s.completed,
                        failed: s.failed,
                        requeued: s.requeued,
                        last_error: s.last_error.clone(),
                    };
                    (h.clone(), view)
                })
                .collect(),
        }
    }

    /// Pick where the next task goes: the least-loaded ready agent, not the one the
    /// task just failed on when another is ready. `None`: no agent is ready now.
    fn pick_host(&self, st: &State, avoid: Option<&str>) -> Option<String> {
        let targets = self.targets.as_ref()?;
        let now = Instant::now();
        let mut candidates: Vec<&String> = targets
            .iter()
            .filter(|h| {
                st.hosts.get(*h).is_none_or(|s| {
                    s.state == HostState::Ready && s.busy_until.is_none_or(|t| t <= now)
                })
            })
            .collect();
        if candidates.len() > 1 {
            if let Some(a) = avoid {
                candidates.retain(|h| h.as_str() != a);
            }
        }
        candidates
            .into_iter()
            // Least active first; among equals, the one that has done the least so far.
            .min_by_key(|h| {
                st.hosts
                    .get(*h)
                    .map(|s| (s.active, s.completed + s.failed))
                    .unwrap_or((0, 0))
            })
            .cloned()
    }

    /// Lost hosts whose next probe is due, now marked `probing`.
    fn due_probes(&self, st: &mut State) -> Vec<String> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (h, s) in st.hosts.iter_mut() {
            if s.state == HostState::Lost && s.next_probe <= now {
                s.state = HostState::Probing;
                due.push(h.clone());
            }
        }
        due
    }
}

/// Dial a lost host in the background; it rejoins when the dial succeeds.
async fn probe(rt: Arc<Runtime>, pool: Arc<Pool>, host: String) {
    let outcome = match &rt.transport {
        Some(t) => t.link(&host).await.map(|_| ()),
        None => Ok(()),
    };
    let mut st = pool.state.lock();
    let hs = st.hosts.entry(host.clone()).or_default();
    match outcome {
        Ok(()) => {
            hs.state = HostState::Ready;
            hs.probe_delay = PROBE_FIRST;
            hs.busy_until = None;
            st.none_ready_since = None;
            tracing::info!(pool = %pool.name, %host, "agent is back: rejoins the pool");
        }
        Err(e) => {
            hs.state = HostState::Lost;
            hs.last_error = Some(e.display_for(&host));
            hs.probe_delay = (hs.probe_delay * 2).min(PROBE_MAX);
            hs.next_probe = Instant::now() + hs.probe_delay;
        }
    }
    drop(st);
    pool.changed.notify_all();
    pool.wake.notify_one();
}

/// Every queued task fails: no agent of the pool has been reachable for the connect
/// timeout.
fn fail_unreachable(rt: &Runtime, pool: &Pool) {
    let (failed, why) = {
        let mut st = pool.state.lock();
        let failed: Vec<Queued> = st.queue.drain(..).collect();
        st.failed += failed.len() as u64;
        let tried: Vec<String> = st
            .hosts
            .iter()
            .map(|(h, s)| match &s.last_error {
                Some(e) => format!("{h} ({e})"),
                None => h.clone(),
            })
            .collect();
        (failed, tried.join(", "))
    };
    let ms = rt
        .transport
        .as_ref()
        .map(|t| t.connect_timeout().as_millis())
        .unwrap_or(0);
    for q in failed {
        rt.registry.complete(
            &q.rec,
            Err(TaskError::new(
                ErrorKind::Unreachable,
                format!(
                    "pool {}: no agent has been reachable for {ms} ms; tried {why}",
                    pool.name
                ),
            )),
        );
    }
    pool.changed.notify_all();
}

/// The pool's dispatcher: keeps `workers` tasks in flight, and probes lost hosts.
async fn dispatcher(rt: Arc<Runtime>, pool: Arc<Pool>) {
    let give_up_after = rt
        .transport
        .as_ref()
        .map(|t| t.connect_timeout())
        .unwrap_or(Duration::from_secs(3));
    loop {
        let (next, probes, hopeless) = {
            let mut st = pool.state.lock();
            let probes = pool.due_probes(&mut st);
            let mut next = None;
            let mut hopeless = false;
            if st.in_flight < pool.workers && !st.queue.is_empty() {
                let avoid = st.queue.front().and_then(|q| q.avoid.clone());
                let host = pool.pick_host(&st, avoid.as_deref());
                if host.is_some() || pool.targets.is_none() {
                    if let Some(q) = st.queue.pop_front() {
                        st.in_flight += 1;
                        if let Some(h) = &host {
                            st.hosts.entry(h.clone()).or_default().active += 1;
                        }
                        pool.changed.notify_all();
                        next = Some((q, host));
                    }
                } else {
                    hopeless = st
                        .none_ready_since
                        .is_some_and(|t| t.elapsed() >= give_up_after)
                        && st.in_flight == 0;
                }
            }
            (next, probes, hopeless)
        };
        for h in probes {
            tokio::spawn(probe(rt.clone(), pool.clone(), h));
        }
        if hopeless {
            fail_unreachable(&rt, &pool);
            continue;
        }
        match next {
            Some((q, host)) => {
                let (rt2, pool2) = (rt.clone(), pool.clone());
                tokio::spawn(async move { run_one(rt2, pool2, q, host).await });
            }
            None => {
                let idle = {
                    let st = pool.state.lock();
                    if st.closed && st.queue.is_empty() && st.in_flight == 0 {
                        return;
                    }
                    st.queue.is_empty() && !st.hosts.values().any(|s| s.state != HostState::Ready)
                };
                // With lost hosts or tasks waiting for one, look again soon.
                let nap = if idle { 200 } else { 25 };
                let woken =
                    tokio::time::timeout(Duration::from_millis(nap), pool.wake.notified()).await;
                if woken.is_err() {
                    drop_cancelled(&rt, &pool);
                }
            }
        }
    }
}

/// Queued tasks whose handle was cancelled end now, not when a worker frees up.
/// (Checked when the dispatcher is idle or the pool is full, every 200 ms.)
fn drop_cancelled(rt: &Runtime, pool: &Pool) {
    let cancelled: Vec<Arc<TaskRecord>> = {
        let mut st = pool.state.lock();
        let mut out = Vec::new();
        st.queue.retain(|q| {
            if q.rec.cancel.stopped().is_some() {
                out.push(q.rec.clone());
                false
            } else {
                true
            }
        });
        st.cancelled += out.len() as u64;
        out
    };
    if cancelled.is_empty() {
        return;
    }
    for rec in cancelled {
        rt.registry.complete(
            &rec,
            Err(TaskError::new(
                ErrorKind::Cancelled,
                "task cancelled before it started",
            )),
        );
    }
    pool.changed.notify_all();
}

async fn run_one(rt: Arc<Runtime>, pool: Arc<Pool>, mut q: Queued, host: Option<String>) {
    let rec = q.rec.clone();
    let (result, reached) = if rec.cancel.stopped().is_some() {
        let e = TaskError::new(ErrorKind::Cancelled, "task cancelled before it started");
        (Err(e), true)
    } else {
        rec.cancel.set_timeout(pool.timeout);
        if q.attempts == 0 && q.requeues == 0 {
            rec.restart_clock();
        }
        match &host {
            None => (dispatch::run_local(&rt, &rec, &q.payload).await, true),
            Some(h) => {
                let a = dispatch::attempt_remote(&rt, &rec, h, &q.payload).await;
                (a.result, a.reached)
            }
        }
    };
    let lost = matches!(&result, Err(e) if RetryPolicy::is_host_failure(e));
    let mut st = pool.state.lock();
    st.in_flight -= 1;
    if let Some(h) = &host {
        let hs = st.hosts.entry(h.clone()).or_default();
        hs.active = hs.active.saturating_sub(1);
        if let Err(e) = &result {
            if lost {
                let why = e.display_for(h);
                st.lose(h, &why);
            } else if !reached {
                // At capacity: let it breathe.
                hs.busy_until = Some(Instant::now() + BUSY_PAUSE);
            }
        }
    }
    let live = rec.status() == Status::Running && rec.cancel.stopped().is_none();
    if result.is_err() && !reached && host.is_some() && live {
        // It never ran there: back to the queue at once, no retry used.
        q.requeues += 1;
        q.avoid = host.clone();
        st.requeued += 1;
        if let Some(h) = &host {
            st.hosts.entry(h.clone()).or_default().requeued += 1;
        }
        st.queue.push_front(q);
    } else if pool.retry.again(&result, q.attempts) && live {
        q.attempts += 1;
        q.avoid = host.clone();
        st.retried += 1;
        if let Some(h) = &host {
            st.hosts.entry(h.clone()).or_default().requeued += 1;
        }
        if let Err(e) = &result {
            rt.out.task_log(
                rec.id,
                &rec.host(),
                &rec.name,
                sloth_proto::protocol::LogLevel::Warn,
                &format!(
                    "pool {}: retrying elsewhere ({}/{}) after: {}",
                    pool.name,
                    q.attempts,
                    pool.retry.retries,
                    e.display_for(&rec.host())
                ),
            );
        }
        st.queue.push_front(q);
    } else {
        let cancelled = matches!(&result, Err(e) if e.kind == ErrorKind::Cancelled);
        match (&result, cancelled) {
            (Ok(_), _) => st.completed += 1,
            (Err(_), true) => st.cancelled += 1,
            (Err(_), false) => st.failed += 1,
        }
        if let Some(h) = &host {
            let hs = st.hosts.entry(h.clone()).or_default();
            match (&result, cancelled) {
                (Ok(_), _) => hs.completed += 1,
                (Err(_), true) => {}
                (Err(_), false) => hs.failed += 1,
            }
        }
        drop(st);
        rt.registry.complete(&rec, result);
        st = pool.state.lock();
    }
    pool.changed.notify_all();
    drop(st);
    pool.wake.notify_one();
}

#[cfg(test)]
mod tests {
    //! The scheduler under churn, over the fake transport.

    use super::*;
    use crate::engine::fake::{int_result, payload, run_over, Behaviour, FakeFleet};
    use crate::engine::registry::Outcome;

    const WAIT: Option<Duration> = Some(Duration::from_secs(20));

    fn answer(value: i64, ms: u64) -> Behaviour {
        Behaviour::Answer {
            value,
            delay: Duration::from_millis(ms),
        }
    }

    fn spec(name: &str, hosts: &[&str], workers: usize, retries: u32) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            workers,
            queue_cap: 1000,
            targets: Some(hosts.iter().map(|h| h.to_string()).collect()),
            retry: RetryPolicy {
                retries,
                retry_errors: false,
            },
            timeout: None,
        }
    }

    fn host<'a>(st: &'a PoolStats, h: &str) -> &'a HostStatsView {
        &st.hosts
            .iter()
            .find(|(n, _)| n == h)
            .expect("a pool host")
            .1
    }

    fn wait_all(pool: &Pool) -> Vec<Outcome> {
        pool.submitted()
            .iter()
            .map(|r| r.wait(WAIT, None).expect("every task ends"))
            .collect()
    }

    #[test]
    fn tasks_spread_over_the_least_loaded_hosts_and_all_complete() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        for (i, h) in ["a", "b", "c"].iter().enumerate() {
            fleet.set(h, answer(i as i64, 10));
        }
        let (_tokio, rt, events) = run_over(&fleet, &["a", "b", "c"]);
        let pool = Pool::start(&rt, spec("spread", &["a", "b", "c"], 6, 0));
        for _ in 0..60 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        pool.close();
        let outcomes = wait_all(&pool);
        assert!(outcomes.iter().all(|o| int_result(o).is_some()));
        let st = pool.stats();
        assert_eq!((st.completed, st.failed, st.queued), (60, 0, 0));
        // Every task was reported done exactly once.
        assert_eq!(events.done_reaching(60), 60);
        for h in ["a", "b", "c"] {
            // Two in flight per host: each gets a fair share.
            let n = fleet.received(h);
            assert!((10..=30).contains(&n), "{h} ran {n} of 60");
            assert_eq!(host(&st, h).completed, n);
        }
    }

    #[test]
    fn a_task_refused_at_admission_is_requeued_without_using_a_retry() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("full", Behaviour::Refuse);
        fleet.set("free", answer(1, 5));
        let (_tokio, rt, _events) = run_over(&fleet, &["full", "free"]);
        let pool = Pool::start(&rt, spec("busy", &["full", "free"], 4, 0));
        for _ in 0..20 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        pool.close();
        let outcomes = wait_all(&pool);
        assert!(outcomes.iter().all(|o| o.result.is_ok()));
        let st = pool.stats();
        assert_eq!((st.completed, st.failed, st.retried), (20, 0, 0));
        assert!(st.requeued >= 1, "the refusing host was tried: {st:?}");
        assert_eq!(fleet.received("full"), 0);
        assert_eq!(fleet.received("free"), 20);
    }

    #[test]
    fn a_host_that_dies_mid_run_loses_no_task_and_rejoins_when_back() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("a", answer(1, 20));
        fleet.set("b", answer(2, 20));
        let (_tokio, rt, _events) = run_over(&fleet, &["a", "b"]);
        let pool = Pool::start(&rt, spec("churn", &["a", "b"], 4, 1));
        for _ in 0..20 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        // `a` goes down with a task in flight; it may have run, so it is retried once.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while fleet.received("a") == 0 {
            assert!(std::time::Instant::now() < until, "a never got a task");
            std::thread::sleep(Duration::from_millis(1));
        }
        fleet.down("a");
        let first = wait_all(&pool);
        assert!(
            first.iter().all(|o| o.result.is_ok()),
            "no task fails on a host that died: {:?}",
            first.iter().find(|o| o.result.is_err())
        );
        let st = pool.stats();
        assert!(st.retried >= 1, "{st:?}");
        assert_ne!(host(&st, "a").state, HostState::Ready, "{st:?}");
        let on_a = fleet.received("a");

        // Much later, a long-dead host must not fail new work: it is out of the
        // rotation until a probe connects.
        for _ in 0..10 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        let st = {
            let recs = pool.submitted();
            for r in &recs {
                assert!(r.wait(WAIT, None).expect("ends").result.is_ok());
            }
            pool.stats()
        };
        assert_eq!(st.failed, 0);
        assert_eq!(
            fleet.received("a"),
            on_a,
            "nothing was sent to the dead host"
        );

        // Back on the same address: a probe finds it and it gets tasks again.
        fleet.set("a", answer(1, 20));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while host(&pool.stats(), "a").state != HostState::Ready {
            assert!(std::time::Instant::now() < until, "a never rejoined");
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..20 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        pool.close();
        assert!(wait_all(&pool).iter().all(|o| o.result.is_ok()));
        assert!(fleet.received("a") > on_a, "a rejoined the rotation");
    }

    #[test]
    fn queued_tasks_fail_naming_the_hosts_once_none_is_reachable() {
        let fleet = FakeFleet::new(Duration::from_millis(200));
        fleet.down("x");
        fleet.down("y");
        let (_tokio, rt, _events) = run_over(&fleet, &["x", "y"]);
        let pool = Pool::start(&rt, spec("dark", &["x", "y"], 2, 3));
        for _ in 0..5 {
            pool.submit(&rt, payload()).expect("open pool");
        }
        pool.close();
        let t0 = std::time::Instant::now();
        let outcomes = wait_all(&pool);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        for o in &outcomes {
            let e = o.result.as_ref().expect_err("unreachable");
            assert_eq!(e.kind, ErrorKind::Unreachable);
            assert!(
                e.message.contains("x (") && e.message.contains("y ("),
                "{}",
                e.message
            );
        }
        assert_eq!(pool.stats().failed, 5);
    }

    #[test]
    fn cancelled_tasks_end_whether_queued_or_running() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("one", Behaviour::Hang);
        let (_tokio, rt, _events) = run_over(&fleet, &["one"]);
        let pool = Pool::start(&rt, spec("stuck", &["one"], 1, 0));
        let running = pool.submit(&rt, payload()).expect("open pool");
        let queued: Vec<_> = (0..3)
            .map(|_| pool.submit(&rt, payload()).expect("open pool"))
            .collect();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while fleet.received("one") == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the first task never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in &queued {
            r.request_cancel();
        }
        for r in &queued {
            let o = r
                .wait(Some(Duration::from_secs(2)), None)
                .expect("ends soon");
            let e = o.result.expect_err("cancelled");
            assert_eq!(e.kind, ErrorKind::Cancelled);
            assert!(e.message.contains("before it started"), "{}", e.message);
        }
        assert!(running
            .wait(Some(Duration::from_millis(50)), None)
            .is_none());
        running.request_cancel();
        let o = running
            .wait(Some(Duration::from_secs(2)), None)
            .expect("ends");
        assert_eq!(o.result.expect_err("cancelled").kind, ErrorKind::Cancelled);
        assert_eq!(fleet.received("one"), 1, "cancelled queued tasks never ran");
        assert_eq!(fleet.aborted("one"), 1);
        // Cancelled, not failed: the script asked.
        assert_eq!((pool.stats().failed, pool.stats().cancelled), (0, 4));
    }

    #[test]
    fn submit_to_a_closed_pool_is_refused() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        let (_tokio, rt, _events) = run_over(&fleet, &["a"]);
        let pool = Pool::start(&rt, spec("shut", &["a"], 1, 0));
        pool.close();
        assert!(matches!(
            pool.submit(&rt, payload()),
            Err(SubmitError::Closed(n)) if n == "shut"
        ));
    }
}
