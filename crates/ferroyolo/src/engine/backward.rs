//! Backward (gradient) kernels for training, one per forward operation YOLO26 uses.
//!
//! The forward kernels are inference-shaped (BatchNorm folded, activations fused); training needs
//! the unfolded pieces and their derivatives:
//!
//! * [`conv2d_backward`]: gradients of a convolution (no bias, or with bias) with respect to its
//!   input, weight and bias, for any groups (depthwise included), stride and padding. Dense groups
//!   use im2col + `gemm`; depthwise runs a direct per-channel loop.
//! * [`channel_stats`], [`batch_norm_act`], [`batch_norm_act_backward`], [`update_running_stats`]:
//!   BatchNorm2d in training mode (batch statistics) or eval mode (running statistics), fused with
//!   the following activation, and its backward.
//! * [`silu_backward`], [`max_pool2d_backward`], [`upsample_nearest_backward`], [`add_channels`]
//!   (concat / split backward), [`attention_backward`].
//!
//! A convolution's input is described by [`Planes`]: per image, one `h × w` slice per input channel,
//! so a convolution over a channel concatenation (or a channel range of a tensor) needs no copy,
//! matching [`Conv2d::forward_parts`](super::Conv2d::forward_parts).
//!
//! Reductions over the batch (weight gradients, BatchNorm sums) run per thread and are summed at the
//! end; BatchNorm statistics accumulate in `f64`, as PyTorch's CPU kernel does.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::conv::Activation;

mod dgrad;
mod wgrad;
use super::profile;
use super::simd;
use super::tensor::Tensor;
use super::threads::parallel_for;
use super::buffers;

/// The input channels of a convolution: `n` images of `channels` planes of `h × w`, borrowed from
/// channel ranges of one or more tensors (a channel concatenation that is never built).
#[derive(Clone, Debug)]
pub struct Planes<'a> {
    pub n: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    /// `n × channels` planes, image-major.
    planes: Vec<&'a [f32]>,
}

impl<'a> Planes<'a> {
    /// The concatenation of `parts` (each a tensor and a channel range of it), in order.
    ///
    /// # Panics
    /// If there are no parts, they disagree in n, h or w, or a range is outside its tensor.
    pub fn new(parts: &[(&'a Tensor, Range<usize>)]) -> Planes<'a> {
        assert!(!parts.is_empty(), "Planes: no input");
        let [n, _, h, w] = parts[0].0.shape();
        for (t, r) in parts {
            let [tn, tc, th, tw] = t.shape();
            assert_eq!((tn, th, tw), (n, h, w), "Planes: parts differ in n, h or w");
            assert!(r.start <= r.end && r.end <= tc, "Planes: channels {r:?} outside 0..{tc}");
        }
        let channels = parts.iter().map(|(_, r)| r.len()).sum();
        let mut planes = Vec::with_capacity(n * channels);
        for img in 0..n {
            for (t, r) in parts {
                planes.extend(r.clone().map(|c| t.plane(img, c)));
            }
        }
        Planes { n, channels, h, w, planes }
    }

    /// All channels of one tensor.
    pub fn of(t: &'a Tensor) -> Planes<'a> {
        Planes::new(&[(t, 0..t.shape()[1])])
    }

    /// The planes of image `img`, one per channel.
    pub fn image(&self, img: usize) -> &[&'a [f32]] {
        &self.planes[img * self.channels..(img + 1) * self.channels]
    }

    /// Copies the planes into one tensor (`[n, channels, h, w]`).
    pub fn to_tensor(&self) -> Tensor {
        let mut data = Vec::with_capacity(self.planes.len() * self.h * self.w);
        for p in &self.planes {
            data.extend_from_slice(p);
        }
        Tensor::new([self.n, self.channels, self.h, self.w], data)
    }
}

/// The hyper-parameters of a convolution (PyTorch semantics: cross-correlation, zero padding,
/// dilation 1, square kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvShape {
    /// Output `(height, width)` for an input of `h × w`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)
    }

    /// Length of the weight tensor `[out, in/groups, k, k]`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.in_channels / self.groups) * self.kernel * self.kernel
    }

    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }
}

/// Which gradients a backward call should produce (the others are skipped, not just dropped:
/// a frozen layer costs nothing, and the first layer never computes its input gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Gradients of one convolution; each is `None` when it was not asked for.
#[derive(Debug, Default)]
pub struct ConvGrads {
    /// `[n, in_channels, h, w]`.
    pub input: Option<Tensor>,
    /// `[out, in/groups, k, k]`.
    pub weight: Option<Vec<f32>>,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
}

thread_local! {
    /// Per-thread im2col buffer, kept between calls so large layers do not fault in fresh pages.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// A second per-thread buffer (the transposed output gradient), used while `SCRATCH` is held.
    static SCRATCH2: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

fn with_scratch2<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH2, len, f)
}

fn with_buffer<R>(key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = key.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    key.with(|s| *s.borrow_mut() = buf);
    r
}

/// A strided view of a matrix inside a slice: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `c (m × n, row stride ldc) = [c +] a (m × k) · b (k × n)`, single-threaded (callers parallelise
/// over images or heads, which keeps every thread busy without nested splitting).
#[allow(clippy::too_many_arguments)]
fn matmul(m: usize, n: usize, k: usize, c: &mut [f32], ldc: usize, accumulate: bool, a: Mat, b: Mat) {
    matmul_strided(m, n, k, c, ldc, 1, accumulate, a, b)
}

/// [`matmul`] with any layout of `c`: element `(i, j)` at `c[i·c_rs + j·c_cs]`.
#[allow(clippy::too_many_arguments)]
fn matmul_strided(m: usize, n: usize, k: usize, c: &mut [f32], c_rs: usize, c_cs: usize, accumulate: bool, a: Mat, b: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, c_rs, c_cs) < c.len(), "matmul: c out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs + j * c_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(last(m, k, a.rs, a.cs) < a.data.len(), "matmul: a out of bounds");
    assert!(last(k, n, b.rs, b.cs) < b.data.len(), "matmul: b out of bounds");
    // SAFETY: the asserts above keep every index gemm touches inside its slice; `c` is borrowed
    // mutably, so it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Gradients of `y = conv(x, weight) [+ bias]` given `dy = ∂L/∂y` (`[n, out, ho, wo]`).
