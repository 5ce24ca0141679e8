//! Fine-tuning a channel-pruned model (issue 5's acceptance: prune, then train on coco8): the
//! trainer starts from the pruned checkpoint as it is, so what it writes keeps the pruned widths
//! (not the config's full widths), has learned something, and loads and runs.

use std::collections::HashMap;

use ferroyolo::compress::prune::{prune_channels, ChannelCriterion};
use ferroyolo::engine::Tensor;
use ferroyolo::fixtures_or_skip;
use ferroyolo::model::{self, HeadMode};
use ferroyolo::train::{train, TrainArgs};
use ferroyolo::weights::Checkpoint;

#[test]
fn fine_tuning_a_pruned_model_keeps_its_shapes() {
    let fx = fixtures_or_skip!();
    let full = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let (pruned, _) = prune_channels(&full, 0.3, ChannelCriterion::BnScale).unwrap();
    assert!(pruned.parameter_count() < full.parameter_count() * 9 / 10);

    let project = std::env::temp_dir().join(format!("ferroyolo-prune-finetune-{}", std::process::id()));
    std::fs::create_dir_all(&project).unwrap();
    let start = project.join("pruned.safetensors");
    pruned.save_safetensors(&start).unwrap();
    let args = TrainArgs {
        model: start.display().to_string(),
        data: fx.join("coco8/data.yaml"),
        epochs: 1,
        imgsz: 160,
        batch: 4,
        project: project.clone(),
        plots: false,
        verbose: false,
        ..TrainArgs::default()
    };
    let summary = train(&args).unwrap();
    assert_eq!(summary.epoch_losses.len(), 1);
    assert!(summary.final_metrics.is_some(), "the fine-tuned model was validated");

    for path in [summary.last(), summary.best()] {
        let tuned = Checkpoint::load(&path).unwrap();
        assert_eq!(tuned.parameter_count(), pruned.parameter_count(), "{}", path.display());
        // Tensor by tensor: the pruned shapes, narrower than the original where pruned.
        let tuned_shapes: HashMap<&str, &[usize]> = tuned.tensors.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice())).collect();
        let mut narrower = 0;
        for (name, p) in &pruned.tensors {
            let shape = tuned_shapes.get(name.as_str()).unwrap_or_else(|| panic!("{}: {name} missing", path.display()));
            assert_eq!(*shape, p.shape.as_slice(), "{}: {name}", path.display());
            if p.shape != full.tensor(name).unwrap().shape {
                narrower += 1;
            }
        }
        assert!(narrower > 100, "only {narrower} tensors narrower than the original");

        // Training moved the weights: the BatchNorm running statistics at least follow the
        // coco8 batch (more than fp16 storage rounding could explain).
        let moved = pruned
            .tensors
            .iter()
            .filter(|(n, _)| n.ends_with("bn.running_mean"))
            .filter(|(n, p)| {
                let (a, b) = (p.values.as_f32().unwrap(), tuned.tensor(n).unwrap().values.as_f32().unwrap());
                a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-2 * x.abs().max(1.0))
            })
            .count();
        assert!(moved > 10, "{}: only {moved} BatchNorm layers changed", path.display());

        // It loads as a model and runs.
        let (m, _) = model::from_checkpoint(&tuned).unwrap();
        let x = Tensor::new([1, 3, 160, 160], vec![0.5; 3 * 160 * 160]);
        let out = m.forward(&x, HeadMode::OneToOne);
        assert_eq!((out.nc, out.anchors), (80, 20 * 20 + 10 * 10 + 5 * 5));
        assert!(out.boxes.iter().chain(&out.logits).all(|v| v.is_finite()));
    }
    std::fs::remove_dir_all(&project).ok();
}
