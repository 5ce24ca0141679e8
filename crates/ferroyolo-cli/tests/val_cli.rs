//! `ferroyolo val` end to end: the JSON document parses and carries the library's numbers, the
//! text table is printed, the plots are written, and broken dataset entries are reported on
//! stderr with a summary count while the good images are still scored.

use std::path::PathBuf;

use ferroyolo::data::dataset::DatasetConfig;
use ferroyolo::val::ValOptions;
use ferroyolo::Yolo;
use serde_json::Value;

mod common;
use common::{ferroyolo, temp_dir, text};

/// `../shared/fixtures`, or `None` (skip) outside CI when it is absent.
fn fixtures() -> Option<PathBuf> {
    ferroyolo::testing::fixtures_dir()
}

#[test]
fn json_matches_the_library_and_plots_are_written() {
    let Some(fx) = fixtures() else { return };
    let dir = temp_dir("val-json");
    let weights = fx.join("weights/yolo26n-coco.pt");
    let yaml = fx.join("coco8/data.yaml");
    let (w, y) = (format!("model={}", weights.display()), format!("data={}", yaml.display()));
    let model = Yolo::load(&weights).unwrap();
    let data = DatasetConfig::load(&yaml).unwrap();
    for nms in [false, true] {
        let nms_arg = format!("nms={nms}");
        let out = ferroyolo(&["val", &w, &y, "format=json", "batch=4", "threads=2", &nms_arg, "project=runs", "name=val"], &dir);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "nms={nms}: {stderr}");
        let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"));
        // The table still goes to stderr in JSON mode.
        assert!(stderr.contains("mAP50-95)") && stderr.contains("all"), "{stderr}");

        let lib = model.val(&data, &ValOptions { batch: 4, nms, plots: false, progress: false, ..Default::default() }).unwrap();
        let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("missing number '{k}' in {v}"));
        assert_eq!(doc["images"], lib.images);
        assert_eq!(doc["instances"], lib.instances);
        for (k, want) in [("precision", lib.precision), ("recall", lib.recall), ("mAP50", lib.map50), ("mAP50-95", lib.map50_95)] {
            assert!((num(&doc, k) - want).abs() < 1e-12, "nms={nms} {k}: {} vs {want}", num(&doc, k));
        }
        let classes = doc["classes"].as_array().unwrap();
        assert_eq!(classes.len(), lib.per_class.len());
        for (c, l) in classes.iter().zip(&lib.per_class) {
            assert_eq!(c["class_id"], l.class_id);
            assert_eq!(c["class_name"], l.name.as_str());
            assert_eq!((c["images"].as_u64(), c["instances"].as_u64()), (Some(l.images as u64), Some(l.instances as u64)));
            for (k, want) in [("precision", l.precision), ("recall", l.recall), ("mAP50", l.map50), ("mAP50-95", l.map50_95)] {
                assert!((num(c, k) - want).abs() < 1e-12, "{} {k}", l.name);
            }
        }
    }
    // Two runs: val, then val2, each with its plots.
    for run in ["val", "val2"] {
        let d = dir.join("runs").join(run);
        for f in [
            "BoxPR_curve.png",
            "BoxF1_curve.png",
            "BoxP_curve.png",
            "BoxR_curve.png",
            "confusion_matrix.png",
            "confusion_matrix_normalized.png",
            "val_batch0_labels.jpg",
            "val_batch0_pred.jpg",
        ] {
            let img = image::open(d.join(f)).unwrap_or_else(|e| panic!("{run}/{f}: {e}"));
            assert!(img.width() >= 600 && img.height() >= 600, "{run}/{f}: {}x{}", img.width(), img.height());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn text_table_and_no_plots() {
    let Some(fx) = fixtures() else { return };
    let dir = temp_dir("val-text");
    let w = format!("model={}", fx.join("weights/yolo26n-coco.pt").display());
    let y = format!("data={}", fx.join("coco8/data.yaml").display());
    let out = ferroyolo(&["val", &w, &y, "plots=false", "threads=2", "project=runs"], &dir);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].trim_start(), "Class     Images  Instances      Box(P          R      mAP50  mAP50-95)");
    // "all" row: 4 images, 17 instances, then four %.3g numbers.
    let all: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&all[..3], ["all", "4", "17"], "{}", lines[1]);
    assert!(lines.iter().any(|l| l.trim_start().starts_with("person ")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("Speed: ")), "{stdout}");
    assert!(!dir.join("runs").exists(), "plots=false must not create a run folder");

    // classes= keeps only those classes' ground truth (a list, not repeated values).
    let out = ferroyolo(&["val", &w, &y, "plots=false", "threads=2", "classes=0,16", "format=json"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let ids: Vec<u64> = doc["classes"].as_array().unwrap().iter().map(|c| c["class_id"].as_u64().unwrap()).collect();
    assert_eq!((ids, doc["instances"].as_u64()), (vec![0, 16], Some(11)));

    // A missing dataset YAML is a clear error naming it.
    let out = ferroyolo(&["val", &w, "data=nowhere/data.yaml"], &dir);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("nowhere/data.yaml") && err.contains("does not exist"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_entries_are_warned_about_and_counted() {
    let Some(fx) = fixtures() else { return };
    let dir = temp_dir("val-broken");
    let (images, labels) = (dir.join("data/images/val"), dir.join("data/labels/val"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let src = fx.join("coco8");
    for stem in ["000000000036", "000000000042"] {
        std::fs::copy(src.join(format!("images/val/{stem}.jpg")), images.join(format!("{stem}.jpg"))).unwrap();
        std::fs::copy(src.join(format!("labels/val/{stem}.txt")), labels.join(format!("{stem}.txt"))).unwrap();
    }
    let jpeg = std::fs::read(src.join("images/val/000000000049.jpg")).unwrap();
    std::fs::write(images.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    for (stem, rows) in [
        ("four_columns", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"),
        ("class_out_of_range", "80 0.5 0.5 0.2 0.2\n"),
        ("negative_width", "0 0.5 0.5 -0.2 0.2\n"),
    ] {
        std::fs::write(images.join(format!("{stem}.jpg")), &jpeg).unwrap();
        std::fs::write(labels.join(format!("{stem}.txt")), rows).unwrap();
    }
    // Relative `path`: resolved against the YAML's folder.
    let names = (0..80).map(|i| format!("  - c{i}\n")).collect::<String>();
    std::fs::write(dir.join("broken.yaml"), format!("path: data\nval: images/val\nnames:\n{names}")).unwrap();
    let w = format!("model={}", fx.join("weights/yolo26n-coco.pt").display());
    let out = ferroyolo(&["val", &w, "data=broken.yaml", "format=json", "plots=false", "threads=2"], &dir);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(doc["images"], 2, "{stderr}");
    for (file, line) in [("truncated.jpg", ""), ("four_columns.txt", ":2:"), ("class_out_of_range.txt", ":1:"), ("negative_width.txt", ":1:")] {
        let warning = stderr.lines().find(|l| l.starts_with("WARNING") && l.contains(file)).unwrap_or_else(|| panic!("no warning for {file}:\n{stderr}"));
        assert!(warning.contains(line), "{warning}");
    }
    assert!(stderr.contains("4 of 6 images skipped"), "{stderr}");
    assert_eq!(doc["skipped"].as_array().map(Vec::len), Some(4));
    std::fs::remove_dir_all(&dir).unwrap();
}
