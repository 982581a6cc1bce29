//! Route-based tunnels (`spec.dataPlane.mode: routeBased`): an XFRM interface per tunnel,
//! `strait-x<N>` with `if_id` [`if_id`]`(N)`, to which the tunnel's SAs and policies are bound
//! (`objects.rs` sets the `if_id`), and routes to its remote subnets through it in a table of
//! their own ([`TABLE`]) while the tunnel has a CHILD SA, at the tunnel's metric.
//!
//! A policy with an `if_id` matches only traffic through its interface, so two tunnels with
//! identical subnets coexist; the route metric decides which carries the traffic (primary and
//! backup). Fail closed: traffic routed into an interface without SAs is dropped by the kernel,
//! and while no tunnel has a route to a remote subnet, an `unreachable` route at
//! [`FALLBACK_METRIC`] refuses its traffic instead of letting it leave by the main table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoXfrm, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMetric, RouteScope, RouteType};
use rtnetlink::{LinkUnspec, LinkXfrm, RouteMessageBuilder};
use strait_ike::{ChildSaId, PeerConfig};
use strait_xfrm::{Family, Prefix, Transform};

use super::InterfaceCounters;
use super::routes::{route_mtu, tunnel_routes};
use super::routing::{Routing, err};
use crate::error::TunnelError;

/// The `if_id` range of Strait's interfaces (the reqid range's prefix).
pub const IF_ID_BASE: u32 = 0x5A00_0000;
/// The routing table of route-based tunnels.
pub const TABLE: u32 = 0x5A02;
/// Its rule's priority: before the policy-based gateway's table (23040) and the route role's.
pub const RULE_PRIORITY: u32 = 0x59FF;
/// The metric of the `unreachable` routes that refuse a remote subnet's traffic while no
/// tunnel routes it.
pub const FALLBACK_METRIC: u32 = 0x7FFF_FFFF;
/// The interface MTU before a CHILD SA tells the transform (the smallest ESP overhead is
/// larger than 1500 − 1400 only for jumbo links, which set `spec.mtu`).
const INITIAL_MTU: u32 = 1400;

/// The `if_id` of tunnel `tunnel`'s interface.
pub fn if_id(tunnel: u32) -> u32 {
    IF_ID_BASE | (tunnel & 0xFF_FFFF)
}

/// The name of tunnel `tunnel`'s interface (at most 13 characters).
pub fn device(tunnel: u32) -> String {
    format!("strait-x{tunnel}")
}

/// One route-based tunnel.
#[derive(Debug)]
struct Rb {
    index: u32,
    metric: u32,
    /// Remote subnet, and the `src` for it (a node address inside the local subnets).
    routes: Vec<(Prefix, Option<IpAddr>)>,
    spec_mtu: Option<u32>,
    peer: IpAddr,
    /// The uplink's MTU (towards the peer).
    link_mtu: u32,
    /// The negotiated transform and whether ESP is in UDP, once a CHILD SA is in.
    esp: Option<(Transform, bool)>,
    children: BTreeSet<ChildSaId>,
    routed: bool,
}

impl Rb {
    fn mtu(&self, inner: Family) -> Option<u32> {
        route_mtu(
            self.spec_mtu,
            self.esp.map(|e| e.0),
            Family::of(&self.peer),
            inner,
            self.esp.is_some_and(|e| e.1),
            self.link_mtu,
        )
    }
}

/// The route-based tunnels of this agent.
#[derive(Debug, Default)]
pub(crate) struct RouteBased {
    routing: Option<Routing>,
    tunnels: BTreeMap<u32, Rb>,
    rules: BTreeSet<Family>,
}

impl RouteBased {
    /// Whether `tunnel` is route-based.
    pub(crate) fn has(&self, tunnel: u32) -> bool {
        self.tunnels.contains_key(&tunnel)
    }

    fn routing(&mut self) -> Result<Routing, TunnelError> {
        if self.routing.is_none() {
            self.routing = Some(Routing::open_table(TABLE, RULE_PRIORITY)?);
        }
        self.routing
            .clone()
            .ok_or_else(|| err("rtnetlink", "unavailable"))
    }

