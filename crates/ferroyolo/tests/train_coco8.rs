//! Fine-tuning the COCO-trained yolo26n on coco8 (the acceptance run): 20 epochs at
//! imgsz 320 with the reference's defaults. The training loss must fall and the validation
//! mAP50-95 must stay within 0.05 of the starting model's.

use std::path::Path;

use ferroyolo::data::dataset::{scan_split, DatasetConfig};
use ferroyolo::fixtures_or_skip;
use ferroyolo::train::{train, TrainArgs};
use ferroyolo::val::{validate, ValOptions};
use ferroyolo::weights::Checkpoint;

fn start_map(weights: &Path, data: &Path) -> f64 {
    let ckpt = Checkpoint::load(weights).unwrap();
    let names = ckpt.names.clone();
    let (model, _) = ferroyolo::model::from_checkpoint(&ckpt).unwrap();
    let split = scan_split(&DatasetConfig::load(data).unwrap(), "val").unwrap();
    // As the trainer validates: batch 2 × 16, end-to-end head.
    let opts = ValOptions { imgsz: 320, batch: 32, plots: false, progress: false, ..Default::default() };
    validate(&model, &names, &split, &opts).unwrap().map50_95
}

#[test]
fn fine_tune_coco8_keeps_accuracy_and_lowers_the_loss() {
    let fx = fixtures_or_skip!();
    let weights = fx.join("weights/yolo26n-coco.pt");
    let data = fx.join("coco8/data.yaml");
    let project = std::env::temp_dir().join(format!("ferroyolo-train-coco8-{}", std::process::id()));
    let args = TrainArgs {
        model: weights.display().to_string(),
        data: data.clone(),
        epochs: 20,
        imgsz: 320,
        project: project.clone(),
        plots: false,
        verbose: false,
        ..TrainArgs::default()
    };
    let summary = train(&args).unwrap();
    let start = start_map(&weights, &data);
    let end = summary.final_metrics.as_ref().expect("final validation").map50_95;
    eprintln!("coco8 mAP50-95: start {start:.4}, after 20 epochs (best.pt) {end:.4}, best epoch {}", summary.best_epoch);
    assert!(end >= start - 0.05, "mAP50-95 fell from {start:.4} to {end:.4}");

    let totals: Vec<f32> = summary.epoch_losses.iter().map(|l| l.sum()).collect();
    assert_eq!(totals.len(), 20);
    let first: f32 = totals[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = totals[15..].iter().sum::<f32>() / 5.0;
    eprintln!("training loss (one-to-one box+cls+l1), mean of epochs 1-5: {first:.3}, 16-20: {last:.3}");
    assert!(last < first, "training loss did not fall: {first} -> {last}");

    let csv = std::fs::read_to_string(summary.save_dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 21, "header + one row per epoch");
    assert!(csv.lines().skip(1).all(|l| !l.contains(",,")), "validation losses are recorded every epoch");
    for f in ["weights/last.pt", "weights/best.pt", "weights/best.safetensors", "args.yaml"] {
        assert!(summary.save_dir.join(f).is_file(), "{f} written");
    }
    std::fs::remove_dir_all(&project).ok();
}
