//! A reachability probe: one IKE_SA_INIT request offering a tunnel's own IKE proposals, and what
//! the peer's answer says about the path and its configuration. `kubectl strait diagnose` runs it
//! on the gateway (through `strait-agent probe`) to tell "the peer is not reachable on UDP
//! 500/4500" from "the peer answers but refuses our proposals".
//!
//! Sans-IO like the rest of the crate: the caller sends [`Probe::request`]'s bytes from a socket
//! of its own (an ephemeral port, so the agent's sockets are not involved), adds the non-ESP
//! marker on port 4500, and feeds back whatever arrives to [`Probe::answer`].
//!
//! A peer that accepts keeps a half-open IKE SA until its own timeout (strongSwan: 30 s); the
//! probe never sends IKE_AUTH, so it cannot authenticate, reset or replace a real IKE SA.

use core::net::SocketAddr;

use crate::codec::{
    DecodeError, EncodeError, ExchangeType, Flags, Header, KeyExchange as KePayload, Message,
    Nonce, Notify, NotifyType, Payload, Spi,
};
use crate::crypto::alg::KeGroup;
use crate::crypto::ke::KeyExchange;
use crate::crypto::rng::Rng;
use crate::proposal::{IkeChoice, IkeProposal};
use crate::{natd, sa::proposals};

/// What the peer's answer to the probe said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It accepted one of our proposals: a real IKE_SA_INIT from the agent would go on to
    /// IKE_AUTH. `nat` is what its NAT-D notifications say: `(we are behind a NAT, it is behind
    /// a NAT)`, `None` when it sent none.
    Accepted {
        /// The transforms it chose.
        choice: IkeChoice,
        /// What NAT detection found.
        nat: Option<(bool, bool)>,
    },
    /// It wants another of our key exchange groups first (this group's id): it accepts the
    /// proposal otherwise, so the agent would retry with that group.
    InvalidKe(u16),
    /// It asked for a cookie (it is under load, or always asks): it is reachable.
    Cookie,
    /// It refused every proposal we offered.
    NoProposalChosen,
    /// Another error notification.
    Refused(NotifyType),
}

/// One probe: the request's SPI and addresses, to recognise and judge the answer.
#[derive(Debug, Clone)]
pub struct Probe {
    spi: Spi,
    local: SocketAddr,
    remote: SocketAddr,
    proposals: Vec<IkeProposal>,
}

/// Why a probe could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No proposal names a key exchange group (IKE_SA_INIT needs one for its KE payload).
    #[error("no IKE proposal names a key exchange group")]
    NoGroup,
    /// The key exchange could not generate a key.
    #[error("cannot generate a {0:?} key")]
    Key(KeGroup),
    /// The message could not be encoded.
    #[error("cannot encode the IKE_SA_INIT request: {0}")]
    Encode(#[from] EncodeError),
}

impl Probe {
    /// Builds the IKE_SA_INIT request from `local` to `remote` (the addresses NAT-D hashes:
    /// `local` as the socket is bound after connecting) offering `proposals`, with a KE payload
    /// for the first group they name.
    ///
    /// # Errors
    /// No proposal names a group, or the key cannot be made.
    pub fn request(
        proposals: &[IkeProposal],
        local: SocketAddr,
        remote: SocketAddr,
        rng: &mut dyn Rng,
    ) -> Result<(Self, Vec<u8>), ProbeError> {
        let group = proposals
            .iter()
            .find_map(|p| p.ke.first().copied())
            .ok_or(ProbeError::NoGroup)?;
        let ke = KeyExchange::generate(group, rng).map_err(|_| ProbeError::Key(group))?;
        let mut spi = [0u8; 8];
        while spi == [0; 8] {
            rng.fill(&mut spi);
        }
        let spi = Spi(spi);
        let mut nonce = vec![0u8; 32];
        rng.fill(&mut nonce);
        let mut payloads = vec![
            Payload::Sa(proposals::ike_offer(proposals, &[])),
            Payload::KeyExchange(KePayload {
                group: group.id(),
                data: ke.public_value().to_vec(),
            }),
        ];
        payloads.extend(Nonce::new(nonce).map(Payload::Nonce));
        for n in natd::natd_notifies(spi, Spi::ZERO, local, remote, None) {
            payloads.push(Payload::Notify(n));
        }
        payloads.push(Payload::Notify(Notify::empty(
            NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
        )));
        let msg = Message {
            header: Header {
                initiator_spi: spi,
                responder_spi: Spi::ZERO,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::INITIATOR,
                message_id: 0,
            },
            payloads,
        };
        let bytes = msg.encode()?;
        let probe = Self {
            spi,
            local,
            remote,
            proposals: proposals.to_vec(),
        };
        Ok((probe, bytes))
    }

