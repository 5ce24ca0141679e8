//! Weight statistics of a checkpoint, tensor by tensor: what compression has to work with.
//!
//! [`WeightReport`] lists, for every floating-point state_dict tensor ([`WeightView::Raw`]) or for
//! every convolution as inference runs it, BatchNorm folded in ([`WeightView::Folded`]): shape,
//! count, min, max, mean, standard deviation, absolute maximum, exact zeros, and how well the
//! tensor survives symmetric int8 quantization (its signal-to-quantization-noise ratio with one
//! scale for the whole tensor and with one scale per output channel). Statistics are computed in
//! f64 from the stored values. [`WeightReport::save`] writes histograms as PNG (one figure per
//! model layer, and one of all convolution weights together) and the report as JSON.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{ImageFormat, Rgb};
use serde_json::{json, Value as Json};

use crate::model::train::ModuleMut;
use crate::val::plots::{text_width, Canvas, TAB10};
use crate::weights::{write_atomic, Checkpoint, TensorKind, TensorValues};

/// Bins of the histograms [`WeightReport::save`] draws unless told otherwise.
pub const DEFAULT_BINS: usize = 64;

/// Largest magnitude of a symmetric int8 code (`-127..=127`, as per-tensor symmetric schemes use).
const INT8_MAX: f64 = 127.0;

/// Summary statistics of one tensor's values, computed in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStats {
    pub count: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation (divides by `count`, as NumPy's default).
    pub std: f64,
    /// Largest absolute value.
    pub absmax: f64,
    /// Values exactly equal to zero (either sign).
    pub zeros: usize,
    /// Signal-to-noise ratio in dB of a symmetric int8 round trip with one scale
    /// (`absmax / 127`, round half to even) for the whole tensor: `10·log10(Σx² / Σ(x − q(x))²)`.
    /// Infinite when the round trip is exact, NaN for an all-zero tensor.
    pub int8_sqnr_db: f64,
    /// The same with one scale per output channel (first dimension); `None` for tensors of
    /// fewer than two dimensions, where it would quantize every value on its own.
    pub int8_channel_sqnr_db: Option<f64>,
}

impl TensorStats {
    /// Statistics of `values`, a tensor of `shape` (row-major; the first dimension is the output
    /// channel for the per-channel int8 figure).
    pub fn of(values: &[f32], shape: &[usize]) -> Self {
        let count = values.len();
        let (mut min, mut max, mut zeros) = (f64::INFINITY, f64::NEG_INFINITY, 0usize);
        for &v in values {
            let v = f64::from(v);
            min = min.min(v);
            max = max.max(v);
            zeros += usize::from(v == 0.0);
        }
        let (mean, std) = if count == 0 {
            (f64::NAN, f64::NAN)
        } else {
            let mean = compensated_sum(values.iter().map(|&v| f64::from(v))) / count as f64;
            // Second pass about the mean: no cancellation as with Σx² − n·mean².
            let var = compensated_sum(values.iter().map(|&v| (f64::from(v) - mean).powi(2))) / count as f64;
            (mean, var.sqrt())
        };
        if count == 0 {
            (min, max) = (f64::NAN, f64::NAN);
        }
        let absmax = if count == 0 { f64::NAN } else { min.abs().max(max.abs()) };
        let int8_sqnr_db = int8_sqnr_db_grouped(values, count.max(1));
        let int8_channel_sqnr_db = (shape.len() >= 2 && shape[0] > 0 && count > 0).then(|| int8_sqnr_db_grouped(values, count / shape[0]));
        Self { count, min, max, mean, std, absmax, zeros, int8_sqnr_db, int8_channel_sqnr_db }
    }

