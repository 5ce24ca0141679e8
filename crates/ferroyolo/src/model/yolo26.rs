//! The YOLO26 detection network in one file: its building blocks, how each is filled from named
//! weights (Ultralytics state_dict names), and the forward pass.
//!
//! Every block keeps the weights exactly as the checkpoint names them, so that saving, training
//! and channel surgery can work on the same structures; for inference each Conv+BatchNorm pair is
//! also folded into a single engine convolution when it is loaded.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;

use anyhow::{bail, Context, Result};

use super::config::{LayerSpec, ModelPlan};
use super::weights::WeightStore;
use crate::engine::int8::{
    add_quantized, concat_quantized, dequantize, max_pool2d_quantized, quantize_parts, quantize_tensor, requantize_tensor, union_params, upsample_nearest_quantized, QConv2d, QParams,
    QTensor,
};
use crate::engine::{self, Activation, Conv2d, Tensor};

/// BatchNorm epsilon used by every YOLO26 BatchNorm layer.
pub const BN_EPS: f32 = 1e-3;

/// BatchNorm2d parameters and running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f32,
}

/// Ultralytics `Conv`: Conv2d (no bias) → BatchNorm2d → SiLU (or identity).
#[derive(Clone, Debug)]
pub struct ConvBn {
    /// Unfolded convolution weight, `[c2, c1/groups, k, k]`.
    pub weight: Vec<f32>,
    pub bn: BatchNorm,
    pub act: Activation,
    /// The same layer with BatchNorm folded in, used for inference.
    folded: Conv2d,
    /// When set, inference runs this INT8 convolution instead of `folded` (a post-training
    /// quantized model; see `compress::quantize`).
    pub int8: Option<Box<Int8Conv>>,
}

/// The INT8 execution of a [`ConvBn`]: its folded weights quantized per output channel and the
/// calibrated range of its input. The output leaves the kernel's fused epilogue (bias, activation)
/// in f32, or requantized to `u8` where only INT8 layers read it (see [`Yolo26::forward`]); an f32
/// input is quantized with `input` on entry, a `u8` one is read with its own parameters.
#[derive(Clone, Debug)]
pub struct Int8Conv {
    pub conv: QConv2d,
    pub input: QParams,
}

/// Sees the input of every [`ConvBn`] that runs on this thread (for calibration), as the parts of
/// its input channels.
pub type ConvInputObserver = Box<dyn FnMut(&ConvBn, &[(&Tensor, Range<usize>)])>;

thread_local! {
    static CONV_INPUT_OBSERVER: RefCell<Option<ConvInputObserver>> = const { RefCell::new(None) };
}

/// Runs `f` with `observer` seeing every convolution input on this thread (the model's forward
/// runs its layers on the calling thread), then removes it, also when `f` panics.
pub fn with_conv_input_observer<R>(observer: ConvInputObserver, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CONV_INPUT_OBSERVER.with(|o| o.borrow_mut().take());
        }
    }
    CONV_INPUT_OBSERVER.with(|o| *o.borrow_mut() = Some(observer));
    let _reset = Reset;
    f()
}

/// Whether a [`ConvInputObserver`] is set on this thread.
fn observing() -> bool {
    CONV_INPUT_OBSERVER.with(|o| o.borrow().is_some())
}

/// Runs `convs` one after the other on `x`. Between two INT8 layers the activation stays
/// quantized: the first one's kernel epilogue requantizes its output to the second's input
/// parameters, with the rounding [`quantize_parts`] applies to an f32 output, so the result equals
/// running them one by one while skipping an f32 round trip. (With an observer set, each layer
/// runs on its own so that every input is seen in f32.)
pub fn forward_chain(convs: &[&ConvBn], x: &Tensor) -> Tensor {
    if observing() || convs.iter().all(|c| c.int8.is_none()) {
        let mut y = convs[0].forward(x);
        for c in &convs[1..] {
            y = c.forward(&y);
        }
        return y;
    }
    let mut cur_f: Option<Tensor> = None;
    let mut cur_q: Option<QTensor> = None;
    for (i, c) in convs.iter().enumerate() {
        let next = convs.get(i + 1).and_then(|n| n.int8.as_deref()).map(|q| q.input);
        match &c.int8 {
            Some(q) => {
                let qx = match cur_q.take() {
                    Some(t) => t,
                    None => {
                        let input = cur_f.as_ref().unwrap_or(x);
                        quantize_parts(&[(input, 0..input.shape()[1])], q.input)
                    }
                };
                match next {
                    Some(p) => cur_q = Some(q.conv.forward_quantized(&qx, c.act, p)),
                    None => cur_f = Some(q.conv.forward(&qx, c.act)),
                }
            }
            None => {
                let y = c.forward(cur_f.as_ref().unwrap_or(x));
                cur_f = Some(y);
            }
        }
    }
    cur_f.expect("a chain ends with an f32 output")
}

/// An activation flowing between the layers of a model: f32, or `u8` where INT8 layers read it (so
/// that a quantized model does not round-trip every activation through f32).
enum Act<'a> {
    F32(Tensor),
    /// The network input, not copied.
    Input(&'a Tensor),
    Q(QTensor),
}

impl Act<'_> {
    fn shape(&self) -> [usize; 4] {
        match self {
            Act::F32(t) => t.shape(),
            Act::Input(t) => t.shape(),
            Act::Q(q) => q.shape(),
        }
    }

    /// The f32 values (dequantized for a float consumer when quantized).
    fn f32(&self) -> Cow<'_, Tensor> {
        match self {
            Act::F32(t) => Cow::Borrowed(t),
            Act::Input(t) => Cow::Borrowed(*t),
            Act::Q(q) => Cow::Owned(dequantize(q)),
        }
    }

    fn into_f32(self) -> Tensor {
        match self {
            Act::F32(t) => t,
            other => other.f32().into_owned(),
        }
    }

    /// The input of an INT8 convolution calibrated to `params`: a quantized activation as it is
    /// (the convolution's epilogue reads its input's own parameters), an f32 one quantized to `params`.
    fn quantized(&self, params: QParams) -> Cow<'_, QTensor> {
        match self {
            Act::Q(q) => Cow::Borrowed(q),
            other => Cow::Owned(quantize_tensor(&other.f32(), params)),
        }
    }

    /// Channels `start..start + len`.
    fn narrow(&self, start: usize, len: usize) -> Act<'static> {
        if let Act::Q(q) = self {
            if let Some(n) = concat_quantized(&[(q, start..start + len)]) {
                return Act::Q(n);
            }
        }
        Act::F32(engine::narrow_channels(&self.f32(), start, len))
    }
}

/// The format the readers of an activation want it in, combined over all of them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// No reader has said (yet).
    Any,
    /// A float layer reads it (it must see the exact f32 values).
    F32,
    /// Only INT8 layers (and format-agnostic operations) read it: `u8` with these parameters,
    /// covering every INT8 reader's calibrated range.
    Q(QParams),
}

impl Want {
    fn and(self, other: Want) -> Want {
        match (self, other) {
            (Want::Any, w) | (w, Want::Any) => w,
            (Want::F32, _) | (_, Want::F32) => Want::F32,
            (Want::Q(a), Want::Q(b)) => Want::Q(union_params(a, b)),
        }
    }
}

