//! Reaching the fleet for a command: the inventory (or a synthetic one for
//! `--local-fleet`), narrowed by `--limit`, the local agents if asked for, and the
//! master's certificates.

use super::local_fleet::LocalFleet;
use super::FleetArgs;
use crate::engine::inventory::Inventory;
use crate::engine::mesh::{MasterCerts, MeshConfig};

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
    Ok(Fleet {
        inventory,
        local,
        certs,
        mesh_cfg,
    })
}
