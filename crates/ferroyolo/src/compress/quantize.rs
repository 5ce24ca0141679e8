//! Post-training INT8 quantization: calibrate activation ranges on sample images, quantize every
//! convolution's folded weights per output channel, keep in float the layers whose quantization
//! costs the most, and write a checkpoint that loads like any other (its quantized layers run on
//! the INT8 kernels of [`crate::engine::int8`]).
//!
//! What is quantized: every Conv+BatchNorm ([`ConvBn`]), as its BatchNorm-folded convolution, with
//! a `u8` input (one calibrated scale and zero point per layer) and `i8` weights (one symmetric
//! scale per output channel). What stays float: the final 1×1 convolutions of the Detect branches
//! (box distances and class logits), attention's matrix products and softmax, and the box and
//! score decoding. At inference (see `model::yolo26`) the activations between INT8 layers stay
//! `u8`, one scale and zero point per tensor covering every INT8 reader's calibrated range, so
//! concatenations, splits, upsampling, max-pooling and residual sums run on `u8` there.
//!
//! How a layer is judged: its *sensitivity* is the signal-to-quantization-noise ratio of the
//! model's raw head outputs (both heads' boxes and logits) when that layer alone runs in INT8,
//! against the float model, over the calibration images. Layers below
//! [`QuantizeOptions::min_layer_sqnr_db`], and those named in [`QuantizeOptions::keep_float`],
//! stay float.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use crate::engine::int8::{quantize_parts, QConv2d, QParams};
use crate::engine::{Activation, Tensor};
use crate::model::train::ModuleMut;
use crate::model::yolo26::{with_conv_input_observer, ConvBn, Int8Conv, QBIAS, QINPUT, QSCALE, QWEIGHT};
use crate::model::{self, HeadOutput, Yolo26};
use crate::weights::{Checkpoint, DType, StoredTensor, TensorKind, TensorValues};

/// How activation ranges are chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of the values seen at the top and its mirror at the bottom (e.g.
    /// 99.99: the 0.01% most extreme values on each side saturate).
    Percentile(f64),
}

impl Calibration {
    /// `minmax` or `percentile` (with `percentile` as the value).
    pub fn parse(method: &str, percentile: f64) -> Result<Calibration> {
        match method {
            "minmax" => Ok(Calibration::MinMax),
            "percentile" => {
                if !(50.0..=100.0).contains(&percentile) {
                    bail!("percentile must be in [50, 100], got {percentile}");
                }
                Ok(Calibration::Percentile(percentile))
            }
            other => bail!("unknown calibration method '{other}' (use minmax or percentile)"),
        }
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibration::MinMax => write!(f, "minmax"),
            Calibration::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// Options of [`quantize`].
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub calibration: Calibration,
    /// Layers (state_dict prefixes such as `model.22.m.0.1.attn.qkv`, or a prefix of several
    /// such as `model.23`) kept in float whatever their sensitivity.
    pub keep_float: Vec<String>,
    /// A layer whose INT8 version alone brings the head outputs below this SQNR (dB) stays float.
    pub min_layer_sqnr_db: f64,
    /// Whether to measure sensitivities at all (without, every layer not in `keep_float` is
    /// quantized).
    pub sensitivity: bool,
    /// Whether to correct each quantized layer's bias for the mean shift quantization causes.
    pub bias_correction: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions { calibration: Calibration::MinMax, keep_float: Vec::new(), min_layer_sqnr_db: 30.0, sensitivity: true, bias_correction: true }
    }
}

/// What happened to one convolution layer.
#[derive(Clone, Debug)]
pub struct LayerQuantization {
    /// state_dict prefix (`model.2.cv1`).
    pub name: String,
    /// The calibrated input range (after the method's clipping) and its quantization.
    pub input_range: (f32, f32),
    pub input: QParams,
    /// Head-output SQNR (dB) with this layer alone in INT8 (`None` when not measured).
    pub sqnr_db: Option<f64>,
    /// Whether the layer runs in INT8 in the result.
    pub int8: bool,
}

/// The outcome of [`quantize`].
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    pub calibration: Calibration,
    pub images: usize,
    pub layers: Vec<LayerQuantization>,
    /// Head-output SQNR (dB) of the quantized model against the float one on the calibration images.
    pub model_sqnr_db: f64,
}

impl QuantizeReport {
    /// Layers kept in float.
    pub fn float_layers(&self) -> Vec<&str> {
        self.layers.iter().filter(|l| !l.int8).map(|l| l.name.as_str()).collect()
    }

