//! The gateway's netfilter rules, in an nftables table of Strait's own (`inet strait`), written
//! whole in one `nft` transaction every time a tunnel changes and deleted on a clean exit:
//!
//! - **masquerade exemption** (`postrouting`, a NAT chain just before the usual `srcnat`
//!   priority): traffic from a tunnel's local subnets to its remote subnets gets an identity
//!   source NAT. netfilter consults the NAT chains of a hook in priority order only until one
//!   binds the connection, so the CNI's or kube-proxy's masquerade (in tables we do not own,
//!   iptables or nftables) no longer rewrites the source out of the tunnel's policies. An
//!   `accept` would not do: in nftables it ends only our own chain.
//! - **TCP MSS clamping** (`forward`, at the mangle priority): SYNs between the tunnel's subnets
//!   carry at most the MSS that fits the tunnel's route MTU, so TCP works where ICMP
//!   "fragmentation needed" is filtered.
//!
//! - **IKE only from known peers** (`input`, at the filter priority, with [`IkeGuard`]): while
//!   every tunnel has a fixed peer address, UDP to the IKE and NAT-T ports and ESP from any
//!   other address are dropped and counted in the named counter `refused`. A tunnel that
//!   accepts any peer address turns this off, as there is then no list to admit. Our `accept`
//!   ends only our chain, so other tables' rules still apply to the peers' packets.
//!
//! The route role keeps the same kind of table of its own, `inet strait_route`
//! ([`ROUTE_TABLE`]), with masquerade exemptions only, for pods on nodes that steer.
//!
//! The rules are built with the `nftables` crate (typed JSON for `nft -j`, MIT/Apache-2.0) and
//! applied by the node's `nft`, as kube-proxy's nftables mode does. Without `nft` the agent says
//! so once and runs without these rules.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::expr::TcpOption;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix as NftPrefix, SetItem,
};
use nftables::schema::{
    Chain, Counter as CounterObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table,
};
use nftables::stmt::{Counter, Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use strait_xfrm::{Family, Prefix};

/// The gateway agent's table (family `inet`).
pub const TABLE: &str = "strait";
/// The route role's table: only masquerade exemptions, for the pods of nodes that steer.
pub const ROUTE_TABLE: &str = "strait_route";
/// `srcnat` (100) minus 10: before the masquerade rules of iptables and of other tables.
const NAT_PRIORITY: i32 = 90;
/// `mangle` (-150), where iptables' TCPMSS runs.
const MANGLE_PRIORITY: i32 = -150;
/// `filter` (0).
const FILTER_PRIORITY: i32 = 0;
/// The named counter of IKE and ESP packets the firewall dropped.
pub const REFUSED_COUNTER: &str = "refused";

/// The firewall for IKE from known peers: the node's IKE and NAT-T ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeGuard {
    pub ike_port: u16,
    pub natt_port: u16,
}

impl IkeGuard {
    /// The guard for these ports when `enabled` (`--ike-firewall`).
    pub fn when(enabled: bool, ike_port: u16, natt_port: u16) -> Option<Self> {
        enabled.then_some(Self {
            ike_port,
            natt_port,
        })
    }
}

/// What one tunnel needs from netfilter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelFilter {
    pub local: Vec<Prefix>,
    pub remote: Vec<Prefix>,
    /// The route MTU of the tunnel's IPv4 and IPv6 traffic, when known.
    pub mtu_v4: Option<u32>,
    pub mtu_v6: Option<u32>,
    /// The peer's configured addresses (`remote.address` and its fallbacks, names resolved);
    /// empty when the tunnel accepts any address.
    pub peers: Vec<IpAddr>,
}

/// The TCP MSS for a route MTU: the MTU less the IP and TCP headers.
pub fn mss_for(family: Family, mtu: u32) -> Option<u32> {
    let headers = match family {
        Family::V4 => 40,
        Family::V6 => 60,
    };
    mtu.checked_sub(headers).filter(|m| *m >= 536)
}

