//! Smoke test of the strongSwan harness: two charons (userspace ESP, kernel-libipsec) in two
//! network namespaces bring up an IKE SA and a CHILD SA with a PSK and carry a ping — directly,
//! and across a NAT router namespace doing nftables masquerade.
//!
//! Needs root and `e2e/setup/packages.sh`. Run alone:
//! `cargo test -p strait-e2e --test strongswan_smoke -- --test-threads=1`

// test helpers outside #[test] fns: failing loudly is their job
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use strait_e2e::netns::{self, SitePair};
// libipsec only does ESP-in-UDP (charon_for asks for it); it fakes NAT-D anyway
use strait_e2e::scenario::charon_for;
use strait_e2e::strongswan::{Charon, Endpoint, KeyType, ListSas, TestPki};

const PSK: &str = "0sv+NkxY9LLZvwj4qCC2o/gGrWDF2d21jL";

fn assert_up(side: &str, sas: &ListSas) {
    let ike = sas
        .ike("gw")
        .unwrap_or_else(|| panic!("{side}: no IKE SA 'gw' in list-sas:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "{side}: {}", sas.raw);
    assert!(
        ike.proposal
            .as_deref()
            .is_some_and(|p| p.contains("AES_GCM_16-256")),
        "{side}: {}",
        sas.raw
    );
    let child = ike
        .children
        .iter()
        .find(|c| c.name == "net")
        .unwrap_or_else(|| panic!("{side}: no CHILD SA 'net':\n{}", sas.raw));
    assert_eq!(child.state, "INSTALLED", "{side}: {}", sas.raw);
    assert!(
        child
            .proposal
            .as_deref()
            .is_some_and(|p| p.starts_with("ESP:AES_GCM_16-256")),
        "{side}: {}",
        sas.raw
    );
}

fn pair_up_and_ping(nat: bool) {
    let _serial = netns::serial();
    let t0 = Instant::now();
    let pair = SitePair::new(nat).expect("topology");
    // the responder accepts the initiator from wherever it appears (the NAT's outside address)
    let right = Charon::start(
        &pair.right.ns,
        &charon_for(&pair.right, &pair.left, PSK, None),
    )
    .expect("start right charon");
    let left = Charon::start(
        &pair.left.ns,
        &charon_for(
            &pair.left,
            &pair.right,
            PSK,
            Some(pair.right.addr.to_string()),
        ),
    )
    .expect("start left charon");
    let started = t0.elapsed();

    left.initiate("gw", "net", 20)
        .unwrap_or_else(|e| panic!("initiate failed: {e:#}\n--- right's log:\n{}", right.log()));
    let up = t0.elapsed();
    let left_sas = left.list_sas().expect("left list-sas");
    let right_sas = right
        .wait_up("gw", "net", Duration::from_secs(10))
        .expect("right up");
    assert_up("left", &left_sas);
    assert_up("right", &right_sas);

    if nat {
        // right must see left as the NAT router's outside address, at port 4500
        let remote = right_sas
            .ike("gw")
            .and_then(|sa| sa.remote.clone())
            .unwrap_or_default();
        assert!(
            remote.contains(&format!("{}[4500]", pair.left.public_addr)),
            "right sees the peer as {remote:?}, expected {}[4500]",
            pair.left.public_addr
        );
    }

    let ping = pair
        .topology
        .ping("left", Some(pair.left.inner), pair.right.inner, 3)
        .unwrap_or_else(|e| {
            panic!(
                "ping through the tunnel failed: {e:#}\n--- left list-sas:\n{}",
                left.list_sas().map(|s| s.raw).unwrap_or_default()
            )
        });
    eprintln!("{}", ping.stdout.trim_end());

    // the packets went through the CHILD SA, not around it
    let after = left.list_sas().expect("left list-sas");
    let child = &after.ike("gw").expect("ike").children[0];
    assert!(
        child.packets_out >= 1 && child.packets_in >= 1,
        "counters: {}",
        after.raw
    );

    left.terminate("gw", 10).expect("terminate");
    eprintln!(
        "strongswan pair (nat={nat}): charons started in {started:?}, SAs up at {up:?}, total {:?}",
        t0.elapsed()
    );
}

#[test]
fn psk_pair_establishes_and_carries_ping() {
    pair_up_and_ping(false);
}

#[test]
fn psk_pair_across_nat_router() {
    pair_up_and_ping(true);
}

/// Certificates from the `pki` helper: left ECDSA P-256, right RSA 2048, CA RSA 2048.
#[test]
fn pubkey_pair_with_test_certificates() {
    let _serial = netns::serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), KeyType::Rsa(2048)).expect("CA");
    let pair = SitePair::new(false).expect("topology");
    let certs = [
        pki.issue("left", pair.left.id, KeyType::Ecdsa(256))
            .expect("left cert"),
        pki.issue("right", pair.right.id, KeyType::Rsa(2048))
            .expect("right cert"),
    ];
    let mut charons = Vec::new();
    for (me, peer, cert, remote) in [
        (&pair.right, &pair.left, &certs[1], None),
        (
            &pair.left,
            &pair.right,
            &certs[0],
            Some(pair.right.addr.to_string()),
        ),
    ] {
        let mut cfg = charon_for(me, peer, PSK, remote);
        cfg.secrets.clear();
        cfg.add_cert_auth(&pki, cert, me.node);
        let conn = &mut cfg.connections[0];
        conn.local = Endpoint::pubkey(me.id, Some(&format!("{}.crt", me.node)));
        conn.remote = Endpoint::pubkey(peer.id, None);
        charons.push(Charon::start(&me.ns, &cfg).expect("start charon"));
    }
    let (right, left) = (&charons[0], &charons[1]);
    left.initiate("gw", "net", 20)
        .unwrap_or_else(|e| panic!("initiate failed: {e:#}\n--- right's log:\n{}", right.log()));
    assert_up("left", &left.list_sas().unwrap());
    assert_up(
        "right",
        &right.wait_up("gw", "net", Duration::from_secs(10)).unwrap(),
    );
    pair.topology
        .ping("left", Some(pair.left.inner), pair.right.inner, 2)
        .expect("ping through the tunnel");
}

#[test]
fn nothing_left_behind() {
    let _serial = netns::serial();
    // only this process's namespaces: other test runs may come and go meanwhile
    let mine = format!("{}{}-", netns::PREFIX, std::process::id());
    let ours = || -> Vec<String> {
        netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&mine))
            .collect()
    };
    let before = ours();
    let pid;
    {
        let pair = SitePair::new(true).expect("topology");
        let charon = Charon::start(
            &pair.right.ns,
            &charon_for(&pair.right, &pair.left, PSK, None),
        )
        .expect("start charon");
        pid = charon.pid().expect("charon runs");
        let id = pair.topology.id().to_owned();
        assert!(netns::list().iter().any(|n| n.starts_with(&id)));
    }
    let after = ours();
    let leaked: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "charon {pid} still runs"
    );
}
