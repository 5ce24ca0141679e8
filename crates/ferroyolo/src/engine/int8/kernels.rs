//! The int8 × uint8 → int32 micro-kernels: one `MR × (≤ NC)` tile of accumulators per call, in four
//! flavours that all compute exactly the same integers.
//!
//! Operands (see the module doc of `int8`): row `kk` of B is a run of `u32` *quads* (4 input-channel
//! bytes of one pixel, channel `j` in bits `8j..8j+8`), A is the packed weight panel (one `i32` quad of
//! 4 signed weight bytes per row and k-step). Each tile accumulates `Σ_kk Σ_j a_j · b_j`.

use super::Int8Kernel;

/// Rows (output channels) per weight panel and tile.
pub(crate) const MR: usize = 8;
/// Columns (grid positions) per tile: 3 × 16-lane vectors on AVX-512.
pub(crate) const NC: usize = 48;
/// k-steps (channel quads × taps) per block: a `KC4 × NC` slice of B (12 KiB) stays in L1 while every
/// panel of the tile's column range passes over it.
pub(crate) const KC4: usize = 64;

/// One micro-kernel call.
pub(crate) struct TileArgs {
    /// k-steps in this block.
    pub k4: usize,
    /// Weight panel at the block: `a[kk·MR + r]` is row r's quad for step kk.
    pub a: *const i32,
    /// The same weights as sign-extended 16-bit pairs for the AVX2 kernel:
    /// `pairs[(kk·MR + r)·2]` = (w0, w2), `+ 1` = (w1, w3), low half first.
    pub pairs: *const i32,
    /// B's row pointers at the block (`k4` of them); the tile starts `b_x` quads into each.
    pub b_rows: *const *const u32,
    pub b_x: usize,
    /// Accumulator tile: `MR` rows of `NC` (row stride `NC`). Columns `len..NC` may be overwritten.
    pub acc: *mut i32,
    /// Valid columns (1..=NC); B is only read at `b_x .. b_x + len`.
    pub len: usize,
    /// Start from zero (first block) or from what `acc` holds.
    pub init: bool,
}

/// Dot product of the 4 unsigned bytes of `b` with the 4 signed bytes of `a`.
#[inline(always)]
pub(crate) fn dot4(a: i32, b: u32) -> i32 {
    let mut s = 0;
    for j in 0..4 {
        s += ((b >> (8 * j)) & 0xff) as i32 * ((a >> (8 * j)) as i8) as i32;
    }
    s
}

/// Runs one tile with `kernel`.
///
/// # Safety
/// `kernel` must be supported by this CPU; `a` (and `pairs`) must hold `k4·MR` quads (pairs); every
/// `b_rows[kk] + b_x .. + len` must be readable; `acc` must be valid for `MR·NC` writes.
pub(crate) unsafe fn run_tile(kernel: Int8Kernel, t: &TileArgs) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx512Vnni | Int8Kernel::Amx => match t.len.div_ceil(16) {
            3 => x86::tile_avx512::<3>(t),
            2 => x86::tile_avx512::<2>(t),
            _ => x86::tile_avx512::<1>(t),
        },
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::AvxVnni => x86::tile_avxvnni(t),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => x86::tile_avx2(t),
        _ => tile_portable(t),
    }
}