    /// Fraction of values exactly zero.
    pub fn sparsity(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.zeros as f64 / self.count as f64
        }
    }

    /// `absmax / std`: how far the largest value sits from the bulk. Large ratios (outliers) waste
    /// most int8 codes of a per-tensor scale.
    pub fn absmax_over_std(&self) -> f64 {
        self.absmax / self.std
    }

    fn to_json(&self) -> Json {
        json!({
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "absmax": self.absmax,
            "zeros": self.zeros,
            "sparsity": self.sparsity(),
            "absmax_over_std": self.absmax_over_std(),
            "int8_sqnr_db": self.int8_sqnr_db,
            "int8_channel_sqnr_db": self.int8_channel_sqnr_db,
        })
    }
}

/// Σ of `values` with Neumaier's compensation: correct to about one rounding whatever the count
/// (a plain f64 sum of millions of weights drifts in the 12th digit).
fn compensated_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut carry) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        carry += if sum.abs() >= v.abs() { (sum - t) + v } else { (v - t) + sum };
        sum = t;
    }
    sum + carry
}

/// The int8 SQNR of `values` quantized in consecutive groups of `group` values, one scale each.
fn int8_sqnr_db_grouped(values: &[f32], group: usize) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for chunk in values.chunks(group.max(1)) {
        let absmax = chunk.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        let scale = absmax / INT8_MAX;
        for &v in chunk {
            let x = f64::from(v);
            let q = if scale > 0.0 { (x / scale).round_ties_even().clamp(-INT8_MAX, INT8_MAX) * scale } else { 0.0 };
            signal += x * x;
            noise += (x - q) * (x - q);
        }
    }
    10.0 * (signal / noise).log10()
}

/// Counts of values in equal-width bins over `[lo, hi]`, as NumPy's `histogram(x, bins)`: every
/// bin is half-open except the last, which includes `hi`; a constant tensor gets the range
/// `[v − 0.5, v + 0.5]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    /// `bins` bins (at least one) over the range of `values`. Non-finite values are not counted.
    pub fn of(values: &[f32], bins: usize) -> Self {
        let bins = bins.max(1);
        let (mut lo, mut hi) = values
            .iter()
            .map(|&v| f64::from(v))
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if lo == hi {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        let edges: Vec<f64> = (0..=bins).map(|i| edge(lo, hi, bins, i)).collect();
        let mut counts = vec![0u64; bins];
        let norm = bins as f64 / (hi - lo);
        for &v in values {
            let x = f64::from(v);
            if !x.is_finite() {
                continue;
            }
            // The arithmetic guess, then corrected against the edges (rounding can put a value
            // one bin off near an edge).
            let mut i = (((x - lo) * norm) as usize).min(bins - 1);
            if x < edges[i] {
                i -= 1;
            } else if i + 1 < bins && x >= edges[i + 1] {
                i += 1;
            }
            counts[i] += 1;
        }
        Self { lo, hi, counts }
    }

    /// Bin `i`'s `[left, right]` edges.
    pub fn edges(&self, i: usize) -> (f64, f64) {
        let n = self.counts.len();
        (edge(self.lo, self.hi, n, i), edge(self.lo, self.hi, n, i + 1))
    }
}

/// Edge `i` of `bins` equal bins over `[lo, hi]`, rounded as NumPy's `linspace` (`i·step + lo`,
/// the last edge exactly `hi`) so that values on an edge fall in the same bin.
fn edge(lo: f64, hi: f64, bins: usize, i: usize) -> f64 {
    if i >= bins {
        hi
    } else {
        i as f64 * ((hi - lo) / bins as f64) + lo
    }
}

/// Which weights a [`WeightReport`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightView {
    /// Every floating-point state_dict entry as stored: parameters and BatchNorm running
    /// statistics (the integer `num_batches_tracked` counters are left out).
    Raw,
    /// Every convolution as inference runs it: Conv+BatchNorm pairs folded into one weight and
    /// bias (`<module>.conv.weight`, `<module>.conv.bias`), the Detect branches' final
    /// convolutions as stored.
    Folded,
}

