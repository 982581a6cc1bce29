//! One IKE SA in the saved form, and back. Each part is written and read by a pair of
//! functions next to each other, so the two stay in step; the round-trip tests hold them to it.
//!
//! What is saved is what the SA needs to go on as if the process had never stopped: SPIs,
//! addresses, NAT state, the message-ID window with our outstanding request and our last
//! response (as sent, so retransmissions are byte-for-byte), the SK keys, the CHILD SAs'
//! SPIs and timers, queued requests, and any rekey of ours in flight with its nonce and private
//! key-exchange value. Not saved: partly reassembled fragments (the sender retransmits) and
//! the CHILD SAs' ESP keys (the kernel holds them; the driver keeps those SAs).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::ResumeError;
use super::wire::{Clock, In, Out};
use crate::codec::{
    AddrRange, DhId, EncrId, EsnId, IdType, Identification, IntegId, PrfId, Spi, TsRange,
};
use crate::config::PeerConfig;
use crate::crypto::alg::{Encr, Esn, Integ, KeGroup, Prf};
use crate::crypto::ke::KeyExchange;
use crate::crypto::keys::{IkeSaKeys, SecretBytes};
use crate::crypto::sk::SkCipher;
use crate::event::{ChildSaId, NatState, PeerId};
use crate::proposal::{EspChoice, IkeChoice};
use crate::sa::child::{Child, ChildState};
use crate::sa::established::Established;
use crate::sa::rekey::{ChildCreateOut, ChildRekeyOut, IkeCollision, IkeRekeyOut, Offer};
use crate::sa::{Common, IkeSa, Keys, RequestKind, State};
use crate::window::{Outstanding, Window};

/// What loading needs besides the bytes.
pub(crate) struct Loader<'a> {
    pub clock: Clock,
    pub peer: PeerId,
    pub cfg: Arc<PeerConfig>,
    /// The endpoint's CHILD SA id counter: loaded CHILD SAs get fresh ids.
    pub next_child: &'a mut u64,
    /// Saved CHILD SA id → the id it has now, for the references between parts.
    pub children: HashMap<u64, ChildSaId>,
    /// The format version being read (fields added later are absent from older ones).
    pub version: u8,
}

impl Loader<'_> {
    fn new_child_id(&mut self, saved: u64) -> Result<ChildSaId, ResumeError> {
        *self.next_child = self.next_child.wrapping_add(1);
        let id = ChildSaId(*self.next_child);
        if self.children.insert(saved, id).is_some() {
            return Err(ResumeError::Malformed("CHILD SA id used twice"));
        }
        Ok(id)
    }

    /// The id a saved reference to a CHILD SA has now. A reference to one that is not saved
    /// is no error: the running endpoint held it too, for a CHILD SA deleted while a request
    /// naming it was queued or in flight (the simulator found it), and it gets an id that names
    /// no CHILD SA here either.
    fn child_ref(&mut self, saved: u64) -> ChildSaId {
        if let Some(id) = self.children.get(&saved) {
            return *id;
        }
        *self.next_child = self.next_child.wrapping_add(1);
        let id = ChildSaId(*self.next_child);
        self.children.insert(saved, id);
        id
    }
}

/// Why an SA cannot be saved now. Only established SAs are: one still being set up is
/// cheaper to redo than to carry over, and one closing is about to be dropped anyway.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotSaved;

// --- the IKE SA -----------------------------------------------------------------------------

pub(crate) fn put_sa(o: &mut Out, clock: &Clock, sa: &IkeSa, depth: u8) -> Result<(), NotSaved> {
    let State::Established(e) = &sa.state else {
        return Err(NotSaved);
    };
    put_common(o, clock, &sa.common);
    put_keys(o, &e.keys);
    put_established(o, clock, e, depth)
}

pub(crate) fn get_sa(i: &mut In<'_>, l: &mut Loader<'_>, depth: u8) -> Result<IkeSa, ResumeError> {
    let mut common = get_common(i, l)?;
    let keys = get_keys(i, common.initiator)?;
    let e = get_established(i, l, keys, common.started, depth)?;
    // The window was read before the CHILD SAs its request may name.
    if let Some(o) = common.win.outstanding_mut() {
        remap_kind(&mut o.kind, l)?;
    }
    Ok(IkeSa {
        common,
        state: State::Established(e),
    })
}

