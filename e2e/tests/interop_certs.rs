//! Interop with certificates: the real `strait-agent` binary (standalone, `--dataplane none`)
//! against strongSwan's charon (kernel-libipsec) in network namespaces, both authenticating with
//! X.509 certificates made on the host with strongSwan's `pki` ([`TestPki`]).
//!
//! RSA and ECDSA, both directions, identities as FQDN (subjectAltName) and as DN; a certificate
//! from another CA, an expired and a not-yet-valid one; and IKE fragmentation (RFC 7383) both ways.
//! Every case is judged from both sides: charon's `swanctl --list-sas` and log, and our
//! `strait-agent status --json`.
//!
//! Needs root, `e2e/setup/packages.sh` and a built agent (`cargo build -p strait-agent`). Run:
//! `cargo test -p strait-e2e --test interop_certs -- --test-threads=1`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::capture::{self, AES256GCM16, Capture, Exchange};
use strait_e2e::matrix::{self, Cell, Dir, Peer};
use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::scenario::{TUNNEL, assert_agree, dump, up};
use strait_e2e::strongswan::{
    self, CertFiles, Charon, CharonConfig, ChildConfig, Connection, Endpoint, KeyType, Maker,
    TestPki,
};
use strait_e2e::tunnel::{Auth, End, TunnelYaml};

/// How the two ends name themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ids {
    /// The FQDN in the certificate's subjectAltName.
    Fqdn,
    /// The certificate's subject DN, in strongSwan's notation.
    Dn,
}

/// The identity of `site`'s certificate in the chosen form.
fn id_of(site: &Site, ids: Ids) -> String {
    match ids {
        Ids::Fqdn => site.id.to_owned(),
        Ids::Dn => format!("C=CH, O=Strait Test, CN={}", site.id),
    }
}

