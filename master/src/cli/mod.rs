//! Command-line commands. Exit codes: 0 success, 1 a task or the script failed,
//! 2 usage or configuration error.
//!
//! `args.rs` holds the clap definitions, `config.rs` reads sloth.toml; each command has its file (`run.rs`,
//! `exec.rs` with `exec.lua`, `health.rs`, `certs.rs`, `check.rs`), `fleet.rs` prepares the fleet
//! they reach, `output.rs` prints and `local_fleet.rs` starts agents on this machine.
//! This file dispatches, and builds the async runtime with the master's signal handling.

mod args;
mod bootstrap;
pub mod certs;
mod check;
pub mod config;
mod enroll;
mod exec;
mod fleet;
mod health;
mod history;
pub mod local_fleet;
pub mod output;
mod run;

pub use args::{CertsCmd, Cli, Cmd, FleetArgs, HistoryCmd, TokenCmd};
pub use fleet::{prepare_fleet, Fleet};
use sloth_proto::change::Mode;
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INTERRUPTED: i32 = 130;

/// Blocking threads the master's runtime may start: shared-object calls proxied from
/// agents run on them (`engine::dispatch`), and many may wait at once.
const MAX_BLOCKING_THREADS: usize = 4096;

pub fn main(cli: Cli) -> i32 {
    let code = command(cli);
    // A `--json` document that could not be written is no success.
    if code == EXIT_OK && output::machine::write_failed() {
        return EXIT_FAILED;
    }
    code
}

/// A usage error found before a command could start: with `run --json` or
/// `exec --json`, stdout still carries the one document that says so.
fn usage_error(cmd: &Cmd, msg: String) -> i32 {
    match cmd {
        Cmd::Run {
            json: true, script, ..
        } => run::usage_failure(true, &script.display().to_string(), None, msg),
        Cmd::Exec {
            json: true,
            command,
            ..
        } => run::usage_failure(true, "exec", Some(&command.join(" ")), msg),
        _ => {
            errln!("error: {msg}");
            EXIT_USAGE
        }
    }
}

fn command(cli: Cli) -> i32 {
    let cfg = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return usage_error(&cli.cmd, e.to_string()),
    };
    let history = args::HistorySettings::of(cli.state.as_deref(), cli.no_history, &cfg);
    let certs_dir = |dir: Option<&std::path::Path>| {
        dir.map(std::path::Path::to_path_buf)
            .or_else(|| cfg.certs.clone())
            .unwrap_or_else(|| PathBuf::from(args::DEFAULT_CERTS))
    };
    let lifetimes = certs::Lifetimes {
        agent: cfg.agent_cert_lifetime.clone(),
        master: cfg.master_cert_lifetime.clone(),
    };
    let done = |r: anyhow::Result<()>| match r {
        Ok(()) => EXIT_OK,
        Err(e) => {
            errln!("error: {e:#}");
            EXIT_USAGE
        }
    };
    match cli.cmd {
        Cmd::Certs { cmd } => done(certs::certs(cmd, &certs_dir, &lifetimes)),
        Cmd::Token { cmd } => done(certs::token(cmd, &certs_dir)),
        Cmd::Bootstrap {
            pattern,
            mut fleet,
            agent_binary,
            ssh_options,
            parallel,
            wait,
            json,
        } => {
            fleet.apply(&cfg, &history);
            let a = bootstrap::Args {
                pattern: &pattern,
                agent_binary: agent_binary.as_deref(),
                ssh_options: &ssh_options,
                parallel,
                wait: &wait,
                json,
            };
            bootstrap::command(&a, &fleet)
        }
        Cmd::Enroll {
            pattern,
            mut fleet,
            wait,
        } => {
            fleet.apply(&cfg, &history);
            enroll::command(&pattern, &fleet, &wait)
        }
        Cmd::Run {
            script,
            mut fleet,
            vars,
            json,
            events,
            check,
            diff,
            check_first,
            rerun_failed,
            force,
        } => {
            let label = script.display().to_string();
            let usage = |msg: String| run::usage_failure(json, &label, None, msg);
            let reporting = match run::Reporting::new(json, events) {
                Ok(r) => r,
                Err(e) => return usage(e),
            };
            fleet.apply(&cfg, &history);
            // --rerun-failed [ID] and --limit @failed: the failed hosts of a run.
            let rerun = match (&rerun_failed, fleet.limit.as_deref()) {
                (Some(_), Some(limit)) if limit != "@failed" => {
                    return usage(format!(
                        "--rerun-failed chooses the hosts: leave out --limit {limit}"
                    ));
                }
                (Some(id), _) => Some(Some(id.as_str()).filter(|i| *i != "last")),
                (None, Some("@failed")) => Some(None),
                _ => None,
            };
            if force && rerun.is_none() {
                return usage("--force goes with --rerun-failed or --limit @failed".into());
            }
            if let Some(id) = rerun {
                match history::rerun_limit(&script, id, force, &fleet.history) {
                    Ok(Some((run_id, hosts))) => {
                        fleet.limit = Some(hosts);
                        fleet.limit_origin = Some(format!("the failed hosts of run {run_id}"));
                    }
                    Ok(None) => return EXIT_OK,
                    Err((code, msg)) if code == EXIT_USAGE => return usage(msg),
                    Err((code, msg)) => {
                        errln!("error: {msg}");
                        return code;
                    }
                }
            }
            let spec = run::RunSpec {
                check_first,
                ..run::RunSpec::script(&script, &label, &vars, Mode { check, diff })
            };
            run::run(&spec, &fleet, &reporting)
        }
        Cmd::History {
            cmd,
            limit,
            host,
            failed,
            json,
        } => history::command(
            cmd,
            crate::history::query::Filter {
                limit: limit as usize,
                host,
                failed,
            },
            json,
            &history,
        ),
        Cmd::Check { script, inventory } => check::command(
            &script,
            inventory.or_else(|| cfg.inventory.clone()).as_deref(),
        ),
        Cmd::Health {
            pattern,
            mut fleet,
            json,
            check,
        } => {
            fleet.apply(&cfg, &history);
            health::command(&pattern, &fleet, json, check.as_deref())
        }
        Cmd::Exec {
            pattern,
            mut fleet,
            timeout,
            json,
            events,
            command,
        } => {
            let reporting = match run::Reporting::new(json, events) {
                Ok(r) => r,
                Err(e) => return run::usage_failure(json, "exec", Some(&command.join(" ")), e),
            };
            fleet.apply(&cfg, &history);
            exec::exec(&pattern, &fleet, timeout.as_deref(), &reporting, &command)
        }
    }
}

