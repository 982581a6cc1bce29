//! Keeps `bench-ike-rate` working: its `--short` run (200 SAs, X25519, against strait-agent and
//! charon) must establish every SA on both responders and print the table. No figure is
//! checked: this is not a timed test.
//!
//! Needs root, strongSwan (e2e/setup/packages.sh) and a built strait-agent (`STRAIT_AGENT_BIN`
//! or target/debug/strait-agent).

use std::process::Command;

use strait_e2e::netns;

#[test]
fn short_run_establishes_every_sa_on_both_responders() {
    let _serial = netns::serial();
    let out = Command::new(env!("CARGO_BIN_EXE_bench-ike-rate"))
        .arg("--short")
        .output()
        .expect("run bench-ike-rate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-ike-rate --short failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| responder | proposal | SAs |"),
        "no table:\n{stdout}"
    );
    for responder in ["strait-agent", "charon"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {responder} |")))
            .unwrap_or_else(|| panic!("no row for {responder}:\n{stdout}"));
        // the SAs column shows "200" only when all 200 were established ("N of 200" otherwise)
        let sas = row.split('|').nth(3).map(str::trim);
        assert_eq!(sas, Some("200"), "{responder}: {row}");
    }
    assert!(
        stdout.contains("all SAs established on both sides: yes"),
        "{stdout}\n{stderr}"
    );
}
