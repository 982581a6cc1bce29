//! The README's demo: the whole product on one machine, against real parts. A real API server,
//! the operator, two gateway nodes (network namespaces) each running `strait-agent cluster`, and
//! a strongSwan remote site. Every step runs for real; nothing is simulated.
//!
//! This host's kernel has no ESP, so the agents run with `--dataplane none`: they negotiate IKE
//! and CHILD SAs with charon but install no kernel SAs. The kernel VM tier proves the data plane.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns::{self, Topology};
use strait_e2e::product::{Daemon, NAMESPACE};
use strait_e2e::strongswan::{
    self, Charon, CharonConfig, ChildConfig, Connection, Endpoint, Secret,
};

/// The demo's pre-shared key. It is a demo value for namespaces on this machine only.
const DEMO_PSK: &str = "strait-demo-psk-only-for-this-machine";
const LOCAL_ID: &str = "dc1.strait.example";
const REMOTE_ID: &str = "dc2.strait.example";
/// The remote site's IKE address (on its loopback, routed from both gateway nodes).
const REMOTE_ADDR: &str = "192.0.2.100";

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

fn tunnel_yaml() -> String {
    format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata:
  name: demo
spec:
  gateway: {{nodeSelector: {{matchLabels: {{strait.dev/gateway: "true"}}}}}}
  local:  {{id: {LOCAL_ID}, subnets: [198.51.100.0/24]}}    # address: the elected node's
  remote: {{id: {REMOTE_ID}, address: {REMOTE_ADDR}, subnets: [203.0.113.0/24]}}
  auth:   {{psk: {{secretRef: {{name: demo-psk, key: psk}}}}}}
  ike:    {{proposals: [aes256gcm16-prfsha256-x25519], lifetime: 1h}}
  esp:    {{proposals: [aes256gcm16-x25519], lifetime: 20m}}
  dpd:    {{interval: 10s, timeout: 30s}}
"#
    )
}

/// `GET /metrics` from inside a node's namespace (the agent serves it there), via bash's
/// /dev/tcp so nothing else needs installing.
fn scrape(ns: &str, port: u16) -> Result<String> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = netns::exec(ns, &["bash", "-c", &script])?;
    let body = out
        .stdout
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .context("no HTTP answer")?;
    Ok(body)
}

