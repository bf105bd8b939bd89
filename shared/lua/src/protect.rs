//! Error hygiene for sloth's own Lua functions: `protect(f)` re-raises a function's
//! errors as plain strings at the caller's line (no "runtime error:" prefix, no
//! traceback), so scripts can `pcall` and `match` them.

use mlua::{Lua, Table, Value as LV};

/// `protect(f [, name])`: a function that calls `f` and re-raises its errors as plain
/// strings (without mlua's "runtime error:" prefix and traceback) at the caller's line;
/// an argument that could not be converted is named with `name` (`bad argument #1 to
/// 'goroutine.async': ...`).
///
/// Its six helpers come as arguments (see [`keep_protect_deps`]), never from the
/// globals it is first loaded under, which a task may have replaced by then.
const PROTECT_SRC: &str = r#"
local pack, unpack, pcall, error, type, tostring = ...
local function clean(e, name)
  if type(e) ~= "userdata" then return e end
  local s = tostring(e)
  s = s:gsub("^runtime error: ", ""):gsub("\nstack traceback:.*$", "")
  if name then
    s = s:gsub("^bad argument (#%d+):", "bad argument %1 to '" .. name .. "':")
  end
  return s
end
return function(f, name)
  return function(...)
    local r = pack(pcall(f, ...))
    if r[1] then return unpack(r, 2, r.n) end
    error(clean(r[2], name), 2)
  end
end
"#;

/// Where [`keep_protect_deps`] keeps the wrapper's helpers.
const DEPS_KEY: &str = "sloth.protect.deps";

/// Keep the standard functions `protect` uses (`table.pack`, `table.unpack`, `pcall`,
/// `error`, `type`, `tostring`) while the globals are still the state's own: a state
/// that builds the wrapper lazily, after a task has run (and perhaps assigned a global
/// `type` or `error`), still gets the real ones. Call right after opening the libraries.
pub fn keep_protect_deps(lua: &Lua) -> mlua::Result<()> {
    let deps = lua.create_sequence_from(pristine_deps(lua)?)?;
    lua.set_named_registry_value(DEPS_KEY, deps)
}

fn pristine_deps(lua: &Lua) -> mlua::Result<Vec<LV>> {
    let g = lua.globals();
    let table: Table = g.raw_get("table")?;
    Ok(vec![
        table.raw_get("pack")?,
        table.raw_get("unpack")?,
        g.raw_get("pcall")?,
        g.raw_get("error")?,
        g.raw_get("type")?,
        g.raw_get("tostring")?,
    ])
}

/// The state's `protect` function (see [`PROTECT_SRC`]).
pub fn protector(lua: &Lua) -> mlua::Result<mlua::Function> {
    const KEY: &str = "sloth.protect";
    if let Some(f) = lua.named_registry_value::<Option<mlua::Function>>(KEY)? {
        return Ok(f);
    }
    // A state that kept nothing builds its wrapper before any script runs (the
    // master's main state): its globals are still its own.
    let deps: Vec<LV> = match lua.named_registry_value::<Option<Table>>(DEPS_KEY)? {
        Some(t) => t.sequence_values::<LV>().collect::<mlua::Result<_>>()?,
        None => pristine_deps(lua)?,
    };
    static CODE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let f: mlua::Function =
        load_compiled_once(lua, &CODE, PROTECT_SRC)?.call(mlua::MultiValue::from_iter(deps))?;
    lua.set_named_registry_value(KEY, &f)?;
    Ok(f)
}

/// Load a Lua chunk of sloth's own, compiled once per process: every state loads the
/// same (stripped) bytecode instead of parsing the source again.
fn load_compiled_once(
    lua: &Lua,
    cache: &'static std::sync::OnceLock<Vec<u8>>,
    src: &str,
) -> mlua::Result<mlua::Function> {
    let code = match cache.get() {
        Some(c) => c,
        None => {
            let f = lua.load(src).set_name("=sloth").into_function()?;
            cache.get_or_init(|| f.dump(true))
        }
    };
    lua.load(code.as_slice())
        .set_mode(mlua::chunk::ChunkMode::Binary)
        .into_function()
}

/// Make every function of the named global tables raise a plain string (without
/// mlua's "runtime error:" prefix and traceback) located at the caller's line, so
/// `pcall(goroutine.async, ...)` gives a message a script can `match`. Must run
/// before `capture::install`, so the wrappers are what travels by name.
pub fn wrap_errors(lua: &Lua, tables: &[&str]) -> mlua::Result<()> {
    let g = lua.globals();
    for name in tables {
        if let LV::Table(t) = g.raw_get::<LV>(*name)? {
            wrap_table(lua, &t, name)?;
        }
    }
    Ok(())
}

/// Wrap every function of the module table `module` (see [`wrap_errors`]); errors
/// name the function as `module.key`.
pub fn wrap_table(lua: &Lua, t: &Table, module: &str) -> mlua::Result<()> {
    let protect = protector(lua)?;
    let funcs: Vec<(LV, mlua::Function)> = t
        .pairs::<LV, LV>()
        .filter_map(|p| match p {
            Ok((k, LV::Function(f))) => Some((k, f)),
            _ => None,
        })
        .collect();
    for (k, f) in funcs {
        let name = match &k {
            LV::String(s) => Some(format!("{module}.{}", s.to_string_lossy())),
            _ => None,
        };
        t.raw_set(k, protect.call::<mlua::Function>((f, name))?)?;
    }
    Ok(())
}
