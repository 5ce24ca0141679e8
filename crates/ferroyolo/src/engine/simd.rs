//! Run-time CPU feature selection and the vectorisable math (exp, sigmoid, SiLU) the kernels share.
//!
//! The crate is compiled for the baseline target, so wide SIMD is only used through functions marked
//! `#[target_feature]` and chosen at run time from [`isa`]. Plain loops written with the `#[inline(always)]`
//! scalar helpers below are instantiated inside such functions, where LLVM vectorises them to the
//! selected width; the hand-written AVX-512 conv kernel uses [`avx512`] for its fused epilogue.

use std::sync::OnceLock;

/// The instruction-set tier the engine's kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code only: im2col + the `gemm` crate (which does its own SIMD dispatch) and plain loops.
    Portable,
    /// AVX2 + FMA: plain loops are instantiated for 256-bit vectors; convolutions still go through `gemm`.
    Avx2,
    /// AVX-512F: the engine's own implicit-GEMM convolution kernel and 512-bit plain loops.
    Avx512,
}

/// The tier this CPU supports, detected once. `FERROYOLO_ISA=portable|avx2|avx512` lowers it (for
/// debugging and benchmarking; asking for more than the CPU has is ignored).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = detect();
        let wanted = match std::env::var("FERROYOLO_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        detected.min(wanted)
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The best tier the CPU supports, ignoring `FERROYOLO_ISA` (tests use it to run every tier it has).
#[cfg(test)]
pub(crate) fn detected_isa() -> Isa {
    detect()
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in few bits and a remainder (Cody–Waite), so `x - n ln2` loses nothing.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2^23 rounds an f32 of magnitude < 2^22 to the nearest integer
/// (ties to even) without a call to `roundf`, so the loop stays vectorisable on every target.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Input range where 2^n stays a normal float: below, exp is < 1.2e-38; above, > 1.6e38.
const EXP_LO: f32 = -87.3;
const EXP_HI: f32 = 88.0;
/// Coefficients c2..c5 of e^r ≈ 1 + r + c2·r² + c3·r³ + c4·r⁴ + c5·r⁵ on |r| ≤ ln2/2, fitted for
/// minimal maximum relative error (1.1e-7, about one f32 ulp).
const C2: f32 = 0.499_992_3;
const C3: f32 = 0.166_671_14;
const C4: f32 = 0.041_890_12;
const C5: f32 = 0.008_312_527;

/// e^x with relative error below 3e-7 for |x| ≤ 87, branch-free so loops over it vectorise.
/// Inputs beyond the range are clamped (e^x saturates near 1.2e-38 and 1.6e38 instead of 0 / inf),
/// which is harmless for the sigmoid and SiLU built on it.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // Written as selects (not `clamp`, whose NaN handling does not vectorise well).
    let x = if x < EXP_LO { EXP_LO } else { x };
    let x = if x > EXP_HI { EXP_HI } else { x };
    // t's low mantissa bits hold n = round(x·log2 e) (t = 1.5·2^23 + n exactly), so n as an
    // integer is a bit-level subtraction: no float-to-int cast, whose saturating semantics would
    // keep the loop from vectorising.
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = C5;
    p = p * r + C4;
    p = p * r + C3;
    p = p * r + C2;
    p = p * r + 1.0;
    let y = p * r + 1.0;
    // n is an integer in [-126, 127], so the biased exponent n + 127 is a normal one.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()).wrapping_add(127) << 23);
    y * two_n
}

/// SiLU (x · sigmoid(x)) on top of [`exp_fast`].
#[inline(always)]
pub fn silu_fast(x: f32) -> f32 {
    // Below -88 the quotient would be x · e^-88 (not negligible for huge |x|); the true value, and
    // what this returns, is within 5e-37 of zero.
    let x = if x < -EXP_HI { -EXP_HI } else { x };
    x / (1.0 + exp_fast(-x))
}

/// Applies SiLU to every element, using the widest SIMD the CPU has.
pub fn silu_slice(v: &mut [f32]) {
    silu_slice_isa(v, isa())
}

/// [`silu_slice`] with an explicit tier (tests compare tiers against each other).
pub(crate) fn silu_slice_isa(v: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the tier is only ever at most what `detect` found on this CPU.
        Isa::Avx512 => return unsafe { silu_slice_avx512(v) },
        Isa::Avx2 => return unsafe { silu_slice_avx2(v) },
        Isa::Portable => {}
    }
    let _ = isa;
    silu_slice_generic(v)
}

