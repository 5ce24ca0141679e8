//! Pruning of YOLO26 checkpoints (the reference has none; see YOLO26.md §6).
//!
//! - [`prune_unstructured`] zeroes the smallest-magnitude convolution weights. Shapes stay, so
//!   the file and the dense kernels' speed do not change; it measures how much accuracy a given
//!   sparsity costs and prepares weights for sparse formats.
//! - [`prune_channels`] removes whole channels: the output rows of a convolution, its BatchNorm
//!   entries and the matching input slices of every layer that reads them. The result is a
//!   smaller, faster checkpoint whose kept values are exactly the source's.
//!
//! Channel pruning only narrows widths inside a layer: every layer's output width stays as the
//! config says, because those outputs meet residual adds (SPPF, C2PSA, the PSA blocks),
//! concatenations across layers and the Detect inputs. Inside a layer, channels tied by a
//! residual add are pruned together (a Bottleneck's output shares its input's channels), and
//! the parts that must keep one width (C3k2's two halves and its block outputs; C3k's two
//! branches) lose the same number of channels. Attention's q/k/v/head layout is left alone, and
//! with it the residual stream of the PSA blocks.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use anyhow::{anyhow, bail, Context, Result};

use crate::model::{self, config, LayerSpec};
use crate::weights::{Checkpoint, StoredTensor, TensorValues};

/// BatchNorm epsilon (the effective weight of a Conv is `w·γ/√(σ²+ε)`).
const BN_EPS: f32 = model::yolo26::BN_EPS;

/// Image side used for the FLOP counts in the reports.
pub const REPORT_IMGSZ: usize = 640;

// ---------------------------------------------------------------------------------------------
// Unstructured (magnitude) pruning

/// Where the magnitude threshold is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparsityScope {
    /// One threshold over all prunable weights: layers with small effective weights lose more.
    Global,
    /// Each layer loses the same fraction.
    PerLayer,
}

/// Sparsity of one convolution weight after pruning.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSparsity {
    /// The weight tensor's name (`model.3.conv.weight`).
    pub name: String,
    pub numel: usize,
    pub zeros: usize,
}

impl LayerSparsity {
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.numel.max(1) as f64
    }
}

/// What [`prune_unstructured`] did.
#[derive(Clone, Debug)]
pub struct SparsityReport {
    pub target: f64,
    pub scope: SparsityScope,
    /// Every pruned weight, in checkpoint order.
    pub layers: Vec<LayerSparsity>,
    /// Convolution weights left dense, with the reason.
    pub skipped: Vec<(String, &'static str)>,
}

impl SparsityReport {
    /// Zeros over all pruned weights.
    pub fn achieved(&self) -> f64 {
        let (z, n) = self.layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.numel));
        z as f64 / n.max(1) as f64
    }
}

impl fmt::Display for SparsityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<44} {:>10} {:>9}", "weight", "numel", "sparsity")?;
        for l in &self.layers {
            writeln!(f, "{:<44} {:>10} {:>8.1}%", l.name, l.numel, 100.0 * l.sparsity())?;
        }
        for (name, why) in &self.skipped {
            writeln!(f, "{name:<44} left dense: {why}")?;
        }
        write!(f, "sparsity {:.2}% of the pruned weights (target {:.2}%, {:?})", 100.0 * self.achieved(), 100.0 * self.target, self.scope)
    }
}

/// Why a convolution weight is left dense by [`prune_unstructured`], if it is.
fn dense_reason(name: &str, detect: usize) -> Option<&'static str> {
    if name == "model.0.conv.weight" {
        return Some("first conv: 432-odd weights that see the raw image; every one carries much signal");
    }
    if name.starts_with(&format!("model.{detect}.")) && !name.ends_with(".conv.weight") {
        return Some("Detect output conv: it writes the boxes and class logits directly");
    }
    None
}

fn f32_values<'a>(ckpt: &'a Checkpoint, name: &str) -> Result<&'a [f32]> {
    let t = ckpt.tensor(name).ok_or_else(|| anyhow!("{}: tensor '{name}' is missing", ckpt.source.display()))?;
    t.values.as_f32().ok_or_else(|| anyhow!("{}: tensor '{name}' is not floating point", ckpt.source.display()))
}

