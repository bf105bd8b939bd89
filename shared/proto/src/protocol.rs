//! Messages between master and agent, and their framing. Pure: no sockets here.
//!
//! Every frame is a 4-byte big-endian length followed by a bincode body. A frame
//! longer than [`MAX_FRAME`] is refused before any allocation. See
//! ARCHITECTURE.md ("Wire protocol") for the stream layout.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::change::{Change, Mode};
use crate::graph::{Graph, SharedRef};

/// 2: tasks carry a [`Mode`] (check mode, diffs) and report [`Change`]s.
/// 4: the `Hello` says whether the `Welcome` should carry the agent's facts.
pub const PROTOCOL_VERSION: u32 = 4;
/// Lua version and bytecode format must match exactly: bytecode is shipped.
pub const LUA_VERSION: &str = "Lua 5.4";
pub const BYTECODE_FORMAT: u32 = 0x54;
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Hard limit on one frame (a task with its captures, or one result).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// The most one value (a channel's, a call's arguments, a task's result) may take
/// encoded: a frame, less room for the message around it.
pub const MAX_VALUE: usize = MAX_FRAME - 64 * 1024;

/// Application error codes used to close streams and connections.
pub mod codes {
    pub const BAD_FRAME: u32 = 1;
    pub const CANCELLED: u32 = 2;
    pub const VERSION_MISMATCH: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
    pub const PROTOCOL: u32 = 5;
}

/// First message on a connection's control stream, master to agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    pub protocol: u32,
    pub lua_version: String,
    pub bytecode_format: u32,
    pub master_version: String,
    /// Whether the `Welcome` carries the agent's facts. Collecting them is work on
    /// every agent a command dials; `health` wants them, `exec` and `run` do not
    /// (a script's `fleet.info` asks with `PingFacts` when it needs them).
    pub want_facts: bool,
}

impl Hello {
    /// This build's Hello, asking for facts in the Welcome or not.
    pub fn current(want_facts: bool) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            lua_version: LUA_VERSION.to_string(),
            bytecode_format: BYTECODE_FORMAT,
            master_version: AGENT_VERSION.to_string(),
            want_facts,
        }
    }

    /// `Err` with a sentence naming both sides' versions when they cannot talk.
    pub fn check_compatible(&self) -> Result<(), String> {
        if self.protocol != PROTOCOL_VERSION
            || self.lua_version != LUA_VERSION
            || self.bytecode_format != BYTECODE_FORMAT
        {
            return Err(format!(
                "version mismatch: master speaks protocol {} ({}, bytecode {:#x}), agent speaks protocol {} ({}, bytecode {:#x})",
                self.protocol,
                self.lua_version,
                self.bytecode_format,
                PROTOCOL_VERSION,
                LUA_VERSION,
                BYTECODE_FORMAT
            ));
        }
        Ok(())
    }
}

/// A snapshot of an agent's machine.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub kernel: String,
    pub cpus: u32,
    pub mem_total: u64,
    pub mem_available: u64,
    pub load: [f64; 3],
    pub uptime: u64,
    pub disk_total: u64,
    pub disk_available: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Control {
    Hello(Hello),
    Welcome {
        agent_name: String,
        agent_version: String,
        max_tasks: u32,
        /// Present when the `Hello` asked for them.
        facts: Option<Facts>,
    },
    Reject {
        reason: String,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
        facts: Option<Facts>,
    },
    /// Ask for fresh facts in the next Pong.
    PingFacts {
        seq: u64,
    },
    /// Master to agent, right after the Welcome when the master has one: the fleet's
    /// revocation list (DER). The agent takes it only if the fleet CA signed it and
    /// its number is higher than the one it has.
    Crl {
        der: Vec<u8>,
    },
    /// Master to agent: your certificate is due; make a new key and send a signing
    /// request for it.
    RenewRequest,
    /// Agent to master: the signing request (PKCS#10 DER) for the agent's new key.
    RenewCsr {
        csr: Vec<u8>,
    },
    /// Master to agent: the renewed certificate (PEM), for the key of the request.
    Renewed {
        cert_pem: String,
    },
    /// Agent to master after `Renewed`, or either way when renewal cannot go on:
    /// `None` installed, else why not.
    RenewDone {
        error: Option<String>,
    },
}

/// The enrollment exchange, on the one stream of a connection to an agent waiting to
/// be enrolled (ALPN `sloth-enroll/1`), after the preamble.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Enroll {
    /// Agent to master, once the agent has checked the master against the CA its
    /// token pins: the token (id and secret), the name it asks for, and a signing
    /// request for the key it made (which never leaves it).
    Request {
        token_id: String,
        secret: String,
        name: String,
        csr: Vec<u8>,
    },
    /// Master to agent: its certificate (PEM), the fleet CA certificate (PEM) and the
    /// current revocation list (DER), if any.
    Issued {
        cert_pem: String,
        ca_pem: String,
        crl: Option<Vec<u8>>,
    },
    /// Agent to master: the certificate is installed, the agent now serves.
    Enrolled,
    /// Either way: why the enrollment stops.
    Refused { reason: String },
}

