//! `--dataplane kernel`: CHILD SAs and policies in the kernel's XFRM through strait-xfrm, the
//! kernel's expire and acquire notifications, traffic counters, and adoption of a previous
//! run's objects after a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use futures::StreamExt;
use strait_ike::codec::TsRange;
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, ChildSaResumed, PeerConfig};
use strait_xfrm::{
    Family, GatewaySysctls, KeepSet, PolicyId, Prefix, Sa, SaId, SysctlGuard, Transform, Xfrm,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::netfilter::{IkeGuard, Netfilter, TunnelFilter};
use super::objects::{
    self, MAX_TUNNEL, Outbound, fallback_policies, kernel_objects, outbound_plan, transforms,
    tunnel_of,
};
use super::routes::{WantedRoute, route_mtu, transform_of, tunnel_routes};
use super::routing::{PathToPeer, Routing};
use super::table::{Change, Owner, PolicyTable};
use super::xfrmi::{self, RouteBased};
use super::{Dataplane, InterfaceCounters, KernelEvent, Kind, PathOptions, Traffic};
use crate::error::TunnelError;

/// What the kernel data plane installed for one CHILD SA.
#[derive(Debug, Clone)]
struct Installed {
    tunnel: u32,
    /// Its reqid slot within the tunnel (shared by CHILD SAs with the same selectors).
    slot: u8,
    local_ts: Vec<TsRange>,
    remote_ts: Vec<TsRange>,
    sa_in: SaId,
    sa_out: SaId,
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
    /// Who wants which policy: the tunnels' fail-closed policies and the CHILD SAs'.
    table: PolicyTable,
    /// Policies a previous run left that a tunnel's fallback would have replaced: they keep
    /// protecting traffic with the adopted SAs until a new CHILD SA takes them over or the
    /// sweep puts the fallback in.
    deferred_fallback: HashSet<PolicyId>,
    /// The gateway plumbing: routes, rules, sysctls.
    plumbing: Plumbing,
    /// Route-based tunnels' interfaces and routes.
    route_based: RouteBased,
}

/// What a tunnel's routes are computed from.
#[derive(Debug, Clone)]
struct TunnelRoutes {
    local_ts: Vec<TsRange>,
    remote_ts: Vec<TsRange>,
    /// The peer's outer address, once known (configured, or from the CHILD SA).
    peer: Option<IpAddr>,
    /// The peer's configured addresses (empty: any).
    configured_peers: Vec<IpAddr>,
    /// `spec.mtu`.
    spec_mtu: Option<u32>,
    /// The negotiated transform and whether ESP is in UDP, once a CHILD SA is in.
    esp: Option<(Transform, bool)>,
    /// Route-based: its routes are [`RouteBased`]'s (the ones computed here only give the MTU
    /// for the MSS clamp).
    route_based: bool,
}

/// Routes in Strait's table (one per remote subnet; when two tunnels want the same one, the
/// newest wins and the other's comes back when it goes), the rule to the table, and the gateway
/// sysctls, all restored on a clean exit.
#[derive(Debug, Default)]
struct Plumbing {
    routing: Option<Routing>,
    tunnels: BTreeMap<u32, TunnelRoutes>,
    claims: HashMap<Prefix, Vec<(u32, WantedRoute, PathToPeer)>>,
    rules: Vec<Family>,
    sysctls: Vec<SysctlGuard>,
    ipv6_sysctls: bool,
    ipv4_sysctls: bool,
    /// The masquerade exemption and MSS clamping.
    netfilter: Netfilter,
}

impl Plumbing {
    fn open() -> Self {
        let routing = match Routing::open() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(message = %e.message, "no rtnetlink: the agent installs no routes");
                None
            }
        };
        Self {
            routing,
            ..Self::default()
        }
    }

    /// The forwarding and redirect sysctls a gateway needs (IPv6 ones once a tunnel has IPv6
    /// subnets), recorded for [`Plumbing::restore`]. A node that refuses them (read-only
    /// /proc/sys) still serves its own traffic: a warning, not an error.
    fn sysctls(&mut self, ipv6: bool) {
        if self.ipv4_sysctls && (self.ipv6_sysctls || !ipv6) {
            return;
        }
        match (GatewaySysctls { ipv6 }).apply() {
            Ok(g) => {
                if !g.changed().is_empty() {
                    tracing::info!(changed = ?g.changed(), "gateway sysctls set (restored on exit)");
                }
                self.sysctls.push(g);
                self.ipv4_sysctls = true;
                self.ipv6_sysctls |= ipv6;
            }
            Err(e) => tracing::warn!(error = %e, "gateway sysctls"),
        }
    }

    /// Brings the tunnel's routes in line with what is known about it now.
    async fn sync(&mut self, tunnel: u32) {
        let wanted = match &self.routing {
            Some(routing) => match self.wanted(routing, tunnel).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(tunnel, message = %e.message, "tunnel routes");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        // the rules do not need rtnetlink (without it they only lack the MSS clamp)
        self.netfilter
            .set(tunnel, self.filter(tunnel, &wanted))
            .await;
        let Some(routing) = self.routing.clone() else {
            return;
        };
        let wanted = if self.tunnels.get(&tunnel).is_some_and(|t| t.route_based) {
            Vec::new()
        } else {
            wanted
        };
        // drop the claims this tunnel no longer has
        let stale: Vec<Prefix> = self
            .claims
            .iter()
            .filter(|(dst, cs)| {
                cs.iter().any(|c| c.0 == tunnel) && !wanted.iter().any(|(w, _)| w.dst == **dst)
            })
            .map(|(d, _)| *d)
            .collect();
        for dst in stale {
            self.release(&routing, tunnel, dst).await;
        }
        for (w, path) in wanted {
            if let Some(f) = Some(w.dst.family()).filter(|f| !self.rules.contains(f)) {
                match routing.ensure_rule(f).await {
                    Ok(()) => self.rules.push(f),
                    Err(e) => tracing::warn!(message = %e.message, "routing rule"),
                }
            }
            let claims = self.claims.entry(w.dst).or_default();
            claims.retain(|c| c.0 != tunnel);
            claims.push((tunnel, w, path));
            if let Err(e) = routing.put(&w, &path).await {
                tracing::warn!(tunnel, message = %e.message, "installing a route");
            }
        }
    }

    /// The tunnel's netfilter rules: its subnets, and the MTU of its routes for the MSS.
    fn filter(&self, tunnel: u32, wanted: &[(WantedRoute, PathToPeer)]) -> Option<TunnelFilter> {
        let t = self.tunnels.get(&tunnel)?;
        let prefixes = |ts: &[TsRange]| -> Vec<Prefix> {
            ts.iter().filter_map(objects::kernel_prefix).collect()
        };
        let mtu = |f: Family| {
            wanted
                .iter()
                .filter(|(w, _)| w.dst.family() == f)
                .find_map(|(w, _)| w.mtu)
        };
        Some(TunnelFilter {
            local: prefixes(&t.local_ts),
            remote: prefixes(&t.remote_ts),
            mtu_v4: mtu(Family::V4),
            mtu_v6: mtu(Family::V6),
            peers: t.configured_peers.clone(),
        })
    }

    async fn wanted(
        &self,
        routing: &Routing,
        tunnel: u32,
    ) -> Result<Vec<(WantedRoute, PathToPeer)>, TunnelError> {
        let Some(t) = self.tunnels.get(&tunnel) else {
            return Ok(Vec::new());
        };
        let Some(peer) = t.peer.filter(|p| !p.is_unspecified()) else {
            return Ok(Vec::new());
        };
        let path = routing.path_to(peer).await?;
        let node = routing.node_addresses().await?;
        let outer = Family::of(&peer);
        let mtu = |inner: Family| {
            route_mtu(
                t.spec_mtu,
                t.esp.map(|e| e.0),
                outer,
                inner,
                t.esp.is_some_and(|e| e.1),
                path.mtu,
            )
        };
        Ok(tunnel_routes(&t.remote_ts, &t.local_ts, &node, peer, mtu)
            .into_iter()
            .map(|w| (w, path))
            .collect())
    }

    async fn release(&mut self, routing: &Routing, tunnel: u32, dst: Prefix) {
        let Some(claims) = self.claims.get_mut(&dst) else {
            return;
        };
        claims.retain(|c| c.0 != tunnel);
        let r = match claims.last() {
            Some((_, w, path)) => routing.put(w, path).await,
            None => {
                self.claims.remove(&dst);
                routing.remove(dst).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(tunnel, message = %e.message, "removing a route");
        }
    }

    /// The tunnel is gone: its routes go (or fall back to another tunnel's).
    async fn forget(&mut self, tunnel: u32) {
        self.tunnels.remove(&tunnel);
        self.netfilter.set(tunnel, None).await;
        let Some(routing) = self.routing.clone() else {
            return;
        };
        let mine: Vec<Prefix> = self
            .claims
            .iter()
            .filter(|(_, cs)| cs.iter().any(|c| c.0 == tunnel))
            .map(|(d, _)| *d)
            .collect();
        for dst in mine {
            self.release(&routing, tunnel, dst).await;
        }
    }

    /// After a restart: routes of ours that no tunnel of this run wants (a previous run's, for
    /// tunnels that are gone) are removed.
    async fn sweep_stale(&mut self) {
        let Some(routing) = self.routing.clone() else {
            return;
        };
        match routing.ours().await {
            Ok(routes) => {
                for dst in routes.into_iter().filter(|d| !self.claims.contains_key(d)) {
                    if let Err(e) = routing.remove(dst).await {
                        tracing::warn!(message = %e.message, "removing a stale route");
                    }
                }
            }
            Err(e) => tracing::warn!(message = %e.message, "listing our routes"),
        }
    }

    /// Everything back as it was: our routes and rules go, the sysctls get their old values.
    async fn restore(&mut self) {
        self.tunnels.clear();
        self.netfilter.remove().await;
        self.claims.clear();
        self.rules.clear();
        if let Some(routing) = self.routing.clone() {
            match routing.ours().await {
                Ok(routes) => {
                    for dst in routes {
                        if let Err(e) = routing.remove(dst).await {
                            tracing::warn!(message = %e.message, "removing a route");
                        }
                    }
                }
                Err(e) => tracing::warn!(message = %e.message, "listing our routes"),
            }
            if let Err(e) = routing.remove_rules().await {
                tracing::warn!(message = %e.message, "removing our rules");
            }
        }
        while let Some(g) = self.sysctls.pop() {
            if let Err(e) = g.restore() {
                tracing::warn!(error = %e, "restoring sysctls");
            }
        }
        self.ipv4_sysctls = false;
        self.ipv6_sysctls = false;
    }
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
            table: PolicyTable::default(),
            deferred_fallback: HashSet::new(),
            plumbing: Plumbing::open(),
            route_based: RouteBased::default(),
        }
    }

    /// With a guard, drops IKE and ESP from addresses that are no tunnel's peer (see
    /// [`IkeGuard`]).
    #[must_use]
    pub fn guard_ike(mut self, guard: Option<IkeGuard>) -> Self {
        if let Some(g) = guard {
            self.plumbing.netfilter.guard_ike(g);
        }
        self
    }

    fn xfrm(&self) -> Result<&Xfrm, TunnelError> {
        self.xfrm.as_ref().map_err(Clone::clone)
    }

    /// The reqid slot for a new CHILD SA of `tunnel`: its predecessor's for a rekey, that of a
    /// CHILD SA with the same selectors (strongSwan shares reqids the same way), else the
    /// lowest free one (slot 0, the fallback policies' own, for the first).
    /// Puts a CHILD SA's policies in (over the tunnel's fallback for the same selectors); on
    /// failure, back to what the other owners want.
    async fn claim_policies(
        &mut self,
        xfrm: &Xfrm,
        child: ChildSaId,
        policies: Vec<strait_xfrm::Policy>,
    ) -> Result<(), TunnelError> {
        let owner = Owner::Child(child);
        let changes = self.table.claim(owner, policies);
        for c in &changes {
            if let Change::Put(p) = c {
                self.deferred_fallback.remove(&p.id());
            }
        }
        if let Err(e) = apply(xfrm, &changes).await {
            let undo = self.table.release(owner);
            let _ = apply(xfrm, &undo).await;
            return Err(e);
        }
        Ok(())
    }

    /// Records a CHILD SA now in the kernel and brings its tunnel's routes up to date (the
    /// peer's address, the MTU of the negotiated transform).
    async fn record(
        &mut self,
        child: ChildSaId,
        ins: Installed,
        peer: IpAddr,
        esp: Option<(Transform, bool)>,
    ) {
        let tunnel = ins.tunnel;
        self.installed.insert(child, ins);
        if let Some(t) = self.plumbing.tunnels.get_mut(&tunnel) {
            t.peer = Some(peer);
            t.esp = esp;
            self.plumbing.sync(tunnel).await;
        }
    }

    /// A route-based tunnel's CHILD SA is in: its routes through the interface (routes are
    /// reachability, not protection: a failure is logged).
    async fn route_up(&mut self, tunnel: u32, child: ChildSaId, esp: Option<(Transform, bool)>) {
        if let Err(e) = self.route_based.child_up(tunnel, child, esp).await {
            tracing::warn!(tunnel, message = %e.message, "routes through the XFRM interface");
        }
    }

    fn slot_for(&self, tunnel: u32, sa: &ChildSaInstall) -> Result<u8, TunnelError> {
        let mine = || self.installed.values().filter(|i| i.tunnel == tunnel);
        if let Some(old) = sa.replaces.and_then(|id| self.installed.get(&id))
            && old.tunnel == tunnel
        {
            return Ok(old.slot);
        }
        if let Some(same) =
            mine().find(|i| i.local_ts == sa.local_ts && i.remote_ts == sa.remote_ts)
        {
            return Ok(same.slot);
        }
        // Slot 0 first, the reqid of the tunnel's trap policies: the kernel then replaces the
        // larval SA an acquire left with the new outbound SA (it matches them by reqid), as
        // charon's trap-born CHILD SAs do.
        (0..=u8::MAX)
            .find(|s| !mine().any(|i| i.slot == *s))
            .ok_or_else(|| {
                TunnelError::new(
                    strait_crds::contract::StatusReason::KernelUnsupported,
                    "a tunnel holds at most 256 CHILD SAs with different traffic selectors",
                )
            })
    }
}

