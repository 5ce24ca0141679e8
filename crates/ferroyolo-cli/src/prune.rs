//! `ferroyolo prune`: channel pruning (smaller, faster) or unstructured magnitude pruning
//! (sparse weights) of a checkpoint, with sizes, speed and accuracy before and after.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{parse_bool, set_threads};
use crate::measure::{median_latency_ms, safetensors_size};
use ferroyolo::compress::prune::{prune_channels_with, prune_unstructured, ChannelCriterion, ChannelPruneOptions, SparsityScope};
use ferroyolo::data::dataset::DatasetConfig;
use ferroyolo::train::{self, TrainArgs};
use ferroyolo::val::ValOptions;
use ferroyolo::weights::{hub, save_pt, Checkpoint, ModelWeights, TrainingCheckpoint};
use ferroyolo::Yolo;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Weights to prune: a .pt or .safetensors path, or an official name.
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// channel (remove channels: smaller and faster) or unstructured (zero single weights).
    #[arg(long, default_value = "channel", value_parser = ["channel", "unstructured"])]
    method: String,
    /// Fraction removed: of each channel group (channel) or of the conv weights (unstructured).
    #[arg(long, default_value_t = 0.3)]
    ratio: f64,
    /// Channel ranking: bn (BatchNorm |γ|) or l2 (filter norm).
    #[arg(long, default_value = "bn", value_parser = ["bn", "l2"])]
    criterion: String,
    /// Unstructured threshold: global (one for the model) or layer (each layer the same fraction).
    #[arg(long, default_value = "global", value_parser = ["global", "layer"])]
    scope: String,
    /// Round kept channel widths up to a multiple of this (channel method).
    #[arg(long, default_value_t = 1)]
    multiple: usize,
    /// Fold removed channels' typical output into the consumers (channel method).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    compensate: bool,
    /// Where the pruned weights go: .safetensors (default `<model>-pruned.safetensors`) or .pt.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Dataset YAML: score mAP50-95 before and after (and fine-tune on it with epochs>0).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fine-tuning epochs after pruning (needs data).
    #[arg(long, default_value_t = 0)]
    epochs: usize,
    /// Image size for validation, fine-tuning and the latency measure.
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    /// Fine-tuning batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Forward passes timed for the latency (median reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print every channel group / pruned layer.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    verbose: bool,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Size, cost and speed of one model.
struct Stats {
    params: usize,
    gflops: f64,
    bytes: u64,
    latency_ms: f64,
    map50_95: Option<f64>,
}

fn default_output(model: &Path) -> PathBuf {
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    model.with_file_name(format!("{stem}-pruned.safetensors"))
}

/// Writes `ckpt` as `.pt` (Ultralytics layout) or safetensors, by extension.
fn save(ckpt: &Checkpoint, path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "pt") {
        let args = ckpt.train_args.clone();
        save_pt(path, &TrainingCheckpoint::release(ModelWeights::from_checkpoint(ckpt), &args))?;
    } else {
        ckpt.save_safetensors(path)?;
    }
    Ok(())
}

fn measure(ckpt: &Checkpoint, bytes: u64, a: &PruneArgs, data: Option<&DatasetConfig>) -> Result<Stats> {
    let yolo = Yolo::from_checkpoint(ckpt.clone())?;
    let gflops = yolo.model().layer_flops(a.imgsz, a.imgsz).iter().sum::<u64>() as f64 / 1e9;
    let latency_ms = median_latency_ms(yolo.model(), a.imgsz, a.runs);
    let map50_95 = match data {
        Some(d) => Some(yolo.val(d, &val_options(a.imgsz))?.map50_95),
        None => None,
    };
    Ok(Stats { params: ckpt.parameter_count(), gflops, bytes, latency_ms, map50_95 })
}

fn val_options(imgsz: usize) -> ValOptions {
    ValOptions { imgsz: imgsz as u32, plots: false, progress: false, ..ValOptions::default() }
}