/// Per-output-channel BatchNorm scale `|γ|/√(σ²+ε)` of the Conv block owning `weight_name`
/// (`…conv.weight`), or ones for a plain conv.
fn bn_scale(ckpt: &Checkpoint, weight_name: &str, c_out: usize) -> Result<Vec<f32>> {
    let Some(prefix) = weight_name.strip_suffix(".conv.weight") else { return Ok(vec![1.0; c_out]) };
    let gamma = f32_values(ckpt, &format!("{prefix}.bn.weight"))?;
    let var = f32_values(ckpt, &format!("{prefix}.bn.running_var"))?;
    if gamma.len() != c_out || var.len() != c_out {
        bail!("{}: BatchNorm of '{weight_name}' does not have {c_out} channels", ckpt.source.display());
    }
    Ok(gamma.iter().zip(var).map(|(g, v)| g.abs() / (v + BN_EPS).sqrt()).collect())
}

/// Zeroes the fraction `sparsity` of the convolution weights with the smallest effective
/// magnitude `|w|·|γ|/√(σ²+ε)` (the weight after BatchNorm folding, so that layers with
/// different BatchNorm scales are compared fairly). BatchNorm parameters and biases are never
/// touched; the first conv and the Detect output convs stay dense (see [`SparsityReport::skipped`]).
///
/// # Errors
/// If `sparsity` is not in `[0, 1)` or the checkpoint is not a YOLO26 model with BatchNorm.
pub fn prune_unstructured(ckpt: &Checkpoint, sparsity: f64, scope: SparsityScope) -> Result<(Checkpoint, SparsityReport)> {
    if !(0.0..1.0).contains(&sparsity) {
        bail!("sparsity={sparsity} must be in [0, 1)");
    }
    let src = ckpt.source.display().to_string();
    model::from_checkpoint(ckpt).with_context(|| format!("{src}: not a loadable YOLO26 checkpoint"))?;
    let detect = ckpt_plan(ckpt)?.layers.len() - 1;
    let mut skipped = Vec::new();
    // (tensor index, effective magnitudes)
    let mut targets: Vec<(usize, Vec<f32>)> = Vec::new();
    for (i, (name, t)) in ckpt.tensors.iter().enumerate() {
        let is_conv = t.shape.len() == 4 && name.ends_with(".weight");
        if !is_conv {
            continue;
        }
        if let Some(why) = dense_reason(name, detect) {
            skipped.push((name.clone(), why));
            continue;
        }
        let w = f32_values(ckpt, name)?;
        let scale = bn_scale(ckpt, name, t.shape[0])?;
        let per_out = w.len() / t.shape[0];
        targets.push((i, w.iter().enumerate().map(|(k, v)| v.abs() * scale[k / per_out]).collect()));
    }
    // Threshold and how many weights exactly at it may still go (ties are rare, but a
    // checkpoint with many exact zeros has them): one budget for the model or one per layer.
    let mut global = match scope {
        SparsityScope::Global => Some(threshold_and_ties(targets.iter().flat_map(|(_, s)| s.iter().copied()).collect(), sparsity)),
        SparsityScope::PerLayer => None,
    };
    let mut out = ckpt.clone();
    let mut layers = Vec::with_capacity(targets.len());
    for (i, scores) in targets {
        let (name, t) = &mut out.tensors[i];
        let TensorValues::F32(w) = &mut t.values else { unreachable!("checked floating point above") };
        let mut local = if global.is_none() { Some(threshold_and_ties(scores.clone(), sparsity)) } else { None };
        let (threshold, ties_left) = global.as_mut().or(local.as_mut()).expect("one of the two");
        for (v, s) in w.iter_mut().zip(&scores) {
            if *s < *threshold {
                *v = 0.0;
            } else if *s == *threshold && *ties_left > 0 {
                *ties_left -= 1;
                *v = 0.0;
            }
        }
        let zeros = w.iter().filter(|v| **v == 0.0).count();
        layers.push(LayerSparsity { name: name.clone(), numel: w.len(), zeros });
    }
    Ok((out, SparsityReport { target: sparsity, scope, layers, skipped }))
}

