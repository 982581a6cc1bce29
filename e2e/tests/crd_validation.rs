//! The API server itself refuses bad IPsecTunnels with readable messages: the CRD's schema and
//! CEL rules (generated from `crds/src/tunnel.rs`) run in a real kube-apiserver.
//!
//! Run alone: `cargo test -p strait-e2e --test crd_validation`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use strait_e2e::controlplane::ControlPlane;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/ipsectunnel.yaml");
const EXAMPLE: &str = include_str!("../../deploy/examples/psk-tunnel.yaml");
const CERT_EXAMPLE: &str = include_str!("../../deploy/examples/cert-tunnel.yaml");

fn apply(cp: &ControlPlane, yaml: &str) -> Result<(), String> {
    let out = cp
        .kubectl_output(["apply", "--dry-run=server", "-f", "-"], Some(yaml))
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_api_server_refuses_bad_tunnels_with_readable_messages() {
    let cp = ControlPlane::start().unwrap();
    cp.kubectl(["apply", "--server-side", "-f", CRD]).unwrap();
    strait_e2e::product::wait_crd(&cp, 30).unwrap();

    // The shipped examples and a few valid variations are accepted.
    for ok in [
        EXAMPLE.to_owned(),
        CERT_EXAMPLE.to_owned(),
        EXAMPLE.replace("address: 192.0.2.2", "address: gw.dc2.example.com"),
        EXAMPLE.replace(
            "address: 192.0.2.2",
            "address: 192.0.2.2\n    fallbackAddresses: [192.0.2.3, gw2.dc2.example.com]\n    port: 4500",
        ),
        EXAMPLE.replace("203.0.113.0/24", "2001:db8:1::/48"),
        EXAMPLE.replace(
            "initiation: start",
            "initiation: start\n  childSas: perSubnetPair",
        ),
        EXAMPLE.replace("aes256gcm16-prfsha384-x25519", "AES256-SHA256-MODP3072"),
        EXAMPLE.replace(
            "initiation: start",
            "initiation: start\n  dataPlane: {mode: routeBased, routeMetric: 200}",
        ),
    ] {
        apply(&cp, &ok).unwrap_or_else(|e| panic!("a valid tunnel was refused: {e}\n{ok}"));
    }

    let cases = [
        (
            "weak IKE proposal",
            EXAMPLE.replace("aes256gcm16-prfsha384-x25519", "aes256-sha1-modp1024"),
            "refused as weak",
        ),
        (
            "unknown ESP algorithm",
            EXAMPLE.replace("aes256gcm16-x25519", "aes256gcm16-blowfish"),
            "unknown or weak algorithm",
        ),
        (
            "host bits in a subnet",
            EXAMPLE.replace("203.0.113.0/24", "203.0.113.1/24"),
            "no host bits set",
        ),
        (
            "not a CIDR",
            EXAMPLE.replace("198.51.100.0/24", "nonsense"),
            "CIDR notation",
        ),
        (
            "remote address neither IP nor DNS name",
            EXAMPLE.replace("address: 192.0.2.2", "address: 'not an address!'"),
            "IP address or a DNS name",
        ),
        (
            "a fallback address neither IP nor DNS name",
            EXAMPLE.replace(
                "address: 192.0.2.2",
                "address: 192.0.2.2\n    fallbackAddresses: [192.0.2.3, 'not an address!']",
            ),
            "remote.fallbackAddresses must be IP addresses or DNS names",
        ),
        (
            "a port beyond 65535",
            EXAMPLE.replace("address: 192.0.2.2", "address: 192.0.2.2\n    port: 70000"),
            "spec.remote.port",
        ),
        (
            "two auth methods",
            EXAMPLE.replace(
                "    psk:\n",
                "    certificate: {secretRef: {name: tls}}\n    ca: {secretRef: {name: ca, key: ca.crt}}\n    psk:\n",
            ),
            "exactly one of auth.psk or auth.certificate",
        ),
        (
            "bad duration",
            EXAMPLE.replace("lifetime: 1h", "lifetime: soon"),
            "spec.esp.lifetime",
        ),
        (
            "missing remote",
            EXAMPLE.replace(
                "  remote:\n    id: dc2.example.com\n    address: 192.0.2.2\n    subnets: [203.0.113.0/24]\n",
                "",
            ),
            "spec.remote: Required value",
        ),
        (
            "unknown childSas",
            EXAMPLE.replace("initiation: start", "initiation: start\n  childSas: many"),
            "spec.childSas",
        ),
        (
            "unknown initiation",
            EXAMPLE.replace("initiation: start", "initiation: sometimes"),
            "spec.initiation",
        ),
        (
            "route-based and onTraffic",
            EXAMPLE.replace(
                "initiation: start",
                "initiation: onTraffic\n  dataPlane: {mode: routeBased}",
            ),
            "needs dataPlane.mode policyBased",
        ),
        (
            "a route metric for a policy-based tunnel",
            EXAMPLE.replace(
                "initiation: start",
                "initiation: start\n  dataPlane: {routeMetric: 5}",
            ),
            "dataPlane.routeMetric needs dataPlane.mode routeBased",
        ),
    ];
    let mut failures = Vec::new();
    for (what, yaml, want) in &cases {
        match apply(&cp, yaml) {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if !msg.contains(want) => {
                failures.push(format!("{what}: message lacks {want:?}: {msg}"));
            }
            Err(msg) => eprintln!("{what}: refused: {}", msg.trim()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
