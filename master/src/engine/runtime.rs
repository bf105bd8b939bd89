//! [`Runtime`]: the shared state of one run: the task registry, the mesh of agent
//! connections, the inventory (after `--limit`), where events go, and the threads
//! local tasks run on. Everything in the engine and the Lua bindings takes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sloth_lua::cancel::CancelToken;
use sloth_proto::change::Mode;
use sloth_proto::graph::{Graph, Value};
use sloth_proto::protocol::LogLevel;

use crate::engine::events::Events;
use crate::engine::inventory::Inventory;
use crate::engine::mesh::Mesh;
use crate::engine::registry::Registry;
use crate::engine::transport::Transport;

/// How long an interrupted run waits for its connections' close frames to leave.
const INTERRUPT_CLOSE: Duration = Duration::from_millis(300);
/// How long it waits for its own commands (`exec.run` in the script or in local tasks)
/// to be killed and reaped.
const INTERRUPT_CHILDREN: Duration = Duration::from_millis(500);

pub struct Runtime {
    pub handle: tokio::runtime::Handle,
    pub registry: Arc<Registry>,
    /// The fleet's connections, for what only the real mesh has (facts, pings).
    pub mesh: Option<Arc<Mesh>>,
    /// How tasks reach agents: the mesh, or a fake in the engine's tests.
    pub transport: Option<Arc<dyn Transport>>,
    /// The hosts this run may reach (after --limit).
    pub inventory: Inventory,
    /// Where the run reports (the CLI's output).
    pub out: Arc<dyn Events>,
    pub local_memory_limit: Option<usize>,
    /// Check mode and diffs, for every task of the run (`run --check`, `--diff`).
    pub mode: Mode,
    /// The time limit of a task that sets none (`task_timeout` in sloth.toml,
    /// `--task-timeout`).
    pub task_timeout: Option<Duration>,
    /// The threads local tasks run on.
    pub runner: sloth_lua::runner::Runner,
    /// The main script's stop token: [`Runtime::interrupt`] stops the script with it.
    pub script_cancel: CancelToken,
    /// Taken by a task stream before it prints what its agent sent: while the reader
    /// of the output is behind, one of them waits for it on a blocking thread and the
    /// others wait here (`dispatch::report_output`).
    pub print_turn: tokio::sync::Mutex<()>,
    vars_cache: Mutex<HashMap<String, Graph>>,
}

impl Runtime {
    pub fn new(
        handle: tokio::runtime::Handle,
        mesh: Option<Arc<Mesh>>,
        inventory: Inventory,
        out: Arc<dyn Events>,
        mode: Mode,
        task_timeout: Option<Duration>,
    ) -> Arc<Runtime> {
        let transport = mesh.clone().map(|m| m as Arc<dyn Transport>);
        Self::build(handle, mesh, transport, inventory, out, mode, task_timeout)
    }

    /// A run whose tasks go through `transport` (the engine's tests use a fake).
    pub fn with_transport(
        handle: tokio::runtime::Handle,
        transport: Arc<dyn Transport>,
        inventory: Inventory,
        out: Arc<dyn Events>,
    ) -> Arc<Runtime> {
        Self::build(
            handle,
            None,
            Some(transport),
            inventory,
            out,
            Mode::default(),
            None,
        )
    }

    fn build(
        handle: tokio::runtime::Handle,
        mesh: Option<Arc<Mesh>>,
        transport: Option<Arc<dyn Transport>>,
        inventory: Inventory,
        out: Arc<dyn Events>,
        mode: Mode,
        task_timeout: Option<Duration>,
    ) -> Arc<Runtime> {
        let registry = Registry::new();
        let rt = Arc::new(Runtime {
            handle,
            registry: registry.clone(),
            mesh,
            transport,
            inventory,
            out: out.clone(),
            local_memory_limit: Some(1 << 30),
            mode,
            task_timeout,
            // As many threads as local tasks may block at once; an idle one watches for
            // the next task for 200 µs before sleeping (sequential awaits find it awake).
            runner: sloth_lua::runner::Runner::new(
                "sloth-local",
                4096,
                Duration::from_micros(200),
                Duration::from_secs(10),
            ),
            script_cancel: CancelToken::new(None),
            print_turn: tokio::sync::Mutex::new(()),
            vars_cache: Mutex::new(HashMap::new()),
        });
        registry.on_done(move |rec, o| {
            out.task_done(rec, o);
            if let Err(e) = &o.result {
                if rec.spawned {
                    out.unawaited_failure(&format!(
                        "{} ({})",
                        e.display_for(&rec.host()),
                        rec.name
                    ));
                }
            }
        });
        rt
    }

