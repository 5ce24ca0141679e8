//! The multi-head self-attention core of YOLO26's `Attention` module (softmax(qᵀk·scale), then v·attnᵀ).

use super::buffers;
use super::profile;
use super::simd::{self, Isa};
use super::tensor::Tensor;
use super::threads::for_chunks_mut;

/// Multi-head self-attention over the `N = H·W` positions of a map.
///
/// `qkv` is `[B, heads·(2·key_dim + head_dim), H, W]`; for head `h` its channel block holds, in order,
/// `key_dim` rows of q, `key_dim` rows of k and `head_dim` rows of v, each row `N` long.
/// `attn = softmax_over_keys(qᵀk · scale)` is `N × N`, and `out = v · attnᵀ` is `head_dim × N`.
///
/// Returns `(out, v)`, both `[B, heads·head_dim, H, W]`: `v` is returned because YOLO26 adds a
/// positional (depthwise) convolution of it to `out`.
///
/// # Panics
/// If `qkv`'s channel count is not `heads·(2·key_dim + head_dim)`.
pub fn attention(qkv: &Tensor, num_heads: usize, key_dim: usize, head_dim: usize, scale: f32) -> (Tensor, Tensor) {
    let span = profile::start();
    let r = attention_isa(qkv, num_heads, key_dim, head_dim, scale, simd::isa());
    let [b, _, h, w] = qkv.shape();
    let n = (h * w) as u64;
    span.finish(2 * b as u64 * num_heads as u64 * n * n * (key_dim + head_dim) as u64, || {
        format!("attention h{num_heads} kd{key_dim} hd{head_dim} {h}x{w}")
    });
    r
}

pub(crate) fn attention_isa(
    qkv: &Tensor,
    heads: usize,
    key_dim: usize,
    head_dim: usize,
    scale: f32,
    isa: Isa,
) -> (Tensor, Tensor) {
    let [b, c, h, w] = qkv.shape();
    let per_head = 2 * key_dim + head_dim;
    assert_eq!(
        c,
        heads * per_head,
        "attention: {c} channels, {heads} heads × (2·{key_dim} + {head_dim}) expected"
    );
    let n = h * w;
    let mut out = buffers::zeros(b * heads * head_dim * n);
    let mut v_out = buffers::take(b * heads * head_dim * n);
    for img in 0..b {
        for hd in 0..heads {
            let start = (hd * per_head + 2 * key_dim) * n;
            v_out.extend_from_slice(&qkv.image(img)[start..start + head_dim * n]);
        }
    }
    // One task per (image, head), each on one thread: a head is only ~30 MFLOP, too little to split
    // further without the threads waiting on each other.
    let work = |task: usize, o: &mut [f32]| {
        let (img, hd) = (task / heads, task % heads);
        let block = &qkv.image(img)[hd * per_head * n..(hd + 1) * per_head * n];
        let (q, rest) = block.split_at(key_dim * n);
        let (k, v) = rest.split_at(key_dim * n);
        // Scores, stored transposed: st[j][i] = score of query i against key j.
        super::conv::with_scratch(n * n, |st| head(q, k, v, n, key_dim, head_dim, scale, st, o, isa));
    };
    for_chunks_mut(&mut out, head_dim * n, true, &work);
    let shape = [b, heads * head_dim, h, w];
    (Tensor::new(shape, out), Tensor::new(shape, v_out))
}

/// One head, on the calling thread: `st = exp((k·scale)ᵀ q - column max)`, `out = v · st`, then each
/// output column divided by its softmax sum (cheaper than normalising the n × n scores).
#[allow(clippy::too_many_arguments)]
fn head(q: &[f32], k: &[f32], v: &[f32], n: usize, kd: usize, hd: usize, scale: f32, st: &mut [f32], out: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        use super::igemm::{igemm, pack_a, pad_bias, GemmArgs, MR};
        use super::Activation;
        // A = (k·scale)ᵀ, N × kd: its panel rows are 8 consecutive positions of each k row.
        let panels = n.div_ceil(MR);
        let mut a = vec![0.0f32; panels * kd * MR];
        for (p, panel) in a.chunks_mut(kd * MR).enumerate() {
            for d in 0..kd {
                for r in 0..MR.min(n - p * MR) {
                    panel[d * MR + r] = k[d * n + p * MR + r] * scale;
                }
            }
        }
        let zeros = pad_bias(&vec![0.0; n.max(hd)]);
        let q_rows: Vec<*const f32> = q.chunks(n).map(|r| r.as_ptr()).collect();
        let s_args = GemmArgs {
            m: n,
            k: kd,
            rows: 1,
            cols: n,
            b_rs: 0,
            c_rs: 0,
            a: &a,
            bias: &zeros,
            b_rows: &q_rows,
            c: st.as_mut_ptr(),
            ldc: n,
            act: Activation::Identity,
        };
        // SAFETY: AVX-512 tier only on CPUs that have it; B rows are q's kd rows of n; C is n rows of n
        // in `st`, which aliases nothing else.
        unsafe { igemm(&s_args, false) };
        let inv_sum = softmax_columns(st, n, isa);
        let v_packed = pack_a(v, hd, n, n);
        let p_rows: Vec<*const f32> = st.chunks(n).map(|r| r.as_ptr()).collect();
        let o_args = GemmArgs {
            m: hd,
            k: n,
            rows: 1,
            cols: n,
            b_rs: 0,
            c_rs: 0,
            a: &v_packed,
            bias: &zeros,
            b_rows: &p_rows,
            c: out.as_mut_ptr(),
            ldc: n,
            act: Activation::Identity,
        };
        // SAFETY: as above; B rows are st's n rows of n; C is hd rows of n in `out`.
        unsafe { igemm(&o_args, false) };
        scale_columns(out, &inv_sum, isa);
        return;
    }
    // SAFETY (both calls): every operand is addressed inside its slice with the given strides:
    // st[j][i] (n × n, row stride n) = Σ_d k[d][j] q[d][i] with k read as kᵀ (n × kd: column stride n,
    // row stride 1) and q as kd × n (row stride n); out (hd × n) = v (hd × n) · st (n × n).
    unsafe {
        gemm::gemm(n, n, kd, st.as_mut_ptr(), 1, n as isize, false, k.as_ptr(), n as isize, 1, q.as_ptr(), 1, n as isize, 0.0, scale, false, false, false, gemm::Parallelism::None);
    }
    let inv_sum = softmax_columns(st, n, isa);
    unsafe {
        gemm::gemm(hd, n, n, out.as_mut_ptr(), 1, n as isize, false, v.as_ptr(), 1, n as isize, st.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
    }
    scale_columns(out, &inv_sum, isa);
}

