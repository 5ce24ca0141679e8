//! The `u8` dataflow of a quantized model's forward pass (activations stay quantized between INT8
//! layers) against the layer-by-layer path it replaces, where every INT8 convolution quantizes its own
//! f32 input: the two differ only where one tensor read by several INT8 layers is now quantized once
//! with parameters covering all their calibrated ranges, and where a residual addition reads the
//! quantized instead of the f32 input. A float model computes exactly the same on both.
//!
//! Run with `--release`.

use std::path::Path;

use ferroyolo::compress::quantize::{quantize, sqnr_db, QuantizeOptions};
use ferroyolo::data::dataset::{list_images, DatasetConfig};
use ferroyolo::data::image_io::load_image;
use ferroyolo::data::letterbox::square_input;
use ferroyolo::engine::Tensor;
use ferroyolo::model::{self, HeadMode, HeadOutput};
use ferroyolo::weights::Checkpoint;

fn images(fx: &Path) -> Vec<Tensor> {
    let data = DatasetConfig::load(fx.join("coco8/data.yaml")).unwrap();
    let mut files = list_images(data.split("val").unwrap()).unwrap();
    files.push(fx.join("images/bus.jpg"));
    files.iter().map(|f| square_input(&load_image(f).unwrap(), 640)).collect()
}

fn values(h: &HeadOutput) -> Vec<f32> {
    [h.boxes.clone(), h.logits.clone()].concat()
}

#[test]
fn quantized_dataflow_stays_within_tolerance_of_layer_by_layer_execution() {
    let fx = ferroyolo::fixtures_or_skip!();
    let src = Checkpoint::load(fx.join("weights/yolo26n-coco.pt")).unwrap();
    let xs = images(&fx);
    // Calibrated on the coco8 val images (as `ferroyolo quantize` does); bus.jpg is unseen.
    let (q, _) = quantize(&src, &xs[..xs.len() - 1], &QuantizeOptions::default()).unwrap();
    let float = model::from_checkpoint(&src).unwrap().0;
    let int8 = model::from_checkpoint(&q).unwrap().0;
    for mode in [HeadMode::OneToOne, HeadMode::OneToMany] {
        let (mut reference, mut flow, mut layerwise) = (vec![], vec![], vec![]);
        for x in &xs {
            reference.push(values(&float.forward(x, mode)));
            flow.push(values(&int8.forward(x, mode)));
            layerwise.push(values(&int8.forward_layerwise(x, mode)));
            // Float: the same computation either way, bit for bit.
            assert_eq!(values(&float.forward_layerwise(x, mode)), *reference.last().unwrap());
        }
        let (between, flow_db, layer_db) = (sqnr_db(&layerwise, &flow), sqnr_db(&reference, &flow), sqnr_db(&reference, &layerwise));
        eprintln!("{mode:?}: dataflow vs layer-by-layer {between:.1} dB; vs float: dataflow {flow_db:.2} dB, layer-by-layer {layer_db:.2} dB");
        assert!(between.is_finite(), "the dataflow must actually change the computation");
        assert!(between >= 25.0, "dataflow vs layer-by-layer {between:.1} dB");
        assert!(flow_db >= layer_db - 1.0, "dataflow {flow_db:.2} dB vs float, layer-by-layer {layer_db:.2} dB");
    }
}
