//! The value tree that carries Lua data between states and hosts.
//!
//! A [`Graph`] is a self-contained snapshot of some Lua values: tables and functions
//! are stored once in side tables and referred to by index, so cycles and shared
//! sub-tables keep their identity. This module is plain data (serde), with no Lua and
//! no I/O; [`crate::capture`] converts between it and live Lua states.

use serde::{Deserialize, Serialize};

/// The kinds of objects that are passed by reference instead of being copied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedKind {
    Handle,
    Channel,
    WaitGroup,
    Mutex,
    Semaphore,
    Atomic,
    Once,
    Artifact,
}

impl SharedKind {
    pub fn type_name(self) -> &'static str {
        match self {
            SharedKind::Handle => "handle",
            SharedKind::Channel => "channel",
            SharedKind::WaitGroup => "wait_group",
            SharedKind::Mutex => "mutex",
            SharedKind::Semaphore => "semaphore",
            SharedKind::Atomic => "atomic_int",
            SharedKind::Once => "once",
            SharedKind::Artifact => "artifact",
        }
    }

    pub const ALL: [SharedKind; 8] = [
        SharedKind::Handle,
        SharedKind::Channel,
        SharedKind::WaitGroup,
        SharedKind::Mutex,
        SharedKind::Semaphore,
        SharedKind::Atomic,
        SharedKind::Once,
        SharedKind::Artifact,
    ];

    /// The methods scripts call on this kind (`ch:send(v)`), each one a call on the
    /// wire of the same name. The one list of them: the Lua userdata, the master's
    /// check of agents' calls and the master's objects all follow it.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            SharedKind::Handle => &["await", "cancel", "status", "result"],
            SharedKind::Channel => &[
                "send",
                "receive",
                "try_send",
                "try_receive",
                "close",
                "len",
                "cap",
                "is_closed",
            ],
            SharedKind::WaitGroup => &["add", "done", "wait", "count"],
            SharedKind::Mutex => &["lock", "unlock", "try_lock", "is_locked"],
            SharedKind::Semaphore => &["acquire", "release", "try_acquire", "available"],
            SharedKind::Atomic => &[
                "get",
                "set",
                "add",
                "sub",
                "incr",
                "decr",
                "compare_and_swap",
                "swap",
            ],
            SharedKind::Once => &["done"],
            SharedKind::Artifact => &["sha256", "size", "name"],
        }
    }

    /// Calls that only travel on the wire, under Lua methods built on them
    /// (`h.host`, `o:do(f)`, `a:save(path)`).
    pub fn wire_methods(self) -> &'static [&'static str] {
        match self {
            SharedKind::Handle => &["host"],
            SharedKind::Once => &["begin", "finish"],
            SharedKind::Artifact => &["read"],
            _ => &[],
        }
    }

    /// Whether `method` is a call a sloth agent may send on this kind.
    pub fn accepts(self, method: &str) -> bool {
        self.methods().contains(&method) || self.wire_methods().contains(&method)
    }
}

/// A reference to an object that lives in the master.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SharedRef {
    pub kind: SharedKind,
    pub id: u64,
}

/// One Lua value inside a [`Graph`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// Index into [`Graph::tables`].
    Table(u32),
    /// Index into [`Graph::functions`].
    Function(u32),
    /// A standard-library or sloth-module value, resolved by name where it is restored
    /// (`"string.format"`, `"string"`, `"print"`).
    Builtin(String),
    /// The globals table of the state (`_ENV`/`_G`), re-bound where it is restored.
    Env,
    /// An object passed by reference.
    Shared(SharedRef),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TableDef {
    #[serde(deserialize_with = "bounded_vec")]
    pub entries: Vec<(Value, Value)>,
}

/// A Lua closure: which prototype it instantiates, and its upvalues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FunctionDef {
    /// Index into [`Graph::protos`].
    pub proto: u32,
    /// One entry per upvalue, in order.
    #[serde(deserialize_with = "bounded_vec")]
    pub upvalues: Vec<Upvalue>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Upvalue {
    pub value: Value,
    /// Closures that shared one upvalue cell share it again after restore.
    pub cell: u32,
}

/// A script global that could not be copied: reading it inside a task raises this reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Unsendable {
    pub name: String,
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// The values this graph carries (a function and its arguments, or results).
    #[serde(deserialize_with = "bounded_vec")]
    pub roots: Vec<Value>,
    #[serde(deserialize_with = "bounded_vec")]
    pub tables: Vec<TableDef>,
    #[serde(deserialize_with = "bounded_vec")]
    pub functions: Vec<FunctionDef>,
    /// Bytecode (`string.dump`, with debug info), deduplicated.
    #[serde(deserialize_with = "bounded_vec")]
    pub protos: Vec<Vec<u8>>,
    /// Globals the script defined, available inside the task.
    #[serde(deserialize_with = "bounded_vec")]
    pub globals: Vec<(String, Value)>,
    #[serde(deserialize_with = "bounded_vec")]
    pub unsendable_globals: Vec<Unsendable>,
}

