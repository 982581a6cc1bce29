//! UDP port 4500 demultiplexing (RFC 3948 §2): IKE behind a non-ESP marker, NAT keepalives,
//! and UDP-encapsulated ESP share one socket.

/// Four zero bytes before an IKE message on port 4500 (where ESP has a non-zero SPI).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The single byte of a NAT-keepalive packet.
pub const NAT_KEEPALIVE: u8 = 0xff;

/// What a datagram received on UDP/4500 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udp4500<'a> {
    /// An IKE message, marker removed.
    Ike(&'a [u8]),
    /// A NAT keepalive: drop it.
    Keepalive,
    /// UDP-encapsulated ESP (starts with its non-zero SPI), for the data plane.
    Esp(&'a [u8]),
    /// None of these: drop it.
    Invalid,
}

/// Classifies a UDP/4500 payload.
pub fn classify_udp4500(datagram: &[u8]) -> Udp4500<'_> {
    if datagram == [NAT_KEEPALIVE] {
        return Udp4500::Keepalive;
    }
    match datagram.split_first_chunk::<4>() {
        Some((marker, ike)) if *marker == NON_ESP_MARKER => Udp4500::Ike(ike),
        Some(_) => Udp4500::Esp(datagram),
        None => Udp4500::Invalid,
    }
}

/// Prefixes an IKE message with the non-ESP marker for sending on port 4500.
pub fn with_non_esp_marker(ike: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ike.len().saturating_add(NON_ESP_MARKER.len()));
    out.extend_from_slice(&NON_ESP_MARKER);
    out.extend_from_slice(ike);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_port_4500_datagrams() {
        assert_eq!(classify_udp4500(&[0xff]), Udp4500::Keepalive);
        assert_eq!(classify_udp4500(&[0, 0, 0, 0, 9, 9]), Udp4500::Ike(&[9, 9]));
        let esp = [0, 0, 1, 0, 0, 0, 0, 1];
        assert_eq!(classify_udp4500(&esp), Udp4500::Esp(&esp));
        assert_eq!(classify_udp4500(&[]), Udp4500::Invalid);
        assert_eq!(classify_udp4500(&[0, 0, 0]), Udp4500::Invalid);
        assert_eq!(classify_udp4500(&[0xfe]), Udp4500::Invalid);
        let ike = [1, 2, 3];
        assert_eq!(
            classify_udp4500(&with_non_esp_marker(&ike)),
            Udp4500::Ike(&ike)
        );
    }
}
