//! `strait-agent cluster`: the agent on a gateway node of a Kubernetes cluster.
//!
//! - renews its heartbeat Lease `strait-agent-<node>` (the operator's liveness contract,
//!   [`strait_crds::heartbeat::renew`]);
//! - watches `IPsecTunnel`s and runs exactly those whose `status.activeGateway` is this node (the
//!   operator elects), with the Secrets they name from the operator's namespace, through the
//!   same spec → peer mapping ([`crate::spec`]) and the same driver as standalone mode;
//! - writes its own `status.gateways[]` entry with server-side apply under `strait-agent/<node>`,
//!   on change and at most once per `--status-interval` per tunnel;
//! - a changed spec restarts that tunnel, a changed Secret alone reauthenticates it in place
//!   (make-before-break, [`crate::driver`]); losing the active role or a deletion removes
//!   it from the driver (DELETE to the peer, kernel objects removed) and then clears the entry;
//! - on SIGTERM with `--state-dir`, when its pod is being deleted while the agent DaemonSet stays
//!   (a rolling update, `kubectl delete pod`), it stops for a restart: SAs, kernel objects and
//!   entries stay for the replacement pod, which resumes them, and the Lease is renewed once for
//!   `--restart-grace-seconds`; any other stop deletes the SAs and releases the Lease.
//!
//! This file wires the parts and renews the Lease; `controller.rs` is the control loop,
//! `report.rs` when to write the entry, `secrets.rs` where Secrets are read from.

mod controller;
pub mod report;
pub mod secrets;
pub mod succession;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use strait_crds::heartbeat;
use strait_ike::EndpointConfig;
use tokio::sync::mpsc;

use crate::dataplane::netfilter::IkeGuard;
use crate::dataplane::{Dataplane, KernelDataplane, Kind, NoDataplane};
use crate::driver::{Driver, Settings, Stop};
use crate::status;
use controller::Controller;
pub(crate) use controller::drive;

/// The options of `strait-agent cluster`.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name: the list-map key of its status entry and its Lease's holder.
    pub node: String,
    /// The operator's namespace (Secrets and heartbeat Leases).
    pub namespace: String,
    /// Kernel or none.
    pub dataplane: Kind,
    /// Where status is also served locally (`strait-agent status`); `None`: not served.
    pub status_socket: Option<PathBuf>,
    /// Our IKE port.
    pub ike_port: u16,
    /// Our NAT-T port.
    pub natt_port: u16,
    /// With the kernel data plane: IKE and ESP only from the tunnels' peers.
    pub ike_firewall: bool,
    /// How long one heartbeat renewal keeps this agent alive in the operator's eyes.
    pub lease_duration_seconds: i32,
    /// How long the heartbeat stays valid after a stop for a restart.
    pub restart_grace_seconds: i32,
    /// This agent's pod, if known: whether it is being deleted tells a restart from a stop.
    pub pod: Option<String>,
    /// How often the heartbeat is renewed.
    pub renew_interval: Duration,
    /// At most one status write per tunnel per this interval.
    pub status_interval: Duration,
    /// Where Prometheus metrics are served (`None`: not at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where IKE state is saved for the next agent process (`--state-dir`).
    pub state_dir: Option<std::path::PathBuf>,
    /// `EndpointConfig::nat_keepalive` (`--nat-keepalive`).
    pub nat_keepalive: Option<std::time::Duration>,
    /// When IKE_SA_INIT requests are dropped for too many half-open IKE SAs.
    pub half_open: crate::driver::HalfOpenLimits,
}

