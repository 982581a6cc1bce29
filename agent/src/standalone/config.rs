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
}
