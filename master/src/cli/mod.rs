//! Command-line commands. Exit codes: 0 success, 1 a task or the script failed,
//! 2 usage or configuration error.

pub mod certs;
pub mod local_fleet;
pub mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::cli::output::Output;
use crate::engine::inventory::{Inventory, DEFAULT_PORT};
use crate::engine::mesh::{MasterCerts, Mesh, MeshConfig};
use crate::engine::runtime::Runtime;
use crate::lua::main_state;
use local_fleet::LocalFleet;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

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

pub fn main(cli: Cli) -> i32 {
    match cli.cmd {
        Cmd::Certs { cmd } => {
            let r = match cmd {
                CertsCmd::Init { dir, force } => crate::cli::certs::init(&dir, force),
                CertsCmd::Issue {
                    name,
                    sans,
                    dir,
                    out,
                } => crate::cli::certs::issue(&dir, &name, &sans, out.as_deref()),
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
            fleet,
            vars,
            json,
        } => run(&script, &fleet, &vars, json),
        Cmd::Health {
            pattern,
            fleet,
            json,
            check,
        } => {
            let (code, doc) = health(&pattern, &fleet, json);
            match check {
                Some(script) if code != EXIT_USAGE => {
                    let limited = FleetArgs {
                        limit: Some(pattern.clone()),
                        ..fleet.clone()
                    };
                    if !json {
                        return code.max(run(&script, &limited, &[], false));
                    }
                    // One document: the health part and the check script's run.
                    let out = Arc::new(Output::keeping_json());
                    let rc = run_with(out.clone(), &script, &limited, &[]);
                    crate::cli::output::print_doc(&serde_json::json!({
                        "health": doc,
                        "check": out.take_json(),
                    }));
                    code.max(rc)
                }
                _ => {
                    if let Some(d) = &doc {
                        crate::cli::output::print_doc(d);
                    }
                    code
                }
            }
        }
        Cmd::Exec {
            pattern,
            fleet,
            timeout,
            json,
            command,
        } => exec(&pattern, &fleet, timeout.as_deref(), json, &command),
    }
}

/// Check the hosts; the exit code, and with `json` the document (not printed here).
fn health(pattern: &str, fa: &FleetArgs, json: bool) -> (i32, Option<serde_json::Value>) {
    let code = |c: i32| (c, None);
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    install_signal_handler(&rt);
    let mut fleet = match prepare_fleet(fa) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    let hosts = match fleet.inventory.resolve(pattern) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return code(EXIT_USAGE);
        }
    };
    let Some(certs) = &fleet.certs else {
        eprintln!("error: no hosts to check (use -i INVENTORY or --local-fleet)");
        return code(EXIT_USAGE);
    };
    let mesh = {
        let _g = rt.enter();
        match Mesh::new(&fleet.inventory, certs, fleet.mesh_cfg.clone()) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                eprintln!("error: {e:#}");
                return code(EXIT_USAGE);
            }
        }
    };
    let start = Instant::now();
    let rows = rt.block_on(crate::engine::health::check_all(mesh.clone(), hosts));
    let took = start.elapsed();
    rt.block_on(mesh.close());
    if let Some(lf) = fleet.local.as_mut() {
        lf.stop();
    }
    let down = rows.iter().filter(|r| !r.up).count();
    let exit = if down > 0 { EXIT_FAILED } else { EXIT_OK };
    if json {
        let doc = serde_json::json!({
            "hosts": rows,
            "up": rows.len() - down,
            "down": down,
            "duration_ms": took.as_millis() as u64,
        });
        return (exit, Some(doc));
    } else {
        println!("{}", crate::engine::health::render_table(&rows));
        println!(
            "{} up, {down} down, checked in {}",
            rows.len() - down,
            crate::cli::output::fmt_ms(took.as_millis() as u64)
        );
    }
    (exit, None)
}

/// The script `exec` runs: one streaming task per host, then a summary.
const EXEC_SCRIPT: &str = r#"
local hosts = fleet.hosts(vars.pattern)
local handles = {}
for _, h in ipairs(hosts) do
  handles[#handles + 1] = goroutine.async(function()
    local r, err = exec.run(vars.command, { stream = true })
    if not r then error(err, 0) end
    if not r.success then
      error(string.format("exit code %s", tostring(r.code or ("killed (" .. tostring(r.signal or "timeout") .. ")"))), 0)
    end
    return r.code
  end, { delegate_to = h, name = "exec", timeout = vars.timeout ~= "" and vars.timeout or nil })
end
local failed = 0
for _, r in ipairs(goroutine.await_all(handles)) do
  if r.success then
    print(string.format("%-12s exit 0", r.host))
  else
    failed = failed + 1
    print(string.format("%-12s FAILED  %s", r.host, r.error))
  end
