//! Transfer learning from the COCO checkpoint into models with other classes, checked against the
//! rules of the reference's `BaseModel.load` (YOLO26.md §5): which tensors are copied verbatim,
//! which class rows are remapped by name, and which stay at their fresh init.

use std::path::Path;

use ferroyolo::engine::Tensor;
use ferroyolo::model::transfer::{transfer, TargetSpec, TransferReport};
use ferroyolo::model::HeadMode;
use ferroyolo::weights::{Checkpoint, StoredTensor};
use ferroyolo::{fixtures_or_skip, Yolo};

fn coco(fx: &Path) -> Checkpoint {
    Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn f32s(t: &StoredTensor) -> &[f32] {
    t.values.as_f32().unwrap()
}

/// The final class convs of the Detect head (layer 23 in YOLO26): 3 levels × 2 branches × weight/bias.
fn final_cls_convs() -> Vec<String> {
    let mut v = Vec::new();
    for branch in ["cv3", "one2one_cv3"] {
        for level in 0..3 {
            for p in ["weight", "bias"] {
                v.push(format!("model.23.{branch}.{level}.2.{p}"));
            }
        }
    }
    v
}

/// The reference's class bias init for `nc` classes at a level.
fn cls_bias_init(nc: usize, level: usize) -> f32 {
    let stride = [8.0, 16.0, 32.0][level];
    (5.0 / nc as f64 / (640.0f64 / stride).powi(2)).ln() as f32
}

fn level_of(name: &str) -> usize {
    name.split('.').nth(3).unwrap().parse().unwrap()
}

/// Every target tensor outside `except` equals the source tensor of the same name exactly.
fn assert_rest_copied(src: &Checkpoint, out: &Checkpoint, except: &[String]) {
    for (name, t) in &out.tensors {
        if except.contains(name) {
            continue;
        }
        let s = src.tensor(name).unwrap_or_else(|| panic!("{name} not in source"));
        assert_eq!(s.shape, t.shape, "{name}");
        assert_eq!(s.values, t.values, "{name} not copied verbatim");
    }
}

#[test]
fn new_classes_keep_the_source_class_width_and_remap_rows_by_name() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let (out, report) = transfer(&src, &TargetSpec::new(3, names(&["person", "car", "widget"])), 0).unwrap();
    // YOLO26.md §5: the class branch stays 80 wide (the nc rule would give 64).
    assert_eq!(out.parameter_count(), 2_534_858);
    assert_eq!(report.cls_width, Some((64, 80)));
    assert_eq!((report.transferred, report.total), (out.tensors.len(), out.tensors.len()));
    assert_eq!(out.tensors.len(), src.tensors.len());
    assert!(report.fresh.is_empty());
    assert_eq!(report.remapped_tensors, 12);
    let text = report.to_string();
    assert!(text.contains("Remapped 2/3 cls head rows"), "{text}");
    assert!(text.ends_with(&format!("Transferred {0}/{0} items from pretrained weights", src.tensors.len())), "{text}");
    assert_eq!(out.names, names(&["person", "car", "widget"]));

    let person = src.names.iter().position(|n| n == "person").unwrap();
    let car = src.names.iter().position(|n| n == "car").unwrap();
    assert_eq!(report.remapped_rows.iter().map(|r| (r.target, r.source)).collect::<Vec<_>>(), vec![(0, person), (1, car)]);

    for name in final_cls_convs() {
        let (s, t) = (src.tensor(&name).unwrap(), out.tensor(&name).unwrap());
        assert_eq!(t.shape[0], 3, "{name}");
        let row: usize = t.shape[1..].iter().product();
        let (sv, tv) = (f32s(s), f32s(t));
        assert_eq!(&tv[..row], &sv[person * row..][..row], "{name}: person row");
        assert_eq!(&tv[row..2 * row], &sv[car * row..][..row], "{name}: car row");
        let widget = &tv[2 * row..];
        if name.ends_with("bias") {
            assert_eq!(widget, &[cls_bias_init(3, level_of(&name))], "{name}: fresh bias");
        } else {
            // PyTorch's default conv init bound, and not a copy of any source row.
            let bound = 1.0 / (row as f32).sqrt();
            assert!(widget.iter().all(|v| v.abs() <= bound), "{name}");
            assert!((0..src.names.len()).all(|c| widget != &sv[c * row..][..row]), "{name}");
        }
    }
    assert_rest_copied(&src, &out, &final_cls_convs());
}