// --- what every state shares ----------------------------------------------------------------

fn put_common(o: &mut Out, clock: &Clock, c: &Common) {
    o.bool(c.initiator);
    o.raw(&c.spi_i.0);
    o.raw(&c.spi_r.0);
    o.addr(c.local);
    o.addr(c.remote);
    o.bool(c.nat.local_behind_nat);
    o.bool(c.nat.remote_behind_nat);
    o.bool(c.nat.forced);
    o.time(clock, c.last_heard);
    o.time(clock, c.last_sent);
    o.opt(c.keepalive, |o, k| {
        o.u64(u64::try_from(k.as_millis()).unwrap_or(u64::MAX))
    });
    o.bool(c.initial_contact);
    o.bool(c.peer_fragmentation);
    o.opt(c.remote_identity.as_ref(), |o, id| {
        o.u8(id.id_type.0);
        o.bytes(&id.data);
    });
    put_window(o, clock, &c.win);
}

fn get_common(i: &mut In<'_>, l: &mut Loader<'_>) -> Result<Common, ResumeError> {
    let clock = l.clock;
    let initiator = i.bool("initiator flag")?;
    let spi_i = Spi(i.array("initiator SPI")?);
    let spi_r = Spi(i.array("responder SPI")?);
    if spi_i.is_zero() || spi_r.is_zero() {
        return Err(ResumeError::Malformed("zero IKE SPI"));
    }
    let local = i.addr("local address")?;
    let remote = i.addr("remote address")?;
    let nat = NatState {
        local_behind_nat: i.bool("NAT state")?,
        remote_behind_nat: i.bool("NAT state")?,
        forced: i.bool("NAT state")?,
    };
    let last_heard = i.time(&clock, "last heard")?;
    let last_sent = i.time(&clock, "last sent")?;
    let keepalive = i.opt("keepalive", |i| {
        Ok(core::time::Duration::from_millis(i.u64("keepalive")?))
    })?;
    let initial_contact = i.bool("initial contact flag")?;
    let peer_fragmentation = i.bool("fragmentation flag")?;
    let remote_identity = i.opt("peer identity", |i| {
        Ok(Identification {
            id_type: IdType(i.u8("peer identity")?),
            data: i.bytes("peer identity")?.to_vec(),
        })
    })?;
    let win = get_window(i, &clock)?;
    Ok(Common {
        peer: l.peer,
        cfg: Arc::clone(&l.cfg),
        initiator,
        spi_i,
        spi_r,
        local,
        remote,
        nat,
        win,
        last_heard,
        started: last_heard,
        last_sent,
        keepalive,
        initial_contact,
        peer_fragmentation,
        frags: Default::default(),
        remote_identity,
    })
}

fn put_datagrams(o: &mut Out, d: &[Vec<u8>]) {
    o.list(d.iter(), |o, d| o.bytes(d));
}

fn get_datagrams(i: &mut In<'_>, what: &'static str) -> Result<Vec<Vec<u8>>, ResumeError> {
    i.list(4, what, |i| Ok(i.bytes(what)?.to_vec()))
}

fn put_window(o: &mut Out, clock: &Clock, w: &Window<RequestKind>) {
    let (next_id, expected, outstanding, last_response) = w.parts();
    o.u32(next_id);
    o.u32(expected);
    o.opt(last_response, |o, (id, d)| {
        o.u32(*id);
        put_datagrams(o, d);
    });
    o.opt(outstanding, |o, r| {
        o.u32(r.id);
        put_datagrams(o, &r.datagrams);
        put_kind(o, &r.kind);
        o.u32(r.attempt);
        o.time(clock, r.deadline);
        o.time(clock, r.first_sent);
    });
}

