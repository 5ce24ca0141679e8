//! Gradient checks of the training pass.
//!
//! Block level: each block's backward against central finite differences of its own training
//! forward (BatchNorm in training mode), for sampled parameter and input coordinates, with the
//! scalar `L = Σ r ⊙ out` (random `r`) accumulated in f64. The forward runs in f32, so the step is
//! a compromise between rounding noise and curvature; the tolerance reflects that.
//!
//! Network level (fixtures): parameter names against the checkpoint, the one-to-one detachment,
//! frozen layers, and gradients of the whole yolo26n against the reference.

use super::*;
use crate::model::yolo26::BatchNorm;

/// SplitMix64, for reproducible test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }

    fn tensor(&mut self, shape: [usize; 4]) -> Tensor {
        Tensor::new(shape, self.vec(shape.iter().product(), 1.0))
    }
}

fn conv_bn(rng: &mut Rng, c1: usize, c2: usize, k: usize, s: usize, groups: usize, act: bool) -> ConvBn {
    let fan_in = (c1 / groups * k * k) as f32;
    let weight = rng.vec(c2 * c1 / groups * k * k, 1.5 / fan_in.sqrt());
    let bn = BatchNorm {
        weight: rng.vec(c2, 0.3).iter().map(|v| v + 1.0).collect(),
        bias: rng.vec(c2, 0.3),
        running_mean: rng.vec(c2, 0.1),
        running_var: rng.vec(c2, 0.2).iter().map(|v| v + 1.0).collect(),
        eps: 1e-3,
    };
    ConvBn::new(c1, c2, k, s, groups, weight, bn, if act { Activation::Silu } else { Activation::Identity }).unwrap()
}

fn bottleneck(rng: &mut Rng, c1: usize, c2: usize, e: f64) -> Bottleneck {
    let c_ = (c2 as f64 * e) as usize;
    Bottleneck { cv1: conv_bn(rng, c1, c_, 3, 1, 1, true), cv2: conv_bn(rng, c_, c2, 3, 1, 1, true), add: c1 == c2 }
}

fn c3k(rng: &mut Rng, c1: usize, c2: usize) -> C3k {
    let c_ = c2 / 2;
    C3k {
        cv1: conv_bn(rng, c1, c_, 1, 1, 1, true),
        cv2: conv_bn(rng, c1, c_, 1, 1, 1, true),
        cv3: conv_bn(rng, 2 * c_, c2, 1, 1, 1, true),
        m: (0..2).map(|_| bottleneck(rng, c_, c_, 1.0)).collect(),
    }
}

fn attention(rng: &mut Rng, dim: usize, heads: usize) -> Attention {
    let head_dim = dim / heads;
    let key_dim = head_dim / 2;
    Attention {
        num_heads: heads,
        key_dim,
        head_dim,
        scale: (key_dim as f32).powf(-0.5),
        qkv: conv_bn(rng, dim, dim + 2 * key_dim * heads, 1, 1, 1, false),
        proj: conv_bn(rng, dim, dim, 1, 1, 1, false),
        pe: conv_bn(rng, dim, dim, 3, 1, dim, false),
    }
}

fn psa(rng: &mut Rng, c: usize, heads: usize) -> PsaBlock {
    PsaBlock { attn: attention(rng, c, heads), ffn: [conv_bn(rng, c, 2 * c, 1, 1, 1, true), conv_bn(rng, 2 * c, c, 1, 1, 1, false)] }
}

fn c3k2(rng: &mut Rng, c1: usize, c2: usize, kind: &str) -> C3k2 {
    let c = c2 / 2;
    let m = vec![match kind {
        "bottleneck" => C3k2Block::Bottleneck(bottleneck(rng, c, c, 0.5)),
        "c3k" => C3k2Block::C3k(Box::new(c3k(rng, c, c))),
        _ => C3k2Block::Attn(bottleneck(rng, c, c, 0.5), Box::new(psa(rng, c, 2))),
    }];
    C3k2 { c, cv1: conv_bn(rng, c1, 2 * c, 1, 1, 1, true), cv2: conv_bn(rng, 3 * c, c2, 1, 1, 1, true), m }
}

fn no_freeze(_: &str) -> bool {
    false
}

