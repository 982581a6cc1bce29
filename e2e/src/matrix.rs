//! The interop matrix: which peer, authentication, direction, path, address family and suite
//! each interop test proved, recorded as the test runs and rendered into `docs/interop.md` by
//! `interop-matrix` (so the table is the last run's, not a hand-kept list).
//!
//! A test takes a [`Judged`] for the cells it covers before it starts and calls
//! [`Judged::pass`] once its judges agreed; dropped without it (the test failed), it records
//! the cells as failed. Records go to `$STRAIT_MATRIX_DIR` (one JSON line per cell and test,
//! a file per process); without the variable nothing is recorded.

use std::fmt::Write as _;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// The peer implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Peer {
    /// strongSwan 5.9.8 (Debian bookworm).
    #[serde(rename = "strongSwan 5.9.8")]
    Strongswan5,
    /// strongSwan 6.0.1 (Debian trixie).
    #[serde(rename = "strongSwan 6.0.1")]
    Strongswan6,
    /// Libreswan 4.10 (bookworm).
    #[serde(rename = "Libreswan 4.10")]
    Libreswan4,
    /// Libreswan 5.2 (trixie).
    #[serde(rename = "Libreswan 5.2")]
    Libreswan5,
}

/// How the two authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Auth {
    /// A pre-shared key.
    #[serde(rename = "PSK")]
    Psk,
    /// RSA certificates from strongSwan's `pki`.
    #[serde(rename = "RSA (pki)")]
    RsaPki,
    /// ECDSA certificates from `pki`.
    #[serde(rename = "ECDSA (pki)")]
    EcdsaPki,
    /// RSA certificates from an OpenSSL CA.
    #[serde(rename = "RSA (OpenSSL)")]
    RsaOpenssl,
    /// ECDSA certificates from an OpenSSL CA.
    #[serde(rename = "ECDSA (OpenSSL)")]
    EcdsaOpenssl,
}

/// Who starts the IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dir {
    /// The agent initiates.
    #[serde(rename = "we initiate")]
    We,
    /// The peer initiates.
    #[serde(rename = "they initiate")]
    They,
}

/// What lies between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Path {
    /// Nothing.
    #[serde(rename = "direct")]
    Direct,
    /// A NAT (nftables masquerade) in front of one side.
    #[serde(rename = "NAT")]
    Nat,
}

/// The outer address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

/// The algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Suite {
    /// AES-GCM with X25519.
    #[serde(rename = "GCM/X25519")]
    GcmX25519,
    /// AES-CBC with SHA-2 and a MODP group.
    #[serde(rename = "CBC-SHA2/MODP")]
    CbcModp,
    /// ECP-384.
    #[serde(rename = "ECP384")]
    Ecp384,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    /// The peer.
    pub peer: Peer,
    /// Authentication.
    pub auth: Auth,
    /// Who initiates.
    pub dir: Dir,
    /// NAT or not.
    pub path: Path,
    /// Outer family.
    pub family: Family,
    /// Algorithms.
    pub suite: Suite,
}

impl Cell {
    /// A cell with a PSK, direct, IPv4, GCM/X25519: the usual case, varied with the setters.
    pub fn new(peer: Peer, dir: Dir) -> Self {
        Self {
            peer,
            auth: Auth::Psk,
            dir,
            path: Path::Direct,
            family: Family::V4,
            suite: Suite::GcmX25519,
        }
    }

    /// With `auth`.
    #[must_use]
    pub fn auth(self, auth: Auth) -> Self {
        Self { auth, ..self }
    }

    /// Through a NAT.
    #[must_use]
    pub fn nat(self) -> Self {
        Self {
            path: Path::Nat,
            ..self
        }
    }

    /// With IPv6 outer addresses.
    #[must_use]
    pub fn v6(self) -> Self {
        Self {
            family: Family::V6,
            ..self
        }
    }

    /// With `suite`.
    #[must_use]
    pub fn suite(self, suite: Suite) -> Self {
        Self { suite, ..self }
    }
}

/// One cell's outcome in one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The cell.
    #[serde(flatten)]
    pub cell: Cell,
    /// The test that judged it.
    pub test: String,
    /// Whether every judge agreed.
    pub pass: bool,
}

/// Cells a test covers, recorded as failed unless [`Judged::pass`] is called.
#[derive(Debug)]
pub struct Judged {
    test: String,
    cells: Vec<Cell>,
    done: bool,
}

/// The cells the running test of test target `target` (its `module_path!()`) covers. The test
/// is named by its thread, which libtest names after it.
pub fn judge(target: &str, cells: &[Cell]) -> Judged {
    let thread = std::thread::current();
    Judged {
        test: format!("{target}::{}", thread.name().unwrap_or("main")),
        cells: cells.to_vec(),
        done: false,
    }
}

