//! One tunnel's state in the driver, and how each IKE event changes it: the status entry it
//! reports, its CHILD SAs, the current IKE SA, and when to initiate again after a failure.
//!
//! Pure: no sockets, no tokio, the monotonic clock passed in (the wall clock is read only for the
//! status's timestamps), so every transition is unit-tested here. The driver asks the endpoint
//! and the data plane, then tells the tunnel what happened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strait_crds::{ChildSaStatus, GatewayStatus, IkeState, Initiation, LastError};
use strait_ike::proposal::IkeChoice;
use strait_ike::{ChildSaId, ChildSaInstall, IkeSpis, NatState, PeerId, Reason, Role};

use crate::error::TunnelError;
use crate::notation::{esp_name, ike_choice_name, reason_message, spis_string, ts_string};
use crate::spec::TunnelDef;
use crate::status::TunnelStatus;

/// First re-initiation delay after a failure; doubled up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest re-initiation delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// One configured tunnel.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) def: TunnelDef,
    /// [`super::saved::digest`] of `def`, taken once: saved state is written on every change.
    pub(crate) digest: [u8; super::saved::DIGEST_LEN],
    /// Small number of the tunnel in this run: the data plane derives its reqid from it.
    pub(crate) index: u32,
    /// The endpoint's handle, once the tunnel started.
    pub(crate) peer: Option<PeerId>,
    /// Who initiates, as started (onTraffic falls back to respond without traps).
    pub(crate) role: Option<Role>,
    /// The IKE SA the status describes: the newest of `up`.
    current: Option<IkeSpis>,
    /// Every established IKE SA of the tunnel, oldest first. Mostly one; two for a moment
    /// while a reauthentication or duplicate resolution (both ends initiated at once) drops
    /// one, and then the tunnel is not down when the one the status shows goes.
    up: Vec<UpSa>,
    pub(crate) status: TunnelStatus,
    children: BTreeMap<ChildSaId, ChildSaStatus>,
    /// When to initiate again, after a failure.
    pub(crate) retry_at: Option<Instant>,
    backoff: Duration,
    /// When we sent the first IKE_SA_INIT of the handshake under way (for its duration).
    initiated_at: Option<Instant>,
    /// When the SAs of resumed saved state were established (shown instead of the restart's
    /// time).
    pub(crate) resumed_times: Option<super::saved::Times>,
}

/// An IKE SA that came up, as the endpoint reported it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IkeUp<'a> {
    pub(crate) proposal: &'a IkeChoice,
    pub(crate) spis: IkeSpis,
    pub(crate) nat: NatState,
    pub(crate) initiator: bool,
    pub(crate) local_addr: std::net::SocketAddr,
    pub(crate) remote_addr: std::net::SocketAddr,
}

/// What the status shows of an established IKE SA.
#[derive(Debug, Clone)]
struct UpSa {
    spis: IkeSpis,
    proposal: String,
    local: String,
    remote: String,
    nat: bool,
    initiator: bool,
}

/// What an IKE SA going down meant, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Down {
    /// The established SA stopped answering (DPD or retransmissions).
    pub(crate) dpd_failure: bool,
    /// A handshake failed (not a deletion of ours, not a replacement).
    pub(crate) handshake_failed: bool,
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn time_from_ms(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}

fn time_in(d: Duration) -> Option<Time> {
    let d = k8s_openapi::jiff::SignedDuration::try_from(d).ok()?;
    k8s_openapi::jiff::Timestamp::now()
        .checked_add(d)
        .ok()
        .map(Time)
}

