//! [`Data`]: a value tree that carries data only, never code.
//!
//! Everything that moves between Lua states other than a task itself — results, channel
//! messages, the arguments and results of shared-object calls, host vars — is a `Data`.
//! The only way to make one is [`Data::check`] (or the encoder's data mode, which ends
//! in it, or the scalar constructors), so a `Data` in hand has been validated:
//!
//! - no functions and no bytecode ([`Graph::functions`] and [`Graph::protos`] empty);
//! - no builtins (`Value::Builtin`: standard functions and library tables by name) and
//!   no `Value::Env` (the globals table), anywhere;
//! - no script globals and no unsendable globals;
//! - every index in range, at most [`MAX_TABLES`] tables, nested at most [`MAX_DEPTH`]
//!   levels (measured breadth-first from the roots, so cycles are fine);
//! - shared-object references only to the objects the sender may name ([`Refs`]).
//!
//! `Data` is `Serialize` (it is sent as the [`Graph`] it wraps) but deliberately not
//! `Deserialize`: bytes from a peer become a `Graph`, and only [`Data::check`] turns a
//! graph into data. [`crate::capture::restore_data`] takes only this type, and it never
//! loads bytecode nor touches the globals of the state it restores into.

use std::collections::HashSet;

use serde::Serialize;

use crate::graph::{Graph, SharedRef, Value};

/// At most this many tables in one value tree.
pub const MAX_TABLES: usize = 1_000_000;
/// At most this many levels of nested tables (the capture encoder stops at the same depth).
pub const MAX_DEPTH: usize = 400;

/// Which shared-object references a value tree may carry.
#[derive(Clone, Copy)]
pub enum Refs<'a> {
    /// Any reference: the tree was made by this process, from objects it holds.
    Any,
    /// Only these (what a task was given): data from an agent.
    Only(&'a HashSet<SharedRef>),
}

/// Why a value tree is not data; the message says what was found and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(msg: impl Into<String>) -> Refused {
    Refused(msg.into())
}

/// A validated, code-free value tree. See the module documentation.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Data(Graph);

