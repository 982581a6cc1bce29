//! `--dataplane none`: negotiates everything, installs nothing, records what it would have
//! installed (for kernels without ESP, for diagnosis, and for tests).

use std::collections::BTreeMap;

use strait_ike::codec::TsRange;
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, ChildSaResumed};
use tokio::net::UdpSocket;

use super::{Dataplane, Kind};
use crate::error::TunnelError;
use crate::notation::{esp_name, ts_string};

/// A CHILD SA as the `none` data plane recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The tunnel index.
    pub tunnel: u32,
    /// Inbound SPI.
    pub spi_in: u32,
    /// Outbound SPI.
    pub spi_out: u32,
    /// What would have been installed, in words.
    pub summary: String,
}

/// Installs nothing; records what would have been installed.
#[derive(Debug, Default)]
pub struct NoDataplane {
    /// The CHILD SAs that would be in the kernel now.
    pub installed: BTreeMap<ChildSaId, Recorded>,
}

fn summary(sa: &ChildSaInstall) -> String {
    let ts = |v: &[TsRange]| v.iter().map(ts_string).collect::<Vec<_>>().join(",");
    format!(
        "{} {} -> {} in {:?} out {:?} {} === {}{}",
        esp_name(sa.encr, sa.integ),
        sa.local_addr,
        sa.remote_addr,
        sa.spi_in,
        sa.spi_out,
        ts(&sa.local_ts),
        ts(&sa.remote_ts),
        if sa.encapsulation.is_some() {
            " (UDP-encapsulated)"
        } else {
            ""
        }
    )
}

impl NoDataplane {
    fn record(
        &mut self,
        tunnel: u32,
        child: ChildSaId,
        (spi_in, spi_out): (strait_ike::EspSpi, strait_ike::EspSpi),
        summary: String,
    ) {
        self.installed.insert(
            child,
            Recorded {
                tunnel,
                spi_in: u32::from_be_bytes(spi_in.0),
                spi_out: u32::from_be_bytes(spi_out.0),
                summary,
            },
        );
    }
}

impl Dataplane for NoDataplane {
    fn kind(&self) -> Kind {
        Kind::None
    }

    fn prepare_socket(&self, _sock: &UdpSocket, _natt: bool) -> Result<(), TunnelError> {
        Ok(())
    }

    async fn preflight(&mut self, _esp: &[EspProposal]) -> Result<(), TunnelError> {
        Ok(())
    }

    async fn install(&mut self, tunnel: u32, sa: &ChildSaInstall) -> Result<(), TunnelError> {
        let summary = summary(sa);
        tracing::info!(child = sa.child.0, %summary, "dataplane none: not installing CHILD SA");
        self.record(tunnel, sa.child, (sa.spi_in, sa.spi_out), summary);
        Ok(())
    }

    async fn resume(&mut self, tunnel: u32, sa: &ChildSaResumed) -> Result<(), TunnelError> {
        tracing::info!(child = sa.child.0, spi_in = ?sa.spi_in, spi_out = ?sa.spi_out, "dataplane none: CHILD SA resumed");
        let summary = format!("resumed {}", esp_name(sa.encr, sa.integ));
        self.record(tunnel, sa.child, (sa.spi_in, sa.spi_out), summary);
        Ok(())
    }

    async fn delete(&mut self, child: ChildSaId) -> Result<(), TunnelError> {
        self.installed.remove(&child);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), TunnelError> {
        self.installed.clear();
        Ok(())
    }
}
