//! `strait-agent standalone`: tunnels from a file, the driver, the status socket, signals
//! (SIGHUP reloads, SIGTERM/SIGINT delete every IKE SA and exit).

use std::net::SocketAddr;
use std::path::PathBuf;

use strait_crds::IPsecTunnel;
use strait_crds::contract::StatusReason;
use strait_ike::EndpointConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::dataplane::netfilter::IkeGuard;
use crate::dataplane::{Dataplane, KernelDataplane, Kind, NoDataplane};
use crate::driver::{Command, Driver, Settings, Stop};
use crate::spec;
use crate::spec::TunnelDef;
use crate::standalone::config;
use crate::standalone::secrets::DirSecrets;
use crate::status;

/// The options of `strait-agent standalone`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The IPsecTunnel file.
    pub config: PathBuf,
    /// The secrets directory.
    pub secrets_dir: PathBuf,
    /// Kernel or none.
    pub dataplane: Kind,
    /// Where status is served.
    pub status_socket: PathBuf,
    /// Our IKE port.
    pub ike_port: u16,
    /// Our NAT-T port.
    pub natt_port: u16,
    /// With the kernel data plane: IKE and ESP only from the tunnels' peers.
    pub ike_firewall: bool,
    /// The node name reported in status.
    pub node: String,
    /// Where metrics are served (`None`: not at all).
    pub metrics_addr: Option<SocketAddr>,
    /// For tests only: SA lifetimes scaled by this factor.
    pub lifetime_scale: Option<f64>,
    /// Where IKE state is saved for the next agent process (`--state-dir`).
    pub state_dir: Option<PathBuf>,
    /// `EndpointConfig::nat_keepalive` (`--nat-keepalive`).
    pub nat_keepalive: Option<std::time::Duration>,
    /// When IKE_SA_INIT requests are dropped for too many half-open IKE SAs.
    pub half_open: crate::driver::HalfOpenLimits,
}

/// Loads the file and its secrets into driver definitions. A tunnel whose secret or addresses
/// cannot be had still gets a definition (with the error), so status shows it.
///
/// # Errors
/// The file itself is unreadable or invalid.
pub async fn definitions(opts: &Options, kind: Kind) -> anyhow::Result<Vec<TunnelDef>> {
    let tunnels = config::load(&opts.config)?;
    Ok(build(opts, kind, &tunnels).await)
}

async fn build(opts: &Options, kind: Kind, tunnels: &[IPsecTunnel]) -> Vec<TunnelDef> {
    let mut out = Vec::new();
    for t in tunnels {
        out.push(definition(opts, kind, t.clone()).await);
    }
    out
}

/// How many tunnels could not start because their peer's address did not resolve.
fn unresolved(defs: &[TunnelDef]) -> usize {
    defs.iter()
        .filter(|d| {
            d.peer
                .as_ref()
                .is_err_and(|e| e.reason == StatusReason::AddressUnresolved)
        })
        .count()
}

/// While a tunnel's peer name does not resolve (DNS not up yet at boot, a typo being fixed in
/// DNS), the loaded config is mapped again this often; the file is read only on SIGHUP.
const UNRESOLVED_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

async fn definition(opts: &Options, _kind: Kind, t: IPsecTunnel) -> TunnelDef {
    let name = t.metadata.name.clone().unwrap_or_default();
    spec::definition(
        name,
        t.spec,
        opts.ike_port,
        &mut DirSecrets(&opts.secrets_dir),
    )
    .await
}

/// Runs standalone mode until SIGTERM/SIGINT.
///
/// # Errors
/// The config is invalid at start, or the status socket cannot be bound.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    match opts.dataplane {
        Kind::None => run_with(opts, NoDataplane::default()).await,
        Kind::Kernel => {
            let guard = IkeGuard::when(opts.ike_firewall, opts.ike_port, opts.natt_port);
            run_with(opts, KernelDataplane::open().guard_ike(guard)).await
        }
    }
}

async fn run_with<D: Dataplane + 'static>(opts: Options, dp: D) -> anyhow::Result<()> {
    let kind = dp.kind();
    let mut loaded = config::load(&opts.config)?;
    let defs = build(&opts, kind, &loaded).await;
    let mut pending = unresolved(&defs);
    let listener = status::bind(&opts.status_socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot serve status at {}: {e}",
            opts.status_socket.display()
        )
    })?;
    let _socket_file = status::SocketFile(opts.status_socket.clone());
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
    tokio::spawn(status::serve(listener, status_tx));
    tracing::info!(
        tunnels = defs.len(),
        dataplane = kind.as_str(),
        status_socket = %opts.status_socket.display(),
        "standalone agent starting"
    );
    let config_path = opts.config.clone();
    let metrics_addr = opts.metrics_addr;
    let opts_lifetime_scale = opts.lifetime_scale;
    let signals = tokio::spawn(async move {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut tick = tokio::time::interval(UNRESOLVED_RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!(config = %config_path.display(), "SIGHUP: reloading");
                    match config::load(&opts.config) {
                        Ok(tunnels) => {
                            loaded = tunnels;
                            let defs = build(&opts, kind, &loaded).await;
                            pending = unresolved(&defs);
                            if cmd_tx.send(Command::Reload(defs)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "reload refused; keeping the running tunnels"),
                    }
                }
                _ = tick.tick(), if pending > 0 => {
                    let defs = build(&opts, kind, &loaded).await;
                    let now = unresolved(&defs);
                    if now < pending {
                        tracing::info!(resolved = pending - now, "peer addresses resolve now: starting those tunnels");
                        if cmd_tx.send(Command::Reload(defs)).await.is_err() {
                            return;
                        }
                    }
                    pending = now;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping");
        let (done_tx, done_rx) = oneshot::channel();
        if cmd_tx
            .send(Command::Shutdown(Stop::Restart, done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    });
    let mut driver = Driver::new(settings, dp).with_lifetime_scale(opts_lifetime_scale);
    if let Some(addr) = metrics_addr {
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
    // The driver owns the endpoint (not `Sync`), so it runs on this task rather than a spawned one.
    driver.run(defs, cmd_rx, status_rx).await;
    signals.abort();
    Ok(())
}