    /// Judges a datagram that arrived on the probe's socket (without the non-ESP marker).
    /// `Ok(None)`: not the answer to this probe (another SPI, a request, garbage that happens
    /// to parse); keep waiting.
    ///
    /// # Errors
    /// The datagram is not an IKE message.
    pub fn answer(&self, datagram: &[u8]) -> Result<Option<Answer>, DecodeError> {
        let msg = Message::parse(datagram)?;
        let h = &msg.header;
        if h.initiator_spi != self.spi
            || h.exchange_type != ExchangeType::IKE_SA_INIT
            || !h.flags.is_response()
            || h.message_id != 0
        {
            return Ok(None);
        }
        if msg.notify(NotifyType::COOKIE).is_some() {
            return Ok(Some(Answer::Cookie));
        }
        if let Some(n) = msg.notify(NotifyType::INVALID_KE_PAYLOAD) {
            let group = n.requested_group().map_or(0, u16::from);
            return Ok(Some(Answer::InvalidKe(group)));
        }
        if msg.notify(NotifyType::NO_PROPOSAL_CHOSEN).is_some() {
            return Ok(Some(Answer::NoProposalChosen));
        }
        if let Some(n) = msg.notifies().find(|n| n.ty.is_error()) {
            return Ok(Some(Answer::Refused(n.ty)));
        }
        let chosen = msg.payloads.iter().find_map(|p| match p {
            Payload::Sa(sa) => proposals::ike_accepted(sa, &self.proposals),
            _ => None,
        });
        // An answer without an acceptable SA is a broken peer, not an acceptance.
        let Some((choice, _)) = chosen else {
            return Ok(Some(Answer::Refused(NotifyType::NO_PROPOSAL_CHOSEN)));
        };
        let nat = natd::check(
            msg.notifies(),
            self.spi,
            h.responder_spi,
            self.local,
            self.remote,
        );
        Ok(Some(Answer::Accepted { choice, nat }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::codec::TsRange;
    use crate::crypto::rng::DeterministicRng;
    use crate::proposal::parse_ike_list;
    use crate::{Endpoint, EndpointConfig, Identity, PeerConfig};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Our own responder configured with `theirs` for a peer at `seen_as` (where the probe
    /// appears to come from), the probe offering `ours`: the responder's one datagram, judged.
    fn probe_against(ours: &[&str], theirs: &[&str], seen_as: SocketAddr) -> Option<Answer> {
        let (us, them) = (addr("192.0.2.1:40000"), addr("198.51.100.2:500"));
        let net = TsRange::subnet("10.0.0.0".parse().unwrap(), 8).unwrap();
        let cfg = PeerConfig::psk(
            them,
            Identity::Fqdn("b".into()),
            seen_as,
            Identity::Fqdn("a".into()),
            b"secret",
        )
        .with_proposals(
            parse_ike_list(theirs).unwrap(),
            crate::proposal::default_esp(),
        )
        .with_ts(vec![net], vec![net]);
        let mut ep = Endpoint::new(
            EndpointConfig::default(),
            Box::new(DeterministicRng::new(2)),
        );
        ep.add_peer(cfg).unwrap();
        let mut rng = DeterministicRng::new(1);
        let (probe, bytes) =
            Probe::request(&parse_ike_list(ours).unwrap(), us, them, &mut rng).unwrap();
        ep.handle(Instant::now(), them, seen_as, &bytes);
        let out = ep.poll_transmit()?;
        assert_eq!(out.remote, seen_as);
        probe.answer(&out.payload).unwrap()
    }

    #[test]
    fn a_peer_with_our_proposal_accepts_and_names_the_choice() {
        let us = addr("192.0.2.1:40000");
        let a = probe_against(
            &["aes256gcm16-prfsha384-x25519"],
            &["aes256gcm16-prfsha384-x25519"],
            us,
        );
        let Some(Answer::Accepted { choice, nat }) = a else {
            panic!("{a:?}")
        };
        assert_eq!(choice.ke, KeGroup::Curve25519);
        assert_eq!(nat, Some((false, false)));
    }

    #[test]
    fn a_nat_between_shows_in_the_answer() {
        // The responder sees the probe from a mapped address and port.
        let a = probe_against(
            &["aes256gcm16-prfsha384-x25519"],
            &["aes256gcm16-prfsha384-x25519"],
            addr("203.0.113.7:61000"),
        );
        assert!(
            matches!(
                a,
                Some(Answer::Accepted {
                    nat: Some((true, false)),
                    ..
                })
            ),
            "{a:?}"
        );
    }

    #[test]
    fn a_peer_without_our_proposals_says_no_proposal_chosen() {
        let a = probe_against(
            &["aes256gcm16-prfsha384-x25519"],
            &["aes128-sha256-modp2048"],
            addr("192.0.2.1:40000"),
        );
        assert_eq!(a, Some(Answer::NoProposalChosen));
    }

    #[test]
    fn a_peer_preferring_another_offered_group_asks_for_it() {
        let a = probe_against(
            &["aes256gcm16-prfsha384-x25519-ecp256"],
            &["aes256gcm16-prfsha384-ecp256"],
            addr("192.0.2.1:40000"),
        );
        assert_eq!(a, Some(Answer::InvalidKe(KeGroup::Ecp256.id().0)));
    }

    #[test]
    fn other_datagrams_are_not_the_answer() {
        let mut rng = DeterministicRng::new(3);
        let ours = parse_ike_list(&["aes256gcm16-prfsha384-x25519"]).unwrap();
        let (us, them) = (addr("192.0.2.1:40000"), addr("198.51.100.2:500"));
        let (probe, request) = Probe::request(&ours, us, them, &mut rng).unwrap();
        // Our own request (no response flag), another probe's answer, and bytes that are not IKE.
        assert_eq!(probe.answer(&request).unwrap(), None);
        let (other, other_request) = Probe::request(&ours, us, them, &mut rng).unwrap();
        assert_eq!(other.answer(&request).unwrap(), None);
        assert_eq!(probe.answer(&other_request).unwrap(), None);
        assert!(probe.answer(b"\x00\x01not ike").is_err());
        assert!(matches!(
            Probe::request(&[], us, them, &mut rng),
            Err(ProbeError::NoGroup)
        ));
    }
}
