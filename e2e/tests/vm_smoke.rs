//! Smoke test of the kernel data-plane VM, run inside the Debian kernel by `e2e/vm/tier.sh` (in
//! the tier's one boot): a hand-made ESP tunnel-mode SA pair (`ip xfrm`, rfc4106(gcm(aes)))
//! between two namespaces carries a ping with non-zero `ip -s xfrm state` counters
//! (`e2e/vm/smoke-esp.sh`), and two charons with plain `kernel-netlink` (kernel ESP, as in
//! production) bring up a tunnel. The tier itself checks that the guest's exit status comes back.
//!
//! The host kernel has no ESP, so these run only in the VM:
//! `STRAIT_VM_SUITES=vm_smoke e2e/vm/tier.sh`

// test helpers outside #[test] fns: failing loudly is their job
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::Duration;

use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::scenario::charon_for;
use strait_e2e::strongswan::{Charon, CharonConfig, Plugins};
use strait_e2e::vm;

#[test]
fn hand_made_esp_sa_pair_carries_a_ping() {
    let _serial = netns::serial();
    let out = Command::new("bash")
        .arg(vm::guest_script("smoke-esp.sh"))
        .output()
        .expect("run smoke-esp.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("SMOKE-ESP PASS"),
        "smoke-esp.sh failed ({}); output above",
        out.status
    );
}

/// charon with the kernel's ESP: no UDP encapsulation.
fn config(me: &Site, peer: &Site, remote_addr: Option<String>) -> CharonConfig {
    let mut cfg = CharonConfig {
        plugins: Plugins::KernelNetlink,
        ..charon_for(me, peer, "0sv+NkxY9LLZvwj4qCC2o/gGrWDF2d21jL", remote_addr)
    };
    cfg.connections[0].encap = false;
    cfg
}

#[test]
fn charon_pair_with_kernel_esp() {
    let _serial = netns::serial();
    let t0 = std::time::Instant::now();
    let pair = SitePair::new(false).expect("topology");
    eprintln!("guest: topology at {:?}", t0.elapsed());
    let right = Charon::start(&pair.right.ns, &config(&pair.right, &pair.left, None))
        .expect("start right charon");
    eprintln!("guest: right charon at {:?}", t0.elapsed());
    let left = Charon::start(
        &pair.left.ns,
        &config(&pair.left, &pair.right, Some(pair.right.addr.to_string())),
    )
    .expect("start left charon");
    eprintln!("guest: left charon at {:?}", t0.elapsed());
    left.initiate("gw", "net", 30)
        .unwrap_or_else(|e| panic!("initiate: {e:#}\n--- right's log:\n{}", right.log()));
    eprintln!("guest: initiated at {:?}", t0.elapsed());
    let sas = left.wait_up("gw", "net", Duration::from_secs(10)).unwrap();
    right.wait_up("gw", "net", Duration::from_secs(10)).unwrap();
    let child = &sas.ike("gw").unwrap().children[0];
    // kernel ESP without NAT: plain ESP, no UDP encapsulation
    assert_eq!(child.mode.as_deref(), Some("TUNNEL"), "{}", sas.raw);
    pair.topology
        .ping("left", Some(pair.left.inner), pair.right.inner, 3)
        .expect("ping through the kernel SA");
    let xfrm = pair
        .topology
        .exec("left", &["ip", "-s", "xfrm", "state"])
        .unwrap()
        .stdout;
    assert!(xfrm.contains("proto esp"), "{xfrm}");
    assert!(!xfrm.contains("encap"), "{xfrm}");
    assert!(
        !xfrm.contains("\t  0(bytes), 0(packets)"),
        "zero counters:\n{xfrm}"
    );
    println!("{}", sas.raw);
    eprintln!("guest: checked at {:?}", t0.elapsed());
}
