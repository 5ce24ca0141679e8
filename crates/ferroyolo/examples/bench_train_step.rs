//! Times one full YOLO26 training step (training-mode forward, end-to-end loss, backward, SGD step)
//! and prints the median in milliseconds, the first step's loss (the same as the reference's on
//! the same weights) and the peak RSS as JSON. Used by `bench/train_step.sh`;
//! `bench/reference_train_step.py` times the same step in PyTorch.
//!
//! `cargo run --release -p ferroyolo --example bench_train_step -- WEIGHTS THREADS RUNS [BATCH] [SIZE]`
//!
//! The batch is the fixture training batch (`reference/loss_batch_img.npy`, the 4 coco8 images at
//! 320×320, and `loss_batch_targets.npy`) repeated to BATCH images (default 8). At another SIZE
//! the images are tiled/cropped to it (the work done does not depend on the pixel values).
//! `FERROYOLO_BENCH_PROFILE=1` also prints the per-kernel profile of one extra step on stderr.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ferroyolo::data::npy::read_npy;
use ferroyolo::engine::{self, Tensor};
use ferroyolo::train::loss::{e2e_loss, LossConfig, Target};
use ferroyolo::train::optim::{OptimConfig, Optimizer, OptimizerKind, ParamSpec};
use ferroyolo::weights::{Checkpoint, TensorKind};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let weights = args.get(1).map(String::as_str).unwrap_or("../shared/fixtures/weights/yolo26n-coco.pt");
    let threads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let batch: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let size: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(320);
    ensure!(runs > 0 && batch > 0 && size.is_multiple_of(32), "need RUNS > 0, BATCH > 0 and SIZE a multiple of 32");
    engine::set_num_threads(threads);

    let fixtures = ferroyolo::testing::fixtures_dir().context("fixtures not found (../shared/fixtures)")?;
    let img = read_npy(fixtures.join("reference/loss_batch_img.npy"))?;
    let (base, src) = (img.shape[0], img.shape[2]);
    let data: Vec<f32> = (0..batch)
        .flat_map(|i| {
            let im = &img.data[(i % base) * 3 * src * src..][..3 * src * src];
            (0..3 * size * size).map(move |j| {
                let (c, y, x) = (j / (size * size), j / size % size, j % size);
                im[(c * src + y % src) * src + x % src]
            })
        })
        .collect();
    let x = Tensor::new([batch, 3, size, size], data);
    let t = read_npy(fixtures.join("reference/loss_batch_targets.npy"))?;
    let targets: Vec<Target> = (0..batch)
        .flat_map(|i| {
            t.data
                .chunks(6)
                .filter(move |r| r[0] as usize == i % base)
                .map(move |r| Target { batch_index: i, class: r[1] as usize, cxcywh: [r[2], r[3], r[4], r[5]] })
        })
        .collect();

    let ckpt = Checkpoint::load(weights).with_context(|| format!("loading {weights}"))?;
    let (mut model, _) = ferroyolo::model::from_checkpoint(&ckpt)?;
    let specs: Vec<ParamSpec> = ckpt
        .tensors
        .iter()
        .filter(|(_, t)| t.kind == TensorKind::Parameter)
        .map(|(n, t)| ParamSpec::from_name(n.clone(), t.shape.clone()))
        .collect();
    drop(ckpt);
    let cfg = OptimConfig { kind: OptimizerKind::Sgd, batch, epochs: 100, batches_per_epoch: 1000, ..OptimConfig::default() };
    let mut opt = Optimizer::new(&cfg, &specs);
    opt.set_iteration(10, 10_000); // past warmup: plain lr, Nesterov momentum 0.937
    let loss_cfg = LossConfig::default();
    let no_freeze = |_: &str| false;

    let mut step = |model: &mut ferroyolo::model::Yolo26| -> f32 {
        let (out, tape) = model.forward_train(&x, &no_freeze);
        let loss = e2e_loss(&out.one2many, &out.one2one, &targets, (size, size), &loss_cfg);
        drop(out);
        let grads = model.backward(tape, &loss.grad_o2m_boxes, &loss.grad_o2m_logits, &loss.grad_o2o_boxes, &loss.grad_o2o_logits);
        let mut params = model.parameters_mut();
        let mut jobs: Vec<(&str, &mut [f32], &[f32])> = params
            .iter_mut()
            .filter_map(|(name, values)| grads.get(name).map(|g| (name.as_str(), values.as_mut_slice(), g)))
            .collect();
        opt.step(&mut jobs);
        loss.total
    };

    let warmup = 2;
    let mut times = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    let mut first_loss = None;
    for i in 0..warmup + runs {
        let (t0, c0) = (Instant::now(), engine::process_cpu_ms());
        let loss = step(&mut model);
        first_loss.get_or_insert(loss);
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            cpu.push(engine::process_cpu_ms() - c0);
        }
    }
    if std::env::var_os("FERROYOLO_BENCH_PROFILE").is_some() {
        engine::set_profiling(true);
        let t0 = Instant::now();
        step(&mut model);
        engine::set_profiling(false);
        eprintln!("{}profiled step: {:.1} ms", engine::profile_report(), t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    println!(
        "{{\"ferroyolo\": {:.3}, \"min\": {:.3}, \"max\": {:.3}, \"cpu_ms\": {:.3}, \"runs\": {runs}, \"threads\": {threads}, \"batch\": {batch}, \"size\": {size}, \"first_loss\": {}, \"peak_rss_mib\": {:.1}}}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        cpu[cpu.len() / 2],
        first_loss.unwrap_or(f32::NAN),
        peak_rss_mib()
    );
    Ok(())
}

/// The process's peak resident set (`VmHWM`), in MiB; 0 where /proc is unavailable.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}
