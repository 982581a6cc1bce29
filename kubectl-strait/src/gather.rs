//! `kubectl strait gather`: one `.tar.gz` with what a bug report needs — every tunnel with its
//! status, the nodes, the operator's namespace (workloads, pods, heartbeat Leases, Events), the
//! Events about tunnels, and the logs of the operator and agent pods.
//!
//! Never a secret: Secrets and ConfigMaps are not read at all, and pod specs lose their `env`
//! values (a value a user set by hand could be a credential) before they are written.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt as _};
use serde::Serialize;
use strait_crds::IPsecTunnel;

/// How many lines of each container's log go in.
const LOG_LINES: i64 = 5000;

/// The archive being written: each entry a file under one top directory.
struct Archive {
    tar: tar::Builder<GzEncoder<std::fs::File>>,
    top: String,
    files: Vec<String>,
}

impl Archive {
    fn add(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        h.set_cksum();
        self.tar
            .append_data(&mut h, format!("{}/{name}", self.top), data)
            .with_context(|| format!("writing {name} into the archive"))?;
        self.files.push(name.to_owned());
        Ok(())
    }

    fn yaml<T: Serialize>(&mut self, name: &str, v: &T) -> Result<()> {
        let text = serde_yaml::to_string(v).context("serialising")?;
        self.add(name, text.as_bytes())
    }
}

/// Drops every `env[].value` (and `valueFrom` stays: it names a Secret, never holds it).
fn scrub(mut pods: Vec<Pod>) -> Vec<Pod> {
    for p in &mut pods {
        if let Some(spec) = p.spec.as_mut() {
            let all = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for c in all {
                for e in c.env.iter_mut().flatten() {
                    if e.value.is_some() {
                        e.value = Some("<removed by kubectl strait gather>".to_owned());
                    }
                }
            }
        }
        p.metadata.managed_fields = None;
    }
    pods
}

/// Lists `api` into `file` of the archive; a list the API refuses is noted in `errors`.
async fn list_into<K>(
    a: &mut Archive,
    errors: &mut Vec<String>,
    api: Api<K>,
    lp: &ListParams,
    file: &str,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(l) => a.yaml(file, &l.items),
        Err(e) => {
            errors.push(format!("{file}: {e}"));
            Ok(())
        }
    }
}

/// Writes the archive to `out` and returns the names of the files in it.
///
/// # Errors
/// The archive cannot be written, or the tunnels cannot be listed (nothing else is fatal: a
/// part the API refuses is noted in `errors.txt`).
pub async fn gather(client: &Client, namespace: &str, out: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let top = out
        .file_name()
        .and_then(|n| n.to_str())
        .map_or("strait-gather", |n| {
            n.trim_end_matches(".tar.gz").trim_end_matches(".tgz")
        })
        .to_owned();
    let mut a = Archive {
        tar: tar::Builder::new(GzEncoder::new(file, Compression::default())),
        top,
        files: Vec::new(),
    };
    let mut errors = Vec::new();
    let lp = ListParams::default();

    let tunnels = Api::<IPsecTunnel>::all(client.clone())
        .list(&lp)
        .await
        .context("listing IPsecTunnels")?;
    let mut tunnels = tunnels.items;
    for t in &mut tunnels {
        t.metadata.managed_fields = None;
    }
    a.yaml("tunnels.yaml", &tunnels)?;
    a.add(
        "status.txt",
        crate::status::render(&tunnels, k8s_openapi::jiff::Timestamp::now()).as_bytes(),
    )?;

    match Api::<Node>::all(client.clone()).list(&lp).await {
        Ok(mut n) => {
            for n in &mut n.items {
                n.metadata.managed_fields = None;
                // images lists are long and say nothing about tunnels
                if let Some(s) = n.status.as_mut() {
                    s.images = None;
                }
            }
            a.yaml("nodes.yaml", &n.items)?;
        }
        Err(e) => errors.push(format!("nodes: {e}")),
    }
    let here = |file: &str| format!("{namespace}/{file}");
    list_into(
        &mut a,
        &mut errors,
        Api::<Deployment>::namespaced(client.clone(), namespace),
        &lp,
        &here("deployments.yaml"),
    )
    .await?;
    list_into(
        &mut a,
        &mut errors,
        Api::<DaemonSet>::namespaced(client.clone(), namespace),
        &lp,
        &here("daemonsets.yaml"),
    )
    .await?;
    list_into(
        &mut a,
        &mut errors,
        Api::<Lease>::namespaced(client.clone(), namespace),
        &lp,
        &here("leases.yaml"),
    )
    .await?;
    list_into(
        &mut a,
        &mut errors,
        Api::<Event>::namespaced(client.clone(), namespace),
        &lp,
        &here("events.yaml"),
    )
    .await?;
    let about = ListParams::default().fields("involvedObject.kind=IPsecTunnel");
    list_into(
        &mut a,
        &mut errors,
        Api::<Event>::all(client.clone()),
        &about,
        "tunnel-events.yaml",
    )
    .await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), namespace);
    let pods = match pods_api.list(&lp).await {
        Ok(l) => scrub(l.items),
        Err(e) => {
            errors.push(format!("pods: {e}"));
            Vec::new()
        }
    };
    a.yaml(&here("pods.yaml"), &pods)?;
    for p in &pods {
        let name = p.name_any();
        let containers: Vec<String> = p
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        for c in containers {
            for previous in [false, true] {
                let params = LogParams {
                    container: Some(c.clone()),
                    previous,
                    tail_lines: Some(LOG_LINES),
                    timestamps: true,
                    ..LogParams::default()
                };
                let suffix = if previous { ".previous" } else { "" };
                match pods_api.logs(&name, &params).await {
                    Ok(text) => a.add(
                        &format!("{namespace}/logs/{name}/{c}{suffix}.log"),
                        text.as_bytes(),
                    )?,
                    // no previous container is the common case, not an error
                    Err(_) if previous => {}
                    Err(e) => errors.push(format!("logs of {name}/{c}: {e}")),
                }
            }
        }
    }
    let mut info = format!(
        "kubectl-strait {}\noperator namespace {namespace}\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Ok(v) = client.apiserver_version().await {
        info.push_str(&format!("kube-apiserver {}\n", v.git_version));
    }
    a.add("version.txt", info.as_bytes())?;
    if !errors.is_empty() {
        a.add("errors.txt", format!("{}\n", errors.join("\n")).as_bytes())?;
    }
    let files = a.files.clone();
    let gz = a.tar.into_inner().context("finishing the archive")?;
    let mut f = gz.finish().context("finishing the archive")?;
    f.flush().context("writing the archive")?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use k8s_openapi::api::core::v1::Pod;

    use super::scrub;

    #[test]
    fn env_values_are_removed_and_references_kept() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "TOKEN", "value": "hunter2"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
            ]}]}
        }))
        .unwrap();
        let text = serde_json::to_string(&scrub(vec![pod])).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("spec.nodeName") && text.contains("removed by kubectl strait gather"),
            "{text}"
        );
    }
}
