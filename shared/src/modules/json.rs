//! `json.encode(value [, {pretty=true}])` and `json.decode(text)`.

use mlua::{Lua, LuaSerdeExt, Table, Value as LV};

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let json = lua.create_table()?;
    json.raw_set(
        "encode",
        lua.create_function(|_, (v, opts): (LV, Option<Table>)| {
            let pretty = opts
                .map(|o| o.get::<bool>("pretty").unwrap_or(false))
                .unwrap_or(false);
            let res = if pretty {
                serde_json::to_string_pretty(&v)
            } else {
                serde_json::to_string(&v)
            };
            res.map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
        })?,
    )?;
    json.raw_set(
        "decode",
        lua.create_function(|lua, text: mlua::LuaString| {
            let v: serde_json::Value = match serde_json::from_slice(&text.as_bytes()) {
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
