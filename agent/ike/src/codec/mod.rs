//! The IKEv2 wire format (RFC 7296 §3): parsing that cannot panic, and serialisation.

pub mod enums;
