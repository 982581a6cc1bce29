//! `strait-agent`: the per-node daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use strait_agent::{cluster, dataplane, metrics, probe, spec, standalone, status, steering};

#[derive(Parser, Debug)]
#[command(version, about = "Strait's per-node IPsec agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run tunnels from a YAML file of IPsecTunnel documents, without Kubernetes.
    Standalone(RunArgs),
    /// Check a standalone config and its secrets, print what would run, and exit.
    Check(StandaloneArgs),
    /// Ask a running agent for the state of its tunnels (like `swanctl --list-sas`).
    Status(StatusArgs),
    /// Run on a gateway node of a Kubernetes cluster: the tunnels the operator elects this node
    /// for, status written to each IPsecTunnel (API access: KUBECONFIG, or in-cluster).
    Cluster(ClusterArgs),
    /// Run on every node of a Kubernetes cluster: steer the tunnels' remote subnets to each
    /// tunnel's active gateway (a VXLAN overlay, or direct routes), following failover.
    Route(RouteArgs),
    /// Send one IKE_SA_INIT with a tunnel's IKE proposals to a peer on UDP 500 and 4500 and
    /// say how it answers (`kubectl strait diagnose` runs it on the gateway). A peer that
    /// accepts keeps a half-open IKE SA until its own timeout; nothing is authenticated.
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// The peer's address or DNS name (resolved here, as the agent resolves it).
    remote: String,
    /// Send from this address (the tunnel's local.address); default: the route's source.
    #[arg(long)]
    local: Option<std::net::IpAddr>,
    /// IKE proposals to offer, strongSwan notation (default: the CRD's defaults).
    #[arg(long = "ike-proposal", value_name = "PROPOSAL")]
    ike_proposals: Vec<String>,
    /// The peer's IKE port.
    #[arg(long, default_value_t = 500)]
    ike_port: u16,
    /// The peer's NAT-T port (probed with the non-ESP marker).
    #[arg(long, default_value_t = 4500)]
    natt_port: u16,
    /// Seconds to wait for an answer on each port (one request per second).
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RouteArgs {
    /// This node's name (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// `vxlan`: an overlay to the gateway (any routed underlay); `direct`: a route via the
    /// gateway's internal address (all nodes on one segment).
    #[arg(long, value_enum, default_value_t = RouteMode::Vxlan)]
    mode: RouteMode,
    /// The overlay's VXLAN network identifier.
    #[arg(long, default_value_t = steering::Overlay::default().vni)]
    vxlan_vni: u32,
    /// The overlay's UDP port (4789 and 8472 are usually the CNI's).
    #[arg(long, default_value_t = steering::Overlay::default().port)]
    vxlan_port: u16,
    /// The overlay's IPv4 prefix: a node's overlay address is this prefix with the host bits
    /// of its internal address.
    #[arg(long, default_value = "240.0.0.0/8")]
    vxlan_cidr: String,
    /// Leave the routes and the device in place on exit, for the next process to adopt.
    #[arg(long)]
    keep_on_exit: bool,
    /// This process's pod (the DaemonSet sets POD_NAME): a stop while it is being deleted and
    /// the `strait-route` DaemonSet stays (a rolling update) leaves the routes for the next pod.
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// The pod's namespace (the DaemonSet sets POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RouteMode {
    Vxlan,
    Direct,
}

#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// This node's name (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The operator's namespace: tunnel Secrets and heartbeat Leases live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// `kernel` installs SAs and policies; `none` negotiates but installs nothing.
    #[arg(long, value_enum, default_value_t = Dataplane::Kernel)]
    dataplane: Dataplane,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// How long one heartbeat renewal keeps this agent alive for the operator.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: i32,
    /// How often the heartbeat Lease is renewed, in seconds.
    #[arg(long, default_value_t = 5.0)]
    renew_interval: f64,
    /// At most one status write per tunnel per this many seconds.
    #[arg(long, default_value_t = 1.0)]
    status_interval: f64,
    /// This agent's pod (the DaemonSet sets POD_NAME): a stop while it is being deleted and its
    /// DaemonSet stays is a restart (with `--state-dir`).
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// How long the heartbeat Lease stays valid when the agent stops for a restart: the time a
    /// replacement pod has to start and resume before the operator fails the tunnels over.
    #[arg(long, default_value_t = 30)]
    restart_grace_seconds: i32,
}

