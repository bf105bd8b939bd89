//! Check mode for the standard library's calls that change the host: in a task
//! run with `--check`, `os.remove` and `os.rename` change nothing, `io.open` for
//! writing and `io.output(path)` write to `/dev/null` instead, and `io.popen` runs
//! nothing (`os.execute` goes through `exec.run`, which skips it). The main script is
//! not guarded: it orchestrates the run.

use mlua::{Function, Lua, MultiValue, Table, Value as LV};
use sloth_lua::context::{skip_in_check_mode, SKIPPED_IN_CHECK_MODE};

/// Wrap `os.remove` and `os.rename`: `true, "skipped in check mode"` in check mode;
/// `os.tmpname` leaves no file behind there.
pub(crate) fn guard_os(lua: &Lua, os_lib: &Table) -> mlua::Result<()> {
    for name in ["remove", "rename"] {
        let Ok(LV::Function(orig)) = os_lib.raw_get::<LV>(name) else {
            continue;
        };
        let f = lua.create_function(move |lua, args: MultiValue| {
            let what = format!("os.{name}({})", describe(&args));
            match skip_in_check_mode(lua, &what)? {
                Some(done) => Ok(done),
                None => orig.call::<MultiValue>(args),
            }
        })?;
        os_lib.raw_set(name, f)?;
    }
    // `os.tmpname` makes the file it names (mkstemp): in check mode the name is
    // given, and the file it made goes at once.
    if let Ok(LV::Function(orig)) = os_lib.raw_get::<LV>("tmpname") {
        let f = lua.create_function(move |lua, ()| {
            let name = orig.call::<LV>(())?;
            let ctx = sloth_lua::context::task_ctx(lua)?;
            if ctx.mode.check && !ctx.orchestrator {
                if let LV::String(s) = &name {
                    let _ = std::fs::remove_file(&*s.to_str()?);
                }
            }
            Ok(name)
        })?;
        os_lib.raw_set("tmpname", f)?;
    }
    Ok(())
}

/// Wrap `io.open` (a writing mode: `w`, `a` or `+`), `io.output(path)` and
/// `io.popen`. In check mode the first two open `/dev/null` instead (a script can write
/// and close as usual, nothing reaches the file), and `io.popen` gives `nil,
/// "COMMAND: skipped in check mode"` as a failed start does.
pub(crate) fn guard_io(lua: &Lua, io_lib: &Table) -> mlua::Result<()> {
    let Ok(LV::Function(open)) = io_lib.raw_get::<LV>("open") else {
        return Ok(());
    };
    let open2 = open.clone();
    let wrapped = lua.create_function(move |lua, args: MultiValue| {
        let mode = match args.get(1) {
            Some(LV::String(m)) => m.to_string_lossy().to_string(),
            _ => "r".into(),
        };
        let writes = mode.contains(['w', 'a', '+']);
        if writes && refused(lua, &format!("io.open({})", describe(&args)))? {
            return open2.call::<MultiValue>(("/dev/null", "w"));
        }
        open2.call::<MultiValue>(args)
    })?;
    io_lib.raw_set("open", wrapped)?;
    if let Ok(LV::Function(output)) = io_lib.raw_get::<LV>("output") {
        let wrapped = lua.create_function(move |lua, args: MultiValue| {
            let names_a_file = matches!(args.front(), Some(LV::String(_)));
            if names_a_file && refused(lua, &format!("io.output({})", describe(&args)))? {
                return output.call::<MultiValue>("/dev/null");
            }
            output.call::<MultiValue>(args)
        })?;
        io_lib.raw_set("output", wrapped)?;
    }
    if let Ok(LV::Function(popen)) = io_lib.raw_get::<LV>("popen") {
        let wrapped: Function = lua.create_function(move |lua, args: MultiValue| {
            if refused(lua, &format!("io.popen({})", describe(&args)))? {
                return refusal(lua, &args);
            }
            popen.call::<MultiValue>(args)
        })?;
        io_lib.raw_set("popen", wrapped)?;
    }
    Ok(())
}

fn refused(lua: &Lua, what: &str) -> mlua::Result<bool> {
    Ok(skip_in_check_mode(lua, what)?.is_some())
}

fn refusal(lua: &Lua, args: &MultiValue) -> mlua::Result<MultiValue> {
    let first = match args.front() {
        Some(LV::String(s)) => s.to_string_lossy().to_string(),
        _ => "?".into(),
    };
    Ok(MultiValue::from_vec(vec![
        LV::Nil,
        LV::String(lua.create_string(format!("{first}: {SKIPPED_IN_CHECK_MODE}"))?),
    ]))
}

/// The string arguments of a call, for the log line.
fn describe(args: &MultiValue) -> String {
    args.iter()
        .map(|a| match a {
            LV::String(s) => format!("{:?}", s.to_string_lossy()),
            other => other.type_name().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
