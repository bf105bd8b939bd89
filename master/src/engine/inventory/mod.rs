//! The fleet inventory (TOML, spec section 7) and Ansible-style host patterns (section 3).
//!
//! ```toml
//! [defaults]
//! port = 7447                  # used when an address carries no port (7447 when absent)
//! groups = ["managed"]         # optional: groups every host belongs to
//! vars = { env = "prod" }      # optional: vars every host starts with
//!
//! [groups.web]
//! vars = { role = "frontend" } # optional: vars for the members of a group
//!
//! [hosts.web-01]
//! address = "10.0.0.11"        # "ip", "ip:port", "name", "name:port", "[v6]:port" or bare v6;
//!                              # omitted: the host name itself
//! port = 7447                  # optional: port when the address has none
//! groups = ["web", "eu"]
//! vars = { role = "frontend" }
//! ```
//!
//! Hosts keep the order in which the file defines them. Vars are merged shallowly (a
//! top-level key replaces the previous value): `[defaults] vars`, then the vars of each
//! group in the order of the host's `groups` (defaults' groups first; a later group wins),
//! then the host's own `vars`.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The port agents listen on when neither the address nor the inventory names one.
pub const DEFAULT_PORT: u16 = 7447;

/// The group every host implicitly belongs to.
pub const ALL_GROUP: &str = "all";

const HOST_KEYS: &[&str] = &["address", "port", "groups", "vars"];
const GROUP_KEYS: &[&str] = &["vars"];
const DEFAULTS_KEYS: &[&str] = &["port", "groups", "vars"];

/// One agent of the fleet.
#[derive(Debug, Clone)]
pub struct Host {
    /// The agent's name, unique in the inventory.
    pub name: String,
    /// Where the agent listens: `"ip:port"`, `"name:port"` or `"[v6]:port"` (always with a
    /// port once loaded from a file; empty for [`Inventory::from_local`] until filled in).
    pub address: String,
    /// The groups the host belongs to (without the implicit `all`), no duplicates.
    pub groups: Vec<String>,
    /// Defaults', groups' and the host's own vars, merged.
    pub vars: toml::Table,
}

/// A parsed inventory: the hosts in file order.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The hosts, in the order the file defines them.
    pub hosts: Vec<Host>,
    /// Where the inventory came from (a path, or a label), for messages.
    origin: String,
    /// Groups declared with a `[groups.NAME]` table (they exist even without members).
    declared_groups: BTreeSet<String>,
}

/// Why an inventory could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {error}")]
    Toml {
        origin: String,
        error: toml::de::Error,
    },
    #[error("{origin}: {context}: unknown key '{key}' (allowed: {allowed}){hint}")]
    UnknownKey {
        origin: String,
        context: String,
        key: String,
        allowed: String,
        hint: String,
    },
    #[error("{origin}: {context}: '{key}' must be {expected}, not {found}")]
    WrongType {
        origin: String,
        context: String,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{origin}: {context}: invalid port {value}: must be a number from 1 to 65535")]
    BadPort {
        origin: String,
        context: String,
        value: String,
    },
    #[error("{origin}: host '{host}': invalid address '{address}': {reason}")]
    BadAddress {
        origin: String,
        host: String,
        address: String,
        reason: String,
    },
    #[error("{origin}: invalid host name '{name}': {reason}")]
    BadHostName {
        origin: String,
        name: String,
        reason: String,
    },
    #[error("{origin}: {context}: invalid group name '{name}': {reason}")]
    BadGroupName {
        origin: String,
        context: String,
        name: String,
        reason: String,
    },
    #[error(
        "{origin}: {context}: 'all' is reserved (it is the group of every host); \
         use [defaults] for settings shared by all hosts"
    )]
    ReservedGroup { origin: String, context: String },
    #[error(
        "{origin}: group '{name}' has the same name as a host; host and group names must differ"
    )]
    GroupIsHost { origin: String, name: String },
    #[error("{origin}: no hosts defined (add a [hosts.NAME] table)")]
    NoHosts { origin: String },
}

/// Why a host pattern could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty host pattern")]
    Empty,
    #[error("invalid host pattern '{pattern}': {reason}")]
    Invalid { pattern: String, reason: String },
    #[error("unknown host or group '{name}' ({})", known_groups_text(.known_groups))]
    Unknown {
        name: String,
        known_groups: Vec<String>,
    },
    #[error("no host or group matches '{glob}' ({})", known_groups_text(.known_groups))]
    NoMatch {
        glob: String,
        known_groups: Vec<String>,
    },
    #[error("{}", not_one_text(.pattern, .hosts))]
    NotOne { pattern: String, hosts: Vec<String> },
}

fn known_groups_text(groups: &[String]) -> String {
    if groups.is_empty() {
        "no groups defined".to_string()
    } else {
        format!("known groups: {}", groups.join(", "))
    }
}

