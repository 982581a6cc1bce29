//! The gateway's routes and rules over rtnetlink: each remote subnet in [`ROUTE_TABLE`] (with
//! `src` from the local subnets and the MTU `routes.rs` computed), next hop the kernel's own way
//! to the peer, and one rule per family that sends lookups through the table before `main`.
//! Only routes of our table carrying our protocol ([`ROUTE_PROTOCOL`]) and rules pointing at
//! our table are ever touched.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use strait_crds::contract::StatusReason;
use strait_xfrm::{Family, Prefix};

use super::routes::{ROUTE_PROTOCOL, ROUTE_TABLE, RULE_PRIORITY, WantedRoute};
use crate::error::TunnelError;

/// A handle on the node's routing (rtnetlink), in the caller's network namespace.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    handle: Handle,
    table: u32,
    rule_priority: u32,
}

/// A routing failure: what was being done, and the kernel's answer.
pub(crate) fn err(what: &str, e: impl std::fmt::Display) -> TunnelError {
    TunnelError::new(StatusReason::KernelUnsupported, format!("{what}: {e}"))
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The kernel's way to a peer: next hop (none when on-link), interface, the interface's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathToPeer {
    pub(crate) gateway: Option<IpAddr>,
    pub(crate) oif: u32,
    pub(crate) mtu: u32,
}

fn is_eexist(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_eexist())
}

fn is_enoent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc_enoent() || m.raw_code() == -libc_esrch())
}

// errno values (Linux): no libc dependency for three constants
const fn libc_eexist() -> i32 {
    17
}
const fn libc_enoent() -> i32 {
    2
}
const fn libc_esrch() -> i32 {
    3
}

impl Routing {
    /// Opens an rtnetlink socket (inside a tokio runtime) for the gateway's table.
    pub(crate) fn open() -> Result<Self, TunnelError> {
        Self::open_table(ROUTE_TABLE, RULE_PRIORITY)
    }

