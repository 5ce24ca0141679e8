//! Times the YOLO26 forward pass (one-to-one head, as predict runs it) on a 1×3×640×640 input and
//! prints the median in milliseconds as JSON. Used by `bench/forward.sh`.
//!
//! `cargo run --release -p ferroyolo --example bench_forward -- WEIGHTS THREADS RUNS [SIZE]`
//!
//! `FERROYOLO_BENCH_PROFILE=1` also prints a per-kernel profile of three more passes to stderr.

use std::time::Instant;

use ferroyolo::engine::{self, Tensor};
use ferroyolo::model::HeadMode;
use ferroyolo::Yolo;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let weights = args.get(1).map(String::as_str).unwrap_or("yolo26n.pt");
    let threads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let size: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(640);
    engine::set_num_threads(threads);
    let yolo = Yolo::load(weights)?;
    // A fixed pseudo-random input (the values do not change the work done).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..3 * size * size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let x = Tensor::new([1, 3, size, size], data);
    for _ in 0..3 {
        yolo.model().forward(&x, HeadMode::OneToOne);
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(yolo.model().forward(&x, HeadMode::OneToOne));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if std::env::var_os("FERROYOLO_BENCH_PROFILE").is_some() {
        engine::set_profiling(true);
        for _ in 0..3 {
            yolo.model().forward(&x, HeadMode::OneToOne);
        }
        engine::set_profiling(false);
        eprintln!("{}", engine::profile_report());
    }
    println!("{{\"ferroyolo\": {median:.3}, \"threads\": {threads}, \"runs\": {runs}, \"min\": {:.3}}}", times[0]);
    Ok(())
}
