//! `strait-agent route`: the role on every node that steers the tunnels' remote subnets to
//! each tunnel's active gateway, so pods on any node reach the remote site (as Submariner's
//! route agent does).
//!
//! - watches `IPsecTunnel`s (remote subnets, `status.activeGateway`) and Nodes (internal
//!   addresses); every change recomputes the [`plan`] and applies it at once, so a failover is
//!   followed as soon as the operator writes the new `activeGateway`;
//! - `vxlan` mode (the default) keeps a VXLAN device [`plan::DEVICE`] on every node and routes
//!   the remote subnets over it to the gateway; `direct` routes them via the gateway's
//!   internal address (nodes on one segment);
//! - subnets whose tunnel has no gateway are refused with `unreachable` routes instead of
//!   leaving by the default route in clear;
//! - traffic from a steered tunnel's local to its remote subnets is exempt from the node's
//!   masquerade (nftables table `inet strait_route`), so the gateway sees the pod's address;
//! - on SIGTERM/SIGINT everything it added is removed, except when a replacement follows on
//!   this node (its pod is being deleted while the `strait-route` DaemonSet stays: a rolling
//!   update, [`crate::cluster::succession`]) or with `--keep-on-exit`: then it stays for the
//!   next process, which adopts it, so pods' traffic never takes the default route in clear
//!   while no route role runs.
//!
//! `plan.rs` is the pure computation, `netlink.rs` the kernel side.

pub mod netlink;
pub mod plan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use strait_crds::{IPsecTunnel, contract};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::cluster::{drive, succession};
pub use netlink::Steering;
pub use plan::{Mode, Overlay, Plan, TunnelView};

/// The plan is applied again this often even without a change (someone removed a route).
const RESYNC: Duration = Duration::from_secs(30);
/// After a failed apply, try again this soon.
const RETRY: Duration = Duration::from_secs(2);

/// The options of `strait-agent route`.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name.
    pub node: String,
    /// VXLAN or direct.
    pub mode: Mode,
    /// Leave routes and the device in place on exit.
    pub keep_on_exit: bool,
    /// This process's pod and its namespace, if known: a stop while the pod is being deleted
    /// and the route DaemonSet stays leaves the steering for the replacement.
    pub pod: Option<(String, String)>,
}

/// The node's internal IPv4 address, as the kubelet reports it.
pub fn internal_ipv4(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })
}

/// The steering view of one tunnel.
pub fn view(t: &IPsecTunnel) -> TunnelView {
    TunnelView {
        key: format!(
            "{}/{}",
            t.metadata.namespace.as_deref().unwrap_or_default(),
            t.metadata.name.as_deref().unwrap_or_default()
        ),
        local_subnets: t.spec.local.subnets.clone(),
        remote_subnets: t.spec.remote.subnets.clone(),
        gateway: t
            .status
            .as_ref()
            .and_then(|s| s.active_gateway.clone())
            .filter(|g| !g.is_empty()),
    }
}

fn current_plan(opts: &Options, tunnels: &Store<IPsecTunnel>, nodes: &Store<Node>) -> Plan {
    let views: Vec<TunnelView> = tunnels.state().iter().map(|t| view(t)).collect();
    let addresses: BTreeMap<String, Ipv4Addr> = nodes
        .state()
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, internal_ipv4(n)?)))
        .collect();
    plan::plan(&opts.node, opts.mode, &views, &addresses)
}

/// Runs the route role until SIGTERM/SIGINT.
///
/// # Errors
/// No Kubernetes client, no rtnetlink, or a watch cache that never fills.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot build a Kubernetes client (KUBECONFIG, or in-cluster config): {e}")
    })?;
    let overlay = match opts.mode {
        Mode::Vxlan(o) => o,
        Mode::Direct => Overlay::default(),
    };
    let api = client.clone();
    let mut steering = Steering::open(overlay).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let wake = Arc::new(Notify::new());
    let (tunnels, tw) = reflector::store::<IPsecTunnel>();
    let (nodes, nw) = reflector::store::<Node>();
    let backoff = strait_crds::watch::WatchBackoff::default;
    let tunnel_watch = tokio::spawn(drive(
        "ipsectunnels",
        reflector::reflector(
            tw,
            watcher(
                Api::<IPsecTunnel>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .backoff(backoff()),
        Arc::clone(&wake),
    ));
    let node_watch = tokio::spawn(drive(
        "nodes",
        reflector::reflector(
            nw,
            watcher(Api::<Node>::all(client), watcher::Config::default()),
        )
        .backoff(backoff()),
        Arc::clone(&wake),
    ));
    tracing::info!(node = %opts.node, mode = ?opts.mode, "route role starting");
    let stopped = tokio::select! {
        r = async { tokio::try_join!(tunnels.wait_until_ready(), nodes.wait_until_ready()) } => {
            r.map_err(|e| anyhow::anyhow!("watch cache: {e}"))?;
            false
        }
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    if !stopped {
        let mut applied: Option<Plan> = None;
        let mut next = tokio::time::Instant::now();
        loop {
            let plan = current_plan(&opts, &tunnels, &nodes);
            let due = tokio::time::Instant::now() >= next;
            if applied.as_ref() != Some(&plan) || due {
                if applied.as_ref().map(|p| &p.problems) != Some(&plan.problems) {
                    for p in &plan.problems {
                        tracing::warn!(problem = %p, "cannot steer as asked");
                    }
                }
                match steering.apply(&plan).await {
                    Ok(()) => {
                        if applied.as_ref().map(|p| &p.routes) != Some(&plan.routes) {
                            tracing::info!(
                                routes = plan.routes.len(),
                                gateways = plan.peers().len(),
                                "steering updated"
                            );
                        }
                        applied = Some(plan);
                        next = tokio::time::Instant::now() + RESYNC;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot steer the remote subnets");
                        applied = None;
                        next = tokio::time::Instant::now() + RETRY;
                    }
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    }
    tunnel_watch.abort();
    node_watch.abort();
    if opts.keep_on_exit {
        tracing::info!("stopped; steering left in place (--keep-on-exit)");
        return Ok(());
    }
    if let Some((namespace, pod)) = &opts.pod
        && succession::replacement_follows(api, namespace, pod, contract::ROUTE_DAEMONSET).await
    {
        tracing::info!("stopping for a restart: steering left in place for the replacement");
        return Ok(());
    }
    steering
        .remove_all()
        .await
        .map_err(|e| anyhow::anyhow!("removing the steering state: {e}"))?;
    tracing::info!("stopped; steering removed");
    Ok(())
}
