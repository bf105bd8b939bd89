//! The inventory's checks and the errors they give: host names (DNS-like), group
//! names (`all` reserved), ports, addresses (normalized to `host:port`/`[v6]:port`),
//! value types, and unknown keys with a did-you-mean hint (edit distance, strsim) or a
//! hint to quote names that contain dots.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::parse::Cx;
use super::{InventoryError, ALL_GROUP};

impl Cx<'_> {
    pub(super) fn check_group_name(&self, name: &str, context: &str) -> Result<(), InventoryError> {
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

    pub(super) fn port(&self, value: &toml::Value, context: &str) -> Result<u16, InventoryError> {
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

    pub(super) fn expect_table(
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

    pub(super) fn wrong_type(
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

    pub(super) fn unknown_key(
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
pub(super) fn check_host_name(name: &str) -> Result<(), String> {
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
pub(super) fn normalize_address(
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
    use crate::engine::inventory::fixtures::parse_err;
    use crate::engine::inventory::{Inventory, InventoryError};

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
}
