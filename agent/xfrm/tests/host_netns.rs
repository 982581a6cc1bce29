//! Tests against the machine's own kernel (XFRM and policies work; no ESP), each in a network
//! namespace of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use common::{in_netns, sh};
use futures::StreamExt;
use strait_xfrm::{
    Direction, Error, Event, Family, GatewaySysctls, Integrity, KeepSet, Key, Mode, Policy, Reqid,
    Sa, SaCrypto, Selector, Template, Transform, Unsupported, Xfrm, socket,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sel(src: &str, dst: &str) -> Selector {
    Selector::between(src.parse().unwrap(), dst.parse().unwrap())
}

fn tunnel_out(n: u32, src: &str, dst: &str) -> Policy {
    Policy::protect(
        sel(src, dst),
        Direction::Out,
        1000,
        Template::esp(
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            Mode::Tunnel,
            Reqid::ours(n).unwrap(),
        ),
    )
}

#[test]
fn policies_for_real_and_foreign_ones_survive() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        let out = tunnel_out(1, "10.1.0.0/16", "10.2.0.0/16");
        let mut inb = out.clone();
        inb.selector = out.selector.reversed();
        inb.dir = Direction::In;
        inb.templates[0] = Template::esp(
            ip("192.0.2.2"),
            ip("192.0.2.1"),
            Mode::Tunnel,
            Reqid::ours(1).unwrap(),
        );
        let mut fwd = inb.clone();
        fwd.dir = Direction::Fwd;
        let block = Policy::block(
            sel("10.1.0.0/16", "10.3.0.0/16"),
            Direction::Out,
            2000,
            Reqid::ours(2).unwrap(),
        );
        for p in [&out, &inb, &fwd, &block] {
            x.add_policy(p).await.unwrap();
        }
        assert!(matches!(
            x.add_policy(&out).await,
            Err(Error::AlreadyExists { .. })
        ));

        // A foreign policy, installed the way another daemon would.
        sh(
            "ip xfrm policy add src 10.9.0.0/24 dst 10.8.0.0/24 dir out \
            tmpl src 192.0.2.7 dst 192.0.2.8 proto esp reqid 7 mode tunnel",
        );
        let all = x.list_policies().await.unwrap();
        assert_eq!(all.len(), 5, "{all:#?}");
        let foreign: Vec<_> = all.iter().filter(|p| !p.is_ours()).collect();
        assert_eq!(foreign.len(), 1);
        assert_eq!(foreign[0].reqid(), Reqid::from_raw(7));
        let ours = x.list_our_policies().await.unwrap();
        assert_eq!(ours.len(), 4);
        let got = x.get_policy(&out.id()).await.unwrap().unwrap();
        assert_eq!(got.to_policy(), out);

        // Update ours; refuse to touch theirs.
        let mut out2 = out.clone();
        out2.priority = 500;
        x.update_policy(&out2).await.unwrap();
        assert_eq!(
            x.get_policy(&out.id()).await.unwrap().unwrap().priority,
            500
        );
        let theirs = foreign[0].to_policy();
        let mut hijack = theirs.clone();
        hijack.templates[0].reqid = Reqid::ours(9).unwrap();
        assert!(matches!(
            x.update_policy(&hijack).await,
            Err(Error::NotOurs { reqid: 7, .. })
        ));
        assert!(matches!(
            x.delete_policy(&theirs.id()).await,
            Err(Error::NotOurs { .. })
        ));

        // Delete one of ours, sweep the rest except a keep-set.
        x.delete_policy(&fwd.id()).await.unwrap();
        assert!(matches!(
            x.delete_policy(&fwd.id()).await,
            Err(Error::NotFound { .. })
        ));
        let mut keep = KeepSet::new();
        keep.policies.insert(out.id());
        let report = x.sweep(&keep).await.unwrap();
        assert_eq!(report.policies_deleted.len(), 2, "{report:?}");
        let left = x.list_policies().await.unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().any(|p| p.id == out.id()));
        x.flush_ours().await.unwrap();
        let left = sh("ip xfrm policy");
        assert!(
            left.contains("10.9.0.0/24") && left.contains("reqid 7"),
            "{left}"
        );
        assert_eq!(x.list_policies().await.unwrap().len(), 1);
    });
}

#[test]
fn preflight_says_this_kernel_has_no_esp() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        let e = x
            .preflight(&[Transform::AesGcm16 { key_bits: 256 }])
            .await
            .unwrap_err();
        eprintln!("preflight: {e}");
        assert!(matches!(e, Error::Unsupported(Unsupported::Esp)), "{e:?}");
        assert_eq!(e.fault(), strait_xfrm::Fault::Kernel);
        let msg = e.to_string();
        assert!(
            msg.contains("no ESP support") && msg.contains("--dataplane none"),
            "{msg}"
        );
        // The probe left nothing behind.
        assert!(x.list_sas().await.unwrap().is_empty());
    });
}