    /// Number of INT8 layers.
    pub fn int8_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.int8).count()
    }

    /// The report as it is stored in the quantized checkpoint's metadata.
    pub fn to_json(&self) -> Json {
        json!({
            "format": "int8",
            "weights": "int8 symmetric per output channel (BatchNorm folded)",
            "activations": "uint8 asymmetric per tensor",
            "calibration": self.calibration.to_string(),
            "calibration_images": self.images,
            "int8_layers": self.int8_layers(),
            "float_layers": self.float_layers(),
            "model_sqnr_db": self.model_sqnr_db,
        })
    }
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "INT8: {} of {} convolutions quantized ({} calibration, {} images); head-output SQNR {:.1} dB",
            self.int8_layers(),
            self.layers.len(),
            self.calibration,
            self.images,
            self.model_sqnr_db
        )?;
        let kept: Vec<String> = self
            .layers
            .iter()
            .filter(|l| !l.int8)
            .map(|l| match l.sqnr_db {
                Some(db) => format!("{} ({db:.1} dB)", l.name),
                None => l.name.clone(),
            })
            .collect();
        if kept.is_empty() {
            write!(f, "Kept in float: none (besides the Detect output convolutions)")
        } else {
            write!(f, "Kept in float: {}", kept.join(", "))
        }
    }
}

/// Running statistics of one layer's input.
#[derive(Clone, Debug)]
struct InputStats {
    min: f32,
    max: f32,
    /// Counts over `[min, max]` (pass 2 of the percentile method).
    hist: Vec<u64>,
}

const HIST_BINS: usize = 4096;

impl InputStats {
    fn new() -> Self {
        InputStats { min: f32::INFINITY, max: f32::NEG_INFINITY, hist: Vec::new() }
    }

    fn add_range(&mut self, v: &[f32]) {
        for &x in v {
            // NaN compares false and is ignored.
            if x < self.min {
                self.min = x;
            }
            if x > self.max {
                self.max = x;
            }
        }
    }

    fn add_hist(&mut self, v: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; HIST_BINS];
        }
        let width = (self.max - self.min).max(f32::MIN_POSITIVE);
        let k = HIST_BINS as f32 / width;
        for &x in v {
            let b = ((x - self.min) * k) as usize;
            self.hist[b.min(HIST_BINS - 1)] += 1;
        }
    }

    /// The range the method keeps.
    fn range(&self, method: Calibration) -> (f32, f32) {
        match method {
            Calibration::MinMax => (self.min, self.max),
            Calibration::Percentile(p) => {
                let total: u64 = self.hist.iter().sum();
                if total == 0 {
                    return (self.min, self.max);
                }
                let tail = ((1.0 - p / 100.0) * total as f64).floor() as u64;
                let width = (self.max - self.min) / HIST_BINS as f32;
                let (mut lo, mut acc) = (0, 0);
                while lo < HIST_BINS && acc + self.hist[lo] <= tail {
                    acc += self.hist[lo];
                    lo += 1;
                }
                let (mut hi, mut acc) = (HIST_BINS, 0);
                while hi > 0 && acc + self.hist[hi - 1] <= tail {
                    acc += self.hist[hi - 1];
                    hi -= 1;
                }
                (self.min + lo as f32 * width, self.min + hi as f32 * width)
            }
        }
    }
}

/// Every Conv+BatchNorm layer of the model with its state_dict prefix, in state_dict order.
fn conv_layers(model: &mut Yolo26) -> Vec<(String, &mut ConvBn)> {
    model
        .modules_mut()
        .into_iter()
        .filter_map(|(p, m)| match m {
            ModuleMut::ConvBn(c) => Some((p, c)),
            ModuleMut::Bias(_) => None,
        })
        .collect()
}

/// Runs `images` through `model` with every convolution's input seen by
/// `see(layer index, layer, input parts)`.
fn observe_inputs(model: &mut Yolo26, images: &[Tensor], mut see: impl FnMut(usize, &ConvBn, &[(&Tensor, Range<usize>)]) + 'static) -> Result<()> {
    let index: HashMap<usize, usize> = conv_layers(model).into_iter().enumerate().map(|(i, (_, c))| (c as *const ConvBn as usize, i)).collect();
    let missing = Rc::new(RefCell::new(false));
    let flag = missing.clone();
    let observer = Box::new(move |conv: &ConvBn, parts: &[(&Tensor, Range<usize>)]| match index.get(&(conv as *const ConvBn as usize)) {
        Some(&i) => see(i, conv, parts),
        None => *flag.borrow_mut() = true,
    });
    let model: &Yolo26 = model;
    with_conv_input_observer(observer, || {
        for x in images {
            model.forward_both(x);
        }
    });
    if *missing.borrow() {
        bail!("calibration saw a convolution that is not among the model's layers");
    }
    Ok(())
}

