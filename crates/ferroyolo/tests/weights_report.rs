//! The weights report on the real YOLO26n checkpoint, against NumPy (float64) on the same tensors:
//! statistics, histogram counts, int8 round-trip SQNR, the BatchNorm-folded view, and the files
//! `save` writes. Expected numbers come from the Ultralytics 8.4.190 / NumPy oracle.

use ferroyolo::compress::report::{Histogram, WeightReport, WeightView};
use ferroyolo::fixtures_or_skip;
use ferroyolo::weights::{Checkpoint, TensorKind};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

/// name, count, min, max, mean, std (population), zeros, np.histogram(x, 16) counts,
/// int8 SQNR per tensor and per output channel (dB).
type Expected = (&'static str, usize, f64, f64, f64, f64, usize, [u64; 16], f64, Option<f64>);

const EXPECTED: [Expected; 4] = [
    (
        "model.0.conv.weight",
        432,
        -22.671875,
        23.609375,
        -0.07649287471064815,
        4.963365716685225,
        12,
        [1, 1, 1, 8, 8, 27, 73, 126, 106, 48, 16, 11, 3, 1, 0, 2],
        68.74525839706033,
        Some(45.67411225371303),
    ),
    (
        "model.23.one2one_cv3.2.2.weight",
        6400,
        -0.78125,
        0.369140625,
        -0.022028889656066895,
        0.12889996988585678,
        152,
        [1, 6, 20, 26, 26, 24, 104, 406, 575, 659, 1456, 1990, 855, 207, 38, 7],
        73.79332680866554,
        Some(40.693039148740404),
    ),
    (
        "model.10.m.0.attn.qkv.bn.running_var",
        256,
        0.02471923828125,
        13.3203125,
        1.6456488966941833,
        1.3627351545658337,
        0,
        [82, 69, 55, 25, 15, 8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1],
        36.759961462735006,
        None,
    ),
    (
        "model.8.m.0.m.0.cv1.conv.weight",
        36864,
        -1.9072265625,
        1.0810546875,
        -0.009493688742319742,
        0.13207963315010063,
        2165,
        [1, 0, 2, 0, 7, 7, 36, 177, 1251, 12819, 19110, 3079, 301, 53, 15, 6],
        69.9596851293807,
        Some(38.71650922197461),
    ),
];

#[test]
fn raw_view_matches_numpy() {
    let fx = fixtures_or_skip!();
    let ckpt = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let report = WeightReport::new(&ckpt, WeightView::Raw).unwrap();
    // 708 state_dict entries: 594 float, 114 num_batches_tracked; 366 parameters.
    assert_eq!((report.entries.len(), report.skipped), (594, 114));
    let params: Vec<_> = report.entries.iter().filter(|e| e.kind == TensorKind::Parameter).collect();
    assert_eq!(params.len(), 366);
    assert_eq!(params.iter().map(|e| e.stats.count).sum::<usize>(), 2_572_280);

    for (name, count, min, max, mean, std, zeros, hist, sqnr, ch_sqnr) in EXPECTED {
        let e = report.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} missing"));
        let s = &e.stats;
        assert_eq!((s.count, s.min, s.max, s.zeros), (count, min, max, zeros), "{name}");
        assert_eq!(s.absmax, min.abs().max(max), "{name}");
        assert!(close(s.mean, mean, 1e-14) && close(s.std, std, 1e-14), "{name}: mean {} std {}", s.mean, s.std);
        assert!(close(s.int8_sqnr_db, sqnr, 1e-9), "{name}: int8 {} vs {sqnr}", s.int8_sqnr_db);
        match (s.int8_channel_sqnr_db, ch_sqnr) {
            (Some(a), Some(b)) => assert!(close(a, b, 1e-9), "{name}: per-channel int8 {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{name}"),
        }
        assert_eq!(Histogram::of(e.values(), 16).counts, hist, "{name}");
    }

    // All 126 four-dimensional (convolution) weights together.
    let all = &report.conv_weights;
    assert_eq!(report.entries.iter().filter(|e| e.is_conv_weight()).count(), 126);
    assert_eq!((all.count, all.min, all.max, all.zeros), (2_552_208, -29.828125, 23.609375, 270_924));
    // Exactly rounded sums (Python's math.fsum) give mean -0.004543497731260809 and std
    // 0.16955664969186926 (NumPy's pairwise sums: ...923); a plain f64 sum is off by 2.5e-12.
    assert!(close(all.mean, -0.004543497731260809, 1e-15) && close(all.std, 0.16955664969186926, 1e-15), "{all:?}");
    let hist = Histogram::of(&report.conv_weight_values(), 16);
    assert_eq!(hist.counts, [1, 0, 2, 1, 4, 30, 71, 225, 2492138, 59403, 258, 51, 11, 9, 1, 3]);
}

