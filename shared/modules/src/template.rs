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
use sloth_lua::opts::Opts;

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set(
        "render",
        lua.create_function(
            |lua, (text, vars, opts): (mlua::LuaString, LV, Option<Table>)| {
                let text = text.to_str()?.to_string();
                let mut o = Opts::of(lua, "template.render", opts)?;
                let strict = o.bool("strict")?.unwrap_or(true);
                let trim_blocks = o.bool("trim_blocks")?.unwrap_or(true);
                let lstrip_blocks = o.bool("lstrip_blocks")?.unwrap_or(false);
                let keep_newline = o.bool("keep_trailing_newline")?.unwrap_or(true);
                let name = o.string("name")?.unwrap_or_else(|| "template".into());
                o.finish()?;
                let fail = |msg: String| -> mlua::Result<MultiValue> {
                    Ok(MultiValue::from_vec(vec![
                        LV::Nil,
                        LV::String(lua.create_string(format!("template.render: {msg}"))?),
                    ]))
                };
                let vars = match vars {
                    LV::Nil | LV::Table(_) => match vars_json(lua, vars) {
                        Ok(v) => v,
                        Err(e) => return fail(format!("vars: {e}")),
                    },
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "template.render: vars must be a table, got {}",
                            other.type_name()
                        )))
                    }
                };
                let rendered = render(
                    &name,
                    &text,
                    &vars,
                    &Syntax {
                        strict,
                        trim_blocks,
                        lstrip_blocks,
                        keep_trailing_newline: keep_newline,
                    },
                );
                match rendered {
                    Ok(s) => Ok(MultiValue::from_vec(vec![LV::String(
                        lua.create_string(s)?,
                    )])),
                    Err(e) => fail(e),
                }
            },
        )?,
    )?;
    g.raw_set("template", t)
}

/// How a template is read and rendered (the options of `template.render`).
pub(crate) struct Syntax {
    pub strict: bool,
    pub trim_blocks: bool,
    pub lstrip_blocks: bool,
    pub keep_trailing_newline: bool,
}

impl Default for Syntax {
    fn default() -> Self {
        Syntax {
            strict: true,
            trim_blocks: true,
            lstrip_blocks: false,
            keep_trailing_newline: true,
        }
    }
}

/// Render `text` (named `name` in errors) with `vars`; the error is
/// `name, line N: kind: detail`.
pub(crate) fn render(
    name: &str,
    text: &str,
    vars: &serde_json::Value,
    syntax: &Syntax,
) -> Result<String, String> {
    let config = SyntaxConfig::builder()
        .trim_blocks(syntax.trim_blocks)
        .lstrip_blocks(syntax.lstrip_blocks)
        .keep_trailing_newline(syntax.keep_trailing_newline)
        .build()
        .map_err(|e| describe(name, &e))?;
    let mut env = Environment::new();
    env.set_syntax(config);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(if syntax.strict {
        UndefinedBehavior::SemiStrict
    } else {
        UndefinedBehavior::Lenient
    });
    env.template_from_named_str(name, text)
        .and_then(|tpl| tpl.render(minijinja::Value::from(minijinja::value::Serde(vars))))
        .map_err(|e| describe(name, &e))
}

/// Lua `vars` as JSON for a template (functions and other values JSON cannot hold
/// are skipped).
pub(crate) fn vars_json(lua: &Lua, vars: LV) -> Result<serde_json::Value, String> {
    match vars {
        LV::Nil => Ok(serde_json::Value::Object(Default::default())),
        LV::Table(_) => {
            let o = mlua::serde::DeserializeOptions::new().deny_unsupported_types(false);
            lua.from_value_with(vars, o).map_err(|e| e.to_string())
        }
        other => Err(format!("vars must be a table, got {}", other.type_name())),
    }
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
