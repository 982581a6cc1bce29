//! The committed CRD YAML must be exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ipsectunnel.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/ipsectunnel.yaml is missing");
    let generated = strait_crds::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/ipsectunnel.yaml is stale: run `cargo run -p strait-crds --bin crdgen > crds/ipsectunnel.yaml`"
    );
}