fn not_one_text(pattern: &str, hosts: &[String]) -> String {
    match hosts.len() {
        0 => format!("host pattern '{pattern}' matched no host; exactly one is required"),
        n => format!(
            "host pattern '{pattern}' matched {n} hosts ({}); exactly one is required",
            hosts.join(", ")
        ),
    }
}

impl Inventory {
    /// Reads and parses an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|error| InventoryError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses inventory TOML; `origin` (usually the file name) prefixes every error.
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        let raw: RawDoc = toml::from_str(text).map_err(|error| InventoryError::Toml {
            origin: origin.to_string(),
            error,
        })?;
        let cx = Cx { origin };

        let defaults = cx.defaults(raw.defaults)?;

        let mut group_vars: HashMap<String, toml::Table> = HashMap::new();
        let mut declared_groups = BTreeSet::new();
        for (name, value) in raw.groups {
            let context = format!("[groups.{name}]");
            cx.check_group_name(&name, &context)?;
            let table = cx.expect_table(value, "[groups]", &name)?;
            let mut vars = toml::Table::new();
            for (key, value) in table {
                match key.as_str() {
                    "vars" => vars = cx.expect_table(value, &context, "vars")?,
                    _ => return Err(cx.unknown_key(&context, &key, &value, GROUP_KEYS)),
                }
            }
            declared_groups.insert(name.clone());
            group_vars.insert(name, vars);
        }

        let mut hosts = Vec::with_capacity(raw.hosts.len());
        for (name, value) in raw.hosts {
            hosts.push(cx.host(name, value, &defaults, &group_vars)?);
        }
        if hosts.is_empty() {
            return Err(InventoryError::NoHosts {
                origin: origin.to_string(),
            });
        }

