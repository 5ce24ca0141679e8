//! Times every distinct convolution shape of YOLO26n at a 640×640 input (plus the attention core,
//! max pool, upsample and concat) on 2 threads and on 1, and prints GFLOP/s per shape and the totals
//! weighted by how often each shape occurs in one forward pass.
//!
//! `cargo run --release -p ferroyolo --example engine_layers [-- --quick] [--min] [--filter TEXT]`
//!
//! `--quick` shortens each measurement; `--min` reports the fastest run instead of the median (for a
//! machine shared with other work).
//!
//! `FERROYOLO_ISA=portable` (or `avx2`) runs a lower kernel tier for comparison.
//!
//! `--model WEIGHTS` instead runs whole yolo26 forward passes (640×640) with engine profiling on and
//! prints where they spend their time, per kernel call shape.

use std::time::{Duration, Instant};

use ferroyolo::engine::{self, Activation, Conv2d, Tensor};

/// One convolution shape: input channels, output channels, kernel, stride, groups, input size,
/// occurrences in a yolo26n forward (fused, one2one head), whether a SiLU follows.
#[derive(Clone, Copy)]
struct Shape {
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    g: usize,
    hw: usize,
    count: usize,
    silu: bool,
}

const fn conv(cin: usize, cout: usize, k: usize, s: usize, hw: usize, count: usize) -> Shape {
    Shape { cin, cout, k, s, g: 1, hw, count, silu: true }
}

const fn dw(c: usize, hw: usize, count: usize, silu: bool) -> Shape {
    Shape { cin: c, cout: c, k: 3, s: 1, g: c, hw, count, silu }
}

const fn plain(cin: usize, cout: usize, hw: usize, count: usize) -> Shape {
    Shape { cin, cout, k: 1, s: 1, g: 1, hw, count, silu: false }
}

/// The convolutions of yolo26n at 640×640 (layer table of the reference, section 1.8), grouped by shape.
const SHAPES: &[Shape] = &[
    // Backbone downsampling convs (layers 0, 1, 3, 5, 7) and the neck's (17, 20).
    conv(3, 16, 3, 2, 640, 1),
    conv(16, 32, 3, 2, 320, 1),
    conv(64, 64, 3, 2, 160, 1),
    conv(128, 128, 3, 2, 80, 1),
    conv(128, 256, 3, 2, 40, 1),
    conv(64, 64, 3, 2, 80, 1),
    conv(128, 128, 3, 2, 40, 1),
    // Layer 2 C3k2 at 160².
    conv(32, 32, 1, 1, 160, 1),
    conv(16, 8, 3, 1, 160, 1),
    conv(8, 16, 3, 1, 160, 1),
    conv(48, 64, 1, 1, 160, 1),
    // Layer 4 C3k2 at 80².
    conv(64, 64, 1, 1, 80, 1),
    conv(32, 16, 3, 1, 80, 1),
    conv(16, 32, 3, 1, 80, 1),
    conv(96, 128, 1, 1, 80, 1),
    // Layer 16 C3k2 (c3k) at 80².
    conv(256, 64, 1, 1, 80, 1),
    conv(32, 16, 1, 1, 80, 2),
    conv(16, 16, 3, 1, 80, 4),
    conv(32, 32, 1, 1, 80, 1),
    conv(96, 64, 1, 1, 80, 1),
    // C3k2 (c3k) at 40²: layers 6, 13, 19.
    conv(128, 128, 1, 1, 40, 1),
    conv(384, 128, 1, 1, 40, 1),
    conv(192, 128, 1, 1, 40, 4),
    conv(64, 32, 1, 1, 40, 6),
    conv(32, 32, 3, 1, 40, 12),
    conv(64, 64, 1, 1, 40, 3),
    // At 20²: layers 8, 9, 10, 22.
    conv(256, 256, 1, 1, 20, 3),
    conv(128, 64, 1, 1, 20, 2),
    conv(64, 64, 3, 1, 20, 4),
    conv(128, 128, 1, 1, 20, 1),
    conv(384, 256, 1, 1, 20, 3),
    plain(256, 128, 20, 1), // SPPF cv1 (no activation)
    conv(512, 256, 1, 1, 20, 1),
    plain(128, 256, 20, 2), // attention qkv
    plain(128, 128, 20, 2), // attention proj
    dw(128, 20, 2, false),  // attention positional conv
    conv(128, 256, 1, 1, 20, 2),
    plain(256, 128, 20, 2), // PSA ffn second conv
    conv(128, 64, 3, 1, 20, 1),
    conv(64, 128, 3, 1, 20, 1),
    // Detect head, one2one branch, P3 (64 @ 80²), P4 (128 @ 40²), P5 (256 @ 20²).
    conv(64, 16, 3, 1, 80, 1),
    conv(16, 16, 3, 1, 80, 1),
    plain(16, 4, 80, 1),
    dw(64, 80, 1, true),
    conv(64, 80, 1, 1, 80, 1),
    dw(80, 80, 1, true),
    conv(80, 80, 1, 1, 80, 1),
    plain(80, 80, 80, 1),
    conv(128, 16, 3, 1, 40, 1),
    conv(16, 16, 3, 1, 40, 1),
    plain(16, 4, 40, 1),
    dw(128, 40, 1, true),
    conv(128, 80, 1, 1, 40, 1),
    dw(80, 40, 1, true),
    conv(80, 80, 1, 1, 40, 1),
    plain(80, 80, 40, 1),
    conv(256, 16, 3, 1, 20, 1),
    conv(16, 16, 3, 1, 20, 1),
    plain(16, 4, 20, 1),
    dw(256, 20, 1, true),
    conv(256, 80, 1, 1, 20, 1),
    dw(80, 20, 1, true),
    conv(80, 80, 1, 1, 20, 1),
    plain(80, 80, 20, 1),
];

