//! INT8 convolution on the CPU, for post-training-quantized networks: the arithmetic really runs on
//! 8-bit integers with 32-bit accumulation.
//!
//! ## Number formats
//! * **Activations**: `u8`, asymmetric per tensor: `x ≈ scale · (q - zero_point)` ([`QParams`]).
//!   Unsigned because `vpdpbusd` multiplies unsigned by signed bytes, and asymmetric because most
//!   activations of the network are SiLU outputs (≥ -0.28), which a symmetric range would waste half of.
//! * **Weights**: `i8`, symmetric per output channel: `w ≈ scale_w[oc] · q` with `q ∈ [-127, 127]`.
//! * **Zero point**: `Σ w·(x - zp) = Σ w·x - zp·Σ w`; the last term is one integer per output
//!   channel (`zp · weight_sum[oc]`), subtracted from the accumulator before anything else. Padding is
//!   filled with `zp`, i.e. real zero, so that one correction is right at the borders too.
//! * **Epilogue** (fused into the kernel's output pass, the same scalar code on every path):
//!   `y = (acc - zp·Σw) as f32 · (scale_x · scale_w[oc]) + bias[oc]` (one fused multiply-add), then
//!   optionally SiLU (division-free, ~3e-7 relative error), then either
//!   written as `f32` (NCHW [`Tensor`]) or requantized: `q = clamp(round(y / scale_out) + zp_out, 0, 255)`
//!   with `y / scale_out` computed as `y · (1 / scale_out)` and rounding **half to even** (as ONNX
//!   `QuantizeLinear` and PyTorch do); out-of-range values saturate. [`quantize_tensor`] uses the same
//!   rounding.
//! * **Range**: accumulators cannot overflow while `in_channels/groups · k² < 66 000`
//!   (`255 · 128 · K < 2³¹`); larger layers are refused.
//!
//! ## Layout
//! A [`QTensor`] stores its channels in quads: `[n][⌈c/4⌉][h][w]` of `u32`, each holding 4 channels of
//! one pixel (channel `4g + j` in bits `8j..8j+8`; missing channels of the last quad hold the zero
//! point, i.e. 0.0). That is the operand `vpdpbusd` wants: 16 pixels × 4 channels per 512-bit load,
//! multiplied by one broadcast quad of 4 weights. The dense kernel is then the f32 engine's implicit
//! GEMM ([`Conv2d`](super::Conv2d)'s phase layout, tap offsets and row-pointer B) with quads in place of
//! floats: rows of A are output channels (8 per packed panel), columns are output pixels (48 per tile),
//! and one k-step is (input-channel quad, tap). 1×1 stride-1 convolutions read the input directly;
//! others copy it once into a zero-point-padded phase layout. Converting f32 NCHW to quads and back
//! ([`quantize_tensor`], [`dequantize`]) is one pass at the edges of a quantized region.
//!
//! Depthwise convolutions (groups = channels) de-interleave each channel into a byte phase plane and
//! run a plain `i32` multiply-add loop that the compiler vectorises (no dot-product instruction fits a
//! per-channel sum).
//!
//! ## Kernels
//! [`Int8Kernel`] names the five implementations, chosen at run time like the f32 engine's tiers:
//! AMX-INT8 (`tdpbsud` on 16 × 64-byte tiles, see `amx.rs`; depthwise and the epilogue as on
//! AVX-512), AVX-512 VNNI (`vpdpbusd` zmm), AVX-VNNI (`vpdpbusd` ymm, VEX), AVX2 (exact `vpmaddwd` on
//! even/odd byte halves: `vpmaddubsw` would saturate), and portable Rust. All produce the same
//! integers, hence (sharing the epilogue code) bit-identical outputs. `FERROYOLO_ISA=portable|avx2`
//! caps the choice as it does for the f32 engine.

mod amx;
mod conv;
mod kernels;
mod ops;
#[cfg(test)]
mod tests;

use anyhow::{ensure, Result};

