//! `ferroyolo quantize`: post-training INT8 quantization calibrated on a dataset split or an image
//! folder (or, with `dtype=fp16|bf16`, a half-precision weights file), with size, speed and
//! accuracy before and after.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{parse_bool, set_threads};
use crate::measure::{median_latency_ms, safetensors_size};
use ferroyolo::compress::quantize::{cast_weights, quantize, Calibration, QuantizeOptions};
use ferroyolo::data::dataset::{list_images, DatasetConfig};
use ferroyolo::data::image_io::load_image;
use ferroyolo::data::letterbox::square_input;
use ferroyolo::data::source::{read_item, resolve_source};
use ferroyolo::engine::Tensor;
use ferroyolo::val::ValOptions;
use ferroyolo::weights::{hub, Checkpoint, DType};
use ferroyolo::Yolo;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Weights to quantize: a .pt or .safetensors path, or an official name.
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// Dataset YAML: calibration images come from its `split`, and both models are scored on its val split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset split to calibrate on.
    #[arg(long, default_value = "val")]
    split: String,
    /// Calibrate on these images instead (file, folder or glob).
    #[arg(long)]
    source: Option<String>,
    /// Most calibration images used.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Calibration (and validation) image size.
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    /// int8 (quantized compute), or fp16 / bf16 (half-precision weights, float compute).
    #[arg(long, default_value = "int8", value_parser = ["int8", "fp16", "bf16"])]
    dtype: String,
    /// Activation range method: minmax (the full range seen) or percentile (clips the rarest extremes).
    #[arg(long, default_value = "minmax", value_parser = ["minmax", "percentile"])]
    method: String,
    /// Percentile kept by method=percentile.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// A layer whose INT8 version alone lowers the head outputs' SQNR below this (dB) stays float.
    #[arg(long, default_value_t = 30.0)]
    min_sqnr: f64,
    /// Layers kept in float whatever their sensitivity (comma-separated state_dict prefixes, e.g. model.0,model.22).
    #[arg(long, value_delimiter = ',')]
    keep_float: Vec<String>,
    /// Correct each quantized layer's bias for the mean output shift quantization causes.
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    bias_correction: bool,
    /// Output file (default `<model stem>-int8.safetensors` beside the input).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Score float and quantized models on the dataset's val split (needs data).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    val: bool,
    /// Forward passes timed for the latency (median reported; 0 skips).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print every layer's range and sensitivity.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    verbose: bool,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn default_output(model: &Path, dtype: &str) -> PathBuf {
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    model.with_file_name(format!("{stem}-{dtype}.safetensors"))
}

fn calibration_images(a: &QuantizeArgs, data: Option<&DatasetConfig>) -> Result<Vec<Tensor>> {
    let images: Vec<Tensor> = if let Some(spec) = &a.source {
        resolve_source(spec)?.iter().take(a.images).map(|item| Ok(square_input(&read_item(item)?, a.imgsz as u32))).collect::<Result<_>>()?
    } else if let Some(d) = data {
        let files = list_images(d.split(&a.split)?)?;
        files.iter().take(a.images).map(|f| Ok(square_input(&load_image(f)?, a.imgsz as u32))).collect::<Result<_>>()?
    } else {
        bail!("quantize needs calibration images: data=path/to/data.yaml (its {} split) or source=folder", a.split);
    };
    if images.is_empty() {
        bail!("no calibration images found");
    }
    Ok(images)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    set_threads(a.threads)?;
    if a.imgsz == 0 || !a.imgsz.is_multiple_of(32) {
        bail!("imgsz={} must be a positive multiple of 32", a.imgsz);
    }
    let weights = hub::resolve_weights(&a.model)?;
    let src = Checkpoint::load(&weights)?;
    let output = a.output.clone().unwrap_or_else(|| default_output(&weights, &a.dtype));
    let data = a.data.as_ref().map(DatasetConfig::load).transpose()?;

    let out = match a.dtype.as_str() {
        "int8" => {
            let images = calibration_images(&a, data.as_ref())?;
            let options = QuantizeOptions {
                calibration: Calibration::parse(&a.method, a.percentile)?,
                keep_float: a.keep_float.clone(),
                min_layer_sqnr_db: a.min_sqnr,
                sensitivity: true,
                bias_correction: a.bias_correction,
            };
            let t = Instant::now();
            let (q, report) = quantize(&src, &images, &options)?;
            if a.verbose {
                println!("{:<36} {:>10} {:>10} {:>9} {:>6}", "layer", "input min", "input max", "SQNR dB", "int8");
                for l in &report.layers {
                    let db = l.sqnr_db.map_or("-".to_string(), |d| format!("{d:.1}"));
                    println!("{:<36} {:>10.4} {:>10.4} {:>9} {:>6}", l.name, l.input_range.0, l.input_range.1, db, l.int8);
                }
            }
            println!("{report}");
            println!("Calibrated and quantized in {:.1} s", t.elapsed().as_secs_f64());
            q
        }
        "fp16" => cast_weights(&src, DType::F16)?,
        _ => cast_weights(&src, DType::BF16)?,
    };
    out.save_safetensors(&output).with_context(|| format!("saving {}", output.display()))?;
    println!("Saved {}", output.display());

    let scratch = output.with_extension("sizing.safetensors");
    let base = safetensors_size(&cast_weights(&src, DType::F32)?, &scratch)?;
    let size = std::fs::metadata(&output)?.len();
    println!();
    println!("{:<24} {:>12} {:>12}", "", "float32", a.dtype);
    println!("{:<24} {:>12.2} {:>12.2}   ({:.1}%)", "size (safetensors, MB)", base as f64 / 1e6, size as f64 / 1e6, 100.0 * size as f64 / base as f64);
    let float_model = Yolo::from_checkpoint(src)?;
    let quant_model = Yolo::load(&output)?;
    if a.runs > 0 {
        let (f, q) = (median_latency_ms(float_model.model(), a.imgsz, a.runs), median_latency_ms(quant_model.model(), a.imgsz, a.runs));
        println!("{:<24} {:>12.1} {:>12.1}   ({:.2}x)", format!("latency ms ({0}x{0})", a.imgsz), f, q, f / q);
    }
    if let (true, Some(d)) = (a.val, data.as_ref()) {
        let opts = ValOptions { imgsz: a.imgsz as u32, plots: false, progress: false, ..ValOptions::default() };
        let (f, q) = (float_model.val(d, &opts)?, quant_model.val(d, &opts)?);
        println!("{:<24} {:>12.4} {:>12.4}   ({:+.4})", "mAP50 (val)", f.map50, q.map50, q.map50 - f.map50);
        println!("{:<24} {:>12.4} {:>12.4}   ({:+.4})", "mAP50-95 (val)", f.map50_95, q.map50_95, q.map50_95 - f.map50_95);
    }
    Ok(())
}
