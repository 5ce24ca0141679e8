//! Test helpers shared by the engine's kernel tests: a small seeded PRNG and a closeness check.

use super::tensor::Tensor;

/// SplitMix64: tiny, seeded, good enough to fill test tensors reproducibly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }

    pub fn tensor(&mut self, shape: [usize; 4]) -> Tensor {
        Tensor::new(shape, self.vec(shape.iter().product()))
    }
}

/// Asserts `got` ≈ `want` elementwise: |g - w| ≤ rel · max(|w|, scale), where `scale` is the largest
/// |w| (so values near zero, which come from cancellation, are judged on the data's magnitude).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(scale * 0.1);
        assert!((g as f64 - w).abs() <= tol, "{what}: element {i}: got {g}, want {w} (tol {tol:e})");
    }
}
