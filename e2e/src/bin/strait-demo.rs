//! The README's demo: the whole product on one machine, against real parts. A real control plane
//! and two kubelet nodes (e2e/nodes), the chart installed with helm from the images built here,
//! and a strongSwan remote site. Every step runs for real; nothing is simulated.
//!
//! This host's kernel has no ESP, so the agents run with `--dataplane none`: they negotiate IKE
//! and CHILD SAs with charon but install no kernel SAs. The kernel VM tier proves the data plane.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use strait_e2e::cluster::{ESP, IKE, LOCAL_ID, REMOTE_ID};
use strait_e2e::netns;
use strait_e2e::nodes::{self, NAMESPACE, NodeCluster, POD_NET, SITE_ADDR, SITE_NET, SITE_NS};
use strait_e2e::scenario;
use strait_e2e::strongswan::{Charon, CharonConfig, ChildConfig, Connection, Endpoint};
use strait_e2e::tunnel::{End, TunnelYaml};

/// The demo's pre-shared key. It is a demo value for namespaces on this machine only.
const DEMO_PSK: &str = "strait-demo-psk-only-for-this-machine";

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

/// The demo's tunnel from the pod network to the remote site; `local` has no address: it is the
/// elected node's.
fn tunnel_yaml() -> String {
    TunnelYaml {
        ike_lifetime: Some("1h".into()),
        esp_lifetime: Some("20m".into()),
        ..TunnelYaml::new(
            "demo",
            End::new(LOCAL_ID, "", POD_NET),
            End::new(REMOTE_ID, SITE_ADDR, SITE_NET),
        )
        .gateways()
        .psk("demo-psk")
        .proposals(IKE, ESP)
        .dpd("10s", "30s")
    }
    .render()
}

/// charon at the remote site, responding to the tunnel.
fn charon_config() -> CharonConfig {
    let mut conn = Connection::new("demo", Endpoint::psk(REMOTE_ID), Endpoint::psk(LOCAL_ID));
    conn.local_addrs = vec![SITE_ADDR.into()];
    conn.proposals = vec![IKE.into()];
    let mut child = ChildConfig::new("net", SITE_NET, POD_NET);
    child.esp_proposals = vec![ESP.into()];
    conn.children.push(child);
    scenario::psk_config(conn, &[LOCAL_ID, REMOTE_ID], DEMO_PSK)
}