#[test]
fn folded_view_is_what_inference_runs() {
    let fx = fixtures_or_skip!();
    let ckpt = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let report = WeightReport::new(&ckpt, WeightView::Folded).unwrap();
    // One weight and one bias per convolution: the 126 conv weights of the state_dict.
    assert_eq!(report.entries.len(), 2 * 126);
    assert_eq!(report.entries.iter().filter(|e| e.is_conv_weight()).count(), 126);
    assert_eq!(report.entries.iter().map(|e| e.stats.count).sum::<usize>(), 2_552_208 + report.entries.iter().filter(|e| e.shape.len() == 1).map(|e| e.shape[0]).sum::<usize>());
    // model.0 folded in float64 by the oracle: w·γ/sqrt(var + 1e-3). Ours folds in f32 as inference.
    let e = report.entries.iter().find(|e| e.name == "model.0.conv.weight").unwrap();
    assert_eq!(e.shape, [16, 3, 3, 3]);
    let s = &e.stats;
    for (got, want) in [(s.mean, -0.07650394636019218), (s.std, 4.963178158610413), (s.min, -22.666383678569336), (s.max, 23.60878774684654)] {
        assert!(close(got, want, 1e-6), "folded model.0: {got} vs {want}");
    }
    // The Detect branches' last convolutions have no BatchNorm: the same tensors as stored.
    let raw = ckpt.tensor("model.23.one2one_cv3.2.2.weight").unwrap().values.as_f32().unwrap();
    let folded = report.entries.iter().find(|e| e.name == "model.23.one2one_cv3.2.2.weight").unwrap();
    assert_eq!(folded.values(), raw);
}

#[test]
fn save_writes_json_and_histograms() {
    let fx = fixtures_or_skip!();
    let ckpt = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let report = WeightReport::new(&ckpt, WeightView::Raw).unwrap();
    let dir = std::env::temp_dir().join(format!("ferroyolo-weights-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = report.save(&dir, 32).unwrap();
    // weights_raw.json, conv_weights_raw.png, and one figure per layer with convolutions (the
    // Upsample and Concat layers 11, 12, 14, 15, 18, 21 have none).
    let layers: std::collections::BTreeSet<usize> = report.entries.iter().filter(|e| e.is_conv_weight()).filter_map(|e| e.layer()).collect();
    assert_eq!(layers.len(), 18);
    assert_eq!(files.len(), 2 + layers.len(), "{files:?}");
    for l in layers {
        assert!(files.contains(&dir.join(format!("layer_{l:02}_raw.png"))), "layer {l}");
    }
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("weights_raw.json")).unwrap()).unwrap();
    assert_eq!(doc["view"], "raw");
    assert_eq!(doc["tensors"].as_array().unwrap().len(), 594);
    assert_eq!(doc["tensors"][0]["name"], "model.0.conv.weight");
    assert_eq!(doc["tensors"][0]["zeros"], 12);
    assert_eq!(doc["conv_weights"]["count"], 2_552_208);
    let grid = image::open(dir.join("layer_23_raw.png")).unwrap();
    // The Detect layer holds many convolutions: several rows of panels.
    assert!(grid.height() > 1000, "{}x{}", grid.width(), grid.height());
    std::fs::remove_dir_all(&dir).unwrap();
}