use super::buffers;
use super::simd::{self, Isa};
use super::tensor::Tensor;
use super::threads::parallel_for;

pub use conv::QConv2d;
pub use ops::{add_quantized, concat_quantized, max_pool2d_quantized, requantize_tensor, union_params, upsample_nearest_quantized};

/// The int8 kernel implementation (instruction set) a convolution runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Int8Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2: `vpmaddwd` on 16-bit halves (exact).
    Avx2,
    /// AVX-VNNI: 256-bit `vpdpbusd`.
    AvxVnni,
    /// AVX-512 VNNI: 512-bit `vpdpbusd`.
    Avx512Vnni,
    /// AMX-INT8 tiles for dense convolutions (`tdpbsud`), AVX-512 VNNI for the rest.
    Amx,
}

impl Int8Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Int8Kernel; 5] = [Int8Kernel::Portable, Int8Kernel::Avx2, Int8Kernel::AvxVnni, Int8Kernel::Avx512Vnni, Int8Kernel::Amx];

    /// The fastest kernel this CPU supports, capped by the engine's tier ([`super::isa`], which
    /// `FERROYOLO_ISA` can lower); `FERROYOLO_AMX=0` leaves AMX out (to measure the VNNI path on an
    /// AMX machine). Detected once.
    pub fn detected() -> Int8Kernel {
        static BEST: std::sync::OnceLock<Int8Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let amx_off = std::env::var("FERROYOLO_AMX").is_ok_and(|v| v == "0");
            let cap = match simd::isa() {
                Isa::Portable => Int8Kernel::Portable,
                Isa::Avx2 => Int8Kernel::AvxVnni,
                Isa::Avx512 if amx_off => Int8Kernel::Avx512Vnni,
                Isa::Avx512 => Int8Kernel::Amx,
            };
            Int8Kernel::ALL.into_iter().filter(|k| k.is_supported() && *k <= cap).max().unwrap_or(Int8Kernel::Portable)
        })
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            match self {
                Int8Kernel::Portable => true,
                // FMA too: the epilogue's `mul_add` must be an instruction, not a libm call.
                Int8Kernel::Avx2 => has!("avx2") && has!("fma"),
                Int8Kernel::AvxVnni => has!("avx2") && has!("fma") && has!("avxvnni"),
                Int8Kernel::Avx512Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("fma"),
                Int8Kernel::Amx => Int8Kernel::Avx512Vnni.is_supported() && amx::available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Kernel::Portable
        }
    }
}

/// Quantization parameters of a `u8` tensor: `real = scale · (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// # Errors
    /// If `scale` is not a positive finite number.
    pub fn new(scale: f32, zero_point: u8) -> Result<QParams> {
        ensure!(scale.is_finite() && scale > 0.0, "QParams: scale must be positive and finite, got {scale}");
        Ok(QParams { scale, zero_point })
    }

    /// The parameters that map `[min, max]` (widened to contain 0, so that zero padding is exact) onto
    /// `0..=255`: `scale = (max - min) / 255`, `zero_point = round(-min / scale)`. A range of width 0
    /// gets scale 1.
    ///
    /// # Errors
    /// If `min` or `max` is not finite.
    pub fn from_min_max(min: f32, max: f32) -> Result<QParams> {
        ensure!(min.is_finite() && max.is_finite(), "QParams::from_min_max: range [{min}, {max}] is not finite");
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        QParams::new(scale, zero_point)
    }

    /// `v` quantized (round half to even, saturating).
    pub fn quantize(self, v: f32) -> u8 {
        requantize(v, 1.0 / self.scale, self.zero_point as f32) as u8
    }

    /// The real value of `q`.
    pub fn dequantize(self, q: u8) -> f32 {
        (q as i32 - self.zero_point as i32) as f32 * self.scale
    }
}

