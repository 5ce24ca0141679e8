//! Operations on quantized activations ([`QTensor`]) that let a quantized network keep its
//! activations in `u8` between INT8 layers: channel concatenation and slicing, nearest upsampling,
//! max pooling, residual addition and requantization to other parameters.
//!
//! Each is exact with respect to the f32 operation on the dequantized values followed by
//! [`quantize_tensor`] with the output's parameters (same rounding, half to even): copies and max
//! (quantization is monotone, so the maximum of quantized values is the quantized maximum) need no
//! arithmetic at all, and the others dequantize, compute in f32 and requantize exactly as
//! [`dequantize`] and [`quantize_tensor`] do.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::conv::SyncPtr;
use super::{for_items, quad_buffer, quad_buffer_uninit, requantize, QParams, QTensor, PARALLEL_MIN};
use crate::engine::profile;
use crate::engine::tensor::Tensor;

/// `len` quads of `out` from quad `start` on, for one parallel item.
///
/// # Safety
/// `start + len` must lie inside the buffer `out` points into, which must outlive the use, and no
/// other item may touch that range.
unsafe fn region<'a>(out: SyncPtr<u32>, start: usize, len: usize) -> &'a mut [u32] {
    unsafe { std::slice::from_raw_parts_mut(out.get().add(start), len) }
}

/// As [`region`], for output not yet initialised (the capacity of an [`uninit_quads`] vector).
///
/// # Safety
/// As [`region`].
unsafe fn region_uninit<'a>(out: SyncPtr<u32>, start: usize, len: usize) -> &'a mut [MaybeUninit<u32>] {
    unsafe { std::slice::from_raw_parts_mut(out.get().add(start).cast(), len) }
}

/// The quads as bytes (channel `4g + j` of a pixel is byte `j` of its quad on little-endian targets;
/// byte-wise operations such as max and copies do not depend on which byte is which).
fn bytes(quads: &[u32]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and every byte of a u32 is initialised.
    unsafe { std::slice::from_raw_parts(quads.as_ptr().cast::<u8>(), quads.len() * 4) }
}

fn bytes_mut(quads: &mut [u32]) -> &mut [u8] {
    // SAFETY: as in `bytes`; any byte pattern is a valid u32.
    unsafe { std::slice::from_raw_parts_mut(quads.as_mut_ptr().cast::<u8>(), quads.len() * 4) }
}

/// The channel concatenation of `parts` (each a tensor and a range of its channels; same batch and
/// spatial size, same [`QParams`]) as whole-plane copies of quads, or `None` when that does not
/// apply: different parameters, or a range that does not start on a quad boundary, or one whose
/// length is not a multiple of 4 except at the end of the last part's tensor. One part is a channel
/// slice (`narrow`).
///
/// # Panics
/// If `parts` is empty, a range exceeds its tensor's channels, or the parts differ in batch or
/// spatial size.
pub fn concat_quantized(parts: &[(&QTensor, Range<usize>)]) -> Option<QTensor> {
    let (first, _) = parts.first().expect("concat_quantized: no parts");
    let [n, _, h, w] = first.shape();
    let params = first.params();
    for (i, (t, r)) in parts.iter().enumerate() {
        let [tn, tc, th, tw] = t.shape();
        assert!(tn == n && th == h && tw == w && r.end <= tc, "concat_quantized: part {:?} (channels {r:?}) does not fit [{n}, _, {h}, {w}]", t.shape());
        let last = i + 1 == parts.len();
        let aligned_end = r.len() % 4 == 0 || (last && r.end == tc);
        if t.params() != params || r.start % 4 != 0 || !aligned_end {
            return None;
        }
    }
    let span = profile::start();
    let c: usize = parts.iter().map(|(_, r)| r.len()).sum();
    let (plane, groups) = (h * w, c.div_ceil(4));
    // Output quad group -> (part, its quad group).
    let sources: Vec<(usize, usize)> = parts.iter().enumerate().flat_map(|(i, (_, r))| (r.start / 4..r.end.div_ceil(4)).map(move |g| (i, g))).collect();
    debug_assert_eq!(sources.len(), groups);
    let total = n * groups * plane;
    let mut data = quad_buffer_uninit(total);
    let out = SyncPtr(data.as_mut_ptr());
    let work = |gi: usize| {
        let (img, g) = (gi / groups, gi % groups);
        let (part, pg) = sources[g];
        let src = parts[part].0.quad_plane(img, pg);
        // SAFETY: item gi writes quad plane gi only, `plane` quads inside the capacity.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.get().add(gi * plane), plane) };
    };
    for_items(n * groups, total, &work);
    // SAFETY: the items wrote every quad plane.
    unsafe { data.set_len(total) };
    span.finish(0, || format!("int8 concat {} parts -> [{n}, {c}, {h}, {w}]", parts.len()));
    Some(QTensor { shape: [n, c, h, w], params, data })
}

