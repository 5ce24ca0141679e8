//! Post-training INT8 quantization of `yolo26n-coco.pt`, calibrated on the coco8 val images:
//! the acceptance (coco8 val mAP50-95 within 0.02 of float at 640, at least 90% of the
//! float detections on the fixture photos matched by class with IoU > 0.9, file at most 30% of the
//! fp32 safetensors), the saved file loading like any model, and bad quantized files refused.
//!
//! Run with `--release`: calibration and sensitivity analysis run the model a few hundred times.

use std::path::{Path, PathBuf};

use ferroyolo::compress::quantize::{cast_weights, int8_layer_count, quantize, sqnr_db, Calibration, QuantizeOptions, QuantizeReport};
use ferroyolo::predict::postprocess::box_iou;
use ferroyolo::data::dataset::{list_images, DatasetConfig};
use ferroyolo::data::image_io::load_image;
use ferroyolo::data::letterbox::square_input;
use ferroyolo::engine::Tensor;
use ferroyolo::model::{self, HeadMode};
use ferroyolo::val::ValOptions;
use ferroyolo::weights::{Checkpoint, DType, TensorValues};
use ferroyolo::{Detection, PredictOptions, Yolo};

fn calibration(fx: &Path) -> Vec<Tensor> {
    let data = DatasetConfig::load(fx.join("coco8/data.yaml")).unwrap();
    list_images(data.split("val").unwrap()).unwrap().iter().map(|f| square_input(&load_image(f).unwrap(), 640)).collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroyolo-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Float detections that have an unused quantized detection of the same class with IoU > 0.9
/// (greedy, best IoU first).
fn matched(float: &[Detection], quant: &[Detection]) -> usize {
    let mut used = vec![false; quant.len()];
    let mut n = 0;
    for d in float {
        let best = quant
            .iter()
            .enumerate()
            .filter(|(j, q)| !used[*j] && q.class_id == d.class_id)
            .map(|(j, q)| (j, box_iou(&d.xyxy, &q.xyxy)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, v)) = best {
            if v > 0.9 {
                used[j] = true;
                n += 1;
            }
        }
    }
    n
}

fn quantized(fx: &Path) -> (Checkpoint, Checkpoint, QuantizeReport) {
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let (q, report) = quantize(&src, &calibration(fx), &QuantizeOptions::default()).unwrap();
    (src, q, report)
}

#[test]
fn int8_yolo26n_meets_the_accuracy_and_size_targets() {
    let fx = ferroyolo::fixtures_or_skip!();
    let (src, q, report) = quantized(&fx);
    eprintln!("{report}");
    assert!(report.int8_layers() * 10 >= report.layers.len() * 9, "most layers must run in INT8: {report}");

    // Size against the same weights as fp32 safetensors.
    let (fp32_path, int8_path) = (scratch("fp32.safetensors"), scratch("int8.safetensors"));
    cast_weights(&src, DType::F32).unwrap().save_safetensors(&fp32_path).unwrap();
    q.save_safetensors(&int8_path).unwrap();
    let (fp32, int8) = (std::fs::metadata(&fp32_path).unwrap().len(), std::fs::metadata(&int8_path).unwrap().len());
    eprintln!("fp32 {fp32} bytes, int8 {int8} bytes ({:.1}%)", 100.0 * int8 as f64 / fp32 as f64);
    assert!(int8 * 10 <= fp32 * 3, "int8 file {int8} bytes is more than 30% of fp32 {fp32}");

    // The file loads like any model, its quantized layers on the INT8 path.
    let float_model = Yolo::from_checkpoint(src).unwrap();
    let int8_model = Yolo::load(&int8_path).unwrap();
    assert_eq!(int8_layer_count(int8_model.checkpoint()), report.int8_layers());

    // coco8 val at 640 (NMS-free head, the default).
    let data = DatasetConfig::load(fx.join("coco8/data.yaml")).unwrap();
    let opts = ValOptions { imgsz: 640, batch: 4, plots: false, progress: false, ..Default::default() };
    let (f, i) = (float_model.val(&data, &opts).unwrap(), int8_model.val(&data, &opts).unwrap());
    eprintln!("mAP50-95 float {:.4} int8 {:.4}; mAP50 float {:.4} int8 {:.4}", f.map50_95, i.map50_95, f.map50, i.map50);
    assert!((f.map50_95 - i.map50_95).abs() <= 0.02, "mAP50-95 float {} vs int8 {}", f.map50_95, i.map50_95);

    // Detections on the fixture photos (predict defaults: 640, conf 0.25).
    let mut photos = vec![fx.join("images/bus.jpg")];
    photos.extend(list_images(&[fx.join("images-extra")]).unwrap());
    let popts = PredictOptions::default();
    let (mut total, mut hit) = (0, 0);
    for p in &photos {
        let img = load_image(p).unwrap();
        let name = p.display().to_string();
        let a = float_model.predict_image(&img, &name, &popts).unwrap();
        let b = int8_model.predict_image(&img, &name, &popts).unwrap();
        total += a.boxes.len();
        hit += matched(&a.boxes, &b.boxes);
    }
    eprintln!("{hit} of {total} float detections matched on {} photos", photos.len());
    assert!(total > 50, "the photos should give many detections, got {total}");
    assert!(hit * 10 >= total * 9, "only {hit} of {total} float detections matched (class, IoU > 0.9)");
    std::fs::remove_dir_all(fp32_path.parent().unwrap()).ok();
}

#[test]
fn layers_kept_float_by_name_or_threshold_run_in_float() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let images = &calibration(&fx)[..1];
    // An impossible threshold keeps every measured layer float; a named prefix is kept regardless.
    let opts = QuantizeOptions { keep_float: vec!["model.23".into()], min_layer_sqnr_db: 1e9, ..Default::default() };
    let (q, report) = quantize(&src, images, &opts).unwrap();
    assert_eq!(report.int8_layers(), 0);
    assert_eq!(int8_layer_count(&q), 0);
    // All float: the checkpoint's weights are the source's, the outputs identical.
    let x = &images[0];
    let a = model::from_checkpoint(&src).unwrap().0.forward(x, HeadMode::OneToOne);
    let b = model::from_checkpoint(&q).unwrap().0.forward(x, HeadMode::OneToOne);
    assert_eq!(a.logits, b.logits);

    // Without sensitivities, everything but the named layers is quantized.
    let opts = QuantizeOptions { sensitivity: false, ..opts };
    let (q, report) = quantize(&src, images, &opts).unwrap();
    let float = report.float_layers();
    assert!(!float.is_empty() && float.iter().all(|n| n.starts_with("model.23.")), "{float:?}");
    assert_eq!(int8_layer_count(&q), report.layers.len() - float.len());
    assert!(q.tensor("model.23.cv2.0.0.conv.weight").is_some() && q.tensor("model.0.conv.qweight").is_some());

    let bad = QuantizeOptions { keep_float: vec!["model.99".into()], ..opts };
    let err = quantize(&src, images, &bad).unwrap_err().to_string();
    assert!(err.contains("model.99"), "{err}");
    let odd = Tensor::new([1, 3, 100, 96], vec![0.5; 3 * 100 * 96]);
    let err = quantize(&src, &[odd], &QuantizeOptions::default()).unwrap_err().to_string();
    assert!(err.contains("multiples of 32"), "{err}");
    assert!(quantize(&src, &[], &QuantizeOptions::default()).is_err());
}