/// `y + x` (a residual connection) in the format `want` asks for.
fn residual(mut y: Tensor, x: &Act, want: Want) -> Act<'static> {
    match (want, x) {
        (Want::Q(p), Act::Q(xq)) => Act::Q(add_quantized(&y, xq, p)),
        (Want::Q(p), _) => {
            engine::add_assign(&mut y, &x.f32());
            Act::Q(quantize_tensor(&y, p))
        }
        _ => {
            engine::add_assign(&mut y, &x.f32());
            Act::F32(y)
        }
    }
}

/// `parts` concatenated along channels: in `u8` when they all are quantized alike, else in f32.
fn concat_acts(parts: &[&Act]) -> Act<'static> {
    let quantized: Option<Vec<(&QTensor, Range<usize>)>> = parts
        .iter()
        .map(|a| match a {
            Act::Q(q) => Some((q, 0..q.shape()[1])),
            _ => None,
        })
        .collect();
    if let Some(cat) = quantized.and_then(|q| concat_quantized(&q)) {
        return Act::Q(cat);
    }
    let f: Vec<Cow<Tensor>> = parts.iter().map(|a| a.f32()).collect();
    Act::F32(engine::concat_channels(&f.iter().map(|t| t.as_ref()).collect::<Vec<_>>()))
}

/// Runs `convs` one after the other on `x` (the u8 dataflow: between two INT8 layers the activation
/// stays quantized), the last output in the format `want` asks for.
fn chain_acts(convs: &[ConvBn], x: &Act, want: Want) -> Act<'static> {
    let mut cur: Option<Act> = None;
    for (i, c) in convs.iter().enumerate() {
        let next = convs.get(i + 1).map_or(want, ConvBn::input_want);
        cur = Some(c.forward_act(cur.as_ref().unwrap_or(x), next));
    }
    cur.expect("a chain has a layer")
}

fn observe_conv_input(conv: &ConvBn, parts: &[(&Tensor, Range<usize>)]) {
    CONV_INPUT_OBSERVER.with(|o| {
        if let Some(f) = o.borrow_mut().as_mut() {
            f(conv, parts);
        }
    });
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(ws: &mut dyn WeightStore, prefix: &str, c1: usize, c2: usize, k: usize, s: usize, groups: usize, act: bool) -> Result<Self> {
        let act = if act { Activation::Silu } else { Activation::Identity };
        if ws.shape_of(&format!("{prefix}.{QWEIGHT}")).is_some() {
            return Self::load_int8(ws, prefix, c1, c2, k, s, groups, act);
        }
        let weight = ws.take(&format!("{prefix}.conv.weight"), &[c2, c1 / groups, k, k])?;
        let bn = BatchNorm {
            weight: ws.take(&format!("{prefix}.bn.weight"), &[c2])?,
            bias: ws.take(&format!("{prefix}.bn.bias"), &[c2])?,
            running_mean: ws.take(&format!("{prefix}.bn.running_mean"), &[c2])?,
            running_var: ws.take(&format!("{prefix}.bn.running_var"), &[c2])?,
            eps: BN_EPS,
        };
        ws.skip(&format!("{prefix}.bn.num_batches_tracked"));
        let (w, b) = fold_batchnorm(&weight, &bn);
        let folded = Conv2d::new(c1, c2, k, s, k / 2, groups, w, Some(b))?;
        Ok(Self { weight, bn, act, folded, int8: None })
    }

    /// A quantized layer (see [`Int8Conv`] and the tensor names [`QWEIGHT`]...). Its f32 fields
    /// hold the dequantized weights (BatchNorm is already folded: an identity BatchNorm), for FLOP
    /// counts and the float reference.
    #[allow(clippy::too_many_arguments)]
    fn load_int8(ws: &mut dyn WeightStore, prefix: &str, c1: usize, c2: usize, k: usize, s: usize, groups: usize, act: Activation) -> Result<Self> {
        let q = ws.take_i8(&format!("{prefix}.{QWEIGHT}"), &[c2, c1 / groups, k, k])?;
        let scale = ws.take(&format!("{prefix}.{QSCALE}"), &[c2])?;
        let bias = ws.take(&format!("{prefix}.{QBIAS}"), &[c2])?;
        let input = ws.take(&format!("{prefix}.{QINPUT}"), &[2])?;
        let bad_input = || format!("{prefix}.{QINPUT}: input quantization must be [scale > 0, zero point in 0..=255], got {input:?}");
        let zp = input[1];
        if !(0.0..=255.0).contains(&zp) || zp.fract() != 0.0 {
            bail!(bad_input());
        }
        let input_q = QParams::new(input[0], zp as u8).with_context(bad_input)?;
        let conv = QConv2d::from_quantized(c1, c2, k, s, k / 2, groups, q, scale, bias.clone()).with_context(|| format!("{prefix}: quantized convolution"))?;
        let per_out = conv.weight().len() / c2;
        let weight: Vec<f32> = conv.weight().iter().enumerate().map(|(i, &v)| v as f32 * conv.weight_scale()[i / per_out]).collect();
        let folded = Conv2d::new(c1, c2, k, s, k / 2, groups, weight.clone(), Some(bias.clone()))?;
        // Folding this BatchNorm again gives `folded` exactly: scale 1/sqrt(1 + 0), shift `bias`.
        let bn = BatchNorm { weight: vec![1.0; c2], bias, running_mean: vec![0.0; c2], running_var: vec![1.0; c2], eps: 0.0 };
        Ok(Self { weight, bn, act, folded, int8: Some(Box::new(Int8Conv { conv, input: input_q })) })
    }

    /// A layer from its parts (weight `[c2, c1/groups, k, k]`, padding `k / 2` as Ultralytics'
    /// `autopad`), folded for inference.
    ///
    /// # Errors
    /// If the weight or BatchNorm lengths do not fit the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn new(c1: usize, c2: usize, k: usize, s: usize, groups: usize, weight: Vec<f32>, bn: BatchNorm, act: Activation) -> Result<Self> {
        if [&bn.weight, &bn.bias, &bn.running_mean, &bn.running_var].iter().any(|v| v.len() != c2) {
            bail!("ConvBn: BatchNorm vectors must have {c2} values");
        }
        let (w, b) = fold_batchnorm(&weight, &bn);
        let folded = Conv2d::new(c1, c2, k, s, k / 2, groups, w, Some(b))?;
        Ok(Self { weight, bn, act, folded, int8: None })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_parts(&[(x, 0..x.shape()[1])])
    }

    /// Runs on the channel concatenation of `parts` without materialising it.
    pub fn forward_parts(&self, parts: &[(&Tensor, Range<usize>)]) -> Tensor {
        observe_conv_input(self, parts);
        match &self.int8 {
            Some(q) => q.conv.forward(&quantize_parts(parts, q.input), self.act),
            None if parts.len() == 1 && parts[0].1 == (0..parts[0].0.shape()[1]) => self.folded.forward(parts[0].0, self.act),
            None => self.folded.forward_parts(parts, self.act),
        }
    }

    /// What this layer wants its input as: `u8` in its calibrated parameters when it is INT8.
    fn input_want(&self) -> Want {
        match &self.int8 {
            Some(q) => Want::Q(q.input),
            None => Want::F32,
        }
    }

    /// Runs on an activation of either format; the output is `u8` when `want` asks for it and
    /// this layer is INT8 (requantized in the kernel's epilogue), else f32.
    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        match &self.int8 {
            Some(q) => {
                let qx = x.quantized(q.input);
                match want {
                    Want::Q(p) => Act::Q(q.conv.forward_quantized(&qx, self.act, p)),
                    _ => Act::F32(q.conv.forward(&qx, self.act)),
                }
            }
            None => Act::F32(self.forward(&x.f32())),
        }
    }

    /// [`forward_act`](Self::forward_act) on the channel concatenation of `parts`: quantized parts
    /// with equal parameters are concatenated as `u8` planes; otherwise (mixed formats or
    /// parameters, or channel ranges off quad boundaries) each part is brought to f32 first.
    fn forward_parts_act(&self, parts: &[(&Act, Range<usize>)], want: Want) -> Act<'static> {
        // The parameters of the first quantized part: the others are brought to them.
        let target = parts.iter().find_map(|(a, _)| match a {
            Act::Q(t) => Some(t.params()),
            _ => None,
        });
        if let (Some(_), Some(target)) = (&self.int8, target) {
            let quantized: Vec<(Cow<QTensor>, Range<usize>)> = parts
                .iter()
                .map(|(a, r)| match a {
                    Act::Q(t) if t.params() == target => (Cow::Borrowed(t), r.clone()),
                    Act::Q(t) => (Cow::Owned(requantize_tensor(t, target)), r.clone()),
                    other => (Cow::Owned(quantize_parts(&[(&other.f32(), r.clone())], target)), 0..r.len()),
                })
                .collect();
            if let Some(cat) = concat_quantized(&quantized.iter().map(|(t, r)| (t.as_ref(), r.clone())).collect::<Vec<_>>()) {
                return self.forward_act(&Act::Q(cat), want);
            }
        }
        let f: Vec<Cow<Tensor>> = parts.iter().map(|(a, _)| a.f32()).collect();
        let fparts: Vec<(&Tensor, Range<usize>)> = f.iter().zip(parts).map(|(t, (_, r))| (t.as_ref(), r.clone())).collect();
        match (&self.int8, want) {
            (Some(q), Want::Q(p)) => Act::Q(q.conv.forward_quantized(&quantize_parts(&fparts, q.input), self.act, p)),
            _ => Act::F32(self.forward_parts(&fparts)),
        }
    }

    /// The folded inference convolution.
    pub fn folded(&self) -> &Conv2d {
        &self.folded
    }

    /// Rebuilds the folded inference convolution from the raw weight and the BatchNorm parameters
    /// and running statistics (after training changed them).
    pub fn refold(&mut self) {
        let f = &self.folded;
        let (w, b) = fold_batchnorm(&self.weight, &self.bn);
        self.folded = Conv2d::new(f.in_channels(), f.out_channels(), f.kernel(), f.stride(), f.padding(), f.groups(), w, Some(b))
            .expect("refold keeps the layer's shape");
    }

    /// Output spatial size for an input of `h × w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (k, s, p) = (self.folded.kernel(), self.folded.stride(), self.folded.padding());
        ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)
    }

    /// Floating-point operations (2 per multiply-add) for an input of `h × w`.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.out_size(h, w);
        self.folded.flops(oh, ow)
    }
}

