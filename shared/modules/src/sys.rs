//! `sys`: facts about the machine the task runs on.
//!
//! - `sys.hostname()` → string
//! - `sys.facts()` → `{hostname, os, arch, kernel, cpus, mem_total, mem_available,
//!   load = {1m=, 5m=, 15m=, [1]=, [2]=, [3]=}, uptime, disk = {total, available,
//!   path = "/"}}` (bytes and seconds), read from /proc, uname and statvfs. A value the
//!   system does not provide is 0.
//! - `sys.monotonic_ms()` → float: milliseconds of a monotonic clock (`CLOCK_MONOTONIC`,
//!   sub-millisecond resolution) for timing inside scripts; only differences mean
//!   something (comparable between processes of one machine, not between machines).
//!
//! [`collect_facts`] gives the same numbers as a [`Facts`] for the agent's handshake.

use mlua::{Lua, Table};

use sloth_proto::protocol::Facts;

pub fn install(lua: &Lua, g: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.raw_set("hostname", lua.create_function(|_, ()| Ok(hostname()))?)?;
    t.raw_set(
        "monotonic_ms",
        lua.create_function(|_, ()| Ok(monotonic_ms()))?,
    )?;
    t.raw_set(
        "facts",
        lua.create_function(|lua, ()| {
            let f = collect_facts();
            let t = lua.create_table()?;
            t.raw_set("hostname", f.hostname)?;
            t.raw_set("os", f.os)?;
            t.raw_set("arch", f.arch)?;
            t.raw_set("kernel", f.kernel)?;
            t.raw_set("cpus", f.cpus)?;
            t.raw_set("mem_total", f.mem_total)?;
            t.raw_set("mem_available", f.mem_available)?;
            let load = lua.create_table()?;
            for (i, (name, v)) in ["1m", "5m", "15m"].iter().zip(f.load).enumerate() {
                load.raw_set(*name, v)?;
                load.raw_set(i + 1, v)?;
            }
            t.raw_set("load", load)?;
            t.raw_set("uptime", f.uptime)?;
            let disk = lua.create_table()?;
            disk.raw_set("total", f.disk_total)?;
            disk.raw_set("available", f.disk_available)?;
            disk.raw_set("path", "/")?;
            t.raw_set("disk", disk)?;
            Ok(t)
        })?,
    )?;
    g.raw_set("sys", t)
}

/// Everything `sys.facts()` reports, for the agent's handshake and pongs.
pub fn collect_facts() -> Facts {
    let (mem_total, mem_available) = meminfo();
    let (disk_total, disk_available) = disk("/");
    Facts {
        hostname: hostname(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        kernel: kernel_release(),
        cpus: cpus(),
        mem_total,
        mem_available,
        load: loadavg(),
        uptime: uptime(),
        disk_total,
        disk_available,
    }
}

/// Milliseconds of `CLOCK_MONOTONIC` (never goes back, unaffected by clock changes).
pub fn monotonic_ms() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1_000_000.0
}

pub fn hostname() -> String {
    // What gethostname(2) returns on Linux: the node name of uname(2).
    let s = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_string();
    if !s.is_empty() {
        return s;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .to_string()
}

/// Online processors, as `sysconf(_SC_NPROCESSORS_ONLN)` counts them (glibc reads the
/// same file); where it cannot be read, the processors this process may run on.
fn cpus() -> u32 {
    if let Some(n) = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(&s))
        .filter(|n| *n > 0)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<u32>().ok()?,
                hi.trim().parse::<u32>().ok()?,
            ),
            None => {
                let c = part.trim().parse::<u32>().ok()?;
                (c, c)
            }
        };
        n = n.saturating_add(hi.checked_sub(lo)?.saturating_add(1));
    }
    Some(n)
}

/// (MemTotal, MemAvailable) in bytes.
fn meminfo() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            Some(match parts.next() {
                Some("kB") => n.saturating_mul(1024),
                _ => n,
            })
        })
    };
    let total = field("MemTotal").unwrap_or(0);
    let available = field("MemAvailable")
        .or_else(|| Some(field("MemFree")? + field("Buffers")? + field("Cached")?))
        .unwrap_or(0);
    (total, available)
}

fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = v.parse().unwrap_or(0.0);
        }
    }
    out
}

/// Seconds since boot.
fn uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|f| f as u64)
        .unwrap_or(0)
}

/// (total, available to unprivileged users) bytes of the filesystem holding `path`.
fn disk(path: &str) -> (u64, u64) {
    let Ok(s) = rustix::fs::statvfs(path) else {
        return (0, 0);
    };
    (
        s.f_blocks.saturating_mul(s.f_frsize),
        s.f_bavail.saturating_mul(s.f_frsize),
    )
}

#[cfg(test)]
mod tests {
    use super::count_cpu_list;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpu_list(""), Some(0));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }
}