#[test]
fn names_that_match_nothing_leave_fresh_class_convs() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let (out, report) = transfer(&src, &TargetSpec::new(1, names(&["solar_panel"])), 0).unwrap();
    assert!(report.remapped_rows.is_empty());
    assert_eq!(report.remapped_tensors, 0);
    assert_eq!(report.fresh, final_cls_convs());
    assert_eq!(report.transferred, out.tensors.len() - 12);
    assert!(!report.to_string().contains("Remapped"));
    for name in final_cls_convs() {
        let t = out.tensor(&name).unwrap();
        if name.ends_with("bias") {
            assert_eq!(f32s(t), &[cls_bias_init(1, level_of(&name))], "{name}");
        } else {
            assert_eq!(t.shape, [1, 80, 1, 1]);
        }
    }
    // The hidden class layers come from the source even so.
    assert_rest_copied(&src, &out, &final_cls_convs());
}

#[test]
fn names_match_ignoring_case_and_surrounding_space() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let (out, report) = transfer(&src, &TargetSpec::new(2, names(&["  Dog ", "PERSON"])), 0).unwrap();
    let dog = src.names.iter().position(|n| n == "dog").unwrap();
    assert_eq!(report.remapped_rows.iter().map(|r| (r.target, r.source)).collect::<Vec<_>>(), vec![(0, dog), (1, 0)]);
    let b = f32s(out.tensor("model.23.one2one_cv3.1.2.bias").unwrap());
    let sb = f32s(src.tensor("model.23.one2one_cv3.1.2.bias").unwrap());
    assert_eq!(b, &[sb[dog], sb[0]]);
}

#[test]
fn the_source_classes_copy_everything_and_placeholders_adopt_its_names() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let (out, report) = transfer(&src, &TargetSpec::new(80, src.names.clone()), 0).unwrap();
    assert_eq!((report.transferred, report.total, report.cls_width), (src.tensors.len(), src.tensors.len(), None));
    assert_eq!(report.remapped_tensors, 0);
    assert_rest_copied(&src, &out, &[]);
    assert_eq!(out.parameter_count(), src.parameter_count());
    assert!(!report.names_adopted);

    let (out, report) = transfer(&src, &TargetSpec::new(80, TargetSpec::placeholder_names(80)), 0).unwrap();
    assert!(report.names_adopted);
    assert_eq!(out.names, src.names);
    assert_rest_copied(&src, &out, &[]);
}

#[test]
fn reordered_classes_reorder_the_logits() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let mut reversed = src.names.clone();
    reversed.reverse();
    let (out, report) = transfer(&src, &TargetSpec::new(80, reversed.clone()), 0).unwrap();
    assert_eq!(report.remapped_rows.len(), 80);
    assert_eq!(report.transferred, report.total);
    let (a, b) = (Yolo::from_checkpoint(src.clone()).unwrap(), Yolo::from_checkpoint(out).unwrap());
    assert_eq!(b.names(), &reversed[..]);
    let x = Tensor::new([1, 3, 64, 64], (0..3 * 64 * 64).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect());
    let (ya, yb) = (a.model().forward(&x, HeadMode::OneToMany), b.model().forward(&x, HeadMode::OneToMany));
    let anchors = ya.anchors;
    for c in 0..80 {
        let row_a = &ya.logits[(79 - c) * anchors..][..anchors];
        let row_b = &yb.logits[c * anchors..][..anchors];
        assert!(row_a.iter().zip(row_b).all(|(p, q)| (p - q).abs() <= 1e-4), "class {c}");
    }
    assert_eq!(ya.boxes, yb.boxes);
}