/// Names (after the layer's prefix) of a quantized [`ConvBn`]'s tensors in ferroyolo's INT8
/// files, in place of `conv.weight` and `bn.*`: int8 folded weights `[c2, c1/g, k, k]`, f32 scale
/// per output channel, f32 folded bias, and the input's `[scale, zero point]`.
pub const QWEIGHT: &str = "conv.qweight";
pub const QSCALE: &str = "conv.qscale";
pub const QBIAS: &str = "conv.qbias";
pub const QINPUT: &str = "conv.qinput";

/// Folds BatchNorm into the preceding convolution: w' = w·γ/σ, b' = β − μ·γ/σ.
pub fn fold_batchnorm(weight: &[f32], bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let c2 = bn.weight.len();
    let per_out = weight.len() / c2;
    let mut w = weight.to_vec();
    let mut b = vec![0.0; c2];
    for o in 0..c2 {
        let scale = bn.weight[o] / (bn.running_var[o] + bn.eps).sqrt();
        w[o * per_out..(o + 1) * per_out].iter_mut().for_each(|v| *v *= scale);
        b[o] = bn.bias[o] - bn.running_mean[o] * scale;
    }
    (w, b)
}

/// Output channels of the convolution `weight_name` as the checkpoint stores it, or `fallback`
/// (the config's width) when the store does not say. Hidden widths come from the weights so that
/// a channel-pruned checkpoint, whose inner widths no longer follow the config, loads; the
/// consumers' input widths are then checked against them.
fn stored_width(ws: &dyn WeightStore, weight_name: &str, fallback: usize) -> usize {
    ws.shape_of(weight_name).and_then(|s| s.first().copied()).unwrap_or(fallback)
}

/// Plain Conv2d with bias (the last 1×1 convolution of each Detect branch).
#[derive(Clone, Debug)]
pub struct BiasConv {
    /// The convolution inference runs (rebuilt from `weight` and `bias` by [`BiasConv::refold`]).
    pub conv: Conv2d,
    /// Weight `[c2, c1, 1, 1]` and bias `[c2]` as trainable parameters.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl BiasConv {
    fn load(ws: &mut dyn WeightStore, prefix: &str, c1: usize, c2: usize) -> Result<Self> {
        let w = ws.take(&format!("{prefix}.weight"), &[c2, c1, 1, 1])?;
        let b = ws.take(&format!("{prefix}.bias"), &[c2])?;
        Ok(Self { conv: Conv2d::new(c1, c2, 1, 1, 0, 1, w.clone(), Some(b.clone()))?, weight: w, bias: b })
    }

    /// Rebuilds the inference convolution from `weight` and `bias` (after training changed them).
    pub fn refold(&mut self) {
        let c = &self.conv;
        self.conv = Conv2d::new(c.in_channels(), c.out_channels(), 1, 1, 0, 1, self.weight.clone(), Some(self.bias.clone()))
            .expect("refold keeps the layer's shape");
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x, Activation::Identity)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.conv.flops(h, w)
    }
}

/// `x + cv2(cv1(x))` when `add`, else `cv2(cv1(x))`.
#[derive(Clone, Debug)]
pub struct Bottleneck {
    pub cv1: ConvBn,
    pub cv2: ConvBn,
    pub add: bool,
}

