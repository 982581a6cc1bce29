//! Two drivers (the agent's real event loop, sockets and `none` data plane) talk IKEv2 to each
//! other over loopback: no root, no namespaces. One initiates, the other responds; then the
//! initiator's tunnel is removed by a reload and both see the SA go.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use strait_agent::dataplane::{Dataplane, Kind, NoDataplane};
use strait_agent::driver::{Command, Driver, Settings, Stop};
use strait_agent::error::TunnelError;
use strait_agent::spec::TunnelDef;
use strait_agent::spec::peer::{self, Inputs};
use strait_agent::status::AgentStatus;
use strait_crds::contract::StatusReason;
use strait_crds::{IPsecTunnelSpec, IkeState};
use strait_ike::EndpointConfig;
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, ChildSaResumed};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

fn def(name: &str, yaml: &str, local_port: u16, remote_port: u16, psk: &[u8]) -> TunnelDef {
    let spec: IPsecTunnelSpec = serde_yaml::from_str(yaml).unwrap();
    let built = peer::build(
        &spec,
        Inputs {
            local_ip: "127.0.0.1".parse().unwrap(),
            remote_ip: "127.0.0.1".parse().unwrap(),
            fallback_ips: Vec::new(),
            ike_port: local_port,
            remote_port,
            psk: Some(SecretBytes::from_slice(psk)),
            // as the agent builds them: the driver decides by its data plane
            on_traffic_supported: true,
        },
    )
    .unwrap();
    TunnelDef {
        name: name.into(),
        spec,
        secret_digest: psk.to_vec(),
        peer: Ok(built.config),
        notes: built.notes,
    }
}

fn yaml(local: &str, remote: &str, lnet: &str, rnet: &str, initiation: &str) -> String {
    format!(
        "local: {{id: {local}, address: 127.0.0.1, subnets: [{lnet}]}}
remote: {{id: {remote}, address: 127.0.0.1, subnets: [{rnet}]}}
auth: {{psk: {{secretRef: {{name: p, key: psk}}}}}}
initiation: {initiation}
"
    )
}

struct Handle {
    cmd: mpsc::Sender<Command>,
    status: mpsc::Sender<oneshot::Sender<AgentStatus>>,
}

impl Handle {
    async fn status(&self) -> AgentStatus {
        let (tx, rx) = oneshot::channel();
        self.status.send(tx).await.unwrap();
        rx.await.unwrap()
    }

    async fn wait(&self, what: &str, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        for _ in 0..200 {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: {:#?}", self.status().await);
    }
}

fn driver(ike_port: u16, defs: Vec<TunnelDef>) -> (Handle, impl std::future::Future<Output = ()>) {
    driver_with(ike_port, defs, NoDataplane::default())
}

fn driver_with<D: Dataplane + 'static>(
    ike_port: u16,
    defs: Vec<TunnelDef>,
    dp: D,
) -> (Handle, impl std::future::Future<Output = ()>) {
    driver_full(ike_port, defs, dp, None)
}

fn driver_full<D: Dataplane + 'static>(
    ike_port: u16,
    defs: Vec<TunnelDef>,
    dp: D,
    state_dir: Option<std::path::PathBuf>,
) -> (Handle, impl std::future::Future<Output = ()>) {
    let settings = Settings {
        node: format!("node-{ike_port}"),
        endpoint: EndpointConfig {
            ike_port,
            natt_port: ike_port + 1,
            ..EndpointConfig::default()
        },
        state_dir,
    };
    let (cmd, cmd_rx) = mpsc::channel(4);
    let (status, status_rx) = mpsc::channel(4);
    let fut = Driver::new(settings, dp).run(defs, cmd_rx, status_rx);
    (Handle { cmd, status }, fut)
}

/// Tunnel `ab` as A sees it: it initiates, from port `pa` to B at `pb`.
fn a_side(pa: u16, pb: u16, psk: &[u8]) -> TunnelDef {
    let spec = yaml(
        "a.example",
        "b.example",
        "10.1.0.0/16",
        "10.2.0.0/16",
        "start",
    );
    def("ab", &spec, pa, pb, psk)
}

/// The same tunnel as B sees it, with `initiation`.
fn b_side(pb: u16, pa: u16, initiation: &str, psk: &[u8]) -> TunnelDef {
    let spec = yaml(
        "b.example",
        "a.example",
        "10.2.0.0/16",
        "10.1.0.0/16",
        initiation,
    );
    def("ab", &spec, pb, pa, psk)
}

/// Stops each driver (DELETE sent, data plane cleaned).
async fn shutdown(handles: [&Handle; 2]) {
    for h in handles {
        let (tx, rx) = oneshot::channel();
        h.cmd
            .send(Command::Shutdown(Stop::Restart, tx))
            .await
            .unwrap();
        rx.await.unwrap();
    }
}

