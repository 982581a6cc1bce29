//! Placeholder until the XFRM benchmark lands.
fn main() {}
