//! `template.render(text, vars [, opts])`: Jinja2 templates (minijinja).
//!
//! `vars` is a Lua table (functions and other values JSON cannot hold are skipped).
//! Defaults follow Ansible's `template` module: printing or iterating an undefined
//! variable is an error (`{{ x | default("y") }}` works), while a test like
//! `{% if h.backup %}` treats a missing key as false, as Lua tables omit nil fields;
//! `trim_blocks` is on, the trailing newline of the template is kept, nothing is HTML-escaped.
//! Options: `strict` (default true), `trim_blocks` (true), `lstrip_blocks` (false),
//! `keep_trailing_newline` (true), `name` (used in error messages, default
//! "template").
//!
//! Returns the rendered string, or `nil, "template.render: <name>, line <n>: <error>"`.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value as LV};

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "render",
        lua.create_function(
            |lua, (text, vars, opts): (mlua::LuaString, LV, Option<Table>)| {
                let text = text.to_str()?.to_string();
                let opt = |key: &str, default: bool| -> mlua::Result<bool> {
                    match &opts {
                        Some(o) => Ok(o.get::<Option<bool>>(key)?.unwrap_or(default)),
                        None => Ok(default),
                    }
                };
                let strict = opt("strict", true)?;
                let trim_blocks = opt("trim_blocks", true)?;
                let lstrip_blocks = opt("lstrip_blocks", false)?;
                let keep_newline = opt("keep_trailing_newline", true)?;
                let name: String = match &opts {
                    Some(o) => o.get::<Option<String>>("name")?,
                    None => None,
                }
                .unwrap_or_else(|| "template".into());
                let fail = |msg: String| -> mlua::Result<MultiValue> {
                    Ok(MultiValue::from_vec(vec![
                        LV::Nil,
                        LV::String(lua.create_string(format!("template.render: {msg}"))?),
                    ]))
                };
                let vars: serde_json::Value = match vars {
                    LV::Nil => serde_json::Value::Object(Default::default()),
                    LV::Table(_) => {
                        let o =
                            mlua::serde::DeserializeOptions::new().deny_unsupported_types(false);
                        match lua.from_value_with(vars, o) {
                            Ok(v) => v,
                            Err(e) => return fail(format!("vars: {e}")),
                        }
                    }
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "template.render: vars must be a table, got {}",
                            other.type_name()
                        )))
                    }
                };
                let syntax = SyntaxConfig::builder()
                    .trim_blocks(trim_blocks)
                    .lstrip_blocks(lstrip_blocks)
                    .keep_trailing_newline(keep_newline)
                    .build();
                let syntax = match syntax {
                    Ok(s) => s,
                    Err(e) => return fail(describe(&name, &e)),
                };
                let mut env = Environment::new();
                env.set_syntax(syntax);
                env.set_auto_escape_callback(|_| AutoEscape::None);
                env.set_undefined_behavior(if strict {
                    UndefinedBehavior::SemiStrict
                } else {
                    UndefinedBehavior::Lenient
                });
                let rendered = env
                    .template_from_named_str(name.as_str(), text.as_str())
                    .and_then(|tpl| {
                        tpl.render(minijinja::Value::from(minijinja::value::Serde(&vars)))
                    });
                match rendered {
                    Ok(s) => Ok(MultiValue::from_vec(vec![LV::String(
                        lua.create_string(s)?,
                    )])),
                    Err(e) => fail(describe(&name, &e)),
                }
            },
        )?,
    )?;
    g.raw_set("template", t)
}

/// `name, line N: kind: detail`, plus the causes of the error.
fn describe(name: &str, e: &minijinja::Error) -> String {
    let name = e.name().unwrap_or(name);
    let mut msg = match e.line() {
        Some(l) if l > 0 => format!("{name}, line {l}: {}", e.kind()),
        _ => format!("{name}: {}", e.kind()),
    };
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}
