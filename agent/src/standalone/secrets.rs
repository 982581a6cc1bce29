//! Secrets from a directory laid out like a mounted Secret volume: `DIR/<name>/<key>`.

use std::path::{Path, PathBuf};

use strait_crds::SecretKeyRef;
use zeroize::Zeroizing;

use crate::spec::SecretSource;

/// Secret bytes; zeroized when dropped, never printed.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// The bytes, for the crypto that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Why a secret could not be read. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The name or key would leave the secrets directory.
    #[error("secretRef {name}/{key} is not a plain name (no '/', '..' or empty parts allowed)")]
    BadName {
        /// Secret name.
        name: String,
        /// Key in the secret.
        key: String,
    },
    /// The file is missing or unreadable.
    #[error("cannot read secret {name}/{key} from {path}: {source}")]
    Unreadable {
        /// Secret name.
        name: String,
        /// Key in the secret.
        key: String,
        /// The file tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("secret {name}/{key} at {path} is empty")]
    Empty {
        /// Secret name.
        name: String,
        /// Key in the secret.
        key: String,
        /// The file read.
        path: PathBuf,
    },
}

fn plain(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains('/') && !part.contains('\0')
}

/// Reads `dir/name/key`. One trailing newline is dropped, because a key file written by hand
/// with `echo` has one and a Secret created with `--from-literal` has none; both should work.
pub fn read(dir: &Path, r: &SecretKeyRef) -> Result<SecretBytes, SecretError> {
    if !plain(&r.name) || !plain(&r.key) {
        return Err(SecretError::BadName {
            name: r.name.clone(),
            key: r.key.clone(),
        });
    }
    let path = dir.join(&r.name).join(&r.key);
    let mut bytes =
        Zeroizing::new(
            std::fs::read(&path).map_err(|source| SecretError::Unreadable {
                name: r.name.clone(),
                key: r.key.clone(),
                path: path.clone(),
                source,
            })?,
        );
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(SecretError::Empty {
            name: r.name.clone(),
            key: r.key.clone(),
            path,
        });
    }
    Ok(SecretBytes(bytes))
}

/// Secrets from `--secrets-dir` (`DIR/<name>/<key>`), for the spec mapping.
#[derive(Debug)]
pub struct DirSecrets<'a>(pub &'a Path);

impl SecretSource for DirSecrets<'_> {
    fn read(&mut self, r: &SecretKeyRef) -> Result<Zeroizing<Vec<u8>>, String> {
        read(self.0, r)
            .map(|s| Zeroizing::new(s.expose().to_vec()))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn reads_and_never_prints_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dc2-psk")).unwrap();
        std::fs::write(dir.path().join("dc2-psk/psk"), "s3cret-value\n").unwrap();
        let s = read(dir.path(), &r("dc2-psk", "psk")).unwrap();
        assert_eq!(s.expose(), b"s3cret-value");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_escapes_missing_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(dir.path(), &r("..", "etc")),
            Err(SecretError::BadName { .. })
        ));
        assert!(matches!(
            read(dir.path(), &r("a", "b/c")),
            Err(SecretError::BadName { .. })
        ));
        let e = read(dir.path(), &r("nope", "psk")).unwrap_err().to_string();
        assert!(e.contains("nope/psk"), "{e}");
        std::fs::create_dir(dir.path().join("e")).unwrap();
        std::fs::write(dir.path().join("e/k"), "\n").unwrap();
        assert!(matches!(
            read(dir.path(), &r("e", "k")),
            Err(SecretError::Empty { .. })
        ));
    }
}
