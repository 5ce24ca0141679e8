//! Muon's orthogonalisation: the quintic Newton–Schulz iteration that maps a matrix towards
//! the nearest semi-orthogonal one (roughly `U Vᵀ` of its SVD, singular values pushed into
//! about [0.7, 1.2]).
//!
//! The reference casts to bfloat16 before iterating; this runs in `f32`. The bfloat16 result
//! is within about 1–2 % (relative Frobenius norm) of the `f32` one for the shapes YOLO26 has,
//! which is the rounding noise of bfloat16 itself, so `f32` is the more faithful evaluation of
//! the same function rather than a different one.

use gemm::{gemm, Parallelism};

/// Iterations of the quintic.
pub const NS_STEPS: usize = 5;
/// The quintic's coefficients (a, b, c): X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ.
pub const NS_COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
/// Added to the Frobenius norm before normalising.
pub const NS_EPS: f32 = 1e-7;

/// Above this many multiply-adds per product the matrix products use all threads.
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// Orthogonalises the `rows × cols` row-major matrix `g` (a conv weight flattened to
/// `(out, in·kh·kw)`), returning the result in the same layout.
///
/// As the reference: divide by (‖g‖_F + 1e-7); work on the wide orientation (transpose when
/// `rows > cols`, so the Gram matrix is the smaller one); run [`NS_STEPS`] iterations; transpose
/// back. The caller applies Muon's shape scale.
pub fn newton_schulz(g: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(g.len(), rows * cols, "newton_schulz: {rows}x{cols} matrix expected");
    if g.is_empty() {
        return Vec::new();
    }
    let norm = g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32;
    let inv = norm + NS_EPS;
    let transpose = rows > cols;
    // x is m × n with m ≤ n, row-major.
    let (m, n) = if transpose { (cols, rows) } else { (rows, cols) };
    let mut x = vec![0f32; m * n];
    if transpose {
        for r in 0..rows {
            for c in 0..cols {
                x[c * n + r] = g[r * cols + c] / inv;
            }
        }
    } else {
        for (d, &s) in x.iter_mut().zip(g) {
            *d = s / inv;
        }
    }
    let par = if m * m * n >= PARALLEL_MIN_FLOPS { Parallelism::Rayon(0) } else { Parallelism::None };
    let (a, b, c) = NS_COEFFICIENTS;
    let mut gram = vec![0f32; m * m];
    let mut poly = vec![0f32; m * m];
    let mut next = vec![0f32; m * n];
    for _ in 0..NS_STEPS {
        // gram = x·xᵀ
        matmul(&mut gram, None, &x, Rhs::Transposed(&x), 1.0, (m, m, n), par);
        // poly = b·gram + c·gram²
        poly.copy_from_slice(&gram);
        matmul(&mut poly, Some(b), &gram, Rhs::Plain(&gram), c, (m, m, m), par);
        // next = a·x + poly·x
        next.copy_from_slice(&x);
        matmul(&mut next, Some(a), &poly, Rhs::Plain(&x), 1.0, (m, n, m), par);
        std::mem::swap(&mut x, &mut next);
    }
    if !transpose {
        return x;
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = x[c * n + r];
        }
    }
    out
}

/// The right operand of [`matmul`]: a row-major `k × n` matrix, or the transpose of a
/// row-major `n × k` one.
enum Rhs<'a> {
    Plain(&'a [f32]),
    Transposed(&'a [f32]),
}

/// `dst ← keep·dst + scale·lhs·rhs` (`dst` not read when `keep` is `None`) for row-major
/// `lhs` (m × k) and `dst` (m × n).
fn matmul(
    dst: &mut [f32],
    keep: Option<f32>,
    lhs: &[f32],
    rhs: Rhs<'_>,
    scale: f32,
    (m, n, k): (usize, usize, usize),
    par: Parallelism,
) {
    let (rhs, rhs_cs, rhs_rs) = match rhs {
        Rhs::Plain(r) => (r, 1, n as isize),
        Rhs::Transposed(r) => (r, k as isize, 1),
    };
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n, "matmul: operand sizes");
    // SAFETY: the asserts above bound every access (row-major strides within the slices), and
    // `dst` is a unique borrow, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            keep.is_some(),
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            keep.unwrap_or(0.0),
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// Muon's per-tensor scale `√max(1, size(−2)/size(−1))` of the parameter's own shape: for a
/// matrix its aspect ratio, for a conv weight `kh/kw` (1 for square kernels).
pub fn muon_shape_scale(shape: &[usize]) -> f64 {
    let k = shape.len();
    if k < 2 {
        return 1.0;
    }
    (shape[k - 2] as f64 / shape[k - 1] as f64).max(1.0).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward triple-loop evaluation of the same iteration, in f64.
    fn reference(g: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let norm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() + NS_EPS as f64;
        let t = rows > cols;
        let (m, n) = if t { (cols, rows) } else { (rows, cols) };
        let mut x: Vec<f64> = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (if t { g[c * cols + r] } else { g[r * cols + c] }) as f64 / norm
            })
            .collect();
        let (a, b, c) = (3.4445, -4.7750, 2.0315);
        for _ in 0..5 {
            let gram: Vec<f64> =
                (0..m * m).map(|i| (0..n).map(|k| x[(i / m) * n + k] * x[(i % m) * n + k]).sum()).collect();
            let poly: Vec<f64> = (0..m * m)
                .map(|i| b * gram[i] + c * (0..m).map(|k| gram[(i / m) * m + k] * gram[k * m + i % m]).sum::<f64>())
                .collect();
            x = (0..m * n)
                .map(|i| a * x[i] + (0..m).map(|k| poly[(i / n) * m + k] * x[k * n + i % n]).sum::<f64>())
                .collect();
        }
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                if t {
                    x[c * n + r]
                } else {
                    x[r * n + c]
                }
            })
            .collect()
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_direct_evaluation_both_orientations() {
        for &(rows, cols) in &[(16, 72), (32, 24), (5, 5), (1, 7), (9, 1), (96, 200)] {
            let g = pseudo_random(rows * cols, (rows * 31 + cols) as u64);
            let got = newton_schulz(&g, rows, cols);
            let want = reference(&g, rows, cols);
            let err = got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-4, "{rows}x{cols}: max error {err}");
        }
    }

    #[test]
    fn pushes_singular_values_towards_one() {
        // Columns of very different scales come out with comparable norms (orthogonalised).
        let (rows, cols) = (8, 32);
        let mut g = pseudo_random(rows * cols, 3);
        for (i, v) in g.iter_mut().enumerate() {
            *v *= [1.0, 10.0, 0.1, 3.0, 0.5, 2.0, 7.0, 0.3][i / cols];
        }
        let o = newton_schulz(&g, rows, cols);
        for r in 0..rows {
            let n: f32 = o[r * cols..(r + 1) * cols].iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((0.6..1.3).contains(&n), "row {r} norm {n}");
        }
    }

    #[test]
    fn shape_scale() {
        assert_eq!(muon_shape_scale(&[64, 32, 3, 3]), 1.0);
        assert_eq!(muon_shape_scale(&[64, 32, 5, 1]), 5f64.sqrt());
        assert_eq!(muon_shape_scale(&[32, 24]), (32.0f64 / 24.0).sqrt());
        assert_eq!(muon_shape_scale(&[24, 32]), 1.0);
    }
}
