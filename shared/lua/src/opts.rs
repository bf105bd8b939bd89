//! Option tables of sloth's Lua functions, read strictly: every value is checked for
//! its type as it is read, and [`Opts::finish`] refuses every key that was not read,
//! naming all of them at once with a "did you mean" for each (a typo such as
//! `timout` must never be silently ignored).

use std::path::PathBuf;
use std::time::Duration;

use mlua::{Function, Table, Value as LV};

use crate::context::parse_duration;

/// A function that takes an options table: `sloth-master check` flags unknown keys
/// in literal tables given to it, and a test probes every one (a call with an unknown
/// key must be refused, naming exactly these keys as the known ones). Every module
/// keeps the list of its own; a function that takes no options table is listed in
/// the module's `NO_OPTIONS`.
#[derive(Debug, Clone, Copy)]
pub struct OptionTable {
    /// `exec.run`
    pub function: &'static str,
    /// Which argument is the options table (1-based).
    pub arg: usize,
    /// Every key it takes.
    pub keys: &'static [&'static str],
    /// A call of it for the probe, `OPTS` standing for the options table.
    pub sample: &'static str,
}

/// The option keys every resource takes (`outcome::Call::new` reads them).
pub const RESOURCE_KEYS: &[&str] = &["notify", "diff"];

/// One options table being read. `what` names the function in every error
/// (`file.content`, or `file.content /etc/app.conf` once the target is known).
pub struct Opts {
    what: String,
    table: Table,
    known: Vec<&'static str>,
}

/// An error about an argument: `what: message`.
pub fn arg_error(what: &str, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{what}: {msg}"))
}

/// The Lua type name of `v`, for messages (`number` for integers too, as Lua's
/// `type()` says).
pub fn type_of(v: &LV) -> &'static str {
    match v {
        LV::Integer(_) | LV::Number(_) => "number",
        other => other.type_name(),
    }
}

impl Opts {
    pub fn new(what: impl Into<String>, table: Table) -> Opts {
        Opts {
            what: what.into(),
            table,
            known: Vec::new(),
        }
    }

    /// The options table given to `what`, or an empty one when none was.
    pub fn of(
        lua: &mlua::Lua,
        what: impl Into<String>,
        table: Option<Table>,
    ) -> mlua::Result<Opts> {
        Ok(Opts::new(
            what,
            match table {
                Some(t) => t,
                None => lua.create_table()?,
            },
        ))
    }

    /// The name errors start with.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Name the target in later errors (`file.content /etc/app.conf: ...`).
    pub fn set_what(&mut self, what: impl Into<String>) {
        self.what = what.into();
    }

    /// An error about option `key`.
    pub fn error(&self, key: &str, msg: impl std::fmt::Display) -> mlua::Error {
        arg_error(&self.what, format!("option '{key}' {msg}"))
    }

    /// Option `key`'s value was refused for reason `why` (a sentence of its own):
    /// `what: option 'key': why`.
    pub fn invalid(&self, key: &str, why: impl std::fmt::Display) -> mlua::Error {
        arg_error(&self.what, format!("option '{key}': {why}"))
    }

    /// The raw value of `key` (nil when absent); marks `key` as known.
    pub fn value(&mut self, key: &'static str) -> mlua::Result<LV> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.table.raw_get(key)
    }

    /// One of `keys` is missing: when a key of the table that is not (yet) known looks
    /// like a typo of one of them, the error names that typo (`unknown option 'nmae'
    /// (did you mean 'name'?)`) — the real mistake — instead of `otherwise`.
    pub fn missing(&self, keys: &[&str], otherwise: mlua::Error) -> mlua::Error {
        for (k, _) in self.table.pairs::<String, LV>().flatten() {
            if self.known.contains(&k.as_str()) || keys.contains(&k.as_str()) {
                continue;
            }
            let hint = suggest(&k, keys);
            if !hint.is_empty() {
                return arg_error(&self.what, format!("unknown option '{k}'{hint}"));
            }
        }
        otherwise
    }

    fn wrong(&self, key: &str, want: &str, got: &LV) -> mlua::Error {
        self.error(key, format!("must be {want}, got {}", type_of(got)))
    }

