//! `sloth-master run`: runs a script in the master's main state on its own thread,
//! with the mesh to the fleet, then prints the recap (or the `--json` document).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::args::parse_vars;
use super::output::{EventStream, Output, RunEnd, RunInfo};
use super::{install_signal_handler, prepare_fleet, tokio_runtime, FleetArgs};
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::engine::mesh::Mesh;
use crate::engine::runtime::Runtime;
use crate::lua::main_state;
use sloth_proto::change::Mode;

/// How a run reports, besides the terminal.
#[derive(Default)]
pub(super) struct Reporting {
    pub json: bool,
    /// `--events FILE|-`
    pub events: Option<String>,
}

pub(super) fn run(
    script: &Path,
    fa: &FleetArgs,
    vars: &[String],
    reporting: &Reporting,
    mode: Mode,
) -> i32 {
    let events = match reporting
        .events
        .as_deref()
        .map(EventStream::open)
        .transpose()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let out = Output::new(reporting.json)
        .with_mode(mode)
        .with_events(events);
    let label = script.display().to_string();
    run_with(Arc::new(out), script, &label, fa, vars, mode, None)
}

/// `run` with a given output (`health --check --json` keeps the run's document);
/// `label` names the script in reports, `exec` the command `sloth-master exec` runs.
pub(super) fn run_with(
    out: Arc<Output>,
    script: &Path,
    label: &str,
    fa: &FleetArgs,
    vars: &[String],
    mode: Mode,
    exec: Option<&str>,
) -> i32 {
    let json = out.json;
    let end = |code: i32, error: Option<String>, wall: std::time::Duration| RunEnd {
        wall,
        check: mode.check,
        success: code == EXIT_OK,
        exit_code: code,
        script_error: error,
        exec: exec.map(str::to_string),
    };
    let usage = |out: &Output, msg: String| {
        out.error(&msg);
        out.finish(&end(EXIT_USAGE, Some(msg), std::time::Duration::ZERO));
        EXIT_USAGE
    };
    let parsed = parse_vars(vars);
    out.run_started(RunInfo::new(label, parsed.as_deref().unwrap_or(&[])));
    let vars = match parsed {
        Ok(v) => v,
        Err(e) => return usage(&out, e),
    };
    if !script.is_file() {
        return usage(&out, format!("cannot read script {}", script.display()));
    }
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => return usage(&out, e),
    };
    install_signal_handler(&rt);
    let mut fleet = match prepare_fleet(fa) {
        Ok(f) => f,
        Err(e) => return usage(&out, e),
    };
    let start = Instant::now();
    let mesh = match &fleet.certs {
        Some(c) => {
            let _g = rt.enter();
            match Mesh::new(&fleet.inventory, c, fleet.mesh_cfg.clone()) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => return usage(&out, format!("{e:#}")),
            }
        }
        None => None,
    };
    sloth_modules::EXECUTOR.enable_prewarm(2);
    let runtime = Runtime::new(
        rt.handle().clone(),
        mesh.clone(),
        fleet.inventory.clone(),
        out.clone(),
        mode,
        fleet.task_timeout,
    );
    let script_path = script.to_path_buf();
    let rt2 = runtime.clone();
    let th = std::thread::Builder::new()
        .name("sloth-script".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let r = main_state::run_script(&rt2, &script_path, &vars);
            rt2.wait_unfinished();
            r
        });
    let result = match th {
        Ok(h) => h
            .join()
            .unwrap_or_else(|_| Err("the script thread panicked".into())),
        Err(e) => Err(format!("cannot start the script thread: {e}")),
    };
    if let Some(m) = &mesh {
        rt.block_on(m.close());
    }
    if let Some(lf) = fleet.local.as_mut() {
        lf.stop();
    }
    let wall = start.elapsed();
    let failed = out.failed_tasks();
    let code = match (&result, failed) {
        (Err(_), _) => EXIT_FAILED,
        (Ok(()), 0) => EXIT_OK,
        _ => EXIT_FAILED,
    };
    if let Err(e) = &result {
        out.error(&format!("script failed: {e}"));
    }
    out.print_recap(wall);
    if code == EXIT_FAILED && result.is_ok() && !json {
        eprintln!("{failed} task(s) failed");
    }
    out.finish(&end(code, result.err(), wall));
    // Threads abandoned in a C call (a local task past its deadline) must not hold
    // the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}