impl Bottleneck {
    fn load(ws: &mut dyn WeightStore, p: &str, c1: usize, c2: usize, shortcut: bool, e: f64) -> Result<Self> {
        let c_ = stored_width(ws, &format!("{p}.cv1.conv.weight"), (c2 as f64 * e) as usize);
        Ok(Self {
            cv1: ConvBn::load(ws, &format!("{p}.cv1"), c1, c_, 3, 1, 1, true)?,
            cv2: ConvBn::load(ws, &format!("{p}.cv2"), c_, c2, 3, 1, 1, true)?,
            add: shortcut && c1 == c2,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = forward_chain(&[&self.cv1, &self.cv2], x);
        if self.add {
            engine::add_assign(&mut y, x);
        }
        y
    }

    fn input_want(&self) -> Want {
        self.cv1.input_want()
    }

    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        let mid = self.cv1.forward_act(x, self.cv2.input_want());
        if !self.add {
            return self.cv2.forward_act(&mid, want);
        }
        residual(self.cv2.forward_act(&mid, Want::F32).into_f32(), x, want)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.cv1.flops(h, w) + self.cv2.flops(h, w)
    }
}

/// CSP block with three convolutions: `cv3(cat(m(cv1(x)), cv2(x)))`.
#[derive(Clone, Debug)]
pub struct C3k {
    pub cv1: ConvBn,
    pub cv2: ConvBn,
    pub cv3: ConvBn,
    pub m: Vec<Bottleneck>,
}

impl C3k {
    fn load(ws: &mut dyn WeightStore, p: &str, c1: usize, c2: usize, n: usize, shortcut: bool) -> Result<Self> {
        // The two halves (cv1 → m, cv2) have the same width unless pruning narrowed them.
        let c_a = stored_width(ws, &format!("{p}.cv1.conv.weight"), c2 / 2);
        let c_b = stored_width(ws, &format!("{p}.cv2.conv.weight"), c2 / 2);
        Ok(Self {
            cv1: ConvBn::load(ws, &format!("{p}.cv1"), c1, c_a, 1, 1, 1, true)?,
            cv2: ConvBn::load(ws, &format!("{p}.cv2"), c1, c_b, 1, 1, 1, true)?,
            cv3: ConvBn::load(ws, &format!("{p}.cv3"), c_a + c_b, c2, 1, 1, 1, true)?,
            m: (0..n).map(|i| Bottleneck::load(ws, &format!("{p}.m.{i}"), c_a, c_a, shortcut, 1.0)).collect::<Result<_>>()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.cv1.forward(x);
        for b in &self.m {
            y = b.forward(&y);
        }
        let z = self.cv2.forward(x);
        let (cy, cz) = (y.shape()[1], z.shape()[1]);
        self.cv3.forward_parts(&[(&y, 0..cy), (&z, 0..cz)])
    }

    fn input_want(&self) -> Want {
        self.cv1.input_want().and(self.cv2.input_want())
    }

    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        let cat = self.cv3.input_want();
        let reader = |i: usize| self.m.get(i).map_or(cat, Bottleneck::input_want);
        let mut y = self.cv1.forward_act(x, reader(0));
        for (i, b) in self.m.iter().enumerate() {
            y = b.forward_act(&y, reader(i + 1));
        }
        let z = self.cv2.forward_act(x, cat);
        let (cy, cz) = (y.shape()[1], z.shape()[1]);
        self.cv3.forward_parts_act(&[(&y, 0..cy), (&z, 0..cz)], want)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.cv1.flops(h, w) + self.cv2.flops(h, w) + self.cv3.flops(h, w) + self.m.iter().map(|b| b.flops(h, w)).sum::<u64>()
    }
}

/// Attention with a depthwise positional-encoding conv (the `Attention` module).
#[derive(Clone, Debug)]
pub struct Attention {
    pub num_heads: usize,
    pub key_dim: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub qkv: ConvBn,
    pub proj: ConvBn,
    pub pe: ConvBn,
}

impl Attention {
    fn load(ws: &mut dyn WeightStore, p: &str, dim: usize, num_heads: usize) -> Result<Self> {
        let head_dim = dim / num_heads;
        let key_dim = head_dim / 2; // attn_ratio 0.5
        let h = dim + 2 * key_dim * num_heads;
        Ok(Self {
            num_heads,
            key_dim,
            head_dim,
            scale: (key_dim as f32).powf(-0.5),
            qkv: ConvBn::load(ws, &format!("{p}.qkv"), dim, h, 1, 1, 1, false)?,
            proj: ConvBn::load(ws, &format!("{p}.proj"), dim, dim, 1, 1, 1, false)?,
            pe: ConvBn::load(ws, &format!("{p}.pe"), dim, dim, 3, 1, dim, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let qkv = self.qkv.forward(x);
        let (mut out, v) = engine::attention(&qkv, self.num_heads, self.key_dim, self.head_dim, self.scale);
        engine::add_assign(&mut out, &self.pe.forward(&v));
        self.proj.forward(&out)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        let n = (h * w) as u64;
        let matmuls = 2 * n * n * (self.key_dim + self.head_dim) as u64 * self.num_heads as u64;
        self.qkv.flops(h, w) + self.proj.flops(h, w) + self.pe.flops(h, w) + matmuls
    }
}

/// `x + attn(x)`, then `x + ffn(x)`.
#[derive(Clone, Debug)]
pub struct PsaBlock {
    pub attn: Attention,
    pub ffn: [ConvBn; 2],
}

impl PsaBlock {
    fn load(ws: &mut dyn WeightStore, p: &str, c: usize) -> Result<Self> {
        let hidden = stored_width(ws, &format!("{p}.ffn.0.conv.weight"), 2 * c);
        Ok(Self {
            attn: Attention::load(ws, &format!("{p}.attn"), c, (c / 64).max(1))?,
            ffn: [
                ConvBn::load(ws, &format!("{p}.ffn.0"), c, hidden, 1, 1, 1, true)?,
                ConvBn::load(ws, &format!("{p}.ffn.1"), hidden, c, 1, 1, 1, false)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = x.clone();
        let a = self.attn.forward(&x);
        engine::add_assign(&mut x, &a);
        let f = self.ffn[1].forward(&self.ffn[0].forward(&x));
        engine::add_assign(&mut x, &f);
        x
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.attn.flops(h, w) + self.ffn[0].flops(h, w) + self.ffn[1].flops(h, w)
    }
}

/// The inner block of a C3k2 layer.
#[derive(Clone, Debug)]
pub enum C3k2Block {
    Bottleneck(Bottleneck),
    C3k(Box<C3k>),
    /// Bottleneck then PSABlock (the attention variant of layer 22).
    Attn(Bottleneck, Box<PsaBlock>),
}

impl C3k2Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            C3k2Block::Bottleneck(b) => b.forward(x),
            C3k2Block::C3k(c) => c.forward(x),
            C3k2Block::Attn(b, psa) => psa.forward(&b.forward(x)),
        }
    }

    fn input_want(&self) -> Want {
        match self {
            C3k2Block::Bottleneck(b) | C3k2Block::Attn(b, _) => b.input_want(),
            C3k2Block::C3k(c) => c.input_want(),
        }
    }

    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        match self {
            C3k2Block::Bottleneck(b) => b.forward_act(x, want),
            C3k2Block::C3k(c) => c.forward_act(x, want),
            // Attention and its residuals stay f32.
            C3k2Block::Attn(b, psa) => Act::F32(psa.forward(&b.forward_act(x, Want::F32).into_f32())),
        }
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        match self {
            C3k2Block::Bottleneck(b) => b.flops(h, w),
            C3k2Block::C3k(c) => c.flops(h, w),
            C3k2Block::Attn(b, psa) => b.flops(h, w) + psa.flops(h, w),
        }
    }
}

/// C2f-style block: split cv1's output in two, chain the inner blocks on the second half,
/// concatenate everything and project with cv2.
#[derive(Clone, Debug)]
pub struct C3k2 {
    pub c: usize,
    pub cv1: ConvBn,
    pub cv2: ConvBn,
    pub m: Vec<C3k2Block>,
}

impl C3k2 {
    #[allow(clippy::too_many_arguments)]
    fn load(ws: &mut dyn WeightStore, p: &str, c1: usize, c2: usize, n: usize, c3k: bool, e: f64, attn: bool, shortcut: bool) -> Result<Self> {
        let c = stored_width(ws, &format!("{p}.cv1.conv.weight"), 2 * ((c2 as f64 * e) as usize)) / 2;
        // Registration (state_dict) order: cv1, cv2, then the inner blocks.
        let cv1 = ConvBn::load(ws, &format!("{p}.cv1"), c1, 2 * c, 1, 1, 1, true)?;
        let cv2 = ConvBn::load(ws, &format!("{p}.cv2"), (2 + n) * c, c2, 1, 1, 1, true)?;
        let m = (0..n)
            .map(|i| {
                let mp = format!("{p}.m.{i}");
                Ok(if attn {
                    C3k2Block::Attn(Bottleneck::load(ws, &format!("{mp}.0"), c, c, shortcut, 0.5)?, Box::new(PsaBlock::load(ws, &format!("{mp}.1"), c)?))
                } else if c3k {
                    C3k2Block::C3k(Box::new(C3k::load(ws, &mp, c, c, 2, shortcut)?))
                } else {
                    C3k2Block::Bottleneck(Bottleneck::load(ws, &mp, c, c, shortcut, 0.5)?)
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { c, cv1, cv2, m })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.cv1.forward(x);
        // cv2 reads cv1's output and every block output as one concatenation, built in place.
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.m.len());
        let second_half = engine::narrow_channels(&y, self.c, self.c);
        for b in &self.m {
            let next = b.forward(outs.last().unwrap_or(&second_half));
            outs.push(next);
        }
        let mut parts = vec![(&y, 0..2 * self.c)];
        parts.extend(outs.iter().map(|t| (t, 0..self.c)));
        self.cv2.forward_parts(&parts)
    }

    fn input_want(&self) -> Want {
        self.cv1.input_want()
    }

    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        // cv1's output and every block's are read by cv2 (one concatenation) and by the next block.
        // One format for all of them, so that cv2's input is a plane-copy concatenation.
        let shared = self.m.iter().fold(self.cv2.input_want(), |w, b| w.and(b.input_want()));
        let y = self.cv1.forward_act(x, shared);
        let mut outs: Vec<Act> = Vec::with_capacity(self.m.len());
        let second_half = y.narrow(self.c, self.c);
        for b in &self.m {
            let next = b.forward_act(outs.last().unwrap_or(&second_half), shared);
            outs.push(next);
        }
        let mut parts = vec![(&y, 0..2 * self.c)];
        parts.extend(outs.iter().map(|t| (t, 0..self.c)));
        self.cv2.forward_parts_act(&parts, want)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.cv1.flops(h, w) + self.cv2.flops(h, w) + self.m.iter().map(|b| b.flops(h, w)).sum::<u64>()
    }
}

/// Spatial pyramid pooling (fast): repeated max-pools of an unactivated 1×1 projection.
#[derive(Clone, Debug)]
pub struct Sppf {
    pub cv1: ConvBn,
    pub cv2: ConvBn,
    pub k: usize,
    pub n: usize,
    pub add: bool,
}

impl Sppf {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut ys = vec![self.cv1.forward(x)];
        for _ in 0..self.n {
            let next = engine::max_pool2d(ys.last().expect("one"), self.k, 1, self.k / 2);
            ys.push(next);
        }
        let parts: Vec<(&Tensor, std::ops::Range<usize>)> = ys.iter().map(|t| (t, 0..t.shape()[1])).collect();
        let mut out = self.cv2.forward_parts(&parts);
        if self.add {
            engine::add_assign(&mut out, x);
        }
        out
    }

    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        let mut ys = vec![self.cv1.forward_act(x, self.cv2.input_want())];
        for _ in 0..self.n {
            let next = match ys.last().expect("one") {
                Act::Q(q) => Act::Q(max_pool2d_quantized(q, self.k, 1, self.k / 2)),
                other => Act::F32(engine::max_pool2d(&other.f32(), self.k, 1, self.k / 2)),
            };
            ys.push(next);
        }
        let parts: Vec<(&Act, Range<usize>)> = ys.iter().map(|t| (t, 0..t.shape()[1])).collect();
        if !self.add {
            return self.cv2.forward_parts_act(&parts, want);
        }
        residual(self.cv2.forward_parts_act(&parts, Want::F32).into_f32(), x, want)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.cv1.flops(h, w) + self.cv2.flops(h, w)
    }
}

/// C2PSA: `cv2(cat(a, psa(b)))` with `a, b = split(cv1(x))`.
#[derive(Clone, Debug)]
pub struct C2psa {
    pub c: usize,
    pub cv1: ConvBn,
    pub cv2: ConvBn,
    pub m: Vec<PsaBlock>,
}

impl C2psa {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.cv1.forward(x);
        let mut b = engine::narrow_channels(&y, self.c, self.c);
        for blk in &self.m {
            b = blk.forward(&b);
        }
        self.cv2.forward_parts(&[(&y, 0..self.c), (&b, 0..self.c)])
    }