    /// The inventory vars of `host` as a graph (cached).
    pub fn host_vars(&self, host: &str) -> Graph {
        let mut cache = self.vars_cache.lock();
        if let Some(g) = cache.get(host) {
            return g.clone();
        }
        let mut g = Graph::default();
        let root = match self.inventory.get(host) {
            Some(h) => toml_table(&mut g, &h.vars),
            None => g.push_table(Vec::new()),
        };
        g.roots.push(root);
        cache.insert(host.to_string(), g.clone());
        g
    }

    /// The master is going away: the script is stopped, every task still running
    /// ends `cancelled` with `why` (reported like any other outcome) and is asked to
    /// stop, every connection is closed (agents stop its tasks), and the master's own
    /// commands are killed. Bounded: about a second at most.
    pub fn interrupt(&self, why: &str) {
        // The script first, so that it starts nothing more once its awaits return.
        self.script_cancel.cancel();
        for r in self.registry.running() {
            r.request_cancel();
            self.registry.complete(
                &r,
                Err(sloth_proto::protocol::TaskError::new(
                    sloth_proto::protocol::ErrorKind::Cancelled,
                    why,
                )),
            );
        }
        // Agents stop a connection's tasks when it closes: close them all now rather
        // than leave the tasks running until the agents' idle timeout.
        if let Some(m) = self.mesh.clone() {
            let (tx, rx) = std::sync::mpsc::channel();
            self.handle.spawn(async move {
                m.abort().await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(INTERRUPT_CLOSE);
        }
        // The script's and the local tasks' commands, killed (with their process
        // groups) by their runs once they see the stop.
        sloth_modules::exec::wait_for_children(INTERRUPT_CHILDREN);
    }

    /// Run `fut` to its end from a Lua function of the main script (or of a local
    /// task): off the runtime's worker, and outside its context (where tokio's own
    /// `block_on` is allowed), wherever the caller runs.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        leave_worker();
        tokio::task::block_in_place(|| self.handle.block_on(fut))
    }

    /// Wait for every task still running (spawned ones, and asyncs nobody awaited).
    pub fn wait_unfinished(&self) {
        let running = self.registry.running();
        if running.is_empty() {
            return;
        }
        self.out.script_log(
            LogLevel::Info,
            &format!("waiting for {} unfinished task(s)...", running.len()),
        );
        for r in running {
            r.wait(None, None);
        }
    }
}

thread_local! {
    /// When the main script's current turn on the runtime's worker began (see
    /// `lua::on_runtime`), while it still holds the worker on this thread.
    static SCRIPT_TURN: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// The main script's turn on this thread begins (`Some(now)`) or ends (`None`).
pub fn set_script_turn(start: Option<std::time::Instant>) {
    SCRIPT_TURN.with(|t| t.set(start));
}

/// How long the main script's turn on this worker has lasted, if it holds the worker.
pub fn script_turn() -> Option<Duration> {
    SCRIPT_TURN.with(|t| t.get().map(|s| s.elapsed()))
}

/// Before something that may wait or run long in the main script's turn on the
/// runtime's worker: hand the worker's duties (the connections, the timers) to another
/// thread for the rest of the turn, so that nothing else waits for the script (tokio's
/// `block_in_place`, held until the other thread has taken over, so that it does not
/// give them back). Anywhere else (a task thread, a blocking thread, a turn that has
/// already left) it costs a thread-local look.
pub fn leave_worker() {
    if script_turn().is_none() {
        return;
    }
    set_script_turn(None);
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    tokio::task::block_in_place(|| {
        // Once another thread runs this, it holds the worker's duties.
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(30));
    });
}

fn toml_value(g: &mut Graph, v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Str(s.as_bytes().to_vec()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Str(d.to_string().into_bytes()),
        toml::Value::Array(a) => {
            let entries = a
                .iter()
                .enumerate()
                .map(|(i, x)| (Value::Int(i as i64 + 1), toml_value(g, x)))
                .collect();
            g.push_table(entries)
        }
        toml::Value::Table(t) => toml_table(g, t),
    }
}

fn toml_table(g: &mut Graph, t: &toml::Table) -> Value {
    let entries = t
        .iter()
        .map(|(k, v)| (Value::Str(k.as_bytes().to_vec()), toml_value(g, v)))
        .collect();
    g.push_table(entries)
}