impl Tunnel {
    /// A tunnel not started yet: `Down`, no SA.
    pub(crate) fn new(def: TunnelDef, index: u32, node: &str) -> Self {
        let status = TunnelStatus {
            name: def.name.clone(),
            initiation: match def.spec.initiation {
                Initiation::Start => "start",
                Initiation::Respond => "respond",
                Initiation::OnTraffic => "onTraffic",
            }
            .into(),
            local_id: def.spec.local.id.clone(),
            remote_id: def.spec.remote.id.clone(),
            notes: def.notes.clone(),
            gateway: GatewayStatus {
                node: node.to_owned(),
                ike_state: Some(IkeState::Down),
                ..GatewayStatus::default()
            },
            ..TunnelStatus::default()
        };
        Self {
            digest: super::saved::digest(&def),
            def,
            index,
            peer: None,
            role: None,
            current: None,
            up: Vec::new(),
            status,
            children: BTreeMap::new(),
            retry_at: None,
            backoff: RETRY_MIN,
            initiated_at: None,
            resumed_times: None,
        }
    }

    /// The endpoint took the tunnel's configuration.
    pub(crate) fn started(&mut self, peer: PeerId, role: Role) {
        self.peer = Some(peer);
        self.role = Some(role);
    }

    /// The tunnel cannot start: its status says why.
    pub(crate) fn cannot_start(&mut self, e: TunnelError) {
        self.status.gateway.last_error = Some(LastError::now(e.reason.as_str(), e.message));
    }

    /// We are sending a first IKE_SA_INIT.
    pub(crate) fn initiating(&mut self, now: Instant) {
        self.status.gateway.ike_state = Some(IkeState::Connecting);
        self.initiated_at = Some(now);
    }

    /// A retry is due at `at`: whether it is still this tunnel's (a later failure or success
    /// replaces the time, leaving stale entries in the driver's heap).
    pub(crate) fn take_retry(&mut self, at: Instant) -> bool {
        if self.retry_at != Some(at) {
            return false;
        }
        self.retry_at = None;
        self.peer.is_some()
    }

    /// An IKE SA is established. Returns how long the handshake took, when we initiated it.
    pub(crate) fn on_ike_up(&mut self, up: IkeUp<'_>, now: Instant) -> Option<Duration> {
        let started = self.initiated_at.take();
        let sa = UpSa {
            spis: up.spis,
            proposal: ike_choice_name(up.proposal),
            local: up.local_addr.to_string(),
            remote: up.remote_addr.to_string(),
            nat: up.nat.local_behind_nat || up.nat.remote_behind_nat,
            initiator: up.initiator,
        };
        self.up.retain(|u| u.spis != up.spis);
        self.up.push(sa.clone());
        self.show(&sa);
        let g = &mut self.status.gateway;
        g.ike_state = Some(IkeState::Established);
        g.established_at = Some(now_time());
        g.last_error = None;
        self.retry_at = None;
        self.backoff = RETRY_MIN;
        self.refresh();
        started
            .filter(|_| up.initiator)
            .map(|at| now.saturating_duration_since(at))
    }

    /// The IKE SA `old` was rekeyed into `new`: whether it was the one the status describes.
    pub(crate) fn on_ike_rekeyed(
        &mut self,
        old: IkeSpis,
        new: IkeSpis,
        proposal: &IkeChoice,
    ) -> bool {
        for u in self.up.iter_mut().filter(|u| u.spis == old) {
            u.spis = new;
            u.proposal = ike_choice_name(proposal);
        }
        if self.current != Some(old) {
            return false;
        }
        self.current = Some(new);
        self.status.gateway.ike_spis = Some(spis_string(&new));
        self.status.gateway.ike_proposal = Some(ike_choice_name(proposal));
        true
    }

