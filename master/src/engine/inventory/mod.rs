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
//!
//! This file holds the types and the lookups; `parse.rs` loads the TOML into hosts,
//! `validate.rs` has the checks and their hints, `pattern.rs` resolves host patterns
//! and `glob.rs` is their `*`/`?` matcher.

mod glob;
pub use glob::glob_match;
mod parse;
mod pattern;
mod validate;

#[cfg(test)]
mod fixtures;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use pattern::PatternError;

/// The port agents listen on when neither the address nor the inventory names one.
pub const DEFAULT_PORT: u16 = 7447;

/// The group every host implicitly belongs to.
pub const ALL_GROUP: &str = "all";

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

impl Inventory {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::{inv, names};
    use super::Inventory;

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
}
