//! Saved IKE state on node-local storage (`--state-dir`), so that a restarted agent resumes its
//! tunnels' IKE and CHILD SAs instead of negotiating again (#15).
//!
//! One file per tunnel, `<dir>/<tunnel>.ike`, mode 0600 in a 0700 directory, replaced
//! atomically (written beside it, then renamed). It holds the tunnel's index (its kernel
//! objects are numbered by it), a digest of the tunnel's definition (a tunnel changed while the
//! agent was away is negotiated anew), and strait-ike's saved form, which carries the IKE keys:
//! keep the directory on tmpfs (`/run`), so it never reaches a disk and is gone at reboot,
//! together with the kernel SAs it belongs to.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::spec::TunnelDef;

const MAGIC: &[u8; 8] = b"STRAITAG";
/// Version 2 added [`Times`]; version 1 files are still read (without them).
const VERSION: u8 = 2;
const SUFFIX: &str = ".ike";
/// Octets of a tunnel definition's digest.
pub(crate) const DIGEST_LEN: usize = 32;

/// What one tunnel's file holds.
pub(crate) struct Saved {
    /// The tunnel's name.
    pub name: String,
    /// The tunnel's index when it was saved.
    pub index: u32,
    /// [`digest`] of its definition then.
    pub digest: [u8; DIGEST_LEN],
    /// When its SAs were established.
    pub times: Times,
    /// `strait_ike::Endpoint::save`'s bytes.
    pub ike: Zeroizing<Vec<u8>>,
}

/// When a tunnel's SAs were established (unix milliseconds), which strait-ike's saved form does
/// not carry: a resumed tunnel shows them again instead of the time of the restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Times {
    /// The IKE SA's.
    pub ike: Option<i64>,
    /// Each CHILD SA's, by its inbound SPI as the status spells it.
    pub children: Vec<(String, i64)>,
}

impl Times {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ike.unwrap_or(i64::MIN).to_be_bytes());
        let children: Vec<&(String, i64)> = self
            .children
            .iter()
            .filter(|(spi, _)| spi.len() <= usize::from(u8::MAX))
            .take(usize::from(u8::MAX))
            .collect();
        out.push(u8::try_from(children.len()).unwrap_or(u8::MAX));
        for (spi, ms) in children {
            out.push(u8::try_from(spi.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(spi.as_bytes());
            out.extend_from_slice(&ms.to_be_bytes());
        }
    }

    fn decode(rest: &[u8]) -> Result<(Self, &[u8]), &'static str> {
        let (ike, mut rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let ike = Some(i64::from_be_bytes(*ike)).filter(|ms| *ms != i64::MIN);
        let (&n, r) = rest.split_first().ok_or("truncated")?;
        rest = r;
        let mut children = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let (&len, r) = rest.split_first().ok_or("truncated")?;
            let (spi, r) = r.split_at_checked(usize::from(len)).ok_or("truncated")?;
            let (ms, r) = r.split_first_chunk::<8>().ok_or("truncated")?;
            let spi = String::from_utf8(spi.to_vec()).map_err(|_| "an SPI not in UTF-8")?;
            children.push((spi, i64::from_be_bytes(*ms)));
            rest = r;
        }
        Ok((Self { ike, children }, rest))
    }
}

impl core::fmt::Debug for Saved {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Saved")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The directory of saved state.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

/// A digest of what makes a tunnel the same tunnel: its spec and its secrets' digest.
pub(crate) fn digest(def: &TunnelDef) -> [u8; DIGEST_LEN] {
    let spec = serde_json::to_vec(&def.spec).unwrap_or_default();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(spec.len() as u64).to_be_bytes());
    ctx.update(&spec);
    ctx.update(&def.secret_digest);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The file name for a tunnel: its name where that is a plain file name (every Kubernetes
/// name is), else the name in hex.
fn file_name(tunnel: &str) -> String {
    let plain = !tunnel.is_empty()
        && !tunnel.starts_with('.')
        && tunnel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if plain {
        format!("{tunnel}{SUFFIX}")
    } else {
        let hex: String = tunnel.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}{SUFFIX}")
    }
}

impl StateDir {
    /// Opens (creating, 0700) the directory.
    ///
    /// # Errors
    /// It cannot be created, or it is not a directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // an existing directory keeps its mode unless we tighten it
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, tunnel: &str) -> PathBuf {
        self.dir.join(file_name(tunnel))
    }

