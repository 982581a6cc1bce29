//! `--dataplane kernel`: CHILD SAs and policies in the kernel's XFRM through strait-xfrm, the
//! kernel's expire and acquire notifications, traffic counters, and adoption of a previous
//! run's objects after a restart.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, PeerConfig};
use strait_xfrm::{KeepSet, Policy, PolicyId, Sa, SaId, Xfrm};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::objects::{Outbound, kernel_objects, outbound_plan, transforms, trap_policies};
use super::{Dataplane, KernelEvent, Kind, Traffic};
use crate::error::TunnelError;

/// What the kernel data plane installed for one CHILD SA.
#[derive(Debug, Clone)]
struct Installed {
    tunnel: u32,
    sa_in: SaId,
    sa_out: SaId,
    policies: Vec<Policy>,
}

/// Kernel XFRM through strait-xfrm.
#[derive(Debug)]
pub struct KernelDataplane {
    xfrm: Result<Xfrm, TunnelError>,
    installed: BTreeMap<ChildSaId, Installed>,
    events: Option<mpsc::Receiver<KernelEvent>>,
    /// Whether the kernel's notifications are subscribed to (the driver takes `events`).
    notified: bool,
    /// Counters of deleted CHILD SAs, per tunnel index.
    retired: BTreeMap<u32, Traffic>,
    /// Objects found at start (a previous run's), kept until [`Dataplane::sweep_adopted`].
    adopted: Option<(usize, usize)>,
    /// Rekeys we answered: the new outbound SA, by the CHILD SA it replaces. It is added when the
    /// old one is deleted (the initiator's Delete arrived), so we keep sending on the old SA
    /// until the initiator, which installs only on our response, has the new inbound SA.
    deferred_out: BTreeMap<ChildSaId, (ChildSaId, Sa)>,
    /// Trap policies of `onTraffic` tunnels, by tunnel index: never removed with a CHILD SA.
    trapped: BTreeMap<u32, Vec<Policy>>,
}

impl KernelDataplane {
    /// Opens the XFRM netlink socket (inside a tokio runtime) and subscribes to its expire and
    /// acquire notifications. A failure is kept and reported by every later call, so the agent
    /// keeps serving status.
    pub fn open() -> Self {
        let events = match Xfrm::event_stream() {
            Ok(stream) => {
                let (tx, rx) = mpsc::channel(256);
                tokio::spawn(forward_events(stream, tx));
                Some(rx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no XFRM notifications: rekeys run on the IKE timers only");
                None
            }
        };
        Self {
            xfrm: Xfrm::open().map_err(|e| TunnelError::kernel("opening XFRM netlink", &e)),
            installed: BTreeMap::new(),
            notified: events.is_some(),
            events,
            retired: BTreeMap::new(),
            adopted: None,
            deferred_out: BTreeMap::new(),
            trapped: BTreeMap::new(),
        }
    }

    fn xfrm(&self) -> Result<&Xfrm, TunnelError> {
        self.xfrm.as_ref().map_err(Clone::clone)
    }
}

async fn forward_events(mut stream: strait_xfrm::EventStream, tx: mpsc::Sender<KernelEvent>) {
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(strait_xfrm::Event::Expire { sa, reqid, hard }) => {
                reqid.index().map(|tunnel| KernelEvent::Expire {
                    tunnel,
                    spi: sa.spi,
                    hard,
                })
            }
            Ok(strait_xfrm::Event::Acquire { template, .. }) => template
                .reqid
                .index()
                .map(|tunnel| KernelEvent::Acquire { tunnel }),
            Ok(_) => None,
            Err(e) => {
                // lost notifications: the IKE timers still rekey; hard expiries show as
                // missing SAs on the next delete
                tracing::warn!(error = %e, "XFRM notifications lost");
                None
            }
        };
        if let Some(ev) = ev
            && tx.send(ev).await.is_err()
        {
            return;
        }
    }
}

fn add_traffic(t: &mut Traffic, inbound: bool, bytes: u64, packets: u64) {
    if inbound {
        t.bytes_in = t.bytes_in.saturating_add(bytes);
        t.packets_in = t.packets_in.saturating_add(packets);
    } else {
        t.bytes_out = t.bytes_out.saturating_add(bytes);
        t.packets_out = t.packets_out.saturating_add(packets);
    }
}

impl Dataplane for KernelDataplane {
    fn kind(&self) -> Kind {
        Kind::Kernel
    }

