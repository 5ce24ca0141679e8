//! Every int8 kernel against a scalar int32 reference convolution (exactly), the paths against each
//! other (bit for bit), and the quantized result against the f32 convolution (within the bound the
//! quantization steps allow).

use super::conv::epilogue_value;
use super::*;
use crate::engine::testutil::Rng;
use crate::engine::{Activation, Conv2d};

/// (batch, in, out, kernel, stride, padding, depthwise, h, w)
type Case = (usize, usize, usize, usize, usize, usize, bool, usize, usize);

const CASES: &[Case] = &[
    // 1×1 (direct), odd channel counts, non-multiples of 4 / 8 / 16 / 48.
    (1, 1, 1, 1, 1, 0, false, 1, 1),
    (1, 3, 5, 1, 1, 0, false, 7, 9),
    (2, 13, 9, 1, 1, 0, false, 6, 11),
    (1, 64, 64, 1, 1, 0, false, 17, 19),
    (1, 37, 70, 1, 1, 0, false, 5, 13),
    (1, 260, 17, 1, 1, 0, false, 4, 6),
    // 1×1 with stride / padding (through the phase layout).
    (1, 6, 7, 1, 2, 0, false, 9, 9),
    (1, 5, 3, 1, 1, 1, false, 4, 5),
    // 3×3, stride 1 and 2, padded and not.
    (1, 3, 16, 3, 2, 1, false, 33, 31),
    (1, 16, 8, 3, 1, 1, false, 20, 20),
    (2, 7, 11, 3, 1, 1, false, 13, 7),
    (1, 16, 32, 3, 2, 1, false, 15, 22),
    (1, 20, 20, 3, 1, 0, false, 6, 9),
    (1, 9, 130, 3, 1, 1, false, 3, 3),
    (1, 70, 9, 3, 2, 1, false, 11, 12),
    (1, 4, 4, 3, 1, 1, false, 1, 1),
    // 5×5.
    (1, 6, 10, 5, 1, 2, false, 13, 7),
    (1, 5, 6, 5, 2, 2, false, 11, 16),
    // Depthwise.
    (1, 1, 1, 3, 1, 1, true, 5, 5),
    (1, 7, 7, 3, 1, 1, true, 13, 7),
    (2, 5, 5, 3, 2, 1, true, 11, 9),
    (1, 64, 64, 3, 1, 1, true, 20, 20),
    (1, 3, 3, 5, 1, 2, true, 8, 13),
    (1, 10, 10, 3, 2, 0, true, 9, 10),
];

/// yolo26n-sized layers (smaller maps than at 640 where the reference loop would be slow).
const YOLO_CASES: &[Case] = &[
    (1, 16, 32, 3, 2, 1, false, 160, 160),
    (1, 64, 64, 1, 1, 0, false, 80, 80),
    (1, 128, 256, 3, 2, 1, false, 40, 40),
    (1, 64, 64, 3, 1, 1, true, 80, 80),
    (1, 32, 32, 3, 1, 1, false, 40, 40),
    (1, 256, 80, 1, 1, 0, false, 20, 20),
];

fn kernels() -> Vec<Int8Kernel> {
    Int8Kernel::ALL.into_iter().filter(|k| k.is_supported()).collect()
}

/// Random int8 weights over the full range (including -128 and the extremes that would saturate a
/// 16-bit `vpmaddubsw`), positive scales, random bias.
fn random_conv(rng: &mut Rng, case: Case) -> QConv2d {
    let (_, cin, cout, k, s, p, dw, _, _) = case;
    let per = if dw { 1 } else { cin } * k * k;
    let weight = (0..cout * per)
        .map(|i| match i % 11 {
            0 => -128,
            1 => 127,
            _ => (rng.next_u64() % 256) as u8 as i8,
        })
        .collect();
    let scales = (0..cout).map(|_| 0.001 + 0.01 * rng.uniform().abs()).collect();
    let bias = rng.vec(cout);
    QConv2d::from_quantized(cin, cout, k, s, p, if dw { cin } else { 1 }, weight, scales, bias).unwrap()
}

fn random_input(rng: &mut Rng, case: Case) -> QTensor {
    let (n, cin, _, _, _, _, _, h, w) = case;
    let values: Vec<u8> = (0..n * cin * h * w)
        .map(|i| if i % 7 == 0 { 255 } else { (rng.next_u64() % 256) as u8 })
        .collect();
    let params = QParams::new(0.02 + 0.01 * rng.uniform().abs(), (rng.next_u64() % 256) as u8).unwrap();
    QTensor::from_nchw_u8([n, cin, h, w], params, &values).unwrap()
}

