//! Smoke test of the real control plane (kube-apiserver + etcd, kubectl, helm) the tier-3 tests
//! run against. It needs the binaries from `e2e/setup/controlplane.sh` and fails (never skips)
//! without them.
//!
//! Run alone: `cargo test -p strait-e2e --test controlplane_smoke`

// Test code: a failed step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use strait_e2e::controlplane::{Binaries, ControlPlane};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.strait.dev
spec:
  group: smoke.strait.dev
  scope: Cluster
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size, maxSize]
            properties:
              size: {type: integer}
              maxSize: {type: integer}
            x-kubernetes-validations:
            - rule: "self.size <= self.maxSize"
              message: "spec.size must not exceed spec.maxSize"
          status:
            type: object
            properties:
              phase: {type: string}
              observedSize: {type: integer}
"#;

const GOOD_WIDGET: &str = r#"
apiVersion: smoke.strait.dev/v1alpha1
kind: Widget
metadata:
  name: small
spec:
  size: 3
  maxSize: 10
"#;

const BAD_WIDGET: &str = r#"
apiVersion: smoke.strait.dev/v1alpha1
kind: Widget
metadata:
  name: too-big
spec:
  size: 11
  maxSize: 10
"#;

const STATUS_PATCH: &str = r#"
apiVersion: smoke.strait.dev/v1alpha1
kind: Widget
metadata:
  name: small
status:
  phase: Ready
  observedSize: 3
"#;

/// Starts the control plane, failing with the setup hint when the binaries are missing.
fn start() -> ControlPlane {
    ControlPlane::start().unwrap_or_else(|e| panic!("could not start the control plane: {e:#}"))
}

fn write_chart(dir: &Path) {
    fs::create_dir_all(dir.join("templates")).unwrap();
    fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\ndescription: control-plane smoke test chart\n",
    )
    .unwrap();
    fs::write(dir.join("values.yaml"), "greeting: hello\n").unwrap();
    fs::write(
        dir.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\n\
         data:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .unwrap();
}

#[test]
fn binaries_are_installed() {
    let bins = Binaries::find().unwrap_or_else(|e| panic!("{e:#}"));
    for (bin, arg) in [
        (&bins.kube_apiserver, "--version"),
        (&bins.etcd, "--version"),
    ] {
        let out = std::process::Command::new(bin).arg(arg).output().unwrap();
        assert!(out.status.success(), "{} {arg} failed", bin.display());
    }
}