/// Runs both drivers beside `test` (which ends with [`shutdown`]), within 30 s.
async fn run_pair(
    a_run: impl std::future::Future<Output = ()>,
    b_run: impl std::future::Future<Output = ()>,
    test: impl std::future::Future<Output = ()>,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(a_run, b_run, test);
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn two_drivers_establish_and_tear_down_over_loopback() {
    // ports unlikely to be in use; both drivers in this one task (the endpoint is not Sync)
    let (pa, pb) = (25_500u16, 25_600u16);
    let a_def = || a_side(pa, pb, b"loopback-psk");
    let b_def = b_side(pb, pa, "respond", b"loopback-psk");
    let (a, a_run) = driver(pa, vec![a_def()]);
    let (b, b_run) = driver(pb, vec![b_def]);
    let test = async {
        let up = |s: &AgentStatus| s.tunnels.first().is_some_and(|t| t.ready);
        let sa = a.wait("a up", up).await;
        let sb = b.wait("b up", up).await;
        let (ta, tb) = (&sa.tunnels[0], &sb.tunnels[0]);
        assert_eq!(ta.initiator, Some(true));
        assert_eq!(tb.initiator, Some(false));
        assert_eq!(ta.gateway.ike_spis, tb.gateway.ike_spis);
        assert_eq!(ta.gateway.ike_proposal, tb.gateway.ike_proposal);
        assert_eq!(ta.gateway.nat_detected, Some(false));
        let (ca, cb) = (&ta.gateway.child_sas[0], &tb.gateway.child_sas[0]);
        assert_eq!(ca.spi_in, cb.spi_out);
        assert_eq!(ca.spi_out, cb.spi_in);
        assert_eq!(ca.local_ts, vec!["10.1.0.0/16"]);
        assert_eq!(cb.local_ts, vec!["10.2.0.0/16"]);

        // reload with the same definition: nothing changes
        a.cmd.send(Command::Reload(vec![a_def()])).await.unwrap();
        let again = a.status().await;
        assert_eq!(again.tunnels[0].gateway.ike_spis, ta.gateway.ike_spis);

        // reload without it: a deletes, b hears the DELETE
        a.cmd.send(Command::Reload(vec![])).await.unwrap();
        a.wait("a removed", |s| s.tunnels.is_empty()).await;
        let sb = b
            .wait("b down", |s| {
                s.tunnels[0].gateway.ike_state == Some(IkeState::Down)
            })
            .await;
        let err = sb.tunnels[0].gateway.last_error.as_ref().unwrap();
        assert_eq!(err.reason, "DeletedByPeer");
        assert!(sb.tunnels[0].gateway.child_sas.is_empty());

        shutdown([&a, &b]).await;
    };
    run_pair(a_run, b_run, test).await;
}

#[tokio::test]
async fn wrong_psk_reports_authentication_failed_and_retries() {
    let (pa, pb) = (25_700u16, 25_800u16);
    let a_def = a_side(pa, pb, b"one-key");
    let b_def = b_side(pb, pa, "respond", b"another-key");
    let (a, a_run) = driver(pa, vec![a_def]);
    let (b, b_run) = driver(pb, vec![b_def]);
    let test = async {
        let s = a
            .wait("a fails", |s| {
                s.tunnels[0]
                    .gateway
                    .last_error
                    .as_ref()
                    .is_some_and(|e| e.reason == "AuthenticationFailed")
            })
            .await;
        // a start tunnel keeps trying
        assert_eq!(s.tunnels[0].gateway.ike_state, Some(IkeState::Connecting));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("one-key") && !json.contains("another-key"));
        // ...and does try again: after the retry delay a later attempt fails the same way.
        let first = s.tunnels[0].gateway.last_error.clone().unwrap();
        a.wait("a retries and fails again", |s| {
            s.tunnels[0]
                .gateway
                .last_error
                .as_ref()
                .is_some_and(|e| e.reason == "AuthenticationFailed" && e.time > first.time)
        })
        .await;
        shutdown([&a, &b]).await;
    };
    run_pair(a_run, b_run, test).await;
}

#[tokio::test]
async fn on_traffic_without_kernel_traps_responds_and_says_so() {
    let (pa, pb) = (25_900u16, 26_000u16);
    let a_def = a_side(pa, pb, b"same-key");
    let b_def = b_side(pb, pa, "onTraffic", b"same-key");
    let (a, a_run) = driver(pa, vec![a_def]);
    let (b, b_run) = driver(pb, vec![b_def]);
    let test = async {
        let s = b.wait("b responds", |s| s.tunnels[0].ready).await;
        let t = &s.tunnels[0];
        assert_eq!(t.initiation, "onTraffic");
        assert_eq!(t.initiator, Some(false));
        assert!(
            t.notes
                .iter()
                .any(|n| n.contains("onTraffic") && n.contains("only responds")),
            "{:?}",
            t.notes
        );
        shutdown([&a, &b]).await;
    };
    run_pair(a_run, b_run, test).await;
}

