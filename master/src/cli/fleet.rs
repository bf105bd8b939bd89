//! Reaching the fleet for a command: the inventory (or a synthetic one for
//! `--local-fleet`), narrowed by `--limit`, the local agents if asked for, and the
//! master's certificates.

use std::time::Duration;

use super::config::parse_duration;
use super::local_fleet::LocalFleet;
use super::FleetArgs;
use crate::engine::inventory::Inventory;
use crate::engine::mesh::{MasterCerts, MeshConfig};
use crate::pki::Pki;

/// Everything a command needs to reach the fleet.
pub struct Fleet {
    pub inventory: Inventory,
    pub local: Option<LocalFleet>,
    pub certs: Option<MasterCerts>,
    pub mesh_cfg: MeshConfig,
    /// The time limit of a task that sets none.
    pub task_timeout: Option<Duration>,
}

/// The hosts a command may reach: the inventory, or the names of `--local-fleet N`
/// without one, after `--limit`.
pub fn fleet_inventory(a: &FleetArgs) -> Result<Inventory, String> {
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
            .map_err(|e| format!("{}: {e}", a.limit_origin.as_deref().unwrap_or("--limit")))?;
        inventory.hosts.retain(|h| keep.contains(&h.name));
    }
    Ok(inventory)
}

/// Load the inventory, start the local fleet if asked, find the certificates.
pub fn prepare_fleet(a: &FleetArgs) -> Result<Fleet, String> {
    let mut inventory = fleet_inventory(a)?;
    let mut mesh_cfg = MeshConfig::default();
    if let Some(t) = &a.connect_timeout {
        mesh_cfg.connect_timeout =
            parse_duration(t).map_err(|e| format!("--connect-timeout: {e}"))?;
    }
    let task_timeout = a
        .task_timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| format!("--task-timeout: {e}"))?;
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
            crl: None,
            renewer: None,
        };
        (Some(lf), Some(certs))
    } else if inventory.hosts.is_empty() {
        (None, None)
    } else {
        (
            None,
            Some(master_certs(a).map_err(|e| {
                let hint = if a.certs.is_none() {
                    format!(
                        "; set `certs` in {} or pass --certs DIR",
                        super::config::FILE_NAME
                    )
                } else {
                    String::new()
                };
                format!("{e:#}{hint}")
            })?),
        )
    };
    Ok(Fleet {
        inventory,
        local,
        certs,
        mesh_cfg,
        task_timeout,
    })
}

/// The master's certificates from the certificate directory (see
/// [`Pki::master_certs`]), renewed agents getting sloth.toml's `agent_cert_lifetime`.
pub(super) fn master_certs(a: &FleetArgs) -> anyhow::Result<MasterCerts> {
    let lifetime = a.agent_lifetime().map_err(anyhow::Error::msg)?;
    Pki::new(a.certs_dir()).master_certs(lifetime)
}