/// The parameters of a list of modules (as `modules_mut` lists them).
fn params_of<'a>(mods: Vec<(String, ModuleMut<'a>)>) -> Vec<(String, &'a mut Vec<f32>)> {
    let mut out = Vec::new();
    for (p, m) in mods {
        match m {
            ModuleMut::ConvBn(c) => {
                out.push((format!("{p}.conv.weight"), &mut c.weight));
                out.push((format!("{p}.bn.weight"), &mut c.bn.weight));
                out.push((format!("{p}.bn.bias"), &mut c.bn.bias));
            }
            ModuleMut::Bias(b) => {
                out.push((format!("{p}.weight"), &mut b.weight));
                out.push((format!("{p}.bias"), &mut b.bias));
            }
        }
    }
    out
}

fn dot(a: &Tensor, r: &Tensor) -> f64 {
    a.data().iter().zip(r.data()).map(|(&a, &r)| a as f64 * r as f64).sum()
}

/// Checks `bwd` against finite differences of `fwd` for sampled coordinates of every parameter
/// (named by `params`) and of the input.
fn check_block<B, T>(
    what: &str,
    mut block: B,
    x: Tensor,
    frozen: &dyn Fn(&str) -> bool,
    fwd: impl Fn(&mut B, Feat, &Ctx) -> (Tensor, T),
    bwd: impl Fn(&B, T, Tensor, &mut Sink) -> Tensor,
    params: impl Fn(&mut B) -> Vec<(String, &mut Vec<f32>)>,
) {
    let ctx = Ctx { frozen };
    let mut rng = Rng(0xC0FFEE);
    let (out, tape) = fwd(&mut block, Feat::whole(x.clone()), &ctx);
    let r = rng.tensor(out.shape());
    let mut sink = Sink::default();
    let dx = bwd(&block, tape, r.clone(), &mut sink);
    assert_eq!(dx.shape(), x.shape(), "{what}: input gradient shape");
    let h = 2e-3f32;
    let loss = |block: &mut B, x: &Tensor| dot(&fwd(block, Feat::whole(x.clone()), &ctx).0, &r);
    // (label, analytic, finite difference, scale of that gradient)
    let mut checks: Vec<(String, f32, f64, f32)> = Vec::new();
    let names: Vec<(String, usize)> = params(&mut block).into_iter().map(|(n, v)| (n, v.len())).collect();
    for (pi, (name, len)) in names.iter().enumerate() {
        let Some(g) = sink.0.get(name).cloned() else {
            assert!(frozen(&format!("{}.", &name[..name.rfind('.').unwrap()])) || name.contains(".bn.") && frozen(&format!("{}.", &name[..name.rfind(".bn.").unwrap()])), "{what}: no gradient for {name}");
            continue;
        };
        assert_eq!(g.len(), *len, "{what}: {name} gradient length");
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        for s in 0..4 {
            let idx = (rng.next_u64() as usize + s) % len;
            let orig = params(&mut block)[pi].1[idx];
            params(&mut block)[pi].1[idx] = orig + h;
            let lp = loss(&mut block, &x);
            params(&mut block)[pi].1[idx] = orig - h;
            let lm = loss(&mut block, &x);
            params(&mut block)[pi].1[idx] = orig;
            checks.push((format!("{name}[{idx}]"), g[idx], (lp - lm) / (2.0 * h as f64), scale));
        }
    }
    let scale = dx.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    for _ in 0..8 {
        let idx = rng.next_u64() as usize % x.numel();
        let mut xp = x.clone();
        xp.data_mut()[idx] += h;
        let lp = loss(&mut block, &xp);
        xp.data_mut()[idx] -= 2.0 * h;
        let lm = loss(&mut block, &xp);
        checks.push((format!("input[{idx}]"), dx.data()[idx], (lp - lm) / (2.0 * h as f64), scale));
    }
    // Gradients that are zero in exact arithmetic (a BatchNorm bias followed by another
    // training-mode BatchNorm) are judged against the block's overall gradient magnitude.
    let global = checks.iter().fold(0f64, |m, c| m.max(c.3 as f64));
    let mut worst = 0f64;
    for (label, a, f, scale) in &checks {
        let err = (*a as f64 - f).abs() / f.abs().max(0.05 * *scale as f64).max(1e-2 * global).max(1e-3);
        worst = worst.max(err);
        assert!(err < 2e-2, "{what}: {label}: analytic {a}, finite difference {f} (relative error {err:.2e})");
    }
    eprintln!("{what}: {} coordinates, worst relative error {worst:.2e}", checks.len());
}

