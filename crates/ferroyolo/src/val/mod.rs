//! Validation: run a model over a labelled split and score it with the reference's metrics
//! (precision, recall, mAP50, mAP50-95), its terminal table, JSON and plots.
//!
//! ```no_run
//! use ferroyolo::data::dataset::DatasetConfig;
//! use ferroyolo::val::ValOptions;
//!
//! let model = ferroyolo::Yolo::load("yolo26n.pt")?;
//! let data = DatasetConfig::load("coco8/data.yaml")?;
//! let metrics = model.val(&data, &ValOptions::default())?;
//! println!("{}", metrics.table(true));
//! # anyhow::Ok(())
//! ```
//!
//! The images go through the reference's validation loader: each is loaded with its long side
//! resized to `imgsz`, images are sorted by aspect ratio and grouped into batches that share one
//! "rectangular" input shape, and each is letterboxed into it without enlarging. Predictions and
//! ground truth are compared in that letterboxed input space. [`validate`] is the entry point for
//! callers that hold a bare network (the trainer, once per epoch).

pub mod metrics;
pub mod plots;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;

use crate::data::dataset::{scan_split, DatasetConfig, DatasetIssue, LabelBox, LabeledImage, LabeledSplit};
use crate::data::image_io::load_image;
use crate::data::letterbox::{extend_chw_f32, letterbox, resize_bilinear, LetterboxSpec};
use crate::engine::Tensor;
use crate::model::{HeadMode, Yolo26};
use crate::output::run_dir::increment_run_dir;
use crate::predict::postprocess::{self, PostprocessOptions};
use crate::train::loss::{e2e_loss, BranchLoss, LossConfig, Target};
use crate::Yolo;

pub use metrics::{ApPerClass, ConfusionMatrix, Stats, IOU_THRESHOLDS, NIOU};

/// Largest stride of the network: batch shapes are multiples of it.
const STRIDE: u32 = 32;
/// Extra half stride the reference adds to rectangular validation shapes.
const RECT_PAD: f64 = 0.5;
/// The reference's default `max_det`; only the default is raised to fit crowded datasets.
pub const DEFAULT_MAX_DET: usize = 300;
/// Batches drawn as mosaics when plotting.
const PLOTTED_BATCHES: usize = 3;

/// Validation settings, with the reference's defaults except `nms` (see there).
#[derive(Clone, Debug)]
pub struct ValOptions {
    /// Long side of the loaded images, in pixels.
    pub imgsz: u32,
    /// Images per batch; also groups images for the rectangular input shapes, so it changes the
    /// inputs (and slightly the metrics) as it does in the reference.
    pub batch: usize,
    /// Confidence threshold of the kept predictions.
    pub conf: f32,
    /// NMS IoU threshold (with `nms`).
    pub iou: f32,
    /// Predictions kept per image. At the default (300) it is raised, with a warning, when an
    /// image holds more labelled objects, as the reference does.
    pub max_det: usize,
    /// Score only these classes (ground truth of other classes is dropped).
    pub classes: Option<Vec<usize>>,
    /// `false` (default): YOLO26's NMS-free one-to-one head with its top-k; `true`: the
    /// one-to-many head with multi-label class-aware NMS. The reference's own default when
    /// `nms` is unset is the NMS path.
    pub nms: bool,
    /// NMS / top-k across classes.
    pub agnostic_nms: bool,
    /// Dataset split: `val`, `test` or `train`.
    pub split: String,
    /// Write plots (curves, confusion matrices, sample mosaics) to `save_dir`.
    pub plots: bool,
    /// Where plots go (ignored without `plots`); `None` uses a new `runs/detect/val{,2,...}`
    /// folder.
    pub save_dir: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Also compute the training loss on each batch (the trainer's validation losses), with
    /// these gains and branch weight.
    pub loss: Option<LossConfig>,
}

impl Default for ValOptions {
    fn default() -> Self {
        Self {
            imgsz: 640,
            batch: 16,
            conf: 0.001,
            iou: 0.7,
            max_det: DEFAULT_MAX_DET,
            classes: None,
            nms: false,
            agnostic_nms: false,
            split: "val".into(),
            plots: true,
            save_dir: None,
            progress: true,
            loss: None,
        }
    }
}

/// Average time per image of each stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValSpeed {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// Scores of one class that has ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    pub class_id: usize,
    pub name: String,
    /// Images holding at least one object of the class.
    pub images: usize,
    /// Objects of the class.
    pub instances: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub map50: f64,
    pub map75: f64,
    pub map50_95: f64,
}