/// For zeroing the fraction `fraction` of `values` (the smallest): the threshold (values below
/// it go) and how many values equal to it go too.
fn threshold_and_ties(mut values: Vec<f32>, fraction: f64) -> (f32, usize) {
    let count = ((values.len() as f64) * fraction).round() as usize;
    if count == 0 {
        return (f32::NEG_INFINITY, 0);
    }
    let (below, kth, _) = values.select_nth_unstable_by(count - 1, f32::total_cmp);
    let kth = *kth;
    let strictly_below = below.iter().filter(|v| **v < kth).count();
    (kth, count - strictly_below)
}

// ---------------------------------------------------------------------------------------------
// Structured (channel) pruning

/// How channels are ranked within a group (lowest pruned first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelCriterion {
    /// The BatchNorm scale `|γ|` (network slimming): a channel with `γ ≈ 0` outputs a constant.
    BnScale,
    /// The L2 norm of the channel's convolution filter.
    FilterNorm,
}

/// A set of channels that must be removed together: the outputs of one or more convolutions
/// (several when a residual add sums them into the same channels), carried through depthwise
/// convolutions, and read as input slices by other convolutions.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelGroup {
    /// Where the channels live, e.g. `model.6.m.0.cv1 (C3k branch)`.
    pub name: String,
    pub width: usize,
    /// Conv blocks (prefix, e.g. `model.2.cv1`) whose output channels `offset..offset + width`
    /// are this group's.
    pub producers: Vec<(String, usize)>,
    /// Depthwise Conv blocks (prefix) that map each of these channels to itself.
    pub passthrough: Vec<String>,
    /// Convolution weights (full tensor name) reading these channels as input channels
    /// `offset..offset + width`.
    pub consumers: Vec<(String, usize)>,
    /// Groups sharing a tie number keep the same number of channels (they must keep one width).
    pub tie: Option<usize>,
    /// The producers have no activation (SPPF's cv1); otherwise SiLU.
    pub linear: bool,
}

/// The groups of one checkpoint, in layer order.
///
/// # Errors
/// If the checkpoint's config is not a YOLO26 detection model or a tensor is missing.
pub fn channel_groups(ckpt: &Checkpoint) -> Result<Vec<ChannelGroup>> {
    let plan = ckpt_plan(ckpt)?;
    let mut b = GroupBuilder { ckpt, groups: Vec::new(), ties: 0 };
    for (i, node) in plan.layers.iter().enumerate() {
        let p = format!("model.{i}");
        match &node.spec {
            &LayerSpec::C3k2 { n, c3k, attn, shortcut, .. } => b.c3k2(&p, n, c3k, attn, shortcut)?,
            &LayerSpec::Sppf { n, .. } => {
                let c_ = b.width(&format!("{p}.cv1"))?;
                let consumers = (0..=n).map(|k| (format!("{p}.cv2.conv.weight"), k * c_)).collect();
                b.push(format!("{p}.cv1 (SPPF pyramid)"), c_, vec![(format!("{p}.cv1"), 0)], vec![], consumers, None);
                b.groups.last_mut().expect("just pushed").linear = true;
            }
            &LayerSpec::C2psa { n, .. } => {
                // cv1's halves are the PSA residual stream (attention-shaped) and its twin.
                for j in 0..n {
                    b.psa_ffn(&format!("{p}.m.{j}"))?;
                }
            }
            LayerSpec::Detect { ch, .. } => {
                for branch in ["cv2", "one2one_cv2"] {
                    for l in 0..ch.len() {
                        let q = format!("{p}.{branch}.{l}");
                        b.single(&format!("{q}.0"), &format!("{q}.1.conv.weight"), "box")?;
                        b.single(&format!("{q}.1"), &format!("{q}.2.weight"), "box")?;
                    }
                }
                for branch in ["cv3", "one2one_cv3"] {
                    for l in 0..ch.len() {
                        let q = format!("{p}.{branch}.{l}");
                        let w = b.width(&format!("{q}.0.1"))?;
                        let (prod, dw) = (format!("{q}.0.1"), format!("{q}.1.0"));
                        b.push(format!("{prod} (class, through {dw})"), w, vec![(prod, 0)], vec![dw], vec![(format!("{q}.1.1.conv.weight"), 0)], None);
                        b.single(&format!("{q}.1.1"), &format!("{q}.2.weight"), "class")?;
                    }
                }
            }
            LayerSpec::Conv { .. } | LayerSpec::Upsample { .. } | LayerSpec::Concat => {}
        }
    }
    Ok(b.groups)
}