fn conv_case(what: &str, cb: ConvBn, x: Tensor, frozen: &dyn Fn(&str) -> bool) {
    check_block(
        what,
        cb,
        x,
        frozen,
        |b, x, ctx| conv_fwd(b, "m", x, ctx),
        |b, t, g, s| conv_bwd_dx(b, "m", t, g, s),
        |b| params_of(vec![("m".into(), ModuleMut::ConvBn(b))]),
    );
}

#[test]
fn conv_bn_train_mode() {
    let mut rng = Rng(1);
    conv_case("conv 3x3 s2 silu", conv_bn(&mut rng, 4, 6, 3, 2, 1, true), rng.tensor([2, 4, 7, 6]), &no_freeze);
    conv_case("conv 1x1 identity", conv_bn(&mut rng, 5, 4, 1, 1, 1, false), rng.tensor([3, 5, 3, 4]), &no_freeze);
    conv_case("depthwise 3x3 silu", conv_bn(&mut rng, 6, 6, 3, 1, 6, true), rng.tensor([2, 6, 5, 5]), &no_freeze);
}

#[test]
fn conv_bn_frozen_eval_mode() {
    let mut rng = Rng(2);
    let cb = conv_bn(&mut rng, 4, 6, 3, 1, 1, true);
    let before = cb.bn.running_mean.clone();
    let frozen = |p: &str| p.starts_with("m.");
    let ctx = Ctx { frozen: &frozen };
    let mut c2 = cb.clone();
    let (_, t) = conv_fwd(&mut c2, "m", Feat::whole(rng.tensor([2, 4, 5, 5])), &ctx);
    assert_eq!(c2.bn.running_mean, before, "frozen BatchNorm keeps its running statistics");
    let mut sink = Sink::default();
    let g = conv_bwd(&c2, "m", t, Tensor::zeros([2, 6, 5, 5]), true, &mut sink);
    assert!(g.is_some() && sink.0.is_empty(), "frozen: input gradient only");
    conv_case("frozen conv (eval BN)", cb, rng.tensor([2, 4, 5, 5]), &frozen);
}

#[test]
fn running_stats_update() {
    let mut rng = Rng(3);
    let mut cb = conv_bn(&mut rng, 3, 2, 1, 1, 1, true);
    let (rm0, rv0) = (cb.bn.running_mean.clone(), cb.bn.running_var.clone());
    let x = rng.tensor([2, 3, 4, 4]);
    let (_, t) = conv_fwd(&mut cb, "m", Feat::whole(x), &Ctx { frozen: &no_freeze });
    let (mean, var) = bw::channel_stats(&t.z);
    for c in 0..2 {
        assert!((cb.bn.running_mean[c] - (0.97 * rm0[c] + 0.03 * mean[c])).abs() < 1e-6);
        assert!((cb.bn.running_var[c] - (0.97 * rv0[c] + 0.03 * var[c] * 32.0 / 31.0)).abs() < 1e-6);
    }
}

#[test]
fn bottleneck_grad() {
    let mut rng = Rng(4);
    check_block(
        "bottleneck",
        bottleneck(&mut rng, 6, 6, 0.5),
        rng.tensor([2, 6, 5, 5]),
        &no_freeze,
        |b, x, ctx| bottleneck_fwd(b, "m", x, ctx),
        |b, t, g, s| bottleneck_bwd(b, "m", t, g, s),
        |b| {
            let mut v = Vec::new();
            bottleneck_modules(b, "m", &mut v);
            params_of(v)
        },
    );
}

#[test]
fn c3k_grad() {
    let mut rng = Rng(5);
    check_block(
        "c3k",
        c3k(&mut rng, 6, 8),
        rng.tensor([2, 6, 5, 5]),
        &no_freeze,
        |b, x, ctx| c3k_fwd(b, "m", x, ctx),
        |b, t, g, s| c3k_bwd(b, "m", t, g, s),
        |c| {
            let mut v = vec![("m.cv1".to_string(), ModuleMut::ConvBn(&mut c.cv1)), ("m.cv2".into(), ModuleMut::ConvBn(&mut c.cv2)), ("m.cv3".into(), ModuleMut::ConvBn(&mut c.cv3))];
            for (k, b) in c.m.iter_mut().enumerate() {
                bottleneck_modules(b, &format!("m.m.{k}"), &mut v);
            }
            params_of(v)
        },
    );
}

