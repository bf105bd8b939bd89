//! The master's config file, `sloth.toml`: the certificate directory, the default
//! inventory and the timeouts, so that commands work from any directory. Found with
//! `--config FILE`, else `./sloth.toml`, else `$XDG_CONFIG_HOME/sloth/sloth.toml`
//! (`~/.config/sloth/sloth.toml`). Paths in it are relative to the file; a flag on the
//! command line wins over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file's name in the current directory and in the config directory.
pub const FILE_NAME: &str = "sloth.toml";

/// The file as written. Values are checked while it is read, so that an error names
/// the line it is on, like a type error does.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    certs: Option<PathBuf>,
    inventory: Option<PathBuf>,
    #[serde(default, deserialize_with = "time_limit")]
    connect_timeout: Option<String>,
    #[serde(default, deserialize_with = "time_limit")]
    task_timeout: Option<String>,
    #[serde(default, deserialize_with = "lifetime")]
    agent_cert_lifetime: Option<String>,
    #[serde(default, deserialize_with = "lifetime")]
    master_cert_lifetime: Option<String>,
    state_dir: Option<PathBuf>,
    history: Option<bool>,
    history_log_lines: Option<u32>,
    #[serde(default, deserialize_with = "size")]
    history_max_size: Option<u64>,
}

/// A string value that `check` accepts.
fn checked<'de, D, T>(
    d: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<(String, T), D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    let v = check(&s).map_err(serde::de::Error::custom)?;
    Ok((s, v))
}

fn time_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, parse_duration).map(|(s, _)| Some(s))
}

fn lifetime<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        sloth_transport::Lifetime::parse(s).map_err(|e| format!("{e:#}"))
    })
    .map(|(s, _)| Some(s))
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    checked(d, parse_size).map(|(_, n)| Some(n))
}

/// The settings read from the file (all optional), with paths made absolute.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Config {
    /// The file they came from.
    pub path: Option<PathBuf>,
    pub certs: Option<PathBuf>,
    pub inventory: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub task_timeout: Option<String>,
    /// Agent certificates issued, enrolled or renewed (default 30d).
    pub agent_cert_lifetime: Option<String>,
    /// Master certificates (`certs init`, `certs renew-master`; default 90d).
    pub master_cert_lifetime: Option<String>,
    /// Where the run history lives (`--state`).
    pub state_dir: Option<PathBuf>,
    /// Record runs (default true).
    pub history: Option<bool>,
    /// Log lines kept per task in the history.
    pub history_log_lines: Option<u32>,
    /// The history database's size cap, in bytes.
    pub history_max_size: Option<u64>,
}

impl Config {
    /// The config `--config` names, else the first file found; none is fine.
    pub fn load(explicit: Option<&Path>) -> Result<Config, String> {
        let path = match explicit {
            Some(p) => {
                if !p.is_file() {
                    return Err(format!("--config {}: no such file", p.display()));
                }
                p.to_path_buf()
            }
            None => match discover(Path::new("."), config_home().as_deref()) {
                Some(p) => p,
                None => return Ok(Config::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text, &path)
    }

    /// Parse `text`, the contents of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let f: File = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', " ");
            // Where it is: the line, and the line itself (it names the key).
            match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line_no = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!("{}:{line_no}: {message} (in `{line}`)", path.display())
                }
                None => format!("{}: {message}", path.display()),
            }
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        Ok(Config {
            path: Some(path.to_path_buf()),
            certs: f.certs.map(rel),
            inventory: f.inventory.map(rel),
            connect_timeout: f.connect_timeout,
            task_timeout: f.task_timeout,
            agent_cert_lifetime: f.agent_cert_lifetime,
            master_cert_lifetime: f.master_cert_lifetime,
            state_dir: f.state_dir.map(rel),
            history: f.history,
            history_log_lines: f.history_log_lines,
            history_max_size: f.history_max_size,
        })
    }
}

