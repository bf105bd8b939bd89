//! What bootstrapping one host takes, decided from what a probe of it found (pure: no
//! SSH here). The probe script prints `key=value` lines and the agent's current
//! certificates; [`Plan::decide`] compares them with what the host should have; the
//! apply script makes exactly the changes planned, each file written to a temporary
//! name and renamed into place.

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use sloth_transport::CertInfo;

/// Where the agent's files go on a host.
pub const BINARY: &str = "/usr/local/bin/sloth-agent";
pub const CONFIG_DIR: &str = "/etc/sloth";
pub const CONFIG: &str = "/etc/sloth/agent.toml";
pub const TOKEN: &str = "/etc/sloth/token";
pub const CERT: &str = "/etc/sloth/agent.crt";
pub const KEY: &str = "/etc/sloth/agent.key";
pub const CA: &str = "/etc/sloth/ca.crt";
pub const CRL: &str = "/etc/sloth/crl.der";
pub const UNIT: &str = "/etc/systemd/system/sloth-agent.service";
pub const SERVICE: &str = "sloth-agent";

/// The unit file every host gets.
pub const UNIT_FILE: &str = include_str!("../../../agent/sloth-agent.service");
/// The agent's config file, `@PORT@` and `@NAME@` to fill in.
pub const CONFIG_TEMPLATE: &str = include_str!("../../../agent/agent.toml.in");

/// The probe, run as root on the host (`sh -s`): facts as `key=value` lines, then the
/// agent's certificate and CA certificate between markers.
pub const PROBE_SCRIPT: &str = r#"
echo "uid=$(id -u)"
echo "arch=$(uname -m)"
if [ -d /run/systemd/system ]; then echo "systemd=yes"; else echo "systemd=no"; fi
v=$(/usr/local/bin/sloth-agent --version 2>/dev/null || true)
echo "version=${v#sloth-agent }"
echo "active=$(systemctl is-active sloth-agent 2>/dev/null || true)"
for f in /etc/sloth/agent.toml /etc/systemd/system/sloth-agent.service; do
  if [ -f "$f" ]; then echo "sha256 $f=$(sha256sum < "$f" | cut -d' ' -f1)"; fi
done
if [ -s /etc/sloth/agent.key ]; then echo "key=yes"; else echo "key=no"; fi
echo "--- cert"
cat /etc/sloth/agent.crt 2>/dev/null || true
echo "--- ca"
cat /etc/sloth/ca.crt 2>/dev/null || true
echo "--- end"
"#;

/// What the probe found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Probe {
    pub uid: Option<u32>,
    pub arch: String,
    pub systemd: bool,
    /// The installed agent's version, empty when none.
    pub version: String,
    /// `systemctl is-active`: `active`, `inactive`, `failed`, ...
    pub active: String,
    pub config_sha256: Option<String>,
    pub unit_sha256: Option<String>,
    pub has_key: bool,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Probe {
    /// Read the probe's output; an error names what is missing.
    pub fn parse(out: &str) -> Result<Probe, String> {
        let mut p = Probe::default();
        let mut section = None;
        let mut seen_end = false;
        for line in out.lines() {
            match line {
                "--- cert" => section = Some("cert"),
                "--- ca" => section = Some("ca"),
                "--- end" => {
                    seen_end = true;
                    section = None;
                }
                _ => match section {
                    Some("cert") => push_line(&mut p.cert_pem, line),
                    Some(_) => push_line(&mut p.ca_pem, line),
                    None => {
                        if let Some((k, v)) = line.split_once('=') {
                            let v = v.trim().to_string();
                            match k {
                                "uid" => p.uid = v.parse().ok(),
                                "arch" => p.arch = v,
                                "systemd" => p.systemd = v == "yes",
                                "version" => p.version = v,
                                "active" => p.active = v,
                                "key" => p.has_key = v == "yes",
                                k if k == format!("sha256 {CONFIG}") => p.config_sha256 = Some(v),
                                k if k == format!("sha256 {UNIT}") => p.unit_sha256 = Some(v),
                                _ => {}
                            }
                        }
                    }
                },
            }
        }
        if !seen_end || p.arch.is_empty() {
            return Err(
                "the probe of the host did not complete (no POSIX shell? see its stderr)".into(),
            );
        }
        Ok(p)
    }
}

fn push_line(s: &mut String, line: &str) {
    s.push_str(line);
    s.push('\n');
}

/// What the host should end up with.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The inventory name (the agent's `--name`).
    pub name: String,
    /// The port the agent listens on.
    pub port: u16,
    /// The agent binary's version and architecture (`uname -m` spelling).
    pub version: String,
    pub arch: String,
    /// The fleet CA certificate (PEM).
    pub ca_pem: String,
}

impl Desired {
    /// The agent's config file (`agent/agent.toml.in`, which install-agent.sh fills in
    /// the same way).
    pub fn config(&self) -> String {
        CONFIG_TEMPLATE
            .replace("@PORT@", &self.port.to_string())
            .replace("@NAME@", &self.name)
    }
}

