//! The engine's own AVX-512 matrix-multiply kernel, shaped for NCHW convolution ("implicit GEMM").
//!
//! It computes `C[m][n] = act(bias[m] + Σ_k A[m][k] · B_k[n])` where each row `B_k` of the right-hand
//! matrix is given by its own pointer (`b_rows[k]`) and only has to be contiguous along `n`. That one
//! freedom covers every convolution the network has without an im2col copy:
//!
//! * 1×1, stride 1: `B_k` is input channel `k`, `n` runs over pixels; the channels may come from
//!   several tensors (a channel concatenation that is never materialised);
//! * k×k: `B_k` for tap `(ci, ky, kx)` is the zero-padded (and, for stride s, phase-split) input plane
//!   shifted by `ky·Wq + kx`, with `n` running over a grid `Wq` wide (see `conv.rs`);
//! * attention: `A = Kᵀ` (packed), `B = Q`, and `A = V`, `B = Pᵀ`.
//!
//! `n` may also be a 2-D grid with different row strides in B and C (see [`GemmArgs`]). Unlike a
//! general GEMM it never packs B (its rows are already contiguous), so the only copy is the one-off
//! packing of A (the weights) into 8-row panels. The micro-kernel keeps an 8 × 48 tile of C in
//! 24 zmm registers; per k it loads 3 vectors of `B_k` and issues 8 broadcast-FMAs each, which is
//! FMA-bound rather than load-bound. Bias and SiLU are applied while the tile is still in registers.

use super::Activation;

/// Rows of C per micro-kernel tile (one A panel).
pub(crate) const MR: usize = 8;
/// 16-lane vectors of C per row of a full tile.
const NV_MAX: usize = 3;
/// Columns of C per full tile.
pub(crate) const NR: usize = NV_MAX * 16;
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
///
/// The `n` columns form a `rows × cols` grid (row-major), so that a convolution can compute on a
/// padded input grid (B row stride `b_rs`) and store straight into its unpadded output (C row stride
/// `c_rs`). A plain matrix is one grid row: `rows = 1`, `cols = n`.
pub(crate) struct GemmArgs<'a> {
    pub m: usize,
    pub k: usize,
    pub rows: usize,
    pub cols: usize,
    pub b_rs: usize,
    pub c_rs: usize,
    /// `pack_a` output for the m × k left matrix.
    pub a: &'a [f32],
    /// `pad_bias` output (length ≥ m rounded up to MR).
    pub bias: &'a [f32],
    /// Element (y, x) of row `kk` of B is at `b_rows[kk] + y*b_rs + x`; `b_rows.len() == k`. A table
    /// of row pointers lets B's rows come from anywhere: shifted runs of one padded input for a k×k
    /// convolution, or channels of several tensors for a 1×1 convolution over a channel concatenation.
    pub b_rows: &'a [*const f32],
    /// Element (y, x) of row `i` of C is at `c + i*ldc + y*c_rs + x`.
    pub c: *mut f32,
    pub ldc: usize,
    pub act: Activation,
}

/// How one grid row is cut into column tiles: a short `lead` tile first (when non-zero), then full
/// [`NR`]-wide tiles, the last one possibly partial.
#[derive(Clone, Copy)]
struct Tiling {
    cols: usize,
    lead: usize,
}

impl Tiling {
    /// For a plain matrix whose B rows all sit at the same offset from a 64-byte boundary, a lead tile
    /// up to the next boundary makes every later load of B aligned (a 512-bit load that straddles two
    /// cache lines costs two; measured ~8% of the kernel's speed). Conv taps have mixed offsets.
    fn new(g: &GemmArgs) -> Tiling {
        let misalign = |p: *const f32| (p as usize / 4) % 16;
        let lead = match g.b_rows.first() {
            Some(&first) if g.rows == 1 && g.cols > 2 * NR && g.b_rows.iter().all(|&p| misalign(p) == misalign(first)) => {
                (16 - misalign(first)) % 16
            }
            _ => 0,
        };
        Tiling { cols: g.cols, lead }
    }

    /// Column tiles per grid row.
    fn per_row(self) -> usize {
        (self.lead > 0) as usize + (self.cols - self.lead).div_ceil(NR)
    }

