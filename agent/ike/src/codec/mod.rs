//! The IKEv2 wire format (RFC 7296 §3): parsing that cannot panic, and serialisation.
//!
//! [`Message::parse`] turns a datagram into a typed [`Message`]; [`Message::encode`] does the
//! reverse with every length computed. Encrypted content stays opaque: [`protect`] gives the SK
//! layer the byte ranges it works on and parses the decrypted inner payloads.

// Parsing untrusted bytes must never panic: no indexing, no unwrap, even in code paths that
// "cannot" fail. Tests opt out locally.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod enums;
pub mod error;
pub mod header;
pub mod message;
pub mod natt;
pub mod payload;
pub mod protect;
pub mod reader;
pub mod writer;

pub use enums::*;
pub use error::{DecodeError, EncodeError};
pub use header::{Flags, HEADER_LEN, Header, Spi, WireHeader};
pub use message::Message;
pub use natt::{NAT_KEEPALIVE, Udp4500, classify_udp4500, with_non_esp_marker};
pub use payload::*;
pub use protect::{
    Fragment, SkLayout, SkSizes, encode_inner, encode_protected, pad, parse_inner, strip_padding,
};