struct GroupBuilder<'a> {
    ckpt: &'a Checkpoint,
    groups: Vec<ChannelGroup>,
    ties: usize,
}

impl GroupBuilder<'_> {
    /// Output channels of the Conv block `prefix`.
    fn width(&self, prefix: &str) -> Result<usize> {
        let name = format!("{prefix}.conv.weight");
        let t = self.ckpt.tensor(&name).ok_or_else(|| anyhow!("{}: tensor '{name}' is missing", self.ckpt.source.display()))?;
        t.shape.first().copied().ok_or_else(|| anyhow!("{}: tensor '{name}' is a scalar", self.ckpt.source.display()))
    }

    fn has(&self, prefix: &str) -> bool {
        self.ckpt.tensor(&format!("{prefix}.conv.weight")).is_some()
    }

    fn new_tie(&mut self) -> usize {
        self.ties += 1;
        self.ties
    }

    fn push(&mut self, name: String, width: usize, producers: Vec<(String, usize)>, passthrough: Vec<String>, consumers: Vec<(String, usize)>, tie: Option<usize>) {
        self.groups.push(ChannelGroup { name, width, producers, passthrough, consumers, tie, linear: false });
    }

    /// One conv's outputs read by one conv.
    fn single(&mut self, producer: &str, consumer: &str, what: &str) -> Result<()> {
        let w = self.width(producer)?;
        self.push(format!("{producer} ({what})"), w, vec![(producer.to_string(), 0)], vec![], vec![(consumer.to_string(), 0)], None);
        Ok(())
    }

    fn bottleneck_hidden(&mut self, q: &str) -> Result<()> {
        self.single(&format!("{q}.cv1"), &format!("{q}.cv2.conv.weight"), "Bottleneck hidden")
    }

    fn psa_ffn(&mut self, q: &str) -> Result<()> {
        self.single(&format!("{q}.ffn.0"), &format!("{q}.ffn.1.conv.weight"), "PSA ffn hidden")
    }

    fn c3k(&mut self, q: &str, shortcut: bool) -> Result<()> {
        let tie = Some(self.new_tie());
        let (wa, wb) = (self.width(&format!("{q}.cv1"))?, self.width(&format!("{q}.cv2"))?);
        let mut stream = ChannelGroup {
            name: format!("{q}.cv1 (C3k branch)"),
            width: wa,
            producers: vec![(format!("{q}.cv1"), 0)],
            passthrough: vec![],
            consumers: vec![],
            tie,
            linear: false,
        };
        let mut k = 0;
        while self.has(&format!("{q}.m.{k}.cv1")) {
            let r = format!("{q}.m.{k}");
            self.bottleneck_hidden(&r)?;
            stream.consumers.push((format!("{r}.cv1.conv.weight"), 0));
            if shortcut {
                stream.producers.push((format!("{r}.cv2"), 0));
            } else {
                self.groups.push(stream);
                stream = ChannelGroup {
                    name: format!("{r}.cv2 (C3k branch)"),
                    width: wa,
                    producers: vec![(format!("{r}.cv2"), 0)],
                    passthrough: vec![],
                    consumers: vec![],
                    tie,
                    linear: false,
                };
            }
            k += 1;
        }
        stream.consumers.push((format!("{q}.cv3.conv.weight"), 0));
        self.groups.push(stream);
        self.push(format!("{q}.cv2 (C3k skip branch)"), wb, vec![(format!("{q}.cv2"), 0)], vec![], vec![(format!("{q}.cv3.conv.weight"), wa)], tie);
        Ok(())
    }

    fn c3k2(&mut self, p: &str, n: usize, c3k: bool, attn: bool, shortcut: bool) -> Result<()> {
        if attn {
            // The split's second half runs through a PSA block whose residual stream has the
            // attention's width; only the blocks' hidden widths can go.
            for j in 0..n {
                self.bottleneck_hidden(&format!("{p}.m.{j}.0"))?;
                self.psa_ffn(&format!("{p}.m.{j}.1"))?;
            }
            return Ok(());
        }
        let cv1 = self.width(&format!("{p}.cv1"))?;
        if cv1 % 2 != 0 {
            bail!("{}: '{p}.cv1' has {cv1} output channels; C3k2 splits it in two equal halves", self.ckpt.source.display());
        }
        let c = cv1 / 2;
        let tie = Some(self.new_tie());
        let cv2 = format!("{p}.cv2.conv.weight");
        self.push(format!("{p}.cv1 (C3k2 first half)"), c, vec![(format!("{p}.cv1"), 0)], vec![], vec![(cv2.clone(), 0)], tie);
        let mut stream = ChannelGroup {
            name: format!("{p}.cv1 (C3k2 second half)"),
            width: c,
            producers: vec![(format!("{p}.cv1"), c)],
            passthrough: vec![],
            consumers: vec![(cv2.clone(), c)],
            tie,
            linear: false,
        };
        for j in 0..n {
            let q = format!("{p}.m.{j}");
            let cat_offset = (2 + j) * c;
            if c3k {
                stream.consumers.push((format!("{q}.cv1.conv.weight"), 0));
                stream.consumers.push((format!("{q}.cv2.conv.weight"), 0));
                self.groups.push(stream);
                self.c3k(&q, shortcut)?;
                stream = ChannelGroup {
                    name: format!("{q}.cv3 (C3k2 block output)"),
                    width: c,
                    producers: vec![(format!("{q}.cv3"), 0)],
                    passthrough: vec![],
                    consumers: vec![(cv2.clone(), cat_offset)],
                    tie,
                    linear: false,
                };
            } else {
                self.bottleneck_hidden(&q)?;
                stream.consumers.push((format!("{q}.cv1.conv.weight"), 0));
                if shortcut {
                    // x + cv2(cv1(x)): the block output shares its input's channels.
                    stream.producers.push((format!("{q}.cv2"), 0));
                    stream.consumers.push((cv2.clone(), cat_offset));
                } else {
                    self.groups.push(stream);
                    stream = ChannelGroup {
                        name: format!("{q}.cv2 (C3k2 block output)"),
                        width: c,
                        producers: vec![(format!("{q}.cv2"), 0)],
                        passthrough: vec![],
                        consumers: vec![(cv2.clone(), cat_offset)],
                        tie,
                        linear: false,
                    };
                }
            }
        }
        self.groups.push(stream);
        Ok(())
    }
}

