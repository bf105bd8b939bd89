//! `sloth-master health`: pings every matched agent and prints a table (or `--json`);
//! with `--check SCRIPT`, also runs that script on the same hosts, its exit code counting
//! too.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::output::{self, Output};
use super::run::{run, run_with, Reporting, RunSpec};
use super::{install_signal_handler, prepare_fleet, tokio_runtime, FleetArgs};
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::engine::mesh::Mesh;
use sloth_proto::change::Mode;

/// The `health` command: the exit code of the check, or of the check script if worse.
pub(super) fn command(pattern: &str, fleet: &FleetArgs, json: bool, check: Option<&Path>) -> i32 {
    let (code, doc) = health(pattern, fleet, json);
    match check {
        Some(script) if code != EXIT_USAGE => {
            let limited = FleetArgs {
                limit: Some(pattern.to_string()),
                ..fleet.clone()
            };
            let label = script.display().to_string();
            let spec = RunSpec::script(script, &label, &[], Mode::default());
            if !json {
                return code.max(run(&spec, &limited, &Reporting::default()));
            }
            // One document: the health part and the check script's run.
            let out = Arc::new(Output::keeping_json());
            let rc = run_with(out.clone(), &spec, &limited);
            output::print_doc(&serde_json::json!({
                "health": doc,
                "check": out.take_json(),
            }));
            code.max(rc)
        }
        _ => {
            if let Some(d) = &doc {
                output::print_doc(d);
            }
            code
        }
    }
}

/// Check the hosts; the exit code, and with `json` the document (not printed here).
fn health(pattern: &str, fa: &FleetArgs, json: bool) -> (i32, Option<serde_json::Value>) {
    let code = |c: i32| (c, None);
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => {
            errln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    install_signal_handler(&rt);
    let mut fleet = match prepare_fleet(fa) {
        Ok(f) => f,
        Err(e) => {
            errln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    let hosts = match fleet.inventory.resolve(pattern) {
        Ok(h) => h,
        Err(e) => {
            errln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    let Some(certs) = &fleet.certs else {
        errln!("error: no hosts to check (use -i INVENTORY or --local-fleet)");
        return code(EXIT_USAGE);
    };
    // A health check exchanges a few small frames per host, and shows the facts
    // each agent sends in its Welcome.
    fleet.mesh_cfg.probe_mtu = false;
    fleet.mesh_cfg.welcome_facts = true;
    let mesh = {
        let _g = rt.enter();
        match Mesh::new(&fleet.inventory, certs, fleet.mesh_cfg.clone()) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                errln!("error: {e:#}");
                return code(EXIT_USAGE);
            }
        }
    };
    let start = Instant::now();
    // Gathered on the worker thread: a host's answer then wakes no second thread.
    let checks = rt.spawn(crate::engine::health::check_all(mesh.clone(), hosts));
    let rows = match rt.block_on(checks) {
        Ok(rows) => rows,
        Err(e) => {
            errln!("error: the health check failed: {e}");
            return code(EXIT_FAILED);
        }
    };
    let took = start.elapsed();
    rt.block_on(mesh.close());
    if let Some(lf) = fleet.local.as_mut() {
        lf.stop();
    }
    let down = rows.iter().filter(|r| !r.up).count();
    let exit = if down > 0 { EXIT_FAILED } else { EXIT_OK };
    super::history::record_health(fa, &rows, exit);
    if json {
        let doc = serde_json::json!({
            "hosts": rows,
            "up": rows.len() - down,
            "down": down,
            "duration_ms": took.as_millis() as u64,
        });
        return (exit, Some(doc));
    } else {
        outln!("{}", crate::engine::health::render_table(&rows));
        for r in rows.iter().filter(|r| r.cert_expiring()) {
            errln!(
                "warning: {}'s certificate expires on {} ({} days): a master with the CA key renews it when it connects with a third of its lifetime or less left; else enroll it again",
                r.host,
                r.cert_expires.as_deref().unwrap_or("?"),
                r.cert_days_left.unwrap_or(0)
            );
        }
        outln!(
            "{} up, {down} down, checked in {}",
            rows.len() - down,
            output::fmt_ms(took.as_millis() as u64)
        );
    }
    (exit, None)
}