/// The commands that replace our table with one holding `tunnels`' rules (the `add` before
/// the `delete` makes the delete succeed when no table exists; all of it is one transaction,
/// so the rules are never missing in between).
pub fn replace_table(
    name: &'static str,
    tunnels: &BTreeMap<u32, TunnelFilter>,
    guard: Option<IkeGuard>,
) -> Nftables<'static> {
    let mut cmds = delete_table(name).objects.into_owned();
    cmds.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(
        name,
    )))));
    let guarded = guard.and_then(|g| known_peers(tunnels).map(|p| (g, p)));
    let input = guarded
        .as_ref()
        .map(|_| ("input", NfHook::Input, NfChainType::Filter, FILTER_PRIORITY));
    let table_name = name;
    for (chain, hook, kind, prio) in [
        Some((
            "postrouting",
            NfHook::Postrouting,
            NfChainType::NAT,
            NAT_PRIORITY,
        )),
        Some((
            "forward",
            NfHook::Forward,
            NfChainType::Filter,
            MANGLE_PRIORITY,
        )),
        input,
    ]
    .into_iter()
    .flatten()
    {
        cmds.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
            Chain {
                family: NfFamily::INet,
                table: table_name.into(),
                name: chain.into(),
                _type: Some(kind),
                hook: Some(hook),
                prio: Some(prio),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            },
        ))));
    }
    for (idx, t) in tunnels {
        let comment = format!("strait tunnel {idx}");
        for l in &t.local {
            for r in t.remote.iter().filter(|r| r.family() == l.family()) {
                let fam = l.family();
                cmds.push(rule(
                    table_name,
                    "postrouting",
                    &comment,
                    exempt(fam, *l, *r),
                ));
                let mtu = match fam {
                    Family::V4 => t.mtu_v4,
                    Family::V6 => t.mtu_v6,
                };
                if let Some(mss) = mtu.and_then(|m| mss_for(fam, m)) {
                    // both directions: a connection may be opened from either site
                    cmds.push(rule(
                        table_name,
                        "forward",
                        &comment,
                        clamp(fam, *l, *r, mss),
                    ));
                    cmds.push(rule(
                        table_name,
                        "forward",
                        &comment,
                        clamp(fam, *r, *l, mss),
                    ));
                }
            }
        }
    }
    if let Some((g, peers)) = guarded {
        cmds.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Counter(
            CounterObject {
                family: NfFamily::INet,
                table: table_name.into(),
                name: REFUSED_COUNTER.into(),
                handle: None,
                packets: None,
                bytes: None,
            },
        ))));
        cmds.extend(firewall(table_name, g, &peers));
    }
    Nftables {
        objects: Cow::Owned(cmds),
    }
}

/// Every tunnel's fixed peer addresses, or `None` when there is no tunnel or one accepts any
/// address (there is then nothing to guard, or no list to admit).
fn known_peers(tunnels: &BTreeMap<u32, TunnelFilter>) -> Option<BTreeSet<IpAddr>> {
    if tunnels.is_empty() {
        return None;
    }
    let mut all = BTreeSet::new();
    for t in tunnels.values() {
        if t.peers.is_empty() || t.peers.iter().any(IpAddr::is_unspecified) {
            return None;
        }
        all.extend(&t.peers);
    }
    Some(all)
}

/// The `input` chain: loopback and the peers pass, then IKE, NAT-T and ESP are dropped.
fn firewall(
    table_name: &'static str,
    g: IkeGuard,
    peers: &BTreeSet<IpAddr>,
) -> Vec<NfObject<'static>> {
    let comment = "strait: IKE and ESP only from the tunnels' peers";
    let meta = |key| Expression::Named(NamedExpression::Meta(Meta { key }));
    let eq = |left, right| {
        Statement::Match(Match {
            left,
            right,
            op: Operator::EQ,
        })
    };
    let accept = Statement::Accept(None);
    let refuse = || {
        [
            Statement::Counter(Counter::Named(REFUSED_COUNTER.into())),
            Statement::Drop(None),
        ]
    };
    let mut rules = vec![rule(
        table_name,
        "input",
        comment,
        vec![
            eq(meta(MetaKey::Iifname), Expression::String("lo".into())),
            accept.clone(),
        ],
    )];
    for f in [Family::V4, Family::V6] {
        let set: Vec<SetItem<'static>> = peers
            .iter()
            .filter(|p| Family::of(p) == f)
            .map(|p| SetItem::Element(Expression::String(p.to_string().into())))
            .collect();
        if !set.is_empty() {
            rules.push(rule(
                table_name,
                "input",
                comment,
                vec![
                    eq(
                        field(proto(f), "saddr"),
                        Expression::Named(NamedExpression::Set(set)),
                    ),
                    accept.clone(),
                ],
            ));
        }
    }
    let ports = [g.ike_port, g.natt_port]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| SetItem::Element(Expression::Number(u32::from(p))))
        .collect();
    let mut udp = vec![eq(
        field("udp", "dport"),
        Expression::Named(NamedExpression::Set(ports)),
    )];
    udp.extend(refuse());
    rules.push(rule(table_name, "input", comment, udp));
    let mut esp = vec![eq(meta(MetaKey::L4proto), Expression::String("esp".into()))];
    esp.extend(refuse());
    rules.push(rule(table_name, "input", comment, esp));
    rules
}