        let inventory = Inventory {
            hosts,
            origin: origin.to_string(),
            declared_groups,
        };
        for group in inventory.groups() {
            if inventory.get(&group).is_some() {
                return Err(InventoryError::GroupIsHost {
                    origin: origin.to_string(),
                    name: group,
                });
            }
        }
        Ok(inventory)
    }

    /// A synthetic fleet (e.g. `--local-fleet N`): the given names, no groups, no vars and
    /// an empty address for the caller to fill in. Names are taken as given.
    pub fn from_local(names: &[String]) -> Inventory {
        Inventory {
            hosts: names
                .iter()
                .map(|name| Host {
                    name: name.clone(),
                    address: String::new(),
                    groups: Vec::new(),
                    vars: toml::Table::new(),
                })
                .collect(),
            origin: "local fleet".to_string(),
            declared_groups: BTreeSet::new(),
        }
    }

    /// Where this inventory came from (file path or label).
    #[allow(dead_code)] // used by tests and error reports
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The host with this exact name.
    pub fn get(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// Every group name: those hosts belong to and those declared by `[groups.NAME]`
    /// (without the implicit `all`).
    pub fn groups(&self) -> BTreeSet<String> {
        let mut groups = self.declared_groups.clone();
        for host in &self.hosts {
            groups.extend(host.groups.iter().cloned());
        }
        groups
    }

    /// Resolves an Ansible host pattern to host names, in inventory order, without
    /// duplicates.
    ///
    /// Terms are separated by `:` or `,`; a term is a host name, a group name, `all`/`*`,
    /// or a glob with `*` and `?` (matching host names and group names). Plain terms are
    /// unioned first, then `&term`s intersect, then `!term`s exclude (when there are no
    /// plain terms, the start is `all`). A term that matches no host or group is an error;
    /// an empty final result is not.
    pub fn resolve(&self, pattern: &str) -> Result<Vec<String>, PatternError> {
        let terms = parse_pattern(pattern)?;
        let mut regular: Vec<&str> = Vec::new();
        let mut intersect: Vec<&str> = Vec::new();
        let mut exclude: Vec<&str> = Vec::new();
        for term in &terms {
            match term.op {
                Op::Union => regular.push(term.name),
                Op::Intersect => intersect.push(term.name),
                Op::Exclude => exclude.push(term.name),
            }
        }
        if regular.is_empty() {
            regular.push(ALL_GROUP);
        }

        let mut selected = vec![false; self.hosts.len()];
        for name in regular {
            let mask = self.match_term(name)?;
            for (sel, m) in selected.iter_mut().zip(mask) {
                *sel |= m;
            }
        }
        for name in intersect {
            let mask = self.match_term(name)?;
            for (sel, m) in selected.iter_mut().zip(mask) {
                *sel &= m;
            }
        }
        for name in exclude {
            let mask = self.match_term(name)?;
            for (sel, m) in selected.iter_mut().zip(mask) {
                *sel &= !m;
            }
        }

        Ok(self
            .hosts
            .iter()
            .zip(selected)
            .filter(|(_, sel)| *sel)
            .map(|(host, _)| host.name.clone())
            .collect())
    }

    /// Resolves a pattern that must match exactly one host.
    pub fn resolve_one(&self, pattern: &str) -> Result<String, PatternError> {
        match <[String; 1]>::try_from(self.resolve(pattern)?) {
            Ok([host]) => Ok(host),
            Err(hosts) => Err(PatternError::NotOne {
                pattern: pattern.trim().to_string(),
                hosts,
            }),
        }
    }

    /// Which hosts (by index) a single term selects.
    fn match_term(&self, name: &str) -> Result<Vec<bool>, PatternError> {
        if name == ALL_GROUP || name == "*" {
            return Ok(vec![true; self.hosts.len()]);
        }
        let groups = self.groups();
        if name.contains(['*', '?']) {
            let matched_groups: BTreeSet<&String> =
                groups.iter().filter(|g| glob_match(name, g)).collect();
            let mut any = !matched_groups.is_empty();
            let mask: Vec<bool> = self
                .hosts
                .iter()
                .map(|host| {
                    let by_name = glob_match(name, &host.name);
                    any |= by_name;
                    by_name || host.groups.iter().any(|g| matched_groups.contains(g))
                })
                .collect();
            if !any {
                return Err(PatternError::NoMatch {
                    glob: name.to_string(),
                    known_groups: groups.into_iter().collect(),
                });
            }
            return Ok(mask);
        }
        if let Some(index) = self.hosts.iter().position(|host| host.name == name) {
            let mut mask = vec![false; self.hosts.len()];
            mask[index] = true;
            return Ok(mask);
        }
        if groups.contains(name) {
            return Ok(self
                .hosts
                .iter()
                .map(|host| host.groups.iter().any(|g| g == name))
                .collect());
        }
        Err(PatternError::Unknown {
            name: name.to_string(),
            known_groups: groups.into_iter().collect(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Patterns

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Intersect,
    Exclude,
}

#[derive(Debug)]
struct Term<'a> {
    op: Op,
    name: &'a str,
}

fn parse_pattern(pattern: &str) -> Result<Vec<Term<'_>>, PatternError> {
    let trimmed = pattern.trim();
    let invalid = |reason: String| PatternError::Invalid {
        pattern: trimmed.to_string(),
        reason,
    };
    if trimmed.contains(['[', ']']) {
        return Err(invalid(
            "host ranges like web[01:03] are not supported; use a glob such as web-0*".into(),
        ));
    }
    let mut terms = Vec::new();
    for raw in trimmed.split([':', ',']) {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let (op, name) = if let Some(rest) = raw.strip_prefix('!') {
            (Op::Exclude, rest.trim_start())
        } else if let Some(rest) = raw.strip_prefix('&') {
            (Op::Intersect, rest.trim_start())
        } else {
            (Op::Union, raw)
        };
        if name.is_empty() {
            return Err(invalid(format!(
                "'{raw}' must be followed by a host or group name"
            )));
        }
        if name.starts_with('~') {
            return Err(invalid(format!(
                "regular expressions ('{name}') are not supported; use globs with * and ?"
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*' | '?')))
        {
            return Err(invalid(format!("invalid character '{bad}' in '{name}'")));
        }
        terms.push(Term { op, name });
    }
    if terms.is_empty() {
        return Err(PatternError::Empty);
    }
    Ok(terms)
}

/// Shell-style glob: `*` matches any run of characters, `?` exactly one.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

// ---------------------------------------------------------------------------------------
// Parsing

/// The top level of the file. Host and group tables keep their file order (toml's
/// `preserve_order` feature, enabled for the workspace).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(default)]
    defaults: Option<toml::Value>,
    #[serde(default)]
    hosts: toml::Table,
    #[serde(default)]
    groups: toml::Table,
}

struct Defaults {
    port: u16,
    groups: Vec<String>,
    vars: toml::Table,
}

/// Parsing context: carries the origin into every error.
struct Cx<'a> {
    origin: &'a str,
}

impl Cx<'_> {
    fn defaults(&self, value: Option<toml::Value>) -> Result<Defaults, InventoryError> {
        let mut defaults = Defaults {
            port: DEFAULT_PORT,
            groups: Vec::new(),
            vars: toml::Table::new(),
        };
        let Some(value) = value else {
            return Ok(defaults);
        };
        let context = "[defaults]";
        let table = self.expect_table(value, "top level", "defaults")?;
        for (key, value) in table {
            match key.as_str() {
                "port" => defaults.port = self.port(&value, context)?,
                "groups" => defaults.groups = self.groups(value, context, &[])?,
                "vars" => defaults.vars = self.expect_table(value, context, "vars")?,
                _ => return Err(self.unknown_key(context, &key, &value, DEFAULTS_KEYS)),
            }
        }
        Ok(defaults)
    }

    fn host(
        &self,
        name: String,
        value: toml::Value,
        defaults: &Defaults,
        group_vars: &HashMap<String, toml::Table>,
    ) -> Result<Host, InventoryError> {
        if let Err(reason) = check_host_name(&name) {
            return Err(InventoryError::BadHostName {
                origin: self.origin.to_string(),
                name,
                reason,
            });
        }
        let context = format!("host '{name}'");
        let table = self.expect_table(value, "[hosts]", &name)?;
        let mut address: Option<String> = None;
        let mut port: Option<u16> = None;
        let mut groups = defaults.groups.clone();
        let mut own_vars = toml::Table::new();
        for (key, value) in table {
            match key.as_str() {
                "address" => match value {
                    toml::Value::String(s) => address = Some(s),
                    other => return Err(self.wrong_type(&context, "address", "a string", &other)),
                },
                "port" => port = Some(self.port(&value, &context)?),
                "groups" => groups = self.groups(value, &context, &groups)?,
                "vars" => own_vars = self.expect_table(value, &context, "vars")?,
                _ => return Err(self.unknown_key(&context, &key, &value, HOST_KEYS)),
            }
        }

        let address = normalize_address(
            address.as_deref().unwrap_or(&name),
            port,
            port.unwrap_or(defaults.port),
        )
        .map_err(|reason| InventoryError::BadAddress {
            origin: self.origin.to_string(),
            host: name.clone(),
            address: address.clone().unwrap_or_else(|| name.clone()),
            reason,
        })?;

        let mut vars = defaults.vars.clone();
        for group in &groups {
            if let Some(gv) = group_vars.get(group) {
                vars.extend(gv.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        vars.extend(own_vars);

        Ok(Host {
            name,
            address,
            groups,
            vars,
        })
    }

    /// A list of group names appended to `base`, validated and without duplicates.
    fn groups(
        &self,
        value: toml::Value,
        context: &str,
        base: &[String],
    ) -> Result<Vec<String>, InventoryError> {
        let toml::Value::Array(items) = value else {
            return Err(self.wrong_type(context, "groups", "an array of strings", &value));
        };
        let mut groups = base.to_vec();
        for item in items {
            let toml::Value::String(group) = item else {
                return Err(self.wrong_type(context, "groups", "an array of strings", &item));
            };
            self.check_group_name(&group, context)?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        Ok(groups)
    }

    fn check_group_name(&self, name: &str, context: &str) -> Result<(), InventoryError> {
        if name == ALL_GROUP {
            return Err(InventoryError::ReservedGroup {
                origin: self.origin.to_string(),
                context: context.to_string(),
            });
        }
        check_group_name(name).map_err(|reason| InventoryError::BadGroupName {
            origin: self.origin.to_string(),
            context: context.to_string(),
            name: name.to_string(),
            reason,
        })
    }

    fn port(&self, value: &toml::Value, context: &str) -> Result<u16, InventoryError> {
        match value {
            toml::Value::Integer(n) => match u16::try_from(*n) {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(InventoryError::BadPort {
                    origin: self.origin.to_string(),
                    context: context.to_string(),
                    value: n.to_string(),
                }),
            },
            other => Err(self.wrong_type(context, "port", "an integer", other)),
        }
    }

    fn expect_table(
        &self,
        value: toml::Value,
        context: &str,
        key: &str,
    ) -> Result<toml::Table, InventoryError> {
        match value {
            toml::Value::Table(table) => Ok(table),
            other => Err(self.wrong_type(context, key, "a table", &other)),
        }
    }

    fn wrong_type(
        &self,
        context: &str,
        key: &str,
        expected: &'static str,
        found: &toml::Value,
    ) -> InventoryError {
        InventoryError::WrongType {
            origin: self.origin.to_string(),
            context: context.to_string(),
            key: key.to_string(),
            expected,
            found: found.type_str(),
        }
    }

    fn unknown_key(
        &self,
        context: &str,
        key: &str,
        value: &toml::Value,
        allowed: &[&str],
    ) -> InventoryError {
        let closest = allowed
            .iter()
            .map(|candidate| (strsim::levenshtein(key, candidate), *candidate))
            .min()
            .filter(|(distance, _)| *distance <= 2);
        let hint = match closest {
            Some((_, candidate)) => format!("; did you mean '{candidate}'?"),
            None if value.is_table() => {
                "; names containing '.' must be quoted, e.g. [hosts.\"web.example.com\"]"
                    .to_string()
            }
            None => String::new(),
        };
        InventoryError::UnknownKey {
            origin: self.origin.to_string(),
            context: context.to_string(),
            key: key.to_string(),
            allowed: allowed.join(", "),
            hint,
        }
    }
}

/// Host names are DNS-like: dot-separated labels of letters, digits and '-'.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name == ALL_GROUP {
        return Err("'all' is reserved (it is the group of every host)".into());
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(format!(
            "invalid character '{bad}' (allowed: letters, digits, '-' and '.')"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (leading, trailing or doubled '.')".into());
        }
        if label.len() > 63 {
            return Err(format!("label '{label}' is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label '{label}' starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Group names: letters, digits, '-', '_' and '.', starting with a letter, digit or '_'.
fn check_group_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("it is empty".into());
    };
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "invalid character '{bad}' (allowed: letters, digits, '-', '_' and '.')"
        ));
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err("it must start with a letter, digit or '_'".into());
    }
    Ok(())
}

/// Normalizes an address to `host:port` / `[v6]:port`. `explicit_port` is the host's own
/// `port` key (an error if the address carries a port too); `fallback` applies otherwise.
fn normalize_address(
    address: &str,
    explicit_port: Option<u16>,
    fallback: u16,
) -> Result<String, String> {
    if address.is_empty() {
        return Err("it is empty".into());
    }
    if address.chars().any(char::is_whitespace) {
        return Err("it contains whitespace".into());
    }
    let (host, port_text): (String, Option<&str>) = if let Some(rest) = address.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".into());
        };
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("'{inner}' is not an IPv6 address"))?;
        let port_text = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err("expected ':PORT' after ']'".into()),
            },
        };
        (format!("[{ip}]"), port_text)
    } else if address.matches(':').count() > 1 {
        let ip: Ipv6Addr = address.parse().map_err(|_| {
            "not an IPv6 address; write IPv6 with a port as [addr]:port".to_string()
        })?;
        (format!("[{ip}]"), None)
    } else {
        let (host, port_text) = match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        };
        check_address_host(host)?;
        (host.to_string(), port_text)
    };
    let port = match (port_text, explicit_port) {
        (Some(_), Some(_)) => {
            return Err("the port is given both in the address and in 'port'".into());
        }
        (Some(text), None) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("invalid port '{text}' (must be 1 to 65535)")),
        },
        (None, Some(port)) => port,
        (None, None) => fallback,
    };
    Ok(format!("{host}:{port}"))
}

