//! Internals reachable by the fuzz targets only (`--features fuzzing`): fragment reassembly,
//! which the other targets reach only behind an SK decryption.

use zeroize::Zeroizing;

use crate::codec::{ExchangeType, Fragment, PayloadType};
use crate::sa::fragments::{self, Added};

/// The most fragments and plaintext octets one message may have.
pub const MAX_FRAGMENTS: u16 = fragments::MAX_FRAGMENTS;
/// See [`MAX_FRAGMENTS`].
pub const MAX_MESSAGE_LEN: usize = fragments::MAX_MESSAGE_LEN;

/// An IKE SA's fragment reassembly ([`crate::sa`]'s, as the SA uses it).
#[derive(Debug, Default)]
pub struct Reassembly(fragments::Reassembly);

/// What became of a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept, or a duplicate ignored.
    Pending,
    /// Over a limit or inconsistent.
    Refused,
    /// The whole message: its first payload type and plaintext.
    Complete(PayloadType, Vec<u8>),
}

impl Reassembly {
    /// Adds one authenticated fragment, as the SA does after its ICV checked out.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        response: bool,
        message_id: u32,
        exchange: ExchangeType,
        fragment: Fragment,
        first_payload: PayloadType,
        plain: &[u8],
        max_len: usize,
    ) -> Outcome {
        match self.0.add(
            response,
            message_id,
            exchange,
            fragment,
            first_payload,
            Zeroizing::new(plain.to_vec()),
            max_len,
        ) {
            Added::Pending => Outcome::Pending,
            Added::Refused => Outcome::Refused,
            Added::Complete(t, p) => Outcome::Complete(t, p.to_vec()),
        }
    }
}
