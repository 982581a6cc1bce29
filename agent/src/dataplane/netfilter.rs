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
//! The rules are built with the `nftables` crate (typed JSON for `nft -j`, MIT/Apache-2.0) and
//! applied by the node's `nft`, as kube-proxy's nftables mode does. Without `nft` the agent says
//! so once and runs without these rules.

use std::borrow::Cow;
use std::collections::BTreeMap;

use nftables::expr::TcpOption;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix as NftPrefix};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use strait_xfrm::{Family, Prefix};

/// The table's name (family `inet`).
pub const TABLE: &str = "strait";
/// `srcnat` (100) minus 10: before the masquerade rules of iptables and of other tables.
const NAT_PRIORITY: i32 = 90;
/// `mangle` (-150), where iptables' TCPMSS runs.
const MANGLE_PRIORITY: i32 = -150;

/// What one tunnel needs from netfilter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelFilter {
    pub local: Vec<Prefix>,
    pub remote: Vec<Prefix>,
    /// The route MTU of the tunnel's IPv4 and IPv6 traffic, when known.
    pub mtu_v4: Option<u32>,
    pub mtu_v6: Option<u32>,
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
pub fn replace_table(tunnels: &BTreeMap<u32, TunnelFilter>) -> Nftables<'static> {
    let mut cmds = delete_table().objects.into_owned();
    cmds.push(NfObject::CmdObject(NfCmd::Add(
        NfListObject::Table(table()),
    )));
    for (name, hook, kind, prio) in [
        (
            "postrouting",
            NfHook::Postrouting,
            NfChainType::NAT,
            NAT_PRIORITY,
        ),
        (
            "forward",
            NfHook::Forward,
            NfChainType::Filter,
            MANGLE_PRIORITY,
        ),
    ] {
        cmds.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
            Chain {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.into(),
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
                cmds.push(rule("postrouting", &comment, exempt(fam, *l, *r)));
                let mtu = match fam {
                    Family::V4 => t.mtu_v4,
                    Family::V6 => t.mtu_v6,
                };
                if let Some(mss) = mtu.and_then(|m| mss_for(fam, m)) {
                    // both directions: a connection may be opened from either site
                    cmds.push(rule("forward", &comment, clamp(fam, *l, *r, mss)));
                    cmds.push(rule("forward", &comment, clamp(fam, *r, *l, mss)));
                }
            }
        }
    }
    Nftables {
        objects: Cow::Owned(cmds),
    }
}

/// The commands that delete our table (whether or not it exists).
pub fn delete_table() -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        ]),
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn rule(chain: &str, comment: &str, expr: Vec<Statement<'static>>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
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
    nft: String,
    tunnels: BTreeMap<u32, TunnelFilter>,
    /// What was last applied; `None` before the first apply or after a failed one.
    applied: Option<BTreeMap<u32, TunnelFilter>>,
    /// `nft` is missing or refused: said once, then nothing more is tried until it works.
    warned: bool,
}

impl Default for Netfilter {
    fn default() -> Self {
        Self {
            nft: std::env::var("STRAIT_NFT").unwrap_or_else(|_| "nft".to_owned()),
            tunnels: BTreeMap::new(),
            applied: None,
            warned: false,
        }
    }
}

impl Netfilter {
    /// Sets (or with `None` removes) a tunnel's rules and applies the table when it changed.
    pub async fn set(&mut self, tunnel: u32, want: Option<TunnelFilter>) {
        match want {
            Some(w) => self.tunnels.insert(tunnel, w),
            None => self.tunnels.remove(&tunnel),
        };
        if self.applied.as_ref() == Some(&self.tunnels) {
            return;
        }
        let r = self.run(&replace_table(&self.tunnels)).await;
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
                        "nftables: no masquerade exemption or MSS clamping for the tunnels \
                         (traffic the node masquerades leaves the tunnel's policies)"
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
        if let Err(e) = self.run(&delete_table()).await {
            tracing::warn!(error = %e, "nftables: removing table inet {TABLE}");
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
            },
        );
        let v = json(&replace_table(&t));
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
        let v = json(&replace_table(&BTreeMap::new()));
        let cmds = v["nftables"].as_array().unwrap();
        assert!(cmds[0]["add"]["table"]["name"] == TABLE);
        assert!(cmds[1]["delete"]["table"]["name"] == TABLE);
        assert!(cmds[2]["add"]["table"]["family"] == "inet");
        let chains: Vec<_> = cmds.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0]["prio"], NAT_PRIORITY);
        assert_eq!(chains[0]["type"], "nat");
    }
}
