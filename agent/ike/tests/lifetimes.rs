//! Lifetimes as strongSwan users set them: the IKE SA's hard lifetime is enforced when no rekey
//! gets through, and CHILD SAs carry byte and packet limits to the data plane.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header};
use strait_ike::{Lifetime, Reason, Volume};
use util::{Fate, Pair, Side, config_a, mirror};

#[test]
fn an_ike_sa_whose_rekeys_never_get_through_is_deleted_at_its_hard_lifetime() {
    let mut a = config_a();
    // rekey at 100 s, hard limit at 110 s
    a.ike_lifetime = Lifetime {
        rand_time: Duration::ZERO,
        ..Lifetime::from_rekey(Duration::from_secs(100))
    };
    let mut b = mirror(&a);
    b.ike_lifetime = Lifetime::from_rekey(Duration::from_secs(10_000));
    let mut p = Pair::new(a, b);
    // every CREATE_CHILD_SA request of A's is lost
    p.filter = Box::new(|from, t, _| {
        let h = Header::peek(&t.payload).unwrap().header;
        if from == Side::A && h.exchange_type == ExchangeType::CREATE_CHILD_SA {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate();
    p.run_for(Duration::from_secs(105));
    assert!(
        Pair::downs(&p.ev_a).is_empty(),
        "gone before its hard lifetime"
    );
    p.run_for(Duration::from_secs(10));
    let downs = Pair::downs(&p.ev_a);
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert_eq!(downs[0].1, Reason::LifetimeExpired);
    let at = (downs[0].0 - p.t0).as_secs_f64();
    assert!((109.9..=110.1).contains(&at), "{at}");
    assert_eq!(Pair::child_deletes(&p.ev_a), 1);
    // a Delete goes to the peer (here behind the lost request's message ID, so B learns it
    // from its own DPD or lifetime; a peer that refused the rekeys takes it at once)
    let deletes = p
        .log
        .iter()
        .filter(|s| s.from == Side::A && (s.at - p.t0).as_secs_f64() >= 109.9)
        .filter(|s| {
            Header::peek(&s.t.payload).unwrap().header.exchange_type == ExchangeType::INFORMATIONAL
        })
        .count();
    assert!(deletes >= 1);
    assert_eq!(Reason::LifetimeExpired.as_str(), "LifetimeExpired");
}

#[test]
fn child_sas_carry_byte_and_packet_limits_with_jitter() {
    let mut a = config_a();
    a.child_lifetime.bytes = Some(Volume::from_rekey(1_000_000));
    a.child_lifetime.packets = Some(Volume {
        rekey: 5000,
        rand: 0,
        life: 6000,
    });
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let x = &Pair::installs(&p.ev_a)[0];
    let (soft, hard) = x.lifetimes.bytes.unwrap();
    assert_eq!(hard, 1_100_000);
    assert!((900_001..=1_000_000).contains(&soft), "{soft}");
    assert_eq!(x.lifetimes.packets, Some((5000, 6000)));
    // the peer's side has its own (none here): limits are local, like strongSwan's
    assert_eq!(
        Pair::installs(&p.ev_b)[0].lifetimes.bytes,
        Some((soft_b(&p), 1_100_000))
    );
}

fn soft_b(p: &Pair) -> u64 {
    Pair::installs(&p.ev_b)[0].lifetimes.bytes.unwrap().0
}

#[test]
fn volume_soft_limits_stay_between_one_and_the_hard_limit() {
    let v = Volume::from_rekey(10);
    assert_eq!((v.rekey, v.rand, v.life), (10, 1, 11));
    for r in [0, 1, 7, u64::MAX] {
        let s = v.soft(r);
        assert!((1..11).contains(&s), "{s}");
    }
    let tiny = Volume::from_rekey(1);
    assert_eq!((tiny.life, tiny.soft(5)), (2, 1));
    let odd = Volume {
        rekey: 100,
        rand: 500,
        life: 50,
    };
    assert!(odd.soft(3) >= 1);
}
