//! `strait-agent check` refuses what the agent itself would refuse, naming the field, and
//! accepts what it would run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const GOOD: &str = "
  local: {id: a.example, address: 127.0.0.1, subnets: [198.51.100.0/24]}
  remote: {id: b.example, address: 127.0.0.1, subnets: [203.0.113.0/24]}
  auth: {psk: {secretRef: {name: psk, key: psk}}}
  ike: {proposals: [aes256gcm16-prfsha384-x25519]}
  esp: {proposals: [aes256gcm16]}
";

/// Runs `check` on one tunnel whose spec is GOOD with `from` replaced by `to`.
fn check(from: &str, to: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("s/psk")).unwrap();
    std::fs::write(dir.path().join("s/psk/psk"), "a-pre-shared-key-for-tests").unwrap();
    let spec = GOOD.replace(from, to);
    assert!(from.is_empty() || spec != GOOD, "{from} is not in the spec");
    let doc = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata: {{name: t1}}\nspec:{spec}"
    );
    std::fs::write(dir.path().join("t.yaml"), doc).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strait-agent"))
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("t.yaml"))
        .arg("--secrets-dir")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_good_tunnel_passes() {
    let (ok, text) = check("", "");
    assert!(ok, "{text}");
    assert!(
        text.contains("1 tunnel(s), config and secrets OK"),
        "{text}"
    );
}

#[test]
fn what_the_agent_refuses_check_refuses_naming_the_field() {
    let cases = [
        // (replace, with, the field and words the error must name)
        ("-x25519]", "-bogus123]", "spec.ike.proposals[0]"),
        ("[aes256gcm16]", "[3des-md5]", "spec.esp.proposals[0]"),
        (
            "[aes256gcm16]",
            "[aes256gcm16-nosuchgroup]",
            "spec.esp.proposals[0]",
        ),
        ("id: b.example", "id: \"C=CH, =broken\"", "spec.remote.id"),
        ("key: psk}", "key: missing}", "psk/missing"),
    ];
    for (from, to, field) in cases {
        let (ok, text) = check(from, to);
        assert!(!ok, "{to}: accepted\n{text}");
        assert!(
            text.contains(field),
            "{to}: the error does not name {field}:\n{text}"
        );
        assert!(
            !text.contains("a-pre-shared-key-for-tests"),
            "the PSK leaked: {text}"
        );
    }
}
