//! The Helm chart: lint and the values schema, drift of the templated CRD and of
//! deploy/strait.yaml, what the values render to, and install / upgrade / uninstall on a real
//! kube-apiserver. There is no kubelet, so the chart's Deployment never runs a pod; instead the
//! operator binary runs as a process with the Deployment's own arguments and the chart's
//! ServiceAccount token, which proves the chart's flags and RBAC are enough (and the agent's RBAC
//! is exercised with kubectl the same way). There is no kube-controller-manager either, so
//! garbage collection of the agent DaemonSet is checked by its ownerReference, not by watching it
//! go.
//!
//! Run alone: `cargo test -p strait-e2e --test helm_chart`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod operator_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use operator_support::*;
use strait_e2e::controlplane::{Binaries, ControlPlane};
use strait_e2e::product::service_account_kubeconfig;

fn chart() -> PathBuf {
    workspace().join("charts/strait")
}

fn helm_offline_output(args: &[&str]) -> std::process::Output {
    let bins = Binaries::find().unwrap_or_else(|e| panic!("{e:#}"));
    let home = tempfile::tempdir().unwrap();
    Command::new(&bins.helm)
        .env("HELM_CONFIG_HOME", home.path())
        .env("HELM_CACHE_HOME", home.path())
        .env("HELM_DATA_HOME", home.path())
        .current_dir(workspace())
        .args(args)
        .output()
        .unwrap()
}