fn get_window(i: &mut In<'_>, clock: &Clock) -> Result<Window<RequestKind>, ResumeError> {
    let next_id = i.u32("next message ID")?;
    let expected = i.u32("expected message ID")?;
    let last_response = i.opt("last response", |i| {
        Ok((i.u32("last response")?, get_datagrams(i, "last response")?))
    })?;
    let outstanding = i.opt("outstanding request", |i| {
        Ok(Outstanding {
            id: i.u32("outstanding request")?,
            datagrams: get_datagrams(i, "outstanding request")?,
            kind: get_kind_unmapped(i)?,
            attempt: i.u32("outstanding request")?,
            deadline: i.time(clock, "outstanding request")?,
            first_sent: i.time(clock, "outstanding request")?,
        })
    })?;
    if outstanding
        .as_ref()
        .is_some_and(|r| r.id.wrapping_add(1) != next_id)
    {
        return Err(ResumeError::Malformed("outstanding request"));
    }
    Ok(Window::from_parts(
        next_id,
        expected,
        outstanding,
        last_response,
    ))
}

// --- requests -------------------------------------------------------------------------------

fn put_group(o: &mut Out, g: Option<KeGroup>) {
    o.opt(g, |o, g| o.u16(g.id().0));
}

fn get_group(i: &mut In<'_>) -> Result<Option<KeGroup>, ResumeError> {
    i.opt("key exchange group", |i| {
        KeGroup::from_id(DhId(i.u16("key exchange group")?))
            .ok_or(ResumeError::Malformed("key exchange group"))
    })
}

fn put_kind(o: &mut Out, k: &RequestKind) {
    match k {
        RequestKind::Init => o.u8(0),
        RequestKind::Auth => o.u8(1),
        RequestKind::Dpd => o.u8(2),
        RequestKind::DeleteIke => o.u8(3),
        RequestKind::DeleteChild(spis) => {
            o.u8(4);
            o.list(spis.iter(), |o, s| o.raw(s));
        }
        RequestKind::Notify => o.u8(5),
        RequestKind::RekeyChild { old, group } => {
            o.u8(6);
            o.u64(old.0);
            put_group(o, *group);
        }
        RequestKind::CreateChild { group } => {
            o.u8(7);
            put_group(o, *group);
        }
        RequestKind::RekeyIke { group } => {
            o.u8(8);
            put_group(o, *group);
        }
    }
}

/// A request kind whose CHILD SA reference is still the saved id (the window is read before
/// the CHILD SAs; [`remap_kind`] fixes it up after).
fn get_kind_unmapped(i: &mut In<'_>) -> Result<RequestKind, ResumeError> {
    Ok(match i.u8("request kind")? {
        0 => RequestKind::Init,
        1 => RequestKind::Auth,
        2 => RequestKind::Dpd,
        3 => RequestKind::DeleteIke,
        4 => RequestKind::DeleteChild(i.list(4, "Delete SPIs", |i| i.array("Delete SPIs"))?),
        5 => RequestKind::Notify,
        6 => RequestKind::RekeyChild {
            old: ChildSaId(i.u64("rekeyed CHILD SA")?),
            group: get_group(i)?,
        },
        7 => RequestKind::CreateChild {
            group: get_group(i)?,
        },
        8 => RequestKind::RekeyIke {
            group: get_group(i)?,
        },
        _ => return Err(ResumeError::Malformed("request kind")),
    })
}

fn remap_kind(k: &mut RequestKind, l: &mut Loader<'_>) -> Result<(), ResumeError> {
    match k {
        // Only an SA being set up sends these.
        RequestKind::Init | RequestKind::Auth => Err(ResumeError::Malformed("request kind")),
        RequestKind::RekeyChild { old, .. } => {
            *old = l.child_ref(old.0);
            Ok(())
        }
        _ => Ok(()),
    }
}

// --- keys -----------------------------------------------------------------------------------

fn put_keys(o: &mut Out, k: &Keys) {
    let c = k.choice;
    o.u16(c.encr.id().0);
    o.u16(c.encr.key_length_attr());
    o.u16(c.prf.id().0);
    o.opt(c.integ, |o, g| o.u16(g.id().0));
    o.u16(c.ke.id().0);
    for s in [
        &k.sk.sk_d,
        &k.sk.sk_ai,
        &k.sk.sk_ar,
        &k.sk.sk_ei,
        &k.sk.sk_er,
        &k.sk.sk_pi,
        &k.sk.sk_pr,
    ] {
        o.bytes(s.as_bytes());
    }
}

