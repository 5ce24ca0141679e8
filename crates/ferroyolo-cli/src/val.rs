//! `ferroyolo val`: score a model on a labelled dataset split, printing the reference's table
//! (or one JSON document) and writing plots to `runs/detect/val{,2,...}`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::args::{parse_bool, parse_imgsz, set_threads, HeadArgs};
use ferroyolo::data::dataset::DatasetConfig;
use ferroyolo::output::run_dir::increment_run_dir;
use ferroyolo::val::ValOptions;
use ferroyolo::Yolo;

#[derive(Args, Debug)]
pub struct ValArgs {
    /// Weights: a .pt or .safetensors path, or an official name (yolo26n.pt ... yolo26x.pt).
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// Dataset YAML (path, train/val/test, names).
    #[arg(long)]
    data: PathBuf,
    /// Long side of the loaded images (one number; of two, the larger is used).
    #[arg(long, default_value = "640", value_parser = parse_imgsz)]
    imgsz: (u32, u32),
    /// Images per batch (also groups images for the rectangular input shapes).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.001)]
    conf: f32,
    #[command(flatten)]
    head: HeadArgs,
    /// Dataset split to score.
    #[arg(long, default_value = "val", value_parser = ["val", "test", "train"])]
    split: String,
    /// Output: text (the results table) or json (one JSON document on stdout).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Parent folder of the run folder.
    #[arg(long, default_value = "runs/detect")]
    project: PathBuf,
    /// Run folder name (numbered if it exists).
    #[arg(long, default_value = "val")]
    name: String,
    /// Reuse the run folder if it exists.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    exist_ok: bool,
    /// Save plots: PR / F1 / P / R curves, confusion matrices, sample batches.
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    plots: bool,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: ValArgs) -> Result<()> {
    set_threads(a.threads)?;
    let classes = a.head.classes.map(|c| c.0);
    let json = a.format == "json";
    let imgsz = a.imgsz.0.max(a.imgsz.1);
    if a.imgsz.0 != a.imgsz.1 {
        eprintln!("WARNING: val takes one image size; using imgsz={imgsz}");
    }
    let model = Yolo::load(&a.model)?;
    let data = DatasetConfig::load(&a.data)?;
    let save_dir = if a.plots { Some(increment_run_dir(&a.project, &a.name, a.exist_ok)?) } else { None };
    let opts = ValOptions {
        imgsz,
        batch: a.batch,
        conf: a.conf,
        iou: a.head.iou,
        max_det: a.head.max_det,
        classes,
        nms: a.head.nms,
        agnostic_nms: a.head.agnostic_nms,
        split: a.split,
        plots: a.plots,
        save_dir,
        progress: true,
        loss: None,
    };
    let metrics = model.val(&data, &opts)?;
    // The table is the log: on stdout normally, on stderr when stdout carries the JSON.
    let mut log = format!("{}{}\n", metrics.table(true), metrics.speed_line());
    if let Some(d) = &metrics.save_dir {
        log += &format!("Results saved to {}\n", d.display());
    }
    if json {
        eprint!("{log}");
        println!("{}", serde_json::to_string_pretty(&metrics.to_json())?);
    } else {
        print!("{log}");
    }
    Ok(())
}