/// `GET /metrics` from inside a node's namespace (the agent serves it there), via bash's
/// /dev/tcp so nothing else needs installing.
/// `GET /metrics` on `addr:port` from inside `ns`.
fn scrape(ns: &str, addr: &str, port: u16) -> Result<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{addr}/{port} && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
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

    step(
        1,
        "Starting a real cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,\n    \
         and two kubelet nodes (containerd, runc, kube-proxy), each in its own network namespace",
    );
    let t = Instant::now();
    let k = NodeCluster::up(2)?;
    println!(
        "cluster up in {:.1} s; KUBECONFIG={}",
        t.elapsed().as_secs_f64(),
        k.kubeconfig_path().display()
    );
    print!("{}", k.kubectl(["get", "nodes", "-o", "wide"])?);

    step(
        2,
        "Starting strongSwan (charon) as the remote site's gateway, responding",
    );
    let charon = Charon::start(SITE_NS, &charon_config())?;
    println!(
        "charon pid {} listening on {SITE_ADDR}:500 (remote site {SITE_NET})",
        charon
            .pid()
            .map_or_else(|| "?".to_owned(), |p| p.to_string())
    );

    step(
        3,
        "helm install: the chart with the images built here, on nodes labelled as gateways",
    );
    // Strait's agents are privileged (hostNetwork, NET_ADMIN): the namespace must admit them.
    k.kubectl(["create", "namespace", NAMESPACE])?;
    k.kubectl([
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=privileged",
    ])?;
    for node in k.node_names() {
        k.label_gateway(&node, true)?;
    }
    println!(
        "NOTE: this host's kernel has no ESP, so the agents run with --dataplane none: they\n\
         negotiate real IKE and CHILD SAs with charon but install no kernel SAs. The kernel VM\n\
         tier (e2e/tests/vm_*.rs) is where real SAs carry real packets."
    );
    let chart = nodes::chart();
    let chart = chart.to_str().context("chart path")?;
    let cmd = [
        "install",
        "strait",
        chart,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout=180s",
        "--set",
        "agent.extraArgs={--dataplane=none}",
    ];
    println!("$ helm {}", cmd.join(" "));
    print!("{}", k.helm(cmd)?);

    step(
        4,
        "Applying the tunnel's Secret and the IPsecTunnel with kubectl",
    );
    k.kubectl([
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
    print!("{}", k.kubectl_stdin(["apply", "-f", "-"], &yaml)?);

    step(5, "kubectl wait --for=condition=Ready ipsectunnel/demo");
    let waited = k.kubectl([
        "wait",
        "--for=condition=Ready",
        "ipsectunnel/demo",
        "--timeout=180s",
    ]);
    if let Err(e) = waited {
        let status = k
            .kubectl(["get", "ipsectunnel", "demo", "-o", "yaml"])
            .unwrap_or_default();
        let pods = k
            .kubectl(["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default();
        bail!("the tunnel did not become Ready: {e:#}\n{status}\n{pods}");
    }
    println!(
        "ipsectunnel.strait.dev/demo condition met: Ready {:.2} s after kubectl apply",
        applied.elapsed().as_secs_f64()
    );

    step(6, "What the cluster, charon and the agent say");
    println!("$ kubectl -n {NAMESPACE} get pods -o wide");
    print!("{}", k.ns_kubectl(&["get", "pods", "-o", "wide"])?);
    println!("\n$ kubectl get ipsectunnels -o wide");
    print!("{}", k.kubectl(["get", "ipsectunnels", "-o", "wide"])?);
    // the kubectl plugin, built beside the product by demo.sh
    let plugin_dir = std::env::var_os("STRAIT_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .context("STRAIT_PLUGIN_DIR is not set (e2e/demo.sh sets it)")?;
    for args in [
        ["strait", "status"].as_slice(),
        &["strait", "diagnose", "demo"],
    ] {
        println!("\n$ kubectl {}", args.join(" "));
        let out = k.kubectl_plugin_command(&plugin_dir, args).output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    println!("\n$ kubectl get ipsectunnel demo -o yaml   (status)");
    let full = k.kubectl(["get", "ipsectunnel", "demo", "-o", "yaml"])?;
    let status = full
        .find("\nstatus:")
        .and_then(|i| full.get(i + 1..))
        .unwrap_or(&full);
    print!("{status}");
    println!("\n$ swanctl --list-sas   (charon, the remote site)");
    print!("{}", charon.list_sas()?.raw);
    let active = k.kubectl([
        "get",
        "ipsectunnel",
        "demo",
        "-o",
        "jsonpath={.status.activeGateway}",
    ])?;
    let pod = k
        .pods("app.kubernetes.io/name=strait-agent")?
        .into_iter()
        .find(|(_, n)| *n == active)
        .map(|(p, _)| p)
        .context("no agent pod on the active gateway")?;
    println!("\n$ kubectl -n {NAMESPACE} exec {pod} -- strait-agent status");
    print!(
        "{}",
        k.ns_kubectl(&["exec", &pod, "-c", "agent", "--", "strait-agent", "status"])?
    );
    // the agent listens on its node's own address (status.hostIP), not on every interface
    let node_ip = k.kubectl([
        "get",
        "node",
        active.as_str(),
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let node_ip = node_ip.trim();
    println!("\n$ curl http://{node_ip}:9470/metrics   (the agent on {active}, strait_ lines)");
    match scrape(&active, node_ip, 9470) {
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
        "\nDone: helm installed the operator and the agent DaemonSet on two kubelet nodes, the\n\
         operator elected {active}, its agent pod negotiated IKEv2 with charon, and the tunnel is\n\
         Ready. Everything above ran for real; only kernel ESP is absent on this host."
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