/// What every long-running mode takes: ports, the local status socket, metrics, logs.
#[derive(clap::Args, Debug)]
struct DaemonArgs {
    /// Unix socket on which status is served locally (`strait-agent status`).
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    status_socket: PathBuf,
    /// UDP port for IKE.
    #[arg(long, default_value_t = 500)]
    ike_port: u16,
    /// UDP port for NAT traversal (IKE with the non-ESP marker, ESP in UDP).
    #[arg(long, default_value_t = 4500)]
    natt_port: u16,
    /// With `--dataplane kernel`: while every tunnel has a fixed peer address, drop (and count
    /// in nftables' `inet strait` counter `refused`) IKE, NAT-T and ESP from other addresses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    ike_firewall: bool,
    /// Where Prometheus metrics are served (`GET /metrics`), or `off`.
    #[arg(long, default_value = metrics::DEFAULT_ADDR)]
    metrics_addr: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Save each tunnel's IKE state here (a root-only directory on tmpfs, e.g.
    /// /run/strait/state), so that a restarted agent resumes its IKE and CHILD SAs instead of
    /// negotiating again; SIGTERM then leaves every SA in place. Without it, SIGTERM deletes
    /// every IKE SA and a restart negotiates anew.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// While NAT detection finds this node behind a NAT, send a NAT keepalive (RFC 3948) after
    /// this many seconds with nothing sent to the peer; `off` sends none (as strongSwan's
    /// `keep_alive`, default 20).
    #[arg(long, default_value = "20", value_name = "SECONDS|off")]
    nat_keepalive: String,
    /// Half-open IKE SAs from one address at which its further IKE_SA_INIT requests are dropped
    /// unanswered, before any cookie or key exchange (strongSwan's `block_threshold`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    block_threshold: u16,
    /// Half-open IKE SAs in all at which IKE_SA_INIT requests are dropped unanswered
    /// (strongSwan's `init_limit_half_open`; 0, the default, is no limit).
    #[arg(long, default_value_t = 0)]
    init_limit_half_open: u32,
}