fn run() -> Result<()> {
    strait_e2e::cmd::require_root()?;
    let _ = netns::sweep_stale();
    strongswan::sweep_stale_dirs();

    step(
        1,
        "Starting a real control plane: etcd + kube-apiserver on loopback",
    );
    let t = Instant::now();
    let cp = ControlPlane::start()?;
    println!(
        "API server {} ready in {:.1} s",
        cp.server_url(),
        t.elapsed().as_secs_f64()
    );

    step(2, "Installing the IPsecTunnel CRD (crds/ipsectunnel.yaml)");
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/ipsectunnel.yaml");
    print!("{}", cp.kubectl(["apply", "--server-side", "-f", crd])?);
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/ipsectunnels.strait.dev",
        "--timeout=30s",
    ])?;

    step(
        3,
        "Building the network: gateway nodes gw1 and gw2, and a remote site, as network namespaces",
    );
    let topo = Topology::builder()
        .node("gw1")
        .node("gw2")
        .node("remote")
        .link("gw1", "192.0.2.1/30", "remote", "192.0.2.2/30")
        .link("gw2", "192.0.2.5/30", "remote", "192.0.2.6/30")
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        .subnet("remote", "203.0.113.1/32")
        .route("gw1", &[REMOTE_ADDR, "via", "192.0.2.2"])
        .route("gw2", &[REMOTE_ADDR, "via", "192.0.2.6"])
        .build()?;
    println!(
        "gw1    {} 192.0.2.1  (cluster side 198.51.100.0/24)\n\
         gw2    {} 192.0.2.5\n\
         remote {} {REMOTE_ADDR} (remote site 203.0.113.0/24)",
        topo.ns("gw1")?,
        topo.ns("gw2")?,
        topo.ns("remote")?
    );

    step(
        4,
        "Starting strongSwan (charon) as the remote site's gateway, responding",
    );
    let mut conn = Connection::new("demo", Endpoint::psk(REMOTE_ID), Endpoint::psk(LOCAL_ID));
    conn.local_addrs = vec![REMOTE_ADDR.to_owned()];
    conn.children = vec![ChildConfig::new("net", "203.0.113.0/24", "198.51.100.0/24")];
    let config = CharonConfig {
        connections: vec![conn],
        secrets: vec![Secret::Ike {
            ids: vec![LOCAL_ID.to_owned(), REMOTE_ID.to_owned()],
            secret: DEMO_PSK.to_owned(),
        }],
        ..CharonConfig::default()
    };
    let charon = Charon::start(topo.ns("remote")?, &config)?;
    println!(
        "charon pid {} listening on {REMOTE_ADDR}:500",
        charon
            .pid()
            .map_or_else(|| "?".to_owned(), |p| p.to_string())
    );

    step(
        5,
        "Registering the nodes, starting the operator and an agent on each node (cluster mode)",
    );
    cp.kubectl(["create", "namespace", NAMESPACE])?;
    for node in ["gw1", "gw2"] {
        cp.kubectl_stdin(
            ["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels: {{strait.dev/gateway: \"true\"}}\n"
            ),
        )?;
    }
    println!(
        "Node objects gw1, gw2 labelled strait.dev/gateway=true (API objects; no kubelet here)"
    );
    let _operator = Daemon::operator(&cp, &[])?;
    println!("strait-operator run --namespace {NAMESPACE}");
    println!(
        "NOTE: this host's kernel has no ESP, so the agents run with --dataplane none: they\n\
         negotiate real IKE and CHILD SAs with charon but install no kernel SAs. The kernel VM\n\
         tier (e2e/tests/vm_*.rs) is where real SAs carry real packets."
    );
    let mut agents = Vec::new();
    for node in ["gw1", "gw2"] {
        agents.push(Daemon::cluster_agent(
            &cp,
            topo.ns(node)?,
            node,
            &["--dataplane", "none"],
        )?);
        println!("strait-agent cluster --node {node} --dataplane none   (in namespace {node})");
    }
    let t = Instant::now();
    while cp
        .kubectl([
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "strait-agent-gw1",
            "strait-agent-gw2",
        ])
        .is_err()
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "the agents wrote no heartbeat Lease within 60 s:\n{}\n{}",
                agents.first().map(Daemon::log).unwrap_or_default(),
                agents.get(1).map(Daemon::log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    print!("{}", cp.kubectl(["get", "leases", "-n", NAMESPACE])?);

    step(
        6,
        "Applying the tunnel's Secret and the IPsecTunnel with kubectl",
    );
    cp.kubectl([
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "demo-psk",
        &format!("--from-literal=psk={DEMO_PSK}"),
    ])
    .context("creating the PSK Secret")?;
    let yaml = tunnel_yaml();
    println!("{yaml}");
    let applied = Instant::now();
    print!("{}", cp.kubectl_stdin(["apply", "-f", "-"], &yaml)?);

    step(7, "kubectl wait --for=condition=Ready ipsectunnel/demo");
    let waited = cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "ipsectunnel/demo",
        "--timeout=120s",
    ]);
    if let Err(e) = waited {
        let status = cp
            .kubectl(["get", "ipsectunnel", "demo", "-o", "yaml"])
            .unwrap_or_default();
        bail!(
            "the tunnel did not become Ready: {e:#}\n{status}\n--- agent gw1:\n{}\n--- agent gw2:\n{}",
            agents.first().map(Daemon::log).unwrap_or_default(),
            agents.get(1).map(Daemon::log).unwrap_or_default()
        );
    }
    println!(
        "ipsectunnel.strait.dev/demo condition met: Ready {:.2} s after kubectl apply",
        applied.elapsed().as_secs_f64()
    );

    step(8, "What the cluster, charon and the agent say");
    println!("$ kubectl get ipsectunnels -o wide");
    print!("{}", cp.kubectl(["get", "ipsectunnels", "-o", "wide"])?);
    println!("\n$ kubectl get ipsectunnel demo -o yaml   (status)");
    let full = cp.kubectl(["get", "ipsectunnel", "demo", "-o", "yaml"])?;
    let status = full
        .find("\nstatus:")
        .and_then(|i| full.get(i + 1..))
        .unwrap_or(&full);
    print!("{status}");
    println!("\n$ swanctl --list-sas   (charon, the remote site)");
    print!("{}", charon.list_sas()?.raw);
    let active = cp.kubectl([
        "get",
        "ipsectunnel",
        "demo",
        "-o",
        "jsonpath={.status.activeGateway}",
    ])?;
    println!("\n$ curl http://127.0.0.1:9470/metrics   (the agent on {active}, strait_ lines)");
    match topo.ns(&active).and_then(|ns| scrape(ns, 9470)) {
        Ok(body) => {
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("strait_"))
                .take(20)
                .collect();
            if lines.is_empty() {
                println!("(the agent answered, but with no strait_ metrics)");
            }
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => println!("(no metrics from the agent: {e:#})"),
    }
    println!(
        "\nDone: the operator elected {active}, its agent negotiated IKEv2 with charon, and the\n\
         tunnel is Ready. Everything above ran for real; only kernel ESP is absent on this host."
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
