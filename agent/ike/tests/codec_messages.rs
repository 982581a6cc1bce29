//! Decoding of known wire bytes and round trips of every payload.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod codec_support;

use codec_support::*;
use strait_ike::codec::*;

#[test]
fn decodes_charon_ike_sa_init_request() {
    let bytes = charon_init_request();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header.initiator_spi, Spi(SPI_I));
    assert!(m.header.responder_spi.is_zero());
    assert_eq!(m.header.exchange_type, ExchangeType::IKE_SA_INIT);
    assert_eq!(m.header.flags, Flags::INITIATOR);
    assert_eq!(m.header.message_id, 0);

    let types: Vec<_> = m.payloads.iter().map(Payload::payload_type).collect();
    assert_eq!(
        types,
        [
            PayloadType::SA,
            PayloadType::KE,
            PayloadType::NONCE,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY
        ]
    );
    let Payload::Sa(sa) = &m.payloads[0] else {
        panic!()
    };
    let p = &sa.proposals[0];
    assert_eq!((p.number, p.protocol, p.spi.len()), (1, ProtocolId::IKE, 0));
    let encr = p.transforms_of(TransformType::ENCR).next().unwrap();
    assert_eq!(EncrId(encr.id), EncrId::AES_GCM_16);
    assert_eq!(encr.key_length(), Some(256));
    assert_eq!(
        p.transforms_of(TransformType::DH).next().unwrap().id,
        DhId::CURVE25519.0
    );
    let Payload::KeyExchange(ke) = &m.payloads[1] else {
        panic!()
    };
    assert_eq!((ke.group, ke.data.len()), (DhId::CURVE25519, 32));
    let Payload::Nonce(n) = &m.payloads[2] else {
        panic!()
    };
    assert_eq!(n.as_bytes().len(), 32);
    let notifies: Vec<_> = m.notifies().map(|n| n.ty).collect();
    assert_eq!(
        notifies,
        [
            NotifyType::NAT_DETECTION_SOURCE_IP,
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
            NotifyType::SIGNATURE_HASH_ALGORITHMS,
            NotifyType::REDIRECT_SUPPORTED
        ]
    );
    assert_eq!(
        m.notify(NotifyType::SIGNATURE_HASH_ALGORITHMS)
            .unwrap()
            .hash_algorithms()
            .unwrap(),
        [
            HashAlgorithm::SHA2_256,
            HashAlgorithm::SHA2_384,
            HashAlgorithm::SHA2_512,
            HashAlgorithm::IDENTITY
        ]
    );
    assert_eq!(
        m.notify(NotifyType::NAT_DETECTION_SOURCE_IP).unwrap().data,
        [0x11; 20]
    );
    // Byte-exact re-encoding of what a real peer sent.
    assert_eq!(m.encode().unwrap(), bytes);
}

#[test]
fn every_sample_round_trips() {
    for m in sample_messages() {
        let bytes = m.encode().unwrap();
        let back = Message::parse(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.encode().unwrap(), bytes);
    }
}

#[test]
fn every_payload_round_trips_alone() {
    for p in every_payload() {
        let m = Message {
            header: header(ExchangeType::CREATE_CHILD_SA, Flags::INITIATOR, 3),
            payloads: vec![p],
        };
        assert_eq!(Message::parse(&m.encode().unwrap()).unwrap(), m);
    }
}

#[test]
fn unknown_code_points_survive() {
    let m = &sample_messages()[1];
    let back = Message::parse(&m.encode().unwrap()).unwrap();
    let Payload::Sa(sa) = &back.payloads[0] else {
        panic!()
    };
    assert_eq!(format!("{:?}", sa.proposals[1].protocol), "ProtocolId(77)");
    assert!(
        sa.proposals[0]
            .transforms
            .iter()
            .any(|t| t.ty == TransformType(200) && t.id == 0xbeef)
    );
    assert!(back.notify(NotifyType(40000)).is_some());
    assert!(!NotifyType(40000).is_error() && NotifyType(40).is_error());
    assert_eq!(
        back.notify(NotifyType::INVALID_KE_PAYLOAD)
            .unwrap()
            .requested_group(),
        Some(DhId::CURVE25519)
    );
}

