//! Run history: every `run`, `exec` and `health` recorded in a SQLite database (the
//! library compiled in), so that "what changed on db-01 last night, and who ran it" and
//! "run it again on the hosts that failed" have answers. [`recorder`] writes a run as
//! it happens, batched on its own thread, never in the run's way; [`query`] reads it
//! back for `sloth-master history` and `--rerun-failed`. The schema is in
//! [`SCHEMA`] and docs/history.md.
//!
//! Where: `--state DIR`, else `$SLOTH_STATE_DIR`, else `$XDG_STATE_HOME/sloth`
//! (`~/.local/state/sloth`), file `history.db`. WAL journal and a busy timeout, so that
//! masters running at once each record their runs whole.

pub mod query;
pub mod recorder;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// The database file in the state directory.
pub const DB_FILE: &str = "history.db";
/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// How long a writer waits for another master's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tables and indexes (see docs/history.md).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    key             INTEGER PRIMARY KEY,    -- the rows below refer to this
    id              TEXT NOT NULL UNIQUE,   -- the run id: 20261207T054500Z-3f2a9c1b
    kind            TEXT NOT NULL,          -- run | exec | health
    command         TEXT NOT NULL,          -- JSON array, secret-looking -e values masked
    script          TEXT NOT NULL,          -- as given (exec: "exec", health: "health")
    script_path     TEXT,                   -- absolute
    script_sha256   TEXT,
    script_text     TEXT,
    vars            TEXT NOT NULL,          -- JSON object, masked
    inventory       TEXT,
    inventory_sha256 TEXT,
    user            TEXT NOT NULL,
    host            TEXT NOT NULL,          -- where the master ran
    pid             INTEGER NOT NULL,
    check_mode      INTEGER NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    status          TEXT NOT NULL,          -- running | ok | failed | interrupted
    exit_code       INTEGER,
    error           TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_by_script ON runs (script_path, started_at);
CREATE TABLE IF NOT EXISTS hosts (
    run         INTEGER NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    host        TEXT NOT NULL,
    status      TEXT NOT NULL,              -- ok | failed | unreachable | cancelled | skipped | up | down
    ok          INTEGER NOT NULL,
    changed     INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    unreachable INTEGER NOT NULL,
    cancelled   INTEGER NOT NULL,
    skipped     INTEGER NOT NULL,
    error       TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS hosts_of_run ON hosts (run, host);
CREATE INDEX IF NOT EXISTS hosts_by_host ON hosts (host);
CREATE TABLE IF NOT EXISTS tasks (
    run         INTEGER NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    task_id     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    host        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    success     INTEGER NOT NULL,
    kind        TEXT,
    error       TEXT,
    changes     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_of_run ON tasks (run, task_id);
CREATE TABLE IF NOT EXISTS changes (
    run         INTEGER NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    task_id     INTEGER,
    host        TEXT NOT NULL,
    resource    TEXT NOT NULL,
    target      TEXT NOT NULL,
    action      TEXT NOT NULL,
    changed     INTEGER NOT NULL,
    check_mode  INTEGER NOT NULL,
    diff        TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS changes_of_run ON changes (run);
CREATE TABLE IF NOT EXISTS logs (
    run         INTEGER NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    task_id     INTEGER,                    -- NULL: the main script
    host        TEXT NOT NULL,
    level       TEXT NOT NULL,
    line        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_of_run ON logs (run);
"#;

/// The state directory: `--state`, else `$SLOTH_STATE_DIR`, else
/// `$XDG_STATE_HOME/sloth`, else `~/.local/state/sloth`.
pub fn state_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = flag {
        return Some(d.to_path_buf());
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("SLOTH_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("sloth")))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/sloth")))
}

/// An open history database.
pub struct Db {
    pub conn: Connection,
    pub path: PathBuf,
    /// Opened read-only (see [`Db::open_existing`]): nothing is written.
    pub read_only: bool,
}

/// `path`'s directory, when it exists and is not a directory.
fn not_a_directory(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    (dir.exists() && !dir.is_dir()).then(|| format!("{} is not a directory", dir.display()))
}

/// Why a database at `path` may not open or be written, as far as the file system
/// tells: its directory is not one, or cannot be written (read-only file system,
/// permissions). Empty when it tells nothing.
fn why_not(path: &Path) -> String {
    if let Some(e) = not_a_directory(path) {
        return format!(" ({e})");
    }
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return String::new();
    };
    match rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
        Err(e) => format!(" ({} is not writable: {e})", dir.display()),
        Ok(()) => String::new(),
    }
}

