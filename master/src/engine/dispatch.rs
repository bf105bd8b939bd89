//! Runs a captured task where it belongs: on a master worker thread (no target)
//! or on an agent over its QUIC connection; applies retries; records outcomes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sloth_lua::cancel::CancelToken;
use sloth_lua::context::{TaskContext, TaskIo};
use sloth_lua::executor::Limits;
use sloth_lua::shared_obj::{self, SharedBackend};
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::{Graph, SharedRef};
use sloth_proto::protocol::{
    self, codes, ErrorKind, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
};
use sloth_transport as tls;
use sloth_transport::wire::{self, FrameReader, WireError};

use crate::engine::registry::{self, Caller, MasterBackend, TaskRecord};
use crate::engine::retry::RetryPolicy;
use crate::engine::runtime::Runtime;

/// Where and how to run one task.
#[derive(Clone, Debug, Default)]
pub struct TaskOpts {
    pub target: Option<String>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub name: Option<String>,
    /// Fire and forget: a failure is printed as it happens (nobody awaits it).
    pub spawned: bool,
}

pub const LOCAL: &str = "local";

/// Create the task's record and start it; returns at once.
pub fn start(rt: &Arc<Runtime>, payload: Graph, opts: &TaskOpts) -> Arc<TaskRecord> {
    let host = opts.target.clone().unwrap_or_else(|| LOCAL.to_string());
    let rec = rt
        .registry
        .new_task(opts.name.clone(), &host, opts.timeout, opts.spawned);
    if opts.target.is_none() && opts.retry.retries == 0 && rec.cancel.deadline().is_none() {
        // The common local task (no deadline to race, nothing to retry) goes straight
        // to a worker thread: one thread hand-off instead of three.
        let (rt2, rec2) = (rt.clone(), rec.clone());
        rt.runner.execute(move || {
            let (req, ctx, limits) = local_job(&rt2, &rec2, &payload);
            let result = sloth_modules::EXECUTOR.run_task(&req, ctx, &limits);
            rt2.registry.complete(&rec2, result);
        });
        return rec;
    }
    let rt2 = rt.clone();
    let rec2 = rec.clone();
    let opts = opts.clone();
    rt.handle.spawn(async move {
        let mut attempt = 0;
        let result = loop {
            let r = match &opts.target {
                None => run_local(&rt2, &rec2, &payload).await,
                Some(host) => run_remote(&rt2, &rec2, host, &payload).await,
            };
            if opts.retry.again(&r, attempt) && rec2.cancel.stopped().is_none() {
                attempt += 1;
                if let Err(e) = &r {
                    rt2.out.task_log(
                        &rec2.host(),
                        &rec2.name,
                        LogLevel::Warn,
                        &format!(
                            "retrying ({attempt}/{}) after: {}",
                            opts.retry.retries,
                            e.display_for(&rec2.host())
                        ),
                    );
                }
                tokio::time::sleep(RetryPolicy::backoff(attempt)).await;
                continue;
            }
            break r;
        };
        rt2.registry.complete(&rec2, result);
    });
    rec
}

struct LocalIo {
    rt: Arc<Runtime>,
    name: String,
    backend: Arc<dyn SharedBackend>,
}

impl TaskIo for LocalIo {
    fn log(&self, level: LogLevel, line: &str) {
        self.rt.out.task_log(LOCAL, &self.name, level, line);
    }
    fn backend(&self) -> Arc<dyn SharedBackend> {
        self.backend.clone()
    }
}

