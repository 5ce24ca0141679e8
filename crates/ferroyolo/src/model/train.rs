//! Training-mode forward pass with a tape, and the explicit backward pass through the whole network.
//!
//! [`Yolo26::forward_train`] runs the network as PyTorch does in `model.train()`: every BatchNorm
//! normalises with the batch's own statistics (biased variance) and updates its running statistics
//! (momentum 0.03, unbiased variance), except in frozen modules, which stay in eval mode. Both head
//! branch pairs run; the one-to-one pair sees the features *detached*, so its gradient trains only
//! its own parameters. The returned [`Tape`] keeps what the backward needs and nothing more: for
//! each Conv+BN+act its input (shared with whoever produced it) and its pre-BatchNorm output, plus
//! the per-channel statistics; the post-activation output is the next layer's input and is stored
//! once. Channel concatenations and splits are never copied: a feature is a list of channel ranges
//! of shared tensors ([`Feat`]), which the convolutions read in place.
//!
//! [`Yolo26::backward`] walks the tape in reverse with the kernels of
//! [`engine::backward`](crate::engine::backward) and returns a [`Gradients`] keyed by state_dict
//! names. After the parameters change (through [`Yolo26::parameters_mut`]), [`Yolo26::refold`]
//! rebuilds the folded inference convolutions.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::yolo26::{Attention, BiasConv, Bottleneck, C2psa, C3k, C3k2, C3k2Block, ConvBn, Detect, DetectBranch, HeadOutput, Layer, PsaBlock, Sppf, Yolo26};
use crate::engine::backward::{self as bw, ConvShape, Needs, Planes};
use crate::engine::{self, Activation, Conv2d, Tensor};

/// BatchNorm momentum of every YOLO26 BatchNorm (set by Ultralytics' `initialize_weights`).
pub const BN_MOMENTUM: f32 = 0.03;

/// Both head outputs of a training forward pass.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// One-to-many branches (`cv2`, `cv3`), which train the backbone and neck.
    pub one2many: HeadOutput,
    /// One-to-one branches (`one2one_cv2`, `one2one_cv3`), fed detached features.
    pub one2one: HeadOutput,
}

/// Gradients of the trainable parameters, named and ordered as in the state_dict. Parameters of
/// frozen modules have no entry.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    entries: Vec<(String, Vec<f32>)>,
}

impl Gradients {
    /// The gradient of parameter `name`, if it was computed.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, g)| g.as_slice())
    }

    /// `(name, gradient)` pairs in state_dict order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.entries.iter().map(|(n, g)| (n.as_str(), g.as_slice()))
    }

    /// `(name, gradient)` pairs in state_dict order, writable (for clipping or scaling).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Vec<f32>)> {
        self.entries.iter_mut().map(|(n, g)| (n.as_str(), g))
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// L2 norm of one parameter's gradient (`None` when it has none).
    pub fn norm(&self, name: &str) -> Option<f64> {
        self.get(name).map(l2)
    }

    /// L2 norm over all gradients together (what `clip_grad_norm_` measures).
    pub fn global_norm(&self) -> f64 {
        self.entries.iter().map(|(_, g)| g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).sum::<f64>().sqrt()
    }
}

fn l2(g: &[f32]) -> f64 {
    g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

/// Everything [`Yolo26::backward`] needs from a training forward pass.
pub struct Tape {
    layers: Vec<LayerTape>,
    /// Trainable parameter names in state_dict order (fixes the order of [`Gradients`]).
    order: Vec<String>,
    /// Per layer: whether its backward must run (some module at or before it is trainable) and
    /// whether its input gradient is wanted (some module before it is trainable).
    run: Vec<bool>,
    need_dx: Vec<bool>,
}

/// A feature map as the training pass hands it around: channel ranges of shared tensors, in order.
#[derive(Clone)]
struct Feat(Vec<(Arc<Tensor>, Range<usize>)>);

impl Feat {
    fn whole(t: Tensor) -> Feat {
        Feat::shared(&Arc::new(t))
    }

    fn shared(t: &Arc<Tensor>) -> Feat {
        Feat(vec![(t.clone(), 0..t.shape()[1])])
    }

    fn channels(&self) -> usize {
        self.0.iter().map(|(_, r)| r.len()).sum()
    }

    fn shape(&self) -> [usize; 4] {
        let [n, _, h, w] = self.0[0].0.shape();
        [n, self.channels(), h, w]
    }

    fn refs(&self) -> Vec<(&Tensor, Range<usize>)> {
        self.0.iter().map(|(t, r)| (t.as_ref(), r.clone())).collect()
    }

    fn planes(&self) -> Planes<'_> {
        Planes::new(&self.refs())
    }

    /// Channels `start..start + len`.
    fn narrow(&self, start: usize, len: usize) -> Feat {
        let mut out = Vec::new();
        let mut base = 0;
        for (t, r) in &self.0 {
            let (lo, hi) = (start.max(base), (start + len).min(base + r.len()));
            if lo < hi {
                out.push((t.clone(), r.start + lo - base..r.start + hi - base));
            }
            base += r.len();
        }
        Feat(out)
    }

    fn cat(feats: &[&Feat]) -> Feat {
        Feat(feats.iter().flat_map(|f| f.0.iter().cloned()).collect())
    }

    /// The feature as one tensor (shared when it already is one whole tensor).
    fn tensor(&self) -> Arc<Tensor> {
        match self.0.as_slice() {
            [(t, r)] if r.start == 0 && r.end == t.shape()[1] => t.clone(),
            _ => Arc::new(self.planes().to_tensor()),
        }
    }

    /// `dst += self` (a residual add).
    fn add_into(&self, dst: &mut Tensor) {
        let [n, c, h, w] = dst.shape();
        assert_eq!(self.shape(), [n, c, h, w], "Feat::add_into: shape mismatch");
        let hw = h * w;
        let planes = self.planes();
        let data = dst.data_mut();
        for img in 0..n {
            for (ch, src) in planes.image(img).iter().enumerate() {
                let d = &mut data[(img * c + ch) * hw..(img * c + ch + 1) * hw];
                d.iter_mut().zip(src.iter()).for_each(|(d, s)| *d += s);
            }
        }
    }
}

