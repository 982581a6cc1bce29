//! `strait-agent`: the per-node daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use strait_agent::standalone;

#[derive(Parser, Debug)]
#[command(version, about = "Strait's per-node IPsec agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run tunnels from a YAML file of IPsecTunnel documents, without Kubernetes.
    Standalone(StandaloneArgs),
    /// Check a standalone config and its secrets, print what would run, and exit.
    Check(StandaloneArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check(args) => check(args).map(|tunnels| {
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
        }),
        Command::Standalone(args) => check(args).and_then(|_| {
            anyhow::bail!(
                "config OK, but this build has no IKE driver yet: negotiation with {:?} data plane is not implemented",
                args.dataplane
            )
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