fn ckpt_plan(ckpt: &Checkpoint) -> Result<model::ModelPlan> {
    let plan = config::resolve(&ckpt.model_yaml, None, None).with_context(|| format!("{}: embedded model config", ckpt.source.display()))?;
    if !matches!(plan.layers.last().map(|l| &l.spec), Some(LayerSpec::Detect { .. })) {
        bail!("{}: the model config does not end with Detect", ckpt.source.display());
    }
    Ok(plan)
}

/// Importance of each channel of `g` (higher is kept).
fn channel_importance(ckpt: &Checkpoint, g: &ChannelGroup, criterion: ChannelCriterion) -> Result<Vec<f32>> {
    // Per channel: a score of each Conv block at its offset.
    let score_of = |prefix: &str, offset: usize| -> Result<Vec<f32>> {
        Ok(match criterion {
            ChannelCriterion::BnScale => f32_values(ckpt, &format!("{prefix}.bn.weight"))?[offset..offset + g.width].iter().map(|v| v.abs()).collect(),
            ChannelCriterion::FilterNorm => {
                let name = format!("{prefix}.conv.weight");
                let w = f32_values(ckpt, &name)?;
                let rows = ckpt.tensor(&name).map_or(1, |t| t.shape[0]);
                let per_out = w.len() / rows;
                (offset..offset + g.width).map(|o| w[o * per_out..(o + 1) * per_out].iter().map(|v| v * v).sum::<f32>().sqrt()).collect()
            }
        })
    };
    // Residual producers add into the channel: sum. Depthwise pass-throughs scale it: product.
    let mut total = vec![0.0f32; g.width];
    for (prefix, offset) in &g.producers {
        total.iter_mut().zip(score_of(prefix, *offset)?).for_each(|(t, s)| *t += s);
    }
    for prefix in &g.passthrough {
        total.iter_mut().zip(score_of(prefix, 0)?).for_each(|(t, s)| *t *= s);
    }
    Ok(total)
}