/// 1.5·2^23: adding and subtracting it rounds an f32 below 2^22 in magnitude to an integer, ties to
/// even (branch-free, so loops over it vectorise).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `clamp(round_half_even(v · inv_scale) + zp, 0, 255)`; NaN gives 0. Only float adds, multiplies and
/// compares and one bit cast, so loops over it vectorise (a float-to-int `as` cast would not).
#[inline(always)]
pub(crate) fn requantize(v: f32, inv_scale: f32, zp: f32) -> u32 {
    let r = v * inv_scale;
    // Bounded first so the rounding trick is exact; ±512 saturates either way. (Selects, not clamp,
    // which vectorises worse.)
    let r = if r < -512.0 { -512.0 } else { r };
    let r = if r > 512.0 { 512.0 } else { r };
    let q = (r + ROUND_MAGIC) - ROUND_MAGIC + zp;
    // Written so that NaN (every comparison false) becomes 0.
    let q = if q >= 0.0 { q } else { 0.0 };
    let q = if q > 255.0 { 255.0 } else { q };
    // q is an integer in [0, 255]: adding the magic number puts it in the low mantissa bits.
    (q + ROUND_MAGIC).to_bits().wrapping_sub(ROUND_MAGIC.to_bits())
}

/// A quantized `u8` activation tensor (per-tensor [`QParams`]) in the channel-quad layout described in
/// the module doc.
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    shape: [usize; 4],
    params: QParams,
    /// `[n][⌈c/4⌉][h][w]` quads.
    data: Vec<u32>,
}

impl QTensor {
    /// Wraps quads (`[n][⌈c/4⌉][h][w]`, see the module doc).
    ///
    /// # Errors
    /// If `data` does not have `n · ⌈c/4⌉ · h · w` quads.
    pub fn from_quads(shape: [usize; 4], params: QParams, data: Vec<u32>) -> Result<QTensor> {
        let [n, c, h, w] = shape;
        let want = n * c.div_ceil(4) * h * w;
        ensure!(data.len() == want, "QTensor: {} quads for shape {shape:?} ({want} expected)", data.len());
        Ok(QTensor { shape, params, data })
    }

    /// From `u8` values in plain NCHW order.
    ///
    /// # Errors
    /// If `values` does not have `n · c · h · w` elements.
    pub fn from_nchw_u8(shape: [usize; 4], params: QParams, values: &[u8]) -> Result<QTensor> {
        let [n, c, h, w] = shape;
        ensure!(
            values.len() == n * c * h * w,
            "QTensor::from_nchw_u8: {} values for shape {shape:?}",
            values.len()
        );
        let plane = h * w;
        let mut data = vec![0u32; n * c.div_ceil(4) * plane];
        for (gi, quads) in data.chunks_mut(plane.max(1)).enumerate().take(n * c.div_ceil(4)) {
            let (img, g) = (gi / c.div_ceil(4), gi % c.div_ceil(4));
            for (i, q) in quads.iter_mut().enumerate() {
                let mut v = 0;
                for j in 0..4 {
                    let ch = 4 * g + j;
                    let b = if ch < c { values[(img * c + ch) * plane + i] } else { params.zero_point };
                    v |= (b as u32) << (8 * j);
                }
                *q = v;
            }
        }
        QTensor::from_quads(shape, params, data)
    }

    /// The values in plain NCHW order.
    pub fn to_nchw_u8(&self) -> Vec<u8> {
        let [n, c, h, w] = self.shape;
        let plane = h * w;
        let mut out = vec![0u8; n * c * plane];
        for img in 0..n {
            for ch in 0..c {
                let quads = self.quad_plane(img, ch / 4);
                let dst = &mut out[(img * c + ch) * plane..][..plane];
                for (d, &q) in dst.iter_mut().zip(quads) {
                    *d = (q >> (8 * (ch % 4))) as u8;
                }
            }
        }
        out
    }

    /// `[n, c, h, w]` (the real channel count, not rounded up to quads).
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Scale and zero point.
    pub fn params(&self) -> QParams {
        self.params
    }

    /// The quads, `[n][⌈c/4⌉][h][w]`.
    pub fn quads(&self) -> &[u32] {
        &self.data
    }

