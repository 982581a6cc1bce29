//! Checks that need no API server: what CEL cannot express or what standalone mode must check
//! itself because no API server stands in front of its config file.

use std::net::IpAddr;

use crate::{DpdSpec, IPsecTunnelSpec};

/// One problem with a spec, named by its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON path of the field, e.g. `spec.remote.subnets[0]`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// An IPv4 or IPv6 prefix in CIDR notation, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits are zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (e.g. 10.0.0.0/24)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix length {p:?} is not between 0 and {max}"))?;
        let host_bits = match addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) & low_bits(32 - u32::from(prefix)),
            IpAddr::V6(v6) => u128::from(v6) & low_bits(128 - u32::from(prefix)),
        };
        if host_bits != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Self { addr, prefix })
    }
}

fn low_bits(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `s` is a plausible DNS name (RFC 1123 labels).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The rekey times the API documents when `lifetime` is unset (IKE 24h, ESP 1h).
fn default_lifetime(name: &str) -> u64 {
    if name == "ike" { 24 * 3600 } else { 3600 }
}

/// The lifetime fields of one ProposalSpec agree with each other, as strongSwan wants them:
/// the hard limit after the rekey, the jitter shorter than the rekey time.
fn lifetime_rules(name: &str, p: &crate::ProposalSpec, err: &mut impl FnMut(String, String)) {
    let rekey = p.lifetime.map_or(default_lifetime(name), |l| l.as_secs());
    if let Some(max) = p.max_lifetime
        && max.as_secs() <= rekey
    {
        err(
            format!("spec.{name}.maxLifetime"),
            format!("{max} must be longer than the lifetime ({rekey}s)"),
        );
    }
    if let Some(r) = p.rand_time
        && r.as_secs() >= rekey
    {
        err(
            format!("spec.{name}.randTime"),
            format!("{r} must be shorter than the lifetime ({rekey}s)"),
        );
    }
    for (field, soft, hard) in [
        ("lifeBytes", p.rekey_bytes, p.life_bytes),
        ("lifePackets", p.rekey_packets, p.life_packets),
    ] {
        if let (Some(s), Some(h)) = (soft, hard)
            && h <= s
        {
            err(
                format!("spec.{name}.{field}"),
                format!("{h} must be more than the rekey limit ({s})"),
            );
        }
    }
}

/// Every problem in `spec` that can be seen without the network or secrets. Proposal strings
/// are checked by the IKE crate, which owns their grammar.
pub fn validate(spec: &IPsecTunnelSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });

    for (side, subnets) in [
        ("local", &spec.local.subnets),
        ("remote", &spec.remote.subnets),
    ] {
        if subnets.is_empty() {
            err(
                format!("spec.{side}.subnets"),
                "at least one subnet is required".into(),
            );
        }
        for (i, s) in subnets.iter().enumerate() {
            if let Err(m) = s.parse::<Cidr>() {
                err(format!("spec.{side}.subnets[{i}]"), m);
            }
        }
    }
    if let Some(a) = &spec.local.address
        && a.parse::<IpAddr>().is_err()
    {
        err(
            "spec.local.address".into(),
            format!("{a:?} is not an IP address"),
        );
    }
    let ra = &spec.remote.address;
    if ra.parse::<IpAddr>().is_err() && !is_dns_name(ra) {
        err(
            "spec.remote.address".into(),
            format!("{ra:?} is neither an IP address nor a DNS name"),
        );
    }
    let family = |a: &str| a.parse::<IpAddr>().ok().map(|ip| ip.is_ipv4());
    let first = family(ra).or_else(|| spec.local.address.as_deref().and_then(family));
    for (i, a) in spec.remote.fallback_addresses.iter().enumerate() {
        let field = format!("spec.remote.fallbackAddresses[{i}]");
        if a.parse::<IpAddr>().is_err() && !is_dns_name(a) {
            err(
                field,
                format!("{a:?} is neither an IP address nor a DNS name"),
            );
        } else if let (Some(f), Some(mine)) = (first, family(a))
            && f != mine
        {
            err(
                field,
                format!("{a} is not of the address family of remote.address and local.address"),
            );
        }
    }
    if spec.remote.port == Some(0) {
        err("spec.remote.port".into(), "must be 1 to 65535".into());
    }
    for (side, id) in [("local", &spec.local.id), ("remote", &spec.remote.id)] {
        if id.trim().is_empty() {
            err(format!("spec.{side}.id"), "must not be empty".into());
        }
    }
    match (&spec.auth.psk, &spec.auth.certificate) {
        (Some(_), Some(_)) | (None, None) => err(
            "spec.auth".into(),
            "set exactly one of auth.psk or auth.certificate".into(),
        ),
        (None, Some(_)) if spec.auth.ca.is_none() => err(
            "spec.auth.ca".into(),
            "auth.certificate needs auth.ca to verify the peer's certificate".into(),
        ),
        _ => {}
    }
    for (name, p, min) in [("ike", &spec.ike, 60), ("esp", &spec.esp, 60)] {
        if let Some(l) = p.as_ref().and_then(|p| p.lifetime)
            && l.as_secs() < min
        {
            err(
                format!("spec.{name}.lifetime"),
                format!("{l} is shorter than the minimum of {min}s"),
            );
        }
        if let Some(p) = p {
            lifetime_rules(name, p, &mut err);
        }
    }
    if let Some(r) = spec.esp.as_ref().and_then(|p| p.reauth_time) {
        err(
            "spec.esp.reauthTime".into(),
            format!("{r}: reauthentication is of the IKE SA: set it in spec.ike"),
        );
    }
    if let Some(r) = spec.ike.as_ref().and_then(|p| p.reauth_time)
        && r.as_secs() < 60
    {
        err(
            "spec.ike.reauthTime".into(),
            format!("{r} is shorter than the minimum of 60s"),
        );
    }
    if let Some(p) = &spec.ike {
        for (field, v) in [
            ("rekeyBytes", p.rekey_bytes),
            ("lifeBytes", p.life_bytes),
            ("rekeyPackets", p.rekey_packets),
            ("lifePackets", p.life_packets),
        ] {
            if v.is_some() {
                err(
                    format!("spec.ike.{field}"),
                    "byte and packet limits are for CHILD SAs: set them in spec.esp".into(),
                );
            }
        }
    }
    if let Some(DpdSpec {
        interval: Some(i),
        timeout: Some(t),
    }) = &spec.dpd
        && t < i
    {
        err(
            "spec.dpd.timeout".into(),
            format!("timeout {t} is shorter than the interval {i}"),
        );
    }
    if let Some(dp) = &spec.data_plane {
        let route = dp.mode == crate::DataPlaneMode::RouteBased;
        if dp.route_metric.is_some() && !route {
            err(
                "spec.dataPlane.routeMetric".into(),
                "dataPlane.routeMetric needs dataPlane.mode routeBased".into(),
            );
        }
        if dp
            .route_metric
            .is_some_and(|m| !(1..=1_000_000).contains(&m))
        {
            err(
                "spec.dataPlane.routeMetric".into(),
                "must be from 1 to 1000000".into(),
            );
        }
        if route && spec.initiation == crate::Initiation::OnTraffic {
            err(
                "spec.initiation".into(),
                "initiation onTraffic needs dataPlane.mode policyBased (a route-based tunnel has \
                 no trap policies)"
                    .into(),
            );
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IPsecTunnel;

    fn example() -> IPsecTunnel {
        let yaml = include_str!("../../deploy/examples/psk-tunnel.yaml");
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let t = example();
        assert_eq!(t.spec.remote.address, "192.0.2.2");
        assert_eq!(
            t.spec.ike.as_ref().unwrap().lifetime.unwrap().as_secs(),
            86_400
        );
        assert_eq!(validate(&t.spec), vec![]);
    }

    #[test]
    fn route_based_options_are_checked() {
        let mut t = example();
        t.spec.data_plane = Some(crate::DataPlaneSpec {
            mode: crate::DataPlaneMode::RouteBased,
            route_metric: Some(200),
        });
        assert_eq!(validate(&t.spec), vec![]);
        t.spec.initiation = crate::Initiation::OnTraffic;
        let fields: Vec<_> = validate(&t.spec).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.initiation"]);
        t.spec.initiation = crate::Initiation::Start;
        t.spec.data_plane = Some(crate::DataPlaneSpec {
            mode: crate::DataPlaneMode::PolicyBased,
            route_metric: Some(0),
        });
        let fields: Vec<_> = validate(&t.spec).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["spec.dataPlane.routeMetric", "spec.dataPlane.routeMetric"]
        );
    }

    #[test]
    fn fallback_addresses_and_the_port_are_checked() {
        let mut t = example();
        t.spec.remote.fallback_addresses = vec!["192.0.2.9".into(), "gw2.example.net".into()];
        t.spec.remote.port = Some(4500);
        assert_eq!(validate(&t.spec), vec![]);
        t.spec.remote.fallback_addresses = vec!["2001:db8::9".into(), "not a name!".into()];
        t.spec.remote.port = Some(0);
        let errs = validate(&t.spec);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.remote.fallbackAddresses[0]",
                "spec.remote.fallbackAddresses[1]",
                "spec.remote.port"
            ]
        );
        assert!(
            errs[0].message.contains("address family"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn each_mistake_is_named_by_its_field() {
        let mut t = example();
        t.spec.remote.subnets = vec!["203.0.113.1/24".into(), "nonsense".into()];
        t.spec.remote.address = "not an address!".into();
        t.spec.auth.certificate = Some(crate::SecretSource {
            secret_ref: crate::SecretRef { name: "x".into() },
        });
        t.spec.dpd = Some(crate::DpdSpec {
            interval: Some(crate::Duration::from_secs(60)),
            timeout: Some(crate::Duration::from_secs(10)),
        });
        let fields: Vec<_> = validate(&t.spec).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.remote.subnets[0]",
                "spec.remote.subnets[1]",
                "spec.remote.address",
                "spec.auth",
                "spec.dpd.timeout"
            ]
        );
    }

    #[test]
    fn lifetimes_agree_with_each_other_and_volumes_are_for_esp() {
        let mut t = example();
        let d = crate::Duration::from_secs;
        let ike = t.spec.ike.get_or_insert_with(Default::default);
        ike.lifetime = Some(d(3600));
        ike.max_lifetime = Some(d(3600));
        ike.rand_time = Some(d(4000));
        ike.rekey_bytes = Some(1000);
        let esp = t.spec.esp.get_or_insert_with(Default::default);
        esp.lifetime = None;
        // shorter than the default ESP lifetime (1h)
        esp.max_lifetime = Some(d(1800));
        esp.rekey_bytes = Some(1_000_000);
        esp.life_bytes = Some(1_000_000);
        esp.rekey_packets = Some(1000);
        esp.life_packets = Some(2000);
        let errs = validate(&t.spec);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ike.maxLifetime",
                "spec.ike.randTime",
                "spec.esp.maxLifetime",
                "spec.esp.lifeBytes",
                "spec.ike.rekeyBytes"
            ],
            "{errs:?}"
        );
        assert!(errs[2].message.contains("(3600s)"), "{}", errs[2].message);
        assert!(errs[4].message.contains("set them in spec.esp"));
        // the same, sound
        let ike = t.spec.ike.as_mut().unwrap();
        (ike.max_lifetime, ike.rand_time, ike.rekey_bytes) = (Some(d(4000)), Some(d(60)), None);
        let esp = t.spec.esp.as_mut().unwrap();
        (esp.max_lifetime, esp.life_bytes) = (Some(d(4000)), Some(1_100_000));
        assert_eq!(validate(&t.spec), vec![]);
    }

    #[test]
    fn cidrs() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().unwrap().prefix, 8);
        assert!("2001:db8::/32".parse::<Cidr>().is_ok());
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!(
            "10.0.0.1/24"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("host bits")
        );
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_refused() {
        let yaml = include_str!("../../deploy/examples/psk-tunnel.yaml")
            .replace("initiation: start", "initiation: sometimes");
        let e = serde_yaml::from_str::<IPsecTunnel>(&yaml)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
    }

    /// A small seeded generator for the property test below (no dependency for it).
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// A prefix and whether it is a valid one, known from how it was made.
    fn random_cidr(r: &mut XorShift) -> (String, bool) {
        let v6 = r.below(2) == 1;
        let bits: u32 = if v6 { 128 } else { 32 };
        let raw = (u128::from(r.below(u64::MAX)) << 64 | u128::from(r.below(u64::MAX)))
            & if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let prefix = r.below(u64::from(bits) + 3) as u32; // sometimes too long
        let keep = |p: u32| {
            // the network part only: shift the host bits out and back
            let host = bits.saturating_sub(p);
            if host >= bits { 0 } else { raw >> host << host }
        };
        let (addr, valid) = match r.below(4) {
            0 => (raw, prefix <= bits && keep(prefix) == raw),
            _ => (keep(prefix.min(bits)), prefix <= bits),
        };
        let shown: IpAddr = if v6 {
            std::net::Ipv6Addr::from(addr).into()
        } else {
            std::net::Ipv4Addr::from(addr as u32).into()
        };
        match r.below(12) {
            0 => (shown.to_string(), false),
            1 => (format!("{shown}/x"), false),
            2 => (format!("x{shown}/{prefix}"), false),
            _ => (format!("{shown}/{prefix}"), valid),
        }
    }

    /// A remote address (an IP literal or a DNS name) and whether it is a valid one.
    fn random_address(r: &mut XorShift) -> (String, bool) {
        const ALPHABET: &[u8] = b"abcxyz019-";
        let label = |r: &mut XorShift, len: u64| -> String {
            (0..len)
                .map(|i| {
                    let c = ALPHABET[r.below(ALPHABET.len() as u64) as usize];
                    // no hyphen at either end of a valid label
                    if c == b'-' && (i == 0 || i + 1 == len) {
                        'a'
                    } else {
                        char::from(c)
                    }
                })
                .collect()
        };
        let labels: Vec<String> = (0..1 + r.below(4))
            .map(|_| {
                let len = 1 + r.below(12);
                label(r, len)
            })
            .collect();
        let name = labels.join(".");
        match r.below(9) {
            0 => ("192.0.2.7".into(), true),
            1 => ("2001:db8::7".into(), true),
            2 => (format!("-{name}"), false),
            3 => (format!("{name}..{name}"), false),
            4 => (format!("{}.{name}", "a".repeat(64)), false),
            5 => (format!("{name}_x"), false),
            6 => (String::new(), false),
            7 => (format!("{name}."), true),
            _ => (name, true),
        }
    }

    /// Random subnets, remote addresses and ESP lifetimes on the shipped example: `validate`
    /// names exactly the fields the generator made invalid (the oracle is how each was made,
    /// not the validator's code), and nothing else. 20,000 cases, fixed seed.
    #[test]
    fn random_specs_get_exactly_the_errors_their_fields_deserve() {
        let mut r = XorShift(0x2545_f491_4f6c_dd1d);
        let (mut clean, mut faulty) = (0, 0);
        for case in 0..20_000 {
            let mut t = example();
            let (subnet, subnet_ok) = random_cidr(&mut r);
            let (address, address_ok) = random_address(&mut r);
            t.spec.remote.subnets = vec![subnet.clone()];
            t.spec.remote.address = address.clone();
            t.spec.remote.fallback_addresses.clear();
            let life = r.below(400);
            let max = (r.below(2) == 1).then(|| r.below(800));
            let rand = (r.below(2) == 1).then(|| r.below(400));
            let esp = t.spec.esp.get_or_insert_default();
            esp.lifetime = Some(crate::Duration::from_secs(life));
            esp.max_lifetime = max.map(crate::Duration::from_secs);
            esp.rand_time = rand.map(crate::Duration::from_secs);

            let errs = validate(&t.spec);
            let has = |f: &str| errs.iter().any(|e| e.field == f);
            let why =
                || format!("case {case}: {subnet:?} {address:?} {life} {max:?} {rand:?}: {errs:?}");
            assert_eq!(has("spec.remote.subnets[0]"), !subnet_ok, "{}", why());
            assert_eq!(has("spec.remote.address"), !address_ok, "{}", why());
            assert_eq!(has("spec.esp.lifetime"), life < 60, "{}", why());
            assert_eq!(
                has("spec.esp.maxLifetime"),
                max.is_some_and(|m| m <= life),
                "{}",
                why()
            );
            assert_eq!(
                has("spec.esp.randTime"),
                rand.is_some_and(|x| x >= life),
                "{}",
                why()
            );
            let known = [
                "spec.remote.subnets[0]",
                "spec.remote.address",
                "spec.esp.lifetime",
                "spec.esp.maxLifetime",
                "spec.esp.randTime",
            ];
            assert!(
                errs.iter().all(|e| known.contains(&e.field.as_str())),
                "{}",
                why()
            );
            if errs.is_empty() {
                clean += 1
            } else {
                faulty += 1
            }
        }
        assert!(
            clean > 1_000 && faulty > 5_000,
            "clean {clean}, faulty {faulty}"
        );
    }
}
