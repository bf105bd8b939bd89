//! The CA's records beside its key, in the certificate directory: `ledger.json` (every
//! certificate issued, every revocation, the current CRL number) and `tokens.json`
//! (join tokens, their secrets only as SHA-256). Both are read and rewritten under an
//! exclusive lock (`.pki.lock`), each write atomic, so two masters enrolling at once
//! cannot both spend a single-use token or lose a record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A certificate the CA issued.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Issued {
    /// Lower-case hex, as `CertInfo::serial`.
    pub serial: String,
    pub name: String,
    /// `agent` or `master`.
    pub role: String,
    /// RFC 3339.
    pub not_after: String,
    pub issued_at: String,
    /// `init`, `issue`, `enroll`, `renew`, `renew-master`.
    pub via: String,
}

/// A revocation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Revocation {
    pub serial: String,
    pub name: String,
    pub at: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// The number of the last CRL written (0: none yet).
    #[serde(default)]
    pub crl_number: u64,
    #[serde(default)]
    pub issued: Vec<Issued>,
    #[serde(default)]
    pub revoked: Vec<Revocation>,
}

/// One use of a token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Redemption {
    pub name: String,
    pub serial: String,
    pub at: String,
}

/// A join token as the master keeps it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    /// `sha256:` of the secret; the secret itself is never stored.
    pub secret_sha256: String,
    /// The agent name it may enroll, or a glob (`web-*`, `db-0?`).
    pub names: String,
    /// RFC 3339.
    pub expires: String,
    pub uses_left: u32,
    pub created: String,
    #[serde(default)]
    pub redeemed: Vec<Redemption>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Tokens {
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// The certificate directory's records, locked for as long as this lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Take the directory's lock (waiting for another master that holds it).
    pub fn lock(dir: &Path) -> Result<Store, String> {
        let path = dir.join(".pki.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: file,
        })
    }

    pub fn ledger(&self) -> Result<Ledger, String> {
        read_json(&self.dir.join("ledger.json"))
    }

    pub fn save_ledger(&self, l: &Ledger) -> Result<(), String> {
        write_json(&self.dir.join("ledger.json"), l)
    }

    pub fn tokens(&self) -> Result<Tokens, String> {
        read_json(&self.dir.join("tokens.json"))
    }

    pub fn save_tokens(&self, t: &Tokens) -> Result<(), String> {
        write_json(&self.dir.join("tokens.json"), t)
    }
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), String> {
    let text =
        serde_json::to_vec_pretty(v).map_err(|e| format!("encoding {}: {e}", path.display()))?;
    sloth_transport::write_file_atomic(path, &text, 0o600).map_err(|e| format!("{e:#}"))
}

/// Now, RFC 3339.
pub fn now() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    sloth_proto::text::rfc3339_seconds(t).to_string()
}

/// A time this module wrote.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    sloth_proto::text::parse_rfc3339(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_under_the_lock_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::lock(dir.path()).unwrap();
        assert_eq!(s.ledger().unwrap(), Ledger::default());
        let l = Ledger {
            crl_number: 3,
            ..Ledger::default()
        };
        s.save_ledger(&l).unwrap();
        assert_eq!(s.ledger().unwrap().crl_number, 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ledger.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("tokens.json"), "{nope").unwrap();
        let e = s.tokens().unwrap_err();
        assert!(e.contains("tokens.json is damaged"), "{e}");
    }
}
