//! Prints the `IPsecTunnel` CRD as YAML; `crds/ipsectunnel.yaml` is this output, committed.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", strait_crds::crd_yaml()?);
    Ok(())
}