/// The commands that delete table `name` (whether or not it exists).
pub fn delete_table(name: &'static str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(name)))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(name)))),
        ]),
    }
}

fn table(name: &'static str) -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: name.into(),
        handle: None,
    }
}

fn rule(
    table: &'static str,
    chain: &str,
    comment: &str,
    expr: Vec<Statement<'static>>,
) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: table.into(),
        chain: chain.to_owned().into(),
        expr: Cow::Owned(expr),
        comment: Some(comment.to_owned().into()),
        ..Rule::default()
    })))
}

fn proto(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn is_in(f: Family, which: &'static str, p: Prefix) -> Statement<'static> {
    Statement::Match(Match {
        left: field(proto(f), which),
        right: Expression::Named(NamedExpression::Prefix(NftPrefix {
            addr: Box::new(Expression::String(p.addr().to_string().into())),
            len: u32::from(p.len()),
        })),
        op: Operator::EQ,
    })
}

/// `ip saddr L ip daddr R snat ip to ip saddr`: an identity binding, so no later NAT chain
/// rewrites the source.
fn exempt(f: Family, local: Prefix, remote: Prefix) -> Vec<Statement<'static>> {
    vec![
        is_in(f, "saddr", local),
        is_in(f, "daddr", remote),
        Statement::SNAT(Some(NAT {
            addr: Some(field(proto(f), "saddr")),
            family: Some(match f {
                Family::V4 => NATFamily::IP,
                Family::V6 => NATFamily::IP6,
            }),
            port: None,
            flags: None,
        })),
    ]
}

/// `ip saddr S ip daddr D tcp flags syn tcp option maxseg size > M tcp option maxseg size set M`.
fn clamp(f: Family, src: Prefix, dst: Prefix, mss: u32) -> Vec<Statement<'static>> {
    let maxseg = || {
        Expression::Named(NamedExpression::TcpOption(TcpOption {
            name: "maxseg".into(),
            field: Some("size".into()),
        }))
    };
    vec![
        is_in(f, "saddr", src),
        is_in(f, "daddr", dst),
        Statement::Match(Match {
            left: field("tcp", "flags"),
            right: Expression::String("syn".into()),
            op: Operator::IN,
        }),
        Statement::Match(Match {
            left: maxseg(),
            right: Expression::Number(mss),
            // nftables 0.6 names `>` "LT" (its LT and GT are swapped; the unit test pins `>`)
            op: Operator::LT,
        }),
        Statement::Mangle(Mangle {
            key: maxseg(),
            value: Expression::Number(mss),
        }),
    ]
}

/// The table as the agent wants it, applied through the node's `nft`.
#[derive(Debug)]
pub struct Netfilter {
    /// The table (family `inet`) this instance owns.
    table: &'static str,
    nft: String,
    guard: Option<IkeGuard>,
    tunnels: BTreeMap<u32, TunnelFilter>,
    /// What was last applied; `None` before the first apply or after a failed one.
    applied: Option<BTreeMap<u32, TunnelFilter>>,
    /// `nft` is missing or refused: said once, then nothing more is tried until it works.
    warned: bool,
}

impl Default for Netfilter {
    /// The gateway agent's table, [`TABLE`].
    fn default() -> Self {
        Self::for_table(TABLE)
    }
}

impl Netfilter {
    /// The rules of table `inet <table>` (the route role keeps [`ROUTE_TABLE`]).
    pub fn for_table(table: &'static str) -> Self {
        Self {
            table,
            nft: std::env::var("STRAIT_NFT").unwrap_or_else(|_| "nft".to_owned()),
            guard: None,
            tunnels: BTreeMap::new(),
            applied: None,
            warned: false,
        }
    }

