//! Where negotiated CHILD SAs go: nowhere ([`NoDataplane`], `--dataplane none`) or into the
//! kernel's XFRM ([`KernelDataplane`], `--dataplane kernel`).
//!
//! Kernel order on install: inbound SA, outbound SA, then the policies out/in/fwd, all tagged
//! with the tunnel's reqid from Strait's reserved range, so nothing of another daemon is ever
//! touched and a restart can sweep what is ours.
//!
//! An `onTraffic` tunnel's outbound policies are installed at once, without SAs ("trap"
//! policies, as strongSwan's `start_action = trap`): traffic they match makes the kernel send
//! an acquire, which starts the IKE SA. They stay through CHILD SAs coming and going.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use futures::StreamExt;

use strait_ike::codec::{AddrRange, TsRange};
use strait_ike::crypto::alg::{Encr, Esn, Integ};
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, PeerConfig};
use strait_xfrm::{
    Direction, Integrity, KeepSet, Key, Lifetimes, Limits, Mode, NatT, Policy, PolicyId, Prefix,
    Reqid, Sa, SaCrypto, SaId, Selector, Template, Transform, Xfrm,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Which data plane the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel XFRM.
    Kernel,
    /// Nothing is installed.
    None,
}

impl Kind {
    /// `kernel` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::None => "none",
        }
    }
}

/// An error of the data plane, for a person (never with key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DataplaneError {
    /// CamelCase reason for status (`KernelUnsupported`, `DataplaneError`).
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

impl DataplaneError {
    fn kernel(context: &str, e: &strait_xfrm::Error) -> Self {
        let reason = match e {
            strait_xfrm::Error::Unsupported(_) => "KernelUnsupported",
            _ => "DataplaneError",
        };
        Self {
            reason,
            message: format!("{context}: {e}"),
        }
    }
}

/// What the driver asks of a data plane. `tunnel` is the tunnel's small index (its reqid is
/// derived from it).
pub trait Dataplane: Send {
    /// Which one this is.
    fn kind(&self) -> Kind;

    /// Whether trap policies (initiation `onTraffic`) are available.
    fn supports_on_traffic(&self) -> bool {
        false
    }

    /// Prepares a freshly bound IKE socket (ESP-in-UDP on the NAT-T port, bypass policies).
    ///
    /// # Errors
    /// The socket options could not be set.
    fn prepare_socket(&self, sock: &UdpSocket, natt: bool) -> Result<(), DataplaneError>;

