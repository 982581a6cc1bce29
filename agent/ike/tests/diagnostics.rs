//! Exchange-level diagnostics: a failed negotiation is explained by the events of either side
//! alone (what was received, what was configured), and the success-path detail and dropped
//! datagrams appear only when asked for.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::{Duration, Instant};

use strait_ike::diagnostic::{Diagnostic, SaKind};
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{EndpointConfig, Event, Identity};
use util::{Pair, addr, config_a, mirror, net};

fn diagnostics(ev: &[(Instant, Event)]) -> Vec<Diagnostic> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::Diagnostic(d) => Some((**d).clone()),
            _ => None,
        })
        .collect()
}

fn run(p: &mut Pair) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    p.initiate();
    p.run_for(Duration::from_secs(2));
    (diagnostics(&p.ev_a), diagnostics(&p.ev_b))
}

#[test]
fn ike_proposal_mismatch_names_both_lists_on_both_sides() {
    let a = config_a();
    let mut b = mirror(&a);
    b.ike_proposals = parse_ike_list(&["aes128-sha256-modp2048"]).unwrap();
    let (da, db) = run(&mut Pair::new(a, b));
    assert!(
        db.contains(&Diagnostic::NoProposalMatch {
            peer: db[0].peer().unwrap(),
            remote: addr(util::A_IP, 500),
            kind: SaKind::Ike,
            received: vec!["aes256gcm16-prfsha384-x25519".into()],
            configured: vec!["aes128-sha256-prfsha256-modp2048".into()],
        }),
        "{db:?}"
    );
    assert_eq!(
        db[0].to_string(),
        "no IKE proposal matches: received from 192.0.2.1:500: aes256gcm16-prfsha384-x25519; \
         configured: aes128-sha256-prfsha256-modp2048"
    );
    assert!(
        matches!(&da[..], [Diagnostic::ProposalsRefused { kind: SaKind::Ike, offered, .. }]
            if offered == &["aes256gcm16-prfsha384-x25519"]),
        "{da:?}"
    );
    assert!(da[0].is_failure());
}

#[test]
fn esp_proposal_mismatch_is_explained_and_the_ike_sa_stays() {
    let a = config_a();
    let mut b = mirror(&a);
    b.esp_proposals = parse_esp_list(&["aes128-sha256"]).unwrap();
    let mut p = Pair::new(a, b);
    let (da, db) = run(&mut p);
    assert!(
        db.iter().any(|d| matches!(d, Diagnostic::NoProposalMatch {
            kind: SaKind::Child, received, configured, ..
        } if received == &["aes256gcm16-x25519-noesn"] && configured == &["aes128-sha256"])),
        "{db:?}"
    );
    assert!(
        da.iter().any(|d| matches!(
            d,
            Diagnostic::ProposalsRefused {
                kind: SaKind::Child,
                ..
            }
        )),
        "{da:?}"
    );
    assert_eq!(util::Pair::ups(&p.ev_a), 1);
}

#[test]
fn an_unexpected_identity_names_what_came_and_what_was_expected() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_id = Identity::Fqdn("x.example.com".into());
    let (_, db) = run(&mut Pair::new(a, b));
    assert!(
        db.iter().any(|d| d.to_string()
            == "192.0.2.1:500 identifies as a.example.com; expected x.example.com"),
        "{db:?}"
    );
}

#[test]
fn selectors_that_do_not_meet_show_both_sides() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_ts = vec![net("10.9.0.0/16")];
    let (_, db) = run(&mut Pair::new(a, b));
    let ts = db
        .iter()
        .find(|d| matches!(d, Diagnostic::TsMismatch { .. }))
        .unwrap_or_else(|| panic!("{db:?}"));
    assert_eq!(
        ts.to_string(),
        "traffic selectors do not meet: the peer proposed its side 10.1.0.0/16 and ours \
         10.2.0.0/16; we have its side 10.9.0.0/16 and ours 10.2.0.0/16"
    );
}

#[test]
fn success_detail_and_drops_only_when_asked_for() {
    let a = config_a();
    // default: a clean handshake and a stray datagram say nothing
    let mut p = Pair::new(a.clone(), mirror(&a));
    let (da, db) = run(&mut p);
    p.b.handle(p.now, addr(util::B_IP, 500), addr(util::A_IP, 500), b"junk");
    assert!(da.is_empty() && db.is_empty(), "{da:?} {db:?}");
    assert!(p.b.poll_event().is_none());
    // asked for: the tunnel chosen, the narrowed selectors, and why the junk was dropped
    let on = EndpointConfig {
        diagnostics: true,
        ..EndpointConfig::default()
    };
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), EndpointConfig::default(), on);
    let (_, db) = run(&mut p);
    let text: Vec<String> = db.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t
            == "tunnel chosen for 192.0.2.1:500 identifying as a.example.com (1 tunnel(s) fit its address)"),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t == "CHILD SA selectors: ours 10.2.0.0/16 === theirs 10.1.0.0/16"),
        "{text:?}"
    );
    assert!(db.iter().all(|d| !d.is_failure()));
    p.b.handle(p.now, addr(util::B_IP, 500), addr(util::A_IP, 500), b"junk");
    let dropped = diagnostics(&[(p.now, p.b.poll_event().unwrap())]);
    assert_eq!(
        dropped[0].to_string(),
        "dropped a datagram from 192.0.2.1:500: not an IKE header"
    );
}
