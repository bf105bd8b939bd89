//! An in-memory [`Transport`] for the engine's unit tests: hosts that answer, fail,
//! refuse, hang or die on command, with counters of what reached each of them. It
//! speaks the real protocol types (encoded task frames in, `ToMaster` frames out), so
//! dispatch, retries, the pool scheduler and cancellation run exactly as they do
//! over QUIC.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sloth_proto::change::Change;
use sloth_proto::graph::{Graph, Value};
use sloth_proto::protocol::{
    ErrorKind, FrameDecoder, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
};
use sloth_transport::wire::WireError;
use tokio::sync::{mpsc, Notify};

use crate::engine::events::{Events, Progress};
use crate::engine::inventory::Inventory;
use crate::engine::registry::{Outcome, TaskRecord};
use crate::engine::runtime::Runtime;
use crate::engine::transport::{BoxFuture, Link, TaskStream, Transport};

/// What a fake agent does with each task it is sent.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Logs one line, then returns the integer after `delay`.
    Answer { value: i64, delay: Duration },
    /// Fails the task with this error after `delay`.
    Fail { kind: ErrorKind, delay: Duration },
    /// Refuses it at admission (an agent at capacity).
    Refuse,
    /// Takes it and never answers (a stuck task, or a silent agent).
    Hang,
    /// Takes it, then its connection dies (the agent crashed).
    DieOnTask,
}

#[derive(Default)]
struct HostState {
    /// `None`: the host is down (dials fail as unreachable).
    behaviour: Option<Behaviour>,
    link: Option<Arc<FakeLink>>,
    dials: u64,
}

/// Counters of one fake host.
#[derive(Default)]
pub struct Counters {
    /// Tasks that reached the agent.
    pub received: AtomicU64,
    /// Streams the master aborted (cancel, deadline, protocol error).
    pub aborted: AtomicU64,
}

pub struct FakeFleet {
    hosts: Mutex<HashMap<String, HostState>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    connect_timeout: Duration,
}

impl FakeFleet {
    pub fn new(connect_timeout: Duration) -> Arc<FakeFleet> {
        Arc::new(FakeFleet {
            hosts: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            connect_timeout,
        })
    }

    /// `host` answers with `b` from now on (a link it had stays up).
    pub fn set(&self, host: &str, b: Behaviour) {
        self.hosts
            .lock()
            .entry(host.to_string())
            .or_default()
            .behaviour = Some(b);
    }

    /// `host` goes down: its link dies and dials fail.
    pub fn down(&self, host: &str) {
        let mut hosts = self.hosts.lock();
        let h = hosts.entry(host.to_string()).or_default();
        h.behaviour = None;
        if let Some(l) = h.link.take() {
            l.close();
        }
    }

    pub fn counters(&self, host: &str) -> Arc<Counters> {
        self.counters
            .lock()
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    pub fn received(&self, host: &str) -> u64 {
        self.counters(host).received.load(Ordering::SeqCst)
    }

    pub fn aborted(&self, host: &str) -> u64 {
        self.counters(host).aborted.load(Ordering::SeqCst)
    }

    pub fn dials(&self, host: &str) -> u64 {
        self.hosts.lock().get(host).map(|h| h.dials).unwrap_or(0)
    }
}

impl Transport for FakeFleet {
    fn link<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Arc<dyn Link>, TaskError>> {
        Box::pin(async move {
            let counters = self.counters(host);
            let mut hosts = self.hosts.lock();
            let h = hosts.entry(host.to_string()).or_default();
            if let Some(l) = &h.link {
                if !l.is_closed() {
                    return Ok(l.clone() as Arc<dyn Link>);
                }
            }
            h.dials += 1;
            let Some(b) = h.behaviour.clone() else {
                return Err(TaskError::new(
                    ErrorKind::Unreachable,
                    format!("no answer from {host} (fake: down)"),
                ));
            };
            let link = Arc::new(FakeLink {
                behaviour: b,
                state: Arc::new(LinkState::default()),
                counters,
            });
            h.link = Some(link.clone());
            Ok(link as Arc<dyn Link>)
        })
    }

    fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

struct FakeLink {
    behaviour: Behaviour,
    state: Arc<LinkState>,
    counters: Arc<Counters>,
}

/// Whether a link is gone, shared with its streams' fake agents.
#[derive(Default)]
struct LinkState {
    closed: AtomicBool,
    gone: Notify,
}

impl LinkState {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.gone.notify_waiters();
    }

    async fn closed(&self) {
        loop {
            let notified = self.gone.notified();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl FakeLink {
    fn close(&self) {
        self.state.close();
    }
}

impl Link for FakeLink {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn TaskStream>, TaskError>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(self.lost("fake: connection closed".into()));
            }
            let (to_agent, from_master) = mpsc::unbounded_channel::<Vec<u8>>();
            let (to_master, from_agent) = mpsc::unbounded_channel();
            let agent = FakeAgentTask {
                behaviour: self.behaviour.clone(),
                counters: self.counters.clone(),
                link: self.state.clone(),
            };
            tokio::spawn(agent.run(from_master, to_master));
            Ok(Box::new(FakeStream {
                to_agent: Some(to_agent),
                from_agent,
                counters: self.counters.clone(),
                aborted: false,
            }) as Box<dyn TaskStream>)
        })
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.state.closed())
    }

    fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::SeqCst)
    }

    fn lost(&self, fallback: String) -> TaskError {
        TaskError::new(ErrorKind::AgentLost, fallback)
    }
}

type Frame = Result<Option<ToMaster>, WireError>;

struct FakeStream {
    to_agent: Option<mpsc::UnboundedSender<Vec<u8>>>,
    from_agent: mpsc::UnboundedReceiver<Frame>,
    counters: Arc<Counters>,
    aborted: bool,
}

impl TaskStream for FakeStream {
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match &self.to_agent {
                Some(tx) => tx
                    .send(frame.to_vec())
                    .map_err(|_| "fake: the agent stopped reading".to_string()),
                None => Err("fake: the stream is finished".into()),
            }
        })
    }

    fn finish(&mut self) {
        self.to_agent = None;
    }

    fn recv(&mut self) -> BoxFuture<'_, Frame> {
        Box::pin(async move {
            match self.from_agent.recv().await {
                Some(f) => f,
                None => Ok(None),
            }
        })
    }

    fn abort(&mut self, _code: u32) {
        if !self.aborted {
            self.aborted = true;
            self.counters.aborted.fetch_add(1, Ordering::SeqCst);
        }
        self.to_agent = None;
        self.from_agent.close();
    }

    fn take_fin(&mut self) {}
}

/// The agent's side of one task stream.
struct FakeAgentTask {
    behaviour: Behaviour,
    counters: Arc<Counters>,
    link: Arc<LinkState>,
}

impl FakeAgentTask {
    /// Serve the stream until the task ends or the link dies (dropping the sender:
    /// the master reads the end of the stream and finds the link gone).
    async fn run(
        self,
        from_master: mpsc::UnboundedReceiver<Vec<u8>>,
        to_master: mpsc::UnboundedSender<Frame>,
    ) {
        let link = self.link.clone();
        tokio::select! {
            _ = self.serve(from_master, to_master) => {}
            _ = link.closed() => {}
        }
    }