#[inline(always)]
fn silu_slice_generic(v: &mut [f32]) {
    for x in v {
        *x = silu_fast(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_slice_avx512(v: &mut [f32]) {
    silu_slice_generic(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_slice_avx2(v: &mut [f32]) {
    silu_slice_generic(v)
}

/// Explicit AVX-512 versions of the math above, for kernels that keep values in registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// 16 lanes of SiLU, x / (1 + e^-x): e^-x from the same polynomial as [`exp_fast`], with the
    /// power of two applied by `vscalefps` (fewer steps than building it from bits), and the reciprocal from the 14-bit estimate plus one Newton step (relative error
    /// ~1e-8, several times cheaper than `vdivps`). About 16 instructions per 16 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn silu(x: __m512) -> __m512 {
        // Below -88, e^-x would overflow to inf and the Newton step would turn 0·inf into NaN; far above
        // 88 the range reduction loses all precision. Inside [-88, 88] e^-x is an ordinary float.
        let xc = _mm512_max_ps(x, _mm512_set1_ps(-EXP_HI));
        let xe = _mm512_min_ps(xc, _mm512_set1_ps(EXP_HI));
        // e^-x = 2^n · e^-r' with n = round(-x·log2 e) and r' = x + n·ln2 (Cody–Waite).
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            xe,
            _mm512_set1_ps(-LOG2E),
        ));
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_HI), xe);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        // e^-r' by the polynomial in -r', i.e. with the odd coefficients negated.
        let mut p = _mm512_set1_ps(-C5);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-C3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-1.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        let d = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0));
        let y = _mm512_rcp14_ps(d);
        // x / d = (x·y)·(2 - d·y) with one Newton step on y.
        // (xc rather than x: below -88 the result is ~-5e-37 instead of x·6e-39, which for huge |x|
        // would not be negligible; the true value is even closer to zero.)
        _mm512_mul_ps(_mm512_mul_ps(xc, y), _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn exp_fast_is_accurate() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x < 87.0 {
            worst = worst.max(rel(exp_fast(x) as f64, (x as f64).exp()));
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "exp_fast worst relative error {worst}");
        // Saturation instead of 0 / inf far outside the range.
        assert!(exp_fast(-1000.0) >= 0.0 && exp_fast(-1000.0) < 1.3e-38);
        assert!(exp_fast(1000.0).is_finite());
    }

    #[test]
    fn silu_fast_is_accurate() {
        for x in [-1e30f32, -1000.0, 1000.0, 1e30] {
            let xd = x as f64;
            let want = xd / (1.0 + (-xd).exp());
            assert!((silu_fast(x) as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30, "silu({x})");
        }
        let mut x = -100.0f32;
        while x < 100.0 {
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            assert!((silu_fast(x) as f64 - xd * s).abs() <= 1e-6 * (xd * s).abs() + 1e-30, "silu({x})");
            x += 0.0173;
        }
    }

    #[test]
    fn silu_slice_tiers_agree() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let mut want = v.clone();
        silu_slice_isa(&mut want, Isa::Portable);
        for tier in [Isa::Avx2, Isa::Avx512] {
            if tier > detected_isa() {
                continue;
            }
            let mut got = v.clone();
            silu_slice_isa(&mut got, tier);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-30, "{tier:?}: {g} vs {w}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_silu_is_accurate() {
        if detected_isa() < Isa::Avx512 {
            return;
        }
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..8192).map(|i| (i as f32 - 4096.0) * 0.025).collect();
        xs.extend([-1e30, -1000.0, -100.0, -88.5, -88.0, -87.9, -87.3, 87.3, 88.5, 100.0, 1e30, 0.0, -0.0]);
        while !xs.len().is_multiple_of(16) {
            xs.push(1.0);
        }
        for chunk in xs.chunks_exact(16) {
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512F was detected above; `chunk` and `out` hold 16 floats each.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::silu(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&o, &x) in out.iter().zip(chunk) {
                let xd = x as f64;
                let want = xd / (1.0 + (-xd).exp());
                assert!(o.is_finite(), "silu({x}) = {o}");
                assert!((o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30, "silu({x}): {o} vs {want}");
            }
        }
    }
}