/// Options for [`prune_channels_with`].
#[derive(Clone, Debug)]
pub struct ChannelPruneOptions {
    /// Fraction of each group's channels removed (rounded; each group keeps at least one).
    pub ratio: f64,
    pub criterion: ChannelCriterion,
    /// Round every kept width up to a multiple of this (1: no rounding). Multiples of 8 suit the
    /// SIMD kernels; rounding keeps a few more channels than `ratio` asks.
    pub multiple: usize,
    /// Fold each removed channel's typical output (its BatchNorm shift through the activation,
    /// which is what a low-`γ` channel nearly always outputs) into the consumers' BatchNorm mean
    /// or bias, instead of dropping it as if it were zero. Exact for constant channels except at
    /// the zero-padded borders of 3×3 consumers; the kept weights stay the source's. Channels
    /// of residual chains (several producers) are not compensated.
    pub compensate: bool,
}

/// One group in a [`PruneReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct GroupOutcome {
    pub name: String,
    pub before: usize,
    pub after: usize,
}

/// What [`prune_channels`] did, with the sizes before and after.
#[derive(Clone, Debug)]
pub struct PruneReport {
    pub ratio: f64,
    pub criterion: ChannelCriterion,
    pub groups: Vec<GroupOutcome>,
    pub params_before: usize,
    pub params_after: usize,
    /// FLOPs of one [`REPORT_IMGSZ`]² image (one Detect branch pair, as inference runs).
    pub flops_before: u64,
    pub flops_after: u64,
}

impl PruneReport {
    /// Channels in all groups, before and after.
    pub fn prunable_channels(&self) -> (usize, usize) {
        self.groups.iter().fold((0, 0), |(b, a), g| (b + g.before, a + g.after))
    }
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<56} {:>6} {:>6}", "channel group", "before", "after")?;
        for g in &self.groups {
            writeln!(f, "{:<56} {:>6} {:>6}", g.name, g.before, g.after)?;
        }
        let (b, a) = self.prunable_channels();
        writeln!(f, "prunable channels {b} -> {a} ({:.1}% removed, ratio {}, {:?})", 100.0 * (b - a) as f64 / b.max(1) as f64, self.ratio, self.criterion)?;
        writeln!(f, "parameters {} -> {} ({:.1}% fewer)", self.params_before, self.params_after, 100.0 * (1.0 - self.params_after as f64 / self.params_before.max(1) as f64))?;
        write!(
            f,
            "GFLOPs at {REPORT_IMGSZ} {:.2} -> {:.2} ({:.1}% fewer)",
            self.flops_before as f64 / 1e9,
            self.flops_after as f64 / 1e9,
            100.0 * (1.0 - self.flops_after as f64 / self.flops_before.max(1) as f64)
        )
    }
}

/// [`prune_channels_with`] as a pure selection: kept widths not rounded, no compensation.
pub fn prune_channels(ckpt: &Checkpoint, ratio: f64, criterion: ChannelCriterion) -> Result<(Checkpoint, PruneReport)> {
    prune_channels_with(ckpt, &ChannelPruneOptions { ratio, criterion, multiple: 1, compensate: false })
}