impl Data {
    /// Validate `graph` as data; the one way from a received graph to `Data`.
    pub fn check(graph: Graph, refs: Refs<'_>) -> Result<Data, Refused> {
        if !graph.functions.is_empty() || !graph.protos.is_empty() {
            return Err(refused(
                "functions cannot be sent as data (results, messages and call arguments carry data only; the master never loads code an agent made)",
            ));
        }
        if !graph.globals.is_empty() || !graph.unsendable_globals.is_empty() {
            return Err(refused(
                "script globals cannot be sent as data (only a task carries globals)",
            ));
        }
        if graph.tables.len() > MAX_TABLES {
            return Err(refused(format!(
                "{} tables exceed the limit of {MAX_TABLES}",
                graph.tables.len()
            )));
        }
        // Breadth-first from the roots: every value checked once, depth = level.
        let mut level: Vec<u32> = Vec::new();
        let mut seen = vec![false; graph.tables.len()];
        let check_value = |v: &Value, next: &mut Vec<u32>, seen: &mut [bool]| match v {
            Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Str(_) => Ok(()),
            Value::Table(i) => match seen.get_mut(*i as usize) {
                Some(s) => {
                    if !*s {
                        *s = true;
                        next.push(*i);
                    }
                    Ok(())
                }
                None => Err(refused(format!("table index {i} out of range"))),
            },
            Value::Function(_) => Err(refused("functions cannot be sent as data")),
            Value::Builtin(name) => Err(refused(format!(
                "the function or library '{name}' cannot be sent as data"
            ))),
            Value::Env => Err(refused("the globals table cannot be sent as data")),
            Value::Shared(r) => match refs {
                Refs::Any => Ok(()),
                Refs::Only(allowed) if allowed.contains(r) => Ok(()),
                Refs::Only(_) => Err(refused(format!(
                    "{}#{} was not shared with this task",
                    r.kind.type_name(),
                    r.id
                ))),
            },
        };
        for v in &graph.roots {
            check_value(v, &mut level, &mut seen)?;
        }
        let mut depth = 0;
        while !level.is_empty() {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(refused(format!(
                    "tables nested deeper than {MAX_DEPTH} levels"
                )));
            }
            let mut next = Vec::new();
            for i in level {
                for (k, v) in &graph.tables[i as usize].entries {
                    check_value(k, &mut next, &mut seen)?;
                    check_value(v, &mut next, &mut seen)?;
                }
            }
            level = next;
        }
        // Tables no root reaches are never restored; refuse them rather than carry them.
        if seen.iter().any(|s| !s) {
            return Err(refused("tables that no value refers to"));
        }
        Ok(Data(graph))
    }

    /// Data made of plain scalars (nil, booleans, numbers, strings). A value of another
    /// kind is a bug of the caller: it becomes nil (and fails debug builds).
    pub fn scalars(values: Vec<Value>) -> Data {
        let values = values
            .into_iter()
            .map(|v| match v {
                Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Str(_) => v,
                other => {
                    debug_assert!(false, "Data::scalars given {other:?}");
                    Value::Nil
                }
            })
            .collect();
        Data(Graph::from_roots(values))
    }

    /// One string.
    pub fn string(s: impl Into<Vec<u8>>) -> Data {
        Data::scalars(vec![Value::Str(s.into())])
    }

    pub fn roots(&self) -> &[Value] {
        &self.0.roots
    }

    pub fn graph(&self) -> &Graph {
        &self.0
    }

    /// The graph, to send over the wire.
    pub fn into_graph(self) -> Graph {
        self.0
    }

    /// Only the first root (nil if there is none): a channel message is one value.
    pub fn first_only(mut self) -> Data {
        self.0.roots.truncate(1);
        if self.0.roots.is_empty() {
            self.0.roots.push(Value::Nil);
        }
        self
    }

    /// `scalar` in front of the roots (`true, v1, v2...`). Non-scalars become nil.
    pub fn prepend(mut self, scalar: Value) -> Data {
        let v = Data::scalars(vec![scalar]).0.roots.remove(0);
        self.0.roots.insert(0, v);
        self
    }

    /// `scalar` after the roots (`v, true`). Non-scalars become nil.
    pub fn append(mut self, scalar: Value) -> Data {
        let v = Data::scalars(vec![scalar]).0.roots.remove(0);
        self.0.roots.push(v);
        self
    }

    /// Every shared object referred to.
    pub fn shared_refs(&self) -> Vec<SharedRef> {
        self.0.shared_refs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{FunctionDef, SharedKind, Unsendable};

    fn ch(id: u64) -> Value {
        Value::Shared(SharedRef {
            kind: SharedKind::Channel,
            id,
        })
    }

    #[test]
    fn plain_values_and_cycles_are_data() {
        let mut g = Graph::from_roots(vec![Value::Int(1), Value::Table(0)]);
        g.push_table(vec![
            (Value::Str(b"self".to_vec()), Value::Table(0)),
            (Value::Int(1), Value::Table(1)),
        ]);
        g.push_table(vec![(Value::Float(0.5), Value::Bool(true))]);
        let d = Data::check(g.clone(), Refs::Any).unwrap();
        assert_eq!(d.graph(), &g);
    }

    #[test]
    fn code_globals_builtins_and_env_are_refused() {
        let mut f = Graph::from_roots(vec![Value::Function(0)]);
        f.functions.push(FunctionDef {
            proto: 0,
            upvalues: vec![],
        });
        f.protos.push(vec![0x1b, b'L']);
        assert!(Data::check(f, Refs::Any)
            .unwrap_err()
            .0
            .contains("functions"));
        // Globals ride on an otherwise empty graph: the attack of issue 11.
        let mut g = Graph::default();
        g.globals
            .push(("tostring".into(), Value::Builtin("os.execute".into())));
        assert!(Data::check(g, Refs::Any).unwrap_err().0.contains("globals"));
        let mut u = Graph::default();
        u.unsendable_globals.push(Unsendable {
            name: "x".into(),
            reason: "y".into(),
        });
        assert!(Data::check(u, Refs::Any).is_err());
        let b = Graph::from_roots(vec![Value::Builtin("os.execute".into())]);
        assert!(Data::check(b, Refs::Any)
            .unwrap_err()
            .0
            .contains("os.execute"));
        // Env as a table key, deep inside.
        let mut e = Graph::from_roots(vec![Value::Table(0)]);
        e.push_table(vec![(Value::Int(1), Value::Table(1))]);
        e.push_table(vec![(Value::Env, Value::Int(1))]);
        assert!(Data::check(e, Refs::Any)
            .unwrap_err()
            .0
            .contains("globals table"));
    }

    #[test]
    fn references_are_scoped() {
        let allowed: HashSet<SharedRef> = [SharedRef {
            kind: SharedKind::Channel,
            id: 1,
        }]
        .into();
        let g = Graph::from_roots(vec![ch(1)]);
        assert!(Data::check(g, Refs::Only(&allowed)).is_ok());
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        g.push_table(vec![(Value::Int(1), ch(2))]);
        assert_eq!(
            Data::check(g.clone(), Refs::Only(&allowed)).unwrap_err().0,
            "channel#2 was not shared with this task"
        );
        assert!(Data::check(g, Refs::Any).is_ok());
    }

    #[test]
    fn depth_dangling_and_unreachable_tables_are_refused() {
        let n = 100_000;
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        for i in 0..n {
            let next = if i + 1 < n {
                Value::Table(i + 1)
            } else {
                Value::Nil
            };
            g.push_table(vec![(Value::Int(1), next)]);
        }
        assert!(Data::check(g, Refs::Any).unwrap_err().0.contains("deeper"));
        let g = Graph::from_roots(vec![Value::Table(3)]);
        assert!(Data::check(g, Refs::Any)
            .unwrap_err()
            .0
            .contains("out of range"));
        let mut g = Graph::from_roots(vec![Value::Nil]);
        g.push_table(vec![]);
        assert!(Data::check(g, Refs::Any)
            .unwrap_err()
            .0
            .contains("no value"));
        // Exactly MAX_DEPTH levels is fine.
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        for i in 0..MAX_DEPTH as u32 {
            let next = if (i as usize) + 1 < MAX_DEPTH {
                Value::Table(i + 1)
            } else {
                Value::Nil
            };
            g.push_table(vec![(Value::Int(1), next)]);
        }
        assert!(Data::check(g, Refs::Any).is_ok());
    }

    #[test]
    fn scalar_helpers() {
        let d = Data::string("x")
            .prepend(Value::Bool(true))
            .append(Value::Int(3));
        assert_eq!(
            d.roots(),
            &[Value::Bool(true), Value::Str(b"x".to_vec()), Value::Int(3)]
        );
        assert_eq!(Data::default().first_only().roots(), &[Value::Nil]);
    }
}