fn get_keys(i: &mut In<'_>, initiator: bool) -> Result<Keys, ResumeError> {
    let bad = || ResumeError::Malformed("IKE proposal");
    let encr = i.u16("IKE proposal")?;
    let bits = i.u16("IKE proposal")?;
    let encr = Encr::from_id(EncrId(encr), Some(bits)).ok_or_else(bad)?;
    let prf = Prf::from_id(PrfId(i.u16("IKE proposal")?)).ok_or_else(bad)?;
    let integ = i.opt("IKE proposal", |i| {
        Integ::from_id(IntegId(i.u16("IKE proposal")?)).ok_or_else(bad)
    })?;
    let ke = KeGroup::from_id(DhId(i.u16("IKE proposal")?)).ok_or_else(bad)?;
    let mut key = || Ok::<_, ResumeError>(SecretBytes::from_slice(i.bytes("SK keys")?));
    let sk = IkeSaKeys {
        sk_d: key()?,
        sk_ai: key()?,
        sk_ar: key()?,
        sk_ei: key()?,
        sk_er: key()?,
        sk_pi: key()?,
        sk_pr: key()?,
    };
    if [&sk.sk_d, &sk.sk_pi, &sk.sk_pr]
        .iter()
        .any(|k| k.len() != prf.key_len())
    {
        return Err(ResumeError::Malformed("SK keys"));
    }
    let (out, inbound) = SkCipher::pair(&sk, encr, integ, initiator)
        .map_err(|_| ResumeError::Malformed("SK keys"))?;
    Ok(Keys {
        choice: IkeChoice {
            encr,
            prf,
            integ,
            ke,
        },
        sk,
        out,
        inbound,
    })
}

fn put_ke(o: &mut Out, ke: &KeyExchange) {
    o.u16(ke.group().id().0);
    o.bytes(ke.private_bytes());
}

fn get_ke(i: &mut In<'_>) -> Result<KeyExchange, ResumeError> {
    let group = KeGroup::from_id(DhId(i.u16("key exchange")?))
        .ok_or(ResumeError::Malformed("key exchange"))?;
    KeyExchange::from_private_bytes(group, i.bytes("key exchange")?)
        .map_err(|_| ResumeError::Malformed("key exchange"))
}

// --- the established state ------------------------------------------------------------------

fn put_established(o: &mut Out, clock: &Clock, e: &Established, depth: u8) -> Result<(), NotSaved> {
    o.bool(e.initial_contact);
    o.opt(e.ike_rekey_at, |o, t| o.time(clock, t));
    o.opt(e.ike_expires_at, |o, t| o.time(clock, t));
    o.opt(e.reauth_at, |o, t| o.time(clock, t));
    o.bool(e.reauth_due);
    o.list(e.children.iter(), |o, ch| {
        o.u64(ch.id.0);
        o.raw(&ch.spi_in);
        o.raw(&ch.spi_out);
        o.opt(ch.rekey_at, |o, t| o.time(clock, t));
        o.time(clock, ch.hard_at);
        o.u8(match ch.state {
            ChildState::Installed => 0,
            ChildState::Rekeyed => 1,
            ChildState::Deleting => 2,
        });
        put_esp_choice(o, &ch.choice);
        o.list(ch.local_ts.iter(), put_ts);
        o.list(ch.remote_ts.iter(), put_ts);
    });
    o.list(e.queue.iter(), put_kind);
    o.opt(e.child_rekey.as_ref(), |o, r| {
        o.u64(r.old.0);
        put_offer(o, &r.offer);
        o.opt(r.collision.as_ref(), |o, (ni, nr)| {
            o.bytes(ni);
            o.bytes(nr);
        });
    });
    o.opt(e.child_create.as_ref(), |o, r| {
        put_offer(o, &r.offer);
        o.opt(r.collision.as_ref(), |o, (id, ni, nr)| {
            o.u64(id.0);
            o.bytes(ni);
            o.bytes(nr);
        });
    });
    let mut nested = Ok(());
    o.opt(e.ike_rekey.as_ref(), |o, r| {
        o.raw(&r.spi.0);
        o.bytes(&r.ni);
        put_ke(o, &r.ke);
        o.opt(r.collision.as_ref(), |o, c| {
            o.bytes(&c.ni);
            o.bytes(&c.nr);
            // The SA made answering the peer's simultaneous rekey; it cannot hold another.
            nested = if depth == 0 {
                put_sa(o, clock, &c.sa, depth + 1)
            } else {
                Err(NotSaved)
            };
        });
    });
    nested
}