/// The result of a validation run.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Mean over classes with ground truth of the precision at the best-F1 confidence.
    pub precision: f64,
    pub recall: f64,
    pub map50: f64,
    pub map75: f64,
    pub map50_95: f64,
    /// Classes with ground truth, ascending id.
    pub per_class: Vec<ClassMetrics>,
    /// Images validated.
    pub images: usize,
    /// Ground-truth objects.
    pub instances: usize,
    pub speed: ValSpeed,
    pub confusion: ConfusionMatrix,
    /// Per-class AP and the P / R / F1 curves behind the numbers.
    pub curves: ApPerClass,
    /// The model's class names.
    pub names: Vec<String>,
    /// Images left out (bad image or label file), with why.
    pub skipped: Vec<DatasetIssue>,
    /// Folder the plots went to.
    pub save_dir: Option<PathBuf>,
    /// Mean one-to-one loss items over the batches, when [`ValOptions::loss`] asked for them.
    pub loss: Option<BranchLoss>,
}

impl Metrics {
    /// The training fitness: mAP50-95.
    pub fn fitness(&self) -> f64 {
        self.map50_95
    }

    /// mAP50-95 of every model class; classes without ground truth get the overall mAP50-95.
    pub fn maps(&self) -> Vec<f64> {
        let mut m = vec![self.map50_95; self.names.len()];
        for c in &self.per_class {
            if c.class_id < m.len() {
                m[c.class_id] = c.map50_95;
            }
        }
        m
    }

    /// The reference's results table: a header, the `all` row, then one row per class with
    /// ground truth when `per_class` is set.
    pub fn table(&self, per_class: bool) -> String {
        let mut s = format!(
            "{:>22}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}\n",
            "Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)"
        );
        let row = |name: &str, images: usize, instances: usize, v: [f64; 4]| {
            format!(
                "{name:>22}{images:>11}{instances:>11}{:>11}{:>11}{:>11}{:>11}\n",
                format_g3(v[0]),
                format_g3(v[1]),
                format_g3(v[2]),
                format_g3(v[3])
            )
        };
        s += &row("all", self.images, self.instances, [self.precision, self.recall, self.map50, self.map50_95]);
        if per_class && self.names.len() > 1 {
            for c in &self.per_class {
                s += &row(&c.name, c.images, c.instances, [c.precision, c.recall, c.map50, c.map50_95]);
            }
        }
        s
    }

    /// The speed line of the reference.
    pub fn speed_line(&self) -> String {
        format!(
            "Speed: {:.1}ms preprocess, {:.1}ms inference, 0.0ms loss, {:.1}ms postprocess per image",
            self.speed.preprocess_ms, self.speed.inference_ms, self.speed.postprocess_ms
        )
    }

    /// Everything as one JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "images": self.images,
            "instances": self.instances,
            "precision": self.precision,
            "recall": self.recall,
            "mAP50": self.map50,
            "mAP50-95": self.map50_95,
            "classes": self.per_class.iter().map(|c| json!({
                "class_id": c.class_id,
                "class_name": c.name,
                "images": c.images,
                "instances": c.instances,
                "precision": c.precision,
                "recall": c.recall,
                "mAP50": c.map50,
                "mAP50-95": c.map50_95,
            })).collect::<Vec<_>>(),
            "speed": {
                "preprocess_ms": self.speed.preprocess_ms,
                "inference_ms": self.speed.inference_ms,
                "postprocess_ms": self.speed.postprocess_ms,
            },
            "skipped": self.skipped.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "save_dir": self.save_dir.as_ref().map(|d| d.display().to_string()),
        })
    }
}

