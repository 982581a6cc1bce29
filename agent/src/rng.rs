//! The OS random number generator handed to the sans-IO IKE endpoint.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// The operating system's CSPRNG (through aws-lc-rs).
#[derive(Debug, Default)]
pub struct OsRng(SystemRandom);

impl OsRng {
    /// A handle on the OS generator.
    pub fn new() -> Self {
        Self(SystemRandom::new())
    }
}

impl strait_ike::crypto::rng::Rng for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for _ in 0..3 {
            if self.0.fill(buf).is_ok() {
                return;
            }
        }
        // Without randomness no SPI, nonce or key can be made safely: stop the process rather
        // than continue with predictable values.
        tracing::error!("the OS random number generator failed; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_ike::crypto::rng::Rng;

    #[test]
    fn fills_with_different_output() {
        let mut r = OsRng::new();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        r.fill(&mut a);
        r.fill(&mut b);
        assert_ne!(a, b);
    }
}