/// Calls `f` on every channel plane of the input parts.
fn for_planes(parts: &[(&Tensor, Range<usize>)], mut f: impl FnMut(&[f32])) {
    for (t, r) in parts {
        for img in 0..t.shape()[0] {
            for c in r.clone() {
                f(t.plane(img, c));
            }
        }
    }
}

/// Bias correction: the mean per output channel of what quantizing the layer (its input and its
/// weights) shifts its pre-activation output by, measured on the calibration inputs of the float
/// model, is added back to its bias.
fn correct_biases(model: &mut Yolo26, images: &[Tensor], int8: &mut [Int8Conv]) -> Result<()> {
    let layers: Rc<Vec<Int8Conv>> = Rc::new(int8.to_vec());
    // Per layer: the summed output shift per channel and the pixels summed over.
    type Shifts = Vec<(Vec<f64>, u64)>;
    let sums: Rc<RefCell<Shifts>> = Rc::new(RefCell::new(layers.iter().map(|q| (vec![0.0; q.conv.out_channels()], 0)).collect()));
    let (l, s) = (layers.clone(), sums.clone());
    observe_inputs(model, images, move |i, conv, parts| {
        let q = &l[i];
        let exact = conv.folded().forward_parts(parts, Activation::Identity);
        let quant = q.conv.forward(&quantize_parts(parts, q.input), Activation::Identity);
        let [n, c, h, w] = exact.shape();
        let mut s = s.borrow_mut();
        let (acc, count) = &mut s[i];
        for img in 0..n {
            for (ch, a) in acc.iter_mut().enumerate().take(c) {
                *a += exact.plane(img, ch).iter().zip(quant.plane(img, ch)).map(|(e, q)| f64::from(e - q)).sum::<f64>();
            }
        }
        *count += (n * h * w) as u64;
    })?;
    for (q, (acc, count)) in int8.iter_mut().zip(sums.borrow().iter()) {
        if *count == 0 {
            continue;
        }
        let c = &q.conv;
        let bias: Vec<f32> = c.bias().iter().zip(acc).map(|(b, a)| b + (a / *count as f64) as f32).collect();
        q.conv = QConv2d::from_quantized(c.in_channels(), c.out_channels(), c.kernel(), c.stride(), c.padding(), c.groups(), c.weight().to_vec(), c.weight_scale().to_vec(), bias)?;
    }
    Ok(())
}

/// Both heads' raw outputs, flattened (what sensitivities are measured on).
fn head_values(model: &Yolo26, x: &Tensor) -> Vec<f32> {
    let (a, b): (HeadOutput, HeadOutput) = model.forward_both(x);
    [a.boxes, a.logits, b.boxes, b.logits].concat()
}

/// Signal-to-quantization-noise ratio in dB, `10·log10(Σ ref² / Σ (out − ref)²)` over all
/// images (infinite when they are equal).
pub fn sqnr_db(reference: &[Vec<f32>], out: &[Vec<f32>]) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (r, o) in reference.iter().zip(out) {
        for (&a, &b) in r.iter().zip(o) {
            signal += f64::from(a) * f64::from(a);
            noise += f64::from(b - a) * f64::from(b - a);
        }
    }
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

