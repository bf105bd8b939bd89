//! What the checker knows of sloth's Lua API, all from the lists the functions
//! themselves are tested against (`crate::lua::options`, `sloth_modules::options`):
//! the module tables and their functions, and the option tables they take.

use std::collections::{BTreeMap, BTreeSet};

use sloth_lua::opts::OptionTable;

use crate::lua::options;

/// The members of sloth's modules, by module (`exec` → `run`, `spawn`, ...; `json`
/// → `null` too), and the global functions (`handler`, `task`).
pub struct Api {
    modules: BTreeMap<&'static str, BTreeSet<&'static str>>,
    tables: BTreeMap<&'static str, &'static OptionTable>,
}

/// Functions that start a task: their function argument runs on a copy of what it
/// captures (its body is checked for changes that would stay on the host).
pub const TASK_STARTERS: &[&str] = &[
    "goroutine.async",
    "goroutine.spawn",
    "goroutine.spawn_many",
    "goroutine.timeout",
    "goroutine.pool_submit",
    "fleet.run",
];

/// Functions whose first argument, a literal string, is a host pattern.
pub const PATTERN_ARGS: &[&str] = &["fleet.hosts", "fleet.run", "fleet.ping"];

/// Functions whose first argument, a literal string, is one host's name.
pub const HOST_ARGS: &[&str] = &["fleet.info"];

impl Api {
    pub fn new() -> Api {
        let mut modules: BTreeMap<&'static str, BTreeSet<&'static str>> = BTreeMap::new();
        let names = options::all().map(|t| t.function).chain(
            options::NO_OPTIONS
                .iter()
                .chain(sloth_modules::options::NO_OPTIONS)
                .chain(sloth_modules::options::FIELDS)
                .copied(),
        );
        for f in names {
            if let Some((m, name)) = f.split_once('.') {
                modules.entry(m).or_default().insert(name);
            }
        }
        let tables = options::all().map(|t| (t.function, t)).collect();
        Api { modules, tables }
    }

    /// Whether `name` is one of sloth's module tables.
    pub fn is_module(&self, name: &str) -> bool {
        self.modules.contains_key(name)
    }

    /// The functions of module `m`.
    pub fn functions(&self, m: &str) -> Vec<&'static str> {
        self.modules
            .get(m)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `m.f` exists.
    pub fn exists(&self, m: &str, f: &str) -> bool {
        self.modules.get(m).is_some_and(|s| s.contains(f))
    }

    /// The options table `function` (`exec.run`, `handler`) takes, if any.
    pub fn option_table(&self, function: &str) -> Option<&'static OptionTable> {
        self.tables.get(function).copied()
    }
}