/// Adds `g` into a gradient slot (the first contribution is moved in, not copied).
fn accumulate(slot: &mut Option<Tensor>, g: Tensor) {
    match slot {
        Some(t) => engine::add_assign(t, &g),
        None => *slot = Some(g),
    }
}

/// Per-call settings of a training pass.
struct Ctx<'a> {
    frozen: &'a dyn Fn(&str) -> bool,
}

impl Ctx<'_> {
    /// Whether the module named `prefix` (e.g. `model.3.cv1`) is frozen.
    fn frozen(&self, prefix: &str) -> bool {
        (self.frozen)(&format!("{prefix}."))
    }
}

/// Collects parameter gradients during the backward walk.
#[derive(Default)]
struct Sink(HashMap<String, Vec<f32>>);

impl Sink {
    fn put(&mut self, name: String, g: Vec<f32>) {
        self.0.insert(name, g);
    }
}

// ---------------------------------------------------------------------------------------------
// Conv + BatchNorm + activation

struct ConvTape {
    input: Feat,
    /// Conv output before BatchNorm.
    z: Tensor,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    frozen: bool,
}

fn conv_shape(c: &Conv2d) -> ConvShape {
    ConvShape {
        in_channels: c.in_channels(),
        out_channels: c.out_channels(),
        kernel: c.kernel(),
        stride: c.stride(),
        padding: c.padding(),
        groups: c.groups(),
    }
}

/// `act(bn(conv(x)))` in training mode; returns the activation and the tape.
fn conv_fwd(cb: &mut ConvBn, name: &str, x: Feat, ctx: &Ctx) -> (Tensor, ConvTape) {
    let s = conv_shape(cb.folded());
    let conv = Conv2d::new(s.in_channels, s.out_channels, s.kernel, s.stride, s.padding, s.groups, cb.weight.clone(), None)
        .expect("a loaded layer has a valid shape");
    let z = conv.forward_parts(&x.refs(), Activation::Identity);
    let frozen = ctx.frozen(name);
    let bn = &mut cb.bn;
    let (mean, invstd): (Vec<f32>, Vec<f32>) = if frozen {
        // Eval-mode BatchNorm: running statistics, left unchanged.
        (bn.running_mean.clone(), bn.running_var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect())
    } else {
        let (mean, var) = bw::channel_stats(&z);
        let [n, _, h, w] = z.shape();
        bw::update_running_stats(&mut bn.running_mean, &mut bn.running_var, &mean, &var, n * h * w, BN_MOMENTUM);
        let invstd = var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect();
        (mean, invstd)
    };
    let a = bw::batch_norm_act(&z, &mean, &invstd, &bn.weight, &bn.bias, cb.act);
    (a, ConvTape { input: x, z, mean, invstd, frozen })
}

/// Backward of [`conv_fwd`]: records the parameter gradients, returns the input gradient.
fn conv_bwd(cb: &ConvBn, name: &str, t: ConvTape, da: Tensor, need_dx: bool, sink: &mut Sink) -> Option<Tensor> {
    let bn = bw::batch_norm_act_backward(t.z, da, &t.mean, &t.invstd, &cb.bn.weight, &cb.bn.bias, cb.act, !t.frozen);
    let needs = Needs { input: need_dx, weight: !t.frozen, bias: false };
    let g = bw::conv2d_backward(conv_shape(cb.folded()), &t.input.planes(), &cb.weight, &bn.input, needs);
    if !t.frozen {
        sink.put(format!("{name}.conv.weight"), g.weight.expect("asked for"));
        sink.put(format!("{name}.bn.weight"), bn.gamma);
        sink.put(format!("{name}.bn.bias"), bn.beta);
    }
    g.input
}

/// Like [`conv_bwd`] when the input gradient is always wanted.
fn conv_bwd_dx(cb: &ConvBn, name: &str, t: ConvTape, da: Tensor, sink: &mut Sink) -> Tensor {
    conv_bwd(cb, name, t, da, true, sink).expect("asked for")
}

// ---------------------------------------------------------------------------------------------
// Blocks

struct BottleneckTape {
    cv1: ConvTape,
    cv2: ConvTape,
}

fn bottleneck_fwd(b: &mut Bottleneck, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, BottleneckTape) {
    let (a1, cv1) = conv_fwd(&mut b.cv1, &format!("{p}.cv1"), x.clone(), ctx);
    let (mut a2, cv2) = conv_fwd(&mut b.cv2, &format!("{p}.cv2"), Feat::whole(a1), ctx);
    if b.add {
        x.add_into(&mut a2);
    }
    (a2, BottleneckTape { cv1, cv2 })
}

fn bottleneck_bwd(b: &Bottleneck, p: &str, t: BottleneckTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let skip = b.add.then(|| dout.clone());
    let d1 = conv_bwd_dx(&b.cv2, &format!("{p}.cv2"), t.cv2, dout, sink);
    let mut dx = conv_bwd_dx(&b.cv1, &format!("{p}.cv1"), t.cv1, d1, sink);
    if let Some(s) = skip {
        engine::add_assign(&mut dx, &s);
    }
    dx
}

struct C3kTape {
    cv1: ConvTape,
    cv2: ConvTape,
    cv3: ConvTape,
    m: Vec<BottleneckTape>,
}