/// Quantizes `source` to INT8 with activation ranges calibrated on `images` (network inputs,
/// `(1, 3, h, w)`, letterboxed as for prediction). Returns the quantized checkpoint (see the
/// tensor names at [`QWEIGHT`]) and what was done.
///
/// # Errors
/// If the checkpoint does not build, there are no images, or a `keep_float` entry names no layer.
pub fn quantize(source: &Checkpoint, images: &[Tensor], options: &QuantizeOptions) -> Result<(Checkpoint, QuantizeReport)> {
    let src = source.source.display().to_string();
    if images.is_empty() {
        bail!("quantize: no calibration images");
    }
    if let Some(bad) = images.iter().find(|x| {
        let [_, c, h, w] = x.shape();
        c != 3 || h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0
    }) {
        bail!("quantize: calibration images must be (n, 3, h, w) network inputs with h and w multiples of 32, got {:?}", bad.shape());
    }
    let (mut model, _) = model::from_checkpoint(source).with_context(|| format!("{src}: building the float model"))?;
    if conv_layers(&mut model).iter().any(|(_, c)| c.int8.is_some()) {
        bail!("{src}: the model is already quantized");
    }

    // 1. Activation ranges: min/max, then (percentile) histograms over them.
    let n = conv_layers(&mut model).len();
    let stats = Rc::new(RefCell::new(vec![InputStats::new(); n]));
    let s = stats.clone();
    observe_inputs(&mut model, images, move |i, _, parts| for_planes(parts, |v| s.borrow_mut()[i].add_range(v)))?;
    if let Calibration::Percentile(_) = options.calibration {
        let s = stats.clone();
        observe_inputs(&mut model, images, move |i, _, parts| for_planes(parts, |v| s.borrow_mut()[i].add_hist(v)))?;
    }
    let stats = stats.borrow().clone();

    // 2. Each layer's INT8 version.
    let mut layers = Vec::with_capacity(n);
    let mut int8 = Vec::with_capacity(n);
    for ((name, conv), st) in conv_layers(&mut model).into_iter().zip(&stats) {
        if !st.min.is_finite() || !st.max.is_finite() {
            bail!("{src}: calibration saw no finite input values for {name}");
        }
        let (lo, hi) = st.range(options.calibration);
        let input = QParams::from_min_max(lo, hi).with_context(|| format!("{name}: input range"))?;
        let q = QConv2d::quantize(conv.folded()).with_context(|| format!("{name}: quantizing the weights"))?;
        int8.push(Int8Conv { conv: q, input });
        layers.push(LayerQuantization { name, input_range: (lo, hi), input, sqnr_db: None, int8: true });
    }
    if options.bias_correction {
        correct_biases(&mut model, images, &mut int8)?;
    }
    let keep: BTreeSet<usize> = {
        let mut keep = BTreeSet::new();
        for pattern in &options.keep_float {
            let hits: Vec<usize> = layers
                .iter()
                .enumerate()
                .filter(|(_, l)| l.name == *pattern || l.name.starts_with(&format!("{pattern}.")))
                .map(|(i, _)| i)
                .collect();
            if hits.is_empty() {
                bail!("keep-float layer '{pattern}' is not a convolution of this model (e.g. {})", layers[0].name);
            }
            keep.extend(hits);
        }
        keep
    };

    // 3. Sensitivities: the head outputs with one layer at a time in INT8.
    let reference: Vec<Vec<f32>> = images.iter().map(|x| head_values(&model, x)).collect();
    if options.sensitivity {
        for i in 0..n {
            if keep.contains(&i) {
                continue;
            }
            conv_layers(&mut model)[i].1.int8 = Some(Box::new(int8[i].clone()));
            let out: Vec<Vec<f32>> = images.iter().map(|x| head_values(&model, x)).collect();
            conv_layers(&mut model)[i].1.int8 = None;
            layers[i].sqnr_db = Some(sqnr_db(&reference, &out));
        }
    }
    for (i, l) in layers.iter_mut().enumerate() {
        l.int8 = !keep.contains(&i) && l.sqnr_db.is_none_or(|db| db >= options.min_layer_sqnr_db);
    }

    // 4. The whole quantized model against the float one.
    for ((_, conv), (l, q)) in conv_layers(&mut model).into_iter().zip(layers.iter().zip(&int8)) {
        conv.int8 = l.int8.then(|| Box::new(q.clone()));
    }
    let out: Vec<Vec<f32>> = images.iter().map(|x| head_values(&model, x)).collect();
    let report = QuantizeReport { calibration: options.calibration, images: images.len(), model_sqnr_db: sqnr_db(&reference, &out), layers };

    let chosen: HashMap<&str, &Int8Conv> = report.layers.iter().zip(&int8).filter(|(l, _)| l.int8).map(|(l, q)| (l.name.as_str(), q)).collect();
    let ckpt = quantized_checkpoint(source, &chosen, &report)?;
    Ok((ckpt, report))
}