/// Nearest-neighbour upsampling by an integer factor (quad copies; exact).
///
/// # Panics
/// If `scale` is 0.
pub fn upsample_nearest_quantized(x: &QTensor, scale: usize) -> QTensor {
    assert!(scale > 0, "upsample_nearest_quantized: scale must be positive");
    let span = profile::start();
    let [n, c, h, w] = x.shape();
    let (ho, wo, groups) = (h * scale, w * scale, x.quad_channels());
    let total = n * groups * ho * wo;
    let mut data = quad_buffer_uninit(total);
    let out = SyncPtr(data.as_mut_ptr());
    let work = |gi: usize| {
        let src = x.quad_plane(gi / groups, gi % groups);
        // SAFETY: item gi writes output quad plane gi only.
        let dst = unsafe { region_uninit(out, gi * ho * wo, ho * wo) };
        for (rows, src) in dst.chunks_exact_mut(wo * scale).zip(src.chunks_exact(w)) {
            let (first, rest) = rows.split_at_mut(wo);
            for (d, &v) in first.chunks_exact_mut(scale).zip(src) {
                d.iter_mut().for_each(|d| {
                    d.write(v);
                });
            }
            for r in rest.chunks_exact_mut(wo) {
                r.copy_from_slice(first);
            }
        }
    };
    for_items(n * groups, total, &work);
    // SAFETY: the items wrote every row of every output quad plane.
    unsafe { data.set_len(total) };
    span.finish(0, || format!("int8 upsample x{scale} [{n}, {c}, {h}, {w}]"));
    QTensor { shape: [n, c, ho, wo], params: x.params(), data }
}

/// 2-D max pooling with PyTorch semantics (as [`crate::engine::max_pool2d`]: border windows take
/// the maximum over their in-bounds part), on the `u8` values: exact, since quantization is monotone.
///
/// # Panics
/// If `kernel` or `stride` is 0, if `padding > kernel / 2`, or if the padded input is smaller than
/// the window.
pub fn max_pool2d_quantized(x: &QTensor, kernel: usize, stride: usize, padding: usize) -> QTensor {
    assert!(kernel > 0 && stride > 0, "max_pool2d_quantized: kernel and stride must be positive");
    assert!(padding <= kernel / 2, "max_pool2d_quantized: padding {padding} exceeds half the kernel {kernel}");
    let [n, c, h, w] = x.shape();
    assert!(h + 2 * padding >= kernel && w + 2 * padding >= kernel, "max_pool2d_quantized: input {h}x{w} smaller than the window");
    let span = profile::start();
    let ho = (h + 2 * padding - kernel) / stride + 1;
    let wo = (w + 2 * padding - kernel) / stride + 1;
    let groups = x.quad_channels();
    let mut data = quad_buffer(n * groups * ho * wo);
    let out = SyncPtr(data.as_mut_ptr());
    let work = |gi: usize| {
        let src = bytes(x.quad_plane(gi / groups, gi % groups));
        // SAFETY: item gi writes output quad plane gi only.
        let dst = bytes_mut(unsafe { region(out, gi * ho * wo, ho * wo) });
        // Separable: row-wise maxima over the horizontal taps, then over the vertical ones. Every
        // window holds at least one in-bounds value (padding ≤ kernel / 2), so starting from 0 is
        // the same as starting from -inf.
        let mut rows = vec![0u8; h * wo * 4];
        for (r, s) in rows.chunks_exact_mut(wo * 4).zip(src.chunks_exact(w * 4)) {
            max_taps_quads(r, s, kernel, stride, padding);
        }
        for (yo, d) in dst.chunks_exact_mut(wo * 4).enumerate() {
            for ky in 0..kernel {
                let y = (yo * stride + ky).wrapping_sub(padding);
                if y < h {
                    for (d, &s) in d.iter_mut().zip(&rows[y * wo * 4..(y + 1) * wo * 4]) {
                        *d = (*d).max(s);
                    }
                }
            }
        }
    };
    for_items(n * groups, n * groups * h * w, &work);
    span.finish(0, || format!("int8 max_pool2d k{kernel} s{stride} [{n}, {c}, {h}, {w}]"));
    QTensor { shape: [n, c, ho, wo], params: x.params(), data }
}