    /// Channel quads per image (`⌈c/4⌉`).
    pub fn quad_channels(&self) -> usize {
        self.shape[1].div_ceil(4)
    }

    /// The `h · w` quads of channel quad `g` of image `img`.
    pub fn quad_plane(&self, img: usize, g: usize) -> &[u32] {
        let plane = self.shape[2] * self.shape[3];
        let start = (img * self.quad_channels() + g) * plane;
        &self.data[start..start + plane]
    }
}

impl Drop for QTensor {
    fn drop(&mut self) {
        buffers::give(u32_to_f32_vec(std::mem::take(&mut self.data)));
    }
}

/// `len` zero quads on a recycled engine buffer (see `buffers.rs`: fresh pages for every layer's
/// output cost page faults and clearing).
pub(crate) fn quad_buffer(len: usize) -> Vec<u32> {
    let mut v = std::mem::ManuallyDrop::new(buffers::zeros(len));
    // SAFETY: u32 and f32 have the same size and alignment, and 0.0f32 is the all-zero bit pattern; the
    // allocation is handed over whole (pointer, length, capacity).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<u32>(), v.len(), v.capacity()) }
}

/// An empty quad vector with capacity for `len`, on a recycled engine buffer (for outputs that
/// are written whole before their length is set).
pub(crate) fn quad_buffer_uninit(len: usize) -> Vec<u32> {
    let mut v = std::mem::ManuallyDrop::new(buffers::take(len));
    // SAFETY: as in `quad_buffer` (an empty vector: no values to reinterpret).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<u32>(), 0, v.capacity()) }
}

