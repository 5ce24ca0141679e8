//! Every backward kernel against central finite differences of a plain `f64` forward written here
//! (so the check does not depend on the engine's own forward kernels), with `L = Σ r ⊙ y` for a
//! random `r`: then `∂L/∂y = r` is what each backward is fed.

use super::*;
use crate::engine::testutil::{assert_close, Rng};

/// Central difference of `f` at every coordinate of `x` (f64 throughout).
fn fd(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let a = f(&xp);
            xp[i] = x[i] - h;
            let b = f(&xp);
            xp[i] = x[i];
            (a - b) / (2.0 * h)
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, &b)| a * b as f64).sum()
}

/// Naive f64 convolution, `x: [n, cin, h, w]`, `w: [cout, cin/g, k, k]`.
fn conv_f64(s: ConvShape, n: usize, h: usize, wd: usize, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let (ho, wo) = s.output_size(h, wd);
    let (cin_g, cout_g) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let k = s.kernel;
    let mut y = vec![0.0; n * s.out_channels * ho * wo];
    for img in 0..n {
        for o in 0..s.out_channels {
            let g = o / cout_g;
            for yo in 0..ho {
                for xo in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..k {
                            for kx in 0..k {
                                let yy = (yo * s.stride + ky) as isize - s.padding as isize;
                                let xx = (xo * s.stride + kx) as isize - s.padding as isize;
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= wd as isize {
                                    continue;
                                }
                                acc += w[((o * cin_g + ci) * k + ky) * k + kx] * x[((img * s.in_channels + c) * h + yy as usize) * wd + xx as usize];
                            }
                        }
                    }
                    y[((img * s.out_channels + o) * ho + yo) * wo + xo] = acc;
                }
            }
        }
    }
    y
}

fn check_conv(s: ConvShape, n: usize, h: usize, w: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor([n, s.in_channels, h, w]);
    let wt = rng.vec(s.weight_len());
    let bias = rng.vec(s.out_channels);
    let (ho, wo) = s.output_size(h, w);
    let r = rng.tensor([n, s.out_channels, ho, wo]);
    let g = conv2d_backward(s, &Planes::of(&x), &wt, &r, Needs { input: true, weight: true, bias: true });
    let (xf, wf, bf) = (f64s(x.data()), f64s(&wt), f64s(&bias));
    let l = |x: &[f64], wv: &[f64], b: &[f64]| dot(&conv_f64(s, n, h, w, x, wv, Some(b)), r.data());
    assert_close(g.input.as_ref().unwrap().data(), &fd(&xf, |x| l(x, &wf, &bf)), 1e-3, &format!("{s:?} dx"));
    assert_close(g.weight.as_ref().unwrap(), &fd(&wf, |wv| l(&xf, wv, &bf)), 1e-3, &format!("{s:?} dw"));
    assert_close(g.bias.as_ref().unwrap(), &fd(&bf, |b| l(&xf, &wf, b)), 1e-3, &format!("{s:?} db"));
}

fn shape(cin: usize, cout: usize, k: usize, stride: usize, padding: usize, groups: usize) -> ConvShape {
    ConvShape { in_channels: cin, out_channels: cout, kernel: k, stride, padding, groups }
}

#[test]
fn conv_dense_and_pointwise() {
    check_conv(shape(3, 4, 3, 1, 1, 1), 2, 5, 6, 1);
    check_conv(shape(3, 4, 3, 2, 1, 1), 2, 7, 6, 2);
    check_conv(shape(5, 3, 1, 1, 0, 1), 2, 4, 3, 3);
    check_conv(shape(4, 6, 3, 2, 1, 2), 1, 6, 5, 4);
    check_conv(shape(2, 2, 5, 1, 2, 1), 1, 4, 4, 5);
}

