//! The standalone config file: one or more `IPsecTunnel` documents, exactly as a user would
//! `kubectl apply` them, checked as the API server would check them.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use strait_crds::{IPsecTunnel, validate::FieldError};

/// What is wrong with a config file, for the person who wrote it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not YAML of the right shape.
    #[error("{path}: document {index}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// Which document, counting from 1.
        index: usize,
        /// serde's message, which names the field and line.
        message: String,
    },
    /// A document is another kind of object.
    #[error(
        "{path}: document {index}: expected apiVersion strait.dev/v1alpha1 and kind IPsecTunnel, found {api_version} {kind}"
    )]
    WrongKind {
        /// The file.
        path: String,
        /// Which document, counting from 1.
        index: usize,
        /// What it said.
        api_version: String,
        /// What it said.
        kind: String,
    },
    /// A tunnel has no `metadata.name`.
    #[error("{path}: document {index}: metadata.name is required")]
    Unnamed {
        /// The file.
        path: String,
        /// Which document, counting from 1.
        index: usize,
    },
    /// Two tunnels share a name.
    #[error("{path}: tunnel {name:?} is defined twice")]
    Duplicate {
        /// The file.
        path: String,
        /// The name.
        name: String,
    },
    /// A tunnel's spec is invalid.
    #[error("{path}: tunnel {name:?}: {}", join(errors))]
    Invalid {
        /// The file.
        path: String,
        /// The tunnel.
        name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
    /// The file holds no tunnel at all.
    #[error("{path}: no IPsecTunnel documents found")]
    Empty {
        /// The file.
        path: String,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses and checks the tunnels in `text` (`path` only names the file in errors).
pub fn parse(path: &str, text: &str) -> Result<Vec<IPsecTunnel>, ConfigError> {
    let mut tunnels = Vec::new();
    let mut names = HashSet::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let syntax = |e: serde_yaml::Error| ConfigError::Syntax {
            path: path.into(),
            index,
            message: e.to_string(),
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(syntax)?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let meta: TypeMeta = serde_yaml::from_value(value.clone()).map_err(syntax)?;
        if meta.api_version != "strait.dev/v1alpha1" || meta.kind != "IPsecTunnel" {
            return Err(ConfigError::WrongKind {
                path: path.into(),
                index,
                api_version: meta.api_version,
                kind: meta.kind,
            });
        }
        let tunnel: IPsecTunnel = serde_yaml::from_value(value).map_err(syntax)?;
        let name = tunnel
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(ConfigError::Unnamed {
                path: path.into(),
                index,
            })?;
        if !names.insert(name.clone()) {
            return Err(ConfigError::Duplicate {
                path: path.into(),
                name,
            });
        }
        let errors = strait_crds::validate::validate(&tunnel.spec);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                name,
                errors,
            });
        }
        tunnels.push(tunnel);
    }
    if tunnels.is_empty() {
        return Err(ConfigError::Empty { path: path.into() });
    }
    Ok(tunnels)
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> Result<Vec<IPsecTunnel>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/examples/psk-tunnel.yaml");

    #[test]
    fn reads_several_documents() {
        let two = format!(
            "{EXAMPLE}\n---\n{}\n---\n",
            EXAMPLE.replace("dc1-to-dc2", "second")
        );
        let t = parse("t.yaml", &two).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].metadata.name.as_deref(), Some("second"));
    }

    #[test]
    fn each_mistake_gets_a_message_that_names_it() {
        let cases = [
            (format!("{EXAMPLE}\n---\n{EXAMPLE}"), "defined twice"),
            (
                EXAMPLE.replace("kind: IPsecTunnel", "kind: Secret"),
                "found strait.dev/v1alpha1 Secret",
            ),
            (
                EXAMPLE.replace("203.0.113.0/24", "203.0.113.0/33"),
                "spec.remote.subnets[0]",
            ),
            (
                EXAMPLE.replace("lifetime: 1h", "lifetime: soon"),
                "invalid duration",
            ),
            (
                EXAMPLE.replace("  name: dc1-to-dc2\n", "  labels: {}\n"),
                "metadata.name is required",
            ),
            ("key: [unclosed".to_string(), "document 1"),
            ("# nothing\n".to_string(), "no IPsecTunnel documents"),
        ];
        for (text, want) in cases {
            let e = parse("t.yaml", &text).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in {e:?}");
            assert!(e.starts_with("t.yaml"), "{e}");
        }
    }

    /// Seeded mutations of the example (YAML-significant characters, deleted and repeated
    /// spans, extreme values): `parse`, and the endpoint configuration a standalone agent then
    /// builds from each tunnel, answer every one with a value or an error that names the file,
    /// never a panic. 20,000 cases; the seed is fixed, so a failure repeats.
    #[test]
    #[allow(clippy::indexing_slicing)]
    fn mutated_configs_are_refused_or_taken_never_a_panic() {
        use strait_ike::crypto::keys::SecretBytes;
        use strait_ike::crypto::rng::{DeterministicRng, Rng};

        const TOKENS: [&str; 16] = [
            ":",
            "-",
            " ",
            "\n",
            "[",
            "]",
            "{",
            "'",
            "\"",
            "*a",
            "&a",
            "!!int",
            "~",
            "99999999999999999999",
            "-1",
            "::/0",
        ];
        const VALUES: [&str; 10] = [
            "0s",
            "1000000h",
            "0.0.0.0/0",
            "10.0.0.1/33",
            "256.1.1.1",
            "fe80::/129",
            "",
            "null",
            "[]",
            "{}",
        ];
        let mut rng = DeterministicRng::new(0x0057_417d);
        let mut draw = |n: usize| {
            let mut b = [0u8; 8];
            rng.fill(&mut b);
            (u64::from_be_bytes(b) % n.max(1) as u64) as usize
        };
        let (mut taken, mut refused) = (0, 0);
        for case in 0..20_000 {
            let mut text = EXAMPLE.as_bytes().to_vec();
            for _ in 0..1 + draw(4) {
                let at = draw(text.len() + 1);
                match draw(5) {
                    0 => {
                        let t = TOKENS[draw(TOKENS.len())].as_bytes();
                        text.splice(at..at, t.iter().copied());
                    }
                    1 => {
                        let end = (at + draw(40)).min(text.len());
                        text.drain(at..end);
                    }
                    2 => {
                        let end = (at + draw(80)).min(text.len());
                        let span = text[at..end].to_vec();
                        text.splice(at..at, span);
                    }
                    3 if at < text.len() => text[at] = b"x:- \n#{[0"[draw(9)],
                    _ => {
                        // a value after some `key: ` replaced
                        let s = String::from_utf8_lossy(&text).into_owned();
                        let keys: Vec<usize> = s.match_indices(": ").map(|(i, _)| i + 2).collect();
                        if let Some(&k) = keys.get(draw(keys.len())) {
                            let end = s[k..].find('\n').map_or(s.len(), |e| k + e);
                            let v = VALUES[draw(VALUES.len())];
                            text = format!("{}{v}{}", &s[..k], &s[end..]).into_bytes();
                        }
                    }
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                continue;
            };
            let outcome = std::panic::catch_unwind(|| match parse("m.yaml", &text) {
                Ok(tunnels) => {
                    for t in &tunnels {
                        let _ = crate::spec::peer::build(
                            &t.spec,
                            crate::spec::peer::Inputs {
                                local_ip: "192.0.2.1"
                                    .parse()
                                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                                remote_ip: "192.0.2.2"
                                    .parse()
                                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                                fallback_ips: Vec::new(),
                                ike_port: 500,
                                remote_port: 500,
                                psk: Some(SecretBytes::from_slice(b"a key")),
                                on_traffic_supported: true,
                            },
                        );
                    }
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            });
            match outcome {
                Ok(Ok(())) => taken += 1,
                Ok(Err(e)) => {
                    assert!(e.starts_with("m.yaml"), "case {case}: {e}\n{text}");
                    refused += 1;
                }
                Err(_) => panic!("case {case} panicked on:\n{text}"),
            }
        }
        // the mutations reached both outcomes in numbers
        assert!(
            taken > 1000 && refused > 5000,
            "taken {taken}, refused {refused}"
        );
    }
}
