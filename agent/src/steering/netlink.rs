//! Puts a [`Plan`] into the node over rtnetlink and takes it out again: the overlay device
//! [`DEVICE`] with its addresses, one permanent neighbour and forwarding entry per gateway, the
//! routes of [`STEER_TABLE`] and the rules that look it up, and the masquerade exemptions in
//! nftables table `inet strait_route`. Only our device, our table's routes of our protocol, the
//! rules pointing at our table and our nftables table are touched.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{LinkVxlan, RouteMessageBuilder};
use strait_xfrm::{Family, Prefix};

use super::plan::{
    DEVICE, OVERLAY6_LEN, Overlay, OverlayAddrs, Plan, STEER_RULE_PRIORITY, STEER_TABLE, Target,
    VXLAN_OVERHEAD,
};
use crate::dataplane::netfilter::{Netfilter, ROUTE_TABLE, TunnelFilter};
use crate::dataplane::routing::{Routing, err};
use crate::error::TunnelError;

/// The alias of [`DEVICE`] that records a loosened uplink: `PREFIX<uplink>=<old value>`.
const ALIAS_PREFIX: &str = "strait-route loosened rp_filter ";

/// The uplink and old filter value an earlier process recorded on the device.
fn loosened_by_alias(l: &LinkMessage) -> Option<(String, String)> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => {
            let (dev, old) = s.strip_prefix(ALIAS_PREFIX)?.split_once('=')?;
            // a name that is a path component of /proc/sys only, and a filter value
            let name_ok =
                (1..=15).contains(&dev.len()) && !dev.contains('/') && dev != "." && dev != "..";
            let valid = name_ok && ["0", "1", "2"].contains(&old);
            valid.then(|| (dev.to_owned(), old.to_owned()))
        }
        _ => None,
    })
}

/// The node's steering state as far as this process put it there.
#[derive(Debug)]
pub struct Steering {
    routing: Routing,
    /// The masquerade exemptions of the tunnels this node steers.
    netfilter: Netfilter,
    overlay: Overlay,
    /// The uplink whose strict reverse-path filter we loosened, and its old value.
    loosened: Option<(String, String)>,
}

impl Steering {
    /// Opens rtnetlink in the caller's network namespace (inside a tokio runtime).
    ///
    /// # Errors
    /// No rtnetlink socket.
    pub fn open(overlay: Overlay) -> Result<Self, TunnelError> {
        Ok(Self {
            routing: Routing::open_table(STEER_TABLE, STEER_RULE_PRIORITY)?,
            netfilter: Netfilter::for_table(ROUTE_TABLE),
            overlay,
            loosened: None,
        })
    }

    /// Makes the node hold `plan` and nothing else of ours: creates or fixes the device,
    /// replaces routes, removes stale routes and neighbours. Idempotent.
    ///
    /// # Errors
    /// A kernel object could not be written; what was done so far stays (the next call
    /// continues from there).
    pub async fn apply(&mut self, plan: &Plan) -> Result<(), TunnelError> {
        let dev = match plan.device {
            Some(me) => Some(self.ensure_device(me).await?),
            None => {
                self.remove_device().await?;
                None
            }
        };
        if let Some(index) = dev {
            self.sync_peers(index, &plan.peers()).await?;
        }
        let mut families = BTreeSet::new();
        for (dst, target) in &plan.routes {
            families.insert(dst.family());
            self.put_route(*dst, *target, dev).await?;
        }
        for stale in self.routing.ours().await? {
            if !plan.routes.contains_key(&stale) {
                self.routing.remove(stale).await?;
            }
        }
        for f in [Family::V4, Family::V6] {
            if families.contains(&f) {
                self.routing.ensure_rule(f).await?;
            }
        }
        if families.is_empty() {
            self.routing.remove_rules().await?;
        }
        // without nft the exemption is missing: said once by `Netfilter`, steering goes on
        let exempt = (0u32..)
            .zip(plan.exempt.values())
            .map(|(i, (local, remote))| {
                let f = TunnelFilter {
                    local: local.clone(),
                    remote: remote.clone(),
                    ..TunnelFilter::default()
                };
                (i, f)
            })
            .collect();
        self.netfilter.set_all(exempt).await;
        Ok(())
    }

