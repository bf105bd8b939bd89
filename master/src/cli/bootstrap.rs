//! `sloth-master bootstrap PATTERN`: [`crate::bootstrap`] on every matched host, a few
//! at once, a line per host as it finishes (or one `--json` document), then a recap.
//! Exit 0 when every host is enrolled and answering, 1 when any failed or was refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::enroll::enrollment_targets;
use super::{install_signal_handler, tokio_runtime, FleetArgs, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::bootstrap::{self, AgentBinary, Done, Failure, Options};
use crate::engine::inventory::Inventory;
use crate::engine::mesh::Mesh;
use crate::pki::Pki;

/// The command's settings besides the fleet options.
pub(super) struct Args<'a> {
    pub pattern: &'a str,
    pub agent_binary: Option<&'a Path>,
    pub ssh_options: &'a [String],
    pub parallel: usize,
    pub wait: &'a str,
    pub json: bool,
}

pub(super) fn command(a: &Args, fa: &FleetArgs) -> i32 {
    let usage = |e: String| {
        errln!("error: {e}");
        EXIT_USAGE
    };
    let Some(inv_path) = &fa.inventory else {
        return usage(
            "bootstrap needs an inventory (-i INVENTORY, or `inventory` in sloth.toml)".into(),
        );
    };
    let wait = match sloth_proto::text::parse_duration(a.wait) {
        Ok(w) => w,
        Err(e) => return usage(format!("--wait: {e}")),
    };
    let lifetime = match fa.agent_lifetime() {
        Ok(l) => l,
        Err(e) => return usage(e),
    };
    let binary = match a.agent_binary {
        Some(p) => p.to_path_buf(),
        None => match sloth_launcher::agent_binary() {
            Ok(p) => p,
            Err(e) => return usage(format!("{e} (or give --agent-binary)")),
        },
    };
    let agent = match AgentBinary::load(&binary) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    let names: Vec<String> = match enrollment_targets(inv_path, a.pattern, fa) {
        Ok(t) => t.into_iter().map(|(n, _)| n).collect(),
        Err(e) => return usage(e),
    };
    let inventory = match Inventory::load(inv_path) {
        Ok(i) => i,
        Err(e) => return usage(e.to_string()),
    };
    let hosts: Vec<_> = inventory
        .hosts
        .iter()
        .filter(|h| names.contains(&h.name))
        .cloned()
        .collect();
    let pki = Pki::new(fa.certs_dir());
    if let Err(e) = pki.ca() {
        return usage(format!("{e:#}"));
    }
    let certs = match pki.master_certs(lifetime) {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    install_signal_handler(&rt);
    let mesh = {
        let _g = rt.enter();
        let mut cfg = crate::engine::mesh::MeshConfig::default();
        if let Some(t) = &fa.connect_timeout {
            match sloth_proto::text::parse_duration(t) {
                Ok(d) => cfg.connect_timeout = d,
                Err(e) => return usage(format!("--connect-timeout: {e}")),
            }
        }
        match Mesh::new(&inventory, &certs, cfg) {
            Ok(m) => Arc::new(m),
            Err(e) => return usage(format!("{e:#}")),
        }
    };
    let opts = Options {
        ssh_options: a.ssh_options.to_vec(),
        lifetime,
        wait,
    };
    let start = Instant::now();
    let total = hosts.len();
    if !a.json {
        errln!(
            "bootstrapping {total} host(s) with sloth-agent {} ({})",
            agent.version,
            agent.arch
        );
    }
    let results = rt.block_on(async {
        let turns = Arc::new(tokio::sync::Semaphore::new(a.parallel.max(1)));
        let (agent, opts, pki) = (Arc::new(agent), Arc::new(opts), Arc::new(pki));
        let mut set = tokio::task::JoinSet::new();
        for (i, h) in hosts.into_iter().enumerate() {
            let (turns, agent, opts, pki, mesh) = (
                turns.clone(),
                agent.clone(),
                opts.clone(),
                pki.clone(),
                mesh.clone(),
            );
            set.spawn(async move {
                let _turn = turns.acquire().await;
                let r = bootstrap::host(&pki, &mesh, &h, &agent, &opts).await;
                (i, h.name, r)
            });
        }
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            if let Ok((i, name, r)) = r {
                n += 1;
                if !a.json {
                    outln!("[{n}/{total}] {}", line(&name, &r));
                }
                out.push((i, name, r));
            }
        }
        mesh.close().await;
        out.sort_by_key(|(i, _, _)| *i);
        out
    });
    let failed = results.iter().filter(|(_, _, r)| r.is_err()).count();
    let changed = results
        .iter()
        .filter(|(_, _, r)| matches!(r, Ok(d) if !d.changes.is_empty()))
        .count();
    if a.json {
        let hosts: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(_, name, r)| (name.clone(), json_of(r)))
            .collect();
        super::output::print_doc(&serde_json::json!({
            "hosts": hosts,
            "changed": changed,
            "unchanged": results.len() - changed - failed,
            "failed": failed,
            "duration_ms": start.elapsed().as_millis() as u64,
        }));
    } else {
        outln!();
        outln!("RECAP");
        for (_, name, r) in &results {
            outln!("  {}", line(name, r));
        }
        outln!(
            "  {} host(s): {changed} changed, {} unchanged, {failed} failed, {}",
            results.len(),
            results.len() - changed - failed,
            super::output::fmt_ms(start.elapsed().as_millis() as u64)
        );
    }
    if failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

fn line(name: &str, r: &Result<Done, Failure>) -> String {
    match r {
        Ok(d) if d.changes.is_empty() => {
            format!("{name:<12} enrolled, version {} (unchanged)", d.version)
        }
        Ok(d) => format!(
            "{name:<12} enrolled, version {} (changed: {}{})",
            d.version,
            d.changes.join(", "),
            d.serial
                .as_deref()
                .map(|s| format!("; certificate serial {s}"))
                .unwrap_or_default()
        ),
        Err(Failure::Refused(why)) => format!("{name:<12} REFUSED  {why}"),
        Err(Failure::Failed(why)) => format!("{name:<12} FAILED   {why}"),
    }
}

fn json_of(r: &Result<Done, Failure>) -> serde_json::Value {
    match r {
        Ok(d) => serde_json::json!({
            "result": if d.changes.is_empty() { "unchanged" } else { "changed" },
            "version": d.version,
            "changes": d.changes,
            "serial": d.serial,
        }),
        Err(Failure::Refused(why)) => serde_json::json!({ "result": "refused", "error": why }),
        Err(Failure::Failed(why)) => serde_json::json!({ "result": "failed", "error": why }),
    }
}