/// At most this many elements (roots, tables, table entries, functions, upvalues,
/// globals...) in the graphs of one decoded message. On the wire a `(nil, nil)` entry
/// is 2 bytes and in memory 64, so the frame limit alone would let a 64 MiB frame
/// take 2 GiB: this bounds a decoded message to about 128 MiB of elements.
pub const MAX_DECODED_ELEMENTS: usize = 2_000_000;

thread_local! {
    static DECODE_BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Run `f` (one message's decode) with [`MAX_DECODED_ELEMENTS`] elements to spend.
pub fn with_decode_budget<T>(f: impl FnOnce() -> T) -> T {
    let before = DECODE_BUDGET.with(|b| b.replace(MAX_DECODED_ELEMENTS));
    let out = f();
    DECODE_BUDGET.with(|b| b.set(before));
    out
}

/// A `Vec` deserializer that spends the decode budget per element and never
/// pre-allocates from a length the peer claims.
fn bounded_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            loop {
                let left = DECODE_BUDGET.with(|b| b.get());
                if left == 0 {
                    return Err(serde::de::Error::custom(format!(
                        "the value tree has more than {MAX_DECODED_ELEMENTS} elements"
                    )));
                }
                match seq.next_element()? {
                    Some(v) => {
                        DECODE_BUDGET.with(|b| b.set(left - 1));
                        out.push(v);
                    }
                    None => return Ok(out),
                }
            }
        }
    }
    d.deserialize_seq(V(std::marker::PhantomData))
}

impl Graph {
    /// A graph of plain values only (no tables or functions).
    pub fn from_roots(roots: Vec<Value>) -> Graph {
        Graph {
            roots,
            ..Graph::default()
        }
    }

    /// Append a table made of the given entries and return its value.
    pub fn push_table(&mut self, entries: Vec<(Value, Value)>) -> Value {
        self.tables.push(TableDef { entries });
        Value::Table((self.tables.len() - 1) as u32)
    }

    /// A one-line, human description of a root value (for logs and errors).
    pub fn describe(&self, v: &Value) -> String {
        match v {
            Value::Nil => "nil".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Value::Table(i) => format!("table#{i}"),
            Value::Function(i) => format!("function#{i}"),
            Value::Builtin(n) => n.clone(),
            Value::Env => "_ENV".into(),
            Value::Shared(r) => format!("{}#{}", r.kind.type_name(), r.id),
        }
    }

    /// Every shared object this graph refers to.
    pub fn shared_refs(&self) -> Vec<SharedRef> {
        let mut out = Vec::new();
        let mut see = |v: &Value| {
            if let Value::Shared(r) = v {
                out.push(*r);
            }
        };
        self.roots.iter().for_each(&mut see);
        for t in &self.tables {
            for (k, v) in &t.entries {
                see(k);
                see(v);
            }
        }
        for f in &self.functions {
            f.upvalues.iter().for_each(|u| see(&u.value));
        }
        self.globals.iter().for_each(|(_, v)| see(v));
        out
    }

    /// Check that every index refers to something that exists, so a restore from a
    /// graph received over the network never indexes out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        // Bound what a restore may allocate (a frame of empty tables is cheap to send).
        const MAX_OBJECTS: usize = 1_000_000;
        if self.tables.len() + self.functions.len() > MAX_OBJECTS {
            return Err(format!(
                "{} tables and functions exceed the limit of {MAX_OBJECTS}",
                self.tables.len() + self.functions.len()
            ));
        }
        let check = |v: &Value| -> Result<(), String> {
            match v {
                Value::Table(i) if *i as usize >= self.tables.len() => {
                    Err(format!("table index {i} out of range"))
                }
                Value::Function(i) if *i as usize >= self.functions.len() => {
                    Err(format!("function index {i} out of range"))
                }
                _ => Ok(()),
            }
        };
        for v in &self.roots {
            check(v)?;
        }
        for t in &self.tables {
            for (k, v) in &t.entries {
                check(k)?;
                check(v)?;
            }
        }
        for f in &self.functions {
            if f.proto as usize >= self.protos.len() {
                return Err(format!("prototype index {} out of range", f.proto));
            }
            for u in &f.upvalues {
                check(&u.value)?;
            }
        }
        for (_, v) in &self.globals {
            check(v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_dangling_indexes() {
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        assert!(g.validate().is_err());
        g.push_table(vec![(Value::Int(1), Value::Function(3))]);
        assert!(g.validate().unwrap_err().contains("function index 3"));
        g.tables[0].entries.clear();
        assert!(g.validate().is_ok());
    }
}