/// The host part of a non-IPv6 address: an IPv4 address or a host name.
fn check_address_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host part is empty".into());
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("'{host}' is not a valid IPv4 address"));
    }
    match host
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        Some(bad) => Err(format!("invalid character '{bad}' in host name '{host}'")),
        None if host.starts_with(['.', '-']) || host.contains("..") => {
            Err(format!("'{host}' is not a valid host name"))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six hosts, deliberately not in alphabetical order, to check file order is kept.
    const EXAMPLE: &str = r#"
[defaults]
port = 7447
vars = { env = "prod", role = "none" }

[groups.eu]
vars = { region = "eu-west", role = "eu-default" }

[groups.web]
vars = { role = "frontend", tier = "web" }

[hosts.web-01]
address = "10.0.0.11"
groups = ["web", "eu"]
vars = { weight = 10 }

[hosts.web-02]
address = "10.0.0.12:9000"
groups = ["web", "eu"]

[hosts.web-03]
address = "10.0.0.13"
port = 7000
groups = ["web", "eu"]
vars = { role = "canary" }

[hosts.api-01]
address = "[fd00::21]:7447"
groups = ["api", "eu"]

[hosts.api-02]
address = "fd00::22"
groups = ["api"]

[hosts.db-01]
address = "db-01.internal"
groups = ["db"]
"#;

    fn inv() -> Inventory {
        match Inventory::parse(EXAMPLE, "example.toml") {
            Ok(inv) => inv,
            Err(e) => panic!("example inventory must parse: {e}"),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn resolve(pattern: &str) -> Vec<String> {
        match inv().resolve(pattern) {
            Ok(v) => v,
            Err(e) => panic!("pattern {pattern:?} failed: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match Inventory::parse(text, "bad.toml") {
            Ok(inv) => panic!("expected an error, got {inv:?}"),
            Err(e) => e.to_string(),
        }
    }

    const ALL: &[&str] = &["web-01", "web-02", "web-03", "api-01", "api-02", "db-01"];
    const WEB: &[&str] = &["web-01", "web-02", "web-03"];

    #[test]
    fn hosts_keep_file_order() {
        let inv = inv();
        let order: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(order, ALL);
        assert_eq!(inv.origin(), "example.toml");
        // Inline and dotted forms keep document order too.
        let inv = Inventory::parse("hosts = { zz = {}, aa = {} }\nhosts.mm = {}\n", "t");
        assert!(inv.is_err(), "a table defined inline cannot be extended");
        let inv = Inventory::parse("[hosts]\nzz = {}\naa.port = 1\nmm = {}\n", "t").unwrap();
        let order: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(order, ["zz", "aa", "mm"]);
    }

    #[test]
    fn groups_and_get() {
        let inv = inv();
        let groups: Vec<String> = inv.groups().into_iter().collect();
        assert_eq!(groups, names(&["api", "db", "eu", "web"]));
        let host = inv.get("api-01").expect("api-01 exists");
        assert_eq!(host.groups, names(&["api", "eu"]));
        assert!(inv.get("nope").is_none());
    }

    #[test]
    fn pattern_name() {
        assert_eq!(resolve("web-02"), names(&["web-02"]));
        assert_eq!(resolve("  db-01  "), names(&["db-01"]));
    }

    #[test]
    fn pattern_group() {
        assert_eq!(resolve("web"), names(WEB));
        assert_eq!(
            resolve("eu"),
            names(&["web-01", "web-02", "web-03", "api-01"])
        );
    }

    #[test]
    fn pattern_all_and_star() {
        assert_eq!(resolve("all"), names(ALL));
        assert_eq!(resolve("*"), names(ALL));
    }

    #[test]
    fn pattern_globs() {
        assert_eq!(resolve("web-*"), names(WEB));
        assert_eq!(resolve("web-0?"), names(WEB));
        assert_eq!(resolve("*-01"), names(&["web-01", "api-01", "db-01"]));
        // A glob matches group names too: `d?` is the group db, `e*` the group eu.
        assert_eq!(resolve("d?"), names(&["db-01"]));
        assert_eq!(
            resolve("e*"),
            names(&["web-01", "web-02", "web-03", "api-01"])
        );
        assert_eq!(resolve("web-0?:&*-02"), names(&["web-02"]));
    }

    #[test]
    fn pattern_union() {
        let expected = names(&["web-01", "web-02", "web-03", "db-01"]);
        assert_eq!(resolve("web:db"), expected);
        assert_eq!(resolve("web,db"), expected);
        assert_eq!(resolve("db:web"), expected, "result is in inventory order");
        assert_eq!(resolve("web:web-01:web-0?"), names(WEB), "no duplicates");
        assert_eq!(resolve("web, db"), expected);
    }

    #[test]
    fn pattern_exclusion() {
        assert_eq!(resolve("web:!web-03"), names(&["web-01", "web-02"]));
        assert_eq!(
            resolve("all:!db"),
            names(&["web-01", "web-02", "web-03", "api-01", "api-02"])
        );
        // Exclusions apply after unions wherever they are written.
        assert_eq!(resolve("!web-03:web"), names(&["web-01", "web-02"]));
        // No plain term: start from all.
        assert_eq!(resolve("!web"), names(&["api-01", "api-02", "db-01"]));
        assert_eq!(resolve("web:!web-0*"), Vec::<String>::new());
    }

    #[test]
    fn pattern_intersection() {
        assert_eq!(resolve("web:&eu"), names(WEB));
        assert_eq!(resolve("eu:&api"), names(&["api-01"]));
        assert_eq!(
            resolve("web:api:&eu:!web-01"),
            names(&["web-02", "web-03", "api-01"])
        );
        assert_eq!(resolve("&api"), names(&["api-01", "api-02"]));
        assert_eq!(resolve("db:&eu"), Vec::<String>::new());
    }

    #[test]
    fn pattern_unknown_names() {
        let inv = inv();
        let err = inv.resolve("web-9").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown host or group 'web-9' (known groups: api, db, eu, web)"
        );
        assert!(matches!(err, PatternError::Unknown { ref name, .. } if name == "web-9"));
        // Every term is checked, including exclusions and intersections.
        let err = inv.resolve("all:!dbb").unwrap_err();
        assert!(err.to_string().contains("'dbb'"), "{err}");
        assert!(inv.resolve("web:&mars").is_err());
        let err = inv.resolve("cache-*").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no host or group matches 'cache-*' (known groups: api, db, eu, web)"
        );
        let local = Inventory::from_local(&names(&["local-01"]));
        assert_eq!(
            local.resolve("web").unwrap_err().to_string(),
            "unknown host or group 'web' (no groups defined)"
        );
    }

    #[test]
    fn pattern_syntax_errors() {
        let inv = inv();
        assert_eq!(inv.resolve(""), Err(PatternError::Empty));
        assert_eq!(inv.resolve(" : , "), Err(PatternError::Empty));
        for bad in ["web:!", "web[01:02]", "~web.*", "web/01", "web:&"] {
            let err = inv.resolve(bad).unwrap_err();
            assert!(matches!(err, PatternError::Invalid { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn resolve_one_cases() {
        let inv = inv();
        assert_eq!(inv.resolve_one("db").unwrap(), "db-01");
        assert_eq!(inv.resolve_one("eu:&api").unwrap(), "api-01");
        let err = inv.resolve_one("web").unwrap_err();
        assert_eq!(
            err.to_string(),
            "host pattern 'web' matched 3 hosts (web-01, web-02, web-03); exactly one is required"
        );
        let err = inv.resolve_one("db:!db-01").unwrap_err();
        assert_eq!(
            err.to_string(),
            "host pattern 'db:!db-01' matched no host; exactly one is required"
        );
        assert!(matches!(
            inv.resolve_one("nope"),
            Err(PatternError::Unknown { .. })
        ));
    }

    #[test]
    fn addresses_and_ports() {
        let inv = inv();
        let addr = |name: &str| inv.get(name).expect("host exists").address.clone();
        assert_eq!(addr("web-01"), "10.0.0.11:7447", "default port");
        assert_eq!(addr("web-02"), "10.0.0.12:9000", "explicit port in address");
        assert_eq!(addr("web-03"), "10.0.0.13:7000", "explicit port key");
        assert_eq!(
            addr("api-01"),
            "[fd00::21]:7447",
            "bracketed IPv6 with port"
        );
        assert_eq!(addr("api-02"), "[fd00::22]:7447", "bare IPv6");
        assert_eq!(addr("db-01"), "db-01.internal:7447", "host name");
        for a in ["[fd00::21]:7447", "10.0.0.12:9000", "10.0.0.11:7447"] {
            assert!(a.parse::<std::net::SocketAddr>().is_ok(), "{a}");
        }
    }

    #[test]
    fn default_port_without_defaults_and_custom_defaults() {
        let inv = Inventory::parse("[hosts.a]\naddress = \"10.1.1.1\"\n", "t").unwrap();
        assert_eq!(inv.hosts[0].address, "10.1.1.1:7447");
        let inv = Inventory::parse(
            "[defaults]\nport = 9999\n[hosts.a]\n[hosts.b]\naddress = \"[::1]\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            inv.hosts[0].address, "a:9999",
            "address defaults to the name"
        );
        assert_eq!(inv.hosts[1].address, "[::1]:9999");
    }

    #[test]
    fn vars_merge() {
        let inv = inv();
        let vars = |name: &str| inv.get(name).expect("host exists").vars.clone();
        let v = vars("web-01");
        assert_eq!(v["env"].as_str(), Some("prod"), "from defaults");
        assert_eq!(v["region"].as_str(), Some("eu-west"), "from group eu");
        assert_eq!(v["tier"].as_str(), Some("web"), "from group web");
        // web then eu: the later group wins over the earlier one.
        assert_eq!(v["role"].as_str(), Some("eu-default"));
        assert_eq!(v["weight"].as_integer(), Some(10), "own vars");
        assert_eq!(vars("web-03")["role"].as_str(), Some("canary"), "host wins");
        let v = vars("db-01");
        assert_eq!(v["role"].as_str(), Some("none"));
        assert!(!v.contains_key("region"));
    }

    #[test]
    fn defaults_groups_and_declared_empty_group() {
        let text = r#"
[defaults]
groups = ["managed"]
[groups.spare]
[groups.managed]
vars = { m = true }
[hosts.z-1]
groups = ["x", "managed", "x"]
[hosts.a-1]
"#;
        let inv = Inventory::parse(text, "t").unwrap();
        assert_eq!(inv.hosts[0].name, "z-1");
        assert_eq!(inv.hosts[0].groups, names(&["managed", "x"]));
        assert_eq!(inv.hosts[1].groups, names(&["managed"]));
        assert_eq!(inv.hosts[1].vars["m"].as_bool(), Some(true));
        assert_eq!(inv.resolve("managed").unwrap(), names(&["z-1", "a-1"]));
        // A declared group without members is known, and empty.
        assert_eq!(inv.resolve("spare").unwrap(), Vec::<String>::new());
        assert!(inv.groups().contains("spare"));
    }

    #[test]
    fn parse_error_bad_toml() {
        let msg = parse_err("[hosts.web-01\naddress = \"x\"\n");
        assert!(msg.starts_with("bad.toml: invalid TOML:"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
        let msg = parse_err("[hostz.web-01]\n");
        assert!(msg.contains("bad.toml") && msg.contains("hostz"), "{msg}");
    }

    #[test]
    fn parse_error_unknown_key() {
        let msg = parse_err("[hosts.web-01]\nadress = \"10.0.0.1\"\n");
        assert_eq!(
            msg,
            "bad.toml: host 'web-01': unknown key 'adress' (allowed: address, port, groups, \
             vars); did you mean 'address'?"
        );
        let msg = parse_err("[hosts.web.example]\naddress = \"10.0.0.1\"\n");
        assert!(
            msg.contains("host 'web'") && msg.contains("quoted"),
            "{msg}"
        );
        let msg = parse_err("[defaults]\nprot = 1\n[hosts.a]\n");
        assert!(
            msg.contains("[defaults]") && msg.contains("'port'"),
            "{msg}"
        );
        let msg = parse_err("[groups.web]\nvar = {}\n[hosts.a]\n");
        assert!(
            msg.contains("[groups.web]") && msg.contains("'var'"),
            "{msg}"
        );
    }

    #[test]
    fn parse_error_bad_port() {
        for text in [
            "[defaults]\nport = 0\n[hosts.a]\n",
            "[defaults]\nport = 70000\n[hosts.a]\n",
            "[hosts.a]\nport = -1\n",
        ] {
            let err = Inventory::parse(text, "bad.toml").unwrap_err();
            assert!(
                matches!(err, InventoryError::BadPort { .. }),
                "{text}: {err}"
            );
        }
        let msg = parse_err("[hosts.a]\nport = \"80\"\n");
        assert_eq!(
            msg,
            "bad.toml: host 'a': 'port' must be an integer, not string"
        );
        for (address, needle) in [
            ("10.0.0.1:99999", "invalid port '99999'"),
            ("10.0.0.1:", "invalid port ''"),
            ("10.0.0.1:x", "invalid port 'x'"),
            ("[::1]:0", "invalid port '0'"),
        ] {
            let msg = parse_err(&format!("[hosts.web-01]\naddress = \"{address}\"\n"));
            assert!(
                msg.starts_with(&format!(
                    "bad.toml: host 'web-01': invalid address '{address}'"
                )) && msg.contains(needle),
                "{msg}"
            );
        }
        let msg = parse_err("[hosts.a]\naddress = \"h:1\"\nport = 2\n");
        assert!(msg.contains("both"), "{msg}");
    }

    #[test]
    fn parse_error_bad_addresses() {
        for address in [
            "",
            "10.0.0.300",
            "a b",
            "fd00::1:7447x",
            "[fd00::1",
            "[nope]:1",
            ":80",
        ] {
            let err = Inventory::parse(&format!("[hosts.a]\naddress = \"{address}\"\n"), "t")
                .unwrap_err();
            assert!(
                matches!(err, InventoryError::BadAddress { .. }),
                "{address}: {err}"
            );
        }
    }

    #[test]
    fn parse_error_names_and_groups() {
        let msg = parse_err("[hosts.\"web_01\"]\n");
        assert!(
            msg.starts_with("bad.toml: invalid host name 'web_01'"),
            "{msg}"
        );
        for name in ["-web", "a..b", "all", "web.", "a/b"] {
            let err = Inventory::parse(&format!("[hosts.\"{name}\"]\n"), "t").unwrap_err();
            assert!(
                matches!(err, InventoryError::BadHostName { .. }),
                "{name}: {err}"
            );
        }
        let msg = parse_err("[hosts.web]\n[hosts.a]\ngroups = [\"web\"]\n");
        assert_eq!(
            msg,
            "bad.toml: group 'web' has the same name as a host; host and group names must differ"
        );
        let err = Inventory::parse("[hosts.a]\ngroups = [\"all\"]\n", "t").unwrap_err();
        assert!(matches!(err, InventoryError::ReservedGroup { .. }), "{err}");
        let err = Inventory::parse("[groups.all]\n[hosts.a]\n", "t").unwrap_err();
        assert!(matches!(err, InventoryError::ReservedGroup { .. }), "{err}");
        let err = Inventory::parse("[hosts.a]\ngroups = [\"web-*\"]\n", "t").unwrap_err();
        assert!(matches!(err, InventoryError::BadGroupName { .. }), "{err}");
        let msg = parse_err("[hosts.a]\ngroups = \"web\"\n");
        assert!(
            msg.contains("'groups' must be an array of strings"),
            "{msg}"
        );
        let msg = parse_err("[hosts.a]\nvars = 3\n");
        assert!(msg.contains("'vars' must be a table, not integer"), "{msg}");
        let err = Inventory::parse("[defaults]\nport = 1\n", "t").unwrap_err();
        assert!(matches!(err, InventoryError::NoHosts { .. }), "{err}");
    }

    #[test]
    fn load_from_file_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, EXAMPLE).expect("write");
        let inv = Inventory::load(&path).expect("load");
        assert_eq!(inv.hosts.len(), 6);
        assert_eq!(inv.origin(), path.display().to_string());

        let missing = dir.path().join("missing.toml");
        let err = Inventory::load(&missing).unwrap_err();
        assert!(matches!(err, InventoryError::Io { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read inventory ") && msg.contains("missing.toml"),
            "{msg}"
        );

        std::fs::write(&path, "[hosts.a]\nadress = \"x\"\n").expect("write");
        let msg = Inventory::load(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn from_local_fleet() {
        let inv = Inventory::from_local(&names(&["local-01", "local-02"]));
        assert_eq!(inv.hosts.len(), 2);
        assert!(inv
            .hosts
            .iter()
            .all(|h| h.address.is_empty() && h.groups.is_empty()));
        assert_eq!(
            inv.resolve("all").unwrap(),
            names(&["local-01", "local-02"])
        );
        assert_eq!(
            inv.resolve("local-0?:!local-01").unwrap(),
            names(&["local-02"])
        );
        assert!(inv.groups().is_empty());
    }

    #[test]
    fn glob_matcher() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a*b", "abab"));
        assert!(!glob_match("a*b", "abac"));
        assert!(glob_match("??", "ab"));
        assert!(!glob_match("??", "abc"));
        assert!(!glob_match("web", "web-01"));
    }
}