/// The identity as swanctl.conf wants it (a DN has commas and spaces: quoted).
fn swanctl_id(site: &Site, ids: Ids) -> String {
    match ids {
        Ids::Fqdn => site.id.to_owned(),
        Ids::Dn => format!("\"{}\"", id_of(site, ids)),
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The agent's IPsecTunnel with certificate auth: Secret `tls` (tls.crt, tls.key), `ca/ca.crt`.
fn agent_config(me: &Site, peer: &Site, peer_addr: &str, ids: Ids, initiation: &str) -> String {
    TunnelYaml {
        auth: Auth::Certificate,
        ..TunnelYaml::new(
            TUNNEL,
            End::new(id_of(me, ids), me.addr, me.subnet),
            End::new(id_of(peer, ids), peer_addr, peer.subnet),
        )
        .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
        .initiation(initiation)
    }
    .render()
}

/// Starts the agent on `me` with `own` as its certificate and `ca` as the trust anchor.
fn start_agent(
    me: &Site,
    peer: &Site,
    peer_addr: &str,
    ids: Ids,
    initiation: &str,
    own: &CertFiles,
    ca: &Path,
) -> Agent {
    Agent::start(
        &me.ns,
        &agent_config(me, peer, peer_addr, ids, initiation),
        &SecretFile::certificate(own, ca).expect("certificate files"),
        "none",
        &[],
    )
    .expect("start strait-agent")
}

/// charon on `me` with certificate `own` (signed by `pki`'s CA, which it also trusts).
fn charon_config(
    me: &Site,
    peer: &Site,
    remote_addr: Option<String>,
    ids: Ids,
    pki: &TestPki,
    own: &CertFiles,
) -> CharonConfig {
    let mut conn = Connection::new(
        TUNNEL,
        Endpoint::pubkey(&swanctl_id(me, ids), Some("own.crt")),
        Endpoint::pubkey(&swanctl_id(peer, ids), None),
    );
    conn.local_addrs = vec![me.addr.to_string()];
    conn.remote_addrs = remote_addr.into_iter().collect();
    conn.encap = true;
    conn.children
        .push(ChildConfig::new("net", me.subnet, peer.subnet));
    let mut cfg = CharonConfig::default();
    cfg.connections.push(conn);
    cfg.add_cert_auth(pki, own, "own");
    cfg
}

/// No private key material in our log or status.
fn assert_no_secrets(agent: &Agent, own: &CertFiles) {
    let key = read(&own.key);
    let body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let status = agent.status_json().unwrap();
    for (what, text) in [("log", agent.log()), ("status", status)] {
        assert!(!text.contains("PRIVATE KEY"), "key header in our {what}");
        let flat: String = text.split_whitespace().collect();
        assert!(
            !flat.contains(&body[..body.len().min(40)]),
            "key material in our {what}"
        );
    }
}

/// Two certificates of `key` type from one CA, for `left` and `right`.
fn pki(dir: &Path, pair: &SitePair, key: KeyType) -> (TestPki, CertFiles, CertFiles) {
    pki_by(dir, pair, key, Maker::Pki)
}

/// The same, made by `maker`.
fn pki_by(
    dir: &Path,
    pair: &SitePair,
    key: KeyType,
    maker: Maker,
) -> (TestPki, CertFiles, CertFiles) {
    let pki = TestPki::new_by(dir, key, maker).expect("test CA");
    let left = pki.issue("left", pair.left.id, key).expect("left cert");
    let right = pki.issue("right", pair.right.id, key).expect("right cert");
    (pki, left, right)
}

/// The interop matrix's cell: the peer of `root`, the certificates of `key` made by `maker`.
fn judged(root: Option<&PathBuf>, key: KeyType, maker: Maker, dir: Dir) -> matrix::Judged {
    let peer = if root.is_some() {
        Peer::Strongswan6
    } else {
        Peer::Strongswan5
    };
    let auth = match (key, maker) {
        (KeyType::Rsa(_), Maker::Pki) => matrix::Auth::RsaPki,
        (KeyType::Ecdsa(_), Maker::Pki) => matrix::Auth::EcdsaPki,
        (KeyType::Rsa(_), Maker::Openssl) => matrix::Auth::RsaOpenssl,
        (KeyType::Ecdsa(_), Maker::Openssl) => matrix::Auth::EcdsaOpenssl,
    };
    matrix::judge(module_path!(), &[Cell::new(peer, dir).auth(auth)])
}

/// The agent (left) initiates to charon (right).
fn agent_initiates(key: KeyType, ids: Ids) -> (Agent, Charon, SitePair) {
    agent_initiates_to(None, key, ids, Maker::Pki)
}

/// The same against the charon of `root` (`None`: the host's).
fn agent_initiates_to(
    root: Option<PathBuf>,
    key: KeyType,
    ids: Ids,
    maker: Maker,
) -> (Agent, Charon, SitePair) {
    let judgement = judged(root.as_ref(), key, maker, Dir::We);
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, left, right) = pki_by(dir.path(), &pair, key, maker);
    let charon = Charon::start(
        &pair.right.ns,
        &CharonConfig {
            root,
            ..charon_config(&pair.right, &pair.left, None, ids, &pki, &right)
        },
    )
    .expect("start charon");
    let agent = start_agent(
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        ids,
        "start",
        &left,
        &pki.ca.cert,
    );
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let sas = charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    assert_agree(&sas, &ours);
    assert_eq!(ours["initiator"], true);
    assert_no_secrets(&agent, &left);
    let log = charon.log();
    assert!(
        log.contains("authentication of") && log.contains("successful"),
        "charon did not log a successful authentication of us:\n{log}"
    );
    eprintln!("{}", agent.status_text().unwrap());
    judgement.pass();
    (agent, charon, pair)
}

/// charon (left) initiates to the agent (right).
fn charon_initiates(key: KeyType, ids: Ids) {
    charon_initiates_from(None, key, ids, Maker::Pki);
}

/// The same from the charon of `root` (`None`: the host's).
fn charon_initiates_from(root: Option<PathBuf>, key: KeyType, ids: Ids, maker: Maker) {
    let judgement = judged(root.as_ref(), key, maker, Dir::They);
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, left, right) = pki_by(dir.path(), &pair, key, maker);
    let agent = start_agent(
        &pair.right,
        &pair.left,
        &pair.left.addr.to_string(),
        ids,
        "respond",
        &right,
        &pki.ca.cert,
    );
    let charon = Charon::start(
        &pair.left.ns,
        &CharonConfig {
            root,
            ..charon_config(
                &pair.left,
                &pair.right,
                Some(pair.right.addr.to_string()),
                ids,
                &pki,
                &left,
            )
        },
    )
    .expect("start charon");
    charon
        .initiate(TUNNEL, "net", 30)
        .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(10), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    assert_agree(&charon.list_sas().unwrap(), &ours);
    assert_eq!(ours["initiator"], false);
    assert_no_secrets(&agent, &right);
    eprintln!("{}", agent.status_text().unwrap());
    judgement.pass();
}

