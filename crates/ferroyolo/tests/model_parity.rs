//! The network reproduces the reference's raw outputs for every fixture checkpoint: the one-to-one
//! head's top-300 (NMS-free) and the decoded one-to-many head, at 640×640 and on a 2×320×256
//! batch.

use std::path::Path;

use ferroyolo::data::npy::{read_npy, NpyArray};
use ferroyolo::engine::Tensor;
use ferroyolo::model::{HeadMode, HeadOutput};
use ferroyolo::predict::postprocess::end_to_end_topk;
use ferroyolo::weights::Checkpoint;
use ferroyolo::Yolo;

const MODELS: [&str; 4] = ["yolo26n-coco", "yolo26n-rand", "yolo26s-rand", "yolo26n-rand-nc3"];

fn load(fx: &Path, name: &str) -> Yolo {
    let ckpt = Checkpoint::load(fx.join("weights").join(format!("{name}.pt"))).unwrap();
    Yolo::from_checkpoint(ckpt).unwrap()
}

fn input(fx: &Path, name: &str) -> Tensor {
    let a = read_npy(fx.join("reference").join(name)).unwrap();
    let s: [usize; 4] = a.shape.clone().try_into().unwrap();
    Tensor::new(s, a.data)
}

/// Box tolerance: 1e-3 px absolute, or 1e-4 relative for large coordinates.
fn box_close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3_f32.max(1e-4 * b.abs())
}

/// Compares our unfiltered top-k with the reference `(batch, k, 6)` rows. Rows are matched by
/// class and box, since scores that tie within 1e-4 may come in either order; only rows scoring
/// at the top-k boundary may lack a partner (the cut falls between equal scores).
fn check_e2e(name: &str, head: &HeadOutput, expected: &NpyArray) {
    let (batch, k) = (expected.shape[0], expected.shape[1]);
    assert_eq!(head.batch, batch);
    let mut worst_box = 0f32;
    let mut worst_score = 0f32;
    for n in 0..batch {
        let ours = end_to_end_topk(head, n, k, false);
        assert_eq!(ours.len(), k, "{name}: image {n}: {} detections, expected {k}", ours.len());
        let rows: Vec<&[f32]> = expected.data[n * k * 6..(n + 1) * k * 6].chunks(6).collect();
        let cutoff = rows[k - 1][4];
        let mut used = vec![false; k];
        for (r, row) in rows.iter().enumerate() {
            let found = ours.iter().enumerate().position(|(i, d)| {
                !used[i]
                    && d.class_id == row[5] as usize
                    && (d.confidence - row[4]).abs() <= 1e-4
                    && (0..4).all(|j| box_close(d.xyxy[j], row[j]))
            });
            match found {
                Some(i) => {
                    used[i] = true;
                    let d = &ours[i];
                    worst_score = worst_score.max((d.confidence - row[4]).abs());
                    for j in 0..4 {
                        worst_box = worst_box.max((d.xyxy[j] - row[j]).abs());
                    }
                }
                None => assert!(
                    (row[4] - cutoff).abs() <= 1e-4,
                    "{name}: image {n}: reference row {r} {row:?} has no match; ours at {r}: {:?}",
                    ours[r]
                ),
            }
        }
    }
    eprintln!("{name}: e2e max |box diff| {worst_box:.2e} px, max |score diff| {worst_score:.2e}");
}

/// Compares the decoded one-to-many head `(batch, 4 + nc, anchors)`: cx, cy, w, h, scores.
fn check_o2m(name: &str, head: &HeadOutput, expected: &NpyArray) {
    let (batch, rows, anchors) = (expected.shape[0], expected.shape[1], expected.shape[2]);
    assert_eq!((head.batch, head.nc + 4, head.anchors), (batch, rows, anchors), "{name}: o2m shape");
    let mut worst_box = 0f32;
    let mut worst_score = 0f32;
    for n in 0..batch {
        for a in 0..anchors {
            let b = head.xywh(n, a);
            for (j, &v) in b.iter().enumerate() {
                let e = expected.data[(n * rows + j) * anchors + a];
                assert!(box_close(v, e), "{name}: image {n} anchor {a} box[{j}] = {v}, expected {e}");
                worst_box = worst_box.max((v - e).abs());
            }
            for c in 0..head.nc {
                let (v, e) = (head.score(n, c, a), expected.data[(n * rows + 4 + c) * anchors + a]);
                assert!((v - e).abs() <= 1e-4, "{name}: image {n} anchor {a} class {c} score {v}, expected {e}");
                worst_score = worst_score.max((v - e).abs());
            }
        }
    }
    eprintln!("{name}: o2m max |box diff| {worst_box:.2e} px, max |score diff| {worst_score:.2e}");
}

