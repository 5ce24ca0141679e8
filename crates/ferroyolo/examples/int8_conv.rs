//! Times the int8 convolution (`engine::int8::QConv2d`, u8 activations × i8 weights, int32
//! accumulation) against the f32 one (`engine::Conv2d`) on yolo26n layer shapes at a 640×640 input,
//! on 2 threads, for every int8 kernel this CPU has. Both sides include their fused bias + SiLU; the
//! int8 side is timed with f32 output and with requantized u8 output (the next int8 layer's input).
//!
//! `cargo run --release -p ferroyolo --example int8_conv [-- --quick] [--min] [--threads N] [--filter TEXT] [--kernel NAME]`

use std::time::{Duration, Instant};

use ferroyolo::engine::int8::{quantize_tensor, Int8Kernel, QConv2d, QParams};
use ferroyolo::engine::{Activation, Conv2d, Tensor};

/// (in, out, kernel, stride, depthwise, input size)
const SHAPES: &[(usize, usize, usize, usize, bool, usize)] = &[
    (16, 32, 3, 2, false, 320),
    (32, 32, 1, 1, false, 160),
    (64, 64, 3, 2, false, 160),
    (64, 64, 1, 1, false, 80),
    (16, 16, 3, 1, false, 80),
    (128, 256, 3, 2, false, 40),
    (32, 32, 3, 1, false, 40),
    (384, 256, 1, 1, false, 20),
    (64, 64, 3, 1, true, 80),
    (128, 128, 3, 1, true, 40),
];

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

/// Median (or fastest, with `min`) of at least 5 runs and `budget` of time, after one warm-up.
fn time(budget: Duration, min: bool, mut f: impl FnMut()) -> Duration {
    f();
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let min = args.iter().any(|a| a == "--min");
    let threads = args.iter().position(|a| a == "--threads").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(2);
    let filter = args.iter().position(|a| a == "--filter").and_then(|i| args.get(i + 1)).cloned();
    let budget = Duration::from_millis(if quick { 100 } else { 400 });
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let only = args.iter().position(|a| a == "--kernel").and_then(|i| args.get(i + 1)).cloned();
    let kernels: Vec<Int8Kernel> = Int8Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported() && only.as_deref().is_none_or(|o| format!("{k:?}").eq_ignore_ascii_case(o)))
        .collect();
    println!(
        "{} threads, {} of >= 5 runs, ms; int8 kernels here: {kernels:?} (best {:?})",
        threads,
        if min { "fastest" } else { "median" },
        Int8Kernel::detected()
    );
    print!("{:<26} {:>8}", "layer", "f32");
    for k in &kernels {
        print!(" {:>12}", format!("{k:?}"));
    }
    println!(" {:>10} {:>8}", "best->u8", "speedup");
    pool.install(|| {
        for (i, &(cin, cout, k, s, dw, hw)) in SHAPES.iter().enumerate() {
            let label = format!("{cin:>3}->{cout:<3} k{k} s{s}{} @{hw}", if dw { " dw" } else { "" });
            if filter.as_deref().is_some_and(|f| !label.contains(f)) {
                continue;
            }
            let g = if dw { cin } else { 1 };
            let seed = i as u64 + 1;
            let conv = Conv2d::new(cin, cout, k, s, k / 2, g, values(cout * cin / g * k * k, seed), Some(values(cout, seed + 100)))
                .unwrap();
            let x = Tensor::new([1, cin, hw, hw], values(cin * hw * hw, seed + 7).iter().map(|v| v * 4.0 + 1.0).collect());
            let qconv = QConv2d::quantize(&conv).unwrap();
            let xq = quantize_tensor(&x, QParams::from_min_max(-1.0, 3.0).unwrap());
            let out = QParams::from_min_max(-0.3, 6.0).unwrap();
            let t_f32 = time(budget, min, || drop(conv.forward(&x, Activation::Silu)));
            print!("{label:<26} {:>8.3}", ms(t_f32));
            for &kern in &kernels {
                let t = time(budget, min, || drop(qconv.forward_with(&xq, Activation::Silu, kern)));
                print!(" {:>12.3}", ms(t));
            }
            let best = Int8Kernel::detected();
            let t_u8 = time(budget, min, || drop(qconv.forward_quantized_with(&xq, Activation::Silu, out, best)));
            println!(" {:>10.3} {:>7.2}x", ms(t_u8), t_f32.as_secs_f64() / t_u8.as_secs_f64());
        }
    });
}