/// A data plane whose kernel refuses every CHILD SA (as a kernel without the transform would).
struct Refusing;

impl Dataplane for Refusing {
    fn kind(&self) -> Kind {
        Kind::Kernel
    }

    fn prepare_socket(&self, _sock: &UdpSocket, _natt: bool) -> Result<(), TunnelError> {
        Ok(())
    }

    async fn preflight(&mut self, _esp: &[EspProposal]) -> Result<(), TunnelError> {
        Ok(())
    }

    async fn install(&mut self, _tunnel: u32, _sa: &ChildSaInstall) -> Result<(), TunnelError> {
        Err(TunnelError::new(
            StatusReason::KernelUnsupported,
            "the kernel refused the SA (test)",
        ))
    }

    async fn resume(&mut self, _tunnel: u32, _sa: &ChildSaResumed) -> Result<(), TunnelError> {
        Err(TunnelError::new(
            StatusReason::DataplaneError,
            "nothing to resume (test)",
        ))
    }

    async fn delete(&mut self, _child: ChildSaId) -> Result<(), TunnelError> {
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), TunnelError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_child_sa_our_kernel_refused_is_deleted_at_the_peer_and_created_again() {
    let (pa, pb) = (25_540u16, 25_640u16);
    let (a, a_run) = driver(pa, vec![a_side(pa, pb, b"refuse-psk")]);
    let b_def = b_side(pb, pa, "respond", b"refuse-psk");
    let (b, b_run) = driver_with(pb, vec![b_def], Refusing);
    let test = async {
        // B answered IKE_AUTH, failed to install, and sent a Delete: A keeps the IKE SA
        // without the CHILD SA instead of sending into an SA B does not have
        let sa = a
            .wait("a without the CHILD SA", |s| {
                s.tunnels.first().is_some_and(|t| {
                    t.gateway.ike_state == Some(IkeState::Established)
                        && t.gateway.child_sas.is_empty()
                })
            })
            .await;
        assert!(!sa.tunnels[0].ready);
        // A `start` tunnel does not stay CHILD-less (review R-1): on the same IKE SA it creates
        // a new CHILD SA after its backoff (2 s), which B refuses and deletes again.
        let spis = sa.tunnels[0].gateway.ike_spis.clone();
        let same_ike = |t: &strait_agent::status::TunnelStatus| {
            t.gateway.ike_state == Some(IkeState::Established) && t.gateway.ike_spis == spis
        };
        a.wait("a creates a new CHILD SA", |s| {
            s.tunnels
                .first()
                .is_some_and(|t| same_ike(t) && !t.gateway.child_sas.is_empty())
        })
        .await;
        a.wait("b deletes it again", |s| {
            s.tunnels
                .first()
                .is_some_and(|t| same_ike(t) && t.gateway.child_sas.is_empty())
        })
        .await;
        let sb = b
            .wait("b reports the refusal", |s| {
                s.tunnels.first().is_some_and(|t| {
                    t.gateway
                        .last_error
                        .as_ref()
                        .is_some_and(|e| e.reason == "KernelUnsupported")
                })
            })
            .await;
        assert!(sb.tunnels[0].gateway.child_sas.is_empty());
        shutdown([&a, &b]).await;
    };
    run_pair(a_run, b_run, test).await;
}

#[tokio::test]
async fn a_restarted_agent_resumes_its_ike_sa_and_the_peer_never_notices() {
    let (pa, pb) = (26_100u16, 26_200u16);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let a_def = || a_side(pa, pb, b"resume-psk");
    let (b, b_run) = driver(pb, vec![b_side(pb, pa, "respond", b"resume-psk")]);
    let up = |s: &AgentStatus| s.tunnels.first().is_some_and(|t| t.ready);
    let phases = async {
        // the first agent process: up, then SIGTERM's shutdown, which keeps the SAs
        let (a, a_run) = driver_full(
            pa,
            vec![a_def()],
            NoDataplane::default(),
            Some(state.clone()),
        );
        let first = async {
            let sa = a.wait("a up", up).await;
            b.wait("b up", up).await;
            let (tx, rx) = oneshot::channel();
            a.cmd
                .send(Command::Shutdown(Stop::Restart, tx))
                .await
                .unwrap();
            rx.await.unwrap();
            sa.tunnels[0].clone()
        };
        let (_, before) = tokio::join!(a_run, first);
        let file = state.join("ab.ike");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // the peer heard no DELETE
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b_before = b.status().await.tunnels[0].clone();
        assert!(b_before.ready, "the peer lost the tunnel: {b_before:#?}");

        // the second process resumes: same IKE SA, same CHILD SA, no new handshake at the peer.
        // It starts with no tunnel and is given it a moment later, as cluster mode does once
        // the operator's choice is read.
        let (a2, a2_run) = driver_full(pa, vec![], NoDataplane::default(), Some(state.clone()));
        let second = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            a2.cmd.send(Command::Reload(vec![a_def()])).await.unwrap();
            let sa = a2.wait("a resumed", up).await;
            let t = &sa.tunnels[0];
            assert_eq!(t.gateway.ike_spis, before.gateway.ike_spis);
            let spis = |t: &strait_agent::status::TunnelStatus| {
                t.gateway
                    .child_sas
                    .iter()
                    .map(|c| (c.spi_in.clone(), c.spi_out.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(spis(t), spis(&before));
            // the status shows when the SAs were established, not when the agent restarted
            // (saved to the millisecond; the API's Time has seconds)
            let ms = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
                t.as_ref().map(|t| t.0.as_millisecond())
            };
            assert!(before.gateway.established_at.is_some());
            assert_eq!(
                ms(&t.gateway.established_at),
                ms(&before.gateway.established_at)
            );
            let when = |t: &strait_agent::status::TunnelStatus| {
                t.gateway
                    .child_sas
                    .iter()
                    .map(|c| ms(&c.established_at))
                    .collect::<Vec<_>>()
            };
            assert!(when(&before).iter().all(Option::is_some), "{before:#?}");
            assert_eq!(when(t), when(&before));
            let sb = b.status().await;
            assert_eq!(sb.tunnels[0].gateway.ike_spis, before.gateway.ike_spis);
            // established once, before the restart
            assert_eq!(
                sb.tunnels[0].gateway.established_at,
                b_before.gateway.established_at
            );

            // the resumed SA's keys work: the removal's DELETE is accepted by the peer
            a2.cmd.send(Command::Reload(vec![])).await.unwrap();
            let sb = b
                .wait("b down", |s| {
                    s.tunnels[0].gateway.ike_state == Some(IkeState::Down)
                })
                .await;
            assert_eq!(
                sb.tunnels[0].gateway.last_error.as_ref().unwrap().reason,
                "DeletedByPeer"
            );
            assert!(!file.exists(), "the removed tunnel's state was kept");
            shutdown([&a2, &b]).await;
        };
        tokio::join!(a2_run, second);
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(b_run, phases);
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_rotated_psk_reauthenticates_without_the_tunnel_going_down() {
    let (pa, pb) = (26_300u16, 26_400u16);
    let (a, a_run) = driver(pa, vec![a_side(pa, pb, b"rotate-old")]);
    let (b, b_run) = driver(pb, vec![b_side(pb, pa, "respond", b"rotate-old")]);
    let test = async {
        let up = |s: &AgentStatus| s.tunnels.first().is_some_and(|t| t.ready);
        let before = a.wait("a up", up).await.tunnels[0].clone();
        b.wait("b up", up).await;
        // the responder takes the new PSK in place: no handshake, nothing torn down
        b.cmd
            .send(Command::Reload(vec![b_side(
                pb,
                pa,
                "respond",
                b"rotate-new",
            )]))
            .await
            .unwrap();
        let sb = b.status().await;
        assert!(sb.tunnels[0].ready);
        assert_eq!(sb.tunnels[0].gateway.ike_spis, before.gateway.ike_spis);
        // the initiator reauthenticates: a new IKE SA (with the new PSK, which is all B
        // accepts now), and the old one goes only after the new CHILD SA is in
        a.cmd
            .send(Command::Reload(vec![a_side(pa, pb, b"rotate-new")]))
            .await
            .unwrap();
        let mut ready_throughout = true;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let s = a.status().await;
            let t = &s.tunnels[0];
            ready_throughout &= t.ready;
            if t.gateway.ike_spis != before.gateway.ike_spis && t.ready {
                break t.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reauthentication: {t:#?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            ready_throughout,
            "the tunnel was not Ready during the rotation"
        );
        assert_ne!(
            after.gateway.child_sas[0].spi_in,
            before.gateway.child_sas[0].spi_in
        );
        // B ends with the same single IKE SA, never down on the way
        let sb = b
            .wait("b on the new IKE SA", |s| {
                s.tunnels[0].gateway.ike_spis == after.gateway.ike_spis
                    && s.tunnels[0].gateway.child_sas.len() == 1
            })
            .await;
        assert!(sb.tunnels[0].ready);
        assert!(sb.tunnels[0].gateway.last_error.is_none(), "{sb:#?}");
        let sa = a
            .wait("a with one CHILD SA", |s| {
                s.tunnels[0].gateway.child_sas.len() == 1
            })
            .await;
        assert!(sa.tunnels[0].gateway.last_error.is_none(), "{sa:#?}");
        shutdown([&a, &b]).await;
    };
    run_pair(a_run, b_run, test).await;
}