#[test]
fn corrupt_quantized_tensors_are_refused_with_their_name() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let images = &calibration(&fx)[..1];
    let (q, _) = quantize(&src, images, &QuantizeOptions { calibration: Calibration::Percentile(99.9), sensitivity: false, ..Default::default() }).unwrap();
    assert!(model::from_checkpoint(&q).is_ok());
    let edit = |name: &str, f: &dyn Fn(&mut ferroyolo::weights::StoredTensor)| {
        let mut c = q.clone();
        f(&mut c.tensors.iter_mut().find(|(n, _)| n == name).unwrap().1);
        model::from_checkpoint(&c).err().map(|e| format!("{e:#}")).unwrap_or_default()
    };
    let e = edit("model.0.conv.qinput", &|t| t.values = TensorValues::F32(vec![0.0, 0.0]));
    assert!(e.contains("model.0.conv.qinput"), "zero scale: {e}");
    let e = edit("model.0.conv.qinput", &|t| t.values = TensorValues::F32(vec![0.1, 300.0]));
    assert!(e.contains("model.0.conv.qinput"), "zero point out of range: {e}");
    let e = edit("model.2.cv1.conv.qscale", &|t| t.values = TensorValues::F32(vec![-1.0; t.numel()]));
    assert!(e.contains("model.2.cv1"), "negative weight scale: {e}");
    let e = edit("model.1.conv.qweight", &|t| t.values = TensorValues::I64(vec![200; t.numel()]));
    assert!(e.contains("model.1.conv.qweight"), "value outside int8: {e}");
    let e = edit("model.1.conv.qweight", &|t| t.dtype = DType::I64);
    assert!(e.contains("model.1.conv.qweight") && e.contains("int8"), "wrong dtype: {e}");
    let e = edit("model.3.conv.qbias", &|t| t.shape = vec![t.numel() + 1]);
    assert!(e.contains("model.3.conv.qbias"), "wrong shape: {e}");
}

