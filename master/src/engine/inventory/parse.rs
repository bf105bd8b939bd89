//! Loading an inventory: reading the file, deserializing the TOML (host and group
//! tables in file order), and building each [`Host`]: its address normalized with a
//! port, its groups (defaults' first, no duplicates) and its merged vars. The checks
//! on names, ports and addresses, and the error messages with hints, are in
//! [`super::validate`].

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::validate::{check_host_name, normalize_address};
use super::{Host, Inventory, InventoryError, DEFAULT_PORT};

/// The keys each kind of table allows (listed in unknown-key errors, and the candidates
/// of their did-you-mean hints).
const HOST_KEYS: &[&str] = &["address", "port", "groups", "vars"];
const GROUP_KEYS: &[&str] = &["vars"];
const DEFAULTS_KEYS: &[&str] = &["port", "groups", "vars"];

/// The most an inventory file may hold.
const MAX_INVENTORY: u64 = 64 << 20;

impl Inventory {
    /// Reads and parses an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let io = |error| InventoryError::Io {
            path: path.to_path_buf(),
            error,
        };
        // Read no further than any inventory goes: `-i /dev/urandom` is an error, not
        // a hang (a pipe, `-i <(make-inventory)`, still works).
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_INVENTORY + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_INVENTORY {
            return Err(io(std::io::Error::other(format!(
                "larger than {} MiB: not an inventory",
                MAX_INVENTORY >> 20
            ))));
        }
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
}

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

/// Parsing context: carries the origin into every error. The checks and error
/// builders are in [`super::validate`].
pub(super) struct Cx<'a> {
    pub(super) origin: &'a str,
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
}

#[cfg(test)]
mod tests {
    use crate::engine::inventory::fixtures::{inv, names, parse_err, ALL, EXAMPLE};
    use crate::engine::inventory::{Inventory, InventoryError};

    #[test]
    fn an_endless_file_is_refused_not_read_forever() {
        let e = Inventory::load(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 64 MiB: not an inventory"), "{e}");
    }

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
}