/// C3k2 and its three inner-block variants, through a one-layer model so the parameter walk is
/// the model's own.
fn c3k2_case(kind: &str, seed: u64) {
    let mut rng = Rng(seed);
    let block = c3k2(&mut rng, 6, 8, kind);
    check_block(
        &format!("c3k2 ({kind})"),
        Layer::C3k2(block),
        rng.tensor([2, 6, 4, 4]),
        &no_freeze,
        |l, x, ctx| match l {
            Layer::C3k2(c) => c3k2_fwd(c, "model.0", x, ctx),
            _ => unreachable!(),
        },
        |l, t, g, s| match l {
            Layer::C3k2(c) => c3k2_bwd(c, "model.0", t, g, s),
            _ => unreachable!(),
        },
        layer_params,
    );
}

/// The parameters of a single layer, named as layer 0 of a model.
fn layer_params(l: &mut Layer) -> Vec<(String, &mut Vec<f32>)> {
    let mut v = Vec::new();
    layer_modules(l, "model.0", &mut v);
    params_of(v)
}

#[test]
fn c3k2_bottleneck_grad() {
    c3k2_case("bottleneck", 6);
}

#[test]
fn c3k2_c3k_grad() {
    c3k2_case("c3k", 7);
}

#[test]
fn c3k2_attn_grad() {
    c3k2_case("attn", 8);
}

#[test]
fn sppf_grad() {
    let mut rng = Rng(9);
    let s = Sppf { cv1: conv_bn(&mut rng, 8, 4, 1, 1, 1, false), cv2: conv_bn(&mut rng, 16, 8, 1, 1, 1, true), k: 5, n: 3, add: true };
    check_block(
        "sppf",
        Layer::Sppf(s),
        rng.tensor([2, 8, 5, 6]),
        &no_freeze,
        |l, x, ctx| match l {
            Layer::Sppf(s) => sppf_fwd(s, "model.0", x, ctx),
            _ => unreachable!(),
        },
        |l, t, g, sink| match l {
            Layer::Sppf(s) => sppf_bwd(s, "model.0", t, g, sink),
            _ => unreachable!(),
        },
        layer_params,
    );
}

#[test]
fn attention_grad() {
    let mut rng = Rng(10);
    check_block(
        "attention",
        attention(&mut rng, 8, 2),
        rng.tensor([2, 8, 3, 4]),
        &no_freeze,
        |a, x, ctx| attention_fwd(a, "m", x, ctx),
        |a, t, g, s| attention_bwd(a, "m", t, g, s),
        |a| params_of(vec![("m.qkv".into(), ModuleMut::ConvBn(&mut a.qkv)), ("m.proj".into(), ModuleMut::ConvBn(&mut a.proj)), ("m.pe".into(), ModuleMut::ConvBn(&mut a.pe))]),
    );
}

#[test]
fn psa_block_grad() {
    let mut rng = Rng(11);
    check_block(
        "psa block",
        psa(&mut rng, 8, 2),
        rng.tensor([2, 8, 4, 3]),
        &no_freeze,
        |b, x, ctx| psa_fwd(b, "m", x, ctx),
        |b, t, g, s| psa_bwd(b, "m", t, g, s),
        |b| {
            let mut v = Vec::new();
            psa_modules(b, "m", &mut v);
            params_of(v)
        },
    );
}

#[test]
fn c2psa_grad() {
    let mut rng = Rng(12);
    let c = C2psa { c: 8, cv1: conv_bn(&mut rng, 16, 16, 1, 1, 1, true), cv2: conv_bn(&mut rng, 16, 16, 1, 1, 1, true), m: vec![psa(&mut rng, 8, 2)] };
    check_block(
        "c2psa",
        Layer::C2psa(c),
        rng.tensor([2, 16, 3, 3]),
        &no_freeze,
        |l, x, ctx| match l {
            Layer::C2psa(c) => c2psa_fwd(c, "model.0", x, ctx),
            _ => unreachable!(),
        },
        |l, t, g, s| match l {
            Layer::C2psa(c) => c2psa_bwd(c, "model.0", t, g, s),
            _ => unreachable!(),
        },
        layer_params,
    );
}

