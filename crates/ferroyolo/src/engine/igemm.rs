//! The engine's own AVX-512 matrix-multiply kernel, shaped for NCHW convolution ("implicit GEMM").
//!
//! It computes `C[m][n] = act(bias[m] + Σ_k A[m][k] · B_k[n])` where each row `B_k` of the right-hand
//! matrix is given by its own offset into one buffer (`b + b_off[k]`) and only has to be contiguous
//! along `n`. That one freedom covers every convolution the network has without an im2col copy:
//!
//! * 1×1, stride 1: `B_k` is input channel `k` (offset `k·H·W`), `n` runs over pixels;
//! * k×k: `B_k` for tap `(ci, ky, kx)` is the zero-padded (and, for stride s, phase-split) input plane
//!   shifted by `ky·Wq + kx`, with `n` running over a grid `Wq` wide (see `conv.rs`);
//! * attention: `A = Kᵀ` (packed), `B = Q`, and `A = V`, `B = Pᵀ`.
//!
//! Unlike a general GEMM it never packs B (its rows are already contiguous), so the only copy is the
//! one-off packing of A (the weights) into 8-row panels. The micro-kernel keeps an 8 × 48 tile of C in
//! 24 zmm registers; per k it loads 3 vectors of `B_k` and issues 8 broadcast-FMAs each, which is
//! FMA-bound rather than load-bound. Bias and SiLU are applied while the tile is still in registers.

use super::Activation;

/// Rows of C per micro-kernel tile (one A panel).
pub(crate) const MR: usize = 8;
/// 16-lane vectors of C per row of a tile.
const NV: usize = 3;
/// Columns of C per tile.
pub(crate) const NR: usize = NV * 16;
/// k-block length: a `KC × NR` slice of B (24 KiB at 128) stays in L1 while every A panel passes over it.
const KC: usize = 128;

/// A row-major `m × k` matrix rearranged into panels of [`MR`] rows, k-major inside a panel
/// (`panel[k * MR + r] = A[p*MR + r][k]`), rows past `m` zero. This is the order the kernel reads
/// broadcasts in, so a panel streams sequentially through the cache.
pub(crate) fn pack_a(a: &[f32], m: usize, k: usize, lda: usize) -> Vec<f32> {
    let panels = m.div_ceil(MR);
    let mut out = vec![0.0f32; panels * k * MR];
    for (p, panel) in out.chunks_mut(k * MR).enumerate() {
        for r in 0..MR.min(m - p * MR) {
            let row = &a[(p * MR + r) * lda..(p * MR + r) * lda + k];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * MR + r] = v;
            }
        }
    }
    out
}

/// Pads a bias vector with zeros to a whole number of panels.
pub(crate) fn pad_bias(bias: &[f32]) -> Vec<f32> {
    let mut out = bias.to_vec();
    out.resize(bias.len().div_ceil(MR) * MR, 0.0);
    out
}

/// One multiplication for [`igemm`]. Pointers rather than slices because B rows overlap freely and
/// C may be written by several threads (disjoint tiles).
pub(crate) struct GemmArgs<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `pack_a` output for the m × k left matrix.
    pub a: &'a [f32],
    /// `pad_bias` output (length ≥ m rounded up to MR).
    pub bias: &'a [f32],
    /// Base of the right-hand rows.
    pub b: *const f32,
    /// Row `k` of B starts at `b + b_off[k]`; `b_off.len() == k`.
    pub b_off: &'a [usize],
    /// Row `m` of C starts at `c + m * ldc`.
    pub c: *mut f32,
    pub ldc: usize,
    pub act: Activation,
}

// SAFETY: the raw pointers are only read through (B) or written at disjoint tiles (C) by the tasks of
// one `igemm` call, which the caller of that (unsafe) function vouches for.
unsafe impl Sync for GemmArgs<'_> {}

/// Raw pointers made shareable across the rayon tasks of one multiplication.
#[derive(Clone, Copy)]
struct SendPtr<T>(T);
// SAFETY: tasks only read through B and write disjoint tiles of C (see `igemm`).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// By method, so closures capture the wrapper and not (by edition-2021 disjoint capture) the raw field.
    fn get(self) -> T {
        self.0
    }
}

