//! `kubectl strait peer-config`: the remote site's half of a tunnel, for strongSwan
//! (`swanctl.conf`) or Libreswan (`ipsec.conf` + `ipsec.secrets`). Everything is mirrored from
//! the spec (their local is our remote), the proposals are the ones the agent offers (the
//! defaults spelled out when the spec names none), and no secret is ever printed: the PSK line
//! holds a placeholder and the command that fills it in.

use std::fmt::Write as _;

use strait_agent::spec::peer::{DEFAULT_DPD_INTERVAL, DEFAULT_ESP_LIFETIME, DEFAULT_IKE_LIFETIME};
use strait_agent::spec::peer::{esp_proposals, ike_proposals};
use strait_crds::{IPsecTunnel, Initiation};
use strait_ike::proposal::{EspProposal, Keyword as _};

/// The placeholder on the PSK line: the config loads, but authenticates with nothing the
/// cluster knows until it is replaced.
pub const PSK_PLACEHOLDER: &str = "PASTE-THE-0s-VALUE-HERE";

/// Which IKE daemon the remote site runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// strongSwan 5.9 / 6 with swanctl.
    Strongswan,
    /// Libreswan 4 / 5 with ipsec.conf.
    Libreswan,
}

/// Where the tunnel's Secrets are, for the command that prints the PSK.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Kubernetes Secrets in the operator's namespace.
    Namespace(String),
    /// A standalone agent's `--secrets-dir` (`DIR/<name>/<key>`).
    Dir(std::path::PathBuf),
}

/// What the remote site needs to know about the cluster beyond the spec.
#[derive(Debug, Clone)]
pub struct ClusterSide {
    /// Where the Secrets are.
    pub secrets: SecretSource,
    /// The addresses the cluster's gateways send IKE from: `spec.local.address`, else the
    /// active and standby gateways' reported endpoints and the eligible nodes' addresses.
    pub addresses: Vec<String>,
}

/// The config text, or why it cannot be made (a spec the agent itself would refuse).
///
/// # Errors
/// A proposal of the spec does not parse.
pub fn render(t: &IPsecTunnel, cluster: &ClusterSide, flavor: Flavor) -> Result<String, String> {
    let ike: Vec<String> = ike_proposals(&t.spec)
        .map_err(|e| e.to_string())?
        .iter()
        .map(ToString::to_string)
        .collect();
    let esp_parsed = esp_proposals(&t.spec).map_err(|e| e.to_string())?;
    let p = Plan {
        name: format!("strait-{}", t.metadata.name.as_deref().unwrap_or("tunnel")),
        tunnel: t.metadata.name.clone().unwrap_or_default(),
        t,
        cluster,
        ike,
        esp: esp_parsed.iter().map(ToString::to_string).collect(),
        esp_parsed,
    };
    Ok(match flavor {
        Flavor::Strongswan => p.swanctl(),
        Flavor::Libreswan => p.libreswan(),
    })
}

struct Plan<'a> {
    name: String,
    tunnel: String,
    t: &'a IPsecTunnel,
    cluster: &'a ClusterSide,
    ike: Vec<String>,
    esp: Vec<String>,
    esp_parsed: Vec<EspProposal>,
}

