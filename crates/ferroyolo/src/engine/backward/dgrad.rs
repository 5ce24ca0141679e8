//! Input gradients of strided dense convolutions on the engine's own AVX-512 kernel ([`igemm`]),
//! without im2col / col2im.
//!
//! The forward kernel reads input channel `ci` in its phase layout (`s²` phases of `hq × wq`, see
//! [`PhaseLayout`]): `y[co][q] = Σ_(ci, t) W[co][ci][t] · X[ci][taps[t] + q]` over a `wq`-wide output
//! grid `q`. Its adjoint is `D[ci][j] = Σ_(co, t) W[co][ci][t] · dyq[co][j − taps[t]]`, with `dyq` the
//! output gradient on the `wq` grid (zero in the extra columns and outside the grid). A tap only
//! reaches its own phase, so per phase `ph` this is a plain implicit GEMM over that phase's taps:
//! `D_ph[ci][j'] = Σ_(co, t ∈ ph) W[co][ci][t] · E[co][j' + M − off_t]`, where `E` is `dyq` behind
//! `M` zeros (`M` the largest in-phase offset `off_t`) so that every B row is a contiguous run
//! inside `E`. The phase layout gradient `D` is then interleaved back into NCHW (padding dropped).
//! Same FLOPs as the forward convolution; the images of a chunk run as one grid (B row stride one
//! image of `E`, C row stride one image of `D`).

use super::super::buffers;
use super::super::conv::PhaseLayout;
use super::super::tensor::Tensor;
use super::super::threads::parallel_for;
use super::{simd, ConvShape, SendPtr};

/// `∂L/∂x` (`[n, in_channels, h, w]`) of a dense or grouped (not depthwise) convolution with
/// stride > 1, or `None` when the CPU lacks AVX-512 (the caller then uses im2col + col2im).
pub(super) fn input_grad_strided(shape: ConvShape, weight: &[f32], dy: &Tensor, h: usize, w: usize) -> Option<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx512 {
        return Some(input_grad_avx512(shape, weight, dy, h, w));
    }
    let _ = (shape, weight, dy, h, w);
    None
}