/// What a local task needs to run on a worker thread.
fn local_job(
    rt: &Arc<Runtime>,
    rec: &Arc<TaskRecord>,
    payload: &Graph,
) -> (TaskRequest, TaskContext, Limits) {
    let req = TaskRequest {
        task_id: rec.id,
        name: rec.name.clone(),
        payload: payload.clone(),
        host_vars: Graph::default(),
        timeout_ms: None,
    };
    let caller = Caller {
        task: Some(rec.id),
        cancel: rec.cancel.clone(),
    };
    let backend: Arc<dyn SharedBackend> = Arc::new(MasterBackend {
        registry: rt.registry.clone(),
        caller,
    });
    let ctx = TaskContext {
        host: LOCAL.to_string(),
        task_name: rec.name.clone(),
        io: Arc::new(LocalIo {
            rt: rt.clone(),
            name: rec.name.clone(),
            backend,
        }),
        cancel: rec.cancel.clone(),
    };
    let limits = Limits {
        memory_limit: rt.local_memory_limit,
    };
    (req, ctx, limits)
}

pub(crate) async fn run_local(
    rt: &Arc<Runtime>,
    rec: &Arc<TaskRecord>,
    payload: &Graph,
) -> Result<Data, TaskError> {
    let (req, ctx, limits) = local_job(rt, rec, payload);
    // Like a remote task, a local one is given up at its deadline (plus a grace) even
    // if it is stuck where the stop hook cannot reach (a C call such as os.execute).
    let deadline = rec
        .cancel
        .deadline()
        .map(|d| tokio::time::Instant::from_std(d) + Duration::from_secs(2));
    let (tx, job) = tokio::sync::oneshot::channel();
    rt.runner.execute(move || {
        let _ = tx.send(sloth_modules::EXECUTOR.run_task(&req, ctx, &limits));
    });
    tokio::select! {
        r = job => match r {
            Ok(r) => r,
            Err(_) => Err(TaskError::new(
                ErrorKind::Lua,
                "the task's worker thread failed (a panic in the executor)",
            )),
        },
        _ = sleep_until(deadline) => Err(TaskError::new(
            ErrorKind::Timeout,
            "the task did not stop at its deadline (blocked in a C call?) and was abandoned",
        )),
    }
}

pub(crate) async fn run_remote(
    rt: &Arc<Runtime>,
    rec: &Arc<TaskRecord>,
    host: &str,
    payload: &Graph,
) -> Result<Data, TaskError> {
    attempt_remote(rt, rec, host, payload).await.result
}

/// One attempt of a remote task, and whether it may have reached the agent.
pub(crate) struct Attempt {
    pub result: Result<Data, TaskError>,
    /// `false`: the task certainly never ran there (no connection, no stream, or the
    /// agent refused it at admission), so sending it elsewhere is always safe.
    pub reached: bool,
}

pub(crate) async fn attempt_remote(
    rt: &Arc<Runtime>,
    rec: &Arc<TaskRecord>,
    host: &str,
    payload: &Graph,
) -> Attempt {
    let mut reached = false;
    let result = remote(rt, rec, host, payload, &mut reached).await;
    Attempt { result, reached }
}