fn c3k_fwd(c: &mut C3k, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, C3kTape) {
    let (mut y, cv1) = conv_fwd(&mut c.cv1, &format!("{p}.cv1"), x.clone(), ctx);
    let mut m = Vec::with_capacity(c.m.len());
    for (i, b) in c.m.iter_mut().enumerate() {
        let (next, t) = bottleneck_fwd(b, &format!("{p}.m.{i}"), Feat::whole(y), ctx);
        y = next;
        m.push(t);
    }
    let (z, cv2) = conv_fwd(&mut c.cv2, &format!("{p}.cv2"), x, ctx);
    let (out, cv3) = conv_fwd(&mut c.cv3, &format!("{p}.cv3"), Feat::cat(&[&Feat::whole(y), &Feat::whole(z)]), ctx);
    (out, C3kTape { cv1, cv2, cv3, m })
}

fn c3k_bwd(c: &C3k, p: &str, t: C3kTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let dcat = conv_bwd_dx(&c.cv3, &format!("{p}.cv3"), t.cv3, dout, sink);
    let c_ = c.cv1.folded().out_channels();
    let mut dy = engine::narrow_channels(&dcat, 0, c_);
    let dz = engine::narrow_channels(&dcat, c_, c_);
    drop(dcat);
    let mut dx = conv_bwd_dx(&c.cv2, &format!("{p}.cv2"), t.cv2, dz, sink);
    for (i, (b, bt)) in c.m.iter().zip(t.m).enumerate().rev() {
        dy = bottleneck_bwd(b, &format!("{p}.m.{i}"), bt, dy, sink);
    }
    let d1 = conv_bwd_dx(&c.cv1, &format!("{p}.cv1"), t.cv1, dy, sink);
    engine::add_assign(&mut dx, &d1);
    dx
}

struct AttentionTape {
    qkv: ConvTape,
    /// The `qkv` activation (q, k, v per head), for the attention backward.
    qkv_out: Arc<Tensor>,
    pe: ConvTape,
    proj: ConvTape,
}

fn attention_fwd(a: &mut Attention, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, AttentionTape) {
    let (qkv_out, qkv) = conv_fwd(&mut a.qkv, &format!("{p}.qkv"), x, ctx);
    let qkv_out = Arc::new(qkv_out);
    let (mut out, _) = engine::attention(&qkv_out, a.num_heads, a.key_dim, a.head_dim, a.scale);
    // The positional conv reads v, which is a channel range of each head's block of qkv.
    let per_head = 2 * a.key_dim + a.head_dim;
    let v = Feat((0..a.num_heads).map(|h| (qkv_out.clone(), h * per_head + 2 * a.key_dim..(h + 1) * per_head)).collect());
    let (pe_out, pe) = conv_fwd(&mut a.pe, &format!("{p}.pe"), v, ctx);
    engine::add_assign(&mut out, &pe_out);
    drop(pe_out);
    let (y, proj) = conv_fwd(&mut a.proj, &format!("{p}.proj"), Feat::whole(out), ctx);
    (y, AttentionTape { qkv, qkv_out, pe, proj })
}

fn attention_bwd(a: &Attention, p: &str, t: AttentionTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let d = conv_bwd_dx(&a.proj, &format!("{p}.proj"), t.proj, dout, sink);
    let mut dqkv = bw::attention_backward(&t.qkv_out, &d, a.num_heads, a.key_dim, a.head_dim, a.scale);
    let dv = conv_bwd_dx(&a.pe, &format!("{p}.pe"), t.pe, d, sink);
    let per_head = 2 * a.key_dim + a.head_dim;
    for h in 0..a.num_heads {
        bw::add_channels(&mut dqkv, h * per_head + 2 * a.key_dim, &engine::narrow_channels(&dv, h * a.head_dim, a.head_dim));
    }
    drop(t.qkv_out);
    conv_bwd_dx(&a.qkv, &format!("{p}.qkv"), t.qkv, dqkv, sink)
}

struct PsaTape {
    attn: AttentionTape,
    ffn0: ConvTape,
    ffn1: ConvTape,
}

fn psa_fwd(b: &mut PsaBlock, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, PsaTape) {
    let (mut x1, attn) = attention_fwd(&mut b.attn, &format!("{p}.attn"), x.clone(), ctx);
    x.add_into(&mut x1);
    let x1 = Arc::new(x1);
    let [f0, f1] = &mut b.ffn;
    let (h, ffn0) = conv_fwd(f0, &format!("{p}.ffn.0"), Feat::shared(&x1), ctx);
    let (mut out, ffn1) = conv_fwd(f1, &format!("{p}.ffn.1"), Feat::whole(h), ctx);
    engine::add_assign(&mut out, &x1);
    (out, PsaTape { attn, ffn0, ffn1 })
}

fn psa_bwd(b: &PsaBlock, p: &str, t: PsaTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let dh = conv_bwd_dx(&b.ffn[1], &format!("{p}.ffn.1"), t.ffn1, dout.clone(), sink);
    let mut dx1 = conv_bwd_dx(&b.ffn[0], &format!("{p}.ffn.0"), t.ffn0, dh, sink);
    engine::add_assign(&mut dx1, &dout);
    drop(dout);
    let mut dx = attention_bwd(&b.attn, &format!("{p}.attn"), t.attn, dx1.clone(), sink);
    engine::add_assign(&mut dx, &dx1);
    dx
}

enum BlockTape {
    Bottleneck(BottleneckTape),
    C3k(Box<C3kTape>),
    Attn(BottleneckTape, Box<PsaTape>),
}

fn block_fwd(b: &mut C3k2Block, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, BlockTape) {
    match b {
        C3k2Block::Bottleneck(b) => {
            let (y, t) = bottleneck_fwd(b, p, x, ctx);
            (y, BlockTape::Bottleneck(t))
        }
        C3k2Block::C3k(c) => {
            let (y, t) = c3k_fwd(c, p, x, ctx);
            (y, BlockTape::C3k(Box::new(t)))
        }
        C3k2Block::Attn(b, psa) => {
            let (y, t1) = bottleneck_fwd(b, &format!("{p}.0"), x, ctx);
            let (y, t2) = psa_fwd(psa, &format!("{p}.1"), Feat::whole(y), ctx);
            (y, BlockTape::Attn(t1, Box::new(t2)))
        }
    }
}

