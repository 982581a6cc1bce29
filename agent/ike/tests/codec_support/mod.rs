//! Sample messages shared by the codec tests: hand-assembled wire bytes (from the RFC 7296
//! layouts and what strongSwan 5.9.8 sends) and typed messages covering every payload.

#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use strait_ike::codec::*;

pub const SPI_I: [u8; 8] = [0x5a, 0x1c, 0x33, 0x90, 0x0b, 0xe4, 0x71, 0x2f];
pub const SPI_R: [u8; 8] = [0xc7, 0x02, 0x9e, 0x44, 0x18, 0xfa, 0x6d, 0x01];

/// charon's IKE_SA_INIT request with one aes256gcm16-prfsha256-x25519 proposal (232 bytes):
/// SA KE Ni N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP)
/// N(IKEV2_FRAGMENTATION_SUPPORTED) N(SIGNATURE_HASH_ALGORITHMS) N(REDIRECT_SUPPORTED).
/// Assembled field by field, not with the encoder under test.
pub fn charon_init_request() -> Vec<u8> {
    let mut b = Vec::new();
    // IKE header: SPIs, next SA(33), version 2.0, IKE_SA_INIT(34), flags I, msgid 0, length.
    b.extend_from_slice(&SPI_I);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&[33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 232]);
    // SA: next KE(34), length 40; one proposal (last, len 36, #1, IKE, no SPI, 3 transforms).
    b.extend_from_slice(&[34, 0, 0, 40]);
    b.extend_from_slice(&[0, 0, 0, 36, 1, 1, 0, 3]);
    // ENCR AES_GCM_16 (20) with Key Length (TV, 14) 256.
    b.extend_from_slice(&[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 1, 0]);
    // PRF HMAC_SHA2_256 (5).
    b.extend_from_slice(&[3, 0, 0, 8, 2, 0, 0, 5]);
    // D-H curve25519 (31), last transform.
    b.extend_from_slice(&[0, 0, 0, 8, 4, 0, 0, 31]);
    // KE: next Nonce(40), length 40, group 31, 32-byte public value.
    b.extend_from_slice(&[40, 0, 0, 40, 0, 31, 0, 0]);
    b.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    // Ni: next N(41), 32 bytes.
    b.extend_from_slice(&[41, 0, 0, 36]);
    b.extend((0..32u8).map(|i| 0xa0 ^ i));
    // N(NAT_DETECTION_SOURCE_IP 0x4004), 20-byte SHA-1.
    b.extend_from_slice(&[41, 0, 0, 28, 0, 0, 0x40, 0x04]);
    b.extend_from_slice(&[0x11; 20]);
    // N(NAT_DETECTION_DESTINATION_IP 0x4005).
    b.extend_from_slice(&[41, 0, 0, 28, 0, 0, 0x40, 0x05]);
    b.extend_from_slice(&[0x22; 20]);
    // N(IKEV2_FRAGMENTATION_SUPPORTED 0x402e).
    b.extend_from_slice(&[41, 0, 0, 8, 0, 0, 0x40, 0x2e]);
    // N(SIGNATURE_HASH_ALGORITHMS 0x402f): sha256 sha384 sha512 identity.
    b.extend_from_slice(&[41, 0, 0, 16, 0, 0, 0x40, 0x2f, 0, 2, 0, 3, 0, 4, 0, 5]);
    // N(REDIRECT_SUPPORTED 0x4016), last payload.
    b.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0x40, 0x16]);
    assert_eq!(b.len(), 232);
    b
}

/// charon's IKE_AUTH request content (inside SK), typed.
pub fn auth_request_inner() -> Vec<Payload> {
    let ts = |net: &str| TrafficSelectors {
        selectors: vec![TrafficSelector::Range(
            TsRange::subnet(net.parse().unwrap(), 24).unwrap(),
        )],
    };
    vec![
        Payload::IdInitiator(Identification::fqdn("dc1.example.com")),
        Payload::Notify(Notify::empty(NotifyType::INITIAL_CONTACT)),
        Payload::IdResponder(Identification::fqdn("dc2.example.com")),
        Payload::Auth(Authentication {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0x5c; 32],
        }),
        Payload::Sa(Sa {
            proposals: vec![Proposal {
                number: 1,
                protocol: ProtocolId::ESP,
                spi: vec![0xc1, 0x2a, 0x00, 0x07],
                transforms: vec![
                    Transform::encr(EncrId::AES_GCM_16, Some(256)),
                    Transform::esn(EsnId::NO_ESN),
                ],
            }],
        }),
        Payload::TsInitiator(ts("198.51.100.0")),
        Payload::TsResponder(ts("203.0.113.0")),
        Payload::Notify(Notify::empty(NotifyType::MOBIKE_SUPPORTED)),
        Payload::Notify(Notify::empty(NotifyType::NO_ADDITIONAL_ADDRESSES)),
        Payload::Notify(Notify::empty(NotifyType::EAP_ONLY_AUTHENTICATION)),
        Payload::Notify(Notify::empty(NotifyType::IKEV2_MESSAGE_ID_SYNC_SUPPORTED)),
    ]
}

pub fn header(exchange_type: ExchangeType, flags: Flags, message_id: u32) -> Header {
    Header {
        initiator_spi: Spi(SPI_I),
        responder_spi: Spi(SPI_R),
        exchange_type,
        flags,
        message_id,
    }
}

