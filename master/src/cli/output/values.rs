//! A task's return values as JSON (`--json`, `--events`). The form, documented in
//! docs/cli.md and docs/run.schema.json:
//!
//! - `nil` → `null`; booleans and integers as they are; a float as a number, or the
//!   string `"nan"`, `"inf"` or `"-inf"`;
//! - a string as a JSON string when it is UTF-8, else `{"$hex": "..."}`;
//! - a table with the keys `1..n` and nothing else → an array; any other table → an
//!   object, its keys as strings (`1` → `"1"`, `true` → `"true"`); an empty table → `{}`;
//! - a table met again on its own path → `{"$cycle": true}`; past 100,000 values or
//!   100 levels → `{"$truncated": true}`;
//! - a shared object → `{"$shared": "channel#3"}`.

use serde_json::{json, Map, Value as J};
use sloth_proto::data::Data;
use sloth_proto::graph::{Graph, Value};

const MAX_VALUES: usize = 100_000;
const MAX_DEPTH: usize = 100;

/// The roots of `d` as a JSON array.
pub fn to_json(d: &Data) -> J {
    let mut budget = MAX_VALUES;
    let mut path = Vec::new();
    J::Array(
        d.roots()
            .iter()
            .map(|v| value(d.graph(), v, &mut budget, &mut path))
            .collect(),
    )
}

fn value(g: &Graph, v: &Value, budget: &mut usize, path: &mut Vec<u32>) -> J {
    if *budget == 0 {
        return json!({"$truncated": true});
    }
    *budget -= 1;
    match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) if f.is_nan() => J::from("nan"),
        Value::Float(f) if f.is_infinite() => J::from(if *f > 0.0 { "inf" } else { "-inf" }),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => match std::str::from_utf8(s) {
            Ok(t) => J::from(t),
            Err(_) => json!({ "$hex": sloth_lua::artifact::hex(s) }),
        },
        Value::Shared(r) => json!({ "$shared": format!("{}#{}", r.kind.type_name(), r.id) }),
        Value::Table(i) => {
            if path.contains(i) {
                return json!({"$cycle": true});
            }
            if path.len() >= MAX_DEPTH {
                return json!({"$truncated": true});
            }
            let Some(t) = g.tables.get(*i as usize) else {
                return J::Null;
            };
            path.push(*i);
            let n = t.entries.len();
            let is_array = n > 0
                && (1..=n as i64).all(|k| t.entries.iter().any(|(key, _)| *key == Value::Int(k)));
            let out = if is_array {
                let mut items: Vec<(i64, J)> = t
                    .entries
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Value::Int(i) => Some((*i, value(g, v, budget, path))),
                        _ => None,
                    })
                    .collect();
                items.sort_by_key(|(k, _)| *k);
                J::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                let mut m = Map::new();
                for (k, v) in &t.entries {
                    m.insert(key(k), value(g, v, budget, path));
                }
                J::Object(m)
            };
            path.pop();
            out
        }
        // Data never holds code; a graph that did is shown, not restored.
        Value::Function(_) | Value::Builtin(_) | Value::Env => json!({"$code": true}),
    }
}

fn key(k: &Value) -> String {
    match k {
        Value::Str(s) => String::from_utf8_lossy(s).to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Shared(r) => format!("{}#{}", r.kind.type_name(), r.id),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sloth_proto::data::Refs;
    use sloth_proto::graph::{SharedKind, SharedRef, TableDef};

    fn data(g: Graph) -> Data {
        Data::check(g, Refs::Any).expect("data")
    }

    #[test]
    fn scalars_arrays_and_objects() {
        let mut g = Graph::from_roots(vec![
            Value::Nil,
            Value::Bool(true),
            Value::Int(7),
            Value::Float(1.5),
            Value::Float(f64::NAN),
            Value::Str(b"text".to_vec()),
            Value::Str(vec![0xff, 0x00]),
            Value::Table(0),
            Value::Table(1),
            Value::Table(2),
        ]);
        g.tables.push(TableDef {
            entries: vec![
                (Value::Int(2), Value::Str(b"b".to_vec())),
                (Value::Int(1), Value::Str(b"a".to_vec())),
            ],
        });
        g.tables.push(TableDef {
            entries: vec![
                (Value::Str(b"name".to_vec()), Value::Str(b"web".to_vec())),
                (Value::Int(3), Value::Bool(false)),
            ],
        });
        g.tables.push(TableDef::default());
        let j = to_json(&data(g));
        assert_eq!(
            j,
            json!([null, true, 7, 1.5, "nan", "text", {"$hex": "ff00"}, ["a", "b"],
                   {"name": "web", "3": false}, {}])
        );
    }

    #[test]
    fn cycles_and_shared_objects_have_a_form() {
        let mut g = Graph::from_roots(vec![Value::Table(0)]);
        g.tables.push(TableDef {
            entries: vec![
                (Value::Str(b"self".to_vec()), Value::Table(0)),
                (
                    Value::Str(b"ch".to_vec()),
                    Value::Shared(SharedRef {
                        kind: SharedKind::Channel,
                        id: 3,
                    }),
                ),
            ],
        });
        let j = to_json(&data(g));
        assert_eq!(
            j,
            json!([{"self": {"$cycle": true}, "ch": {"$shared": "channel#3"}}])
        );
    }
}