/// Direct loops in i64: `Σ w · (x - zp)` over the taps inside the input, NCHW.
fn reference_accumulators(conv: &QConv2d, x: &QTensor) -> Vec<i32> {
    let [n, cin, h, w] = x.shape();
    let (k, s, p, cout) = (conv.kernel(), conv.stride(), conv.padding(), conv.out_channels());
    let dw = conv.groups() > 1;
    let (ho, wo) = conv.output_size(h, w);
    let xs = x.to_nchw_u8();
    let zp = x.params().zero_point as i64;
    let mut out = Vec::with_capacity(n * cout * ho * wo);
    for img in 0..n {
        for oc in 0..cout {
            for yo in 0..ho {
                for xo in 0..wo {
                    let mut acc = 0i64;
                    let channels = if dw { oc..oc + 1 } else { 0..cin };
                    for (ci_w, ci) in channels.enumerate() {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) = ((yo * s + ky) as isize - p as isize, (xo * s + kx) as isize - p as isize);
                                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                let per = if dw { 1 } else { cin };
                                let wv = conv.weight()[((oc * per + ci_w) * k + ky) * k + kx] as i64;
                                let xv = xs[((img * cin + ci) * h + y as usize) * w + xx as usize] as i64;
                                acc += wv * (xv - zp);
                            }
                        }
                    }
                    out.push(i32::try_from(acc).expect("reference accumulator overflows i32"));
                }
            }
        }
    }
    out
}

fn check_exact(cases: &[Case], seed: u64) {
    let mut rng = Rng::new(seed);
    for &case in cases {
        let conv = random_conv(&mut rng, case);
        let x = random_input(&mut rng, case);
        let want_acc = reference_accumulators(&conv, &x);
        let cout = conv.out_channels();
        let plane = want_acc.len() / (case.0 * cout);
        let mult: Vec<f32> = conv.weight_scale().iter().map(|&s| x.params().scale * s).collect();
        let out_params = QParams::new(0.05, 17).unwrap();
        let portable_f32 = conv.forward_with(&x, Activation::Silu, Int8Kernel::Portable);
        for kernel in kernels() {
            let what = format!("{kernel:?} {case:?}");
            assert_eq!(conv.accumulators(&x, kernel), want_acc, "{what}: accumulators");
            for act in [Activation::Identity, Activation::Silu] {
                let silu = act == Activation::Silu;
                let want: Vec<f32> = want_acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let oc = i / plane % cout;
                        epilogue_value(a, mult[oc], conv.bias()[oc], silu)
                    })
                    .collect();
                let got = conv.forward_with(&x, act, kernel);
                assert_eq!(got.shape()[..2], [case.0, cout]);
                let same = got.data().iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same && got.data().len() == want.len(), "{what} {act:?}: f32 outputs differ from the reference");
                let q = conv.forward_quantized_with(&x, act, out_params, kernel);
                let want_q: Vec<u8> =
                    want.iter().map(|&v| requantize(v, 1.0 / out_params.scale, out_params.zero_point as f32) as u8).collect();
                assert_eq!(q.to_nchw_u8(), want_q, "{what} {act:?}: requantized outputs");
                // Missing channels of the last output quad hold the zero point.
                if !cout.is_multiple_of(4) {
                    let pad = u32::MAX << (8 * (cout % 4));
                    let zp = out_params.zero_point as u32 * 0x0101_0101;
                    for img in 0..case.0 {
                        assert!(q.quad_plane(img, cout / 4).iter().all(|&v| v & pad == zp & pad), "{what}: padding channels");
                    }
                }
            }
            let f = conv.forward_with(&x, Activation::Silu, kernel);
            assert_eq!(f, portable_f32, "{what}: differs from the portable path");
        }
    }
}

#[test]
fn kernels_match_int32_reference() {
    check_exact(CASES, 11);
}

#[test]
fn kernels_match_int32_reference_on_yolo_layers() {
    check_exact(YOLO_CASES, 12);
}

#[test]
fn kernels_match_on_one_thread() {
    // The work split depends on the thread count.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| check_exact(&[(1, 16, 24, 3, 2, 1, false, 20, 30), (1, 12, 12, 3, 1, 1, true, 9, 70), (1, 40, 9, 1, 1, 0, false, 8, 8)], 13));
}