#[cfg(target_arch = "x86_64")]
fn input_grad_avx512(shape: ConvShape, weight: &[f32], dy: &Tensor, h: usize, w: usize) -> Tensor {
    use super::super::igemm::{igemm, pack_a, pad_bias, GemmArgs};
    use super::super::Activation;

    let ConvShape { in_channels: cin, out_channels: cout, kernel: k, stride: s, padding: p, groups: g } = shape;
    let (cin_g, cout_g) = (cin / g, cout / g);
    let n = dy.shape()[0];
    let layout = PhaseLayout::new(k, s, p, h, w);
    let (ho, wo, wq) = (layout.ho, layout.wo, layout.wq);
    let phase_len = layout.per_channel / (s * s);
    let hq = phase_len / wq;
    // Taps per phase, with their offsets inside the phase.
    let mut phase_taps: Vec<Vec<(usize, usize)>> = vec![Vec::new(); s * s];
    for (t, &off) in layout.taps.iter().enumerate() {
        phase_taps[off / phase_len].push((t, off % phase_len));
    }
    let lead = layout.taps.iter().map(|&o| o % phase_len).max().unwrap_or(0);
    let e_len = lead + phase_len;
    // Per phase and group, the packed `cin_g × (cout_g · taps)` matrix `A[ci][(co, t)] = W[co][ci][t]`.
    let kk = k * k;
    let packed: Vec<Vec<Vec<f32>>> = phase_taps
        .iter()
        .map(|taps| {
            (0..g)
                .map(|grp| {
                    let cols = cout_g * taps.len();
                    if cols == 0 {
                        return Vec::new();
                    }
                    let mut a = vec![0.0f32; cin_g * cols];
                    for ci in 0..cin_g {
                        for co in 0..cout_g {
                            for (j, &(t, _)) in taps.iter().enumerate() {
                                a[ci * cols + co * taps.len() + j] = weight[((grp * cout_g + co) * cin_g + ci) * kk + t];
                            }
                        }
                    }
                    pack_a(&a, cin_g, cols, cols)
                })
                .collect()
        })
        .collect();
    let zero_bias = pad_bias(&vec![0.0; cin_g]);

    let mut dx = buffers::take(n * cin * h * w);
    let dx_ptr = SendPtr(dx.as_mut_ptr());
    // Images per chunk: the chunk's layout gradient about 1 MiB, so it is still in L2 when read back.
    let d_img = cin * s * s * phase_len;
    let per_chunk = ((1 << 18) / d_img.max(1)).clamp(1, n.max(1));
    let mut e = buffers::take(per_chunk * cout * e_len);
    let mut d = buffers::take(per_chunk * d_img);
    // SAFETY: both are fully written below before being read (E by the fill, D by the GEMMs, or
    // zeroed for a phase without taps); set_len only avoids zeroing them twice.
    unsafe {
        e.set_len(per_chunk * cout * e_len);
        d.set_len(per_chunk * d_img);
    }
    let mut b_rows: Vec<*const f32> = Vec::new();
    for img0 in (0..n).step_by(per_chunk) {
        let imgs = per_chunk.min(n - img0);
        // E: dy on the wq grid behind `lead` zeros, zero beyond.
        let e_ptr = SendPtr(e.as_mut_ptr());
        parallel_for(imgs * cout, &|item| {
            let (i, co) = (item / cout, item % cout);
            // SAFETY: run `item` of E, written by this item only.
            let run = unsafe { std::slice::from_raw_parts_mut(e_ptr.get().add(item * e_len), e_len) };
            let src = dy.plane(img0 + i, co);
            run[..lead].fill(0.0);
            let grid = &mut run[lead..];
            for y in 0..ho {
                grid[y * wq..y * wq + wo].copy_from_slice(&src[y * wo..(y + 1) * wo]);
                grid[y * wq + wo..(y + 1) * wq].fill(0.0);
            }
            grid[ho * wq..].fill(0.0);
        });
        for (ph, taps) in phase_taps.iter().enumerate() {
            if taps.is_empty() {
                for img in 0..imgs {
                    for ci in 0..cin {
                        d[img * d_img + ci * s * s * phase_len + ph * phase_len..][..phase_len].fill(0.0);
                    }
                }
                continue;
            }
            for grp in 0..g {
                b_rows.clear();
                for co in grp * cout_g..(grp + 1) * cout_g {
                    b_rows.extend(taps.iter().map(|&(_, off)| e[co * e_len + lead - off..].as_ptr()));
                }
                let args = GemmArgs {
                    m: cin_g,
                    k: b_rows.len(),
                    rows: imgs,
                    cols: phase_len,
                    b_rs: cout * e_len,
                    c_rs: d_img,
                    a: &packed[ph][grp],
                    bias: &zero_bias,
                    b_rows: &b_rows,
                    c: d[grp * cin_g * s * s * phase_len + ph * phase_len..].as_mut_ptr(),
                    ldc: s * s * phase_len,
                    act: Activation::Identity,
                };
                // SAFETY: AVX-512F is available (checked by the caller). B: row (co, t) of image i
                // reads `E[i][co][lead − off_t + x]` for x < phase_len, inside the image's run of
                // e_len = lead + phase_len. C: row ci of image i, column x is D[i][ci][ph][x], inside
                // `d` and disjoint from every other (ci, i, x); D and E are separate buffers.
                unsafe { igemm(&args, true) };
            }
        }
        // D back to NCHW: input pixel (y, x) is padded (y + p, x + p), phase ((y+p) % s, (x+p) % s),
        // position ((y+p) / s, (x+p) / s); pixels past the layout were read by no tap (gradient 0).
        let d_ref = &d;
        parallel_for(imgs * cin, &|item| {
            let (i, ci) = (item / cin, item % cin);
            let chan = &d_ref[i * d_img + ci * s * s * phase_len..][..s * s * phase_len];
            // SAFETY: plane (img0 + i, ci) of dx, written by this item only.
            let plane = unsafe { std::slice::from_raw_parts_mut(dx_ptr.get().add(((img0 + i) * cin + ci) * h * w), h * w) };
            let mut padded_row = vec![0.0f32; s * wq];
            for (y, row) in plane.chunks_mut(w).enumerate() {
                let (a, r) = ((y + p) % s, (y + p) / s);
                if r >= hq {
                    row.fill(0.0);
                    continue;
                }
                let phase_row = |b: usize| &chan[(a * s + b) * phase_len + r * wq..][..wq];
                if s == 2 {
                    super::dispatch!(interleave2(phase_row(0), phase_row(1), &mut padded_row));
                } else {
                    for b in 0..s {
                        for (j, &v) in phase_row(b).iter().enumerate() {
                            padded_row[j * s + b] = v;
                        }
                    }
                }
                let valid = (s * wq).saturating_sub(p).min(w);
                row[..valid].copy_from_slice(&padded_row[p..p + valid]);
                row[valid..].fill(0.0);
            }
        });
    }
    buffers::give(e);
    buffers::give(d);
    // SAFETY: every plane of every image was written above.
    unsafe { dx.set_len(n * cin * h * w) };
    Tensor::new([n, cin, h, w], dx)
}

/// `out[2j] = even[j]`, `out[2j + 1] = odd[j]`.
#[inline(always)]
fn interleave2(even: &[f32], odd: &[f32], out: &mut [f32]) {
    for ((pair, &a), &b) in out.chunks_exact_mut(2).zip(even).zip(odd) {
        pair[0] = a;
        pair[1] = b;
    }
}
