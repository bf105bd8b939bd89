//! Worker pools: `pool_create/submit/wait/close/stats`. A local pool runs N tasks
//! at once on master threads; a fleet pool keeps N tasks in flight across its
//! agents, always sending the next one to the least-loaded *ready* agent. Nothing
//! is dropped: a full queue blocks `pool_submit`.
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

use mlua::{Function, Lua, MultiValue, Table, Value as LV};
use parking_lot::{Condvar, Mutex};
use sloth_lua::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::graph::{Graph, SharedKind, SharedRef};
use sloth_proto::protocol::{ErrorKind, TaskError};

use crate::engine::dispatch::{self, TaskOpts};
use crate::engine::registry::{Status, TaskRecord};
use sloth_lua::context::parse_duration;

use crate::engine::retry::RetryPolicy;
use crate::engine::runtime::Runtime;
use crate::lua::args::{capture_call, check_keys, result_table, retry_policy, rt_err};

/// Where a host of a fleet pool stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum HostState {
    #[default]
    Ready,
    /// Out of the rotation until a probe connects.
    Lost,
    /// A probe is dialing it now.
    Probing,
}

impl HostState {
    fn as_str(self) -> &'static str {
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

#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<String, Arc<Pool>>>,
}

impl Pool {
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
    let outcome = match &rt.mesh {
        Some(mesh) => mesh.connect(&host).await.map(|_| ()),
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
        .mesh
        .as_ref()
        .map(|m| m.cfg.connect_timeout.as_millis())
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
        .mesh
        .as_ref()
        .map(|m| m.cfg.connect_timeout)
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
        st.failed += out.len() as u64;
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
        if result.is_ok() {
            st.completed += 1;
        } else {
            st.failed += 1;
        }
        if let Some(h) = &host {
            let hs = st.hosts.entry(h.clone()).or_default();
            if result.is_ok() {
                hs.completed += 1;
            } else {
                hs.failed += 1;
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

impl Pools {
    fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.lock().get(name).cloned()
    }
}

fn stats_table(lua: &Lua, p: &Pool) -> mlua::Result<Table> {
    let st = p.state.lock();
    let t = lua.create_table()?;
    t.raw_set("name", p.name.as_str())?;
    t.raw_set("workers", p.workers)?;
    t.raw_set("active", st.in_flight)?;
    t.raw_set("completed", st.completed)?;
    t.raw_set("failed", st.failed)?;
    t.raw_set("queued", st.queue.len())?;
    t.raw_set("retried", st.retried)?;
    t.raw_set("requeued", st.requeued)?;
    t.raw_set("submitted", st.submitted.len())?;
    t.raw_set("closed", st.closed)?;
    let hosts = lua.create_table()?;
    for (h, s) in &st.hosts {
        let e = lua.create_table()?;
        e.raw_set("active", s.active)?;
        e.raw_set("completed", s.completed)?;
        e.raw_set("failed", s.failed)?;
        e.raw_set("requeued", s.requeued)?;
        e.raw_set("state", s.state.as_str())?;
        if let Some(err) = &s.last_error {
            e.raw_set("last_error", err.as_str())?;
        }
        hosts.raw_set(h.as_str(), e)?;
    }
    t.raw_set("hosts", hosts)?;
    Ok(t)
}

/// Resolve `delegate_to` of a pool: a pattern string or a list of patterns.
fn pool_targets(rt: &Runtime, v: &LV) -> Result<Option<Vec<String>>, String> {
    let patterns: Vec<String> = match v {
        LV::Nil => return Ok(None),
        LV::String(s) => vec![s.to_string_lossy().to_string()],
        LV::Table(t) => t
            .sequence_values::<String>()
            .collect::<mlua::Result<_>>()
            .map_err(|e| format!("delegate_to list: {e}"))?,
        other => {
            return Err(format!(
                "delegate_to must be a pattern or a list, got {}",
                other.type_name()
            ))
        }
    };
    let mut hosts: Vec<String> = Vec::new();
    for p in patterns {
        for h in rt.inventory.resolve(&p).map_err(|e| e.to_string())? {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    if hosts.is_empty() {
        return Err("delegate_to matches no host".into());
    }
    Ok(Some(hosts))
}

pub fn install(
    lua: &Lua,
    g: &Table,
    rt: Arc<Runtime>,
    backend: Arc<dyn SharedBackend>,
) -> mlua::Result<()> {
    let pools = Arc::new(Pools::default());
    {
        let (rt, pools) = (rt.clone(), pools.clone());
        g.raw_set(
            "pool_create",
            lua.create_function(move |lua, (name, opts): (String, Option<Table>)| {
                let fail = |m: String| Ok((LV::Nil, Some(format!("pool_create '{name}': {m}"))));
                if pools.get(&name).is_some() {
                    return fail("a pool with this name already exists".into());
                }
                let opts = match opts {
                    Some(t) => t,
                    None => lua.create_table()?,
                };
                check_keys(
                    &opts,
                    &[
                        "workers",
                        "delegate_to",
                        "retries",
                        "retry_errors",
                        "timeout",
                        "queue",
                    ],
                    "goroutine.pool_create",
                )?;
                let targets = match pool_targets(&rt, &opts.raw_get::<LV>("delegate_to")?) {
                    Ok(t) => t,
                    Err(e) => return fail(e),
                };
                let workers = match opts.raw_get::<LV>("workers")? {
                    LV::Nil => targets.as_ref().map(|t| t.len() * 4).unwrap_or(4),
                    LV::Integer(n) if n >= 1 => n as usize,
                    _ => return fail("workers must be an integer >= 1".into()),
                };
                let retry = match retry_policy(&opts) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                let timeout = match parse_duration(&opts.raw_get::<LV>("timeout")?) {
                    Ok(t) => t,
                    Err(e) => return fail(e),
                };
                let queue_cap = match opts.raw_get::<LV>("queue")? {
                    LV::Nil => (workers * 4).max(256),
                    LV::Integer(n) if n >= 1 => n as usize,
                    _ => return fail("queue must be an integer >= 1".into()),
                };
                let pool = Arc::new(Pool {
                    name: name.clone(),
                    workers,
                    queue_cap,
                    targets,
                    retry,
                    timeout,
                    state: Mutex::new(State {
                        closed: false,
                        queue: VecDeque::new(),
                        in_flight: 0,
                        submitted: Vec::new(),
                        completed: 0,
                        failed: 0,
                        retried: 0,
                        requeued: 0,
                        none_ready_since: None,
                        hosts: BTreeMap::new(),
                    }),
                    changed: Condvar::new(),
                    wake: tokio::sync::Notify::new(),
                });
                if let Some(t) = &pool.targets {
                    let mut st = pool.state.lock();
                    for h in t {
                        st.hosts.entry(h.clone()).or_default();
                    }
                }
                pools.pools.lock().insert(name, pool.clone());
                rt.handle.spawn(dispatcher(rt.clone(), pool));
                Ok((LV::Boolean(true), None))
            })?,
        )?;
    }
    {
        let (rt, pools, backend) = (rt.clone(), pools.clone(), backend.clone());
        g.raw_set(
            "pool_submit",
            lua.create_function(
                move |lua, (name, f, args): (String, Function, MultiValue)| {
                    let Some(pool) = pools.get(&name) else {
                        return Ok((
                            LV::Nil,
                            Some(format!("pool_submit: no pool named '{name}'")),
                        ));
                    };
                    if pool.state.lock().closed {
                        return Ok((
                            LV::Nil,
                            Some(format!("pool_submit: pool '{name}' is closed")),
                        ));
                    }
                    let args: Vec<LV> = args.into_iter().collect();
                    let target = TaskOpts {
                        target: pool.targets.as_ref().map(|t| t.join(",")),
                        ..TaskOpts::default()
                    };
                    let payload = capture_call(lua, &f, &args, "goroutine.pool_submit", &target)?;
                    let mut st = pool.state.lock();
                    // Never drop: wait for room.
                    while st.queue.len() >= pool.queue_cap && !st.closed {
                        pool.changed.wait_for(&mut st, Duration::from_millis(100));
                    }
                    if st.closed {
                        return Ok((
                            LV::Nil,
                            Some(format!("pool_submit: pool '{name}' is closed")),
                        ));
                    }
                    let n = st.submitted.len() + 1;
                    let target_name = if pool.targets.is_some() {
                        format!("pool:{name}")
                    } else {
                        dispatch::LOCAL.to_string()
                    };
                    let rec = rt.registry.new_task(
                        Some(format!("{name}#{n}")),
                        &target_name,
                        None,
                        false,
                    );
                    st.submitted.push(rec.clone());
                    st.queue.push_back(Queued {
                        rec: rec.clone(),
                        payload: Arc::new(payload),
                        attempts: 0,
                        requeues: 0,
                        avoid: None,
                    });
                    drop(st);
                    pool.wake.notify_one();
                    let ud = lua.create_userdata(SharedObj::new(
                        SharedRef {
                            kind: SharedKind::Handle,
                            id: rec.id,
                        },
                        backend.clone(),
                    ))?;
                    Ok((LV::UserData(ud), None))
                },
            )?,
        )?;
    }
    {
        let (pools, rt) = (pools.clone(), rt.clone());
        g.raw_set(
            "pool_wait",
            lua.create_function(move |lua, (name, timeout): (String, LV)| {
                let Some(pool) = pools.get(&name) else {
                    return Ok((
                        LV::Boolean(false),
                        LV::String(
                            lua.create_string(format!("pool_wait: no pool named '{name}'"))?,
                        ),
                    ));
                };
                let timeout =
                    parse_duration(&timeout).map_err(|e| rt_err(format!("pool_wait: {e}")))?;
                let deadline = timeout.map(|t| Instant::now() + t);
                let recs: Vec<Arc<TaskRecord>> = pool.state.lock().submitted.clone();
                let out = lua.create_table()?;
                let mut timed_out = false;
                {
                    let progress = rt.out.progress(recs.len() as u64, &format!("pool {name}"));
                    for rec in &recs {
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        timed_out |= rec.wait(left, None).is_none();
                        let st = pool.state.lock();
                        progress.set(st.completed + st.failed);
                    }
                }
                for (i, rec) in recs.iter().enumerate() {
                    out.raw_set(i + 1, result_table(lua, rec, rec.outcome().as_ref())?)?;
                }
                if timed_out {
                    return Ok((
                        LV::Boolean(false),
                        LV::String(lua.create_string(format!(
                            "timeout exceeded: pool '{name}' still has unfinished tasks"
                        ))?),
                    ));
                }
                Ok((LV::Boolean(true), LV::Table(out)))
            })?,
        )?;
    }
    {
        let pools = pools.clone();
        g.raw_set(
            "pool_close",
            lua.create_function(move |lua, name: String| {
                let Some(pool) = pools.get(&name) else {
                    let err = lua.create_string(format!("pool_close: no pool named '{name}'"))?;
                    return Ok(MultiValue::from_iter([LV::Boolean(false), LV::String(err)]));
                };
                pool.state.lock().closed = true;
                pool.changed.notify_all();
                pool.wake.notify_one();
                Ok(MultiValue::from_iter([LV::Boolean(true)]))
            })?,
        )?;
    }
    {
        let pools = pools.clone();
        g.raw_set(
            "pool_stats",
            lua.create_function(move |lua, name: String| match pools.get(&name) {
                Some(p) => Ok(LV::Table(stats_table(lua, &p)?)),
                None => Ok(LV::Nil),
            })?,
        )?;
    }
    let _ = rt;
    Ok(())
}