/// Worst case for 16-bit intermediate sums: every activation 255 and every weight ±127 / -128
/// (`vpmaddubsw` would saturate at 32767), on a layer with many taps.
#[test]
fn extreme_values_are_exact() {
    for (wv, case) in [(-128i8, (1usize, 64usize, 16usize, 3usize, 1usize, 1usize, false, 6usize, 6usize)), (127, (1, 64, 16, 3, 1, 1, false, 6, 6)), (-128, (1, 8, 8, 3, 1, 1, true, 5, 5))] {
        let (_, cin, cout, k, _, _, dw, h, w) = case;
        let per = if dw { 1 } else { cin } * k * k;
        let conv = QConv2d::from_quantized(cin, cout, k, 1, 1, if dw { cin } else { 1 }, vec![wv; cout * per], vec![1.0; cout], vec![0.0; cout]).unwrap();
        let x = QTensor::from_nchw_u8([1, cin, h, w], QParams::new(1.0, 0).unwrap(), &vec![255u8; cin * h * w]).unwrap();
        let want = reference_accumulators(&conv, &x);
        // The centre output sees all k² taps of every channel.
        assert_eq!(want[w + 1], 255 * wv as i32 * per as i32);
        for kernel in kernels() {
            assert_eq!(conv.accumulators(&x, kernel), want, "{kernel:?} weight {wv}");
        }
    }
}

/// The quantized convolution of quantized data approximates the f32 convolution (engine `Conv2d`) within
/// the error the two quantization steps allow: per output,
/// `Σ |w|·sx/2 + Σ |x̂|·sw/2` (+ SiLU's Lipschitz constant 1.1, + f32 rounding).
#[test]
fn close_to_f32_convolution() {
    let mut rng = Rng::new(21);
    for &(n, cin, cout, k, s, p, dw, h, w) in &[
        (1usize, 16usize, 32usize, 3usize, 2usize, 1usize, false, 24usize, 20usize),
        (1, 24, 20, 1, 1, 0, false, 9, 13),
        (2, 13, 13, 3, 1, 1, true, 10, 11),
        (1, 3, 16, 3, 2, 1, false, 32, 32),
    ] {
        let g = if dw { cin } else { 1 };
        let per = cin / g * k * k;
        let weight: Vec<f32> = rng.vec(cout * per).iter().map(|v| v * 0.3).collect();
        let conv = Conv2d::new(cin, cout, k, s, p, g, weight.clone(), Some(rng.vec(cout))).unwrap();
        // SiLU-like activations: mostly positive, a little negative.
        let x = Tensor::new([n, cin, h, w], rng.vec(n * cin * h * w).iter().map(|v| v * 2.0 + 1.5).collect());
        let xp = QParams::from_min_max(-0.5, 3.5).unwrap();
        let q = QConv2d::quantize(&conv).unwrap();
        let xq = quantize_tensor(&x, xp);
        let xhat = dequantize(&xq);
        for act in [Activation::Identity, Activation::Silu] {
            let want = conv.forward(&x, act);
            let got = q.forward(&xq, act);
            assert_eq!(got.shape(), want.shape());
            let [_, _, ho, wo] = want.shape();
            let mut worst_ratio = 0.0f64;
            for img in 0..n {
                for oc in 0..cout {
                    let sw = q.weight_scale()[oc] as f64;
                    for yo in 0..ho {
                        for xo in 0..wo {
                            let mut bound = 0.0f64;
                            let mut mag = 0.0f64;
                            for cw in 0..cin / g {
                                let ci = if dw { oc } else { cw };
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (y, xx) = ((yo * s + ky) as isize - p as isize, (xo * s + kx) as isize - p as isize);
                                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                            continue;
                                        }
                                        let wv = weight[((oc * (cin / g) + cw) * k + ky) * k + kx].abs() as f64;
                                        let xv = xhat.plane(img, ci)[y as usize * w + xx as usize].abs() as f64;
                                        bound += wv * xp.scale as f64 / 2.0 + xv * sw / 2.0;
                                        mag += wv * xv;
                                    }
                                }
                            }
                            let bound = 1.1 * bound + 1e-5 * (mag + 1.0);
                            let i = ((img * cout + oc) * ho + yo) * wo + xo;
                            let err = (got.data()[i] - want.data()[i]).abs() as f64;
                            assert!(err <= bound, "{act:?} out {i}: |{} - {}| = {err} > bound {bound}", got.data()[i], want.data()[i]);
                            worst_ratio = worst_ratio.max(err / bound);
                        }
                    }
                }
            }
            // The bound is not vacuous: the quantization error is a real fraction of it.
            assert!(worst_ratio > 0.05, "{act:?}: error suspiciously small ({worst_ratio})");
        }
    }
}