#[test]
fn sa_add_fails_with_a_typed_error_and_larval_sas_are_swept() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        let key = [0x11u8; 36];
        let gcm = SaCrypto::aes_gcm16(Key::from_slice(&key)).unwrap();
        let sa = Sa::new(
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            0x1001,
            Reqid::ours(1).unwrap(),
            Mode::Tunnel,
            gcm,
        );
        let e = x.add_sa(&sa).await.unwrap_err();
        eprintln!("add GCM SA: {e}");
        assert!(
            matches!(e, Error::Unsupported(Unsupported::Algorithm(ref n)) if n.contains("rfc4106"))
        );
        assert!(
            !format!("{e:?}").contains("17, 17"),
            "key bytes in the error"
        );
        let cbc = SaCrypto::aes_cbc(
            Key::from_slice(&[1; 16]),
            Integrity::HmacSha256,
            Key::from_slice(&[2; 32]),
        )
        .unwrap();
        let sa = Sa::new(
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            0x1001,
            Reqid::ours(1).unwrap(),
            Mode::Tunnel,
            cbc,
        );
        let e = x.add_sa(&sa).await.unwrap_err();
        eprintln!("add CBC SA: {e}");
        assert!(matches!(e, Error::Unsupported(Unsupported::Esp)), "{e:?}");

        // ALLOCSPI needs no ESP: the larval SA carries our reqid.
        let spi = x
            .alloc_spi(
                ip("192.0.2.2"),
                ip("192.0.2.1"),
                Reqid::ours(1).unwrap(),
                Mode::Tunnel,
                0xc000_0000..=0xcfff_ffff,
            )
            .await
            .unwrap();
        assert!((0xc000_0000..=0xcfff_ffff).contains(&spi));
        sh("ip xfrm state allocspi src 192.0.2.8 dst 192.0.2.9 proto esp reqid 5 mode tunnel");
        let ours = x.list_our_sas().await.unwrap();
        assert_eq!(ours.len(), 1, "{ours:#?}");
        assert_eq!(ours[0].id.spi, spi);
        assert!(ours[0].larval);
        assert!(matches!(
            x.delete_sa(
                &x.list_sas()
                    .await
                    .unwrap()
                    .iter()
                    .find(|s| !s.is_ours())
                    .unwrap()
                    .id
            )
            .await,
            Err(Error::NotOurs { reqid: 5, .. })
        ));
        let r = x.flush_ours().await.unwrap();
        assert_eq!(r.sas_deleted.len(), 1);
        let left = x.list_sas().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].reqid, Reqid::from_raw(5));
    });
}

#[test]
fn acquire_event_for_a_trap_policy() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        let mut events = x.events().unwrap();
        // Not lo: loopback routes skip XFRM (disable_xfrm is set on lo).
        sh(
            "ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up \
            && ip addr add 192.0.2.1/24 dev v0",
        );
        // A trap: traffic to 198.51.100.0/24 wants an SA that does not exist yet.
        let p = Policy::protect(
            sel("192.0.2.1/32", "198.51.100.0/24"),
            Direction::Out,
            100,
            Template::esp(
                ip("192.0.2.1"),
                ip("192.0.2.2"),
                Mode::Tunnel,
                Reqid::ours(4).unwrap(),
            ),
        );
        x.add_policy(&p).await.unwrap();
        sh("ip route add 198.51.100.0/24 dev v0");
        let s = UdpSocket::bind("192.0.2.1:0").unwrap();
        let _ = s.send_to(b"hello", "198.51.100.7:9"); // EAGAIN: the packet waits for an SA
        let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("no acquire within 5 s")
            .unwrap()
            .unwrap();
        eprintln!("event: {ev:?}");
        match ev {
            Event::Acquire {
                policy,
                template,
                flow,
                ..
            } => {
                assert_eq!(policy, p.id());
                assert_eq!(template, p.templates[0]);
                assert_eq!(flow.dst.addr(), ip("198.51.100.7"));
            }
            other => panic!("expected an acquire, got {other:?}"),
        }
        // The kernel's acquire placeholder (SPI 0) cannot be deleted by id; it expires by itself
        // (or becomes the SA): the sweep counts it as gone and carries on.
        let r = x.flush_ours().await.unwrap();
        assert_eq!(r.policies_deleted, vec![p.id()]);
    });
}

