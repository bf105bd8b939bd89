//! The master's layers depend one way: `cli` → `lua` → `engine`, and `cli` →
//! `bootstrap` → `pki` → `engine`. The engine has no Lua code and never reaches up; the
//! Lua bindings never reach the CLI; the PKI reaches neither Lua, nor bootstrap, nor
//! the CLI; bootstrap has no Lua and no CLI. This test
//! reads the sources, so a new `use` that breaks the direction fails here.

use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    out
}

/// Lines of code (not comments) of the files under `src/<layer>` that mention one of
/// `forbidden`.
fn offenders(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut bad = Vec::new();
    for (path, text) in sources(&dir) {
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if forbidden.iter().any(|f| code.contains(f)) {
                bad.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    bad
}

#[test]
fn the_engine_has_no_lua_and_does_not_reach_up() {
    let bad = offenders("engine", &["mlua", "crate::lua", "crate::cli"]);
    assert!(
        bad.is_empty(),
        "the engine depends on a layer above it:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_lua_bindings_do_not_reach_the_cli() {
    let bad = offenders("lua", &["crate::cli"]);
    assert!(
        bad.is_empty(),
        "the Lua bindings depend on the CLI:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checker_does_not_reach_the_cli() {
    let bad = offenders("lint", &["crate::cli"]);
    assert!(
        bad.is_empty(),
        "the script checker depends on the CLI:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_pki_and_bootstrap_stay_below_the_cli() {
    let bad = offenders(
        "pki",
        &[
            "mlua",
            "crate::lua",
            "crate::cli",
            "crate::bootstrap",
            "crate::lint",
        ],
    );
    assert!(
        bad.is_empty(),
        "the PKI depends on a layer above it:\n{}",
        bad.join("\n")
    );
    let bad = offenders(
        "bootstrap",
        &["mlua", "crate::lua", "crate::cli", "crate::lint"],
    );
    assert!(
        bad.is_empty(),
        "bootstrap depends on a layer above it:\n{}",
        bad.join("\n")
    );
    let bad = offenders("engine", &["crate::pki", "crate::bootstrap"]);
    assert!(bad.is_empty(), "the engine reaches up:\n{}", bad.join("\n"));
}

#[test]
fn the_history_is_storage_only() {
    let bad = offenders(
        "history",
        &[
            "mlua",
            "crate::lua",
            "crate::cli",
            "crate::engine",
            "crate::pki",
            "crate::bootstrap",
        ],
    );
    assert!(
        bad.is_empty(),
        "the run history depends on another layer:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_layers_are_where_this_test_looks() {
    for layer in [
        "engine",
        "lua",
        "lint",
        "cli",
        "pki",
        "bootstrap",
        "history",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(layer);
        assert!(!sources(&dir).is_empty(), "no sources in {}", dir.display());
    }
}