/// Python's `%.3g`: three significant digits, trailing zeros dropped, exponent form outside
/// 1e-4 .. 1e3.
pub fn format_g3(x: f64) -> String {
    format_g(x, 3)
}

/// Python's `'%.{p}g' % x`.
pub fn format_g(x: f64, p: usize) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let prec = p.max(1) as i32;
    // The exponent after rounding to prec significant digits.
    let sci = format!("{:.*e}", (prec - 1) as usize, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let strip = |s: &str| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s.to_string() };
    if (-4..prec).contains(&exp) {
        strip(&format!("{:.*}", (prec - 1 - exp) as usize, x))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip(mantissa), exp.abs())
    }
}

/// The rectangular input shape `(h, w)` of each batch and the image order (by aspect ratio
/// h / w, ascending, stable), as the reference's validation loader builds them.
pub fn rect_batches(shapes: &[(u32, u32)], batch: usize, imgsz: u32) -> (Vec<usize>, Vec<(u32, u32)>) {
    let batch = batch.max(1);
    let ar: Vec<f64> = shapes.iter().map(|&(h, w)| h as f64 / w as f64).collect();
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.sort_by(|&a, &b| ar[a].total_cmp(&ar[b]));
    let shapes = order
        .chunks(batch)
        .map(|chunk| {
            let (lo, hi) = chunk.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| (lo.min(ar[i]), hi.max(ar[i])));
            let (sh, sw) = if hi < 1.0 {
                (hi, 1.0)
            } else if lo > 1.0 {
                (1.0, 1.0 / lo)
            } else {
                (1.0, 1.0)
            };
            let side = |s: f64| ((s * imgsz as f64 / STRIDE as f64 + RECT_PAD).ceil() as u32) * STRIDE;
            (side(sh), side(sw))
        })
        .collect();
    (order, shapes)
}

/// One image made ready for the network, with what is needed to place its labels.
struct Prepared {
    chw: Vec<f32>,
    /// Letterboxed image (kept only for the plotted batches).
    boxed: Option<RgbImage>,
    /// Ground truth `xyxy` in input pixels, with classes.
    gts: Vec<([f32; 4], usize)>,
}

/// Loads an image as the reference's validation loader does (long side resized to `imgsz`,
/// rounding sizes up, then a letterbox into `shape` that never enlarges) and maps its labels
/// into the letterboxed pixels with the same `f32` steps.
fn prepare(img: &LabeledImage, boxes: &[LabelBox], imgsz: u32, shape: (u32, u32), keep_image: bool) -> Result<Prepared> {
    let mut im = load_image(&img.image)?;
    let (w0, h0) = im.dimensions();
    let r = imgsz as f64 / w0.max(h0) as f64;
    if r != 1.0 {
        let w = ((w0 as f64 * r).ceil() as u32).min(imgsz);
        let h = ((h0 as f64 * r).ceil() as u32).min(imgsz);
        im = resize_bilinear(&im, w, h);
    }
    let (w1, h1) = (im.width() as f32, im.height() as f32);
    let spec = LetterboxSpec { new_shape: shape, auto: false, scaleup: false, stride: STRIDE, pad_value: 114 };
    let (boxed, info) = letterbox(&im, &spec);
    let (bw, bh) = (info.out_size.0 as f32, info.out_size.1 as f32);
    let ratio = info.ratio as f32;
    let (left, top) = (info.pad_left as f32, info.pad_top as f32);
    let gts = boxes
        .iter()
        .map(|b| {
            let [cx, cy, w, h] = b.xywh;
            // xywh -> xyxy, to pixels of the loaded image, letterbox scale and padding.
            let (hw, hh) = (w / 2.0, h / 2.0);
            let x1 = (cx - hw) * w1 * ratio + left;
            let y1 = (cy - hh) * h1 * ratio + top;
            let x2 = (cx + hw) * w1 * ratio + left;
            let y2 = (cy + hh) * h1 * ratio + top;
            // The reference then stores them normalised xywh and converts back.
            let (ncx, ncy, nw, nh) = ((x1 + x2) / 2.0 / bw, (y1 + y2) / 2.0 / bh, (x2 - x1) / bw, (y2 - y1) / bh);
            let (hw, hh) = (nw / 2.0, nh / 2.0);
            ([(ncx - hw) * bw, (ncy - hh) * bh, (ncx + hw) * bw, (ncy + hh) * bh], b.class_id)
        })
        .collect();
    let mut chw = Vec::with_capacity(3 * (shape.0 * shape.1) as usize);
    extend_chw_f32(&boxed, &mut chw);
    Ok(Prepared { chw, boxed: keep_image.then_some(boxed), gts })
}