    /// An IKE SA is gone. When it was the current one the tunnel is down: a tunnel that starts
    /// itself schedules a retry with exponential backoff (read `retry_at` after).
    pub(crate) fn on_ike_down(&mut self, spis: IkeSpis, reason: Reason, now: Instant) -> Down {
        let mut out = Down {
            dpd_failure: self.current == Some(spis) && reason == Reason::PeerUnreachable,
            handshake_failed: false,
        };
        if self.current.is_none() && !matches!(reason, Reason::DeletedLocally | Reason::Replaced) {
            out.handshake_failed = true;
            self.initiated_at = None;
        }
        self.up.retain(|u| u.spis != spis);
        let current = self.current.is_none_or(|c| c == spis);
        if current && let Some(other) = self.up.last().cloned() {
            // another IKE SA of the tunnel carries it: the status shows that one now
            tracing::info!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), carries_on = %spis_string(&other.spis), "IKE SA gone; another of the tunnel carries on");
            self.show(&other);
            self.refresh();
            return out;
        }
        if !current || reason == Reason::Replaced {
            if reason.fault() != strait_ike::Fault::Peer {
                tracing::info!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), "older IKE SA gone");
            } else {
                // another IKE SA than the one in use failed: a reauthentication with new
                // credentials the peer does not take (yet). The tunnel carries on; say why.
                tracing::warn!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), "a new IKE SA failed; the established one carries on");
                self.status.gateway.last_error = Some(LastError::now(
                    reason.as_str(),
                    format!(
                        "a new IKE SA (reauthentication) failed: {}; the established IKE SA \
                         carries on",
                        reason_message(reason)
                    ),
                ));
            }
            return out;
        }
        tracing::warn!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), "IKE SA down");
        self.current = None;
        let g = &mut self.status.gateway;
        g.ike_spis = None;
        g.ike_proposal = None;
        g.established_at = None;
        g.nat_detected = None;
        self.status.initiator = None;
        self.children.clear();
        if reason != Reason::DeletedLocally {
            g.last_error = Some(LastError::now(
                reason.as_str(),
                reason_message(reason).to_owned(),
            ));
        }
        let retry = self.role == Some(Role::Start) && reason != Reason::DeletedLocally;
        if retry {
            let delay = self.backoff;
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
            self.retry_at = Some(now + delay);
            g.ike_state = Some(IkeState::Connecting);
            tracing::info!(tunnel = %self.def.name, delay_secs = delay.as_secs(), "will re-initiate");
        } else {
            g.ike_state = Some(IkeState::Down);
        }
        self.refresh();
        out
    }

    /// A CHILD SA is in the data plane.
    pub(crate) fn on_child_installed(&mut self, sa: &ChildSaInstall) {
        let mut st = child_status(
            (sa.spi_in, sa.spi_out),
            esp_name(sa.encr, sa.integ),
            (&sa.local_ts, &sa.remote_ts),
            sa.encapsulation.is_some(),
            sa.lifetimes.soft,
        );
        st.established_at = Some(now_time());
        self.children.insert(sa.child, st);
        self.refresh();
    }

    /// A CHILD SA of a resumed IKE SA is ours again (made by an earlier agent, at the time it
    /// saved, if it did).
    pub(crate) fn on_child_resumed(&mut self, sa: &strait_ike::ChildSaResumed) {
        let mut st = child_status(
            (sa.spi_in, sa.spi_out),
            esp_name(sa.encr, sa.integ),
            (&sa.local_ts, &sa.remote_ts),
            sa.encapsulation.is_some(),
            sa.lifetimes.soft,
        );
        st.established_at = self.resumed_times.as_ref().and_then(|t| {
            let ms = t.children.iter().find(|(spi, _)| *spi == st.spi_in)?.1;
            time_from_ms(ms)
        });
        self.children.insert(sa.child, st);
        self.refresh();
    }

    /// A resumed IKE SA is up: it keeps the time the earlier agent saw it established.
    pub(crate) fn on_ike_resumed(&mut self) {
        if let Some(t) = self
            .resumed_times
            .as_ref()
            .and_then(|t| time_from_ms(t.ike?))
        {
            self.status.gateway.established_at = Some(t);
        }
    }

    /// When the IKE SA and the CHILD SAs the status shows were established, for saving.
    pub(crate) fn established_times(&self) -> super::saved::Times {
        let ms = |t: &Time| t.0.as_millisecond();
        super::saved::Times {
            ike: self.status.gateway.established_at.as_ref().map(ms),
            children: self
                .children
                .values()
                .filter_map(|c| Some((c.spi_in.clone(), ms(c.established_at.as_ref()?))))
                .collect(),
        }
    }

    /// The data plane could not take a CHILD SA.
    pub(crate) fn on_child_install_failed(&mut self, e: TunnelError) {
        self.status.gateway.last_error = Some(LastError::now(e.reason.as_str(), e.message));
    }

    /// A CHILD SA is gone.
    pub(crate) fn on_child_deleted(&mut self, child: ChildSaId) {
        self.children.remove(&child);
        self.refresh();
    }

    /// A CHILD SA could not be negotiated.
    pub(crate) fn on_child_failed(&mut self, reason: Reason) {
        self.status.gateway.last_error = Some(LastError::now(
            reason.as_str(),
            format!("CHILD SA: {}", reason_message(reason)),
        ));
    }

    /// How many CHILD SAs the tunnel has.
    pub(crate) fn child_count(&self) -> usize {
        self.children.len()
    }

    /// The status describes `sa` (it becomes the current IKE SA).
    fn show(&mut self, sa: &UpSa) {
        let g = &mut self.status.gateway;
        g.ike_proposal = Some(sa.proposal.clone());
        g.ike_spis = Some(spis_string(&sa.spis));
        g.local_endpoint = Some(sa.local.clone());
        g.remote_endpoint = Some(sa.remote.clone());
        g.nat_detected = Some(sa.nat);
        self.status.initiator = Some(sa.initiator);
        self.current = Some(sa.spis);
    }

    fn refresh(&mut self) {
        self.status.gateway.child_sas = self.children.values().cloned().collect();
        self.status.ready = self.status.gateway.is_up();
    }
}

