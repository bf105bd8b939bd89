//! The host-pattern language (spec section 3, Ansible-style): terms separated by `:`
//! or `,`; a term is a host name, a group name, `all`/`*`, or a glob with `*` and `?`
//! ([`super::glob`]); `&term` intersects and `!term` excludes. Host ranges
//! (`web[01:03]`) and regular expressions (`~web.*`) are refused with a hint. Here:
//! the term parser, [`Inventory::resolve`] and [`Inventory::resolve_one`], and
//! [`PatternError`].

use std::collections::BTreeSet;

use super::glob::glob_match;
use super::{Inventory, ALL_GROUP};

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

#[cfg(test)]
mod tests {
    use super::PatternError;
    use crate::engine::inventory::fixtures::{inv, names, resolve, ALL, WEB};
    use crate::engine::inventory::Inventory;

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
}