/// One task, master to agent, first frame of a task stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub task_id: u64,
    pub name: String,
    /// roots[0] is the function, roots[1..] its arguments; script globals ride along.
    pub payload: Graph,
    /// The host's inventory vars (a graph whose root is one table).
    pub host_vars: Graph,
    pub timeout_ms: Option<u64>,
    /// Check mode and diffs, for the task's resources.
    pub mode: Mode,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Lua,
    Timeout,
    Cancelled,
    AgentLost,
    Unreachable,
    Capture,
    Refused,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Lua => "lua",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::AgentLost => "agent_lost",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Capture => "capture",
            ErrorKind::Refused => "refused",
        }
    }
}

/// A task failure as it travels; the host is added by whoever reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
        }
    }

    /// The user-facing string: starts with the kind, always names the host.
    pub fn display_for(&self, host: &str) -> String {
        // Messages that already start with the host name do not repeat it.
        let msg = self
            .message
            .strip_prefix(host)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(&self.message);
        match self.kind {
            ErrorKind::Timeout => format!("timeout exceeded: {host}: {msg}"),
            k => format!("{}: {host}: {msg}", k.as_str()),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Print,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Print => "print",
        }
    }
}

/// Agent to master, on a task stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToMaster {
    /// The task left the agent's queue and runs now.
    Started,
    Log {
        level: LogLevel,
        line: String,
    },
    /// A call on a shared object that lives in the master.
    Call {
        call_id: u64,
        obj: SharedRef,
        method: String,
        args: Graph,
    },
    /// What a resource (or handler) of the task did, as it happens.
    Change(Box<Change>),
    Done {
        result: Result<Graph, TaskError>,
        duration_us: u64,
    },
}

/// Master to agent, on a task stream after the request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToAgent {
    Task(Box<TaskRequest>),
    Reply {
        call_id: u64,
        result: Result<Graph, String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// The failure of a task whose result takes `size` bytes, more than the `limit` a
/// frame leaves it: the same words for a local task (held to a remote one's limit,
/// [`MAX_VALUE`]) as for a remote one (its whole frame, [`MAX_FRAME`]).
pub fn result_too_big(size: usize, limit: usize) -> TaskError {
    TaskError::new(
        ErrorKind::Capture,
        format!(
            "the result cannot be sent back: it takes {size} bytes, more than a frame to or \
             from an agent can hold ({limit} bytes)"
        ),
    )
}

/// Encode a message as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// The bytes `msg` takes in a frame body, counted without making one.
pub fn encoded_size<T: Serialize>(msg: &T) -> Result<usize, FrameError> {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut w, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(w.bytes_written)
}

/// Decode one frame body (without its length prefix).
///
/// What a message may allocate while it is decoded is bounded too: value trees spend
/// a budget of [`crate::graph::MAX_DECODED_ELEMENTS`] elements, and no container is
/// pre-allocated from a length the peer claims.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let decoded =
        crate::graph::with_decode_budget(|| bincode::serde::decode_from_slice(body, config()));
    let (msg, used) = decoded.map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => FrameError::Malformed(format!(
            "the decoded message would take more than {MAX_FRAME} bytes"
        )),
        e => FrameError::Malformed(e.to_string()),
    })?;
    if used != body.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Read the length from a frame header, refusing oversized frames.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// The bytes that open every connection's control stream, in both directions, before
/// any bincode: a fixed magic number and the protocol version. They never change, so
/// builds of any two protocol versions can always tell each other which version they
/// speak instead of failing on a frame they cannot decode.
pub const MAGIC: [u8; 4] = *b"SLTH";
pub const PREAMBLE_LEN: usize = 8;

pub fn preamble(version: u32) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..].copy_from_slice(&version.to_be_bytes());
    p
}