/// `rows[r][i] *= factor[i]` for every row of length `factor.len()`.
fn scale_columns(rows: &mut [f32], factor: &[f32], isa: Isa) {
    #[inline(always)]
    fn generic(rows: &mut [f32], factor: &[f32]) {
        for row in rows.chunks_mut(factor.len()) {
            for (v, &f) in row.iter_mut().zip(factor) {
                *v *= f;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(rows: &mut [f32], factor: &[f32]) {
        generic(rows, factor)
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `isa` never exceeds what the CPU was detected to support.
        return unsafe { avx512(rows, factor) };
    }
    let _ = isa;
    generic(rows, factor)
}

/// The unnormalised softmax down each column of the `n × n` row-major `st` (over keys j, for each
/// query i): `st = exp(st - column max)`; returns `1 / column sum`. Working a row at a time keeps every
/// step a contiguous, vectorisable pass.
fn softmax_columns(st: &mut [f32], n: usize, isa: Isa) -> Vec<f32> {
    #[inline(always)]
    fn generic(st: &mut [f32], n: usize) -> Vec<f32> {
        let mut max = vec![f32::NEG_INFINITY; n];
        for row in st.chunks(n) {
            for (m, &v) in max.iter_mut().zip(row) {
                *m = if v > *m { v } else { *m };
            }
        }
        let mut sum = vec![0.0f32; n];
        for row in st.chunks_mut(n) {
            for ((v, &m), s) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                *v = simd::exp_fast(*v - m);
                *s += *v;
            }
        }
        for s in sum.iter_mut() {
            *s = 1.0 / *s;
        }
        sum
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(st: &mut [f32], n: usize) -> Vec<f32> {
        generic(st, n)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(st: &mut [f32], n: usize) -> Vec<f32> {
        generic(st, n)
    }
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `isa` never exceeds what the CPU was detected to support.
        Isa::Avx512 => return unsafe { avx512(st, n) },
        Isa::Avx2 => return unsafe { avx2(st, n) },
        Isa::Portable => {}
    }
    let _ = isa;
    generic(st, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::simd::detected_isa;
    use crate::engine::testutil::{assert_close, Rng};

    fn naive(qkv: &Tensor, heads: usize, kd: usize, hd: usize, scale: f64) -> Vec<f64> {
        let [b, _, h, w] = qkv.shape();
        let n = h * w;
        let per = 2 * kd + hd;
        let mut out = Vec::new();
        for img in 0..b {
            let x = |ch: usize, i: usize| qkv.plane(img, ch)[i] as f64;
            for hh in 0..heads {
                let base = hh * per;
                let mut attn = vec![0.0f64; n * n];
                for i in 0..n {
                    for j in 0..n {
                        attn[i * n + j] = (0..kd).map(|d| x(base + d, i) * x(base + kd + d, j)).sum::<f64>() * scale;
                    }
                    let m = attn[i * n..(i + 1) * n].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = attn[i * n..(i + 1) * n].iter().map(|v| (v - m).exp()).sum();
                    for j in 0..n {
                        attn[i * n + j] = (attn[i * n + j] - m).exp() / s;
                    }
                }
                for c in 0..hd {
                    for i in 0..n {
                        out.push((0..n).map(|j| x(base + 2 * kd + c, j) * attn[i * n + j]).sum());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive() {
        let mut rng = Rng::new(99);
        for &(b, heads, kd, hd, h, w) in &[(1, 2, 32, 64, 20, 20), (2, 2, 32, 64, 7, 5), (1, 1, 3, 5, 3, 3)] {
            // Scaled-up inputs so the softmax is far from uniform (a wrong axis would show).
            let data: Vec<f32> = rng.vec(b * heads * (2 * kd + hd) * h * w).iter().map(|v| v * 2.0).collect();
            let qkv = Tensor::new([b, heads * (2 * kd + hd), h, w], data);
            let scale = (kd as f32).powf(-0.5);
            let want = naive(&qkv, heads, kd, hd, scale as f64);
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if isa > detected_isa() {
                    continue;
                }
                let (out, v) = attention_isa(&qkv, heads, kd, hd, scale, isa);
                assert_eq!(out.shape(), [b, heads * hd, h, w]);
                assert_close(out.data(), &want, 1e-5, &format!("attention {isa:?} {b}x{heads}x{kd}x{hd} {h}x{w}"));
                for img in 0..b {
                    for hh in 0..heads {
                        for c in 0..hd {
                            assert_eq!(v.plane(img, hh * hd + c), qkv.plane(img, hh * (2 * kd + hd) + 2 * kd + c));
                        }
                    }
                }
            }
        }
    }
}
