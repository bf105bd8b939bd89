//! The command line as clap parses it: the commands, their options and the fleet
//! options they share (and what sloth.toml fills in), and the checks of option values (`--local-fleet N`,
//! `-e KEY=VALUE`).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use super::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "sloth-master",
    version,
    about = "Run Lua deploy scripts across a fleet of sloth agents"
)]
pub struct Cli {
    /// The config file (default: ./sloth.toml, else $XDG_CONFIG_HOME/sloth/sloth.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the run history lives (default: $SLOTH_STATE_DIR, else
    /// $XDG_STATE_HOME/sloth, ~/.local/state/sloth).
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Do not record this command in the run history.
    #[arg(long, global = true)]
    pub no_history: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Inventory file (TOML) [default: `inventory` in sloth.toml].
    #[arg(short = 'i', long = "inventory")]
    pub inventory: Option<PathBuf>,
    /// Start a local agent per inventory host (or N agents local-01.. without one).
    #[arg(long = "local-fleet", num_args = 0..=1, default_missing_value = "3", value_name = "N", value_parser = parse_fleet_size)]
    pub local_fleet: Option<usize>,
    /// Only these hosts may be reached (a host pattern).
    #[arg(long)]
    pub limit: Option<String>,
    /// Where `limit` came from when not from `--limit` (e.g. "run ID's failed hosts"),
    /// for error messages.
    #[arg(skip)]
    pub limit_origin: Option<String>,
    /// Directory with ca.crt, master.crt and master.key [default: `certs` in
    /// sloth.toml, else ./certs].
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Connect timeout per agent, e.g. 3s [default: sloth.toml's, else 3s].
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Time limit of a task that sets none, e.g. 10m [default: sloth.toml's, else
    /// none; agents cap every task at their own --task-timeout].
    #[arg(long)]
    pub task_timeout: Option<String>,
    /// Lifetime of renewed agent certificates (sloth.toml's `agent_cert_lifetime`).
    #[arg(skip)]
    pub agent_cert_lifetime: Option<String>,
    /// How runs are recorded (`--state`, `--no-history`, sloth.toml).
    #[arg(skip)]
    pub history: HistorySettings,
}

/// How the run history is kept.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// The database; `None`: not recorded (`--no-history`, `history = false`, or no
    /// state directory can be found).
    pub db: Option<PathBuf>,
    /// The database `history` and `--rerun-failed` read: the same file, found even
    /// when recording is off; `None` when no state directory can be found.
    pub read_db: Option<PathBuf>,
    pub log_lines: u32,
    pub max_size: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            db: None,
            read_db: None,
            log_lines: crate::history::recorder::DEFAULT_LOG_LINES,
            max_size: crate::history::recorder::DEFAULT_MAX_SIZE,
        }
    }
}

impl HistorySettings {
    /// From the flags and the config file.
    pub fn of(state: Option<&Path>, no_history: bool, cfg: &Config) -> HistorySettings {
        let on = !no_history && cfg.history.unwrap_or(true);
        let dir = crate::history::state_dir(state.or(cfg.state_dir.as_deref()));
        let read_db = dir.map(|d| d.join(crate::history::DB_FILE));
        HistorySettings {
            db: read_db.clone().filter(|_| on),
            read_db,
            log_lines: cfg
                .history_log_lines
                .unwrap_or(crate::history::recorder::DEFAULT_LOG_LINES),
            max_size: cfg
                .history_max_size
                .unwrap_or(crate::history::recorder::DEFAULT_MAX_SIZE),
        }
    }
}

impl FleetArgs {
    /// Fill what the command line left open from the config file. Its inventory is
    /// the default for `-i` unless `--local-fleet` asks for a throw-away fleet.
    pub fn apply(&mut self, cfg: &Config, history: &HistorySettings) {
        self.history = history.clone();
        if self.inventory.is_none() && self.local_fleet.is_none() {
            self.inventory = cfg.inventory.clone();
        }
        if self.certs.is_none() {
            self.certs = cfg.certs.clone();
        }
        if self.connect_timeout.is_none() {
            self.connect_timeout = cfg.connect_timeout.clone();
        }
        if self.task_timeout.is_none() {
            self.task_timeout = cfg.task_timeout.clone();
        }
        self.agent_cert_lifetime = cfg.agent_cert_lifetime.clone();
    }

    /// The lifetime of agent certificates this master issues or renews: sloth.toml's
    /// `agent_cert_lifetime`, else [`Lifetime::AGENT`].
    pub fn agent_lifetime(&self) -> Result<sloth_transport::Lifetime, String> {
        match &self.agent_cert_lifetime {
            Some(l) => sloth_transport::Lifetime::parse(l)
                .map_err(|e| format!("agent_cert_lifetime: {e:#}")),
            None => Ok(sloth_transport::Lifetime::AGENT),
        }
    }

    /// The certificate directory: `--certs`, sloth.toml's `certs`, else `./certs`.
    pub fn certs_dir(&self) -> &Path {
        self.certs.as_deref().unwrap_or(Path::new(DEFAULT_CERTS))
    }
}

/// The certificate directory when neither `--certs` nor sloth.toml names one.
pub const DEFAULT_CERTS: &str = "certs";