#[test]
fn quantize_roundtrip_and_rounding() {
    let p = QParams::new(0.5, 10).unwrap();
    // Ties to even: 0.25/0.5 = 0.5 → 0, 0.75/0.5 = 1.5 → 2, -0.25/0.5 = -0.5 → -0 (then + zp).
    assert_eq!(p.quantize(0.25), 10);
    assert_eq!(p.quantize(0.75), 12);
    assert_eq!(p.quantize(-0.25), 10);
    assert_eq!(p.quantize(1.25), 12);
    // Saturation and NaN.
    assert_eq!(p.quantize(1e9), 255);
    assert_eq!(p.quantize(-1e9), 0);
    assert_eq!(p.quantize(-5.5), 0);
    assert_eq!(p.quantize(f32::NAN), 0);
    assert_eq!(p.dequantize(14), 2.0);

    let r = QParams::from_min_max(-1.0, 3.0).unwrap();
    assert!((r.scale - 4.0 / 255.0).abs() < 1e-7);
    assert_eq!(r.zero_point, 64);
    assert_eq!(r.dequantize(r.zero_point), 0.0);
    assert_eq!(QParams::from_min_max(0.5, 2.0).unwrap().zero_point, 0);
    assert_eq!(QParams::from_min_max(-2.0, -1.0).unwrap().zero_point, 255);
    assert!(QParams::from_min_max(f32::NAN, 1.0).is_err());
    assert!(QParams::new(0.0, 0).is_err());

    let mut rng = Rng::new(5);
    let x = Tensor::new([2, 7, 5, 6], rng.vec(2 * 7 * 30).iter().map(|v| v * 2.0).collect());
    let q = quantize_tensor(&x, r);
    assert_eq!(q.shape(), [2, 7, 5, 6]);
    assert_eq!(q.quads().len(), 2 * 2 * 30);
    let back = dequantize(&q);
    for (a, b) in back.data().iter().zip(x.data()) {
        let clamped = b.clamp(-1.0 - r.scale * 0.5, 3.0);
        assert!((a - clamped).abs() <= r.scale * 0.5 + 1e-6, "{a} vs {b}");
    }
    // Element-wise the same as QParams::quantize, and the NCHW view round-trips.
    let bytes = q.to_nchw_u8();
    assert_eq!(bytes, x.data().iter().map(|&v| r.quantize(v)).collect::<Vec<_>>());
    assert_eq!(QTensor::from_nchw_u8(q.shape(), r, &bytes).unwrap(), q);
    // Channel 7 (missing) of each quad holds the zero point.
    assert!(q.quad_plane(1, 1).iter().all(|&v| v >> 24 == r.zero_point as u32));
    assert!(QTensor::from_nchw_u8([1, 2, 2, 2], r, &[0; 7]).is_err());
    assert!(QTensor::from_quads([1, 5, 2, 2], r, vec![0; 7]).is_err());
}

#[test]
fn rejects_bad_layers() {
    let ok = |g: usize, cin: usize, cout: usize| {
        QConv2d::from_quantized(cin, cout, 3, 1, 1, g, vec![0; cout * cin / g * 9], vec![1.0; cout], vec![0.0; cout])
    };
    assert!(ok(1, 4, 4).is_ok());
    assert!(ok(4, 4, 4).is_ok());
    let e = ok(2, 4, 4).unwrap_err().to_string();
    assert!(e.contains("only dense"), "{e}");
    assert!(QConv2d::from_quantized(4, 4, 3, 1, 1, 1, vec![0; 143], vec![1.0; 4], vec![0.0; 4]).is_err());
    assert!(QConv2d::from_quantized(4, 4, 3, 1, 1, 1, vec![0; 144], vec![0.0; 4], vec![0.0; 4]).is_err());
    assert!(QConv2d::from_quantized(4, 4, 3, 1, 1, 1, vec![0; 144], vec![1.0; 4], vec![0.0; 3]).is_err());
    // Too many taps for int32 accumulators.
    let big = 8000;
    assert!(QConv2d::from_quantized(big, 1, 3, 1, 1, 1, vec![0; big * 9], vec![1.0], vec![0.0]).is_err());
    let c = Conv2d::new(4, 6, 3, 1, 1, 2, vec![0.0; 6 * 2 * 9], None).unwrap();
    assert!(QConv2d::quantize(&c).is_err());
}

