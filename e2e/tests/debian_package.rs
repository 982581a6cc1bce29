//! The strait-agent Debian package (`packaging/deb/build.sh`), as a remote site's admin uses it:
//! built from the agent binary, installed with `dpkg -i` into a clean Debian 12 root
//! (`e2e/setup/debroot.sh`: mmdebstrap with systemd and nftables, so its Depends must resolve),
//! its unit accepted by `systemd-analyze verify` and rated by `systemd-analyze security` against
//! that root, the example configuration accepted by the installed `strait-agent check`, and the
//! installed binary bringing up a standalone tunnel with charon.
//!
//! Needs root, `e2e/setup/packages.sh` and `e2e/setup/debroot.sh`. Run:
//! `cargo test -p strait-e2e --test debian_package -- --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::netns::{self, SitePair};
use strait_e2e::scenario::{TUNNEL, assert_agree, charon_for, dump, up};
use strait_e2e::strongswan::Charon;
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-debian-package-psk-51c8a2";
/// The exposure `systemd-analyze security` may give the unit at most, in its `--threshold` unit
/// of tenths (0 best, 100 worst; a root service without sandboxing rates 96). Measured: 28.
const MAX_EXPOSURE: &str = "40";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_package_installs_into_debian_verifies_and_runs_a_tunnel() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cache = std::env::var_os("STRAIT_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/strait"), PathBuf::from);
    let tarball = cache.join("debroot/bookworm.tar");
    assert!(
        tarball.is_file(),
        "{} is missing: run e2e/setup/debroot.sh",
        tarball.display()
    );
    let work = tempfile::tempdir().unwrap();

    // ---- build ----
    let bin = strait_e2e::product::binary("strait-agent").unwrap();
    let out = run(Command::new("bash")
        .arg(workspace().join("packaging/deb/build.sh"))
        .arg(&bin)
        .arg(work.path().join("out")));
    let deb = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(deb.is_file(), "{}", deb.display());
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    eprintln!("{info}");
    assert!(
        info.contains("Package: strait-agent") && info.contains("Depends: libc6"),
        "{info}"
    );

    // ---- install into a clean Debian root ----
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root));
    std::fs::copy(&deb, root.join("tmp/strait-agent.deb")).unwrap();
    let installed =
        run(Command::new("chroot")
            .arg(&root)
            .args(["dpkg", "-i", "/tmp/strait-agent.deb"]));
    eprintln!("{}", text(&installed));
    let status = text(&run(Command::new("chroot").arg(&root).args([
        "dpkg-query",
        "-W",
        "-f=${Status} ${Version}",
        "strait-agent",
    ])));
    assert!(status.starts_with("install ok installed "), "{status}");
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/bin/strait-agent"), 0o755);
    assert_eq!(
        mode("etc/strait/secrets"),
        0o700,
        "the secrets directory is root only"
    );
    assert_eq!(mode("etc/strait/tunnels.yaml.example"), 0o600);

    // ---- the unit ----
    let unit = "/lib/systemd/system/strait-agent.service";
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--root"])
        .arg(&root)
        .arg(unit)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let security = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            "--threshold",
            MAX_EXPOSURE,
            "--root",
        ])
        .arg(&root)
        .arg("strait-agent.service")
        .output()
        .unwrap();
    let report = text(&security);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    eprintln!("systemd-analyze security: {overall}");
    assert!(
        security.status.success(),
        "exposure above {MAX_EXPOSURE}:\n{report}"
    );

    // ---- the installed binary: check the example, then a tunnel with charon ----
    let agent_bin = root.join("usr/bin/strait-agent");
    let help = text(&run(Command::new(&agent_bin).arg("--help")));
    for cmd in ["standalone", "cluster", "check", "status"] {
        assert!(help.contains(cmd), "--help does not list {cmd}:\n{help}");
    }
    let secrets = root.join("etc/strait/secrets/dc2-psk");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("psk"), PSK).unwrap();
    std::fs::copy(
        root.join("etc/strait/tunnels.yaml.example"),
        root.join("etc/strait/tunnels.yaml"),
    )
    .unwrap();
    let check = run(Command::new("chroot").arg(&root).args([
        "/usr/bin/strait-agent",
        "check",
        "--config",
        "/etc/strait/tunnels.yaml",
        "--secrets-dir",
        "/etc/strait/secrets",
    ]));
    assert!(
        text(&check).contains("config and secrets OK"),
        "{}",
        text(&check)
    );

    let pair = SitePair::new(false).expect("topology");
    let charon = Charon::start(
        &pair.right.ns,
        &charon_for(&pair.right, &pair.left, PSK, None),
    )
    .expect("charon");
    let yaml = TunnelYaml::new(
        TUNNEL,
        End::new(pair.left.id, pair.left.addr, pair.left.subnet),
        End::new(pair.right.id, pair.right.addr, pair.right.subnet),
    )
    // charon_for's proposals (strongswan::Connection's default)
    .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
    .initiation("start")
    .render();
    let agent = Agent::start_binary(
        agent_bin,
        &pair.left.ns,
        &yaml,
        &[SecretFile {
            name: "gw-psk".into(),
            key: "psk".into(),
            value: PSK.into(),
        }],
        "none",
        &[],
    )
    .expect("the installed strait-agent");
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    assert_agree(&charon.list_sas().unwrap(), &ours);
    eprintln!("the installed strait-agent has tunnel {TUNNEL} up with charon");
}