    /// Checks before a tunnel starts that its ESP proposals can be installed.
    fn preflight(
        &mut self,
        esp: &[EspProposal],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Installs one CHILD SA.
    fn install(
        &mut self,
        tunnel: u32,
        sa: &ChildSaInstall,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Removes one CHILD SA (and the tunnel's policies with its last one).
    fn delete(
        &mut self,
        child: ChildSaId,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Removes everything this agent installed.
    fn shutdown(&mut self) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Installs the outbound policies of an `onTraffic` tunnel without SAs, so that traffic
    /// for it raises [`KernelEvent::Acquire`]. Only called when
    /// [`Dataplane::supports_on_traffic`].
    fn trap(
        &mut self,
        _tunnel: u32,
        _cfg: &PeerConfig,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send {
        async {
            Err(DataplaneError {
                reason: "KernelUnsupported",
                message: "trap policies (initiation onTraffic) need the kernel data plane".into(),
            })
        }
    }

    /// Removes a tunnel's trap policies (the tunnel is gone).
    fn untrap(&mut self, _tunnel: u32) -> impl Future<Output = Result<(), DataplaneError>> + Send {
        async { Ok(()) }
    }

    /// The kernel's notifications (expiries, acquires) for our objects, once: the driver takes
    /// the receiver at start. `None`: this data plane has none.
    fn take_events(&mut self) -> Option<mpsc::Receiver<KernelEvent>> {
        None
    }

    /// Traffic per tunnel index: what the tunnel's CHILD SAs carried, including CHILD SAs
    /// already deleted (so the sums only grow while the tunnel exists).
    fn traffic(&mut self) -> impl Future<Output = BTreeMap<u32, Traffic>> + Send {
        async { BTreeMap::new() }
    }

    /// At start: notes the objects of ours a previous run left behind (after a crash) and keeps
    /// them, so traffic keeps flowing until the new CHILD SAs are up. Returns how many.
    fn adopt(&mut self) -> impl Future<Output = usize> + Send {
        async { 0 }
    }

    /// Whether objects adopted at start are still waiting to be swept.
    fn adopting(&self) -> bool {
        false
    }

    /// Removes every object of ours the agent has not installed itself in this run (the
    /// adopted ones the new CHILD SAs replaced).
    fn sweep_adopted(&mut self) -> impl Future<Output = Result<(), DataplaneError>> + Send {
        async { Ok(()) }
    }
}

/// A kernel notification about one of our SAs, by tunnel index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// A CHILD SA reached its soft (rekey now) or hard (the kernel deleted it) limit.
    Expire {
        /// The tunnel index (from the reqid).
        tunnel: u32,
        /// The SA's SPI (either direction).
        spi: u32,
        /// Hard or soft.
        hard: bool,
    },
    /// Outbound traffic found one of the tunnel's policies without an SA.
    Acquire {
        /// The tunnel index.
        tunnel: u32,
    },
}

/// Bytes and packets of a tunnel's CHILD SAs, by direction (kernel counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes received (decrypted by inbound SAs).
    pub bytes_in: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Bytes sent (encrypted by outbound SAs).
    pub bytes_out: u64,
    /// Packets sent.
    pub packets_out: u64,
}

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

impl Dataplane for NoDataplane {
    fn kind(&self) -> Kind {
        Kind::None
    }

    fn prepare_socket(&self, _sock: &UdpSocket, _natt: bool) -> Result<(), DataplaneError> {
        Ok(())
    }

    async fn preflight(&mut self, _esp: &[EspProposal]) -> Result<(), DataplaneError> {
        Ok(())
    }

    async fn install(&mut self, tunnel: u32, sa: &ChildSaInstall) -> Result<(), DataplaneError> {
        let summary = summary(sa);
        tracing::info!(child = sa.child.0, %summary, "dataplane none: not installing CHILD SA");
        self.installed.insert(
            sa.child,
            Recorded {
                tunnel,
                spi_in: u32::from_be_bytes(sa.spi_in.0),
                spi_out: u32::from_be_bytes(sa.spi_out.0),
                summary,
            },
        );
        Ok(())
    }

    async fn delete(&mut self, child: ChildSaId) -> Result<(), DataplaneError> {
        self.installed.remove(&child);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), DataplaneError> {
        self.installed.clear();
        Ok(())
    }
}

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
    xfrm: Result<Xfrm, DataplaneError>,
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
            xfrm: Xfrm::open().map_err(|e| DataplaneError::kernel("opening XFRM netlink", &e)),
            installed: BTreeMap::new(),
            notified: events.is_some(),
            events,
            retired: BTreeMap::new(),
            adopted: None,
            deferred_out: BTreeMap::new(),
            trapped: BTreeMap::new(),
        }
    }

