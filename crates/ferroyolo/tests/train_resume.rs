//! A run killed after an epoch and resumed from its `last.pt` ends with exactly the weights of
//! the same run left uninterrupted; the checkpoints it writes load back in ferroyolo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferroyolo::fixtures_or_skip;
use ferroyolo::train::{resume, train, train_with_hooks, TrainArgs, TrainHooks};
use ferroyolo::weights::{load_training_state, Checkpoint, TensorValues};

fn args(fx: &Path, project: &Path, name: &str) -> TrainArgs {
    TrainArgs {
        model: fx.join("weights/yolo26n-coco.pt").display().to_string(),
        data: fx.join("coco8/data.yaml"),
        epochs: 4,
        imgsz: 160,
        // Two batches per epoch and a step every three: gradients are pending across epochs.
        batch: 2,
        nbs: 6,
        optimizer: "MuSGD".into(),
        warmup_epochs: 1.0,
        close_mosaic: 1,
        workers: 1,
        val: false,
        plots: false,
        verbose: false,
        project: project.to_path_buf(),
        name: name.into(),
        ..TrainArgs::default()
    }
}

/// Floating-point entries by name (checkpoints built by transfer and read back from a `.pt`
/// may list them in different orders).
fn floats(c: &Checkpoint) -> BTreeMap<String, Vec<f32>> {
    c.tensors
        .iter()
        .filter_map(|(n, t)| match &t.values {
            TensorValues::F32(v) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

fn results_without_time(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    csv.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 1).map(|(_, c)| c).collect::<Vec<_>>().join(",")).collect()
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let fx = fixtures_or_skip!();
    let project = std::env::temp_dir().join(format!("ferroyolo-train-resume-{}", std::process::id()));
    std::fs::remove_dir_all(&project).ok();

    let whole = train(&args(&fx, &project, "whole")).unwrap();
    assert_eq!(whole.epochs_run, 4);

    let cut = train_with_hooks(&args(&fx, &project, "cut"), TrainHooks { after_epoch: Some(Box::new(|done| done == 2)) }).unwrap();
    assert_eq!(cut.epochs_run, 2);
    let last: PathBuf = cut.last();
    // The interrupted run's last.pt is a full training checkpoint.
    let st = load_training_state(&last).unwrap();
    assert_eq!(st.epoch, 1, "two epochs done (0-based epoch 1)");
    assert!(st.model.is_some() && st.ema.is_some() && st.optimizer.is_some());
    let resumed = resume(&last, TrainHooks::default()).unwrap();
    assert_eq!(resumed.epochs_run, 2);
    assert_eq!(resumed.save_dir, cut.save_dir);

    // Final weights: the EMA in fp32 (last.safetensors) and the stripped last.pt (fp16).
    let a = Checkpoint::load(whole.save_dir.join("weights/last.safetensors")).unwrap();
    let b = Checkpoint::load(cut.save_dir.join("weights/last.safetensors")).unwrap();
    let (fa, fb) = (floats(&a), floats(&b));
    assert_eq!(fa.len(), fb.len());
    for ((na, va), (nb, vb)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs after resume");
    }
    let start = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let moved = floats(&start).iter().filter(|(n, s)| s.iter().zip(&fa[*n]).any(|(x, y)| (x - y).abs() > 1e-4)).count();
    assert!(moved > 100, "training changed the weights ({moved} tensors moved)");
    assert_eq!(results_without_time(&whole.save_dir), results_without_time(&cut.save_dir), "results.csv rows");

    // Finished checkpoints are in the release layout and load as models.
    for dir in [&whole.save_dir, &cut.save_dir] {
        for f in ["weights/last.pt", "weights/best.pt"] {
            let st = load_training_state(dir.join(f)).unwrap();
            assert_eq!(st.epoch, -1, "{f} stripped");
            assert!(st.optimizer.is_none());
            ferroyolo::Yolo::load(dir.join(f)).unwrap();
        }
    }
    let la = floats(&Checkpoint::load(whole.save_dir.join("weights/last.pt")).unwrap());
    let lb = floats(&Checkpoint::load(cut.save_dir.join("weights/last.pt")).unwrap());
    assert_eq!(la, lb, "stripped last.pt identical");
    std::fs::remove_dir_all(&project).ok();
}