fn bias_conv(rng: &mut Rng, c1: usize, c2: usize) -> BiasConv {
    let (weight, bias) = (rng.vec(c2 * c1, 1.0 / (c1 as f32).sqrt()), rng.vec(c2, 0.5));
    BiasConv { conv: Conv2d::new(c1, c2, 1, 1, 0, 1, weight.clone(), Some(bias.clone())).unwrap(), weight, bias }
}

fn detect_branch_case(what: &str, br: DetectBranch, x: Tensor) {
    check_block(
        what,
        br,
        x,
        &no_freeze,
        |b, x, ctx| branch_fwd(b, "h", 0, x, ctx),
        |b, t, g, s| branch_bwd(b, "h", 0, t, g, true, s).unwrap(),
        |b| {
            let names = hidden_names("h", 0, b.hidden[0].len());
            let mut v: Vec<(String, ModuleMut)> = Vec::new();
            let (hidden, out) = (&mut b.hidden, &mut b.out);
            for (cb, n) in hidden[0].iter_mut().zip(names) {
                v.push((n, ModuleMut::ConvBn(cb)));
            }
            v.push(("h.0.2".into(), ModuleMut::Bias(&mut out[0])));
            params_of(v)
        },
    );
}

#[test]
fn detect_branches_grad() {
    let mut rng = Rng(13);
    let boxes = DetectBranch { hidden: vec![vec![conv_bn(&mut rng, 6, 4, 3, 1, 1, true), conv_bn(&mut rng, 4, 4, 3, 1, 1, true)]], out: vec![bias_conv(&mut rng, 4, 4)] };
    detect_branch_case("detect box branch", boxes, rng.tensor([2, 6, 4, 4]));
    let cls = DetectBranch {
        hidden: vec![vec![
            conv_bn(&mut rng, 6, 6, 3, 1, 6, true),
            conv_bn(&mut rng, 6, 5, 1, 1, 1, true),
            conv_bn(&mut rng, 5, 5, 3, 1, 5, true),
            conv_bn(&mut rng, 5, 5, 1, 1, 1, true),
        ]],
        out: vec![bias_conv(&mut rng, 5, 3)],
    };
    detect_branch_case("detect class branch", cls, rng.tensor([2, 6, 4, 4]));
}

#[test]
fn feat_narrow_and_cat() {
    let a = Arc::new(Tensor::new([1, 3, 1, 1], vec![0.0, 1.0, 2.0]));
    let b = Arc::new(Tensor::new([1, 2, 1, 1], vec![3.0, 4.0]));
    let f = Feat::cat(&[&Feat::shared(&a), &Feat::shared(&b)]);
    assert_eq!(f.channels(), 5);
    assert_eq!(f.narrow(2, 2).tensor().data(), &[2.0, 3.0]);
    assert!(Arc::ptr_eq(&f.narrow(3, 2).tensor(), &b), "a whole tensor is shared, not copied");
}

// ---------------------------------------------------------------------------------------------
// Whole network (fixtures)

use crate::data::npy::read_npy;
use crate::weights::{Checkpoint, TensorKind};

fn load(fx: &std::path::Path, name: &str) -> (Yolo26, Checkpoint) {
    let ckpt = Checkpoint::load(fx.join("weights").join(format!("{name}.pt"))).unwrap();
    let (model, _) = crate::model::from_checkpoint(&ckpt).unwrap();
    (model, ckpt)
}

fn batch_image(fx: &std::path::Path) -> Tensor {
    let a = read_npy(fx.join("reference/loss_batch_img.npy")).unwrap();
    Tensor::new(a.shape.clone().try_into().unwrap(), a.data)
}

/// `L = Σ_heads Σ boxes²/2 + Σ logits/1000`: its head gradients.
fn toy_loss_grads(o: &TrainOutput) -> [Vec<f32>; 4] {
    let lg = |h: &HeadOutput| vec![1e-3f32; h.logits.len()];
    [o.one2many.boxes.clone(), lg(&o.one2many), o.one2one.boxes.clone(), lg(&o.one2one)]
}

fn backward_with(model: &Yolo26, tape: Tape, g: &[Vec<f32>; 4]) -> Gradients {
    model.backward(tape, &g[0], &g[1], &g[2], &g[3])
}

