//! The agent's identity on disk: its certificate and key, the fleet CA certificate and
//! the fleet's CRL. At start they say whether the agent serves, enrolls (no
//! certificate, or an expired one, and a join token) or refuses to start. A new key and
//! certificate (enrollment, renewal) replace the old pair so that a crash at any point
//! leaves a usable pair: both are written beside the old ones as `*.next` first, then
//! renamed key first; the next start completes a replacement that was cut short.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use sloth_transport::{self as tls, keys, CertInfo, Crl, JoinToken, Pem};

/// Where the identity lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: PathBuf,
}

/// What the agent serves with.
#[derive(Debug, Clone)]
pub struct Identity {
    pub own: Pem,
    pub ca: String,
    pub crl: Option<Crl>,
    pub info: CertInfo,
}

/// What the agent does at start.
pub enum Startup {
    Serve(Box<Identity>),
    /// No usable certificate, and a token to enroll with.
    Enroll(JoinToken),
}

/// Decide from the files (after completing a replacement cut short) and the token.
pub fn startup(paths: &Paths, name: &str, token: Option<&str>) -> anyhow::Result<Startup> {
    recover(paths)?;
    let token = token
        .map(|t| JoinToken::parse(t).map_err(|e| anyhow!("the join token: {e}")))
        .transpose()?;
    if !paths.cert.exists() && !paths.key.exists() {
        return match token {
            Some(t) => Ok(Startup::Enroll(t)),
            None => bail!(
                "no certificate at {}: enroll with a join token (`sloth-master token create {name}` \
                 on the master, then `sloth-agent --token TOKEN ...`), or install one made by \
                 `sloth-master certs issue {name}`",
                paths.cert.display()
            ),
        };
    }
    let own = tls::read_pem_files(&paths.cert, &paths.key)?;
    let info = CertInfo::of_pem(&own.cert).map_err(|e| anyhow!("{}: {e}", paths.cert.display()))?;
    if !keys::key_matches(&own.key, &own.cert)? {
        bail!(
            "{} does not belong to {} (the key of another certificate?)",
            paths.key.display(),
            paths.cert.display()
        );
    }
    if info.expired(SystemTime::now()) {
        return match token {
            Some(t) => {
                tracing::warn!(
                    "the certificate {} expired on {}: enrolling again with the join token",
                    paths.cert.display(),
                    info.expiry()
                );
                Ok(Startup::Enroll(t))
            }
            None => bail!(
                "the agent certificate {} expired on {}: enroll again with a new join token \
                 (`sloth-master token create {name}`, then `sloth-agent --token TOKEN ...`)",
                paths.cert.display(),
                info.expiry()
            ),
        };
    }
    let ca = std::fs::read_to_string(&paths.ca)
        .with_context(|| format!("reading CA certificate {}", paths.ca.display()))?;
    // Said now, not as every master's TLS failure later.
    if !CertInfo::signed_by(&own.cert, &ca).map_err(|e| anyhow!(e))? {
        bail!(
            "{} is not signed by the CA in {} (a certificate of another fleet, or the wrong \
             --ca?)",
            paths.cert.display(),
            paths.ca.display()
        );
    }
    let crl = read_crl(paths, &ca)?;
    if crl.as_ref().is_some_and(|c| c.is_revoked(&info.serial)) {
        return match token {
            Some(t) => {
                tracing::warn!(
                    "the certificate {} (serial {}) is revoked: enrolling again with the join token",
                    paths.cert.display(),
                    info.serial
                );
                Ok(Startup::Enroll(t))
            }
            None => bail!(
                "the agent certificate {} (serial {}) is revoked by the fleet's CRL ({}): enroll \
                 again with a new join token (`sloth-master token create {name}`)",
                paths.cert.display(),
                info.serial,
                paths.crl.display()
            ),
        };
    }
    Ok(Startup::Serve(Box::new(Identity { own, ca, crl, info })))
}

/// The CRL file, if there is one. One that is not the fleet CA's stops the agent: it
/// would otherwise serve masters it was told to refuse.
fn read_crl(paths: &Paths, ca: &str) -> anyhow::Result<Option<Crl>> {
    match std::fs::read(&paths.crl) {
        Ok(der) => Crl::verified(&der, ca)
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", paths.crl.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read {}: {e}", paths.crl.display()),
    }
}

