//! `sloth-master check`: what can be known about a script before it runs, without
//! agents and without side effects. The script is compiled by Lua itself (syntax
//! errors), then read as a syntax tree (full_moon, Lua 5.4) with its scopes:
//!
//! - a call of a module function that does not exist (`fs.wirte`), with a suggestion;
//! - an unknown key in a literal options table given to a known function, from the
//!   same lists the functions enforce at run time (`sloth_master::lua::options`);
//! - a literal `delegate_to` or host pattern that matches no host of the inventory;
//! - a task body that assigns to a variable or into a table it captured: the task
//!   runs on a copy, so the change stays on the host (a warning).
//!
//! Names the script declares itself (a `local fs = ...`) are left alone.

mod known;
mod walk;

use crate::engine::inventory::Inventory;

/// How bad a finding is: errors fail `check` (exit 1) and stop `run --check-first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warning,
    Error,
}

/// One thing `check` found, at a line of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub level: Level,
    pub message: String,
}

impl Finding {
    /// `SCRIPT:LINE: error: MESSAGE`
    pub fn render(&self, script: &str) -> String {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        format!("{script}:{}: {level}: {}", self.line, self.message)
    }
}

/// Check a script's source. `name` is how Lua names it in syntax errors; without an
/// inventory, host names and patterns are not checked.
pub fn check(name: &str, source: &str, inventory: Option<&Inventory>) -> Vec<Finding> {
    if let Some(f) = compile(name, source) {
        return vec![f];
    }
    let ast = match full_moon::parse_fallible(source, full_moon::LuaVersion::lua54()).into_result()
    {
        Ok(ast) => ast,
        // Lua compiled it: a construct the syntax tree reader does not know.
        Err(errors) => {
            let line = errors.first().map(|e| e.range().0.line()).unwrap_or(1);
            return vec![Finding {
                line,
                level: Level::Warning,
                message: "this script could not be analysed further (Lua compiles it, the \
                          checker's parser does not)"
                    .into(),
            }];
        }
    };
    let mut findings = walk::Walker::new(inventory).run(ast.nodes());
    findings.sort_by_key(|f| (f.line, std::cmp::Reverse(f.level)));
    findings.dedup();
    findings
}

/// A syntax error, as Lua 5.4 itself reports it (`NAME:LINE: message`).
fn compile(name: &str, source: &str) -> Option<Finding> {
    let lua = mlua::Lua::new();
    let err = lua
        .load(source)
        .set_name(format!("@{name}"))
        .into_function()
        .err()?;
    let text = sloth_lua::executor::error_text(&err);
    let text = text.strip_prefix("syntax error: ").unwrap_or(&text);
    let prefix = format!("{name}:");
    let rest = text.strip_prefix(&prefix).unwrap_or(text);
    let (line, message) = match rest.split_once(':') {
        Some((l, m)) if l.parse::<usize>().is_ok() => {
            (l.parse::<usize>().unwrap_or(1), m.trim().to_string())
        }
        _ => (1, rest.trim().to_string()),
    };
    Some(Finding {
        line,
        level: Level::Error,
        message: format!("syntax error: {message}"),
    })
}

#[cfg(test)]
mod tests;