#[test]
fn half_precision_weights_modes_round_trip() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let x = &calibration(&fx)[0];
    let reference = model::from_checkpoint(&src).unwrap().0.forward(x, HeadMode::OneToOne);
    let fp32_path = scratch("w-fp32.safetensors");
    cast_weights(&src, DType::F32).unwrap().save_safetensors(&fp32_path).unwrap();
    let fp32 = std::fs::metadata(&fp32_path).unwrap().len();
    for dtype in [DType::F16, DType::BF16] {
        let path = scratch(&format!("w-{dtype}.safetensors"));
        let cast = cast_weights(&src, dtype).unwrap();
        cast.save_safetensors(&path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size * 100 <= fp32 * 55, "{dtype}: {size} bytes vs fp32 {fp32}");
        let loaded = Checkpoint::load(&path).unwrap();
        assert!(loaded.tensors.iter().all(|(_, t)| !t.dtype.is_float() || t.dtype == dtype));
        assert_eq!(loaded.tensors, cast.tensors, "{dtype}: the file holds exactly the rounded values");
        let out = model::from_checkpoint(&loaded).unwrap().0.forward(x, HeadMode::OneToOne);
        // The fixture is stored in fp16: fp16 is exact; bf16 (8 mantissa bits) drifts a little.
        if dtype == DType::F16 {
            assert_eq!((&out.boxes, &out.logits), (&reference.boxes, &reference.logits));
        } else {
            let values = |h: &ferroyolo::model::HeadOutput| [h.boxes.clone(), h.logits.clone()].concat();
            let db = sqnr_db(&[values(&reference)], &[values(&out)]);
            eprintln!("bf16 head-output SQNR {db:.1} dB");
            assert!(db.is_finite() && db > 25.0, "bf16 head-output SQNR {db:.1} dB");
        }
    }
    assert!(cast_weights(&src, DType::I64).is_err());
    std::fs::remove_dir_all(fp32_path.parent().unwrap()).ok();
}

#[test]
fn chained_int8_layers_equal_layer_by_layer_execution() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let images = &calibration(&fx)[..1];
    let (q, _) = quantize(&src, images, &QuantizeOptions { sensitivity: false, ..Default::default() }).unwrap();
    let model = model::from_checkpoint(&q).unwrap().0;
    let x = &images[0];
    // forward_layerwise keeps f32 between layers but u8 inside blocks' convolution chains.
    let chained = (model.forward_layerwise(x, HeadMode::OneToMany), model.forward_layerwise(x, HeadMode::OneToOne));
    // An observer makes every layer run on its own, with f32 between layers.
    let one_by_one = ferroyolo::model::yolo26::with_conv_input_observer(Box::new(|_, _| {}), || model.forward_both(x));
    for (a, b) in [(&chained.0, &one_by_one.0), (&chained.1, &one_by_one.1)] {
        assert_eq!(a.boxes, b.boxes);
        assert_eq!(a.logits, b.logits);
    }
}
