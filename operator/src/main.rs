//! `strait-operator run`: the controller process.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use strait_operator::controller::{self, Settings};
use strait_operator::daemonset::{AgentTemplate, LogFormat, LogLevel, PodOptions};
use strait_operator::leader::{self, Elector};
use strait_operator::metrics::{self, Metrics};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "strait-operator",
    version,
    about = "The Strait IPsec tunnel operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// After `helm uninstall` (the chart's post-delete hook): remove the operator's finalizers
    /// from every tunnel, and the Leases and agent DaemonSet made at run time.
    Uninstall(UninstallArgs),
}

#[derive(Debug, clap::Args)]
struct UninstallArgs {
    /// The operator's namespace.
    #[arg(long, env = "STRAIT_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// How long to wait for the operator's pods to be gone first.
    #[arg(long, default_value = "120s")]
    wait: strait_crds::Duration,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The operator's namespace: heartbeat and leader Leases, Secrets, the agent DaemonSet.
    #[arg(long, env = "STRAIT_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// Where /metrics is served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Where /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// Reconcile only while holding the Lease `strait-operator-leader` (for several replicas).
    #[arg(long)]
    leader_election: bool,
    /// How long one renewal of the leader Lease holds it.
    #[arg(long, default_value = "15s")]
    leader_election_lease_duration: strait_crds::Duration,
    /// How often the leader renews, and a standby retries.
    #[arg(long, default_value = "5s")]
    leader_election_renew_interval: strait_crds::Duration,
    /// This replica's identity (defaults to the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a deleted tunnel waits for its agents to confirm removal.
    #[arg(long, default_value = "60s")]
    deletion_timeout: strait_crds::Duration,
    /// Manage the agent DaemonSet `strait-agent` (off: it is deployed some other way).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    manage_agent_daemonset: bool,
    /// The agent image.
    #[arg(long, env = "STRAIT_AGENT_IMAGE", default_value = concat!("localhost/strait-agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// The agent image's pull policy.
    #[arg(long, default_value = "IfNotPresent")]
    agent_image_pull_policy: String,
    /// One argument of the agent container (repeat; default `cluster`).
    #[arg(long = "agent-arg")]
    agent_args: Vec<String>,
    /// The agent's ServiceAccount.
    #[arg(long, default_value = "strait-agent")]
    agent_service_account: String,
    /// The agents' log level (their `RUST_LOG`).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    agent_log_level: LogLevel,
    /// The agents' log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    agent_log_format: LogFormat,
    /// Pod settings of the agent as JSON, typed like the Kubernetes fields they fill:
    /// `{"resources", "priorityClassName", "tolerations", "nodeSelector", "imagePullSecrets"}`,
    /// each optional (the chart renders this from its `agent.*` values).
    #[arg(long, value_parser = PodOptions::parse, default_value = "{}")]
    agent_pod_options: PodOptions,
    /// A host directory (keep it on tmpfs, e.g. under `/run`) where the agents save their IKE
    /// state so that a restarted or upgraded agent resumes its tunnels without renegotiating;
    /// empty: every agent restart renegotiates (see docs/security.md).
    #[arg(long, default_value = "/run/strait-agent", value_parser = host_dir)]
    agent_state_dir: String,
    /// The Deployment in `--namespace` that owns the agent DaemonSet, so that deleting it
    /// (`helm uninstall`) garbage-collects the DaemonSet. Unset: the DaemonSet has no owner.
    #[arg(long)]
    owner_deployment: Option<String>,
    /// This process's own log format.
    #[arg(long, value_enum, env = "STRAIT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn init_logs(format: LogFormat) {
    let b = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,kube=warn".into()),
    );
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(match &cli.command {
        Command::Run(args) => args.log_format,
        Command::Uninstall(_) => LogFormat::Text,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => rt.block_on(run(*args)),
        Command::Uninstall(args) => rt.block_on(uninstall(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let r = strait_operator::uninstall::run(client, &args.namespace, args.wait.as_std()).await?;
    tracing::info!(
        finalizers_removed = r.finalizers,
        leases_deleted = r.leases,
        daemonset_deleted = r.daemonset,
        "uninstalled"
    );
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "strait-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    for (addr, health) in [(args.metrics_addr, false), (args.health_addr, true)] {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, health).await {
                tracing::error!(%addr, error = %e, "HTTP server failed");
            }
        });
    }
    client
        .apiserver_version()
        .await
        .context("the Kubernetes API server is not reachable")?;
    metrics.set_ready();

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        let _ = stop_tx.send(true);
    });

    let mut elector = None;
    if args.leader_election {
        let api: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
        let mut e = Elector::new(
            api,
            leader::Config {
                identity: identity.clone(),
                lease_duration: args.leader_election_lease_duration.as_std(),
                renew_interval: args.leader_election_renew_interval.as_std(),
            },
        );
        tracing::info!(%identity, lease = leader::LEASE_NAME, "waiting to become leader");
        loop {
            match e.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "leader election attempt failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(e.config().renew_interval) => {}
                _ = stop_rx.changed() => return Ok(()),
            }
        }
        tracing::info!(%identity, "became leader");
        elector = Some(e);
    }
    metrics.leader.set(1);

    // The leader renews in the background; if it cannot renew before its Lease could have been
    // taken over, it stops reconciling and exits so that only one replica ever acts.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let releaser = elector.clone();
    let renewer = elector.map(|mut e| {
        tokio::spawn(async move {
            let deadline = e.config().lease_duration.mul_f32(2.0 / 3.0);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(e.config().renew_interval).await;
                match e.try_acquire_or_renew().await {
                    Ok(true) => last = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("another replica took the leader Lease");
                        let _ = lost_tx.send(true);
                        return e;
                    }
                    Err(err) => tracing::warn!(error = %err, "renewing the leader Lease failed"),
                }
                if last.elapsed() > deadline {
                    tracing::error!("could not renew the leader Lease in time");
                    let _ = lost_tx.send(true);
                    return e;
                }
            }
        })
    });

    let settings = Settings {
        namespace: args.namespace.clone(),
        deletion_timeout: args.deletion_timeout.as_std(),
        agent: args.manage_agent_daemonset.then(|| AgentTemplate {
            image: args.agent_image.clone(),
            image_pull_policy: args.agent_image_pull_policy.clone(),
            args: if args.agent_args.is_empty() {
                vec!["cluster".to_owned()]
            } else {
                args.agent_args.clone()
            },
            service_account: args.agent_service_account.clone(),
            log_level: args.agent_log_level,
            log_format: args.agent_log_format,
            pod: args.agent_pod_options.clone(),
            state_host_path: Some(args.agent_state_dir.clone()).filter(|d| !d.is_empty()),
        }),
        owner_deployment: args.owner_deployment.clone().filter(|n| !n.is_empty()),
        identity,
        // controller-runtime's cache sync timeout is 2 min; a leader must fail over sooner
        cache_sync_timeout: args
            .leader_election
            .then_some(std::time::Duration::from_secs(30)),
    };
    let mut stop_rx2 = stop_rx.clone();
    let shutdown = async move {
        // A closed channel (no leader election, so nothing to lose) must not stop the controller.
        let stop = async {
            if stop_rx2.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let lost = async {
            if lost_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = stop => {}
            () = lost => {}
        }
    };
    tracing::info!(namespace = %settings.namespace, "starting the IPsecTunnel controller");
    controller::run(client, settings, metrics.clone(), shutdown).await;
    metrics.leader.set(0);

    if let Some(task) = renewer {
        let lost = task.is_finished();
        task.abort();
        if lost {
            anyhow::bail!("lost leadership; exiting so that only one replica reconciles");
        }
        // Hand over at once on a clean shutdown.
        if let Some(Err(err)) = match &releaser {
            Some(e) => Some(e.release().await),
            None => None,
        } {
            tracing::warn!(error = %err, "releasing the leader Lease failed");
        }
    }
    let _ = stop_rx.borrow_and_update();
    Ok(())
}

/// `--agent-state-dir`: empty, or an absolute host path (a hostPath volume must be one).
fn host_dir(s: &str) -> Result<String, String> {
    if s.is_empty() || (s.starts_with('/') && !s.split('/').any(|c| c == "..")) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an absolute path without `..` (or empty: off)"
        ))
    }
}