impl Judged {
    /// Every cell passed.
    pub fn pass(mut self) {
        self.done = true;
        write(&self.test, &self.cells, true);
    }
}

impl Drop for Judged {
    fn drop(&mut self) {
        if !self.done {
            write(&self.test, &self.cells, false);
        }
    }
}

fn write(test: &str, cells: &[Cell], pass: bool) {
    let Some(dir) = std::env::var_os("STRAIT_MATRIX_DIR") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let _ = std::fs::create_dir_all(dir);
    let file = dir.join(format!("{}.jsonl", std::process::id()));
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    else {
        eprintln!("interop matrix: cannot write {}", file.display());
        return;
    };
    for cell in cells {
        let r = Record {
            cell: *cell,
            test: test.to_owned(),
            pass,
        };
        if let Ok(line) = serde_json::to_string(&r) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Every record in `dir`'s `*.jsonl` files; lines that do not parse are reported and skipped.
///
/// # Errors
/// The directory cannot be read.
pub fn load(dir: &std::path::Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f)?.lines() {
            match serde_json::from_str::<Record>(line) {
                Ok(r) => out.push(r),
                Err(e) => eprintln!("interop matrix: {}: {e}: {line}", f.display()),
            }
        }
    }
    Ok(out)
}

const PEERS: [Peer; 4] = [
    Peer::Strongswan5,
    Peer::Strongswan6,
    Peer::Libreswan4,
    Peer::Libreswan5,
];
const AUTHS: [Auth; 5] = [
    Auth::Psk,
    Auth::RsaPki,
    Auth::EcdsaPki,
    Auth::RsaOpenssl,
    Auth::EcdsaOpenssl,
];
const SUITES: [Suite; 3] = [Suite::GcmX25519, Suite::CbcModp, Suite::Ecp384];

/// Why a cell no test judged was not run: one letter per reason, the legend under the table.
pub const REASONS: [(char, &str); 8] = [
    (
        'a',
        "not in CI's subset: per Libreswan version one certificate case (pluto initiating; RSA against 4.10, ECDSA P-256 against 5.2), one PSK case (the agent initiating, with rekeys) and PSK through a NAT both ways; against 5.2 also PSK over IPv6 both ways",
    ),
    (
        'b',
        "not in CI's subset: IPv6 through a NAT (NAT66) runs against 5.2 with the agent behind the NAT; NAT and IPv6 are each proven both ways",
    ),
    (
        'c',
        "not in CI's subset: certificates are proven on IPv4 without a NAT; NAT and IPv6 change only the addresses, which the PSK rows prove",
    ),
    (
        'd',
        "not in CI's subset: the suites are proven with a PSK (the proposal tables); a certificate changes only AUTH",
    ),
    (
        'e',
        "not in CI's subset: the proposal tables run with the agent initiating; as responder the same proposal selection runs, proven in memory (agent/ike/tests/handshake.rs) and with GCM/X25519 both ways",
    ),
    (
        'f',
        "not in CI's subset: the suites are proven on the direct IPv4 path; NAT and IPv6 change only the addresses",
    ),
    (
        'g',
        "not in CI's subset: each OpenSSL-made certificate runs in one direction per peer; pki certificates prove both directions",
    ),
    ('z', "no test judged it in the last run"),
];

/// The reason letter for a cell no test judged.
fn reason(c: &Cell) -> char {
    let libreswan = matches!(c.peer, Peer::Libreswan4 | Peer::Libreswan5);
    let moved = c.path == Path::Nat || c.family == Family::V6;
    let gcm = c.suite == Suite::GcmX25519;
    let psk = c.auth == Auth::Psk;
    if libreswan && psk && c.path == Path::Nat && c.family == Family::V6 {
        'b'
    } else if !psk && moved {
        'c'
    } else if libreswan {
        'a'
    } else if !psk && !gcm {
        'd'
    } else if c.dir == Dir::They && !gcm {
        'e'
    } else if psk && !gcm && moved {
        'f'
    } else if matches!(c.auth, Auth::RsaOpenssl | Auth::EcdsaOpenssl) {
        'g'
    } else {
        'z'
    }
}