/// `$XDG_CONFIG_HOME/sloth`, else `~/.config/sloth`.
fn config_home() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("sloth"))
}

/// `cwd/sloth.toml`, else `config_home/sloth.toml`, whichever exists first.
fn discover(cwd: &Path, config_home: Option<&Path>) -> Option<PathBuf> {
    std::iter::once(cwd.join(FILE_NAME))
        .chain(config_home.map(|d| d.join(FILE_NAME)))
        .find(|p| p.is_file())
}

/// A size: bytes, or with `KiB`/`MiB`/`GiB` (also `K`, `M`, `G`, `KB`...: powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size '{s}' (use e.g. 512MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "bad size unit '{other}' in '{s}' (use KiB, MiB or GiB)"
            ))
        }
    };
    Ok(n.saturating_mul(mult))
}

/// A time limit from a flag or sloth.toml (`--connect-timeout`, `task_timeout`, ...):
/// a duration greater than zero (a zero limit would fail every host at once).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    sloth_proto::text::parse_time_limit(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_file_and_durations_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sloth.toml");
        let c = Config::parse(
            "certs = \"pki\"\ninventory = \"/etc/sloth/hosts.toml\"\nconnect_timeout = \"5s\"\ntask_timeout = \"10m\"\n",
            &path,
        )
        .unwrap();
        let base = dir.path().canonicalize().unwrap();
        assert_eq!(c.certs, Some(base.join("pki")));
        assert_eq!(c.inventory, Some(PathBuf::from("/etc/sloth/hosts.toml")));
        assert_eq!(c.connect_timeout.as_deref(), Some("5s"));
        assert_eq!(c.task_timeout.as_deref(), Some("10m"));

        let e = Config::parse("# ops\ncerts = 3\n", &path).unwrap_err();
        assert!(e.contains("sloth.toml:2: invalid type"), "{e}");
        assert!(e.ends_with("(in `certs = 3`)"), "{e}");
        let e = Config::parse("connect_timeout = \"0s\"", &path).unwrap_err();
        assert!(e.contains("sloth.toml:1: '0s' is no time at all"), "{e}");
        assert!(e.ends_with("(in `connect_timeout = \"0s\"`)"), "{e}");
        let e = Config::parse("# c\nhistory = true\ntask_timeout = \"soon\"", &path).unwrap_err();
        assert!(e.contains("sloth.toml:3: "), "{e}");
        assert!(e.ends_with("(in `task_timeout = \"soon\"`)"), "{e}");
        for bad in [
            "history_max_size = \"lots\"",
            "agent_cert_lifetime = \"forever\"",
        ] {
            let e = Config::parse(&format!("\n{bad}\n"), &path).unwrap_err();
            assert!(e.contains("sloth.toml:2: "), "{e}");
            assert!(e.ends_with(&format!("(in `{bad}`)")), "{e}");
        }
        assert_eq!(
            Config::parse("history_max_size = \"2MiB\"", &path)
                .unwrap()
                .history_max_size,
            Some(2 << 20)
        );
        let e = Config::parse("cert = \"x\"", &path).unwrap_err();
        assert!(
            e.contains("unknown field `cert`") && e.contains("certs"),
            "{e}"
        );
        assert_eq!(Config::parse("", &path).unwrap().certs, None);
    }

    #[test]
    fn the_current_directory_comes_before_the_config_directory() {
        let cwd = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        assert_eq!(discover(cwd.path(), Some(home.path())), None);
        std::fs::write(home.path().join(FILE_NAME), "").unwrap();
        assert_eq!(
            discover(cwd.path(), Some(home.path())),
            Some(home.path().join(FILE_NAME))
        );
        std::fs::write(cwd.path().join(FILE_NAME), "").unwrap();
        assert_eq!(
            discover(cwd.path(), Some(home.path())),
            Some(cwd.path().join(FILE_NAME))
        );
    }
}
