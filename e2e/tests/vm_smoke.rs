//! Smoke test of the kernel data-plane VM: inside the Debian kernel, a hand-made ESP tunnel-mode
//! SA pair (`ip xfrm`, rfc4106(gcm(aes))) between two namespaces carries a ping, and the
//! `ip -s xfrm state` counters are non-zero (guest side: `e2e/vm/smoke-esp.sh`).
//!
//! In the same boot, this binary runs its own `guest_charon_pair_kernel_esp` inside the VM: two
//! charons with plain `kernel-netlink` (kernel ESP, as in production) bring up a tunnel there.
//!
//! Needs root, `e2e/setup/packages.sh` and `e2e/setup/vm.sh`; takes 60-90 s (qemu TCG boot).
//! Run alone: `cargo test -p strait-e2e --test vm_smoke`

// test helpers outside #[test] fns: failing loudly is their job
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::scenario::charon_for;
use strait_e2e::strongswan::{Charon, CharonConfig, Plugins};
use strait_e2e::vm;

/// One boot (they cost a minute under TCG) checks the hand-made SAs, charon with kernel ESP, and
/// that the guest's exit status comes back: both parts pass, then the wrapper exits 42.
#[test]
fn esp_tunnel_sa_carries_ping_in_vm() {
    let script = vm::guest_script("smoke-esp.sh");
    let script = script.to_str().expect("utf-8 path");
    // The guest cannot see a target dir under /tmp or /var/cache (CI's): run a staged copy.
    let staged = vm::Staged::copy(&std::env::current_exe().expect("test binary path")).unwrap();
    let me = staged.path().to_str().expect("utf-8 path");
    let opts = vm::Options {
        rwdirs: vec![staged.dir().to_owned()],
        ..vm::Options::default()
    };
    let out = vm::run_with(
        &opts,
        &[
        "sh",
        "-c",
        "\"$0\" && \"$1\" --ignored --exact guest_charon_pair_kernel_esp --nocapture && exit 42",
        script,
        me,
    ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", out.output);
    assert!(
        out.output.contains("SMOKE-ESP PASS"),
        "guest smoke-esp.sh failed ({}) after {:?}; output above",
        out.status,
        out.elapsed
    );
    assert!(
        out.output.contains("GUEST-CHARON PASS"),
        "charon pair with kernel ESP failed in the guest ({}); output above",
        out.status
    );
    assert_eq!(
        out.status.code(),
        Some(42),
        "the guest command's exit status did not come back"
    );
    eprintln!("vm smoke: {:?} for boot + test", out.elapsed);
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

/// Runs inside the VM only (started by `esp_tunnel_sa_carries_ping_in_vm`): the host kernel has
/// no ESP, so there this cannot work.
#[test]
#[ignore = "runs inside the kernel VM, started by esp_tunnel_sa_carries_ping_in_vm"]
fn guest_charon_pair_kernel_esp() {
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
    println!("GUEST-CHARON PASS");
}