#[test]
fn conv_depthwise() {
    check_conv(shape(4, 4, 3, 1, 1, 4), 2, 5, 6, 6);
    check_conv(shape(3, 3, 3, 2, 1, 3), 2, 7, 5, 7);
    // Stride 1 runs on a padded grid: other paddings and kernels, odd sizes, maps narrower than
    // the kernel's reach, and rows longer than one 16-lane vector.
    check_conv(shape(3, 3, 5, 1, 2, 3), 2, 7, 9, 8);
    check_conv(shape(2, 2, 3, 1, 0, 2), 3, 6, 5, 9);
    check_conv(shape(2, 2, 3, 1, 1, 2), 1, 1, 2, 10);
    check_conv(shape(2, 2, 3, 1, 2, 2), 1, 3, 19, 11);
    check_conv(shape(2, 2, 1, 1, 0, 2), 2, 3, 4, 12);
}

/// Strided input gradients on the phase-layout path (AVX-512) against im2col + col2im, on odd
/// sizes, paddings 0..=2, kernels 1, 2, 3 and 5, strides 2 and 3, groups, and batches large enough
/// that several images share one GEMM grid; plus the yolo26n stride-2 shapes at reduced size.
#[test]
fn conv_strided_input_grad_matches_col2im() {
    let mut rng = Rng::new(41);
    let cases = [
        (shape(3, 4, 3, 2, 1, 1), 2, 7, 6),
        (shape(5, 7, 3, 2, 0, 1), 3, 9, 8),
        (shape(4, 6, 3, 2, 2, 1), 1, 5, 5),
        (shape(6, 4, 1, 2, 0, 1), 2, 7, 9),
        (shape(4, 8, 2, 2, 0, 2), 2, 8, 6),
        (shape(6, 6, 3, 2, 1, 3), 2, 11, 13),
        (shape(3, 5, 5, 2, 2, 1), 2, 9, 10),
        (shape(4, 3, 3, 3, 1, 1), 2, 10, 8),
        (shape(16, 32, 3, 2, 1, 1), 9, 17, 17),
        (shape(64, 64, 3, 2, 1, 1), 3, 40, 40),
        (shape(128, 256, 3, 2, 1, 1), 8, 20, 20),
    ];
    for (s, n, h, w) in cases {
        let x = rng.tensor([n, s.in_channels, h, w]);
        let wt = rng.vec(s.weight_len());
        let (ho, wo) = s.output_size(h, w);
        let dy = rng.tensor([n, s.out_channels, ho, wo]);
        let Some(got) = dgrad::input_grad_strided(s, &wt, &dy, h, w) else {
            eprintln!("no AVX-512: the phase-layout path is not used on this CPU");
            return;
        };
        // The im2col + col2im path, image by image.
        let (g, kk) = (s.groups, s.weight_len() / s.out_channels);
        let cout_g = s.out_channels / g;
        let mut w_t = vec![0.0f32; wt.len()];
        for (src, dst) in wt.chunks(cout_g * kk).zip(w_t.chunks_mut(cout_g * kk)) {
            transpose(src, cout_g, kk, dst);
        }
        let planes = Planes::of(&x);
        let mut want = Tensor::zeros([n, s.in_channels, h, w]);
        for (img, dx) in want.data_mut().chunks_mut(s.in_channels * h * w).enumerate() {
            dense_image(s, &planes, img, &w_t, &dy, Some(dx), None);
        }
        assert_close(got.data(), &f64s(want.data()), 1e-4, &format!("{s:?} {n}x{h}x{w} strided dx"));
    }
}

