//! 2-D convolution (BatchNorm folded into weight and bias by the caller) with a fused activation.
//!
//! Three ways to run it, picked per layer and per CPU:
//!
//! * **AVX-512** ([`Isa::Avx512`], groups < channels): the input is copied once into a zero-padded,
//!   phase-split layout (below), after which every tap of the kernel is just an offset into it, and the
//!   engine's implicit-GEMM kernel ([`igemm`](super::igemm)) multiplies the packed weights by those
//!   shifted planes with bias and SiLU fused into its store. 1×1 stride-1 convolutions read the input
//!   tensor directly.
//! * **Portable** (other CPUs): im2col into a `K × (Ho·Wo)` matrix, then the `gemm` crate (which picks its
//!   own SIMD at run time), then a bias + activation pass.
//! * **Depthwise** (groups == in == out channels, every CPU): a direct per-channel loop, vectorised by
//!   the compiler for the detected ISA.
//!
//! ## The phase layout
//! For stride `s`, padding `p` and kernel `k`, output `(y, x)` reads padded input `(y·s + ky, x·s + kx)`.
//! Splitting the padded input into `s²` phases `P[a][b][i][j] = pad[i·s + a][j·s + b]` turns that into
//! `P[ky % s][kx % s][y + ky/s][x + kx/s]`: a *unit-stride* shift of one phase. If each phase is stored
//! `Wq = Wo + (k-1)/s` wide and output pixel `(y, x)` is numbered `n = y·Wq + x`, then tap `(ci, ky, kx)`
//! is the contiguous run starting at a fixed offset, for all outputs at once. The `Wq - Wo` columns per
//! row this computes in excess are discarded when the result is copied into the NCHW output.

use std::cell::RefCell;
use std::sync::OnceLock;

use anyhow::{ensure, Result};
use super::buffers;
use super::profile;
use super::simd::{self, Isa};
use super::tensor::Tensor;
use super::threads::{for_chunks_mut, num_threads, parallel_for, SyncPtr};

/// The activation fused into a convolution's output pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// No activation (`y = x`).
    Identity,
    /// SiLU / swish, `y = x · sigmoid(x)`.
    Silu,
}

/// A 2-D convolution with bias and an optional fused activation, PyTorch semantics
/// (cross-correlation, zero padding, dilation 1).
#[derive(Clone, Debug)]
pub struct Conv2d {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    /// `[out, in/groups, k, k]`, as PyTorch stores it.
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// Weights rearranged for the AVX-512 kernel, made on first use there.
    packed: OnceLock<Packed>,
}

/// Per group: the weights as [`igemm::pack_a`](super::igemm::pack_a) panels and the zero-padded bias.
#[derive(Clone, Debug)]
struct Packed {
    a: Vec<Vec<f32>>,
    bias: Vec<Vec<f32>>,
}

/// Output size and phase-layout size for one input size.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    /// Rows and width of one phase plane.
    hq: usize,
    wq: usize,
}

/// The input of one convolution call: `n` images of `channels` planes (`h × w` each), taken from one
/// tensor or from channel ranges of several (a concatenation that is never built).
pub(crate) struct Input<'a> {
    n: usize,
    channels: usize,
    h: usize,
    w: usize,
    /// (tensor, first channel, channel count), in order.
    parts: Vec<(&'a Tensor, usize, usize)>,
    /// `n × channels` planes, image-major.
    planes: Vec<&'a [f32]>,
}

