//! `sloth-master exec`: runs a shell command on every matched agent through a small
//! script (`exec.lua`), its output streamed with host prefixes, then a summary.

use std::sync::Arc;

use super::output::Output;
use super::run::{run_with, usage_failure, Reporting, RunSpec};
use super::FleetArgs;
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
    if reporting.json || reporting.events.as_deref() == Some("-") {
        super::output::machine::reserve_stdout();
    }
    let command = command.join(" ");
    let usage = |msg: String| usage_failure(reporting.json, "exec", Some(&command), msg);
    if fa.inventory.is_none() && fa.local_fleet.is_none() {
        return usage("no hosts to run on (use -i INVENTORY or --local-fleet)".into());
    }
    // Bad options are usage errors, found before any agent is started.
    if let Some(t) = timeout {
        if let Err(e) = sloth_proto::text::parse_time_limit(t) {
            return usage(format!("--timeout: {e}"));
        }
    }
    if let Some(inv) = &fa.inventory {
        let checked = Inventory::load(inv)
            .map_err(|e| e.to_string())
            .and_then(|i| i.resolve(pattern).map_err(|e| e.to_string()));
        if let Err(e) = checked {
            return usage(e);
        }
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return usage(format!("a temporary directory: {e}")),
    };
    let path = dir.path().join("exec.sloth");
    if let Err(e) = std::fs::write(&path, EXEC_SCRIPT) {
        return usage(format!("{}: {e}", path.display()));
    }
    let vars = vec![
        format!("pattern={pattern}"),
        format!("command={command}"),
        format!("timeout={}", timeout.unwrap_or("")),
    ];
    let events = match reporting.open_events() {
        Ok(e) => e,
        Err(e) => return usage(e),
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