fn block_bwd(b: &C3k2Block, p: &str, t: BlockTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    match (b, t) {
        (C3k2Block::Bottleneck(b), BlockTape::Bottleneck(t)) => bottleneck_bwd(b, p, t, dout, sink),
        (C3k2Block::C3k(c), BlockTape::C3k(t)) => c3k_bwd(c, p, *t, dout, sink),
        (C3k2Block::Attn(b, psa), BlockTape::Attn(t1, t2)) => {
            let d = psa_bwd(psa, &format!("{p}.1"), *t2, dout, sink);
            bottleneck_bwd(b, &format!("{p}.0"), t1, d, sink)
        }
        _ => unreachable!("a tape always matches the block that recorded it"),
    }
}

struct C3k2Tape {
    cv1: ConvTape,
    cv2: ConvTape,
    m: Vec<BlockTape>,
}

fn c3k2_fwd(c: &mut C3k2, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, C3k2Tape) {
    let (y, cv1) = conv_fwd(&mut c.cv1, &format!("{p}.cv1"), x, ctx);
    let y = Feat::whole(y);
    let mut parts = vec![y.clone()];
    let mut last = y.narrow(c.c, c.c);
    let mut m = Vec::with_capacity(c.m.len());
    for (i, b) in c.m.iter_mut().enumerate() {
        let (out, t) = block_fwd(b, &format!("{p}.m.{i}"), last, ctx);
        last = Feat::whole(out);
        parts.push(last.clone());
        m.push(t);
    }
    drop(last);
    let refs: Vec<&Feat> = parts.iter().collect();
    let (out, cv2) = conv_fwd(&mut c.cv2, &format!("{p}.cv2"), Feat::cat(&refs), ctx);
    (out, C3k2Tape { cv1, cv2, m })
}

fn c3k2_bwd(c: &C3k2, p: &str, t: C3k2Tape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let dcat = conv_bwd_dx(&c.cv2, &format!("{p}.cv2"), t.cv2, dout, sink);
    let mut dy = engine::narrow_channels(&dcat, 0, 2 * c.c);
    // Gradient reaching the output of the block after block i (none after the last).
    let mut carry: Option<Tensor> = None;
    for (i, (b, bt)) in c.m.iter().zip(t.m).enumerate().rev() {
        let mut g = engine::narrow_channels(&dcat, (2 + i) * c.c, c.c);
        if let Some(cg) = carry.take() {
            engine::add_assign(&mut g, &cg);
        }
        carry = Some(block_bwd(b, &format!("{p}.m.{i}"), bt, g, sink));
    }
    drop(dcat);
    if let Some(cg) = carry {
        bw::add_channels(&mut dy, c.c, &cg);
    }
    conv_bwd_dx(&c.cv1, &format!("{p}.cv1"), t.cv1, dy, sink)
}

struct SppfTape {
    cv1: ConvTape,
    /// `y0 … y_{n−1}`: the inputs of the max-pools.
    pooled_inputs: Vec<Arc<Tensor>>,
    cv2: ConvTape,
}

fn sppf_fwd(s: &mut Sppf, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, SppfTape) {
    let (y0, cv1) = conv_fwd(&mut s.cv1, &format!("{p}.cv1"), x.clone(), ctx);
    let mut ys = vec![Arc::new(y0)];
    for _ in 0..s.n {
        let next = engine::max_pool2d(ys.last().expect("one"), s.k, 1, s.k / 2);
        ys.push(Arc::new(next));
    }
    let feats: Vec<Feat> = ys.iter().map(Feat::shared).collect();
    let refs: Vec<&Feat> = feats.iter().collect();
    let (mut out, cv2) = conv_fwd(&mut s.cv2, &format!("{p}.cv2"), Feat::cat(&refs), ctx);
    if s.add {
        x.add_into(&mut out);
    }
    ys.pop();
    (out, SppfTape { cv1, pooled_inputs: ys, cv2 })
}

fn sppf_bwd(s: &Sppf, p: &str, t: SppfTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let skip = s.add.then(|| dout.clone());
    let dcat = conv_bwd_dx(&s.cv2, &format!("{p}.cv2"), t.cv2, dout, sink);
    let c_ = s.cv1.folded().out_channels();
    let mut g = engine::narrow_channels(&dcat, s.n * c_, c_);
    for (i, y) in t.pooled_inputs.iter().enumerate().rev() {
        let mut prev = engine::narrow_channels(&dcat, i * c_, c_);
        engine::add_assign(&mut prev, &bw::max_pool2d_backward(y, &g, s.k, 1, s.k / 2));
        g = prev;
    }
    drop(dcat);
    drop(t.pooled_inputs);
    let mut dx = conv_bwd_dx(&s.cv1, &format!("{p}.cv1"), t.cv1, g, sink);
    if let Some(s) = skip {
        engine::add_assign(&mut dx, &s);
    }
    dx
}

struct C2psaTape {
    cv1: ConvTape,
    cv2: ConvTape,
    m: Vec<PsaTape>,
}

fn c2psa_fwd(c: &mut C2psa, p: &str, x: Feat, ctx: &Ctx) -> (Tensor, C2psaTape) {
    let (y, cv1) = conv_fwd(&mut c.cv1, &format!("{p}.cv1"), x, ctx);
    let y = Feat::whole(y);
    let mut b = y.narrow(c.c, c.c);
    let mut m = Vec::with_capacity(c.m.len());
    for (i, blk) in c.m.iter_mut().enumerate() {
        let (out, t) = psa_fwd(blk, &format!("{p}.m.{i}"), b, ctx);
        b = Feat::whole(out);
        m.push(t);
    }
    let (out, cv2) = conv_fwd(&mut c.cv2, &format!("{p}.cv2"), Feat::cat(&[&y.narrow(0, c.c), &b]), ctx);
    (out, C2psaTape { cv1, cv2, m })
}