fn helm_offline(args: &[&str]) -> String {
    let out = helm_offline_output(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents `helm template` renders with `set` (each `KEY=VALUE` for `--set`), as JSON.
fn render(set: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["template", "strait", "charts/strait", "--namespace", NS];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = helm_offline(&args);
    out.split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_json::Value>(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered object of `kind` named `name`.
fn find<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> Option<&'a serde_json::Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// The operator container's arguments in the rendered Deployment.
fn operator_args(docs: &[serde_json::Value]) -> Vec<String> {
    let d = find(docs, "Deployment", "strait-operator").expect("no operator Deployment");
    serde_json::from_value(d["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

/// The value of `--NAME=` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

/// `promtool ARGS` in `dir`, which must succeed; its output.
fn promtool(dir: &std::path::Path, args: &[&str]) -> String {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    assert!(
        promtool.is_file(),
        "promtool missing: run e2e/setup/packages.sh (Debian's prometheus)"
    );
    let out = Command::new(promtool)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The chart's monitoring: off by default; the PrometheusRule it renders is
/// `files/alerts.yaml`, which `promtool test rules` proves alert by alert (each fires on its
/// series, not before its `for`, with its annotations); every Grafana panel query is valid
/// PromQL over Strait's series; the PodMonitor selects the agents' pods by the label the
/// operator gives them.
#[test]
fn the_charts_alerts_pass_promtool_and_every_dashboard_query_parses() {
    let plain = render(&[]);
    for kind in ["PrometheusRule", "PodMonitor", "ConfigMap"] {
        assert!(
            !plain.iter().any(|d| d["kind"] == kind),
            "{kind} rendered without being asked for"
        );
    }
    let docs = render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
    ]);
    let rule = find(&docs, "PrometheusRule", "strait").expect("no PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alerts.yaml"),
        serde_yaml::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let tests = std::fs::read_to_string(chart().join("files/alerts_test.yaml")).unwrap();
    std::fs::write(dir.path().join("alerts_test.yaml"), &tests).unwrap();
    promtool(dir.path(), &["check", "rules", "alerts.yaml"]);
    let out = promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let alerts: Vec<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "no promtool test for {a}"
        );
    }

    let cm = find(&docs, "ConfigMap", "strait-dashboard").expect("no dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: serde_json::Value =
        serde_json::from_str(cm["data"]["strait.json"].as_str().unwrap()).unwrap();
    let mut records = String::from("groups:\n- name: dashboard\n  rules:\n");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for (i, p) in panels.iter().enumerate() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for (j, t) in targets.iter().enumerate() {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("strait_"), "{expr}");
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            records.push_str(&format!(
                "  - record: strait:panel_{i}_{j}\n    expr: {}\n",
                serde_json::to_string(expr).unwrap()
            ));
        }
    }
    std::fs::write(dir.path().join("panels.yaml"), records).unwrap();
    promtool(dir.path(), &["check", "rules", "panels.yaml"]);

    let pm = find(&docs, "PodMonitor", "strait-agent").expect("no PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "strait-agent"
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
}

#[test]
fn helm_lint_is_clean() {
    let out = helm_offline(&["lint", "--strict", "charts/strait"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // the other branches of the templates too
    let out = helm_offline(&[
        "lint",
        "--strict",
        "charts/strait",
        "--set",
        "operator.replicas=1,crds.enabled=false,operator.logFormat=json,agent.logFormat=json",
        "--set",
        "operator.priorityClassName=high,agent.priorityClassName=system-node-critical",
        "--set",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=a",
        "--set",
        "imagePullSecrets[0].name=regcred,metrics.serviceMonitor.enabled=true",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn the_schema_refuses_bad_values_and_says_where() {
    for (set, says) in [
        ("operator.deletionTimeout=soon", "/operator/deletionTimeout"),
        (
            "agent.logFormat=xml",
            "at '/agent/logFormat': value must be one of 'text', 'json'",
        ),
        (
            "operator.logFormat=JSON",
            "at '/operator/logFormat': value must be one of",
        ),
        (
            "agent.logLevel=verbose",
            "at '/agent/logLevel': value must be one of",
        ),
        (
            "agent.priorityClassName=Not_A_Name",
            "/agent/priorityClassName",
        ),
        (
            "agent.tolerations[0].operator=exists",
            "at '/agent/tolerations/0/operator'",
        ),
        (
            "agent.resources.request.cpu=1",
            "additional properties 'request' not allowed",
        ),
        (
            "agent.nodeSelector.zone=null",
            "at '/agent/nodeSelector/zone': got null, want string",
        ),
        ("imagePullSecrets[0].secret=x", "missing property 'name'"),
        (
            "crds.keep=maybe",
            "at '/crds/keep': got string, want boolean",
        ),
        (
            "agent.extraArg=--x",
            "additional properties 'extraArg' not allowed",
        ),
    ] {
        let out = helm_offline_output(&["template", "x", "charts/strait", "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the schema accepted {set}");
        assert!(
            err.contains(says),
            "{set}: the error does not say {says:?}:\n{err}"
        );
    }
}

#[test]
fn the_values_reach_the_operator_flags_and_the_operator_pod() {
    let docs = render(&[]);
    let args = operator_args(&docs);
    assert_eq!(flag(&args, "owner-deployment"), Some("strait-operator"));
    assert_eq!(flag(&args, "log-format"), Some("text"));
    assert_eq!(flag(&args, "agent-log-level"), Some("info"));
    assert_eq!(flag(&args, "agent-log-format"), Some("text"));
    let opts: serde_json::Value =
        serde_json::from_str(flag(&args, "agent-pod-options").unwrap()).unwrap();
    assert_eq!(
        opts["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(opts["resources"]["requests"]["cpu"], "10m");
    assert!(opts.get("priorityClassName").is_none(), "{opts}");
    let pod = &find(&docs, "Deployment", "strait-operator").unwrap()["spec"]["template"]["spec"];
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(pod.get("priorityClassName").is_none());
    let pdb =
        find(&docs, "PodDisruptionBudget", "strait-operator").expect("no PDB with 2 replicas");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        "the PDB and the anti-affinity select the operator pods alike"
    );

    let docs = render(&[
        "operator.replicas=1,operator.logFormat=json,operator.priorityClassName=ops",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=infra",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "imagePullSecrets[0].name=regcred",
        "agent.priorityClassName=system-node-critical,agent.logFormat=json,agent.logLevel=debug",
        "agent.extraArgs={--dataplane=none}",
        "agent.nodeSelector.kubernetes\\.io/os=linux",
        "agent.tolerations=null",
    ]);
    assert!(
        find(&docs, "PodDisruptionBudget", "strait-operator").is_none(),
        "a PDB with one replica blocks every drain"
    );
    let pod = &find(&docs, "Deployment", "strait-operator").unwrap()["spec"]["template"]["spec"];
    assert!(
        pod["affinity"].get("podAntiAffinity").is_none(),
        "affinity is replaced, not merged"
    );
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "infra"
    );
    assert_eq!(pod["priorityClassName"], "ops");
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    let args = operator_args(&docs);
    assert_eq!(flag(&args, "log-format"), Some("json"));
    assert_eq!(flag(&args, "agent-log-format"), Some("json"));
    assert_eq!(flag(&args, "agent-log-level"), Some("debug"));
    let agent_args: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--agent-arg="))
        .collect();
    assert_eq!(agent_args, ["cluster", "--dataplane=none"]);
    let opts: serde_json::Value =
        serde_json::from_str(flag(&args, "agent-pod-options").unwrap()).unwrap();
    assert_eq!(opts["priorityClassName"], "system-node-critical");
    assert_eq!(
        opts["nodeSelector"],
        serde_json::json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        opts["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert!(
        opts.get("tolerations").is_none(),
        "null: the operator's default"
    );
}

#[test]
fn chart_crd_and_rendered_manifests_do_not_drift() {
    let root = workspace();
    // The chart's CRD is a template (so `helm upgrade` updates it) generated from the one source,
    // crds/ipsectunnel.yaml: rendered, it is that file plus Helm's labels and the keep annotation.
    let generated: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("crds/ipsectunnel.yaml")).unwrap())
            .unwrap();
    assert!(
        !root.join("charts/strait/crds").exists(),
        "charts/strait/crds/ is back: Helm would install that CRD and never upgrade it"
    );
    let docs = render(&[]);
    let mut crd = find(&docs, "CustomResourceDefinition", "ipsectunnels.strait.dev")
        .expect("no CRD in the chart")
        .clone();
    let meta = crd["metadata"].as_object_mut().unwrap();
    let labels = meta.remove("labels").unwrap();
    let annotations = meta.remove("annotations").unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(
        annotations,
        serde_json::json!({"helm.sh/resource-policy": "keep"})
    );
    assert!(
        crd == generated,
        "charts/strait/templates/crd-ipsectunnel.yaml differs from crds/ipsectunnel.yaml: run deploy/render.sh"
    );
    let docs = render(&["crds.keep=false"]);
    let crd = find(&docs, "CustomResourceDefinition", "ipsectunnels.strait.dev").unwrap();
    assert!(
        crd["metadata"].get("annotations").is_none(),
        "{}",
        crd["metadata"]
    );
    let docs = render(&["crds.enabled=false"]);
    assert!(!docs.iter().any(|d| d["kind"] == "CustomResourceDefinition"));

    let rendered = helm_offline(&[
        "template",
        "strait",
        "charts/strait",
        "--namespace",
        "strait-system",
        "--no-hooks",
    ]);
    let committed = std::fs::read_to_string(root.join("deploy/strait.yaml")).unwrap();
    assert!(
        committed.ends_with(&rendered) && committed.starts_with("# Generated by deploy/render.sh"),
        "deploy/strait.yaml is stale: run deploy/render.sh"
    );
    assert!(
        committed.contains("    pod-security.kubernetes.io/enforce: privileged\n"),
        "deploy/strait.yaml's Namespace must allow the privileged agent pods"
    );
}

/// A kubeconfig for the ServiceAccount `sa` in strait-system (token from the TokenRequest API).
fn sa_kubeconfig(cp: &ControlPlane, sa: &str) -> PathBuf {
    service_account_kubeconfig(cp, NS, sa).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Applies `yaml` to the status subresource as the agent on `node` does, with `kubeconfig`'s
/// identity; `what` names the write in the failure.
fn apply_status_as(cp: &ControlPlane, kubeconfig: &PathBuf, node: &str, yaml: &str, what: &str) {
    let args = agent_status_apply(node);
    let o = kubectl_as(
        cp,
        kubeconfig,
        &args.each_ref().map(String::as_str),
        Some(yaml),
    );
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `kubectl auth can-i VERB RESOURCE -n strait-system` with `kubeconfig`'s identity.
fn can_i(cp: &ControlPlane, kubeconfig: &PathBuf, verb: &str, resource: &str) -> String {
    let o = kubectl_as(
        cp,
        kubeconfig,
        &["auth", "can-i", verb, resource, "-n", NS],
        None,
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn kubectl_as(
    cp: &ControlPlane,
    kubeconfig: &PathBuf,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(&cp.binaries().kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Values a user of the chart would set for the agent, all of which must reach its DaemonSet.
const AGENT_VALUES: &str = "\
operator:
  logFormat: json
imagePullSecrets: [{name: regcred}]
agent:
  logLevel: debug
  logFormat: json
  extraArgs: [--dataplane=none]
  priorityClassName: system-node-critical
  resources: {requests: {cpu: 25m, memory: 48Mi}, limits: {memory: 96Mi}}
  tolerations: [{key: strait.dev/gateway, operator: Exists, effect: NoSchedule}]
  nodeSelector: {kubernetes.io/os: linux}
";

/// The chart's Deployment's operator arguments, for running the binary as its pod would (minus
/// `run` and the flags the test harness sets itself).
fn deployment_args(cp: &ControlPlane) -> Vec<String> {
    let json = cp
        .kubectl([
            "get",
            "deploy",
            "strait-operator",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ])
        .unwrap();
    let args: Vec<String> = serde_json::from_str(&json).unwrap();
    args.into_iter()
        .filter(|a| {
            a != "run"
                && !["--namespace=", "--metrics-addr=", "--health-addr="]
                    .iter()
                    .any(|p| a.starts_with(p))
        })
        .collect()
}

/// `kubectl get KIND NAME -n strait-system -o json`, parsed.
fn get_json(cp: &ControlPlane, kind: &str, name: &str) -> serde_json::Value {
    let out = cp
        .kubectl(["get", kind, name, "-n", NS, "-o", "json"])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// The Ready condition's message.
fn ready_message(cp: &ControlPlane, tunnel: &str) -> String {
    tunnel_field(
        cp,
        tunnel,
        r#"{.status.conditions[?(@.type=="Ready")].message}"#,
    )
}

/// The CRD's `helm.sh/resource-policy` annotation (empty when absent).
fn crd_policy(cp: &ControlPlane) -> String {
    cp.kubectl([
        "get",
        "crd",
        "ipsectunnels.strait.dev",
        "-o",
        r"jsonpath={.metadata.annotations.helm\.sh/resource-policy}",
    ])
    .unwrap()
}

#[test]
fn helm_install_upgrade_uninstall_with_the_charts_rbac() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("control plane: {e:#}"));
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let values = cp.scratch_dir().join("agent-values.yaml");
    std::fs::write(&values, AGENT_VALUES).unwrap();
    // No --wait: without a kubelet the operator pods never start.
    let out = cp
        .helm([
            "install",
            "strait",
            chart,
            "--namespace",
            NS,
            "--create-namespace",
            "-f",
            values.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("kubectl label node"),
        "NOTES.txt missing: {out}"
    );
    strait_e2e::product::wait_crd(&cp, 60).unwrap();
    let replicas = cp
        .kubectl([
            "get",
            "deploy",
            "strait-operator",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args}",
        ])
        .unwrap();
    assert!(
        replicas.starts_with("2 ") && replicas.contains("--leader-election"),
        "{replicas}"
    );
    assert!(
        out.contains("pod-security.kubernetes.io/enforce=privileged"),
        "NOTES.txt says nothing about Pod Security: {out}"
    );
    // The CRD is a release object now (upgraded with it), kept on uninstall by default.
    assert_eq!(crd_policy(&cp), "keep");
    cp.kubectl(["get", "pdb", "strait-operator", "-n", NS])
        .unwrap();

    // The operator, with the chart's ServiceAccount, the Deployment's own flags and nothing
    // more, does its whole job.
    let op_kubeconfig = sa_kubeconfig(&cp, "strait-operator");
    let agent_kubeconfig = sa_kubeconfig(&cp, "strait-agent");
    node(
        &cp,
        "gw-a",
        &[
            ("strait.dev/gateway", "true"),
            ("kubernetes.io/os", "linux"),
        ],
    );
    let args = deployment_args(&cp);
    assert!(args.iter().any(|a| a == "--leader-election"), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = operator_as(&cp, "chart-op", &op_kubeconfig, &args);
    // The agent's side, with the agent's ServiceAccount: heartbeat Lease ...
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: strait-agent-gw-a, namespace: {NS}}}\n\
         spec: {{holderIdentity: gw-a, leaseDurationSeconds: 3600, renewTime: \"{}\"}}\n",
        micro_now()
    );
    let o = kubectl_as(
        &cp,
        &agent_kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=strait-agent/gw-a",
            "-f",
            "-",
        ],
        Some(&lease),
    );
    assert!(
        o.status.success(),
        "agent lease: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_for(
        Duration::from_secs(30),
        "the IPsecTunnel kind in discovery",
        || cp.kubectl(["get", "ipsectunnels"]).ok(),
    );
    apply(&cp, &tunnel_yaml("dc2", "strait.dev/gateway"));
    wait_for(
        Duration::from_secs(60),
        "WaitingForAgent from the chart-RBAC operator",
        || {
            (tunnel_field(&cp, "dc2", "{.status.activeGateway}") == "gw-a"
                && ready(&cp, "dc2") == "False/WaitingForAgent")
                .then_some(())
        },
    );
    // ... and its status entry.
    let entry = "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata: {name: dc2}\nstatus:\n  gateways:\n  - node: gw-a\n    ikeState: Established\n    childSas: [{spiIn: c1, spiOut: c2}]\n";
    apply_status_as(&cp, &agent_kubeconfig, "gw-a", entry, "agent status");
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "ipsectunnel/dc2",
        "--timeout=30s",
    ])
    .unwrap();
    wait_for(Duration::from_secs(30), "the agent DaemonSet", || {
        cp.kubectl(["get", "ds", "strait-agent", "-n", NS, "-o", "name"])
            .ok()
    });
    // The route role: on every node (tolerates everything, no affinity), reading tunnels and
    // Nodes with its own ServiceAccount and allowed nothing else.
    let route = get_json(&cp, "ds", "strait-route");
    let pod = &route["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "strait-route", "{pod:#}");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert!(pod.get("affinity").is_none(), "{pod:#}");
    let args = pod["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"route\"") && args.contains("--mode=vxlan"),
        "{args}"
    );
    let route_kubeconfig = sa_kubeconfig(&cp, "strait-route");
    for (verb, what, allowed) in [
        ("list", "ipsectunnels.strait.dev", "yes"),
        ("watch", "ipsectunnels.strait.dev", "yes"),
        ("watch", "nodes", "yes"),
        ("patch", "ipsectunnels.strait.dev", "no"),
        ("get", "secrets", "no"),
    ] {
        let o = kubectl_as(
            &cp,
            &route_kubeconfig,
            &["auth", "can-i", verb, what, "--all-namespaces"],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            allowed,
            "strait-route may {verb} {what}?"
        );
    }
    // on SIGTERM it reads its own pod and DaemonSet (a rolling update keeps its routes), in
    // the release's namespace only
    for (verb, resource, allowed) in [
        ("get", "pods", "yes"),
        ("get", "daemonsets/strait-route", "yes"),
        ("get", "daemonsets/strait-agent", "no"),
        ("list", "pods", "no"),
    ] {
        assert_eq!(
            can_i(&cp, &route_kubeconfig, verb, resource),
            allowed,
            "strait-route may {verb} {resource}?"
        );
    }
    let env = pod["containers"][0]["env"].to_string();
    assert!(
        env.contains("\"POD_NAME\"") && env.contains("\"POD_NAMESPACE\""),
        "{env}"
    );
    // Every agent value reached the DaemonSet, and the DaemonSet is owned by the chart's
    // Deployment (so garbage collection removes it with the release).
    let ds = get_json(&cp, "ds", "strait-agent");
    let deploy = get_json(&cp, "deploy", "strait-operator");
    assert_eq!(
        ds["metadata"]["ownerReferences"],
        serde_json::json!([{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "strait-operator",
            "uid": deploy["metadata"]["uid"],
        }])
    );
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"key": "strait.dev/gateway", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"cpu": "25m", "memory": "48Mi"}, "limits": {"memory": "96Mi"}})
    );
    assert_eq!(
        c["args"],
        serde_json::json!([
            "cluster",
            "--dataplane=none",
            "--state-dir=/run/strait-state/ike",
            "--metrics-addr=$(HOST_IP):9470",
            "--log-json"
        ])
    );
    // agent.stateDir (default): the IKE state outlives the pod, in a host directory on tmpfs
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .cloned();
    assert_eq!(
        state,
        Some(
            serde_json::json!({"name": "state", "hostPath": {"path": "/run/strait-agent", "type": "DirectoryOrCreate"}})
        )
    );
    let rust_log = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "RUST_LOG")
        .map(|e| e["value"].clone());
    assert_eq!(rust_log, Some(serde_json::json!("debug,kube=warn")));
    // operator.logFormat=json: the operator's own log is JSON lines
    let first = op.log().lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with('{') && first.contains("\"level\""),
        "not a JSON log line: {first}"
    );

    // A tunnel whose node gets no agent says why, with the chart's RBAC: first because the node
    // is outside agent.nodeSelector, then because Pod Security refuses the agent pods.
    node(&cp, "gw-b", &[("site-b", "true")]);
    apply(&cp, &tunnel_yaml("psa", "site-b"));
    wait_for(Duration::from_secs(30), "AgentNotScheduled", || {
        (ready(&cp, "psa") == "False/AgentNotScheduled").then_some(())
    });
    assert!(
        ready_message(&cp, "psa").contains("{kubernetes.io/os=linux}"),
        "{}",
        ready_message(&cp, "psa")
    );
    cp.kubectl(["label", "node", "gw-b", "kubernetes.io/os=linux"])
        .unwrap();
    let enforce = |level: &str| {
        cp.kubectl([
            "label",
            "namespace",
            NS,
            &format!("pod-security.kubernetes.io/enforce={level}"),
            "--overwrite",
        ])
        .unwrap();
    };
    enforce("baseline");
    wait_for(Duration::from_secs(30), "AgentPodsForbidden", || {
        (ready(&cp, "psa") == "False/AgentPodsForbidden").then_some(())
    });
    let msg = ready_message(&cp, "psa");
    assert!(
        msg.contains("\"baseline\"") && msg.contains("enforce=privileged"),
        "{msg}"
    );
    wait_for(
        Duration::from_secs(10),
        "Events with the diagnosed reasons",
        || {
            let r = event_reasons(&cp, "psa");
            (r.iter().any(|r| r == "AgentNotScheduled")
                && r.iter().any(|r| r == "AgentPodsForbidden"))
            .then_some(())
        },
    );
    assert!(
        event_notes(&cp, "psa", "AgentPodsForbidden").contains("baseline"),
        "{}",
        event_notes(&cp, "psa", "AgentPodsForbidden")
    );
    enforce("privileged");
    wait_for(
        Duration::from_secs(30),
        "NoGatewayAvailable once the namespace allows the agents",
        || (ready(&cp, "psa") == "False/NoGatewayAvailable").then_some(()),
    );
    cp.kubectl(["delete", "ipsectunnel", "psa", "--timeout=30s"])
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "Events written with the chart's RBAC",
        || {
            event_reasons(&cp, "dc2")
                .iter()
                .any(|r| r == "Ready")
                .then_some(())
        },
    );
    // What the agent must not do.
    for (verb, resource) in [
        ("list", "secrets"),
        ("update", "ipsectunnels"),
        ("delete", "leases"),
        ("list", "pods"),
        ("get", "daemonsets/other"),
        ("list", "daemonsets"),
    ] {
        assert_eq!(
            can_i(&cp, &agent_kubeconfig, verb, resource),
            "no",
            "agent may {verb} {resource}"
        );
    }
    // what it reads on SIGTERM to tell a restart (its pod deleted, the DaemonSet staying)
    for (verb, resource) in [("get", "pods"), ("get", "daemonsets/strait-agent")] {
        assert_eq!(
            can_i(&cp, &agent_kubeconfig, verb, resource),
            "yes",
            "agent may not {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("delete", "ipsectunnels"),
        ("get", "pods"),
        ("create", "pods"),
        ("list", "deployments"),
        ("update", "deployments/strait-operator"),
        ("get", "deployments/other"),
    ] {
        assert_eq!(
            can_i(&cp, &op_kubeconfig, verb, resource),
            "no",
            "operator may {verb} {resource}"
        );
    }

    for (verb, resource) in [
        ("get", "deployments/strait-operator"),
        ("list", "pods"),
        ("list", "events"),
    ] {
        assert_eq!(
            can_i(&cp, &op_kubeconfig, verb, resource),
            "yes",
            "operator may not {verb} {resource}"
        );
    }

    // Upgrade changes the Deployment in place, and the CRD too (Helm never upgrades crds/).
    let out = cp
        .helm([
            "upgrade",
            "strait",
            chart,
            "--namespace",
            NS,
            "--reuse-values",
            "--set",
            "operator.replicas=1",
            "--set",
            "operator.logLevel=debug",
            "--set",
            "crds.keep=false",
        ])
        .unwrap();
    assert!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 2"),
        "{out}"
    );
    assert_eq!(crd_policy(&cp), "", "helm upgrade did not update the CRD");
    assert!(
        cp.kubectl(["get", "pdb", "strait-operator", "-n", NS])
            .is_err(),
        "a PDB with one replica would block every node drain"
    );
    let out = cp
        .helm([
            "upgrade",
            "strait",
            chart,
            "--namespace",
            NS,
            "--reuse-values",
            "--set",
            "crds.keep=true",
        ])
        .unwrap();
    assert!(out.contains("REVISION: 3"), "{out}");
    assert_eq!(crd_policy(&cp), "keep");
    let replicas = cp
        .kubectl([
            "get",
            "deploy",
            "strait-operator",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .unwrap();
    assert_eq!(replicas, "1");

    // Tunnels go first (their finalizer needs the operator), then the release.
    let clear =
        "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata: {name: dc2}\nstatus: {}\n";
    cp.kubectl(["delete", "ipsectunnel", "dc2", "--wait=false"])
        .unwrap();
    apply_status_as(&cp, &agent_kubeconfig, "gw-a", clear, "agent clear");
    cp.kubectl(["wait", "--for=delete", "ipsectunnel/dc2", "--timeout=30s"])
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the DaemonSet removed with the last tunnel",
        || {
            cp.kubectl(["get", "ds", "strait-agent", "-n", NS])
                .is_err()
                .then_some(())
        },
    );
    // Without hooks: this control plane runs no Job controller, so the post-delete Job would
    // never finish. The hook runs for real on kubelets (nodes_helm.rs).
    let out = cp
        .helm([
            "uninstall",
            "strait",
            "--namespace",
            NS,
            "--wait",
            "--no-hooks",
            "--timeout",
            "60s",
        ])
        .unwrap();
    assert!(
        out.contains("resource policy") && out.contains("ipsectunnels.strait.dev"),
        "helm did not say it kept the CRD: {out}"
    );
    let left = cp
        .kubectl(["get", "deploy,sa,role,rolebinding", "-n", NS, "-o", "name"])
        .unwrap();
    assert!(
        !left.contains("strait-operator") && !left.contains("strait-agent"),
        "left behind: {left}"
    );
    assert!(
        cp.kubectl(["get", "clusterrole", "strait-operator"])
            .is_err()
    );
    // crds.keep: Helm leaves the CRD (so tunnels are not deleted by accident).
    cp.kubectl(["get", "crd", "ipsectunnels.strait.dev"])
        .unwrap();
}