/// The protocol version a peer's preamble announces.
pub fn parse_preamble(p: [u8; PREAMBLE_LEN]) -> Result<u32, FrameError> {
    if p[..4] != MAGIC {
        return Err(FrameError::Malformed(format!(
            "the peer does not speak the sloth protocol (it opened with {:02x?})",
            &p[..4]
        )));
    }
    Ok(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

/// The sentence both sides report when their protocol versions differ.
pub fn version_mismatch(master: u32, agent: u32) -> String {
    format!("version mismatch: master speaks protocol {master}, agent speaks protocol {agent}")
}

/// The one decoder of a byte stream of frames: production reads
/// ([`crate::wire::FrameReader`]), the unit tests and the fuzzer all go through it.
/// It holds every byte received and not yet decoded, so the future reading into it
/// can be dropped at any point without losing or splitting a frame. A length prefix
/// over [`MAX_FRAME`] is refused as soon as its 4 bytes are in; memory grows only with
/// bytes actually received.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this offset were consumed.
    start: usize,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer, with room for at least `want` more bytes at its end, for a reader to
    /// append what it reads straight into it: no intermediate buffer to zero and copy
    /// from (`tokio::io::AsyncReadExt::read_buf` on a `&mut Vec<u8>`). Bytes must only
    /// be appended.
    pub fn spare(&mut self, want: usize) -> &mut Vec<u8> {
        self.compact();
        self.buf.reserve(want);
        &mut self.buf
    }

    /// Drop the consumed bytes once they are half of the buffer.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// No byte is waiting (a stream may end here cleanly).
    pub fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }

    /// The peer's preamble, once its 8 bytes are in.
    pub fn preamble(&mut self) -> Result<Option<u32>, FrameError> {
        let p = self.pending();
        if p.len() < PREAMBLE_LEN {
            return Ok(None);
        }
        let mut head = [0u8; PREAMBLE_LEN];
        head.copy_from_slice(&p[..PREAMBLE_LEN]);
        let v = parse_preamble(head)?;
        self.start += PREAMBLE_LEN;
        Ok(Some(v))
    }

    /// The next complete frame's body, if one has arrived (without copying it).
    pub fn next_body(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let p = self.pending();
        if p.len() < 4 {
            return Ok(None);
        }
        let len = frame_len([p[0], p[1], p[2], p[3]])?;
        if p.len() < 4 + len {
            return Ok(None);
        }
        let from = self.start + 4;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// The next complete message, if one has arrived.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_body()? {
            Some(body) => decode(body).map(Some),
            None => Ok(None),
        }
    }
}

/// Log lines longer than this are cut (by the agent before sending, and again by the
/// master on receipt).
pub const MAX_LOG_LINE: usize = 64 * 1024;

/// Room [`clip_log_line`] leaves for its note (` [... N bytes cut]`, N up to 20 digits).
const CUT_NOTE_ROOM: usize = 40;

