//! Test fixtures shared by the inventory's unit tests: an example inventory of six
//! hosts (not in alphabetical order) and helpers that fail loudly.

use super::Inventory;

/// Six hosts, deliberately not in alphabetical order, to check file order is kept.
pub(super) const EXAMPLE: &str = r#"
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

pub(super) fn inv() -> Inventory {
    match Inventory::parse(EXAMPLE, "example.toml") {
        Ok(inv) => inv,
        Err(e) => panic!("example inventory must parse: {e}"),
    }
}

pub(super) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub(super) fn resolve(pattern: &str) -> Vec<String> {
    match inv().resolve(pattern) {
        Ok(v) => v,
        Err(e) => panic!("pattern {pattern:?} failed: {e}"),
    }
}

pub(super) fn parse_err(text: &str) -> String {
    match Inventory::parse(text, "bad.toml") {
        Ok(inv) => panic!("expected an error, got {inv:?}"),
        Err(e) => e.to_string(),
    }
}

pub(super) const ALL: &[&str] = &["web-01", "web-02", "web-03", "api-01", "api-02", "db-01"];
pub(super) const WEB: &[&str] = &["web-01", "web-02", "web-03"];