pub fn run(a: PruneArgs) -> Result<()> {
    set_threads(a.threads)?;
    if a.epochs > 0 && a.data.is_none() {
        bail!("epochs={} needs data=path/to/data.yaml to fine-tune on", a.epochs);
    }
    if a.imgsz == 0 || !a.imgsz.is_multiple_of(32) {
        bail!("imgsz={} must be a positive multiple of 32", a.imgsz);
    }
    let weights = hub::resolve_weights(&a.model)?;
    let src = Checkpoint::load(&weights)?;
    let output = a.output.clone().unwrap_or_else(|| default_output(&weights));

    let pruned = match a.method.as_str() {
        "channel" => {
            let criterion = if a.criterion == "bn" { ChannelCriterion::BnScale } else { ChannelCriterion::FilterNorm };
            let (out, report) = prune_channels_with(&src, &ChannelPruneOptions { ratio: a.ratio, criterion, multiple: a.multiple, compensate: a.compensate })?;
            if a.verbose {
                println!("{report}");
            } else {
                let (b, k) = report.prunable_channels();
                println!("Removed {} of {b} prunable channels ({:.1}%) in {} groups, ranked by {:?}", b - k, 100.0 * (b - k) as f64 / b.max(1) as f64, report.groups.len(), criterion);
            }
            out
        }
        _ => {
            let scope = if a.scope == "global" { SparsityScope::Global } else { SparsityScope::PerLayer };
            let (out, report) = prune_unstructured(&src, a.ratio, scope)?;
            if a.verbose {
                println!("{report}");
            } else {
                println!("Zeroed {:.1}% of the weights of {} conv layers ({:?}; {} left dense)", 100.0 * report.achieved(), report.layers.len(), scope, report.skipped.len());
            }
            out
        }
    };
    save(&pruned, &output).with_context(|| format!("saving {}", output.display()))?;
    println!("Saved {}", output.display());

    let data = a.data.as_ref().map(DatasetConfig::load).transpose()?;
    let scratch = output.with_extension("sizing.safetensors");
    let before = measure(&src, safetensors_size(&src, &scratch)?, &a, data.as_ref())?;
    let after = measure(&pruned, safetensors_size(&pruned, &scratch)?, &a, data.as_ref())?;
    let tuned = if a.epochs > 0 { Some(fine_tune(&pruned, &output, &a)?) } else { None };

    println!();
    println!("{:<24} {:>12} {:>12} {:>8}", "", "before", "after", "change");
    let row = |what: &str, b: f64, x: f64, fmt: &dyn Fn(f64) -> String| {
        println!("{what:<24} {:>12} {:>12} {:>+7.1}%", fmt(b), fmt(x), 100.0 * (x / b - 1.0));
    };
    row("parameters", before.params as f64, after.params as f64, &|v| format!("{v:.0}"));
    row(&format!("GFLOPs ({0}x{0})", a.imgsz), before.gflops, after.gflops, &|v| format!("{v:.2}"));
    row("size (safetensors, MB)", before.bytes as f64 / 1e6, after.bytes as f64 / 1e6, &|v| format!("{v:.2}"));
    row(&format!("latency (ms, median {})", a.runs), before.latency_ms, after.latency_ms, &|v| format!("{v:.1}"));
    if let (Some(b), Some(x)) = (before.map50_95, after.map50_95) {
        row("mAP50-95", b, x, &|v| format!("{v:.4}"));
        if let Some(t) = tuned {
            row(&format!("mAP50-95 +{} epochs", a.epochs), b, t, &|v| format!("{v:.4}"));
        }
    }
    if a.method == "unstructured" {
        println!("(zeroed weights are stored and computed densely: size and latency do not change)");
    }
    Ok(())
}

/// Fine-tunes the pruned checkpoint saved at `path` and returns the mAP50-95 of the best epoch.
fn fine_tune(pruned: &Checkpoint, path: &Path, a: &PruneArgs) -> Result<f64> {
    let data_path = a.data.as_ref().expect("checked by run");
    let data = DatasetConfig::load(data_path)?;
    let args = TrainArgs {
        model: path.display().to_string(),
        data: data_path.clone(),
        epochs: a.epochs,
        imgsz: a.imgsz,
        batch: a.batch,
        name: "prune-finetune".into(),
        ..TrainArgs::default()
    };
    let summary = train::train(&args)?;
    let best = Checkpoint::load(summary.best())?;
    if best.parameter_count() != pruned.parameter_count() {
        bail!("fine-tuning changed the model's size ({} -> {} parameters)", pruned.parameter_count(), best.parameter_count());
    }
    let yolo = Yolo::from_checkpoint(best)?;
    Ok(yolo.val(&data, &val_options(a.imgsz))?.map50_95)
}
