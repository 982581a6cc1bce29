//! Micro-benchmarks of the IKE_AUTH message path: codec (parse, serialize) and SK payload
//! protection (seal, open) with AES-256-GCM-16 and AES-256-CBC + HMAC-SHA-256-128.
//!
//! `cargo bench -p strait-ike --bench codec`; `cargo test -p strait-ike --benches` runs each
//! benchmark once as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strait_ike::codec::*;
use strait_ike::crypto::alg::{Encr, Integ};
use strait_ike::crypto::rng::Rng;
use strait_ike::crypto::sk::SkCipher;

/// The initiator's IKE_AUTH request content as Strait sends it with PSK auth (IDi,
/// INITIAL_CONTACT, IDr, AUTH, SA, TSi, TSr), plus the notifies strongSwan adds, so the
/// message has the size and payload mix of a real one (~250 octets inner).
fn ike_auth_payloads() -> Vec<Payload> {
    let ts = |net: &str, prefix| TrafficSelectors {
        selectors: vec![TrafficSelector::Range(
            TsRange::subnet(net.parse().unwrap(), prefix).unwrap(),
        )],
    };
    let esp = |number, spi: [u8; 4], transforms| Proposal {
        number,
        protocol: ProtocolId::ESP,
        spi: spi.to_vec(),
        transforms,
    };
    vec![
        Payload::IdInitiator(Identification::fqdn("gw1.site-a.example.com")),
        Payload::Notify(Notify::empty(NotifyType::INITIAL_CONTACT)),
        Payload::IdResponder(Identification::fqdn("gw1.site-b.example.com")),
        Payload::Auth(Authentication {
            method: AuthMethod::SHARED_KEY_MIC,
            // prf-hmac-sha384 output.
            data: vec![0x5c; 48],
        }),
        Payload::Sa(Sa {
            proposals: vec![
                esp(
                    1,
                    [0xc1, 0x2a, 0x00, 0x07],
                    vec![
                        Transform::encr(EncrId::AES_GCM_16, Some(256)),
                        Transform::esn(EsnId::NO_ESN),
                    ],
                ),
                esp(
                    2,
                    [0xc1, 0x2a, 0x00, 0x07],
                    vec![
                        Transform::encr(EncrId::AES_CBC, Some(256)),
                        Transform::integ(IntegId::HMAC_SHA2_256_128),
                        Transform::esn(EsnId::NO_ESN),
                    ],
                ),
            ],
        }),
        Payload::TsInitiator(ts("10.1.0.0", 16)),
        Payload::TsResponder(ts("10.2.0.0", 16)),
        Payload::Notify(Notify::empty(NotifyType::MOBIKE_SUPPORTED)),
        Payload::Notify(Notify::empty(NotifyType::NO_ADDITIONAL_ADDRESSES)),
    ]
}

fn header() -> Header {
    Header {
        initiator_spi: Spi([0x5a, 0x1c, 0x33, 0x90, 0x0b, 0xe4, 0x71, 0x2f]),
        responder_spi: Spi([0xc7, 0x02, 0x9e, 0x44, 0x18, 0xfa, 0x6d, 0x01]),
        exchange_type: ExchangeType::IKE_AUTH,
        flags: Flags::INITIATOR,
        message_id: 1,
    }
}

/// IVs for the benchmark: a counter, so that drawing them costs next to nothing and the
/// figures are the SK layer's own (the agent's driver passes the OS RNG).
struct CounterRng(u64);

impl Rng for CounterRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0 = self.0.wrapping_add(1);
        for (d, s) in buf.iter_mut().zip(self.0.to_be_bytes().iter().cycle()) {
            *d = *s;
        }
    }
}

/// What the SA layer does to send (crate-private `sa::protect::seal_part`, through the
/// public codec and [`SkCipher`] API): encode the inner chain, pad, lay out the SK message,
/// encrypt in place.
fn seal(header: &Header, payloads: &[Payload], cipher: &SkCipher, rng: &mut dyn Rng) -> Vec<u8> {
    let (first, mut plain) = encode_inner(payloads).unwrap();
    pad(&mut plain, cipher.block_len());
    let sizes = SkSizes {
        iv: cipher.iv_len(),
        ciphertext: plain.len(),
        icv: cipher.icv_len(),
    };
    let (mut msg, layout) = encode_protected(header, first, None, sizes).unwrap();
    msg[layout.ciphertext].copy_from_slice(&plain);
    cipher
        .seal_in_place(&mut msg, layout.iv.start, rng)
        .unwrap();
    msg
}

/// What the SA layer does on receipt (`sa::protect::open`): locate the SK payload, verify
/// and decrypt in place, strip the padding, parse the inner chain.
fn open(datagram: &[u8], cipher: &SkCipher) -> Vec<Payload> {
    let layout = SkLayout::locate(datagram, cipher.iv_len(), cipher.icv_len()).unwrap();
    let mut buf = datagram.to_vec();
    let range = cipher.open_in_place(&mut buf, layout.iv.start).unwrap();
    parse_inner(layout.first_payload, strip_padding(&buf[range]).unwrap()).unwrap()
}

fn codec(c: &mut Criterion) {
    let msg = Message {
        header: header(),
        payloads: ike_auth_payloads(),
    };
    let bytes = msg.encode().unwrap();
    assert_eq!(Message::parse(&bytes).unwrap(), msg);

    let mut g = c.benchmark_group("ike_auth");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("serialize", |b| b.iter(|| black_box(&msg).encode()));
    g.bench_function("parse", |b| b.iter(|| Message::parse(black_box(&bytes))));
    g.finish();
}

fn sk(c: &mut Criterion) {
    let payloads = ike_auth_payloads();
    let hdr = header();
    // Key material of the right sizes; its values do not change the cost.
    let ciphers = [
        (
            "aes256gcm16",
            SkCipher::new(Encr::AesGcm16_256, None, &[0x11; 36], &[]).unwrap(),
        ),
        (
            "aes256-sha256",
            SkCipher::new(
                Encr::AesCbc256,
                Some(Integ::HmacSha256_128),
                &[0x11; 32],
                &[0x22; 32],
            )
            .unwrap(),
        ),
    ];
    let mut rng = CounterRng(0);
    for (name, cipher) in &ciphers {
        let sealed = seal(&hdr, &payloads, cipher, &mut rng);
        // The benchmark is only worth something if the round trip is right.
        assert_eq!(open(&sealed, cipher), payloads);

        let mut g = c.benchmark_group("ike_auth_sk");
        g.throughput(Throughput::Bytes(sealed.len() as u64));
        g.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| seal(&hdr, black_box(&payloads), cipher, &mut rng))
        });
        g.bench_function(format!("open/{name}"), |b| {
            b.iter(|| open(black_box(&sealed), cipher))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: these are sub-10 µs operations and the machine is small and shared.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec, sk
}
criterion_main!(benches);
