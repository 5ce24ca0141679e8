//! Weight gradients of dense convolutions as inner products, without im2col (AVX-512).
//!
//! `dW[co][ci, ky, kx] = Σ_images Σ_(y, x) dy[co][y][x] · x_pad[ci][y·s + ky][x·s + kx]`. In the
//! forward kernel's phase layout ([`PhaseLayout`]) tap `(ci, ky, kx)` is one contiguous run over a
//! `wq`-wide output grid, and so is `dy` once copied onto that grid (zeros in the `wq − wo` extra
//! columns). So every weight is the dot product of two contiguous runs: the kernel below computes a
//! 4 (output channels) × 6 (taps) tile of them at once, 16 pixels per step in 24 zmm accumulators,
//! loading 10 vectors per 24 FMAs and never copying the input more than once per image (a 1×1
//! stride-1 convolution reads the input planes and `dy` in place).
//!
//! Blocking: the pixels are cut into pieces of about [`PIECE`] (several small images together, or
//! part of a large one). Within a piece, a block of 6 tap runs stays in L1 while every output
//! channel's `dy` run streams past it from L2; the accumulators are reduced into `dW` at the end of
//! each piece. Runs of pieces are spread over the threads, each run summing into its own copy of
//! `dW`.

use super::super::conv::PhaseLayout;
use super::super::tensor::Tensor;
use super::super::threads::{for_chunks_mut, num_threads};
use super::{with_scratch, with_scratch2, ConvShape, Planes};

/// Output channels per tile.
const MR: usize = 4;
/// Taps per tile.
const NR: usize = 6;
/// Pixels per piece: a 6-tap block of that length (24 KiB for a 1×1 conv, less for k×k, whose taps
/// overlap) stays in the 48 KiB L1, and each tile runs 64 steps between reductions.
const PIECE: usize = 1024;

/// One piece of work: pixels `start..start + len` of images `images` (several whole images when
/// they are small, else one image).
#[derive(Clone, Debug)]
struct Piece {
    images: std::ops::Range<usize>,
    start: usize,
    len: usize,
}

/// Cuts `n` images of `len` pixels into pieces of about [`PIECE`] pixels, and at least
/// `min_pieces` of them (so that small maps, e.g. 8 images of 10×10, still keep every thread busy).
fn pieces(n: usize, len: usize, min_pieces: usize) -> Vec<Piece> {
    if n == 0 || len == 0 {
        return Vec::new();
    }
    // Images per piece (small maps) and pieces per image (large maps).
    let per = if len >= PIECE { 1 } else { (PIECE / len).clamp(1, n.div_ceil(min_pieces).max(1)) };
    let groups = n.div_ceil(per);
    let count = len.div_ceil(PIECE).max(min_pieces.div_ceil(groups)).min(len.div_ceil(16)).max(1);
    // Piece boundaries at multiples of 16, so only an image's last piece has a masked tail.
    let step = len.div_ceil(count).next_multiple_of(16);
    let mut out = Vec::new();
    let mut img = 0;
    while img < n {
        let end = (img + per).min(n);
        let mut start = 0;
        while start < len {
            let l = step.min(len - start);
            out.push(Piece { images: img..end, start, len: l });
            start += l;
        }
        img = end;
    }
    out
}

/// `dW` (`[out, in/groups, k, k]`) of a dense (or grouped, not depthwise) convolution, or `None`
/// when the CPU lacks AVX-512 (the caller then uses im2col + gemm).
pub(super) fn weight_grad(shape: ConvShape, x: &Planes, dy: &Tensor) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx512 {
        return Some(weight_grad_avx512(shape, x, dy));
    }
    let _ = (shape, x, dy);
    None
}

