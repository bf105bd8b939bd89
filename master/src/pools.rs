//! Worker pools: `pool_create/submit/wait/close/stats`. A local pool runs N tasks
//! at once on master threads; a fleet pool keeps N tasks in flight across its
//! agents, always sending the next one to the least-loaded connected agent, and
//! re-queues the tasks of a lost agent (up to `retries`) for the others. Nothing
//! is dropped: a full queue blocks `pool_submit`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, MultiValue, Table, Value as LV};
use parking_lot::{Condvar, Mutex};
use sloth_shared::graph::{Graph, SharedKind, SharedRef};
use sloth_shared::protocol::{ErrorKind, TaskError};
use sloth_shared::shared_obj::{SharedBackend, SharedObj};

use crate::dispatch::{self, TaskOpts};
use crate::registry::{Status, TaskRecord};
use crate::runtime::{capture_call, parse_duration_opt, result_table, rt_err, Runtime};

#[derive(Default, Clone)]
struct HostStats {
    active: u64,
    completed: u64,
    failed: u64,
    /// A host that lost a task is skipped until then (then it may rejoin).
    down_until: Option<Instant>,
}

struct Queued {
    rec: Arc<TaskRecord>,
    payload: Arc<Graph>,
    attempts: u32,
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
    retried: u64,
    hosts: BTreeMap<String, HostStats>,
}

pub struct Pool {
    name: String,
    workers: usize,
    queue_cap: usize,
    targets: Option<Vec<String>>,
    retries: u32,
    retry_errors: bool,
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
    /// Pick where the next task goes: the least-loaded usable agent.
    fn pick_host(&self, st: &State, avoid: Option<&str>) -> Option<String> {
        let targets = self.targets.as_ref()?;
        let now = Instant::now();
        let usable = |h: &&String| {
            st.hosts
                .get(*h)
                .and_then(|s| s.down_until)
                .is_none_or(|t| t <= now)
        };
        let mut candidates: Vec<&String> = targets.iter().filter(usable).collect();
        if candidates.len() > 1 {
            if let Some(a) = avoid {
                candidates.retain(|h| h.as_str() != a);
            }
        }
        if candidates.is_empty() {
            // Every agent is down: try the one that has been down longest.
            candidates = targets.iter().collect();
            candidates.sort_by_key(|h| st.hosts.get(*h).and_then(|s| s.down_until));
            return candidates.first().map(|h| h.to_string());
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
}

/// The pool's dispatcher: keeps `workers` tasks in flight.
async fn dispatcher(rt: Arc<Runtime>, pool: Arc<Pool>) {
    loop {
        let next = {
            let mut st = pool.state.lock();
            if st.in_flight < pool.workers {
                match st.queue.pop_front() {
                    Some(q) => {
                        let host = pool.pick_host(&st, q.avoid.as_deref());
                        st.in_flight += 1;
                        if let Some(h) = &host {
                            st.hosts.entry(h.clone()).or_default().active += 1;
                        }
                        pool.changed.notify_all();
                        Some((q, host))
                    }
                    None => None,
                }
            } else {
                None
            }
        };
        match next {
            Some((q, host)) => {
                let (rt2, pool2) = (rt.clone(), pool.clone());
                tokio::spawn(async move { run_one(rt2, pool2, q, host).await });
            }
            None => {
                {
                    let st = pool.state.lock();
                    if st.closed && st.queue.is_empty() && st.in_flight == 0 {
                        return;
                    }
                }
                let woken =
                    tokio::time::timeout(Duration::from_millis(200), pool.wake.notified()).await;
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
    let result = if rec.cancel.stopped().is_some() {
        Err(TaskError::new(
            ErrorKind::Cancelled,
            "task cancelled before it started",
        ))
    } else {
        rec.cancel.set_timeout(pool.timeout);
        if q.attempts == 0 {
            rec.restart_clock();
        }
        match &host {
            None => dispatch::run_local(&rt, &rec, &q.payload).await,
            Some(h) => dispatch::run_remote(&rt, &rec, h, &q.payload).await,
        }
    };
    let retryable = match &result {
        Err(e) => match e.kind {
            ErrorKind::AgentLost | ErrorKind::Unreachable => true,
            ErrorKind::Lua => pool.retry_errors,
            _ => false,
        },
        Ok(_) => false,
    };
    let mut st = pool.state.lock();
    st.in_flight -= 1;
    if let Some(h) = &host {
        let hs = st.hosts.entry(h.clone()).or_default();
        hs.active = hs.active.saturating_sub(1);
        if let Err(e) = &result {
            if matches!(e.kind, ErrorKind::AgentLost | ErrorKind::Unreachable) {
                hs.down_until = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }
    if retryable
        && q.attempts < pool.retries
        && rec.status() == Status::Running
        && rec.cancel.stopped().is_none()
    {
        q.attempts += 1;
        q.avoid = host.clone();
        st.retried += 1;
        if let Err(e) = &result {
            rt.out.task_log(
                &rec.host(),
                &rec.name,
                sloth_shared::protocol::LogLevel::Warn,
                &format!(
                    "pool {}: retrying elsewhere ({}/{}) after: {}",
                    pool.name,
                    q.attempts,
                    pool.retries,
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
                hs.down_until = None;
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
    t.raw_set("submitted", st.submitted.len())?;
    t.raw_set("closed", st.closed)?;
    let hosts = lua.create_table()?;
    for (h, s) in &st.hosts {
        let e = lua.create_table()?;
        e.raw_set("active", s.active)?;
        e.raw_set("completed", s.completed)?;
        e.raw_set("failed", s.failed)?;
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
                crate::runtime::check_keys(
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
                let retries = match opts.raw_get::<LV>("retries")? {
                    LV::Nil => 0,
                    LV::Integer(n) if n >= 0 => n as u32,
                    _ => return fail("retries must be an integer >= 0".into()),
                };
                let timeout = match parse_duration_opt(&opts.raw_get::<LV>("timeout")?) {
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
                    retries,
                    retry_errors: opts
                        .raw_get::<Option<bool>>("retry_errors")?
                        .unwrap_or(false),
                    timeout,
                    state: Mutex::new(State {
                        closed: false,
                        queue: VecDeque::new(),
                        in_flight: 0,
                        submitted: Vec::new(),
                        completed: 0,
                        failed: 0,
                        retried: 0,
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
                    parse_duration_opt(&timeout).map_err(|e| rt_err(format!("pool_wait: {e}")))?;
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
