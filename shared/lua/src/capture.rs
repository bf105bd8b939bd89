//! Capture and restore: converts live Lua values to a [`Graph`] and back.
//!
//! This is the heart of "a closure shipped to another host": functions travel as
//! `string.dump` bytecode (with debug info) plus their upvalues, read and set through
//! the `debug` library; tables keep identity (cycles, shared sub-tables); standard and
//! module functions travel by name; `_ENV` is re-bound to the receiving state's globals;
//! shared objects travel as references. No I/O happens here.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

use mlua::{Function, Lua, Table, Value as LV};

use crate::shared_obj::{SharedBackend, SharedObj};
use sloth_proto::data::{Data, Refs};
use sloth_proto::graph::{FunctionDef, Graph, TableDef, Unsendable, Upvalue, Value};

/// Library tables whose contents travel by name.
pub const LIBRARY_TABLES: &[&str] = &[
    "string",
    "table",
    "math",
    "os",
    "io",
    "utf8",
    "coroutine",
    "debug",
    "package",
    "goroutine",
    "log",
    "exec",
    "fs",
    "http",
    "net",
    "sys",
    "json",
    "template",
    "artifact",
    "fleet",
];

/// How deep tables and closures may nest before a capture gives up (the same bound
/// [`Data::check`] applies to received data).
const MAX_DEPTH: usize = sloth_proto::data::MAX_DEPTH;

/// A Lua state made for one task ([`crate::executor::Executor::new_state`]). A task — bytecode,
/// upvalues, the script's globals — can be restored only into one of these
/// ([`restore_task`]); no other crate can make one, so the master's main state can
/// never receive code or globals, whatever a peer sends. Everything else is restored
/// with [`restore_data`].
pub struct TaskState(Lua);

impl TaskState {
    pub(crate) fn new(lua: Lua) -> TaskState {
        TaskState(lua)
    }
}

impl std::ops::Deref for TaskState {
    type Target = Lua;
    fn deref(&self) -> &Lua {
        &self.0
    }
}

/// Per-state data the codec needs, stored in the state's app data by [`install`].
pub struct CaptureCtx {
    /// Pointer of a builtin function or library table -> its dotted name; built at
    /// install (main state) or on first need (task states, see [`install_lazy`]).
    builtins: std::sync::OnceLock<HashMap<usize, String>>,
    /// The library tables alone (pointer -> name): all a table needs to be checked
    /// against, far cheaper to build than `builtins` in a task state that sends a
    /// table back.
    library_tables: std::sync::OnceLock<HashMap<usize, String>>,
    /// Task states: only these global names count as builtins (never the script's
    /// globals restored into the state).
    only: Option<&'static HashSet<String>>,
    /// The `debug` functions the codec uses; a task state loads its `debug` library
    /// only when a closure with upvalues first travels (see [`debug_fns`]).
    debug: std::sync::OnceLock<DebugFns>,
    /// Global names present before the script ran (not "script globals").
    baseline: HashSet<String>,
    /// Where shared objects restored in this state send their calls.
    pub backend: Arc<dyn SharedBackend>,
}

impl CaptureCtx {
    fn builtins(&self, lua: &Lua) -> &HashMap<usize, String> {
        self.builtins.get_or_init(|| scan(lua, self.only).0)
    }

    fn library_tables(&self, lua: &Lua) -> &HashMap<usize, String> {
        self.library_tables
            .get_or_init(|| library_tables_of(lua, self.only))
    }
}

/// The state's library tables (pointer -> name): the [`LIBRARY_TABLES`] among its
/// globals, as [`scan`] finds them.
fn library_tables_of(lua: &Lua, only: Option<&HashSet<String>>) -> HashMap<usize, String> {
    let globals = lua.globals();
    let tables: Vec<(String, Table)> = LIBRARY_TABLES
        .iter()
        .filter(|name| only.is_none_or(|o| o.contains(**name)))
        .filter_map(|name| match globals.raw_get::<LV>(*name) {
            Ok(LV::Table(t)) => Some((name.to_string(), t)),
            _ => None,
        })
        .collect();
    let map = tables
        .iter()
        .map(|(name, t)| (t.to_pointer() as usize, name.clone()))
        .collect();
    keep_alive(
        lua,
        "sloth.capture.library_tables",
        tables.into_iter().map(|(_, t)| LV::Table(t)),
    );
    map
}

/// Keep the values a pointer map names alive for as long as the state: a builtin the
/// script drops (`json = nil`) must never be collected, or a table of the script's
/// could be made at its address and travel as that builtin.
fn keep_alive(lua: &Lua, key: &str, values: impl Iterator<Item = LV>) {
    if let Ok(t) = lua.create_sequence_from(values) {
        let _ = lua.set_named_registry_value(key, t);
    }
}