    /// The attention half runs in f32 (so cv1's output is f32); cv2 still writes `want`.
    fn forward_act(&self, x: &Act, want: Want) -> Act<'static> {
        let y = self.cv1.forward_act(x, Want::F32).into_f32();
        let mut b = engine::narrow_channels(&y, self.c, self.c);
        for blk in &self.m {
            b = blk.forward(&b);
        }
        let (y, b) = (Act::F32(y), Act::F32(b));
        self.cv2.forward_parts_act(&[(&y, 0..self.c), (&b, 0..self.c)], want)
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.cv1.flops(h, w) + self.cv2.flops(h, w) + self.m.iter().map(|b| b.flops(h, w)).sum::<u64>()
    }
}

/// One Detect branch set (box or class) for the three levels.
#[derive(Clone, Debug)]
pub struct DetectBranch {
    /// Per level: the hidden blocks (box: two 3×3 Convs; class: DW+1×1 twice) then the final conv.
    pub hidden: Vec<Vec<ConvBn>>,
    pub out: Vec<BiasConv>,
}

impl DetectBranch {
    fn forward(&self, level: usize, x: &Tensor) -> Tensor {
        let hidden: Vec<&ConvBn> = self.hidden[level].iter().collect();
        self.out[level].forward(&forward_chain(&hidden, x))
    }

    /// The branch's first layer at `level` (what its input is read by).
    fn input_want(&self, level: usize) -> Want {
        self.hidden[level].first().map_or(Want::F32, ConvBn::input_want)
    }

    fn forward_act(&self, level: usize, x: &Act) -> Tensor {
        self.out[level].forward(&chain_acts(&self.hidden[level], x, Want::F32).f32())
    }

    fn flops(&self, level: usize, h: usize, w: usize) -> u64 {
        self.hidden[level].iter().map(|c| c.flops(h, w)).sum::<u64>() + self.out[level].flops(h, w)
    }
}

/// Which Detect branch pair to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadMode {
    /// The one-to-one branches (NMS-free top-k), YOLO26's own inference mode.
    OneToOne,
    /// The one-to-many branches, decoded for NMS.
    OneToMany,
}

/// The detection head: box (`cv2`) and class (`cv3`) branches, each in a one-to-many and a
/// one-to-one copy.
#[derive(Clone, Debug)]
pub struct Detect {
    pub nc: usize,
    pub strides: Vec<f32>,
    pub cv2: DetectBranch,
    pub cv3: DetectBranch,
    pub one2one_cv2: DetectBranch,
    pub one2one_cv3: DetectBranch,
}

