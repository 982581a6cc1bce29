//! A whole in-memory handshake (IKE_SA_INIT + IKE_AUTH with PSK, one CHILD SA) between two
//! `Endpoint`s, for the X25519 and MODP-2048 proposals. Endpoint setup is not timed.
//!
//! `cargo bench -p strait-ike --bench handshake`.
#![allow(clippy::expect_used)]

#[path = "support/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sim::{IKE_MODP2048, IKE_X25519, Pair};

fn handshake(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("handshake");
    for (name, ike) in [("x25519", IKE_X25519), ("modp2048", IKE_MODP2048)] {
        // Fail loudly before measuring if the handshake does not complete.
        let sent = Pair::new(ike)
            .and_then(|mut p| p.handshake(now))
            .expect("handshake");
        assert_eq!(sent, 4, "{name}: INIT and AUTH request/response");
        g.bench_function(name, |b| {
            b.iter_batched(
                || Pair::new(ike).expect("endpoints"),
                |mut p| {
                    let sent = p.handshake(now).expect("handshake");
                    // Returned so the endpoints are dropped outside the timed part.
                    (p, sent)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Few samples: a MODP-2048 handshake takes milliseconds and the machine is small and shared.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = handshake
}
criterion_main!(benches);