    /// Turns the firewall for IKE from known peers on (from the next change of the table).
    pub fn guard_ike(&mut self, guard: IkeGuard) {
        self.guard = Some(guard);
        self.applied = None;
    }

    /// Sets (or with `None` removes) a tunnel's rules and applies the table when it changed.
    pub async fn set(&mut self, tunnel: u32, want: Option<TunnelFilter>) {
        match want {
            Some(w) => self.tunnels.insert(tunnel, w),
            None => self.tunnels.remove(&tunnel),
        };
        self.apply().await;
    }

    /// Replaces every tunnel's rules with `tunnels` and applies the table when it changed.
    pub async fn set_all(&mut self, tunnels: BTreeMap<u32, TunnelFilter>) {
        self.tunnels = tunnels;
        self.apply().await;
    }

    async fn apply(&mut self) {
        if self.applied.as_ref() == Some(&self.tunnels) {
            return;
        }
        let r = self
            .run(&replace_table(self.table, &self.tunnels, self.guard))
            .await;
        match r {
            Ok(()) => {
                self.applied = Some(self.tunnels.clone());
                self.warned = false;
            }
            Err(e) => {
                self.applied = None;
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(
                        error = %e,
                        "nftables: no masquerade exemption, MSS clamping or IKE firewall for \
                         the tunnels (traffic the node masquerades leaves the tunnel's policies)"
                    );
                }
            }
        }
    }

    /// Deletes the table (a clean exit).
    pub async fn remove(&mut self) {
        self.tunnels.clear();
        if self.applied.take().is_none() && self.warned {
            return;
        }
        if let Err(e) = self.run(&delete_table(self.table)).await {
            tracing::warn!(error = %e, table = self.table, "nftables: removing our table");
        }
    }

    async fn run(&self, cmds: &Nftables<'_>) -> Result<(), nftables::helper::NftablesError> {
        nftables::helper::apply_ruleset_with_args_async(
            cmds,
            Some(&self.nft),
            nftables::helper::DEFAULT_ARGS,
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn json(n: &Nftables) -> serde_json::Value {
        serde_json::to_value(n).unwrap()
    }

    #[test]
    fn mss_is_the_mtu_less_the_headers() {
        assert_eq!(mss_for(Family::V4, 1438), Some(1398));
        assert_eq!(mss_for(Family::V6, 1438), Some(1378));
        // below the IPv4 minimum MSS: no clamp rather than a broken one
        assert_eq!(mss_for(Family::V4, 500), None);
    }

    #[test]
    fn rules_only_for_same_family_pairs_and_clamps_only_with_an_mtu() {
        let mut t = BTreeMap::new();
        t.insert(
            3,
            TunnelFilter {
                local: vec![p("10.244.0.0/16"), p("fd00::/64")],
                remote: vec![p("203.0.113.0/24")],
                mtu_v4: Some(1400),
                mtu_v6: None,
                peers: Vec::new(),
            },
        );
        let v = json(&replace_table(TABLE, &t, None));
        let rules: Vec<&serde_json::Value> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("rule"))
            .collect();
        // one exemption (v4 × v4; fd00::/64 has no IPv6 remote) and a clamp each way
        assert_eq!(rules.len(), 3, "{v:#}");
        assert_eq!(rules[0]["chain"], "postrouting");
        let snat = &rules[0]["expr"][2]["snat"];
        assert_eq!(snat["family"], "ip");
        assert_eq!(snat["addr"]["payload"]["field"], "saddr");
        assert_eq!(
            rules[0]["expr"][0]["match"]["right"]["prefix"]["addr"],
            "10.244.0.0"
        );
        assert_eq!(rules[1]["chain"], "forward");
        assert_eq!(rules[1]["expr"][3]["match"]["op"], ">");
        assert_eq!(rules[1]["expr"][4]["mangle"]["value"], 1360);
        // the second clamp is the way back
        assert_eq!(
            rules[2]["expr"][0]["match"]["right"]["prefix"]["addr"],
            "203.0.113.0"
        );
        assert_eq!(rules[0]["comment"], "strait tunnel 3");
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction() {
        let v = json(&replace_table(TABLE, &BTreeMap::new(), None));
        let cmds = v["nftables"].as_array().unwrap();
        assert!(cmds[0]["add"]["table"]["name"] == TABLE);
        assert!(cmds[1]["delete"]["table"]["name"] == TABLE);
        assert!(cmds[2]["add"]["table"]["family"] == "inet");
        let chains: Vec<_> = cmds.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0]["prio"], NAT_PRIORITY);
        assert_eq!(chains[0]["type"], "nat");
    }

    const GUARD: IkeGuard = IkeGuard {
        ike_port: 500,
        natt_port: 4500,
    };

    fn to(peer: Option<&str>) -> TunnelFilter {
        TunnelFilter {
            local: vec![p("10.244.0.0/16")],
            remote: vec![p("203.0.113.0/24")],
            peers: peer.iter().map(|a| a.parse().unwrap()).collect(),
            ..TunnelFilter::default()
        }
    }

    fn input_rules(v: &serde_json::Value) -> Vec<serde_json::Value> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("rule"))
            .filter(|r| r["chain"] == "input")
            .cloned()
            .collect()
    }

    #[test]
    fn the_firewall_admits_each_family_s_peers_and_drops_other_ike_and_esp() {
        // tunnel 3 has a fallback address: both are admitted
        let mut three = to(Some("192.0.2.3"));
        three.peers.push("192.0.2.4".parse().unwrap());
        let t = BTreeMap::from([
            (1, to(Some("192.0.2.2"))),
            (2, to(Some("2001:db8::2"))),
            (3, three),
        ]);
        let v = json(&replace_table(TABLE, &t, Some(GUARD)));
        let rules = input_rules(&v);
        assert_eq!(rules.len(), 5, "{v:#}");
        assert_eq!(rules[0]["expr"][0]["match"]["right"], "lo");
        let v4 = &rules[1]["expr"][0]["match"];
        assert_eq!(v4["left"]["payload"]["protocol"], "ip");
        assert_eq!(
            v4["right"]["set"],
            serde_json::json!(["192.0.2.2", "192.0.2.3", "192.0.2.4"])
        );
        assert_eq!(rules[1]["expr"][1], serde_json::json!({"accept": null}));
        assert_eq!(
            rules[2]["expr"][0]["match"]["right"]["set"][0],
            "2001:db8::2"
        );
        assert_eq!(
            rules[3]["expr"][0]["match"]["right"]["set"],
            serde_json::json!([500, 4500])
        );
        assert_eq!(rules[3]["expr"][1]["counter"], REFUSED_COUNTER);
        assert_eq!(rules[3]["expr"][2], serde_json::json!({"drop": null}));
        assert_eq!(rules[4]["expr"][0]["match"]["right"], "esp");
        let chain = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("chain"))
            .find(|c| c["name"] == "input")
            .unwrap()
            .clone();
        assert_eq!(chain["hook"], "input");
        assert_eq!(chain["policy"], "accept");
        assert!(
            v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["add"]["counter"]["name"] == REFUSED_COUNTER)
        );
    }

    #[test]
    fn no_firewall_without_a_guard_a_tunnel_or_when_one_accepts_any_peer() {
        let fixed = BTreeMap::from([(1, to(Some("192.0.2.2")))]);
        assert!(input_rules(&json(&replace_table(TABLE, &fixed, None))).is_empty());
        assert!(
            input_rules(&json(&replace_table(TABLE, &BTreeMap::new(), Some(GUARD)))).is_empty()
        );
        let mut any = fixed.clone();
        any.insert(2, to(None));
        assert!(input_rules(&json(&replace_table(TABLE, &any, Some(GUARD)))).is_empty());
        any.insert(2, to(Some("0.0.0.0")));
        assert!(input_rules(&json(&replace_table(TABLE, &any, Some(GUARD)))).is_empty());
        // one port when IKE and NAT-T share it
        let one = IkeGuard {
            ike_port: 4500,
            natt_port: 4500,
        };
        let rules = input_rules(&json(&replace_table(TABLE, &fixed, Some(one))));
        assert_eq!(
            rules[2]["expr"][0]["match"]["right"]["set"],
            serde_json::json!([4500])
        );
    }
}