#[test]
fn parameters_follow_state_dict_order() {
    let fx = crate::fixtures_or_skip!();
    let (mut model, ckpt) = load(&fx, "yolo26n-rand");
    let want: Vec<(String, Vec<usize>)> = ckpt.tensors.iter().filter(|(_, t)| t.kind == TensorKind::Parameter).map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    let got: Vec<(String, usize)> = model.parameters_mut().into_iter().map(|(n, v)| (n, v.len())).collect();
    assert_eq!(got.len(), want.len());
    for ((gn, gl), (wn, ws)) in got.iter().zip(&want) {
        assert_eq!(gn, wn);
        assert_eq!(*gl, ws.iter().product::<usize>(), "{gn}");
    }
    // Refolding unchanged weights reproduces inference exactly.
    let x = batch_image(&fx);
    let x = Tensor::new([1, 3, 320, 320], x.image(0).to_vec());
    let before = model.forward(&x, crate::model::HeadMode::OneToOne);
    model.refold();
    let after = model.forward(&x, crate::model::HeadMode::OneToOne);
    let worst = before.logits.iter().zip(&after.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-4, "refold changed the output by {worst}");
}

/// The one-to-one head's gradient trains its own branches and nothing upstream; frozen layers
/// keep their running statistics and get no gradient.
#[test]
fn detached_one2one_and_frozen_layers() {
    let fx = crate::fixtures_or_skip!();
    let (model, _) = load(&fx, "yolo26n-rand");
    let x = batch_image(&fx);
    let x = Tensor::new([2, 3, 64, 64], (0..2).flat_map(|i| x.image(i)[..3 * 64 * 64].to_vec()).collect());
    let run = |o2o_scale: f32| {
        let mut m = model.clone();
        let (out, tape) = m.forward_train(&x, &no_freeze);
        let mut g = toy_loss_grads(&out);
        for gi in &mut g[2..] {
            gi.iter_mut().for_each(|v| *v *= o2o_scale);
        }
        backward_with(&m, tape, &g)
    };
    let (a, b) = (run(1.0), run(0.0));
    assert_eq!(a.get("model.0.conv.weight"), b.get("model.0.conv.weight"));
    assert_eq!(a.get("model.23.cv3.0.0.0.conv.weight"), b.get("model.23.cv3.0.0.0.conv.weight"));
    assert!(b.norm("model.23.one2one_cv2.0.2.weight").unwrap() == 0.0);
    assert!(a.norm("model.23.one2one_cv2.0.2.weight").unwrap() > 0.0);
    assert_eq!(a.len(), model.clone().parameters_mut().len());

    // freeze=10: layers 0..9 frozen.
    let frozen = |p: &str| (0..10).any(|i| p.starts_with(&format!("model.{i}.")));
    let mut m = model.clone();
    let (out, tape) = m.forward_train(&x, &frozen);
    let g = backward_with(&m, tape, &toy_loss_grads(&out));
    assert!(g.get("model.9.cv2.conv.weight").is_none() && g.get("model.0.bn.weight").is_none());
    assert!(g.get("model.10.cv1.conv.weight").is_some());
    let (orig, now) = (model.clone().parameters_mut().len(), g.len());
    assert!(now < orig);
    let rm = |m: &mut Yolo26, name: &str| match &m.layers[0] {
        Layer::Conv(c) => (c.bn.running_mean.clone(), name.len()),
        _ => unreachable!(),
    };
    assert_eq!(rm(&mut m, "").0, rm(&mut model.clone(), "").0, "frozen BatchNorm statistics unchanged");
}