/// Runs cluster mode until SIGTERM/SIGINT.
///
/// # Errors
/// No Kubernetes client can be built, or the options contradict each other.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.lease_duration_seconds < 1
        || opts.renew_interval
            >= Duration::from_secs(opts.lease_duration_seconds.unsigned_abs().into())
    {
        anyhow::bail!(
            "--renew-interval ({:?}) must be shorter than --lease-duration-seconds ({})",
            opts.renew_interval,
            opts.lease_duration_seconds
        );
    }
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot build a Kubernetes client (KUBECONFIG, or in-cluster config): {e}")
    })?;
    match opts.dataplane {
        Kind::None => run_with(opts, client, NoDataplane::default()).await,
        Kind::Kernel => {
            let guard = IkeGuard::when(opts.ike_firewall, opts.ike_port, opts.natt_port);
            run_with(opts, client, KernelDataplane::open().guard_ike(guard)).await
        }
    }
}

async fn run_with<D: Dataplane + 'static>(
    opts: Options,
    client: Client,
    dp: D,
) -> anyhow::Result<()> {
    let settings = Settings {
        node: opts.node.clone(),
        endpoint: EndpointConfig {
            ike_port: opts.ike_port,
            natt_port: opts.natt_port,
            nat_keepalive: opts.nat_keepalive,
            block_threshold_per_ip: opts.half_open.per_address,
            half_open_limit: opts.half_open.total,
            // the tunnel chosen, the selectors, each dropped datagram: only when they are logged
            diagnostics: tracing::enabled!(target: "strait_agent::driver", tracing::Level::DEBUG),
            ..EndpointConfig::default()
        },
        state_dir: opts.state_dir.clone(),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (status_tx, status_rx) = mpsc::channel(16);
    let _socket_file = match &opts.status_socket {
        Some(path) => match status::bind(path) {
            Ok(listener) => {
                tokio::spawn(status::serve(listener, status_tx.clone()));
                Some(status::SocketFile(path.clone()))
            }
            Err(e) => {
                // status is in the API anyway; the local socket is a convenience
                tracing::warn!(path = %path.display(), error = %e, "cannot serve local status");
                None
            }
        },
        None => None,
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    tracing::info!(
        node = %opts.node,
        namespace = %opts.namespace,
        dataplane = dp.kind().as_str(),
        "cluster agent starting"
    );
    let beat = tokio::spawn(heartbeat_loop(
        leases.clone(),
        opts.node.clone(),
        opts.lease_duration_seconds,
        opts.renew_interval,
    ));
    let controller =
        Controller::new(&opts, client, cmd_tx, status_tx).with_heartbeat(beat.abort_handle());
    let control = tokio::spawn(controller.run());
    let mut driver = Driver::new(settings, dp);
    if let Some(addr) = opts.metrics_addr {
        // a busy port must not take the tunnels down: say so and run without metrics
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let (scrape_tx, scrape_rx) = mpsc::channel(4);
                tokio::spawn(crate::metrics::serve(l, scrape_tx));
                tracing::info!(%addr, "serving metrics");
                driver = driver.with_metrics(scrape_rx);
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot serve metrics"),
        }
    }
    // The driver owns the endpoint (not `Sync`), so it runs on this task. It stops when the
    // controller sends Shutdown (SIGTERM) or goes away (its command sender dropped).
    driver.run(Vec::new(), cmd_rx, status_rx).await;
    let result = match control.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the cluster controller task failed: {e}")),
    };
    beat.abort();
    // a stop for good: the controller released the Lease; again, in case it could not
    if !matches!(result, Ok(Stop::Restart))
        && let Err(e) = heartbeat::release(&leases, &opts.node).await
    {
        tracing::warn!(error = %e, "could not release the heartbeat Lease on stop");
    }
    tracing::info!("stopped");
    result.map(|_| ())
}

async fn heartbeat_loop(leases: Api<Lease>, node: String, secs: i32, every: Duration) {
    let mut failing = false;
    loop {
        match heartbeat::renew(&leases, &node, secs).await {
            Ok(()) => {
                if failing {
                    tracing::info!("heartbeat Lease renewed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, lease = %heartbeat::lease_name(&node), "cannot renew the heartbeat Lease");
                }
                failing = true;
            }
        }
        tokio::time::sleep(every).await;
    }
}