/// `dst[o] = max(dst[o], src[o·stride - padding + t])` byte-wise over the pixels (4 bytes each) of a
/// row, for the taps `t < kernel` that fall inside `src`.
fn max_taps_quads(dst: &mut [u8], src: &[u8], kernel: usize, stride: usize, padding: usize) {
    let (len, out_len) = (src.len() / 4, dst.len() / 4);
    for t in 0..kernel {
        // Valid outputs o: 0 <= o·stride + t - padding < len.
        let first = padding.saturating_sub(t).div_ceil(stride);
        let end = if len + padding > t { (len + padding - t).div_ceil(stride).min(out_len) } else { 0 };
        if first >= end {
            continue;
        }
        let base = first * stride + t - padding;
        if stride == 1 {
            for (d, &s) in dst[4 * first..4 * end].iter_mut().zip(&src[4 * base..4 * (base + end - first)]) {
                *d = (*d).max(s);
            }
        } else {
            for (i, d) in dst[4 * first..4 * end].chunks_exact_mut(4).enumerate() {
                let p = 4 * (base + i * stride);
                for (d, &s) in d.iter_mut().zip(&src[p..p + 4]) {
                    *d = (*d).max(s);
                }
            }
        }
    }
}

/// The residual sum `y + x` (f32 `y`, quantized `x`) quantized to `out`: `x` is dequantized and
/// added to `y` in f32, and the sum quantized once, exactly as `quantize_tensor(y + dequantize(x))`.
///
/// # Panics
/// If the shapes differ.
pub fn add_quantized(y: &Tensor, x: &QTensor, out: QParams) -> QTensor {
    assert_eq!(y.shape(), x.shape(), "add_quantized: shapes differ");
    let span = profile::start();
    let [n, c, h, w] = y.shape();
    let (plane, groups) = (h * w, c.div_ceil(4));
    let mut data = quad_buffer(n * groups * plane);
    let (inv, zp) = (1.0 / out.scale, f32::from(out.zero_point));
    let (xs, xzp) = (x.params().scale, i32::from(x.params().zero_point));
    let dst_ptr = SyncPtr(data.as_mut_ptr());
    let work = |gi: usize| {
        let (img, g) = (gi / groups, gi % groups);
        // SAFETY: item gi writes quad plane gi only.
        let dst = unsafe { region(dst_ptr, gi * plane, plane) };
        let xq = x.quad_plane(img, g);
        let present = (c - 4 * g).min(4);
        let add = |q: u32, shift: u32, v: f32| requantize(v + ((q >> shift & 0xff) as i32 - xzp) as f32 * xs, inv, zp) << shift;
        if present == 4 {
            // One pass over whole quads, so that it vectorises.
            let [y0, y1, y2, y3] = std::array::from_fn(|j| y.plane(img, 4 * g + j));
            for (((((d, &q), &a), &b), &c), &e) in dst.iter_mut().zip(xq).zip(y0).zip(y1).zip(y2).zip(y3) {
                *d = add(q, 0, a) | add(q, 8, b) | add(q, 16, c) | add(q, 24, e);
            }
        } else {
            let fill = (present..4).fold(0u32, |acc, j| acc | u32::from(out.zero_point) << (8 * j));
            dst.fill(fill);
            for j in 0..present {
                for ((d, &q), &v) in dst.iter_mut().zip(xq).zip(y.plane(img, 4 * g + j)) {
                    *d |= add(q, 8 * j as u32, v);
                }
            }
        }
    };
    for_items(n * groups, n * groups * plane, &work);
    span.finish(0, || format!("int8 add [{n}, {c}, {h}, {w}]"));
    QTensor { shape: [n, c, h, w], params: out, data }
}

