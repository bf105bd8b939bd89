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

impl Reporting {
    /// `--json` and `--events`, which cannot both have standard output.
    pub fn new(json: bool, events: Option<String>) -> Result<Reporting, String> {
        if json && events.as_deref() == Some("-") {
            return Err(
                "--json and --events - both want standard output; give --events a file".into(),
            );
        }
        Ok(Reporting { json, events })
    }

    /// The `--events` stream, opened (`None` without the flag).
    pub fn open_events(&self) -> Result<Option<EventStream>, String> {
        self.events.as_deref().map(EventStream::open).transpose()
    }
}

/// What to run, and how.
pub(super) struct RunSpec<'a> {
    pub script: &'a Path,
    /// How reports name the script (`exec` names the command it runs).
    pub label: &'a str,
    /// `-e KEY=VALUE` as given.
    pub vars: &'a [String],
    pub mode: Mode,
    /// `sloth-master exec`'s command.
    pub exec: Option<&'a str>,
    /// `--check-first`: lint the script, and do not run it when that finds errors.
    pub check_first: bool,
}

impl<'a> RunSpec<'a> {
    pub fn script(script: &'a Path, label: &'a str, vars: &'a [String], mode: Mode) -> Self {
        RunSpec {
            script,
            label,
            vars,
            mode,
            exec: None,
            check_first: false,
        }
    }
}

pub(super) fn run(spec: &RunSpec, fa: &FleetArgs, reporting: &Reporting) -> i32 {
    if reporting.json || reporting.events.as_deref() == Some("-") {
        super::output::machine::reserve_stdout();
    }
    let events = match reporting.open_events() {
        Ok(e) => e,
        Err(e) => return usage_failure(reporting.json, spec.label, spec.exec, e),
    };
    let out = Output::new(reporting.json)
        .with_mode(spec.mode)
        .with_events(events);
    run_with(Arc::new(out), spec, fa)
}

/// A usage error found before the run could start (a bad `--events` path, a bad
/// `exec` pattern or timeout, a bad sloth.toml): said on stderr and, with `--json`,
/// in the one document stdout carries, like every other usage error. Exit 2.
pub(super) fn usage_failure(json: bool, label: &str, exec: Option<&str>, msg: String) -> i32 {
    if json {
        super::output::machine::reserve_stdout();
    }
    let out = Output::new(json);
    out.run_started(RunInfo::new(label, &[]));
    out.error(&msg);
    out.finish(&RunEnd {
        wall: std::time::Duration::ZERO,
        check: false,
        success: false,
        exit_code: EXIT_USAGE,
        script_error: Some(msg),
        exec: exec.map(str::to_string),
    });
    EXIT_USAGE
}

/// `run` with a given output (`health --check --json` keeps the run's document).
pub(super) fn run_with(out: Arc<Output>, spec: &RunSpec, fa: &FleetArgs) -> i32 {
    let RunSpec {
        script,
        label,
        vars,
        mode,
        exec,
        check_first,
    } = *spec;
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
    // `exec`'s vars are its own plumbing (pattern, command), not the user's `-e`.
    let reported: &[(String, String)] = match (&parsed, exec) {
        (Ok(v), None) => v,
        _ => &[],
    };
    out.run_started(RunInfo::new(label, reported));
    let vars = match parsed {
        Ok(v) => v,
        Err(e) => return usage(&out, e),
    };
    match std::fs::metadata(script) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return usage(&out, format!("{} is not a file", script.display())),
        Err(e) => {
            return usage(
                &out,
                format!("cannot read script {}: {e}", script.display()),
            )
        }
    }
    super::history::record(
        &out,
        fa,
        if exec.is_some() { "exec" } else { "run" },
        Some(script),
        exec,
        mode.check,
    );
    if check_first {
        match super::check::findings_for_run(script, fa) {
            Ok(found) => {
                // Diagnostics: on stderr, so stdout stays the document or the stream.
                let errors = super::check::report_to(script, &found, &mut std::io::stderr());
                if errors > 0 {
                    let msg = format!(
                        "{}: the check found {errors} error(s); not running it",
                        script.display()
                    );
                    out.error(&msg);
                    out.finish(&end(EXIT_FAILED, Some(msg), std::time::Duration::ZERO));
                    return EXIT_FAILED;
                }
            }
            Err(e) => return usage(&out, e),
        }
    }
    let started = Instant::now();
    report_interrupt(&out, exec, mode.check, started, None);
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => return usage(&out, e),
    };
    install_signal_handler(&rt);
    let mut fleet = match prepare_fleet(fa) {
        Ok(f) => f,
        Err(e) => return usage(&out, e),
    };
    // `exec` sends one small task per host and gets lines back: nothing to gain
    // from full-size packets.
    if exec.is_some() {
        fleet.mesh_cfg.probe_mtu = false;
    }
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
    report_interrupt(&out, exec, mode.check, started, Some(runtime.clone()));
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
    if super::interrupted() {
        // The signal handler reports this run's end and exits 130 (bounded); the
        // script stopped because of it, which is no second ending to report.
        std::thread::sleep(std::time::Duration::from_secs(10));
        return super::EXIT_INTERRUPTED;
    }
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
        errln!("{failed} task(s) failed");
    }
    out.finish(&end(code, result.err(), wall));
    // Threads abandoned in a C call (a local task past its deadline) must not hold
    // the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// If the master is interrupted, the run still reports its end: the tasks in flight as
/// cancelled, the recap, the `--json` document and `run_finished`, exit code 130.
fn report_interrupt(
    out: &Arc<Output>,
    exec: Option<&str>,
    check: bool,
    started: Instant,
    runtime: Option<Arc<Runtime>>,
) {
    let (out, exec) = (out.clone(), exec.map(str::to_string));
    super::on_interrupt(move || {
        let msg = "interrupted (Ctrl-C or SIGTERM)".to_string();
        if let Some(rt) = runtime {
            rt.interrupt(&msg);
        }
        out.error(&msg);
        out.print_recap(started.elapsed());
        out.finish(&RunEnd {
            wall: started.elapsed(),
            check,
            success: false,
            exit_code: super::EXIT_INTERRUPTED,
            script_error: Some(msg),
            exec,
        });
    });
}