/// A swanctl.conf value, quoted when it holds anything but a plain word.
fn sw(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "@.:-_%/*".contains(c))
        && !v.is_empty()
    {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

impl Plan<'_> {
    fn secret_command(&self) -> Option<String> {
        let psk = self.t.spec.auth.psk.as_ref()?;
        let r = &psk.secret_ref;
        // the agent drops one trailing newline of the key; so does this pipeline
        let strip = "sed -z 's/\\r\\?\\n$//'";
        Some(match &self.cluster.secrets {
            SecretSource::Namespace(ns) => format!(
                "kubectl get secret -n {ns} {} -o jsonpath='{{.data.{}}}' | base64 -d | {strip} | base64 -w0",
                r.name,
                r.key.replace('.', "\\.")
            ),
            SecretSource::Dir(dir) => format!(
                "{strip} {} | base64 -w0",
                dir.join(&r.name).join(&r.key).display()
            ),
        })
    }

    fn cluster_addrs(&self) -> String {
        if self.cluster.addresses.is_empty() {
            "%any".to_owned()
        } else {
            self.cluster.addresses.join(", ")
        }
    }

    fn ike_lifetime(&self) -> u64 {
        self.t
            .spec
            .ike
            .as_ref()
            .and_then(|p| p.lifetime)
            .map_or(DEFAULT_IKE_LIFETIME.as_secs(), |d| d.as_secs())
    }

    fn esp_lifetime(&self) -> u64 {
        self.t
            .spec
            .esp
            .as_ref()
            .and_then(|p| p.lifetime)
            .map_or(DEFAULT_ESP_LIFETIME.as_secs(), |d| d.as_secs())
    }

    /// swanctl.conf lines for the lifetime fields the spec sets beyond `lifetime` (the rest
    /// are strongSwan's defaults, derived as the agent derives them): IKE `over_time` and
    /// `rand_time`; CHILD `life_time`, `rand_time` and the byte and packet limits.
    fn swanctl_lifetimes(&self, ike: bool) -> Vec<String> {
        let (p, rekey) = if ike {
            (self.t.spec.ike.as_ref(), self.ike_lifetime())
        } else {
            (self.t.spec.esp.as_ref(), self.esp_lifetime())
        };
        let Some(p) = p else { return Vec::new() };
        let mut out = Vec::new();
        if let Some(max) = p.max_lifetime {
            out.push(if ike {
                format!("over_time = {}s", max.as_secs().saturating_sub(rekey))
            } else {
                format!("life_time = {}s", max.as_secs())
            });
        }
        if let Some(r) = p.rand_time {
            out.push(format!("rand_time = {}s", r.as_secs()));
        }
        if let (true, Some(r)) = (ike, p.reauth_time) {
            out.push(format!("reauth_time = {}s", r.as_secs()));
        }
        for (key, v) in [
            ("rekey_bytes", p.rekey_bytes),
            ("life_bytes", p.life_bytes),
            ("rekey_packets", p.rekey_packets),
            ("life_packets", p.life_packets),
        ] {
            if let (false, Some(v)) = (ike, v) {
                out.push(format!("{key} = {v}"));
            }
        }
        out
    }

    fn dpd(&self) -> u64 {
        self.t
            .spec
            .dpd
            .as_ref()
            .and_then(|d| d.interval)
            .map_or(DEFAULT_DPD_INTERVAL.as_secs(), |d| d.as_secs())
    }

    fn encap(&self) -> bool {
        self.t
            .spec
            .nat_traversal
            .as_ref()
            .is_some_and(|n| n.force_encapsulation)
    }

    /// The remote side's start action: it initiates when we only respond, traps when we do.
    fn peer_start(&self) -> (&'static str, &'static str) {
        match self.t.spec.initiation {
            Initiation::Respond => ("start", "the cluster only responds, so this side initiates"),
            Initiation::OnTraffic => (
                "trap",
                "the cluster initiates on traffic; so does this side",
            ),
            Initiation::Start => ("none", "the cluster initiates and keeps the tunnel up"),
        }
    }

    fn header(&self, out: &mut String, file: &str) {
        let _ = writeln!(
            out,
            "# {file} for the remote side of IPsecTunnel {:?}, generated by `kubectl strait peer-config`.",
            self.tunnel
        );
        let _ = writeln!(
            out,
            "# Mirrors the tunnel's spec: this site's identity {}, the cluster's {}.",
            self.t.spec.remote.id, self.t.spec.local.id
        );
        if self.cluster.addresses.is_empty() {
            let _ = writeln!(
                out,
                "# No gateway address is known yet (no spec.local.address, no agent report): the cluster side is %any."
            );
        }
    }

    fn swanctl(&self) -> String {
        let s = &self.t.spec;
        let mut o = String::new();
        self.header(&mut o, "swanctl.conf");
        let _ = writeln!(
            o,
            "# Put it in /etc/swanctl/conf.d/{}.conf, fill in the secret below, then `swanctl --load-all`.",
            self.name
        );
        let pubkey = s.auth.certificate.is_some();
        let auth = if pubkey { "pubkey" } else { "psk" };
        let (start, why) = self.peer_start();
        let _ = writeln!(o, "connections {{");
        let _ = writeln!(o, "    {} {{", self.name);
        let _ = writeln!(o, "        version = 2");
        let _ = writeln!(
            o,
            "        # the cluster's gateway nodes (behind a NAT: the address this site sees)"
        );
        let _ = writeln!(o, "        remote_addrs = {}", self.cluster_addrs());
        if s.remote.address.parse::<std::net::IpAddr>().is_ok() {
            let _ = writeln!(
                o,
                "        # behind a NAT: this site's private address, or %any"
            );
            let _ = writeln!(o, "        local_addrs = {}", s.remote.address);
        } else {
            let _ = writeln!(o, "        # the cluster sends to {}", s.remote.address);
            let _ = writeln!(o, "        local_addrs = %any");
        }
        if let Some(port) = s.remote.port.filter(|p| *p != 500) {
            let _ = writeln!(
                o,
                "        # the cluster sends to this port: charon must listen on it (charon.port or port_nat_t in strongswan.conf)"
            );
            let _ = writeln!(o, "        local_port = {port}");
        }
        let _ = writeln!(o, "        proposals = {}", self.ike.join(", "));
        let _ = writeln!(o, "        rekey_time = {}s", self.ike_lifetime());
        for l in self.swanctl_lifetimes(true) {
            let _ = writeln!(o, "        {l}");
        }
        let _ = writeln!(o, "        dpd_delay = {}s", self.dpd());
        if self.encap() {
            let _ = writeln!(o, "        encap = yes");
        }
        let _ = writeln!(o, "        local {{");
        let _ = writeln!(o, "            auth = {auth}");
        if s.remote.id != "%any" {
            let _ = writeln!(o, "            id = {}", sw(&s.remote.id));
        }
        if pubkey {
            let _ = writeln!(
                o,
                "            # this site's certificate (in swanctl/x509/), issued by the CA the cluster trusts (spec.auth.ca)"
            );
            let _ = writeln!(o, "            certs = {}.crt", self.name);
        }
        let _ = writeln!(o, "        }}");
        let _ = writeln!(o, "        remote {{");
        let _ = writeln!(o, "            auth = {auth}");
        let _ = writeln!(o, "            id = {}", sw(&s.local.id));
        if pubkey {
            let _ = writeln!(
                o,
                "            # the CA that issued the cluster's certificate (the issuer of tls.crt in Secret {}), in swanctl/x509ca/",
                s.auth
                    .certificate
                    .as_ref()
                    .map_or("", |c| c.secret_ref.name.as_str())
            );
            let _ = writeln!(o, "            cacerts = {}-ca.crt", self.name);
        }
        let _ = writeln!(o, "        }}");
        let _ = writeln!(o, "        children {{");
        // childSas: perSubnetPair asks for a CHILD SA per pair: one child each here
        let children: Vec<(String, String, String)> = match s.child_sas {
            strait_crds::ChildSas::One => vec![(
                self.name.clone(),
                s.remote.subnets.join(", "),
                s.local.subnets.join(", "),
            )],
            strait_crds::ChildSas::PerSubnetPair => s
                .local
                .subnets
                .iter()
                .flat_map(|l| s.remote.subnets.iter().map(move |r| (r.clone(), l.clone())))
                .enumerate()
                .map(|(i, (site, cluster))| (format!("{}-{}", self.name, i + 1), site, cluster))
                .collect(),
        };
        for (child, site, cluster) in children {
            let _ = writeln!(o, "            {child} {{");
            let _ = writeln!(o, "                local_ts = {site}");
            let _ = writeln!(o, "                remote_ts = {cluster}");
            let _ = writeln!(o, "                esp_proposals = {}", self.esp.join(", "));
            let _ = writeln!(o, "                rekey_time = {}s", self.esp_lifetime());
            for l in self.swanctl_lifetimes(false) {
                let _ = writeln!(o, "                {l}");
            }
            let _ = writeln!(o, "                # {why}");
            let _ = writeln!(o, "                start_action = {start}");
            let restart = if start == "none" { "clear" } else { "restart" };
            let _ = writeln!(o, "                dpd_action = {restart}");
            let _ = writeln!(o, "                close_action = {restart}");
            let _ = writeln!(o, "            }}");
        }
        let _ = writeln!(o, "        }}");
        let _ = writeln!(o, "    }}");
        let _ = writeln!(o, "}}");
        if let Some(cmd) = self.secret_command() {
            let _ = writeln!(o, "secrets {{");
            let _ = writeln!(o, "    ike-{} {{", self.name);
            if s.remote.id != "%any" {
                let _ = writeln!(o, "        id-site = {}", sw(&s.remote.id));
            }
            let _ = writeln!(o, "        id-cluster = {}", sw(&s.local.id));
            let _ = writeln!(
                o,
                "        # The key is not printed. Replace the placeholder with 0s followed by the output of:"
            );
            let _ = writeln!(o, "        #   {cmd}");
            let _ = writeln!(o, "        secret = {PSK_PLACEHOLDER}");
            let _ = writeln!(o, "    }}");
            let _ = writeln!(o, "}}");
        }
        o
    }

    fn libreswan(&self) -> String {
        let s = &self.t.spec;
        let mut o = String::new();
        self.header(&mut o, "ipsec.conf");
        let _ = writeln!(
            o,
            "# Put it in /etc/ipsec.d/{}.conf (and the secret in /etc/ipsec.d/{}.secrets), then `ipsec auto --add {}`.",
            self.name, self.name, self.name
        );
        let (start, why) = self.peer_start();
        let auto = match start {
            "start" => "start",
            "trap" => "ondemand",
            _ => "add",
        };
        let several = s.local.subnets.len() > 1 || s.remote.subnets.len() > 1;
        if several && s.child_sas == strait_crds::ChildSas::One {
            // pluto makes a connection, so a CHILD SA, of each pair of leftsubnets= and
            // rightsubnets=; the agent's one CHILD SA with every subnet would be narrowed to
            // one pair
            let _ = writeln!(
                o,
                "# Several subnets: pluto negotiates a CHILD SA per subnet pair. Set the tunnel's spec.childSas: perSubnetPair to match."
            );
        }
        let _ = writeln!(o, "conn {}", self.name);
        // Libreswan 5 reads it as keyexchange=ikev2; 4 knows only this spelling
        let _ = writeln!(o, "    ikev2=yes");
        let _ = writeln!(o, "    left=%defaultroute");
        if let Some(port) = s.remote.port.filter(|p| *p != 500) {
            let _ = writeln!(o, "    # the cluster sends to this port");
            let _ = writeln!(o, "    leftikeport={port}");
        }
        if s.remote.id != "%any" {
            let _ = writeln!(o, "    leftid={}", ls_id(&s.remote.id));
        }
        let _ = writeln!(o, "    {}", ls_subnets("left", &s.remote.subnets));
        let _ = writeln!(
            o,
            "    # the cluster's gateway node (behind a NAT: the address this site sees)"
        );
        let right = self
            .cluster
            .addresses
            .first()
            .map_or("%any", String::as_str);
        let _ = writeln!(o, "    right={right}");
        let _ = writeln!(o, "    rightid={}", ls_id(&s.local.id));
        let _ = writeln!(o, "    {}", ls_subnets("right", &s.local.subnets));
        if s.auth.certificate.is_some() {
            // pluto does not choose the signature from the key: with an ECDSA key and its
            // default (or explicit) `authby=rsasig,ecdsa`, 5.2 tried an RSA signature and failed
            let _ = writeln!(
                o,
                "    # an ECDSA key on this site: add leftauth=ecdsa and rightauth= the cluster's key (rsasig or ecdsa): pluto signs RSA unless told, and wants both"
            );
            let _ = writeln!(
                o,
                "    # this site's certificate and key in pluto's NSS database under the nickname below, and the"
            );
            let _ = writeln!(
                o,
                "    # CA that issued it trusted (the cluster's certificate must come from the same CA: rightca=%same):"
            );
            let _ = writeln!(
                o,
                "    #   openssl pkcs12 -export -in site.crt -inkey site.key -name {} -out site.p12",
                self.name
            );
            let _ = writeln!(o, "    #   ipsec import site.p12");
            let _ = writeln!(
                o,
                "    #   certutil -A -d sql:/var/lib/ipsec/nss -n {}-ca -t CT,, -a -i ca.crt",
                self.name
            );
            let _ = writeln!(o, "    leftcert={}", self.name);
            let _ = writeln!(o, "    rightca=%same");
        } else {
            let _ = writeln!(o, "    authby=secret");
        }
        let _ = writeln!(
            o,
            "    # Libreswan's names for the proposals the agent offers"
        );
        let _ = writeln!(o, "    ike={}", ls_ike(&self.ike));
        let _ = writeln!(o, "    esp={}", ls_esp(&self.esp_parsed));
        if self.esp_parsed.iter().all(|p| p.ke.is_empty()) {
            // pluto would otherwise add a key exchange to its CHILD SA rekeys, which the
            // agent's ESP proposals do not accept
            let _ = writeln!(o, "    pfs=no");
        }
        let _ = writeln!(o, "    ikelifetime={}s", self.ike_lifetime());
        let _ = writeln!(o, "    salifetime={}s", self.esp_lifetime());
        let _ = writeln!(o, "    dpddelay={}s", self.dpd());
        if self.encap() {
            let _ = writeln!(o, "    encapsulation=yes");
        }
        let _ = writeln!(o, "    # {why}");
        let _ = writeln!(o, "    auto={auto}");
        if let Some(cmd) = self.secret_command() {
            let _ = writeln!(o);
            let _ = writeln!(o, "# ---- /etc/ipsec.d/{}.secrets ----", self.name);
            // pluto takes a quoted secret literally; `0s` (base64) is read only unquoted
            let _ = writeln!(
                o,
                "# The key is not printed. Replace the placeholder with 0s followed by the output of"
            );
            let _ = writeln!(
                o,
                "# this command, without quotes (pluto would take a quoted 0s... literally):"
            );
            let _ = writeln!(o, "#   {cmd}");
            let _ = writeln!(
                o,
                "{} {} : PSK {PSK_PLACEHOLDER}",
                ls_id(&s.remote.id),
                ls_id(&s.local.id)
            );
        }
        o
    }
}

