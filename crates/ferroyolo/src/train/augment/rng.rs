//! A small, self-contained pseudo-random generator for the augmentation pipeline.
//!
//! Reproducibility is the point: every sample draws from its own stream, keyed by
//! (seed, epoch, image index, purpose), so what a sample looks like never depends on which thread
//! built it or in what order. The generator is xoshiro256** (Blackman and Vigna), seeded through
//! SplitMix64; both are public domain algorithms, tiny, fast, and statistically far better than
//! augmentation needs. Writing them here avoids a dependency whose stream could change between
//! versions and silently alter a seeded run.

/// SplitMix64 step: advances `state` and returns a well-mixed 64-bit value.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** generator.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose stream is a function of `key` only. Each word is folded in through
    /// SplitMix64, so keys that differ in any word (e.g. consecutive epochs) give unrelated streams.
    pub fn keyed(key: &[u64]) -> Self {
        let mut h = 0x6A09_E667_F3BC_C908u64; // any fixed non-zero start
        for &k in key {
            let mut st = h ^ k;
            h = splitmix64(&mut st);
        }
        let mut st = h;
        let s = [splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st)];
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits, like Python's `random.random()`.
    pub fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `a + (b - a) * random()`, the definition of Python's `random.uniform(a, b)`.
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.random()
    }

    /// Uniform integer in `0..n` without modulo bias (Lemire's multiply-and-reject); `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let threshold = n.wrapping_neg() % n; // 2^64 mod n
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_are_repeatable_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| 0).scan(Rng::keyed(&[1, 2, 3]), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).map(|_| 0).scan(Rng::keyed(&[1, 2, 3]), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..4).map(|_| 0).scan(Rng::keyed(&[1, 2, 4]), |r, _| Some(r.next_u64())).collect();
        let d: Vec<u64> = (0..4).map(|_| 0).scan(Rng::keyed(&[2, 1, 3]), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d, "key order must matter");
    }

    #[test]
    fn uniform_and_below_have_the_right_range_and_mean() {
        let mut r = Rng::keyed(&[7]);
        let n = 200_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let u = r.uniform(-1.0, 3.0);
            assert!((-1.0..3.0).contains(&u));
            sum += u;
        }
        assert!((sum / n as f64 - 1.0).abs() < 0.01, "mean {}", sum / n as f64);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::keyed(&[3]).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