impl Detect {
    fn load(ws: &mut dyn WeightStore, p: &str, nc: usize, ch: &[usize], strides: Vec<f32>) -> Result<Self> {
        if ch.is_empty() || strides.len() != ch.len() {
            bail!("Detect: {} input levels but {} strides", ch.len(), strides.len());
        }
        let c2 = 16usize.max(ch[0] / 4).max(4);
        // The class branch width follows the checkpoint (a fine-tuned model keeps its source width).
        let c3 = ws.shape_of(&format!("{p}.cv3.0.0.1.conv.weight")).map(|s| s[0]).unwrap_or_else(|| ch[0].max(nc.min(100)));
        let load_branches = |ws: &mut dyn WeightStore, name: &str| -> Result<(DetectBranch, DetectBranch)> {
            let mut boxes = DetectBranch { hidden: vec![], out: vec![] };
            let mut cls = DetectBranch { hidden: vec![], out: vec![] };
            let (bname, cname) = (format!("{p}.{name}cv2"), format!("{p}.{name}cv3"));
            for (i, &c) in ch.iter().enumerate() {
                // Hidden widths per level and branch as stored (channel pruning narrows each).
                let (b0, b1) = (format!("{bname}.{i}.0"), format!("{bname}.{i}.1"));
                let (w0, w1) = (stored_width(ws, &format!("{b0}.conv.weight"), c2), stored_width(ws, &format!("{b1}.conv.weight"), c2));
                boxes.hidden.push(vec![ConvBn::load(ws, &b0, c, w0, 3, 1, 1, true)?, ConvBn::load(ws, &b1, w0, w1, 3, 1, 1, true)?]);
                boxes.out.push(BiasConv::load(ws, &format!("{bname}.{i}.2"), w1, 4)?);
                let (k0, k1) = (format!("{cname}.{i}.0.1"), format!("{cname}.{i}.1.1"));
                let (v0, v1) = (stored_width(ws, &format!("{k0}.conv.weight"), c3), stored_width(ws, &format!("{k1}.conv.weight"), c3));
                cls.hidden.push(vec![
                    ConvBn::load(ws, &format!("{cname}.{i}.0.0"), c, c, 3, 1, c, true)?,
                    ConvBn::load(ws, &k0, c, v0, 1, 1, 1, true)?,
                    ConvBn::load(ws, &format!("{cname}.{i}.1.0"), v0, v0, 3, 1, v0, true)?,
                    ConvBn::load(ws, &k1, v0, v1, 1, 1, 1, true)?,
                ]);
                cls.out.push(BiasConv::load(ws, &format!("{cname}.{i}.2"), v1, nc)?);
            }
            Ok((boxes, cls))
        };
        let (cv2, cv3) = load_branches(ws, "")?;
        let (one2one_cv2, one2one_cv3) = load_branches(ws, "one2one_")?;
        Ok(Self { nc, strides, cv2, cv3, one2one_cv2, one2one_cv3 })
    }

    /// FLOPs of one branch pair (box + class) for feature maps of the given sizes.
    pub fn flops(&self, sizes: &[(usize, usize)]) -> u64 {
        sizes.iter().enumerate().map(|(l, &(h, w))| self.cv2.flops(l, h, w) + self.cv3.flops(l, h, w)).sum()
    }

    /// Runs one branch pair over the three feature maps.
    pub fn forward(&self, feats: &[&Tensor], mode: HeadMode) -> HeadOutput {
        let (bx, cl) = self.branches(mode);
        let shapes: Vec<[usize; 4]> = feats.iter().map(|f| f.shape()).collect();
        self.assemble(&shapes, |lvl| (bx.forward(lvl, feats[lvl]), cl.forward(lvl, feats[lvl])))
    }

    /// [`forward`](Self::forward) on activations of either format (the u8 dataflow).
    fn forward_acts(&self, feats: &[&Act], mode: HeadMode) -> HeadOutput {
        let (bx, cl) = self.branches(mode);
        let shapes: Vec<[usize; 4]> = feats.iter().map(|f| f.shape()).collect();
        self.assemble(&shapes, |lvl| (bx.forward_act(lvl, feats[lvl]), cl.forward_act(lvl, feats[lvl])))
    }

    /// What the feature map of `level` is read as: by the first layer of each branch, of both pairs.
    fn input_want(&self, level: usize) -> Want {
        [&self.cv2, &self.cv3, &self.one2one_cv2, &self.one2one_cv3].iter().fold(Want::Any, |w, b| w.and(b.input_want(level)))
    }

    fn branches(&self, mode: HeadMode) -> (&DetectBranch, &DetectBranch) {
        match mode {
            HeadMode::OneToOne => (&self.one2one_cv2, &self.one2one_cv3),
            HeadMode::OneToMany => (&self.cv2, &self.cv3),
        }
    }

    /// The head output from each level's (box, class) branch outputs, `run(level)`.
    fn assemble(&self, shapes: &[[usize; 4]], mut run: impl FnMut(usize) -> (Tensor, Tensor)) -> HeadOutput {
        let batch = shapes[0][0];
        let sizes: Vec<(usize, usize)> = shapes.iter().map(|s| (s[2], s[3])).collect();
        let anchors: usize = sizes.iter().map(|(h, w)| h * w).sum();
        let mut out = HeadOutput {
            batch,
            nc: self.nc,
            anchors,
            boxes: vec![0.0; batch * 4 * anchors],
            logits: vec![0.0; batch * self.nc * anchors],
            anchor_points: Vec::with_capacity(anchors * 2),
            anchor_strides: Vec::with_capacity(anchors),
        };
        let mut offset = 0;
        for (lvl, &(h, w)) in sizes.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    out.anchor_points.extend([x as f32 + 0.5, y as f32 + 0.5]);
                    out.anchor_strides.push(self.strides[lvl]);
                }
            }
            let hw = h * w;
            let (b, c) = run(lvl);
            for n in 0..batch {
                for ch in 0..4 {
                    let src = &b.data()[(n * 4 + ch) * hw..][..hw];
                    out.boxes[(n * 4 + ch) * anchors + offset..][..hw].copy_from_slice(src);
                }
                for ch in 0..self.nc {
                    let src = &c.data()[(n * self.nc + ch) * hw..][..hw];
                    out.logits[(n * self.nc + ch) * anchors + offset..][..hw].copy_from_slice(src);
                }
            }
            offset += hw;
        }
        out
    }
}

/// Raw head output for a batch, before decoding.
#[derive(Clone, Debug)]
pub struct HeadOutput {
    pub batch: usize,
    pub nc: usize,
    pub anchors: usize,
    /// `(batch, 4, anchors)`: left, top, right, bottom distances in grid units.
    pub boxes: Vec<f32>,
    /// `(batch, nc, anchors)`: class logits.
    pub logits: Vec<f32>,
    /// `(anchors, 2)`: cell centres in grid units.
    pub anchor_points: Vec<f32>,
    /// `(anchors,)`: the stride of each anchor's level.
    pub anchor_strides: Vec<f32>,
}

impl HeadOutput {
    /// Decoded `xyxy` box of anchor `a` in image `n`, in input pixels.
    pub fn xyxy(&self, n: usize, a: usize) -> [f32; 4] {
        let b = |k: usize| self.boxes[(n * 4 + k) * self.anchors + a];
        let (ax, ay, s) = (self.anchor_points[2 * a], self.anchor_points[2 * a + 1], self.anchor_strides[a]);
        [(ax - b(0)) * s, (ay - b(1)) * s, (ax + b(2)) * s, (ay + b(3)) * s]
    }

    /// Decoded `cx, cy, w, h` box (the one-to-many decoding), in input pixels.
    pub fn xywh(&self, n: usize, a: usize) -> [f32; 4] {
        let b = |k: usize| self.boxes[(n * 4 + k) * self.anchors + a];
        let (ax, ay, s) = (self.anchor_points[2 * a], self.anchor_points[2 * a + 1], self.anchor_strides[a]);
        let (x1, y1, x2, y2) = (ax - b(0), ay - b(1), ax + b(2), ay + b(3));
        [(x1 + x2) / 2.0 * s, (y1 + y2) / 2.0 * s, (x2 - x1) * s, (y2 - y1) * s]
    }