/// A 1×1 convolution over a concatenation of channel ranges equals one over the built tensor.
#[test]
fn conv_over_parts() {
    let mut rng = Rng::new(8);
    let a = rng.tensor([2, 5, 3, 4]);
    let b = rng.tensor([2, 3, 3, 4]);
    let s = shape(6, 4, 1, 1, 0, 1);
    let wt = rng.vec(s.weight_len());
    let dy = rng.tensor([2, 4, 3, 4]);
    let needs = Needs { input: true, weight: true, bias: false };
    let parts = Planes::new(&[(&a, 1..4), (&b, 0..1), (&a, 4..5), (&b, 2..3)]);
    let got = conv2d_backward(s, &parts, &wt, &dy, needs);
    let built = parts.to_tensor();
    let want = conv2d_backward(s, &Planes::of(&built), &wt, &dy, needs);
    assert_close(got.weight.as_ref().unwrap(), &f64s(want.weight.as_ref().unwrap()), 1e-5, "dw");
    assert_close(got.input.unwrap().data(), &f64s(want.input.unwrap().data()), 1e-5, "dx");
    // And with a 3×3 kernel (im2col path).
    let s3 = shape(6, 4, 3, 1, 1, 1);
    let wt3 = rng.vec(s3.weight_len());
    let got = conv2d_backward(s3, &parts, &wt3, &dy, needs);
    let want = conv2d_backward(s3, &Planes::of(&built), &wt3, &dy, needs);
    assert_close(got.weight.as_ref().unwrap(), &f64s(want.weight.as_ref().unwrap()), 1e-5, "dw 3x3");
}

fn bn_act_f64(z: &[f64], shape: [usize; 4], gamma: &[f64], beta: &[f64], act: Activation, stats: Option<(&[f64], &[f64])>) -> Vec<f64> {
    let [n, c, h, w] = shape;
    let hw = h * w;
    let mut out = vec![0.0; z.len()];
    for ch in 0..c {
        let vals = || (0..n).flat_map(move |i| (0..hw).map(move |p| (i * c + ch) * hw + p));
        let (mean, invstd) = match stats {
            Some((m, is)) => (m[ch], is[ch]),
            None => {
                let cnt = (n * hw) as f64;
                let mean = vals().map(|i| z[i]).sum::<f64>() / cnt;
                let var = vals().map(|i| (z[i] - mean).powi(2)).sum::<f64>() / cnt;
                (mean, 1.0 / (var + 1e-3).sqrt())
            }
        };
        for i in vals() {
            let y = (z[i] - mean) * invstd * gamma[ch] + beta[ch];
            out[i] = match act {
                Activation::Identity => y,
                Activation::Silu => y / (1.0 + (-y).exp()),
            };
        }
    }
    out
}

fn check_bn(act: Activation, train: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let shape = [3, 4, 3, 2];
    let mut z = rng.tensor(shape);
    z.data_mut().iter_mut().for_each(|v| *v = *v * 2.0 + 0.5);
    let gamma: Vec<f32> = rng.vec(4).iter().map(|v| v + 1.5).collect();
    let beta = rng.vec(4);
    let r = rng.tensor(shape);
    let (mean, invstd) = if train {
        let (m, v) = channel_stats(&z);
        (m, v.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect::<Vec<f32>>())
    } else {
        (rng.vec(4), rng.vec(4).iter().map(|v| 1.0 + 0.5 * v).collect())
    };
    let a = batch_norm_act(&z, &mean, &invstd, &gamma, &beta, act);
    let (mf, isf) = (f64s(&mean), f64s(&invstd));
    let stats = (!train).then_some((&mf[..], &isf[..]));
    let want = bn_act_f64(&f64s(z.data()), shape, &f64s(&gamma), &f64s(&beta), act, stats);
    assert_close(a.data(), &want, 1e-5, "bn forward");
    let g = batch_norm_act_backward(z.clone(), r.clone(), &mean, &invstd, &gamma, &beta, act, train);
    let (zf, gf, bf) = (f64s(z.data()), f64s(&gamma), f64s(&beta));
    let l = |z: &[f64], g: &[f64], b: &[f64]| dot(&bn_act_f64(z, shape, g, b, act, stats), r.data());
    let what = format!("{act:?} train {train}");
    assert_close(g.input.data(), &fd(&zf, |z| l(z, &gf, &bf)), 2e-3, &format!("{what} dz"));
    assert_close(&g.gamma, &fd(&gf, |g| l(&zf, g, &bf)), 2e-3, &format!("{what} dgamma"));
    assert_close(&g.beta, &fd(&bf, |b| l(&zf, &gf, b)), 2e-3, &format!("{what} dbeta"));
}

