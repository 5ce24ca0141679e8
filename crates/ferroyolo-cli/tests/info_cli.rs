//! `ferroyolo info weights=true` end to end: the statistics table is printed with the library's
//! numbers, histograms go to a numbered run folder (or `save_dir=`), the folded view works, and bad
//! options give a clear error.

use ferroyolo::compress::report::{WeightReport, WeightView};
use ferroyolo::weights::Checkpoint;

mod common;
use common::{ferroyolo, temp_dir, text};

#[test]
fn weights_table_and_histograms() {
    let Some(fx) = ferroyolo::testing::fixtures_dir() else { return };
    let dir = temp_dir("info-weights");
    let weights = fx.join("weights/yolo26n-coco.pt");
    let m = format!("model={}", weights.display());
    let out = ferroyolo(&["info", &m, "weights=true", "bins=32", "project=runs"], &dir);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The usual summary still comes first.
    assert!(stdout.contains("YOLO26n summary"), "{stdout}");
    let header = stdout.lines().find(|l| l.starts_with("name ")).unwrap_or_else(|| panic!("no table header:\n{stdout}"));
    for col in ["shape", "count", "min", "max", "mean", "std", "absmax", "zeros%", "int8dB", "ch8dB"] {
        assert!(header.split_whitespace().any(|c| c == col), "column {col} missing: {header}");
    }
    // The model.0 row carries the library's numbers, and the columns line up with the header.
    let ckpt = Checkpoint::load(&weights).unwrap();
    let report = WeightReport::new(&ckpt, WeightView::Raw).unwrap();
    let row = stdout.lines().find(|l| l.starts_with("model.0.conv.weight ")).expect("model.0 row");
    let fields: Vec<&str> = row.split_whitespace().collect();
    let s = &report.entries[0].stats;
    assert_eq!(fields[1], "16x3x3x3");
    assert_eq!(fields[2], s.count.to_string());
    assert_eq!(fields[3].parse::<f64>().unwrap(), (s.min * 100.0).round() / 100.0);
    assert_eq!(fields[4].parse::<f64>().unwrap(), (s.max * 100.0).round() / 100.0);
    assert_eq!(fields[8].parse::<f64>().unwrap(), (100.0 * 12.0 / 432.0 * 100.0f64).round() / 100.0);
    assert_eq!(row.len(), header.len(), "row and header widths differ:\n{header}\n{row}");
    let rows = stdout.lines().filter(|l| l.starts_with("model.")).count();
    assert_eq!(rows, 594, "one row per float state_dict entry");
    assert!(stdout.contains("Hardest conv weights for per-tensor int8"), "{stdout}");

    let run = dir.join("runs/info");
    assert!(run.join("conv_weights_raw.png").is_file() && run.join("layer_00_raw.png").is_file() && run.join("weights_raw.json").is_file());
    assert!(stdout.contains("saved to runs/info"), "{stdout}");
    // A second run is numbered, as predict and val runs are.
    let out = ferroyolo(&["info", &m, "--weights", "folded=true", "project=runs"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("runs/info2/conv_weights_folded.png").is_file());
    assert!(text(&out.stdout).contains("model.0.conv.bias "), "the folded view lists the folded biases");
    // save_dir= writes exactly there.
    let out = ferroyolo(&["info", &m, "weights=true", "save_dir=hists"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("hists/weights_raw.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_fail_with_a_message() {
    let Some(fx) = ferroyolo::testing::fixtures_dir() else { return };
    let dir = temp_dir("info-bad");
    let m = format!("model={}", fx.join("weights/yolo26n-coco.pt").display());
    let out = ferroyolo(&["info", &m, "weights=true", "bins=0"], &dir);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("bins"), "{}", text(&out.stderr));
    let out = ferroyolo(&["info", &m, "weights=maybe"], &dir);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}
