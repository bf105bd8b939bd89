//! Certificates and keys as PEM text and files: atomic writes with the final mode,
//! reads whose errors name the file and the problem.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and its private key, both PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// PEM `CERTIFICATE` block(s); the first is the end-entity certificate.
    pub cert: String,
    /// PEM private key (PKCS#8 `PRIVATE KEY` as written by this module).
    pub key: String,
}

impl fmt::Debug for Pem {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Writes `<dir>/<stem>.crt` (mode 0644) and `<dir>/<stem>.key` (mode 0600), creating `dir`
/// (mode 0700) if needed. Each file is written to a fresh temporary file created with its
/// final mode and then renamed into place, so the key is never readable by others, not
/// even briefly, and an existing file is replaced atomically.
pub fn write_pem_files(dir: &Path, stem: &str, pem: &Pem) -> anyhow::Result<(PathBuf, PathBuf)> {
    if stem.is_empty() || stem.contains('/') || stem.starts_with('.') {
        bail!("invalid file name stem {stem:?}");
    }
    create_private_dir(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file_atomic(&key_path, pem.key.as_bytes(), 0o600)?;
    write_file_atomic(&cert_path, pem.cert.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Creates `dir` and its missing parents, mode 0700, unless something is there already
/// (its mode is then left as it is, and opening a file in it says what is wrong): where
/// keys, the run history and the audit log go.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to `path` through a fresh temporary file created with `mode` in the
/// same directory, synced and renamed into place: readers see the old file or the new
/// one, never a part, and the file never has other permissions, not even briefly.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("invalid file path {}", path.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from `mode`; it can never have added any.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// Make the renames in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn next(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".next");
    PathBuf::from(s)
}

/// Replace a key and its certificate (and optionally a CA certificate) so that a crash
/// at any point leaves the old pair or the new one, never a mix: each new file is
/// written whole beside its old one as `*.next` (key 0600), then renamed into place —
/// CA, key, certificate — and [`recover_pair`] at the next start completes a
/// replacement that was cut short.
pub fn replace_pair(
    key: &Path,
    cert: &Path,
    key_pem: &str,
    cert_pem: &str,
    ca: Option<(&Path, &str)>,
) -> anyhow::Result<()> {
    if let Some((ca_path, ca_pem)) = ca {
        write_file_atomic(&next(ca_path), ca_pem.as_bytes(), 0o644)?;
    }
    write_file_atomic(&next(key), key_pem.as_bytes(), 0o600)?;
    write_file_atomic(&next(cert), cert_pem.as_bytes(), 0o644)?;
    finish_pair(key, cert, ca.map(|(p, _)| p))
}

fn finish_pair(key: &Path, cert: &Path, ca: Option<&Path>) -> anyhow::Result<()> {
    for p in ca.into_iter().chain([key, cert]) {
        let n = next(p);
        if n.exists() {
            fs::rename(&n, p)
                .with_context(|| format!("cannot rename {} to {}", n.display(), p.display()))?;
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Complete or undo a [`replace_pair`] cut short: once the new certificate was written
/// (`cert.next` exists, and the new key with it or already in place), roll forward;
/// without it, the new key (and CA) alone are dropped and the old pair stays.
pub fn recover_pair(key: &Path, cert: &Path, ca: Option<&Path>) -> anyhow::Result<bool> {
    if next(cert).exists() {
        finish_pair(key, cert, ca)?;
        return Ok(true);
    }
    for n in ca.into_iter().chain([key]).map(next) {
        if n.exists() {
            fs::remove_file(&n).with_context(|| format!("cannot remove {}", n.display()))?;
        }
    }
    Ok(false)
}

/// The PEM block of the certificate in `text` whose SHA-256 is `fingerprint`
/// (`sha256:...`), among any others.
pub fn certificate_with(text: &str, fingerprint: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let end = after.find(END)? + END.len();
        let block = &after[..end];
        if let Ok(ders) = parse_certs(block) {
            if ders
                .first()
                .is_some_and(|d| crate::cert_info::fingerprint(d.as_ref()) == fingerprint)
            {
                return Some(format!("{block}\n"));
            }
        }
        rest = &after[end..];
    }
    None
}

/// Reads a certificate and its private key from PEM files. Errors name the file and the
/// problem (missing file, not PEM, no certificate / no private key in it).
pub fn read_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Pem> {
    let cert_text = read_text(cert, "certificate")?;
    match parse_certs(&cert_text) {
        Ok(certs) if !certs.is_empty() => {}
        Ok(_) => bail!(
            "{}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)",
            cert.display()
        ),
        Err(e) => bail!("{}: {e:#}", cert.display()),
    }
    let key_text = read_text(key, "private key")?;
    match parse_key(&key_text) {
        Ok(_) => {}
        Err(e) => bail!("{}: {e:#}", key.display()),
    }
    if let Ok(meta) = fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "private key file {} is accessible by group/others (mode {:o}); run chmod 600 on it",
                key.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    Ok(Pem {
        cert: cert_text,
        key: key_text,
    })
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
            anyhow!(
                "{}: not a PEM {what} file (binary content; DER is not supported, convert it to PEM)",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{}: {what} file not found", path.display())
        }
        Err(e) => bail!("{}: cannot read the {what} file: {e}", path.display()),
    }
}

/// Parses all `CERTIFICATE` blocks of a PEM string.
pub fn parse_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("not valid PEM: {e}"))
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM string.
pub fn parse_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            bail!("no private key found (expected a PEM \"BEGIN PRIVATE KEY\" block)")
        }
        Err(e) => bail!("not valid PEM: {e}"),
    }
}