/// Plain Rust, for any CPU (and the reference the SIMD kernels are tested against).
///
/// # Safety
/// As [`run_tile`].
unsafe fn tile_portable(t: &TileArgs) {
    let acc = std::slice::from_raw_parts_mut(t.acc, MR * NC);
    if t.init {
        acc.fill(0);
    }
    for kk in 0..t.k4 {
        let b = std::slice::from_raw_parts((*t.b_rows.add(kk)).add(t.b_x), t.len);
        for r in 0..MR {
            let w = *t.a.add(kk * MR + r);
            if w == 0 {
                continue;
            }
            for (c, &q) in acc[r * NC..r * NC + t.len].iter_mut().zip(b) {
                *c += dot4(w, q);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX-512 VNNI: the whole `8 × 16·NV` tile in `8·NV` zmm accumulators; per k-step, NV loads of B
    /// and `8·NV` `vpdpbusd` (64 multiply-adds each) with the weight quad broadcast from memory.
    ///
    /// # Safety
    /// As [`run_tile`], and `len <= 16·NV`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const NV: usize>(t: &TileArgs) {
        let mut masks = [0u16; NV];
        for (j, m) in masks.iter_mut().enumerate() {
            *m = ((1u32 << t.len.saturating_sub(j * 16).min(16)) - 1) as u16;
        }
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        if !t.init {
            for (r, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(t.acc.add(r * NC + j * 16).cast());
                }
            }
        }
        for kk in 0..t.k4 {
            let bp = (*t.b_rows.add(kk)).add(t.b_x);
            let mut bv = [_mm512_setzero_si512(); NV];
            for (j, v) in bv.iter_mut().enumerate() {
                // Masked-off lanes are not read: a row's end never reads past its buffer.
                *v = _mm512_maskz_loadu_epi32(masks[j], bp.add(j * 16).cast());
            }
            let ap = t.a.add(kk * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_epi32(*ap.add(r));
                for (v, &b) in row.iter_mut().zip(&bv) {
                    *v = _mm512_dpbusd_epi32(*v, b, w);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_si512(t.acc.add(r * NC + j * 16).cast(), *v);
            }
        }
    }

    /// See [`depthwise_quads`](super::depthwise_quads).
    ///
    /// # Safety
    /// AVX-512 VNNI; the bounds `depthwise_quads` asserts.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn depthwise_quads_avx512(src: &[u32], taps: &[usize], w: &[[i32; 4]], acc: &mut [i32], nq: usize) {
        let mut x = 0;
        while x < nq {
            let n = (nq - x).min(16);
            let m = ((1u32 << n) - 1) as u16;
            let mut a = [_mm512_setzero_si512(); 4];
            for (&off, wt) in taps.iter().zip(w) {
                let b = _mm512_maskz_loadu_epi32(m, src.as_ptr().add(off + x).cast());
                for (a, &wj) in a.iter_mut().zip(wt) {
                    *a = _mm512_dpbusd_epi32(*a, b, _mm512_set1_epi32(wj));
                }
            }
            for (j, a) in a.iter().enumerate() {
                _mm512_mask_storeu_epi32(acc.as_mut_ptr().add(j * nq + x).cast(), m, *a);
            }
            x += 16;
        }
    }

    /// Lane mask for a 256-bit masked load: lanes `< n` set.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask8(n: usize) -> __m256i {
        let n = n.min(8) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// AVX-VNNI (256-bit `vpdpbusd`, VEX-encoded): sub-tiles of 4 rows × 24 columns (12 ymm
    /// accumulators, 3 for B, 1 broadcast: all 16 registers).
    ///
    /// # Safety
    /// As [`run_tile`].
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(t: &TileArgs) {
        for half in 0..2 {
            let mut x0 = 0;
            while x0 < t.len {
                let masks = [mask8(t.len - x0), mask8((t.len - x0).saturating_sub(8)), mask8((t.len - x0).saturating_sub(16))];
                let base = t.acc.add(half * 4 * NC + x0);
                let mut acc = [[_mm256_setzero_si256(); 3]; 4];
                if !t.init {
                    for (r, row) in acc.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = _mm256_loadu_si256(base.add(r * NC + j * 8).cast());
                        }
                    }
                }
                for kk in 0..t.k4 {
                    let bp = (*t.b_rows.add(kk)).add(t.b_x + x0);
                    let mut bv = [_mm256_setzero_si256(); 3];
                    for (j, v) in bv.iter_mut().enumerate() {
                        *v = _mm256_maskload_epi32(bp.add(j * 8).cast(), masks[j]);
                    }
                    let ap = t.a.add(kk * MR + half * 4);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let w = _mm256_set1_epi32(*ap.add(r));
                        for (v, &b) in row.iter_mut().zip(&bv) {
                            *v = _mm256_dpbusd_avx_epi32(*v, b, w);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        // The tile row has room for NC columns; x0 + 24 <= NC.
                        _mm256_storeu_si256(base.add(r * NC + j * 8).cast(), *v);
                    }
                }
                x0 += 24;
            }
        }
    }

    /// AVX2 without VNNI, exact: `vpmaddubsw` would saturate (255·127·2 > 32767), so each quad of B
    /// is split into its even and odd bytes as 16-bit lanes (c0, c2) and (c1, c3), and `vpmaddwd`
    /// against the pre-split weight pairs (w0, w2) and (w1, w3) sums them into 32 bits without loss.
    /// Sub-tiles of 4 rows × 16 columns.
    ///
    /// # Safety
    /// As [`run_tile`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(t: &TileArgs) {
        let low_bytes = _mm256_set1_epi16(0x00ff);
        for half in 0..2 {
            let mut x0 = 0;
            while x0 < t.len {
                let masks = [mask8(t.len - x0), mask8((t.len - x0).saturating_sub(8))];
                let base = t.acc.add(half * 4 * NC + x0);
                let mut acc = [[_mm256_setzero_si256(); 2]; 4];
                if !t.init {
                    for (r, row) in acc.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = _mm256_loadu_si256(base.add(r * NC + j * 8).cast());
                        }
                    }
                }
                for kk in 0..t.k4 {
                    let bp = (*t.b_rows.add(kk)).add(t.b_x + x0);
                    let mut even = [_mm256_setzero_si256(); 2];
                    let mut odd = [_mm256_setzero_si256(); 2];
                    for j in 0..2 {
                        let b = _mm256_maskload_epi32(bp.add(j * 8).cast(), masks[j]);
                        even[j] = _mm256_and_si256(b, low_bytes);
                        odd[j] = _mm256_srli_epi16::<8>(b);
                    }
                    let pp = t.pairs.add((kk * MR + half * 4) * 2);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let w02 = _mm256_set1_epi32(*pp.add(2 * r));
                        let w13 = _mm256_set1_epi32(*pp.add(2 * r + 1));
                        for (j, v) in row.iter_mut().enumerate() {
                            let s = _mm256_add_epi32(_mm256_madd_epi16(even[j], w02), _mm256_madd_epi16(odd[j], w13));
                            *v = _mm256_add_epi32(*v, s);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        // x0 + 16 <= NC (NC is a multiple of 16).
                        _mm256_storeu_si256(base.add(r * NC + j * 8).cast(), *v);
                    }
                }
                x0 += 16;
            }
        }
    }
}