impl DaemonArgs {
    /// The half-open limits as `EndpointConfig` takes them.
    fn half_open_limits(&self) -> strait_agent::driver::HalfOpenLimits {
        strait_agent::driver::HalfOpenLimits {
            per_address: self.block_threshold.into(),
            total: (self.init_limit_half_open > 0)
                .then(|| usize::try_from(self.init_limit_half_open).unwrap_or(usize::MAX)),
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: StandaloneArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The node name reported in status (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// For tests only: multiply every SA lifetime by this factor (0 < F <= 1).
    #[arg(long, hide = true)]
    test_lifetime_scale: Option<f64>,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Unix socket of the running agent.
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    status_socket: PathBuf,
    /// Print the raw JSON (the shape of the CRD's per-gateway status).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct StandaloneArgs {
    /// A file holding one or more IPsecTunnel documents.
    #[arg(long)]
    config: PathBuf,
    /// Directory of secrets laid out like a mounted Secret volume: DIR/<name>/<key>.
    #[arg(long)]
    secrets_dir: PathBuf,
    /// `kernel` installs SAs and policies; `none` negotiates but installs nothing.
    #[arg(long, value_enum, default_value_t = Dataplane::Kernel)]
    dataplane: Dataplane,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Dataplane {
    Kernel,
    None,
}

/// Loads the config and every secret it names; the first problem found is the error.
fn check(args: &StandaloneArgs) -> anyhow::Result<Vec<strait_crds::IPsecTunnel>> {
    let tunnels = standalone::config::load(&args.config)?;
    for t in &tunnels {
        let name = t.metadata.name.as_deref().unwrap_or_default();
        for r in [&t.spec.auth.psk, &t.spec.auth.ca].into_iter().flatten() {
            standalone::secrets::read(&args.secrets_dir, &r.secret_ref)
                .map_err(|e| anyhow::anyhow!("tunnel {name:?}: {e}"))?;
        }
        if let Some(c) = &t.spec.auth.certificate {
            for key in ["tls.crt", "tls.key"] {
                let r = strait_crds::SecretKeyRef {
                    name: c.secret_ref.name.clone(),
                    key: key.into(),
                };
                standalone::secrets::read(&args.secrets_dir, &r)
                    .map_err(|e| anyhow::anyhow!("tunnel {name:?}: {e}"))?;
            }
        }
    }
    Ok(tunnels)
}

/// Runs the agent's own spec mapping on every tunnel, as `standalone` would: proposals,
/// identities, subnets, certificates and keys, addresses. `check` used to stop at the schema
/// and the secret files, and passed specs the agent then refused.
fn check_mapping(
    args: &StandaloneArgs,
    tunnels: &[strait_crds::IPsecTunnel],
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut refused = Vec::new();
    for t in tunnels {
        let name = t.metadata.name.clone().unwrap_or_default();
        let mut secrets = standalone::secrets::DirSecrets(&args.secrets_dir);
        let def = rt.block_on(spec::definition(
            name.clone(),
            t.spec.clone(),
            500,
            &mut secrets,
        ));
        if let Err(e) = def.peer {
            refused.push(format!("tunnel {name:?}: {} ({})", e.message, e.reason));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", refused.join("\n"))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "standalone".into())
}

fn run_standalone(args: &RunArgs) -> anyhow::Result<()> {
    let d = &args.daemon;
    init_logs(d.log_json);
    // refuse a broken file before anything binds
    check(&args.common)?;
    let opts = standalone::run::Options {
        config: args.common.config.clone(),
        secrets_dir: args.common.secrets_dir.clone(),
        dataplane: match args.common.dataplane {
            Dataplane::Kernel => dataplane::Kind::Kernel,
            Dataplane::None => dataplane::Kind::None,
        },
        status_socket: d.status_socket.clone(),
        ike_port: d.ike_port,
        natt_port: d.natt_port,
        ike_firewall: d.ike_firewall,
        node: args.node.clone().unwrap_or_else(hostname),
        metrics_addr: metrics::parse_addr(&d.metrics_addr).map_err(anyhow::Error::msg)?,
        lifetime_scale: args.test_lifetime_scale,
        state_dir: d.state_dir.clone(),
        nat_keepalive: nat_keepalive(&d.nat_keepalive)?,
        half_open: d.half_open_limits(),
    };
    runtime()?.block_on(standalone::run::run(opts))
}

/// `--nat-keepalive`: whole seconds, or `off`.
fn nat_keepalive(v: &str) -> anyhow::Result<Option<std::time::Duration>> {
    if v == "off" {
        return Ok(None);
    }
    v.parse::<u64>()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .map(|s| Some(std::time::Duration::from_secs(s)))
        .ok_or_else(|| {
            anyhow::anyhow!("--nat-keepalive {v:?}: whole seconds from 1 to 3600, or off")
        })
}

fn seconds(name: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{name} {v}: a positive number of seconds, please"))
}

fn run_cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    let d = &args.daemon;
    init_logs(d.log_json);
    let opts = cluster::Options {
        node: args.node.clone(),
        namespace: args.namespace.clone(),
        dataplane: match args.dataplane {
            Dataplane::Kernel => dataplane::Kind::Kernel,
            Dataplane::None => dataplane::Kind::None,
        },
        status_socket: Some(d.status_socket.clone()),
        ike_port: d.ike_port,
        natt_port: d.natt_port,
        ike_firewall: d.ike_firewall,
        lease_duration_seconds: args.lease_duration_seconds,
        restart_grace_seconds: args.restart_grace_seconds,
        pod: args.pod.clone().filter(|p| !p.is_empty()),
        renew_interval: seconds("renew-interval", args.renew_interval)?,
        status_interval: seconds("status-interval", args.status_interval)?,
        metrics_addr: metrics::parse_addr(&d.metrics_addr).map_err(anyhow::Error::msg)?,
        state_dir: d.state_dir.clone(),
        nat_keepalive: nat_keepalive(&d.nat_keepalive)?,
        half_open: d.half_open_limits(),
    };
    runtime()?.block_on(cluster::run(opts))
}

fn run_route(args: &RouteArgs) -> anyhow::Result<()> {
    init_logs(args.log_json);
    let mode = match args.mode {
        RouteMode::Direct => steering::Mode::Direct,
        RouteMode::Vxlan => {
            let cidr: strait_xfrm::Prefix = args
                .vxlan_cidr
                .parse()
                .map_err(|e| anyhow::anyhow!("--vxlan-cidr {:?}: {e}", args.vxlan_cidr))?;
            if cidr.family() != strait_xfrm::Family::V4 || !(8..=24).contains(&cidr.len()) {
                anyhow::bail!(
                    "--vxlan-cidr {}: an IPv4 prefix from /8 to /24, please",
                    args.vxlan_cidr
                );
            }
            if !(1..=0xFF_FFFF).contains(&args.vxlan_vni) {
                anyhow::bail!("--vxlan-vni {}: from 1 to 16777215", args.vxlan_vni);
            }
            steering::Mode::Vxlan(steering::Overlay {
                vni: args.vxlan_vni,
                port: args.vxlan_port,
                cidr,
            })
        }
    };
    let opts = steering::Options {
        node: args.node.clone(),
        mode,
        keep_on_exit: args.keep_on_exit,
        pod: args
            .pod
            .clone()
            .filter(|p| !p.is_empty())
            .map(|p| (args.namespace.clone(), p)),
    };
    runtime()?.block_on(steering::run(opts))
}

/// Exits non-zero when neither port answered, so scripts can test reachability alone.
fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let proposals = if args.ike_proposals.is_empty() {
        strait_ike::proposal::default_ike()
    } else {
        strait_ike::proposal::parse_ike_list(&args.ike_proposals)
            .map_err(|e| anyhow::anyhow!("--ike-proposal: {e}"))?
    };
    let remote = probe::resolve(&args.remote)?;
    let target = probe::Target {
        remote,
        local: args.local,
        ike_port: args.ike_port,
        natt_port: args.natt_port,
        proposals,
        timeout: seconds("timeout", args.timeout)?,
    };
    let results = probe::run(&target);
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    } else {
        print!("{}", probe::render(remote, &results));
    }
    if results.iter().any(|r| r.outcome.answered()) {
        Ok(())
    } else {
        anyhow::bail!(
            "{remote} did not answer IKE on UDP {} or {}",
            args.ike_port,
            args.natt_port
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check(args) => check(args).and_then(|tunnels| {
            check_mapping(args, &tunnels)?;
            for t in &tunnels {
                println!(
                    "{}: {} -> {} ({}), initiation {:?}",
                    t.metadata.name.as_deref().unwrap_or_default(),
                    t.spec.local.id,
                    t.spec.remote.id,
                    t.spec.remote.address,
                    t.spec.initiation
                );
            }
            println!("{} tunnel(s), config and secrets OK", tunnels.len());
            Ok(())
        }),
        Command::Standalone(args) => run_standalone(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Route(args) => run_route(args),
        Command::Probe(args) => probe(args),
        Command::Status(args) => runtime().and_then(|rt| {
            let s = rt.block_on(status::query(&args.status_socket))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `strait-agent standalone` with a config, a secrets dir and `extra` flags.
    fn standalone(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec![
            "strait-agent",
            "standalone",
            "--config",
            "c.yaml",
            "--secrets-dir",
            "s",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Standalone(a) => Ok(a),
            _ => panic!("not standalone"),
        }
    }

    #[test]
    fn nat_keepalive_takes_seconds_or_off_and_names_itself_otherwise() {
        assert_eq!(
            nat_keepalive("20").unwrap(),
            Some(std::time::Duration::from_secs(20))
        );
        assert_eq!(nat_keepalive("off").unwrap(), None);
        for bad in ["0", "-5", "1.5", "3601", "20s", ""] {
            let e = nat_keepalive(bad).unwrap_err().to_string();
            assert!(e.contains("--nat-keepalive"), "{bad}: {e}");
        }
        // the flag reaches the parser with its default
        assert_eq!(standalone(&[]).unwrap().daemon.nat_keepalive, "20");
    }

    #[test]
    fn half_open_limits_default_as_strongswan_and_refuse_zero_per_address() {
        let limits = standalone(&[]).unwrap().daemon.half_open_limits();
        assert_eq!((limits.per_address, limits.total), (5, None));
        let limits = standalone(&["--block-threshold", "12", "--init-limit-half-open", "1000"])
            .unwrap()
            .daemon
            .half_open_limits();
        assert_eq!((limits.per_address, limits.total), (12, Some(1000)));
        let e = standalone(&["--block-threshold", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--block-threshold"), "{e}");
    }
}
