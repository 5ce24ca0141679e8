//! Learning from scratch: yolo26n from random weights on the project's own synthetic shapes
//! dataset (exact boxes) must reach mAP50 >= 0.9 on its validation split.
//!
//! Takes several minutes on two cores, so it is ignored by default; run it with
//! `cargo test --release -p ferroyolo --test train_scratch -- --ignored --nocapture`.
//! It needs no fixtures: the dataset is generated.

use std::time::Instant;

use ferroyolo::data::synthetic::{generate, SyntheticSpec};
use ferroyolo::train::{train, TrainArgs};

#[test]
#[ignore = "several minutes of CPU training; run with --ignored"]
fn yolo26n_learns_synthetic_shapes_from_scratch() {
    let root = std::env::temp_dir().join(format!("ferroyolo-scratch-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    // Three shapes (circle, square, triangle), 1-3 per image, 30-60 % of the side.
    let spec = SyntheticSpec {
        train: 256,
        val: 64,
        imgsz: 128,
        seed: 0,
        classes: 3,
        min_objects: 1,
        max_objects: 3,
        min_size: 0.3,
        max_size: 0.6,
        ..SyntheticSpec::default()
    };
    let data = generate(&root.join("shapes"), &spec).unwrap();
    let epochs: usize = std::env::var("FERROYOLO_SCRATCH_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let args = TrainArgs {
        model: "yolo26n.yaml".into(),
        data,
        epochs,
        imgsz: 128,
        batch: 16,
        // One optimizer step per batch: a small dataset gives few batches per epoch.
        nbs: 16,
        optimizer: "AdamW".into(),
        lr0: 0.002,
        plots: false,
        verbose: std::env::var_os("FERROYOLO_VERBOSE").is_some(),
        project: root.join("runs"),
        ..TrainArgs::default()
    };
    let t0 = Instant::now();
    let summary = train(&args).unwrap();
    let m = summary.final_metrics.expect("final validation");
    eprintln!(
        "from scratch: {} epochs in {:.0} s; best epoch {}: mAP50 {:.3}, mAP50-95 {:.3}",
        summary.epochs_run,
        t0.elapsed().as_secs_f64(),
        summary.best_epoch,
        m.map50,
        m.map50_95
    );
    assert!(m.map50 >= 0.9, "mAP50 {:.3} < 0.9 after {} epochs", m.map50, summary.epochs_run);
    std::fs::remove_dir_all(&root).ok();
}
