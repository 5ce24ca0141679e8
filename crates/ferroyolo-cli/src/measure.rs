//! Measures shared by the commands that compare a model before and after a change (`prune`,
//! `quantize`): forward latency and size on disk.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use ferroyolo::engine::Tensor;
use ferroyolo::model::{HeadMode, Yolo26};
use ferroyolo::weights::Checkpoint;

/// Median milliseconds of `runs` (at least one) forward passes on a `1×3×imgsz×imgsz` input,
/// after one warm-up pass (buffers and threads).
pub fn median_latency_ms(model: &Yolo26, imgsz: usize, runs: usize) -> f64 {
    let x = Tensor::new([1, 3, imgsz, imgsz], vec![0.5; 3 * imgsz * imgsz]);
    model.forward(&x, HeadMode::OneToOne);
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(model.forward(&x, HeadMode::OneToOne));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Size on disk of `ckpt` saved as safetensors at `scratch` (removed afterwards), so that models
/// are compared in the same format.
pub fn safetensors_size(ckpt: &Checkpoint, scratch: &Path) -> Result<u64> {
    ckpt.save_safetensors(scratch)?;
    let n = std::fs::metadata(scratch)?.len();
    std::fs::remove_file(scratch).ok();
    Ok(n)
}