#[test]
fn socket_helpers_apply_on_real_sockets() {
    in_netns(|| async {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket::set_udp_encap(&v4).unwrap();
        socket::bypass_policies(&v4, Family::V4).unwrap();
        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        socket::bypass_policies(&v6, Family::V6).unwrap();
        socket::set_udp_encap(&v6).unwrap();
        let t = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket::set_udp_encap(&t).unwrap();
        socket::bypass_policies(&t, Family::V4).unwrap();
        // A TCP socket has no UDP_ENCAP: a clean error, not a crash.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = socket::set_udp_encap(&l).unwrap_err();
        eprintln!("UDP_ENCAP on TCP: {e}");
    });
}

#[test]
fn gateway_sysctls_apply_and_restore() {
    in_netns(|| async {
        use strait_xfrm::host::get_sysctl;
        let before = get_sysctl("net.ipv4.ip_forward").unwrap();
        assert_eq!(before, "0", "a new namespace starts without forwarding");
        let g = GatewaySysctls { ipv6: true }.apply().unwrap();
        assert_eq!(get_sysctl("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(get_sysctl("net.ipv6.conf.all.forwarding").unwrap(), "1");
        assert_eq!(get_sysctl("net.ipv4.conf.all.send_redirects").unwrap(), "0");
        assert!(!g.changed().is_empty());
        g.restore().unwrap();
        assert_eq!(get_sysctl("net.ipv4.ip_forward").unwrap(), "0");
        assert_eq!(get_sysctl("net.ipv6.conf.all.forwarding").unwrap(), "0");
        assert_eq!(get_sysctl("net.ipv4.conf.all.send_redirects").unwrap(), "1");
    });
}

#[test]
fn the_kernel_allocates_unique_spis_synchronously() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        let mut alloc = strait_xfrm::SpiAllocator::open().unwrap();
        let reqid = Reqid::ours(0).unwrap();
        let range = 0xC000_0000..=0xCFFF_FFFF;
        let mut got = Vec::new();
        for _ in 0..16 {
            let spi = alloc
                .alloc(
                    ip("192.0.2.2"),
                    ip("192.0.2.1"),
                    reqid,
                    Mode::Tunnel,
                    range.clone(),
                )
                .unwrap();
            assert!(range.contains(&spi), "{spi:#x}");
            got.push(spi);
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 16, "unique: {got:x?}");
        // larval SAs of ours hold them (nobody else gets these SPIs), and go with a sweep
        let ours = x.list_our_sas().await.unwrap();
        assert!(ours.iter().all(|s| s.larval));
        let mut held: Vec<u32> = ours.iter().map(|s| s.id.spi).collect();
        held.sort_unstable();
        assert_eq!(held, got);
        x.flush_ours().await.unwrap();
        assert!(x.list_our_sas().await.unwrap().is_empty());
    });
}

#[test]
fn policies_with_the_same_selector_coexist_per_interface_id() {
    in_netns(|| async {
        let x = Xfrm::open().unwrap();
        // two route-based tunnels to two peers with identical subnets: one policy each,
        // told apart by the XFRM interface they belong to
        let mut a = tunnel_out(1, "10.1.0.0/16", "10.2.0.0/16");
        a.if_id = Some(0x5A00_0001);
        let mut b = tunnel_out(2, "10.1.0.0/16", "10.2.0.0/16");
        b.if_id = Some(0x5A00_0002);
        x.add_policy(&a).await.unwrap();
        x.add_policy(&b).await.unwrap();
        // and one without an interface beside them
        let plain = tunnel_out(3, "10.1.0.0/16", "10.2.0.0/16");
        x.add_policy(&plain).await.unwrap();
        let listed = x.list_our_policies().await.unwrap();
        let mut ids: Vec<Option<u32>> = listed.iter().map(|p| p.id.if_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [None, Some(0x5A00_0001), Some(0x5A00_0002)]);
        assert!(sh("ip xfrm policy").contains("if_id 0x5a000002"));
        // lookups and deletes find the one of the asked interface
        let got = x.get_policy(&b.id()).await.unwrap().expect("b");
        assert_eq!(got.reqid(), Reqid::ours(2).unwrap());
        x.delete_policy(&a.id()).await.unwrap();
        let left: Vec<Option<u32>> = x
            .list_our_policies()
            .await
            .unwrap()
            .iter()
            .map(|p| p.id.if_id)
            .collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&Some(0x5A00_0001)), "{left:?}");
        x.delete_policy(&b.id()).await.unwrap();
        x.delete_policy(&plain.id()).await.unwrap();
        assert!(x.list_our_policies().await.unwrap().is_empty());
    });
}