end
print(string.format("%d host(s), %d failed", #handles, failed))
"#;

fn exec(
    pattern: &str,
    fa: &FleetArgs,
    timeout: Option<&str>,
    json: bool,
    command: &[String],
) -> i32 {
    if fa.inventory.is_none() && fa.local_fleet.is_none() {
        eprintln!("error: no hosts to run on (use -i INVENTORY or --local-fleet)");
        return EXIT_USAGE;
    }
    // A bad pattern is a usage error, found before any agent is started.
    if let Some(inv) = &fa.inventory {
        let checked = Inventory::load(inv)
            .map_err(|e| e.to_string())
            .and_then(|i| i.resolve(pattern).map_err(|e| e.to_string()));
        if let Err(e) = checked {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let path = dir.path().join("exec.sloth");
    if let Err(e) = std::fs::write(&path, EXEC_SCRIPT) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    let vars = vec![
        format!("pattern={pattern}"),
        format!("command={}", command.join(" ")),
        format!("timeout={}", timeout.unwrap_or("")),
    ];
    run(&path, fa, &vars, json)
}

/// Everything a command needs to reach the fleet.
pub struct Fleet {
    pub inventory: Inventory,
    pub local: Option<LocalFleet>,
    pub certs: Option<MasterCerts>,
    pub mesh_cfg: MeshConfig,
}

/// Load the inventory, start the local fleet if asked, find the certificates.
pub fn prepare_fleet(a: &FleetArgs) -> Result<Fleet, String> {
    let mut inventory = match &a.inventory {
        Some(p) => Inventory::load(p).map_err(|e| e.to_string())?,
        None => match a.local_fleet {
            Some(n) => {
                let names: Vec<String> = (1..=n.max(1)).map(|i| format!("local-{i:02}")).collect();
                Inventory::from_local(&names)
            }
            None => Inventory::from_local(&[]),
        },
    };
    if let Some(limit) = &a.limit {
        let keep = inventory
            .resolve(limit)
            .map_err(|e| format!("--limit: {e}"))?;
        inventory.hosts.retain(|h| keep.contains(&h.name));
    }
    let mesh_cfg = MeshConfig {
        connect_timeout: sloth_lua::context::parse_duration_str(&a.connect_timeout)
            .map_err(|e| format!("--connect-timeout: {e}"))?,
        ..MeshConfig::default()
    };
    let (local, certs) = if a.local_fleet.is_some() {
        let names: Vec<String> = inventory.hosts.iter().map(|h| h.name.clone()).collect();
        let lf = LocalFleet::start(&names, &[]).map_err(|e| format!("--local-fleet: {e:#}"))?;
        for h in &mut inventory.hosts {
            if let Some(addr) = lf.addresses.get(&h.name) {
                h.address = addr.clone();
            }
        }
        let certs = MasterCerts {
            own: lf.certs.own.clone(),
            ca: lf.certs.ca.clone(),
        };
        (Some(lf), Some(certs))
    } else if inventory.hosts.is_empty() {
        (None, None)
    } else {
        (
            None,
            Some(MasterCerts::load(&a.certs).map_err(|e| format!("{e:#}"))?),
        )
    };
    let _ = DEFAULT_PORT;
    Ok(Fleet {
        inventory,
        local,
        certs,
        mesh_cfg,
    })
}

pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4096)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Ctrl-C / SIGTERM: stop local agents, then exit 130.
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        eprintln!("interrupted: stopping local agents");
        local_fleet::kill_all();
        std::process::exit(130);
    });
}

fn parse_vars(vars: &[String]) -> Result<Vec<(String, String)>, String> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(format!("-e '{v}': expected KEY=VALUE")),
        })
        .collect()
}

fn run(script: &std::path::Path, fa: &FleetArgs, vars: &[String], json: bool) -> i32 {
    run_with(Arc::new(Output::new(json)), script, fa, vars)
}

fn run_with(out: Arc<Output>, script: &std::path::Path, fa: &FleetArgs, vars: &[String]) -> i32 {
    let json = out.json;
    let usage = |out: &Output, msg: String| {
        out.error(&msg);
        out.print_json(
            &script.display().to_string(),
            false,
            EXIT_USAGE,
            Some(&msg),
            std::time::Duration::ZERO,
        );
        EXIT_USAGE
    };
    let vars = match parse_vars(vars) {
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
    out.print_json(
        &script.display().to_string(),
        code == EXIT_OK,
        code,
        result.as_ref().err().map(|s| s.as_str()),
        wall,
    );
    // Threads abandoned in a C call (a local task past its deadline) must not hold
    // the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}