#[test]
fn batch_norm_train_and_eval() {
    check_bn(Activation::Silu, true, 11);
    check_bn(Activation::Identity, true, 12);
    check_bn(Activation::Silu, false, 13);
    check_bn(Activation::Identity, false, 14);
}

#[test]
fn batch_stats_and_running_update() {
    let z = Tensor::new([2, 1, 1, 2], vec![1.0, 2.0, 3.0, 6.0]);
    let (m, v) = channel_stats(&z);
    assert_eq!(m, vec![3.0]);
    assert!((v[0] - 3.5).abs() < 1e-6);
    let (mut rm, mut rv) = (vec![0.0], vec![1.0]);
    update_running_stats(&mut rm, &mut rv, &m, &v, 4, 0.03);
    assert!((rm[0] - 0.09).abs() < 1e-6);
    // Unbiased variance 14/3 for the running estimate.
    assert!((rv[0] - (0.97 + 0.03 * 14.0 / 3.0)).abs() < 1e-6);
}

#[test]
fn silu_grad() {
    let mut rng = Rng::new(21);
    let x = rng.tensor([1, 2, 3, 3]);
    let r = rng.tensor([1, 2, 3, 3]);
    let got = silu_backward(&x, &r);
    let l = |x: &[f64]| x.iter().zip(r.data()).map(|(&x, &r)| x / (1.0 + (-x).exp()) * r as f64).sum::<f64>();
    assert_close(got.data(), &fd(&f64s(x.data()), l), 1e-4, "silu");
}