///
/// # Panics
/// If the shapes disagree with `shape`.
pub fn conv2d_backward(shape: ConvShape, x: &Planes, weight: &[f32], dy: &Tensor, needs: Needs) -> ConvGrads {
    let (n, h, w) = (x.n, x.h, x.w);
    let (ho, wo) = shape.output_size(h, w);
    assert_eq!(x.channels, shape.in_channels, "conv2d_backward: input channels");
    assert_eq!(dy.shape(), [n, shape.out_channels, ho, wo], "conv2d_backward: dy shape");
    assert_eq!(weight.len(), shape.weight_len(), "conv2d_backward: weight length");
    let flops = 2 * (shape.weight_len() * ho * wo * n) as u64;
    let label = |what: &str| {
        let ConvShape { in_channels: ci, out_channels: co, kernel: k, stride: s, groups: g, .. } = shape;
        format!("bwd conv {what} k{k} s{s} g{g} {ci}->{co} {h}x{w}")
    };
    // Dense weight gradients by inner products where the CPU allows (no im2col).
    let span = profile::start();
    let dot_weight = if needs.weight && !shape.is_depthwise() { wgrad::weight_grad(shape, x, dy) } else { None };
    if dot_weight.is_some() {
        span.finish(flops, || label("dW"));
    }
    // With stride 1 the input gradient is itself a convolution (of dy, with the kernels flipped and
    // in/out swapped), which the engine's forward kernels run much faster than im2col + col2im
    // (profiled as a forward convolution).
    let via_forward = needs.input && shape.stride == 1 && shape.padding < shape.kernel;
    // Strided dense convolutions: the adjoint of the forward kernel's phase layout, where the CPU allows.
    let strided = if needs.input && shape.stride > 1 && !shape.is_depthwise() {
        let span = profile::start();
        let dx = dgrad::input_grad_strided(shape, weight, dy, h, w);
        if dx.is_some() {
            span.finish(flops, || label("dX"));
        }
        dx
    } else {
        None
    };
    let via_phases = strided.is_some();
    let mut input = if via_forward {
        Some(transposed_conv(shape, weight).forward(dy, Activation::Identity))
    } else if via_phases {
        strided
    } else {
        needs.input.then(|| Tensor::zeros([n, shape.in_channels, h, w]))
    };
    // The rest: bias, and whatever the im2col path or the depthwise loop computes.
    let span = profile::start();
    let bias = needs.bias.then(|| bias_grad(dy));
    let col2im_input = needs.input && !via_forward && !via_phases;
    let im2col_weight = needs.weight && dot_weight.is_none();
    let chunks: Vec<Option<&mut [f32]>> = match input.as_mut().filter(|_| col2im_input) {
        Some(t) => t.data_mut().chunks_mut(shape.in_channels * h * w).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    };
    let weight_grad = if shape.is_depthwise() {
        depthwise_backward(shape, x, weight, dy, chunks, needs.weight)
    } else if col2im_input || im2col_weight {
        // Per group, W as [cout_g][kk] and its transpose [kk][cout_g] (the layout the gemms use,
        // for both the input gradient's Wᵀ and the accumulated weight gradient).
        let (g, kk) = (shape.groups, shape.weight_len() / shape.out_channels);
        let cout_g = shape.out_channels / g;
        let group_t = |src: &[f32], dst: &mut [f32], rows: usize, cols: usize| {
            for (s, d) in src.chunks(rows * cols).zip(dst.chunks_mut(rows * cols)) {
                transpose(s, rows, cols, d);
            }
        };
        let mut w_t = vec![0.0f32; weight.len()];
        group_t(weight, &mut w_t, cout_g, kk);
        let wlen = weight.len();
        let dw_t = chunks
            .into_par_iter()
            .enumerate()
            .fold(
                || im2col_weight.then(|| vec![0.0f32; wlen]),
                |mut acc, (img, dx)| {
                    dense_image(shape, x, img, &w_t, dy, dx, acc.as_deref_mut());
                    acc
                },
            )
            .reduce(|| None, sum_opt);
        dw_t.map(|t| {
            let mut dw = vec![0.0f32; wlen];
            group_t(&t, &mut dw, kk, cout_g);
            dw
        })
        .or(dot_weight)
    } else {
        dot_weight
    };
    let counted = if shape.is_depthwise() { needs.input as u64 + needs.weight as u64 } else { col2im_input as u64 + im2col_weight as u64 };
    let what = match (shape.is_depthwise(), col2im_input, im2col_weight) {
        (true, ..) => "depthwise",
        (false, true, false) => "dX",
        (false, false, true) => "dW im2col",
        (false, true, true) => "dX+dW",
        (false, false, false) => "bias",
    };
    span.finish(flops * counted, || label(what));
    ConvGrads { input, weight: weight_grad, bias }
}

/// The stride-1 convolution whose output is the input gradient of `shape`'s convolution:
/// `W'[ci][co'][ky][kx] = W[co][ci'][k−1−ky][k−1−kx]` within each group, padding `k − 1 − p`.
fn transposed_conv(shape: ConvShape, weight: &[f32]) -> super::Conv2d {
    let ConvShape { in_channels: cin, out_channels: cout, kernel: k, padding: p, groups: g, .. } = shape;
    let (cin_g, cout_g) = (cin / g, cout / g);
    let kk = k * k;
    let mut wt = vec![0.0f32; weight.len()];
    for co in 0..cout {
        let (grp, co_l) = (co / cout_g, co % cout_g);
        for ci_l in 0..cin_g {
            let src = &weight[(co * cin_g + ci_l) * kk..][..kk];
            let dst = &mut wt[((grp * cin_g + ci_l) * cout_g + co_l) * kk..][..kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    super::Conv2d::new(cout, cin, k, 1, k - 1 - p, g, wt, None).expect("a valid convolution has a valid transpose")
}

fn sum_opt(a: Option<Vec<f32>>, b: Option<Vec<f32>>) -> Option<Vec<f32>> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            Some(a)
        }
        (a, None) => a,
        (None, b) => b,
    }
}

