//! Spatial resampling: max pooling and nearest-neighbour upsampling.

use super::buffers;
use super::profile;
use super::tensor::Tensor;
use super::threads::{for_chunks_mut, parallel_for, SyncPtr};

/// Planes smaller than this are processed in groups so each rayon task has enough work.
const TASK_MIN: usize = 1 << 14;

/// 2-D max pooling with PyTorch semantics (`ceil_mode = false`, dilation 1): the input is padded with
/// -inf, so border windows take the maximum over their in-bounds part.
///
/// # Panics
/// If `kernel` or `stride` is 0, if `padding > kernel / 2` (PyTorch rejects it too), or if the padded
/// input is smaller than the window.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Tensor {
    let span = profile::start();
    let y = max_pool2d_inner(x, kernel, stride, padding);
    span.finish(0, || format!("max_pool2d k{kernel} s{stride} {:?}", x.shape()));
    y
}

fn max_pool2d_inner(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Tensor {
    assert!(kernel > 0 && stride > 0, "max_pool2d: kernel and stride must be positive");
    assert!(padding <= kernel / 2, "max_pool2d: padding {padding} exceeds half the kernel {kernel}");
    let [n, c, h, w] = x.shape();
    assert!(h + 2 * padding >= kernel && w + 2 * padding >= kernel, "max_pool2d: input {h}x{w} smaller than the window");
    let ho = (h + 2 * padding - kernel) / stride + 1;
    let wo = (w + 2 * padding - kernel) / stride + 1;
    let mut out = buffers::zeros(n * c * ho * wo);
    let planes_per_task = (TASK_MIN / (h * w).max(1)).max(1);
    let g = PoolGeometry { h, w, ho, wo, kernel, stride, padding };
    let per_task_in = h * w * planes_per_task;
    let big = out.len() >= TASK_MIN;
    for_chunks_mut(&mut out, ho * wo * planes_per_task, big, &|i, out| {
        let inp = &x.data()[i * per_task_in..((i + 1) * per_task_in).min(x.numel())];
        pool_planes(out, inp, g)
    });
    Tensor::new([n, c, ho, wo], out)
}

#[derive(Clone, Copy)]
struct PoolGeometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// Max-pools whole planes of `inp` into `out`.
///
/// Deliberately compiled for the baseline target only: the rows are short (20 wide in YOLO26's SPPF),
/// and an AVX-512 build of these loops measured 3× slower (one 16-lane step, then scalar tails).
fn pool_planes(out: &mut [f32], inp: &[f32], g: PoolGeometry) {
    let PoolGeometry { h, w, ho, wo, kernel, stride, padding } = g;
    // Separable: the max over a k×k window is the max over k rows of the row-wise maxima.
    let mut rows = vec![f32::NEG_INFINITY; h * wo];
    for (out, inp) in out.chunks_mut(ho * wo).zip(inp.chunks(h * w)) {
        rows.fill(f32::NEG_INFINITY);
        for (dst, src) in rows.chunks_mut(wo).zip(inp.chunks(w)) {
            max_taps(dst, src, kernel, stride, padding);
        }
        out.fill(f32::NEG_INFINITY);
        for (yo, dst) in out.chunks_mut(wo).enumerate() {
            for ky in 0..kernel {
                let y = (yo * stride + ky).wrapping_sub(padding);
                if y < h {
                    for (d, &s) in dst.iter_mut().zip(&rows[y * wo..(y + 1) * wo]) {
                        *d = if s > *d { s } else { *d };
                    }
                }
            }
        }
    }
}

/// `dst[o] = max(dst[o], src[o*stride - padding + t])` over taps `t < kernel` that fall inside `src`.
fn max_taps(dst: &mut [f32], src: &[f32], kernel: usize, stride: usize, padding: usize) {
    let len = src.len();
    for t in 0..kernel {
        // Valid outputs o: 0 <= o*stride + t - padding < len.
        let first = padding.saturating_sub(t).div_ceil(stride);
        let end = if len + padding > t { (len + padding - t).div_ceil(stride).min(dst.len()) } else { 0 };
        if first >= end {
            continue;
        }
        let base = first * stride + t - padding;
        if stride == 1 {
            for (d, &s) in dst[first..end].iter_mut().zip(&src[base..base + (end - first)]) {
                *d = if s > *d { s } else { *d };
            }
        } else {
            for (i, d) in dst[first..end].iter_mut().enumerate() {
                let s = src[base + i * stride];
                *d = if s > *d { s } else { *d };
            }
        }
    }
}

/// Nearest-neighbour upsampling by an integer factor (torch `Upsample(scale_factor=s, mode="nearest")`).
///
/// # Panics
/// If `scale` is 0.
pub fn upsample_nearest(x: &Tensor, scale: usize) -> Tensor {
    let span = profile::start();
    let y = upsample_inner(x, scale);
    span.finish(0, || format!("upsample x{scale} {:?}", x.shape()));
    y
}

fn upsample_inner(x: &Tensor, scale: usize) -> Tensor {
    use std::mem::MaybeUninit;
    assert!(scale > 0, "upsample_nearest: scale must be positive");
    let [n, c, h, w] = x.shape();
    let (ho, wo) = (h * scale, w * scale);
    let total = n * c * ho * wo;
    // Written once, straight into the (uninitialised) output: no zero-fill pass over it first.
    let mut out = buffers::take(total);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let plane = |pl: usize| {
        let src = &x.data()[pl * h * w..(pl + 1) * h * w];
        // SAFETY: plane `pl`'s `ho·wo` outputs lie inside the `total`-element capacity, and each plane
        // is written by exactly one task.
        let o: &mut [MaybeUninit<f32>] = unsafe { std::slice::from_raw_parts_mut(dst.get().add(pl * ho * wo).cast(), ho * wo) };
        for (rows, src) in o.chunks_mut(wo * scale).zip(src.chunks(w)) {
            let (first, rest) = rows.split_at_mut(wo);
            if scale == 2 {
                for (d, &v) in first.chunks_exact_mut(2).zip(src) {
                    d[0].write(v);
                    d[1].write(v);
                }
            } else {
                for (d, &v) in first.chunks_mut(scale).zip(src) {
                    d.iter_mut().for_each(|d| {
                        d.write(v);
                    });
                }
            }
            for r in rest.chunks_mut(wo) {
                r.copy_from_slice(first);
            }
        }
    };
    if total >= TASK_MIN * 4 {
        parallel_for(n * c, &plane);
    } else {
        (0..n * c).for_each(plane);
    }
    // SAFETY: every plane was fully written above.
    unsafe { out.set_len(total) };
    Tensor::new([n, c, ho, wo], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::Rng;

    fn naive_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Tensor {
        let [n, c, h, w] = x.shape();
        let ho = (h + 2 * p - k) / s + 1;
        let wo = (w + 2 * p - k) / s + 1;
        let mut out = Vec::new();
        for i in 0..n {
            for ch in 0..c {
                let plane = x.plane(i, ch);
                for yo in 0..ho {
                    for xo in 0..wo {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..k {
                            for kx in 0..k {
                                let y = (yo * s + ky) as isize - p as isize;
                                let xx = (xo * s + kx) as isize - p as isize;
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    m = m.max(plane[y as usize * w + xx as usize]);
                                }
                            }
                        }
                        out.push(m);
                    }
                }
            }
        }
        Tensor::new([n, c, ho, wo], out)
    }

    #[test]
    fn max_pool_matches_naive() {
        let mut rng = Rng::new(11);
        for &(shape, k, s, p) in &[
            ([1, 3, 20, 20], 5, 1, 2),
            ([2, 2, 13, 7], 5, 1, 2),
            ([1, 4, 9, 11], 3, 2, 1),
            ([1, 2, 8, 8], 2, 2, 0),
            ([1, 1, 6, 5], 3, 3, 1),
            ([1, 70, 20, 20], 5, 1, 2),
        ] {
            let x = rng.tensor(shape);
            let got = max_pool2d(&x, k, s, p);
            assert_eq!(got, naive_max_pool(&x, k, s, p), "shape {shape:?} k{k} s{s} p{p}");
        }
    }

    #[test]
    fn max_pool_border_sees_only_valid_values() {
        // All-negative input: a -inf pad that leaked into a max would not change it, but a zero pad would.
        let x = Tensor::new([1, 1, 3, 3], (1..=9).map(|v| -(v as f32)).collect());
        let y = max_pool2d(&x, 3, 1, 1);
        assert_eq!(y.data(), &[-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -4.0, -4.0, -5.0]);
    }

    #[test]
    fn upsample_repeats_pixels() {
        let mut rng = Rng::new(5);
        let x = rng.tensor([2, 3, 5, 4]);
        for s in [1, 2, 3] {
            let y = upsample_nearest(&x, s);
            assert_eq!(y.shape(), [2, 3, 5 * s, 4 * s]);
            for i in 0..2 {
                for c in 0..3 {
                    for yy in 0..5 * s {
                        for xx in 0..4 * s {
                            assert_eq!(y.plane(i, c)[yy * 4 * s + xx], x.plane(i, c)[(yy / s) * 4 + xx / s]);
                        }
                    }
                }
            }
        }
    }
}