/// `--local-fleet [N]`: a clearer message when the script path landed here.
fn parse_fleet_size(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > super::local_fleet::MAX_AGENTS => Err(format!(
            "{n} local agents is more than this machine should start (at most {})",
            super::local_fleet::MAX_AGENTS
        )),
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
        /// Run only on the hosts that failed or were unreachable in run ID (default:
        /// the last run of this script); put it after the script, or write
        /// --rerun-failed=ID. `--limit @failed` is the same.
        #[arg(long, num_args = 0..=1, default_missing_value = "last", value_name = "ID",
              value_parser = parse_rerun)]
        rerun_failed: Option<String>,
        /// With --rerun-failed or --limit @failed: rerun even though the script
        /// changed since that run, or that run was of another script.
        #[arg(long)]
        force: bool,
    },
    /// The runs recorded: a table (or --json); `history show ID`, `history prune`.
    History {
        #[command(subcommand)]
        cmd: Option<HistoryCmd>,
        /// How many runs, newest first (at least 1).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only runs that reached this host (with --failed: where it failed or was
        /// unreachable).
        #[arg(long)]
        host: Option<String>,
        /// Only runs that failed or were interrupted.
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check a script without running it: syntax, unknown functions and options,
    /// hosts that match nothing, changes a task would make only on its copy.
    Check {
        script: PathBuf,
        /// Inventory file (TOML): literal host names and patterns are checked against it
        /// [default: `inventory` in sloth.toml].
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
    /// Join tokens agents enroll with.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Install, configure, enroll and start the agent on the matched hosts over SSH
    /// (idempotent: a host that has it all is left alone).
    Bootstrap {
        /// Host pattern.
        pattern: String,
        #[command(flatten)]
        fleet: FleetArgs,
        /// The agent binary to install [default: sloth-agent next to sloth-master].
        #[arg(long)]
        agent_binary: Option<PathBuf>,
        /// An OpenSSH option for every connection, e.g. StrictHostKeyChecking=accept-new
        /// (repeatable).
        #[arg(long = "ssh-option", value_name = "OPTION")]
        ssh_options: Vec<String>,
        /// Hosts bootstrapped at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// How long to wait for each agent to be ready to enroll.
        #[arg(long, default_value = "30s")]
        wait: String,
        /// One JSON document instead of lines and a recap.
        #[arg(long)]
        json: bool,
    },
    /// Enroll the matched hosts whose agents wait with a join token: each gets its
    /// certificate for the key it made itself.
    Enroll {
        /// Host pattern.
        pattern: String,
        #[command(flatten)]
        fleet: FleetArgs,
        /// How long to wait for each agent.
        #[arg(long, default_value = "20s")]
        wait: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create the fleet CA and the master certificate.
    Init {
        /// [default: `certs` in sloth.toml, else ./certs]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing CA (every agent certificate must then be re-issued).
        #[arg(long)]
        force: bool,
        /// Lifetime of the master certificate, e.g. 90d [default: sloth.toml's
        /// `master_cert_lifetime`, else 90d].
        #[arg(long)]
        master_lifetime: Option<String>,
    },
    /// Issue an agent certificate signed by the fleet CA, with a key made here (join
    /// tokens keep the key on the agent: `sloth-master token create`).
    Issue {
        name: String,
        /// Extra subject alternative names (IP addresses or DNS names).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// The CA's directory [default: `certs` in sloth.toml, else ./certs].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to write NAME.crt and NAME.key (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Lifetime, e.g. 30d [default: sloth.toml's `agent_cert_lifetime`, else 30d].
        #[arg(long)]
        lifetime: Option<String>,
        /// Replace an existing NAME.crt and NAME.key.
        #[arg(long)]
        force: bool,
    },
    /// Replace the master's key and certificate (needs ca.key).
    RenewMaster {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Lifetime, e.g. 90d [default: sloth.toml's `master_cert_lifetime`, else 90d].
        #[arg(long)]
        lifetime: Option<String>,
    },
    /// Revoke every certificate of an agent or master name, or one serial, and write
    /// the fleet's new CRL (signed by the CA, numbered).
    Revoke {
        /// The name whose unexpired certificates to revoke.
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// One certificate's serial number (hex, as `certs list` shows).
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Every certificate the CA issued: name, role, serial, expiry, state.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HistoryCmd {
    /// One run: its per-host recap, errors, changes (with diffs) and logs.
    Show {
        id: String,
        /// Only what concerns this host.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove runs older than a duration, e.g. 30d.
    Prune {
        #[arg(long, value_name = "DURATION")]
        older_than: String,
    },
}

/// `--rerun-failed [ID]`: a run id, or `last`; anything else is most likely the script
/// name read as the id.
fn parse_rerun(v: &str) -> Result<String, String> {
    if v == "last" || super::history::looks_like_run_id(v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "'{v}' is not a run id (like 20261207T054500Z-3f2a9c1b); put --rerun-failed after the script, or write --rerun-failed=ID"
        ))
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Mint a join token (printed once; the master keeps only its hash).
    Create {
        /// The agent name it may enroll, or a pattern with `*` (`web-*`).
        names: String,
        /// How long it is valid, e.g. 1h, 30m (at most 30d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The tokens: id, names, expiry, uses left, who used them.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a token: it can no longer enroll anyone.
    Remove {
        id: String,
        #[arg(long)]
        dir: Option<PathBuf>,
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