/// `x` requantized to `out` (a 256-entry table: exactly `quantize_tensor(dequantize(x), out)`).
pub fn requantize_tensor(x: &QTensor, out: QParams) -> QTensor {
    if x.params() == out {
        return x.clone();
    }
    let span = profile::start();
    let [n, c, h, w] = x.shape();
    let p = x.params();
    let (inv, zp) = (1.0 / out.scale, f32::from(out.zero_point));
    let table: Vec<u8> = (0..=255u8).map(|q| requantize(p.dequantize(q), inv, zp) as u8).collect();
    let src = bytes(x.quads());
    let mut data = quad_buffer(x.quads().len());
    let items = data.len().div_ceil(PARALLEL_MIN).max(1);
    let total = data.len();
    let out_ptr = SyncPtr(data.as_mut_ptr());
    let work = |i: usize| {
        let (start, end) = (i * PARALLEL_MIN, ((i + 1) * PARALLEL_MIN).min(total));
        // SAFETY: item i writes quads start..end only.
        let dst = bytes_mut(unsafe { region(out_ptr, start, end - start) });
        for (d, &s) in dst.iter_mut().zip(&src[4 * start..4 * end]) {
            *d = table[s as usize];
        }
    };
    for_items(items, total, &work);
    span.finish(0, || format!("int8 requantize [{n}, {c}, {h}, {w}]"));
    QTensor { shape: [n, c, h, w], params: out, data }
}