    async fn serve(
        self,
        mut from_master: mpsc::UnboundedReceiver<Vec<u8>>,
        to_master: mpsc::UnboundedSender<Frame>,
    ) {
        let Some(bytes) = from_master.recv().await else {
            return;
        };
        let mut dec = FrameDecoder::default();
        dec.push(&bytes);
        let req: TaskRequest = match dec.next_message::<ToAgent>() {
            Ok(Some(ToAgent::Task(req))) => *req,
            _ => return,
        };
        let done = |result: Result<Graph, TaskError>| {
            Ok(Some(ToMaster::Done {
                result,
                duration_us: 0,
            }))
        };
        // Every behaviour but a refusal takes the task: it starts and logs a line.
        let took = || {
            self.counters.received.fetch_add(1, Ordering::SeqCst);
            let _ = to_master.send(Ok(Some(ToMaster::Started)));
            let _ = to_master.send(Ok(Some(ToMaster::Log {
                level: LogLevel::Info,
                line: format!("running {}", req.name),
            })));
        };
        match self.behaviour {
            Behaviour::Refuse => {
                let refused = TaskError::new(ErrorKind::Refused, "fake: at capacity");
                let _ = to_master.send(done(Err(refused)));
            }
            Behaviour::Answer { value, delay } => {
                took();
                tokio::time::sleep(delay).await;
                let mut g = Graph::default();
                g.roots.push(Value::Int(value));
                let _ = to_master.send(done(Ok(g)));
            }
            Behaviour::Fail { kind, delay } => {
                took();
                tokio::time::sleep(delay).await;
                let _ = to_master.send(done(Err(TaskError::new(kind, "fake: failed"))));
            }
            // Hang: keep the stream open until the master ends it.
            Behaviour::Hang => {
                took();
                to_master.closed().await
            }
            Behaviour::DieOnTask => {
                took();
                self.link.close()
            }
        }
    }
}

impl Recorder {
    /// Tasks reported done, once `want` have been or 5 s have passed (the report
    /// follows the outcome: a waiter may wake just before it).
    pub fn done_reaching(&self, want: u64) -> u64 {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.done.load(Ordering::SeqCst);
            if n >= want || std::time::Instant::now() >= until {
                return n;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Events that keep what they are told, for assertions.
#[derive(Default)]
pub struct Recorder {
    pub logs: Mutex<Vec<(String, String)>>,
    pub done: AtomicU64,
}

impl Events for Recorder {
    fn task_started(&self, _rec: &TaskRecord) {}
    fn task_log(&self, _id: u64, host: &str, _task: &str, _level: LogLevel, text: &str) {
        self.logs.lock().push((host.to_string(), text.to_string()));
    }
    fn task_change(&self, _id: u64, host: &str, _task: &str, change: &Change) {
        self.logs
            .lock()
            .push((host.to_string(), format!("change: {}", change.label())));
    }
    fn script_log(&self, _level: LogLevel, text: &str) {
        self.logs.lock().push(("script".into(), text.to_string()));
    }
    fn task_done(&self, _rec: &TaskRecord, _outcome: &Outcome) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
    fn unawaited_failure(&self, msg: &str) {
        self.logs.lock().push(("unawaited".into(), msg.to_string()));
    }
    fn rollout(&self, _event: crate::engine::events::Rollout<'_>) {}
    fn progress(&self, _len: u64, _what: &str) -> Box<dyn Progress + '_> {
        Box::new(NoProgress)
    }
}

struct NoProgress;

impl Progress for NoProgress {
    fn set(&self, _done: u64) {}
}

/// A run over `hosts` of `fleet`, on a multi-threaded tokio runtime of its own.
pub fn run_over(
    fleet: &Arc<FakeFleet>,
    hosts: &[&str],
) -> (tokio::runtime::Runtime, Arc<Runtime>, Arc<Recorder>) {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime");
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let events = Arc::new(Recorder::default());
    let rt = Runtime::with_transport(
        tokio_rt.handle().clone(),
        fleet.clone(),
        Inventory::from_local(&names),
        events.clone(),
    );
    (tokio_rt, rt, events)
}

/// An empty task payload (the fake agent does not run Lua).
pub fn payload() -> Graph {
    let mut g = Graph::default();
    g.roots.push(Value::Nil);
    g
}

/// The integer a task returned.
pub fn int_result(o: &Outcome) -> Option<i64> {
    match &o.result {
        Ok(d) => match d.roots().first() {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        },
        Err(_) => None,
    }
}