/// Deterministic pseudo-random values in [-0.5, 0.5).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Median (or, with `min`, fastest) wall time of `f`, run at least 5 times and for at least `budget`.
/// The minimum is for busy machines, where it is the better estimate of the uncontended time.
fn median_time(budget: Duration, min: bool, mut f: impl FnMut()) -> Duration {
    f(); // warm-up: first-touch page faults, weight packing, scratch buffers
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    if min {
        times[0]
    } else {
        times[times.len() / 2]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    label: String,
    count: usize,
    flops: f64,
    times: Vec<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let min = args.iter().any(|a| a == "--min");
    let filter = args.iter().position(|a| a == "--filter").and_then(|i| args.get(i + 1)).cloned();
    let budget = Duration::from_millis(if quick { 60 } else { 300 });
    let thread_counts = [2usize, 1];
    let pools: Vec<rayon::ThreadPool> =
        thread_counts.iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
    if let Some(weights) = args.iter().position(|a| a == "--model").and_then(|i| args.get(i + 1)) {
        profile_model(weights, &thread_counts, &pools);
        return;
    }
    println!(
        "engine ISA tier: {:?}; {} of >= 5 runs; GFLOP/s = 2 x multiply-adds / time",
        engine::isa(),
        if min { "fastest" } else { "median" }
    );

    let mut rows = Vec::new();
    for (i, sh) in SHAPES.iter().enumerate() {
        let label = format!(
            "{:>3}->{:<3} k{} s{}{} @{}²{}",
            sh.cin,
            sh.cout,
            sh.k,
            sh.s,
            if sh.g > 1 { " dw" } else { "   " },
            sh.hw,
            if sh.silu { "" } else { " (no act)" }
        );
        if filter.as_deref().is_some_and(|f| !label.contains(f)) {
            continue;
        }
        let weight = values(sh.cout * sh.cin / sh.g * sh.k * sh.k, i as u64 + 1);
        let bias = values(sh.cout, i as u64 + 1000);
        let layer = Conv2d::new(sh.cin, sh.cout, sh.k, sh.s, sh.k / 2, sh.g, weight, Some(bias)).unwrap();
        let x = Tensor::new([1, sh.cin, sh.hw, sh.hw], values(sh.cin * sh.hw * sh.hw, i as u64 + 7));
        let (ho, wo) = layer.output_size(sh.hw, sh.hw);
        let act = if sh.silu { Activation::Silu } else { Activation::Identity };
        let times = pools
            .iter()
            .map(|p| {
                p.install(|| {
                    median_time(budget, min, || {
                        std::hint::black_box(layer.forward(&x, act));
                    })
                })
            })
            .collect();
        rows.push(Row { label, count: sh.count, flops: layer.flops(ho, wo) as f64, times });
    }

    // The non-convolution work of one forward pass: (label, occurrences, FLOPs, run).
    type Op = (String, usize, f64, Box<dyn Fn() + Sync>);
    let misc: Vec<Op> = vec![
        {
            let qkv = Tensor::new([1, 256, 20, 20], values(256 * 400, 77));
            let flops = 2.0 * 2.0 * (400.0 * 400.0 * 32.0 + 64.0 * 400.0 * 400.0);
            (
                "attention 2 heads kd32 hd64 @20²".to_string(),
                2,
                flops,
                Box::new(move || {
                    std::hint::black_box(engine::attention(&qkv, 2, 32, 64, 32f32.powf(-0.5)));
                }),
            )
        },
        {
            let x = Tensor::new([1, 128, 20, 20], values(128 * 400, 78));
            (
                "max_pool2d k5 s1 p2 128 @20²".to_string(),
                3,
                0.0,
                Box::new(move || {
                    std::hint::black_box(engine::max_pool2d(&x, 5, 1, 2));
                }),
            )
        },
        {
            let x = Tensor::new([1, 128, 40, 40], values(128 * 1600, 79));
            (
                "upsample x2 128 @40²".to_string(),
                1,
                0.0,
                Box::new(move || {
                    std::hint::black_box(engine::upsample_nearest(&x, 2));
                }),
            )
        },
        {
            let a = Tensor::new([1, 128, 80, 80], values(128 * 6400, 80));
            let b = Tensor::new([1, 128, 80, 80], values(128 * 6400, 81));
            (
                "concat 128+128 @80²".to_string(),
                1,
                0.0,
                Box::new(move || {
                    std::hint::black_box(engine::concat_channels(&[&a, &b]));
                }),
            )
        },
    ];
    for (label, count, flops, f) in misc {
        if filter.as_deref().is_some_and(|flt| !label.contains(flt)) {
            continue;
        }
        let times = pools.iter().map(|p| p.install(|| median_time(budget, min, &f))).collect();
        rows.push(Row { label, count, flops, times });
    }

    println!(
        "\n{:<34} {:>3} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
        "shape", "n", "MFLOP", "2t ms", "GFLOP/s", "1t ms", "GFLOP/s"
    );
    let mut total_flops = 0.0;
    let mut total = vec![0.0f64; thread_counts.len()];
    for r in &rows {
        let mut line = format!("{:<34} {:>3} {:>8.1}", r.label, r.count, r.flops / 1e6);
        for (t, d) in r.times.iter().enumerate() {
            let gf = if r.flops > 0.0 { format!("{:8.1}", r.flops / d.as_secs_f64() / 1e9) } else { format!("{:>8}", "-") };
            line += &format!(" | {:8.3} {gf}", ms(*d));
            total[t] += ms(*d) * r.count as f64;
        }
        total_flops += r.flops * r.count as f64;
        println!("{line}");
    }
    println!("\ntotal work per forward: {:.2} GFLOP", total_flops / 1e9);
    for (t, ms) in thread_counts.iter().zip(&total) {
        println!(
            "{t} thread(s): sum of layer medians x occurrences = {ms:.2} ms ({:.1} GFLOP/s)",
            total_flops / (ms / 1e3) / 1e9
        );
    }
}

/// Whole forward passes with engine profiling: where the time goes, per call shape.
fn profile_model(weights: &str, thread_counts: &[usize], pools: &[rayon::ThreadPool]) {
    let yolo = ferroyolo::Yolo::load(weights).expect("load weights");
    let x = Tensor::new([1, 3, 640, 640], values(3 * 640 * 640, 99));
    let runs = 10;
    for (t, pool) in thread_counts.iter().zip(pools) {
        pool.install(|| {
            for _ in 0..3 {
                std::hint::black_box(yolo.model().forward(&x, ferroyolo::model::HeadMode::OneToOne));
            }
            let mut times = Vec::new();
            engine::set_profiling(true);
            for _ in 0..runs {
                let start = Instant::now();
                std::hint::black_box(yolo.model().forward(&x, ferroyolo::model::HeadMode::OneToOne));
                times.push(start.elapsed());
            }
            engine::set_profiling(false);
            times.sort();
            println!(
                "\n{t} thread(s): forward median {:.2} ms, fastest {:.2} ms; engine calls over {runs} forwards:",
                ms(times[runs / 2]),
                ms(times[0])
            );
            print!("{}", engine::profile_report());
        });
    }
}