/// `Σ dy` per output channel.
fn bias_grad(dy: &Tensor) -> Vec<f32> {
    let [n, c, _, _] = dy.shape();
    // f32 lane sums within a plane (vectorised), f64 across planes, as for BatchNorm statistics.
    (0..c).map(|ch| (0..n).map(|img| dispatch!(lane_sum(dy.plane(img, ch), 0.0, false))).sum::<f64>() as f32).collect()
}

/// One image of a dense (or grouped) convolution: `dWᵀ += col · dYᵀ`, `dX = col2im(Wᵀ · dY)`.
///
/// The weight gradient is accumulated transposed (`[group][cin_g·k·k][cout_g]`, see
/// [`conv2d_backward`]) with `dY` transposed into scratch first: the gemm runs about twice as fast
/// with both its right-hand side and its output row-major, and the column count `cin_g·k·k` is
/// usually the larger dimension, which suits its tall micro-kernel tiles.
#[allow(clippy::too_many_arguments)]
fn dense_image(shape: ConvShape, x: &Planes, img: usize, w_t: &[f32], dy: &Tensor, dx: Option<&mut [f32]>, mut dw_t: Option<&mut [f32]>) {
    let (h, w) = (x.h, x.w);
    let (ho, wo) = shape.output_size(h, w);
    let npix = ho * wo;
    let (k, s, p, g) = (shape.kernel, shape.stride, shape.padding, shape.groups);
    let (cin_g, cout_g) = (shape.in_channels / g, shape.out_channels / g);
    let kk = cin_g * k * k;
    let direct = k == 1 && s == 1 && p == 0;
    let planes = x.image(img);
    let dy_img = dy.image(img);
    let mut dx = dx;
    for grp in 0..g {
        let xs = &planes[grp * cin_g..(grp + 1) * cin_g];
        let dy_g = &dy_img[grp * cout_g * npix..(grp + 1) * cout_g * npix];
        let dyg = Mat { data: dy_g, rs: npix, cs: 1 };
        // Wᵀ of this group, (kk × cout_g) row-major.
        let wt = Mat { data: &w_t[grp * kk * cout_g..(grp + 1) * kk * cout_g], rs: cout_g, cs: 1 };
        let dwg = dw_t.as_deref_mut().map(|d| &mut d[grp * kk * cout_g..(grp + 1) * kk * cout_g]);
        with_scratch2(if dwg.is_some() { npix * cout_g } else { 0 }, |dyt| {
            if dwg.is_some() {
                transpose(dy_g, cout_g, npix, dyt);
            }
            let dyt = Mat { data: dyt, rs: cout_g, cs: 1 };
            if direct {
                if let Some(dwg) = dwg {
                    // One gemm per run of planes that are consecutive in memory (one part of the input).
                    let mut c0 = 0;
                    while c0 < cin_g {
                        let mut len = 1;
                        while c0 + len < cin_g && std::ptr::eq(xs[c0 + len].as_ptr(), xs[c0].as_ptr().wrapping_add(len * npix)) {
                            len += 1;
                        }
                        // SAFETY: the run check above proved planes c0..c0+len are one contiguous
                        // block of `len · npix` floats inside the same tensor.
                        let run = unsafe { std::slice::from_raw_parts(xs[c0].as_ptr(), len * npix) };
                        matmul(len, cout_g, npix, &mut dwg[c0 * cout_g..], cout_g, true, Mat { data: run, rs: npix, cs: 1 }, dyt);
                        c0 += len;
                    }
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let dxg = &mut dx[grp * cin_g * npix..(grp + 1) * cin_g * npix];
                    matmul(cin_g, npix, cout_g, dxg, npix, false, wt, dyg);
                }
                return;
            }
            with_scratch(kk * npix, |col| {
                if let Some(dwg) = dwg {
                    im2col(xs, h, w, ho, wo, k, s, p, col);
                    matmul(kk, cout_g, npix, dwg, cout_g, true, Mat { data: col, rs: npix, cs: 1 }, dyt);
                }
                if let Some(dx) = dx.as_deref_mut() {
                    matmul(kk, npix, cout_g, col, npix, false, wt, dyg);
                    col2im(col, &mut dx[grp * cin_g * h * w..(grp + 1) * cin_g * h * w], h, w, ho, wo, k, s, p);
                }
            });
        });
    }
}