/// The smallest parameters whose range (`[scale·(0 - zp), scale·(255 - zp)]`) covers both `a`'s and
/// `b`'s: for one tensor read by several INT8 layers calibrated separately. Equal inputs give `a`.
pub fn union_params(a: QParams, b: QParams) -> QParams {
    if a == b {
        return a;
    }
    let range = |p: QParams| (p.dequantize(0), p.dequantize(255));
    let ((alo, ahi), (blo, bhi)) = (range(a), range(b));
    QParams::from_min_max(alo.min(blo), ahi.max(bhi)).unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, quantize_tensor};
    use super::*;
    use crate::engine::testutil::Rng;

    fn random(shape: [usize; 4], rng: &mut Rng, lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect())
    }

    fn params(scale: f32, zp: u8) -> QParams {
        QParams::new(scale, zp).unwrap()
    }

    #[test]
    fn quantize_tensor_equals_the_scalar_rounding() {
        // Rows split over several items (3000 wide, 130 high), partial last quads of 1..=3 channels.
        let mut rng = Rng::new(1);
        for shape in [[1, 3, 64, 48], [2, 5, 7, 9], [1, 8, 3, 3000], [1, 1, 1, 1], [1, 6, 130, 70]] {
            let x = random(shape, &mut rng, -3.0, 5.0);
            let p = params(0.03, 97);
            let values: Vec<u8> = x.data().iter().map(|&v| p.quantize(v)).collect();
            assert_eq!(quantize_tensor(&x, p), QTensor::from_nchw_u8(shape, p, &values).unwrap(), "{shape:?}");
        }
    }

    #[test]
    fn concat_and_narrow_equal_the_f32_ops_and_refuse_misaligned_parts() {
        let mut rng = Rng::new(2);
        let p = params(0.02, 40);
        let a = quantize_tensor(&random([2, 8, 5, 6], &mut rng, -1.0, 4.0), p);
        let b = quantize_tensor(&random([2, 6, 5, 6], &mut rng, -1.0, 4.0), p);
        let (fa, fb) = (dequantize(&a), dequantize(&b));
        let want = quantize_tensor(&crate::engine::concat_channels(&[&fa, &fb]), p);
        assert_eq!(concat_quantized(&[(&a, 0..8), (&b, 0..6)]).unwrap(), want);
        let want = quantize_tensor(&crate::engine::narrow_channels(&fa, 4, 4), p);
        assert_eq!(concat_quantized(&[(&a, 4..8)]).unwrap(), want);
        let want = quantize_tensor(&crate::engine::concat_channels(&[&crate::engine::narrow_channels(&fa, 4, 4), &fb]), p);
        assert_eq!(concat_quantized(&[(&a, 4..8), (&b, 0..6)]).unwrap(), want);
        // Not on quad boundaries, a partial quad before another part, different parameters.
        assert!(concat_quantized(&[(&a, 2..6)]).is_none());
        assert!(concat_quantized(&[(&b, 0..6), (&a, 0..8)]).is_none());
        let b2 = requantize_tensor(&b, params(0.03, 40));
        assert!(concat_quantized(&[(&a, 0..8), (&b2, 0..6)]).is_none());
    }

    #[test]
    fn upsample_and_max_pool_equal_the_f32_ops() {
        let mut rng = Rng::new(3);
        let p = params(0.05, 120);
        for shape in [[1, 8, 20, 20], [2, 7, 5, 9], [1, 4, 1, 1]] {
            let q = quantize_tensor(&random(shape, &mut rng, -6.0, 6.0), p);
            let f = dequantize(&q);
            for s in [1, 2, 3] {
                assert_eq!(upsample_nearest_quantized(&q, s), quantize_tensor(&crate::engine::upsample_nearest(&f, s), p), "{shape:?} x{s}");
            }
            for (k, st, pad) in [(5, 1, 2), (3, 2, 1), (1, 1, 0), (2, 2, 0)] {
                if shape[2] + 2 * pad < k || shape[3] + 2 * pad < k {
                    continue;
                }
                let want = quantize_tensor(&crate::engine::max_pool2d(&f, k, st, pad), p);
                assert_eq!(max_pool2d_quantized(&q, k, st, pad), want, "{shape:?} k{k} s{st} p{pad}");
            }
        }
    }

    #[test]
    fn add_and_requantize_equal_dequantize_op_quantize() {
        let mut rng = Rng::new(4);
        for shape in [[1, 8, 9, 11], [2, 6, 4, 4], [1, 3, 40, 40]] {
            let x = quantize_tensor(&random(shape, &mut rng, -0.3, 4.0), params(0.017, 18));
            let y = random(shape, &mut rng, -2.0, 3.0);
            // Saturating on purpose at the top: the output range is narrower than the sum's.
            let out = params(0.025, 20);
            let mut sum = y.clone();
            crate::engine::add_assign(&mut sum, &dequantize(&x));
            assert_eq!(add_quantized(&y, &x, out), quantize_tensor(&sum, out), "{shape:?}");
            for to in [params(0.01, 0), params(0.05, 200), x.params()] {
                assert_eq!(requantize_tensor(&x, to), quantize_tensor(&dequantize(&x), to), "{shape:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn union_params_cover_both_ranges() {
        let (a, b) = (params(0.01, 30), params(0.02, 10));
        let u = union_params(a, b);
        let range = |p: QParams| (p.dequantize(0), p.dequantize(255));
        let ((ulo, uhi), (alo, ahi), (blo, bhi)) = (range(u), range(a), range(b));
        let tol = u.scale;
        assert!(ulo <= alo.min(blo) + tol && uhi >= ahi.max(bhi) - tol, "{u:?}");
        assert_eq!(union_params(a, a), a);
    }
}