#[test]
fn the_result_loads_runs_and_scores_shared_classes_like_the_source() {
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let (out, _) = transfer(&src, &TargetSpec::new(3, names(&["person", "car", "widget"])), 0).unwrap();
    let source_model = Yolo::from_checkpoint(src.clone()).unwrap();
    let tuned = Yolo::from_checkpoint(out.clone()).unwrap();
    assert_eq!(tuned.model().nc(), 3);
    let x = Tensor::new([1, 3, 96, 64], (0..3 * 96 * 64).map(|i| ((i * 104_729) % 256) as f32 / 255.0).collect());
    for mode in [HeadMode::OneToOne, HeadMode::OneToMany] {
        let (ys, yt) = (source_model.model().forward(&x, mode), tuned.model().forward(&x, mode));
        assert_eq!(yt.nc, 3);
        assert!(yt.logits.iter().all(|v| v.is_finite()));
        let n = ys.anchors;
        let car = src.names.iter().position(|c| c == "car").unwrap();
        for (t, s) in [(0, 0), (1, car)] {
            let (rt, rs) = (&yt.logits[t * n..][..n], &ys.logits[s * n..][..n]);
            assert!(rt.iter().zip(rs).all(|(p, q)| (p - q).abs() <= 1e-4), "{mode:?} class {t}");
        }
    }
    // The kept class width survives a save and reload (widths come from tensor shapes).
    let dir = std::env::temp_dir().join(format!("ferroyolo-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tuned.safetensors");
    out.save_safetensors(&path).unwrap();
    let reloaded = Yolo::load(&path).unwrap();
    assert_eq!(reloaded.checkpoint().parameter_count(), 2_534_858);
    assert_eq!(reloaded.names(), tuned.names());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_single_channel_first_conv_fills_the_first_input_channel() {
    let fx = fixtures_or_skip!();
    let mut src = coco(&fx);
    // A grey source: its first conv sees one channel (the sum of the RGB filters).
    let rgb = src.tensor("model.0.conv.weight").unwrap().clone();
    let (o, k) = (rgb.shape[0], rgb.shape[2] * rgb.shape[3]);
    let grey: Vec<f32> = (0..o * k).map(|i| (0..3).map(|c| f32s(&rgb)[(i / k * 3 + c) * k + i % k]).sum()).collect();
    let slot = src.tensors.iter_mut().find(|(n, _)| n == "model.0.conv.weight").unwrap();
    slot.1.shape = vec![o, 1, 3, 3];
    slot.1.values = ferroyolo::weights::TensorValues::F32(grey.clone());

    let (out, report) = transfer(&src, &TargetSpec::new(80, src.names.clone()), 5).unwrap();
    assert!(report.first_conv_filled);
    assert_eq!(report.transferred, report.total);
    let w = f32s(out.tensor("model.0.conv.weight").unwrap());
    for f in 0..o {
        assert_eq!(&w[f * 3 * k..][..k], &grey[f * k..][..k], "filter {f}, channel 0");
        // Channels 1 and 2 keep their init (bounded by 1/√27), not the source.
        assert!(w[f * 3 * k + k..][..2 * k].iter().all(|v| v.abs() <= 1.0 / 27f32.sqrt()));
    }
}

#[test]
fn other_scales_copy_only_what_fits() {
    // A yolo26n source into a yolo26s target: the head sees other widths, so the class branch
    // follows the nc rule and only same-shaped tensors are copied.
    let src = ferroyolo::model::init::random_checkpoint("n", 80, None, 3).unwrap();
    let target = TargetSpec { scale: Some("s".into()), ..TargetSpec::new(2, names(&["a", "b"])) };
    let (out, report) = transfer(&src, &target, 0).unwrap();
    assert_eq!(report.cls_width, None);
    assert_eq!(out.parameter_count(), ferroyolo::model::init::random_checkpoint("s", 2, None, 0).unwrap().parameter_count());
    let copied: Vec<&String> = out
        .tensors
        .iter()
        .filter(|(n, t)| src.tensor(n).is_some_and(|s| s.shape == t.shape))
        .map(|(n, _)| n)
        .collect();
    // The first conv has 32 filters instead of 16, so it takes the source's 16 as the reference
    // does (and counts them as transferred).
    assert!(report.first_conv_filled);
    let (w, sw) = (f32s(out.tensor("model.0.conv.weight").unwrap()), f32s(src.tensor("model.0.conv.weight").unwrap()));
    assert_eq!(&w[..sw.len()], sw);
    assert_eq!(report.transferred, copied.len() + 1);
    assert!(report.transferred < report.total);
    assert_eq!(report.fresh.len(), report.total - report.transferred);
    for n in copied {
        assert_eq!(src.tensor(n).unwrap().values, out.tensor(n).unwrap().values, "{n}");
    }
}

#[test]
fn fresh_init_follows_the_seed() {
    let src = ferroyolo::model::init::random_checkpoint("n", 80, None, 3).unwrap();
    let spec = TargetSpec::new(1, names(&["solar_panel"]));
    let run = |seed| -> (Checkpoint, TransferReport) { transfer(&src, &spec, seed).unwrap() };
    let (a, b, c) = (run(1).0, run(1).0, run(2).0);
    let w = |k: &Checkpoint| f32s(k.tensor("model.23.cv3.0.2.weight").unwrap()).to_vec();
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    // Copied tensors do not depend on the seed.
    assert_eq!(a.tensor("model.22.cv1.conv.weight"), c.tensor("model.22.cv1.conv.weight"));
}

#[test]
fn bad_targets_are_refused_clearly() {
    let src = ferroyolo::model::init::random_checkpoint("n", 80, None, 3).unwrap();
    let grey = TargetSpec { channels: 1, ..TargetSpec::new(1, names(&["a"])) };
    let err = transfer(&src, &grey, 0).unwrap_err().to_string();
    assert!(err.contains("1-channel") && err.contains("3-channel"), "{err}");
    let err = transfer(&src, &TargetSpec::new(2, names(&["a"])), 0).unwrap_err().to_string();
    assert!(err.contains("1 class names for 2 classes"), "{err}");
    let mut no_cfg = src.clone();
    no_cfg.model_yaml = serde_json::Value::Null;
    let err = transfer(&no_cfg, &TargetSpec::new(1, names(&["a"])), 0).unwrap_err().to_string();
    assert!(err.contains("no embedded model config"), "{err}");
}

#[test]
fn across_scales_only_class_biases_are_remapped() {
    // The class convs of yolo26s are wider than yolo26n's, so the reference remaps the bias rows
    // by name but leaves the weights fresh.
    let fx = fixtures_or_skip!();
    let src = coco(&fx);
    let target = TargetSpec { scale: Some("s".into()), ..TargetSpec::new(2, names(&["car", "person"])) };
    let (out, report) = transfer(&src, &target, 0).unwrap();
    let car = src.names.iter().position(|n| n == "car").unwrap();
    assert_eq!(report.remapped_rows.iter().map(|r| (r.target, r.source)).collect::<Vec<_>>(), vec![(0, car), (1, 0)]);
    assert_eq!(report.remapped_tensors, 6);
    for name in final_cls_convs() {
        let (s, t) = (src.tensor(&name).unwrap(), out.tensor(&name).unwrap());
        if name.ends_with("bias") {
            assert_eq!(f32s(t), &[f32s(s)[car], f32s(s)[0]], "{name}");
        } else {
            assert!(report.fresh.contains(&name), "{name}");
            assert_ne!(t.shape[1], s.shape[1]);
        }
    }
    let same_shape = out.tensors.iter().filter(|(n, t)| src.tensor(n).is_some_and(|s| s.shape == t.shape)).count();
    // Same-shaped tensors, the 6 remapped biases and the filled first conv (127 in the reference).
    assert_eq!(report.transferred, same_shape + report.remapped_tensors + 1);
}
