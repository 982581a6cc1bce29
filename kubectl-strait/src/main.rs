//! `kubectl strait`: see the crate documentation. kubectl runs this binary for `kubectl strait
//! ...` when it is on `$PATH` as `kubectl-strait`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kubectl_strait::peer_config::{ClusterSide, Flavor, SecretSource};
use kubectl_strait::{diagnose, facts, gather, peer_config, status};
use strait_crds::IPsecTunnel;

/// Strait's IPsec tunnels: status, diagnosis, the remote site's config, a support archive.
#[derive(Parser, Debug)]
#[command(name = "kubectl strait", version)]
struct Cli {
    /// The namespace Strait's operator runs in (where the tunnels' Secrets and the agents are).
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value = "strait-system",
        env = "STRAIT_NAMESPACE"
    )]
    namespace: String,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every tunnel's IKE and CHILD SAs across its gateways, like `swanctl --list-sas`.
    Status {
        /// Only this tunnel.
        tunnel: Option<String>,
    },
    /// Why a tunnel is not Ready, and what to do next. Exits 1 when it finds a problem.
    Diagnose {
        /// The tunnel.
        tunnel: String,
        /// Do not send the IKE_SA_INIT probe to the peer from the gateway (it needs pods/exec
        /// and leaves a half-open IKE SA on the peer until the peer's timeout).
        #[arg(long)]
        no_probe: bool,
    },
    /// The remote site's configuration for a tunnel (no secrets: the PSK line says how to fill
    /// it in).
    PeerConfig {
        /// The tunnel.
        tunnel: String,
        /// The remote site's IKE daemon.
        #[arg(long = "for", value_enum, default_value = "strongswan")]
        flavor: Flavor,
        /// Read the tunnel from a standalone agent's config file instead of the cluster (no
        /// API server needed).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --config: the agent's --secrets-dir, for the command that prints the PSK.
        #[arg(
            long,
            value_name = "DIR",
            requires = "config",
            default_value = "/etc/strait/secrets"
        )]
        secrets_dir: PathBuf,
    },
    /// Tunnels, nodes, the operator's namespace, Events and logs into one .tar.gz (no Secrets).
    Gather {
        /// Where to write it (default: strait-gather-<time>.tar.gz in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

async fn client(context: Option<&str>) -> Result<Client> {
    let config = match context {
        Some(ctx) => {
            let opts = KubeConfigOptions {
                context: Some(ctx.to_owned()),
                ..KubeConfigOptions::default()
            };
            Config::from_custom_kubeconfig(Kubeconfig::read()?, &opts).await?
        }
        None => Config::infer().await?,
    };
    Client::try_from(config).context("creating the API client")
}

/// `peer-config --config FILE`: the tunnel named `tunnel` among the file's documents, with the
/// addresses the file gives (`spec.local.address`).
fn peer_config_from_file(
    file: &std::path::Path,
    secrets_dir: PathBuf,
    tunnel: &str,
    flavor: Flavor,
) -> Result<ExitCode> {
    let tunnels = strait_agent::standalone::config::load(file)?;
    let Some(t) = tunnels
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(tunnel))
    else {
        let names: Vec<&str> = tunnels
            .iter()
            .filter_map(|t| t.metadata.name.as_deref())
            .collect();
        anyhow::bail!(
            "{} has no tunnel named {tunnel:?} (it has {})",
            file.display(),
            names.join(", ")
        );
    };
    let side = ClusterSide {
        secrets: SecretSource::Dir(secrets_dir),
        addresses: facts::cluster_addresses(t, &[]),
    };
    let text = peer_config::render(t, &side, flavor)
        .map_err(|e| anyhow::anyhow!("tunnel {tunnel:?} of {}: {e}", file.display()))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::PeerConfig {
        tunnel,
        flavor,
        config: Some(file),
        secrets_dir,
    } = cli.command
    {
        return peer_config_from_file(&file, secrets_dir, &tunnel, flavor);
    }
    let client = client(cli.context.as_deref()).await?;
    match cli.command {
        Command::Status { tunnel } => {
            let api = Api::<IPsecTunnel>::all(client);
            let tunnels = match tunnel {
                Some(name) => vec![
                    api.get(&name)
                        .await
                        .with_context(|| format!("reading IPsecTunnel {name:?}"))?,
                ],
                None => {
                    api.list(&ListParams::default())
                        .await
                        .context("listing IPsecTunnels")?
                        .items
                }
            };
            print!(
                "{}",
                status::render(&tunnels, k8s_openapi::jiff::Timestamp::now())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Diagnose { tunnel, no_probe } => {
            let f = facts::collect(&client, &cli.namespace, &tunnel, !no_probe).await?;
            let report = diagnose::diagnose(&f);
            print!("{}", report.render());
            Ok(if report.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::PeerConfig { tunnel, flavor, .. } => {
            let f = facts::collect(&client, &cli.namespace, &tunnel, false).await?;
            let side = ClusterSide {
                secrets: SecretSource::Namespace(cli.namespace.clone()),
                addresses: facts::cluster_addresses(&f.tunnel, &f.candidates),
            };
            let text = peer_config::render(&f.tunnel, &side, flavor)
                .map_err(|e| anyhow::anyhow!("IPsecTunnel {tunnel:?}: {e}"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Gather { output } => {
            let out = output.unwrap_or_else(|| {
                let t = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
                PathBuf::from(format!("strait-gather-{t}.tar.gz"))
            });
            let files = gather::gather(&client, &cli.namespace, &out).await?;
            println!("wrote {} ({} files)", out.display(), files.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