fn get_established(
    i: &mut In<'_>,
    l: &mut Loader<'_>,
    keys: Keys,
    since: std::time::Instant,
    depth: u8,
) -> Result<Established, ResumeError> {
    let clock = l.clock;
    let mut e = Established::new(keys, since);
    e.initial_contact = i.bool("initial contact flag")?;
    e.ike_rekey_at = i.opt("IKE rekey time", |i| i.time(&clock, "IKE rekey time"))?;
    if l.version >= 2 {
        e.ike_expires_at = i.opt("IKE hard lifetime", |i| i.time(&clock, "IKE hard lifetime"))?;
        e.reauth_at = i.opt("reauthentication time", |i| {
            i.time(&clock, "reauthentication time")
        })?;
        e.reauth_due = i.bool("reauthentication due")?;
    }
    let saved = i.list(34, "CHILD SAs", |i| {
        let id = i.u64("CHILD SA")?;
        let spi_in = i.array("CHILD SA")?;
        let spi_out = i.array("CHILD SA")?;
        let rekey_at = i.opt("CHILD SA", |i| i.time(&clock, "CHILD SA"))?;
        let hard_at = i.time(&clock, "CHILD SA")?;
        let state = match i.u8("CHILD SA state")? {
            0 => ChildState::Installed,
            1 => ChildState::Rekeyed,
            2 => ChildState::Deleting,
            _ => return Err(ResumeError::Malformed("CHILD SA state")),
        };
        let choice = get_esp_choice(i)?;
        let local_ts = i.list(13, "CHILD SA selectors", get_ts)?;
        let remote_ts = i.list(13, "CHILD SA selectors", get_ts)?;
        Ok((
            id,
            Child {
                id: ChildSaId(0),
                spi_in,
                spi_out,
                rekey_at,
                hard_at,
                state,
                choice,
                local_ts,
                remote_ts,
            },
        ))
    })?;
    for (saved_id, mut ch) in saved {
        ch.id = l.new_child_id(saved_id)?;
        e.children.push(ch);
    }
    let mut queue: VecDeque<RequestKind> = i.list(1, "queued requests", get_kind_unmapped)?.into();
    for k in &mut queue {
        remap_kind(k, l)?;
    }
    e.queue = queue;
    e.child_rekey = i
        .opt("CHILD SA rekey", |i| {
            let old = ChildSaId(i.u64("CHILD SA rekey")?);
            Ok((old, get_offer(i)?, get_nonces(i, "CHILD SA rekey")?))
        })?
        .map(|(old, offer, collision)| ChildRekeyOut {
            old: l.child_ref(old.0),
            offer,
            collision,
        });
    e.child_create = i
        .opt("CHILD SA creation", |i| {
            let offer = get_offer(i)?;
            let collision = i.opt("CHILD SA creation", |i| {
                Ok((
                    ChildSaId(i.u64("CHILD SA creation")?),
                    i.bytes("CHILD SA creation")?.to_vec(),
                    i.bytes("CHILD SA creation")?.to_vec(),
                ))
            })?;
            Ok((offer, collision))
        })?
        .map(|(offer, collision)| ChildCreateOut {
            // (not saved: a resumed request for one pair is judged as one for the tunnel)
            pair: None,
            offer,
            collision: collision.map(|(id, ni, nr)| (l.child_ref(id.0), ni, nr)),
        });
    e.ike_rekey = i
        .opt("IKE SA rekey", |i| {
            let spi = Spi(i.array("IKE SA rekey")?);
            let ni = i.bytes("IKE SA rekey")?.to_vec();
            let ke = get_ke(i)?;
            Ok((spi, ni, ke))
        })?
        .map(|(spi, ni, ke)| {
            let collision = i.opt("IKE SA rekey collision", |i| {
                let ni = i.bytes("IKE SA rekey collision")?.to_vec();
                let nr = i.bytes("IKE SA rekey collision")?.to_vec();
                if depth > 0 {
                    return Err(ResumeError::Malformed("IKE SA rekey collision"));
                }
                let sa = Box::new(get_sa(i, l, depth + 1)?);
                Ok(IkeCollision { ni, nr, sa })
            })?;
            Ok::<_, ResumeError>(IkeRekeyOut {
                spi,
                ni,
                ke,
                collision,
            })
        })
        .transpose()?;
    Ok(e)
}

