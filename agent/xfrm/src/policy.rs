//! Security policies: types, their kernel encoding, and the policy operations of [`Xfrm`].

use std::net::IpAddr;

use netlink_packet_xfrm::constants::{
    XFRM_POLICY_ALLOW, XFRM_POLICY_BLOCK, XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
};
use netlink_packet_xfrm::policy::{DelGetMessage, ModifyMessage};
use netlink_packet_xfrm::{Address, Id, UserTemplate, XfrmAttrs, XfrmMessage};

use crate::Xfrm;
use crate::error::{Error, Result};
use crate::netlink::Kind;
use crate::ownership::Reqid;
use crate::sa::{Mark, Mode, Proto};
use crate::selector::{Family, Selector, ip_from_raw};

/// Which packets a policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets delivered to this host.
    In,
    /// Packets this host sends (and forwards, on their way out).
    Out,
    /// Packets this host forwards (checked on the way in).
    Fwd,
}

impl Direction {
    pub(crate) fn raw(self) -> u8 {
        match self {
            Direction::In => XFRM_POLICY_IN,
            Direction::Out => XFRM_POLICY_OUT,
            Direction::Fwd => XFRM_POLICY_FWD,
        }
    }

    pub(crate) fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            XFRM_POLICY_IN => Some(Direction::In),
            XFRM_POLICY_OUT => Some(Direction::Out),
            XFRM_POLICY_FWD => Some(Direction::Fwd),
            _ => None,
        }
    }
}

/// What happens to matching packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Apply the templates (protect), or let through when there are none.
    Allow,
    /// Drop.
    Block,
}

/// "Use an SA like this": the SA a policy requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Template {
    /// Outer source (tunnel endpoint); unspecified for transport mode "any".
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// Protocol (ESP).
    pub proto: Proto,
    /// Mode of the SA.
    pub mode: Mode,
    /// The SA's reqid: links policy and SA, and carries our ownership tag.
    pub reqid: Reqid,
    /// A specific SPI, `None` for any.
    pub spi: Option<u32>,
}

impl Template {
    /// An ESP template between two endpoints.
    pub fn esp(src: IpAddr, dst: IpAddr, mode: Mode, reqid: Reqid) -> Self {
        Template {
            src,
            dst,
            proto: Proto::ESP,
            mode,
            reqid,
            spi: None,
        }
    }

    fn to_raw(self) -> Result<UserTemplate> {
        if Family::of(&self.src) != Family::of(&self.dst) {
            return Err(Error::invalid(
                "template",
                format!("{} and {} are of different families", self.src, self.dst),
            ));
        }
        Ok(UserTemplate {
            id: Id {
                daddr: Address::from_ip(&self.dst),
                spi: self.spi.unwrap_or(0),
                proto: self.proto.0,
            },
            family: Family::of(&self.dst).raw(),
            saddr: Address::from_ip(&self.src),
            reqid: self.reqid.raw(),
            mode: self.mode.raw()?,
            ..UserTemplate::default()
        })
    }

    pub(crate) fn from_raw(t: &UserTemplate, fallback_family: u16) -> Option<Self> {
        let fam = if t.family != 0 {
            t.family
        } else {
            fallback_family
        };
        Some(Template {
            src: ip_from_raw(&t.saddr, fam)?,
            dst: ip_from_raw(&t.id.daddr, fam)?,
            proto: Proto(t.id.proto),
            mode: Mode::from_raw(t.mode),
            reqid: Reqid::from_raw(t.reqid),
            spi: (t.id.spi != 0).then_some(t.id.spi),
        })
    }
}

/// How the kernel finds a policy: selector, direction, mark, interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId {
    /// The traffic.
    pub selector: Selector,
    /// The direction.
    pub dir: Direction,
    /// The mark, when the policy has one.
    pub mark: Option<Mark>,
    /// The XFRM interface (`XFRMA_IF_ID`), for a route-based tunnel's policy: it matches only
    /// traffic through that interface, so two tunnels may have the same selectors.
    pub if_id: Option<u32>,
}

/// A policy to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The traffic.
    pub selector: Selector,
    /// The direction.
    pub dir: Direction,
    /// Protect (with templates) or drop.
    pub action: Action,
    /// Lower values win when several policies match.
    pub priority: u32,
    /// The SAs to apply, outermost last; at least one must carry our reqid.
    pub templates: Vec<Template>,
    /// Optional mark (changes matching; see [`Mark`]).
    pub mark: Option<Mark>,
    /// The XFRM interface it applies to, for a route-based tunnel.
    pub if_id: Option<u32>,
}