impl<'a> Input<'a> {
    /// # Panics
    /// If there are no parts, they disagree in n, h or w, or a range is outside its tensor.
    pub(crate) fn new(parts: &[(&'a Tensor, std::ops::Range<usize>)]) -> Input<'a> {
        assert!(!parts.is_empty(), "Conv2d::forward_parts: no input");
        let [n, _, h, w] = parts[0].0.shape();
        for (t, r) in parts {
            let [tn, tc, th, tw] = t.shape();
            assert_eq!((tn, th, tw), (n, h, w), "Conv2d::forward_parts: parts differ in n, h or w");
            assert!(r.start <= r.end && r.end <= tc, "Conv2d::forward_parts: channels {r:?} outside 0..{tc}");
        }
        let parts: Vec<_> = parts.iter().map(|(t, r)| (*t, r.start, r.len())).collect();
        let channels = parts.iter().map(|p| p.2).sum();
        let mut planes = Vec::with_capacity(n * channels);
        for img in 0..n {
            for &(t, start, len) in &parts {
                planes.extend((start..start + len).map(|c| t.plane(img, c)));
            }
        }
        Input { n, channels, h, w, parts, planes }
    }

    /// The planes of image `img`, one per input channel.
    fn image(&self, img: usize) -> &[&'a [f32]] {
        &self.planes[img * self.channels..(img + 1) * self.channels]
    }

    /// Channels `range` of image `img` as one slice, when they are consecutive channels of one tensor.
    fn contiguous(&self, img: usize, range: std::ops::Range<usize>) -> Option<&'a [f32]> {
        let hw = self.h * self.w;
        let mut base = 0;
        for &(t, start, len) in &self.parts {
            if range.start >= base && range.end <= base + len {
                let first = start + range.start - base;
                return Some(&t.image(img)[first * hw..(first + range.len()) * hw]);
            }
            base += len;
        }
        None
    }
}

impl Conv2d {
    /// A convolution from PyTorch-layout weights `[out, in/groups, kernel, kernel]` and an optional bias
    /// (`None` means zeros).
    ///
    /// # Errors
    /// If a size is zero, the channels are not divisible by `groups`, or the weight / bias lengths do not
    /// match.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Conv2d> {
        ensure!(
            in_channels > 0 && out_channels > 0 && kernel > 0 && stride > 0 && groups > 0,
            "Conv2d: channels, kernel, stride and groups must be positive \
             (in {in_channels}, out {out_channels}, k {kernel}, s {stride}, g {groups})"
        );
        ensure!(
            in_channels.is_multiple_of(groups) && out_channels.is_multiple_of(groups),
            "Conv2d: channels {in_channels} -> {out_channels} not divisible by groups {groups}"
        );
        let expected = out_channels * (in_channels / groups) * kernel * kernel;
        ensure!(
            weight.len() == expected,
            "Conv2d: weight has {} values, [{out_channels}, {}, {kernel}, {kernel}] needs {expected}",
            weight.len(),
            in_channels / groups
        );
        let bias = match bias {
            Some(b) => {
                ensure!(b.len() == out_channels, "Conv2d: bias has {} values, {out_channels} expected", b.len());
                b
            }
            None => vec![0.0; out_channels],
        };
        Ok(Conv2d { in_channels, out_channels, kernel, stride, padding, groups, weight, bias, packed: OnceLock::new() })
    }

    /// Weights, `[out, in/groups, k, k]` row-major.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }
    /// Bias, one per output channel (zeros when constructed with `None`).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// Kernel size (square).
    pub fn kernel(&self) -> usize {
        self.kernel
    }
    /// Stride (both axes).
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Zero padding (both axes, both sides).
    pub fn padding(&self) -> usize {
        self.padding
    }
    /// Channel groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Floating-point operations (2 per multiply-add) to compute one image's `out_h × out_w` output.
    pub fn flops(&self, out_h: usize, out_w: usize) -> u64 {
        2 * (self.out_channels * (self.in_channels / self.groups) * self.kernel * self.kernel) as u64
            * (out_h * out_w) as u64
    }

    /// Output `(height, width)` for an input of `h × w`.
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        assert!(h + 2 * p >= k && w + 2 * p >= k, "Conv2d: input {h}x{w} (padding {p}) smaller than kernel {k}");
        ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)
    }

    fn geometry(&self, h: usize, w: usize) -> Geometry {
        let (ho, wo) = self.output_size(h, w);
        let extra = (self.kernel - 1) / self.stride;
        Geometry { h, w, ho, wo, hq: ho + extra, wq: wo + extra }
    }

    /// Convolves `x` (`[n, in_channels, h, w]`), adds the bias and applies `act`.
    ///
    /// # Panics
    /// If `x` does not have `in_channels` channels, or is smaller than the kernel after padding.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Tensor {
        self.forward_isa(&Input::new(&[(x, 0..x.shape()[1])]), act, simd::isa())
    }

    /// Convolves the channel concatenation of `parts` without building it: each part is a channel
    /// range of a tensor, and the ranges, in order, make up the `in_channels` input channels. So
    /// `conv.forward_parts(&[(&a, 0..a_c), (&y, c..2 * c)], act)` equals
    /// `conv.forward(&concat_channels(&[&a, &narrow_channels(&y, c, c)]), act)`, minus two copies.
    ///
    /// # Panics
    /// If the parts disagree in batch size or spatial size, a range is outside its tensor, or the
    /// channels do not add up to `in_channels`.
    pub fn forward_parts(&self, parts: &[(&Tensor, std::ops::Range<usize>)], act: Activation) -> Tensor {
        self.forward_isa(&Input::new(parts), act, simd::isa())
    }

    /// The forward pass on an explicit ISA tier (tests compare tiers; `isa` must not exceed what the
    /// CPU supports).
    pub(crate) fn forward_isa(&self, x: &Input, act: Activation, isa: Isa) -> Tensor {
        let span = profile::start();
        let y = self.forward_inner(x, act, isa);
        let [n, _, ho, wo] = y.shape();
        span.finish(n as u64 * self.flops(ho, wo), || {
            format!(
                "conv {}->{} k{} s{}{} {}x{}{}{}",
                self.in_channels,
                self.out_channels,
                self.kernel,
                self.stride,
                if self.groups > 1 { format!(" g{}", self.groups) } else { String::new() },
                x.h,
                x.w,
                if act == Activation::Silu { "" } else { " noact" },
                if x.parts.len() > 1 { format!(" ({} parts)", x.parts.len()) } else { String::new() }
            )
        });
        y
    }

    fn forward_inner(&self, x: &Input, act: Activation, isa: Isa) -> Tensor {
        assert_eq!(
            x.channels, self.in_channels,
            "Conv2d::forward: input has {} channels, the layer expects {}",
            x.channels, self.in_channels
        );
        let geo = self.geometry(x.h, x.w);
        let shape = [x.n, self.out_channels, geo.ho, geo.wo];
        let depthwise = self.in_channels == self.groups && self.out_channels == self.groups;
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && !depthwise {
            return Tensor::new(shape, self.forward_igemm(x, act, geo));
        }
        let total = shape.iter().product();
        if depthwise {
            // The AVX-512 kernel writes every output through raw pointers, so its buffer is not
            // zero-filled first; the others write through slices of a zeroed one.
            let mut out = if isa == Isa::Avx512 { buffers::take(total) } else { buffers::zeros(total) };
            self.forward_depthwise(x, act, geo, SyncPtr(out.as_mut_ptr()), isa);
            // SAFETY: capacity is `total`; every element was written (AVX-512) or zeroed beforehand.
            unsafe { out.set_len(total) };
            return Tensor::new(shape, out);
        }
        let mut out = buffers::zeros(total);
        self.forward_im2col(x, act, geo, &mut out, isa);
        Tensor::new(shape, out)
    }

    /// Offset of each tap `(ky, kx)` (row-major) into one channel's phase layout: where the run of
    /// inputs it multiplies, for output row 0 of the layout, starts.
    fn tap_offsets(&self, geo: Geometry) -> Vec<usize> {
        let (k, s) = (self.kernel, self.stride);
        let phase = geo.hq * geo.wq;
        (0..k * k).map(|t| (t / k % s * s + t % k % s) * phase + (t / k / s) * geo.wq + t % k / s).collect()
    }

    /// AVX-512 path; returns the output values (NCHW).
    #[cfg(target_arch = "x86_64")]
    fn forward_igemm(&self, x: &Input, act: Activation, geo: Geometry) -> Vec<f32> {
        use super::igemm::{igemm, pack_a, pad_bias, GemmArgs};

        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let kk = cin_g * self.kernel * self.kernel;
        let packed = self.packed.get_or_init(|| Packed {
            a: (0..self.groups).map(|g| pack_a(&self.weight[g * cout_g * kk..], cout_g, kk, kk)).collect(),
            bias: (0..self.groups).map(|g| pad_bias(&self.bias[g * cout_g..(g + 1) * cout_g])).collect(),
        });
        let (s, p) = (self.stride, self.padding);
        // Stride 1 without padding: the input planes already are the (single) phase.
        let direct = s == 1 && p == 0;
        // How the output grid maps onto the Wq-wide phase grid:
        // * Wq == Wo: the same grid, written straight into the output;
        // * wide rows: the kernel walks output rows (B row stride Wq, C row stride Wo) and stores
        //   straight into the output, masking each row's end;
        // * narrow rows (e.g. 20 or 40 wide, where a masked row end would waste much of a 48-column
        //   tile): compute all `nq` positions of the flattened Wq-wide grid into a scratch buffer, then
        //   copy the valid Wo columns of each row out. Stopping the last row at Wo keeps every tap's run
        //   inside the phase buffer.
        let nq = (geo.ho - 1) * geo.wq + geo.wo;
        let compact = geo.wq != geo.wo && !geo.wo.is_multiple_of(16) && geo.wo < 64;
        let row_mode = geo.wq != geo.wo && !compact;
        let plane = geo.ho * geo.wo;
        let total = x.n * self.out_channels * plane;
        let mut out = buffers::take(total);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        // Runs every group over output rows `rows` of one image. `chans[ci]` is input channel ci's
        // layout (its phases, or for a direct convolution its plane), with row 0 at `rows.start`;
        // `taps` are the offsets into it (`tap_offsets`).
        let gemm = |chans: &[&[f32]],
                    taps: &[usize],
                    out_img: *mut f32,
                    rows: std::ops::Range<usize>,
                    tmp: &mut [f32],
                    parallel: bool| {
            // Flat grid length for these rows (the last row stops at Wo).
            let nq = (rows.len() - 1) * geo.wq + geo.wo;
            let grid = if row_mode { (rows.len(), geo.wo, geo.wq, geo.wo) } else { (1, nq, 0, 0) };
            // The furthest element of a channel's layout the grid reads (the same bound in all modes).
            let reach = taps.iter().max().map_or(0, |&m| m) + (grid.0 - 1) * grid.2 + grid.1;
            assert!(chans.iter().all(|c| c.len() >= reach), "phase layout too small");
            assert!(!compact || tmp.len() >= cout_g * nq);
            let mut b_rows = Vec::with_capacity(kk);
            for g in 0..self.groups {
                b_rows.clear();
                for chan in &chans[g * cin_g..(g + 1) * cin_g] {
                    b_rows.extend(taps.iter().map(|&t| chan[t..].as_ptr()));
                }
                // SAFETY (pointer arithmetic): row `rows.start` of this group's planes, inside the
                // image's `out_channels · plane` outputs.
                let out_g = unsafe { out_img.add(g * cout_g * plane + rows.start * geo.wo) };
                let (c, ldc) = if compact { (tmp.as_mut_ptr(), nq) } else { (out_g, plane) };
                let args = GemmArgs {
                    m: cout_g,
                    k: kk,
                    rows: grid.0,
                    cols: grid.1,
                    b_rs: grid.2,
                    c_rs: grid.3,
                    a: &packed.a[g],
                    bias: &packed.bias[g],
                    b_rows: &b_rows,
                    c,
                    ldc,
                    act,
                };
                // SAFETY: the tier is AVX-512 only when the CPU has it. B: every row pointer is
                // `chan + taps[t]` and the grid reads at most `reach` elements from `chan`, which is in
                // bounds (asserted above). C: `cout_g` rows of `ldc` holding the grid at row stride
                // `c_rs`: the first cout_g·nq values of `tmp` when compacting, else this group's
                // output rows `rows` (inside the allocation, written by no other task); neither
                // aliases the input.
                unsafe { igemm(&args, parallel) };
                if compact {
                    // SAFETY: writes rows `rows` of this group's cout_g planes, inside the allocation
                    // and written by no other task.
                    unsafe { compact_rows(tmp, out_g, cout_g, rows.len(), geo, nq) };
                }
            }
        };
        let threads = num_threads();
        let extra = (self.kernel - 1) / s;
        let per_channel = s * s * geo.hq * geo.wq;
        let whole_len = self.in_channels * per_channel;
        // A phase layout bigger than L2 (e.g. 6.6 MB for a 64-channel 160×160 input at stride 2) is
        // built in bands of output rows instead, each band's phases small enough to stay in L2 while
        // the kernel reads them, and the bands run in parallel. Small maps keep one layout (a band of
        // a few 20-wide rows would mostly be partial tiles).
        let banded = !direct && geo.wq != geo.wo && whole_len * 4 > (1 << 20);
        for img in 0..x.n {
            let src = x.image(img);
            // SAFETY (pointer arithmetic): image `img`'s outputs, inside the allocation.
            let out_img = unsafe { out_ptr.get().add(img * self.out_channels * plane) };
            if banded {
                let row_bytes = self.in_channels * s * s * geo.wq * 4;
                let band = ((512 << 10) / row_bytes).saturating_sub(extra).clamp(1, geo.ho.div_ceil(4 * threads));
                let band_geo = Geometry { hq: band + extra, ..geo };
                let per_channel = s * s * band_geo.hq * geo.wq;
                let taps = self.tap_offsets(band_geo);
                let tmp_len = if compact { cout_g * ((band - 1) * geo.wq + geo.wo) } else { 0 };
                let out_img = SyncPtr(out_img);
                let work = |i: usize| {
                    let rows = i * band..((i + 1) * band).min(geo.ho);
                    with_scratch(self.in_channels * per_channel, |phases| {
                        build_phases(src, band_geo, s, p, rows.start, phases, Isa::Avx512, false);
                        let chans: Vec<&[f32]> = phases.chunks(per_channel).collect();
                        with_scratch(tmp_len, |tmp| gemm(&chans, &taps, out_img.get(), rows, tmp, false));
                    });
                };
                parallel_for(geo.ho.div_ceil(band), &work);
                continue;
            }
            let taps = self.tap_offsets(geo);
            with_scratch(if direct { 0 } else { whole_len }, |phases| {
                let chans: Vec<&[f32]> = if direct {
                    src.to_vec()
                } else {
                    build_phases(src, geo, s, p, 0, phases, Isa::Avx512, true);
                    phases.chunks(per_channel).collect()
                };
                with_scratch(if compact { cout_g * nq } else { 0 }, |tmp| {
                    gemm(&chans, &taps, out_img, 0..geo.ho, tmp, true);
                });
            });
        }
        // SAFETY: every group of every image had all cout_g·ho·wo outputs written above (by the kernel
        // directly, band by band, or by `compact_rows`).
        unsafe { out.set_len(total) };
        out
    }

    /// Portable path: im2col + `gemm` + bias/activation pass.
    fn forward_im2col(&self, x: &Input, act: Activation, geo: Geometry, out: &mut [f32], isa: Isa) {
        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let kk = cin_g * k * k;
        let npix = geo.ho * geo.wo;
        let direct = k == 1 && s == 1 && p == 0;
        let threads = rayon::current_num_threads();
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        for (img, out) in out.chunks_mut(self.out_channels * npix).enumerate() {
            for (g, out) in out.chunks_mut(cout_g * npix).enumerate() {
                // A 1×1 stride-1 convolution multiplies the input planes directly when they are
                // consecutive channels of one tensor; anything else goes through im2col.
                let whole = x.contiguous(img, g * cin_g..(g + 1) * cin_g).filter(|_| direct);
                with_scratch(if whole.is_some() { 0 } else { kk * npix }, |col| {
                    let b: &[f32] = match whole {
                        Some(src) => src,
                        None => {
                            im2col(&x.image(img)[g * cin_g..(g + 1) * cin_g], geo, k, s, p, col);
                            col
                        }
                    };
                    let w = &self.weight[g * cout_g * kk..(g + 1) * cout_g * kk];
                    // SAFETY: dst is cout_g × npix (row stride npix), lhs cout_g × kk (row stride kk),
                    // rhs kk × npix (row stride npix), all in bounds of their slices; dst does not alias.
                    unsafe {
                        gemm::gemm(
                            cout_g,
                            npix,
                            kk,
                            out.as_mut_ptr(),
                            1,
                            npix as isize,
                            false,
                            w.as_ptr(),
                            1,
                            kk as isize,
                            b.as_ptr(),
                            1,
                            npix as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            par,
                        )
                    };
                });
                let bias = &self.bias[g * cout_g..(g + 1) * cout_g];
                let big = out.len() >= 1 << 16;
                for_chunks_mut(out, npix, big, &|i, row| bias_act(row, bias[i], act, isa));
            }
        }
    }

    /// Depthwise: one task per (image, channel); each builds the channel's padded phases and sums the
    /// k² shifted rows straight into the output.
    /// `out` must have room for the `n · c · ho · wo` outputs and, unless `isa` is AVX-512, hold
    /// initialised values (they are accumulated into through slices).
    fn forward_depthwise(&self, x: &Input, act: Activation, geo: Geometry, out: SyncPtr, isa: Isa) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let c = self.in_channels;
        let plane_out = geo.ho * geo.wo;
        // Offset of each tap's run for output row 0 (row y adds y·Wq), as in `tap_offsets`.
        let taps = self.tap_offsets(geo);
        let silu = act == Activation::Silu;
        let reach = taps.iter().max().map_or(0, |&t| t) + (geo.ho - 1) * geo.wq + geo.wo;
        let work = |i: usize| {
            let ch = i % c;
            let w = &self.weight[ch * k * k..(ch + 1) * k * k];
            with_scratch(s * s * geo.hq * geo.wq, |phases| {
                build_phases(&x.image(i / c)[ch..ch + 1], geo, s, p, 0, phases, isa, false);
                assert!(reach <= phases.len());
                // SAFETY (pointer arithmetic): plane i of the caller's `n · c · plane_out` outputs.
                let out = unsafe { out.get().add(i * plane_out) };
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 {
                    // SAFETY: AVX-512F is available (tier); every tap's run is inside `phases`
                    // (asserted), and plane i (`plane_out` floats) is written by this task only.
                    return unsafe { depthwise_avx512(phases, w, &taps, self.bias[ch], geo, silu, out) };
                }
                // SAFETY: plane i, initialised by the caller (non-AVX-512 tiers), written by this task only.
                let out = unsafe { std::slice::from_raw_parts_mut(out, plane_out) };
                depthwise_plane(phases, w, &taps, self.bias[ch], geo, silu, out, isa);
            });
        };
        let planes = x.n * c;
        if planes * plane_out >= 1 << 14 {
            parallel_for(planes, &work);
        } else {
            (0..planes).for_each(work);
        }
    }
}