/// Runs the multiplication on the current rayon pool.
///
/// # Safety
/// The CPU must support AVX-512F. For every `kk < k` and `j < n`, `b + b_off[kk] + j` must be readable,
/// and for every `i < m`, `c + i*ldc .. + n` must be writable and not aliased by B; `a` and `bias` must
/// have the lengths documented on [`GemmArgs`].
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn igemm(g: &GemmArgs) {
    use rayon::prelude::*;
    assert!(g.a.len() >= g.m.div_ceil(MR) * g.k * MR && g.bias.len() >= g.m.div_ceil(MR) * MR);
    assert_eq!(g.b_off.len(), g.k);
    if g.m == 0 || g.n == 0 {
        return;
    }
    let tiles = g.n.div_ceil(NR);
    let panels = g.m.div_ceil(MR);
    let threads = rayon::current_num_threads();
    // Several chunks per thread so an uneven split (or a busy core) balances out; split C's rows as
    // well when there are too few column tiles (small maps, e.g. 20×20).
    let target = if threads == 1 { 1 } else { threads * 4 };
    let (t_chunks, m_chunks) = if tiles >= target { (target, 1) } else { (tiles, target.div_ceil(tiles).min(panels)) };
    let b = SendPtr(g.b);
    let c = SendPtr(g.c);
    let work = |item: usize| {
        let (ti, mi) = (item / m_chunks, item % m_chunks);
        let (t0, t1) = (ti * tiles / t_chunks, (ti + 1) * tiles / t_chunks);
        let (p0, p1) = (mi * panels / m_chunks, (mi + 1) * panels / m_chunks);
        // SAFETY: forwarded from the caller; each item writes only its own (tile range × panel range).
        unsafe { run_block(g, b.get(), c.get(), t0..t1, p0..p1) };
    };
    let items = t_chunks * m_chunks;
    if items == 1 {
        work(0);
    } else {
        (0..items).into_par_iter().for_each(work);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_block(
    g: &GemmArgs,
    b: *const f32,
    c: *mut f32,
    tiles: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let silu = g.act == Activation::Silu;
    for t in tiles {
        let n0 = t * NR;
        let len = NR.min(g.n - n0);
        let mut kb = 0;
        while kb < g.k {
            let kc = KC.min(g.k - kb);
            let first = kb == 0;
            let last = kb + kc == g.k;
            for p in panels.clone() {
                let rows = MR.min(g.m - p * MR);
                let a = g.a.as_ptr().add((p * g.k + kb) * MR);
                let bias = first.then(|| g.bias.as_ptr().add(p * MR));
                let cp = c.add(p * MR * g.ldc + n0);
                let boff = g.b_off.as_ptr().add(kb);
                if len == NR {
                    tile::<true>(kc, a, b.add(n0), boff, cp, g.ldc, rows, [u16::MAX; NV], bias, last && silu);
                } else {
                    let mut masks = [0u16; NV];
                    for (j, mask) in masks.iter_mut().enumerate() {
                        let lanes = len.saturating_sub(j * 16).min(16);
                        *mask = ((1u32 << lanes) - 1) as u16;
                    }
                    tile::<false>(kc, a, b.add(n0), boff, cp, g.ldc, rows, masks, bias, last && silu);
                }
            }
            kb += kc;
        }
    }
}

/// The 8 × 48 micro-kernel over one k-block. `bias` is `Some` for the first k-block (C starts from the
/// bias) and `None` for later ones (C accumulates what is stored); `silu` only on the last.
/// `FULL` tiles use plain loads and stores; partial ones mask lanes past the end of the row.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const FULL: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_off: *const usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    masks: [u16; NV],
    bias: Option<*const f32>,
    silu: bool,
) {
    use super::simd::avx512;
    use std::arch::x86_64::*;

    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    match bias {
        Some(bias) => {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [_mm512_set1_ps(*bias.add(r)); NV];
            }
        }
        None => {
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                for (j, v) in row.iter_mut().enumerate() {
                    let p = c.add(r * ldc + j * 16);
                    *v = if FULL { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(masks[j], p) };
                }
            }
        }
    }
    for kk in 0..kc {
        let bp = b.add(*b_off.add(kk));
        let mut bv = [_mm512_setzero_ps(); NV];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = if FULL { _mm512_loadu_ps(bp.add(j * 16)) } else { _mm512_maskz_loadu_ps(masks[j], bp.add(j * 16)) };
        }
        let ap = a.add(kk * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r));
            for (v, &bj) in row.iter_mut().zip(&bv) {
                *v = _mm512_fmadd_ps(av, bj, *v);
            }
        }
    }
    if silu {
        for row in acc.iter_mut() {
            for v in row.iter_mut() {
                *v = avx512::silu(*v);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate() {
            let p = c.add(r * ldc + j * 16);
            if FULL {
                _mm512_storeu_ps(p, v)
            } else {
                _mm512_mask_storeu_ps(p, masks[j], v)
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::engine::simd::{detected_isa, silu_fast, Isa};
    use crate::engine::testutil::{assert_close, Rng};

    /// Random row offsets (rows may overlap, as conv taps do) against a plain f64 product.
    #[test]
    fn igemm_matches_naive() {
        if detected_isa() < Isa::Avx512 {
            return;
        }
        let mut rng = Rng::new(42);
        for &(m, n, k) in &[(1, 1, 1), (8, 48, 5), (13, 50, 7), (16, 200, 300), (35, 97, 129), (64, 1000, 27)] {
            for act in [Activation::Identity, Activation::Silu] {
                let a = rng.vec(m * k);
                let bias = rng.vec(m);
                let pool = rng.vec(n + 4 * k + 3);
                let b_off: Vec<usize> = (0..k).map(|_| (rng.next_u64() as usize) % (4 * k + 3)).collect();
                let mut c = vec![f32::NAN; m * (n + 3)];
                let packed = pack_a(&a, m, k, k);
                let padded = pad_bias(&bias);
                let g = GemmArgs {
                    m,
                    n,
                    k,
                    a: &packed,
                    bias: &padded,
                    b: pool.as_ptr(),
                    b_off: &b_off,
                    c: c.as_mut_ptr(),
                    ldc: n + 3,
                    act,
                };
                // SAFETY: AVX-512F detected; b_off[k] + n <= pool.len(); c holds m rows of ldc.
                unsafe { igemm(&g) };
                let mut want = Vec::new();
                let mut got = Vec::new();
                for i in 0..m {
                    for j in 0..n {
                        let mut s = bias[i] as f64;
                        for kk in 0..k {
                            s += a[i * k + kk] as f64 * pool[b_off[kk] + j] as f64;
                        }
                        if act == Activation::Silu {
                            s = silu_fast(s as f32) as f64;
                        }
                        want.push(s);
                        got.push(c[i * (n + 3) + j]);
                    }
                    // The gap between rows must be untouched.
                    assert!(c[i * (n + 3) + n..(i + 1) * (n + 3)].iter().all(|v| v.is_nan()));
                }
                assert_close(&got, &want, 1e-5, &format!("igemm {m}x{n}x{k} {act:?}"));
            }
        }
    }
}