#[test]
fn ike_auth_protection_flow_without_crypto() {
    // What the SK layer does, with identity "encryption": encode the inner chain, pad, build
    // the skeleton, fill the ciphertext, then on receipt locate, strip padding, parse inner.
    let inner = auth_request_inner();
    let (first, mut plain) = encode_inner(&inner).unwrap();
    assert_eq!(first, PayloadType::IDI);
    pad(&mut plain, 16);
    let hdr = header(ExchangeType::IKE_AUTH, Flags::INITIATOR, 1);
    let sizes = SkSizes {
        iv: 16,
        ciphertext: plain.len(),
        icv: 16,
    };
    let (mut bytes, layout) = encode_protected(&hdr, first, None, sizes).unwrap();
    bytes[layout.ciphertext.clone()].copy_from_slice(&plain);
    bytes[layout.icv.clone()].fill(0x1c);

    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.header, hdr);
    assert_eq!(m.encrypted().unwrap().first_payload, PayloadType::IDI);
    assert_eq!(m.encrypted().unwrap().data.len(), 16 + plain.len() + 16);

    let found = SkLayout::locate(&bytes, 16, 16).unwrap();
    assert_eq!(found, layout);
    assert_eq!(found.associated_data, 0..32);
    let decrypted = &bytes[found.ciphertext.clone()];
    let payloads = parse_inner(found.first_payload, strip_padding(decrypted).unwrap()).unwrap();
    assert_eq!(payloads, inner);
    let Payload::IdInitiator(id) = &payloads[0] else {
        panic!()
    };
    assert_eq!(id.auth_octets(), b"\x02\0\0\0dc1.example.com");
}

#[test]
fn ts_layout_matches_rfc() {
    // TSi with one IPv4 selector, 198.51.100.0/24, any protocol and port (§3.13.1).
    let ts = Payload::TsInitiator(TrafficSelectors {
        selectors: vec![TrafficSelector::Range(
            TsRange::subnet("198.51.100.0".parse().unwrap(), 24).unwrap(),
        )],
    });
    let (first, bytes) = encode_inner(std::slice::from_ref(&ts)).unwrap();
    assert_eq!(first, PayloadType::TSI);
    assert_eq!(
        bytes,
        [
            0, 0, 0, 24, // generic header
            1, 0, 0, 0, // one selector
            7, 0, 0, 16, // IPv4 range, any protocol, length 16
            0, 0, 0xff, 0xff, // ports 0..65535
            198, 51, 100, 0, 198, 51, 100, 255
        ]
    );
    assert_eq!(parse_inner(first, &bytes).unwrap(), [ts]);
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let hdr = header(ExchangeType::INFORMATIONAL, Flags::default(), 0);
    let enc = Payload::Encrypted(Encrypted {
        first_payload: PayloadType::NONE,
        data: Vec::new(),
    });
    let notify = Payload::Notify(Notify::empty(NotifyType::COOKIE));
    let bad = [
        vec![enc.clone(), notify.clone()],
        vec![Payload::Certificate(Certificate {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0; 70_000],
        })],
        vec![Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![vec![1, 2, 3]],
        })],
        vec![Payload::Notify(Notify {
            spi: vec![0; 256],
            ..Notify::empty(NotifyType::COOKIE)
        })],
    ];
    for payloads in bad {
        let m = Message {
            header: hdr,
            payloads,
        };
        assert!(m.encode().is_err());
    }
    // SK inside SK content is refused both ways.
    assert_eq!(
        encode_inner(&[enc]).unwrap_err(),
        EncodeError::MisplacedEncrypted
    );
    assert!(Nonce::new(vec![0; 15]).is_none() && Nonce::new(vec![0; 257]).is_none());
}
