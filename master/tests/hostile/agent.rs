//! A hostile agent: built from the project's own TLS and wire code, holding a real
//! agent certificate of the test fleet, it completes the handshake like a real agent
//! and then answers each task with crafted frames. What it does is chosen by the
//! task's name (`{ name = "globals", delegate_to = "evil-01" }`), so one script can
//! play many attacks against one real `sloth-master run`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use sloth_proto::change::{Change, ChangeKind};
use sloth_proto::graph::{FunctionDef, Graph, SharedKind, SharedRef, Unsendable, Value};
use sloth_proto::protocol::{
    self, Control, ErrorKind, Facts, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
    MAX_FRAME, PROTOCOL_VERSION,
};
use sloth_transport::{self as tls, wire};

use crate::common::{certs_issue, TestFleet};

pub struct HostileAgent {
    /// The file a successful injection would create (`touch MARKER`).
    pub marker: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileAgent {
    /// Issue `name` a real agent certificate of `fleet`, listen on 127.0.0.1, add it to
    /// the inventory in group `evil`. `preamble_version` is the protocol version it
    /// announces (PROTOCOL_VERSION to be let in).
    pub fn start(fleet: &mut TestFleet, name: &str, preamble_version: u32) -> HostileAgent {
        certs_issue(&fleet.certs, name);
        let own = tls::read_pem_files(
            &fleet.certs.join(format!("{name}.crt")),
            &fleet.certs.join(format!("{name}.key")),
        )
        .unwrap();
        let ca = std::fs::read_to_string(fleet.certs.join("ca.crt")).unwrap();
        let transport = tls::transport_config(Duration::from_secs(1), Duration::from_secs(3));
        let server = tls::agent_server_config(&own, &ca, None, transport).unwrap();
        let marker = fleet.path().join(format!("{name}-INJECTED"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let agent_name = name.to_string();
        let marker2 = marker.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
                addr_tx.send(ep.local_addr().unwrap().to_string()).unwrap();
                let ctx = Arc::new(Ctx {
                    name: agent_name,
                    marker: marker2,
                    preamble_version,
                });
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        inc = ep.accept() => {
                            let Some(inc) = inc else { break };
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                if let Ok(conn) = inc.await {
                                    serve(ctx, conn).await;
                                }
                            });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
                ep.close(0u32.into(), b"bye");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        fleet.add_host(name, &addr, &["evil"]);
        HostileAgent {
            marker,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ctx {
    name: String,
    marker: PathBuf,
    preamble_version: u32,
}

async fn serve(ctx: Arc<Ctx>, conn: quinn::Connection) {
    let Ok((mut cs, cr)) = conn.accept_bi().await else {
        return;
    };
    let mut cr = wire::FrameReader::new(cr);
    if cr.preamble().await.is_err() {
        return;
    }
    let _ = wire::write_preamble(&mut cs, ctx.preamble_version).await;
    if ctx.preamble_version != PROTOCOL_VERSION {
        // Like a build of another version: say ours, then wait for the master to go.
        let _ = cs.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        return;
    }
    match cr.next::<Control>().await {
        Ok(Some(Control::Hello(_))) => {}
        _ => return,
    }
    let welcome = Control::Welcome {
        agent_name: ctx.name.clone(),
        agent_version: "hostile".into(),
        max_tasks: 64,
        facts: Some(Facts::default()),
    };
    if wire::write_frame(&mut cs, &welcome).await.is_err() {
        return;
    }
    tokio::spawn(async move {
        while let Ok(Some(m)) = cr.next::<Control>().await {
            let reply = match m {
                Control::Ping { seq } | Control::PingFacts { seq } => {
                    Control::Pong { seq, facts: None }
                }
                _ => continue,
            };
            if wire::write_frame(&mut cs, &reply).await.is_err() {
                return;
            }
        }
    });
    while let Ok((send, recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut recv = wire::FrameReader::new(recv);
            if let Ok(Some(ToAgent::Task(req))) = recv.next::<ToAgent>().await {
                behave(&ctx, *req, send, recv).await;
            }
        });
    }
}

type Reader = wire::FrameReader<RecvStream>;

async fn done(send: &mut SendStream, result: Result<Graph, TaskError>) {
    let _ = wire::write_frame(
        send,
        &ToMaster::Done {
            result,
            duration_us: 1,
        },
    )
    .await;
    let _ = send.finish();
}

fn s(v: &str) -> Value {
    Value::Str(v.as_bytes().to_vec())
}

/// The first object of `kind` the task was given.
fn given(req: &TaskRequest, kind: SharedKind) -> SharedRef {
    req.payload
        .shared_refs()
        .into_iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("task {} was given no {kind:?}", req.name))
}

async fn call(
    send: &mut SendStream,
    recv: &mut Reader,
    call_id: u64,
    obj: SharedRef,
    method: &str,
    args: Graph,
) -> Option<Result<Graph, String>> {
    let c = ToMaster::Call {
        call_id,
        obj,
        method: method.into(),
        args,
    };
    wire::write_frame(send, &c).await.ok()?;
    match recv.next::<ToAgent>().await {
        Ok(Some(ToAgent::Reply { result, .. })) => Some(result),
        _ => None,
    }
}

/// A graph of `depth` tables, each holding the next at key 1.
pub fn nested(depth: u32) -> Graph {
    let mut g = Graph::from_roots(vec![Value::Table(0)]);
    for i in 0..depth {
        let next = if i + 1 < depth {
            Value::Table(i + 1)
        } else {
            s("bottom")
        };
        g.push_table(vec![(Value::Int(1), next)]);
    }
    g
}

/// A frame whose body is not a valid message (bincode of another shape).
fn garbage_frame(n: usize) -> Vec<u8> {
    let mut f = (n as u32).to_be_bytes().to_vec();
    f.extend((0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(0xf1)));
    f
}

async fn behave(ctx: &Ctx, req: TaskRequest, mut send: SendStream, mut recv: Reader) {
    let touch = format!("touch {}", ctx.marker.display());
    let name = req.name.clone();
    let mut parts = name.split(':');
    let case = parts.next().unwrap_or("");
    match case {
        // Globals that would replace the master's `tostring`, `print`, `require` and
        // `os` with `os.execute`, riding on an ordinary result.
        "globals" => {
            let mut g = Graph::from_roots(vec![s(&touch)]);
            for victim in ["tostring", "print", "require", "pcall", "type"] {
                g.globals
                    .push((victim.into(), Value::Builtin("os.execute".into())));
            }
            g.globals.push(("os".into(), Value::Builtin("io".into())));
            g.unsendable_globals.push(Unsendable {
                name: "string".into(),
                reason: "hijacked".into(),
            });
            done(&mut send, Ok(g)).await;
        }
        "builtin" => {
            let g = Graph::from_roots(vec![Value::Builtin("os.execute".into()), s(&touch)]);
            done(&mut send, Ok(g)).await;
        }
        "env_root" => done(&mut send, Ok(Graph::from_roots(vec![Value::Env]))).await,
        "env_deep" => {
            let mut g = nested(3);
            g.tables[2].entries.push((Value::Env, s(&touch)));
            done(&mut send, Ok(g)).await;
        }
        "function" => {
            let mut g = Graph::from_roots(vec![Value::Function(0)]);
            g.functions.push(FunctionDef {
                proto: 0,
                upvalues: vec![],
            });
            // Any bytes: the master must refuse before looking at them.
            g.protos.push(b"\x1bLua\x54\x00".to_vec());
            done(&mut send, Ok(g)).await;
        }
        // Object ids the task was not given (the script made channels 1..n).
        "guess_result" => {
            let refs = (1..=20)
                .map(|id| {
                    Value::Shared(SharedRef {
                        kind: SharedKind::Channel,
                        id,
                    })
                })
                .collect();
            done(&mut send, Ok(Graph::from_roots(refs))).await;
        }
        "guess_call" => {
            let obj = SharedRef {
                kind: SharedKind::Channel,
                id: parts.next().and_then(|p| p.parse().ok()).unwrap_or(1),
            };
            let args = Graph::from_roots(vec![s(&touch)]);
            let r = call(&mut send, &mut recv, 1, obj, "send", args).await;
            done(&mut send, Ok(Graph::from_roots(vec![s(&format!("{r:?}"))]))).await;
        }
        "unknown_method" => {
            let obj = given(&req, SharedKind::Channel);
            let r = call(
                &mut send,
                &mut recv,
                1,
                obj,
                "evil\x1b[2J",
                Graph::default(),
            )
            .await;
            done(&mut send, Ok(Graph::from_roots(vec![s(&format!("{r:?}"))]))).await;
        }
        // A channel message carrying code and globals: the script's main state
        // receives what is sent, so it must be refused before it enters the channel.
        "send_code" => {
            let obj = given(&req, SharedKind::Channel);
            let mut args = Graph::from_roots(vec![s(&touch)]);
            args.globals
                .push(("tostring".into(), Value::Builtin("os.execute".into())));
            let r = call(&mut send, &mut recv, 1, obj, "send", args).await;
            done(&mut send, Ok(Graph::from_roots(vec![s(&format!("{r:?}"))]))).await;
        }
        "send_builtin" => {
            let obj = given(&req, SharedKind::Channel);
            let args = Graph::from_roots(vec![Value::Builtin("os.execute".into())]);
            let r = call(&mut send, &mut recv, 1, obj, "send", args).await;
            done(&mut send, Ok(Graph::from_roots(vec![s(&format!("{r:?}"))]))).await;
        }
        // Wrong argument types are a plain error reply (a real task can make them);
        // the agent passes the master's answer back as its result.
        "wrong_types" => {
            let obj = given(&req, SharedKind::Atomic);
            let mut out = Vec::new();
            for args in [
                vec![s("not a number")],
                vec![Value::Float(f64::NAN)],
                vec![Value::Bool(true), Value::Int(i64::MAX)],
            ] {
                let r = call(&mut send, &mut recv, 1, obj, "add", Graph::from_roots(args)).await;
                out.push(s(&match r {
                    Some(Ok(_)) => "ok".to_string(),
                    Some(Err(e)) => e,
                    None => "no reply".into(),
                }));
            }
            let wg = given(&req, SharedKind::WaitGroup);
            let r = call(
                &mut send,
                &mut recv,
                2,
                wg,
                "add",
                Graph::from_roots(vec![Value::Int(i64::MAX)]),
            )
            .await;
            let r2 = call(
                &mut send,
                &mut recv,
                3,
                wg,
                "add",
                Graph::from_roots(vec![Value::Int(1)]),
            )
            .await;
            out.push(s(&format!("{:?}", r.map(|r| r.is_ok()))));
            out.push(s(&format!("{r2:?}")));
            done(&mut send, Ok(Graph::from_roots(out))).await;
        }
        // Calls as fast as the stream takes them, replies read concurrently.
        "call_flood" => {
            let n: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(20_000);
            let obj = given(&req, SharedKind::Atomic);
            let (mut rs, mut rr) = (send, recv);
            let reader = tokio::spawn(async move {
                let mut ok = 0u64;
                while ok < n {
                    match rr.next::<ToAgent>().await {
                        Ok(Some(ToAgent::Reply { result: Ok(_), .. })) => ok += 1,
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                ok
            });
            for id in 0..n {
                let c = ToMaster::Call {
                    call_id: id,
                    obj,
                    method: "incr".into(),
                    args: Graph::default(),
                };
                if wire::write_frame(&mut rs, &c).await.is_err() {
                    break;
                }
            }
            let ok = reader.await.unwrap_or(0);
            done(&mut rs, Ok(Graph::from_roots(vec![Value::Int(ok as i64)]))).await;
        }
        // `lines` log lines of `size` bytes, then a result.
        "log_flood" => {
            let lines: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1000);
            let size: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1024);
            let line = "x".repeat(size);
            for _ in 0..lines {
                let f = ToMaster::Log {
                    level: LogLevel::Info,
                    line: line.clone(),
                };
                if wire::write_frame(&mut send, &f).await.is_err() {
                    return;
                }
            }
            done(
                &mut send,
                Ok(Graph::from_roots(vec![Value::Int(lines as i64)])),
            )
            .await;
        }
        // `count` changes of its own host naming another host in their target, the
        // first 100 with diffs of `size` bytes (then 16), the first one with a 100 KB
        // target; then a result.
        "change_flood" => {
            let count: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1000);
            let size: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1024);
            let big = "+".repeat(size);
            let small = "+".repeat(16);
            for i in 0..count {
                let diff = if i < 100 { big.clone() } else { small.clone() };
                let c = Change {
                    kind: ChangeKind::Resource,
                    resource: "file.content".into(),
                    target: format!(
                        "web-01:/etc/passwd-{i}-{}",
                        "t".repeat(if i == 0 { 100_000 } else { 8 })
                    ),
                    changed: true,
                    action: "updated".into(),
                    diff: Some(diff),
                    check: false,
                    error: None,
                };
                if wire::write_frame(&mut send, &ToMaster::Change(Box::new(c)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            done(
                &mut send,
                Ok(Graph::from_roots(vec![Value::Int(count as i64)])),
            )
            .await;
        }
        "no_done" => {
            let _ = wire::write_frame(&mut send, &ToMaster::Started).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        "silent" => {
            // Keep the stream open, say nothing (the connection stays alive).
            let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
        }
        // `malformed:POS:KIND`: POS good frames (Started, Log, a Call and its reply),
        // then a bad one.
        "malformed" => {
            let pos: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let kind = parts.next().unwrap_or("garbage").to_string();
            let atomic = req
                .payload
                .shared_refs()
                .into_iter()
                .find(|r| r.kind == SharedKind::Atomic);
            for i in 0..pos {
                let ok = match (i, atomic) {
                    (0, _) => wire::write_frame(&mut send, &ToMaster::Started)
                        .await
                        .is_ok(),
                    (1, _) | (_, None) => wire::write_frame(
                        &mut send,
                        &ToMaster::Log {
                            level: LogLevel::Print,
                            line: format!("before bad frame {pos} {kind}"),
                        },
                    )
                    .await
                    .is_ok(),
                    (_, Some(obj)) => call(
                        &mut send,
                        &mut recv,
                        i as u64,
                        obj,
                        "incr",
                        Graph::default(),
                    )
                    .await
                    .is_some(),
                };
                if !ok {
                    return;
                }
            }
            let bytes: Vec<u8> = match kind.as_str() {
                "huge" => u32::MAX.to_be_bytes().to_vec(),
                "over" => ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(),
                "truncated" => [&1000u32.to_be_bytes()[..], &[7u8; 10][..]].concat(),
                "half_header" => vec![0, 0],
                "zero" => 0u32.to_be_bytes().to_vec(),
                "trailing" => {
                    let mut f = protocol::encode(&ToMaster::Started).unwrap();
                    f.push(0);
                    let n = (f.len() - 4) as u32;
                    f[..4].copy_from_slice(&n.to_be_bytes());
                    f
                }
                // A Done whose result is a graph with an out-of-range table index.
                "dangling" => protocol::encode(&ToMaster::Done {
                    result: Ok(Graph::from_roots(vec![Value::Table(9)])),
                    duration_us: 0,
                })
                .unwrap(),
                _ => garbage_frame(64),
            };
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        "deep" => {
            let depth: u32 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(1_000_000);
            done(&mut send, Ok(nested(depth))).await;
        }
        // A result made of one string of `mib` MiB, sent whether or not it fits.
        "bigstring" => {
            let mib: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(64);
            // Built off the runtime thread (slow in debug builds), so that this agent
            // keeps answering keep-alives meanwhile.
            let frame = tokio::task::spawn_blocking(move || {
                let msg = ToMaster::Done {
                    result: Ok(Graph::from_roots(vec![Value::Str(vec![b'A'; mib << 20])])),
                    duration_us: 0,
                };
                // Over the limit the codec refuses: send a header that says the size.
                protocol::encode(&msg).unwrap_or_else(|_| {
                    let mut f = (((mib << 20) + 64) as u32).to_be_bytes().to_vec();
                    f.resize(4 + (mib << 20) + 64, b'A');
                    f
                })
            })
            .await
            .unwrap();
            let _ = send.write_all(&frame).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // A real answer, to show the agent is otherwise fine.
        _ => {
            let err = TaskError::new(ErrorKind::Lua, format!("hostile agent: no case '{case}'"));
            done(&mut send, Err(err)).await;
        }
    }
}
