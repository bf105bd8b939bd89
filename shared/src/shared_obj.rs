//! Objects passed by reference (handles, channels, wait groups, locks, atomics,
//! artifacts). Every Lua state sees them as one userdata type, [`SharedObj`], whose
//! methods go to a [`SharedBackend`]: the master's registry for the main script and
//! local tasks, a proxy over the task's QUIC stream on an agent.

use std::sync::Arc;

use mlua::{Lua, MultiValue, UserData, UserDataFields, UserDataMethods, Value as LV};

use crate::capture;
use crate::graph::{Graph, SharedKind, SharedRef, Value};

/// Where calls on shared objects go. Calls block the calling (task) thread and must
/// return early when that task is stopped.
pub trait SharedBackend: Send + Sync {
    /// `Ok`: the method's return values; `Err`: raised as a Lua error in the caller.
    fn call(&self, obj: SharedRef, method: &str, args: Graph) -> Result<Graph, String>;
}

/// A backend for states that have no master to talk to.
pub struct NoBackend;

impl SharedBackend for NoBackend {
    fn call(&self, obj: SharedRef, method: &str, _args: Graph) -> Result<Graph, String> {
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
        SharedObj { r, backend }
    }

    fn invoke(&self, lua: &Lua, method: &str, args: MultiValue) -> mlua::Result<MultiValue> {
        let args: Vec<LV> = args.into_iter().collect();
        let graph = capture::encode_values(lua, &args, &format!("{method} argument"))
            .map_err(|e| mlua::Error::runtime(format!("{}:{method}: {e}", self.name())))?;
        let out = self
            .backend
            .call(self.r, method, graph)
            .map_err(mlua::Error::runtime)?;
        Ok(MultiValue::from_iter(capture::restore_values(lua, &out)?))
    }

    fn name(&self) -> &'static str {
        self.r.kind.type_name()
    }
}

/// Method names each kind answers (the backend implements them).
pub fn methods_of(kind: SharedKind) -> &'static [&'static str] {
    match kind {
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

const ALL_METHODS: &[SharedKind] = &[
    SharedKind::Handle,
    SharedKind::Channel,
    SharedKind::WaitGroup,
    SharedKind::Mutex,
    SharedKind::Semaphore,
    SharedKind::Atomic,
    SharedKind::Once,
    SharedKind::Artifact,
];

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
        let mut seen = std::collections::HashSet::new();
        for kind in ALL_METHODS {
            for &name in methods_of(*kind) {
                if !seen.insert(name) {
                    continue;
                }
                methods.add_method(name, move |lua, this, args: MultiValue| {
                    if !methods_of(this.r.kind).contains(&name) {
                        return Err(mlua::Error::runtime(format!(
                            "{} has no method '{name}'",
                            this.name()
                        )));
                    }
                    this.invoke(lua, name, args)
                });
            }
        }
        // `ch:range(fn)`: receive until the channel is closed and drained.
        methods.add_method("range", |lua, this, f: mlua::Function| {
            if this.r.kind != SharedKind::Channel {
                return Err(mlua::Error::runtime(format!(
                    "{} has no method 'range'",
                    this.name()
                )));
            }
            loop {
                let out: Vec<LV> = this.invoke(lua, "receive", MultiValue::new())?.into_vec();
                let ok = matches!(out.get(1), Some(LV::Boolean(true)));
                if !ok {
                    return Ok(());
                }
                let v = out.into_iter().next().unwrap_or(LV::Nil);
                let keep: LV = f.call(v)?;
                if keep == LV::Boolean(false) {
                    return Ok(());
                }
            }
        });
        // `once:run(fn)` (also `once["do"](once, fn)`, the original name, which is a
        // Lua keyword): the first caller runs fn; the others wait until it finished.
        for name in ["run", "do"] {
            methods.add_method(name, |lua, this, f: mlua::Function| {
                if this.r.kind != SharedKind::Once {
                    return Err(mlua::Error::runtime(format!(
                        "{} has no method 'run'",
                        this.name()
                    )));
                }
                let first = this.invoke(lua, "begin", MultiValue::new())?;
                if !matches!(first.into_iter().next(), Some(LV::Boolean(true))) {
                    return Ok(MultiValue::new());
                }
                let res = f.call::<MultiValue>(());
                this.invoke(lua, "finish", MultiValue::new())?;
                res
            });
        }
        // `artifact:save(dest [, mode])`: content-addressed copy onto this host.
        methods.add_method("save", |lua, this, (dest, mode): (String, LV)| {
            if this.r.kind != SharedKind::Artifact {
                return Err(mlua::Error::runtime(format!(
                    "{} has no method 'save'",
                    this.name()
                )));
            }
            crate::artifact::save(lua, this.r, this.backend.as_ref(), dest, mode)
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

/// Convenience for backends: a result graph of plain values.
pub fn plain(values: Vec<Value>) -> Graph {
    Graph::from_roots(values)
}