/// Certificates from an OpenSSL CA (UTF8String DNs, PKCS#8 keys), as many remote sites have
/// them: RSA with DN identities and ECDSA with FQDNs, each direction once, against charon
/// 5.9.8 and 6.0.1.
#[test]
fn openssl_made_certificates_both_ways() {
    let _serial = netns::serial();
    let six = || Some(strongswan::strongswan6_root());
    let _ = agent_initiates_to(None, KeyType::Rsa(2048), Ids::Dn, Maker::Openssl);
    charon_initiates_from(None, KeyType::Ecdsa(256), Ids::Fqdn, Maker::Openssl);
    let _ = agent_initiates_to(six(), KeyType::Ecdsa(384), Ids::Dn, Maker::Openssl);
    charon_initiates_from(six(), KeyType::Rsa(3072), Ids::Dn, Maker::Openssl);
}

#[test]
fn rsa_fqdn_agent_initiates() {
    let _serial = netns::serial();
    agent_initiates(KeyType::Rsa(2048), Ids::Fqdn);
}

#[test]
fn rsa_fqdn_charon_initiates() {
    let _serial = netns::serial();
    charon_initiates(KeyType::Rsa(2048), Ids::Fqdn);
}

#[test]
fn rsa_dn_agent_initiates() {
    let _serial = netns::serial();
    agent_initiates(KeyType::Rsa(2048), Ids::Dn);
}

#[test]
fn rsa_dn_charon_initiates() {
    let _serial = netns::serial();
    charon_initiates(KeyType::Rsa(2048), Ids::Dn);
}

#[test]
fn ecdsa_fqdn_agent_initiates() {
    let _serial = netns::serial();
    agent_initiates(KeyType::Ecdsa(256), Ids::Fqdn);
}

#[test]
fn ecdsa_fqdn_charon_initiates() {
    let _serial = netns::serial();
    charon_initiates(KeyType::Ecdsa(256), Ids::Fqdn);
}

#[test]
fn ecdsa384_dn_agent_initiates() {
    let _serial = netns::serial();
    agent_initiates(KeyType::Ecdsa(384), Ids::Dn);
}

#[test]
fn ecdsa384_dn_charon_initiates() {
    let _serial = netns::serial();
    charon_initiates(KeyType::Ecdsa(384), Ids::Dn);
}

/// The agent initiates; charon's certificate is `charon_cert` and the agent's `agent_cert`, and
/// each trusts its CA file. Returns the agent's tunnel once `reason` shows, and charon's log.
fn failing_case(
    agent_ca: &Path,
    agent_cert: &CertFiles,
    charon_pki: &TestPki,
    charon_cert: &CertFiles,
    pair: &SitePair,
    reason: &str,
) -> (Value, String) {
    let charon = Charon::start(
        &pair.right.ns,
        &charon_config(
            &pair.right,
            &pair.left,
            None,
            Ids::Fqdn,
            charon_pki,
            charon_cert,
        ),
    )
    .expect("start charon");
    let agent = start_agent(
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        Ids::Fqdn,
        "start",
        agent_cert,
        agent_ca,
    );
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["lastError"]["reason"] == reason
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    assert_ne!(ours["ikeState"], "Established", "{ours}");
    assert_no_secrets(&agent, agent_cert);
    // give charon a moment to log our notification
    std::thread::sleep(Duration::from_millis(500));
    let sas = charon.list_sas().unwrap();
    assert!(
        sas.ike(TUNNEL).is_none_or(|s| s.state != "ESTABLISHED"),
        "charon kept an established SA:\n{}",
        sas.raw
    );
    eprintln!("our status: {ours}");
    (ours, charon.log())
}

