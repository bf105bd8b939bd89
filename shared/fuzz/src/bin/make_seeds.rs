//! Writes the seed corpora (`cargo run --bin make_seeds -- DIR`): real frames of
//! every kind, as master and agent send them, so that the fuzzer starts from the
//! shapes that matter. The output is committed under `shared/fuzz/corpus/`.

use std::path::Path;

use sloth_lua::capture::Encoder;
use sloth_lua::context::TaskContext;
use sloth_modules::EXECUTOR;
use sloth_proto::graph::{Graph, SharedKind, SharedRef, Unsendable, Value};
use sloth_proto::protocol::{
    self, Control, ErrorKind, Hello, LogLevel, TaskError, TaskRequest, ToAgent, ToMaster,
};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("creating the corpus directory");
    std::fs::write(d.join(name), bytes).expect("writing a seed");
}

/// A captured closure with upvalues, a shared reference and script globals.
fn task_graph() -> Graph {
    let lua = EXECUTOR
        .new_state(&TaskContext::offline("seed", "seed"))
        .expect("a Lua state");
    lua.load("GLOBAL_N = 3; GLOBAL_T = { a = { 1, 2 }, s = 'x' }")
        .exec()
        .expect("seed globals");
    let f: mlua::Function = lua
        .load(
            "local up, t = 41, { 'a', 'b', nested = { true } }\n\
             t.self = t\n\
             return function(x) return up + (x or 1), t, string.format('%d', GLOBAL_N) end",
        )
        .set_name("@seed.sloth")
        .eval()
        .expect("seed closure");
    let mut enc = Encoder::new(&lua);
    enc.push_function_root(&f).expect("capture");
    enc.push_root(&mlua::Value::Integer(7), "argument #1")
        .expect("capture");
    enc.push_script_globals().expect("globals");
    let mut g = enc.finish();
    g.unsendable_globals.push(Unsendable {
        name: "LOG".into(),
        reason: "cannot send global 'LOG' (userdata)".into(),
    });
    g
}

fn data_graph() -> Graph {
    let ch = Value::Shared(SharedRef {
        kind: SharedKind::Channel,
        id: 1,
    });
    let mut g = Graph::from_roots(vec![Value::Int(1), Value::Table(0), ch.clone()]);
    g.push_table(vec![
        (Value::Str(b"name".to_vec()), Value::Str(b"web-01".to_vec())),
        (Value::Int(1), Value::Float(2.5)),
        (Value::Str(b"sub".to_vec()), Value::Table(1)),
        (Value::Bool(true), ch),
    ]);
    g.push_table(vec![(Value::Str(b"up".to_vec()), Value::Table(0))]);
    g
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    let task = ToAgent::Task(Box::new(TaskRequest {
        task_id: 9,
        name: "seed".into(),
        payload: task_graph(),
        host_vars: {
            let mut g = Graph::from_roots(vec![Value::Table(0)]);
            g.push_table(vec![(
                Value::Str(b"role".to_vec()),
                Value::Str(b"web".to_vec()),
            )]);
            g
        },
        timeout_ms: Some(5000),
        mode: Default::default(),
    }));
    let to_master = [
        ("started", ToMaster::Started),
        (
            "log",
            ToMaster::Log {
                level: LogLevel::Print,
                line: "hello from web-01".into(),
            },
        ),
        (
            "call",
            ToMaster::Call {
                call_id: 3,
                obj: SharedRef {
                    kind: SharedKind::Channel,
                    id: 1,
                },
                method: "send".into(),
                args: data_graph(),
            },
        ),
        (
            "done_ok",
            ToMaster::Done {
                result: Ok(data_graph()),
                duration_us: 120,
            },
        ),
        (
            "done_err",
            ToMaster::Done {
                result: Err(TaskError::new(ErrorKind::Lua, "seed.sloth:2: boom")),
                duration_us: 5,
            },
        ),
        (
            "done_globals",
            ToMaster::Done {
                result: Ok(Graph {
                    globals: vec![("tostring".into(), Value::Builtin("os.execute".into()))],
                    ..Graph::from_roots(vec![Value::Str(b"touch x".to_vec())])
                }),
                duration_us: 5,
            },
        ),
    ];
    let frame = |m: &dyn erased::Enc| m.frame();
    for (name, m) in &to_master {
        let f = frame(m);
        write(dir, "master_data", name, &f[4..]);
        write(
            dir,
            "frame_decoder",
            &format!("to_master_{name}"),
            &[&[0u8][..], &f].concat(),
        );
    }
    let tf = frame(&task);
    write(dir, "agent_task", "task", &tf[4..]);
    write(
        dir,
        "frame_decoder",
        "to_agent_task",
        &[&[1u8][..], &tf].concat(),
    );
    let reply = ToAgent::Reply {
        call_id: 3,
        result: Ok(data_graph()),
    };
    let rf = frame(&reply);
    write(dir, "agent_task", "reply", &rf[4..]);
    write(
        dir,
        "frame_decoder",
        "to_agent_reply",
        &[&[5u8][..], &rf].concat(),
    );
    let mut control = protocol::preamble(protocol::PROTOCOL_VERSION).to_vec();
    for m in [
        Control::Hello(Hello::current(true)),
        Control::Ping { seq: 1 },
        Control::Pong {
            seq: 1,
            facts: Some(Default::default()),
        },
        Control::Reject {
            reason: "version mismatch".into(),
        },
    ] {
        control.extend(frame(&m));
    }
    write(
        dir,
        "frame_decoder",
        "control",
        &[&[0x82u8][..], &control].concat(),
    );
}

/// Lets the seed list mix message types.
mod erased {
    pub trait Enc {
        fn frame(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn frame(&self) -> Vec<u8> {
            sloth_proto::protocol::encode(self).expect("encoding a seed")
        }
    }
}
