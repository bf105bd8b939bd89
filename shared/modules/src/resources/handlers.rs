//! Handlers: `handler(name, fn [, {on_failure = false}])` defines a named function in
//! the running task; a resource given `notify = name` marks it when it changed
//! something. After the task body ends, [`after_body`] runs every marked handler
//! once, in the order they were defined (a handler's own resources may mark later
//! ones). Handlers also run when the body failed, unless defined with
//! `on_failure = false`; a task that was stopped (cancelled, past its deadline)
//! runs none. In check mode a handler runs in check mode too, so its resources only
//! say what they would do, and it is reported as "would run". Each handler's
//! outcome is reported as a [`Change`] of kind [`ChangeKind::Handler`].

use mlua::{Function, Lua, MultiValue, RegistryKey, Table, Value as LV};
use parking_lot::Mutex;
use sloth_lua::context::task_ctx;
use sloth_lua::executor::error_text;
use sloth_lua::opts::{arg_error, suggest, Opts};
use sloth_proto::change::{Change, ChangeKind};

struct Handler {
    name: String,
    func: RegistryKey,
    on_failure: bool,
    notified: bool,
    ran: bool,
}

/// The handlers of the task a state runs (its app data).
#[derive(Default)]
struct Handlers(Mutex<Vec<Handler>>);

fn with<R>(lua: &Lua, f: impl FnOnce(&mut Vec<Handler>) -> R) -> R {
    if lua.app_data_ref::<Handlers>().is_none() {
        lua.set_app_data(Handlers::default());
    }
    match lua.app_data_ref::<Handlers>() {
        Some(h) => f(&mut h.0.lock()),
        None => f(&mut Vec::new()),
    }
}

/// Install the global `handler` function.
pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    // Its errors reach scripts as plain strings, like every module function's.
    let protected: mlua::Function =
        sloth_lua::protect::protector(lua)?.call((lua.create_function(define)?, "handler"))?;
    g.raw_set("handler", protected)
}

fn define(lua: &Lua, (name, func, opts): (LV, LV, Option<Table>)) -> mlua::Result<()> {
    const F: &str = "handler";
    let name = match name {
        LV::String(s) if !s.as_bytes().is_empty() => s.to_string_lossy().to_string(),
        other => {
            return Err(arg_error(
                F,
                format!(
                    "the first argument must be the handler's name (a string), got {}",
                    other.type_name()
                ),
            ))
        }
    };
    let LV::Function(func) = func else {
        return Err(arg_error(
            F,
            format!("'{name}': the second argument must be a function"),
        ));
    };
    let mut on_failure = true;
    if let Some(t) = opts {
        let mut o = Opts::new(format!("handler '{name}'"), t);
        on_failure = o.bool("on_failure")?.unwrap_or(true);
        o.finish()?;
    }
    let key = lua.create_registry_value(func)?;
    with(lua, |hs| {
        if hs.iter().any(|h| h.name == name) {
            return Err(arg_error(
                F,
                format!("'{name}' is already defined in this task"),
            ));
        }
        hs.push(Handler {
            name,
            func: key,
            on_failure,
            notified: false,
            ran: false,
        });
        Ok(())
    })
}

pub(crate) fn is_defined(lua: &Lua, name: &str) -> mlua::Result<bool> {
    Ok(with(lua, |hs| hs.iter().any(|h| h.name == name)))
}

/// ` (did you mean 'x'?)` among the defined handlers.
pub(crate) fn suggestion(lua: &Lua, name: &str) -> mlua::Result<String> {
    let names: Vec<String> = with(lua, |hs| hs.iter().map(|h| h.name.clone()).collect());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(suggest(name, &refs))
}

/// Mark `names` (each already checked to be defined).
pub(crate) fn notify(lua: &Lua, names: &[String]) -> mlua::Result<()> {
    let again = with(lua, |hs| {
        let mut again = Vec::new();
        for h in hs.iter_mut().filter(|h| names.contains(&h.name)) {
            if h.ran {
                again.push(h.name.clone());
            }
            h.notified = true;
        }
        again
    });
    // A handler runs once per task: one notified after it ran (by a later handler's
    // change) does not run again, and the task's log says so.
    if !again.is_empty() {
        let ctx = sloth_lua::context::task_ctx(lua)?;
        for name in again {
            ctx.io.log(
                sloth_proto::protocol::LogLevel::Warn,
                &format!(
                    "handler {name}: notified again after it ran; a handler runs once per task"
                ),
            );
        }
    }
    Ok(())
}

/// The next handler to run: marked, not yet run, and allowed after a failed body.
fn next(lua: &Lua, body_failed: bool) -> Option<(String, Function)> {
    let key = with(lua, |hs| {
        hs.iter_mut()
            .find(|h| h.notified && !h.ran && (h.on_failure || !body_failed))
            .map(|h| {
                h.ran = true;
                (h.name.clone(), lua.registry_value::<Function>(&h.func))
            })
    });
    match key {
        Some((name, Ok(f))) => Some((name, f)),
        _ => None,
    }
}

/// Run the notified handlers after a task's (or the main script's) body, and give
/// the final result: the body's error wins over a handler's; a handler's error
/// fails a body that succeeded.
pub fn after_body(lua: &Lua, body: mlua::Result<MultiValue>) -> mlua::Result<MultiValue> {
    if lua.app_data_ref::<Handlers>().is_none() {
        return body;
    }
    let Ok(ctx) = task_ctx(lua) else {
        return body;
    };
    let body_failed = body.is_err();
    let mut first_error: Option<String> = None;
    while let Some((name, f)) = next(lua, body_failed) {
        let ran = f.call::<MultiValue>(());
        if let Some(r) = ctx.cancel.stopped() {
            // Stopped while a handler ran: the stop is the task's outcome.
            return Err(sloth_lua::context::stop_to_lua(r));
        }
        let check = ctx.mode.check;
        let (action, error) = match &ran {
            Ok(_) if check => ("would run".to_string(), None),
            Ok(_) => ("ran".to_string(), None),
            Err(e) => {
                let msg = error_text(e);
                ("failed".to_string(), Some(msg))
            }
        };
        if let (Some(msg), None) = (&error, &first_error) {
            first_error = Some(format!("handler '{name}' failed: {msg}"));
        }
        ctx.io.change(Change {
            kind: ChangeKind::Handler,
            resource: "handler".into(),
            target: name,
            changed: true,
            action,
            diff: None,
            check,
            error,
        });
    }
    // Handlers that were notified but not run because the body failed.
    let skipped: Vec<String> = with(lua, |hs| {
        hs.iter()
            .filter(|h| h.notified && !h.ran)
            .map(|h| h.name.clone())
            .collect()
    });
    for name in skipped {
        ctx.io.change(Change {
            kind: ChangeKind::Handler,
            resource: "handler".into(),
            target: name,
            changed: false,
            action: "not run: the task failed (on_failure = false)".into(),
            diff: None,
            check: ctx.mode.check,
            error: None,
        });
    }
    match (body, first_error) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(msg)) => Err(mlua::Error::runtime(msg)),
        (Ok(v), None) => Ok(v),
    }
}