fn assert_charon_got_auth_failed(log: &str) {
    assert!(
        log.contains("received AUTHENTICATION_FAILED notify error")
            || log.contains("N(AUTH_FAILED)"),
        "charon's log does not show our AUTHENTICATION_FAILED:\n{log}"
    );
}

/// charon's certificate is issued by a CA we do not trust: AuthenticationFailed on our side,
/// and charon hears it.
#[test]
fn charon_cert_from_another_ca_is_authentication_failed() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, left, _right) = pki(&dir.path().join("ours"), &pair, KeyType::Ecdsa(256));
    let other = TestPki::new(&dir.path().join("other"), KeyType::Ecdsa(256)).unwrap();
    let right_other = other
        .issue("right", pair.right.id, KeyType::Ecdsa(256))
        .unwrap();
    // charon trusts both CAs, so only our side refuses
    let mut charon_pki_files = other;
    charon_pki_files.ca = pki.ca.clone();
    let (ours, log) = failing_case(
        &pki.ca.cert,
        &left,
        &charon_pki_files,
        &right_other,
        &pair,
        "AuthenticationFailed",
    );
    assert!(
        ours["lastError"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication failed"),
        "{ours}"
    );
    assert_charon_got_auth_failed(&log);
}

/// Our certificate is issued by a CA charon does not trust: charon refuses it and we report
/// AuthenticationFailed from its notification.
#[test]
fn agent_cert_from_another_ca_is_refused_by_charon() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, _left, right) = pki(&dir.path().join("ours"), &pair, KeyType::Rsa(2048));
    let other = TestPki::new(&dir.path().join("other"), KeyType::Rsa(2048)).unwrap();
    let left_other = other
        .issue("left", pair.left.id, KeyType::Rsa(2048))
        .unwrap();
    let (_ours, log) = failing_case(
        &pki.ca.cert,
        &left_other,
        &pki,
        &right,
        &pair,
        "AuthenticationFailed",
    );
    assert!(
        log.contains("no trusted") || log.contains("constraint check failed"),
        "charon's log does not say why it refused our certificate:\n{log}"
    );
    assert!(
        log.contains("sending AUTHENTICATION_FAILED") || log.contains("N(AUTH_FAILED)"),
        "charon did not send AUTHENTICATION_FAILED:\n{log}"
    );
}

/// `pki --issue` with an explicit validity window (`--dateform %s`: Unix seconds).
fn issue_with_validity(
    pki: &TestPki,
    dir: &Path,
    name: &str,
    fqdn: &str,
    not_before: i64,
    not_after: i64,
) -> CertFiles {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let k = strait_e2e::cmd::run(
        "pki",
        &[
            "--gen",
            "--type",
            "ecdsa",
            "--size",
            "256",
            "--outform",
            "pem",
        ],
    )
    .unwrap();
    std::fs::write(&key, &k.stdout).unwrap();
    let dn = format!("C=CH, O=Strait Test, CN={fqdn}");
    let out = strait_e2e::cmd::run(
        "pki",
        &[
            "--issue",
            "--in",
            key.to_str().unwrap(),
            "--type",
            "priv",
            "--cacert",
            pki.ca.cert.to_str().unwrap(),
            "--cakey",
            pki.ca.key.to_str().unwrap(),
            "--dn",
            &dn,
            "--san",
            fqdn,
            "--dateform",
            "%s",
            "--not-before",
            &not_before.to_string(),
            "--not-after",
            &not_after.to_string(),
            "--outform",
            "pem",
        ],
    )
    .unwrap();
    std::fs::write(&cert, &out.stdout).unwrap();
    CertFiles {
        cert,
        key,
        dn,
        san: Some(fqdn.to_owned()),
    }
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// charon presents a certificate that expired yesterday: CertificateExpired on our side.
#[test]
fn charon_expired_cert_is_certificate_expired() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, left, _right) = pki(dir.path(), &pair, KeyType::Ecdsa(256));
    let now = unix_now();
    let expired = issue_with_validity(
        &pki,
        dir.path(),
        "right-expired",
        pair.right.id,
        now - 30 * 86400,
        now - 86400,
    );
    let (ours, log) = failing_case(
        &pki.ca.cert,
        &left,
        &pki,
        &expired,
        &pair,
        "CertificateExpired",
    );
    assert!(
        ours["lastError"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{ours}"
    );
    assert_charon_got_auth_failed(&log);
}

