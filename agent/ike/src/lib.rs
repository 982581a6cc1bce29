//! `strait-ike`: a sans-IO IKEv2 implementation (RFC 7296).
//!
//! Nothing in this crate performs I/O, reads a clock or draws OS randomness: time and randomness
//! are passed in by the driver, so every exchange can be tested deterministically on a simulated
//! clock (the quinn-proto model).

pub mod codec;
pub mod crypto;
pub mod proposal;