/// The builtins of the state (pointer -> dotted name) and its global names.
fn scan(lua: &Lua, only: Option<&HashSet<String>>) -> (HashMap<usize, String>, HashSet<String>) {
    let mut builtins = HashMap::default();
    let mut names = HashSet::default();
    let mut values = Vec::new();
    for pair in lua.globals().pairs::<LV, LV>() {
        let Ok((LV::String(k), v)) = pair else {
            continue;
        };
        let name = k.to_string_lossy().to_string();
        if only.is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        match &v {
            LV::Function(f) => {
                builtins.insert(f.to_pointer() as usize, name.clone());
                values.push(v.clone());
            }
            LV::Table(t) if LIBRARY_TABLES.contains(&name.as_str()) => {
                builtins.insert(t.to_pointer() as usize, name.clone());
                values.push(v.clone());
                for (fk, fv) in t.pairs::<LV, LV>().flatten() {
                    if let (LV::String(fname), LV::Function(f)) = (fk, &fv) {
                        builtins
                            .entry(f.to_pointer() as usize)
                            .or_insert_with(|| format!("{name}.{}", fname.to_string_lossy()));
                        values.push(fv);
                    }
                }
            }
            _ => {}
        }
        names.insert(name);
    }
    keep_alive(lua, "sloth.capture.builtins", values.into_iter());
    (builtins, names)
}

#[derive(Clone)]
struct DebugFns {
    getupvalue: Function,
    setupvalue: Function,
    upvalueid: Function,
    upvaluejoin: Function,
}

/// The state's `debug.getupvalue`/`setupvalue`/`upvalueid`/`upvaluejoin`, as they
/// were when first needed (scripts cannot swap them under the codec). Never call it
/// while holding the [`CaptureCtx`]: it may load the `debug` library.
fn debug_fns(lua: &Lua) -> mlua::Result<DebugFns> {
    let missing = || mlua::Error::runtime("capture context not installed");
    if let Some(d) = lua
        .app_data_ref::<CaptureCtx>()
        .ok_or_else(missing)?
        .debug
        .get()
    {
        return Ok(d.clone());
    }
    let debug: Table = match lua.globals().raw_get::<LV>("debug")? {
        LV::Table(t) => t,
        // A task state whose `debug` library is not loaded yet (loaded on first use).
        LV::Nil => crate::executor::open_debug(lua)?,
        _ => {
            return Err(mlua::Error::runtime(
                "the global 'debug' is not the debug library",
            ))
        }
    };
    let d = DebugFns {
        getupvalue: debug.raw_get("getupvalue")?,
        setupvalue: debug.raw_get("setupvalue")?,
        upvalueid: debug.raw_get("upvalueid")?,
        upvaluejoin: debug.raw_get("upvaluejoin")?,
    };
    let ctx = lua.app_data_ref::<CaptureCtx>().ok_or_else(missing)?;
    Ok(ctx.debug.get_or_init(|| d).clone())
}

fn make_ctx(
    builtins: std::sync::OnceLock<HashMap<usize, String>>,
    only: Option<&'static HashSet<String>>,
    baseline: HashSet<String>,
    backend: Arc<dyn SharedBackend>,
) -> CaptureCtx {
    CaptureCtx {
        builtins,
        library_tables: std::sync::OnceLock::new(),
        only,
        debug: std::sync::OnceLock::new(),
        baseline,
        backend,
    }
}

/// Record the state's builtins, its baseline globals and the debug accessors. Call
/// once the state's modules are installed and before any user code runs (the main
/// script's state). The state must have the `debug` library.
pub fn install(lua: &Lua, backend: Arc<dyn SharedBackend>) -> mlua::Result<()> {
    let (builtins, mut baseline) = scan(lua, None);
    // The host description is set per task; never treat it as a script global.
    baseline.insert("host".to_string());
    baseline.insert("_G".to_string());
    let cell = std::sync::OnceLock::new();
    let _ = cell.set(builtins);
    let ctx = make_ctx(cell, None, baseline, backend);
    // Taken now too, before the script could replace a library.
    let _ = ctx.library_tables.set(library_tables_of(lua, None));
    lua.set_app_data(ctx);
    // Taken now, before the script runs and could replace them.
    debug_fns(lua)?;
    Ok(())
}

/// Names of a fresh task state's globals (every task state is built alike).
static TASK_STATE_NAMES: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();

/// Like [`install`] for task states, which rarely send functions or tables back:
/// the builtin map is built only when first needed, and script globals are never
/// captured from them.
pub fn install_lazy(
    lua: &Lua,
    backend: Arc<dyn SharedBackend>,
    lazy_globals: fn() -> Vec<&'static str>,
) -> mlua::Result<()> {
    let only = match TASK_STATE_NAMES.get() {
        Some(n) => n,
        None => TASK_STATE_NAMES.get_or_init(|| {
            let mut names = scan(lua, None).1;
            // What the task library builds on first use ([`crate::executor::Library`]).
            names.extend(lazy_globals().into_iter().map(str::to_string));
            names
        }),
    };
    let ctx = make_ctx(
        std::sync::OnceLock::new(),
        Some(only),
        HashSet::default(),
        backend,
    );
    lua.set_app_data(ctx);
    Ok(())
}

/// Drop the state's builtin map so that it is built again on next use (a module
/// was added to the state after the map was made).
pub fn forget_builtins(lua: &Lua) {
    // The codec never runs Lua while it holds its context, so the borrow is free; if it
    // were not, the map would only miss the new module (its functions could not be
    // sent back by name), never name a wrong one.
    if let Ok(Some(mut ctx)) = lua.try_app_data_mut::<CaptureCtx>() {
        ctx.builtins = std::sync::OnceLock::new();
        ctx.library_tables = std::sync::OnceLock::new();
    }
}