/// Inbound SPIs allocated by the kernel (`XFRM_MSG_ALLOCSPI`), in strongSwan's default range,
/// held by larval SAs under the reqid of tunnel index 0 (never a tunnel's) until the CHILD SA's
/// inbound SA keys them, or the kernel's acquire timeout (30 s) or a sweep removes them.
struct KernelSpis {
    alloc: strait_xfrm::SpiAllocator,
    warned: bool,
}

/// strongSwan's `spi_min`/`spi_max`.
const SPI_RANGE: std::ops::RangeInclusive<u32> = 0xC000_0000..=0xCFFF_FFFF;

impl strait_ike::EspSpiSource for KernelSpis {
    fn inbound_esp_spi(&mut self, local: IpAddr, remote: IpAddr) -> Option<u32> {
        let reqid = super::objects::reqid(0, super::objects::TUNNEL_SLOT).ok()?;
        match self
            .alloc
            .alloc(remote, local, reqid, strait_xfrm::Mode::Tunnel, SPI_RANGE)
        {
            Ok(spi) => Some(spi),
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "the kernel did not allocate an SPI: using a random one");
                }
                None
            }
        }
    }
}

/// Makes the kernel's SPD follow `changes`; every change is tried, the first error returned.
async fn apply(xfrm: &Xfrm, changes: &[Change]) -> Result<(), TunnelError> {
    let mut first_err = None;
    for c in changes {
        let r = match c {
            Change::Put(p) => xfrm
                .update_policy(p)
                .await
                .map_err(|e| TunnelError::kernel("installing a policy", &e)),
            Change::Remove(id) => match xfrm.delete_policy(id).await {
                Ok(()) | Err(strait_xfrm::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(TunnelError::kernel("deleting a policy", &e)),
            },
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn forward_events(mut stream: strait_xfrm::EventStream, tx: mpsc::Sender<KernelEvent>) {
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(strait_xfrm::Event::Expire { sa, reqid, hard }) => {
                tunnel_of(reqid).map(|tunnel| KernelEvent::Expire {
                    tunnel,
                    spi: sa.spi,
                    hard,
                })
            }
            Ok(strait_xfrm::Event::Acquire { template, .. }) => {
                tunnel_of(template.reqid).map(|tunnel| KernelEvent::Acquire { tunnel })
            }
            Ok(strait_xfrm::Event::Mapping { sa, reqid, new, .. }) => {
                tunnel_of(reqid).map(|tunnel| KernelEvent::Mapping {
                    tunnel,
                    spi: sa.spi,
                    remote: new,
                })
            }
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

fn add_traffic(t: &mut Traffic, inbound: bool, c: &strait_xfrm::SaCounters) {
    if inbound {
        t.bytes_in = t.bytes_in.saturating_add(c.bytes);
        t.packets_in = t.packets_in.saturating_add(c.packets);
        // only an inbound SA checks replays and integrity
        let replays = u64::from(c.replay_window_drops) + u64::from(c.replayed);
        t.replay_drops = t.replay_drops.saturating_add(replays);
        t.integrity_failures = t
            .integrity_failures
            .saturating_add(u64::from(c.integrity_failures));
    } else {
        t.bytes_out = t.bytes_out.saturating_add(c.bytes);
        t.packets_out = t.packets_out.saturating_add(c.packets);
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
        let slot = self.slot_for(tunnel, sa)?;
        let (mut sa_in, mut sa_out, mut policies) = kernel_objects(tunnel, slot, sa)?;
        if self.route_based.has(tunnel) {
            let id = Some(xfrmi::if_id(tunnel));
            sa_in.if_id = id;
            sa_out.if_id = id;
            policies.iter_mut().for_each(|p| p.if_id = id);
        }
        let mut added = xfrm.add_sa(&sa_in).await;
        if matches!(added, Err(strait_xfrm::Error::AlreadyExists { .. })) {
            // the kernel allocated the inbound SPI and a larval SA of ours holds it: key that
            // one (never a live SA that happens to have the SPI)
            let larval = matches!(xfrm.get_sa(&sa_in.id()).await,
                Ok(Some(cur)) if cur.larval && cur.is_ours());
            if larval {
                added = xfrm.update_sa(&sa_in).await;
            }
        }
        added.map_err(|e| TunnelError::kernel("installing the inbound SA", &e))?;
        let plan = outbound_plan(sa.replaces, sa.initiator, sa.redundant);
        if plan == Outbound::Now
            && let Err(e) = xfrm.add_sa(&sa_out).await
        {
            let _ = xfrm.delete_sa(&sa_in.id()).await;
            return Err(TunnelError::kernel("installing the outbound SA", &e));
        }
        if let Err(e) = self.claim_policies(&xfrm, sa.child, policies).await {
            let _ = xfrm.delete_sa(&sa_out.id()).await;
            let _ = xfrm.delete_sa(&sa_in.id()).await;
            return Err(e);
        }
        let ins = Installed {
            tunnel,
            slot,
            local_ts: sa.local_ts.clone(),
            remote_ts: sa.remote_ts.clone(),
            sa_in: sa_in.id(),
            sa_out: sa_out.id(),
        };
        if let Outbound::AfterDeleteOf(old) = plan {
            self.deferred_out.insert(old, (sa.child, sa_out));
        }
        let esp = transform_of(sa.encr, sa.integ).map(|x| (x, sa.encapsulation.is_some()));
        self.record(sa.child, ins, sa.remote_addr.ip(), esp).await;
        self.route_up(tunnel, sa.child, esp).await;
        Ok(())
    }

    async fn resume(&mut self, tunnel: u32, sa: &ChildSaResumed) -> Result<(), TunnelError> {
        let xfrm = self.xfrm()?.clone();
        let (l, r) = (sa.local_addr.ip(), sa.remote_addr.ip());
        let sa_in = SaId::esp(l, u32::from_be_bytes(sa.spi_in.0));
        let sa_out = SaId::esp(r, u32::from_be_bytes(sa.spi_out.0));
        // Both SAs must be ours, under this tunnel, in one slot. (An outbound SA the previous
        // agent still held back, as the responder of a rekey, is missing: its keys are gone,
        // so that CHILD SA cannot be resumed.)
        let mut slot = None;
        for id in [sa_in, sa_out] {
            let info = match xfrm.get_sa(&id).await {
                Ok(Some(info)) if info.is_ours() && !info.larval => info,
                Ok(_) => {
                    return Err(TunnelError::new(
                        strait_crds::contract::StatusReason::DataplaneError,
                        format!("the kernel holds no SA of ours {id} to resume"),
                    ));
                }
                Err(e) => return Err(TunnelError::kernel("looking up a resumed SA", &e)),
            };
            let this = (objects::tunnel_of(info.reqid), objects::slot_of(info.reqid));
            if this.0 != Some(tunnel) || slot.is_some_and(|s| Some(s) != this.1) {
                return Err(TunnelError::new(
                    strait_crds::contract::StatusReason::DataplaneError,
                    format!("the kernel's SA {id} belongs to another tunnel or slot"),
                ));
            }
            slot = this.1;
        }
        let slot = slot.unwrap_or(objects::TUNNEL_SLOT);
        let reqid = objects::reqid(tunnel, slot)?;
        let mut policies = objects::child_policies(reqid, (l, r), &sa.local_ts, &sa.remote_ts)?;
        if self.route_based.has(tunnel) {
            policies
                .iter_mut()
                .for_each(|p| p.if_id = Some(xfrmi::if_id(tunnel)));
        }
        self.claim_policies(&xfrm, sa.child, policies).await?;
        let ins = Installed {
            tunnel,
            slot,
            local_ts: sa.local_ts.clone(),
            remote_ts: sa.remote_ts.clone(),
            sa_in,
            sa_out,
        };
        let esp = transform_of(sa.encr, sa.integ).map(|x| (x, sa.encapsulation.is_some()));
        self.record(sa.child, ins, r, esp).await;
        self.route_up(tunnel, sa.child, esp).await;
        Ok(())
    }

    async fn delete(&mut self, child: ChildSaId) -> Result<(), TunnelError> {
        self.deferred_out.retain(|_, (new, _)| *new != child);
        let Some(ins) = self.installed.remove(&child) else {
            return Ok(());
        };
        // a route-based tunnel's last CHILD SA: its routes go first, so a backup tunnel (or
        // the fallback) takes the traffic before the SAs go
        self.route_based.child_down(ins.tunnel, child).await;
        let xfrm = self.xfrm()?.clone();
        // the replacement's outbound SA goes in before the old one goes out
        if let Some((_, out)) = self.deferred_out.remove(&child)
            && let Err(e) = xfrm.add_sa(&out).await
        {
            tracing::warn!(error = %e, "installing a rekeyed outbound SA");
        }
        for (id, inbound) in [(ins.sa_in, true), (ins.sa_out, false)] {
            if let Ok(Some(info)) = xfrm.get_sa(&id).await {
                let t = self.retired.entry(ins.tunnel).or_default();
                add_traffic(t, inbound, &info.counters);
            }
        }
        // Policies first: the tunnel's block or trap policies (or another CHILD SA's) take
        // over the selectors before the SAs go, so no packet finds the selector unprotected.
        let changes = self.table.release(Owner::Child(child));
        let mut first_err = apply(&xfrm, &changes).await.err();
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
        self.table.clear();
        self.deferred_fallback.clear();
        self.adopted = None;
        self.plumbing.restore().await;
        self.route_based.shutdown().await;
        let xfrm = self.xfrm()?.clone();
        xfrm.flush_ours()
            .await
            .map(|_| ())
            .map_err(|e| TunnelError::kernel("removing our XFRM objects", &e))
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<KernelEvent>> {
        self.events.take()
    }

    fn spi_source(&mut self) -> Option<Box<dyn strait_ike::EspSpiSource + Send>> {
        match strait_xfrm::SpiAllocator::open() {
            Ok(alloc) => Some(Box::new(KernelSpis {
                alloc,
                warned: false,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "inbound SPIs are random: the kernel cannot allocate them");
                None
            }
        }
    }

    fn supports_on_traffic(&self) -> bool {
        // Without notifications an acquire would never be heard.
        self.xfrm.is_ok() && self.notified
    }

    async fn guard(
        &mut self,
        tunnel: u32,
        cfg: &PeerConfig,
        path: PathOptions,
    ) -> Result<(), TunnelError> {
        let mtu = path.mtu;
        if tunnel > MAX_TUNNEL {
            return Err(TunnelError::new(
                strait_crds::contract::StatusReason::InvalidConfig,
                format!("tunnel index {tunnel} is beyond {MAX_TUNNEL}"),
            ));
        }
        let xfrm = self.xfrm()?.clone();
        // Route-based: no fail-closed policies (they would catch traffic of the tunnel's
        // selectors that is not routed into its interface); the interface without SAs and the
        // fallback routes fail closed instead.
        let mut refused = None;
        let policies = match path.route_metric {
            Some(metric) => match self.route_based.add(tunnel, cfg, metric, mtu).await {
                Ok(()) => Vec::new(),
                // no interface: the tunnel cannot start, and its subnets stay blocked by
                // policies until it is removed, as a policy-based tunnel's would
                Err(e) => {
                    refused = Some(e);
                    fallback_policies(tunnel, cfg)?
                }
            },
            None => fallback_policies(tunnel, cfg)?,
        };
        let owner = Owner::Tunnel(tunnel);
        let mut changes = self.table.claim(owner, policies);
        if self.adopted.is_some() {
            // After a restart the previous run's policies still carry traffic on its SAs: a
            // block over them now would cut the tunnel until the new CHILD SA is in (make
            // before break). They are already fail-closed (protect: no SA, no traffic).
            let present: HashSet<PolicyId> = xfrm
                .list_our_policies()
                .await
                .map(|v| v.into_iter().map(|p| p.id).collect())
                .unwrap_or_default();
            changes.retain(|c| match c {
                Change::Put(p) if present.contains(&p.id()) => {
                    self.deferred_fallback.insert(p.id());
                    false
                }
                _ => true,
            });
        }
        if let Err(e) = apply(&xfrm, &changes).await {
            let undo = self.table.release(owner);
            let _ = apply(&xfrm, &undo).await;
            return Err(e);
        }
        if let Some(e) = refused {
            return Err(e);
        }
        let ipv6 = cfg
            .local_ts
            .iter()
            .chain(&cfg.remote_ts)
            .any(|t| matches!(t.addrs, strait_ike::codec::AddrRange::V6 { .. }));
        self.plumbing.sysctls(ipv6);
        self.plumbing.tunnels.insert(
            tunnel,
            TunnelRoutes {
                local_ts: cfg.local_ts.clone(),
                remote_ts: cfg.remote_ts.clone(),
                peer: Some(cfg.remote_addr.ip()),
                configured_peers: configured_peers(cfg),
                spec_mtu: mtu,
                esp: None,
                route_based: path.route_metric.is_some(),
            },
        );
        self.plumbing.sync(tunnel).await;
        Ok(())
    }

    async fn peers_changed(&mut self, tunnel: u32, cfg: &PeerConfig) {
        if let Some(t) = self.plumbing.tunnels.get_mut(&tunnel) {
            t.configured_peers = configured_peers(cfg);
            self.plumbing.sync(tunnel).await;
        }
    }

    async fn unguard(&mut self, tunnel: u32) -> Result<(), TunnelError> {
        self.retired.remove(&tunnel);
        self.plumbing.forget(tunnel).await;
        self.route_based.remove(tunnel).await;
        let owner = Owner::Tunnel(tunnel);
        if !self.table.has(owner) {
            return Ok(());
        }
        let changes = self.table.release(owner);
        let xfrm = self.xfrm()?.clone();
        apply(&xfrm, &changes).await
    }

    fn xfrm_errors(&mut self) -> BTreeMap<String, u64> {
        // the counters of this network namespace (a kernel without CONFIG_XFRM_STATISTICS has
        // no file: no series)
        std::fs::read_to_string("/proc/net/xfrm_stat")
            .map(|t| super::parse_xfrm_stat(&t))
            .unwrap_or_default()
    }

    async fn interfaces(&mut self) -> BTreeMap<u32, InterfaceCounters> {
        self.route_based.counters().await
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
        let by_id: BTreeMap<(IpAddr, u32), &strait_xfrm::SaCounters> =
            counters.iter().map(|c| ((c.id.dst, c.id.spi), c)).collect();
        for ins in self.installed.values() {
            for (id, inbound) in [(ins.sa_in, true), (ins.sa_out, false)] {
                if let Some(c) = by_id.get(&(id.dst, id.spi)) {
                    add_traffic(out.entry(ins.tunnel).or_default(), inbound, c);
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
        // the fallback goes in where a previous run's policy was kept and no CHILD SA of
        // this run took it over
        let deferred: Vec<PolicyId> = self.deferred_fallback.drain().collect();
        let puts: Vec<Change> = deferred
            .iter()
            .filter_map(|id| self.table.effective(id).cloned().map(Change::Put))
            .collect();
        if let Err(e) = apply(&xfrm, &puts).await {
            tracing::warn!(reason = %e.reason, message = %e.message, "restoring fail-closed policies after the sweep");
        }
        let mut keep = KeepSet::new();
        keep.policies.extend(self.table.ids());
        for ins in self.installed.values() {
            keep.sas.insert(ins.sa_in);
            keep.sas.insert(ins.sa_out);
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
        self.plumbing.sweep_stale().await;
        self.route_based.sweep_stale().await;
        Ok(())
    }
}

/// The addresses the IKE firewall admits for a tunnel: all its peer's (empty: any).
fn configured_peers(cfg: &PeerConfig) -> Vec<IpAddr> {
    if cfg.remote_addr.ip().is_unspecified() {
        return Vec::new();
    }
    cfg.remote_addrs().map(|a| a.ip()).collect()
}