/// charon presents a certificate valid only from tomorrow: CertificateNotYetValid.
#[test]
fn charon_future_cert_is_certificate_not_yet_valid() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, left, _right) = pki(dir.path(), &pair, KeyType::Ecdsa(256));
    let now = unix_now();
    let future = issue_with_validity(
        &pki,
        dir.path(),
        "right-future",
        pair.right.id,
        now + 86400,
        now + 30 * 86400,
    );
    let (_ours, log) = failing_case(
        &pki.ca.cert,
        &left,
        &pki,
        &future,
        &pair,
        "CertificateNotYetValid",
    );
    assert_charon_got_auth_failed(&log);
}

/// Our certificate expired: charon refuses it (its log says so) and we report AuthenticationFailed.
#[test]
fn agent_expired_cert_is_refused_by_charon() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let (pki, _left, right) = pki(dir.path(), &pair, KeyType::Ecdsa(256));
    let now = unix_now();
    let expired = issue_with_validity(
        &pki,
        dir.path(),
        "left-expired",
        pair.left.id,
        now - 30 * 86400,
        now - 86400,
    );
    let (_ours, log) = failing_case(
        &pki.ca.cert,
        &expired,
        &pki,
        &right,
        &pair,
        "AuthenticationFailed",
    );
    assert!(
        log.contains("subject certificate invalid (valid from"),
        "charon's log does not say our certificate expired:\n{log}"
    );
}

/// Counts `what` in charon's log.
fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

