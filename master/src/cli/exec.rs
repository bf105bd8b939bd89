//! `sloth-master exec`: runs a shell command on every matched agent through a small
//! script (`exec.lua`), its output streamed with host prefixes, then a summary.

use std::sync::Arc;

use super::output::Output;
use super::run::{run_with, Reporting, RunSpec};
use super::{FleetArgs, EXIT_USAGE};
use crate::engine::inventory::Inventory;
use sloth_proto::change::Mode;

/// The script `exec` runs (its first line is a comment, so its code keeps the line
/// numbers it had when it was written inline).
const EXEC_SCRIPT: &str = include_str!("exec.lua");

pub(super) fn exec(
    pattern: &str,
    fa: &FleetArgs,
    timeout: Option<&str>,
    reporting: &Reporting,
    command: &[String],
) -> i32 {
    if fa.inventory.is_none() && fa.local_fleet.is_none() {
        errln!("error: no hosts to run on (use -i INVENTORY or --local-fleet)");
        return EXIT_USAGE;
    }
    // A bad pattern is a usage error, found before any agent is started.
    if let Some(inv) = &fa.inventory {
        let checked = Inventory::load(inv)
            .map_err(|e| e.to_string())
            .and_then(|i| i.resolve(pattern).map_err(|e| e.to_string()));
        if let Err(e) = checked {
            errln!("error: {e}");
            return EXIT_USAGE;
        }
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            errln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let path = dir.path().join("exec.sloth");
    if let Err(e) = std::fs::write(&path, EXEC_SCRIPT) {
        errln!("error: {e}");
        return EXIT_USAGE;
    }
    let command = command.join(" ");
    let vars = vec![
        format!("pattern={pattern}"),
        format!("command={command}"),
        format!("timeout={}", timeout.unwrap_or("")),
    ];
    let events = match reporting.open_events() {
        Ok(e) => e,
        Err(e) => {
            errln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    // Each host's output is kept for the document's `exec` section.
    let out = Output::new(reporting.json)
        .with_events(events)
        .keeping_output();
    let spec = RunSpec {
        exec: Some(&command),
        ..RunSpec::script(&path, "exec", &vars, Mode::default())
    };
    run_with(Arc::new(out), &spec, fa)
}
