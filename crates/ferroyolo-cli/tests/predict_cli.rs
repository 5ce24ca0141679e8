//! `ferroyolo predict` end to end against the reference's final detections for bus.jpg and the
//! coco8 images, in both head modes and at two confidence thresholds.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{ferroyolo, temp_dir};

/// `../shared/fixtures`, or `None` (skip) outside CI when it is absent.
fn fixtures() -> Option<PathBuf> {
    ferroyolo::testing::fixtures_dir()
}

/// Every image the reference predicted on: bus.jpg and the 8 coco8 images.
fn reference_images(fx: &Path) -> Vec<PathBuf> {
    let mut v = vec![fx.join("images/bus.jpg")];
    for split in ["train", "val"] {
        let mut imgs: Vec<PathBuf> = std::fs::read_dir(fx.join("coco8/images").join(split)).unwrap().map(|e| e.unwrap().path()).collect();
        imgs.sort();
        v.extend(imgs);
    }
    v
}

fn compare(mode: &str, conf: f64, ours: &Value, reference: &Value) {
    let ref_images = reference["images"].as_object().unwrap();
    let ours = ours.as_array().unwrap();
    assert_eq!(ours.len(), ref_images.len(), "{mode} conf {conf}: image count");
    let (mut worst_box, mut worst_conf) = (0f64, 0f64);
    for doc in ours {
        let file = Path::new(doc["image"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
        let expected = &ref_images[&file];
        let shape = expected["orig_shape"].as_array().unwrap();
        assert_eq!(doc["height"], shape[0], "{file}");
        assert_eq!(doc["width"], shape[1], "{file}");
        let exp = expected["detections"].as_array().unwrap();
        let got = doc["detections"].as_array().unwrap();
        let full = exp.len() == 300;
        let lowest = exp.iter().map(|d| d["conf"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
        // Only detections whose score is within 1e-3 of a cut (the threshold, or the 300th
        // score when the list is full) may be present on one side only.
        let at_cut = |c: f64| (c - conf).abs() <= 1e-3 || (full && (c - lowest).abs() <= 1e-3);
        let mut used = vec![false; got.len()];
        for e in exp {
            let (cls, c) = (e["cls"].as_u64().unwrap(), e["conf"].as_f64().unwrap());
            let eb: Vec<f64> = e["xyxy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let found = got.iter().enumerate().position(|(i, g)| {
                let gb: Vec<f64> = g["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                !used[i]
                    && g["class_id"].as_u64() == Some(cls)
                    && (g["confidence"].as_f64().unwrap() - c).abs() <= 1e-3
                    && gb.iter().zip(&eb).all(|(a, b)| (a - b).abs() <= 0.5)
            });
            match found {
                Some(i) => {
                    used[i] = true;
                    let g = &got[i];
                    worst_conf = worst_conf.max((g["confidence"].as_f64().unwrap() - c).abs());
                    for (a, b) in g["box"].as_array().unwrap().iter().zip(&eb) {
                        worst_box = worst_box.max((a.as_f64().unwrap() - b).abs());
                    }
                }
                None => assert!(at_cut(c), "{mode} conf {conf}: {file}: reference detection {e} not found"),
            }
        }
        for (i, g) in got.iter().enumerate() {
            let c = g["confidence"].as_f64().unwrap();
            assert!(used[i] || at_cut(c), "{mode} conf {conf}: {file}: extra detection {g}");
        }
    }
    eprintln!("{mode} conf {conf}: max |box diff| {worst_box:.3} px, max |conf diff| {worst_conf:.2e}");
}

#[test]
fn predictions_match_the_reference_in_both_modes() {
    let Some(fx) = fixtures() else { return };
    let work = temp_dir("parity");
    let list = work.join("images.txt");
    let lines: Vec<String> = reference_images(&fx).iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let model = fx.join("weights/yolo26n-coco.pt");
    for (mode, nms) in [("e2e", "false"), ("nms", "true")] {
        for conf in ["0.25", "0.001"] {
            let out = ferroyolo(
                &[
                    "predict",
                    &format!("model={}", model.display()),
                    &format!("source={}", list.display()),
                    &format!("conf={conf}"),
                    &format!("nms={nms}"),
                    "save=false",
                    "format=json",
                ],
                &work,
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let ours: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
            let reference: Value = serde_json::from_slice(
                &std::fs::read(fx.join(format!("reference/yolo26n-coco_predict_{mode}_conf{conf}.json"))).unwrap(),
            )
            .unwrap();
            compare(mode, conf.parse().unwrap(), &ours, &reference);
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn predict_prints_the_summary_and_saves_annotated_images() {
    let Some(fx) = fixtures() else { return };
    let work = temp_dir("save");
    let model = fx.join("weights/yolo26n-coco.pt");
    let bus = fx.join("images/bus.jpg");
    let args = [
        "predict".to_string(),
        format!("model={}", model.display()),
        "--source".to_string(),
        bus.display().to_string(),
        "save_txt=true".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ferroyolo(&args, &work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("bus.jpg: 640x480 4 persons, 1 bus,"), "{stdout}");
    assert!(stdout.contains("Detected 5 objects. Results saved to runs/detect/predict"), "{stdout}");
    let saved = image::open(work.join("runs/detect/predict/bus.jpg")).expect("annotated image");
    assert_eq!((saved.width(), saved.height()), (810, 1080));
    let labels = std::fs::read_to_string(work.join("runs/detect/predict/labels/bus.txt")).unwrap();
    assert_eq!(labels.lines().count(), 5);
    assert!(labels.lines().all(|l| l.split_whitespace().count() == 6), "{labels}");
    // A second run goes to predict2; save=false writes no folder.
    let out = ferroyolo(&args, &work);
    assert!(String::from_utf8_lossy(&out.stdout).contains("runs/detect/predict2"));
    let mut no_save = args.clone();
    no_save.push("save=false");
    no_save[4] = "save_txt=false";
    let out = ferroyolo(&no_save, &work);
    assert!(out.status.success());
    assert!(!work.join("runs/detect/predict3").exists());
    // classes= keeps only those ids (the bus is class 5).
    let mut only_bus = no_save.clone();
    only_bus.push("classes=5");
    let out = ferroyolo(&only_bus, &work);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("640x480 1 bus,"), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn bad_images_are_reported_and_skipped() {
    let Some(fx) = fixtures() else { return };
    let work = temp_dir("bad");
    let imgs = work.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fx.join("images/bus.jpg"), imgs.join("a_bus.jpg")).unwrap();
    let bytes = std::fs::read(fx.join("images/bus.jpg")).unwrap();
    std::fs::write(imgs.join("b_truncated.jpg"), &bytes[..200]).unwrap();
    std::fs::write(imgs.join("c_garbage.png"), b"not an image at all").unwrap();
    let model = fx.join("weights/yolo26n-coco.pt");
    let out = ferroyolo(&["predict", &format!("model={}", model.display()), &format!("source={}", imgs.display()), "save=false"], &work);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Detected 5 objects."), "{stdout}");
    assert!(stderr.contains("b_truncated.jpg") && stderr.contains("c_garbage.png"), "{stderr}");
    // A missing source is an error, not a panic.
    let out = ferroyolo(&["predict", &format!("model={}", model.display()), "source=nope.jpg"], &work);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.jpg"));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn info_and_export() {
    let Some(fx) = fixtures() else { return };
    let work = temp_dir("info");
    let model = fx.join("weights/yolo26n-rand-nc3.pt");
    let out = ferroyolo(&["info", &format!("model={}", model.display())], &work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2,504,970 parameters"), "{stdout}");
    assert!(stdout.contains("3 classes: 0: panel, 1: dirt, 2: crack"), "{stdout}");
    let st = work.join("nc3.safetensors");
    let out = ferroyolo(&["export", &format!("model={}", model.display()), "format=safetensors", &format!("output={}", st.display())], &work);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The exported file predicts exactly like the original.
    let bus = fx.join("images/bus.jpg");
    let run = |m: &Path| {
        let o = ferroyolo(&["predict", &format!("model={}", m.display()), &format!("source={}", bus.display()), "conf=0.0", "save=false", "format=json"], &work);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    assert_eq!(run(&model), run(&st));
    std::fs::remove_dir_all(&work).unwrap();
}