/// A CHILD SA's status entry (without the time it was made).
fn child_status(
    spis: (strait_ike::EspSpi, strait_ike::EspSpi),
    proposal: String,
    ts: (&[strait_ike::codec::TsRange], &[strait_ike::codec::TsRange]),
    encapsulated: bool,
    rekey_in: Duration,
) -> ChildSaStatus {
    let list = |v: &[strait_ike::codec::TsRange]| v.iter().map(ts_string).collect();
    ChildSaStatus {
        spi_in: format!("{:?}", spis.0),
        spi_out: format!("{:?}", spis.1),
        proposal: Some(proposal),
        local_ts: list(ts.0),
        remote_ts: list(ts.1),
        mode: Some("tunnel".into()),
        encapsulated: Some(encapsulated),
        established_at: None,
        rekey_at: time_in(rekey_in),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strait_crds::IPsecTunnelSpec;
    use strait_ike::codec::Spi;
    use strait_ike::crypto::alg::{Encr, Esn, KeGroup, Prf};
    use strait_ike::crypto::keys::SecretBytes;
    use strait_ike::{ChildKeys, ChildLifetimes, EspSpi, Mode};

    const SPEC: &str = "
local: {id: a.example, address: 192.0.2.1, subnets: [198.51.100.0/24]}
remote: {id: b.example, address: 192.0.2.2, subnets: [203.0.113.0/24]}
auth: {psk: {secretRef: {name: s, key: psk}}}
";

    fn tunnel() -> Tunnel {
        let spec: IPsecTunnelSpec = serde_yaml::from_str(SPEC).unwrap();
        let def = TunnelDef {
            name: "t".into(),
            spec,
            secret_digest: Vec::new(),
            peer: Err(TunnelError::new(
                strait_crds::contract::StatusReason::InvalidConfig,
                "unused",
            )),
            notes: Vec::new(),
        };
        Tunnel::new(def, 1, "gw1")
    }

    fn spis(n: u8) -> IkeSpis {
        IkeSpis {
            initiator: Spi([n; 8]),
            responder: Spi([n + 1; 8]),
        }
    }

    fn choice() -> IkeChoice {
        IkeChoice {
            encr: Encr::AesGcm16_256,
            prf: Prf::HmacSha256,
            integ: None,
            ke: KeGroup::Curve25519,
        }
    }

    fn up(t: &mut Tunnel, s: IkeSpis, initiator: bool, now: Instant) -> Option<Duration> {
        let c = choice();
        t.on_ike_up(
            IkeUp {
                proposal: &c,
                spis: s,
                nat: NatState::default(),
                initiator,
                local_addr: "192.0.2.1:500".parse().unwrap(),
                remote_addr: "192.0.2.2:500".parse().unwrap(),
            },
            now,
        )
    }

    fn child(id: u64) -> ChildSaInstall {
        ChildSaInstall {
            peer: PeerId(0),
            child: ChildSaId(id),
            spi_in: EspSpi([0, 0, 0, 1]),
            spi_out: EspSpi([0, 0, 0, 2]),
            encr: Encr::AesGcm16_256,
            integ: None,
            esn: Esn::No,
            keys: ChildKeys {
                encr_in: SecretBytes::from_slice(&[]),
                integ_in: SecretBytes::from_slice(&[]),
                encr_out: SecretBytes::from_slice(&[]),
                integ_out: SecretBytes::from_slice(&[]),
            },
            mode: Mode::Tunnel,
            local_addr: "192.0.2.1:500".parse().unwrap(),
            remote_addr: "192.0.2.2:500".parse().unwrap(),
            local_ts: vec![],
            remote_ts: vec![],
            encapsulation: None,
            lifetimes: ChildLifetimes {
                soft: Duration::from_secs(10),
                hard: Duration::from_secs(20),
                bytes: None,
                packets: None,
            },
            replaces: None,
            initiator: true,
            redundant: false,
        }
    }

    #[test]
    fn ready_needs_an_ike_sa_and_a_child_sa() {
        let t0 = Instant::now();
        let mut t = tunnel();
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Down));
        t.started(PeerId(0), Role::Start);
        t.initiating(t0);
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Connecting));
        let took = up(&mut t, spis(1), true, t0 + Duration::from_millis(40));
        assert_eq!(took, Some(Duration::from_millis(40)));
        assert!(!t.status.ready, "no CHILD SA yet");
        t.on_child_installed(&child(1));
        assert!(t.status.ready);
        assert_eq!(t.status.gateway.child_sas.len(), 1);
        t.on_child_deleted(ChildSaId(1));
        assert!(!t.status.ready);
    }

    #[test]
    fn when_one_of_two_ike_sas_goes_the_other_carries_on() {
        // both ends initiated at once: two IKE SAs, and the endpoint drops one of them
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Start);
        up(&mut t, spis(1), true, t0);
        t.on_child_installed(&child(1));
        up(&mut t, spis(2), false, t0);
        assert_eq!(t.status.gateway.ike_spis, Some(spis_string(&spis(2))));
        // the one the status shows goes (here the peer deleted it): no outage, no retry
        let d = t.on_ike_down(spis(2), Reason::DeletedByPeer, t0);
        assert_eq!(d, Down::default());
        assert_eq!(t.retry_at, None);
        assert!(t.status.ready);
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Established));
        assert_eq!(t.status.gateway.ike_spis, Some(spis_string(&spis(1))));
        assert_eq!(t.status.initiator, Some(true));
        // the last one going is an outage as ever
        t.on_ike_down(spis(1), Reason::PeerUnreachable, t0);
        assert!(!t.status.ready);
        assert_eq!(t.retry_at, Some(t0 + RETRY_MIN));
    }

    #[test]
    fn a_responder_reports_no_handshake_duration() {
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Respond);
        assert_eq!(up(&mut t, spis(1), false, t0), None);
    }

    #[test]
    fn a_failed_initiator_backs_off_and_retries() {
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Start);
        t.initiating(t0);
        let d = t.on_ike_down(spis(1), Reason::AuthenticationFailed, t0);
        assert!(d.handshake_failed && !d.dpd_failure);
        assert_eq!(t.retry_at, Some(t0 + RETRY_MIN));
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Connecting));
        let err = t.status.gateway.last_error.clone().unwrap();
        assert_eq!(err.reason, "AuthenticationFailed");
        // the next failure doubles the delay, up to the cap
        t.on_ike_down(spis(2), Reason::PeerUnreachable, t0);
        assert_eq!(t.retry_at, Some(t0 + RETRY_MIN * 2));
        for _ in 0..10 {
            t.on_ike_down(spis(2), Reason::PeerUnreachable, t0);
        }
        assert_eq!(t.retry_at, Some(t0 + RETRY_MAX));
        // a stale heap entry is refused, the current one taken once
        assert!(!t.take_retry(t0));
        assert!(t.take_retry(t0 + RETRY_MAX));
        assert!(!t.take_retry(t0 + RETRY_MAX));
        // success resets the backoff
        up(&mut t, spis(3), true, t0);
        assert_eq!(t.status.gateway.last_error, None);
        t.on_ike_down(spis(3), Reason::DeletedByPeer, t0);
        assert_eq!(t.retry_at, Some(t0 + RETRY_MIN));
    }

    #[test]
    fn a_responder_goes_down_and_waits() {
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Respond);
        up(&mut t, spis(1), false, t0);
        t.on_child_installed(&child(1));
        let d = t.on_ike_down(spis(1), Reason::PeerUnreachable, t0);
        assert!(d.dpd_failure, "an established SA stopped answering");
        assert!(!d.handshake_failed);
        assert_eq!(t.retry_at, None);
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Down));
        assert!(t.status.gateway.child_sas.is_empty());
        assert_eq!(t.status.gateway.ike_spis, None);
    }

    #[test]
    fn an_older_or_replaced_sa_going_leaves_the_tunnel_up() {
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Start);
        up(&mut t, spis(1), true, t0);
        t.on_child_installed(&child(1));
        assert!(t.on_ike_rekeyed(spis(1), spis(5), &choice()));
        assert_eq!(t.status.gateway.ike_spis, Some(spis_string(&spis(5))));
        // the rekeyed SA's own deletion
        t.on_ike_down(spis(1), Reason::DeletedByPeer, t0);
        assert!(t.status.ready);
        // a replacement after INITIAL_CONTACT
        t.on_ike_down(spis(5), Reason::Replaced, t0);
        assert!(t.status.ready);
        // a rekey of an SA we no longer describe changes nothing
        assert!(!t.on_ike_rekeyed(spis(9), spis(10), &choice()));
        assert_eq!(t.status.gateway.ike_spis, Some(spis_string(&spis(5))));
        assert!(t.status.gateway.last_error.is_none());
        // a reauthentication the peer refuses: still up, and the status says why
        let d = t.on_ike_down(spis(7), Reason::AuthenticationFailed, t0);
        assert!(t.status.ready && !d.dpd_failure && t.retry_at.is_none());
        let e = t.status.gateway.last_error.clone().unwrap();
        assert_eq!(e.reason, "AuthenticationFailed");
        assert!(e.message.contains("carries on"), "{}", e.message);
        // the next IKE SA up clears it
        up(&mut t, spis(8), true, t0);
        assert!(t.status.gateway.last_error.is_none());
    }

    #[test]
    fn our_own_deletion_is_no_error_and_no_retry() {
        let t0 = Instant::now();
        let mut t = tunnel();
        t.started(PeerId(0), Role::Start);
        up(&mut t, spis(1), true, t0);
        let d = t.on_ike_down(spis(1), Reason::DeletedLocally, t0);
        assert_eq!(d, Down::default());
        assert_eq!(t.status.gateway.last_error, None);
        assert_eq!(t.retry_at, None);
        assert_eq!(t.status.gateway.ike_state, Some(IkeState::Down));
    }

    #[test]
    fn errors_carry_their_reason() {
        let mut t = tunnel();
        t.cannot_start(TunnelError::new(
            strait_crds::contract::StatusReason::SocketError,
            "cannot bind UDP 192.0.2.1:500",
        ));
        let e = t.status.gateway.last_error.clone().unwrap();
        assert_eq!(e.reason, "SocketError");
        t.on_child_failed(Reason::TsUnacceptable);
        let e = t.status.gateway.last_error.clone().unwrap();
        assert_eq!(e.reason, "TsUnacceptable");
        assert!(e.message.starts_with("CHILD SA: "));
    }
}