    fn xfrm(&self) -> Result<&Xfrm, DataplaneError> {
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

/// The tunnel's reqid (and ownership tag).
pub fn reqid(tunnel: u32) -> Result<Reqid, DataplaneError> {
    Reqid::ours(tunnel).map_err(|e| DataplaneError::kernel("reqid", &e))
}

fn integrity(i: Integ) -> Option<Integrity> {
    match i {
        Integ::HmacSha256_128 => Some(Integrity::HmacSha256),
        Integ::HmacSha384_192 => Some(Integrity::HmacSha384),
        Integ::HmacSha512_256 => Some(Integrity::HmacSha512),
        _ => None,
    }
}

fn key_bits(e: Encr) -> Option<u16> {
    match e {
        Encr::AesGcm16_128 | Encr::AesCbc128 => Some(128),
        Encr::AesGcm16_256 | Encr::AesCbc256 => Some(256),
        _ => None,
    }
}

fn unsupported(what: String) -> DataplaneError {
    DataplaneError {
        reason: "KernelUnsupported",
        message: format!("{what} has no kernel transform in this agent"),
    }
}

/// The kernel transforms an ESP proposal list may end up using.
pub fn transforms(esp: &[EspProposal]) -> Vec<Transform> {
    let mut out = Vec::new();
    for p in esp {
        for e in &p.encr {
            let Some(bits) = key_bits(*e) else { continue };
            let ts: Vec<Transform> = if e.is_aead() {
                vec![Transform::AesGcm16 { key_bits: bits }]
            } else {
                p.integ
                    .iter()
                    .filter_map(|i| integrity(*i))
                    .map(|integrity| Transform::AesCbc {
                        key_bits: bits,
                        integrity,
                    })
                    .collect()
            };
            for t in ts {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// strongSwan-style name of a negotiated ESP transform (`aes256gcm16`, `aes256-sha256`).
pub fn esp_name(encr: Encr, integ: Option<Integ>) -> String {
    use strait_ike::proposal::Keyword;
    match integ {
        Some(i) => format!("{}-{}", encr.keyword(), i.keyword()),
        None => encr.keyword().to_owned(),
    }
}

/// A traffic selector as text: `198.51.100.0/24` when it is a prefix, else `a-b`, with
/// protocol and ports when restricted.
pub fn ts_string(ts: &TsRange) -> String {
    let addrs = match prefix_of(ts) {
        Some((a, len)) => format!("{a}/{len}"),
        None => match ts.addrs {
            AddrRange::V4 { start, end } => format!("{start}-{end}"),
            AddrRange::V6 { start, end } => format!("{start}-{end}"),
        },
    };
    let any_port = ts.start_port == 0 && ts.end_port == u16::MAX;
    match (ts.ip_protocol, any_port) {
        (0, true) => addrs,
        (p, true) => format!("{addrs}[{p}]"),
        (p, false) if ts.start_port == ts.end_port => format!("{addrs}[{p}/{}]", ts.start_port),
        (p, false) => format!("{addrs}[{p}/{}-{}]", ts.start_port, ts.end_port),
    }
}

/// The prefix a selector's address range is, if it is one.
pub fn prefix_of(ts: &TsRange) -> Option<(IpAddr, u8)> {
    let (start, end, bits) = match ts.addrs {
        AddrRange::V4 { start, end } => (
            u128::from(u32::from(start)),
            u128::from(u32::from(end)),
            32u32,
        ),
        AddrRange::V6 { start, end } => (u128::from(start), u128::from(end), 128u32),
    };
    let host = start ^ end;
    // host bits must be a run of ones at the bottom, and start must have them clear
    if host & host.wrapping_add(1) != 0 || start & host != 0 {
        return None;
    }
    let len = bits - (128 - host.leading_zeros()).min(bits);
    let addr = match ts.addrs {
        AddrRange::V4 { start, .. } => IpAddr::V4(start),
        AddrRange::V6 { start, .. } => IpAddr::V6(start),
    };
    u8::try_from(len).ok().map(|l| (addr, l))
}

fn crypto(
    encr: Encr,
    integ: Option<Integ>,
    ekey: &[u8],
    ikey: &[u8],
) -> Result<SaCrypto, DataplaneError> {
    let r = match integ {
        None => SaCrypto::aes_gcm16(Key::from_slice(ekey)),
        Some(i) => {
            let integ = integrity(i).ok_or_else(|| unsupported(esp_name(encr, Some(i))))?;
            SaCrypto::aes_cbc(Key::from_slice(ekey), integ, Key::from_slice(ikey))
        }
    };
    r.map_err(|e| DataplaneError::kernel("CHILD SA keys", &e))
}

/// The kernel objects for one CHILD SA: inbound SA, outbound SA, policies (out, in, fwd).
fn kernel_objects(
    tunnel: u32,
    sa: &ChildSaInstall,
) -> Result<(Sa, Sa, Vec<Policy>), DataplaneError> {
    let reqid = reqid(tunnel)?;
    let (l, r) = (sa.local_addr.ip(), sa.remote_addr.ip());
    let lifetimes = Lifetimes {
        soft: Limits {
            add_seconds: Some(sa.lifetimes.soft.as_secs().max(1)),
            ..Limits::default()
        },
        hard: Limits {
            add_seconds: Some(sa.lifetimes.hard.as_secs().max(2)),
            ..Limits::default()
        },
    };
    let k = &sa.keys;
    let mut sa_in = Sa::new(
        r,
        l,
        u32::from_be_bytes(sa.spi_in.0),
        reqid,
        Mode::Tunnel,
        crypto(
            sa.encr,
            sa.integ,
            k.encr_in.as_bytes(),
            k.integ_in.as_bytes(),
        )?,
    );
    let mut sa_out = Sa::new(
        l,
        r,
        u32::from_be_bytes(sa.spi_out.0),
        reqid,
        Mode::Tunnel,
        crypto(
            sa.encr,
            sa.integ,
            k.encr_out.as_bytes(),
            k.integ_out.as_bytes(),
        )?,
    );
    for (s, replay) in [(&mut sa_in, 32), (&mut sa_out, 0)] {
        s.lifetimes = lifetimes;
        s.esn = sa.esn == Esn::Yes;
        s.replay_window = if s.esn { replay.max(32) } else { replay };
    }
    if let Some(e) = sa.encapsulation {
        sa_in.nat_t = Some(NatT {
            sport: e.remote_port,
            dport: e.local_port,
        });
        sa_out.nat_t = Some(NatT {
            sport: e.local_port,
            dport: e.remote_port,
        });
    }
    let mut policies = Vec::new();
    for lt in &sa.local_ts {
        for rt in &sa.remote_ts {
            let (lp, rp) = (prefix(lt)?, prefix(rt)?);
            let inn = Selector::between(rp, lp);
            policies.push(out_policy(lp, rp, l, r, reqid));
            for dir in [Direction::In, Direction::Fwd] {
                policies.push(Policy::protect(
                    inn,
                    dir,
                    PRIORITY,
                    Template::esp(r, l, Mode::Tunnel, reqid),
                ));
            }
        }
    }
    Ok((sa_in, sa_out, policies))
}

fn prefix(ts: &TsRange) -> Result<Prefix, DataplaneError> {
    let (a, len) = prefix_of(ts).ok_or_else(|| DataplaneError {
        reason: "KernelUnsupported",
        message: format!(
            "traffic selector {} is not a prefix; XFRM policies need one",
            ts_string(ts)
        ),
    })?;
    Prefix::new(a, len).map_err(|e| DataplaneError::kernel("traffic selector", &e))
}

/// The outbound policy from `lp` to `rp` through the tunnel `l` → `r`: the same object whether
/// a CHILD SA installs it or it waits as a trap.
fn out_policy(lp: Prefix, rp: Prefix, l: IpAddr, r: IpAddr, reqid: Reqid) -> Policy {
    Policy::protect(
        Selector::between(lp, rp),
        Direction::Out,
        PRIORITY,
        Template::esp(l, r, Mode::Tunnel, reqid),
    )
}

/// The trap policies of an `onTraffic` tunnel: one outbound policy per pair of configured
/// traffic selectors.
fn trap_policies(tunnel: u32, cfg: &PeerConfig) -> Result<Vec<Policy>, DataplaneError> {
    let reqid = reqid(tunnel)?;
    let (l, r) = (cfg.local_addr.ip(), cfg.remote_addr.ip());
    if l.is_unspecified() || r.is_unspecified() {
        return Err(DataplaneError {
            reason: "InvalidConfig",
            message: "initiation onTraffic needs both tunnel addresses".into(),
        });
    }
    let mut policies = Vec::new();
    for lt in &cfg.local_ts {
        for rt in &cfg.remote_ts {
            policies.push(out_policy(prefix(lt)?, prefix(rt)?, l, r, reqid));
        }
    }
    Ok(policies)
}

/// When a CHILD SA's outbound SA goes into the kernel (which sends on the newest one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    /// With the inbound SA: a CHILD SA of IKE_AUTH (either role), an additional one, or a rekey
    /// we started (the peer installed the new pair before answering).
    Now,
    /// A rekey we answered: when the old SA's Delete arrives (the peer installs the new pair
    /// only on our answer).
    AfterDeleteOf(ChildSaId),
    /// The redundant SA of a rekey collision, deleted at once: never sent on.
    Never,
}

fn outbound_plan(replaces: Option<ChildSaId>, initiator: bool, redundant: bool) -> Outbound {
    match (redundant, replaces) {
        (true, _) => Outbound::Never,
        (false, Some(old)) if !initiator => Outbound::AfterDeleteOf(old),
        _ => Outbound::Now,
    }
}

/// Priority of our tunnel policies (strongSwan's default range for subnet policies).
const PRIORITY: u32 = 375_423;

impl Dataplane for KernelDataplane {
    fn kind(&self) -> Kind {
        Kind::Kernel
    }

    fn prepare_socket(&self, sock: &UdpSocket, natt: bool) -> Result<(), DataplaneError> {
        let family = match sock.local_addr() {
            Ok(a) if a.is_ipv6() => strait_xfrm::Family::V6,
            _ => strait_xfrm::Family::V4,
        };
        if natt {
            strait_xfrm::socket::set_udp_encap(sock)
                .map_err(|e| DataplaneError::kernel("UDP_ENCAP on the NAT-T socket", &e))?;
        }
        strait_xfrm::socket::bypass_policies(sock, family)
            .map_err(|e| DataplaneError::kernel("IKE socket bypass policies", &e))
    }

    async fn preflight(&mut self, esp: &[EspProposal]) -> Result<(), DataplaneError> {
        let xfrm = self.xfrm()?.clone();
        xfrm.preflight(&transforms(esp))
            .await
            .map(|_| ())
            .map_err(|e| DataplaneError::kernel("kernel preflight", &e))
    }

    async fn install(&mut self, tunnel: u32, sa: &ChildSaInstall) -> Result<(), DataplaneError> {
        let xfrm = self.xfrm()?.clone();
        let (sa_in, sa_out, policies) = kernel_objects(tunnel, sa)?;
        xfrm.add_sa(&sa_in)
            .await
            .map_err(|e| DataplaneError::kernel("installing the inbound SA", &e))?;
        let plan = outbound_plan(sa.replaces, sa.initiator, sa.redundant);
        if plan == Outbound::Now
            && let Err(e) = xfrm.add_sa(&sa_out).await
        {
            let _ = xfrm.delete_sa(&sa_in.id()).await;
            return Err(DataplaneError::kernel("installing the outbound SA", &e));
        }
        for p in &policies {
            if let Err(e) = xfrm.update_policy(p).await {
                let _ = xfrm.delete_sa(&sa_out.id()).await;
                let _ = xfrm.delete_sa(&sa_in.id()).await;
                return Err(DataplaneError::kernel("installing a policy", &e));
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

    async fn delete(&mut self, child: ChildSaId) -> Result<(), DataplaneError> {
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
                    first_err.get_or_insert(DataplaneError::kernel("deleting a policy", &e));
                }
            }
        }
        for id in [ins.sa_out, ins.sa_in] {
            if let Err(e) = xfrm.delete_sa(&id).await
                && !matches!(e, strait_xfrm::Error::NotFound { .. })
            {
                first_err.get_or_insert(DataplaneError::kernel("deleting an SA", &e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn shutdown(&mut self) -> Result<(), DataplaneError> {
        self.installed.clear();
        self.deferred_out.clear();
        self.trapped.clear();
        self.adopted = None;
        let xfrm = self.xfrm()?.clone();
        xfrm.flush_ours()
            .await
            .map(|_| ())
            .map_err(|e| DataplaneError::kernel("removing our XFRM objects", &e))
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<KernelEvent>> {
        self.events.take()
    }

    fn supports_on_traffic(&self) -> bool {
        // Without notifications an acquire would never be heard.
        self.xfrm.is_ok() && self.notified
    }

    async fn trap(&mut self, tunnel: u32, cfg: &PeerConfig) -> Result<(), DataplaneError> {
        let xfrm = self.xfrm()?.clone();
        let policies = trap_policies(tunnel, cfg)?;
        for (i, p) in policies.iter().enumerate() {
            if let Err(e) = xfrm.update_policy(p).await {
                for done in policies.iter().take(i) {
                    let _ = xfrm.delete_policy(&done.id()).await;
                }
                return Err(DataplaneError::kernel("installing a trap policy", &e));
            }
        }
        self.trapped.insert(tunnel, policies);
        Ok(())
    }

    async fn untrap(&mut self, tunnel: u32) -> Result<(), DataplaneError> {
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
                first_err.get_or_insert(DataplaneError::kernel("deleting a trap policy", &e));
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

    async fn sweep_adopted(&mut self) -> Result<(), DataplaneError> {
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
            .map_err(|e| DataplaneError::kernel("sweeping a previous run's XFRM objects", &e))?;
        tracing::info!(
            sas = report.sas_deleted.len(),
            policies = report.policies_deleted.len(),
            already_gone = report.already_gone,
            "swept the previous run's XFRM objects"
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_ranges() {
        let ts = TsRange::subnet("198.51.100.0".parse().unwrap(), 24).unwrap();
        assert_eq!(ts_string(&ts), "198.51.100.0/24");
        let host = TsRange::subnet("192.0.2.1".parse().unwrap(), 32).unwrap();
        assert_eq!(ts_string(&host), "192.0.2.1/32");
        let all = TsRange::subnet("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert_eq!(ts_string(&all), "0.0.0.0/0");
        let odd = TsRange {
            addrs: AddrRange::V4 {
                start: "10.0.0.1".parse().unwrap(),
                end: "10.0.0.5".parse().unwrap(),
            },
            ..all
        };
        assert_eq!(prefix_of(&odd), None);
        assert_eq!(ts_string(&odd), "10.0.0.1-10.0.0.5");
    }

    #[test]
    fn outbound_sa_timing_by_role() {
        let old = ChildSaId(7);
        // IKE_AUTH's CHILD SA: at once, as initiator and as responder
        assert_eq!(outbound_plan(None, true, false), Outbound::Now);
        assert_eq!(outbound_plan(None, false, false), Outbound::Now);
        // a rekey we started: at once; one we answered: when the old one's Delete arrives
        assert_eq!(outbound_plan(Some(old), true, false), Outbound::Now);
        assert_eq!(
            outbound_plan(Some(old), false, false),
            Outbound::AfterDeleteOf(old)
        );
        // the redundant SA of a collision: never
        assert_eq!(outbound_plan(Some(old), true, true), Outbound::Never);
    }

    #[test]
    fn transforms_of_proposals() {
        let esp =
            strait_ike::proposal::parse_esp_list(&["aes256gcm16-x25519", "aes256-sha256"]).unwrap();
        assert_eq!(
            transforms(&esp),
            vec![
                Transform::AesGcm16 { key_bits: 256 },
                Transform::AesCbc {
                    key_bits: 256,
                    integrity: Integrity::HmacSha256
                }
            ]
        );
    }
}