    /// Removes everything of ours: routes, rules, the device (and with it its neighbours and
    /// addresses), and puts back a loosened reverse-path filter.
    ///
    /// # Errors
    /// Something could not be removed (the rest still was tried).
    pub async fn remove_all(&mut self) -> Result<(), TunnelError> {
        self.netfilter.remove().await;
        let mut first = None;
        for p in self.routing.ours().await.unwrap_or_default() {
            if let Err(e) = self.routing.remove(p).await {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.routing.remove_rules().await {
            first.get_or_insert(e);
        }
        if let Err(e) = self.remove_device().await {
            first.get_or_insert(e);
        }
        if let Some((dev, old)) = self.loosened.take()
            && let Err(e) = write_rp_filter(&dev, &old)
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// The index and MTU of the link that holds `addr`.
    async fn uplink_of(&self, addr: Ipv4Addr) -> Result<(u32, String, u32), TunnelError> {
        let h = self.routing.handle();
        let mut addrs = h.address().get().execute();
        let mut index = None;
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| err("reading the node's addresses", e))?
        {
            if m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(v)) if *v == addr))
            {
                index = Some(m.header.index);
                break;
            }
        }
        let index = index.ok_or_else(|| {
            err(
                "the VXLAN overlay",
                format!("this node's internal address {addr} is on none of its interfaces"),
            )
        })?;
        let mut links = h.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| err("reading the uplink", e))?
            .ok_or_else(|| err("reading the uplink", format!("no link {index}")))?;
        let mut name = String::new();
        let mut mtu = 1500;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok((index, name, mtu))
    }

    async fn ensure_device(&mut self, me: OverlayAddrs) -> Result<u32, TunnelError> {
        let (up_index, up_name, up_mtu) = self.uplink_of(me.node).await?;
        let mtu = up_mtu.saturating_sub(VXLAN_OVERHEAD);
        let index = match self.routing.link_by_name(DEVICE).await? {
            Some(l) if is_our_device(&l, me, self.overlay) => {
                // an earlier process loosened the uplink and left it so for us (a restart):
                // its alias says what to put back
                if self.loosened.is_none() {
                    self.loosened = loosened_by_alias(&l);
                }
                l.header.index
            }
            Some(l) => {
                // ours from an older configuration (another address, port or VNI): remake it
                self.delete_link(l.header.index).await?;
                self.create_device(me, up_index, mtu).await?
            }
            None => self.create_device(me, up_index, mtu).await?,
        };
        let h = self.routing.handle();
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(index)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(&format!("bringing {DEVICE} up"), e))?;
        for (addr, len) in [
            (IpAddr::V4(me.v4), self.overlay.cidr.len()),
            (IpAddr::V6(me.v6), OVERLAY6_LEN),
        ] {
            h.address()
                .add(index, addr, len)
                .replace()
                .execute()
                .await
                .map_err(|e| err(&format!("adding {addr}/{len} to {DEVICE}"), e))?;
        }
        // Traffic from other nodes' pods arrives here but their replies leave by the CNI: the
        // return path is asymmetric, so the overlay filters loosely (as Submariner's does).
        // A node that refuses (read-only /proc/sys in an unprivileged pod) still steers; it
        // says what to set instead.
        if let Err(e) = write_rp_filter(DEVICE, "2") {
            tracing::warn!(error = %e.message, "set net.ipv4.conf.{DEVICE}.rp_filter=2 on the node");
        }
        // Replies from the remote site reach a non-gateway node on its uplink while the route
        // back points into the overlay: loosen a strict uplink (and put it back on exit).
        if self.loosened.is_none() && effective_rp_filter(&up_name) == Some(1) {
            let old = read_rp_filter(&up_name).unwrap_or_else(|| "1".into());
            match write_rp_filter(&up_name, "2") {
                Ok(()) => {
                    tracing::info!(uplink = %up_name, "reverse-path filter of the uplink loosened (2)");
                    // kept with the device, so that a process that adopts it can put it back
                    let alias = format!("{ALIAS_PREFIX}{up_name}={old}");
                    if let Err(e) = h
                        .link()
                        .set(
                            rtnetlink::LinkUnspec::new_with_index(index)
                                .alias(alias)
                                .build(),
                        )
                        .execute()
                        .await
                    {
                        tracing::warn!(error = %e, "cannot note the uplink's filter on {DEVICE}");
                    }
                    self.loosened = Some((up_name, old));
                }
                Err(e) => tracing::warn!(
                    error = %e.message,
                    "the uplink filters reverse paths strictly: replies from the remote site \
                     may be dropped; set net.ipv4.conf.{up_name}.rp_filter=2 on the node"
                ),
            }
        }
        Ok(index)
    }

    async fn create_device(
        &self,
        me: OverlayAddrs,
        uplink: u32,
        mtu: u32,
    ) -> Result<u32, TunnelError> {
        let msg = LinkVxlan::new(DEVICE, self.overlay.vni)
            .port(self.overlay.port)
            .local(me.node)
            .dev(uplink)
            .learning(false)
            .address(me.mac.to_vec())
            .mtu(mtu)
            .build();
        self.routing
            .handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| err(&format!("creating the VXLAN device {DEVICE}"), e))?;
        self.routing
            .link_by_name(DEVICE)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| err("creating the VXLAN device", "it vanished at once"))
    }

    async fn delete_link(&self, index: u32) -> Result<(), TunnelError> {
        match self.routing.handle().link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(()),
            Err(e) => Err(err(&format!("removing {DEVICE}"), e)),
        }
    }

    async fn remove_device(&self) -> Result<(), TunnelError> {
        match self.routing.link_by_name(DEVICE).await? {
            Some(l) => self.delete_link(l.header.index).await,
            None => Ok(()),
        }
    }

    /// One permanent neighbour (IPv4 and IPv6) and one forwarding entry per gateway; entries
    /// for gateways no longer used go.
    async fn sync_peers(&self, index: u32, peers: &[OverlayAddrs]) -> Result<(), TunnelError> {
        let h = self.routing.handle();
        for p in peers {
            for ip in [IpAddr::V4(p.v4), IpAddr::V6(p.v6)] {
                h.neighbours()
                    .add(index, ip)
                    .link_layer_address(&p.mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| err(&format!("neighbour {ip} on {DEVICE}"), e))?;
            }
            h.neighbours()
                .add_bridge(index, &p.mac)
                .destination(IpAddr::V4(p.node))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| err(&format!("forwarding entry to {} on {DEVICE}", p.node), e))?;
        }
        let wanted_macs: BTreeSet<[u8; 6]> = peers.iter().map(|p| p.mac).collect();
        let mut stale: Vec<NeighbourMessage> = Vec::new();
        for family in [
            AddressFamily::Inet,
            AddressFamily::Inet6,
            AddressFamily::Bridge,
        ] {
            let mut dump = h.neighbours().get().set_address_family(family).execute();
            while let Some(n) = dump
                .try_next()
                .await
                .map_err(|e| err("listing neighbours", e))?
            {
                if n.header.ifindex != index {
                    continue;
                }
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    _ => None,
                });
                let has_dst = n.attributes.iter().any(|a| {
                    matches!(
                        a,
                        NeighbourAttribute::Destination(
                            NeighbourAddress::Inet(_) | NeighbourAddress::Inet6(_)
                        )
                    )
                });
                // ours: a MAC of the overlay's form that no gateway in use has
                if let Some(m) = mac
                    && m[..2] == [0x0a, 0x5a]
                    && !wanted_macs.contains(&m)
                    && (family == AddressFamily::Bridge || has_dst)
                {
                    stale.push(n);
                }
            }
        }
        for n in stale {
            match h.neighbours().del(n).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -2 => {}
                Err(e) => return Err(err("removing a stale overlay neighbour", e)),
            }
        }
        Ok(())
    }

    async fn put_route(
        &self,
        dst: Prefix,
        target: Target,
        dev: Option<u32>,
    ) -> Result<(), TunnelError> {
        let what = format!("steering route to {dst} in table {STEER_TABLE}");
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.len())
            .map_err(|e| err(&what, e))?;
        let msg = match (target, dev) {
            (Target::Overlay(gw), Some(index)) => {
                let via = match dst.family() {
                    Family::V4 => IpAddr::V4(gw.v4),
                    Family::V6 => IpAddr::V6(gw.v6),
                };
                b.gateway(via)
                    .map_err(|e| err(&what, e))?
                    .output_interface(index)
                    .onlink()
                    .build()
            }
            (Target::Direct(gw), _) if dst.family() == Family::V4 => b
                .gateway(IpAddr::V4(gw))
                .map_err(|e| err(&what, e))?
                .build(),
            // no way there (or an IPv6 subnet with only an IPv4 next hop): refuse it here
            _ => b
                .kind(RouteType::Unreachable)
                .scope(RouteScope::Universe)
                .build(),
        };
        self.routing.put_message(msg, &what).await
    }
}