#[cfg(target_arch = "x86_64")]
fn weight_grad_avx512(shape: ConvShape, x: &Planes, dy: &Tensor) -> Vec<f32> {
    let ConvShape { in_channels: cin, out_channels: cout, kernel: k, stride: s, padding: p, groups: g } = shape;
    let (cin_g, cout_g) = (cin / g, cout / g);
    let kk = cin_g * k * k;
    let layout = PhaseLayout::new(k, s, p, x.h, x.w);
    let direct = k == 1 && s == 1 && p == 0;
    let (ho, wo, wq, nq) = (layout.ho, layout.wo, layout.wq, layout.nq);
    let len = if direct { ho * wo } else { nq };
    let work = pieces(x.n, len, num_threads());
    // A few items per thread, claimed dynamically, so that a thread that loses its core for a
    // while (or a short last piece) does not hold up the other; each item sums into its own dW.
    let items = (4 * num_threads()).min(work.len()).max(1);
    let wlen = shape.weight_len();
    let mut partial = vec![0.0f32; items * wlen];
    let one = |t: usize, dw: &mut [f32]| {
        let my = &work[t * work.len() / items..(t + 1) * work.len() / items];
        // Images whose layouts a piece may need at once.
        let most = my.iter().map(|pc| pc.images.len()).max().unwrap_or(1);
        let (x_len, dy_len) = if direct { (0, 0) } else { (most * cin * layout.per_channel, most * cout * nq) };
        with_scratch(x_len, |xs| {
            with_scratch2(dy_len, |dys| {
                let mut built: Option<std::ops::Range<usize>> = None;
                let mut a_rows: Vec<*const f32> = Vec::new();
                let mut b_rows: Vec<*const f32> = Vec::new();
                for pc in my {
                    if !direct && built.as_ref() != Some(&pc.images) {
                        for (slot, img) in pc.images.clone().enumerate() {
                            layout.write(x.image(img), &mut xs[slot * cin * layout.per_channel..][..cin * layout.per_channel]);
                            let dst = &mut dys[slot * cout * nq..][..cout * nq];
                            for (co, run) in dst.chunks_mut(nq).enumerate() {
                                let src = dy.plane(img, co);
                                for y in 0..ho {
                                    run[y * wq..y * wq + wo].copy_from_slice(&src[y * wo..(y + 1) * wo]);
                                    if y + 1 < ho {
                                        run[y * wq + wo..(y + 1) * wq].fill(0.0);
                                    }
                                }
                            }
                        }
                        built = Some(pc.images.clone());
                    }
                    for grp in 0..g {
                        // Row pointers per image of the piece: `dy` runs (A) and tap runs (B).
                        a_rows.clear();
                        b_rows.clear();
                        for (slot, img) in pc.images.clone().enumerate() {
                            for co in grp * cout_g..(grp + 1) * cout_g {
                                a_rows.push(if direct { dy.plane(img, co).as_ptr() } else { dys[(slot * cout + co) * nq..].as_ptr() });
                            }
                            for ci in grp * cin_g..(grp + 1) * cin_g {
                                if direct {
                                    b_rows.push(x.image(img)[ci].as_ptr());
                                } else {
                                    let chan = &xs[(slot * cin + ci) * layout.per_channel..][..layout.per_channel];
                                    b_rows.extend(layout.taps.iter().map(|&o| chan[o..].as_ptr()));
                                }
                            }
                        }
                        let block = Block {
                            a_rows: &a_rows,
                            b_rows: &b_rows,
                            m: cout_g,
                            n: kk,
                            images: pc.images.len(),
                            start: pc.start,
                            len: pc.len,
                        };
                        // SAFETY: AVX-512F is available (checked by the caller). Every A row is a
                        // `dy` run of `len` (direct: a plane of ho·wo) floats and every B row a tap
                        // run of `nq` floats inside its channel's layout (`taps[t] + nq ≤
                        // per_channel`, as the forward kernel relies on), and the piece reads
                        // `start..start + len` of them. C is this group's `cout_g × kk` block of `dw`.
                        unsafe { dot_block(&block, dw[grp * cout_g * kk..].as_mut_ptr(), kk) };
                    }
                }
            })
        });
    };
    for_chunks_mut(&mut partial, wlen, items > 1, &one);
    let (sum, rest) = partial.split_at_mut(wlen);
    for other in rest.chunks(wlen) {
        sum.iter_mut().zip(other).for_each(|(a, b)| *a += b);
    }
    partial.truncate(wlen);
    partial
}

/// The inner products of one piece: `C[r][t] += Σ_img Σ_(i < len) A_img,r[start + i] · B_img,t[start + i]`.
struct Block<'a> {
    /// `images × m` row pointers (image-major).
    a_rows: &'a [*const f32],
    /// `images × n` row pointers.
    b_rows: &'a [*const f32],
    m: usize,
    n: usize,
    images: usize,
    start: usize,
    len: usize,
}

/// Runs every tile of a block; C is `m × n` at row stride `ldc`.
///
/// # Safety
/// AVX-512F; every row pointer valid for reading `start + len` floats; C valid for writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_block(b: &Block, c: *mut f32, ldc: usize) {
    let mut t0 = 0;
    while t0 < b.n {
        let nr = NR.min(b.n - t0);
        let mut r0 = 0;
        while r0 < b.m {
            let mr = MR.min(b.m - r0);
            macro_rules! dispatch {
                ($($mr:literal, $nr:literal);*) => {
                    match (mr, nr) {
                        $(($mr, $nr) => tile::<$mr, $nr>(b, r0, t0, c, ldc),)*
                        _ => unreachable!(),
                    }
                };
            }
            dispatch!(4, 6; 4, 5; 4, 4; 4, 3; 4, 2; 4, 1;
                      3, 6; 3, 5; 3, 4; 3, 3; 3, 2; 3, 1;
                      2, 6; 2, 5; 2, 4; 2, 3; 2, 2; 2, 1;
                      1, 6; 1, 5; 1, 4; 1, 3; 1, 2; 1, 1);
            r0 += mr;
        }
        t0 += nr;
    }
}

