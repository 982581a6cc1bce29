//! How the agent writes what IKE negotiated for people: strongSwan's notation for proposals and
//! traffic selectors, SPIs as status shows them, and a sentence for each reason an SA failed.

use strait_ike::codec::TsRange;
use strait_ike::crypto::alg::{Encr, Integ};
use strait_ike::proposal::{IkeChoice, Keyword};
use strait_ike::{IkeSpis, Reason};

/// The IKE proposal in strongSwan's notation.
pub fn ike_choice_name(c: &IkeChoice) -> String {
    let mut parts = vec![c.encr.keyword()];
    if let Some(i) = c.integ {
        parts.push(i.keyword());
    }
    parts.push(c.prf.keyword());
    parts.push(c.ke.keyword());
    parts.join("-")
}

/// IKE SPIs as status shows them: `<initiator>_i <responder>_r`.
pub fn spis_string(s: &IkeSpis) -> String {
    format!("{:?}_i {:?}_r", s.initiator, s.responder)
}

/// A sentence for a person, per reason.
pub fn reason_message(r: Reason) -> &'static str {
    match r {
        Reason::NoProposalChosen => {
            "no proposal chosen: the peer and this tunnel have no algorithm set in common (compare spec.ike/spec.esp proposals with the peer's)"
        }
        Reason::AuthenticationFailed => {
            "authentication failed: the peer rejected our AUTH or its AUTH/identity did not verify (check the pre-shared key or the certificates and CA, and both identities)"
        }
        Reason::PeerUnreachable => {
            "the peer did not answer (retransmissions or dead peer detection timed out)"
        }
        Reason::TsUnacceptable => "the peer did not accept the traffic selectors (subnets)",
        Reason::InvalidSyntax => "the peer sent, or reported, a malformed message",
        Reason::DeletedByPeer => "the peer deleted the SA",
        Reason::DeletedLocally => "deleted by this agent",
        Reason::HalfOpenTimeout => "the peer never completed IKE_AUTH",
        Reason::Replaced => "replaced by a newer SA",
        Reason::CertificateNotYetValid => "the peer's certificate is not yet valid",
        Reason::CertificateExpired => "the peer's certificate has expired",
        Reason::PeerError => "the peer answered with an error notification",
        Reason::LifetimeExpired => {
            "the IKE SA reached its hard lifetime (spec.ike.maxLifetime) without a successful rekey"
        }
        Reason::ClockUnset => {
            "this node's clock is not set (before 1970), so certificates cannot be checked"
        }
        Reason::LocalCrypto => "a cryptographic operation failed on this node",
        Reason::Encode => "this agent could not encode or seal one of its messages",
        Reason::InternalError => "internal error in this agent",
    }
}

/// strongSwan-style name of a negotiated ESP transform (`aes256gcm16`, `aes256-sha256`).
pub fn esp_name(encr: Encr, integ: Option<Integ>) -> String {
    match integ {
        Some(i) => format!("{}-{}", encr.keyword(), i.keyword()),
        None => encr.keyword().to_owned(),
    }
}

/// A traffic selector as text (strongSwan's notation, [`TsRange`]'s `Display`).
pub fn ts_string(ts: &TsRange) -> String {
    ts.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn selectors_with_protocol_and_ports() {
        let mut ts = TsRange::subnet("198.51.100.0".parse().unwrap(), 24).unwrap();
        ts.ip_protocol = 47;
        assert_eq!(ts_string(&ts), "198.51.100.0/24[47]");
        ts.ip_protocol = 6;
        ts.start_port = 443;
        ts.end_port = 443;
        assert_eq!(ts_string(&ts), "198.51.100.0/24[6/443]");
        ts.end_port = 444;
        assert_eq!(ts_string(&ts), "198.51.100.0/24[6/443-444]");
    }

    #[test]
    fn proposals_in_strongswan_notation() {
        assert_eq!(esp_name(Encr::AesGcm16_256, None), "aes256gcm16");
        assert_eq!(
            esp_name(Encr::AesCbc128, Some(Integ::HmacSha256_128)),
            "aes128-sha256"
        );
    }
}