/// An SQLite URI naming `path` (absolute, every byte outside the unreserved set
/// percent-encoded, so `?`, `#` and `%` in names keep their meaning) with `query`.
fn sqlite_uri(path: &Path, query: &str) -> Result<String, String> {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._~-".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    Ok(uri)
}

impl Db {
    /// Open (creating the directory, mode 0700, the file, mode 0600, and the schema)
    /// for recording.
    pub fn open(path: &Path) -> Result<Db, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sloth_transport::create_private_dir(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // Scripts, logs and diffs may hold secrets: the file is made owner-only before
        // SQLite opens it, whatever the directory (its -wal and -shm files follow it).
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create {}: {e}{}",
                    path.display(),
                    why_not(path)
                ))
            }
        }
        let conn = Connection::open(path)
            .map_err(|e| format!("cannot open {}: {e}{}", path.display(), why_not(path)))?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
            read_only: false,
        };
        db.prepare()?;
        Ok(db)
    }

    /// Open one that exists (history commands); `Ok(None)` when there is none yet.
    /// One on a file system that cannot be written (a read-only mount, a backup) is
    /// read as it is.
    pub fn open_existing(path: &Path) -> Result<Option<Db>, String> {
        if let Some(e) = not_a_directory(path) {
            return Err(e);
        }
        if !path.exists() {
            return Ok(None);
        }
        match Db::open(path) {
            Ok(db) => Ok(Some(db)),
            Err(e) if !why_not(path).is_empty() => {
                Db::open_read_only(path).map(Some).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// Read a database in a directory that cannot be written: read-only first (SQLite
    /// reads a WAL database so when its -shm is there), else `immutable` (no locks,
    /// and its -wal, holding the newest runs, unread: said in a warning).
    fn open_read_only(path: &Path) -> Result<Db, String> {
        use rusqlite::OpenFlags;
        let check = |conn: Connection| -> Result<Db, String> {
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if version != SCHEMA_VERSION {
                return Err(format!(
                    "{}: history schema {version}, this sloth reads {SCHEMA_VERSION}",
                    path.display()
                ));
            }
            Ok(Db {
                conn,
                path: path.to_path_buf(),
                read_only: true,
            })
        };
        let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())
            .and_then(check);
        if plain.is_ok() {
            return plain;
        }
        let conn = Connection::open_with_flags(
            sqlite_uri(path, "immutable=1")?,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let db = check(conn)?;
        let wal = path.with_file_name(format!(
            "{}-wal",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            errln!(
                "warning: {} is read as it is: its newest runs, in {}, cannot be read on a \
                 file system that cannot be written",
                path.display(),
                wal.display()
            );
        }
        Ok(db)
    }

    fn prepare(&self) -> Result<(), String> {
        let fail =
            |e: rusqlite::Error| format!("{}: {e}{}", self.path.display(), why_not(&self.path));
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fail)?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "{} was written by a newer sloth (history schema {version}; this one knows {SCHEMA_VERSION})",
                self.path.display()
            ));
        }
        // auto_vacuum lets pruning give space back: set on a new database before
        // anything is written to it (the WAL switch writes its header).
        if version == 0 {
            self.conn
                .execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
                .map_err(fail)?;
        }
        // WAL: readers never block the writer, and masters running at once take turns
        // (busy timeout) instead of failing.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(fail)?;
        if version == 0 {
            self.conn
                .execute_batch(&format!(
                    "BEGIN;
                     {SCHEMA}
                     PRAGMA user_version = {SCHEMA_VERSION};
                     COMMIT;"
                ))
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Give the free pages back to the file system (each step of the pragma frees one
    /// page: it is run to the end).
    pub fn vacuum(&self) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    }

    /// The database's size in bytes (pages in use and free).
    pub fn size(&self) -> u64 {
        let q = |p: &str| -> i64 { self.conn.query_row(p, [], |r| r.get(0)).unwrap_or(0) };
        (q("PRAGMA page_count") * q("PRAGMA page_size")).max(0) as u64
    }
}

/// Who runs this master: `$USER` (or `$LOGNAME`), else the name /etc/passwd gives the
/// uid, else the uid.
pub fn user() -> String {
    if let Some(u) = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
    {
        return u;
    }
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This machine's name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