fn c2psa_bwd(c: &C2psa, p: &str, t: C2psaTape, dout: Tensor, sink: &mut Sink) -> Tensor {
    let dcat = conv_bwd_dx(&c.cv2, &format!("{p}.cv2"), t.cv2, dout, sink);
    let mut dy = Tensor::zeros([dcat.shape()[0], 2 * c.c, dcat.shape()[2], dcat.shape()[3]]);
    bw::add_channels(&mut dy, 0, &engine::narrow_channels(&dcat, 0, c.c));
    let mut g = engine::narrow_channels(&dcat, c.c, c.c);
    drop(dcat);
    for (i, (blk, bt)) in c.m.iter().zip(t.m).enumerate().rev() {
        g = psa_bwd(blk, &format!("{p}.m.{i}"), bt, g, sink);
    }
    bw::add_channels(&mut dy, c.c, &g);
    conv_bwd_dx(&c.cv1, &format!("{p}.cv1"), t.cv1, dy, sink)
}

// ---------------------------------------------------------------------------------------------
// Detect head

struct BiasTape {
    input: Feat,
    frozen: bool,
}

fn bias_conv_fwd(b: &BiasConv, name: &str, x: Feat, ctx: &Ctx) -> (Tensor, BiasTape) {
    let s = conv_shape(&b.conv);
    let conv = Conv2d::new(s.in_channels, s.out_channels, 1, 1, 0, 1, b.weight.clone(), Some(b.bias.clone())).expect("a loaded layer has a valid shape");
    let y = conv.forward_parts(&x.refs(), Activation::Identity);
    (y, BiasTape { input: x, frozen: ctx.frozen(name) })
}

fn bias_conv_bwd(b: &BiasConv, name: &str, t: BiasTape, dy: Tensor, sink: &mut Sink) -> Tensor {
    let needs = Needs { input: true, weight: !t.frozen, bias: !t.frozen };
    let g = bw::conv2d_backward(conv_shape(&b.conv), &t.input.planes(), &b.weight, &dy, needs);
    if !t.frozen {
        sink.put(format!("{name}.weight"), g.weight.expect("asked for"));
        sink.put(format!("{name}.bias"), g.bias.expect("asked for"));
    }
    g.input.expect("asked for")
}

/// State_dict names of the hidden convs of level `l` of a branch: box branches have two 3×3
/// Convs (`.0`, `.1`); class branches two (DWConv, 1×1 Conv) pairs (`.0.0` … `.1.1`).
fn hidden_names(branch: &str, l: usize, count: usize) -> Vec<String> {
    if count == 4 {
        ["0.0", "0.1", "1.0", "1.1"].iter().map(|s| format!("{branch}.{l}.{s}")).collect()
    } else {
        (0..count).map(|i| format!("{branch}.{l}.{i}")).collect()
    }
}

struct BranchTape {
    hidden: Vec<ConvTape>,
    out: BiasTape,
}

fn branch_fwd(br: &mut DetectBranch, name: &str, l: usize, x: Feat, ctx: &Ctx) -> (Tensor, BranchTape) {
    let names = hidden_names(name, l, br.hidden[l].len());
    let mut y = x;
    let mut hidden = Vec::with_capacity(names.len());
    for (cb, n) in br.hidden[l].iter_mut().zip(&names) {
        let (a, t) = conv_fwd(cb, n, y, ctx);
        y = Feat::whole(a);
        hidden.push(t);
    }
    let (out, t) = bias_conv_fwd(&br.out[l], &format!("{name}.{l}.2"), y, ctx);
    (out, BranchTape { hidden, out: t })
}

/// Backward of one branch level; the input gradient only when `need_dx`.
fn branch_bwd(br: &DetectBranch, name: &str, l: usize, t: BranchTape, dy: Tensor, need_dx: bool, sink: &mut Sink) -> Option<Tensor> {
    let names = hidden_names(name, l, br.hidden[l].len());
    let mut g = bias_conv_bwd(&br.out[l], &format!("{name}.{l}.2"), t.out, dy, sink);
    let count = t.hidden.len();
    for (i, ct) in t.hidden.into_iter().enumerate().rev() {
        let first = i == 0;
        match conv_bwd(&br.hidden[l][i], &names[i], ct, g, !first || need_dx, sink) {
            Some(next) => g = next,
            None => return None,
        }
    }
    debug_assert!(count > 0);
    Some(g)
}

/// The four branch sets in state_dict order, with their name suffixes.
const BRANCHES: [&str; 4] = ["cv2", "cv3", "one2one_cv2", "one2one_cv3"];

fn branch_mut(d: &mut Detect, which: usize) -> &mut DetectBranch {
    match which {
        0 => &mut d.cv2,
        1 => &mut d.cv3,
        2 => &mut d.one2one_cv2,
        _ => &mut d.one2one_cv3,
    }
}

fn branch_ref(d: &Detect, which: usize) -> &DetectBranch {
    match which {
        0 => &d.cv2,
        1 => &d.cv3,
        2 => &d.one2one_cv2,
        _ => &d.one2one_cv3,
    }
}

struct DetectTape {
    /// `(h, w)` per level.
    sizes: Vec<(usize, usize)>,
    /// Per branch set (in [`BRANCHES`] order), per level.
    branches: Vec<Vec<BranchTape>>,
}

/// Copies per-level `(B, C, h, w)` maps into the head layout `(B, C, A)`.
fn pack_levels(maps: &[Tensor], channels: usize, anchors: usize) -> Vec<f32> {
    let batch = maps[0].shape()[0];
    let mut out = vec![0.0; batch * channels * anchors];
    let mut offset = 0;
    for m in maps {
        let hw = m.shape()[2] * m.shape()[3];
        for n in 0..batch {
            for ch in 0..channels {
                out[(n * channels + ch) * anchors + offset..][..hw].copy_from_slice(m.plane(n, ch));
            }
        }
        offset += hw;
    }
    out
}

