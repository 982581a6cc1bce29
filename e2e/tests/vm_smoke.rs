//! Smoke test of the kernel data-plane VM: inside the Debian kernel, a hand-made ESP tunnel-mode
//! SA pair (`ip xfrm`, rfc4106(gcm(aes))) between two namespaces carries a ping, and the
//! `ip -s xfrm state` counters are non-zero (guest side: `e2e/vm/smoke-esp.sh`).
//!
//! Needs root, `e2e/setup/packages.sh` and `e2e/setup/vm.sh`; takes 30-90 s (qemu TCG boot).
//! Run alone: `cargo test -p strait-e2e --test vm_smoke`

// test helpers outside #[test] fns: failing loudly is their job
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use strait_e2e::vm;

/// One boot (they cost a minute under TCG) checks both the data plane and that the guest's
/// exit status comes back: the script passes, then the wrapper exits 42.
#[test]
fn esp_tunnel_sa_carries_ping_in_vm() {
    let script = vm::guest_script("smoke-esp.sh");
    let script = script.to_str().expect("utf-8 path");
    let out =
        vm::run(&["sh", "-c", "\"$0\" && exit 42", script]).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", out.output);
    assert!(
        out.output.contains("SMOKE-ESP PASS"),
        "guest smoke-esp.sh failed ({}) after {:?}; output above",
        out.status,
        out.elapsed
    );
    assert_eq!(
        out.status.code(),
        Some(42),
        "the guest command's exit status did not come back"
    );
    eprintln!("vm smoke: {:?} for boot + test", out.elapsed);
}