/// `dst (cols × rows) = srcᵀ` for a row-major `rows × cols` source, in cache-sized tiles.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// `col[(ci·k + ky)·k + kx][yo·wo + xo] = x[ci][yo·s + ky − p][xo·s + kx − p]` (0 outside).
#[allow(clippy::too_many_arguments)]
fn im2col(planes: &[&[f32]], h: usize, w: usize, ho: usize, wo: usize, k: usize, s: usize, p: usize, col: &mut [f32]) {
    for (t, dst) in col.chunks_mut(ho * wo).enumerate().take(planes.len() * k * k) {
        let (plane, ky, kx) = (planes[t / (k * k)], t / k % k, t % k);
        let (x0, x1) = valid_range(kx, s, p, w, wo);
        for (yo, row) in dst.chunks_mut(wo).enumerate() {
            let y = (yo * s + ky).wrapping_sub(p);
            if y >= h {
                row.fill(0.0);
                continue;
            }
            row[..x0].fill(0.0);
            row[x1.max(x0)..].fill(0.0);
            let src = &plane[y * w..(y + 1) * w];
            for (xo, d) in row.iter_mut().enumerate().take(x1).skip(x0) {
                *d = src[xo * s + kx - p];
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input pixel it was read from.
#[allow(clippy::too_many_arguments)]
fn col2im(col: &[f32], dx: &mut [f32], h: usize, w: usize, ho: usize, wo: usize, k: usize, s: usize, p: usize) {
    for (t, src) in col.chunks(ho * wo).enumerate().take(dx.len() / (h * w) * k * k) {
        let (ci, ky, kx) = (t / (k * k), t / k % k, t % k);
        let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
        let (x0, x1) = valid_range(kx, s, p, w, wo);
        for (yo, row) in src.chunks(wo).enumerate() {
            let y = (yo * s + ky).wrapping_sub(p);
            if y >= h {
                continue;
            }
            let dst = &mut plane[y * w..(y + 1) * w];
            for xo in x0..x1 {
                dst[xo * s + kx - p] += row[xo];
            }
        }
    }
}

/// Output columns `xo` whose tap `kx` reads inside the input (`0 ≤ xo·s + kx − p < w`).
fn valid_range(kx: usize, s: usize, p: usize, w: usize, wo: usize) -> (usize, usize) {
    let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
    let hi = if w + p > kx { ((w + p - kx - 1) / s + 1).min(wo) } else { 0 };
    (lo, hi.max(lo))
}

/// Depthwise convolution backward: one task per channel, looping over the images (so the weight
/// gradient of a channel needs no cross-thread reduction).
fn depthwise_backward(shape: ConvShape, x: &Planes, weight: &[f32], dy: &Tensor, dx: Vec<Option<&mut [f32]>>, need_weight: bool) -> Option<Vec<f32>> {
    let (n, c, h, w) = (x.n, x.channels, x.h, x.w);
    let (k, s, p) = (shape.kernel, shape.stride, shape.padding);
    let (ho, wo) = shape.output_size(h, w);
    let hw = h * w;
    // Regroup the per-image input-gradient slices by channel.
    let mut per_ch: Vec<Vec<&mut [f32]>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
    for img_dx in dx.into_iter().flatten() {
        for (ch, plane) in img_dx.chunks_mut(hw).enumerate() {
            per_ch[ch].push(plane);
        }
    }
    let mut dw = vec![0.0f32; if need_weight { weight.len() } else { 0 }];
    let mut dw_chunks: Vec<Option<&mut [f32]>> = if need_weight { dw.chunks_mut(k * k).map(Some).collect() } else { (0..c).map(|_| None).collect() };
    per_ch.par_iter_mut().zip(dw_chunks.par_iter_mut()).enumerate().for_each(|(ch, (dxs, dwc))| {
        let wc = &weight[ch * k * k..(ch + 1) * k * k];
        if s == 1 && p < k && h + 2 * p >= k && w + 2 * p >= k {
            let mut scratch = DepthwiseScratch::default();
            for img in 0..n {
                let (xp, dyp) = (x.image(img)[ch], dy.plane(img, ch));
                dispatch!(depthwise_plane_s1(xp, dyp, wc, dxs.get_mut(img).map(|d| &mut **d), dwc.as_deref_mut(), h, w, k, p, &mut scratch));
            }
            return;
        }
        for img in 0..n {
            let xp = x.image(img)[ch];
            let dyp = dy.plane(img, ch);
            let mut dxp = dxs.get_mut(img);
            for ky in 0..k {
                for kx in 0..k {
                    let (x0, x1) = valid_range(kx, s, p, w, wo);
                    if x0 >= x1 {
                        continue;
                    }
                    let wv = wc[ky * k + kx];
                    let mut acc = 0.0f32;
                    for yo in 0..ho {
                        let y = (yo * s + ky).wrapping_sub(p);
                        if y >= h {
                            continue;
                        }
                        let dyr = &dyp[yo * wo + x0..yo * wo + x1];
                        let start = y * w + x0 * s + kx - p;
                        if s == 1 {
                            let xr = &xp[start..start + dyr.len()];
                            acc += dyr.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>();
                            if let Some(d) = dxp.as_deref_mut() {
                                d[start..start + dyr.len()].iter_mut().zip(dyr).for_each(|(d, g)| *d += wv * g);
                            }
                        } else {
                            for (i, g) in dyr.iter().enumerate() {
                                acc += g * xp[start + i * s];
                                if let Some(d) = dxp.as_deref_mut() {
                                    d[start + i * s] += wv * g;
                                }
                            }
                        }
                    }
                    if let Some(dwc) = dwc.as_deref_mut() {
                        dwc[ky * k + kx] += acc;
                    }
                }
            }
        }
    });
    need_weight.then_some(dw)
}

/// Per-task buffers of [`depthwise_plane_s1`].
#[derive(Default)]
struct DepthwiseScratch {
    x: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
}

/// One plane of a stride-1 depthwise backward, on a zero-padded grid `w + 2p` wide (the layout
/// trick of the forward kernel): the input plane padded, `dy` on that grid (zero in the `2p` extra
/// columns), so that every tap is one contiguous run of `(ho − 1)·wq + wo` values. Then
/// `dW[t] += dy · x[off_t..]` (lane sums) and `dx_pad[off_t..] += W[t]·dy` (`dx` is added onto).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn depthwise_plane_s1(
    xp: &[f32],
    dyp: &[f32],
    wc: &[f32],
    dxp: Option<&mut [f32]>,
    dwc: Option<&mut [f32]>,
    h: usize,
    w: usize,
    k: usize,
    p: usize,
    s: &mut DepthwiseScratch,
) {
    let (ho, wo, wq) = (h + 2 * p - k + 1, w + 2 * p - k + 1, w + 2 * p);
    let nq = (ho - 1) * wq + wo;
    let padded = (h + 2 * p) * wq;
    s.x.clear();
    s.x.resize(padded, 0.0);
    for y in 0..h {
        s.x[(y + p) * wq + p..][..w].copy_from_slice(&xp[y * w..(y + 1) * w]);
    }
    s.dy.clear();
    s.dy.resize(nq, 0.0);
    for yo in 0..ho {
        s.dy[yo * wq..][..wo].copy_from_slice(&dyp[yo * wo..(yo + 1) * wo]);
    }
    let want_dx = dxp.is_some();
    if want_dx {
        s.dx.clear();
        s.dx.resize(padded, 0.0);
    }
    let mut dwc = dwc;
    for t in 0..k * k {
        let off = t / k * wq + t % k;
        if let Some(dwc) = dwc.as_deref_mut() {
            dwc[t] += lane_dot(&s.dy, &s.x[off..off + nq]);
        }
        if want_dx {
            let wv = wc[t];
            s.dx[off..off + nq].iter_mut().zip(&s.dy).for_each(|(d, &g)| *d += wv * g);
        }
    }
    if let Some(dxp) = dxp {
        for y in 0..h {
            dxp[y * w..(y + 1) * w].iter_mut().zip(&s.dx[(y + p) * wq + p..]).for_each(|(d, &v)| *d += v);
        }
    }
}

/// `Σ a·b` in [`LANES`] independent f32 partial sums (so it vectorises).
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let full = a.len().min(b.len()) / LANES * LANES;
    for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let tail: f32 = a[full..].iter().zip(&b[full..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Runs `f(ch)` for every channel on the engine's team, returning the results in order.
fn per_channel<T: Copy + Default + Send>(c: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let mut out = vec![T::default(); c];
    let base = SendPtr(out.as_mut_ptr());
    parallel_for(c, &|ch| {
        let v = f(ch);
        // SAFETY: item `ch` writes only `out[ch]`, inside the allocation, which outlives the loop.
        unsafe { *base.get().add(ch) = v };
    });
    out
}

/// A raw pointer the items of one `parallel_for` share, each writing its own elements.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: every user hands each item a disjoint set of elements (see the call sites).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// By method, so closures capture the wrapper and not (by edition-2021 disjoint capture) the field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Per-channel mean and biased variance of `z` over batch and space: two passes per channel (the
/// second finds the channel's planes in cache), lane sums in f32 within a plane, f64 across planes.
/// (One pass with shifted sums was tried: its cancellation moved the first layer's gradient by
/// 3e-3 relative, beyond the reference tolerance.)
pub fn channel_stats(z: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let span = profile::start();
    let [n, c, h, w] = z.shape();
    let count = (n * h * w) as f64;
    let stats = per_channel(c, &|ch| {
        let mean = (0..n).map(|i| dispatch!(lane_sum(z.plane(i, ch), 0.0, false))).sum::<f64>() / count;
        let var = (0..n).map(|i| dispatch!(lane_sum(z.plane(i, ch), mean as f32, true))).sum::<f64>() / count;
        (mean as f32, var as f32)
    });
    span.finish(0, || format!("bwd bn stats {:?}", z.shape()));
    stats.into_iter().unzip()
}

/// Runs `$f(args)` through a copy compiled for AVX-512 when the CPU has it, so the plain loops
/// inside (written with independent lanes and [`simd::exp_fast`]) vectorise at full width.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if simd::isa() == simd::Isa::Avx512 {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                    f()
                }
                // SAFETY: only reached when the CPU supports AVX-512F.
                unsafe { wide(#[inline(always)] || $f($($arg),*)) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}
use dispatch;

/// Lanes of independent partial sums: a float reduction written as one chain cannot vectorise
/// (the compiler may not reorder float additions).
const LANES: usize = 16;

/// `Σ v` (or `Σ (v − shift)²` when `square`), f32 lanes, f64 result.
#[inline(always)]
fn lane_sum(v: &[f32], shift: f32, square: bool) -> f64 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = x - shift;
            *a += if square { d * d } else { d };
        }
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for &x in tail {
        let d = (x - shift) as f64;
        total += if square { d * d } else { d };
    }
    total
}

/// BatchNorm's running-statistics update (PyTorch): `r ← (1 − m)·r + m·batch`, with the unbiased
/// variance (`var · count / (count − 1)`) for the running variance.
pub fn update_running_stats(running_mean: &mut [f32], running_var: &mut [f32], mean: &[f32], var: &[f32], count: usize, momentum: f32) {
    let unbias = if count > 1 { count as f32 / (count - 1) as f32 } else { 1.0 };
    for (r, &m) in running_mean.iter_mut().zip(mean) {
        *r = (1.0 - momentum) * *r + momentum * m;
    }
    for (r, &v) in running_var.iter_mut().zip(var) {
        *r = (1.0 - momentum) * *r + momentum * v * unbias;
    }
}

/// `act(γ·(z − mean)·invstd + β)` per channel, in one pass from `z` into a new tensor.
pub fn batch_norm_act(z: &Tensor, mean: &[f32], invstd: &[f32], gamma: &[f32], beta: &[f32], act: Activation) -> Tensor {
    let span = profile::start();
    let [n, c, h, w] = z.shape();
    let hw = h * w;
    let total = z.numel();
    let mut out = buffers::take(total);
    let dst = SendPtr(out.as_mut_ptr());
    // Items of whole planes, about 16K values each, so small maps do not pay per-plane dispatch.
    let per_item = (16384 / hw.max(1)).max(1);
    let planes = n * c;
    parallel_for(planes.div_ceil(per_item), &|item| {
        for p in item * per_item..((item + 1) * per_item).min(planes) {
            let ch = p % c;
            let src = &z.data()[p * hw..(p + 1) * hw];
            // SAFETY: plane p of the output, inside its capacity and written by this item only.
            let d = unsafe { dst.get().add(p * hw) };
            dispatch!(affine_act_to(src, d, mean[ch], invstd[ch] * gamma[ch], beta[ch], act));
        }
    });
    // SAFETY: every plane, so all `total` values, was written above.
    unsafe { out.set_len(total) };
    span.finish(0, || format!("bwd bn+act forward {:?}", z.shape()));
    Tensor::new(z.shape(), out)
}

/// `dst[i] = act((src[i] − m)·scale + b)`.
///
/// `dst` must be valid for `src.len()` writes.
#[inline(always)]
fn affine_act_to(src: &[f32], dst: *mut f32, m: f32, scale: f32, b: f32, act: Activation) {
    for (i, &x) in src.iter().enumerate() {
        let y = (x - m) * scale + b;
        let v = match act {
            Activation::Identity => y,
            Activation::Silu => simd::silu_fast(y),
        };
        // SAFETY: the caller guarantees `src.len()` writable values at `dst`.
        unsafe { dst.add(i).write(v) };
    }
}

/// `d act(y)/dy`.
#[inline(always)]
fn act_grad(y: f32, act: Activation) -> f32 {
    match act {
        Activation::Identity => 1.0,
        Activation::Silu => {
            // `exp_fast` clamps its argument (beyond ±88 the derivative is 0 or 1 to f32
            // precision); an explicit `clamp` here would keep the loops from vectorising.
            let s = 1.0 / (1.0 + simd::exp_fast(-y));
            s * (1.0 + y * (1.0 - s))
        }
    }
}

/// SiLU backward: `dx = dy · σ(x)·(1 + x·(1 − σ(x)))`, with `x` the SiLU input.
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    assert_eq!(x.shape(), dy.shape(), "silu_backward: shape mismatch");
    let mut dx = dy.clone();
    dx.data_mut().par_chunks_mut(1 << 14).zip(x.data().par_chunks(1 << 14)).for_each(|(d, x)| {
        d.iter_mut().zip(x).for_each(|(d, &x)| *d *= act_grad(x, Activation::Silu));
    });
    dx
}

/// Gradients of BatchNorm (+ activation) with respect to its input and affine parameters.
#[derive(Debug)]
pub struct BatchNormGrads {
    /// `∂L/∂z`, same shape as `z`.
    pub input: Tensor,
    /// `∂L/∂γ` and `∂L/∂β` (per channel).
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// Backward of `a = act(γ·(z − mean)·invstd + β)` given `da`.
///
/// `batch_stats`: the forward normalised with the batch's own statistics (training mode), so the
/// gradient also flows through the mean and variance:
/// `dz = γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))` with `dy = da·act'(γ·x̂ + β)`. Otherwise (eval
/// mode, running statistics) `dz = γ·invstd·dy`. `z` is consumed: its buffer becomes `dz`.
///
/// Two passes per channel, both reading `z` and `da`: the sums, then `dz` (recomputing `dy`
/// rather than storing it, which saves writing a tensor; the second pass finds the channel's
/// planes still in cache).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_backward(
    mut z: Tensor,
    mut da: Tensor,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Activation,
    batch_stats: bool,
) -> BatchNormGrads {
    assert_eq!(z.shape(), da.shape(), "batch_norm_act_backward: shape mismatch");
    let span = profile::start();
    let [n, c, h, w] = z.shape();
    let hw = h * w;
    let count = (n * h * w) as f64;
    let zp = SendPtr(z.data_mut().as_mut_ptr());
    let dap = SendPtr(da.data_mut().as_mut_ptr());
    let sums = per_channel(c, &|ch| {
        let (m, is, g, b) = (mean[ch], invstd[ch], gamma[ch], beta[ch]);
        // SAFETY: plane (i, ch) of `z` / `da`, read and rewritten by this item only.
        let plane = |i: usize| unsafe { std::slice::from_raw_parts_mut(zp.get().add((i * c + ch) * hw), hw) };
        let grad = |i: usize| unsafe { std::slice::from_raw_parts_mut(dap.get().add((i * c + ch) * hw), hw) };
        let (mut sum_dy, mut sum_dyx) = (0.0f64, 0.0f64);
        for i in 0..n {
            let (s1, s2) = dispatch!(bn_grad_sums(plane(i), grad(i), m, is, g, b, act));
            sum_dy += s1;
            sum_dyx += s2;
        }
        let (mdy, mdyx) = ((sum_dy / count) as f32, (sum_dyx / count) as f32);
        for i in 0..n {
            dispatch!(bn_grad_input(plane(i), grad(i), m, is, g, mdy, mdyx, batch_stats));
        }
        (sum_dyx as f32, sum_dy as f32)
    });
    drop(da);
    let (gamma_grad, beta_grad) = sums.into_iter().unzip();
    span.finish(0, || format!("bwd bn+act backward {:?}", z.shape()));
    BatchNormGrads { input: z, gamma: gamma_grad, beta: beta_grad }
}

/// BatchNorm backward, pass 1 over one plane: `(Σ dy, Σ dy·x̂)` with `dy = da·act'(γ·x̂ + β)`,
/// and `da ← dy` (so that pass 2 need not evaluate the activation's derivative again).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bn_grad_sums(z: &[f32], da: &mut [f32], m: f32, is: f32, g: f32, b: f32, act: Activation) -> (f64, f64) {
    let (mut a1, mut a2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let step = |z: &[f32], da: &mut [f32], a1: &mut [f32], a2: &mut [f32]| {
        for (((&zv, d), s1), s2) in z.iter().zip(da.iter_mut()).zip(a1.iter_mut()).zip(a2.iter_mut()) {
            let xhat = (zv - m) * is;
            let dy = *d * act_grad(g * xhat + b, act);
            *d = dy;
            *s1 += dy;
            *s2 += dy * xhat;
        }
    };
    let full = z.len() / LANES * LANES;
    let (da_full, da_rest) = da.split_at_mut(full);
    for (zc, dc) in z[..full].chunks_exact(LANES).zip(da_full.chunks_exact_mut(LANES)) {
        step(zc, dc, &mut a1, &mut a2);
    }
    let rest = z.len() - full;
    step(&z[full..], da_rest, &mut a1[..rest], &mut a2[..rest]);
    (a1.iter().map(|&v| v as f64).sum(), a2.iter().map(|&v| v as f64).sum())
}

/// BatchNorm backward, pass 2 over one plane (`dy` from pass 1):
/// `z ← γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))` with batch statistics, `z ← γ·invstd·dy` without.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bn_grad_input(z: &mut [f32], dy: &[f32], m: f32, is: f32, g: f32, mdy: f32, mdyx: f32, batch_stats: bool) {
    let gi = g * is;
    let (mdy, mdyx) = if batch_stats { (mdy, mdyx) } else { (0.0, 0.0) };
    for (zv, &d) in z.iter_mut().zip(dy) {
        let xhat = (*zv - m) * is;
        *zv = gi * (d - mdy - xhat * mdyx);
    }
}

/// Max-pool backward (PyTorch semantics): each output's gradient goes to the first maximum of its
/// window in row-major order; padding never wins (NaN always does, the last one in window order,
/// as in PyTorch). `x` is the pool's input.
pub fn max_pool2d_backward(x: &Tensor, dy: &Tensor, kernel: usize, stride: usize, padding: usize) -> Tensor {
    let span = profile::start();
    let [n, c, h, w] = x.shape();
    let (ho, wo) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
    assert_eq!(dy.shape(), [n, c, ho, wo], "max_pool2d_backward: dy shape");
    assert!(padding < kernel, "max_pool2d_backward: padding {padding} not below kernel {kernel}");
    let mut dx = Tensor::zeros([n, c, h, w]);
    let planes = n * c;
    // Items of whole planes, about 16K input values each: SPPF's maps are 10×10.
    let per_item = (16384 / (h * w).max(1)).max(1);
    let dst = SendPtr(dx.data_mut().as_mut_ptr());
    parallel_for(planes.div_ceil(per_item), &|item| {
        let mut scratch = PoolScratch::default();
        for pl in item * per_item..((item + 1) * per_item).min(planes) {
            let xp = &x.data()[pl * h * w..][..h * w];
            let dyp = &dy.data()[pl * ho * wo..][..ho * wo];
            // SAFETY: plane `pl` of `dx`, written by this item only; `dx` outlives the loop.
            let dxp = unsafe { std::slice::from_raw_parts_mut(dst.get().add(pl * h * w), h * w) };
            if stride == 1 {
                dispatch!(max_pool_plane_s1(xp, dyp, dxp, h, w, kernel, padding, &mut scratch));
            } else {
                max_pool_plane_backward(xp, dyp, dxp, h, w, kernel, stride, padding);
            }
        }
    });
    span.finish(0, || format!("bwd max pool {:?}", x.shape()));
    dx
}

/// Per-item buffers of [`max_pool_plane_s1`].
#[derive(Default)]
struct PoolScratch {
    padded: Vec<f32>,
    best: Vec<f32>,
    index: Vec<u32>,
}

/// [`max_pool_plane_backward`] for stride 1, written so its loops vectorise: the plane is copied
/// into a `−∞`-padded `(h + 2p) × (w + 2p)` grid, on which every tap of every output is one
/// contiguous run (outputs indexed on the padded grid's width, the `2p` extra columns per row
/// ignored). Each output starts from the first valid pixel of its window (so an all-`−∞` window
/// still picks its first pixel, and padding, never strictly greater, never wins); then the taps
/// in row-major order replace it when strictly greater or NaN, exactly the scalar rule.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn max_pool_plane_s1(xp: &[f32], dyp: &[f32], dxp: &mut [f32], h: usize, w: usize, k: usize, p: usize, s: &mut PoolScratch) {
    let (ho, wo) = (h + 2 * p - k + 1, w + 2 * p - k + 1);
    let wp = w + 2 * p;
    s.padded.clear();
    s.padded.resize((h + 2 * p) * wp, f32::NEG_INFINITY);
    for y in 0..h {
        s.padded[(y + p) * wp + p..][..w].copy_from_slice(&xp[y * w..(y + 1) * w]);
    }
    // Outputs on the padded grid: output (yo, xo) at yo·wp + xo.
    let len = (ho - 1) * wp + wo;
    s.best.clear();
    s.index.clear();
    for yo in 0..ho {
        // The window's first valid pixel, in padded coordinates (`p < k`, so it is inside the
        // window); the ignored columns get any valid pixel.
        let row = yo.max(p);
        for xo in 0..wp.min(len - yo * wp) {
            let i = row * wp + if xo < wo { xo.max(p) } else { p };
            s.best.push(s.padded[i]);
            s.index.push(i as u32);
        }
    }
    let (best, index) = (&mut s.best[..len], &mut s.index[..len]);
    for ky in 0..k {
        for kx in 0..k {
            let off = ky * wp + kx;
            let run = &s.padded[off..off + len];
            for (j, ((b, ix), &v)) in best.iter_mut().zip(index.iter_mut()).zip(run).enumerate() {
                // Strictly greater or NaN (`v != v`), written as selects so the loop vectorises.
                let take = v > *b || v.is_nan();
                *b = if take { v } else { *b };
                *ix = if take { (off + j) as u32 } else { *ix };
            }
        }
    }
    for yo in 0..ho {
        for xo in 0..wo {
            let i = index[yo * wp + xo] as usize;
            let (y, x) = (i / wp - p, i % wp - p);
            dxp[y * w + x] += dyp[yo * wo + xo];
        }
    }
}

/// Max-pool backward of one plane, any stride (the rule [`max_pool_plane_s1`] vectorises): `dxp`
/// must be zero on entry.
#[allow(clippy::too_many_arguments)]
fn max_pool_plane_backward(xp: &[f32], dyp: &[f32], dxp: &mut [f32], h: usize, w: usize, k: usize, s: usize, p: usize) {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    for yo in 0..ho {
        for xo in 0..wo {
            let mut best = usize::MAX;
            let mut best_v = f32::NEG_INFINITY;
            for ky in 0..k {
                let y = (yo * s + ky).wrapping_sub(p);
                if y >= h {
                    continue;
                }
                for kx in 0..k {
                    let xx = (xo * s + kx).wrapping_sub(p);
                    if xx >= w {
                        continue;
                    }
                    let v = xp[y * w + xx];
                    // Strictly greater: the first maximum wins (NaN always wins, as in PyTorch).
                    if best == usize::MAX || v > best_v || v.is_nan() {
                        best = y * w + xx;
                        best_v = v;
                    }
                }
            }
            if best != usize::MAX {
                dxp[best] += dyp[yo * wo + xo];
            }
        }
    }
}

/// Nearest-neighbour upsample backward: each input pixel collects the gradients of its
/// `scale × scale` copies.
pub fn upsample_nearest_backward(dy: &Tensor, scale: usize) -> Tensor {
    let span = profile::start();
    let [n, c, ho, wo] = dy.shape();
    let (h, w) = (ho / scale, wo / scale);
    let mut dx = Tensor::zeros([n, c, h, w]);
    let planes = n * c;
    // Items of whole planes, about 16K output-gradient values each.
    let per_item = (16384 / (ho * wo).max(1)).max(1);
    let dst = SendPtr(dx.data_mut().as_mut_ptr());
    parallel_for(planes.div_ceil(per_item), &|item| {
        for pl in item * per_item..((item + 1) * per_item).min(planes) {
            let dyp = &dy.data()[pl * ho * wo..][..ho * wo];
            // SAFETY: plane `pl` of `dx` (zeroed), written by this item only; `dx` outlives the loop.
            let dxp = unsafe { std::slice::from_raw_parts_mut(dst.get().add(pl * h * w), h * w) };
            if scale == 2 {
                dispatch!(upsample2_plane_backward(dyp, dxp, w));
            } else {
                for (yo, row) in dyp.chunks(wo).enumerate() {
                    let d = &mut dxp[(yo / scale) * w..(yo / scale + 1) * w];
                    for (xo, &g) in row.iter().enumerate() {
                        d[xo / scale] += g;
                    }
                }
            }
        }
    });
    span.finish(0, || format!("bwd upsample {:?}", dy.shape()));
    dx
}

/// [`upsample_nearest_backward`] of one plane at scale 2: `dx[y][x]` = the sum of its 2×2 block
/// (pairs summed first, so the loop vectorises).
#[inline(always)]
fn upsample2_plane_backward(dyp: &[f32], dxp: &mut [f32], w: usize) {
    for (rows, d) in dyp.chunks_exact(4 * w).zip(dxp.chunks_exact_mut(w)) {
        let (r0, r1) = rows.split_at(2 * w);
        for ((d, a), b) in d.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *d = (a[0] + a[1]) + (b[0] + b[1]);
        }
    }
}

