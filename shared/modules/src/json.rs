//! `json.encode(value [, {pretty=true}])` and `json.decode(text)`.

use mlua::{Lua, LuaSerdeExt, Table, Value as LV};
use serde_json::Value as J;
use sloth_lua::context;
use sloth_lua::opts::Opts;

/// Tables nested deeper than this are refused (a cycle ends here too).
const MAX_DEPTH: usize = 128;

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let json = lua.create_table()?;
    json.raw_set(
        "encode",
        lua.create_function(|lua, (v, opts): (LV, Option<Table>)| {
            let mut o = Opts::of(lua, "json.encode", opts)?;
            let pretty = o.bool("pretty")?.unwrap_or(false);
            o.finish()?;
            let value = to_json(lua, &v, 0, &mut context::WorkMeter::default())
                .map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))?;
            let res = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            };
            res.map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
        })?,
    )?;
    json.raw_set(
        "decode",
        lua.create_function(|lua, text: mlua::LuaString| {
            let text = text.as_bytes();
            if text.len() >= context::LONG_INPUT {
                context::long_work_ahead();
            }
            let v: serde_json::Value = match serde_json::from_slice(&text) {
                Ok(v) => v,
                Err(e) => {
                    return Ok((LV::Nil, Some(format!("json.decode: {e}"))));
                }
            };
            Ok((lua.to_value(&v)?, None))
        })?,
    )?;
    json.raw_set("null", LV::NULL)?;
    g.raw_set("json", json)
}

/// A Lua value as JSON. A table is an array when its keys are exactly 1..n (or it is
/// an empty array decoded by `json.decode`), otherwise an object; integer and float
/// keys of an object become strings, so nothing is dropped (`{1, x = 2}` is
/// `{"1":1,"x":2}`).
/// `done` counts the work, for [`context::long_work_check`].
fn to_json(lua: &Lua, v: &LV, depth: usize, done: &mut context::WorkMeter) -> Result<J, String> {
    done.add(match v {
        LV::String(s) => s.as_bytes().len(),
        _ => 0,
    });
    Ok(match v {
        LV::Nil => J::Null,
        LV::LightUserData(p) if p.0.is_null() => J::Null,
        LV::Boolean(b) => J::Bool(*b),
        LV::Integer(i) => J::from(*i),
        LV::Number(n) => serde_json::Number::from_f64(*n)
            .map(J::Number)
            .ok_or_else(|| format!("cannot encode the number {n} (JSON has no NaN or infinity)"))?,
        LV::String(s) => J::String(
            s.to_str()
                .map_err(|_| "cannot encode a string that is not valid UTF-8".to_string())?
                .to_string(),
        ),
        LV::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(format!(
                    "tables nested more than {MAX_DEPTH} deep (is there a cycle?)"
                ));
            }
            table_to_json(lua, t, depth, done)?
        }
        other => return Err(format!("cannot serialize <{}>", other.type_name())),
    })
}

fn table_to_json(
    lua: &Lua,
    t: &Table,
    depth: usize,
    done: &mut context::WorkMeter,
) -> Result<J, String> {
    let n = t.raw_len();
    let mut count = 0usize;
    let mut sequence = true;
    for pair in t.pairs::<LV, LV>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        count += 1;
        if !matches!(k, LV::Integer(i) if i >= 1 && (i as usize) <= n) {
            sequence = false;
        }
    }
    let decoded_array = t.metatable().is_some_and(|m| m == lua.array_metatable());
    // A decoded array keeps being an array when elements were set to nil (they are
    // `null`), as long as every key is still a positive integer.
    let mut array_len = (count > 0 && sequence && count == n).then_some(n);
    if decoded_array && array_len.is_none() {
        let mut max = 0usize;
        let mut all_positive = true;
        for pair in t.pairs::<LV, LV>() {
            match pair.map_err(|e| e.to_string())?.0 {
                LV::Integer(i) if i >= 1 => max = max.max(i as usize),
                _ => all_positive = false,
            }
        }
        // Not for a few far-apart indexes (t[1e9] = 1): that is an object, not a
        // billion nulls.
        if all_positive && max <= count.saturating_mul(2) + 16 {
            array_len = Some(max);
        }
    }
    if let Some(len) = array_len {
        let mut items = Vec::with_capacity(len);
        for i in 1..=len {
            let v: LV = t.raw_get(i).map_err(|e| e.to_string())?;
            items.push(to_json(lua, &v, depth + 1, done)?);
        }
        return Ok(J::Array(items));
    }
    let mut map = serde_json::Map::new();
    for pair in t.pairs::<LV, LV>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let key = match &k {
            LV::String(s) => s
                .to_str()
                .map_err(|_| "cannot encode a table key that is not valid UTF-8".to_string())?
                .to_string(),
            LV::Integer(i) => i.to_string(),
            LV::Number(f) => f.to_string(),
            other => {
                return Err(format!(
                    "a table key of type {} cannot be a JSON object key",
                    other.type_name()
                ))
            }
        };
        let value = to_json(lua, &v, depth + 1, done)?;
        if map.insert(key.clone(), value).is_some() {
            return Err(format!(
                "two keys of a table both become the JSON key \"{key}\" (a number and a string?)"
            ));
        }
    }
    Ok(J::Object(map))
}
