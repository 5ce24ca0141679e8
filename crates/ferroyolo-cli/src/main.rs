//! `ferroyolo`: the command line, in the Ultralytics style (`ferroyolo predict model=yolo26n.pt
//! source=bus.jpg`); `--key value` works as well as `key=value`.

mod args;
mod info;
mod measure;
mod predict;
mod prune;
mod quantize;
mod synthetic;
mod train;
mod val;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ferroyolo", version, about = "YOLO26 object detection in pure Rust", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Detect objects in images, directories, globs, list files or URLs.
    Predict(predict::PredictArgs),
    /// Show a model's layers, parameter counts, GFLOPs and class names.
    Info(info::InfoArgs),
    /// Convert a model to another format (safetensors).
    Export(info::ExportArgs),
    /// Score a model on a labelled dataset split (precision, recall, mAP50, mAP50-95).
    Val(val::ValArgs),
    /// Learn weights on a labelled dataset (fine-tune a checkpoint or start from a config).
    Train(Box<train::TrainCliArgs>),
    /// Prune a model: remove channels (smaller, faster) or zero weights, and compare before/after.
    Prune(prune::PruneArgs),
    /// Quantize a model to INT8 (calibrated on images) or store its weights in fp16/bf16.
    Quantize(quantize::QuantizeArgs),
    /// Write a synthetic shapes dataset with exact labels (for training from scratch).
    Synthetic(synthetic::SyntheticArgs),
}

fn main() {
    let cli = Cli::parse_from(args::normalize(std::env::args()));
    let result: Result<()> = match cli.command {
        Command::Predict(a) => predict::run(a),
        Command::Info(a) => info::run(a),
        Command::Export(a) => info::export(a),
        Command::Val(a) => val::run(a),
        Command::Train(a) => train::run(*a),
        Command::Synthetic(a) => synthetic::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