/// The master's async runtime (`sloth_transport::process::runtime`, shared with the
/// agent).
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    sloth_transport::process::runtime(MAX_BLOCKING_THREADS).map_err(|e| e.to_string())
}

/// What a run does when interrupted (report its end), set by the run in progress.
static ON_INTERRUPT: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>> =
    std::sync::Mutex::new(None);

/// Run `f` if the process is interrupted (replacing what was set before).
pub(super) fn on_interrupt(f: impl FnOnce() + Send + 'static) {
    if let Ok(mut hook) = ON_INTERRUPT.lock() {
        *hook = Some(Box::new(f));
    }
}

/// Set when the process is interrupted: from then on the signal handler ends it.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived: a run that ends meanwhile leaves the exit (130)
/// to the signal handler rather than report a second ending.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// How long an interrupted run may take to stop its work and report its end.
const INTERRUPT_REPORT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long local agents get to stop (and kill their tasks' commands) after `SIGTERM`.
const INTERRUPT_AGENTS: std::time::Duration = std::time::Duration::from_secs(1);

/// Ctrl-C / SIGTERM: the run stops its script, its tasks, its connections and its
/// commands and reports its end (the `--json` document, `run_finished`, the recap),
/// local agents are stopped, then the process exits 130. Bounded: about 4 s at most.
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    let signalled = {
        let _g = rt.enter();
        sloth_transport::process::shutdown_signal()
    };
    rt.spawn(async {
        signalled.await;
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        errln!("interrupted: stopping the run");
        let hook = ON_INTERRUPT.lock().ok().and_then(|mut h| h.take());
        // On the blocking pool: the hook waits for work this runtime does (closing
        // the connections), so it must not hold the runtime's worker thread.
        if let Some(f) = hook {
            let _ = tokio::time::timeout(INTERRUPT_REPORT, tokio::task::spawn_blocking(f)).await;
        }
        let _ = tokio::task::spawn_blocking(|| local_fleet::terminate_all(INTERRUPT_AGENTS)).await;
        std::process::exit(EXIT_INTERRUPTED);
    });
}
