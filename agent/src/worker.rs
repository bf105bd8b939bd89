//! Runs a task on a blocking worker thread and bridges it to its stream: log
//! lines and shared-object calls go out, replies and cancellation come in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quinn::{RecvStream, SendStream};
use sloth_lua::cancel::CancelToken;
use sloth_lua::context::{TaskContext, TaskIo};
use sloth_lua::executor::Limits;
use sloth_lua::shared_obj::SharedBackend;
use sloth_proto::change::Change;
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::{Graph, SharedRef};
use sloth_proto::protocol::{
    self, codes, ErrorKind, Facts, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
};
use sloth_transport::wire::{self, FrameReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::audit::{Ending, Event, Session, TaskInfo};
use crate::server::Agent;

/// How long the async thread stays awake after handing a task to a task thread.
const KEEP_AWAKE: Duration = Duration::from_micros(300);
/// How long a stopped task (cancelled, or past its time limit) may take to end. One
/// still running then is stuck in a C call the stop hook cannot reach (a string
/// pattern that backtracks without end, a blocking read): its thread is lost, and the
/// agent restarts itself once no other task runs (`server::restart_when_idle`).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Frames (log lines, calls) a task may have waiting for its stream. A task that logs
/// faster than the master takes its lines waits here: memory stays bounded end to end.
const OUT_QUEUE: usize = 256;

type Replies = Arc<Mutex<HashMap<u64, std::sync::mpsc::Sender<Result<Graph, String>>>>>;

/// The task's view of its stream.
struct StreamIo {
    out: mpsc::Sender<ToMaster>,
    replies: Replies,
    next_call: Arc<AtomicU64>,
    cancel: CancelToken,
    /// Changes the task's resources reported (for the audit log).
    changes: Arc<AtomicU32>,
}

impl TaskIo for StreamIo {
    fn log(&self, level: LogLevel, line: &str) {
        // A task thread, never the async runtime: blocking here is the backpressure.
        let _ = self.out.blocking_send(ToMaster::Log {
            level,
            line: protocol::clip_log_line(line).into_owned(),
        });
    }

    fn change(&self, change: Change) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.blocking_send(ToMaster::Change(Box::new(change)));
    }

    fn backend(&self) -> Arc<dyn SharedBackend> {
        Arc::new(Proxy {
            out: self.out.clone(),
            replies: self.replies.clone(),
            next_call: self.next_call.clone(),
            cancel: self.cancel.clone(),
        })
    }
}

/// Shared objects on an agent: every call goes to the master and waits for its reply.
struct Proxy {
    out: mpsc::Sender<ToMaster>,
    replies: Replies,
    next_call: Arc<AtomicU64>,
    cancel: CancelToken,
}

