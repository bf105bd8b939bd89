//! `sloth-master enroll PATTERN`: enroll every matched host whose agent waits with a
//! join token, concurrently, one line per host, exit 1 if any failed.

use std::time::Duration;

use super::{install_signal_handler, tokio_runtime, FleetArgs, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::engine::inventory::Inventory;
use crate::pki::{enroll, Pki};
use sloth_transport::Lifetime;

/// Hosts enrolled at once.
const PARALLEL: usize = 32;

pub(super) fn command(pattern: &str, fa: &FleetArgs, wait: &str) -> i32 {
    let usage = |e: String| {
        errln!("error: {e}");
        EXIT_USAGE
    };
    let Some(inv_path) = &fa.inventory else {
        return usage(
            "enroll needs an inventory (-i INVENTORY, or `inventory` in sloth.toml)".into(),
        );
    };
    let wait = match sloth_proto::text::parse_duration(wait) {
        Ok(w) => w,
        Err(e) => return usage(format!("--wait '{wait}': {e}")),
    };
    let lifetime = match fa.agent_lifetime() {
        Ok(l) => l,
        Err(e) => return usage(e),
    };
    let targets = match enrollment_targets(inv_path, pattern, fa) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let pki = Pki::new(fa.certs_dir());
    if let Err(e) = pki.ca() {
        return usage(format!("{e:#}"));
    }
    let rt = match tokio_runtime() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    install_signal_handler(&rt);
    let results = rt.block_on(enroll_all(&pki, targets, lifetime, wait));
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    for (host, r) in &results {
        match r {
            Ok(e) => outln!(
                "{host:<12} enrolled (serial {}, valid until {})",
                e.serial,
                e.expires
            ),
            Err(e) => outln!("{host:<12} FAILED  {e}"),
        }
    }
    outln!("{} host(s), {failed} failed", results.len());
    if failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// `(host, address)` of the hosts matched by `pattern` (within `--limit`).
pub(super) fn enrollment_targets(
    inv_path: &std::path::Path,
    pattern: &str,
    fa: &FleetArgs,
) -> Result<Vec<(String, String)>, String> {
    let mut inv = Inventory::load(inv_path).map_err(|e| e.to_string())?;
    if let Some(limit) = &fa.limit {
        let keep = inv.resolve(limit).map_err(|e| format!("--limit: {e}"))?;
        inv.hosts.retain(|h| keep.contains(&h.name));
    }
    let names = inv.resolve(pattern).map_err(|e| e.to_string())?;
    Ok(inv
        .hosts
        .iter()
        .filter(|h| names.contains(&h.name))
        .map(|h| (h.name.clone(), h.address.clone()))
        .collect())
}

/// Enroll each host; results in the given order.
pub(super) async fn enroll_all(
    pki: &Pki,
    targets: Vec<(String, String)>,
    lifetime: Lifetime,
    wait: Duration,
) -> Vec<(String, Result<enroll::Enrolled, String>)> {
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for (i, (host, address)) in targets.into_iter().enumerate() {
        let (pki, turns) = (pki.clone(), turns.clone());
        set.spawn(async move {
            let _turn = turns.acquire().await;
            let r = enroll::enroll_host(&pki, &host, &address, lifetime, wait).await;
            (i, host, r)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(x) = r {
            out.push(x);
        }
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, h, r)| (h, r)).collect()
}
