//! A small seeded random number generator (SplitMix64) for weight initialisation and shuffling.
//!
//! Written out here rather than taken from `rand` because its output must never change: the same
//! job and seed must give identical weights on every build, and `make-models` must regenerate the
//! bundled models byte for byte. Only integer arithmetic and correctly rounded `sqrt` are used.

/// SplitMix64 (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[-limit, limit)`.
    pub fn symmetric(&mut self, limit: f64) -> f64 {
        (2.0 * self.next_f64() - 1.0) * limit
    }

    /// Uniform in `0..n` (`n > 0`), by the multiply-shift reduction.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// He (Kaiming) uniform initialisation of a `[fan_in, fan_out]` weight matrix, row-major:
    /// `U(-sqrt(6 / fan_in), sqrt(6 / fan_in))`.
    pub fn he_uniform(&mut self, fan_in: usize, fan_out: usize) -> Vec<f32> {
        let limit = (6.0 / fan_in as f64).sqrt();
        (0..fan_in * fan_out)
            .map(|_| self.symmetric(limit) as f32)
            .collect()
    }

    /// Glorot (Xavier) uniform initialisation: `U(-sqrt(6 / (fan_in + fan_out)), ..)`.
    pub fn glorot_uniform(&mut self, fan_in: usize, fan_out: usize) -> Vec<f32> {
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
        (0..fan_in * fan_out)
            .map(|_| self.symmetric(limit) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sequence() {
        // Reference values of SplitMix64 seeded with 0.
        let mut rng = SeededRng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_and_shuffle_stay_in_range() {
        let mut rng = SeededRng::new(7);
        for n in 1..50 {
            assert!(rng.below(n) < n);
        }
        let mut v: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn he_uniform_within_limit() {
        let mut rng = SeededRng::new(1);
        let w = rng.he_uniform(6, 10);
        assert_eq!(w.len(), 60);
        assert!(w.iter().all(|x| x.abs() <= 1.0));
    }
}