/// `source` with each quantized layer's `conv.weight` and `bn.*` replaced by its INT8 tensors.
fn quantized_checkpoint(source: &Checkpoint, chosen: &HashMap<&str, &Int8Conv>, report: &QuantizeReport) -> Result<Checkpoint> {
    let mut out = source.clone();
    let f32_tensor = |shape: Vec<usize>, kind, v: Vec<f32>| StoredTensor { shape, dtype: DType::F32, kind, values: TensorValues::F32(v) };
    let mut tensors = Vec::with_capacity(source.tensors.len());
    for (name, t) in &source.tensors {
        let layer = name.strip_suffix(".conv.weight").or_else(|| name.rsplit_once(".bn.").map(|(p, _)| p));
        let Some(q) = layer.and_then(|p| chosen.get(p)) else {
            tensors.push((name.clone(), t.clone()));
            continue;
        };
        let Some(prefix) = name.strip_suffix(".conv.weight") else { continue };
        let c = &q.conv;
        tensors.push((
            format!("{prefix}.{QWEIGHT}"),
            StoredTensor { shape: t.shape.clone(), dtype: DType::I8, kind: TensorKind::Parameter, values: TensorValues::I64(c.weight().iter().map(|&v| i64::from(v)).collect()) },
        ));
        tensors.push((format!("{prefix}.{QSCALE}"), f32_tensor(vec![c.out_channels()], TensorKind::Buffer, c.weight_scale().to_vec())));
        tensors.push((format!("{prefix}.{QBIAS}"), f32_tensor(vec![c.out_channels()], TensorKind::Parameter, c.bias().to_vec())));
        tensors.push((format!("{prefix}.{QINPUT}"), f32_tensor(vec![2], TensorKind::Buffer, vec![q.input.scale, f32::from(q.input.zero_point)])));
    }
    out.tensors = tensors;
    let mut meta = match &source.metadata {
        Json::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    meta.insert("quantization".into(), report.to_json());
    out.metadata = Json::Object(meta);
    Ok(out)
}

/// The weights mode of a float checkpoint: every floating-point tensor stored as `dtype` (F16,
/// BF16 or F32), values rounded to it (what a reload gives). Compute stays f32.
///
/// # Errors
/// If `dtype` is not a float type.
pub fn cast_weights(source: &Checkpoint, dtype: DType) -> Result<Checkpoint> {
    use half::{bf16, f16};
    let round: fn(f32) -> f32 = match dtype {
        DType::F16 => |x| f16::from_f32(x).to_f32(),
        DType::BF16 => |x| bf16::from_f32(x).to_f32(),
        DType::F32 => |x| x,
        other => bail!("weights can be stored as float16, bfloat16 or float32, not {other}"),
    };
    let mut out = source.clone();
    for (_, t) in &mut out.tensors {
        if let TensorValues::F32(v) = &mut t.values {
            if t.dtype.is_float() {
                v.iter_mut().for_each(|x| *x = round(*x));
                t.dtype = dtype;
            }
        }
    }
    Ok(out)
}

/// Whether a checkpoint holds INT8 layers, and how many.
pub fn int8_layer_count(ckpt: &Checkpoint) -> usize {
    ckpt.tensors.iter().filter(|(n, _)| n.ends_with(QWEIGHT)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f32]) -> InputStats {
        let mut s = InputStats::new();
        s.add_range(values);
        s.add_hist(values);
        s
    }

    #[test]
    fn minmax_keeps_the_whole_range_and_percentile_clips_only_the_rare_extremes() {
        // 10,000 values in [-1, 1] plus one outlier at each end.
        let mut v: Vec<f32> = (0..10_000).map(|i| -1.0 + 2.0 * i as f32 / 9_999.0).collect();
        v.extend([-50.0, 80.0]);
        let s = stats(&v);
        assert_eq!(s.range(Calibration::MinMax), (-50.0, 80.0));
        let (lo, hi) = s.range(Calibration::Percentile(99.9));
        let bin = 130.0 / HIST_BINS as f32;
        assert!((lo + 1.0).abs() <= bin && (hi - 1.0).abs() <= bin, "({lo}, {hi})");
        // 100th percentile clips nothing.
        let (lo, hi) = s.range(Calibration::Percentile(100.0));
        assert!(lo <= -50.0 && hi >= 80.0 - bin, "({lo}, {hi})");
        assert!(Calibration::parse("percentile", 20.0).is_err() && Calibration::parse("entropy", 99.0).is_err());
    }

    #[test]
    fn sqnr_is_infinite_for_equal_outputs_and_drops_20_db_per_tenfold_noise() {
        let r = vec![vec![1.0f32, -2.0, 3.0, -4.0]];
        assert_eq!(sqnr_db(&r, &r), f64::INFINITY);
        let noisy = |e: f32| vec![r[0].iter().enumerate().map(|(i, v)| v + if i % 2 == 0 { e } else { -e }).collect::<Vec<f32>>()];
        let (a, b) = (sqnr_db(&r, &noisy(0.01)), sqnr_db(&r, &noisy(0.1)));
        assert!((a - b - 20.0).abs() < 1e-3, "{a} {b}");
    }
}