    /// Sigmoid class score.
    pub fn score(&self, n: usize, class: usize, a: usize) -> f32 {
        engine::sigmoid(self.logits[(n * self.nc + class) * self.anchors + a])
    }
}

/// One layer of the network.
#[derive(Clone, Debug)]
pub enum Layer {
    Conv(ConvBn),
    C3k2(C3k2),
    Sppf(Sppf),
    C2psa(C2psa),
    Upsample(usize),
    Concat,
    Detect(Box<Detect>),
}

impl Layer {
    /// The module type name as Ultralytics prints it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "Conv",
            Layer::C3k2(_) => "C3k2",
            Layer::Sppf(_) => "SPPF",
            Layer::C2psa(_) => "C2PSA",
            Layer::Upsample(_) => "Upsample",
            Layer::Concat => "Concat",
            Layer::Detect(_) => "Detect",
        }
    }
}

/// What [`Yolo26::forward_observed`] calls with each layer's index and output.
type LayerObserver<'a> = dyn FnMut(usize, &Tensor) + 'a;

/// A YOLO26 detection model: the resolved layer graph with its weights.
#[derive(Clone, Debug)]
pub struct Yolo26 {
    pub plan: ModelPlan,
    pub layers: Vec<Layer>,
    /// For each layer, the last layer that reads its output (to free memory early).
    last_use: Vec<usize>,
}

impl Yolo26 {
    /// Builds the network of `plan` with weights from `ws` (names as in an Ultralytics state_dict).
    pub fn load(plan: ModelPlan, strides: Vec<f32>, ws: &mut dyn WeightStore) -> Result<Self> {
        let mut layers = Vec::with_capacity(plan.layers.len());
        for (i, node) in plan.layers.iter().enumerate() {
            let p = format!("model.{i}");
            let layer = match &node.spec {
                &LayerSpec::Conv { c1, c2, k, s } => Layer::Conv(ConvBn::load(ws, &p, c1, c2, k, s, 1, true)?),
                &LayerSpec::C3k2 { c1, c2, n, c3k, e, attn, shortcut } => Layer::C3k2(C3k2::load(ws, &p, c1, c2, n, c3k, e, attn, shortcut)?),
                &LayerSpec::Sppf { c1, c2, k, n, shortcut } => {
                    let c_ = stored_width(ws, &format!("{p}.cv1.conv.weight"), c1 / 2);
                    Layer::Sppf(Sppf {
                        cv1: ConvBn::load(ws, &format!("{p}.cv1"), c1, c_, 1, 1, 1, false)?,
                        cv2: ConvBn::load(ws, &format!("{p}.cv2"), c_ * (n + 1), c2, 1, 1, 1, true)?,
                        k,
                        n,
                        add: shortcut && c1 == c2,
                    })
                }
                &LayerSpec::C2psa { c1, c2, n, e } => {
                    let c = stored_width(ws, &format!("{p}.cv1.conv.weight"), 2 * ((c1 as f64 * e) as usize)) / 2;
                    Layer::C2psa(C2psa {
                        c,
                        cv1: ConvBn::load(ws, &format!("{p}.cv1"), c1, 2 * c, 1, 1, 1, true)?,
                        cv2: ConvBn::load(ws, &format!("{p}.cv2"), 2 * c, c2, 1, 1, 1, true)?,
                        m: (0..n).map(|j| PsaBlock::load(ws, &format!("{p}.m.{j}"), c)).collect::<Result<_>>()?,
                    })
                }
                &LayerSpec::Upsample { scale } => Layer::Upsample(scale),
                LayerSpec::Concat => Layer::Concat,
                LayerSpec::Detect { nc, ch, .. } => Layer::Detect(Box::new(Detect::load(ws, &p, *nc, ch, strides.clone())?)),
            };
            layers.push(layer);
        }
        ws.finish()?;
        let mut last_use: Vec<usize> = (0..plan.layers.len()).collect();
        for (i, node) in plan.layers.iter().enumerate() {
            for &f in &node.from {
                if f != usize::MAX {
                    last_use[f] = last_use[f].max(i);
                }
            }
        }
        Ok(Self { plan, layers, last_use })
    }

    /// Number of classes.
    pub fn nc(&self) -> usize {
        self.plan.nc
    }

    /// The detection head.
    pub fn detect(&self) -> &Detect {
        match self.layers.last() {
            Some(Layer::Detect(d)) => d,
            _ => unreachable!("a loaded model always ends with Detect"),
        }
    }

    /// Runs the network on a batch `(n, 3, h, w)` (h, w multiples of 32) and returns the raw
    /// output of the chosen head branches. `observe` sees every layer's output (for debugging
    /// and per-layer comparisons with the reference).
    ///
    /// In a quantized model, activations stay `u8` between INT8 layers (see [`Yolo26::forward`]); an
    /// observed quantized output is dequantized for `observe`.
    pub fn forward_observed(&self, x: &Tensor, mode: HeadMode, observe: &mut dyn FnMut(usize, &Tensor)) -> HeadOutput {
        if observing() {
            return self.forward_to_head_layerwise(x, observe, |d, feats| d.forward(feats, mode));
        }
        self.forward_to_head(x, Some(observe), |d, feats| d.forward_acts(feats, mode))
    }

    /// Runs the network once and returns the raw outputs of both head branch pairs,
    /// `(one-to-many, one-to-one)`, with eval-mode BatchNorm (for validation losses).
    pub fn forward_both(&self, x: &Tensor) -> (HeadOutput, HeadOutput) {
        if observing() {
            return self.forward_to_head_layerwise(x, &mut |_, _| {}, |d, feats| (d.forward(feats, HeadMode::OneToMany), d.forward(feats, HeadMode::OneToOne)));
        }
        self.forward_to_head(x, None, |d, feats| (d.forward_acts(feats, HeadMode::OneToMany), d.forward_acts(feats, HeadMode::OneToOne)))
    }

    /// [`Yolo26::forward`] with every activation in f32 between layers: each INT8 convolution
    /// quantizes its own input with its calibrated parameters and writes f32 (only consecutive
    /// convolutions inside a block pass `u8`). What calibration observes, and the reference the
    /// `u8` dataflow of [`Yolo26::forward`] is tested against. The same as `forward` for a float model.
    pub fn forward_layerwise(&self, x: &Tensor, mode: HeadMode) -> HeadOutput {
        self.forward_to_head_layerwise(x, &mut |_, _| {}, |d, feats| d.forward(feats, mode))
    }

