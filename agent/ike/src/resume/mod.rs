//! Saved IKE SAs, so that a new process resumes them instead of negotiating again
//! ([`crate::Endpoint::save`], [`crate::Endpoint::resume`]).
//!
//! The format is this crate's own and versioned: a magic, a version octet, the wall-clock time
//! of saving (timers are relative to it), the SAs, and a SHA-256 of all that, so a truncated or
//! corrupted file is refused with a clear error before anything is used. It holds the IKE SA's
//! keys: whoever stores it must keep it where only the agent can read it. It never leaves
//! the node and never holds a PSK or a private key of a certificate.

pub(crate) mod record;
pub(crate) mod wire;

use zeroize::Zeroizing;

/// The saved IKE SAs of one tunnel, as [`crate::Endpoint::save`] gives them. Zeroized when
/// dropped.
pub struct SavedState {
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    pub(crate) ike_sas: usize,
}

impl core::fmt::Debug for SavedState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SavedState")
            .field("ike_sas", &self.ike_sas)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl SavedState {
    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many IKE SAs it holds (established ones only: see [`crate::Endpoint::save`]).
    pub fn ike_sas(&self) -> usize {
        self.ike_sas
    }
}

/// What [`crate::Endpoint::resume`] took back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resumed {
    /// IKE SAs.
    pub ike_sas: usize,
    /// CHILD SAs (each reported as [`crate::Event::ChildSaResumed`]).
    pub child_sas: usize,
}

/// Why saved state was refused. Nothing of it was used; the messages never hold key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Not saved IKE state at all.
    #[error("not a saved IKE state (wrong magic)")]
    NotSavedState,
    /// Saved by a version of the format this one does not read.
    #[error("saved IKE state of format version {0}, this agent reads version {VERSION}")]
    Version(u8),
    /// The checksum does not match: truncated or changed since it was written.
    #[error("saved IKE state is corrupted (checksum mismatch)")]
    Checksum,
    /// It parses, but this field is out of range or inconsistent.
    #[error("saved IKE state is malformed: {0}")]
    Malformed(&'static str),
    /// The endpoint has no wall clock ([`crate::Endpoint::set_wall_clock`]), which timers
    /// are saved against.
    #[error("the wall clock is not set")]
    ClockUnset,
    /// No such tunnel in this endpoint.
    #[error("no such tunnel")]
    UnknownPeer,
    /// An IKE SA with the same SPI of ours exists already.
    #[error("an IKE SA with the saved SPI exists already")]
    SpiInUse,
}

/// The first octets of saved state.
pub(crate) const MAGIC: &[u8; 8] = b"STRAITSA";
/// The format version written. Version 2 adds each IKE SA's hard-lifetime and
/// reauthentication times; version 1
/// (written by the agent before it) is still read, so an upgrade resumes its SAs too.
pub(crate) const VERSION: u8 = 2;
/// The oldest version read.
pub(crate) const OLDEST: u8 = 1;
/// Octets of the trailing SHA-256.
pub(crate) const CHECKSUM_LEN: usize = 32;

pub(crate) fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Splits saved bytes into their format version and the body after the magic and version,
/// checking all three and the checksum.
pub(crate) fn open(bytes: &[u8]) -> Result<(u8, &[u8]), ResumeError> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(ResumeError::NotSavedState);
    };
    let Some((&version, _)) = rest.split_first() else {
        return Err(ResumeError::Malformed("version"));
    };
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(ResumeError::Version(version));
    }
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(ResumeError::Checksum);
    };
    let (signed, sum) = bytes.split_at(split);
    match signed.get(MAGIC.len() + 1..) {
        Some(body) if checksum(signed) == sum => Ok((version, body)),
        _ => Err(ResumeError::Checksum),
    }
}