/// (Ni, Nr) of an exchange.
type Nonces = (Vec<u8>, Vec<u8>);

fn get_nonces(i: &mut In<'_>, what: &'static str) -> Result<Option<Nonces>, ResumeError> {
    i.opt(what, |i| {
        Ok((i.bytes(what)?.to_vec(), i.bytes(what)?.to_vec()))
    })
}

fn put_esp_choice(o: &mut Out, c: &EspChoice) {
    o.u16(c.encr.id().0);
    o.u16(c.encr.key_length_attr());
    o.opt(c.integ, |o, g| o.u16(g.id().0));
    put_group(o, c.ke);
    o.u16(c.esn.id().0);
}

fn get_esp_choice(i: &mut In<'_>) -> Result<EspChoice, ResumeError> {
    let bad = || ResumeError::Malformed("ESP proposal");
    let encr = i.u16("ESP proposal")?;
    let bits = i.u16("ESP proposal")?;
    Ok(EspChoice {
        encr: Encr::from_id(EncrId(encr), Some(bits)).ok_or_else(bad)?,
        integ: i.opt("ESP proposal", |i| {
            Integ::from_id(IntegId(i.u16("ESP proposal")?)).ok_or_else(bad)
        })?,
        ke: get_group(i)?,
        esn: Esn::from_id(EsnId(i.u16("ESP proposal")?)).ok_or_else(bad)?,
    })
}

fn put_ts(o: &mut Out, t: &TsRange) {
    o.u8(t.ip_protocol);
    o.u16(t.start_port);
    o.u16(t.end_port);
    match t.addrs {
        AddrRange::V4 { start, end } => {
            o.u8(4);
            o.raw(&start.octets());
            o.raw(&end.octets());
        }
        AddrRange::V6 { start, end } => {
            o.u8(6);
            o.raw(&start.octets());
            o.raw(&end.octets());
        }
    }
}

fn get_ts(i: &mut In<'_>) -> Result<TsRange, ResumeError> {
    let what = "CHILD SA selectors";
    let ip_protocol = i.u8(what)?;
    let start_port = i.u16(what)?;
    let end_port = i.u16(what)?;
    let addrs = match i.u8(what)? {
        4 => AddrRange::V4 {
            start: i.array::<4>(what)?.into(),
            end: i.array::<4>(what)?.into(),
        },
        6 => AddrRange::V6 {
            start: i.array::<16>(what)?.into(),
            end: i.array::<16>(what)?.into(),
        },
        _ => return Err(ResumeError::Malformed(what)),
    };
    Ok(TsRange {
        ip_protocol,
        start_port,
        end_port,
        addrs,
    })
}

fn put_offer(o: &mut Out, offer: &Offer) {
    o.raw(&offer.spi_in);
    o.bytes(&offer.ni);
    o.opt(offer.ke.as_ref(), put_ke);
}

fn get_offer(i: &mut In<'_>) -> Result<Offer, ResumeError> {
    Ok(Offer {
        spi_in: i.array("CHILD SA offer")?,
        ni: i.bytes("CHILD SA offer")?.to_vec(),
        ke: i.opt("CHILD SA offer", get_ke)?,
    })
}