thread_local! {
    /// Reusable scratch buffers (phase layouts, im2col matrices, un-compacted outputs), so a forward
    /// pass does not map and fault in fresh pages for every layer.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` floats (contents unspecified) borrowed from this thread's pool.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.borrow_mut().push(buf));
    r
}

/// Writes the input `planes` (`h × w` each) into the phase layout of `geo`, starting at phase row `i0`
/// (a band of `geo.hq` rows):
/// `dst[((ci·s + a)·s + b)·hq·wq + i·wq + j] = planes[ci][(i0 + i)·s + a - p][j·s + b - p]`, zero
/// outside the input. `parallel` splits the channels over the rayon pool.
#[allow(clippy::too_many_arguments)]
fn build_phases(
    planes: &[&[f32]],
    geo: Geometry,
    s: usize,
    p: usize,
    i0: usize,
    dst: &mut [f32],
    isa: Isa,
    parallel: bool,
) {
    let (h, w, hq, wq) = (geo.h, geo.w, geo.hq, geo.wq);
    let per_channel = s * s * hq * wq;
    let one = |ci: usize, dst: &mut [f32]| {
        let src = planes[ci];
        for (ph, phase) in dst.chunks_mut(hq * wq).enumerate() {
            let (a, b) = (ph / s, ph % s);
            // Columns j with 0 <= j·s + b - p < w.
            let j0 = p.saturating_sub(b).div_ceil(s).min(wq);
            let j1 = if w + p > b { (w + p - b).div_ceil(s).min(wq) } else { 0 }.max(j0);
            for (i, row) in phase.chunks_mut(wq).enumerate() {
                let y = ((i0 + i) * s + a).wrapping_sub(p);
                if y >= h {
                    row.fill(0.0);
                    continue;
                }
                let srow = &src[y * w..(y + 1) * w];
                row[..j0].fill(0.0);
                row[j1..].fill(0.0);
                let x0 = j0 * s + b - p;
                match s {
                    1 => row[j0..j1].copy_from_slice(&srow[x0..x0 + (j1 - j0)]),
                    2 => gather_stride2(&mut row[j0..j1], &srow[x0..], isa),
                    _ => {
                        for (d, &v) in row[j0..j1].iter_mut().zip(srow[x0..].iter().step_by(s)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    };
    let dst = &mut dst[..planes.len() * per_channel];
    let big = parallel && dst.len() >= 1 << 16;
    for_chunks_mut(dst, per_channel, big, &one);
}

/// The phase layout of one image for a `k × k`, stride `s`, padding `p` convolution over `h × w`
/// (see the module doc), for the backward pass: there tap `(ci, ky, kx)` is the run of `nq`
/// values at `ci · per_channel + taps[ky·k + kx]`, output `(y, x)` at position `y·wq + x` of it.
pub(crate) struct PhaseLayout {
    geo: Geometry,
    stride: usize,
    padding: usize,
    /// Output size.
    pub ho: usize,
    pub wo: usize,
    /// Width of a phase row (the grid the taps run over).
    pub wq: usize,
    /// Length of the run each tap reads: `(ho − 1)·wq + wo`.
    pub nq: usize,
    /// Floats per input channel.
    pub per_channel: usize,
    /// Offset of each tap `ky·k + kx` into a channel's layout.
    pub taps: Vec<usize>,
}

impl PhaseLayout {
    pub(crate) fn new(k: usize, s: usize, p: usize, h: usize, w: usize) -> PhaseLayout {
        assert!(h + 2 * p >= k && w + 2 * p >= k, "PhaseLayout: input {h}x{w} (padding {p}) smaller than kernel {k}");
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let extra = (k - 1) / s;
        let geo = Geometry { h, w, ho, wo, hq: ho + extra, wq: wo + extra };
        let phase = geo.hq * geo.wq;
        let taps = (0..k * k).map(|t| (t / k % s * s + t % k % s) * phase + (t / k / s) * geo.wq + t % k / s).collect();
        PhaseLayout { geo, stride: s, padding: p, ho, wo, wq: geo.wq, nq: (ho - 1) * geo.wq + wo, per_channel: s * s * phase, taps }
    }

    /// Writes the layout of `planes` (one image, `h × w` each) into `dst` (`planes.len() · per_channel`
    /// floats), on the calling thread.
    pub(crate) fn write(&self, planes: &[&[f32]], dst: &mut [f32]) {
        build_phases(planes, self.geo, self.stride, self.padding, 0, dst, simd::isa(), false);
    }
}

/// `dst[i] = src[2·i]` (stride-2 columns of one input row into one phase row).
///
/// # Panics
/// If `src` is shorter than `2·dst.len() - 1`.
fn gather_stride2(dst: &mut [f32], src: &[f32], isa: Isa) {
    if dst.is_empty() {
        return;
    }
    assert!(src.len() > 2 * (dst.len() - 1), "gather_stride2: source row too short");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F is available (tier); the source length was checked above.
        return unsafe { gather_stride2_avx512(dst, src) };
    }
    let _ = isa;
    for (i, d) in dst.iter_mut().enumerate() {
        *d = src[2 * i];
    }
}

/// 16 outputs per step: two (masked) loads of 32 source values and one two-source permute.
///
/// # Safety
/// AVX-512F must be available and `src.len() >= 2·dst.len() - 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_stride2_avx512(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let lanes = |n: usize| ((1u32 << n.min(16)) - 1) as u16;
    let mut i = 0;
    while i < dst.len() {
        let rem = src.len() - 2 * i;
        let lo = _mm512_maskz_loadu_ps(lanes(rem), src.as_ptr().add(2 * i));
        let hi = _mm512_maskz_loadu_ps(lanes(rem.saturating_sub(16)), src.as_ptr().add(2 * i + 16));
        let v = _mm512_permutex2var_ps(lo, even, hi);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), lanes(dst.len() - i), v);
        i += 16;
    }
}

/// Copies the valid `Wo` columns of `rows` consecutive `Wq`-wide output rows from `tmp` (`channels`
/// runs of `nq`) to the NCHW outputs at `out` (the first of those rows in channel 0's plane).
///
/// # Safety
/// For each channel `ch < channels`, `out + ch·ho·wo .. + rows·wo` must be valid for writes and not
/// overlap `tmp`.
unsafe fn compact_rows(tmp: &[f32], out: *mut f32, channels: usize, rows: usize, geo: Geometry, nq: usize) {
    let plane = geo.ho * geo.wo;
    let dst = SyncPtr(out);
    let one = |ch: usize| {
        let src = &tmp[ch * nq..(ch + 1) * nq];
        for y in 0..rows {
            let row = &src[y * geo.wq..y * geo.wq + geo.wo];
            // SAFETY: row y of the run in channel ch's plane, inside the caller's region.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add(ch * plane + y * geo.wo), geo.wo) };
        }
    };
    if channels * rows * geo.wo >= 1 << 16 {
        parallel_for(channels, &one);
    } else {
        (0..channels).for_each(one);
    }
}

/// `col[(ci·k + ky)·k + kx][yo·wo + xo] = planes[ci][yo·s + ky - p][xo·s + kx - p]` (zero outside).
fn im2col(planes: &[&[f32]], geo: Geometry, k: usize, s: usize, p: usize, col: &mut [f32]) {
    let npix = geo.ho * geo.wo;
    for (t, dst) in col.chunks_mut(npix).enumerate().take(planes.len() * k * k) {
        let (ci, ky, kx) = (t / (k * k), t / k % k, t % k);
        let plane = planes[ci];
        for (yo, row) in dst.chunks_mut(geo.wo).enumerate() {
            let y = (yo * s + ky).wrapping_sub(p);
            if y >= geo.h {
                row.fill(0.0);
                continue;
            }
            for (xo, d) in row.iter_mut().enumerate() {
                let x = (xo * s + kx).wrapping_sub(p);
                *d = if x < geo.w { plane[y * geo.w + x] } else { 0.0 };
            }
        }
    }
}

/// `row = act(row + bias)`.
fn bias_act(row: &mut [f32], bias: f32, act: Activation, isa: Isa) {
    for v in row.iter_mut() {
        *v += bias;
    }
    if act == Activation::Silu {
        simd::silu_slice_isa(row, isa);
    }
}

/// One depthwise output plane from its input's phase layout; `taps[t]` is where tap `t`'s run for
/// output row 0 starts (row `y` adds `y·Wq`).
#[allow(clippy::too_many_arguments)]
fn depthwise_plane(
    phases: &[f32],
    w: &[f32],
    taps: &[usize],
    bias: f32,
    geo: Geometry,
    silu: bool,
    out: &mut [f32],
    isa: Isa,
) {
    assert!(taps.iter().max().map_or(0, |&t| t) + (geo.ho - 1) * geo.wq + geo.wo <= phases.len());
    assert_eq!(out.len(), geo.ho * geo.wo);
    /// Tap-outer: each tap is one contiguous multiply-add pass over the output row (kept in L1),
    /// which the compiler vectorises for any ISA.
    #[inline(always)]
    fn generic(phases: &[f32], w: &[f32], taps: &[usize], bias: f32, geo: Geometry, silu: bool, out: &mut [f32]) {
        for (y, row) in out.chunks_mut(geo.wo).enumerate() {
            row.fill(bias);
            for (&off, &wt) in taps.iter().zip(w) {
                let src = &phases[off + y * geo.wq..][..geo.wo];
                for (d, &v) in row.iter_mut().zip(src) {
                    *d += wt * v;
                }
            }
            if silu {
                for d in row.iter_mut() {
                    *d = simd::silu_fast(*d);
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(phases: &[f32], w: &[f32], taps: &[usize], bias: f32, geo: Geometry, silu: bool, out: &mut [f32]) {
        generic(phases, w, taps, bias, geo, silu, out)
    }
    #[cfg(target_arch = "x86_64")]
    // (AVX-512 has its own kernel, `depthwise_avx512`; its caller never gets here with that tier.)
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` never exceeds what the CPU was detected to support.
        return unsafe { avx2(phases, w, taps, bias, geo, silu, out) };
    }
    let _ = isa;
    generic(phases, w, taps, bias, geo, silu, out)
}

/// AVX-512 depthwise plane: up to 64 outputs of a row at a time stay in registers across all taps
/// (up to four independent FMA chains), then are stored once; row ends are masked.
///
/// # Safety
/// AVX-512F must be available; `max(taps) + (ho-1)·wq + wo <= phases.len()`, and `out` must be valid
/// for writing `ho·wo` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_avx512(
    phases: &[f32],
    w: &[f32],
    taps: &[usize],
    bias: f32,
    geo: Geometry,
    silu: bool,
    out: *mut f32,
) {
    for y in 0..geo.ho {
        let row = out.add(y * geo.wo);
        let base = phases.as_ptr().add(y * geo.wq);
        let mut x0 = 0;
        while x0 < geo.wo {
            let len = (geo.wo - x0).min(64);
            // As many vectors as the chunk needs: a 20-wide row is 2 vectors, not 4.
            let c = DwChunk { base: base.add(x0), out: row.add(x0), len, w, taps, bias, silu };
            match len.div_ceil(16) {
                4 => c.run::<4>(),
                3 => c.run::<3>(),
                2 => c.run::<2>(),
                _ => c.run::<1>(),
            }
            x0 += len;
        }
    }
}

/// Up to 64 consecutive outputs of one depthwise row.
#[cfg(target_arch = "x86_64")]
struct DwChunk<'a> {
    /// Inputs of tap 0's run for the chunk's first output (tap t adds `taps[t]`).
    base: *const f32,
    out: *mut f32,
    len: usize,
    w: &'a [f32],
    taps: &'a [usize],
    bias: f32,
    silu: bool,
}

#[cfg(target_arch = "x86_64")]
impl DwChunk<'_> {
    /// # Safety
    /// AVX-512F; `len <= 16·V`; every tap's run of `len` inputs and the `len` outputs are in bounds.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const V: usize>(&self) {
        use std::arch::x86_64::*;
        let mut masks = [0u16; V];
        for (v, m) in masks.iter_mut().enumerate() {
            *m = ((1u32 << self.len.saturating_sub(v * 16).min(16)) - 1) as u16;
        }
        let mut acc = [_mm512_set1_ps(self.bias); V];
        for (&off, &wt) in self.taps.iter().zip(self.w) {
            let wv = _mm512_set1_ps(wt);
            let p = self.base.add(off);
            for (v, a) in acc.iter_mut().enumerate() {
                // Masked-off lanes are not read, so the row's end never reads past the plane.
                *a = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(masks[v], p.add(v * 16)), *a);
            }
        }
        // Unrolled by hand so `acc` is only ever indexed by constants and stays in registers (a loop
        // around the large SiLU body would not be unrolled; see igemm's tile).
        macro_rules! store {
            ($($v:literal),*) => {$(
                if let Some(&a) = acc.get($v) {
                    let a = if self.silu { super::simd::avx512::silu(a) } else { a };
                    _mm512_mask_storeu_ps(self.out.add($v * 16), masks[$v], a);
                }
            )*};
        }
        store!(0, 1, 2, 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::simd::detected_isa;
    use crate::engine::testutil::{assert_close, Rng};

    /// Direct 7-loop convolution in f64, PyTorch semantics.
    fn naive_conv(x: &Tensor, conv: &Conv2d, act: Activation) -> Vec<f64> {
        let [n, _, h, w] = x.shape();
        let (k, s, p, g) = (conv.kernel(), conv.stride(), conv.padding(), conv.groups());
        let (cin_g, cout_g) = (conv.in_channels() / g, conv.out_channels() / g);
        let ho = (h + 2 * p - k) / s + 1;
        let wo = (w + 2 * p - k) / s + 1;
        let mut out = Vec::new();
        for img in 0..n {
            for co in 0..conv.out_channels() {
                let grp = co / cout_g;
                for yo in 0..ho {
                    for xo in 0..wo {
                        let mut acc = conv.bias()[co] as f64;
                        for ci in 0..cin_g {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let y = (yo * s + ky) as isize - p as isize;
                                    let xx = (xo * s + kx) as isize - p as isize;
                                    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                        continue;
                                    }
                                    let wv = conv.weight()[((co * cin_g + ci) * k + ky) * k + kx] as f64;
                                    let xv = x.plane(img, grp * cin_g + ci)[y as usize * w + xx as usize] as f64;
                                    acc += wv * xv;
                                }
                            }
                        }
                        if act == Activation::Silu {
                            acc /= 1.0 + (-acc).exp();
                        }
                        out.push(acc);
                    }
                }
            }
        }
        out
    }

    fn tiers() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&t| t <= detected_isa()).collect()
    }

    /// (batch, in, out, k, s, p, groups, h, w, bias)
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize, bool);

    fn check(cases: &[Case]) {
        let mut rng = Rng::new(1234);
        for &(n, cin, cout, k, s, p, g, h, w, with_bias) in cases {
            let weight = rng.vec(cout * cin / g * k * k);
            let bias = with_bias.then(|| rng.vec(cout));
            let conv = Conv2d::new(cin, cout, k, s, p, g, weight, bias).unwrap();
            let x = rng.tensor([n, cin, h, w]);
            let (ho, wo) = conv.output_size(h, w);
            for act in [Activation::Identity, Activation::Silu] {
                let want = naive_conv(&x, &conv, act);
                for isa in tiers() {
                    let y = conv.forward_isa(&Input::new(&[(&x, 0..cin)]), act, isa);
                    assert_eq!(y.shape(), [n, cout, ho, wo]);
                    let what = format!("{isa:?} n{n} {cin}->{cout} k{k} s{s} p{p} g{g} {h}x{w} bias {with_bias} {act:?}");
                    assert_close(y.data(), &want, 1e-5, &what);
                }
            }
        }
    }

    #[test]
    fn conv_pointwise() {
        check(&[
            (1, 32, 32, 1, 1, 0, 1, 16, 16, false),
            (1, 48, 64, 1, 1, 0, 1, 13, 7, true),
            (2, 5, 3, 1, 1, 0, 1, 9, 6, true),
            (1, 300, 20, 1, 1, 0, 1, 5, 5, true),
            (1, 8, 4, 1, 2, 0, 1, 9, 9, true),
            (1, 4, 6, 1, 1, 1, 1, 5, 4, true),
        ]);
    }

    #[test]
    fn conv_3x3() {
        check(&[
            (1, 3, 16, 3, 2, 1, 1, 32, 32, true),
            (1, 16, 8, 3, 1, 1, 1, 20, 20, true),
            (1, 8, 16, 3, 1, 1, 1, 13, 7, false),
            (2, 16, 32, 3, 2, 1, 1, 15, 22, true),
            (1, 64, 24, 3, 2, 1, 1, 7, 5, true),
            (1, 20, 20, 3, 1, 0, 1, 6, 9, true),
            (1, 130, 9, 3, 1, 1, 1, 12, 12, true),
            // Output rows the AVX-512 path walks row by row (wide, or a multiple of 16).
            (1, 8, 12, 3, 1, 1, 1, 5, 70, true),
            (1, 4, 9, 3, 2, 1, 1, 7, 130, true),
            (1, 5, 16, 3, 1, 1, 1, 3, 32, true),
            (2, 3, 5, 3, 1, 1, 1, 17, 64, true),
            // Phase layouts over 1 MiB, built in bands, with narrow (compacted) rows.
            (1, 96, 5, 3, 1, 1, 1, 62, 42, true),
            (1, 64, 4, 3, 2, 1, 1, 81, 81, true),
        ]);
    }

    #[test]
    fn conv_on_one_thread() {
        // The band split and the kernel's work split both depend on the thread count.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| check(&[(1, 3, 8, 3, 2, 1, 1, 40, 70, true), (1, 16, 24, 1, 1, 0, 1, 9, 11, true)]));
    }

    #[test]
    fn conv_5x5_and_strides() {
        check(&[
            (1, 6, 10, 5, 1, 2, 1, 13, 7, true),
            (2, 4, 8, 5, 2, 2, 1, 11, 16, false),
            (1, 3, 5, 5, 3, 1, 1, 17, 14, true),
            (1, 2, 3, 5, 1, 0, 1, 5, 5, true),
            // Stride 2 over wide rows (the vectorised phase split), plain and depthwise.
            (1, 3, 8, 3, 2, 1, 1, 9, 75, true),
            (1, 4, 4, 3, 2, 1, 4, 5, 67, true),
        ]);
    }

    #[test]
    fn stride2_gather_tiers_agree() {
        let src: Vec<f32> = (0..100).map(|v| v as f32).collect();
        for n in [1usize, 7, 15, 16, 17, 31, 32, 33, 50] {
            for extra in [0usize, 1] {
                let src = &src[..2 * n - 1 + extra];
                for isa in tiers() {
                    let mut dst = vec![-1.0; n];
                    gather_stride2(&mut dst, src, isa);
                    let want: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
                    assert_eq!(dst, want, "{isa:?} n {n} src {}", src.len());
                }
            }
        }
    }

    #[test]
    fn conv_grouped() {
        check(&[
            // Depthwise.
            (1, 64, 64, 3, 1, 1, 64, 20, 20, true),
            (2, 7, 7, 3, 1, 1, 7, 13, 7, false),
            (1, 5, 5, 3, 2, 1, 5, 11, 9, true),
            (1, 3, 3, 5, 1, 2, 3, 8, 13, true),
            (1, 16, 16, 3, 1, 1, 16, 3, 70, true),
            // 2 < groups < channels, and a channel multiplier.
            (1, 12, 18, 3, 1, 1, 3, 9, 10, true),
            (2, 8, 8, 1, 1, 0, 4, 6, 7, false),
            (1, 4, 8, 3, 2, 1, 4, 9, 9, true),
        ]);
    }

    /// `forward_parts` on channel ranges of several tensors equals `forward` on their concatenation.
    #[test]
    fn conv_parts_equal_concatenation() {
        use crate::engine::{concat_channels, narrow_channels};
        let mut rng = Rng::new(77);
        // (batch, k, s, groups, h, w)
        for &(n, k, s, g, h, w) in &[(1, 1, 1, 1, 9, 13), (2, 3, 1, 1, 8, 70), (1, 3, 2, 1, 11, 9), (1, 3, 1, 12, 6, 5), (1, 1, 1, 2, 4, 4)] {
            let a = rng.tensor([n, 5, h, w]);
            let b = rng.tensor([n, 11, h, w]);
            let (cin, cout) = (12, if g == 12 { 12 } else { 10 });
            let conv = Conv2d::new(cin, cout, k, s, k / 2, g, rng.vec(cout * cin / g * k * k), Some(rng.vec(cout))).unwrap();
            // Channels 1..5 of a, then 2..10 of b.
            let cat = concat_channels(&[&narrow_channels(&a, 1, 4), &narrow_channels(&b, 2, 8)]);
            for isa in tiers() {
                let want = conv.forward_isa(&Input::new(&[(&cat, 0..cin)]), Activation::Silu, isa);
                let got = conv.forward_isa(&Input::new(&[(&a, 1..5), (&b, 2..10)]), Activation::Silu, isa);
                assert_eq!(got, want, "{isa:?} n{n} k{k} s{s} g{g} {h}x{w}");
            }
        }
        let x = rng.tensor([1, 3, 4, 4]);
        let c = Conv2d::new(3, 2, 1, 1, 0, 1, rng.vec(6), None).unwrap();
        assert_eq!(c.forward_parts(&[(&x, 0..3)], Activation::Identity), c.forward(&x, Activation::Identity));
    }

    #[test]
    #[should_panic(expected = "outside 0..3")]
    fn conv_parts_reject_bad_range() {
        let c = Conv2d::new(2, 2, 1, 1, 0, 1, vec![0.0; 4], None).unwrap();
        c.forward_parts(&[(&Tensor::zeros([1, 3, 2, 2]), 2..4)], Activation::Identity);
    }

    #[test]
    fn conv_validates_arguments() {
        assert!(Conv2d::new(4, 4, 3, 1, 1, 1, vec![0.0; 144], None).is_ok());
        assert!(Conv2d::new(4, 4, 3, 1, 1, 1, vec![0.0; 143], None).is_err());
        assert!(Conv2d::new(4, 4, 3, 1, 1, 1, vec![0.0; 144], Some(vec![0.0; 3])).is_err());
        assert!(Conv2d::new(4, 6, 3, 1, 1, 4, vec![0.0; 54], None).is_err());
        assert!(Conv2d::new(4, 4, 0, 1, 1, 1, vec![], None).is_err());
        let c = Conv2d::new(16, 32, 3, 2, 1, 1, vec![0.0; 32 * 16 * 9], None).unwrap();
        assert_eq!(c.flops(160, 160), 2 * 32 * 16 * 9 * 160 * 160);
        assert_eq!(c.output_size(320, 320), (160, 160));
        assert_eq!(c.bias(), &[0.0; 32][..]);
    }

    #[test]
    #[should_panic(expected = "input has 3 channels")]
    fn conv_rejects_channel_mismatch() {
        let c = Conv2d::new(4, 4, 1, 1, 0, 1, vec![0.0; 16], None).unwrap();
        c.forward(&Tensor::zeros([1, 3, 2, 2]), Activation::Identity);
    }
}
