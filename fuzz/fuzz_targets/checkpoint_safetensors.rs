//! ferroyolo safetensors files (exported or INT8-quantized models): header, metadata, tensors, and
//! building the model from what loaded (shapes, dtypes, quantization parameters). Any input must
//! give `Ok` or `Err`, never a panic, an abort on allocation, or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = ferroyolo::weights::Checkpoint::from_safetensors_bytes(data, std::path::Path::new("fuzz.safetensors")) {
        let _ = ferroyolo::model::from_checkpoint(&ckpt);
    }
});
