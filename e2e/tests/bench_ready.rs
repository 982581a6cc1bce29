//! Keeps `bench-ready` working: runs it in `--short` mode (5 sequential tunnels, 20 at once, 2
//! failovers) against the real control plane and checks only that it completed and printed its
//! tables. Never a number: benchmarks do not fail on figures.
//!
//! Run: `cargo test -p strait-e2e --test bench_ready -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn bench_ready_short_completes() {
    // the benchmark takes the namespace lock itself; this binary holds no other test
    strait_e2e::cmd::require_root().expect("root");
    let out = Command::new(env!("CARGO_BIN_EXE_bench-ready"))
        .arg("--short")
        .output()
        .expect("running bench-ready");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "bench-ready --short failed ({}):\n{stderr}",
        out.status
    );
    for heading in [
        "### Failover",
        "### Time to Ready (5 tunnels",
        "### 20 tunnels applied at once",
        "API write requests",
        "Resident memory",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} in the output:\n{stdout}\n{stderr}"
        );
    }
    // every sequential tunnel and both failovers reached Ready (the progress lines on stderr)
    assert_eq!(stderr.matches(": Ready after ").count(), 5, "{stderr}");
    assert_eq!(stderr.matches("  failover ").count(), 2, "{stderr}");
    assert!(stdout.contains("| 20 | "), "{stdout}");
    assert!(
        stdout.contains("| 20/20 |"),
        "all 20 still Ready:\n{stdout}"
    );
}