impl WeightView {
    pub fn name(self) -> &'static str {
        match self {
            WeightView::Raw => "raw",
            WeightView::Folded => "folded",
        }
    }
}

/// One tensor of a [`WeightReport`].
#[derive(Clone, Debug)]
pub struct WeightEntry {
    /// state_dict name (for the folded view, the name of the convolution's weight or bias).
    pub name: String,
    pub shape: Vec<usize>,
    /// Parameter or buffer (running statistics); folded tensors count as parameters.
    pub kind: TensorKind,
    pub stats: TensorStats,
    values: Vec<f32>,
}

impl WeightEntry {
    fn new(name: String, shape: Vec<usize>, kind: TensorKind, values: Vec<f32>) -> Self {
        let stats = TensorStats::of(&values, &shape);
        Self { name, shape, kind, stats, values }
    }

    /// The tensor's values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Whether this is a convolution weight (four dimensions): what the histograms show.
    pub fn is_conv_weight(&self) -> bool {
        self.shape.len() == 4
    }

    /// The top-level layer (`model.<i>.`) the tensor belongs to.
    pub fn layer(&self) -> Option<usize> {
        self.name.strip_prefix("model.")?.split('.').next()?.parse().ok()
    }
}

/// Per-tensor statistics of a checkpoint's weights; see the module documentation.
#[derive(Clone, Debug)]
pub struct WeightReport {
    /// The checkpoint described.
    pub source: PathBuf,
    pub view: WeightView,
    /// Tensors in state_dict order.
    pub entries: Vec<WeightEntry>,
    /// Statistics of all convolution weights together.
    pub conv_weights: TensorStats,
    /// state_dict entries left out (integer counters).
    pub skipped: usize,
}

impl WeightReport {
    /// The report of `ckpt`'s weights in `view`. The folded view builds the model (its config
    /// and weights must be valid) and reads the inference convolutions.
    pub fn new(ckpt: &Checkpoint, view: WeightView) -> Result<Self> {
        let (entries, skipped) = match view {
            WeightView::Raw => {
                let mut entries = Vec::new();
                let mut skipped = 0;
                for (name, t) in &ckpt.tensors {
                    match &t.values {
                        TensorValues::F32(v) => entries.push(WeightEntry::new(name.clone(), t.shape.clone(), t.kind, v.clone())),
                        TensorValues::I64(_) => skipped += 1,
                    }
                }
                (entries, skipped)
            }
            WeightView::Folded => {
                let (mut model, _) = crate::model::from_checkpoint(ckpt)
                    .with_context(|| format!("{}: building the model for the folded view", ckpt.source.display()))?;
                let mut entries = Vec::new();
                for (path, module) in model.modules_mut() {
                    let (wname, bname, conv) = match module {
                        ModuleMut::ConvBn(c) => (format!("{path}.conv.weight"), format!("{path}.conv.bias"), c.folded()),
                        ModuleMut::Bias(b) => (format!("{path}.weight"), format!("{path}.bias"), &b.conv),
                    };
                    let k = conv.kernel();
                    let shape = vec![conv.out_channels(), conv.in_channels() / conv.groups(), k, k];
                    entries.push(WeightEntry::new(wname, shape, TensorKind::Parameter, conv.weight().to_vec()));
                    entries.push(WeightEntry::new(bname, vec![conv.out_channels()], TensorKind::Parameter, conv.bias().to_vec()));
                }
                (entries, 0)
            }
        };
        let all: Vec<f32> = entries.iter().filter(|e| e.is_conv_weight()).flat_map(|e| e.values.iter().copied()).collect();
        let conv_weights = TensorStats::of(&all, &[all.len()]);
        Ok(Self { source: ckpt.source.clone(), view, entries, conv_weights, skipped })
    }

    /// All convolution weights' values together.
    pub fn conv_weight_values(&self) -> Vec<f32> {
        self.entries.iter().filter(|e| e.is_conv_weight()).flat_map(|e| e.values.iter().copied()).collect()
    }