async fn remote(
    rt: &Arc<Runtime>,
    rec: &Arc<TaskRecord>,
    host: &str,
    payload: &Graph,
    reached: &mut bool,
) -> Result<Data, TaskError> {
    let mesh = rt.mesh.as_ref().ok_or_else(|| {
        TaskError::new(
            ErrorKind::Unreachable,
            "no fleet is configured (use -i INVENTORY or --local-fleet)",
        )
    })?;
    rec.set_host(host);
    let conn = tokio::select! {
        c = mesh.connect(host) => c?,
        _ = rec.cancel_notify.notified() => return Err(TaskError::new(ErrorKind::Cancelled, "task cancelled")),
    };
    let lost = |e: String| TaskError::new(ErrorKind::AgentLost, e);
    let explain = |fallback: String| match conn.conn.close_reason() {
        Some(r) => lost(tls::explain_connection_error(host, &r)),
        None => lost(fallback),
    };
    // The master enforces the deadline too, in case the agent goes silent.
    let deadline = rec
        .cancel
        .deadline()
        .map(|d| tokio::time::Instant::from_std(d) + Duration::from_secs(2));
    let req = TaskRequest {
        task_id: rec.id,
        name: rec.name.clone(),
        payload: payload.clone(),
        host_vars: rt.host_vars(host),
        timeout_ms: rec.cancel.remaining().map(|d| d.as_millis() as u64),
    };
    // An agent may name only the objects its task was given (in its payload, or in a
    // reply since): ids of other objects of the run are refused.
    let mut allowed: HashSet<SharedRef> = payload.shared_refs().into_iter().collect();
    let no_calls = allowed.is_empty();
    let frame = protocol::encode(&ToAgent::Task(Box::new(req)))
        .map_err(|e| TaskError::new(ErrorKind::Capture, format!("the task cannot be sent: {e}")))?;
    // Opening the stream waits while the agent has no stream credit left: that wait
    // honours cancel and the deadline like the rest of the task.
    let opened = async {
        let (mut send, recv) = conn
            .conn
            .open_bi()
            .await
            .map_err(|e| lost(tls::explain_connection_error(host, &e)))?;
        // From the first byte on, the agent may have the task.
        *reached = true;
        tokio::io::AsyncWriteExt::write_all(&mut send, &frame)
            .await
            .map_err(|e| explain(format!("sending the task: {e}")))?;
        // A task given no shared object cannot call the master, so nothing more goes
        // to the agent on this stream: finish it now and the FIN usually travels in
        // the task's own packet instead of one more packet at the end. Cancelling
        // such a task stops the agent's side of the stream (STOP_SENDING).
        if no_calls {
            let _ = send.finish();
        }
        Ok::<_, TaskError>((send, FrameReader::new(recv)))
    };
    let (mut send, mut recv) = tokio::select! {
        r = opened => r?,
        _ = rec.cancel_notify.notified() => return Err(TaskError::new(ErrorKind::Cancelled, "task cancelled")),
        _ = sleep_until(deadline.map(|d| d - Duration::from_secs(2))) => {
            return Err(TaskError::new(ErrorKind::Timeout, "the agent accepted no new task before the deadline"))
        }
    };
    // Ends the stream both ways (the task is over for us, whatever the agent does).
    let abort =
        |send: &mut quinn::SendStream, recv: &mut FrameReader<quinn::RecvStream>, code: u32| {
            let _ = send.reset(code.into());
            let _ = recv.get_mut().stop(code.into());
        };
    // Blocking calls made for this attempt stop with it (a lost agent must not
    // leave a thread waiting on a channel), without stopping a retry.
    let attempt = CancelToken::new(rec.cancel.remaining());
    let caller = Caller {
        task: Some(rec.id),
        cancel: attempt.clone(),
    };
    let _stop_calls = StopOnDrop(attempt.clone());
    loop {
        // Cancel-safe: a frame half read when another branch wins stays in `recv`.
        let frame = tokio::select! {
            f = recv.next::<ToMaster>() => f,
            _ = rec.cancel_notify.notified() => {
                abort(&mut send, &mut recv, codes::CANCELLED);
                return Err(TaskError::new(ErrorKind::Cancelled, "task cancelled"));
            }
            _ = sleep_until(deadline) => {
                abort(&mut send, &mut recv, codes::CANCELLED);
                return Err(TaskError::new(ErrorKind::Timeout, "the agent did not stop the task at its deadline"));
            }
        };
        match frame {
            Ok(Some(ToMaster::Started)) => {}
            Ok(Some(ToMaster::Log { level, line })) => {
                // Printing blocks this task's reading while the output is slow: the
                // agent's queue fills and its task waits (backpressure, not memory).
                rt.out
                    .task_log(host, &rec.name, level, &protocol::clip_log_line(&line))
            }
            Ok(Some(ToMaster::Call {
                call_id,
                obj,
                method,
                args,
            })) => {
                let args = match check_call(obj, &method, args, &allowed) {
                    Ok(a) => a,
                    Err(e) => {
                        abort(&mut send, &mut recv, codes::PROTOCOL);
                        return Err(e);
                    }
                };
                let reg = rt.registry.clone();
                let c2 = caller.clone();
                let mut work = tokio::task::spawn_blocking(move || {
                    registry::call(&reg, &c2, obj, &method, args)
                });
                let result = tokio::select! {
                    r = &mut work => r.unwrap_or_else(|e| Err(format!("call failed: {e}"))),
                    _ = conn.conn.closed() => {
                        // Let the call see the stop and return before the task is
                        // recorded as over (and its locks released).
                        attempt.cancel();
                        let _ = work.await;
                        return Err(explain("connection lost".into()));
                    }
                    _ = rec.cancel_notify.notified() => {
                        attempt.cancel();
                        let _ = work.await;
                        abort(&mut send, &mut recv, codes::CANCELLED);
                        return Err(TaskError::new(ErrorKind::Cancelled, "task cancelled"));
                    }
                };
                if let Ok(d) = &result {
                    allowed.extend(d.shared_refs());
                }
                let reply = ToAgent::Reply {
                    call_id,
                    result: result.map(Data::into_graph),
                };
                // A failed write means the agent stopped reading: its task is over
                // (the result follows) or the connection is gone (the next read
                // says so). Either way the outcome comes from the read side.
                let _ = wire::write_frame(&mut send, &reply).await;
            }
            Ok(Some(ToMaster::Done { result, .. })) => {
                let _ = send.finish();
                // The agent finishes its side with the result, usually in the same
                // packet: take the FIN now, or dropping the stream would send the
                // agent a needless STOP_SENDING.
                wire::take_fin(recv.get_mut());
                return match result {
                    Ok(g) => Data::check(g, Refs::Only(&allowed)).map_err(|e| {
                        TaskError::new(ErrorKind::Capture, format!("the result was refused: {e}"))
                    }),
                    // An agent refuses a task only at admission, before running it.
                    Err(e) if e.kind == ErrorKind::Refused => {
                        *reached = false;
                        Err(e)
                    }
                    Err(e) => Err(e),
                };
            }
            // The agent ended its side without a result while the connection lives:
            // our agent never does that.
            Ok(None) if conn.conn.close_reason().is_none() => {
                abort(&mut send, &mut recv, codes::PROTOCOL);
                return Err(TaskError::new(
                    ErrorKind::Refused,
                    "the agent ended the task stream without a result",
                ));
            }
            Ok(None) => {
                return Err(explain(
                    "the agent closed the task stream without a result".into(),
                ))
            }
            Err(WireError::Frame(e)) => {
                abort(&mut send, &mut recv, codes::BAD_FRAME);
                return Err(TaskError::new(
                    ErrorKind::Refused,
                    format!("the agent sent a bad frame: {e}"),
                ));
            }
            Err(e) => return Err(explain(format!("task stream failed: {e}"))),
        }
    }
}

/// What the master accepts as a shared-object call from an agent: on an object the
/// task was given, a method our agents send, and arguments that are data naming only
/// such objects. Anything else is a hostile or foreign agent: the task ends.
fn check_call(
    obj: SharedRef,
    method: &str,
    args: Graph,
    allowed: &HashSet<SharedRef>,
) -> Result<Data, TaskError> {
    let refused = |m: String| TaskError::new(ErrorKind::Refused, m);
    if !allowed.contains(&obj) {
        return Err(refused(format!(
            "the agent called {}#{}, which was not shared with this task",
            obj.kind.type_name(),
            obj.id
        )));
    }
    if !shared_obj::accepts(obj.kind, method) {
        return Err(refused(format!(
            "the agent called an unknown method {}:{}",
            obj.kind.type_name(),
            method.escape_debug()
        )));
    }
    Data::check(args, Refs::Only(allowed)).map_err(|e| {
        TaskError::new(
            ErrorKind::Capture,
            format!(
                "the arguments of {}:{method} were refused: {e}",
                obj.kind.type_name()
            ),
        )
    })
}

async fn sleep_until(d: Option<tokio::time::Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Stops an attempt's blocking calls however the attempt ends.
struct StopOnDrop(CancelToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
