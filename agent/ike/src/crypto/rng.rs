//! Randomness is an input: the driver passes the OS RNG, tests pass a deterministic one.

use aws_lc_rs::digest;

/// A source of random octets. The agent's driver implements this over the OS CSPRNG
/// (e.g. `aws_lc_rs::rand::SystemRandom`); the sans-IO core never reaches for one itself.
pub trait Rng {
    /// Fills `buf` entirely with random octets.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<R: Rng + ?Sized> Rng for &mut R {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf)
    }
}

/// A deterministic generator for tests and simulations: SHA-256 in counter mode over a seed.
///
/// Not for production: its output is fully determined by the seed.
#[derive(Debug, Clone)]
pub struct DeterministicRng {
    seed: [u8; 32],
    counter: u64,
}

impl DeterministicRng {
    /// A generator whose whole output stream is a function of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        let d = digest::digest(&digest::SHA256, &seed.to_be_bytes());
        s.copy_from_slice(d.as_ref());
        Self {
            seed: s,
            counter: 0,
        }
    }
}

impl Rng for DeterministicRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(32) {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(&self.seed);
            ctx.update(&self.counter.to_be_bytes());
            self.counter = self.counter.wrapping_add(1);
            let block = ctx.finish();
            for (dst, src) in chunk.iter_mut().zip(block.as_ref()) {
                *dst = *src;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let (mut a, mut b, mut c) = (
            DeterministicRng::new(1),
            DeterministicRng::new(1),
            DeterministicRng::new(2),
        );
        let (mut x, mut y, mut z) = ([0u8; 70], [0u8; 70], [0u8; 70]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x[..32], x[32..64]);
    }
}
