//! A kubelet cluster on this machine: the control plane and kubelet nodes of `e2e/nodes/`
//! (`cluster.sh up`), each node in network namespace `strait-node<i>` with its own containerd,
//! kube-proxy and the images of `e2e/setup/images.sh`, and the remote site's namespace
//! [`SITE_NS`] on the same bridge. Names and addresses are fixed (docs/testing-nodes.md), so one
//! runs at a time. Dropping [`NodeCluster`], also while a test panics, runs `cluster.sh down`.
//!
//! ```text
//!  root ns: bridge strait-nbr0 198.51.100.241/28, kube-apiserver :6443
//!   |- strait-node1  198.51.100.242  pods 10.244.1.0/24
//!   |- strait-node2  198.51.100.243  pods 10.244.2.0/24
//!   '- strait-nsite  198.51.100.254  (the remote site; 203.0.113.1 on lo)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;
use crate::controlplane::Binaries;
use crate::kube::Kube;

/// The remote site's namespace and IKE address (on the nodes' bridge).
pub const SITE_NS: &str = "strait-nsite";
pub const SITE_ADDR: &str = "198.51.100.254";
/// The remote site's subnet, and the cluster's side: the pod network.
pub const SITE_NET: &str = "203.0.113.0/24";
pub const POD_NET: &str = "10.244.0.0/16";
/// The chart's release namespace in these tests.
pub const NAMESPACE: &str = "strait-system";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nodes/cluster.sh")
}

/// The repository's chart.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/strait")
}

/// The control plane, `n` Ready kubelet nodes and the remote site's namespace.
#[derive(Debug)]
pub struct NodeCluster {
    kube: Kube,
    nodes: u32,
    /// Keeps helm's directories for as long as the cluster runs.
    _helm_home: tempfile::TempDir,
}

/// The cluster's `kubectl` and `helm`.
impl std::ops::Deref for NodeCluster {
    type Target = Kube;

    fn deref(&self) -> &Kube {
        &self.kube
    }
}

impl NodeCluster {
    /// Brings the cluster up (removing what a crashed run left first); fails, taking down what it
    /// started, when any part does not come up.
    ///
    /// # Errors
    /// A binary or image is missing (the message names the setup script), or a part failed.
    pub fn up(nodes: u32) -> Result<Self> {
        cmd::require_root()?;
        let bins = Binaries::find()?;
        let start = Instant::now();
        let out = cmd::output(
            Command::new("bash")
                .arg(script())
                .args(["up", &nodes.to_string()]),
        )?;
        if !out.success() {
            bail!(
                "e2e/nodes/cluster.sh up {nodes} failed ({}):\n{}",
                out.status,
                out.stderr
            );
        }
        let kubeconfig = PathBuf::from(out.stdout.trim());
        let helm_home = tempfile::Builder::new()
            .prefix("strait-nodes-helm-")
            .tempdir()
            .context("helm's directory")?;
        eprintln!(
            "kubelet cluster with {nodes} node(s) up in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(Self {
            kube: Kube::new(
                bins.kubectl,
                bins.helm,
                kubeconfig,
                helm_home.path().to_owned(),
            ),
            nodes,
            _helm_home: helm_home,
        })
    }

    /// Node `i`'s name (1-based), which is also its network namespace.
    pub fn node(i: u32) -> String {
        format!("strait-node{i}")
    }

    /// Every node's name.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(Self::node).collect()
    }

    /// Node `name`'s state directory (logs: kubelet.log, containerd.log, kube-proxy.log).
    pub fn node_dir(name: &str) -> PathBuf {
        let dir = std::env::var_os("STRAIT_NODES_DIR")
            .map_or_else(|| PathBuf::from("/tmp/strait-nodes"), PathBuf::from);
        dir.join(format!("node-{name}"))
    }

    /// The last `lines` lines of node `name`'s kubelet, containerd and kube-proxy logs.
    pub fn node_logs(name: &str, lines: usize) -> String {
        let mut s = String::new();
        for f in [
            "kubelet.log",
            "containerd.log",
            "kube-proxy.log",
            "node.log",
        ] {
            let text = std::fs::read_to_string(Self::node_dir(name).join(f)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = all
                .get(all.len().saturating_sub(lines)..)
                .unwrap_or_default();
            s.push_str(&format!("--- {name} {f}\n{}\n", tail.join("\n")));
        }
        s
    }

    /// Kills node `name`'s kubelet with SIGKILL. The node's harness (node-run.sh) then stops its
    /// containers and containerd, as a node that shuts down or crashes would: the node goes
    /// NotReady and everything it ran stops. Returns once its agent container is gone.
    ///
    /// # Errors
    /// No kubelet of that node runs.
    pub fn kill_kubelet(&self, name: &str) -> Result<()> {
        let config = Self::node_dir(name).join("kubelet-config.yaml");
        let pattern = format!("kubelet --config={}", config.display());
        let out = cmd::run("pkill", &["-KILL", "-f", &pattern])?;
        if !out.success() {
            bail!("no kubelet of {name} found ({pattern})");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::netns::pids(name)
            .iter()
            .any(|p| process_name(*p).as_deref() == Some("strait-agent"))
        {
            if Instant::now() > deadline {
                bail!("the agent in {name} still runs 30 s after its kubelet was killed");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Takes node `i` down (everything it runs stops, as [`Self::kill_kubelet`] leaves it) and
    /// brings it up again until Ready; its Node and pods stay in the API, as for a reboot.
    ///
    /// # Errors
    /// The node did not come back.
    pub fn restart_node(&self, i: u32) -> Result<()> {
        let out = cmd::output(
            Command::new("bash")
                .arg(script())
                .args(["restart-node", &i.to_string()]),
        )?;
        if !out.success() {
            bail!(
                "e2e/nodes/cluster.sh restart-node {i} failed ({}):\n{}",
                out.status,
                out.stderr
            );
        }
        Ok(())
    }

    /// Labels node `name` as a gateway (`strait.dev/gateway=true`) or removes the label.
    ///
    /// # Errors
    /// kubectl failed.
    pub fn label_gateway(&self, name: &str, gateway: bool) -> Result<()> {
        let label = if gateway {
            "strait.dev/gateway=true"
        } else {
            "strait.dev/gateway-"
        };
        self.kubectl(["label", "node", name, label, "--overwrite"])?;
        Ok(())
    }

    /// `kubectl -n strait-system ARGS`.
    ///
    /// # Errors
    /// kubectl failed.
    pub fn ns_kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", NAMESPACE];
        all.extend_from_slice(args);
        self.kubectl(all)
    }

    /// The names of the pods in the release namespace with label selector `selector`, and the
    /// node each runs on.
    ///
    /// # Errors
    /// kubectl failed.
    pub fn pods(&self, selector: &str) -> Result<Vec<(String, String)>> {
        let out = self.ns_kubectl(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, n)| (p.to_owned(), n.to_owned()))
            .collect())
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        match cmd::output(Command::new("bash").arg(script()).arg("down")) {
            Ok(out) if out.success() => {}
            Ok(out) => eprintln!("e2e/nodes/cluster.sh down: {}\n{}", out.status, out.stderr),
            Err(e) => eprintln!("e2e/nodes/cluster.sh down: {e:#}"),
        }
    }
}

fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}
