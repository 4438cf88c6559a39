//! Choosing the next token from a row's logits: greedy at temperature 0, else sampled after
//! temperature, top-k and top-p, from a generator seeded per job (the same seed gives the same
//! tokens, on any worker and after a redelivery).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How one job picks its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0: greedy (the first of the largest logits).
    pub temperature: f32,
    /// 0: no top-k cut.
    pub top_k: usize,
    /// 1: no nucleus cut.
    pub top_p: f32,
    /// `None`: seeded from the operating system.
    pub seed: Option<u64>,
}

/// A job's sampler: its parameters and its random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Candidate ids and weights, kept between tokens.
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            scratch: Vec::new(),
        }
    }

    /// The next token of a row with `logits` (one per vocabulary entry). NaN counts as the
    /// smallest value, so a broken row still yields a token id inside the vocabulary.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.extend(logits.iter().enumerate().map(|(i, &l)| {
            (
                i as u32,
                if l.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    l * inv_t
                },
            )
        }));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < scratch.len() {
            scratch.select_nth_unstable_by(k - 1, by_logit);
            scratch.truncate(k);
        }
        let nucleus = self.params.top_p < 1.0;
        if nucleus {
            scratch.sort_unstable_by(by_logit);
        }
        let max = scratch
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return argmax(logits);
        }
        let mut total = 0.0f64;
        for c in scratch.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += f64::from(c.1);
        }
        if nucleus {
            // The smallest prefix (by probability) holding top_p of the mass; at least one.
            let want = f64::from(self.params.top_p) * total;
            let mut mass = 0.0;
            let mut keep = scratch.len();
            for (i, c) in scratch.iter().enumerate() {
                mass += f64::from(c.1);
                if mass >= want {
                    keep = i + 1;
                    break;
                }
            }
            scratch.truncate(keep);
            total = mass.min(total);
        }
        let mut draw = self.rng.random::<f64>() * total;
        for c in scratch.iter() {
            draw -= f64::from(c.1);
            if draw < 0.0 {
                return c.0;
            }
        }
        scratch.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// The index of the first largest value (NaN never wins).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
        }
    }

    #[test]
    fn greedy_takes_the_first_largest_and_skips_nan() {
        let mut s = Sampler::new(params(0.0, 0, 1.0, 1));
        assert_eq!(s.next(&[0.1, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(s.next(&[f32::NAN, -1.0]), 1);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..64).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_likeliest() {
        let logits = [0.0, 5.0, 4.9, -3.0, 4.8];
        let mut k = Sampler::new(params(1.0, 2, 1.0, 3));
        for _ in 0..200 {
            assert!(matches!(k.next(&logits), 1 | 2));
        }
        // Tokens 1 and 2 hold 37% and 33% of the mass, token 4 30%: top_p 0.5 keeps 1 and 2.
        let mut p = Sampler::new(params(1.0, 0, 0.5, 3));
        let drawn: Vec<u32> = (0..300).map(|_| p.next(&logits)).collect();
        assert!(drawn.iter().all(|&t| t == 1 || t == 2), "{drawn:?}");
        assert!(drawn.contains(&1) && drawn.contains(&2));
        let mut all = Sampler::new(params(1.0, 0, 1.0, 3));
        assert!((0..300).any(|_| all.next(&logits) == 4));
    }
}