impl Policy {
    /// An IPsec policy: matching packets need an SA like `template`.
    pub fn protect(selector: Selector, dir: Direction, priority: u32, template: Template) -> Self {
        Policy {
            selector,
            dir,
            action: Action::Allow,
            priority,
            templates: vec![template],
            mark: None,
            if_id: None,
        }
    }

    /// A drop policy. It carries a template only for the ownership tag: the kernel ignores
    /// templates of `block` policies.
    pub fn block(selector: Selector, dir: Direction, priority: u32, reqid: Reqid) -> Self {
        let any = selector.src.family().unspecified();
        Policy {
            selector,
            dir,
            action: Action::Block,
            priority,
            templates: vec![Template::esp(any, any, Mode::Transport, reqid)],
            mark: None,
            if_id: None,
        }
    }

    /// How the kernel finds this policy.
    pub fn id(&self) -> PolicyId {
        PolicyId {
            selector: self.selector,
            dir: self.dir,
            mark: self.mark,
            if_id: self.if_id,
        }
    }

    pub(crate) fn to_message(&self) -> Result<ModifyMessage> {
        if !self.templates.iter().any(|t| t.reqid.is_ours()) {
            return Err(Error::invalid(
                "policy",
                "no template carries a Strait reqid (global bypass policies cannot be tagged; \
                 exempt sockets with socket::bypass instead)",
            ));
        }
        let mut m = ModifyMessage::default();
        let info = &mut m.user_policy_info;
        info.selector = self.selector.to_raw()?;
        info.direction = self.dir.raw();
        info.action = match self.action {
            Action::Allow => XFRM_POLICY_ALLOW,
            Action::Block => XFRM_POLICY_BLOCK,
        };
        info.priority = self.priority;
        let tmpls = self
            .templates
            .iter()
            .map(|t| t.to_raw())
            .collect::<Result<Vec<_>>>()?;
        m.nlas.push(XfrmAttrs::Template(tmpls));
        if let Some(mark) = self.mark {
            m.nlas.push(mark.attr());
        }
        if let Some(id) = self.if_id {
            m.nlas.push(XfrmAttrs::IfId(id));
        }
        Ok(m)
    }
}

/// A policy as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Selector, direction, mark.
    pub id: PolicyId,
    /// Action.
    pub action: Action,
    /// Priority.
    pub priority: u32,
    /// Templates.
    pub templates: Vec<Template>,
    /// The kernel's index for the policy.
    pub index: u32,
}

impl PolicyInfo {
    /// Whether Strait owns this policy (a template carries a reqid in our range).
    pub fn is_ours(&self) -> bool {
        self.templates.iter().any(|t| t.reqid.is_ours())
    }

    /// The tag-bearing reqid, or the first template's reqid, or 0.
    pub fn reqid(&self) -> Reqid {
        self.templates
            .iter()
            .map(|t| t.reqid)
            .find(|r| r.is_ours())
            .or_else(|| self.templates.first().map(|t| t.reqid))
            .unwrap_or(Reqid::from_raw(0))
    }

    /// As a [`Policy`] (for re-installing what was read).
    pub fn to_policy(&self) -> Policy {
        Policy {
            selector: self.id.selector,
            dir: self.id.dir,
            action: self.action,
            priority: self.priority,
            templates: self.templates.clone(),
            mark: self.id.mark,
            if_id: self.id.if_id,
        }
    }

    pub(crate) fn from_message(m: &ModifyMessage) -> Option<Self> {
        let info = &m.user_policy_info;
        let selector = Selector::from_raw(&info.selector)?;
        let dir = Direction::from_raw(info.direction)?;
        let templates = m
            .nlas
            .iter()
            .find_map(|a| match a {
                XfrmAttrs::Template(t) => Some(t),
                _ => None,
            })
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| Template::from_raw(t, info.selector.family))
                    .collect()
            })
            .unwrap_or_default();
        Some(PolicyInfo {
            id: PolicyId {
                selector,
                dir,
                mark: Mark::find(&m.nlas),
                if_id: crate::sa::if_id_of(&m.nlas),
            },
            action: if info.action == XFRM_POLICY_BLOCK {
                Action::Block
            } else {
                Action::Allow
            },
            priority: info.priority,
            templates,
            index: info.index,
        })
    }
}

fn id_message(id: &PolicyId, index: u32) -> Result<DelGetMessage> {
    let mut m = DelGetMessage::default();
    if index == 0 {
        m.user_policy_id.selector = id.selector.to_raw()?;
    }
    m.user_policy_id.index = index;
    m.user_policy_id.direction = id.dir.raw();
    if let Some(mark) = id.mark {
        m.nlas.push(mark.attr());
    }
    if let Some(i) = id.if_id {
        m.nlas.push(XfrmAttrs::IfId(i));
    }
    Ok(m)
}

