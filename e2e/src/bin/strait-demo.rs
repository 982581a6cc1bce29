//! The README's demo: the whole product on one machine, against real parts. A real API server,
//! the operator, two gateway nodes (network namespaces) each running `strait-agent cluster`, and
//! a strongSwan remote site. Every step runs for real; nothing is simulated.
//!
//! This host's kernel has no ESP, so the agents run with `--dataplane none`: they negotiate IKE
//! and CHILD SAs with charon but install no kernel SAs. The kernel VM tier proves the data plane.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use strait_e2e::cluster::{self, LOCAL_ID, REMOTE_ADDR, REMOTE_ID};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{Daemon, NAMESPACE};
use strait_e2e::scenario;
use strait_e2e::strongswan::{self, Charon};
use strait_e2e::tunnel::TunnelYaml;

/// The demo's pre-shared key. It is a demo value for namespaces on this machine only.
const DEMO_PSK: &str = "strait-demo-psk-only-for-this-machine";

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

/// The demo's tunnel; `local` has no address: it is the elected node's.
fn tunnel_yaml() -> String {
    TunnelYaml {
        ike_lifetime: Some("1h".into()),
        esp_lifetime: Some("20m".into()),
        ..cluster::tunnel("demo", "demo-psk").dpd("10s", "30s")
    }
    .render()
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
    strait_e2e::product::wait_crd(&cp, 30)?;

    step(
        3,
        "Building the network: gateway nodes gw1 and gw2, and a remote site, as network namespaces",
    );
    let topo = cluster::topology(&["gw1", "gw2"])?;
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
    let config = scenario::psk_config(
        cluster::charon_conn("demo"),
        &[LOCAL_ID, REMOTE_ID],
        DEMO_PSK,
    );
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
    cluster::wait_heartbeats(&cp, &["gw1", "gw2"], Duration::from_secs(60), || {
        agents
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
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
