//! Objects passed by reference (handles, channels, wait groups, locks, atomics,
//! artifacts). Every Lua state sees them as one userdata type, [`SharedObj`], whose
//! methods go to a [`SharedBackend`]: the master's registry for the main script and
//! local tasks, a proxy over the task's QUIC stream on an agent.

use std::sync::Arc;

use mlua::{Lua, MultiValue, UserData, UserDataFields, UserDataMethods, Value as LV};

use crate::capture;
use sloth_proto::data::Data;
use sloth_proto::graph::{SharedKind, SharedRef};

/// Where calls on shared objects go. Calls block the calling (task) thread and must
/// return early when that task is stopped.
pub trait SharedBackend: Send + Sync {
    /// `Ok`: the method's return values; `Err`: raised as a Lua error in the caller.
    fn call(&self, obj: SharedRef, method: &str, args: Data) -> Result<Data, String>;

    /// A [`SharedObj`] for `obj` was made in a state of this backend.
    fn retain(&self, _obj: SharedRef) {}

    /// A [`SharedObj`] for `obj` was dropped (collected by its state's GC).
    fn release(&self, _obj: SharedRef) {}

    /// `obj` was copied into a graph (a task, a message, a result): from now on it can
    /// be named where this process cannot count it.
    fn pin(&self, _obj: SharedRef) {}
}

/// A backend for states that have no master to talk to.
pub struct NoBackend;

impl SharedBackend for NoBackend {
    fn call(&self, obj: SharedRef, method: &str, _args: Data) -> Result<Data, String> {
        Err(format!(
            "{}:{method}(): shared objects are not available in this state",
            obj.kind.type_name()
        ))
    }
}

pub struct SharedObj {
    pub r: SharedRef,
    backend: Arc<dyn SharedBackend>,
}

impl SharedObj {
    pub fn new(r: SharedRef, backend: Arc<dyn SharedBackend>) -> Self {
        backend.retain(r);
        SharedObj { r, backend }
    }

    /// Where this object's calls go (the registry on the master, the task's stream
    /// on an agent).
    pub fn backend(&self) -> &dyn SharedBackend {
        self.backend.as_ref()
    }

    /// The reference, for copying into a graph (which pins the object).
    pub fn to_graph_ref(&self) -> SharedRef {
        self.backend.pin(self.r);
        self.r
    }

    fn invoke(&self, lua: &Lua, method: &str, args: MultiValue) -> mlua::Result<MultiValue> {
        let args: Vec<LV> = args.into_iter().collect();
        let graph = capture::encode_data(lua, &args, &format!("{method} argument"))
            .map_err(|e| mlua::Error::runtime(format!("{}:{method}: {e}", self.name())))?;
        let out = self
            .backend
            .call(self.r, method, graph)
            .map_err(mlua::Error::runtime)?;
        Ok(MultiValue::from_iter(capture::restore_data(lua, &out)?))
    }

    fn name(&self) -> &'static str {
        self.r.kind.type_name()
    }
}

impl Drop for SharedObj {
    fn drop(&mut self) {
        self.backend.release(self.r);
    }
}

impl UserData for SharedObj {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, this| Ok(this.r.id as i64));
        fields.add_field_method_get("kind", |_, this| Ok(this.name()));
        fields.add_field_method_get("host", |lua, this| {
            if this.r.kind != SharedKind::Handle {
                return Ok(LV::Nil);
            }
            let out = this.invoke(lua, "host", MultiValue::new())?;
            Ok(out.into_iter().next().unwrap_or(LV::Nil))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // Methods are looked up through `__index` in a per-state table of Lua wrappers
        // (see [`install_methods`]), so that their errors reach scripts as plain strings.
        methods.add_meta_method(mlua::MetaMethod::Index, |lua, _this, key: LV| {
            method_table(lua)?.raw_get::<LV>(key)
        });
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| {
            Ok(match this.r.kind {
                SharedKind::Handle => this.r.id.to_string(),
                _ => format!("{}#{}", this.name(), this.r.id),
            })
        });
        methods.add_meta_method(mlua::MetaMethod::Eq, |_, this, other: mlua::AnyUserData| {
            Ok(other
                .borrow::<SharedObj>()
                .map(|o| o.r == this.r)
                .unwrap_or(false))
        });
    }
}

