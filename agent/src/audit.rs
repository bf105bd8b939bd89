//! The agent's audit log: one JSON line for every master session that starts and for
//! every task that starts, ends or is refused, naming the master by its certificate
//! (name, serial, fingerprint) and the task by its name and where its code was
//! written. Unauthenticated peers never reach it (failed handshakes go to the agent's
//! own log), so they cannot rotate the trail away.
//!
//! A line is written with one `write` on a file opened for appending, before the
//! master hears about what it records; when it cannot be written the task is refused
//! (fail closed). The file rotates by size: `audit.log` → `audit.log.1` → … →
//! `audit.log.KEEP`, the oldest dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;
use sloth_proto::protocol::{TaskError, TaskRequest};
use sloth_transport::CertInfo;

/// Longest error message kept in a line.
const MAX_ERROR: usize = 1000;

/// Where the log goes and how much of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None`: no audit log (`--audit-log off`).
    pub path: Option<PathBuf>,
    /// The size at which the file is rotated.
    pub max_size: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

/// The open log (or none); shared by every connection.
pub struct AuditLog {
    writer: Option<Mutex<Writer>>,
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

/// The master a connection belongs to, as every line names it.
#[derive(Serialize, Debug)]
pub struct Session {
    pub master: CertInfo,
    pub peer: SocketAddr,
}

/// What happened.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A master finished the handshake: tasks may follow.
    Connect,
    TaskStart,
    TaskEnd,
    /// The agent was at capacity (or could not audit the task): it did not run.
    TaskRefused,
    /// The master handed over a newer CRL, which the agent took.
    CrlInstalled,
    /// The master renewed the agent's certificate.
    CertRenewed,
    /// A master enrolled the agent with its join token: the agent's first certificate.
    Enrolled,
}

/// The task a line is about.
#[derive(Serialize, Debug, Clone)]
pub struct TaskInfo {
    pub task_id: u64,
    pub task: String,
    /// `chunk:line` of the task's function, when its bytecode says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `apply` or `check`.
    pub mode: &'static str,
}

impl TaskInfo {
    pub fn of(req: &TaskRequest) -> TaskInfo {
        TaskInfo {
            task_id: req.task_id,
            task: req.name.clone(),
            origin: sloth_proto::origin::of_payload(&req.payload),
            mode: if req.mode.check { "check" } else { "apply" },
        }
    }
}

/// How a task ended.
#[derive(Serialize, Debug, Default)]
pub struct Ending {
    /// `ok` or `error`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Changes its resources reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<u32>,
}

impl Ending {
    pub fn of<T>(result: &Result<T, TaskError>, duration_us: u64, changes: u32) -> Ending {
        match result {
            Ok(_) => Ending {
                outcome: "ok",
                ..Ending::default()
            },
            Err(err) => Ending::error(err),
        }
        .lasting(duration_us, changes)
    }

    /// With the task's duration and the changes its resources reported.
    pub fn lasting(mut self, duration_us: u64, changes: u32) -> Ending {
        self.duration_ms = Some(duration_us as f64 / 1000.0);
        self.changes = Some(changes);
        self
    }

    pub fn error(err: &TaskError) -> Ending {
        Ending {
            outcome: "error",
            error_kind: Some(err.kind.as_str()),
            error: Some(clip(&err.message)),
            ..Ending::default()
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: Event,
    agent: &'a str,
    #[serde(flatten)]
    session: &'a Session,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    task: Option<&'a TaskInfo>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    ending: Option<&'a Ending>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl AuditLog {
    /// Open (creating the directory, mode 0700, and the file, mode 0600) or, with no
    /// path, an audit log that records nothing.
    pub fn open(s: &Settings) -> anyhow::Result<AuditLog> {
        let Some(path) = &s.path else {
            return Ok(AuditLog { writer: None });
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sloth_transport::create_private_dir(dir)
                .with_context(|| format!("creating the audit log directory {}", dir.display()))?;
        }
        let file = open_append(path)?;
        let size = file
            .metadata()
            .with_context(|| format!("reading the audit log {}", path.display()))?
            .len();
        Ok(AuditLog {
            writer: Some(Mutex::new(Writer {
                path: path.clone(),
                file,
                size,
                max_size: s.max_size.max(1),
                keep: s.keep,
            })),
        })
    }

    /// Append one line. An error says why it could not be written.
    pub fn record(
        &self,
        agent: &str,
        event: Event,
        session: &Session,
        task: Option<&TaskInfo>,
        ending: Option<&Ending>,
    ) -> Result<(), String> {
        self.write(Line {
            time: sloth_proto::text::rfc3339_millis(SystemTime::now()).to_string(),
            event,
            agent,
            session,
            task,
            ending,
            detail: None,
        })
    }

    /// A line about the agent itself (a CRL taken, a certificate renewed), with what
    /// changed in `detail`.
    pub fn note(
        &self,
        agent: &str,
        event: Event,
        session: &Session,
        detail: &str,
    ) -> Result<(), String> {
        self.write(Line {
            time: sloth_proto::text::rfc3339_millis(SystemTime::now()).to_string(),
            event,
            agent,
            session,
            task: None,
            ending: None,
            detail: Some(detail),
        })
    }

    fn write(&self, line: Line) -> Result<(), String> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let mut text =
            serde_json::to_vec(&line).map_err(|e| format!("encoding an audit line: {e}"))?;
        text.push(b'\n');
        let mut w = writer.lock();
        w.append(&text).map_err(|e| {
            let msg = format!("cannot write the audit log {}: {e}", w.path.display());
            tracing::error!("{msg}");
            msg
        })
    }
}

impl Writer {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        // One write of the whole line: with O_APPEND it lands whole, after whatever
        // else is in the file.
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.keep).rev() {
            match std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path).map_err(std::io::Error::other)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    // An existing log made readable by others (0644) is made private again: the mode
    // given above applies only to a file created now.
    let mode = file
        .metadata()
        .with_context(|| format!("reading the audit log {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making the audit log {} private", path.display()))?;
    }
    Ok(file)
}