/// One strongSwan proposal token in Libreswan's name (`aes256gcm16` is `aes_gcm256`,
/// `x25519` is `dh31`).
fn ls_token(t: &str) -> String {
    match t {
        "aes128gcm16" | "aes128gcm128" => "aes_gcm128".into(),
        "aes256gcm16" | "aes256gcm128" => "aes_gcm256".into(),
        "prfsha256" | "sha256" | "sha2_256" => "sha2_256".into(),
        "prfsha384" | "sha384" | "sha2_384" => "sha2_384".into(),
        "prfsha512" | "sha512" | "sha2_512" => "sha2_512".into(),
        "x25519" | "curve25519" => "dh31".into(),
        "ecp256" => "dh19".into(),
        "ecp384" => "dh20".into(),
        "ecp521" => "dh21".into(),
        other => other.to_owned(),
    }
}

/// IKE proposals in Libreswan's syntax (`aes256gcm16-prfsha384-x25519` is
/// `aes_gcm256-sha2_384-dh31`), separated by commas. pluto's IKE syntax has no separate
/// integrity: it follows from the PRF, so `aes256-sha256-prfsha256` names the hash once.
fn ls_ike(list: &[String]) -> String {
    list.iter()
        .map(|p| {
            let mut out: Vec<String> = p.split('-').map(ls_token).collect();
            out.dedup();
            out.join("-")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// ESP proposals in Libreswan's syntax, separated by commas. ESN choices are pluto's own; an
/// AEAD proposal with a key exchange names its (absent) integrity `null`, since pluto reads the
/// token after the cipher as integrity (`aes_gcm256-null-dh31`).
fn ls_esp(list: &[EspProposal]) -> String {
    list.iter()
        .map(|p| {
            let mut out: Vec<String> = p.encr.iter().map(|a| ls_token(a.keyword())).collect();
            if p.integ.is_empty() && !p.ke.is_empty() {
                out.push("null".into());
            }
            out.extend(p.integ.iter().map(|a| ls_token(a.keyword())));
            out.extend(p.ke.iter().map(|a| ls_token(a.keyword())));
            out.join("-")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A Libreswan identity: DNs in quotes; addresses, `%any`, `@fqdn` and `user@fqdn` as they
/// are; a bare host name gets its `@` (pluto would look it up in DNS and use the address).
fn ls_id(id: &str) -> String {
    if id.contains('=') {
        format!("\"{id}\"")
    } else if id.contains('@') || id.starts_with('%') || id.parse::<std::net::IpAddr>().is_ok() {
        id.to_owned()
    } else {
        format!("@{id}")
    }
}

fn ls_subnets(side: &str, nets: &[String]) -> String {
    match nets {
        [one] => format!("{side}subnet={one}"),
        many => format!("{side}subnets={{{}}}", many.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use strait_crds::IPsecTunnel;

    use super::{ClusterSide, Flavor, PSK_PLACEHOLDER, SecretSource, ls_id, render};

    fn tunnel(extra: &str) -> IPsecTunnel {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {{name: site-b}}
spec:
  local: {{id: "@cluster.example", subnets: [10.1.0.0/16, 10.3.0.0/24]}}
  remote: {{id: "C=CH, O=Site B, CN=gw", address: 192.0.2.7, subnets: [10.2.0.0/16]}}
  auth: {{psk: {{secretRef: {{name: site-b-psk, key: psk}}}}}}
{extra}"#
        ))
        .unwrap()
    }

    fn side() -> ClusterSide {
        ClusterSide {
            secrets: SecretSource::Namespace("strait-system".into()),
            addresses: vec!["198.51.100.1".into(), "198.51.100.2".into()],
        }
    }

    #[test]
    fn swanctl_mirrors_the_spec_and_prints_no_secret() {
        let t = tunnel(
            "  esp: {proposals: [aes128gcm16-modp3072], lifetime: 30m}\n  initiation: respond\n",
        );
        let c = render(&t, &side(), Flavor::Strongswan).unwrap();
        for want in [
            "remote_addrs = 198.51.100.1, 198.51.100.2\n",
            "local_addrs = 192.0.2.7\n",
            "            id = \"C=CH, O=Site B, CN=gw\"\n",
            "            id = @cluster.example\n",
            "local_ts = 10.2.0.0/16\n",
            "remote_ts = 10.1.0.0/16, 10.3.0.0/24\n",
            "esp_proposals = aes128gcm16-modp3072\n",
            "rekey_time = 1800s\n",
            // the agent's default IKE proposals, spelled out
            "proposals = aes256gcm16-prfsha384-x25519, ",
            "start_action = start\n",
            "dpd_action = restart\n",
            "auth = psk\n",
            &format!("secret = {PSK_PLACEHOLDER}\n"),
            "kubectl get secret -n strait-system site-b-psk -o jsonpath='{.data.psk}' | base64 -d",
        ] {
            assert!(c.contains(want), "missing {want:?} in:\n{c}");
        }
        assert!(!c.contains("encap"), "{c}");
    }

    #[test]
    fn swanctl_carries_the_lifetimes_the_spec_sets() {
        let t = tunnel(
            "  ike: {lifetime: 4h, maxLifetime: 5h, randTime: 10m}\n  esp: {lifetime: 1h, maxLifetime: 70m, rekeyBytes: 500000000, lifePackets: 9000000}\n",
        );
        let c = render(&t, &side(), Flavor::Strongswan).unwrap();
        for want in [
            "        rekey_time = 14400s\n        over_time = 3600s\n        rand_time = 600s\n",
            "                rekey_time = 3600s\n                life_time = 4200s\n                rekey_bytes = 500000000\n                life_packets = 9000000\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in:\n{c}");
        }
        // none of them when the spec sets only lifetime
        let c = render(&tunnel(""), &side(), Flavor::Strongswan).unwrap();
        assert!(!c.contains("over_time") && !c.contains("_bytes"), "{c}");
    }

    #[test]
    fn swanctl_for_certificates_and_a_cluster_that_initiates() {
        let t: IPsecTunnel = serde_yaml::from_str(
            r#"
apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {name: certs}
spec:
  local: {id: "CN=cluster", subnets: [10.1.0.0/16]}
  remote: {id: "%any", address: site.example, subnets: [10.2.0.0/16]}
  auth: {certificate: {secretRef: {name: tls}}, ca: {secretRef: {name: ca, key: ca.crt}}}
  natTraversal: {forceEncapsulation: true}
"#,
        )
        .unwrap();
        let c = render(
            &t,
            &ClusterSide {
                secrets: SecretSource::Namespace("n".into()),
                addresses: vec![],
            },
            Flavor::Strongswan,
        )
        .unwrap();
        for want in [
            "remote_addrs = %any\n",
            "local_addrs = %any\n",
            "auth = pubkey\n",
            "certs = strait-certs.crt\n",
            "cacerts = strait-certs-ca.crt\n",
            "id = \"CN=cluster\"\n",
            "encap = yes\n",
            "start_action = none\n",
            "dpd_action = clear\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in:\n{c}");
        }
        assert!(!c.contains("secrets {"), "{c}");
        // Libreswan: the NSS steps, no PSK file, and no authby (pluto's default takes RSA and
        // ECDSA certificates; an ECDSA site key needs leftauth=ecdsa, which the comment says)
        let l = render(
            &t,
            &ClusterSide {
                secrets: SecretSource::Namespace("n".into()),
                addresses: vec![],
            },
            Flavor::Libreswan,
        )
        .unwrap();
        for want in [
            "    leftcert=strait-certs\n",
            "    rightca=%same\n",
            "#   ipsec import site.p12\n",
            "leftauth=ecdsa",
            "    encapsulation=yes\n",
        ] {
            assert!(l.contains(want), "missing {want:?} in:\n{l}");
        }
        assert!(!l.contains("authby=") && !l.contains(": PSK"), "{l}");
    }

    #[test]
    fn libreswan_mirrors_the_spec() {
        let t = tunnel("  initiation: onTraffic\n");
        let c = render(&t, &side(), Flavor::Libreswan).unwrap();
        for want in [
            "conn strait-site-b\n",
            "    leftid=\"C=CH, O=Site B, CN=gw\"\n",
            "    leftsubnet=10.2.0.0/16\n",
            "    right=198.51.100.1\n",
            "    rightid=@cluster.example\n",
            "    rightsubnets={10.1.0.0/16 10.3.0.0/24}\n",
            "    authby=secret\n",
            "    auto=ondemand\n",
            "    ike=aes_gcm256-sha2_384-dh31,aes_gcm256-sha2_256-dh19,aes256-sha2_256-modp3072\n",
            // the default ESP proposals have no key exchange, so neither may pluto's rekeys
            "    esp=aes_gcm256,aes_gcm128,aes256-sha2_256\n    pfs=no\n",
            &format!(": PSK {PSK_PLACEHOLDER}\n"),
        ] {
            assert!(c.contains(want), "missing {want:?} in:\n{c}");
        }
        // an AEAD ESP proposal with a key exchange: `null` integrity in between, PFS on
        let t = tunnel("  esp: {proposals: [aes256gcm16-x25519, aes256-sha256-ecp256]}\n");
        let c = render(&t, &side(), Flavor::Libreswan).unwrap();
        assert!(
            c.contains("    esp=aes_gcm256-null-dh31,aes256-sha2_256-dh19\n"),
            "{c}"
        );
        assert!(!c.contains("pfs="), "{c}");
    }

    #[test]
    fn per_subnet_pair_gives_a_swanctl_child_per_pair() {
        let mut t = tunnel("");
        t.spec.child_sas = strait_crds::ChildSas::PerSubnetPair;
        let c = render(&t, &side(), Flavor::Strongswan).unwrap();
        for want in [
            "            strait-site-b-1 {\n                local_ts = 10.2.0.0/16\n                remote_ts = 10.1.0.0/16\n",
            "            strait-site-b-2 {\n                local_ts = 10.2.0.0/16\n                remote_ts = 10.3.0.0/24\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in:\n{c}");
        }
        assert!(!c.contains("            strait-site-b {"), "{c}");
        // pluto makes a CHILD SA per pair of leftsubnets= anyway: only `one` gets the hint
        let l = render(&t, &side(), Flavor::Libreswan).unwrap();
        assert!(l.contains("rightsubnets={10.1.0.0/16 10.3.0.0/24}"), "{l}");
        assert!(!l.contains("childSas"), "{l}");
        t.spec.child_sas = strait_crds::ChildSas::One;
        let l = render(&t, &side(), Flavor::Libreswan).unwrap();
        assert!(l.contains("spec.childSas: perSubnetPair"), "{l}");
    }

    #[test]
    fn a_set_remote_port_is_where_the_remote_site_listens() {
        let mut t = tunnel("");
        t.spec.remote.port = Some(4501);
        let c = render(&t, &side(), Flavor::Strongswan).unwrap();
        assert!(c.contains("        local_port = 4501\n"), "{c}");
        let c = render(&t, &side(), Flavor::Libreswan).unwrap();
        assert!(c.contains("    leftikeport=4501\n"), "{c}");
        t.spec.remote.port = None;
        let c = render(&t, &side(), Flavor::Strongswan).unwrap();
        assert!(!c.contains("local_port"), "{c}");
        let probe = crate::facts::probe_command(&t);
        assert!(!probe.contains(&"--ike-port".to_owned()));
        t.spec.remote.port = Some(4501);
        let probe = crate::facts::probe_command(&t);
        assert!(
            probe.windows(2).any(|w| w == ["--ike-port", "4501"]),
            "{probe:?}"
        );
    }

    #[test]
    fn libreswan_identities() {
        // a bare host name is an FQDN identity, as strongSwan reads it; pluto needs the `@`
        assert_eq!(ls_id("gw.example"), "@gw.example");
        assert_eq!(ls_id("@gw.example"), "@gw.example");
        assert_eq!(ls_id("ops@example.com"), "ops@example.com");
        assert_eq!(ls_id("192.0.2.7"), "192.0.2.7");
        assert_eq!(ls_id("2001:db8::7"), "2001:db8::7");
        assert_eq!(ls_id("%any"), "%any");
        assert_eq!(ls_id("CN=gw, O=Site"), "\"CN=gw, O=Site\"");
    }

    #[test]
    fn secrets_of_a_standalone_agent() {
        let t = tunnel("");
        let c = render(
            &t,
            &ClusterSide {
                secrets: SecretSource::Dir("/etc/strait/secrets".into()),
                addresses: vec![],
            },
            Flavor::Libreswan,
        )
        .unwrap();
        assert!(
            c.contains(
                "#   sed -z 's/\\r\\?\\n$//' /etc/strait/secrets/site-b-psk/psk | base64 -w0\n"
            ),
            "{c}"
        );
        assert!(c.contains("    right=%any\n"), "{c}");
    }

    #[test]
    fn a_spec_the_agent_refuses_is_refused_here() {
        let t = tunnel("  ike: {proposals: [aes256-bogus-x25519]}\n");
        let e = render(&t, &side(), Flavor::Strongswan).unwrap_err();
        assert!(
            e.contains("spec.ike.proposals[0]") && e.contains("bogus"),
            "{e}"
        );
    }
}
