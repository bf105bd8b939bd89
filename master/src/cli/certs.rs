//! `sloth-master certs ...`: create the fleet CA and the master certificate, and issue
//! agent certificates.

use std::path::Path;

use anyhow::{bail, Context};
use sloth_transport as tls;

/// Common name of the fleet CA written by [`init`].
const CA_COMMON_NAME: &str = "sloth fleet CA";
/// Name of the master certificate written by [`init`].
const MASTER_NAME: &str = "master";

/// Creates the fleet CA (`ca.crt`, `ca.key`) and a master certificate (`master.crt`,
/// `master.key`) in `dir`. Refuses to replace an existing CA unless `force`: every
/// certificate issued by the old CA would stop working.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<()> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    if !force {
        for existing in [&ca_crt, &ca_key] {
            if existing.exists() {
                bail!(
                    "{} already exists: refusing to replace the fleet CA (every agent and master \
                     certificate it issued would stop working); use --force to replace it anyway",
                    existing.display()
                );
            }
        }
    }
    let ca = tls::generate_ca(CA_COMMON_NAME).context("cannot generate the fleet CA")?;
    let master = tls::issue_master(&ca, MASTER_NAME)?;
    let (ca_crt, ca_key) = tls::write_pem_files(dir, "ca", &ca)?;
    let (master_crt, master_key) = tls::write_pem_files(dir, "master", &master)?;
    println!("wrote {} (fleet CA certificate)", ca_crt.display());
    println!(
        "wrote {} (fleet CA private key, mode 0600: keep it secret, it can mint masters)",
        ca_key.display()
    );
    println!("wrote {} (master certificate)", master_crt.display());
    println!(
        "wrote {} (master private key, mode 0600)",
        master_key.display()
    );
    Ok(())
}

/// Issues an agent certificate for `name` (extra SANs: IP addresses or DNS names), signed
/// by the CA in `dir` (`ca.crt`, `ca.key`), and writes `<name>.crt` / `<name>.key` into
/// `out_dir` (default: `dir`).
pub fn issue(
    dir: &Path,
    name: &str,
    sans: &[String],
    out_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let ca = tls::read_pem_files(&dir.join("ca.crt"), &dir.join("ca.key"))
        .context("cannot load the fleet CA (run `sloth-master certs init` first?)")?;
    let agent = tls::issue_agent(&ca, name, sans)?;
    let out = out_dir.unwrap_or(dir);
    let (crt, key) = tls::write_pem_files(out, name, &agent)?;
    println!("wrote {} (agent certificate for {name})", crt.display());
    println!("wrote {} (agent private key, mode 0600)", key.display());
    println!(
        "install both on {name} together with {}",
        dir.join("ca.crt").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init(dir, false).unwrap();
        for f in ["ca.crt", "ca.key", "master.crt", "master.key"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let err = init(dir, false).unwrap_err().to_string();
        assert!(err.contains("ca.crt") && err.contains("--force"), "{err}");
        let old_ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        init(dir, true).unwrap();
        assert_ne!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), old_ca);

        let out = dir.join("agents");
        issue(dir, "web-01", &["10.0.0.1".to_string()], Some(&out)).unwrap();
        assert!(out.join("web-01.crt").is_file());
        assert!(out.join("web-01.key").is_file());
        assert!(issue(dir, "bad name", &[], None).is_err());
        let empty = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            issue(empty.path(), "web-01", &[], None).unwrap_err()
        );
        assert!(err.contains("ca.crt") && err.contains("not found"), "{err}");
    }
}
