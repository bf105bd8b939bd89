//! Runs a captured task where it belongs: on a master worker thread (no target)
//! or on an agent over its QUIC connection; applies retries; records outcomes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sloth_lua::cancel::CancelToken;
use sloth_lua::context::{TaskContext, TaskIo};
use sloth_lua::executor::Limits;
use sloth_lua::shared_obj::SharedBackend;
use sloth_proto::change::Change;
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::{Graph, SharedRef};
use sloth_proto::protocol::{
    self, codes, ErrorKind, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
};
use sloth_transport::wire::WireError;

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
    /// The batch of a rolling `fleet.run` (`index` of `of`, from 1).
    pub batch: Option<(usize, usize)>,
}

pub const LOCAL: &str = "local";

/// Create the task's record and start it; returns at once.
pub fn start(rt: &Arc<Runtime>, payload: Graph, opts: &TaskOpts) -> Arc<TaskRecord> {
    let host = opts.target.clone().unwrap_or_else(|| LOCAL.to_string());
    let rec = rt.registry.new_task(
        opts.name.clone(),
        &host,
        opts.timeout.or(rt.task_timeout),
        opts.spawned,
        opts.batch,
    );
    rt.out.task_started(&rec);
    if opts.target.is_none() && opts.retry.retries == 0 && rec.cancel.deadline().is_none() {
        // The common local task (no deadline to race, nothing to retry) goes straight
        // to a worker thread: one thread hand-off instead of three.
        let (rt2, rec2) = (rt.clone(), rec.clone());
        rt.runner.execute(move || {
            let (req, ctx, limits) = local_job(&rt2, &rec2, &payload);
            let result = sloth_modules::EXECUTOR.run_task(&req, ctx, &limits);
            rt2.registry
                .complete(&rec2, result.and_then(within_a_frame));
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
                        rec2.id,
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
                // Never past the task's time limit: it bounds all attempts together.
                let pause = RetryPolicy::backoff(attempt);
                match rec2.cancel.remaining() {
                    Some(left) if left <= pause => {
                        tokio::time::sleep(left).await;
                        break Err(TaskError::new(
                            ErrorKind::Timeout,
                            format!(
                                "the task's time limit passed while retrying (attempt {attempt}, \
                                 after: {})",
                                r.err().map(|e| e.message).unwrap_or_default()
                            ),
                        ));
                    }
                    _ => tokio::time::sleep(pause).await,
                }
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
    id: u64,
    name: String,
    backend: Arc<dyn SharedBackend>,
}

impl TaskIo for LocalIo {
    fn log(&self, level: LogLevel, line: &str) {
        self.rt
            .out
            .task_log(self.id, LOCAL, &self.name, level, line);
    }
    fn change(&self, change: Change) {
        self.rt.out.task_change(self.id, LOCAL, &self.name, &change);
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
        mode: rt.mode,
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
            id: rec.id,
            name: rec.name.clone(),
            backend,
        }),
        cancel: rec.cancel.clone(),
        mode: rt.mode,
        orchestrator: false,
    };
    let limits = Limits {
        memory_limit: rt.local_memory_limit,
    };
    (req, ctx, limits)
}

/// A local task's result is held to a remote one's limit (a frame), so that a script
/// tested locally fails the same way on the fleet, not only there.
fn within_a_frame(result: Data) -> Result<Data, TaskError> {
    let size = protocol::encoded_size(result.graph())
        .map_err(|e| TaskError::new(ErrorKind::Capture, e.to_string()))?;
    if size > protocol::MAX_VALUE {
        return Err(protocol::result_too_big(size, protocol::MAX_VALUE));
    }
    Ok(result)
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
        let result = sloth_modules::EXECUTOR.run_task(&req, ctx, &limits);
        let _ = tx.send(result.and_then(within_a_frame));
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

/// Report what a task sent (a log line, a change) from its stream's async task.
/// Reporting waits while the output's reader is behind (a pager that paused): this
/// task's reading then waits too, its agent's queue fills and its task waits
/// (backpressure, not memory), but the runtime's thread never blocks in `write`, so
/// every other connection, its keep-alives and the tasks that print nothing carry
/// on. Streams report one at a time (`Runtime::print_turn`); the one whose output
/// would wait does it on a blocking thread.
async fn report_output(
    rt: &Arc<Runtime>,
    bytes: usize,
    report: impl FnOnce(&dyn crate::engine::events::Events) + Send + 'static,
) {
    let _turn = rt.print_turn.lock().await;
    if rt.out.output_ready(bytes) {
        report(rt.out.as_ref());
    } else {
        let out = rt.out.clone();
        let _ = tokio::task::spawn_blocking(move || report(out.as_ref())).await;
    }
}

/// The frame answering call `call_id`. A reply over the frame limit (a value too big
/// for any frame) is the call's error: the task on the agent hears why instead of
/// waiting for it.
fn encode_reply(
    call_id: u64,
    result: Result<Data, String>,
    host: &str,
) -> Result<Vec<u8>, protocol::FrameError> {
    protocol::encode(&ToAgent::Reply {
        call_id,
        result: result.map(Data::into_graph),
    })
    .or_else(|e| {
        protocol::encode(&ToAgent::Reply {
            call_id,
            result: Err(format!("the value cannot be sent to {host}: {e}")),
        })
    })
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
    let transport = rt.transport.as_ref().ok_or_else(|| {
        TaskError::new(
            ErrorKind::Unreachable,
            "no fleet is configured (use -i INVENTORY or --local-fleet)",
        )
    })?;
    rec.set_host(host);
    let cancelled = || TaskError::new(ErrorKind::Cancelled, "task cancelled");
    // The task's time limit runs from the call: dialing counts (a dead agent is not
    // waited for past it, nor are retries started after it).
    let limit = rec.cancel.deadline().map(tokio::time::Instant::from_std);
    let link = tokio::select! {
        c = transport.link(host) => c?,
        _ = rec.cancel_notify.notified() => return Err(cancelled()),
        _ = async { match limit {
            Some(l) => tokio::time::sleep_until(l).await,
            None => std::future::pending().await,
        } } => {
            return Err(TaskError::new(
                ErrorKind::Timeout,
                "the task's time limit passed before the agent answered (connecting)",
            ))
        }
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
        mode: rt.mode,
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
        let mut stream = link.open().await?;
        // From the first byte on, the agent may have the task.
        *reached = true;
        stream
            .send(&frame)
            .await
            .map_err(|e| link.lost(format!("sending the task: {e}")))?;
        // A task given no shared object cannot call the master, so nothing more goes
        // to the agent on this stream: finish it now and the FIN usually travels in
        // the task's own packet instead of one more packet at the end. Cancelling
        // such a task stops the agent's side of the stream (STOP_SENDING).
        if no_calls {
            stream.finish();
        }
        Ok::<_, TaskError>(stream)
    };
    let mut stream = tokio::select! {
        r = opened => r?,
        _ = rec.cancel_notify.notified() => return Err(cancelled()),
        _ = sleep_until(deadline.map(|d| d - Duration::from_secs(2))) => {
            return Err(TaskError::new(ErrorKind::Timeout, "the agent accepted no new task before the deadline"))
        }
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
        // Cancel-safe: a frame half read when another branch wins stays in the stream.
        let frame = tokio::select! {
            f = stream.recv() => f,
            _ = rec.cancel_notify.notified() => {
                stream.abort(codes::CANCELLED);
                return Err(cancelled());
            }
            _ = sleep_until(deadline) => {
                stream.abort(codes::CANCELLED);
                return Err(TaskError::new(ErrorKind::Timeout, "the agent did not stop the task at its deadline"));
            }
        };
        match frame {
            Ok(Some(ToMaster::Started)) => {}
            Ok(Some(ToMaster::Log { level, line })) => {
                let line = match protocol::clip_log_line(&line) {
                    std::borrow::Cow::Borrowed(_) => line,
                    std::borrow::Cow::Owned(clipped) => clipped,
                };
                let bytes = line.len() + host.len() + rec.name.len() + 16;
                let (id, host, name) = (rec.id, host.to_string(), rec.name.clone());
                report_output(rt, bytes, move |out| {
                    out.task_log(id, &host, &name, level, &line)
                })
                .await;
            }
            Ok(Some(ToMaster::Change(c))) => {
                // Bounded like log lines: a change is only ever reported, never acted on.
                let c = c.clipped();
                let bytes = c.target.len() + c.diff.as_ref().map_or(0, |d| d.len()) + 256;
                let (id, host, name) = (rec.id, host.to_string(), rec.name.clone());
                report_output(rt, bytes, move |out| out.task_change(id, &host, &name, &c)).await;
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
                        stream.abort(codes::PROTOCOL);
                        return Err(e);
                    }
                };
                let reg = rt.registry.clone();
                let c2 = caller.clone();
                let to = host.to_string();
                // The reply is encoded on the blocking thread too: a big value must not
                // hold the connection's thread.
                let mut work = tokio::task::spawn_blocking(move || {
                    let result = registry::call(&reg, &c2, obj, &method, args);
                    let refs = result.as_ref().map(Data::shared_refs).unwrap_or_default();
                    (refs, encode_reply(call_id, result, &to))
                });
                let (refs, bytes) = tokio::select! {
                    r = &mut work => r.unwrap_or_else(|e| {
                        (Vec::new(), encode_reply(call_id, Err(format!("call failed: {e}")), host))
                    }),
                    _ = link.closed() => {
                        // Let the call see the stop and return before the task is
                        // recorded as over (and its locks released).
                        attempt.cancel();
                        let _ = work.await;
                        return Err(link.lost("connection lost".into()));
                    }
                    _ = rec.cancel_notify.notified() => {
                        attempt.cancel();
                        let _ = work.await;
                        stream.abort(codes::CANCELLED);
                        return Err(cancelled());
                    }
                };
                allowed.extend(refs);
                // A failed write means the agent stopped reading: its task is over
                // (the result follows) or the connection is gone (the next read
                // says so). Either way the outcome comes from the read side.
                if let Ok(bytes) = bytes {
                    let _ = stream.send(&bytes).await;
                }
            }
            Ok(Some(ToMaster::Done { result, .. })) => {
                stream.finish();
                // The agent finishes its side with the result, usually in the same
                // packet: take the FIN now, or dropping the stream would send the
                // agent a needless STOP_SENDING.
                stream.take_fin();
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
            Ok(None) if !link.is_closed() => {
                stream.abort(codes::PROTOCOL);
                return Err(TaskError::new(
                    ErrorKind::Refused,
                    "the agent ended the task stream without a result",
                ));
            }
            Ok(None) => {
                return Err(link.lost("the agent closed the task stream without a result".into()))
            }
            Err(WireError::Frame(e)) => {
                stream.abort(codes::BAD_FRAME);
                return Err(TaskError::new(
                    ErrorKind::Refused,
                    format!("the agent sent a bad frame: {e}"),
                ));
            }
            Err(e) => return Err(link.lost(format!("task stream failed: {e}"))),
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
    if !obj.kind.accepts(method) {
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

#[cfg(test)]
mod tests {
    //! Dispatch, retries and cancellation of remote tasks, over the fake transport.

    use std::time::Instant;

    use super::*;
    use crate::engine::fake::{int_result, payload, run_over, Behaviour, FakeFleet};

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    fn to(host: &str) -> TaskOpts {
        TaskOpts {
            target: Some(host.to_string()),
            ..TaskOpts::default()
        }
    }

    fn answer(value: i64) -> Behaviour {
        Behaviour::Answer {
            value,
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn a_remote_task_returns_its_value_and_streams_its_log_by_host() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("web1", answer(7));
        let (_tokio, rt, events) = run_over(&fleet, &["web1"]);
        let rec = start(&rt, payload(), &to("web1"));
        let o = rec.wait(WAIT, None).expect("the task ends");
        assert_eq!(int_result(&o), Some(7));
        assert_eq!(rec.host(), "web1");
        assert_eq!(fleet.received("web1"), 1);
        assert_eq!(events.done_reaching(1), 1);
        let logs = events.logs.lock();
        assert!(
            logs.iter()
                .any(|(h, l)| h == "web1" && l.starts_with("running ")),
            "{logs:?}"
        );
    }

    #[test]
    fn a_lost_agent_is_retried_while_retries_last_and_then_named() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("db1", Behaviour::DieOnTask);
        let (_tokio, rt, events) = run_over(&fleet, &["db1"]);
        let mut opts = to("db1");
        opts.retry.retries = 2;
        let rec = start(&rt, payload(), &opts);
        let o = rec.wait(WAIT, None).expect("the task ends");
        let e = o.result.expect_err("every attempt died");
        assert_eq!(e.kind, ErrorKind::AgentLost, "{e:?}");
        // One attempt and two retries, each on a fresh connection.
        assert_eq!(fleet.received("db1"), 3);
        assert_eq!(fleet.dials("db1"), 3);
        let retried = events
            .logs
            .lock()
            .iter()
            .filter(|(_, l)| l.starts_with("retrying ("))
            .count();
        assert_eq!(retried, 2);
    }

    #[test]
    fn errors_the_task_raised_are_retried_only_with_retry_errors() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        let fail = Behaviour::Fail {
            kind: ErrorKind::Lua,
            delay: Duration::ZERO,
        };
        fleet.set("a", fail.clone());
        fleet.set("b", fail);
        let (_tokio, rt, _events) = run_over(&fleet, &["a", "b"]);
        let mut plain = to("a");
        plain.retry.retries = 3;
        let o = start(&rt, payload(), &plain)
            .wait(WAIT, None)
            .expect("ends");
        assert_eq!(o.result.expect_err("fails").kind, ErrorKind::Lua);
        assert_eq!(
            fleet.received("a"),
            1,
            "a Lua error is not retried by default"
        );

        let mut eager = to("b");
        eager.retry = RetryPolicy {
            retries: 1,
            retry_errors: true,
        };
        let o = start(&rt, payload(), &eager)
            .wait(WAIT, None)
            .expect("ends");
        assert_eq!(o.result.expect_err("fails").kind, ErrorKind::Lua);
        assert_eq!(fleet.received("b"), 2);
    }

    #[test]
    fn an_unreachable_host_fails_with_its_name_and_nothing_runs() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.down("gone");
        let (_tokio, rt, _events) = run_over(&fleet, &["gone"]);
        let o = start(&rt, payload(), &to("gone"))
            .wait(WAIT, None)
            .expect("ends");
        let e = o.result.expect_err("unreachable");
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(e.display_for("gone").contains("gone"), "{e:?}");
        assert_eq!(fleet.received("gone"), 0);
    }

    #[test]
    fn cancelling_a_running_remote_task_ends_it_and_resets_its_stream() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("slow", Behaviour::Hang);
        let (_tokio, rt, _events) = run_over(&fleet, &["slow"]);
        let rec = start(&rt, payload(), &to("slow"));
        // Wait until the agent has it, then cancel.
        let until = Instant::now() + Duration::from_secs(5);
        while fleet.received("slow") == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fleet.received("slow"), 1);
        assert!(rec.wait(Some(Duration::from_millis(100)), None).is_none());
        let t0 = Instant::now();
        rec.request_cancel();
        let o = rec.wait(WAIT, None).expect("a cancelled task ends");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(o.result.expect_err("cancelled").kind, ErrorKind::Cancelled);
        assert_eq!(fleet.aborted("slow"), 1);
    }

    #[test]
    fn a_silent_agent_is_given_up_at_the_deadline_plus_grace() {
        let fleet = FakeFleet::new(Duration::from_millis(300));
        fleet.set("mute", Behaviour::Hang);
        let (_tokio, rt, _events) = run_over(&fleet, &["mute"]);
        let mut opts = to("mute");
        opts.timeout = Some(Duration::from_millis(200));
        let t0 = Instant::now();
        let o = start(&rt, payload(), &opts).wait(WAIT, None).expect("ends");
        let took = t0.elapsed();
        assert_eq!(o.result.expect_err("timed out").kind, ErrorKind::Timeout);
        // The agent is trusted to stop at the deadline; the master waits 2 s more.
        assert!(took >= Duration::from_secs(2), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(fleet.aborted("mute"), 1);
    }
}