    fn prepare_socket(&self, sock: &UdpSocket, natt: bool) -> Result<(), TunnelError> {
        let family = match sock.local_addr() {
            Ok(a) if a.is_ipv6() => strait_xfrm::Family::V6,
            _ => strait_xfrm::Family::V4,
        };
        if natt {
            strait_xfrm::socket::set_udp_encap(sock)
                .map_err(|e| TunnelError::kernel("UDP_ENCAP on the NAT-T socket", &e))?;
        }
        strait_xfrm::socket::bypass_policies(sock, family)
            .map_err(|e| TunnelError::kernel("IKE socket bypass policies", &e))
    }

    async fn preflight(&mut self, esp: &[EspProposal]) -> Result<(), TunnelError> {
        let xfrm = self.xfrm()?.clone();
        xfrm.preflight(&transforms(esp))
            .await
            .map(|_| ())
            .map_err(|e| TunnelError::kernel("kernel preflight", &e))
    }

    async fn install(&mut self, tunnel: u32, sa: &ChildSaInstall) -> Result<(), TunnelError> {
        let xfrm = self.xfrm()?.clone();
        let (sa_in, sa_out, policies) = kernel_objects(tunnel, sa)?;
        xfrm.add_sa(&sa_in)
            .await
            .map_err(|e| TunnelError::kernel("installing the inbound SA", &e))?;
        let plan = outbound_plan(sa.replaces, sa.initiator, sa.redundant);
        if plan == Outbound::Now
            && let Err(e) = xfrm.add_sa(&sa_out).await
        {
            let _ = xfrm.delete_sa(&sa_in.id()).await;
            return Err(TunnelError::kernel("installing the outbound SA", &e));
        }
        for p in &policies {
            if let Err(e) = xfrm.update_policy(p).await {
                let _ = xfrm.delete_sa(&sa_out.id()).await;
                let _ = xfrm.delete_sa(&sa_in.id()).await;
                return Err(TunnelError::kernel("installing a policy", &e));
            }
        }
        self.installed.insert(
            sa.child,
            Installed {
                tunnel,
                sa_in: sa_in.id(),
                sa_out: sa_out.id(),
                policies,
            },
        );
        if let Outbound::AfterDeleteOf(old) = plan {
            self.deferred_out.insert(old, (sa.child, sa_out));
        }
        Ok(())
    }