#[test]
fn every_fixture_model_matches_the_reference_at_640() {
    let fx = ferroyolo::fixtures_or_skip!();
    let x = input(&fx, "input_rand_640.npy");
    for name in MODELS {
        let yolo = load(&fx, name);
        let reference = |suffix: &str| read_npy(fx.join("reference").join(format!("{name}_{suffix}.npy"))).unwrap();
        let o2o = yolo.model().forward(&x, HeadMode::OneToOne);
        // Raw one-to-one regression and logits, before any decoding.
        let raw_boxes = reference("o2o_boxes_640");
        let worst = o2o.boxes.iter().zip(&raw_boxes.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3 / 8.0 + 1e-5, "{name}: raw o2o boxes differ by {worst} grid units");
        check_e2e(name, &o2o, &reference("e2e_640"));
        let o2m = yolo.model().forward(&x, HeadMode::OneToMany);
        check_o2m(name, &o2m, &reference("o2m_decoded_640"));
    }
}

#[test]
fn every_fixture_model_matches_the_reference_on_a_non_square_batch() {
    let fx = ferroyolo::fixtures_or_skip!();
    let x = input(&fx, "input_rand_2x320x256.npy");
    for name in MODELS {
        let yolo = load(&fx, name);
        let reference = |suffix: &str| read_npy(fx.join("reference").join(format!("{name}_{suffix}.npy"))).unwrap();
        check_e2e(name, &yolo.model().forward(&x, HeadMode::OneToOne), &reference("e2e_2x320x256"));
        check_o2m(name, &yolo.model().forward(&x, HeadMode::OneToMany), &reference("o2m_decoded_2x320x256"));
    }
}

#[test]
fn parameter_counts_equal_the_reference_summary() {
    let fx = ferroyolo::fixtures_or_skip!();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("reference/summary.json")).unwrap()).unwrap();
    for name in MODELS {
        let yolo = load(&fx, name);
        let ours: usize = yolo.params().iter().map(|p| p.numel()).sum();
        assert_eq!(ours as u64, summary[name]["params"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn per_layer_statistics_match_the_reference() {
    // Locates the first diverging layer when the end-to-end comparison fails.
    let fx = ferroyolo::fixtures_or_skip!();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.join("reference/summary.json")).unwrap()).unwrap();
    let x = input(&fx, "input_rand_640.npy");
    for name in ["yolo26n-coco", "yolo26n-rand"] {
        let yolo = load(&fx, name);
        let layers = summary[name]["layers"].as_array().unwrap();
        yolo.model().forward_observed(&x, HeadMode::OneToOne, &mut |i, t| {
            let e = &layers[i];
            let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(t.shape().to_vec(), shape, "{name}: layer {i} shape");
            let n = t.numel() as f64;
            let mean = t.data().iter().map(|&v| v as f64).sum::<f64>() / n;
            let abs_sum: f64 = t.data().iter().map(|&v| (v as f64).abs()).sum();
            let (em, ea) = (e["mean"].as_f64().unwrap(), e["abs_sum"].as_f64().unwrap());
            assert!((abs_sum - ea).abs() <= 1e-4 * ea.abs().max(1.0), "{name}: layer {i} abs_sum {abs_sum}, expected {ea}");
            assert!((mean - em).abs() <= 1e-4 * em.abs().max(1e-2), "{name}: layer {i} mean {mean}, expected {em}");
        });
    }
}