/// Depthwise: `acc[x] = Σ_t w[t] · src[taps[t] + x]` for `x < acc.len()` (one output grid of one
/// channel, from its u8 phase layout). Plain loops, vectorised by the compiler per instruction set
/// (products fit 16 bits, so LLVM uses `vpmaddwd`); the integers are the same on every path.
pub(crate) fn depthwise_sums(kernel: Int8Kernel, src: &[u8], taps: &[usize], w: &[i8], acc: &mut [i32]) {
    let reach = taps.iter().max().map_or(0, |&t| t) + acc.len();
    assert!(reach <= src.len(), "depthwise_sums: input run out of bounds");
    /// 64 outputs at a time stay in registers (four 16-lane vectors on AVX-512) across all taps,
    /// instead of a load and a store of the sums per tap.
    #[inline(always)]
    fn generic(src: &[u8], taps: &[usize], w: &[i8], acc: &mut [i32]) {
        const CHUNK: usize = 64;
        let mut x0 = 0;
        for out in acc.chunks_mut(CHUNK) {
            if let Ok(out) = <&mut [i32; CHUNK]>::try_from(&mut *out) {
                let mut sums = [0i32; CHUNK];
                for (&off, &wt) in taps.iter().zip(w) {
                    let run: &[u8; CHUNK] = src[off + x0..off + x0 + CHUNK].try_into().expect("64 inputs");
                    for (a, &v) in sums.iter_mut().zip(run) {
                        *a += wt as i32 * v as i32;
                    }
                }
                *out = sums;
            } else {
                out.fill(0);
                for (&off, &wt) in taps.iter().zip(w) {
                    let n = out.len();
                    for (a, &v) in out.iter_mut().zip(&src[off + x0..off + x0 + n]) {
                        *a += wt as i32 * v as i32;
                    }
                }
            }
            x0 += CHUNK;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(src: &[u8], taps: &[usize], w: &[i8], acc: &mut [i32]) {
            generic(src, taps, w, acc)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(src: &[u8], taps: &[usize], w: &[i8], acc: &mut [i32]) {
            generic(src, taps, w, acc)
        }
        match kernel {
            // SAFETY: the kernel tier is only ever one this CPU supports (checked by the caller).
            Int8Kernel::Avx512Vnni | Int8Kernel::Amx => return unsafe { avx512(src, taps, w, acc) },
            Int8Kernel::AvxVnni | Int8Kernel::Avx2 => return unsafe { avx2(src, taps, w, acc) },
            Int8Kernel::Portable => {}
        }
    }
    let _ = kernel;
    generic(src, taps, w, acc)
}

/// Depthwise on channel quads with `vpdpbusd` (AVX-512 VNNI): for the 4 channels `j` of one quad
/// plane's phase layout, `acc[j·nq + x] = Σ_t w[t][j] · byte j of src[taps[t] + x]`, `x < nq`. Each
/// weight quad holds its channel's weight in byte `j` and zeros elsewhere, so the dot product over
/// a pixel's 4 channel bytes picks that channel alone: 4 instructions per tap for 16 pixels × 4
/// channels, straight from the quad layout (no per-channel byte planes).
///
/// # Panics
/// If `kernel` is below [`Int8Kernel::Avx512Vnni`] or the reads or writes would leave the slices.
pub(crate) fn depthwise_quads(kernel: Int8Kernel, src: &[u32], taps: &[usize], w: &[[i32; 4]], acc: &mut [i32], nq: usize) {
    assert!(kernel >= Int8Kernel::Avx512Vnni && kernel.is_supported(), "depthwise_quads: needs AVX-512 VNNI");
    assert!(taps.len() == w.len() && acc.len() >= 4 * nq, "depthwise_quads: taps, weights and sums disagree");
    assert!(taps.iter().max().map_or(0, |&t| t) + nq <= src.len(), "depthwise_quads: input run out of bounds");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 VNNI is supported (asserted); every load reads src[tap + x .. tap + x + n] with
    // tap + nq <= src.len() (asserted, masked past nq) and every store acc[j·nq + x ..] below 4·nq.
    unsafe {
        x86::depthwise_quads_avx512(src, taps, w, acc, nq)
    }
}