/// The inverse of [`pack_levels`]: the `(B, C, A)` gradient split into per-level maps.
fn unpack_levels(g: &[f32], batch: usize, channels: usize, sizes: &[(usize, usize)]) -> Vec<Tensor> {
    let anchors: usize = sizes.iter().map(|(h, w)| h * w).sum();
    assert_eq!(g.len(), batch * channels * anchors, "head gradient has the wrong length");
    let mut offset = 0;
    sizes
        .iter()
        .map(|&(h, w)| {
            let hw = h * w;
            let mut data = Vec::with_capacity(batch * channels * hw);
            for n in 0..batch {
                for ch in 0..channels {
                    data.extend_from_slice(&g[(n * channels + ch) * anchors + offset..][..hw]);
                }
            }
            offset += hw;
            Tensor::new([batch, channels, h, w], data)
        })
        .collect()
}

fn detect_fwd(d: &mut Detect, p: &str, feats: &[Feat], ctx: &Ctx) -> (TrainOutput, DetectTape) {
    let batch = feats[0].shape()[0];
    let sizes: Vec<(usize, usize)> = feats.iter().map(|f| (f.shape()[2], f.shape()[3])).collect();
    let anchors: usize = sizes.iter().map(|(h, w)| h * w).sum();
    let mut anchor_points = Vec::with_capacity(2 * anchors);
    let mut anchor_strides = Vec::with_capacity(anchors);
    for (l, &(h, w)) in sizes.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                anchor_points.extend([x as f32 + 0.5, y as f32 + 0.5]);
                anchor_strides.push(d.strides[l]);
            }
        }
    }
    let nc = d.nc;
    let mut branches = Vec::with_capacity(4);
    let mut outputs = Vec::with_capacity(4);
    for (which, suffix) in BRANCHES.iter().enumerate() {
        let name = format!("{p}.{suffix}");
        let (maps, tapes): (Vec<Tensor>, Vec<BranchTape>) =
            feats.iter().enumerate().map(|(l, f)| branch_fwd(branch_mut(d, which), &name, l, f.clone(), ctx)).unzip();
        let channels = if which % 2 == 0 { 4 } else { nc };
        outputs.push(pack_levels(&maps, channels, anchors));
        branches.push(tapes);
    }
    let head = |boxes: Vec<f32>, logits: Vec<f32>| HeadOutput {
        batch,
        nc,
        anchors,
        boxes,
        logits,
        anchor_points: anchor_points.clone(),
        anchor_strides: anchor_strides.clone(),
    };
    let mut it = outputs.into_iter();
    let (b0, l0, b1, l1) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    (TrainOutput { one2many: head(b0, l0), one2one: head(b1, l1) }, DetectTape { sizes, branches })
}

/// Returns the gradients of the input feature maps (from the one-to-many branches only).
fn detect_bwd(d: &Detect, p: &str, t: DetectTape, grads: [&[f32]; 4], batch: usize, sink: &mut Sink) -> Vec<Option<Tensor>> {
    let mut dfeats: Vec<Option<Tensor>> = t.sizes.iter().map(|_| None).collect();
    for (which, (tapes, g)) in t.branches.into_iter().zip(grads).enumerate() {
        let name = format!("{p}.{}", BRANCHES[which]);
        let channels = if which % 2 == 0 { 4 } else { d.nc };
        let maps = unpack_levels(g, batch, channels, &t.sizes);
        // The one-to-one branches saw detached features: no gradient flows back from them.
        let detached = which >= 2;
        for (l, (bt, dy)) in tapes.into_iter().zip(maps).enumerate() {
            if let Some(dx) = branch_bwd(branch_ref(d, which), &name, l, bt, dy, !detached, sink) {
                accumulate(&mut dfeats[l], dx);
            }
        }
    }
    dfeats
}

// ---------------------------------------------------------------------------------------------
// Whole network

enum LayerTape {
    Conv(ConvTape),
    C3k2(C3k2Tape),
    Sppf(SppfTape),
    C2psa(C2psaTape),
    Upsample(usize),
    Concat(Vec<usize>),
    Detect(DetectTape),
    /// A layer whose backward never runs (everything up to it is frozen).
    Skipped,
}

