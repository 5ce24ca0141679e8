//! `ferroyolo synthetic`: write a synthetic shapes dataset (circles, squares, triangles, crosses
//! on varied backgrounds, with exact boxes) in the Ultralytics layout.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use crate::args::set_threads;
use ferroyolo::data::synthetic::{generate, SyntheticFormat, SyntheticSpec};

#[derive(Args, Debug)]
pub struct SyntheticArgs {
    /// Output folder (new, empty, or a synthetic dataset written before, which is replaced).
    #[arg(long, default_value = "datasets/shapes")]
    out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 256)]
    train: usize,
    /// Validation images.
    #[arg(long, default_value_t = 64)]
    val: usize,
    /// Image side in pixels (square images).
    #[arg(long, default_value_t = 320)]
    imgsz: u32,
    /// Random seed: the same options and seed give identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of classes, taken in order from: circle, square, triangle, cross.
    #[arg(long, default_value_t = 4)]
    classes: usize,
    /// Objects per image, `min,max` (or one number).
    #[arg(long, default_value = "1,4", value_parser = parse_count_range)]
    objects: (usize, usize),
    /// Object size as a fraction of the image side, `min,max` (or one number).
    #[arg(long, default_value = "0.15,0.45", value_parser = parse_size_range)]
    size: (f32, f32),
    /// Largest rotation of non-circular shapes, in degrees either way.
    #[arg(long, default_value_t = 15.0)]
    rotation: f32,
    /// Image format: jpg or png.
    #[arg(long, default_value = "jpg", value_parser = ["jpg", "png"])]
    format: String,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 95)]
    quality: u8,
    /// Threads (0 = all cores); the files do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn parse_pair<T: std::str::FromStr + Copy>(s: &str, what: &str) -> Result<(T, T), String> {
    let inner = s.trim().trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    let parse = |p: &str| p.parse::<T>().map_err(|_| format!("'{p}' is not a valid {what}"));
    match parts.as_slice() {
        [one] => parse(one).map(|v| (v, v)),
        [lo, hi] => Ok((parse(lo)?, parse(hi)?)),
        _ => Err(format!("expected one {what} or two as min,max, got '{s}'")),
    }
}

fn parse_count_range(s: &str) -> Result<(usize, usize), String> {
    parse_pair(s, "count")
}

fn parse_size_range(s: &str) -> Result<(f32, f32), String> {
    parse_pair(s, "fraction")
}

pub fn run(a: SyntheticArgs) -> Result<()> {
    set_threads(a.threads)?;
    let spec = SyntheticSpec {
        train: a.train,
        val: a.val,
        imgsz: a.imgsz,
        seed: a.seed,
        classes: a.classes,
        min_objects: a.objects.0,
        max_objects: a.objects.1,
        min_size: a.size.0,
        max_size: a.size.1,
        max_rotation: a.rotation,
        format: if a.format == "png" { SyntheticFormat::Png } else { SyntheticFormat::Jpeg { quality: a.quality } },
    };
    let start = Instant::now();
    let yaml = generate(&a.out, &spec)?;
    let names = spec.names().join(", ");
    println!(
        "Wrote {} train and {} val images ({}x{}, {} classes: {names}) to {} in {:.1}s",
        spec.train,
        spec.val,
        spec.imgsz,
        spec.imgsz,
        spec.classes,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    println!("Dataset YAML: {}", yaml.display());
    println!("Train from scratch: ferroyolo train model=yolo26n.yaml data={} imgsz={}", yaml.display(), spec.imgsz);
    println!("Validate a model:   ferroyolo val model=<weights> data={} imgsz={}", yaml.display(), spec.imgsz);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_one_or_two_values() {
        assert_eq!(parse_count_range("1,4").unwrap(), (1, 4));
        assert_eq!(parse_count_range("[2, 3]").unwrap(), (2, 3));
        assert_eq!(parse_count_range("2").unwrap(), (2, 2));
        assert!(parse_count_range("1,2,3").is_err());
        assert!(parse_count_range("-1").is_err());
        assert_eq!(parse_size_range("0.1,0.3").unwrap(), (0.1, 0.3));
        assert!(parse_size_range("big").unwrap_err().contains("'big'"));
    }
}