    async fn delete(&mut self, child: ChildSaId) -> Result<(), TunnelError> {
        self.deferred_out.retain(|_, (new, _)| *new != child);
        let Some(ins) = self.installed.remove(&child) else {
            return Ok(());
        };
        let xfrm = self.xfrm()?.clone();
        // the replacement's outbound SA goes in before the old one goes out
        if let Some((_, out)) = self.deferred_out.remove(&child)
            && let Err(e) = xfrm.add_sa(&out).await
        {
            tracing::warn!(error = %e, "installing a rekeyed outbound SA");
        }
        for (id, inbound) in [(ins.sa_in, true), (ins.sa_out, false)] {
            if let Ok(Some(info)) = xfrm.get_sa(&id).await {
                let c = info.counters;
                let t = self.retired.entry(ins.tunnel).or_default();
                add_traffic(t, inbound, c.bytes, c.packets);
            }
        }
        let mut first_err = None;
        let last_of_tunnel = !self.installed.values().any(|i| i.tunnel == ins.tunnel);
        if last_of_tunnel {
            // An onTraffic tunnel's outbound policies go back to being traps.
            let traps: Vec<PolicyId> = self
                .trapped
                .get(&ins.tunnel)
                .map(|v| v.iter().map(Policy::id).collect())
                .unwrap_or_default();
            for p in ins.policies.iter().filter(|p| !traps.contains(&p.id())) {
                if let Err(e) = xfrm.delete_policy(&p.id()).await
                    && !matches!(e, strait_xfrm::Error::NotFound { .. })
                {
                    first_err.get_or_insert(TunnelError::kernel("deleting a policy", &e));
                }
            }
        }
        for id in [ins.sa_out, ins.sa_in] {
            if let Err(e) = xfrm.delete_sa(&id).await
                && !matches!(e, strait_xfrm::Error::NotFound { .. })
            {
                first_err.get_or_insert(TunnelError::kernel("deleting an SA", &e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn shutdown(&mut self) -> Result<(), TunnelError> {
        self.installed.clear();
        self.deferred_out.clear();
        self.trapped.clear();
        self.adopted = None;
        let xfrm = self.xfrm()?.clone();
        xfrm.flush_ours()
            .await
            .map(|_| ())
            .map_err(|e| TunnelError::kernel("removing our XFRM objects", &e))
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<KernelEvent>> {
        self.events.take()
    }

    fn supports_on_traffic(&self) -> bool {
        // Without notifications an acquire would never be heard.
        self.xfrm.is_ok() && self.notified
    }

    async fn trap(&mut self, tunnel: u32, cfg: &PeerConfig) -> Result<(), TunnelError> {
        let xfrm = self.xfrm()?.clone();
        let policies = trap_policies(tunnel, cfg)?;
        for (i, p) in policies.iter().enumerate() {
            if let Err(e) = xfrm.update_policy(p).await {
                for done in policies.iter().take(i) {
                    let _ = xfrm.delete_policy(&done.id()).await;
                }
                return Err(TunnelError::kernel("installing a trap policy", &e));
            }
        }
        self.trapped.insert(tunnel, policies);
        Ok(())
    }

    async fn untrap(&mut self, tunnel: u32) -> Result<(), TunnelError> {
        let Some(policies) = self.trapped.remove(&tunnel) else {
            return Ok(());
        };
        // With a CHILD SA still installed, its deletion removes them.
        if self.installed.values().any(|i| i.tunnel == tunnel) {
            return Ok(());
        }
        let xfrm = self.xfrm()?.clone();
        let mut first_err = None;
        for p in &policies {
            if let Err(e) = xfrm.delete_policy(&p.id()).await
                && !matches!(e, strait_xfrm::Error::NotFound { .. })
            {
                first_err.get_or_insert(TunnelError::kernel("deleting a trap policy", &e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn traffic(&mut self) -> BTreeMap<u32, Traffic> {
        let mut out = self.retired.clone();
        let Ok(xfrm) = self.xfrm().cloned() else {
            return out;
        };
        let counters = match xfrm.counters().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "reading XFRM counters");
                return out;
            }
        };
        let by_id: BTreeMap<(IpAddr, u32), (u64, u64)> = counters
            .iter()
            .map(|c| ((c.id.dst, c.id.spi), (c.bytes, c.packets)))
            .collect();
        for ins in self.installed.values() {
            for (id, inbound) in [(ins.sa_in, true), (ins.sa_out, false)] {
                if let Some((bytes, packets)) = by_id.get(&(id.dst, id.spi)) {
                    add_traffic(
                        out.entry(ins.tunnel).or_default(),
                        inbound,
                        *bytes,
                        *packets,
                    );
                }
            }
        }
        out
    }

    async fn adopt(&mut self) -> usize {
        let Ok(xfrm) = self.xfrm().cloned() else {
            return 0;
        };
        let sas = xfrm.list_our_sas().await.map(|v| v.len()).unwrap_or(0);
        let policies = xfrm.list_our_policies().await.map(|v| v.len()).unwrap_or(0);
        if sas + policies > 0 {
            tracing::info!(
                sas,
                policies,
                "found XFRM objects of a previous run: keeping them until the new CHILD SAs are up"
            );
            self.adopted = Some((sas, policies));
        }
        sas + policies
    }

    fn adopting(&self) -> bool {
        self.adopted.is_some()
    }

    async fn sweep_adopted(&mut self) -> Result<(), TunnelError> {
        if self.adopted.take().is_none() {
            return Ok(());
        }
        let xfrm = self.xfrm()?.clone();
        let mut keep = KeepSet::new();
        for traps in self.trapped.values() {
            keep.policies.extend(traps.iter().map(Policy::id));
        }
        for ins in self.installed.values() {
            keep.sas.insert(ins.sa_in);
            keep.sas.insert(ins.sa_out);
            keep.policies.extend(
                ins.policies
                    .iter()
                    .map(Policy::id)
                    .collect::<Vec<PolicyId>>(),
            );
        }
        let report = xfrm
            .sweep(&keep)
            .await
            .map_err(|e| TunnelError::kernel("sweeping a previous run's XFRM objects", &e))?;
        tracing::info!(
            sas = report.sas_deleted.len(),
            policies = report.policies_deleted.len(),
            already_gone = report.already_gone,
            "swept the previous run's XFRM objects"
        );
        Ok(())
    }
}
