//! `sloth-master check SCRIPT [-i INVENTORY]`: the script's problems found before it
//! runs (see [`crate::lint`]), one line each, then a count. Exit 0 with none or only
//! warnings, 1 with errors, 2 when the script or the inventory cannot be read.

use std::path::Path;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::engine::inventory::Inventory;
use crate::lint::{self, Finding, Level};

pub(super) fn command(script: &Path, inventory: Option<&Path>) -> i32 {
    match findings(script, inventory) {
        Ok(found) => {
            let errors = report(script, &found);
            if errors > 0 {
                EXIT_FAILED
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
    }
}

/// What `check` finds in `script`; `Err` when it or the inventory cannot be read.
pub(super) fn findings(script: &Path, inventory: Option<&Path>) -> Result<Vec<Finding>, String> {
    let source = std::fs::read(script)
        .map_err(|e| format!("cannot read script {}: {e}", script.display()))?;
    let source = String::from_utf8_lossy(&source);
    let inv = match inventory {
        Some(p) => Some(Inventory::load(p).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(lint::check(&file_name(script), &source, inv.as_ref()))
}

/// Print the findings and a count; the number of errors.
pub(super) fn report(script: &Path, found: &[Finding]) -> usize {
    let name = script.display().to_string();
    for f in found {
        println!("{}", f.render(&name));
    }
    let errors = found.iter().filter(|f| f.level == Level::Error).count();
    let warnings = found.len() - errors;
    if found.is_empty() {
        println!("{name}: no problems found");
    } else {
        println!("{name}: {errors} error(s), {warnings} warning(s)");
    }
    errors
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "script".into())
}