/// Point the shared objects restored from now on at `backend` (a pre-warmed
/// state is created before it knows which task it will run).
pub fn set_backend(lua: &Lua, backend: Arc<dyn SharedBackend>) {
    if let Some(mut ctx) = lua.app_data_mut::<CaptureCtx>() {
        ctx.backend = backend;
    }
}

/// Why a value could not be captured: `path` names the variable, as the user wrote it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot send {path} ({type_name}){detail}")]
pub struct CaptureError {
    pub path: String,
    pub type_name: String,
    pub detail: String,
}

impl CaptureError {
    fn new(path: &Path<'_>, type_name: &str, detail: impl Into<String>) -> Self {
        let d: String = detail.into();
        CaptureError {
            path: path.to_string(),
            type_name: type_name.to_string(),
            detail: if d.is_empty() { d } else { format!(": {d}") },
        }
    }
}

/// Where a value sits, as the user wrote it ("argument #1", "global 'config'",
/// "upvalue 'opts'.users[3]"). It is rendered only when an error names it: a capture
/// visits every entry of every table it copies, and formatting each entry's path up
/// front cost more than copying the entry.
#[derive(Clone, Copy)]
enum Path<'a> {
    /// A name given by the caller.
    Text(&'a str),
    /// `what #n`: a numbered root (an argument, a return value).
    Numbered(&'a str, usize),
    /// `global 'name'`.
    Global(&'a str),
    /// The value under `key` in the table at the first path.
    Entry(&'a Path<'a>, &'a LV),
    /// A key of the table at the path.
    Key(&'a Path<'a>),
    /// The upvalue `name` (or number) of the function at the path.
    Upvalue(&'a Path<'a>, &'a Option<String>, i64),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Text(t) => f.write_str(t),
            Path::Numbered(what, n) => write!(f, "{what} #{n}"),
            Path::Global(name) => write!(f, "global '{name}'"),
            Path::Entry(table, LV::String(s)) => write!(f, "{table}.{}", s.to_string_lossy()),
            Path::Entry(table, LV::Integer(i)) => write!(f, "{table}[{i}]"),
            Path::Entry(table, _) => write!(f, "{table}[key]"),
            Path::Key(table) => write!(f, "{table} key"),
            Path::Upvalue(function, name, i) => {
                // The task's own function is named by its upvalues alone.
                let nested = !matches!(function, Path::Text(UPVALUE));
                if nested {
                    write!(f, "{function} (")?;
                }
                match name {
                    Some(name) => write!(f, "upvalue '{name}'")?,
                    None => write!(f, "upvalue '#{i}'")?,
                }
                if nested {
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

/// The path of a task's own function: its upvalues are named `upvalue 'x'`.
const UPVALUE: &str = "upvalue";

/// Builds one [`Graph`] from any number of roots, sharing identity between them.
pub struct Encoder<'l> {
    lua: &'l Lua,
    globals_ptr: usize,
    tables: HashMap<usize, u32>,
    functions: HashMap<usize, u32>,
    protos: HashMap<Vec<u8>, u32>,
    cells: HashMap<usize, u32>,
    graph: Graph,
    depth: usize,
    /// Data mode ([`encode_data`]): functions, builtins and `_ENV` are refused.
    data_only: bool,
    /// Tables and table entries so far: the receiver decodes at most
    /// [`sloth_proto::graph::MAX_DECODED_ELEMENTS`], so refuse here with the value's path.
    elements: usize,
    /// Work done, for the long-work hooks (`context::LongWork`).
    meter: crate::context::WorkMeter,
}

/// A point to roll an [`Encoder`] back to (see `Encoder::mark`).
struct Mark {
    tables: usize,
    functions: usize,
    protos: usize,
    cells: usize,
    elements: usize,
}

/// What a value that is not data gets told in data mode.
const DATA_ONLY: &str =
    "results, channel messages and call arguments carry data only (no functions)";

impl<'l> Encoder<'l> {
    pub fn new(lua: &'l Lua) -> Self {
        Encoder {
            data_only: false,
            elements: 0,
            meter: Default::default(),
            lua,
            globals_ptr: lua.globals().to_pointer() as usize,
            tables: HashMap::default(),
            functions: HashMap::default(),
            protos: HashMap::default(),
            cells: HashMap::default(),
            graph: Graph::default(),
            depth: 0,
        }
    }

    /// Add a root value; `path` names it in errors ("argument #1", "return value #2").
    pub fn push_root(&mut self, v: &LV, path: &str) -> Result<(), CaptureError> {
        let enc = self.encode(v, &Path::Text(path))?;
        self.graph.roots.push(enc);
        Ok(())
    }

    /// Add a function root; errors name its upvalues as `upvalue 'x'`.
    pub fn push_function_root(&mut self, f: &Function) -> Result<(), CaptureError> {
        let enc = self.encode_function(f, &Path::Text(UPVALUE))?;
        self.graph.roots.push(enc);
        Ok(())
    }

    /// Copy the globals the script defined (anything not present before it ran).
    /// Values that cannot be sent are recorded, not fatal: reading one inside the
    /// task raises an error that says why.
    pub fn push_script_globals(&mut self) -> Result<(), CaptureError> {
        let globals = self.lua.globals();
        let names = {
            let ctx = ctx(self.lua)?;
            script_global_names(self.lua, &ctx)
                .map_err(|e| CaptureError::new(&Path::Text("globals"), "table", e.to_string()))?
        };
        for name in names {
            let v: LV = globals.raw_get(name.as_str()).unwrap_or(LV::Nil);
            if v.is_nil() {
                continue;
            }
            // A failed global must not leave half-registered tables behind: what it
            // registered is taken back out. Nothing is copied for the common case, a
            // global that encodes (a copy of the identity maps per global and per task
            // grew with the number of the script's global functions).
            let depth = self.depth;
            let mark = self.mark();
            match self.encode(&v, &Path::Global(&name)) {
                Ok(enc) => self.graph.globals.push((name, enc)),
                Err(e) => {
                    self.depth = depth;
                    self.roll_back(mark);
                    self.graph.unsendable_globals.push(Unsendable {
                        name,
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Graph {
        self.graph
    }

    /// How much is registered so far: every index in the identity maps is below it
    /// (tables, functions and prototypes index the graph's lists, cells count up).
    fn mark(&self) -> Mark {
        Mark {
            tables: self.graph.tables.len(),
            functions: self.graph.functions.len(),
            protos: self.graph.protos.len(),
            cells: self.cells.len(),
            elements: self.elements,
        }
    }

    /// Forget everything registered since `mark`.
    fn roll_back(&mut self, mark: Mark) {
        fn below<K>(n: usize) -> impl FnMut(&K, &mut u32) -> bool {
            move |_, idx| (*idx as usize) < n
        }
        self.tables.retain(below(mark.tables));
        self.functions.retain(below(mark.functions));
        self.protos.retain(below(mark.protos));
        self.cells.retain(below(mark.cells));
        self.graph.tables.truncate(mark.tables);
        self.graph.functions.truncate(mark.functions);
        self.graph.protos.truncate(mark.protos);
        self.elements = mark.elements;
    }

    fn encode(&mut self, v: &LV, path: &Path<'_>) -> Result<Value, CaptureError> {
        Ok(match v {
            LV::Nil => Value::Nil,
            LV::Boolean(b) => Value::Bool(*b),
            LV::Integer(i) => Value::Int(*i),
            LV::Number(n) => Value::Float(*n),
            LV::String(s) => {
                let bytes = s.as_bytes().to_vec();
                self.meter.add(bytes.len());
                Value::Str(bytes)
            }
            LV::LightUserData(p) if p.0.is_null() => Value::Nil,
            LV::Table(t) => self.encode_table(t, path)?,
            LV::Function(f) => self.encode_function(f, path)?,
            LV::UserData(ud) => match ud.borrow::<SharedObj>() {
                Ok(obj) => Value::Shared(obj.to_graph_ref()),
                Err(_) => return Err(CaptureError::new(path, "userdata", "")),
            },
            LV::Error(e) => Value::Str(e.to_string().into_bytes()),
            LV::Thread(_) => return Err(CaptureError::new(path, "coroutine", "")),
            other => return Err(CaptureError::new(path, other.type_name(), "")),
        })
    }

    fn enter(&mut self, path: &Path<'_>, type_name: &str) -> Result<(), CaptureError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CaptureError::new(
                path,
                type_name,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn encode_table(&mut self, t: &Table, path: &Path<'_>) -> Result<Value, CaptureError> {
        let ptr = t.to_pointer() as usize;
        if ptr == self.globals_ptr {
            if self.data_only {
                return Err(CaptureError::new(
                    path,
                    "table",
                    format!("the globals table: {DATA_ONLY}"),
                ));
            }
            return Ok(Value::Env);
        }
        if let Some(name) = ctx(self.lua)?.library_tables(self.lua).get(&ptr) {
            if self.data_only {
                return Err(CaptureError::new(
                    path,
                    "table",
                    format!("the library '{name}': {DATA_ONLY}"),
                ));
            }
            return Ok(Value::Builtin(name.clone()));
        }
        if let Some(idx) = self.tables.get(&ptr) {
            return Ok(Value::Table(*idx));
        }
        self.enter(path, "table")?;
        let idx = self.graph.tables.len() as u32;
        self.tables.insert(ptr, idx);
        self.graph.tables.push(TableDef::default());
        let room = sloth_proto::graph::MAX_DECODED_ELEMENTS.saturating_sub(self.elements);
        let walked = plain_entries(self.lua, t, room)
            .map_err(|e| CaptureError::new(path, "table", e.to_string()))?;
        let mut entries = Vec::new();
        match walked {
            Walk::TooMany => return Err(too_many(path)),
            Walk::Plain(walked) => {
                entries.reserve_exact(walked.len());
                for (ek, ev) in walked {
                    self.count_element(path)?;
                    self.meter
                        .add(str_len(&ek) + ev.as_ref().map_or(0, str_len));
                    let ev = match ev {
                        Some(ev) => ev,
                        None => {
                            let k = plain_key(self.lua, &ek)
                                .map_err(|e| CaptureError::new(path, "table", e.to_string()))?;
                            let v: LV = t
                                .raw_get(&k)
                                .map_err(|e| CaptureError::new(path, "table", e.to_string()))?;
                            self.encode(&v, &Path::Entry(path, &k))?
                        }
                    };
                    entries.push((ek, ev));
                }
            }
            // A key that is not plain data (a table, a function): walk through mlua.
            Walk::KeysNotPlain => {
                for pair in t.clone().pairs::<LV, LV>() {
                    let (k, v) =
                        pair.map_err(|e| CaptureError::new(path, "table", e.to_string()))?;
                    self.count_element(path)?;
                    let ek = self.encode(&k, &Path::Key(path))?;
                    let ev = self.encode(&v, &Path::Entry(path, &k))?;
                    entries.push((ek, ev));
                }
            }
        }
        self.graph.tables[idx as usize].entries = entries;
        self.depth -= 1;
        Ok(Value::Table(idx))
    }

    /// Count one more table entry: the receiver decodes at most
    /// [`sloth_proto::graph::MAX_DECODED_ELEMENTS`].
    fn count_element(&mut self, path: &Path<'_>) -> Result<(), CaptureError> {
        self.elements += 1;
        if self.elements > sloth_proto::graph::MAX_DECODED_ELEMENTS {
            return Err(too_many(path));
        }
        Ok(())
    }

    fn encode_function(&mut self, f: &Function, path: &Path<'_>) -> Result<Value, CaptureError> {
        if self.data_only {
            return Err(CaptureError::new(path, "function", DATA_ONLY));
        }
        let ptr = f.to_pointer() as usize;
        if let Some(name) = ctx(self.lua)?.builtins(self.lua).get(&ptr) {
            return Ok(Value::Builtin(name.clone()));
        }
        if let Some(idx) = self.functions.get(&ptr) {
            return Ok(Value::Function(*idx));
        }
        let info = f.info();
        if info.what == "C" {
            return Err(CaptureError::new(
                path,
                "C function",
                "only Lua functions and standard or sloth-module functions can be sent",
            ));
        }
        let DebugFns {
            getupvalue,
            upvalueid,
            ..
        } = debug_fns(self.lua).map_err(|e| CaptureError::new(path, "function", e.to_string()))?;
        self.enter(path, "function")?;
        let bytecode = f.dump(false);
        let next_proto = self.protos.len() as u32;
        let proto = match self.protos.get(&bytecode) {
            Some(p) => *p,
            None => {
                self.protos.insert(bytecode.clone(), next_proto);
                self.graph.protos.push(bytecode);
                next_proto
            }
        };
        let idx = self.graph.functions.len() as u32;
        self.functions.insert(ptr, idx);
        self.graph.functions.push(FunctionDef {
            proto,
            upvalues: Vec::new(),
        });
        let mut upvalues = Vec::with_capacity(info.num_upvalues as usize);
        for i in 1..=info.num_upvalues as i64 {
            let (name, value): (Option<String>, LV) = getupvalue
                .call((f.clone(), i))
                .map_err(|e| CaptureError::new(path, "function", e.to_string()))?;
            let id: LV = upvalueid
                .call((f.clone(), i))
                .map_err(|e| CaptureError::new(path, "function", e.to_string()))?;
            let id_ptr = id.to_pointer() as usize;
            let next_cell = self.cells.len() as u32;
            let cell = *self.cells.entry(id_ptr).or_insert(next_cell);
            let value = if name.as_deref() == Some("_ENV") {
                match &value {
                    LV::Table(t) if t.to_pointer() as usize == self.globals_ptr => Value::Env,
                    other => self.encode(other, &Path::Text("upvalue '_ENV'"))?,
                }
            } else {
                self.encode(&value, &Path::Upvalue(path, &name, i))?
            };
            upvalues.push(Upvalue { value, cell });
        }
        self.graph.functions[idx as usize].upvalues = upvalues;
        self.depth -= 1;
        Ok(Value::Function(idx))
    }
}

/// Names of the globals that are not builtins of the state, in table order. This runs
/// before every capture from the main state, which has some fifty builtin globals, so
/// it walks the table with the C API and looks at keys only: no value is converted and
/// nothing is allocated for a builtin.
fn script_global_names(lua: &Lua, ctx: &CaptureCtx) -> mlua::Result<Vec<String>> {
    use mlua::ffi;
    let is_builtin = |name: &str| {
        ctx.baseline.contains(name)
            || ctx.only.is_some_and(|o| o.contains(name))
            || name == "host"
            || name == "_G"
    };
    let mut names = Vec::new();
    // SAFETY: the closure keeps the stack balanced, only reads string keys (so
    // lua_tolstring never converts a key in place, which would break lua_next) and
    // does not modify the table while walking it.
    unsafe {
        lua.exec_raw::<()>((), |l| {
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, ffi::LUA_RIDX_GLOBALS);
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, -2) != 0 {
                if ffi::lua_type(l, -2) == ffi::LUA_TSTRING {
                    let mut len = 0usize;
                    let p = ffi::lua_tolstring(l, -2, &mut len);
                    if !p.is_null() {
                        let bytes = std::slice::from_raw_parts(p as *const u8, len);
                        let name = String::from_utf8_lossy(bytes);
                        if !is_builtin(&name) {
                            names.push(name.into_owned());
                        }
                    }
                }
                ffi::lua_pop(l, 1);
            }
            ffi::lua_pop(l, 1);
        })?
    };
    Ok(names)
}

/// Why a value has more entries than a receiver decodes.
fn too_many(path: &Path<'_>) -> CaptureError {
    CaptureError::new(
        path,
        "table",
        format!(
            "more than {} table entries in one value",
            sloth_proto::graph::MAX_DECODED_ELEMENTS
        ),
    )
}

/// A table entry [`plain_entries`] read: the key, and the value unless it is not plain
/// data.
type PlainEntry = (Value, Option<Value>);

/// What [`plain_entries`] found.
enum Walk {
    /// Every key is plain data.
    Plain(Vec<PlainEntry>),
    /// A key is not (a table, a function, userdata): walk through mlua instead.
    KeysNotPlain,
    /// More entries than there is room for: nothing more is copied.
    TooMany,
}

/// The entries of `t` in one walk with the C API, without a handle per key and value
/// (through mlua's `pairs`, those handles cost more than the copy itself). Keys and
/// values that are plain data (nil, booleans, numbers, strings) come back encoded; a
/// value that is not (a table, a function, userdata) comes back as `None`, for the
/// caller to read by its key and encode. Copies at most `room` entries.
fn plain_entries(lua: &Lua, t: &Table, room: usize) -> mlua::Result<Walk> {
    use mlua::ffi;
    /// The value at `idx` if it is plain data.
    ///
    /// SAFETY: `idx` is a valid index of `l`'s stack.
    unsafe fn plain(l: *mut ffi::lua_State, idx: std::ffi::c_int) -> Option<Value> {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL => Some(Value::Nil),
            ffi::LUA_TBOOLEAN => Some(Value::Bool(ffi::lua_toboolean(l, idx) != 0)),
            ffi::LUA_TNUMBER => Some(if ffi::lua_isinteger(l, idx) != 0 {
                Value::Int(ffi::lua_tointeger(l, idx))
            } else {
                Value::Float(ffi::lua_tonumber(l, idx))
            }),
            ffi::LUA_TSTRING => {
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, idx, &mut len);
                if p.is_null() {
                    return None;
                }
                Some(Value::Str(
                    std::slice::from_raw_parts(p as *const u8, len).to_vec(),
                ))
            }
            ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(l, idx).is_null() => Some(Value::Nil),
            _ => None,
        }
    }
    let mut entries = Vec::new();
    let mut plain_keys = true;
    let mut too_many = false;
    // SAFETY: the table is the closure's only argument (index 1); the walk keeps the
    // stack balanced (key and value above it, the value popped each round), converts
    // only values already of type string with lua_tolstring (so no key is converted in
    // place, which would break lua_next), and never modifies the table. Nothing in it
    // raises a Lua error, so no Rust frame is skipped.
    unsafe {
        lua.exec_raw::<()>(t, |l| {
            if ffi::lua_checkstack(l, 3) == 0 {
                plain_keys = false;
                return;
            }
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, 1) != 0 {
                if entries.len() >= room {
                    too_many = true;
                    ffi::lua_pop(l, 2);
                    return;
                }
                // A light userdata key (mlua's NULL among them) stays a key of its own:
                // `pairs` encodes it.
                let key = match ffi::lua_type(l, -2) {
                    ffi::LUA_TLIGHTUSERDATA => None,
                    _ => plain(l, -2),
                };
                let Some(k) = key else {
                    plain_keys = false;
                    ffi::lua_pop(l, 2);
                    return;
                };
                entries.push((k, plain(l, -1)));
                ffi::lua_pop(l, 1);
            }
        })?
    };
    Ok(if too_many {
        Walk::TooMany
    } else if plain_keys {
        Walk::Plain(entries)
    } else {
        Walk::KeysNotPlain
    })
}

/// A key [`plain_entries`] returned, as a Lua value again.
fn plain_key(lua: &Lua, k: &Value) -> mlua::Result<LV> {
    Ok(match k {
        Value::Bool(b) => LV::Boolean(*b),
        Value::Int(i) => LV::Integer(*i),
        Value::Float(f) => LV::Number(*f),
        Value::Str(s) => LV::String(lua.create_string(s)?),
        _ => LV::Nil,
    })
}

fn ctx(lua: &Lua) -> Result<mlua::AppDataRef<'_, CaptureCtx>, CaptureError> {
    lua.app_data_ref::<CaptureCtx>().ok_or_else(|| {
        CaptureError::new(
            &Path::Text("value"),
            "state",
            "internal: capture context not installed in this Lua state",
        )
    })
}

/// Encode a list of values (arguments, results, a channel message) as [`Data`]:
/// functions, library tables and the globals table are refused with the path of
/// the value (`cannot send return value #1 (function): ...`).
pub fn encode_data(lua: &Lua, values: &[LV], what: &str) -> Result<Data, CaptureError> {
    let mut enc = Encoder::new(lua);
    enc.data_only = true;
    for (i, v) in values.iter().enumerate() {
        let enc_v = enc.encode(v, &Path::Numbered(what, i + 1))?;
        enc.graph.roots.push(enc_v);
    }
    Data::check(enc.finish(), Refs::Any)
        .map_err(|e| CaptureError::new(&Path::Text(what), "value", e.to_string()))
}

/// Restore a task into its own state, binding `_ENV` to `env`; returns the roots in
/// order (the function, then its arguments). Loads the task's bytecode, and sets the
/// script globals carried by the graph in `env`.
pub fn restore_task(state: &TaskState, graph: &Graph, env: &Table) -> mlua::Result<Vec<LV>> {
    let lua: &Lua = state;
    graph.validate().map_err(mlua::Error::runtime)?;
    let backend = lua
        .app_data_ref::<CaptureCtx>()
        .ok_or_else(|| mlua::Error::runtime("capture context not installed"))?
        .backend
        .clone();
    let debug = if graph.functions.iter().any(|f| !f.upvalues.is_empty()) {
        Some(debug_fns(lua)?)
    } else {
        None
    };
    let tables: Vec<Table> = (0..graph.tables.len())
        .map(|_| lua.create_table())
        .collect::<mlua::Result<_>>()?;
    let mut functions = Vec::with_capacity(graph.functions.len());
    for f in &graph.functions {
        let code = &graph.protos[f.proto as usize];
        let func = lua
            .load(code.as_slice())
            .set_mode(mlua::chunk::ChunkMode::Binary)
            .into_function()?;
        // Lua trusts a binary chunk's upvalue counts: the closure gets as many cells as
        // its header says, the debug library indexes by the prototype's own count, and a
        // chunk where they differ would make setupvalue read past the closure. Set only
        // cells the closure has (found by the fuzzer: shared/fuzz/regressions/).
        let cells = func.info().num_upvalues as usize;
        if f.upvalues.len() > cells {
            return Err(mlua::Error::runtime(format!(
                "a function of the task has {cells} upvalues, the task sets {}",
                f.upvalues.len()
            )));
        }
        functions.push(func);
    }
    let r = Restorer {
        lua,
        env: Some(env),
        tables: &tables,
        functions: &functions,
        backend,
    };
    r.fill_tables(graph)?;
    let mut cells: std::collections::HashMap<u32, (usize, usize)> =
        std::collections::HashMap::new();
    if let Some(DebugFns {
        setupvalue,
        upvaluejoin,
        ..
    }) = &debug
    {
        for (fi, def) in graph.functions.iter().enumerate() {
            for (ui, up) in def.upvalues.iter().enumerate() {
                let n = ui + 1;
                if let Some(&(ofi, on)) = cells.get(&up.cell) {
                    upvaluejoin.call::<()>((
                        functions[fi].clone(),
                        n,
                        functions[ofi].clone(),
                        on,
                    ))?;
                } else {
                    cells.insert(up.cell, (fi, n));
                    setupvalue.call::<LV>((functions[fi].clone(), n, r.value(&up.value)?))?;
                }
            }
        }
    }
    for (name, v) in &graph.globals {
        env.raw_set(name.as_str(), r.value(v)?)?;
    }
    if !graph.unsendable_globals.is_empty() {
        let reasons = lua.create_table()?;
        for u in &graph.unsendable_globals {
            reasons.raw_set(u.name.as_str(), u.reason.as_str())?;
        }
        let mt = match env.metatable() {
            Some(mt) => mt,
            None => lua.create_table()?,
        };
        let prev_index: LV = mt.raw_get("__index")?;
        let index = lua.create_function(move |_, (t, key): (Table, LV)| {
            if let LV::String(k) = &key {
                if let Ok(Some(reason)) = reasons.raw_get::<Option<String>>(k.clone()) {
                    return Err(mlua::Error::runtime(format!(
                        "this task could not receive the script's global: {reason}"
                    )));
                }
            }
            match &prev_index {
                LV::Table(p) => p.get::<LV>(key),
                LV::Function(f) => f.call::<LV>((t, key)),
                _ => Ok(LV::Nil),
            }
        })?;
        mt.raw_set("__index", index)?;
        env.set_metatable(Some(mt))?;
    }
    graph.roots.iter().map(|v| r.value(v)).collect()
}

/// The bytes of a string value (0 for others): what the long-work meter weighs.
fn str_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        _ => 0,
    }
}

/// Whether restoring `graph` is long work (see `context::LongWork`): as many units as
/// [`crate::context::CHECK_EVERY`], counted as [`crate::context::WorkMeter`] does.
fn restoring_is_long(graph: &Graph) -> bool {
    let mut units = graph
        .roots
        .iter()
        .map(|v| 1 + str_len(v) / 64)
        .sum::<usize>();
    for t in &graph.tables {
        for (k, v) in &t.entries {
            units += 1 + (str_len(k) + str_len(v)) / 64;
            if units >= crate::context::CHECK_EVERY {
                return true;
            }
        }
    }
    units >= crate::context::CHECK_EVERY
}

/// Restore data (results, messages, call arguments and results, host vars) into any
/// state. No bytecode is loaded and the state's globals are never read or written:
/// [`Data`] carries no function, builtin, `_ENV` or global.
pub fn restore_data(lua: &Lua, data: &Data) -> mlua::Result<Vec<LV>> {
    let graph = data.graph();
    if restoring_is_long(graph) {
        crate::context::long_work_ahead();
    }
    let backend = lua
        .app_data_ref::<CaptureCtx>()
        .ok_or_else(|| mlua::Error::runtime("capture context not installed"))?
        .backend
        .clone();
    let tables: Vec<Table> = (0..graph.tables.len())
        .map(|_| lua.create_table())
        .collect::<mlua::Result<_>>()?;
    let r = Restorer {
        lua,
        env: None,
        tables: &tables,
        functions: &[],
        backend,
    };
    r.fill_tables(graph)?;
    graph.roots.iter().map(|v| r.value(v)).collect()
}

struct Restorer<'a> {
    lua: &'a Lua,
    /// The task's globals; `None` when restoring data, which never names them.
    env: Option<&'a Table>,
    tables: &'a [Table],
    functions: &'a [Function],
    backend: Arc<dyn SharedBackend>,
}

impl Restorer<'_> {
    /// Set every table's entries. Plain keys and values (nil, booleans, numbers,
    /// strings) are pushed with the C API, without a handle each (through mlua's
    /// `raw_set`, those handles cost more than the entries themselves); the others
    /// (tables, functions, builtins, shared objects) are made here and handed over as
    /// arguments, for at most `ENTRIES_PER_CALL` entries (twice as many values) at a
    /// time, well inside the Lua stack.
    fn fill_tables(&self, graph: &Graph) -> mlua::Result<()> {
        use mlua::ffi;
        const ENTRIES_PER_CALL: usize = 128;
        fn is_plain(v: &Value) -> bool {
            matches!(
                v,
                Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Str(_)
            )
        }
        /// Push a plain value.
        ///
        /// SAFETY: `l` has room for one more value; `v` is plain (see `is_plain`).
        unsafe fn push_plain(l: *mut ffi::lua_State, v: &Value) {
            match v {
                Value::Bool(b) => ffi::lua_pushboolean(l, *b as std::ffi::c_int),
                Value::Int(i) => ffi::lua_pushinteger(l, *i),
                Value::Float(f) => ffi::lua_pushnumber(l, *f),
                Value::Str(s) => {
                    ffi::lua_pushlstring(l, s.as_ptr() as *const std::ffi::c_char, s.len());
                }
                _ => ffi::lua_pushnil(l),
            }
        }
        for (def, t) in graph.tables.iter().zip(self.tables) {
            // A nil or NaN key cannot be set (Lua would raise): skipped, as before.
            let entries: Vec<&(Value, Value)> = def
                .entries
                .iter()
                .filter(|(k, _)| {
                    !matches!(k, Value::Nil) && !matches!(k, Value::Float(f) if f.is_nan())
                })
                .collect();
            for chunk in entries.chunks(ENTRIES_PER_CALL) {
                let mut refs = Vec::new();
                for (k, v) in chunk {
                    for x in [k, v] {
                        if !is_plain(x) {
                            refs.push(self.value(x)?);
                        }
                    }
                }
                // SAFETY: the arguments are the table (index 1) and `refs` (from index
                // 2, in the order the loop below meets them); each round pushes a key
                // and a value and lua_rawset pops both. A Lua error (out of memory,
                // under the task's memory limit) unwinds through this closure, whose
                // frame holds nothing that needs dropping (no iterator by value).
                unsafe {
                    self.lua
                        .exec_raw::<()>((t, mlua::MultiValue::from_vec(refs)), |l| {
                            let mut next_ref: std::ffi::c_int = 2;
                            for (k, v) in chunk {
                                let mut push = |x: &Value| {
                                    if is_plain(x) {
                                        push_plain(l, x);
                                    } else {
                                        ffi::lua_pushvalue(l, next_ref);
                                        next_ref += 1;
                                    }
                                };
                                push(k);
                                push(v);
                                ffi::lua_rawset(l, 1);
                            }
                        })?;
                }
            }
        }
        Ok(())
    }

    fn value(&self, v: &Value) -> mlua::Result<LV> {
        let not_data = || mlua::Error::runtime("internal: code or globals in data");
        Ok(match v {
            Value::Nil => LV::Nil,
            Value::Bool(b) => LV::Boolean(*b),
            Value::Int(i) => LV::Integer(*i),
            Value::Float(f) => LV::Number(*f),
            Value::Str(s) => LV::String(self.lua.create_string(s)?),
            Value::Table(i) => LV::Table(
                self.tables
                    .get(*i as usize)
                    .ok_or_else(|| mlua::Error::runtime("table index out of range"))?
                    .clone(),
            ),
            Value::Function(i) => LV::Function(
                self.functions
                    .get(*i as usize)
                    .ok_or_else(not_data)?
                    .clone(),
            ),
            Value::Env => LV::Table(self.env.ok_or_else(not_data)?.clone()),
            Value::Builtin(name) => resolve_builtin(self.env.ok_or_else(not_data)?, name)?,
            Value::Shared(r) => LV::UserData(
                self.lua
                    .create_userdata(SharedObj::new(*r, self.backend.clone()))?,
            ),
        })
    }
}

fn resolve_builtin(env: &Table, name: &str) -> mlua::Result<LV> {
    let mut parts = name.split('.');
    // The first step may build a module a task state loads lazily (it honours the
    // globals' `__index`); the rest are plain fields of library tables.
    let mut cur = match parts.next() {
        Some(first) => env.get::<LV>(first)?,
        None => LV::Nil,
    };
    for part in parts {
        cur = match cur {
            LV::Table(t) => t.raw_get(part)?,
            _ => LV::Nil,
        };
    }
    if cur.is_nil() {
        return Err(mlua::Error::runtime(format!(
            "'{name}' is not available here (it exists only in the master's main script)"
        )));
    }
    Ok(cur)
}