fn u32_to_f32_vec(v: Vec<u32>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: as in `quad_buffer`, the other way round (every bit pattern is some f32).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// Quantizes an f32 NCHW tensor (round half to even, saturating; see [`QParams::quantize`]).
pub fn quantize_tensor(x: &Tensor, params: QParams) -> QTensor {
    quantize_parts(&[(x, 0..x.shape()[1])], params)
}

/// Quantizes the channel concatenation of `parts` (each a tensor and a range of its channels; same
/// batch and spatial size) without materialising it in f32: the input of a quantized convolution
/// that reads a concat or a split.
///
/// # Panics
/// If `parts` is empty or the parts differ in batch or spatial size.
pub fn quantize_parts(parts: &[(&Tensor, std::ops::Range<usize>)], params: QParams) -> QTensor {
    let span = super::profile::start();
    let q = quantize_parts_inner(parts, params);
    let [n, c, h, w] = q.shape;
    span.finish(0, || format!("int8 quantize [{n}, {c}, {h}, {w}]{}", if parts.len() > 1 { " (parts)" } else { "" }));
    q
}

fn quantize_parts_inner(parts: &[(&Tensor, std::ops::Range<usize>)], params: QParams) -> QTensor {
    let [n, _, h, w] = parts.first().expect("quantize_parts: no parts").0.shape();
    for (t, r) in parts {
        let [tn, tc, th, tw] = t.shape();
        assert!(tn == n && th == h && tw == w && r.end <= tc, "quantize_parts: part {:?} (channels {r:?}) does not fit [{n}, _, {h}, {w}]", t.shape());
    }
    // Concatenated channel -> (part, channel in that part).
    let sources: Vec<(usize, usize)> = parts.iter().enumerate().flat_map(|(i, (_, r))| r.clone().map(move |c| (i, c))).collect();
    let c = sources.len();
    let (plane, groups) = (h * w, c.div_ceil(4));
    let total = n * groups * plane;
    // Not zeroed: the items write every quad (length set below).
    let mut data = quad_buffer_uninit(total);
    let (inv, zp) = (1.0 / params.scale, params.zero_point as f32);
    let zpq = params.zero_point as u32;
    // Items of whole rows, about 8k pixels each, not whole quad planes: the network input has 3
    // channels, a single quad, which would otherwise run on one thread.
    let rows = (8192 / w.max(1)).clamp(1, h.max(1));
    let chunks = h.div_ceil(rows);
    let out = conv::SyncPtr(data.as_mut_ptr());
    let work = |i: usize| {
        let (gi, chunk) = (i / chunks, i % chunks);
        let (img, g) = (gi / groups, gi % groups);
        let px = chunk * rows * w..((chunk + 1) * rows).min(h) * w;
        // SAFETY: item i writes rows `px` of quad plane gi only, inside the capacity of `data`,
        // which outlives the loop.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(gi * plane + px.start).cast::<std::mem::MaybeUninit<u32>>(), px.len()) };
        let present = (c - 4 * g).min(4);
        let src = |j: usize| {
            let (part, pc) = sources[4 * g + j.min(present - 1)];
            &parts[part].0.plane(img, pc)[px.clone()]
        };
        let q = |v: f32| requantize(v, inv, zp);
        // One arm per number of present channels (missing ones of a last quad hold the zero point),
        // each a single zipped pass that vectorises.
        match present {
            4 => {
                for ((((d, &a), &b), &c), &e) in dst.iter_mut().zip(src(0)).zip(src(1)).zip(src(2)).zip(src(3)) {
                    d.write(q(a) | q(b) << 8 | q(c) << 16 | q(e) << 24);
                }
            }
            3 => {
                for (((d, &a), &b), &c) in dst.iter_mut().zip(src(0)).zip(src(1)).zip(src(2)) {
                    d.write(q(a) | q(b) << 8 | q(c) << 16 | zpq << 24);
                }
            }
            2 => {
                for ((d, &a), &b) in dst.iter_mut().zip(src(0)).zip(src(1)) {
                    d.write(q(a) | q(b) << 8 | zpq << 16 | zpq << 24);
                }
            }
            _ => {
                for (d, &a) in dst.iter_mut().zip(src(0)) {
                    d.write(q(a) | zpq << 8 | zpq << 16 | zpq << 24);
                }
            }
        }
    };
    for_items(n * groups * chunks, total, &work);
    // SAFETY: the items wrote every quad (all rows of every quad plane).
    unsafe { data.set_len(total) };
    QTensor { shape: [n, c, h, w], params, data }
}

/// Below this many quads (or values) a pass runs on the calling thread (a parallel region costs more).
pub(crate) const PARALLEL_MIN: usize = 1 << 14;

/// Runs `work(i)` for `i < items`, in parallel when the whole pass touches at least
/// [`PARALLEL_MIN`] quads (or values).
pub(crate) fn for_items(items: usize, total: usize, work: &(dyn Fn(usize) + Sync)) {
    if total >= PARALLEL_MIN && items > 1 {
        parallel_for(items, work);
    } else {
        (0..items).for_each(work);
    }
}

/// The f32 NCHW tensor a quantized one stands for.
pub fn dequantize(q: &QTensor) -> Tensor {
    let span = super::profile::start();
    let t = dequantize_inner(q);
    span.finish(0, || format!("int8 dequantize {:?}", q.shape()));
    t
}

fn dequantize_inner(q: &QTensor) -> Tensor {
    let [n, c, h, w] = q.shape;
    let plane = h * w;
    let (scale, zp) = (q.params.scale, q.params.zero_point as i32);
    let mut out = buffers::zeros(n * c * plane);
    let dst = conv::SyncPtr(out.as_mut_ptr());
    let work = |i: usize| {
        let (img, ch) = (i / c, i % c);
        let quads = q.quad_plane(img, ch / 4);
        // SAFETY: item i writes plane i only, inside `out`, which outlives the loop.
        let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(i * plane), plane) };
        for (d, &v) in d.iter_mut().zip(quads) {
            *d = (((v >> (8 * (ch % 4))) & 0xff) as i32 - zp) as f32 * scale;
        }
    };
    if n * c * plane >= 1 << 16 {
        parallel_for(n * c, &work);
    } else {
        (0..n * c).for_each(work);
    }
    Tensor::new([n, c, h, w], out)
}
