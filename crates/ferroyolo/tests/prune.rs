//! Pruning: unstructured sparsity reaches its target; channel pruning is a pure selection of the
//! source's values whose result loads and runs, removes nothing at ratio 0, and is exact when the
//! removed channels carried nothing (zeroed BatchNorm scale and shift).

use std::collections::HashMap;
use std::path::Path;

use ferroyolo::compress::prune::{channel_groups, prune_channels, prune_channels_with, prune_unstructured, ChannelCriterion, ChannelPruneOptions, SparsityScope};
use ferroyolo::data::npy::read_npy;
use ferroyolo::engine::Tensor;
use ferroyolo::model::{self, HeadMode, HeadOutput};
use ferroyolo::weights::{Checkpoint, TensorValues};

fn load(fx: &Path, name: &str) -> Checkpoint {
    Checkpoint::load(fx.join("weights").join(format!("{name}.pt"))).unwrap()
}

/// A batch of two 320×256 images from the fixtures (small: these tests run several forwards).
fn input(fx: &Path) -> Tensor {
    let a = read_npy(fx.join("reference/input_rand_2x320x256.npy")).unwrap();
    Tensor::new(a.shape.clone().try_into().unwrap(), a.data)
}

fn run(ckpt: &Checkpoint, x: &Tensor, mode: HeadMode) -> HeadOutput {
    model::from_checkpoint(ckpt).unwrap().0.forward(x, mode)
}

fn max_diff(a: &HeadOutput, b: &HeadOutput) -> f32 {
    assert_eq!((a.boxes.len(), a.logits.len()), (b.boxes.len(), b.logits.len()));
    a.boxes.iter().zip(&b.boxes).chain(a.logits.iter().zip(&b.logits)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values<'a>(c: &'a Checkpoint, name: &str) -> &'a [f32] {
    c.tensor(name).unwrap().values.as_f32().unwrap()
}

fn set(c: &mut Checkpoint, name: &str, f: impl Fn(&mut [f32])) {
    let t = c.tensors.iter_mut().find(|(n, _)| n == name).map(|(_, t)| t).unwrap();
    let TensorValues::F32(v) = &mut t.values else { panic!("{name} is not f32") };
    f(v);
}

#[test]
fn ratio_zero_is_the_identity() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26n-coco");
    let (out, report) = prune_channels(&src, 0.0, ChannelCriterion::BnScale).unwrap();
    assert_eq!(report.params_before, report.params_after);
    assert_eq!(report.flops_before, report.flops_after);
    for ((n1, a), (n2, b)) in src.tensors.iter().zip(&out.tensors) {
        assert_eq!(n1, n2);
        assert_eq!(a.shape, b.shape, "{n1}");
        assert_eq!(a.values, b.values, "{n1}");
    }
    let x = input(&fx);
    let (a, b) = (run(&src, &x, HeadMode::OneToOne), run(&out, &x, HeadMode::OneToOne));
    assert_eq!(a.boxes, b.boxes);
    assert_eq!(a.logits, b.logits);
}