/// Removes the fraction `ratio` of the channels of every [`ChannelGroup`] (the lowest by
/// `criterion`), from the producing convolutions (weight rows and BatchNorm entries), the
/// depthwise convolutions carrying them and the input slices of every consumer. Every kept
/// value is the source's; shapes shrink. Tied groups lose the same number of channels.
///
/// # Errors
/// If `ratio` is not in `[0, 1)`, `multiple` is 0, or the checkpoint is not a loadable YOLO26
/// model with BatchNorm (a fused model cannot be ranked by BatchNorm scale).
pub fn prune_channels_with(ckpt: &Checkpoint, opts: &ChannelPruneOptions) -> Result<(Checkpoint, PruneReport)> {
    if !(0.0..1.0).contains(&opts.ratio) {
        bail!("ratio={} must be in [0, 1)", opts.ratio);
    }
    if opts.multiple == 0 {
        bail!("the kept-width multiple must be at least 1");
    }
    let src = ckpt.source.display().to_string();
    let (before_model, _) = model::from_checkpoint(ckpt).with_context(|| format!("{src}: not a loadable YOLO26 checkpoint"))?;
    let groups = channel_groups(ckpt)?;

    // Width kept per tie (and per untied group): tied groups have one width.
    let keep_of = |width: usize| -> usize {
        let removed = (width as f64 * opts.ratio).round() as usize;
        let kept = width.saturating_sub(removed).max(1);
        kept.div_ceil(opts.multiple).saturating_mul(opts.multiple).min(width)
    };
    let mut tie_width: HashMap<usize, usize> = HashMap::new();
    for g in &groups {
        if let Some(t) = g.tie {
            if *tie_width.entry(t).or_insert(g.width) != g.width {
                bail!("{src}: '{}' has {} channels but the channels tied to it have {}", g.name, g.width, tie_width[&t]);
            }
        }
    }

    // Tensor name → (rows to drop, input channels to drop), absolute indices.
    let mut drops: HashMap<String, (BTreeSet<usize>, BTreeSet<usize>)> = HashMap::new();
    // Tensor name → values added (consumers' BatchNorm mean or bias), for compensation.
    let mut shifts: HashMap<String, Vec<f32>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(groups.len());
    for g in &groups {
        let kept = keep_of(g.width);
        let importance = channel_importance(ckpt, g, opts.criterion).with_context(|| format!("{src}: ranking '{}'", g.name))?;
        let mut order: Vec<usize> = (0..g.width).collect();
        // Lowest first; index breaks ties so the result does not depend on the sort.
        order.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]).then(a.cmp(&b)));
        let removed: Vec<usize> = order[..g.width - kept].to_vec();
        outcomes.push(GroupOutcome { name: g.name.clone(), before: g.width, after: kept });
        if removed.is_empty() {
            continue;
        }
        for (prefix, offset) in &g.producers {
            for t in conv_block_tensors(prefix) {
                drops.entry(t).or_default().0.extend(removed.iter().map(|r| offset + r));
            }
        }
        for prefix in &g.passthrough {
            for t in conv_block_tensors(prefix) {
                drops.entry(t).or_default().0.extend(removed.iter().copied());
            }
        }
        for (weight, offset) in &g.consumers {
            drops.entry(weight.clone()).or_default().1.extend(removed.iter().map(|r| offset + r));
        }
        // Residual groups are left out: their consumers along the chain see different partial
        // sums of the producers, which one value per channel cannot describe.
        if opts.compensate && g.producers.len() == 1 {
            let typical = typical_outputs(ckpt, g, &removed).with_context(|| format!("{src}: compensating '{}'", g.name))?;
            for (weight, offset) in &g.consumers {
                let (target, delta) = consumer_shift(ckpt, weight, *offset, &removed, &typical)?;
                let acc = shifts.entry(target).or_insert_with(|| vec![0.0; delta.len()]);
                acc.iter_mut().zip(&delta).for_each(|(a, d)| *a += d);
            }
        }
    }

    let mut out = ckpt.clone();
    for (name, t) in &mut out.tensors {
        // Shifts first: they are indexed by the consumer's full output width.
        if let Some(delta) = shifts.remove(name.as_str()) {
            let TensorValues::F32(v) = &mut t.values else { bail!("{src}: '{name}' is not floating point") };
            v.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);
        }
        if let Some((rows, inputs)) = drops.remove(name.as_str()) {
            drop_channels(t, 0, &rows).with_context(|| format!("{src}: '{name}' output channels"))?;
            drop_channels(t, 1, &inputs).with_context(|| format!("{src}: '{name}' input channels"))?;
        }
    }
    if let Some(name) = drops.keys().next() {
        bail!("{src}: tensor '{name}' is missing");
    }
    let (after_model, _) = model::from_checkpoint(&out).context("the pruned checkpoint does not load (channel surgery bug)")?;
    let flops = |m: &model::Yolo26| m.layer_flops(REPORT_IMGSZ, REPORT_IMGSZ).iter().sum::<u64>();
    let report = PruneReport {
        ratio: opts.ratio,
        criterion: opts.criterion,
        groups: outcomes,
        params_before: ckpt.parameter_count(),
        params_after: out.parameter_count(),
        flops_before: flops(&before_model),
        flops_after: flops(&after_model),
    };
    Ok((out, report))
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// What each removed channel of `g` typically outputs: at the BatchNorm input's running mean
/// every producer outputs `act(β)`; the sum goes through the depthwise pass-throughs (whose
/// interior sees a constant map).
fn typical_outputs(ckpt: &Checkpoint, g: &ChannelGroup, removed: &[usize]) -> Result<Vec<f32>> {
    let act = |x: f32| if g.linear { x } else { silu(x) };
    let mut out = vec![0.0f32; removed.len()];
    for (prefix, offset) in &g.producers {
        let beta = f32_values(ckpt, &format!("{prefix}.bn.bias"))?;
        out.iter_mut().zip(removed).for_each(|(o, &r)| *o += act(beta[offset + r]));
    }
    for prefix in &g.passthrough {
        let w = f32_values(ckpt, &format!("{prefix}.conv.weight"))?;
        let [gamma, beta, mean, var] = ["weight", "bias", "running_mean", "running_var"].map(|k| f32_values(ckpt, &format!("{prefix}.bn.{k}")));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let per = w.len() / gamma.len();
        for (o, &r) in out.iter_mut().zip(removed) {
            let z = *o * w[r * per..(r + 1) * per].iter().sum::<f32>();
            *o = silu((z - mean[r]) * gamma[r] / (var[r] + BN_EPS).sqrt() + beta[r]);
        }
    }
    Ok(out)
}