/// Adds `src` (`[n, cs, h, w]`) onto channels `offset..offset + cs` of `dst` (`[n, cd, h, w]`): the
/// backward of a channel split (and, read the other way, of a concatenation).
pub fn add_channels(dst: &mut Tensor, offset: usize, src: &Tensor) {
    let [n, cd, h, w] = dst.shape();
    let [sn, cs, sh, sw] = src.shape();
    assert!(sn == n && sh == h && sw == w && offset + cs <= cd, "add_channels: {:?} at {offset} into {:?}", src.shape(), dst.shape());
    let len = cs * h * w;
    dst.data_mut().par_chunks_mut(cd * h * w).zip(src.data().par_chunks(len.max(1))).for_each(|(d, s)| {
        d[offset * h * w..offset * h * w + len].iter_mut().zip(s).for_each(|(d, s)| *d += s);
    });
}

/// Backward of [`attention`](super::attention)'s `out` (not its returned copy of `v`): the gradient
/// with respect to the whole `qkv` tensor (`[B, heads·(2·key_dim + head_dim), H, W]`), given `dout`
/// (`[B, heads·head_dim, H, W]`).
///
/// Per head, with `P = softmax_rows(scale·qᵀk)` recomputed (N × N is small next to the maps):
/// `dV = dO·P`, `dP = dOᵀ·v`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = scale·k·dSᵀ`, `dk = scale·q·dS`.
pub fn attention_backward(qkv: &Tensor, dout: &Tensor, heads: usize, key_dim: usize, head_dim: usize, scale: f32) -> Tensor {
    let span = profile::start();
    let [b, c, h, w] = qkv.shape();
    let per_head = 2 * key_dim + head_dim;
    assert_eq!(c, heads * per_head, "attention_backward: qkv channels");
    assert_eq!(dout.shape(), [b, heads * head_dim, h, w], "attention_backward: dout shape");
    let n = h * w;
    let mut dqkv = Tensor::zeros([b, c, h, w]);
    dqkv.data_mut().par_chunks_mut(per_head * n).enumerate().for_each(|(task, dblock)| {
        let (img, hd) = (task / heads, task % heads);
        let block = &qkv.image(img)[hd * per_head * n..(hd + 1) * per_head * n];
        let (q, rest) = block.split_at(key_dim * n);
        let (k, v) = rest.split_at(key_dim * n);
        let d_o = &dout.image(img)[hd * head_dim * n..(hd + 1) * head_dim * n];
        let (dq, drest) = dblock.split_at_mut(key_dim * n);
        let (dk, dv) = drest.split_at_mut(key_dim * n);
        let mut p = vec![0.0f32; n * n];
        // S[i][j] = Σ_c q[c][i]·k[c][j], then row softmax of scale·S.
        matmul(n, n, key_dim, &mut p, n, false, Mat { data: q, rs: 1, cs: n }, Mat { data: k, rs: n, cs: 1 });
        for row in p.chunks_mut(n) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v * scale - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        // dV[d][j] = Σ_i dO[d][i]·P[i][j].
        matmul(head_dim, n, n, dv, n, false, Mat { data: d_o, rs: n, cs: 1 }, Mat { data: &p, rs: n, cs: 1 });
        // dP[i][j] = Σ_d dO[d][i]·v[d][j].
        let mut ds = vec![0.0f32; n * n];
        matmul(n, n, head_dim, &mut ds, n, false, Mat { data: d_o, rs: 1, cs: n }, Mat { data: v, rs: n, cs: 1 });
        for (dsr, pr) in ds.chunks_mut(n).zip(p.chunks(n)) {
            let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dsr.iter_mut().zip(pr).for_each(|(d, &pv)| *d = scale * pv * (*d - dot));
        }
        // dq[c][i] = Σ_j k[c][j]·dS[i][j]; dk[c][j] = Σ_i q[c][i]·dS[i][j] (scale already in dS).
        matmul(key_dim, n, n, dq, n, false, Mat { data: k, rs: n, cs: 1 }, Mat { data: &ds, rs: 1, cs: n });
        matmul(key_dim, n, n, dk, n, false, Mat { data: q, rs: n, cs: 1 }, Mat { data: &ds, rs: n, cs: 1 });
    });
    span.finish(0, || format!("bwd attention {:?}", qkv.shape()));
    dqkv
}

#[cfg(test)]
mod tests;
