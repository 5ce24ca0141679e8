//! `ferroyolo info` (layers, parameters, GFLOPs, classes; with `weights=true` per-tensor weight
//! statistics and histograms) and `ferroyolo export`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::args::parse_bool;
use ferroyolo::compress::report::{WeightReport, WeightView, DEFAULT_BINS};
use ferroyolo::compress::quantize::int8_layer_count;
use ferroyolo::model::{LayerSpec, ParamRole};
use ferroyolo::output::run_dir::increment_run_dir;
use ferroyolo::Yolo;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Weights: a .pt or .safetensors path, or an official name.
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// Image size for the GFLOPs count.
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    /// Also print per-tensor weight statistics (min, max, mean, std, zeros, int8 error) and save
    /// histograms.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    weights: bool,
    /// With weights=true: describe the convolutions as inference runs them (BatchNorm folded in)
    /// instead of the stored state_dict tensors.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    folded: bool,
    /// Histogram bins.
    #[arg(long, default_value_t = DEFAULT_BINS)]
    bins: usize,
    /// Save histograms and the JSON report (with weights=true).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    plots: bool,
    /// Folder for the histograms (default: project/name, numbered if it exists).
    #[arg(long)]
    save_dir: Option<PathBuf>,
    /// Parent folder of the run folder.
    #[arg(long, default_value = "runs/detect")]
    project: PathBuf,
    /// Run folder name (numbered if it exists).
    #[arg(long, default_value = "info")]
    name: String,
    /// Reuse the run folder if it exists.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    exist_ok: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Weights to convert.
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// Target format.
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
    format: String,
    /// Output path (default: beside the input, with the format's extension).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Thousands separators, as the reference prints counts.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn describe(spec: &LayerSpec) -> String {
    match spec {
        LayerSpec::Conv { c1, c2, k, s } => format!("[{c1}, {c2}, {k}, {s}]"),
        LayerSpec::C3k2 { c1, c2, n, c3k, e, attn, .. } => format!("[{c1}, {c2}, {n}, {c3k}, {e}, {attn}]"),
        LayerSpec::Sppf { c1, c2, k, n, shortcut } => format!("[{c1}, {c2}, {k}, {n}, {shortcut}]"),
        LayerSpec::C2psa { c1, c2, n, e } => format!("[{c1}, {c2}, {n}, {e}]"),
        LayerSpec::Upsample { scale } => format!("[None, {scale}, 'nearest']"),
        LayerSpec::Concat => "[1]".to_string(),
        LayerSpec::Detect { nc, reg_max, end2end, ch } => format!("[{nc}, {reg_max}, {end2end}, {ch:?}]"),
    }
}

pub fn run(a: InfoArgs) -> Result<()> {
    if a.imgsz == 0 || !a.imgsz.is_multiple_of(32) {
        bail!("imgsz={} must be a positive multiple of 32", a.imgsz);
    }
    if a.bins == 0 {
        bail!("bins must be at least 1");
    }
    let yolo = Yolo::load(&a.model)?;
    let model = yolo.model();
    let flops = model.layer_flops(a.imgsz, a.imgsz);
    let detect_one_branch = *flops.last().unwrap_or(&0);
    println!("{:>3} {:>18} {:>3} {:>10}  {:<10} arguments", "", "from", "n", "params", "module");
    for (i, (node, layer)) in model.plan.layers.iter().zip(&model.layers).enumerate() {
        let prefix = format!("model.{i}.");
        let params: usize = yolo.params().iter().filter(|p| p.name.starts_with(&prefix)).map(|p| p.numel()).sum();
        let from = if node.from_raw.len() == 1 { node.from_raw[0].to_string() } else { format!("{:?}", node.from_raw) };
        let n = match &node.spec {
            LayerSpec::C3k2 { n, .. } | LayerSpec::C2psa { n, .. } => *n,
            _ => 1,
        };
        println!("{i:>3} {from:>18} {n:>3} {:>10}  {:<10} {}", grouped(params), layer.type_name(), describe(&node.spec));
    }
    let count = |role: ParamRole| yolo.params().iter().filter(|p| p.role == role).map(|p| p.numel()).sum::<usize>();
    let total: usize = yolo.params().iter().map(|p| p.numel()).sum();
    let (weights, biases, bn) = (count(ParamRole::Weight), count(ParamRole::Bias), count(ParamRole::BatchNorm));
    let scale = &model.plan.scale;
    // Training runs both Detect branch pairs; inference runs one.
    let infer: u64 = flops.iter().sum();
    let train = infer + detect_one_branch;
    println!();
    println!(
        "YOLO26{scale} summary: {} layers, {} parameters ({} weights, {} biases, {} BatchNorm), {:.1} GFLOPs at {} ({:.1} with both head branches)",
        model.layers.len(),
        grouped(total),
        grouped(weights),
        grouped(biases),
        grouped(bn),
        infer as f64 / 1e9,
        a.imgsz,
        train as f64 / 1e9,
    );
    let int8 = int8_layer_count(yolo.checkpoint());
    if int8 > 0 {
        let q = &yolo.checkpoint().metadata["quantization"];
        let float: Vec<&str> = q["float_layers"].as_array().map(|v| v.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
        println!(
            "INT8: {int8} convolutions quantized (int8 per-channel weights, uint8 activations; {} calibration on {} images); float: {}",
            q["calibration"].as_str().unwrap_or("unknown"),
            q["calibration_images"].as_u64().map_or("?".into(), |n| n.to_string()),
            if float.is_empty() { "Detect output convolutions".to_string() } else { format!("{} and the Detect output convolutions", float.join(", ")) }
        );
    }
    let names = yolo.names();
    println!("{} classes: {}", names.len(), names.iter().enumerate().map(|(i, n)| format!("{i}: {n}")).collect::<Vec<_>>().join(", "));
    if a.weights {
        weights_report(&yolo, &a)?;
    }
    Ok(())
}

fn weights_report(yolo: &Yolo, a: &InfoArgs) -> Result<()> {
    let view = if a.folded { WeightView::Folded } else { WeightView::Raw };
    let report = WeightReport::new(yolo.checkpoint(), view)?;
    println!();
    print!("{}", report.table());
    if a.plots {
        let dir = match &a.save_dir {
            Some(d) => d.clone(),
            None => increment_run_dir(&a.project, &a.name, a.exist_ok)?,
        };
        let files = report.save(&dir, a.bins)?;
        println!("{} histograms and weights_{}.json saved to {}", files.len() - 1, view.name(), dir.display());
    }
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    let yolo = Yolo::load(&a.model)?;
    let out = a.output.unwrap_or_else(|| a.model.with_extension("safetensors"));
    if out == a.model {
        bail!("{}: output would overwrite the input", out.display());
    }
    yolo.checkpoint().save_safetensors(&out)?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("Exported {} to {} ({:.1} MB)", a.model.display(), out.display(), size as f64 / 1e6);
    Ok(())
}