    /// For each layer, the format its readers want its output in (see [`Want`]). Readers come after
    /// the layers they read, so one backward sweep settles every entry before it is used.
    fn output_wants(&self) -> Vec<Want> {
        let mut wants = vec![Want::Any; self.layers.len()];
        for (i, (layer, node)) in self.layers.iter().zip(&self.plan.layers).enumerate().rev() {
            for (k, &f) in node.from.iter().enumerate() {
                if f == usize::MAX {
                    continue;
                }
                let w = match layer {
                    Layer::Conv(c) => c.input_want(),
                    Layer::C3k2(c) => c.input_want(),
                    Layer::Sppf(s) => s.cv1.input_want(),
                    Layer::C2psa(c) => c.cv1.input_want(),
                    Layer::Upsample(_) | Layer::Concat => wants[i],
                    Layer::Detect(d) => d.input_want(k),
                };
                wants[f] = wants[f].and(w);
            }
        }
        // The parts of a concatenation (and what an upsampling before it reads) must share one
        // format to be concatenated as u8 planes: join them (transitively: a tensor may feed two
        // concatenations) and give each group the combination of its members' wants.
        let mut group: Vec<usize> = (0..self.layers.len()).collect();
        fn root(group: &mut [usize], mut i: usize) -> usize {
            while group[i] != i {
                group[i] = group[group[i]];
                i = group[i];
            }
            i
        }
        for (i, (layer, node)) in self.layers.iter().zip(&self.plan.layers).enumerate() {
            if matches!(layer, Layer::Concat | Layer::Upsample(_)) {
                for &f in node.from.iter().filter(|&&f| f != usize::MAX) {
                    let (a, b) = (root(&mut group, i), root(&mut group, f));
                    group[a] = b;
                }
            }
        }
        let mut joined = vec![Want::Any; self.layers.len()];
        for (i, &w) in wants.iter().enumerate() {
            let r = root(&mut group, i);
            joined[r] = joined[r].and(w);
        }
        for (i, w) in wants.iter_mut().enumerate() {
            // A concatenation's output joins its parts; so do the layers it is read by only through it.
            *w = joined[root(&mut group, i)];
        }
        wants
    }

    /// The network up to the Detect layer, whose input features go to `head`, with the `u8`
    /// dataflow: each layer writes its output in the format its readers want ([`Yolo26::output_wants`]).
    fn forward_to_head<R>(&self, x: &Tensor, mut observe: Option<&mut LayerObserver>, head: impl FnOnce(&Detect, &[&Act]) -> R) -> R {
        let wants = self.output_wants();
        let input_act = Act::Input(x);
        let mut outputs: Vec<Option<Act>> = (0..self.layers.len()).map(|_| None).collect();
        let mut prev: Option<Act> = None;
        for (i, (layer, node)) in self.layers.iter().zip(&self.plan.layers).enumerate() {
            let input = |k: usize| -> &Act {
                let f = node.from[k];
                if f == usize::MAX {
                    &input_act
                } else if f + 1 == i && outputs[f].is_none() {
                    prev.as_ref().expect("previous output")
                } else {
                    outputs[f].as_ref().expect("saved output")
                }
            };
            let want = wants[i];
            let y: Act = match layer {
                Layer::Conv(c) => c.forward_act(input(0), want),
                Layer::C3k2(c) => c.forward_act(input(0), want),
                Layer::Sppf(s) => s.forward_act(input(0), want),
                Layer::C2psa(c) => c.forward_act(input(0), want),
                Layer::Upsample(s) => match input(0) {
                    Act::Q(q) => Act::Q(upsample_nearest_quantized(q, *s)),
                    other => Act::F32(engine::upsample_nearest(&other.f32(), *s)),
                },
                Layer::Concat => {
                    let parts: Vec<&Act> = (0..node.from.len()).map(input).collect();
                    concat_acts(&parts)
                }
                Layer::Detect(d) => {
                    let feats: Vec<&Act> = (0..node.from.len()).map(input).collect();
                    return head(d, &feats);
                }
            };
            if let Some(observe) = observe.as_mut() {
                observe(i, &y.f32());
            }
            self.advance(i, &mut outputs, &mut prev, y);
        }
        unreachable!("a loaded model always ends with Detect")
    }

    /// After layer `i` produced `y`: frees the outputs no later layer reads, keeps the previous
    /// layer's output where a later layer still reads it, and makes `y` the previous output.
    fn advance<T>(&self, i: usize, outputs: &mut [Option<T>], prev: &mut Option<T>, y: T) {
        for (j, out) in outputs.iter_mut().enumerate().take(i) {
            if self.last_use[j] <= i {
                *out = None;
            }
        }
        if let Some(p) = prev.take() {
            if self.last_use[i - 1] > i {
                outputs[i - 1] = Some(p);
            }
        }
        *prev = Some(y);
    }

    /// The network up to the Detect layer with f32 activations between layers (see
    /// [`Yolo26::forward_layerwise`]).
    fn forward_to_head_layerwise<R>(&self, x: &Tensor, observe: &mut dyn FnMut(usize, &Tensor), head: impl FnOnce(&Detect, &[&Tensor]) -> R) -> R {
        let mut outputs: Vec<Option<Tensor>> = vec![None; self.layers.len()];
        let mut prev: Option<Tensor> = None;
        for (i, (layer, node)) in self.layers.iter().zip(&self.plan.layers).enumerate() {
            let input = |k: usize| -> &Tensor {
                let f = node.from[k];
                if f == usize::MAX {
                    x
                } else if f + 1 == i && outputs[f].is_none() {
                    prev.as_ref().expect("previous output")
                } else {
                    outputs[f].as_ref().expect("saved output")
                }
            };
            let y = match layer {
                Layer::Conv(c) => c.forward(input(0)),
                Layer::C3k2(c) => c.forward(input(0)),
                Layer::Sppf(s) => s.forward(input(0)),
                Layer::C2psa(c) => c.forward(input(0)),
                Layer::Upsample(s) => engine::upsample_nearest(input(0), *s),
                Layer::Concat => {
                    let parts: Vec<&Tensor> = (0..node.from.len()).map(input).collect();
                    engine::concat_channels(&parts)
                }
                Layer::Detect(d) => {
                    let feats: Vec<&Tensor> = (0..node.from.len()).map(input).collect();
                    return head(d, &feats);
                }
            };
            observe(i, &y);
            self.advance(i, &mut outputs, &mut prev, y);
        }
        unreachable!("a loaded model always ends with Detect")
    }

    /// Floating-point operations per layer for one `h × w` image, counting one Detect branch
    /// pair (what inference runs; training runs both, twice the Detect entry).
    pub fn layer_flops(&self, h: usize, w: usize) -> Vec<u64> {
        let mut sizes: Vec<(usize, usize)> = Vec::with_capacity(self.layers.len());
        let mut flops = Vec::with_capacity(self.layers.len());
        for (layer, node) in self.layers.iter().zip(&self.plan.layers) {
            let size_of = |f: usize| if f == usize::MAX { (h, w) } else { sizes[f] };
            let (ih, iw) = size_of(node.from[0]);
            let (f, out) = match layer {
                Layer::Conv(c) => (c.flops(ih, iw), c.out_size(ih, iw)),
                Layer::C3k2(c) => (c.flops(ih, iw), (ih, iw)),
                Layer::Sppf(s) => (s.flops(ih, iw), (ih, iw)),
                Layer::C2psa(c) => (c.flops(ih, iw), (ih, iw)),
                Layer::Upsample(s) => (0, (ih * s, iw * s)),
                Layer::Concat => (0, (ih, iw)),
                Layer::Detect(d) => (d.flops(&node.from.iter().map(|&f| size_of(f)).collect::<Vec<_>>()), (0, 0)),
            };
            flops.push(f);
            sizes.push(out);
        }
        flops
    }

    /// Runs the network (see [`Yolo26::forward_observed`]). In a quantized model activations stay
    /// `u8` between INT8 layers: each layer writes its output in the format its readers want (`u8`
    /// with parameters covering every INT8 reader's calibrated range, f32 where a float layer reads
    /// it), and concatenation, slicing, upsampling, max pooling and residual additions work on `u8`.
    /// A float model computes exactly as [`Yolo26::forward_layerwise`].
    pub fn forward(&self, x: &Tensor, mode: HeadMode) -> HeadOutput {
        if observing() {
            return self.forward_layerwise(x, mode);
        }
        self.forward_to_head(x, None, |d, feats| d.forward_acts(feats, mode))
    }
}