/// One of every payload, with unknown code points where the format allows them.
pub fn every_payload() -> Vec<Payload> {
    vec![
        Payload::Sa(Sa {
            proposals: vec![
                Proposal {
                    number: 1,
                    protocol: ProtocolId::IKE,
                    spi: SPI_R.to_vec(),
                    transforms: vec![
                        Transform::encr(EncrId::AES_CBC, Some(128)),
                        Transform::integ(IntegId::HMAC_SHA2_256_128),
                        Transform::prf(PrfId::HMAC_SHA2_384),
                        Transform::dh(DhId::ECP256),
                        Transform::dh(DhId(4242)),
                        Transform {
                            ty: TransformType(200),
                            id: 0xbeef,
                            attributes: vec![
                                TransformAttr {
                                    ty: TransformAttrType(0x1234),
                                    value: AttrValue::Long(vec![1, 2, 3]),
                                },
                                TransformAttr {
                                    ty: TransformAttrType(0x7fff),
                                    value: AttrValue::Long(Vec::new()),
                                },
                            ],
                        },
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: ProtocolId(77),
                    spi: Vec::new(),
                    transforms: Vec::new(),
                },
            ],
        }),
        Payload::KeyExchange(KeyExchange {
            group: DhId::ECP384,
            data: vec![4; 96],
        }),
        Payload::IdInitiator(Identification::ipv4("192.0.2.1".parse().unwrap())),
        Payload::IdResponder(Identification::ipv6("2001:db8::2".parse().unwrap())),
        Payload::IdInitiator(Identification::rfc822("gw@example.com")),
        Payload::IdResponder(Identification::der_dn(&[0x30, 0x00])),
        Payload::IdResponder(Identification {
            id_type: IdType(201),
            data: Vec::new(),
        }),
        Payload::Certificate(Certificate {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0x30; 300],
        }),
        Payload::CertificateRequest(CertificateRequest {
            encoding: CertEncoding::X509_SIGNATURE,
            authority: vec![9; 40],
        }),
        Payload::Auth(Authentication {
            method: AuthMethod::DIGITAL_SIGNATURE,
            data: vec![1; 70],
        }),
        Payload::Nonce(Nonce::new(vec![0xee; 16]).unwrap()),
        Payload::Nonce(Nonce::new(vec![0xef; 256]).unwrap()),
        Payload::Notify(Notify::invalid_ke(DhId::CURVE25519)),
        Payload::Notify(Notify::signature_hash_algorithms(&[
            HashAlgorithm::SHA2_256,
            HashAlgorithm(77),
        ])),
        Payload::Notify(Notify::for_child(
            NotifyType::REKEY_SA,
            ProtocolId::ESP,
            [1, 2, 3, 4],
            Vec::new(),
        )),
        Payload::Notify(Notify::new(NotifyType(40000), vec![5; 5])),
        Payload::Delete(Delete::ike()),
        Payload::Delete(Delete::child(
            ProtocolId::ESP,
            &[[1, 2, 3, 4], [5, 6, 7, 8]],
        )),
        Payload::VendorId(b"strait".to_vec()),
        Payload::TsInitiator(TrafficSelectors {
            selectors: vec![
                TrafficSelector::Range(TsRange {
                    ip_protocol: 17,
                    start_port: 500,
                    end_port: 4500,
                    addrs: AddrRange::V4 {
                        start: "10.0.0.0".parse().unwrap(),
                        end: "10.0.255.255".parse().unwrap(),
                    },
                }),
                TrafficSelector::Range(TsRange::subnet("fd00::".parse().unwrap(), 48).unwrap()),
                TrafficSelector::Other {
                    ts_type: TsType::SECLABEL,
                    data: vec![0, 0, b'x'],
                },
            ],
        }),
        Payload::TsResponder(TrafficSelectors::default()),
        Payload::Configuration(Configuration {
            cfg_type: CfgType::CFG_REQUEST,
            attributes: vec![
                CfgAttribute {
                    ty: CfgAttrType::INTERNAL_IP4_ADDRESS,
                    value: Vec::new(),
                },
                CfgAttribute {
                    ty: CfgAttrType(0x7abc),
                    value: vec![1, 2, 3],
                },
            ],
        }),
        Payload::Eap(vec![1, 7, 0, 5, 1]),
        Payload::Unknown {
            ty: PayloadType(150),
            critical: false,
            body: vec![1, 2, 3],
        },
        Payload::Encrypted(Encrypted {
            first_payload: PayloadType::IDI,
            data: vec![0xcc; 57],
        }),
    ]
}

/// Everything, plus an SKF message and a protected IKE_AUTH.
pub fn sample_messages() -> Vec<Message> {
    vec![
        Message::parse(&charon_init_request()).unwrap(),
        Message {
            header: header(ExchangeType::INFORMATIONAL, Flags::RESPONSE, 9),
            payloads: every_payload(),
        },
        Message {
            header: header(ExchangeType::IKE_AUTH, Flags::INITIATOR, 1),
            payloads: vec![Payload::EncryptedFragment(EncryptedFragment {
                first_payload: PayloadType::IDI,
                fragment_number: 1,
                total_fragments: 2,
                data: vec![0xdd; 40],
            })],
        },
        Message {
            header: header(ExchangeType(99), Flags(0xff), u32::MAX),
            payloads: Vec::new(),
        },
    ]
}

/// Deterministic xorshift64* so the mutation loop needs no dependency and no OS randomness.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}