/// Validates `model` (with class `names`) on an already scanned split. This is the loop the
/// trainer runs after each epoch; [`Yolo::val`] wraps it for a dataset YAML.
pub fn validate(model: &Yolo26, names: &[String], data: &LabeledSplit, opts: &ValOptions) -> Result<Metrics> {
    if opts.imgsz == 0 || opts.batch == 0 {
        bail!("imgsz and batch must be positive (got imgsz={} batch={})", opts.imgsz, opts.batch);
    }
    let nc = model.nc();
    if names.len() != nc {
        bail!("{} class names for a model with {nc} classes", names.len());
    }
    // Ground truth the model cannot be scored on is dropped, as the reference does.
    if data.names.len() > nc {
        eprintln!("WARNING: the dataset has {} classes but the model {nc}; skipping labels of classes the model cannot predict", data.names.len());
    }
    let wanted = |c: usize| c < nc && opts.classes.as_ref().is_none_or(|cs| cs.contains(&c));
    let labels: Vec<Vec<LabelBox>> = data.images.iter().map(|im| im.boxes.iter().copied().filter(|b| wanted(b.class_id)).collect()).collect();

    let most = labels.iter().map(Vec::len).max().unwrap_or(0);
    let mut max_det = opts.max_det;
    if most > max_det {
        let mut msg = format!("dataset images contain up to {most} objects but max_det={max_det}, which caps recall");
        if max_det == DEFAULT_MAX_DET {
            max_det = most;
            msg += &format!("; setting max_det={most}");
        }
        eprintln!("WARNING: {msg}");
    }

    let save_dir = match (&opts.save_dir, opts.plots) {
        (_, false) => None,
        (Some(d), true) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Some(d.clone())
        }
        (None, true) => Some(increment_run_dir(Path::new("runs/detect"), "val", false)?),
    };

    let shapes: Vec<(u32, u32)> = data.images.iter().map(|im| im.shape).collect();
    let (order, batch_shapes) = rect_batches(&shapes, opts.batch, opts.imgsz);
    let bar = if opts.progress { ProgressBar::new(batch_shapes.len() as u64) } else { ProgressBar::hidden() };
    if opts.progress {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} batches {elapsed}<{eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} {}", data.split, if opts.nms { "(nms)" } else { "(end-to-end)" }));
    }

    let post = PostprocessOptions {
        conf: opts.conf,
        iou: opts.iou,
        max_det,
        classes: None, // the reference filters ground truth, not predictions
        agnostic: opts.agnostic_nms,
        multi_label: true,
    };
    let mode = if opts.nms { HeadMode::OneToMany } else { HeadMode::OneToOne };
    let mut stats = Stats::default();
    let mut confusion = ConfusionMatrix::new(nc);
    let mut skipped: Vec<DatasetIssue> = data.issues.clone();
    let (mut t_pre, mut t_inf, mut t_post) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut seen = 0usize;
    let (mut loss_sum, mut loss_batches) = ([0.0f64; 3], 0usize);

    for (bi, (chunk, &shape)) in order.chunks(opts.batch).zip(&batch_shapes).enumerate() {
        let t0 = Instant::now();
        let plot_this = save_dir.is_some() && bi < PLOTTED_BATCHES;
        let prepared: Vec<(usize, Result<Prepared>)> =
            chunk.par_iter().map(|&i| (i, prepare(&data.images[i], &labels[i], opts.imgsz, shape, plot_this))).collect();
        let mut ok = Vec::with_capacity(prepared.len());
        for (i, p) in prepared {
            match p {
                Ok(p) => ok.push((i, p)),
                Err(e) => {
                    let file = data.images[i].image.clone();
                    let issue = DatasetIssue { message: without_path(&format!("{e:#}"), &file), file, line: None };
                    eprintln!("WARNING: {issue}; image skipped");
                    skipped.push(issue);
                }
            }
        }
        if ok.is_empty() {
            bar.inc(1);
            continue;
        }
        let n = ok.len();
        let mut input = Vec::with_capacity(n * 3 * (shape.0 * shape.1) as usize);
        for (_, p) in &mut ok {
            input.append(&mut p.chw);
        }
        let tensor = Tensor::new([n, 3, shape.0 as usize, shape.1 as usize], input);
        let t1 = Instant::now();
        let head = match &opts.loss {
            None => model.forward(&tensor, mode),
            Some(cfg) => {
                let (o2m, o2o) = model.forward_both(&tensor);
                let (h, w) = (shape.0 as f32, shape.1 as f32);
                let targets: Vec<Target> = ok
                    .iter()
                    .enumerate()
                    .flat_map(|(k, (_, p))| {
                        p.gts.iter().map(move |&([x0, y0, x1, y1], class)| Target {
                            batch_index: k,
                            class,
                            cxcywh: [(x0 + x1) / 2.0 / w, (y0 + y1) / 2.0 / h, (x1 - x0) / w, (y1 - y0) / h],
                        })
                    })
                    .collect();
                let l = e2e_loss(&o2m, &o2o, &targets, (shape.0 as usize, shape.1 as usize), cfg).one2one;
                loss_sum = [loss_sum[0] + l.box_loss as f64, loss_sum[1] + l.cls_loss as f64, loss_sum[2] + l.l1_loss as f64];
                loss_batches += 1;
                if opts.nms {
                    o2m
                } else {
                    o2o
                }
            }
        };
        drop(tensor);
        let t2 = Instant::now();
        let dets: Vec<Vec<postprocess::Detection>> = (0..n)
            .map(|k| {
                if opts.nms {
                    postprocess::non_max_suppression(&head, k, &post)
                } else {
                    postprocess::filter_detections(postprocess::end_to_end_topk(&head, k, max_det, opts.agnostic_nms), &post)
                }
            })
            .collect();
        t_post += t2.elapsed();
        t_pre += t1 - t0;
        t_inf += t2 - t1;

        for ((_, p), d) in ok.iter().zip(&dets) {
            let preds: Vec<([f32; 4], f32, usize)> = d.iter().map(|d| (d.xyxy, d.confidence, d.class_id)).collect();
            stats.add_image(&preds, &p.gts);
            confusion.process(&preds, &p.gts, opts.conf);
        }
        seen += n;
        if plot_this {
            if let Some(dir) = &save_dir {
                let images: Vec<(&RgbImage, &Path)> =
                    ok.iter().filter_map(|(i, p)| p.boxed.as_ref().map(|b| (b, data.images[*i].image.as_path()))).collect();
                let gts: Vec<&[([f32; 4], usize)]> = ok.iter().map(|(_, p)| p.gts.as_slice()).collect();
                plots::save_batch_mosaic(&dir.join(format!("val_batch{bi}_labels.jpg")), &images, &plots::labels_as_boxes(&gts), names)?;
                plots::save_batch_mosaic(&dir.join(format!("val_batch{bi}_pred.jpg")), &images, &plots::detections_as_boxes(&dets), names)?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if seen == 0 {
        bail!("no image of split '{}' could be read", data.split);
    }

    let ap = metrics::ap_per_class(&stats);
    let mut nt_per_class = vec![0usize; nc];
    for &c in &stats.target_cls {
        nt_per_class[c] += 1;
    }
    let mut nt_per_image = vec![0usize; nc];
    for &c in &stats.target_img {
        nt_per_image[c] += 1;
    }
    let per_class = ap
        .classes
        .iter()
        .enumerate()
        .map(|(i, &c)| ClassMetrics {
            class_id: c,
            name: names[c].clone(),
            images: nt_per_image[c],
            instances: nt_per_class[c],
            precision: ap.p[i],
            recall: ap.r[i],
            f1: ap.f1[i],
            map50: ap.ap[i][0],
            map75: ap.ap[i][5],
            map50_95: ap.class_map(i),
        })
        .collect();
    let per_image = |t: Duration| t.as_secs_f64() * 1e3 / seen as f64;
    let out = Metrics {
        precision: ap.mp(),
        recall: ap.mr(),
        map50: ap.map50(),
        map75: ap.map75(),
        map50_95: ap.map(),
        per_class,
        images: seen,
        instances: stats.target_cls.len(),
        speed: ValSpeed { preprocess_ms: per_image(t_pre), inference_ms: per_image(t_inf), postprocess_ms: per_image(t_post) },
        confusion,
        curves: ap,
        names: names.to_vec(),
        skipped,
        save_dir,
        loss: (loss_batches > 0).then(|| {
            let n = loss_batches as f64;
            BranchLoss { box_loss: (loss_sum[0] / n) as f32, cls_loss: (loss_sum[1] / n) as f32, l1_loss: (loss_sum[2] / n) as f32 }
        }),
    };
    if out.instances == 0 {
        eprintln!("WARNING: no labels found in the '{}' split, cannot compute metrics without labels", data.split);
    }
    if let Some(dir) = &out.save_dir {
        plots::save_metric_plots(dir, &out)?;
    }
    if !out.skipped.is_empty() {
        eprintln!(
            "WARNING: {} of {} images skipped (bad image or label file, listed above)",
            out.skipped.len(),
            out.skipped.len() + seen
        );
    }
    Ok(out)
}

impl Yolo {
    /// Validates the model on a split of a dataset (`opts.split`, default `val`): scans its
    /// labels (warning about, and leaving out, broken entries), runs the model and scores it.
    pub fn val(&self, data: &DatasetConfig, opts: &ValOptions) -> Result<Metrics> {
        let split = scan_split(data, &opts.split)?;
        report_scan(data, &split);
        validate(self.model(), self.names(), &split, opts)
    }
}

/// An error message without the leading "path: " that the issue prints anyway.
fn without_path(msg: &str, file: &Path) -> String {
    let prefix = format!("{}: ", file.display());
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

/// Prints what a scan found on stderr: a warning per left-out image and the counts.
pub fn report_scan(data: &DatasetConfig, split: &LabeledSplit) {
    for issue in &split.issues {
        eprintln!("WARNING: {issue}; image skipped");
    }
    let sources: Vec<String> = data.split(&split.split).map(|s| s.iter().map(|p| p.display().to_string()).collect()).unwrap_or_default();
    let dups = if split.duplicates > 0 { format!(", {} duplicate labels removed", split.duplicates) } else { String::new() };
    eprintln!("{}: scanned {}: {}{dups}", split.split, sources.join(", "), split.summary());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_g_like_python() {
        let cases = [
            (0.88, "0.88"),
            (0.6545, "0.654"),
            (0.65457, "0.655"),
            (1.0, "1"),
            (0.0, "0"),
            (0.9338, "0.934"),
            (0.995, "0.995"),
            (0.99951, "1"),
            (0.00012345, "0.000123"),
            (0.000012345, "1.23e-05"),
            (1234.5, "1.23e+03"),
            (12.0, "12"),
            (0.1, "0.1"),
        ];
        for (x, s) in cases {
            assert_eq!(format_g3(x), s, "{x}");
        }
    }

    #[test]
    fn rect_shapes_follow_the_reference() {
        // coco8 val: 640x480 (landscape) and 640x427... all landscape -> height shrinks.
        let (order, shapes) = rect_batches(&[(480, 640), (427, 640), (640, 481), (612, 612)], 2, 640);
        assert_eq!(order, vec![1, 0, 3, 2]);
        // Batch 1: ar 0.667, 0.75 -> h = ceil(0.75 * 20 + 0.5) * 32 = 512, w = ceil(20.5) * 32 = 672.
        // Batch 2: ar 1.0, 1.33 -> square 672.
        assert_eq!(shapes, vec![(512, 672), (672, 672)]);
        let (_, shapes) = rect_batches(&[(640, 320)], 4, 640);
        assert_eq!(shapes, vec![(672, 352)]);
    }
}