impl SharedBackend for Proxy {
    fn call(&self, obj: SharedRef, method: &str, args: Data) -> Result<Data, String> {
        // Measured here, on the task's thread: arguments too big for a frame are this
        // call's error, and the connection's thread never encodes them.
        let size = sloth_proto::protocol::encoded_size(args.graph()).map_err(|e| e.to_string())?;
        if size > sloth_proto::protocol::MAX_VALUE {
            return Err(format!(
                "the arguments take {size} bytes: more than a frame to the master can hold \
                 ({} bytes)",
                sloth_proto::protocol::MAX_FRAME
            ));
        }
        let call_id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.replies.lock().insert(call_id, tx);
        let sent = self.out.blocking_send(ToMaster::Call {
            call_id,
            obj,
            method: method.to_string(),
            args: args.into_graph(),
        });
        if sent.is_err() {
            self.replies.lock().remove(&call_id);
            return Err("the master connection is gone".into());
        }
        loop {
            if self.cancel.stopped().is_some() {
                self.replies.lock().remove(&call_id);
                return Err(sloth_lua::cancel::STOPPED.into());
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => {
                    return r.and_then(|g| {
                        Data::check(g, Refs::Any)
                            .map_err(|e| format!("the master's reply is not data: {e}"))
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the master connection is gone".into())
                }
            }
        }
    }
}

pub fn facts() -> Facts {
    sloth_modules::sys::collect_facts()
}

pub async fn run(
    agent: Arc<Agent>,
    session: Arc<Session>,
    req: TaskRequest,
    mut send: SendStream,
    mut recv: FrameReader<RecvStream>,
    permit: OwnedSemaphorePermit,
    queued: bool,
) {
    let start = Instant::now();
    let task_id = req.task_id;
    // No task runs unrecorded: one the audit log cannot take is refused.
    let info = TaskInfo::of(&req);
    let audit = |event, ending: Option<&Ending>| {
        agent
            .audit
            .record(&agent.cfg.name, event, &session, Some(&info), ending)
    };
    if let Err(why) = audit(Event::TaskStart, None) {
        let refused = ToMaster::Done {
            result: Err(TaskError::new(
                ErrorKind::Refused,
                format!("agent {} refuses the task: {why}", agent.cfg.name),
            )),
            duration_us: 0,
        };
        let _ = wire::write_frame(&mut send, &refused).await;
        let _ = send.finish();
        return;
    }
    let changes = Arc::new(AtomicU32::new(0));
    let limit = req
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(agent.cfg.task_timeout)
        .min(agent.cfg.task_timeout);
    let cancel = CancelToken::new(Some(limit));
    let (out_tx, mut out_rx) = mpsc::channel(OUT_QUEUE);
    let replies: Replies = Arc::new(Mutex::new(HashMap::new()));
    let io = Arc::new(StreamIo {
        out: out_tx.clone(),
        replies: replies.clone(),
        next_call: Arc::new(AtomicU64::new(1)),
        cancel: cancel.clone(),
        changes: changes.clone(),
    });
    let ctx = TaskContext {
        host: agent.cfg.name.clone(),
        task_name: req.name.clone(),
        io,
        cancel: cancel.clone(),
        mode: req.mode,
        orchestrator: false,
    };
    drop(out_tx);
    let limits = Limits {
        memory_limit: Some(agent.cfg.memory_limit),
    };
    // Tell the master when a task that waited in the queue starts (an immediate
    // start needs no extra frame on the latency path).
    if queued
        && wire::write_frame(&mut send, &ToMaster::Started)
            .await
            .is_err()
    {
        return;
    }
    let (done_tx, mut job) = tokio::sync::oneshot::channel();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished2 = finished.clone();
    let changes2 = changes.clone();
    agent.runner.execute(move || {
        let r = sloth_modules::EXECUTOR.run_task(&req, ctx, &limits);
        // Encoded here, on the task's thread: a big result never holds up the
        // connection's thread (other tasks, pings, handshakes). The permit goes after
        // it, so the next task finds this thread free.
        let ended = Ended::of(r, start, changes2.load(Ordering::Relaxed));
        drop(permit);
        finished2.store(true, Ordering::Release);
        let _ = done_tx.send(ended);
    });
    // Only a task in a series is likely to answer within the watch; a lone one (a
    // command fanned out to the fleet) would take the CPU from its own child.
    if agent.runner.in_series() {
        sloth_lua::runner::keep_awake(finished, KEEP_AWAKE);
    }
    let mut reading = true;
    // The master cancels by resetting its side of the stream or, when it has already
    // finished that side (a task that cannot call it back), by stopping ours.
    let mut stopped = std::pin::pin!(send.stopped());
    let mut watching = true;
    // When the task was first seen stopped; checked once a second.
    let mut stop_seen: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = check.tick() => {
                if cancel.stopped().is_none() {
                    continue;
                }
                let since = *stop_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= STUCK_AFTER {
                    let stuck = agent.stuck.fetch_add(1, Ordering::SeqCst) + 1;
                    tracing::error!(
                        task = task_id,
                        "the task did not stop {} s after it was told to: its thread is stuck \
                         in a C call (a string pattern that backtracks without end, a blocking \
                         read?) and is lost; {stuck} such thread(s): the agent restarts itself \
                         once no other task runs",
                        STUCK_AFTER.as_secs()
                    );
                    break Ok(Ended::of(
                        Err(TaskError::new(
                            ErrorKind::Timeout,
                            format!(
                                "the task did not stop at its deadline (stuck in a C call, such as a \
                                 string pattern that backtracks without end); agent {} restarts once idle",
                                agent.cfg.name
                            ),
                        )),
                        start,
                        changes.load(Ordering::Relaxed),
                    ));
                }
            }
            s = &mut stopped, if watching => {
                watching = false;
                if !matches!(s, Ok(None)) {
                    tracing::info!(task = task_id, "stopping the task: the master stopped its stream");
                    cancel.cancel();
                }
            }
            Some(msg) = out_rx.recv() => match sloth_proto::protocol::encode(&msg) {
                Ok(bytes) => {
                    if tokio::io::AsyncWriteExt::write_all(&mut send, &bytes).await.is_err() {
                        cancel.cancel();
                    }
                }
                // Too big for a frame (nothing was written): a call's arguments are
                // that call's error, raised in the task; log lines and changes are
                // clipped before, so never reach this.
                Err(e) => {
                    if let ToMaster::Call { call_id, .. } = msg {
                        if let Some(tx) = replies.lock().remove(&call_id) {
                            let _ = tx.send(Err(format!(
                                "the arguments cannot be sent to the master: {e}"
                            )));
                        }
                    }
                }
            },
            // Cancel-safe: a frame half read when another branch wins stays in `recv`.
            frame = recv.next::<ToAgent>(), if reading => match frame {
                Ok(Some(ToAgent::Reply { call_id, result })) => {
                    if let Some(tx) = replies.lock().remove(&call_id) {
                        let _ = tx.send(result);
                    }
                }
                Ok(Some(ToAgent::Task(_))) => {}
                Ok(None) => reading = false,
                Err(e) => {
                    // The master reset the stream (cancel) or the connection died.
                    tracing::info!(task = task_id, "stopping the task: its stream closed ({e})");
                    reading = false;
                    cancel.cancel();
                }
            }
        }
    };
    // Flush what the task said before it ended.
    while let Ok(msg) = out_rx.try_recv() {
        if wire::write_frame(&mut send, &msg).await.is_err() {
            break;
        }
    }
    let ended = result.unwrap_or_else(|_| {
        Ended::of(
            Err(TaskError::new(
                ErrorKind::Lua,
                "the task's worker thread failed (a panic in the executor)",
            )),
            start,
            changes.load(Ordering::Relaxed),
        )
    });
    // Recorded before the master hears the result. The task has run: a failure
    // to record its end is in the agent's log.
    let _ = audit(Event::TaskEnd, Some(&ended.ending));
    let Some(bytes) = ended.frame else {
        let _ = send.reset(codes::BAD_FRAME.into());
        return;
    };
    if tokio::io::AsyncWriteExt::write_all(&mut send, &bytes)
        .await
        .is_ok()
    {
        // quinn keeps delivering a finished stream's data after the handle is
        // dropped, for as long as the connection lives.
        let _ = send.finish();
    } else {
        let _ = send.reset(codes::CANCELLED.into());
    }
    if reading {
        wire::take_fin(recv.get_mut());
    }
}