/// One trainable module, as [`Yolo26::modules_mut`] lists them.
pub enum ModuleMut<'a> {
    /// Conv + BatchNorm: `.conv.weight`, `.bn.weight`, `.bn.bias`.
    ConvBn(&'a mut ConvBn),
    /// A Detect branch's final conv: `.weight`, `.bias`.
    Bias(&'a mut BiasConv),
}

fn bottleneck_modules<'a>(b: &'a mut Bottleneck, p: &str, out: &mut Vec<(String, ModuleMut<'a>)>) {
    out.push((format!("{p}.cv1"), ModuleMut::ConvBn(&mut b.cv1)));
    out.push((format!("{p}.cv2"), ModuleMut::ConvBn(&mut b.cv2)));
}

fn psa_modules<'a>(b: &'a mut PsaBlock, p: &str, out: &mut Vec<(String, ModuleMut<'a>)>) {
    let a = &mut b.attn;
    out.push((format!("{p}.attn.qkv"), ModuleMut::ConvBn(&mut a.qkv)));
    out.push((format!("{p}.attn.proj"), ModuleMut::ConvBn(&mut a.proj)));
    out.push((format!("{p}.attn.pe"), ModuleMut::ConvBn(&mut a.pe)));
    let [f0, f1] = &mut b.ffn;
    out.push((format!("{p}.ffn.0"), ModuleMut::ConvBn(f0)));
    out.push((format!("{p}.ffn.1"), ModuleMut::ConvBn(f1)));
}

/// Appends the trainable modules of one layer, whose state_dict prefix is `p` (`model.{i}`),
/// in registration order.
pub(crate) fn layer_modules<'a>(layer: &'a mut Layer, p: &str, out: &mut Vec<(String, ModuleMut<'a>)>) {
    match layer {
        Layer::Conv(c) => out.push((p.to_string(), ModuleMut::ConvBn(c))),
        Layer::C3k2(c) => {
            out.push((format!("{p}.cv1"), ModuleMut::ConvBn(&mut c.cv1)));
            out.push((format!("{p}.cv2"), ModuleMut::ConvBn(&mut c.cv2)));
            for (j, b) in c.m.iter_mut().enumerate() {
                let mp = format!("{p}.m.{j}");
                match b {
                    C3k2Block::Bottleneck(b) => bottleneck_modules(b, &mp, out),
                    C3k2Block::C3k(c) => {
                        out.push((format!("{mp}.cv1"), ModuleMut::ConvBn(&mut c.cv1)));
                        out.push((format!("{mp}.cv2"), ModuleMut::ConvBn(&mut c.cv2)));
                        out.push((format!("{mp}.cv3"), ModuleMut::ConvBn(&mut c.cv3)));
                        for (k, b) in c.m.iter_mut().enumerate() {
                            bottleneck_modules(b, &format!("{mp}.m.{k}"), out);
                        }
                    }
                    C3k2Block::Attn(b, psa) => {
                        bottleneck_modules(b, &format!("{mp}.0"), out);
                        psa_modules(psa, &format!("{mp}.1"), out);
                    }
                }
            }
        }
        Layer::Sppf(s) => {
            out.push((format!("{p}.cv1"), ModuleMut::ConvBn(&mut s.cv1)));
            out.push((format!("{p}.cv2"), ModuleMut::ConvBn(&mut s.cv2)));
        }
        Layer::C2psa(c) => {
            out.push((format!("{p}.cv1"), ModuleMut::ConvBn(&mut c.cv1)));
            out.push((format!("{p}.cv2"), ModuleMut::ConvBn(&mut c.cv2)));
            for (j, b) in c.m.iter_mut().enumerate() {
                psa_modules(b, &format!("{p}.m.{j}"), out);
            }
        }
        Layer::Upsample(_) | Layer::Concat => {}
        Layer::Detect(d) => {
            let Detect { cv2, cv3, one2one_cv2, one2one_cv3, .. } = d.as_mut();
            for (suffix, br) in BRANCHES.iter().zip([cv2, cv3, one2one_cv2, one2one_cv3]) {
                for (l, (hidden, out_conv)) in br.hidden.iter_mut().zip(br.out.iter_mut()).enumerate() {
                    let names = hidden_names(&format!("{p}.{suffix}"), l, hidden.len());
                    for (cb, n) in hidden.iter_mut().zip(names) {
                        out.push((n, ModuleMut::ConvBn(cb)));
                    }
                    out.push((format!("{p}.{suffix}.{l}.2"), ModuleMut::Bias(out_conv)));
                }
            }
        }
    }
}

impl Yolo26 {
    /// Every trainable module with its state_dict prefix, in state_dict (registration) order.
    pub fn modules_mut(&mut self) -> Vec<(String, ModuleMut<'_>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer_modules(layer, &format!("model.{i}"), &mut out);
        }
        out
    }

    /// Every parameter (not buffer) with its state_dict name, in state_dict order: what an
    /// optimizer updates. Call [`Yolo26::refold`] after changing them, before inference.
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Vec<f32>)> {
        let mut out = Vec::new();
        for (p, m) in self.modules_mut() {
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

    /// Rebuilds every folded inference convolution from the raw weights and the BatchNorm
    /// parameters and running statistics (after training changed them).
    pub fn refold(&mut self) {
        for (_, m) in self.modules_mut() {
            match m {
                ModuleMut::ConvBn(c) => c.refold(),
                ModuleMut::Bias(b) => b.refold(),
            }
        }
    }

    /// The training forward pass on a batch `(n, 3, h, w)` (h, w multiples of 32).
    ///
    /// BatchNorm layers use batch statistics and update their running statistics, except in
    /// frozen modules. `frozen` receives a module's state_dict prefix followed by a dot (e.g.
    /// `model.3.`, `model.2.m.0.cv1.`, `model.23.cv2.0.2.`) and says whether it is frozen, like
    /// Ultralytics' `freeze` (which tests `"model.{i}." in name`): frozen modules keep eval-mode
    /// BatchNorm and get no gradients. Layers are also asked as a whole (`model.{i}.`) so that the
    /// backward can skip a frozen prefix of the network entirely.
    ///
    /// Both head branch pairs are computed; the returned [`Tape`] feeds [`Yolo26::backward`],
    /// which must run on the same weights.
    pub fn forward_train(&mut self, x: &Tensor, frozen: &dyn Fn(&str) -> bool) -> (TrainOutput, Tape) {
        let ctx = Ctx { frozen };
        let order: Vec<String> = self.parameters_mut().into_iter().map(|(n, _)| n).collect();
        // Which layers have a trainable module (layer-level test, see above).
        let trainable: Vec<bool> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| !matches!(l, Layer::Upsample(_) | Layer::Concat) && !frozen(&format!("model.{i}.")))
            .collect();
        let run: Vec<bool> = (0..trainable.len()).map(|i| trainable[..=i].iter().any(|&t| t)).collect();
        let need_dx: Vec<bool> = (0..trainable.len()).map(|i| trainable[..i].iter().any(|&t| t)).collect();
        // For each layer, the last layer that reads its output (to drop it from the table early;
        // tapes keep what backward needs).
        let plan = self.plan.clone();
        let mut last_use: Vec<usize> = (0..plan.layers.len()).collect();
        for (i, node) in plan.layers.iter().enumerate() {
            for &f in &node.from {
                if f != usize::MAX {
                    last_use[f] = last_use[f].max(i);
                }
            }
        }
        let input = Feat::whole(x.clone());
        let mut outputs: Vec<Option<Feat>> = vec![None; self.layers.len()];
        let mut tapes = Vec::with_capacity(self.layers.len());
        for (i, (layer, node)) in self.layers.iter_mut().zip(&plan.layers).enumerate() {
            let p = format!("model.{i}");
            let get = |k: usize| -> Feat {
                let f = node.from[k];
                if f == usize::MAX {
                    input.clone()
                } else {
                    outputs[f].clone().expect("input computed")
                }
            };
            let (y, t) = match layer {
                Layer::Conv(c) => {
                    let (y, t) = conv_fwd(c, &p, get(0), &ctx);
                    (Feat::whole(y), LayerTape::Conv(t))
                }
                Layer::C3k2(c) => {
                    let (y, t) = c3k2_fwd(c, &p, get(0), &ctx);
                    (Feat::whole(y), LayerTape::C3k2(t))
                }
                Layer::Sppf(s) => {
                    let (y, t) = sppf_fwd(s, &p, get(0), &ctx);
                    (Feat::whole(y), LayerTape::Sppf(t))
                }
                Layer::C2psa(c) => {
                    let (y, t) = c2psa_fwd(c, &p, get(0), &ctx);
                    (Feat::whole(y), LayerTape::C2psa(t))
                }
                Layer::Upsample(s) => (Feat::whole(engine::upsample_nearest(&get(0).tensor(), *s)), LayerTape::Upsample(*s)),
                Layer::Concat => {
                    let parts: Vec<Feat> = (0..node.from.len()).map(get).collect();
                    let channels = parts.iter().map(Feat::channels).collect();
                    let refs: Vec<&Feat> = parts.iter().collect();
                    (Feat::cat(&refs), LayerTape::Concat(channels))
                }
                Layer::Detect(d) => {
                    let feats: Vec<Feat> = (0..node.from.len()).map(get).collect();
                    let (out, t) = detect_fwd(d, &p, &feats, &ctx);
                    tapes.push(LayerTape::Detect(t));
                    return (out, Tape { layers: tapes, order, run, need_dx });
                }
            };
            // A layer whose backward never runs keeps nothing.
            tapes.push(if run[i] { t } else { LayerTape::Skipped });
            for (j, out) in outputs.iter_mut().enumerate().take(i) {
                if last_use[j] <= i {
                    *out = None;
                }
            }
            outputs[i] = Some(y);
        }
        unreachable!("a loaded model always ends with Detect")
    }

    /// The backward pass: parameter gradients of a scalar loss, given its gradients with respect
    /// to both heads' outputs (each laid out like the corresponding [`HeadOutput`] field:
    /// boxes `(B, 4, A)`, logits `(B, nc, A)`).
    ///
    /// # Panics
    /// If a gradient has the wrong length for the tape's batch.
    pub fn backward(&self, tape: Tape, grad_o2m_boxes: &[f32], grad_o2m_logits: &[f32], grad_o2o_boxes: &[f32], grad_o2o_logits: &[f32]) -> Gradients {
        let Tape { mut layers, order, run, need_dx } = tape;
        let mut sink = Sink::default();
        let mut grads: Vec<Option<Tensor>> = (0..self.layers.len()).map(|_| None).collect();
        let last = self.layers.len() - 1;
        let (Layer::Detect(d), Some(LayerTape::Detect(dt))) = (&self.layers[last], layers.pop()) else {
            unreachable!("a loaded model always ends with Detect")
        };
        let batch = {
            let anchors: usize = dt.sizes.iter().map(|(h, w)| h * w).sum();
            grad_o2m_boxes.len() / (4 * anchors)
        };
        let dfeats = detect_bwd(d, &format!("model.{last}"), dt, [grad_o2m_boxes, grad_o2m_logits, grad_o2o_boxes, grad_o2o_logits], batch, &mut sink);
        for (&f, g) in self.plan.layers[last].from.iter().zip(dfeats) {
            if let Some(g) = g {
                accumulate(&mut grads[f], g);
            }
        }
        while let Some(t) = layers.pop() {
            let i = layers.len();
            let node = &self.plan.layers[i];
            let g = grads[i].take();
            let (Some(g), true) = (g, run[i]) else { continue };
            let p = format!("model.{i}");
            let dx: Option<Tensor> = match (&self.layers[i], t) {
                (Layer::Conv(c), LayerTape::Conv(t)) => conv_bwd(c, &p, t, g, need_dx[i], &mut sink),
                (Layer::C3k2(c), LayerTape::C3k2(t)) => Some(c3k2_bwd(c, &p, t, g, &mut sink)),
                (Layer::Sppf(s), LayerTape::Sppf(t)) => Some(sppf_bwd(s, &p, t, g, &mut sink)),
                (Layer::C2psa(c), LayerTape::C2psa(t)) => Some(c2psa_bwd(c, &p, t, g, &mut sink)),
                (Layer::Upsample(_), LayerTape::Upsample(s)) => Some(bw::upsample_nearest_backward(&g, s)),
                (Layer::Concat, LayerTape::Concat(channels)) => {
                    let mut start = 0;
                    for (&f, c) in node.from.iter().zip(channels) {
                        if f != usize::MAX {
                            accumulate(&mut grads[f], engine::narrow_channels(&g, start, c));
                        }
                        start += c;
                    }
                    None
                }
                _ => unreachable!("a tape always matches the layer that recorded it"),
            };
            if let (Some(dx), Some(&f)) = (dx, node.from.first()) {
                if f != usize::MAX && need_dx[i] {
                    accumulate(&mut grads[f], dx);
                }
            }
        }
        let mut map = sink.0;
        Gradients { entries: order.into_iter().filter_map(|n| map.remove(&n).map(|g| (n, g))).collect() }
    }
}

#[cfg(test)]
mod tests;