    /// The counters of every route-based tunnel's interface, by tunnel index (one dump of the
    /// node's XFRM links; an interface that cannot be read is left out).
    pub(crate) async fn counters(&mut self) -> BTreeMap<u32, InterfaceCounters> {
        let mut out = BTreeMap::new();
        let Some(routing) = self.routing.clone().filter(|_| !self.tunnels.is_empty()) else {
            return out;
        };
        for tunnel in self.tunnels.keys() {
            let name = device(*tunnel);
            let link = match routing.link_by_name(&name).await {
                Ok(Some(l)) if link_if_id(&l) == Some(if_id(*tunnel)) => l,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e.message, interface = %name, "reading counters");
                    continue;
                }
            };
            let stats = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Stats64(s) => Some(s),
                _ => None,
            });
            if let Some(s) = stats {
                out.insert(
                    *tunnel,
                    InterfaceCounters {
                        interface: name,
                        rx_bytes: s.rx_bytes,
                        rx_packets: s.rx_packets,
                        rx_errors: s.rx_errors,
                        rx_dropped: s.rx_dropped,
                        tx_bytes: s.tx_bytes,
                        tx_packets: s.tx_packets,
                        tx_errors: s.tx_errors,
                        tx_dropped: s.tx_dropped,
                    },
                );
            }
        }
        out
    }

    /// Creates (or takes over) the tunnel's interface and refuses its remote subnets until a
    /// CHILD SA is in.
    pub(crate) async fn add(
        &mut self,
        tunnel: u32,
        cfg: &PeerConfig,
        metric: u32,
        spec_mtu: Option<u32>,
    ) -> Result<(), TunnelError> {
        let routing = self.routing()?;
        let peer = cfg.remote_addr.ip();
        let (uplink, link_mtu) = if peer.is_unspecified() {
            (0, 1500)
        } else {
            match routing.path_to(peer).await {
                Ok(p) => (p.oif, p.mtu),
                Err(e) => {
                    tracing::warn!(tunnel, message = %e.message, "no route to the peer yet");
                    (0, 1500)
                }
            }
        };
        let index = self.ensure_link(&routing, tunnel, uplink).await?;
        let node = routing.node_addresses().await.unwrap_or_default();
        let routes = tunnel_routes(&cfg.remote_ts, &cfg.local_ts, &node, peer, |_| None)
            .into_iter()
            .map(|w| (w.dst, w.src))
            .collect();
        let rb = Rb {
            index,
            metric,
            routes,
            spec_mtu,
            peer,
            link_mtu,
            esp: None,
            children: BTreeSet::new(),
            routed: false,
        };
        let mtu = rb.mtu(Family::V4).or(spec_mtu).unwrap_or(INITIAL_MTU);
        self.set_link(&routing, index, mtu).await?;
        for f in rb
            .routes
            .iter()
            .map(|r| r.0.family())
            .collect::<BTreeSet<_>>()
        {
            if !self.rules.contains(&f) {
                routing.ensure_rule(f).await?;
                self.rules.insert(f);
            }
        }
        for (dst, _) in &rb.routes {
            let msg = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst.addr(), dst.len())
                .map_err(|e| err("fallback route", e))?
                .kind(RouteType::Unreachable)
                .scope(RouteScope::Universe)
                .priority(FALLBACK_METRIC)
                .build();
            routing
                .put_message(msg, &format!("the fallback route for {dst}"))
                .await?;
        }
        self.tunnels.insert(tunnel, rb);
        Ok(())
    }

    async fn ensure_link(
        &self,
        routing: &Routing,
        tunnel: u32,
        uplink: u32,
    ) -> Result<u32, TunnelError> {
        let name = device(tunnel);
        if let Some(l) = routing.link_by_name(&name).await? {
            if link_if_id(&l) == Some(if_id(tunnel)) {
                // a previous run's, with SAs bound to it that may still carry traffic
                return Ok(l.header.index);
            }
            routing
                .handle()
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(|e| err(&format!("removing a stale {name}"), e))?;
        }
        let mut b = LinkXfrm::new(&name, uplink, if_id(tunnel));
        if uplink == 0 {
            b = rtnetlink::LinkMessageBuilder::<LinkXfrm>::new(&name).if_id(if_id(tunnel));
        }
        routing
            .handle()
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| {
                err(
                    &format!(
                        "creating the XFRM interface {name} (needs the kernel's xfrm_interface)"
                    ),
                    e,
                )
            })?;
        routing
            .link_by_name(&name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| err(&name, "vanished after it was created"))
    }

    async fn set_link(&self, routing: &Routing, index: u32, mtu: u32) -> Result<(), TunnelError> {
        routing
            .handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| err("bringing the XFRM interface up", e))
    }

    /// A CHILD SA of the tunnel is in: the routes through its interface go in (or stay), with
    /// the MTU of the negotiated transform.
    pub(crate) async fn child_up(
        &mut self,
        tunnel: u32,
        child: ChildSaId,
        esp: Option<(Transform, bool)>,
    ) -> Result<(), TunnelError> {
        let routing = self.routing()?;
        let Some(rb) = self.tunnels.get_mut(&tunnel) else {
            return Ok(());
        };
        rb.children.insert(child);
        let changed = esp.is_some() && rb.esp != esp;
        if esp.is_some() {
            rb.esp = esp;
        }
        if rb.routed && !changed {
            return Ok(());
        }
        let (index, metric) = (rb.index, rb.metric);
        let mtu4 = rb.mtu(Family::V4);
        if let Some(m) = mtu4 {
            routing_set_mtu(&routing, index, m).await?;
        }
        for (dst, src) in &rb.routes {
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst.addr(), dst.len())
                .map_err(|e| err("tunnel route", e))?
                .output_interface(index)
                .scope(RouteScope::Link)
                .priority(metric);
            if let Some(s) = src.filter(|s| Family::of(s) == dst.family()) {
                b = b.pref_source(s).map_err(|e| err("tunnel route", e))?;
            }
            let mut msg = b.build();
            if let Some(m) = rb.mtu(dst.family()) {
                msg.attributes
                    .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(m)]));
            }
            routing
                .put_message(
                    msg,
                    &format!("the route to {dst} through {}", device(tunnel)),
                )
                .await?;
        }
        rb.routed = true;
        Ok(())
    }

    /// A CHILD SA of the tunnel is gone: with the last one, its routes go (a backup tunnel's,
    /// or the fallback, take over).
    pub(crate) async fn child_down(&mut self, tunnel: u32, child: ChildSaId) {
        let Some(rb) = self.tunnels.get_mut(&tunnel) else {
            return;
        };
        rb.children.remove(&child);
        if !rb.children.is_empty() || !rb.routed {
            return;
        }
        rb.routed = false;
        let (index, metric, routes) = (rb.index, rb.metric, rb.routes.clone());
        if let Ok(routing) = self.routing() {
            for (dst, _) in routes {
                remove_route(&routing, dst, Some(index), metric).await;
            }
        }
    }

    /// The tunnel is gone: its routes, its interface, and fallbacks no other tunnel needs.
    pub(crate) async fn remove(&mut self, tunnel: u32) {
        let Some(rb) = self.tunnels.remove(&tunnel) else {
            return;
        };
        let Ok(routing) = self.routing() else {
            return;
        };
        for (dst, _) in &rb.routes {
            if rb.routed {
                remove_route(&routing, *dst, Some(rb.index), rb.metric).await;
            }
            let needed = self
                .tunnels
                .values()
                .any(|o| o.routes.iter().any(|(d, _)| d == dst));
            if !needed {
                remove_route(&routing, *dst, None, FALLBACK_METRIC).await;
            }
        }
        if let Err(e) = routing.handle().link().del(rb.index).execute().await {
            tracing::warn!(tunnel, error = %e, "removing the XFRM interface");
        }
        if self.tunnels.is_empty() {
            if let Err(e) = routing.remove_rules().await {
                tracing::warn!(message = %e.message, "removing the route-based rules");
            }
            self.rules.clear();
        }
    }

    /// Everything goes (a clean exit).
    pub(crate) async fn shutdown(&mut self) {
        let all: Vec<u32> = self.tunnels.keys().copied().collect();
        for t in all {
            self.remove(t).await;
        }
    }

    /// After a restart: interfaces and routes of ours that no tunnel of this run wants.
    pub(crate) async fn sweep_stale(&mut self) {
        let Some(routing) = self.routing.clone() else {
            return;
        };
        let wanted: BTreeSet<String> = self.tunnels.keys().map(|t| device(*t)).collect();
        let mut links = routing.handle().link().get().execute();
        let mut stale = Vec::new();
        while let Ok(Some(l)) = links.try_next().await {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(n) = name
                && n.starts_with("strait-x")
                && !wanted.contains(&n)
                && link_if_id(&l).is_some_and(|i| i & 0xFF00_0000 == IF_ID_BASE)
            {
                stale.push(l.header.index);
            }
        }
        for index in stale {
            let _ = routing.handle().link().del(index).execute().await;
        }
        let prefixes: BTreeSet<Prefix> = self
            .tunnels
            .values()
            .flat_map(|t| t.routes.iter().map(|r| r.0))
            .collect();
        for p in routing.ours().await.unwrap_or_default() {
            if !prefixes.contains(&p) {
                let _ = routing.remove(p).await;
            }
        }
    }
}