/// A finished task: its audit line and its `Done` frame (`None` when not even its
/// error fits a frame: the stream is reset).
struct Ended {
    ending: Ending,
    frame: Option<Vec<u8>>,
}

impl Ended {
    fn of(result: Result<Data, TaskError>, start: Instant, changes: u32) -> Ended {
        let duration_us = sloth_lua::executor::elapsed_us(start);
        let ending = Ending::of(&result, duration_us, changes);
        let done = ToMaster::Done {
            result: result.map(Data::into_graph),
            duration_us,
        };
        let e = match protocol::encode(&done) {
            Ok(b) => {
                return Ended {
                    ending,
                    frame: Some(b),
                }
            }
            Err(e) => e,
        };
        // A result over the frame limit is the task's failure (kind capture, never
        // retried), not a lost agent; the audit log says so too.
        let error = match e {
            protocol::FrameError::TooLarge(size) => {
                protocol::result_too_big(size, protocol::MAX_FRAME)
            }
            protocol::FrameError::Malformed(e) => TaskError::new(
                ErrorKind::Capture,
                format!("the result cannot be sent back: {e}"),
            ),
        };
        Ended {
            ending: Ending::error(&error).lasting(duration_us, changes),
            frame: protocol::encode(&ToMaster::Done {
                result: Err(error),
                duration_us,
            })
            .ok(),
        }
    }
}

/// Resolves when the master gives up on a task that has not started: it reset its
/// side of the stream, stopped ours, or the connection is gone. A clean end of the
/// master's side is not giving up (it finishes early when it has nothing more to send).
pub async fn master_gave_up(recv: &mut FrameReader<RecvStream>, send: &SendStream) {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut reading = true;
    loop {
        tokio::select! {
            // Nothing is due before the task starts; a frame that comes is dropped.
            r = recv.next::<ToAgent>(), if reading => match r {
                Ok(Some(_)) => {}
                Ok(None) => reading = false,
                Err(_) => return,
            },
            s = &mut stopped => {
                if !matches!(s, Ok(None)) {
                    return;
                }
                std::future::pending::<()>().await;
            }
        }
    }
}