    /// An aligned text table, one row per tensor, then totals and the tensors hardest to quantize.
    pub fn table(&self) -> String {
        let shape = |e: &WeightEntry| e.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let name_w = self.entries.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4);
        let shape_w = self.entries.iter().map(|e| shape(e).len()).max().unwrap_or(5).max(5);
        let mut out = format!(
            "{:<name_w$} {:>shape_w$} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8} {:>7} {:>7}\n",
            "name", "shape", "count", "min", "max", "mean", "std", "absmax", "zeros%", "max/std", "int8dB", "ch8dB"
        );
        let row = |label: &str, shp: &str, s: &TensorStats| {
            let ch = s.int8_channel_sqnr_db.map_or("-".to_string(), db);
            format!(
                "{label:<name_w$} {shp:>shape_w$} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7.2} {:>8} {:>7} {:>7}\n",
                s.count,
                sig(s.min),
                sig(s.max),
                sig(s.mean),
                sig(s.std),
                sig(s.absmax),
                100.0 * s.sparsity(),
                sig(s.absmax_over_std()),
                db(s.int8_sqnr_db),
                ch,
            )
        };
        for e in &self.entries {
            out += &row(&e.name, &shape(e), &e.stats);
        }
        let n_conv = self.entries.iter().filter(|e| e.is_conv_weight()).count();
        out += &row(&format!("all conv weights ({n_conv})"), "", &self.conv_weights);
        let params: usize = self.entries.iter().filter(|e| e.kind == TensorKind::Parameter).map(|e| e.stats.count).sum();
        let n_params = self.entries.iter().filter(|e| e.kind == TensorKind::Parameter).count();
        out += &format!(
            "\n{} view of {}: {} tensors ({} parameters holding {} values, {} buffers){}; std is the population std; \
             int8dB / ch8dB: SQNR of a symmetric int8 round trip with one scale per tensor / per output channel\n",
            self.view.name(),
            self.source.display(),
            self.entries.len(),
            n_params,
            params,
            self.entries.len() - n_params,
            if self.skipped > 0 { format!(", {} integer entries left out", self.skipped) } else { String::new() },
        );
        let mut hardest: Vec<&WeightEntry> = self.entries.iter().filter(|e| e.is_conv_weight() && e.stats.int8_sqnr_db.is_finite()).collect();
        hardest.sort_by(|a, b| a.stats.int8_sqnr_db.total_cmp(&b.stats.int8_sqnr_db));
        if !hardest.is_empty() {
            let list: Vec<String> =
                hardest.iter().take(5).map(|e| format!("{} ({} dB, max/std {})", e.name, db(e.stats.int8_sqnr_db), sig(e.stats.absmax_over_std()))).collect();
            out += &format!("Hardest conv weights for per-tensor int8: {}\n", list.join(", "));
        }
        out
    }

    /// The report as one JSON document (non-finite numbers become `null`).
    pub fn to_json(&self) -> Json {
        let tensors: Vec<Json> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = e.stats.to_json();
                v["name"] = json!(e.name);
                v["shape"] = json!(e.shape);
                v["kind"] = json!(if e.kind == TensorKind::Parameter { "parameter" } else { "buffer" });
                v
            })
            .collect();
        json!({
            "source": self.source.display().to_string(),
            "view": self.view.name(),
            "tensors": tensors,
            "conv_weights": self.conv_weights.to_json(),
            "skipped_integer_entries": self.skipped,
        })
    }

    /// Writes into `dir` (created): `weights_<view>.json`, `conv_weights_<view>.png` (the histogram
    /// of all convolution weights) and `layer_<i>_<view>.png` per model layer (one histogram per
    /// convolution weight of that layer), each with `bins` bins. Returns the files written.
    pub fn save(&self, dir: &Path, bins: usize) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let view = self.view.name();
        let mut written = Vec::new();
        let json_path = dir.join(format!("weights_{view}.json"));
        let text = serde_json::to_string_pretty(&self.to_json())?;
        write_atomic(&json_path, text.as_bytes())?;
        written.push(json_path);

        let all = Histogram::of(&self.conv_weight_values(), bins);
        let path = dir.join(format!("conv_weights_{view}.png"));
        let n_conv = self.entries.iter().filter(|e| e.is_conv_weight()).count();
        histogram_figure(&path, &all, &format!("All {n_conv} conv weights ({view}), {} values", self.conv_weights.count))?;
        written.push(path);

        let mut layers: BTreeMap<usize, Vec<&WeightEntry>> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.is_conv_weight()) {
            layers.entry(e.layer().unwrap_or(usize::MAX)).or_default().push(e);
        }
        for (layer, entries) in layers {
            let tag = if layer == usize::MAX { "other".to_string() } else { format!("{layer:02}") };
            let path = dir.join(format!("layer_{tag}_{view}.png"));
            let title = if layer == usize::MAX { format!("Other conv weights ({view})") } else { format!("model.{layer} conv weights ({view})") };
            let panels: Vec<(String, Histogram)> = entries.iter().map(|e| (short_name(&e.name, layer), Histogram::of(&e.values, bins))).collect();
            grid_figure(&path, &title, &panels)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// `name` without its `model.<layer>.` prefix and `.weight` suffix, for panel titles.
fn short_name(name: &str, layer: usize) -> String {
    let prefix = format!("model.{layer}.");
    let s = name.strip_prefix(&prefix).unwrap_or(name);
    s.strip_suffix(".weight").unwrap_or(s).to_string()
}

/// About four significant digits, fixed or scientific, as `%.4g`.
fn sig(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() { "-".into() } else if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let exp = x.abs().log10().floor() as i32;
    if (-3..5).contains(&exp) {
        format!("{:.*}", (3 - exp).max(0) as usize, x)
    } else {
        format!("{x:.3e}")
    }
}

/// A dB figure with one decimal (`inf` for an exact round trip, `-` when undefined).
fn db(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.is_infinite() {
        "inf".into()
    } else {
        format!("{x:.1}")
    }
}

/// Where a histogram's plotting area sits on its canvas, for the bars and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlotArea {
    left: i64,
    top: i64,
    width: i64,
    height: i64,
}