impl Xfrm {
    /// Installs a new policy (fails with [`Error::AlreadyExists`] when one with the same
    /// selector, direction and mark exists, ours or not).
    pub async fn add_policy(&self, policy: &Policy) -> Result<()> {
        let m = policy.to_message()?;
        self.conn
            .request("add policy", XfrmMessage::AddPolicy(m), Kind::Ack, None)
            .await
            .map(drop)
    }

    /// Installs or replaces a policy of ours. Refuses to replace someone else's.
    pub async fn update_policy(&self, policy: &Policy) -> Result<()> {
        const OP: &str = "update policy";
        let m = policy.to_message()?;
        if let Some(cur) = self.get_policy(&policy.id()).await?
            && !cur.is_ours()
        {
            return Err(Error::NotOurs {
                op: OP,
                reqid: cur.reqid().raw(),
            });
        }
        self.conn
            .request(OP, XfrmMessage::UpdatePolicy(m), Kind::Ack, None)
            .await
            .map(drop)
    }

    /// Reads one policy; `None` when there is none.
    pub async fn get_policy(&self, id: &PolicyId) -> Result<Option<PolicyInfo>> {
        const OP: &str = "get policy";
        let r = self
            .conn
            .request(
                OP,
                XfrmMessage::GetPolicy(id_message(id, 0)?),
                Kind::Ack,
                None,
            )
            .await;
        match r {
            Ok(replies) => Ok(replies.0.iter().find_map(|m| match m {
                XfrmMessage::AddPolicy(p) => PolicyInfo::from_message(p),
                _ => None,
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes one of our policies. Refuses ([`Error::NotOurs`]) to delete anyone else's.
    pub async fn delete_policy(&self, id: &PolicyId) -> Result<()> {
        const OP: &str = "delete policy";
        match self.get_policy(id).await? {
            None => Err(Error::NotFound { op: OP }),
            Some(cur) if !cur.is_ours() => Err(Error::NotOurs {
                op: OP,
                reqid: cur.reqid().raw(),
            }),
            Some(cur) => self.delete_policy_by_index(OP, &cur).await,
        }
    }

    /// Deletes exactly the policy that was read (by its index, so never a look-alike).
    pub(crate) async fn delete_policy_by_index(
        &self,
        op: &'static str,
        p: &PolicyInfo,
    ) -> Result<()> {
        self.conn
            .request(
                op,
                XfrmMessage::DeletePolicy(id_message(&p.id, p.index)?),
                Kind::Ack,
                None,
            )
            .await
            .map(drop)
    }

    /// Every policy in the namespace's SPD (ours and others'; per-socket policies are not
    /// part of it).
    pub async fn list_policies(&self) -> Result<Vec<PolicyInfo>> {
        let replies = self
            .conn
            .request(
                "dump policies",
                XfrmMessage::GetPolicy(DelGetMessage::default()),
                Kind::Dump,
                None,
            )
            .await?;
        Ok(replies
            .0
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddPolicy(p) => PolicyInfo::from_message(p),
                _ => None,
            })
            .collect())
    }

    /// Our policies only.
    pub async fn list_our_policies(&self) -> Result<Vec<PolicyInfo>> {
        let mut all = self.list_policies().await?;
        all.retain(PolicyInfo::is_ours);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> Selector {
        Selector::between(
            "10.1.0.0/16".parse().unwrap(),
            "10.2.0.0/16".parse().unwrap(),
        )
    }

    #[test]
    fn policy_round_trip() {
        let t = Template::esp(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            Mode::Tunnel,
            Reqid::ours(3).unwrap(),
        );
        let p = Policy::protect(sel(), Direction::Out, 100, t);
        let info = PolicyInfo::from_message(&p.to_message().unwrap()).unwrap();
        assert_eq!(info.to_policy(), p);
        assert!(info.is_ours());
    }

    #[test]
    fn block_policies_carry_the_tag_and_bypass_is_refused() {
        let b = Policy::block(sel(), Direction::Fwd, 5, Reqid::ours(1).unwrap());
        let info = PolicyInfo::from_message(&b.to_message().unwrap()).unwrap();
        assert!(info.is_ours());
        assert_eq!(info.action, Action::Block);
        let mut bypass = b.clone();
        bypass.action = Action::Allow;
        bypass.templates.clear();
        assert!(bypass.to_message().is_err());
    }
}