fn maxpool_f64(x: &[f64], [n, c, h, w]: [usize; 4], k: usize, s: usize, p: usize) -> Vec<f64> {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![f64::NEG_INFINITY; n * c * ho * wo];
    for pl in 0..n * c {
        for yo in 0..ho {
            for xo in 0..wo {
                for ky in 0..k {
                    for kx in 0..k {
                        let (yy, xx) = ((yo * s + ky) as isize - p as isize, (xo * s + kx) as isize - p as isize);
                        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                            let v = x[pl * h * w + yy as usize * w + xx as usize];
                            let o = &mut y[pl * ho * wo + yo * wo + xo];
                            *o = o.max(v);
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn max_pool_grad() {
    let mut rng = Rng::new(31);
    let shape = [2, 2, 6, 5];
    let x = rng.tensor(shape);
    for (k, s, p) in [(5, 1, 2), (3, 2, 1), (2, 2, 0)] {
        let (ho, wo) = ((6 + 2 * p - k) / s + 1, (5 + 2 * p - k) / s + 1);
        let r = rng.tensor([2, 2, ho, wo]);
        let got = max_pool2d_backward(&x, &r, k, s, p);
        let l = |x: &[f64]| dot(&maxpool_f64(x, shape, k, s, p), r.data());
        assert_close(got.data(), &fd(&f64s(x.data()), l), 1e-4, &format!("maxpool k{k} s{s} p{p}"));
    }
}

/// Ties go to the first maximum in row-major window order, like PyTorch.
#[test]
fn max_pool_ties_first_wins() {
    let x = Tensor::new([1, 1, 2, 2], vec![1.0, 1.0, 1.0, 1.0]);
    let dy = Tensor::new([1, 1, 1, 1], vec![5.0]);
    assert_eq!(max_pool2d_backward(&x, &dy, 2, 2, 0).data(), &[5.0, 0.0, 0.0, 0.0]);
}

/// The vectorised stride-1 path against the scalar rule, on odd sizes (including maps smaller
/// than the kernel), with plateaus of ties, NaNs and all-`−∞` windows.
#[test]
fn max_pool_stride1_matches_scalar_rule() {
    let mut rng = Rng::new(37);
    for (h, w, k, p) in [(10, 10, 5, 2), (7, 13, 5, 2), (3, 2, 5, 2), (1, 1, 3, 1), (9, 4, 3, 1), (6, 5, 2, 0), (5, 7, 3, 0)] {
        let numel = 3 * h * w;
        let mut x = rng.tensor([1, 3, h, w]);
        for (i, v) in x.data_mut().iter_mut().enumerate() {
            // Quantised values make ties common; some NaNs and −∞ (a whole plane of −∞ in channel 2).
            *v = (*v * 3.0).round();
            if i % 11 == 5 {
                *v = f32::NAN;
            } else if i % 7 == 3 || i >= 2 * h * w {
                *v = f32::NEG_INFINITY;
            }
        }
        let (ho, wo) = (h + 2 * p - k + 1, w + 2 * p - k + 1);
        let dy = rng.tensor([1, 3, ho, wo]);
        let got = max_pool2d_backward(&x, &dy, k, 1, p);
        let mut want = vec![0.0f32; numel];
        for ch in 0..3 {
            let r = ch * h * w..(ch + 1) * h * w;
            max_pool_plane_backward(&x.data()[r.clone()], dy.plane(0, ch), &mut want[r], h, w, k, 1, p);
        }
        assert_eq!(got.data(), &want[..], "max pool {h}x{w} k{k} p{p}");
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

/// Every input pixel collects its scale × scale block, at scale 2 (the vectorised path) and 3,
/// on odd sizes.
#[test]
fn upsample_backward_sums_blocks() {
    let mut rng = Rng::new(43);
    for (scale, h, w) in [(2, 5, 7), (2, 1, 1), (2, 10, 10), (3, 3, 5)] {
        let dy = rng.tensor([2, 3, h * scale, w * scale]);
        let got = upsample_nearest_backward(&dy, scale);
        let want: Vec<f64> = (0..2 * 3 * h * w)
            .map(|i| {
                let (pl, y, x) = (i / (h * w), i / w % h, i % w);
                let plane = &dy.data()[pl * h * w * scale * scale..];
                (0..scale * scale).map(|j| plane[(y * scale + j / scale) * w * scale + x * scale + j % scale] as f64).sum()
            })
            .collect();
        assert_close(got.data(), &want, 1e-6, &format!("upsample x{scale} {h}x{w}"));
    }
}

#[test]
fn upsample_and_channel_add() {
    let dy = Tensor::new([1, 1, 2, 4], (0..8).map(|v| v as f32).collect());
    assert_eq!(upsample_nearest_backward(&dy, 2).data(), &[0.0 + 1.0 + 4.0 + 5.0, 2.0 + 3.0 + 6.0 + 7.0]);
    let mut dst = Tensor::zeros([2, 3, 1, 1]);
    add_channels(&mut dst, 1, &Tensor::new([2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0]));
    assert_eq!(dst.data(), &[0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
}

fn attention_f64(qkv: &[f64], [b, _, h, w]: [usize; 4], heads: usize, kd: usize, hd: usize, scale: f64) -> Vec<f64> {
    let n = h * w;
    let ph = 2 * kd + hd;
    let mut out = vec![0.0; b * heads * hd * n];
    for img in 0..b {
        for head in 0..heads {
            let base = (img * heads + head) * ph * n;
            let q = |c: usize, i: usize| qkv[base + c * n + i];
            let k = |c: usize, j: usize| qkv[base + (kd + c) * n + j];
            let v = |d: usize, j: usize| qkv[base + (2 * kd + d) * n + j];
            for i in 0..n {
                let s: Vec<f64> = (0..n).map(|j| (0..kd).map(|c| q(c, i) * k(c, j)).sum::<f64>() * scale).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[((img * heads + head) * hd + d) * n + i] = (0..n).map(|j| v(d, j) * e[j] / z).sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_grad() {
    let mut rng = Rng::new(41);
    let (heads, kd, hd) = (2, 2, 3);
    let shape = [2, heads * (2 * kd + hd), 2, 3];
    let qkv = rng.tensor(shape);
    let scale = (kd as f32).powf(-0.5);
    let (out, _) = crate::engine::attention(&qkv, heads, kd, hd, scale);
    let want = attention_f64(&f64s(qkv.data()), shape, heads, kd, hd, scale as f64);
    assert_close(out.data(), &want, 1e-4, "attention forward (reference check)");
    let r = rng.tensor(out.shape());
    let got = attention_backward(&qkv, &r, heads, kd, hd, scale);
    let l = |x: &[f64]| dot(&attention_f64(x, shape, heads, kd, hd, scale as f64), r.data());
    assert_close(got.data(), &fd(&f64s(qkv.data()), l), 1e-3, "attention dqkv");
}


/// `dW` of a convolution directly in f64: `Σ dy · x` over images and output pixels.
fn weight_grad_f64(s: ConvShape, x: &Tensor, dy: &Tensor) -> Vec<f64> {
    let [n, _, h, w] = x.shape();
    let (ho, wo) = s.output_size(h, w);
    let (cin_g, cout_g, k) = (s.in_channels / s.groups, s.out_channels / s.groups, s.kernel);
    let mut dw = vec![0.0f64; s.weight_len()];
    for o in 0..s.out_channels {
        let g = o / cout_g;
        for ci in 0..cin_g {
            for ky in 0..k {
                for kx in 0..k {
                    let mut acc = 0.0;
                    for img in 0..n {
                        let (xp, dp) = (x.plane(img, g * cin_g + ci), dy.plane(img, o));
                        for yo in 0..ho {
                            for xo in 0..wo {
                                let yy = (yo * s.stride + ky).wrapping_sub(s.padding);
                                let xx = (xo * s.stride + kx).wrapping_sub(s.padding);
                                if yy < h && xx < w {
                                    acc += dp[yo * wo + xo] as f64 * xp[yy * w + xx] as f64;
                                }
                            }
                        }
                    }
                    dw[((o * cin_g + ci) * k + ky) * k + kx] = acc;
                }
            }
        }
    }
    dw
}

/// Weight gradients on shapes large enough to exercise the inner-product kernel's blocking: maps
/// cut into pieces (with a masked tail), several small images per piece, channel counts that leave
/// partial tiles, groups, and one image split over the threads.
#[test]
fn conv_weight_grad_blocked_shapes() {
    let mut rng = Rng::new(21);
    // (shape, n, h, w)
    let cases = [
        (shape(13, 7, 1, 1, 0, 1), 3, 20, 20),
        (shape(9, 5, 1, 1, 0, 1), 2, 48, 47),
        (shape(5, 9, 3, 1, 1, 1), 2, 33, 31),
        (shape(6, 5, 3, 2, 1, 1), 3, 40, 40),
        (shape(3, 16, 3, 2, 1, 1), 1, 70, 70),
        (shape(8, 6, 3, 1, 1, 2), 2, 12, 9),
        (shape(4, 6, 5, 1, 2, 1), 2, 9, 10),
        (shape(6, 5, 3, 2, 1, 1), 1, 12, 12),
        (shape(7, 9, 1, 1, 0, 1), 5, 10, 10),
    ];
    for (s, n, h, w) in cases {
        let x = rng.tensor([n, s.in_channels, h, w]);
        let (ho, wo) = s.output_size(h, w);
        let dy = rng.tensor([n, s.out_channels, ho, wo]);
        let wt = rng.vec(s.weight_len());
        let g = conv2d_backward(s, &Planes::of(&x), &wt, &dy, Needs { input: false, weight: true, bias: false });
        assert_close(g.weight.as_ref().unwrap(), &weight_grad_f64(s, &x, &dy), 1e-4, &format!("{s:?} {n}x{h}x{w} dw"));
    }
    // Over channel ranges of two tensors (a concatenation never built), 1×1 and 3×3.
    let a = rng.tensor([2, 5, 36, 30]);
    let b = rng.tensor([2, 3, 36, 30]);
    let parts = Planes::new(&[(&a, 1..4), (&b, 0..2), (&a, 4..5)]);
    let built = parts.to_tensor();
    for s in [shape(6, 10, 1, 1, 0, 1), shape(6, 10, 3, 2, 1, 1)] {
        let (ho, wo) = s.output_size(36, 30);
        let dy = rng.tensor([2, 10, ho, wo]);
        let wt = rng.vec(s.weight_len());
        let g = conv2d_backward(s, &parts, &wt, &dy, Needs { input: false, weight: true, bias: false });
        assert_close(g.weight.as_ref().unwrap(), &weight_grad_f64(s, &built, &dy), 1e-4, &format!("{s:?} parts dw"));
    }
}

/// Best-of-N CPU time of the BatchNorm passes of a training step on yolo26n shapes, next to a plain
/// copy of the same tensor.
/// `RAYON_NUM_THREADS=1 cargo test --release -p ferroyolo --lib bench_batch_norm -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_batch_norm() {
    let mut rng = Rng::new(3);
    for shape in [[8, 80, 40, 40], [8, 16, 160, 160], [8, 256, 10, 10]] {
        let c = shape[1];
        let z = rng.tensor(shape);
        let da = rng.tensor(shape);
        let (gamma, beta) = (rng.vec(c), rng.vec(c));
        let (mean, var) = channel_stats(&z);
        let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
        let best = |f: &mut dyn FnMut()| {
            (0..9)
                .map(|_| {
                    let t = crate::engine::process_cpu_ms();
                    f();
                    crate::engine::process_cpu_ms() - t
                })
                .fold(f64::MAX, f64::min)
        };
        let copy = best(&mut || drop(std::hint::black_box(z.clone())));
        let stats = best(&mut || drop(std::hint::black_box(channel_stats(&z))));
        let fwd = best(&mut || drop(std::hint::black_box(batch_norm_act(&z, &mean, &invstd, &gamma, &beta, Activation::Silu))));
        let (mut zc, mut dc) = (z.clone(), da.clone());
        let bwd = best(&mut || {
            let g = batch_norm_act_backward(zc.clone(), dc.clone(), &mean, &invstd, &gamma, &beta, Activation::Silu, true);
            zc = g.input;
            dc = da.clone();
        });
        println!("{shape:?}: copy {copy:.3} ms, stats {stats:.3}, bn+silu {fwd:.3}, backward {bwd:.3} (incl. 2 copies)");
    }
}

/// Best-of-7 CPU time of the stride-2 gradients per yolo26n shape (batch 8 at 320²). Run it on
/// one thread (`RAYON_NUM_THREADS=1`): with more, idle spinning counts too.
/// `cargo test --release -p ferroyolo --lib bench_stride2 -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_stride2() {
    let mut rng = Rng::new(1);
    let shape = |cin, cout| ConvShape { in_channels: cin, out_channels: cout, kernel: 3, stride: 2, padding: 1, groups: 1 };
    for (s, h) in [(shape(3, 16), 320), (shape(16, 32), 160), (shape(64, 64), 80), (shape(128, 128), 40), (shape(64, 64), 40), (shape(128, 256), 20), (shape(128, 128), 20)] {
        let n = 8;
        let x = rng.tensor([n, s.in_channels, h, h]);
        let (ho, wo) = s.output_size(h, h);
        let dy = rng.tensor([n, s.out_channels, ho, wo]);
        let wt = rng.tensor([s.out_channels, s.in_channels, 3, 3]);
        let planes = Planes::of(&x);
        let time = |needs: Needs| {
            (0..7)
                .map(|_| {
                    let t = crate::engine::process_cpu_ms();
                    std::hint::black_box(conv2d_backward(s, &planes, wt.data(), &dy, needs));
                    crate::engine::process_cpu_ms() - t
                })
                .fold(f64::MAX, f64::min)
        };
        let dx = time(Needs { input: true, weight: false, bias: false });
        let dw = time(Needs { input: false, weight: true, bias: false });
        let gf = 2.0 * (s.weight_len() * ho * wo * n) as f64 / 1e6;
        println!("{:>4}->{:<4} {h:>3}²: dX {dx:7.2} ms ({:5.1} GFLOP/s), dW {dw:7.2} ms ({:5.1})", s.in_channels, s.out_channels, gf / dx, gf / dw);
    }
}
