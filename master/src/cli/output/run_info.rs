//! What identifies a run in `--json` and `--events`: its id, sloth's version, the
//! command line and the `-e` vars (values whose keys look secret masked), and when it
//! started.

use std::hash::{BuildHasher, Hasher};
use std::time::SystemTime;

/// The text that replaces a secret-looking value.
pub const MASK: &str = "***";

/// Keys whose values are masked wherever a run is reported (case-insensitive, as
/// parts of the key): `db_password`, `API_TOKEN`, `client_secret`, `ssh_key`.
pub const SECRET_WORDS: &[&str] = &["password", "passwd", "token", "secret", "key"];

/// Whether `key` looks like it names a secret.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// The command line with the values of secret-looking `-e KEY=VALUE` masked.
pub fn masked_command(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_e = false;
    for a in args {
        let (prefix, var) = if after_e {
            ("", Some(a.as_str()))
        } else if let Some(v) = a.strip_prefix("--extra-var=") {
            ("--extra-var=", Some(v))
        } else if let Some(v) = a.strip_prefix("-e=") {
            // clap takes `-e=KEY=VALUE` as `-e KEY=VALUE`.
            ("-e=", Some(v))
        } else if let Some(v) = a.strip_prefix("-e").filter(|v| !v.is_empty()) {
            ("-e", Some(v))
        } else {
            ("", None)
        };
        after_e = a == "-e" || a == "--extra-var";
        out.push(match var.and_then(|v| v.split_once('=')) {
            Some((k, _)) if is_secret(k) => format!("{prefix}{k}={MASK}"),
            _ => a.clone(),
        });
    }
    out
}

/// One run, as reports name it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Unique and sortable: `20261207T054500Z-3f2a9c1b`.
    pub id: String,
    pub started: SystemTime,
    /// `sloth-master run deploy.sloth -e version=2 -e db_password=***`
    pub command: Vec<String>,
    /// The script path as given, or `exec` for `sloth-master exec`.
    pub script: String,
    /// `-e` vars in order, secret-looking values masked.
    pub vars: Vec<(String, String)>,
}

impl RunInfo {
    pub fn new(script: &str, vars: &[(String, String)]) -> RunInfo {
        let started = SystemTime::now();
        let argv: Vec<String> = std::env::args().collect();
        RunInfo {
            id: run_id(started),
            started,
            command: masked_command(&argv),
            script: script.to_string(),
            vars: vars
                .iter()
                .map(|(k, v)| {
                    let v = if is_secret(k) {
                        MASK.to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    sloth_proto::text::rfc3339_millis(t).to_string()
}

/// A run id: the start time to the second, and 32 random bits (from the per-process
/// random keys of std's hasher, mixed with the pid and the clock's nanoseconds).
fn run_id(t: SystemTime) -> String {
    let stamp = sloth_proto::text::rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "");
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{stamp}-{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_are_masked() {
        assert!(is_secret("db_password") && is_secret("API_TOKEN") && is_secret("ssh_key"));
        assert!(!is_secret("version") && !is_secret("host"));
        let argv: Vec<String> = [
            "sloth-master",
            "run",
            "x.sloth",
            "-e",
            "version=2",
            "-e",
            "db_password=hunter2",
            "--extra-var=api_token=abc",
            "-e=db_password=hunter2",
            "-eclient_secret=s",
            "--extra-var",
            "user_key=k",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            masked_command(&argv),
            [
                "sloth-master",
                "run",
                "x.sloth",
                "-e",
                "version=2",
                "-e",
                "db_password=***",
                "--extra-var=api_token=***",
                "-e=db_password=***",
                "-eclient_secret=***",
                "--extra-var",
                "user_key=***",
            ]
        );
    }

    #[test]
    fn run_ids_sort_by_time_and_differ() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        let a = run_id(t);
        assert!(a.starts_with("20261130T"), "{a}");
        assert_eq!(a.len(), "20261130T000000Z-".len() + 8, "{a}");
        assert_ne!(run_id(t), run_id(SystemTime::now()));
        assert!(rfc3339(t).ends_with(".000Z"));
    }
}