#[test]
fn quantize_weights_per_channel() {
    let w = vec![0.5f32, -1.0, 0.25, 0.0, /* channel 1 */ 0.0, 0.0, 0.0, 0.0, /* channel 2 */ 2.0, 1.0, -0.5, 0.01];
    let conv = Conv2d::new(4, 3, 1, 1, 0, 1, w, Some(vec![0.1, 0.2, 0.3])).unwrap();
    let q = QConv2d::quantize(&conv).unwrap();
    assert_eq!(q.weight_scale(), &[1.0 / 127.0, 1.0, 2.0 / 127.0]);
    // 0.5·127 = 63.5 → 64 (ties to even); 0.01·63.5 = 0.635 → 1.
    assert_eq!(q.weight(), &[64, -127, 32, 0, 0, 0, 0, 0, 127, 64, -32, 1]);
    assert_eq!(q.bias(), &[0.1, 0.2, 0.3]);
    assert_eq!((q.in_channels(), q.out_channels(), q.kernel(), q.stride(), q.padding(), q.groups()), (4, 3, 1, 1, 0, 1));
}

#[test]
#[should_panic(expected = "input has 3 channels")]
fn forward_rejects_channel_mismatch() {
    let c = QConv2d::from_quantized(4, 4, 1, 1, 0, 1, vec![0; 16], vec![1.0; 4], vec![0.0; 4]).unwrap();
    let x = QTensor::from_nchw_u8([1, 3, 2, 2], QParams::new(1.0, 0).unwrap(), &[0; 12]).unwrap();
    c.forward(&x, Activation::Identity);
}

#[test]
fn detected_kernel_is_supported() {
    let k = Int8Kernel::detected();
    assert!(k.is_supported());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw") && crate::engine::isa() == crate::engine::Isa::Avx512 {
        assert!(k >= Int8Kernel::Avx512Vnni, "{k:?}");
    }
}

/// The epilogue's division-free SiLU is accurate (bias = x, accumulator 0).
#[test]
fn epilogue_silu_is_accurate() {
    let mut x = -100.0f32;
    let mut worst = 0.0f64;
    while x < 100.0 {
        let got = epilogue_value(0, 1.0, x, true) as f64;
        let xd = x as f64;
        let want = xd / (1.0 + (-xd).exp());
        let err = (got - want).abs();
        assert!(err <= 2.5e-4 * want.abs() + 1e-20, "silu({x}) = {got}, want {want}");
        if want.abs() > 1e-3 {
            worst = worst.max(err / want.abs());
        }
        x += 0.0137;
    }
    for x in [f32::MAX, 1e30, -1e30, f32::MIN] {
        let got = epilogue_value(0, 1.0, x, true);
        let ok = if x > 0.0 { ((got - x) / x).abs() < 2.5e-4 } else { got.abs() < 1e-20 };
        assert!(got.is_finite() && ok, "silu({x}) = {got}");
    }
    // The bound the doc of `silu` promises (INT8 outputs: a small fraction of a quantization step).
    assert!(worst < 2.5e-4, "{worst}");
}

#[test]
fn quantizing_parts_equals_quantizing_their_concatenation() {
    let mut rng = Rng::new(11);
    let mut tensor = |c: usize| Tensor::new([2, c, 5, 3], (0..2 * c * 15).map(|_| 6.0 * rng.uniform() - 3.0).collect());
    let (a, b) = (tensor(6), tensor(5));
    let params = QParams::from_min_max(-2.5, 2.0).unwrap();
    // Channels 1..6 of a, then 0..3 of b: 8 channels, two full quads; then an odd count (a padded quad).
    for parts in [vec![(&a, 1..6), (&b, 0..3)], vec![(&a, 0..6), (&b, 2..5)], vec![(&b, 0..5)]] {
        let planes: Vec<f32> = (0..2)
            .flat_map(|img| parts.iter().flat_map(move |(t, r)| r.clone().flat_map(move |c| t.plane(img, c).to_vec())))
            .collect();
        let c = parts.iter().map(|(_, r)| r.len()).sum();
        let concat = Tensor::new([2, c, 5, 3], planes);
        assert_eq!(quantize_parts(&parts, params), quantize_tensor(&concat, params));
    }
}
