//! `ferroyolo train`: learn weights on a labelled dataset, from a checkpoint (fine-tuning,
//! transfer to new classes) or from a config (random weights), as `yolo train` does.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::args::{parse_bool, set_threads};
use ferroyolo::train::{self, FreezeSpec, TrainArgs, TrainHooks};

/// Every option is optional on the command line; unset ones take the reference's defaults.
#[derive(Args, Debug)]
pub struct TrainCliArgs {
    /// Starting weights (.pt, .safetensors, official name) or config (yolo26n.yaml ... yolo26x.yaml).
    #[arg(long)]
    model: Option<String>,
    /// Dataset YAML.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    imgsz: Option<usize>,
    /// Epochs without improvement of mAP50-95 before stopping (0: never).
    #[arg(long)]
    patience: Option<usize>,
    /// auto, SGD, Adam, AdamW or MuSGD.
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long)]
    lr0: Option<f32>,
    #[arg(long)]
    lrf: Option<f32>,
    #[arg(long)]
    momentum: Option<f32>,
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long)]
    warmup_epochs: Option<f32>,
    #[arg(long, value_parser = parse_bool)]
    cos_lr: Option<bool>,
    #[arg(long)]
    warmup_momentum: Option<f32>,
    #[arg(long)]
    warmup_bias_lr: Option<f32>,
    /// Nominal batch size: gradients accumulate to about this many images per step.
    #[arg(long)]
    nbs: Option<usize>,
    #[arg(long)]
    close_mosaic: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Data loading threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Freeze the first N layers (freeze=10) or listed layers / modules (freeze=0,1,23.cv2).
    #[arg(long, value_parser = |s: &str| FreezeSpec::parse(s).map_err(|e| e.to_string()))]
    freeze: Option<FreezeSpec>,
    #[arg(long)]
    project: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    exist_ok: Option<bool>,
    /// Validate after every epoch (the last one always is).
    #[arg(long, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    val: Option<bool>,
    #[arg(long, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    plots: Option<bool>,
    #[arg(long)]
    mosaic: Option<f32>,
    #[arg(long)]
    fliplr: Option<f32>,
    #[arg(long)]
    flipud: Option<f32>,
    #[arg(long)]
    scale: Option<f32>,
    #[arg(long)]
    translate: Option<f32>,
    #[arg(long)]
    degrees: Option<f32>,
    #[arg(long)]
    shear: Option<f32>,
    #[arg(long)]
    perspective: Option<f32>,
    /// Loss gains.
    #[arg(long = "box")]
    box_gain: Option<f32>,
    #[arg(long = "cls")]
    cls_gain: Option<f32>,
    #[arg(long = "dfl")]
    dfl_gain: Option<f32>,
    /// Progress bars and per-epoch tables.
    #[arg(long, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    verbose: Option<bool>,
    #[arg(long)]
    hsv_h: Option<f32>,
    #[arg(long)]
    hsv_s: Option<f32>,
    #[arg(long)]
    hsv_v: Option<f32>,
    /// Validate with the one-to-many head and NMS.
    #[arg(long, value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    nms: Option<bool>,
    /// Continue an interrupted run: resume=path/to/last.pt, or bare `resume` with model=last.pt
    /// (or the most recent run under runs/detect).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    resume: Option<String>,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: TrainCliArgs) -> Result<()> {
    set_threads(a.threads)?;
    if let Some(r) = &a.resume {
        if r != "false" {
            let last = resume_path(r, a.model.as_deref())?;
            let summary = train::resume(&last, TrainHooks::default())?;
            return report(&summary);
        }
    }
    let mut t = TrainArgs::default();
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { t.$f = v; } )* };
    }
    set!(model, epochs, batch, imgsz, patience, optimizer, lr0, lrf, momentum, weight_decay, warmup_epochs, warmup_momentum, warmup_bias_lr, nbs, cos_lr, close_mosaic, seed, workers, project, name, exist_ok, val, plots, mosaic, fliplr, flipud, scale, translate, degrees, shear, perspective, box_gain, cls_gain, dfl_gain, hsv_h, hsv_s, hsv_v, nms, verbose);
    if let Some(f) = a.freeze.clone() {
        t.freeze = f;
    }
    let Some(data) = a.data.clone() else { bail!("train needs data=path/to/data.yaml") };
    t.data = data;
    let summary = train::train(&t)?;
    report(&summary)
}

fn report(s: &train::TrainSummary) -> Result<()> {
    if let Some(m) = &s.final_metrics {
        println!(
            "Best epoch {}: mAP50 {:.3}, mAP50-95 {:.3}. Weights: {} and {}",
            s.best_epoch,
            m.map50,
            m.map50_95,
            s.best().display(),
            s.last().display()
        );
    }
    Ok(())
}

/// The `last.pt` to resume: an explicit path, `model=` when it is a checkpoint, or the newest
/// `runs/detect/*/weights/last.pt`.
fn resume_path(resume: &str, model: Option<&str>) -> Result<PathBuf> {
    if resume != "true" {
        return Ok(PathBuf::from(resume));
    }
    if let Some(m) = model.filter(|m| m.ends_with(".pt")) {
        return Ok(PathBuf::from(m));
    }
    let runs = Path::new("runs/detect");
    let newest = std::fs::read_dir(runs)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("weights/last.pt"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    match newest {
        Some(p) => Ok(p),
        None => bail!("resume: no runs/detect/*/weights/last.pt found; give resume=path/to/last.pt"),
    }
}