fn is_our_device(l: &LinkMessage, me: OverlayAddrs, o: Overlay) -> bool {
    let mac_ok = l
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == me.mac));
    let info = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(info) = info else { return false };
    let vx = info.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
        _ => None,
    });
    let Some(vx) = vx else { return false };
    let vni_ok = vx
        .iter()
        .any(|i| matches!(i, InfoVxlan::Id(v) if *v == o.vni));
    let port_ok = vx
        .iter()
        .any(|i| matches!(i, InfoVxlan::Port(p) if *p == o.port));
    let local_ok = vx
        .iter()
        .any(|i| matches!(i, InfoVxlan::Local(a) if *a == me.node));
    mac_ok && vni_ok && port_ok && local_ok
}

fn rp_path(dev: &str) -> std::path::PathBuf {
    std::path::Path::new("/proc/sys/net/ipv4/conf")
        .join(dev)
        .join("rp_filter")
}

fn read_rp_filter(dev: &str) -> Option<String> {
    std::fs::read_to_string(rp_path(dev))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The filter the kernel applies on `dev`: the larger of `all` and the device's own.
fn effective_rp_filter(dev: &str) -> Option<u8> {
    let own: u8 = read_rp_filter(dev)?.parse().ok()?;
    let all: u8 = read_rp_filter("all")?.parse().ok()?;
    Some(own.max(all))
}

fn write_rp_filter(dev: &str, value: &str) -> Result<(), TunnelError> {
    std::fs::write(rp_path(dev), value)
        .map_err(|e| err(&format!("setting net.ipv4.conf.{dev}.rp_filter"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_alias(a: &str) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfAlias(a.to_owned()));
        l
    }

    #[test]
    fn a_loosened_uplink_is_read_back_from_the_alias_and_nothing_else_is() {
        assert_eq!(
            loosened_by_alias(&with_alias(&format!("{ALIAS_PREFIX}eth0=1"))),
            Some(("eth0".to_owned(), "1".to_owned()))
        );
        for bad in [
            "eth0=1".to_owned(),
            format!("{ALIAS_PREFIX}eth0"),
            format!("{ALIAS_PREFIX}=1"),
            format!("{ALIAS_PREFIX}eth0=7"),
            format!("{ALIAS_PREFIX}../../kernel=1"),
            format!("{ALIAS_PREFIX}..=1"),
            format!("{ALIAS_PREFIX}a-name-too-long-for-linux=1"),
        ] {
            assert_eq!(loosened_by_alias(&with_alias(&bad)), None, "{bad}");
        }
        assert_eq!(loosened_by_alias(&LinkMessage::default()), None);
    }
}
