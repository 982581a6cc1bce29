//! One `IPsecTunnel` document, built field by field: the tests, the benchmarks and the demo write
//! their tunnels through [`TunnelYaml`], so the CRD's shape is spelled out in one place.

use std::fmt::Write as _;

use crate::agent::CERT_AUTH_YAML;

/// How the tunnel authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A pre-shared key in Secret `NAME`, key `psk`.
    Psk(String),
    /// Certificates from the Secrets of [`crate::agent::SecretFile::certificate`].
    Certificate,
    /// `spec.auth` written out as one flow mapping (`{certificate: …, ca: …}`).
    Yaml(String),
}

/// One end of the tunnel: its identity, IKE address (`None`: the elected node's) and subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct End {
    pub id: String,
    pub address: Option<String>,
    pub subnets: Vec<String>,
}

impl End {
    /// An end with one subnet; `address` empty means none.
    pub fn new(id: impl Into<String>, address: impl ToString, subnet: impl Into<String>) -> Self {
        let address = address.to_string();
        Self {
            id: id.into(),
            address: (!address.is_empty()).then_some(address),
            subnets: vec![subnet.into()],
        }
    }
}

/// An `IPsecTunnel`; fields left at their defaults are left out of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelYaml {
    pub name: String,
    /// Cluster mode: the gateways are the nodes labelled `LABEL: "true"`.
    pub gateway_label: Option<String>,
    pub local: End,
    pub remote: End,
    pub auth: Auth,
    pub ike: Vec<String>,
    pub ike_lifetime: Option<String>,
    pub esp: Vec<String>,
    pub esp_lifetime: Option<String>,
    /// `(interval, timeout)`.
    pub dpd: Option<(String, String)>,
    pub initiation: Option<String>,
    /// More lines under `spec:`, each indented by two spaces and ending in a newline.
    pub extra: String,
}

impl TunnelYaml {
    /// Tunnel `name` from `local` to `remote` with the PSK in Secret `gw-psk`, nothing else set.
    pub fn new(name: impl Into<String>, local: End, remote: End) -> Self {
        Self {
            name: name.into(),
            gateway_label: None,
            local,
            remote,
            auth: Auth::Psk("gw-psk".into()),
            ike: Vec::new(),
            ike_lifetime: None,
            esp: Vec::new(),
            esp_lifetime: None,
            dpd: None,
            initiation: None,
            extra: String::new(),
        }
    }

    /// Cluster mode, gateways labelled `strait.dev/gateway: "true"`.
    #[must_use]
    pub fn gateways(mut self) -> Self {
        self.gateway_label = Some("strait.dev/gateway".into());
        self
    }

    /// The PSK in Secret `secret`, key `psk`.
    #[must_use]
    pub fn psk(mut self, secret: &str) -> Self {
        self.auth = Auth::Psk(secret.into());
        self
    }

    /// One IKE and one ESP proposal.
    #[must_use]
    pub fn proposals(mut self, ike: &str, esp: &str) -> Self {
        self.ike = vec![ike.into()];
        self.esp = vec![esp.into()];
        self
    }

    /// Dead peer detection every `interval`, down after `timeout`.
    #[must_use]
    pub fn dpd(mut self, interval: &str, timeout: &str) -> Self {
        self.dpd = Some((interval.into(), timeout.into()));
        self
    }

    /// `start`, `respond` or `onTraffic`.
    #[must_use]
    pub fn initiation(mut self, initiation: &str) -> Self {
        self.initiation = Some(initiation.into());
        self
    }

    /// The document.
    pub fn render(&self) -> String {
        let end = |e: &End| {
            let addr = e
                .address
                .as_ref()
                .map_or(String::new(), |a| format!(", address: {a}"));
            format!(
                "{{id: '{}'{addr}, subnets: [{}]}}",
                e.id,
                e.subnets.join(", ")
            )
        };
        let algos = |proposals: &[String], lifetime: &Option<String>| {
            let mut s = Vec::new();
            if !proposals.is_empty() {
                s.push(format!("proposals: [{}]", proposals.join(", ")));
            }
            if let Some(l) = lifetime {
                s.push(format!("lifetime: {l}"));
            }
            s.join(", ")
        };
        let mut y = format!(
            "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata: {{name: {}}}\nspec:\n",
            self.name
        );
        if let Some(label) = &self.gateway_label {
            let _ = writeln!(
                y,
                "  gateway: {{nodeSelector: {{matchLabels: {{{label}: \"true\"}}}}}}"
            );
        }
        let _ = writeln!(y, "  local: {}", end(&self.local));
        let _ = writeln!(y, "  remote: {}", end(&self.remote));
        match &self.auth {
            Auth::Psk(secret) => {
                let _ = writeln!(
                    y,
                    "  auth:\n    psk: {{secretRef: {{name: {secret}, key: psk}}}}"
                );
            }
            Auth::Certificate => {
                let _ = writeln!(y, "  auth:\n    {CERT_AUTH_YAML}");
            }
            Auth::Yaml(auth) => {
                let _ = writeln!(y, "  auth: {auth}");
            }
        }
        for (key, proposals, lifetime) in [
            ("ike", &self.ike, &self.ike_lifetime),
            ("esp", &self.esp, &self.esp_lifetime),
        ] {
            let a = algos(proposals, lifetime);
            if !a.is_empty() {
                let _ = writeln!(y, "  {key}: {{{a}}}");
            }
        }
        if let Some((interval, timeout)) = &self.dpd {
            let _ = writeln!(y, "  dpd: {{interval: {interval}, timeout: {timeout}}}");
        }
        if let Some(i) = &self.initiation {
            let _ = writeln!(y, "  initiation: {i}");
        }
        y.push_str(&self.extra);
        y
    }
}