/// The changes one host needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub copy_binary: bool,
    pub write_config: bool,
    pub write_unit: bool,
    /// Enroll with a fresh token (no certificate, an expired one, one of another CA or
    /// for another name).
    pub enroll: bool,
    pub restart: bool,
    /// Why, in words, for the report.
    pub reasons: Vec<String>,
}

impl Plan {
    /// The plan, or why the host cannot be bootstrapped.
    pub fn decide(p: &Probe, want: &Desired, now: SystemTime) -> Result<Plan, String> {
        if p.uid != Some(0) {
            return Err(format!(
                "the SSH user is not root on this host (uid {}), and sudo is not usable without a password",
                p.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
            ));
        }
        if !p.systemd {
            return Err(
                "no systemd on this host (PID 1 is not systemd): install the agent with \
                 scripts/install-agent.sh --no-systemd and run it under your own supervisor \
                 (docs/install.md)"
                    .into(),
            );
        }
        if p.arch != want.arch {
            return Err(format!(
                "the host is {}, the agent binary is {}: give --agent-binary for {}",
                p.arch, want.arch, p.arch
            ));
        }
        let mut plan = Plan::default();
        if p.version.is_empty() {
            plan.copy_binary = true;
            plan.reasons.push(format!("install {}", want.version));
        } else if p.version != want.version {
            plan.copy_binary = true;
            plan.reasons
                .push(format!("upgrade {} to {}", p.version, want.version));
        }
        if p.config_sha256.as_deref() != Some(sha256(&want.config()).as_str()) {
            plan.write_config = true;
            plan.reasons.push(format!("write {CONFIG}"));
        }
        if p.unit_sha256.as_deref() != Some(sha256(UNIT_FILE).as_str()) {
            plan.write_unit = true;
            plan.reasons.push(format!("write {UNIT}"));
        }
        if let Some(why) = enrollment_needed(p, want, now) {
            plan.enroll = true;
            plan.reasons.push(why);
        }
        if p.active != "active" && plan.reasons.is_empty() {
            plan.reasons
                .push(format!("start {SERVICE} (it was {})", p.active));
        }
        plan.restart = !plan.reasons.is_empty();
        Ok(plan)
    }

    pub fn changes_nothing(&self) -> bool {
        !self.restart
    }

    /// The script that makes the planned changes (run as root with `sh -s`); the token
    /// rides in it (stdin), never on a command line. The binary, when copied, is
    /// already at `BINARY.new`.
    pub fn apply_script(&self, want: &Desired, token: Option<&str>) -> String {
        let mut s = String::from("set -eu\numask 077\n");
        s += &format!("mkdir -p {CONFIG_DIR}\nchmod 0700 {CONFIG_DIR}\n");
        if self.copy_binary {
            s += &format!("chmod 0755 {BINARY}.new\nmv -f {BINARY}.new {BINARY}\n");
        }
        if self.write_config {
            s += &heredoc(CONFIG, &want.config(), "0600");
        }
        if self.enroll {
            s += &format!("rm -f {CERT} {KEY} {CRL}\n");
            if let Some(t) = token {
                s += &heredoc(TOKEN, &format!("{t}\n"), "0600");
            }
        }
        if self.write_unit {
            s += &heredoc(UNIT, UNIT_FILE, "0644");
            s += "systemctl daemon-reload\n";
        }
        s += &format!("systemctl enable {SERVICE} >/dev/null 2>&1\n");
        if self.restart {
            s += &format!("systemctl restart {SERVICE}\n");
        }
        s += &format!(
            "i=0\nuntil systemctl is-active --quiet {SERVICE}; do\n  i=$((i+1))\n  \
             if [ $i -gt 100 ]; then echo \"{SERVICE} did not start:\" >&2; \
             journalctl -u {SERVICE} -n 20 --no-pager >&2 || true; exit 1; fi\n  sleep 0.1\ndone\n"
        );
        s
    }
}

/// Why the host's certificate will not do, if it will not.
fn enrollment_needed(p: &Probe, want: &Desired, now: SystemTime) -> Option<String> {
    if p.cert_pem.trim().is_empty() || !p.has_key {
        return Some("enroll (no certificate yet)".into());
    }
    let cert = match CertInfo::of_pem(&p.cert_pem) {
        Ok(c) => c,
        Err(_) => return Some("enroll again (its certificate is unreadable)".into()),
    };
    if p.ca_pem.trim() != want.ca_pem.trim() {
        return Some("enroll again (its CA is not this fleet's)".into());
    }
    if cert.name.as_deref() != Some(want.name.as_str()) {
        return Some(format!(
            "enroll again (its certificate is for '{}')",
            cert.name.as_deref().unwrap_or("?")
        ));
    }
    if cert.expired(now) {
        return Some(format!(
            "enroll again (its certificate expired on {})",
            cert.expiry()
        ));
    }
    None
}