/// Every kept output row / input slice of every pruned tensor is found, in order, in the
/// source: the new tensor is the source restricted to kept indices along dims 0 and 1. (The
/// random checkpoint has no repeated values, so a match cannot be a coincidence.)
#[test]
fn pruned_checkpoint_is_a_selection_that_loads_and_runs() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26n-rand");
    let (out, report) = prune_channels(&src, 0.3, ChannelCriterion::BnScale).unwrap();
    let src_index: HashMap<&str, _> = src.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut narrowed = 0;
    for (name, t) in &out.tensors {
        let s = src_index[name.as_str()];
        assert_eq!(t.shape.len(), s.shape.len(), "{name}");
        assert!(t.shape.iter().zip(&s.shape).all(|(a, b)| a <= b), "{name}: {:?} vs {:?}", t.shape, s.shape);
        assert_eq!(t.shape.get(2..), s.shape.get(2..), "{name}: kernel changed");
        if t.shape == s.shape {
            assert_eq!(t.values, s.values, "{name}: same shape but different values");
            continue;
        }
        narrowed += 1;
        let (tv, sv) = (t.values.as_f32().unwrap(), s.values.as_f32().unwrap());
        let inner: usize = s.shape.get(2..).map_or(1, |k| k.iter().product());
        // Find, for each kept output row, its source row; then each kept input slice.
        let (rows_t, rows_s) = (t.shape[0], s.shape[0]);
        let (ins_t, ins_s) = (t.shape.get(1).copied().unwrap_or(1), s.shape.get(1).copied().unwrap_or(1));
        let row = |v: &[f32], cols: usize, r: usize| v[r * cols * inner..(r + 1) * cols * inner].to_vec();
        let mut from = 0;
        for r in 0..rows_t {
            let mine = row(tv, ins_t, r);
            // The source row with the kept input slices: match by greedy subsequence over inputs.
            let found = (from..rows_s).find(|&q| {
                let theirs = row(sv, ins_s, q);
                let mut i = 0;
                for c in 0..ins_s {
                    if i < ins_t && mine[i * inner..(i + 1) * inner] == theirs[c * inner..(c + 1) * inner] {
                        i += 1;
                    }
                }
                i == ins_t
            });
            let q = found.unwrap_or_else(|| panic!("{name}: kept row {r} is not a selection of a source row"));
            from = q + 1;
        }
    }
    assert!(narrowed > 100, "only {narrowed} tensors narrowed");
    let (removed_from, kept) = report.prunable_channels();
    let removed = (removed_from - kept) as f64 / removed_from as f64;
    assert!((0.27..0.33).contains(&removed), "removed {removed}");
    assert!(report.flops_after < report.flops_before * 85 / 100, "{report}");
    assert!(report.params_after < report.params_before * 90 / 100, "{report}");

    // Runs in both head modes with the right output shapes, and still mostly agrees with the
    // source on the strongest detections' classes (a loose sanity check, not accuracy).
    let x = input(&fx);
    for mode in [HeadMode::OneToOne, HeadMode::OneToMany] {
        let (a, b) = (run(&src, &x, mode), run(&out, &x, mode));
        assert_eq!((b.batch, b.nc, b.anchors), (a.batch, a.nc, a.anchors));
        assert!(b.boxes.iter().chain(&b.logits).all(|v| v.is_finite()));
    }
    // Saved and reloaded, it is the same model.
    let dir = std::env::temp_dir().join(format!("ferroyolo-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pruned.safetensors");
    out.save_safetensors(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    let (a, b) = (run(&out, &x, HeadMode::OneToOne), run(&back, &x, HeadMode::OneToOne));
    assert_eq!(a.logits, b.logits);
    std::fs::remove_dir_all(&dir).ok();
}

/// Zero the BatchNorm scale and shift of the channels the pruner will choose (so they output
/// exactly 0 and nothing downstream sees them); pruning must then leave the outputs unchanged.
/// This checks every producer, pass-through and consumer slice of every group.
#[test]
fn pruning_dead_channels_keeps_the_outputs() {
    let fx = ferroyolo::fixtures_or_skip!();
    for name in ["yolo26n-rand", "yolo26n-coco"] {
        let src = load(&fx, name);
        let groups = channel_groups(&src).unwrap();
        let ratio = 0.3;
        let mut dead = src.clone();
        for g in &groups {
            let k = (g.width as f64 * ratio).round() as usize;
            // Spread the dead channels over the group (not the first k: offsets must matter).
            let chosen: Vec<usize> = (0..k).map(|j| (j * 7 + 3) % g.width).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            assert_eq!(chosen.len(), k, "{}: choose distinct channels", g.name);
            for (prefix, offset) in g.producers.iter().map(|(p, o)| (p.as_str(), *o)).chain(g.passthrough.iter().map(|p| (p.as_str(), 0))) {
                for t in ["bn.weight", "bn.bias"] {
                    set(&mut dead, &format!("{prefix}.{t}"), |v| chosen.iter().for_each(|&c| v[offset + c] = 0.0));
                }
            }
        }
        let x = input(&fx);
        let (pruned, report) = prune_channels(&dead, ratio, ChannelCriterion::BnScale).unwrap();
        assert!(report.flops_after < report.flops_before);
        for mode in [HeadMode::OneToOne, HeadMode::OneToMany] {
            let (a, b) = (run(&dead, &x, mode), run(&pruned, &x, mode));
            let d = max_diff(&a, &b);
            assert!(d < 1e-4, "{name} {mode:?}: pruned differs by {d}");
        }
        // The check has teeth: the dead channels' removal is what kept outputs equal. Pruning
        // the source (live channels) changes them.
        let (live, _) = prune_channels(&src, ratio, ChannelCriterion::BnScale).unwrap();
        let d = max_diff(&run(&src, &x, HeadMode::OneToOne), &run(&live, &x, HeadMode::OneToOne));
        assert!(d > 1e-2, "{name}: pruning live channels changed nothing ({d})");
    }
}

/// Channels with `γ = 0` output the constant `act(β)` (residual chains excepted); compensation moves that constant into the
/// consumers, so removing them changes the outputs far less than dropping them as zeros (exact
/// but for the zero-padded borders of 3×3 consumers).
#[test]
fn compensation_keeps_constant_channels_contribution() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26n-coco");
    let mut constant = src.clone();
    for g in channel_groups(&src).unwrap() {
        let k = (g.width as f64 * 0.3).round() as usize;
        let chosen: Vec<usize> = (0..k).map(|j| (j * 7 + 3) % g.width).collect();
        for (prefix, offset) in g.producers.iter().map(|(p, o)| (p.as_str(), *o)).chain(g.passthrough.iter().map(|p| (p.as_str(), 0))) {
            set(&mut constant, &format!("{prefix}.bn.weight"), |v| chosen.iter().for_each(|&c| v[offset + c] = 0.0));
            // Residual chains are not compensated: make their channels dead (0) instead.
            if g.producers.len() > 1 {
                set(&mut constant, &format!("{prefix}.bn.bias"), |v| chosen.iter().for_each(|&c| v[offset + c] = 0.0));
            }
        }
    }
    let x = input(&fx);
    let reference = run(&constant, &x, HeadMode::OneToOne);
    let prune = |compensate| prune_channels_with(&constant, &ChannelPruneOptions { ratio: 0.3, criterion: ChannelCriterion::BnScale, multiple: 1, compensate }).unwrap().0;
    let (with, without) = (prune(true), prune(false));
    let d_with = max_diff(&reference, &run(&with, &x, HeadMode::OneToOne));
    let d_without = max_diff(&reference, &run(&without, &x, HeadMode::OneToOne));
    assert!(d_with < 0.2 * d_without, "compensated {d_with}, plain {d_without}");
    // Compensation only shifts BatchNorm means and biases: the weights are the plain pruning's.
    for ((n, a), (_, b)) in with.tensors.iter().zip(&without.tensors) {
        assert_eq!(a.shape, b.shape, "{n}");
        if n.ends_with("weight") {
            assert_eq!(a.values, b.values, "{n}");
        }
    }
}