#[test]
fn helm_template_needs_no_server() {
    let bins = Binaries::find().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("smoke");
    write_chart(&chart);
    let out = std::process::Command::new(&bins.helm)
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .args(["template", "rel"])
        .arg(&chart)
        .args(["--set", "greeting=hi"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kind: ConfigMap"), "{stdout}");
    assert!(stdout.contains("name: rel-config"), "{stdout}");
    assert!(stdout.contains("greeting: \"hi\""), "{stdout}");
}

#[test]
fn control_plane_smoke() {
    let cp = start();

    // The API server is ready and is the pinned minor version.
    let readyz = cp.kubectl(["get", "--raw", "/readyz"]).unwrap();
    assert_eq!(readyz.trim(), "ok", "/readyz answered {readyz:?}");
    let version = cp.kubectl(["get", "--raw", "/version"]).unwrap();
    assert!(
        version.contains("\"gitVersion\": \"v1.37."),
        "unexpected server version: {version}"
    );
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));

    // A cluster-scoped CRD with a status subresource and a CEL rule becomes Established.
    cp.kubectl_stdin(["apply", "-f", "-"], CRD).unwrap();
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/widgets.smoke.strait.dev",
        "--timeout=60s",
    ])
    .unwrap();
    let scope = cp
        .kubectl([
            "get",
            "crd/widgets.smoke.strait.dev",
            "-o",
            "jsonpath={.spec.scope}",
        ])
        .unwrap();
    assert_eq!(scope, "Cluster");

    // A custom resource is created and read back. Discovery may lag the Established condition
    // by a moment, so retry the first create briefly.
    let mut created = None;
    for _ in 0..40 {
        match cp.kubectl_stdin(["create", "-f", "-"], GOOD_WIDGET) {
            Ok(out) => {
                created = Some(out);
                break;
            }
            Err(e) if format!("{e:#}").contains("ensure CRDs are installed") => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => panic!("creating the widget failed: {e:#}"),
        }
    }
    let created = created.expect("the Widget kind never became usable");
    assert!(
        created.contains("widget.smoke.strait.dev/small created"),
        "{created}"
    );
    let size = cp
        .kubectl([
            "get",
            "widget",
            "small",
            "-o",
            "jsonpath={.spec.size}/{.spec.maxSize}",
        ])
        .unwrap();
    assert_eq!(size, "3/10");

    // The CEL rule rejects a bad object, with its message.
    let out = cp
        .kubectl_output(["create", "-f", "-"], Some(BAD_WIDGET))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the CEL rule let a bad widget through"
    );
    assert!(
        stderr.contains("spec.size must not exceed spec.maxSize"),
        "rejected, but without the CEL message: {stderr}"
    );
    let gone = cp
        .kubectl_output(["get", "widget", "too-big"], None)
        .unwrap();
    assert!(!gone.status.success(), "the rejected widget exists");

    // Server-side apply of the status subresource under its own field manager.
    cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            "--field-manager=smoke-agent",
            "--subresource=status",
            "-f",
            "-",
        ],
        STATUS_PATCH,
    )
    .unwrap();
    let status = cp
        .kubectl([
            "get",
            "widget",
            "small",
            "-o",
            "jsonpath={.status.phase}/{.status.observedSize}",
        ])
        .unwrap();
    assert_eq!(status, "Ready/3");
    let managers = cp
        .kubectl([
            "get",
            "widget",
            "small",
            "--show-managed-fields",
            "-o",
            r#"jsonpath={range .metadata.managedFields[*]}{.manager}:{.operation}:{.subresource};{end}"#,
        ])
        .unwrap();
    assert!(
        managers.contains("smoke-agent:Apply:status;"),
        "no status entry for the smoke-agent field manager: {managers}"
    );
    // The spec was not touched by the status apply.
    let size = cp
        .kubectl(["get", "widget", "small", "-o", "jsonpath={.spec.size}"])
        .unwrap();
    assert_eq!(size, "3");

    // helm: version, then install a one-ConfigMap chart into the real API server and uninstall it.
    let helm_version = cp.helm(["version", "--short"]).unwrap();
    assert!(
        helm_version.starts_with("v4."),
        "helm version: {helm_version}"
    );
    let chart = cp.scratch_dir().join("smoke-chart");
    write_chart(&chart);
    let rendered = {
        let mut cmd = cp.helm_command(["template", "smoke"]);
        cmd.arg(&chart);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(rendered.contains("name: smoke-config"), "{rendered}");

    let chart_arg = chart.to_str().unwrap();
    let install = cp
        .helm([
            "install",
            "smoke",
            chart_arg,
            "--namespace",
            "default",
            "--set",
            "greeting=from-helm",
            "--wait",
            "--timeout",
            "60s",
        ])
        .unwrap();
    assert!(install.contains("STATUS: deployed"), "{install}");
    let greeting = cp
        .kubectl([
            "get",
            "configmap",
            "smoke-config",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.greeting}",
        ])
        .unwrap();
    assert_eq!(greeting, "from-helm");
    let list = cp
        .helm(["list", "--namespace", "default", "--short"])
        .unwrap();
    assert_eq!(list.trim(), "smoke");
    cp.helm(["uninstall", "smoke", "--namespace", "default", "--wait"])
        .unwrap();
    let gone = cp
        .kubectl_output(["get", "configmap", "smoke-config", "-n", "default"], None)
        .unwrap();
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "the ConfigMap survived helm uninstall: {}",
        String::from_utf8_lossy(&gone.stdout)
    );

    // Dropping the control plane stops every process and removes its temp dir.
    let pids = cp.pids();
    let dir = cp.scratch_dir().to_path_buf();
    assert_eq!(
        pids.len(),
        3,
        "expected watchdog, etcd and kube-apiserver: {pids:?}"
    );
    drop(cp);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the control plane"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