async fn routing_set_mtu(routing: &Routing, index: u32, mtu: u32) -> Result<(), TunnelError> {
    routing
        .handle()
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| err("setting the XFRM interface's MTU", e))
}

async fn remove_route(routing: &Routing, dst: Prefix, oif: Option<u32>, metric: u32) {
    let b = RouteMessageBuilder::<IpAddr>::new().destination_prefix(dst.addr(), dst.len());
    let Ok(mut b) = b else { return };
    b = b.priority(metric).scope(RouteScope::NoWhere);
    if let Some(i) = oif {
        b = b.output_interface(i);
    }
    let mut msg = b.build();
    msg.header.kind = RouteType::Unspec;
    if let Err(e) = routing.remove_message(msg).await {
        tracing::warn!(%dst, message = %e.message, "removing a route-based route");
    }
}

fn link_if_id(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Xfrm(x)) => x.iter().find_map(|x| match x {
                InfoXfrm::IfId(id) => Some(*id),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_ids_and_names_stay_in_our_range() {
        assert_eq!(if_id(1), 0x5A00_0001);
        assert_eq!(if_id(65_534), 0x5A00_FFFE);
        assert_eq!(if_id(1) & 0xFF00_0000, IF_ID_BASE);
        assert_eq!(device(65_534), "strait-x65534");
        assert!(device(65_534).len() <= 15, "IFNAMSIZ");
        // the fallback loses to any metric a tunnel may have (the CRD allows up to 1,000,000)
        const { assert!(FALLBACK_METRIC > 1_000_000) };
    }
}
