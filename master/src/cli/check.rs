//! `sloth-master check SCRIPT [-i INVENTORY]`: the script's problems found before it
//! runs (see [`crate::lint`]), one line each, then a count. Exit 0 with none or only
//! warnings, 1 with errors, 2 when the script or the inventory cannot be read.

use std::io::Write;
use std::path::Path;

use super::{FleetArgs, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::engine::inventory::Inventory;
use crate::lint::{self, Finding, Level};

pub(super) fn command(script: &Path, inventory: Option<&Path>) -> i32 {
    match findings(script, inventory) {
        Ok(found) => {
            let errors = report_to(script, &found, &mut std::io::stdout());
            if errors > 0 {
                EXIT_FAILED
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            errln!("error: {e}");
            EXIT_USAGE
        }
    }
}

/// What `check` finds in `script`; `Err` when it or the inventory cannot be read.
fn findings(script: &Path, inventory: Option<&Path>) -> Result<Vec<Finding>, String> {
    let inv = match inventory {
        Some(p) => Some(Inventory::load(p).map_err(|e| e.to_string())?),
        None => None,
    };
    check_source(script, inv.as_ref())
}

/// What `run --check-first` finds: against the hosts the run may reach (the inventory,
/// narrowed by `--limit`).
pub(super) fn findings_for_run(script: &Path, fa: &FleetArgs) -> Result<Vec<Finding>, String> {
    // The hosts the run may reach: an inventory's, or those of `--local-fleet N`.
    let inv = if fa.inventory.is_some() || fa.local_fleet.is_some() {
        Some(super::fleet::fleet_inventory(fa)?)
    } else {
        None
    };
    check_source(script, inv.as_ref())
}

fn check_source(script: &Path, inv: Option<&Inventory>) -> Result<Vec<Finding>, String> {
    let source = std::fs::read(script)
        .map_err(|e| format!("cannot read script {}: {e}", script.display()))?;
    let source = String::from_utf8_lossy(&source);
    Ok(lint::check(&file_name(script), &source, inv))
}

/// Write the findings and a count to `w`; the number of errors.
pub(super) fn report_to(script: &Path, found: &[Finding], w: &mut dyn Write) -> usize {
    let name = script.display().to_string();
    for f in found {
        let _ = writeln!(w, "{}", f.render(&name));
    }
    let errors = found.iter().filter(|f| f.level == Level::Error).count();
    let warnings = found.len() - errors;
    let _ = if found.is_empty() {
        writeln!(w, "{name}: no problems found")
    } else {
        writeln!(w, "{name}: {errors} error(s), {warnings} warning(s)")
    };
    errors
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "script".into())
}