const METHODS_KEY: &str = "sloth.shared_methods";

/// Every method name a shared object may answer.
fn all_method_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for kind in SharedKind::ALL {
        for &n in kind.methods() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.extend(["range", "run", "do", "save"]);
    names
}

/// Install the method table shared objects use in this state (every state that may
/// hold them: the main script's and every task's).
fn install_methods(lua: &Lua) -> mlua::Result<mlua::Table> {
    let protect = crate::protect::protector(lua)?;
    let table = lua.create_table()?;
    for name in all_method_names() {
        let raw =
            lua.create_function(move |lua, (ud, args): (mlua::AnyUserData, MultiValue)| {
                let this = {
                    let t = ud.borrow::<SharedObj>()?;
                    SharedObj::new(t.r, t.backend.clone())
                };
                call_method(lua, &this, name, args)
            })?;
        table.raw_set(
            name,
            protect.call::<mlua::Function>((raw, format!(":{name}")))?,
        )?;
    }
    lua.set_named_registry_value(METHODS_KEY, &table)?;
    Ok(table)
}

/// The state's table of shared-object methods, built on first use (task states build it
/// when their first shared object is used).
pub fn method_table(lua: &Lua) -> mlua::Result<mlua::Table> {
    match lua.named_registry_value::<Option<mlua::Table>>(METHODS_KEY)? {
        Some(t) => Ok(t),
        None => install_methods(lua),
    }
}

fn no_method(this: &SharedObj, name: &str) -> mlua::Error {
    mlua::Error::runtime(format!("{} has no method '{name}'", this.name()))
}

/// One method call on a shared object.
fn call_method(
    lua: &Lua,
    this: &SharedObj,
    name: &str,
    args: MultiValue,
) -> mlua::Result<MultiValue> {
    let mut args = args.into_iter();
    match (name, this.r.kind) {
        // `ch:range(fn)`: receive until the channel is closed and drained.
        ("range", SharedKind::Channel) => {
            let Some(LV::Function(f)) = args.next() else {
                return Err(mlua::Error::runtime(
                    "channel:range(fn): fn must be a function",
                ));
            };
            loop {
                let out: Vec<LV> = this.invoke(lua, "receive", MultiValue::new())?.into_vec();
                if !matches!(out.get(1), Some(LV::Boolean(true))) {
                    return Ok(MultiValue::new());
                }
                let v = out.into_iter().next().unwrap_or(LV::Nil);
                let keep: LV = f.call(v)?;
                if keep == LV::Boolean(false) {
                    return Ok(MultiValue::new());
                }
            }
        }
        // `once:run(fn)` (also `once["do"](once, fn)`, the original name, a Lua
        // keyword): the first caller runs fn; the others wait until it finished.
        ("run" | "do", SharedKind::Once) => {
            let Some(LV::Function(f)) = args.next() else {
                return Err(mlua::Error::runtime("once:run(fn): fn must be a function"));
            };
            let first = this.invoke(lua, "begin", MultiValue::new())?;
            if !matches!(first.into_iter().next(), Some(LV::Boolean(true))) {
                return Ok(MultiValue::new());
            }
            let res = f.call::<MultiValue>(());
            this.invoke(lua, "finish", MultiValue::new())?;
            res
        }
        // `artifact:save(dest [, mode])`: content-addressed copy onto this host.
        ("save", SharedKind::Artifact) => {
            let dest = match args.next() {
                Some(LV::String(s)) => s.to_string_lossy().to_string(),
                _ => {
                    return Err(mlua::Error::runtime(
                        "artifact:save(dest [, mode]): dest must be a path",
                    ))
                }
            };
            let mode = args.next().unwrap_or(LV::Nil);
            crate::artifact::save(lua, this.r, this.backend.as_ref(), dest, mode)
        }
        (n, kind) if kind.methods().contains(&n) => this.invoke(lua, n, args.collect()),
        (n, _) => Err(no_method(this, n)),
    }
}