/// Write `content` to `path` through `path.new`, with `mode`.
fn heredoc(path: &str, content: &str, mode: &str) -> String {
    // A marker the content cannot contain.
    let mut marker = String::from("SLOTH_EOF");
    while content.contains(&marker) {
        marker.push('_');
    }
    let body = if content.ends_with('\n') {
        content.to_string()
    } else {
        format!("{content}\n")
    };
    format!(
        "cat > {path}.new <<'{marker}'\n{body}{marker}\nchmod {mode} {path}.new\nmv -f {path}.new {path}\n"
    )
}

/// Lower-case hex SHA-256, as `sha256sum` prints it.
pub fn sha256(text: &str) -> String {
    sloth_transport::cert_info::hex(&Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sloth_transport::Lifetime;

    fn want(ca: &str) -> Desired {
        Desired {
            name: "web-01".into(),
            port: 7447,
            version: "0.1.0".into(),
            arch: "x86_64".into(),
            ca_pem: ca.into(),
        }
    }

    fn probe_out(extra: &str, cert: &str, ca: &str) -> String {
        format!("uid=0\narch=x86_64\nsystemd=yes\n{extra}--- cert\n{cert}--- ca\n{ca}--- end\n")
    }

    #[test]
    fn a_bare_host_gets_everything_and_an_enrolled_one_nothing() {
        let ca = sloth_transport::generate_ca("fleet").unwrap();
        let w = want(&ca.cert);
        let bare = Probe::parse(&probe_out("version=\nactive=inactive\nkey=no\n", "", "")).unwrap();
        let plan = Plan::decide(&bare, &w, SystemTime::now()).unwrap();
        assert!(
            plan.copy_binary && plan.write_config && plan.write_unit && plan.enroll && plan.restart
        );
        let script = plan.apply_script(&w, Some("SJ1.tok"));
        assert!(script.contains("cat > /etc/sloth/token.new <<'SLOTH_EOF'\nSJ1.tok\nSLOTH_EOF"));
        assert!(script.contains("systemctl restart sloth-agent"));
        assert!(script.contains("listen = \"0.0.0.0:7447\""));

        let cert = sloth_transport::issue_agent(&ca, "web-01", &[], Lifetime::AGENT).unwrap();
        let done = format!(
            "version=0.1.0\nactive=active\nkey=yes\nsha256 {CONFIG}={}\nsha256 {UNIT}={}\n",
            sha256(&w.config()),
            sha256(UNIT_FILE)
        );
        let p = Probe::parse(&probe_out(&done, &cert.cert, &ca.cert)).unwrap();
        let plan = Plan::decide(&p, &w, SystemTime::now()).unwrap();
        assert!(plan.changes_nothing(), "{plan:?}");

        // Another version: upgrade (and restart), nothing else.
        let older = done.replace("version=0.1.0", "version=0.0.9");
        let p = Probe::parse(&probe_out(&older, &cert.cert, &ca.cert)).unwrap();
        let plan = Plan::decide(&p, &w, SystemTime::now()).unwrap();
        assert!(plan.copy_binary && plan.restart && !plan.enroll && !plan.write_config);
        assert_eq!(plan.reasons, ["upgrade 0.0.9 to 0.1.0"]);

        // Expired, another CA, another name: enroll again.
        let later = SystemTime::now() + std::time::Duration::from_secs(31 * 86400);
        assert!(Plan::decide(&p, &w, later).unwrap().enroll);
        let other = sloth_transport::generate_ca("other").unwrap();
        let p2 = Probe::parse(&probe_out(&done, &cert.cert, &other.cert)).unwrap();
        assert!(Plan::decide(&p2, &w, SystemTime::now()).unwrap().enroll);
        let mut w3 = want(&ca.cert);
        w3.name = "web-02".into();
        assert!(Plan::decide(&p, &w3, SystemTime::now()).unwrap().enroll);
    }

    #[test]
    fn hosts_that_cannot_take_it_are_refused_with_the_reason() {
        let w = want("");
        let no_sd =
            Probe::parse("uid=0\narch=x86_64\nsystemd=no\n--- cert\n--- ca\n--- end\n").unwrap();
        let e = Plan::decide(&no_sd, &w, SystemTime::now()).unwrap_err();
        assert!(e.starts_with("no systemd on this host"), "{e}");
        let arm =
            Probe::parse("uid=0\narch=aarch64\nsystemd=yes\n--- cert\n--- ca\n--- end\n").unwrap();
        let e = Plan::decide(&arm, &w, SystemTime::now()).unwrap_err();
        assert!(
            e.contains("the host is aarch64, the agent binary is x86_64"),
            "{e}"
        );
        let user = Probe::parse("uid=1000\narch=x86_64\nsystemd=yes\n--- cert\n--- ca\n--- end\n")
            .unwrap();
        assert!(Plan::decide(&user, &w, SystemTime::now())
            .unwrap_err()
            .contains("uid 1000"));
        assert!(Probe::parse("sh: not found").is_err());
    }

    #[test]
    fn heredocs_survive_their_marker_in_the_content() {
        let s = heredoc("/x", "a\nSLOTH_EOF\nb", "0600");
        assert!(
            s.contains("<<'SLOTH_EOF_'\na\nSLOTH_EOF\nb\nSLOTH_EOF_\n"),
            "{s}"
        );
    }
}
