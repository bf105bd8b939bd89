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

use std::ffi::CStr;

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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Not expected on Linux; fall back to a process-local monotonic clock.
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        return EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
            * 1000.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1_000_000.0
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when the
    // name fits, and the last byte stays 0 otherwise.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc == 0 {
        if let Ok(c) = CStr::from_bytes_until_nul(&buf) {
            let s = c.to_string_lossy().trim().to_string();
            if !s.is_empty() {
                return s;
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    // SAFETY: `utsname` is plain data; uname fills it with NUL-terminated strings.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            return CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .to_string();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cpus() -> u32 {
    // SAFETY: plain sysconf query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        return u32::try_from(n).unwrap_or(u32::MAX);
    }
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
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
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
fn disk(path: &str) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return (0, 0);
    };
    // SAFETY: `statvfs` is plain data filled by the call; `c` is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        let frsize = s.f_frsize as u64;
        (
            (s.f_blocks as u64).saturating_mul(frsize),
            (s.f_bavail as u64).saturating_mul(frsize),
        )
    }
}