/// RSA-4096 certificates make IKE_AUTH larger than both ends' fragment sizes: charon's
/// `fragment_size = 576` and our default 1280. Both ends send fragments, both reassemble, and
/// the SA comes up. Run in both directions, captured: tshark sees SKF payloads (RFC 7383) from
/// both ends, decrypts them with charon's keys and finds nothing malformed.
#[test]
fn fragmentation_both_ways_with_large_certificates() {
    let _serial = netns::serial();
    for agent_starts in [true, false] {
        let pair = SitePair::new(false).expect("topology");
        // left's side of the one link: every IKE packet of both ends passes it
        let iface = pair.topology.interface("left", "right").unwrap();
        let mut capture = Capture::start(&pair.left.ns, &iface).expect("capture");
        let dir = tempfile::tempdir().unwrap();
        let (pki, left, right) = pki(dir.path(), &pair, KeyType::Rsa(4096));
        let (agent, charon) = if agent_starts {
            let mut cfg = charon_config(&pair.right, &pair.left, None, Ids::Dn, &pki, &right);
            cfg.extra_charon.push("fragment_size = 576".into());
            // ike = 4: charon logs the IKE SA keys, which let tshark decrypt the fragments
            cfg.log_level = 4;
            let charon = Charon::start(&pair.right.ns, &cfg).expect("start charon");
            let agent = start_agent(
                &pair.left,
                &pair.right,
                &pair.right.addr.to_string(),
                Ids::Dn,
                "start",
                &left,
                &pki.ca.cert,
            );
            (agent, charon)
        } else {
            let agent = start_agent(
                &pair.right,
                &pair.left,
                &pair.left.addr.to_string(),
                Ids::Dn,
                "respond",
                &right,
                &pki.ca.cert,
            );
            let mut cfg = charon_config(
                &pair.left,
                &pair.right,
                Some(pair.right.addr.to_string()),
                Ids::Dn,
                &pki,
                &left,
            );
            cfg.extra_charon.push("fragment_size = 576".into());
            // ike = 4: charon logs the IKE SA keys, which let tshark decrypt the fragments
            cfg.log_level = 4;
            let charon = Charon::start(&pair.left.ns, &cfg).expect("start charon");
            charon
                .initiate(TUNNEL, "net", 30)
                .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
            (agent, charon)
        };
        let ours = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
            .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
        let sas = charon
            .wait_up(TUNNEL, "net", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
        assert_agree(&sas, &ours);
        let (ours_addr, charon_addr) = if agent_starts {
            (pair.left.addr, pair.right.addr)
        } else {
            (pair.right.addr, pair.left.addr)
        };
        // with charon's keys tshark decrypts every SKF and dissects the reassembled IKE_AUTH
        // (IDs, CERT, CERTREQ, AUTH, SA, TS) besides each fragment's header and framing
        let keys = capture::charon_ike_keys(&charon.log());
        let seen = capture.stop_decrypting(&keys, AES256GCM16).expect("tshark");
        eprintln!(
            "capture: {}\n  ours {}\n  charon's {}\n  tshark warnings: {:?}",
            seen.counts(),
            seen.counts_from(ours_addr.into()),
            seen.counts_from(charon_addr.into()),
            seen.warnings
        );
        for (who, addr) in [("us", ours_addr), ("charon", charon_addr)] {
            // one message split: at least two fragments
            assert!(
                seen.fragments_from(addr.into()) >= 2,
                "no SKF fragments from {who} in the capture:\n{}",
                seen.summary
            );
        }
        assert!(
            seen.undecrypted().is_empty(),
            "tshark could not decrypt {:?} with {keys:?}",
            seen.undecrypted()
        );
        for p in seen.packets.iter().filter(|p| p.fragment.is_some()) {
            assert_eq!(p.exchange, Some(Exchange::IkeAuth), "{p:?}");
            let (n, total) = p.fragment.unwrap();
            assert!(n >= 1 && n <= total, "{p:?}");
        }
        assert!(
            seen.errors.is_empty(),
            "tshark: {:#?}\n{}",
            seen.errors,
            seen.summary
        );
        let log = charon.log();
        // charon fragments its IKE_AUTH message ...
        assert!(
            count(&log, "splitting IKE message") >= 1,
            "charon did not fragment:\n{log}"
        );
        // ... and reassembles ours
        assert!(
            count(&log, "reassembled fragmented IKE message") >= 1,
            "charon did not receive fragments from us:\n{log}"
        );
        eprintln!(
            "agent {}: charon split {}x, reassembled {}x; {}",
            if agent_starts {
                "initiates"
            } else {
                "responds"
            },
            count(&log, "splitting IKE message"),
            count(&log, "reassembled fragmented IKE message"),
            log.lines()
                .filter(
                    |l| l.contains("splitting IKE message") || l.contains("reassembled fragmented")
                )
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

// ---- strongSwan 6.0.1 (Debian trixie), chrooted from the root `e2e/setup/peers.sh` builds ----

#[test]
fn strongswan6_rsa_dn_and_ecdsa_fqdn_both_directions() {
    let _serial = netns::serial();
    let six = || Some(strongswan::strongswan6_root());
    let up = agent_initiates_to(six(), KeyType::Rsa(2048), Ids::Dn, Maker::Pki);
    assert!(up.1.log().contains("strongSwan 6.0.1"), "{}", up.1.log());
    // the agent, charon, then the sites
    drop(up);
    charon_initiates_from(six(), KeyType::Rsa(2048), Ids::Dn, Maker::Pki);
    agent_initiates_to(six(), KeyType::Ecdsa(256), Ids::Fqdn, Maker::Pki);
    charon_initiates_from(six(), KeyType::Ecdsa(384), Ids::Fqdn, Maker::Pki);
}
