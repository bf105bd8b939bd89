//! The command line as clap parses it: the commands, their options and the fleet
//! options they share, and the checks of option values (`--local-fleet N`,
//! `-e KEY=VALUE`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sloth-master",
    version,
    about = "Run Lua deploy scripts across a fleet of sloth agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Inventory file (TOML).
    #[arg(short = 'i', long = "inventory")]
    pub inventory: Option<PathBuf>,
    /// Start a local agent per inventory host (or N agents local-01.. without one).
    #[arg(long = "local-fleet", num_args = 0..=1, default_missing_value = "3", value_name = "N", value_parser = parse_fleet_size)]
    pub local_fleet: Option<usize>,
    /// Only these hosts may be reached (a host pattern).
    #[arg(long)]
    pub limit: Option<String>,
    /// Directory with ca.crt, master.crt and master.key.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// Connect timeout per agent, e.g. 3s.
    #[arg(long, default_value = "3s")]
    pub connect_timeout: String,
}

/// `--local-fleet [N]`: a clearer message when the script path landed here.
fn parse_fleet_size(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("the local fleet needs at least one agent".into()),
        Err(_) => Err(format!(
            "'{v}' is not a number of agents; put --local-fleet after the script \
             (`sloth-master run SCRIPT --local-fleet`) or write --local-fleet=N"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a script.
    Run {
        script: PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Set vars.KEY = VALUE in the script (repeatable).
        #[arg(short = 'e', long = "extra-var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Print one JSON document on stdout and nothing else there.
        #[arg(long)]
        json: bool,
        /// Stream the run's events as JSON lines to FILE (`-`: standard output).
        #[arg(long, value_name = "FILE")]
        events: Option<String>,
        /// Check mode: every resource works out what it would change and changes
        /// nothing; raw calls that change a host (exec.run, fs writers, ...) in tasks
        /// are skipped.
        #[arg(long)]
        check: bool,
        /// Print a unified diff of each change under its host (with or without --check).
        #[arg(long)]
        diff: bool,
        /// Check the script first (like `sloth-master check`); do not run it when
        /// that finds errors.
        #[arg(long)]
        check_first: bool,
    },
    /// Check a script without running it: syntax, unknown functions and options,
    /// hosts that match nothing, changes a task would make only on its copy.
    Check {
        script: PathBuf,
        /// Inventory file (TOML): literal host names and patterns are checked against it.
        #[arg(short = 'i', long = "inventory")]
        inventory: Option<PathBuf>,
    },
    /// Health of every matched agent: a table (or --json); exit 1 if any is down.
    Health {
        /// Host pattern (default: all).
        #[arg(default_value = "all")]
        pattern: String,
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long)]
        json: bool,
        /// Also run this script as a custom check (its exit code counts), e.g.
        /// examples/parallel_health_check.sloth.
        #[arg(long, value_name = "SCRIPT")]
        check: Option<PathBuf>,
    },
    /// Run a shell command on every matched agent, output streamed with host prefixes.
    Exec {
        /// Host pattern.
        pattern: String,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Per-host time limit, e.g. 30s.
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        json: bool,
        /// Stream the run's events as JSON lines to FILE (`-`: standard output).
        #[arg(long, value_name = "FILE")]
        events: Option<String>,
        /// The command (after --).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Certificates for the fleet.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create the fleet CA and the master certificate.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace an existing CA (every agent certificate must then be re-issued).
        #[arg(long)]
        force: bool,
    },
    /// Issue an agent certificate signed by the fleet CA.
    Issue {
        name: String,
        /// Extra subject alternative names (IP addresses or DNS names).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Where to write NAME.crt and NAME.key (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `-e KEY=VALUE` options as pairs, in order.
pub(super) fn parse_vars(vars: &[String]) -> Result<Vec<(String, String)>, String> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(format!("-e '{v}': expected KEY=VALUE")),
        })
        .collect()
}
