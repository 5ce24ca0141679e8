//! `ferroyolo quantize` end to end: the INT8 file lands beside the input under its default name,
//! `info` and `predict` load it, `dtype=bf16` writes half-precision weights, and missing
//! calibration images give a clear error.

use std::path::Path;

mod common;
use common::{ferroyolo, temp_dir, text};

/// Runs `ferroyolo`: (success, stdout, stderr).
fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = ferroyolo(args, cwd);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn quantize_then_info_and_predict_load_the_int8_file() {
    let fx = ferroyolo::fixtures_or_skip!();
    let dir = temp_dir("quantize-int8");
    let model = dir.join("yolo26n-coco.pt");
    std::fs::copy(fx.join("weights/yolo26n-coco.pt"), &model).unwrap();
    let data = format!("data={}", fx.join("coco8/data.yaml").display());
    let m = format!("model={}", model.display());

    let (ok, stdout, stderr) = run(&["quantize", &m, &data, "images=2", "runs=0", "val=false"], &dir);
    assert!(ok, "{stderr}");
    let int8 = dir.join("yolo26n-coco-int8.safetensors");
    assert!(int8.is_file(), "default output missing:\n{stdout}");
    assert!(stdout.contains("convolutions quantized") && stdout.contains("Kept in float"), "{stdout}");
    let size_line = stdout.lines().find(|l| l.starts_with("size (safetensors, MB)")).unwrap_or_else(|| panic!("no size line:\n{stdout}"));
    let pct: f64 = size_line.rsplit('(').next().unwrap().trim_end_matches([')', '%']).parse().unwrap();
    assert!(pct < 30.0, "{size_line}");

    let q = format!("model={}", int8.display());
    let (ok, stdout, stderr) = run(&["info", &q], &dir);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("INT8: ") && l.contains("calibration on 2 images")), "{stdout}");

    let source = format!("source={}", fx.join("images/bus.jpg").display());
    let (ok, stdout, stderr) = run(&["predict", &q, &source, "save=false"], &dir);
    assert!(ok, "{stderr}");
    let found = stdout.lines().find_map(|l| l.strip_prefix("Detected ")).unwrap_or_else(|| panic!("{stdout}"));
    let n: usize = found.split_whitespace().next().unwrap().parse().unwrap();
    assert!((4..=6).contains(&n), "bus.jpg: {n} objects ({stdout})");

    let (ok, _, stderr) = run(&["quantize", &m, "dtype=bf16", "runs=0", "val=false"], &dir);
    assert!(ok, "{stderr}");
    let bf16 = dir.join("yolo26n-coco-bf16.safetensors");
    assert!(std::fs::metadata(&bf16).unwrap().len() < std::fs::metadata(&int8).unwrap().len() * 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quantize_without_calibration_images_says_what_is_missing() {
    let fx = ferroyolo::fixtures_or_skip!();
    let dir = temp_dir("quantize-noimages");
    let m = format!("model={}", fx.join("weights/yolo26n-coco.pt").display());
    let out = format!("output={}", dir.join("x.safetensors").display());
    let (ok, _, stderr) = run(&["quantize", &m, &out], &dir);
    assert!(!ok && stderr.contains("calibration images"), "{stderr}");
    let (ok, _, stderr) = run(&["quantize", &m, &out, "method=entropy"], &dir);
    assert!(!ok && stderr.contains("entropy"), "{stderr}");
    assert!(!dir.join("x.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