/// How much the consumer `weight` (reading the group at `offset`) loses per output channel when
/// the `removed` channels, outputting `typical`, go: returned as the tensor to add it to (the
/// BatchNorm running mean, negated, or the bias) and the values to add.
fn consumer_shift(ckpt: &Checkpoint, weight: &str, offset: usize, removed: &[usize], typical: &[f32]) -> Result<(String, Vec<f32>)> {
    let t = ckpt.tensor(weight).ok_or_else(|| anyhow!("{}: tensor '{weight}' is missing", ckpt.source.display()))?;
    let w = f32_values(ckpt, weight)?;
    let (outs, ins) = (t.shape[0], t.shape[1]);
    let k: usize = t.shape[2..].iter().product();
    let lost: Vec<f32> = (0..outs)
        .map(|o| removed.iter().zip(typical).map(|(&r, &m)| m * w[(o * ins + offset + r) * k..][..k].iter().sum::<f32>()).sum())
        .collect();
    Ok(match weight.strip_suffix(".conv.weight") {
        Some(prefix) => (format!("{prefix}.bn.running_mean"), lost.iter().map(|v| -v).collect()),
        None => (format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(weight)), lost),
    })
}

/// The per-output-channel tensors of the Conv block `prefix`.
fn conv_block_tensors(prefix: &str) -> Vec<String> {
    ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"].iter().map(|s| format!("{prefix}.{s}")).collect()
}

/// Removes indices `drop` along dimension `dim` (0: output channels, 1: input channels) of `t`.
fn drop_channels(t: &mut StoredTensor, dim: usize, drop: &BTreeSet<usize>) -> Result<()> {
    if drop.is_empty() {
        return Ok(());
    }
    let Some(&len) = t.shape.get(dim) else { bail!("has shape {:?}, no dimension {dim}", t.shape) };
    if let Some(&bad) = drop.iter().find(|&&i| i >= len) {
        bail!("channel {bad} is out of range for shape {:?}", t.shape);
    }
    let TensorValues::F32(v) = &t.values else { bail!("is not a floating-point tensor") };
    let outer: usize = t.shape[..dim].iter().product();
    let inner: usize = t.shape[dim + 1..].iter().product();
    let mut kept = Vec::with_capacity(v.len() / len * (len - drop.len()));
    for o in 0..outer {
        for c in (0..len).filter(|c| !drop.contains(c)) {
            kept.extend_from_slice(&v[(o * len + c) * inner..][..inner]);
        }
    }
    t.shape[dim] = len - drop.len();
    t.values = TensorValues::F32(kept);
    Ok(())
}