    /// First column and width of tile `i` of a row.
    fn span(self, i: usize) -> (usize, usize) {
        let x0 = if self.lead == 0 { i * NR } else if i == 0 { 0 } else { self.lead + (i - 1) * NR };
        let end = if self.lead > 0 && i == 0 { self.lead } else { (x0 + NR).min(self.cols) };
        (x0, end - x0)
    }
}

// SAFETY: the raw pointers are only read through (B) or written at disjoint tiles (C) by the tasks of
// one `igemm` call, which the caller of that (unsafe) function vouches for.
unsafe impl Sync for GemmArgs<'_> {}

/// Runs the multiplication on the current rayon pool (`parallel`) or on the calling thread.
///
/// # Safety
/// The CPU must support AVX-512F. For every `kk < k`, `y < rows` and `x < cols`,
/// `b_rows[kk] + y*b_rs + x` must be readable, and for every `i < m`, `c + i*ldc + y*c_rs + x`
/// writable, not aliased by B and not aliased by another `(i, y, x)`; `a` and `bias` must have the
/// lengths documented on [`GemmArgs`].
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn igemm(g: &GemmArgs, parallel: bool) {
    assert!(g.a.len() >= g.m.div_ceil(MR) * g.k * MR && g.bias.len() >= g.m.div_ceil(MR) * MR);
    assert_eq!(g.b_rows.len(), g.k);
    if g.m == 0 || g.rows == 0 || g.cols == 0 {
        return;
    }
    let tiling = Tiling::new(g);
    let tiles = g.rows * tiling.per_row();
    let panels = g.m.div_ceil(MR);
    let threads = if parallel { super::threads::num_threads() } else { 1 };
    // Several items per thread so that uneven items (or a busy core) balance out; when there are too
    // few column tiles for that (small maps, e.g. 20×20), every tile is its own item and C's rows are
    // split too.
    let target = if threads == 1 { 1 } else { threads * 8 };
    let (t_chunks, m_chunks) = if tiles >= target { (target, 1) } else { (tiles, target.div_ceil(tiles).min(panels)) };
    let work = |item: usize| {
        let (ti, mi) = (item / m_chunks, item % m_chunks);
        let (t0, t1) = (ti * tiles / t_chunks, (ti + 1) * tiles / t_chunks);
        let (p0, p1) = (mi * panels / m_chunks, (mi + 1) * panels / m_chunks);
        // SAFETY: forwarded from the caller; each item writes only its own (tile range × panel range).
        unsafe { run_block(g, tiling, t0..t1, p0..p1) };
    };
    super::threads::parallel_for(t_chunks * m_chunks, &work);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_block(g: &GemmArgs, tiling: Tiling, tiles: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
    let silu = g.act == Activation::Silu;
    let tpr = tiling.per_row();
    // Offset of a tile's first column from its B rows' starts.
    let b_at = |t: usize| (t / tpr) * g.b_rs + tiling.span(t % tpr).0;
    for t in tiles.clone() {
        let y = t / tpr;
        let (x0, len) = tiling.span(t % tpr);
        let b_x = b_at(t);
        let c = g.c.add(y * g.c_rs + x0);
        // While the first panel runs over this tile's B rows, prefetch the next tile's: they are as
        // many separate streams as k, too many for the hardware prefetcher to follow.
        let next = t + 1 < tiles.end;
        let pf_x = if next { b_at(t + 1) } else { 0 };
        let mut kb = 0;
        while kb < g.k {
            let kc = KC.min(g.k - kb);
            let first = kb == 0;
            let last = kb + kc == g.k;
            for p in panels.clone() {
                let t = Tile {
                    kc,
                    a: g.a.as_ptr().add((p * g.k + kb) * MR),
                    b_rows: g.b_rows.as_ptr().add(kb),
                    b_x,
                    c: c.add(p * MR * g.ldc),
                    ldc: g.ldc,
                    rows: MR.min(g.m - p * MR),
                    bias: first.then(|| g.bias.as_ptr().add(p * MR)),
                    silu: last && silu,
                    pf_x,
                };
                // The narrowest kernel that covers the tile, so a short row end does not pay for
                // fully masked vectors.
                let pf = p == panels.start && next;
                match (len, pf) {
                    (NR, false) => tile::<3, true, false>(&t, len),
                    (NR, true) => tile::<3, true, true>(&t, len),
                    (33.., false) => tile::<3, false, false>(&t, len),
                    (33.., true) => tile::<3, false, true>(&t, len),
                    (32, false) => tile::<2, true, false>(&t, len),
                    (32, true) => tile::<2, true, true>(&t, len),
                    (17.., false) => tile::<2, false, false>(&t, len),
                    (17.., true) => tile::<2, false, true>(&t, len),
                    (16, false) => tile::<1, true, false>(&t, len),
                    (16, true) => tile::<1, true, true>(&t, len),
                    (_, false) => tile::<1, false, false>(&t, len),
                    (_, true) => tile::<1, false, true>(&t, len),
                }
            }
            kb += kc;
        }
    }
}

/// One micro-kernel call: an `MR × (≤ NR)` tile of C over one k-block.
struct Tile {
    kc: usize,
    /// Packed A panel at the k-block.
    a: *const f32,
    /// B's row pointers at the k-block; the tile starts `b_x` elements into each row.
    b_rows: *const *const f32,
    b_x: usize,
    c: *mut f32,
    ldc: usize,
    /// Valid rows of C (the rest of the panel is padding).
    rows: usize,
    /// `Some` for the first k-block (C starts from the bias), `None` after (C accumulates what is stored).
    bias: Option<*const f32>,
    /// Apply SiLU (last k-block only).
    silu: bool,
    /// Where the next tile starts in B's rows, for `PF` kernels to prefetch.
    pf_x: usize,
}

/// The `MR × 16·NV` micro-kernel. `FULL` tiles use plain loads and stores; partial ones (`len` < 16·NV
/// columns) mask lanes past the end of the row, so nothing outside it is read or written. `PF` kernels
/// also prefetch the next tile's B rows (at `t.pf_x`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const NV: usize, const FULL: bool, const PF: bool>(t: &Tile, len: usize) {
    use super::simd::avx512;
    use std::arch::x86_64::*;

    let mut masks = [u16::MAX; NV];
    if !FULL {
        for (j, mask) in masks.iter_mut().enumerate() {
            *mask = ((1u32 << len.saturating_sub(j * 16).min(16)) - 1) as u16;
        }
    }
    let load = |p: *const f32, j: usize| if FULL { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(masks[j], p) };
    let (c, ldc, rows) = (t.c, t.ldc, t.rows);
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    match t.bias {
        Some(bias) => {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [_mm512_set1_ps(*bias.add(r)); NV];
            }
        }
        None => {
            // Loops run over all MR rows with a condition inside (not `take(rows)`), so that after
            // unrolling every index into `acc` is a constant and it lives in registers, not on the stack.
            for (r, row) in acc.iter_mut().enumerate() {
                if r >= rows {
                    continue;
                }
                for (j, v) in row.iter_mut().enumerate() {
                    *v = load(c.add(r * ldc + j * 16), j);
                }
            }
        }
    }
    for kk in 0..t.kc {
        let row = *t.b_rows.add(kk);
        let bp = row.add(t.b_x);
        if PF {
            // A prefetch never faults; wrapping_add because past a row's end the address may be
            // outside the allocation.
            let q = row.wrapping_add(t.pf_x) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(q);
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(128));
        }
        let mut bv = [_mm512_setzero_ps(); NV];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = load(bp.add(j * 16), j);
        }
        let ap = t.a.add(kk * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r));
            for (v, &bj) in row.iter_mut().zip(&bv) {
                *v = _mm512_fmadd_ps(av, bj, *v);
            }
        }
    }
    let store = |p: *mut f32, j: usize, v: __m512| {
        if FULL {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, masks[j], v)
        }
    };
    // Bias is in; apply SiLU in registers and store. Unrolled by macro so every index into `acc` is a
    // constant: as a loop, LLVM would not unroll the large SiLU body, would index `acc` at run time,
    // and so would keep all of `acc` on the stack through the k loop.
    macro_rules! unroll {
        ($i:ident in [$($n:literal),*] $body:block) => { $( { const $i: usize = $n; $body } )* };
    }
    const _: () = assert!(MR == 8 && NV_MAX == 3, "the unrolled epilogue below spells out 8 rows and 3 vectors");
    unroll!(R in [0, 1, 2, 3, 4, 5, 6, 7] {
        if R < rows {
            unroll!(J in [0, 1, 2] {
                if let Some(&v) = acc[R].get(J) {
                    let v = if t.silu { avx512::silu(v) } else { v };
                    store(c.add(R * ldc + J * 16), J, v);
                }
            });
        }
    });
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::engine::simd::{detected_isa, silu_fast, Isa};
    use crate::engine::testutil::{assert_close, Rng};

    /// Random row offsets (rows may overlap, as conv taps do) against a plain f64 product, on plain
    /// matrices and on grids whose B and C rows have gaps (which must stay untouched).
    #[test]
    fn igemm_matches_naive() {
        if detected_isa() < Isa::Avx512 {
            return;
        }
        let mut rng = Rng::new(42);
        // (m, grid rows, cols, k)
        let cases = [
            (1, 1, 1, 1),
            (8, 1, 48, 5),
            (13, 1, 50, 7),
            (16, 1, 200, 300),
            (35, 1, 97, 129),
            (64, 1, 1000, 27),
            (9, 3, 20, 11),
            (16, 4, 80, 18),
            (24, 2, 160, 140),
            (8, 5, 33, 3),
        ];
        for &(m, rows, cols, k) in &cases {
            for act in [Activation::Identity, Activation::Silu] {
                let (b_rs, c_rs) = if rows == 1 { (0, 0) } else { (cols + 3, cols + 1) };
                let span = (rows - 1) * b_rs + cols;
                let a = rng.vec(m * k);
                let bias = rng.vec(m);
                let pool = rng.vec(span + 4 * k + 3);
                let b_off: Vec<usize> = (0..k).map(|_| (rng.next_u64() as usize) % (4 * k + 3)).collect();
                let b_rows: Vec<*const f32> = b_off.iter().map(|&o| pool[o..].as_ptr()).collect();
                let ldc = (rows - 1) * c_rs + cols + 2;
                let mut c = vec![f32::NAN; m * ldc];
                let packed = pack_a(&a, m, k, k);
                let padded = pad_bias(&bias);
                let g = GemmArgs {
                    m,
                    k,
                    rows,
                    cols,
                    b_rs,
                    c_rs,
                    a: &packed,
                    bias: &padded,
                    b_rows: &b_rows,
                    c: c.as_mut_ptr(),
                    ldc,
                    act,
                };
                // SAFETY: AVX-512F detected; b_off[kk] + span <= pool.len(); C's (i, y, x) lie in c.
                unsafe { igemm(&g, true) };
                let mut want = Vec::new();
                let mut got = Vec::new();
                let mut written = vec![false; c.len()];
                for i in 0..m {
                    for y in 0..rows {
                        for x in 0..cols {
                            let mut s = bias[i] as f64;
                            for kk in 0..k {
                                s += a[i * k + kk] as f64 * pool[b_off[kk] + y * b_rs + x] as f64;
                            }
                            if act == Activation::Silu {
                                s = silu_fast(s as f32) as f64;
                            }
                            want.push(s);
                            got.push(c[i * ldc + y * c_rs + x]);
                            written[i * ldc + y * c_rs + x] = true;
                        }
                    }
                }
                assert_close(&got, &want, 1e-5, &format!("igemm m{m} {rows}x{cols} k{k} {act:?}"));
                for (i, (&v, &w)) in c.iter().zip(&written).enumerate() {
                    assert!(w || v.is_nan(), "igemm m{m} {rows}x{cols} k{k}: wrote outside C at {i}");
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod lead_tests {
    use super::*;
    use crate::engine::simd::{detected_isa, Isa};
    use crate::engine::testutil::{assert_close, Rng};

    /// B rows that share one misalignment get a short lead tile; every shift must give the same result.
    #[test]
    fn igemm_lead_tile() {
        if detected_isa() < Isa::Avx512 {
            return;
        }
        let mut rng = Rng::new(5);
        let (m, k, n) = (13usize, 20usize, 301usize);
        let a = rng.vec(m * k);
        let bias = rng.vec(m);
        let pool = rng.vec(16 + k * 320 + 64);
        let packed = pack_a(&a, m, k, k);
        let padded = pad_bias(&bias);
        for shift in 0..16 {
            let base = pool.as_ptr().align_offset(64) + shift;
            let b_rows: Vec<*const f32> = (0..k).map(|kk| pool[base + kk * 320..].as_ptr()).collect();
            let ldc = n + 5;
            let mut c = vec![f32::NAN; m * ldc + 32];
            let cs = c.as_ptr().align_offset(64) + (shift * 7) % 16;
            let g = GemmArgs {
                m,
                k,
                rows: 1,
                cols: n,
                b_rs: 0,
                c_rs: 0,
                a: &packed,
                bias: &padded,
                b_rows: &b_rows,
                c: c[cs..].as_mut_ptr(),
                ldc,
                act: Activation::Identity,
            };
            assert_eq!(Tiling::new(&g).lead, (16 - (b_rows[0] as usize / 4) % 16) % 16);
            // SAFETY: AVX-512F detected; every row has n readable values; C holds m rows of ldc.
            unsafe { igemm(&g, true) };
            let mut want = Vec::new();
            let mut got = Vec::new();
            for i in 0..m {
                for x in 0..n {
                    let s: f64 = bias[i] as f64
                        + (0..k).map(|kk| a[i * k + kk] as f64 * pool[base + kk * 320 + x] as f64).sum::<f64>();
                    want.push(s);
                    got.push(c[cs + i * ldc + x]);
                }
                assert!(c[cs + i * ldc + n..cs + (i + 1) * ldc].iter().all(|v| v.is_nan()), "wrote past a row");
            }
            assert_close(&got, &want, 1e-5, &format!("lead shift {shift}"));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod bench {
    use super::*;

    /// Threads scaling for a few shapes (m, k, n, B-row spacing).
    #[test]
    #[ignore]
    fn igemm_scaling() {
        for &(m, k, n, spacing) in &[(32usize, 288usize, 1678usize, 42usize), (128, 128, 1600, 1600), (32, 288, 1678, 1764), (128, 288, 1678, 42)] {
            let a = pack_a(&vec![0.01f32; m * k], m, k, k);
            let bias = pad_bias(&vec![0.0; m]);
            let pool = vec![0.5f32; k * spacing + n + 64];
            let mut cbuf = vec![0.0f32; m * n];
            let b_rows: Vec<*const f32> = (0..k).map(|kk| pool[kk * spacing..].as_ptr()).collect();
            let g = GemmArgs { m, k, rows: 1, cols: n, b_rs: 0, c_rs: 0, a: &a, bias: &bias, b_rows: &b_rows, c: cbuf.as_mut_ptr(), ldc: n, act: Activation::Silu };
            for threads in [1, 2] {
                let p = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut best = f64::MAX;
                p.install(|| {
                    for _ in 0..300 {
                        let t = std::time::Instant::now();
                        // SAFETY: bench only; offsets in bounds.
                        unsafe { igemm(&g, true) };
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                });
                println!("m{m} k{k} n{n} spacing {spacing}: {threads}t {:.1} us {:.1} GFLOP/s", best * 1e6, 2.0 * (m * n * k) as f64 / best / 1e9);
            }
        }
    }

    /// Kernel throughput on cache-resident data, aligned vs misaligned B and C.
    /// `cargo test --release -p ferroyolo --lib engine::igemm::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn igemm_throughput() {
        let (m, k, n) = (128usize, 256usize, 480usize);
        let a = pack_a(&vec![0.01f32; m * k], m, k, k);
        let bias = pad_bias(&vec![0.0; m]);
        let pool = vec![0.5f32; k * n + 64];
        let mut cbuf = vec![0.0f32; m * n + 64];
        for (b_shift, c_shift) in [(0usize, 0usize), (4, 0), (0, 4), (4, 4), (1, 1)] {
            let b0 = pool.as_ptr().align_offset(64) + b_shift;
            let c0 = cbuf.as_ptr().align_offset(64) + c_shift;
            let b_rows: Vec<*const f32> = (0..k).map(|kk| pool[b0 + kk * n..].as_ptr()).collect();
            let g = GemmArgs {
                m,
                k,
                rows: 1,
                cols: n,
                b_rs: 0,
                c_rs: 0,
                a: &a,
                bias: &bias,
                b_rows: &b_rows,
                c: cbuf[c0..].as_mut_ptr(),
                ldc: n,
                act: Activation::Identity,
            };
            let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let mut best = f64::MAX;
            pool1.install(|| {
                for _ in 0..200 {
                    let t = std::time::Instant::now();
                    // SAFETY: AVX-512 checked by the caller's CPU (bench only); offsets in bounds.
                    unsafe { igemm(&g, true) };
                    best = best.min(t.elapsed().as_secs_f64());
                }
            });
            println!("b+{b_shift} c+{c_shift}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / best / 1e9);
        }
    }
}
