//! A real Prometheus (Debian's package) inside a test's network namespace, and the chart's
//! dashboard queries to ask it: what `prometheus_live` (the control plane) and `vm_agent` (the
//! kernel data plane) use to check that every panel has data.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::netns;

/// Where Prometheus listens inside its namespace.
pub const ADDR: &str = "127.0.0.1:9090";
/// Debian's binary.
pub const BIN: &str = "/usr/bin/prometheus";

/// Prometheus in a namespace, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `ns` with `config` (prometheus.yml text; rule files relative to
    /// `dir`), its data and log under `dir`, scraping every second if the config says so.
    ///
    /// # Errors
    /// The binary is missing or cannot start.
    pub fn start(ns: &str, dir: &Path, config: &str) -> Result<Self> {
        if !Path::new(BIN).is_file() {
            bail!("{BIN} missing: run e2e/setup/packages.sh (Debian's prometheus)");
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).context("writing prometheus.yml")?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let args = [
            BIN.to_owned(),
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={ADDR}"),
        ];
        let child = netns::exec_command(ns, &args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting prometheus")?;
        Ok(Self {
            child,
            ns: ns.to_owned(),
            log,
        })
    }

    /// `GET /api/v1/query?query=EXPR`: the result vector (empty while Prometheus is not up).
    ///
    /// # Panics
    /// Prometheus answers, but not with success (a query that does not parse).
    #[allow(clippy::panic)]
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let body = http_get(&self.ns, &path).unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !(v.is_null() || v.get("status").and_then(Value::as_str) == Some("success")) {
            panic!("query {expr}: {body}");
        }
        v.pointer("/data/result")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `ok` holds.
    ///
    /// # Errors
    /// It did not within `timeout` (the error has Prometheus's log).
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        while !ok(self) {
            if start.elapsed() > timeout {
                bail!("{what}: not within {timeout:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP/1.0 GET to Prometheus inside `ns`: the body.
fn http_get(ns: &str, path: &str) -> Option<String> {
    let mut s = crate::transfer::within(ns, || TcpStream::connect(ADDR))
        .ok()?
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The metric names an expression reads.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("strait_") {
        let tail = rest.get(i..).unwrap_or_default();
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail.get(..end).unwrap_or_default().to_owned());
        rest = tail.get(end..).unwrap_or_default();
    }
    if expr.starts_with("up{") || expr.contains(" up{") {
        out.insert("up".to_owned());
    }
    out
}

/// Every query of the chart's dashboard: (panel title, expression).
///
/// # Errors
/// The dashboard cannot be read or is not JSON with panels and targets.
pub fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/strait/files/dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut out = Vec::new();
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    for p in field(&dash, "panels").as_array().context("no panels")? {
        let title = field(p, "title").as_str().unwrap_or_default().to_owned();
        for t in field(p, "targets")
            .as_array()
            .context("a panel without targets")?
        {
            let expr = field(t, "expr");
            let expr = expr.as_str().context("a target without expr")?;
            out.push((title.clone(), expr.to_owned()));
        }
    }
    Ok(out)
}
