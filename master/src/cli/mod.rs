//! Command-line commands. Exit codes: 0 success, 1 a task or the script failed,
//! 2 usage or configuration error.
//!
//! `args.rs` holds the clap definitions, `config.rs` reads sloth.toml; each command has its file (`run.rs`,
//! `exec.rs` with `exec.lua`, `health.rs`, `certs.rs`, `check.rs`), `fleet.rs` prepares the fleet
//! they reach, `output.rs` prints and `local_fleet.rs` starts agents on this machine.
//! This file dispatches, and builds the async runtime with the master's signal handling.

mod args;
pub mod certs;
mod check;
pub mod config;
mod exec;
mod fleet;
mod health;
pub mod local_fleet;
pub mod output;
mod run;

pub use args::{CertsCmd, Cli, Cmd, FleetArgs};
pub use fleet::{prepare_fleet, Fleet};
use sloth_proto::change::Mode;
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Blocking threads the master's runtime may start: shared-object calls proxied from
/// agents run on them (`engine::dispatch`), and many may wait at once.
const MAX_BLOCKING_THREADS: usize = 4096;

pub fn main(cli: Cli) -> i32 {
    let cfg = match config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let certs_dir = |dir: Option<PathBuf>| {
        dir.or_else(|| cfg.certs.clone())
            .unwrap_or_else(|| PathBuf::from(args::DEFAULT_CERTS))
    };
    match cli.cmd {
        Cmd::Certs { cmd } => {
            let r = match cmd {
                CertsCmd::Init { dir, force } => certs::init(&certs_dir(dir), force),
                CertsCmd::Issue {
                    name,
                    sans,
                    dir,
                    out,
                } => certs::issue(&certs_dir(dir), &name, &sans, out.as_deref()),
            };
            match r {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    EXIT_USAGE
                }
            }
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
        } => {
            if json && events.as_deref() == Some("-") {
                eprintln!(
                    "error: --json and --events - both want standard output; give --events a file"
                );
                return EXIT_USAGE;
            }
            fleet.apply(&cfg);
            if check_first {
                match check::findings(&script, fleet.inventory.as_deref()) {
                    Ok(found) if check::report(&script, &found) > 0 => return EXIT_FAILED,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        return EXIT_USAGE;
                    }
                }
            }
            let reporting = run::Reporting { json, events };
            run::run(&script, &fleet, &vars, &reporting, Mode { check, diff })
        }
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
            fleet.apply(&cfg);
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
            if json && events.as_deref() == Some("-") {
                eprintln!(
                    "error: --json and --events - both want standard output; give --events a file"
                );
                return EXIT_USAGE;
            }
            fleet.apply(&cfg);
            let reporting = run::Reporting { json, events };
            exec::exec(&pattern, &fleet, timeout.as_deref(), &reporting, &command)
        }
    }
}

/// The master's async runtime (`sloth_transport::process::runtime`, shared with the
/// agent).
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    sloth_transport::process::runtime(MAX_BLOCKING_THREADS).map_err(|e| e.to_string())
}

/// Ctrl-C / SIGTERM: stop local agents, then exit 130.
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        sloth_transport::process::shutdown_signal().await;
        eprintln!("interrupted: stopping local agents");
        local_fleet::kill_all();
        std::process::exit(130);
    });
}