/// `audit.log.N`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_ERROR {
        return s.to_string();
    }
    let cut = (0..=MAX_ERROR)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &s[..cut])
}

/// The default place: `/var/log/sloth/audit.log` for root, else under
/// `$XDG_STATE_HOME` (or `~/.local/state`).
pub fn default_path(is_root: bool) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from("/var/log/sloth/audit.log"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(state.join("sloth/audit.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sloth_proto::protocol::ErrorKind;

    fn session() -> Session {
        Session {
            master: CertInfo {
                name: Some("ops".into()),
                role: Some("master".into()),
                serial: "0a1b".into(),
                fingerprint: "sha256:00".into(),
                not_before: SystemTime::UNIX_EPOCH,
                not_after: SystemTime::UNIX_EPOCH,
                extra_sans: Vec::new(),
            },
            peer: "127.0.0.1:4000".parse().unwrap(),
        }
    }

    fn task() -> TaskInfo {
        TaskInfo {
            task_id: 7,
            task: "deploy".into(),
            origin: Some("deploy.sloth:3".into()),
            mode: "apply",
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_name_the_master_the_task_and_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/audit.log");
        let log = AuditLog::open(&Settings {
            path: Some(path.clone()),
            max_size: 1 << 20,
            keep: 2,
        })
        .unwrap();
        let s = session();
        log.record("web-01", Event::Connect, &s, None, None)
            .unwrap();
        log.record("web-01", Event::TaskStart, &s, Some(&task()), None)
            .unwrap();
        let err = TaskError::new(ErrorKind::Lua, "x".repeat(5000));
        let end = Ending::of::<()>(&Err(err), 1500, 2);
        log.record("web-01", Event::TaskEnd, &s, Some(&task()), Some(&end))
            .unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["event"], "connect");
        assert_eq!(l[0]["master"]["name"], "ops");
        assert_eq!(l[0]["peer"], "127.0.0.1:4000");
        assert!(l[0].get("task_id").is_none());
        assert_eq!(l[1]["event"], "task_start");
        assert_eq!(l[1]["origin"], "deploy.sloth:3");
        assert_eq!(l[2]["outcome"], "error");
        assert_eq!(l[2]["error_kind"], "lua");
        assert_eq!(l[2]["duration_ms"], 1.5);
        assert_eq!(l[2]["changes"], 2);
        assert!(l[2]["error"].as_str().unwrap().len() < 1100);
        assert!(sloth_proto::text::parse_rfc3339(l[2]["time"].as_str().unwrap()).is_some());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        // An existing log others could read is made private when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(log);
        let _log = AuditLog::open(&Settings {
            path: Some(path.clone()),
            max_size: 1 << 20,
            keep: 2,
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotates_by_size_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&Settings {
            path: Some(path.clone()),
            max_size: 600,
            keep: 2,
        })
        .unwrap();
        let s = session();
        for _ in 0..40 {
            log.record("web-01", Event::TaskStart, &s, Some(&task()), None)
                .unwrap();
        }
        assert!(path.exists() && numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size <= 600, "{} is {size} bytes", p.display());
            // Every line whole.
            assert!(!lines(&p).is_empty());
        }
        // Reopening appends (an agent restart keeps its history).
        let before = lines(&path).len();
        drop(log);
        let log = AuditLog::open(&Settings {
            path: Some(path.clone()),
            max_size: 1 << 20,
            keep: 2,
        })
        .unwrap();
        log.record("web-01", Event::Connect, &s, None, None)
            .unwrap();
        assert_eq!(lines(&path).len(), before + 1);
    }

    #[test]
    fn off_records_nothing_and_an_unwritable_place_is_an_error() {
        let log = AuditLog::open(&Settings {
            path: None,
            max_size: 1,
            keep: 0,
        })
        .unwrap();
        assert!(log
            .record("a", Event::Connect, &session(), None, None)
            .is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let e = AuditLog::open(&Settings {
            path: Some(file.join("audit.log")),
            max_size: 1,
            keep: 0,
        })
        .err()
        .expect("a file is not a directory");
        assert!(format!("{e:#}").contains("audit log"), "{e:#}");
    }

    #[test]
    fn default_paths() {
        assert_eq!(
            default_path(true),
            Some(PathBuf::from("/var/log/sloth/audit.log"))
        );
    }
}
