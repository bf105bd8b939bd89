//! `sloth-master health [PATTERN]`: every matched agent checked concurrently,
//! each bounded by the connect timeout, so one dead host never stalls the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use crate::engine::mesh::Mesh;

/// Facts from a Welcome at most this old count as fresh: a host dialed by this check
/// is not asked a second time.
const FRESH_FACTS: Duration = Duration::from_secs(1);

#[derive(Serialize, Debug, Clone)]
pub struct HostHealth {
    pub host: String,
    pub address: String,
    pub up: bool,
    pub status: String,
    pub latency_ms: Option<f64>,
    pub agent_version: Option<String>,
    pub load: Option<[f64; 3]>,
    pub cpus: Option<u32>,
    pub mem_used_percent: Option<f64>,
    pub disk_used_percent: Option<f64>,
    pub uptime_s: Option<u64>,
    /// When the agent's certificate expires (RFC 3339), and the whole days left.
    pub cert_expires: Option<String>,
    pub cert_days_left: Option<u64>,
    pub error: Option<String>,
}

impl HostHealth {
    /// The agent's certificate expires within [`CERT_WARNING_DAYS`].
    pub fn cert_expiring(&self) -> bool {
        self.cert_days_left.is_some_and(|d| d < CERT_WARNING_DAYS)
    }
}

/// Certificates with fewer days left are warned about.
pub const CERT_WARNING_DAYS: u64 = 7;

pub async fn check_all(mesh: Arc<Mesh>, hosts: Vec<String>) -> Vec<HostHealth> {
    // Every step is bounded: the wait for a handshake turn, the dial (connect timeout
    // to answer, then FINISH_TIMEOUT), the ping (connect timeout). This bound only
    // guards against a step that forgets its own.
    let overall = mesh.cfg.connect_timeout * 2
        + crate::engine::mesh::FINISH_TIMEOUT.max(mesh.cfg.connect_timeout)
        + Duration::from_secs(30);
    let mut set = tokio::task::JoinSet::new();
    for (i, h) in hosts.iter().enumerate() {
        let (m, h) = (mesh.clone(), h.clone());
        set.spawn(async move {
            let start = Instant::now();
            let r = tokio::time::timeout(overall, m.fresh_facts(&h, FRESH_FACTS)).await;
            let address = m.address(&h).unwrap_or("").to_string();
            let mut hh = HostHealth {
                host: h.clone(),
                address,
                up: false,
                status: "down".into(),
                latency_ms: None,
                agent_version: None,
                load: None,
                cpus: None,
                mem_used_percent: None,
                disk_used_percent: None,
                uptime_s: None,
                cert_expires: None,
                cert_days_left: None,
                error: None,
            };
            match r {
                Ok(Ok((rtt, facts))) => {
                    hh.up = true;
                    hh.status = "up".into();
                    hh.latency_ms = Some(rtt.as_secs_f64() * 1000.0);
                    if let Some(c) = m.current(&h).await {
                        hh.agent_version = Some(c.agent_version.clone());
                        if let Some(cert) = &c.cert {
                            hh.cert_expires = Some(cert.expiry());
                            hh.cert_days_left = Some(
                                cert.remaining(std::time::SystemTime::now()).as_secs() / 86400,
                            );
                        }
                    }
                    if let Some(f) = facts {
                        hh.load = Some(f.load);
                        hh.cpus = Some(f.cpus);
                        if f.mem_total > 0 {
                            hh.mem_used_percent = Some(
                                100.0 * (f.mem_total - f.mem_available.min(f.mem_total)) as f64
                                    / f.mem_total as f64,
                            );
                        }
                        if f.disk_total > 0 {
                            hh.disk_used_percent = Some(
                                100.0 * (f.disk_total - f.disk_available.min(f.disk_total)) as f64
                                    / f.disk_total as f64,
                            );
                        }
                        hh.uptime_s = Some(f.uptime);
                    }
                }
                Ok(Err(e)) => hh.error = Some(e.display_for(&h)),
                Err(_) => {
                    hh.error = Some(format!(
                        "unreachable: {h}: no answer within {} ms",
                        start.elapsed().as_millis()
                    ))
                }
            }
            (i, hh)
        });
    }
    let mut out: Vec<(usize, HostHealth)> = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(x) = r {
            out.push(x);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, h)| h).collect()
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub fn render_table(rows: &[HostHealth]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "host", "address", "status", "latency", "version", "load", "memory", "disk", "uptime",
        "cert", "error",
    ]);
    for r in rows {
        t.add_row(vec![
            r.host.clone(),
            r.address.clone(),
            r.status.clone(),
            r.latency_ms
                .map(|l| format!("{l:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            opt(r.agent_version.clone()),
            r.load
                .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
                .unwrap_or_else(|| "-".into()),
            r.mem_used_percent
                .map(|m| format!("{m:.0}% used"))
                .unwrap_or_else(|| "-".into()),
            r.disk_used_percent
                .map(|m| format!("{m:.0}% used"))
                .unwrap_or_else(|| "-".into()),
            r.uptime_s.map(fmt_uptime).unwrap_or_else(|| "-".into()),
            match r.cert_days_left {
                Some(d) if r.cert_expiring() => format!("{d}d (!)"),
                Some(d) => format!("{d}d"),
                None => "-".into(),
            },
            opt(r.error.clone()),
        ]);
    }
    t.to_string()
}

fn fmt_uptime(s: u64) -> String {
    let d = s / 86_400;
    let h = (s % 86_400) / 3600;
    let m = (s % 3600) / 60;
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m")
    }
}