/// Replace the key and certificate (and, at enrollment, the CA certificate) so that a
/// crash at any point leaves the old pair or the new one, never a mix
/// ([`tls::replace_pair`]).
pub fn install(
    paths: &Paths,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: Option<&str>,
) -> anyhow::Result<()> {
    if !keys::key_matches(key_pem, cert_pem)? {
        bail!("the certificate does not certify the new key");
    }
    tls::replace_pair(
        &paths.key,
        &paths.cert,
        key_pem,
        cert_pem,
        ca_pem.map(|c| (paths.ca.as_path(), c)),
    )
}

/// Complete or undo a replacement cut short by a crash.
fn recover(paths: &Paths) -> anyhow::Result<()> {
    if tls::recover_pair(&paths.key, &paths.cert, Some(&paths.ca))? {
        tracing::warn!(
            "completed the replacement of {} cut short by a crash",
            paths.cert.display()
        );
    }
    Ok(())
}

/// Forget the CRL (a new CA: the old CA's list means nothing, and would not verify).
pub fn drop_crl(paths: &Paths) -> anyhow::Result<()> {
    match std::fs::remove_file(&paths.crl) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("cannot remove {}: {e}", paths.crl.display())
        }
        _ => Ok(()),
    }
}

/// Keep a CRL the agent took.
pub fn save_crl(paths: &Paths, crl: &Crl) -> anyhow::Result<()> {
    tls::write_file_atomic(&paths.crl, crl.der(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn paths(dir: &Path) -> Paths {
        Paths {
            cert: dir.join("web-01.crt"),
            key: dir.join("web-01.key"),
            ca: dir.join("ca.crt"),
            crl: dir.join("crl.der"),
        }
    }

    #[test]
    fn no_certificate_needs_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let e = startup(&p, "web-01", None).err().unwrap().to_string();
        assert!(
            e.contains("no certificate at") && e.contains("token create web-01"),
            "{e}"
        );
        let e = startup(&p, "web-01", Some("junk"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a join token"), "{e}");
        let t = JoinToken::generate(&format!("sha256:{}", "00".repeat(32))).unwrap();
        assert!(matches!(
            startup(&p, "web-01", Some(&t.text())).unwrap(),
            Startup::Enroll(_)
        ));
    }

    #[test]
    fn a_replacement_cut_short_rolls_forward_once_the_certificate_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let old = keys::new_key_and_request("web-01").unwrap();
        let new = keys::new_key_and_request("web-01").unwrap();
        let self_signed = |k: &str| keys::enrollment_identity(k, "web-01").unwrap().cert;
        let (old_cert, new_cert) = (self_signed(&old.key_pem), self_signed(&new.key_pem));
        std::fs::write(&p.key, &old.key_pem).unwrap();
        std::fs::write(&p.cert, &old_cert).unwrap();
        assert!(
            install(&p, &old.key_pem, &new_cert, None).is_err(),
            "mismatch refused"
        );

        // Cut after the key was renamed, before the certificate: rolled forward.
        std::fs::write(dir.path().join("web-01.crt.next"), &new_cert).unwrap();
        std::fs::write(&p.key, &new.key_pem).unwrap();
        recover(&p).unwrap();
        let pair = (
            std::fs::read_to_string(&p.key).unwrap(),
            std::fs::read_to_string(&p.cert).unwrap(),
        );
        assert!(keys::key_matches(&pair.0, &pair.1).unwrap());
        assert!(!dir.path().join("web-01.crt.next").exists());

        // Cut while writing: only the new key's file: dropped, the pair untouched.
        std::fs::write(dir.path().join("web-01.key.next"), &old.key_pem).unwrap();
        recover(&p).unwrap();
        assert!(!dir.path().join("web-01.key.next").exists());
        assert!(keys::key_matches(
            &std::fs::read_to_string(&p.key).unwrap(),
            &std::fs::read_to_string(&p.cert).unwrap()
        )
        .unwrap());

        install(&p, &old.key_pem, &old_cert, None).unwrap();
        assert_eq!(std::fs::read_to_string(&p.cert).unwrap(), old_cert);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