    /// A string (numbers are taken as their decimal text).
    pub fn string(&mut self, key: &'static str) -> mlua::Result<Option<String>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::String(s) => match s.to_str() {
                Ok(s) => Ok(Some(s.to_string())),
                Err(_) => Err(self.error(key, "must be valid UTF-8 text")),
            },
            LV::Integer(i) => Ok(Some(i.to_string())),
            other => Err(self.wrong(key, "a string", &other)),
        }
    }

    /// A string that must be there.
    pub fn required_string(&mut self, key: &'static str) -> mlua::Result<String> {
        self.string(key)?
            .ok_or_else(|| self.missing(&[key], self.error(key, "is required")))
            .and_then(|s| {
                if s.is_empty() {
                    Err(self.error(key, "must not be empty"))
                } else {
                    Ok(s)
                }
            })
    }

    /// Binary-safe bytes (file contents).
    pub fn bytes(&mut self, key: &'static str) -> mlua::Result<Option<Vec<u8>>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::String(s) => Ok(Some(s.as_bytes().to_vec())),
            LV::Integer(i) => Ok(Some(i.to_string().into_bytes())),
            LV::Number(n) => Ok(Some(n.to_string().into_bytes())),
            other => Err(self.wrong(key, "a string", &other)),
        }
    }

    pub fn bool(&mut self, key: &'static str) -> mlua::Result<Option<bool>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::Boolean(b) => Ok(Some(b)),
            other => Err(self.wrong(key, "a boolean", &other)),
        }
    }

    /// A whole number.
    pub fn int(&mut self, key: &'static str) -> mlua::Result<Option<i64>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::Integer(i) => Ok(Some(i)),
            LV::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Some(n as i64)),
            other => Err(self.wrong(key, "a whole number", &other)),
        }
    }

    /// A duration: milliseconds, or a string like `"30s"`.
    pub fn duration(&mut self, key: &'static str) -> mlua::Result<Option<Duration>> {
        let v = self.value(key)?;
        parse_duration(&v).map_err(|e| self.error(key, e))
    }

    /// An absolute path (relative paths depend on where the agent was started).
    pub fn path(&mut self, key: &'static str) -> mlua::Result<Option<PathBuf>> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        if !s.starts_with('/') {
            return Err(self.error(key, format!("must be an absolute path, got '{s}'")));
        }
        Ok(Some(PathBuf::from(s)))
    }

    pub fn required_path(&mut self, key: &'static str) -> mlua::Result<PathBuf> {
        self.path(key)?
            .ok_or_else(|| self.missing(&[key], self.error(key, "is required (an absolute path)")))
    }

    /// A string or an array of strings, as a list.
    pub fn strings(&mut self, key: &'static str) -> mlua::Result<Option<Vec<String>>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::String(s) => Ok(Some(vec![s.to_string_lossy().to_string()])),
            LV::Table(t) => {
                let mut out = Vec::new();
                for (i, v) in t.sequence_values::<LV>().enumerate() {
                    match v? {
                        LV::String(s) => out.push(s.to_string_lossy().to_string()),
                        LV::Integer(n) => out.push(n.to_string()),
                        other => {
                            return Err(self.error(
                                key,
                                format!(
                                    "item #{} must be a string, got {}",
                                    i + 1,
                                    type_of(&other)
                                ),
                            ))
                        }
                    }
                }
                if out.len() != t.raw_len() || t.pairs::<LV, LV>().count() != out.len() {
                    return Err(self.error(key, "must be an array of strings"));
                }
                Ok(Some(out))
            }
            other => Err(self.wrong(key, "a string or an array of strings", &other)),
        }
    }

    pub fn table(&mut self, key: &'static str) -> mlua::Result<Option<Table>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::Table(t) => Ok(Some(t)),
            other => Err(self.wrong(key, "a table", &other)),
        }
    }

    pub fn function(&mut self, key: &'static str) -> mlua::Result<Option<Function>> {
        match self.value(key)? {
            LV::Nil => Ok(None),
            LV::Function(f) => Ok(Some(f)),
            other => Err(self.wrong(key, "a function", &other)),
        }
    }

    /// One of `choices`.
    pub fn choice(
        &mut self,
        key: &'static str,
        choices: &[&'static str],
    ) -> mlua::Result<Option<&'static str>> {
        let Some(s) = self.string(key)? else {
            return Ok(None);
        };
        match choices.iter().find(|c| **c == s) {
            Some(c) => Ok(Some(c)),
            None => Err(self.error(
                key,
                format!(
                    "must be one of {}, got '{s}'{}",
                    choices.join(", "),
                    suggest(&s, choices)
                ),
            )),
        }
    }

    /// Refuse every key that was never read: all of them in one error, each with a
    /// suggestion when a known key is close.
    pub fn finish(self) -> mlua::Result<()> {
        let mut unknown = Vec::new();
        for pair in self.table.pairs::<LV, LV>() {
            let (k, _) = pair?;
            let name = match &k {
                LV::String(s) => s.to_string_lossy().to_string(),
                LV::Integer(i) => format!("[{i}]"),
                other => format!("[{}]", type_of(other)),
            };
            if !self.known.iter().any(|n| *n == name) {
                unknown.push(name);
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        let listed: Vec<String> = unknown
            .iter()
            .map(|u| format!("'{u}'{}", suggest(u, &self.known)))
            .collect();
        let mut known = self.known.clone();
        known.sort_unstable();
        Err(arg_error(
            &self.what,
            format!(
                "unknown option{} {} (known: {})",
                if unknown.len() > 1 { "s" } else { "" },
                listed.join(", "),
                known.join(", ")
            ),
        ))
    }
}

/// ` (did you mean 'x'?)` when one of `known` is close to `word`, else nothing.
pub fn suggest(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| {
            // Case is a typo like any other: `CWD` suggests `cwd`.
            let d = strsim::damerau_levenshtein(&word.to_lowercase(), &k.to_lowercase());
            (d, *k)
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min()
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    fn opts(lua: &Lua, src: &str) -> Opts {
        let t: Table = lua.load(src).eval().expect("a table");
        Opts::new("file.content", t)
    }

    #[test]
    fn typed_values_are_read_and_wrong_types_named() {
        let lua = Lua::new();
        let mut o = opts(
            &lua,
            r#"{path = "/etc/x", mode = "0644", force = true, n = 3, t = "2s", l = {"a", "b"}}"#,
        );
        assert_eq!(o.path("path").unwrap(), Some(PathBuf::from("/etc/x")));
        assert_eq!(o.string("mode").unwrap().as_deref(), Some("0644"));
        assert_eq!(o.bool("force").unwrap(), Some(true));
        assert_eq!(o.int("n").unwrap(), Some(3));
        assert_eq!(o.duration("t").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(
            o.strings("l").unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(o.string("absent").unwrap(), None);
        o.finish().expect("every key was read");

        let mut o = opts(&lua, r#"{force = "yes", path = "etc/x"}"#);
        let e = o.bool("force").unwrap_err().to_string();
        assert!(
            e.contains("file.content: option 'force' must be a boolean, got string"),
            "{e}"
        );
        let e = o.path("path").unwrap_err().to_string();
        assert!(e.contains("must be an absolute path, got 'etc/x'"), "{e}");
    }

    #[test]
    fn every_unknown_key_is_named_at_once_with_suggestions() {
        let lua = Lua::new();
        let mut o = opts(
            &lua,
            r#"{path = "/x", mdoe = "0644", ownr = "root", zzz = 1}"#,
        );
        o.path("path").unwrap();
        o.string("mode").unwrap();
        o.string("owner").unwrap();
        let e = o.finish().unwrap_err().to_string();
        assert!(e.contains("unknown options"), "{e}");
        assert!(e.contains("'mdoe' (did you mean 'mode'?)"), "{e}");
        assert!(e.contains("'ownr' (did you mean 'owner'?)"), "{e}");
        assert!(e.contains("'zzz' (known: "), "{e}");
        assert!(e.contains("known: mode, owner, path"), "{e}");
    }

    #[test]
    fn choices_are_checked() {
        let lua = Lua::new();
        let mut o = opts(&lua, r#"{state = "presnt"}"#);
        let e = o
            .choice("state", &["present", "absent"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be one of present, absent, got 'presnt' (did you mean 'present'?)"),
            "{e}"
        );
    }
}
