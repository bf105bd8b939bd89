use super::*;

fn pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.init(false, Lifetime::MASTER).unwrap();
    (dir, pki)
}

#[test]
fn init_refuses_to_replace_a_ca_and_records_the_master() {
    let (dir, pki) = pki();
    for f in [
        "ca.crt",
        "ca.key",
        "master.crt",
        "master.key",
        "ledger.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let e = pki.init(false, Lifetime::MASTER).unwrap_err().to_string();
    assert!(e.contains("ca.crt") && e.contains("--force"), "{e}");
    let ledger = pki.ledger().unwrap();
    assert_eq!(ledger.issued.len(), 1);
    assert_eq!(ledger.issued[0].role, "master");
    let old = pki.ca_cert().unwrap();
    pki.init(true, Lifetime::MASTER).unwrap();
    assert_ne!(pki.ca_cert().unwrap(), old);
    assert_eq!(
        pki.ledger().unwrap().issued.len(),
        1,
        "a new CA, new records"
    );
    // Into a directory that does not exist yet: made, private, and recorded.
    let nested = Pki::new(&dir.path().join("a/b"));
    nested.init(false, Lifetime::MASTER).unwrap();
    assert_eq!(nested.ledger().unwrap().issued.len(), 1);
}

#[test]
fn revocation_writes_a_numbered_crl_of_everything_revoked() {
    let (_dir, pki) = pki();
    assert!(pki.crl().unwrap().is_none());
    let a = pki.issue_agent("web-01", &[], Lifetime::AGENT).unwrap();
    let b = pki.issue_agent("web-02", &[], Lifetime::AGENT).unwrap();
    let (a_serial, b_serial) = (
        CertInfo::of_pem(&a.cert).unwrap().serial,
        CertInfo::of_pem(&b.cert).unwrap().serial,
    );
    let (done, n) = pki.revoke(RevokeTarget::Name("web-01")).unwrap();
    assert_eq!((done.len(), n), (1, 1));
    let crl = pki.crl().unwrap().unwrap();
    assert!(crl.is_revoked(&a_serial) && !crl.is_revoked(&b_serial));
    let (_, n) = pki
        .revoke(RevokeTarget::Serial(&b_serial.to_uppercase()))
        .unwrap();
    assert_eq!(n, 2);
    let crl = pki.crl().unwrap().unwrap();
    assert_eq!(crl.number, 2);
    assert!(crl.is_revoked(&a_serial) && crl.is_revoked(&b_serial));
    let e = pki
        .revoke(RevokeTarget::Name("web-01"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to revoke"), "{e}");
    assert!(pki.revoke(RevokeTarget::Serial("zz")).is_err());
    // A prefix of a real serial, or one the CA never issued, revokes nothing.
    let c = pki.issue_agent("web-03", &[], Lifetime::AGENT).unwrap();
    let c_serial = CertInfo::of_pem(&c.cert).unwrap().serial;
    for bad in [&c_serial[..8], "0"] {
        let e = pki
            .revoke(RevokeTarget::Serial(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no certificate with serial"), "{e}");
    }
    assert_eq!(pki.crl().unwrap().unwrap().number, 2);
}

/// A master whose own CRL revokes its certificate is refused at start, with the way out.
#[test]
fn a_master_revoked_by_its_own_crl_is_refused_at_start() {
    let (_dir, pki) = pki();
    assert!(pki.master_certs(Lifetime::AGENT).is_ok());
    pki.revoke(RevokeTarget::Name("master")).unwrap();
    let e = pki.master_certs(Lifetime::AGENT).err().unwrap().to_string();
    assert!(e.contains("is revoked by this fleet's CRL"), "{e}");
    assert!(e.contains("certs renew-master"), "{e}");
    pki.renew_master(Lifetime::MASTER).unwrap();
    assert!(pki.master_certs(Lifetime::AGENT).is_ok());
}

/// A revocation that died after recording itself in the ledger, before its CRL was
/// written: the next revocation's CRL has a new number (never one the disk already
/// had) and carries both; so does running the interrupted one again.
#[test]
fn a_revocation_interrupted_before_its_crl_is_made_good_by_the_next() {
    let (_dir, pki) = pki();
    let a = pki.issue_agent("web-01", &[], Lifetime::AGENT).unwrap();
    let b = pki.issue_agent("web-02", &[], Lifetime::AGENT).unwrap();
    let (a_serial, b_serial) = (
        CertInfo::of_pem(&a.cert).unwrap().serial,
        CertInfo::of_pem(&b.cert).unwrap().serial,
    );
    pki.revoke(RevokeTarget::Name("web-01")).unwrap();
    // The crash: the ledger says CRL #2 revokes web-02 too; the disk still has #1.
    {
        let store = Store::lock(&pki.dir).unwrap();
        let mut ledger = store.ledger().unwrap();
        ledger.revoked.push(store::Revocation {
            serial: b_serial.clone(),
            name: "web-02".into(),
            at: store::now(),
        });
        ledger.crl_number = 2;
        store.save_ledger(&ledger).unwrap();
    }
    assert_eq!(pki.crl().unwrap().unwrap().number, 1);
    // Running it again writes the CRL the ledger recorded (a new number).
    let (done, n) = pki.revoke(RevokeTarget::Serial(&b_serial)).unwrap();
    assert!(done.is_empty());
    assert_eq!(n, 3);
    let crl = pki.crl().unwrap().unwrap();
    assert_eq!(crl.number, 3);
    assert!(crl.is_revoked(&a_serial) && crl.is_revoked(&b_serial));
}

#[test]
fn tokens_enroll_once_for_their_names_until_they_expire() {
    let (_dir, pki) = pki();
    let req = || {
        tls::keys::new_key_and_request("web-01")
            .unwrap()
            .request_der
    };
    let t = pki
        .create_token("web-*", Duration::from_secs(3600), 1)
        .unwrap();
    assert_eq!(
        t.ca_fingerprint,
        ca_fingerprint(&pki.ca_cert().unwrap()).unwrap()
    );
    let lt = Lifetime::AGENT;

    let e = pki.redeem(&t.id, "00", "web-01", &req(), lt).unwrap_err();
    assert_eq!(e, "wrong join token secret");
    let e = pki
        .redeem(&t.id, &t.secret, "db-01", &req(), lt)
        .unwrap_err();
    assert_eq!(e, "the join token is for 'web-*', not for 'db-01'");
    let e = pki
        .redeem("0000000000000000", &t.secret, "web-01", &req(), lt)
        .unwrap_err();
    assert!(e.starts_with("unknown join token"), "{e}");

    let cert = pki.redeem(&t.id, &t.secret, "web-01", &req(), lt).unwrap();
    assert_eq!(
        CertInfo::of_pem(&cert).unwrap().name.as_deref(),
        Some("web-01")
    );
    // Replayed: the single use is spent.
    let e = pki
        .redeem(&t.id, &t.secret, "web-02", &req(), lt)
        .unwrap_err();
    assert!(
        e.starts_with("the join token was already used (last by web-01 at "),
        "{e}"
    );
    let rec = &pki.tokens().unwrap()[0];
    assert_eq!(rec.uses_left, 0);
    assert!(
        !serde_json::to_string(rec).unwrap().contains(&t.secret),
        "no secret stored"
    );

    let twice = pki
        .create_token("db-01", Duration::from_secs(3600), 2)
        .unwrap();
    assert!(pki
        .redeem(&twice.id, &twice.secret, "db-01", &req(), lt)
        .is_ok());
    assert!(pki
        .redeem(&twice.id, &twice.secret, "db-01", &req(), lt)
        .is_ok());
    assert!(pki
        .redeem(&twice.id, &twice.secret, "db-01", &req(), lt)
        .is_err());

    let short = pki
        .create_token("web-03", Duration::from_secs(1), 1)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let e = pki
        .redeem(&short.id, &short.secret, "web-03", &req(), lt)
        .unwrap_err();
    assert!(e.starts_with("the join token expired at "), "{e}");

    pki.remove_token(&twice.id).unwrap();
    assert!(pki.remove_token(&twice.id).is_err());
    assert!(pki
        .create_token("bad name!", Duration::from_secs(60), 1)
        .is_err());
    assert!(pki
        .create_token("web-01", Duration::from_secs(60), 0)
        .is_err());
    assert!(pki.create_token("web-01", MAX_TOKEN_TTL * 2, 1).is_err());
}

#[test]
fn the_master_certificate_is_renewed_and_its_expiry_refused() {
    let (dir, pki) = pki();
    let before = CertInfo::of_pem(&pki.master().unwrap().cert).unwrap();
    let after = pki.renew_master(Lifetime(Duration::from_secs(2))).unwrap();
    assert_ne!(before.serial, after.serial);
    assert!(pki.master_checked().is_ok());
    std::thread::sleep(Duration::from_millis(2_600));
    let e = format!("{:#}", pki.master_checked().unwrap_err());
    assert!(
        e.contains(&format!(
            "the master certificate {} expired on",
            dir.path().join("master.crt").display()
        )),
        "{e}"
    );
}

#[test]
fn renewal_is_refused_for_revoked_certificates_and_rate_limited() {
    let (_dir, pki) = pki();
    let pem = pki
        .issue_agent(
            "web-01",
            &["web-01.example.org".into(), "10.0.0.7".into()],
            Lifetime::AGENT,
        )
        .unwrap();
    let serial = CertInfo::of_pem(&pem.cert).unwrap();
    assert_eq!(serial.extra_sans, ["web-01.example.org", "10.0.0.7"]);
    let req = || {
        tls::keys::new_key_and_request("web-01")
            .unwrap()
            .request_der
    };
    let first = pki
        .renew_agent("web-01", &serial, &req(), Lifetime::AGENT)
        .unwrap();
    // The renewed certificate keeps the extra names of the one it replaces.
    assert_eq!(
        CertInfo::of_pem(&first).unwrap().extra_sans,
        ["web-01.example.org", "10.0.0.7"]
    );
    // The agent did not install it and asks again: not within RENEW_INTERVAL.
    let e = format!(
        "{:#}",
        pki.renew_agent("web-01", &serial, &req(), Lifetime::AGENT)
            .unwrap_err()
    );
    assert!(e.contains("which it does not present yet"), "{e}");
    // Presenting the renewed one, it may renew again (e.g. after a shorter lifetime).
    let renewed = CertInfo::of_pem(&first).unwrap();
    assert!(pki
        .renew_agent("web-01", &renewed, &req(), Lifetime::AGENT)
        .is_ok());
    pki.revoke(RevokeTarget::Serial(&serial.serial)).unwrap();
    let e = format!(
        "{:#}",
        pki.renew_agent("web-01", &serial, &req(), Lifetime::AGENT)
            .unwrap_err()
    );
    assert!(e.contains("is revoked: no renewal"), "{e}");
    // Serials are compared in one form, however typed.
    let e = pki
        .revoke(RevokeTarget::Serial(&format!(
            "0x{}",
            serial.serial.to_uppercase()
        )))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already revoked"), "{e}");
}
