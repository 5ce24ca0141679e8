//! Validation against the reference: coco8 val metrics of `yolo26n-coco.pt` at 640 in both head
//! modes (summary.json `val_coco8_640`), and a dataset with broken entries that must still
//! validate its good images while reporting each bad one.
//!
//! Run with `--release`: each validation runs the model.

use std::path::{Path, PathBuf};

use ferroyolo::data::dataset::DatasetConfig;
use ferroyolo::val::ValOptions;
use ferroyolo::Yolo;

/// Metrics may differ from the reference by this much (its own stated tolerance).
const TOL: f64 = 0.005;

fn quiet(nms: bool) -> ValOptions {
    ValOptions { imgsz: 640, batch: 4, nms, plots: false, progress: false, ..Default::default() }
}

#[test]
fn coco8_metrics_match_the_reference_in_both_modes() {
    let fx = ferroyolo::fixtures_or_skip!();
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fx.join("reference/summary.json")).unwrap()).unwrap();
    let model = Yolo::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let data = DatasetConfig::load(fx.join("coco8/data.yaml")).unwrap();
    // Per-class mAP50-95 printed by the reference (`yolo val`, batch 4) for the 6 classes present:
    // person, dog, horse, elephant, umbrella, potted plant.
    let per_class = [
        ("nms", [0.3535, 0.796, 0.6712, 0.3798, 0.995, 0.8955]),
        ("e2e", [0.3598, 0.796, 0.6712, 0.3965, 0.995, 0.8955]),
    ];
    let mut failures = Vec::new();
    for (mode, nms) in [("nms", true), ("e2e", false)] {
        let m = model.val(&data, &quiet(nms)).unwrap();
        eprint!("{mode}:\n{}", m.table(true));
        assert_eq!((m.images, m.instances), (4, 17), "{mode}: images / instances");
        let expected = &summary["val_coco8_640"][mode];
        for (key, got) in [("mAP50", m.map50), ("mAP50-95", m.map50_95), ("precision", m.precision), ("recall", m.recall)] {
            let want = expected[key].as_f64().unwrap();
            let diff = got - want;
            eprintln!("{mode:>3} {key:>9}: ours {got:.6}  reference {want:.6}  diff {diff:+.2e}");
            if diff.abs() > TOL {
                failures.push(format!("{mode} {key}: {got} vs {want}"));
            }
        }
        assert!((m.fitness() - m.map50_95).abs() < 1e-15);
        let classes: Vec<usize> = m.per_class.iter().map(|c| c.class_id).collect();
        assert_eq!(classes, vec![0, 16, 17, 20, 25, 58], "{mode}: classes with ground truth");
        let instances: Vec<usize> = m.per_class.iter().map(|c| c.instances).collect();
        assert_eq!(instances, vec![10, 1, 2, 2, 1, 1]);
        let (_, want) = per_class.iter().find(|(k, _)| *k == mode).unwrap();
        for (c, w) in m.per_class.iter().zip(want) {
            if (c.map50_95 - w).abs() > TOL {
                failures.push(format!("{mode} class {}: mAP50-95 {} vs {w}", c.name, c.map50_95));
            }
        }
    }
    assert!(failures.is_empty(), "beyond {TOL}: {failures:#?}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroyolo-val-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds a dataset of the coco8 val images plus four broken entries; returns the YAML path.
/// Shared shape with the CLI test, which checks the printed warnings.
fn broken_dataset(fx: &Path, dir: &Path) -> PathBuf {
    let (images, labels) = (dir.join("images/val"), dir.join("labels/val"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let src = fx.join("coco8");
    let good = ["000000000036", "000000000042"];
    for stem in good {
        std::fs::copy(src.join(format!("images/val/{stem}.jpg")), images.join(format!("{stem}.jpg"))).unwrap();
        std::fs::copy(src.join(format!("labels/val/{stem}.txt")), labels.join(format!("{stem}.txt"))).unwrap();
    }
    let jpeg = std::fs::read(src.join("images/val/000000000049.jpg")).unwrap();
    let row = "0 0.5 0.5 0.2 0.2\n";
    // Truncated image (labels fine), then three good images with a bad label row each.
    std::fs::write(images.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(labels.join("truncated.txt"), row).unwrap();
    for (stem, text) in [
        ("four_columns", format!("{row}0 0.5 0.5 0.2\n")),
        ("class_out_of_range", format!("{row}{row}80 0.5 0.5 0.2 0.2\n")),
        ("negative_width", "0 0.5 0.5 -0.2 0.2\n".to_string()),
    ] {
        std::fs::write(images.join(format!("{stem}.jpg")), &jpeg).unwrap();
        std::fs::write(labels.join(format!("{stem}.txt")), text).unwrap();
    }
    let names = (0..80).map(|i| format!("  {i}: c{i}\n")).collect::<String>();
    let yaml = dir.join("broken.yaml");
    std::fs::write(&yaml, format!("path: .\ntrain: images/val\nval: images/val\nnames:\n{names}")).unwrap();
    yaml
}

#[test]
fn broken_entries_are_skipped_and_reported() {
    let fx = ferroyolo::fixtures_or_skip!();
    let dir = temp_dir("broken");
    let yaml = broken_dataset(&fx, &dir);
    let model = Yolo::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let data = DatasetConfig::load(&yaml).unwrap();
    let m = model.val(&data, &quiet(false)).unwrap();
    // The two good images are validated (their labels: 2 + 1 objects... as coco8 has them).
    assert_eq!(m.images, 2);
    let good_instances: usize = ["000000000036", "000000000042"]
        .iter()
        .map(|s| std::fs::read_to_string(fx.join(format!("coco8/labels/val/{s}.txt"))).unwrap().lines().filter(|l| !l.trim().is_empty()).count())
        .sum();
    assert_eq!(m.instances, good_instances);
    assert!(m.map50 > 0.5, "the good images still score: {}", m.map50);

    let reports: Vec<String> = m.skipped.iter().map(|i| i.to_string()).collect();
    eprintln!("{reports:#?}");
    assert_eq!(m.skipped.len(), 4, "{reports:#?}");
    let expect = [
        ("truncated.jpg", None, "truncated"),
        ("four_columns.txt", Some(2), "5 columns"),
        ("class_out_of_range.txt", Some(3), "class 80"),
        ("negative_width.txt", Some(1), "negative box size"),
    ];
    for (file, line, what) in expect {
        let issue = m
            .skipped
            .iter()
            .find(|i| i.file.file_name().unwrap() == file)
            .unwrap_or_else(|| panic!("no report for {file}: {reports:#?}"));
        assert_eq!(issue.line, line, "{issue}");
        assert!(issue.to_string().contains(what), "{issue}");
        assert!(issue.to_string().contains(file), "{issue}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