/// `line` if it is at most [`MAX_LOG_LINE`] bytes; else cut (on a character boundary)
/// and followed by a note of how many bytes were dropped, the whole within
/// [`MAX_LOG_LINE`]. A clipped line is clipped again unchanged, so the note an agent
/// wrote reaches the user as it was.
pub fn clip_log_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LOG_LINE {
        return line.into();
    }
    let mut end = MAX_LOG_LINE - CUT_NOTE_ROOM;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... {} bytes cut]", &line[..end], line.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{SharedKind, Value};

    #[test]
    fn a_clipped_log_line_says_what_it_lost_and_is_not_clipped_again() {
        assert_eq!(clip_log_line("short"), "short");
        let exact = "a".repeat(MAX_LOG_LINE);
        assert_eq!(clip_log_line(&exact), exact.as_str());
        // 70,000 bytes, with a 3-byte character across the cut.
        let long = format!(
            "{}€{}",
            "a".repeat(MAX_LOG_LINE - CUT_NOTE_ROOM - 1),
            "b".repeat(5000)
        );
        let once = clip_log_line(&long).into_owned();
        assert!(once.len() <= MAX_LOG_LINE, "{}", once.len());
        let kept = once.split(" [... ").next().unwrap();
        assert!(long.starts_with(kept));
        assert!(
            once.ends_with(&format!(" [... {} bytes cut]", long.len() - kept.len())),
            "{}",
            &once[once.len() - 40..]
        );
        // The master clips what the agent clipped: nothing changes.
        assert_eq!(clip_log_line(&once), once.as_str());
    }

    #[test]
    fn roundtrip_through_frame_buffer_in_pieces() {
        let mut g = Graph::from_roots(vec![Value::Int(1), Value::Float(1.0)]);
        g.push_table(vec![(Value::Str(b"a\0b".to_vec()), Value::Bool(true))]);
        let msgs = vec![
            ToMaster::Log {
                level: LogLevel::Info,
                line: "hi".into(),
            },
            ToMaster::Call {
                call_id: 7,
                obj: SharedRef {
                    kind: SharedKind::Channel,
                    id: 3,
                },
                method: "send".into(),
                args: g.clone(),
            },
            ToMaster::Done {
                result: Ok(g),
                duration_us: 5,
            },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(encode(m).unwrap());
        }
        let mut fb = FrameDecoder::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            fb.push(chunk);
            while let Some(m) = fb.next_message::<ToMaster>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        assert!(fb.is_empty());
    }

    #[test]
    fn bytes_appended_into_the_spare_room_decode_like_pushed_ones() {
        let msgs: Vec<Control> = (0..50).map(|seq| Control::Ping { seq }).collect();
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(encode(m).unwrap());
        }
        let mut fb = FrameDecoder::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(7) {
            let buf = fb.spare(16);
            assert!(buf.capacity() - buf.len() >= 16);
            buf.extend_from_slice(piece);
            while let Some(m) = fb.next_message::<Control>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        assert!(fb.is_empty());
        // Consumed bytes were dropped along the way: the buffer holds no more than
        // about one piece, not the whole stream.
        assert!(fb.spare(0).len() < bytes.len() / 4, "{}", fb.spare(0).len());
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut fb = FrameDecoder::default();
        fb.push(&u32::MAX.to_be_bytes());
        assert!(matches!(fb.next_body(), Err(FrameError::TooLarge(_))));
        // Just over the limit is refused from the header alone, before any body byte.
        let mut fb = FrameDecoder::default();
        fb.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(fb.next_body(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        // Trailing bytes inside a frame are malformed.
        let mut body = encode(&Control::Ping { seq: 1 }).unwrap();
        body.push(0);
        let n = (body.len() - 4) as u32;
        body[..4].copy_from_slice(&n.to_be_bytes());
        let mut fb = FrameDecoder::default();
        fb.push(&body);
        assert!(matches!(
            fb.next_message::<Control>(),
            Err(FrameError::Malformed(_))
        ));
        assert!(decode::<ToAgent>(&[0xff, 0xfe, 0x01, 0x02]).is_err());
        assert!(decode::<Control>(&[]).is_err());
    }

    /// Two bytes per `(nil, nil)` entry on the wire are 64 bytes in memory: a frame
    /// well under the limit that would decode to far more is refused.
    #[test]
    fn decoding_cannot_amplify_past_the_limit() {
        use crate::graph::TableDef;
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        g.tables = vec![TableDef {
            entries: vec![(Value::Nil, Value::Nil); 2_000_001],
        }];
        let f = encode(&ToMaster::Done {
            result: Ok(g),
            duration_us: 0,
        })
        .unwrap();
        assert!(f.len() < MAX_FRAME / 8);
        let e = decode::<ToMaster>(&f[4..]).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("more than 2000000 elements"), "{e}");
    }

    #[test]
    fn preamble_then_frames_in_one_buffer() {
        let mut fb = FrameDecoder::default();
        fb.push(&preamble(7)[..5]);
        assert_eq!(fb.preamble(), Ok(None));
        fb.push(&preamble(7)[5..]);
        fb.push(&encode(&Control::Ping { seq: 9 }).unwrap());
        assert_eq!(fb.preamble(), Ok(Some(7)));
        assert_eq!(
            fb.next_message::<Control>(),
            Ok(Some(Control::Ping { seq: 9 }))
        );
        let mut bad = FrameDecoder::default();
        bad.push(b"GET / HT");
        assert!(bad
            .preamble()
            .unwrap_err()
            .to_string()
            .contains("sloth protocol"));
        assert_eq!(
            version_mismatch(2, 1),
            "version mismatch: master speaks protocol 2, agent speaks protocol 1"
        );
    }

    #[test]
    fn long_log_lines_are_cut_on_a_char_boundary() {
        assert_eq!(clip_log_line("short"), "short");
        let long = "é".repeat(MAX_LOG_LINE);
        let cut = clip_log_line(&long);
        assert!(cut.len() <= MAX_LOG_LINE, "{}", cut.len());
        let kept = cut.split(" [... ").next().unwrap();
        assert!(kept.chars().all(|c| c == 'é'), "cut inside a character");
        assert!(cut.ends_with(&format!("[... {} bytes cut]", long.len() - kept.len())));
    }

    #[test]
    fn version_mismatch_names_both_sides() {
        let mut h = Hello::current(false);
        assert!(h.check_compatible().is_ok());
        h.protocol = 99;
        let e = h.check_compatible().unwrap_err();
        assert!(e.contains("protocol 99") && e.contains(&format!("protocol {PROTOCOL_VERSION}")));
    }

    #[test]
    fn timeout_errors_start_with_timeout() {
        let e = TaskError::new(ErrorKind::Timeout, "after 5 ms");
        assert!(e
            .display_for("web-01")
            .starts_with("timeout exceeded: web-01"));
        let e = TaskError::new(ErrorKind::Lua, "x.lua:1: boom");
        assert_eq!(e.display_for("db-01"), "lua: db-01: x.lua:1: boom");
    }
}