/// The matrix as Markdown: a table per peer, a row per authentication × path × family, a
/// column per direction × suite. A cell says `pass` or `FAIL` with the tests that judged it as
/// a number into the list under the table, or `—` and the letter of the reason it was not run.
pub fn render(records: &[Record]) -> String {
    let mut tests: Vec<&str> = records.iter().map(|r| r.test.as_str()).collect();
    tests.sort_unstable();
    tests.dedup();
    let number = |t: &str| tests.iter().position(|x| *x == t).map_or(0, |i| i + 1);
    let mut o = String::new();
    let judged = records.len();
    let cells = PEERS.len() * AUTHS.len() * 2 * 2 * 2 * SUITES.len();
    let mut run = 0;
    let mut failed = 0;
    let mut body = String::new();
    for peer in PEERS {
        let _ = writeln!(body, "\n**{}**\n", name(&peer));
        let mut header = "| authentication | path | family |".to_owned();
        let mut rule = "| --- | --- | --- |".to_owned();
        for dir in [Dir::We, Dir::They] {
            for suite in SUITES {
                let _ = write!(header, " {}, {} |", name(&dir), name(&suite));
                rule.push_str(" --- |");
            }
        }
        let _ = writeln!(body, "{header}\n{rule}");
        for auth in AUTHS {
            for path in [Path::Direct, Path::Nat] {
                for family in [Family::V4, Family::V6] {
                    let _ = write!(
                        body,
                        "| {} | {} | {} |",
                        name(&auth),
                        name(&path),
                        name(&family)
                    );
                    for dir in [Dir::We, Dir::They] {
                        for suite in SUITES {
                            let cell = Cell {
                                peer,
                                auth,
                                dir,
                                path,
                                family,
                                suite,
                            };
                            let mine: Vec<&Record> =
                                records.iter().filter(|r| r.cell == cell).collect();
                            if mine.is_empty() {
                                let _ = write!(body, " — {} |", reason(&cell));
                                continue;
                            }
                            run += 1;
                            let ok = mine.iter().all(|r| r.pass);
                            if !ok {
                                failed += 1;
                            }
                            let mut nums: Vec<usize> =
                                mine.iter().map(|r| number(&r.test)).collect();
                            nums.sort_unstable();
                            nums.dedup();
                            let refs: Vec<String> = nums.iter().map(usize::to_string).collect();
                            let verdict = if ok { "pass" } else { "**FAIL**" };
                            let _ = write!(body, " {verdict} {} |", refs.join(","));
                        }
                    }
                    body.push('\n');
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "{run} of {cells} cells run ({failed} failed), from {judged} judgements by {} tests. \
         A cell names the tests that judged it (numbers below); `—` and a letter: not run, for \
         that reason.",
        tests.len()
    );
    o.push_str(&body);
    o.push_str("\nNot run:\n\n");
    for (letter, why) in REASONS {
        let _ = writeln!(o, "- **{letter}**: {why}");
    }
    o.push_str("\nTests:\n\n");
    for (i, t) in tests.iter().enumerate() {
        let _ = writeln!(o, "{}. `{t}`", i + 1);
    }
    o
}

/// How a dimension value is written (its serde name).
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The markers between which `docs/interop.md` holds the rendered matrix.
pub const BEGIN: &str =
    "<!-- interop-matrix:begin (generated by interop-matrix from the last run; do not edit) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- interop-matrix:end -->";

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `table`, or `None` when the
/// markers are missing.
pub fn splice(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc[start..].find(END)? + start;
    Some(format!(
        "{}\n{}\n{}",
        &doc[..start],
        table.trim_end(),
        &doc[end..]
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cells_render_with_their_tests_and_missing_ones_with_a_reason() {
        let pass = Record {
            cell: Cell::new(Peer::Strongswan5, Dir::We),
            test: "interop_charon::a".into(),
            pass: true,
        };
        let fail = Record {
            cell: Cell::new(Peer::Strongswan5, Dir::We),
            test: "interop_charon::b".into(),
            pass: false,
        };
        let t = render(std::slice::from_ref(&pass));
        assert!(t.starts_with("1 of 480 cells run (0 failed)"), "{t}");
        assert!(t.contains("| PSK | direct | IPv4 | pass 1 | — z |"), "{t}");
        // IPv6 through a NAT: run against strongSwan, not yet against pluto
        assert!(t.contains("| PSK | NAT | IPv6 | — z |"), "{t}");
        assert!(t.contains("| PSK | NAT | IPv6 | — b |"), "{t}");
        assert!(t.contains("1. `interop_charon::a`"), "{t}");
        let t = render(&[pass, fail]);
        assert!(t.contains("| PSK | direct | IPv4 | **FAIL** 1,2 |"), "{t}");
        let line = serde_json::to_string(&Record {
            cell: Cell::new(Peer::Libreswan5, Dir::They).auth(Auth::RsaPki),
            test: "t".into(),
            pass: true,
        })
        .unwrap();
        assert!(line.contains("\"peer\":\"Libreswan 5.2\""), "{line}");
        assert_eq!(
            serde_json::from_str::<Record>(&line).unwrap().cell.auth,
            Auth::RsaPki
        );
        let doc = format!("intro\n{BEGIN}\nold\n{END}\nafter\n");
        assert_eq!(
            splice(&doc, "new\n").unwrap(),
            format!("intro\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        assert!(splice("no markers", "x").is_none());
    }
}