#[test]
fn filter_norm_prunes_the_weakest_filters() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26n-rand");
    let groups = channel_groups(&src).unwrap();
    let g = groups.iter().find(|g| g.name.starts_with("model.9.cv1")).expect("SPPF group");
    let w = values(&src, "model.9.cv1.conv.weight");
    let per = w.len() / g.width;
    let norm = |o: usize| w[o * per..(o + 1) * per].iter().map(|v| v * v).sum::<f32>();
    let (out, _) = prune_channels(&src, 0.5, ChannelCriterion::FilterNorm).unwrap();
    let kept = out.tensor("model.9.cv1.conv.weight").unwrap().shape[0];
    assert_eq!(kept, g.width / 2);
    let mut norms: Vec<f32> = (0..g.width).map(norm).collect();
    norms.sort_by(f32::total_cmp);
    let cut = norms[g.width - kept - 1];
    let kw = values(&out, "model.9.cv1.conv.weight");
    for r in 0..kept {
        let n: f32 = kw[r * per..(r + 1) * per].iter().map(|v| v * v).sum();
        assert!(n >= cut, "kept a filter of norm {n} below the cut {cut}");
    }
    // The SPPF concat reads the pyramid four times: cv2's input shrinks four times as much.
    let cv2 = out.tensor("model.9.cv2.conv.weight").unwrap();
    assert_eq!(cv2.shape[1], 4 * kept);
}

#[test]
fn unstructured_sparsity_reaches_its_target() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26n-coco");
    for scope in [SparsityScope::Global, SparsityScope::PerLayer] {
        let (out, report) = prune_unstructured(&src, 0.5, scope).unwrap();
        // This checkpoint (dequantized from INT8) already has many exact zeros: a layer keeps
        // them all, so the target is a floor.
        let zeros_before = |name: &str| values(&src, name).iter().filter(|v| **v == 0.0).count();
        let expected = |n: usize, z: usize| ((n as f64 * 0.5).round() as usize).max(z);
        match scope {
            SparsityScope::PerLayer => {
                for l in &report.layers {
                    assert_eq!(l.zeros, expected(l.numel, zeros_before(&l.name)), "{}", l.name);
                }
            }
            SparsityScope::Global => {
                let n: usize = report.layers.iter().map(|l| l.numel).sum();
                let z: usize = report.layers.iter().map(|l| zeros_before(&l.name)).sum();
                let got: usize = report.layers.iter().map(|l| l.zeros).sum();
                assert_eq!(got, expected(n, z));
                // One threshold: layers differ.
                let s: Vec<f64> = report.layers.iter().map(|l| l.sparsity()).collect();
                assert!(s.iter().any(|v| *v > 0.7) && s.iter().any(|v| *v < 0.3), "{s:?}");
            }
        }
        // Count zeros in the checkpoint itself; BatchNorm, biases and skipped convs untouched.
        for (name, t) in &out.tensors {
            let s = src.tensor(name).unwrap();
            let pruned = report.layers.iter().any(|l| &l.name == name);
            if !pruned {
                assert_eq!(t.values, s.values, "{name} changed");
            } else {
                let (a, b) = (t.values.as_f32().unwrap(), s.values.as_f32().unwrap());
                assert!(a.iter().zip(b).all(|(x, y)| *x == 0.0 || x == y), "{name}: a kept weight changed");
            }
        }
        assert!(report.skipped.iter().any(|(n, _)| n == "model.0.conv.weight"));
        // Still a working model.
        let x = input(&fx);
        let h = run(&out, &x, HeadMode::OneToOne);
        assert!(h.logits.iter().all(|v| v.is_finite()));
    }
    assert!(prune_unstructured(&src, 1.0, SparsityScope::Global).is_err());
}

#[test]
fn larger_scale_prunes_and_runs() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = load(&fx, "yolo26s-rand");
    let (out, report) = prune_channels(&src, 0.3, ChannelCriterion::FilterNorm).unwrap();
    assert!(report.flops_after < report.flops_before * 85 / 100, "{report}");
    let x = input(&fx);
    let h = run(&out, &x, HeadMode::OneToOne);
    assert_eq!(h.logits.len(), 2 * 80 * h.anchors);
}