const BAR: Rgb<u8> = Rgb(TAB10[0]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// Draws `hist` with its title, frame, x ticks at the range ends (and at zero when inside),
/// y ticks at zero and the largest count, in the panel at (`x`, `y`) of `w × h` pixels; `scale`
/// sizes the text. With `log_counts` bar heights follow `ln(1 + count)`, which shows the sparse
/// tails next to a peak. Returns the plotting area.
fn draw_histogram(c: &mut Canvas, (x, y, w, h): (i64, i64, i64, i64), hist: &Histogram, title: &str, scale: i64, log_counts: bool) -> PlotArea {
    let glyph = 8 * scale;
    let max_count = hist.counts.iter().copied().max().unwrap_or(0);
    let ylabel_w = text_width(&max_count.to_string(), scale);
    let area = PlotArea {
        left: x + ylabel_w + 3 * scale + 6,
        top: y + glyph + 4 * scale + 4,
        width: (w - ylabel_w - 3 * scale - 6 - 2 * glyph).max(1),
        height: (h - 2 * glyph - 12 * scale - 8).max(1),
    };
    let (l, t, aw, ah) = (area.left, area.top, area.width, area.height);
    c.text(x + (w - text_width(title, scale)) / 2, y, title, scale, INK);
    c.fill_rect(l, t + ah / 2, l + aw, t + ah / 2 + 1, GRID);
    let n = hist.counts.len() as i64;
    let max = max_count.max(1) as f64;
    for (i, &count) in hist.counts.iter().enumerate() {
        let i = i as i64;
        let (x0, x1) = (l + i * aw / n, l + (i + 1) * aw / n);
        let frac = if log_counts { (count as f64).ln_1p() / max.ln_1p() } else { count as f64 / max };
        let bar_h = (frac * ah as f64).round() as i64;
        c.fill_rect(x0, t + ah - bar_h, x1.max(x0 + 1), t + ah, BAR);
    }
    // Frame.
    c.fill_rect(l - 1, t - 1, l + aw + 1, t, INK);
    c.fill_rect(l - 1, t + ah, l + aw + 1, t + ah + 1, INK);
    c.fill_rect(l - 1, t - 1, l, t + ah + 1, INK);
    c.fill_rect(l + aw, t - 1, l + aw + 1, t + ah + 1, INK);
    // Y ticks: zero and the tallest bar.
    for (count, ty) in [(0u64, t + ah), (max_count, t)] {
        c.fill_rect(l - 3 * scale, ty, l, ty + 1, INK);
        let s = count.to_string();
        c.text(l - 3 * scale - 3 - text_width(&s, scale), ty - glyph / 2, &s, scale, INK);
    }
    // X ticks: the range ends, and zero when it lies well inside.
    let to_x = |v: f64| l + ((v - hist.lo) / (hist.hi - hist.lo) * aw as f64).round() as i64;
    let mut ticks = vec![(hist.lo, 0.0), (hist.hi, 1.0)];
    if hist.lo < 0.0 && hist.hi > 0.0 {
        let at = -hist.lo / (hist.hi - hist.lo);
        if (0.2..=0.8).contains(&at) {
            ticks.push((0.0, 0.5));
        }
    }
    for (v, align) in ticks {
        let tx = to_x(v);
        c.fill_rect(tx, t + ah, tx + 1, t + ah + 3 * scale, INK);
        let s = sig(v);
        let tw = text_width(&s, scale);
        let lx = (tx as f64 - align * tw as f64).round() as i64;
        c.text(lx, t + ah + 4 * scale + 2, &s, scale, INK);
    }
    let xlabel = "value";
    c.text(l + (aw - text_width(xlabel, scale)) / 2, t + ah + 4 * scale + glyph + 4, xlabel, scale, INK);
    area
}

/// Encodes the canvas as PNG and writes it atomically.
fn save_png(c: &Canvas, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    c.img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).with_context(|| format!("encoding {}", path.display()))?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Size of the single-histogram figure and where its two panels (linear and log counts) sit.
const FIGURE: (u32, u32) = (1200, 1300);
const FIGURE_PANELS: [(i64, i64, i64, i64); 2] = [(30, 30, 1140, 620), (30, 670, 1140, 620)];

/// One histogram drawn twice, with linear and with logarithmic counts ("count" reads up the left
/// side). Returns the two plotting areas.
fn histogram_figure(path: &Path, hist: &Histogram, title: &str) -> Result<[PlotArea; 2]> {
    let mut c = Canvas::new(FIGURE.0, FIGURE.1);
    let linear = draw_histogram(&mut c, FIGURE_PANELS[0], hist, title, 2, false);
    let log = draw_histogram(&mut c, FIGURE_PANELS[1], hist, "log scale: bar height ~ ln(1 + count)", 2, true);
    for (area, label) in [(linear, "count"), (log, "count (log)")] {
        c.text_up(4, area.top + (area.height - text_width(label, 2)) / 2, label, 2, INK);
    }
    save_png(&c, path)?;
    Ok([linear, log])
}

/// Panels of small histograms, four to a row, under a title.
fn grid_figure(path: &Path, title: &str, panels: &[(String, Histogram)]) -> Result<()> {
    const COLS: i64 = 4;
    const PANEL: (i64, i64) = (330, 210);
    let rows = (panels.len() as i64 + COLS - 1) / COLS;
    let rows = rows.max(1);
    let cols = (panels.len() as i64).clamp(1, COLS);
    let (w, h) = ((cols * PANEL.0 + 20).max(text_width(title, 2) + 40), rows * PANEL.1 + 50);
    let mut c = Canvas::new(w as u32, h as u32);
    c.text((w - text_width(title, 2)) / 2, 12, title, 2, INK);
    for (k, (name, hist)) in panels.iter().enumerate() {
        let (r, col) = (k as i64 / COLS, k as i64 % COLS);
        // Long names would overflow the panel: keep their end, the most specific part.
        let max_chars = ((PANEL.0 - 10) / 8) as usize;
        let chars: Vec<char> = name.chars().collect();
        let label: String = if chars.len() > max_chars { chars[chars.len() - max_chars..].iter().collect() } else { name.clone() };
        draw_histogram(&mut c, (10 + col * PANEL.0, 44 + r * PANEL.1, PANEL.0 - 14, PANEL.1 - 10), hist, &label, 1, false);
    }
    save_png(&c, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn stats_match_hand_computed_values() {
        // [-2, 0, 0, 1, 3, 4]: sum 6, mean 1, squared deviations 9+1+1+0+4+9 = 24, var 4, std 2.
        let s = TensorStats::of(&[-2.0, 0.0, -0.0, 1.0, 3.0, 4.0], &[2, 3]);
        assert_eq!((s.count, s.min, s.max, s.mean, s.std, s.absmax, s.zeros), (6, -2.0, 4.0, 1.0, 2.0, 4.0, 2));
        assert_eq!(s.sparsity(), 2.0 / 6.0);
        assert_eq!(s.absmax_over_std(), 2.0);
        // int8, one scale 4/127: -2 → -63.5 → -64 (ties to even) → -2.015748..., 1 → 31.75 → 32,
        // 3 → 95.25 → 95, 4 → 127 exact.
        let q = 4.0 / 127.0;
        let noise = (-2.0f64 + 64.0 * q).powi(2) + (1.0f64 - 32.0 * q).powi(2) + (3.0f64 - 95.0 * q).powi(2);
        assert!(close(s.int8_sqnr_db, 10.0 * (30.0 / noise).log10(), 1e-12), "{}", s.int8_sqnr_db);
        // Per channel: rows [-2, 0, 0] (scale 2/127, all exact) and [1, 3, 4] (scale 4/127).
        let noise_ch = (1.0f64 - 32.0 * q).powi(2) + (3.0f64 - 95.0 * q).powi(2);
        assert!(close(s.int8_channel_sqnr_db.unwrap(), 10.0 * (30.0 / noise_ch).log10(), 1e-12));
        // A vector has no per-channel figure; an exactly representable one has an infinite SQNR.
        let v = TensorStats::of(&[-127.0, 0.0, 5.0, 127.0], &[4]);
        assert_eq!(v.int8_channel_sqnr_db, None);
        assert_eq!(v.int8_sqnr_db, f64::INFINITY);
        assert_eq!(v.zeros, 1);
        // Empty and all-zero tensors do not panic and say they are undefined.
        assert!(TensorStats::of(&[], &[0]).mean.is_nan());
        let z = TensorStats::of(&[0.0; 4], &[2, 2]);
        assert_eq!((z.sparsity(), z.std), (1.0, 0.0));
        assert!(z.int8_sqnr_db.is_nan());
    }

    #[test]
    fn mean_and_std_are_exact_in_f64_where_f32_would_round() {
        // 2^24 ± 2, 10,000 of each: an f32 accumulator loses the ±2 (its spacing there is 2 and
        // grows with the sum); in f64 the mean is 2^24 and the std 2, exactly.
        let mut v = vec![16_777_218.0f32; 10_000];
        v.extend(std::iter::repeat_n(16_777_214.0f32, 10_000));
        let s = TensorStats::of(&v, &[v.len()]);
        assert_eq!((s.mean, s.std), (16_777_216.0, 2.0));
    }

    #[test]
    fn sums_are_compensated() {
        // 1 + 1e-16 (ten thousand times): a plain f64 sum stays at 1.
        let v = std::iter::once(1.0).chain(std::iter::repeat_n(1e-16, 10_000));
        assert!((compensated_sum(v) - (1.0 + 1e-12)).abs() < 1e-16);
    }

    #[test]
    fn histogram_bins_like_numpy() {
        // np.histogram([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 5) → [2, 2, 2, 2, 3]: half-open bins,
        // the last one closed.
        let v: Vec<f32> = (0..=10).map(|x| x as f32).collect();
        let h = Histogram::of(&v, 5);
        assert_eq!((h.lo, h.hi, h.counts.clone()), (0.0, 10.0, vec![2, 2, 2, 2, 3]));
        assert_eq!(h.edges(4), (8.0, 10.0));
        // A constant tensor: range [v-0.5, v+0.5], everything in the middle bin.
        let c = Histogram::of(&[3.0; 7], 3);
        assert_eq!((c.lo, c.hi, c.counts), (2.5, 3.5, vec![0, 7, 0]));
        // Values next to edges: f32 0.1 lies just below the first edge (0.3f32 / 3), as NumPy
        // finds for np.histogram(np.float32([0, .1, .2, .3]).astype(float), 3) → [2, 1, 1].
        let e = Histogram::of(&[0.0, 0.1, 0.2, 0.3], 3);
        assert_eq!(e.counts, vec![2, 1, 1]);
    }

    #[test]
    fn histogram_png_bars_follow_the_counts() {
        // Bin i (0..8) holds i+1 values, so the bars rise linearly to the tallest.
        let mut v = Vec::new();
        for i in 0..8 {
            v.extend(std::iter::repeat_n(i as f32 + 0.5, i + 1));
        }
        v.push(0.0);
        v.push(8.0);
        let h = Histogram::of(&v, 8);
        let expected: Vec<u64> = (1..=8).map(|i| i as u64 + u64::from(i == 1 || i == 8)).collect();
        assert_eq!(h.counts, expected);
        let dir = std::env::temp_dir().join(format!("ferroyolo-weights-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.png");
        let [linear, log] = histogram_figure(&path, &h, "test").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), FIGURE);
        let max = *expected.iter().max().unwrap() as f64;
        for (area, scale) in [(linear, (|c: f64, m: f64| c / m) as fn(f64, f64) -> f64), (log, |c: f64, m: f64| c.ln_1p() / m.ln_1p())] {
            for (i, &count) in expected.iter().enumerate() {
                let x = (area.left + (2 * i as i64 + 1) * area.width / 16) as u32;
                let bar = (area.top..area.top + area.height).filter(|&y| *img.get_pixel(x, y as u32) == BAR).count() as f64;
                let want = scale(count as f64, max) * area.height as f64;
                assert!((bar - want).abs() <= 1.0, "bin {i}: bar {bar} px, want {want}");
            }
            // Left of the plot there is text (tick labels), not bars.
            assert!((0..area.left as u32).any(|x| (area.top..area.top + area.height).any(|y| *img.get_pixel(x, y as u32) == INK)));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layer_of_names() {
        let e = WeightEntry::new("model.23.one2one_cv3.2.2.weight".into(), vec![1, 1, 1, 1], TensorKind::Parameter, vec![1.0]);
        assert_eq!(e.layer(), Some(23));
        assert!(e.is_conv_weight());
        assert_eq!(short_name(&e.name, 23), "one2one_cv3.2.2");
        assert_eq!(sig(0.000123456), "1.235e-4");
        assert_eq!(sig(-22.671875), "-22.67");
        assert_eq!(sig(0.1289), "0.1289");
    }
}