/// One `R × T` tile over all images of the block, then a reduction into C.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const T: usize>(b: &Block, r0: usize, t0: usize, c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let steps = b.len.div_ceil(16);
    let last_mask: u16 = if b.len.is_multiple_of(16) { u16::MAX } else { ((1u32 << (b.len % 16)) - 1) as u16 };
    for img in 0..b.images {
        let ap: [*const f32; R] = std::array::from_fn(|r| (*b.a_rows.get_unchecked(img * b.m + r0 + r)).add(b.start));
        let bp: [*const f32; T] = std::array::from_fn(|t| (*b.b_rows.get_unchecked(img * b.n + t0 + t)).add(b.start));
        run::<R, T>(&mut acc, &ap, &bp, steps, last_mask);
    }
    for (r, row) in acc.iter().enumerate() {
        for (t, &v) in row.iter().enumerate() {
            *c.add((r0 + r) * ldc + t0 + t) += _mm512_reduce_add_ps(v);
        }
    }
}

/// The inner loop of [`tile`] over one run: `acc[r][t] += a_r · b_t`, 16 pixels per step, the last
/// step masked. Kept out of line, with one loop body for full and partial steps, so that LLVM holds
/// the `R·T` accumulators, `T` B vectors and the A vector in the 32 zmm registers (inlined into the
/// image loop it spilled them).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn run<const R: usize, const T: usize>(
    acc: &mut [[std::arch::x86_64::__m512; T]; R],
    ap: &[*const f32; R],
    bp: &[*const f32; T],
    steps: usize,
    last_mask: u16,
) {
    use std::arch::x86_64::*;
    let mut a = *acc;
    for i in 0..steps {
        let mask = if i + 1 == steps { last_mask } else { u16::MAX };
        let off = i * 16;
        let bv: [__m512; T] = std::array::from_fn(|t| _mm512_maskz_loadu_ps(mask, bp[t].add(off)));
        for (row, &p) in a.iter_mut().zip(ap) {
            let av = _mm512_maskz_loadu_ps(mask, p.add(off));
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, bj, *x);
            }
        }
    }
    *acc = a;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod bench {
    use crate::engine::process_cpu_ms as cpu_ms;
    use super::super::{dense_image, transpose};
    use super::*;
    use crate::engine::testutil::Rng;

    /// Best-of-N CPU time of the weight gradient per yolo26n shape (batch 8 at 320²), inner
    /// products vs im2col + gemm. Run it on one thread (`RAYON_NUM_THREADS=1`): with more, idle
    /// spinning counts too.
    /// `cargo test --release -p ferroyolo --lib wgrad::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_weight_grad() {
        let mut rng = Rng::new(1);
        let shape = |cin, cout, k, s| ConvShape { in_channels: cin, out_channels: cout, kernel: k, stride: s, padding: k / 2, groups: 1 };
        // (shape, h)
        let cases = [
            (shape(80, 80, 1, 1), 40),
            (shape(192, 128, 1, 1), 20),
            (shape(384, 256, 1, 1), 10),
            (shape(48, 64, 1, 1), 80),
            (shape(32, 32, 3, 1), 20),
            (shape(16, 16, 3, 1), 40),
            (shape(64, 16, 3, 1), 40),
            (shape(64, 64, 3, 2), 80),
            (shape(128, 128, 3, 2), 40),
            (shape(16, 32, 3, 2), 160),
            (shape(3, 16, 3, 2), 320),
        ];
        for (s, h) in cases {
            let n = 8;
            let x = rng.tensor([n, s.in_channels, h, h]);
            let (ho, wo) = s.output_size(h, h);
            let dy = rng.tensor([n, s.out_channels, ho, wo]);
            let planes = Planes::of(&x);
            let time = |f: &dyn Fn()| {
                (0..7)
                    .map(|_| {
                        let t = cpu_ms();
                        f();
                        cpu_ms() - t
                    })
                    .fold(f64::MAX, f64::min)
            };
            let dot = time(&|| {
                std::hint::black_box(weight_grad(s, &planes, &dy));
            });
            let wlen = s.weight_len();
            let w_t = vec![0.0f32; wlen];
            let im2col = time(&|| {
                use rayon::prelude::*;
                let acc = (0..n)
                    .into_par_iter()
                    .fold(|| vec![0.0f32; wlen], |mut acc, img| {
                        dense_image(s, &planes, img, &w_t, &dy, None, Some(&mut acc));
                        acc
                    })
                    .reduce(|| vec![0.0f32; wlen], |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    });
                let mut dw = vec![0.0f32; wlen];
                transpose(&acc, wlen / s.out_channels, s.out_channels, &mut dw);
                std::hint::black_box(dw);
            });
            let gf = 2.0 * (wlen * ho * wo * n) as f64 / 1e6;
            println!("{:>4}->{:<4} k{} s{} {h:>3}²: dot {dot:7.2} ms ({:5.1} GFLOP/s), im2col {im2col:7.2} ms ({:5.1})", s.in_channels, s.out_channels, s.kernel, s.stride, gf / dot, gf / im2col);
        }
    }
}