    /// Replaces the tunnel's file.
    ///
    /// # Errors
    /// Writing or renaming failed.
    pub fn store(
        &self,
        tunnel: &str,
        index: u32,
        digest: &[u8; DIGEST_LEN],
        times: &Times,
        ike: &[u8],
    ) -> std::io::Result<()> {
        let name = tunnel.as_bytes();
        let name_len =
            u16::try_from(name.len()).map_err(|_| std::io::Error::other("tunnel name too long"))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(
            MAGIC.len() + 7 + name.len() + DIGEST_LEN + ike.len(),
        ));
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&name_len.to_be_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(digest);
        times.encode(&mut buf);
        buf.extend_from_slice(ike);
        let path = self.path(tunnel);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&buf)?;
        drop(f);
        std::fs::rename(&tmp, &path)
    }

    /// The tunnel's file, if there is one (the agent reads them all at once: [`Self::load_all`]).
    ///
    /// # Errors
    /// It exists but cannot be read, is not a saved-state file of this version, or is another
    /// tunnel's (the message says which).
    #[cfg(test)]
    pub fn load(&self, tunnel: &str) -> Result<Option<Saved>, String> {
        match read(&self.path(tunnel))? {
            Some(s) if s.name == tunnel => Ok(Some(s)),
            Some(_) => Err("the file names another tunnel".into()),
            None => Ok(None),
        }
    }

    /// Every tunnel's file, by tunnel name. A file that is refused is removed (and logged):
    /// its tunnel negotiates anew.
    pub fn load_all(&self) -> std::collections::HashMap<String, Saved> {
        let mut out = std::collections::HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            let file = e.file_name().to_string_lossy().into_owned();
            if !file.ends_with(SUFFIX) {
                continue;
            }
            let result = read(&path).and_then(|s| match s {
                Some(s) if file_name(&s.name) == file => Ok(Some(s)),
                Some(_) => Err("the file names another tunnel".into()),
                None => Ok(None),
            });
            match result {
                Ok(Some(s)) => {
                    out.insert(s.name.clone(), s);
                }
                Ok(None) => {}
                Err(why) => {
                    tracing::warn!(file = %path.display(), error = %why, "saved IKE state refused; its tunnel negotiates anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }

    /// Removes the tunnel's file (nothing if there is none).
    pub fn remove(&self, tunnel: &str) {
        match std::fs::remove_file(self.path(tunnel)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(tunnel, error = %e, "removing saved IKE state"),
        }
    }

    /// Removes every file of a tunnel not in `keep` (tunnels gone while the agent was away).
    pub fn remove_others<'a>(&self, keep: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<String> = keep.into_iter().map(file_name).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(SUFFIX) || name.ends_with(".tmp");
            if ours && !keep.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads one file: `None` if there is none.
fn read(path: &Path) -> Result<Option<Saved>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a saved-state file (wrong magic)")?;
    let (&version, rest) = rest.split_first().ok_or("truncated")?;
    if version != VERSION && version != 1 {
        return Err(format!(
            "saved by format version {version}, this agent reads 1 to {VERSION}"
        ));
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or("truncated")?;
    let (name, rest) = rest
        .split_at_checked(usize::from(u16::from_be_bytes(*len)))
        .ok_or("truncated")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| "a tunnel name not in UTF-8")?;
    let (index, rest) = rest.split_first_chunk::<4>().ok_or("truncated")?;
    let (digest, rest) = rest.split_first_chunk::<DIGEST_LEN>().ok_or("truncated")?;
    let (times, ike) = if version == 1 {
        (Times::default(), rest)
    } else {
        Times::decode(rest)?
    };
    Ok(Some(Saved {
        name,
        index: u32::from_be_bytes(*index),
        digest: *digest,
        times,
        ike: Zeroizing::new(ike.to_vec()),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_round_trips_root_only_and_bad_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = StateDir::open(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert!(s.load("t1").unwrap().is_none());
        let times = Times {
            ike: Some(1_796_000_000_123),
            children: vec![("c0ffee01".into(), 1_796_000_000_456), ("beef".into(), -1)],
        };
        s.store("t1", 7, &[3; DIGEST_LEN], &times, b"ike bytes")
            .unwrap();
        assert_eq!(mode(&dir.join("t1.ike")), 0o600);
        let got = s.load("t1").unwrap().unwrap();
        assert_eq!(
            (got.index, got.digest, &got.times, &got.ike[..]),
            (7, [3; DIGEST_LEN], &times, &b"ike bytes"[..])
        );
        // replaced, not appended
        s.store("t1", 8, &[4; DIGEST_LEN], &Times::default(), b"newer")
            .unwrap();
        let got = s.load("t1").unwrap().unwrap();
        assert_eq!(
            (&got.times, &got.ike[..]),
            (&Times::default(), &b"newer"[..])
        );
        // a version 1 file (before the times) is still read
        let mut v1 = b"STRAITAG\x01\x00\x02v1".to_vec();
        v1.extend_from_slice(&9u32.to_be_bytes());
        v1.extend_from_slice(&[5; DIGEST_LEN]);
        v1.extend_from_slice(b"old ike");
        std::fs::write(dir.join("v1.ike"), &v1).unwrap();
        let got = s.load("v1").unwrap().unwrap();
        assert_eq!(
            (got.index, &got.times, &got.ike[..]),
            (9, &Times::default(), &b"old ike"[..])
        );
        s.remove("v1");
        // times cut short are refused, not misread as IKE bytes
        let mut cut = b"STRAITAG\x02\x00\x02v2".to_vec();
        cut.extend_from_slice(&9u32.to_be_bytes());
        cut.extend_from_slice(&[5; DIGEST_LEN]);
        cut.extend_from_slice(&1i64.to_be_bytes());
        cut.extend_from_slice(&[3, 8]);
        std::fs::write(dir.join("v2.ike"), &cut).unwrap();
        assert!(s.load("v2").unwrap_err().contains("truncated"));
        s.remove("v2");

        std::fs::write(dir.join("t2.ike"), b"garbage").unwrap();
        assert!(s.load("t2").unwrap_err().contains("wrong magic"));
        std::fs::write(dir.join("t3.ike"), b"STRAITAG\x09").unwrap();
        assert!(s.load("t3").unwrap_err().contains("version 9"));
        std::fs::write(dir.join("t4.ike"), b"STRAITAG\x01\x00\x00").unwrap();
        assert!(s.load("t4").unwrap_err().contains("truncated"));
        // another tunnel's file under this name
        std::fs::copy(dir.join("t1.ike"), dir.join("t5.ike")).unwrap();
        assert!(s.load("t5").unwrap_err().contains("another tunnel"));
        s.store("../evil/x", 1, &[0; DIGEST_LEN], &Times::default(), b"x")
            .unwrap();

        // all at once: the good ones by name; the refused ones removed
        let all = s.load_all();
        let mut names: Vec<_> = all.keys().cloned().collect();
        names.sort();
        assert_eq!(names, vec!["../evil/x".to_string(), "t1".to_string()]);
        for bad in ["t2", "t3", "t4", "t5"] {
            assert!(!dir.join(format!("{bad}.ike")).exists(), "{bad} kept");
        }

        // a name that is no plain file name stays inside the directory
        s.store("../evil/x", 1, &[0; DIGEST_LEN], &Times::default(), b"x")
            .unwrap();
        assert!(s.load("../evil/x").unwrap().is_some());
        assert!(!tmp.path().join("evil").exists());

        s.remove_others(["t1"]);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["t1.ike".to_string()]);
        s.remove("t1");
        s.remove("t1");
        assert!(s.load("t1").unwrap().is_none());
    }
}
