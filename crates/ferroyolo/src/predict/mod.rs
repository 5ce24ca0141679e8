//! The user-facing API: load a model, predict on images, get [`Results`].
//!
//! ```no_run
//! let model = ferroyolo::Yolo::load("yolo26n.pt")?;
//! let results = model.predict("bus.jpg")?;
//! println!("Detected {} objects.", results[0].boxes.len());
//! # anyhow::Ok(())
//! ```

pub mod postprocess;
mod results;

pub use postprocess::{Detection, PostprocessOptions};
pub use results::{Results, Speed};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::RgbImage;

use crate::data::letterbox::{extend_chw_f32, letterbox, LetterboxSpec};
use crate::data::source::{read_item, resolve_source, SourceItem};
use crate::engine::Tensor;
use crate::model::{self, HeadMode, ParamRecord, Yolo26};
use crate::weights::{hub, Checkpoint};

/// Prediction settings, with the reference's defaults.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// Target size `(h, w)`; the image is letterboxed into it.
    pub imgsz: (u32, u32),
    /// Pad only to the next multiple of the stride (the reference's `rect` predict) instead of
    /// the full `imgsz` square.
    pub rect: bool,
    pub conf: f32,
    pub iou: f32,
    pub max_det: usize,
    pub classes: Option<Vec<usize>>,
    /// `true`: one-to-many head + NMS; `false` (default): YOLO26's NMS-free one-to-one head.
    pub nms: bool,
    pub agnostic_nms: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self { imgsz: (640, 640), rect: true, conf: 0.25, iou: 0.7, max_det: 300, classes: None, nms: false, agnostic_nms: false }
    }
}

/// A loaded YOLO26 model ready to predict.
pub struct Yolo {
    model: Yolo26,
    params: Vec<ParamRecord>,
    names: Arc<Vec<String>>,
    checkpoint: Checkpoint,
}

/// The letterboxed input of one image.
pub struct Preprocessed {
    pub tensor: Tensor,
    /// `(h, w)` of the network input.
    pub input_hw: (u32, u32),
    /// `(h, w)` of the original image.
    pub orig_hw: (u32, u32),
}

impl Yolo {
    /// Loads a model from a `.pt` (Ultralytics) or `.safetensors` (ferroyolo) file. Official
    /// names such as `yolo26n.pt` are looked up in the working directory, then the cache, then
    /// downloaded. `yolo26n.yaml` … `yolo26x.yaml` build the network with fresh random weights
    /// (80 classes), as the reference does.
    pub fn load(weights: impl AsRef<Path>) -> Result<Self> {
        if let Some(scale) = model::init::config_scale(weights.as_ref()) {
            return Self::from_checkpoint(model::init::random_checkpoint(&scale, 80, None, 0)?);
        }
        let path = hub::resolve_weights(weights.as_ref())?;
        let checkpoint = Checkpoint::load(&path)?;
        Self::from_checkpoint(checkpoint)
    }

    /// Builds the model from an already-read checkpoint.
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Result<Self> {
        let (model, params) = model::from_checkpoint(&checkpoint)?;
        let nc = model.nc();
        let mut names = checkpoint.names.clone();
        if names.is_empty() {
            names = (0..nc).map(|i| i.to_string()).collect();
        }
        if names.len() != nc {
            bail!("{}: {} class names for a model with {nc} classes", checkpoint.source.display(), names.len());
        }
        Ok(Self { model, params, names: Arc::new(names), checkpoint })
    }

    /// The network.
    pub fn model(&self) -> &Yolo26 {
        &self.model
    }

    /// The checkpoint it was loaded from.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Class names, indexed by class id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The learnable parameters as loaded (names, shapes), for parameter counts.
    pub fn params(&self) -> &[ParamRecord] {
        &self.params
    }

    /// Letterboxes one image into a network input.
    pub fn preprocess(&self, img: &RgbImage, opts: &PredictOptions) -> Preprocessed {
        let spec = LetterboxSpec { new_shape: opts.imgsz, auto: opts.rect, scaleup: true, stride: 32, pad_value: 114 };
        let (boxed, info) = letterbox(img, &spec);
        let (w, h) = info.out_size;
        let mut data = Vec::with_capacity(3 * (w * h) as usize);
        extend_chw_f32(&boxed, &mut data);
        Preprocessed { tensor: Tensor::new([1, 3, h as usize, w as usize], data), input_hw: (h, w), orig_hw: (img.height(), img.width()) }
    }

    /// Predicts on one decoded image.
    pub fn predict_image(&self, img: &RgbImage, source: &str, opts: &PredictOptions) -> Result<Results> {
        let t0 = Instant::now();
        let pre = self.preprocess(img, opts);
        let t1 = Instant::now();
        let mode = if opts.nms { HeadMode::OneToMany } else { HeadMode::OneToOne };
        let head = self.model.forward(&pre.tensor, mode);
        let t2 = Instant::now();
        let post = PostprocessOptions {
            conf: opts.conf,
            iou: opts.iou,
            max_det: opts.max_det,
            classes: opts.classes.clone(),
            agnostic: opts.agnostic_nms,
            multi_label: false,
        };
        let mut boxes = if opts.nms {
            postprocess::non_max_suppression(&head, 0, &post)
        } else {
            // The reference runs the head's top-k with at least 300 candidates, then filters.
            let k = opts.max_det.max(300);
            postprocess::filter_detections(postprocess::end_to_end_topk(&head, 0, k, opts.agnostic_nms), &post)
        };
        postprocess::scale_boxes(&mut boxes, pre.input_hw, pre.orig_hw);
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(Results {
            source: source.to_string(),
            orig_shape: pre.orig_hw,
            input_shape: pre.input_hw,
            boxes,
            names: self.names.clone(),
            speed: Speed { preprocess_ms: ms(t0, t1), inference_ms: ms(t1, t2), postprocess_ms: ms(t2, t3) },
        })
    }

    /// Predicts on every image of a source (file, directory, glob, list file or URL) with the
    /// default options. Unreadable images are reported on stderr and skipped; the call fails
    /// only when the source names nothing or no image could be read.
    pub fn predict(&self, source: &str) -> Result<Vec<Results>> {
        self.predict_with(source, &PredictOptions::default())
    }

    /// [`Yolo::predict`] with explicit options.
    pub fn predict_with(&self, source: &str, opts: &PredictOptions) -> Result<Vec<Results>> {
        let items = resolve_source(source)?;
        let total = items.len();
        let mut out = Vec::with_capacity(total);
        let mut last_err = None;
        for (item, result) in self.predict_items(items, opts) {
            match result {
                Ok((r, _)) => out.push(r),
                Err(e) => {
                    eprintln!("WARNING: skipping {}: {e:#}", item.name());
                    last_err = Some(e);
                }
            }
        }
        match (out.is_empty(), last_err) {
            (true, Some(e)) => Err(e).context(format!("no image of '{source}' could be read")),
            _ => Ok(out),
        }
    }

    /// Lazily predicts on each item, yielding the item, and its results with the decoded image
    /// (for annotation) or the error that made it unreadable.
    pub fn predict_items<'a>(
        &'a self,
        items: Vec<SourceItem>,
        opts: &'a PredictOptions,
    ) -> impl Iterator<Item = (SourceItem, Result<(Results, RgbImage)>)> + 'a {
        items.into_iter().map(move |item| {
            let res = read_item(&item).and_then(|img| {
                let label = match &item {
                    SourceItem::File(p) => absolute(p).display().to_string(),
                    SourceItem::Url(u) => u.clone(),
                };
                self.predict_image(&img, &label, opts).map(|r| (r, img))
            });
            (item, res)
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