    /// Opens an rtnetlink socket for our routes in `table`, looked up by a rule at
    /// `rule_priority`.
    pub(crate) fn open_table(table: u32, rule_priority: u32) -> Result<Self, TunnelError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| err("opening rtnetlink", e))?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            table,
            rule_priority,
        })
    }

    /// The rtnetlink handle, for links and neighbours.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link named `name`, if there is one.
    pub(crate) async fn link_by_name(
        &self,
        name: &str,
    ) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, TunnelError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(l) => Ok(l),
            // ENODEV: no such link
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
            Err(e) => Err(err(&format!("reading link {name}"), e)),
        }
    }

    /// Puts `msg` in our table with our protocol.
    fn make_ours(&self, msg: &mut RouteMessage) {
        msg.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        msg.attributes.push(RouteAttribute::Table(self.table));
        // RT_TABLE_COMPAT in the header when the id needs the attribute
        msg.header.table = u8::try_from(self.table).unwrap_or(252);
    }

    /// Installs or replaces a route message built by the caller, in our table with our
    /// protocol.
    pub(crate) async fn put_message(
        &self,
        mut msg: RouteMessage,
        what: &str,
    ) -> Result<(), TunnelError> {
        self.make_ours(&mut msg);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| err(what, e))
    }

    /// How the kernel reaches `peer` now (`ip route get PEER`).
    pub(crate) async fn path_to(&self, peer: IpAddr) -> Result<PathToPeer, TunnelError> {
        let len = match peer {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(peer, len)
            .map_err(|e| err("route lookup", e))?
            .build();
        let mut replies = self.handle.route().get(msg).execute();
        let route = replies
            .try_next()
            .await
            .map_err(|e| err(&format!("no route to the peer {peer}"), e))?
            .ok_or_else(|| err("route lookup", format!("no answer for {peer}")))?;
        let mut gateway = None;
        let mut oif = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Gateway(g) => gateway = address(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| err("route lookup", format!("no interface towards {peer}")))?;
        let mtu = self.link_mtu(oif).await?;
        Ok(PathToPeer { gateway, oif, mtu })
    }

    async fn link_mtu(&self, index: u32) -> Result<u32, TunnelError> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| err("reading the uplink", e))?
            .ok_or_else(|| err("reading the uplink", format!("no link {index}")))?;
        Ok(link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500))
    }

    /// Every address configured on the node (any interface).
    pub(crate) async fn node_addresses(&self) -> Result<Vec<IpAddr>, TunnelError> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| err("reading the node's addresses", e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a
                    && !out.contains(ip)
                {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }

    /// Installs or replaces `r` in our table, with the next hop of `path`.
    pub(crate) async fn put(&self, r: &WantedRoute, path: &PathToPeer) -> Result<(), TunnelError> {
        let what = format!("route to {} in table {}", r.dst, self.table);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.addr(), r.dst.len())
            .map_err(|e| err(&what, e))?
            .table_id(self.table)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .output_interface(path.oif);
        match path.gateway.filter(|g| Family::of(g) == r.dst.family()) {
            Some(g) => b = b.gateway(g).map_err(|e| err(&what, e))?,
            // the peer is on the link (or of the other family): as `ip route ... dev X` sets it
            None => b = b.scope(RouteScope::Link),
        }
        if let Some(src) = r.src {
            b = b.pref_source(src).map_err(|e| err(&what, e))?;
        }
        let mut msg = b.build();
        if let Some(mtu) = r.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        self.put_message(msg, &what).await
    }

    /// Removes the route of ours `msg` describes (destination, and whatever else it sets, such
    /// as the metric and interface), in our table with our protocol; absent: fine.
    pub(crate) async fn remove_message(&self, mut msg: RouteMessage) -> Result<(), TunnelError> {
        self.make_ours(&mut msg);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(err("removing a route", e)),
        }
    }

    /// Removes our route to `dst` (absent: fine).
    pub(crate) async fn remove(&self, dst: Prefix) -> Result<(), TunnelError> {
        let what = format!("removing the route to {dst}");
        let mut msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.len())
            .map_err(|e| err(&what, e))?
            .table_id(self.table)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            // any scope (as `ip route del` asks): ours are link or universe
            .scope(RouteScope::NoWhere)
            .build();
        // any type too: the steering table holds `unreachable` routes
        msg.header.kind = RouteType::Unspec;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(err(&what, e)),
        }
    }

    /// Our routes now in the kernel (our table, our protocol), by destination.
    pub(crate) async fn ours(&self) -> Result<Vec<Prefix>, TunnelError> {
        let mut out = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            let mut msg = RouteMessageBuilder::<IpAddr>::new().build();
            msg.header.address_family = match family {
                IpVersion::V4 => AddressFamily::Inet,
                IpVersion::V6 => AddressFamily::Inet6,
            };
            let mut routes = self.handle.route().get(msg).execute();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(|e| err("listing routes", e))?
            {
                if let Some(p) = our_destination(&r, self.table) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Makes sure the rule `from all lookup <our table>` exists for `family`.
    pub(crate) async fn ensure_rule(&self, family: Family) -> Result<(), TunnelError> {
        let req = self
            .handle
            .rule()
            .add()
            .table_id(self.table)
            .priority(self.rule_priority)
            .action(RuleAction::ToTable);
        let r = match family {
            Family::V4 => req.v4().execute().await,
            Family::V6 => req.v6().execute().await,
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if is_eexist(&e) => Ok(()),
            Err(e) => Err(err(&format!("adding the rule for table {}", self.table), e)),
        }
    }

    /// Removes every rule that points at our table.
    pub(crate) async fn remove_rules(&self) -> Result<(), TunnelError> {
        for v in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<_> = self
                .handle
                .rule()
                .get(v)
                .execute()
                .try_collect()
                .await
                .map_err(|e| err("listing rules", e))?;
            for rule in rules {
                let table = rule
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RuleAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(rule.header.table));
                if table != self.table {
                    continue;
                }
                match self.handle.rule().del(rule).execute().await {
                    Ok(()) => {}
                    Err(e) if is_enoent(&e) => {}
                    Err(e) => return Err(err("removing our rule", e)),
                }
            }
        }
        Ok(())
    }
}

/// The destination of one of our routes (our table and protocol), else `None`.
fn our_destination(r: &RouteMessage, ours: u32) -> Option<Prefix> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != ours || u8::from(r.header.protocol) != ROUTE_PROTOCOL {
        return None;
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => address(d),
        _ => None,
    })?;
    Prefix::new(dst, r.header.destination_prefix_length).ok()
}