/// Gradients of `L = Σ_heads (Σ boxes²/2 + Σ logits/1000)` for the whole yolo26n in training mode
/// on the fixture batch (4×3×320×320), against the reference. Expected numbers from (Ultralytics
/// 8.4.190, torch CPU, fp32):
///
/// ```python
/// m = torch.load(f"{fx}/weights/{name}.pt", weights_only=False)["model"].float().train()
/// for p in m.parameters(): p.requires_grad_(True)
/// out = m(torch.from_numpy(np.load(f"{fx}/reference/loss_batch_img.npy")))
/// L = sum((out[k]["boxes"] ** 2).sum() / 2 + out[k]["scores"].sum() / 1000 for k in ("one2many", "one2one"))
/// L.backward()
/// norms = {n: p.grad.norm().item() for n, p in m.named_parameters()}
/// global_norm = sum((p.grad.double() ** 2).sum() for p in m.parameters()) ** 0.5
/// ```
/// `running` is `m.state_dict()["model.0.bn.running_var"][:4]` after that forward.
fn check_against_reference(name: &str, loss: f64, global: f64, norms: &[(&str, f64)], running_var: [f64; 4]) {
    let fx = crate::fixtures_or_skip!();
    let (mut model, _) = load(&fx, name);
    let (out, tape) = model.forward_train(&batch_image(&fx), &no_freeze);
    let ours: f64 = [&out.one2many, &out.one2one]
        .iter()
        .map(|h| h.boxes.iter().map(|&b| (b as f64).powi(2) / 2.0).sum::<f64>() + h.logits.iter().map(|&v| v as f64).sum::<f64>() / 1000.0)
        .sum();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(rel(ours, loss) < 1e-4, "{name}: L {ours} vs reference {loss}");
    let grads = backward_with(&model, tape, &toy_loss_grads(&out));
    assert_eq!(grads.len(), 366, "{name}: every parameter has a gradient");
    assert!(rel(grads.global_norm(), global) < 1e-3, "{name}: global norm {} vs {global}", grads.global_norm());
    for &(p, want) in norms {
        let got = grads.norm(p).unwrap();
        assert!(rel(got, want) < 1e-3, "{name}: |grad {p}| = {got}, reference {want}");
    }
    let Layer::Conv(c) = &model.layers[0] else { unreachable!() };
    for (&got, want) in c.bn.running_var.iter().zip(running_var) {
        assert!((got as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "{name}: running_var {got} vs {want}");
    }
}

#[test]
fn whole_network_matches_reference_rand() {
    check_against_reference(
        "yolo26n-rand",
        127731.21875,
        295986.74158048106,
        &[
            ("model.0.conv.weight", 40169.6484375),
            ("model.2.m.0.cv1.bn.weight", 1828.58984375),
            ("model.9.cv2.conv.weight", 18059.8671875),
            ("model.10.m.0.attn.qkv.conv.weight", 8609.1044921875),
            ("model.16.m.0.m.1.cv2.bn.bias", 33.88994216918945),
            ("model.22.m.0.1.attn.pe.conv.weight", 87.31145477294922),
            ("model.23.cv2.0.2.weight", 18173.462890625),
            ("model.23.cv3.2.2.bias", 3.5776941776275635),
            ("model.23.one2one_cv2.1.0.conv.weight", 3011.07958984375),
            ("model.23.one2one_cv3.0.2.bias", 57.24082565307617),
        ],
        [1.0023728609085083, 1.1337661743164062, 0.5131606459617615, 0.866188108921051],
    );
}

#[test]
fn whole_network_matches_reference_coco() {
    check_against_reference(
        "yolo26n-coco",
        315210.25,
        209446.62137495403,
        &[
            ("model.0.conv.weight", 455.0831604003906),
            ("model.2.m.0.cv1.bn.weight", 1081.8358154296875),
            ("model.9.cv2.conv.weight", 9983.484375),
            ("model.10.m.0.attn.qkv.conv.weight", 3967.25),
            ("model.16.m.0.m.1.cv2.bn.bias", 519.95703125),
            ("model.22.m.0.1.attn.pe.conv.weight", 195.80519104003906),
            ("model.23.cv2.0.2.weight", 101107.625),
            ("model.23.cv3.2.2.bias", 3.5776941776275635),
            ("model.23.one2one_cv2.1.0.conv.weight", 5278.57958984375),
            ("model.23.one2one_cv3.0.2.bias", 57.24082565307617),
        ],
        [23.294233322143555, 15.595634460449219, 26.135921478271484, 29.331388473510742],
    );
}

/// Timing of one training forward + backward (batch 8, 320×320 by default; `FERROYOLO_BENCH_BATCH`
/// and `FERROYOLO_BENCH_SIZE` change it): `cargo test --release -p ferroyolo --lib
/// bench_train_step -- --ignored --nocapture`, with `RAYON_NUM_THREADS` for the thread count.
#[test]
#[ignore]
fn bench_train_step() {
    let fx = crate::fixtures_or_skip!();
    let (model, _) = load(&fx, "yolo26n-rand");
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (batch, size) = (env("FERROYOLO_BENCH_BATCH", 8), env("FERROYOLO_BENCH_SIZE", 320));
    let img = batch_image(&fx);
    let per = 3 * size * size;
    let data: Vec<f32> = (0..batch).flat_map(|i| img.image(i % 4).iter().cycle().take(per).copied().collect::<Vec<_>>()).collect();
    let x = Tensor::new([batch, 3, size, size], data);
    let mut times = Vec::new();
    for _ in 0..6 {
        let mut m = model.clone();
        let t0 = std::time::Instant::now();
        let (out, tape) = m.forward_train(&x, &no_freeze);
        let t1 = std::time::Instant::now();
        let g = toy_loss_grads(&out);
        let grads = backward_with(&m, tape, &g);
        let t2 = std::time::Instant::now();
        assert!(grads.global_norm().is_finite());
        times.push(((t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3));
    }
    if std::env::var_os("FERROYOLO_BENCH_PROFILE").is_some() {
        let mut m = model.clone();
        engine::set_profiling(true);
        let (out, tape) = m.forward_train(&x, &no_freeze);
        let _ = backward_with(&m, tape, &toy_loss_grads(&out));
        engine::set_profiling(false);
        eprintln!("{}", engine::profile_report());
    }
    times.remove(0);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (f, b) = (median(times.iter().map(|t| t.0).collect()), median(times.iter().map(|t| t.1).collect()));
    eprintln!("batch {batch} at {size}²: forward {f:.0} ms, backward {b:.0} ms, total {:.0} ms ({} threads)", f + b, rayon::current_num_threads());
}

/// The real objective: the end-to-end loss of the training batch and its parameter gradients,
/// against `summary.json["loss"][model]` (loss total × batch, one-to-one loss items, gradient norms
/// of selected parameters and the global norm, BatchNorm in training mode, branch weights 0.8/0.2).
fn check_loss_and_gradients(name: &str) {
    use crate::train::loss::{e2e_loss, LossConfig, Target};
    let fx = crate::fixtures_or_skip!();
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fx.join("reference/summary.json")).unwrap()).unwrap();
    let want = &summary["loss"][name];
    let (mut model, _) = load(&fx, name);
    let x = batch_image(&fx);
    let t = read_npy(fx.join("reference/loss_batch_targets.npy")).unwrap();
    let targets: Vec<Target> = t
        .data
        .chunks(6)
        .map(|r| Target { batch_index: r[0] as usize, class: r[1] as usize, cxcywh: [r[2], r[3], r[4], r[5]] })
        .collect();
    let (out, tape) = model.forward_train(&x, &no_freeze);
    let cfg = LossConfig { o2m_weight: want["o2m_weight"].as_f64().unwrap() as f32, ..LossConfig::default() };
    let loss = e2e_loss(&out.one2many, &out.one2one, &targets, (320, 320), &cfg);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let total = want["loss_total_times_batch"].as_f64().unwrap();
    assert!(rel(loss.total as f64, total) < 1e-3, "{name}: loss {} vs reference {total}", loss.total);
    let grads = model.backward(tape, &loss.grad_o2m_boxes, &loss.grad_o2m_logits, &loss.grad_o2o_boxes, &loss.grad_o2o_logits);
    let global = want["grad_norm_global"].as_f64().unwrap();
    let mut report = vec![format!("global {:.6} vs {global:.6}", grads.global_norm())];
    let mut worst = rel(grads.global_norm(), global);
    for (p, v) in want["grad_norms_selected"].as_object().unwrap() {
        let (got, r) = (grads.norm(p).unwrap(), v.as_f64().unwrap());
        // Gradients that vanish in exact arithmetic (a BatchNorm bias before a training-mode
        // BatchNorm, ~1e-7) are rounding noise on both sides: judged against the global norm.
        let e = (got - r).abs() / r.max(1e-6 * global);
        report.push(format!("{p}: {got:.6e} vs {r:.6e} ({e:.1e})"));
        worst = worst.max(e);
    }
    eprintln!("{name}: loss {} vs {total}\n{}", loss.total, report.join("\n"));
    assert!(worst < 1e-2, "{name}: gradient norms differ from the reference by up to {worst:.2e}:\n{}", report.join("\n"));
}

#[test]
fn loss_gradients_match_reference_rand() {
    check_loss_and_gradients("yolo26n-rand");
}

#[test]
fn loss_gradients_match_reference_coco() {
    check_loss_and_gradients("yolo26n-coco");
}
