//! Synthetic detection datasets: coloured shapes on varied backgrounds, with exact boxes.
//!
//! The point is a dataset small and easy enough that a network trained from random weights
//! learns it in minutes on a CPU, yet real: the classes differ only in shape (colours, sizes,
//! positions, rotations and backgrounds are random), so a model must learn shape to score.
//!
//! Each image holds 1-4 (by default) filled shapes: circle, square, triangle, cross. A shape is
//! rasterised without anti-aliasing (a pixel belongs to it when its centre is inside), so its
//! label is the tight box of exactly the pixels painted in its colour. Shapes never overlap (their
//! boxes keep a gap) and never leave the image, so every box is fully visible. The object colour
//! is chosen to stand out against the background under its box; a little per-pixel grain is added
//! to some images afterwards.
//!
//! Every image draws from its own random stream keyed by (seed, split, index), so the dataset is
//! a pure function of the [`SyntheticSpec`]: the same spec gives byte-identical files, whatever the
//! thread count.
//!
//! [`generate`] writes the Ultralytics layout (`images/{train,val}`, `labels/{train,val}`,
//! `data.yaml`); [`render`] gives one image and its objects in memory.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use rayon::prelude::*;

use crate::train::augment::rng::Rng;

/// The shape classes, indexed by class id.
pub const SHAPE_NAMES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// Name of the marker file that identifies a folder as a synthetic dataset (so that
/// [`generate`] may replace it). Hidden, so dataset listings skip it.
pub const MARKER_FILE: &str = ".ferroyolo-synthetic";

/// Smallest L1 colour distance (over R+G+B, 0-765) sought between an object and the background
/// under its box; a colour is retried until it is reached (or the tries run out).
const MIN_CONTRAST: u32 = 150;
/// Colour draws per object before settling for the most contrasting one.
const COLOUR_TRIES: usize = 48;
/// Position draws per object before giving up on it (the image then holds fewer objects).
const PLACEMENT_TRIES: usize = 64;
/// Free pixels kept between the boxes of two objects.
const BOX_GAP: u32 = 2;
/// Largest per-channel grain amplitude added to an image (when it gets grain).
const MAX_GRAIN: u8 = 10;

/// Image file format of a generated dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticFormat {
    /// Baseline JPEG, 4:4:4, at this quality (1-100).
    Jpeg { quality: u8 },
    /// Lossless PNG: decoded pixels equal the rendered ones.
    Png,
}

impl SyntheticFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            SyntheticFormat::Jpeg { .. } => "jpg",
            SyntheticFormat::Png => "png",
        }
    }
}

/// What to generate. [`Default`] gives 256 train and 64 val images of 320x320 with 4 classes.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Number of training images.
    pub train: usize,
    /// Number of validation images.
    pub val: usize,
    /// Side of the square images, in pixels.
    pub imgsz: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of classes: the first `classes` of [`SHAPE_NAMES`].
    pub classes: usize,
    /// Objects per image, drawn uniformly in `min_objects..=max_objects` (fewer when they do not
    /// fit without overlapping).
    pub min_objects: usize,
    pub max_objects: usize,
    /// Shape size as a fraction of the image side (diameter, side, width or span), drawn
    /// uniformly in `min_size..=max_size`.
    pub min_size: f32,
    pub max_size: f32,
    /// Shapes other than circles are turned by up to this many degrees either way.
    pub max_rotation: f32,
    /// Image file format.
    pub format: SyntheticFormat,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            train: 256,
            val: 64,
            imgsz: 320,
            seed: 0,
            classes: SHAPE_NAMES.len(),
            min_objects: 1,
            max_objects: 4,
            min_size: 0.15,
            max_size: 0.45,
            max_rotation: 15.0,
            format: SyntheticFormat::Jpeg { quality: 95 },
        }
    }
}

impl SyntheticSpec {
    /// Checks that the spec can be generated; the error says which field is wrong and why.
    pub fn validate(&self) -> Result<()> {
        if self.train == 0 || self.val == 0 {
            bail!("synthetic dataset: train and val need at least 1 image each (got train={}, val={})", self.train, self.val);
        }
        if self.train.max(self.val) > 10_000_000 {
            bail!("synthetic dataset: {} images in a split is too many (at most 10000000)", self.train.max(self.val));
        }
        if !(32..=4096).contains(&self.imgsz) {
            bail!("synthetic dataset: imgsz={} must be between 32 and 4096", self.imgsz);
        }
        if !(1..=SHAPE_NAMES.len()).contains(&self.classes) {
            bail!("synthetic dataset: classes={} must be between 1 and {} ({})", self.classes, SHAPE_NAMES.len(), SHAPE_NAMES.join(", "));
        }
        if self.min_objects == 0 || self.min_objects > self.max_objects || self.max_objects > 16 {
            bail!(
                "synthetic dataset: objects per image {}-{} must satisfy 1 <= min <= max <= 16",
                self.min_objects,
                self.max_objects
            );
        }
        // Up to 0.7 a square turned 45 degrees still fits in the image (0.7 * sqrt 2 < 1).
        let sizes_ok = self.min_size.is_finite() && self.max_size.is_finite();
        if !sizes_ok || self.min_size < 0.02 || self.min_size > self.max_size || self.max_size > 0.7 {
            bail!(
                "synthetic dataset: object size {}-{} (fraction of the image side) must satisfy 0.02 <= min <= max <= 0.7",
                self.min_size,
                self.max_size
            );
        }
        if self.min_size * (self.imgsz as f32) < 6.0 {
            bail!(
                "synthetic dataset: smallest objects would be {:.1} pixels at imgsz={}; raise min_size or imgsz (6 pixels at least)",
                self.min_size * self.imgsz as f32,
                self.imgsz
            );
        }
        if !(0.0..=180.0).contains(&self.max_rotation) {
            bail!("synthetic dataset: max_rotation={} must be between 0 and 180 degrees", self.max_rotation);
        }
        if let SyntheticFormat::Jpeg { quality } = self.format {
            if !(1..=100).contains(&quality) {
                bail!("synthetic dataset: JPEG quality {quality} must be between 1 and 100");
            }
        }
        Ok(())
    }

    /// Class names of the dataset, indexed by class id.
    pub fn names(&self) -> &'static [&'static str] {
        &SHAPE_NAMES[..self.classes.min(SHAPE_NAMES.len())]
    }

    /// Number of images in a split.
    pub fn count(&self, split: SyntheticSplit) -> usize {
        match split {
            SyntheticSplit::Train => self.train,
            SyntheticSplit::Val => self.val,
        }
    }
}

impl fmt::Display for SyntheticSpec {
    /// The spec in the CLI's words, e.g. for the dataset YAML's header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            SyntheticFormat::Jpeg { quality } => format!("jpg quality={quality}"),
            SyntheticFormat::Png => "png".to_string(),
        };
        write!(
            f,
            "train={} val={} imgsz={} seed={} classes={} objects={},{} size={},{} rotation={} format={format}",
            self.train,
            self.val,
            self.imgsz,
            self.seed,
            self.classes,
            self.min_objects,
            self.max_objects,
            self.min_size,
            self.max_size,
            self.max_rotation
        )
    }
}

/// A split of the generated dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticSplit {
    Train,
    Val,
}

impl SyntheticSplit {
    pub const ALL: [SyntheticSplit; 2] = [SyntheticSplit::Train, SyntheticSplit::Val];

    /// Folder name of the split (`train`, `val`).
    pub fn name(self) -> &'static str {
        match self {
            SyntheticSplit::Train => "train",
            SyntheticSplit::Val => "val",
        }
    }

    /// Word of the random-stream key that separates the splits.
    fn key(self) -> u64 {
        match self {
            SyntheticSplit::Train => 1,
            SyntheticSplit::Val => 2,
        }
    }
}

/// One shape of a rendered image.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticObject {
    pub class_id: usize,
    /// Tight pixel box `[x0, y0, x1, y1]`, end-exclusive: the shape's pixels span columns
    /// `x0..x1` and rows `y0..y1`, and touch all four sides.
    pub bbox: [u32; 4],
    /// Fill colour (before grain).
    pub colour: [u8; 3],
    /// Which pixels of the box belong to the shape, row-major over the box.
    pub mask: Vec<bool>,
}

impl SyntheticObject {
    /// The box as a YOLO label: `cx, cy, w, h` normalised by the image size.
    pub fn xywhn(&self, width: u32, height: u32) -> [f32; 4] {
        let [x0, y0, x1, y1] = self.bbox.map(|v| v as f64);
        let (w, h) = (width as f64, height as f64);
        [((x0 + x1) / 2.0 / w) as f32, ((y0 + y1) / 2.0 / h) as f32, ((x1 - x0) / w) as f32, ((y1 - y0) / h) as f32]
    }

    /// Whether pixel `(x, y)` of the image belongs to the shape.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        let [x0, y0, x1, y1] = self.bbox;
        (x0..x1).contains(&x) && (y0..y1).contains(&y) && self.mask[((y - y0) * (x1 - x0) + (x - x0)) as usize]
    }
}

/// One rendered image with its objects.
#[derive(Clone, Debug)]
pub struct SyntheticImage {
    pub image: RgbImage,
    pub objects: Vec<SyntheticObject>,
}

impl SyntheticImage {
    /// The label file's text: one `class cx cy w h` row per object.
    pub fn label_text(&self) -> String {
        let (w, h) = self.image.dimensions();
        self.objects
            .iter()
            .map(|o| {
                let [cx, cy, bw, bh] = o.xywhn(w, h);
                format!("{} {cx:.6} {cy:.6} {bw:.6} {bh:.6}\n", o.class_id)
            })
            .collect()
    }
}

/// Renders image `index` of a split. A pure function of its arguments.
pub fn render(spec: &SyntheticSpec, split: SyntheticSplit, index: usize) -> SyntheticImage {
    let mut rng = Rng::keyed(&[spec.seed, split.key(), index as u64]);
    let side = spec.imgsz;
    let mut image = background(&mut rng, side, side);
    let target = spec.min_objects + rng.below(spec.max_objects - spec.min_objects + 1);
    let mut objects: Vec<SyntheticObject> = Vec::with_capacity(target);
    for _ in 0..target {
        let class_id = rng.below(spec.classes);
        let size = rng.uniform(spec.min_size as f64, spec.max_size as f64) * side as f64;
        let rotation = if class_id == 0 { 0.0 } else { rng.uniform(-spec.max_rotation as f64, spec.max_rotation as f64).to_radians() };
        let (mask, mw, mh) = rasterise(class_id, size, rotation, (rng.random(), rng.random()));
        if mw == 0 || mh == 0 || mw > side || mh > side {
            continue;
        }
        let free = |x0: u32, y0: u32| {
            objects.iter().all(|o| {
                let [a0, b0, a1, b1] = o.bbox;
                x0 + mw + BOX_GAP <= a0 || a1 + BOX_GAP <= x0 || y0 + mh + BOX_GAP <= b0 || b1 + BOX_GAP <= y0
            })
        };
        let placed = (0..PLACEMENT_TRIES).find_map(|_| {
            let x0 = rng.below((side - mw + 1) as usize) as u32;
            let y0 = rng.below((side - mh + 1) as usize) as u32;
            free(x0, y0).then_some((x0, y0))
        });
        let Some((x0, y0)) = placed else { continue };
        let bbox = [x0, y0, x0 + mw, y0 + mh];
        let colour = pick_colour(&mut rng, &image, bbox);
        for y in 0..mh {
            for x in 0..mw {
                if mask[(y * mw + x) as usize] {
                    image.put_pixel(x0 + x, y0 + y, image::Rgb(colour));
                }
            }
        }
        objects.push(SyntheticObject { class_id, bbox, colour, mask });
    }
    if rng.random() < 0.5 {
        let amplitude = 2 + rng.below(MAX_GRAIN as usize - 1) as i32;
        let levels = 2 * amplitude as u32 + 1;
        for p in image.pixels_mut() {
            // One draw per pixel: three bytes scaled to -amplitude..=amplitude.
            let bits = rng.next_u64();
            for (k, c) in p.0.iter_mut().enumerate() {
                let noise = (((bits >> (8 * k)) as u8 as u32 * levels) >> 8) as i32 - amplitude;
                *c = (*c as i32 + noise).clamp(0, 255) as u8;
            }
        }
    }
    SyntheticImage { image, objects }
}

fn random_colour(rng: &mut Rng) -> [f64; 3] {
    [rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0)]
}

/// A random background: a solid colour, a linear gradient, or smooth value noise (a coarse grid
/// of random colours, interpolated bilinearly).
fn background(rng: &mut Rng, w: u32, h: u32) -> RgbImage {
    let to_u8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    match rng.below(3) {
        0 => {
            let c = random_colour(rng).map(to_u8);
            RgbImage::from_pixel(w, h, image::Rgb(c))
        }
        1 => {
            let (a, b) = (random_colour(rng), random_colour(rng));
            let angle = rng.uniform(0.0, std::f64::consts::TAU);
            let (dx, dy) = (angle.cos(), angle.sin());
            // Project onto the direction; the image's corners map to 0 and 1.
            let half = (dx.abs() * w as f64 + dy.abs() * h as f64) / 2.0;
            RgbImage::from_fn(w, h, |x, y| {
                let p = (x as f64 + 0.5 - w as f64 / 2.0) * dx + (y as f64 + 0.5 - h as f64 / 2.0) * dy;
                let t = (p / half + 1.0) / 2.0;
                image::Rgb([0, 1, 2].map(|c| to_u8(a[c] + (b[c] - a[c]) * t)))
            })
        }
        _ => {
            let cells = 2 + rng.below(4);
            let nodes: Vec<[f64; 3]> = (0..(cells + 1) * (cells + 1)).map(|_| random_colour(rng)).collect();
            let node = |i: usize, j: usize| nodes[j * (cells + 1) + i];
            RgbImage::from_fn(w, h, |x, y| {
                let gx = (x as f64 + 0.5) / w as f64 * cells as f64;
                let gy = (y as f64 + 0.5) / h as f64 * cells as f64;
                let (i, j) = ((gx as usize).min(cells - 1), (gy as usize).min(cells - 1));
                let (fx, fy) = (gx - i as f64, gy - j as f64);
                let (c00, c10, c01, c11) = (node(i, j), node(i + 1, j), node(i, j + 1), node(i + 1, j + 1));
                image::Rgb([0, 1, 2].map(|c| {
                    let top = c00[c] + (c10[c] - c00[c]) * fx;
                    let bottom = c01[c] + (c11[c] - c01[c]) * fx;
                    to_u8(top + (bottom - top) * fy)
                }))
            })
        }
    }
}

/// A fill colour that differs from every background pixel under (and just around) `bbox` by at
/// least [`MIN_CONTRAST`], or the best of [`COLOUR_TRIES`] draws.
fn pick_colour(rng: &mut Rng, image: &RgbImage, bbox: [u32; 4]) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let (x0, y0) = (bbox[0].saturating_sub(1), bbox[1].saturating_sub(1));
    let (x1, y1) = ((bbox[2] + 1).min(w), (bbox[3] + 1).min(h));
    let mut best = ([0u8; 3], 0u32);
    for _ in 0..COLOUR_TRIES {
        let c = random_colour(rng).map(|v| v.round().clamp(0.0, 255.0) as u8);
        let mut worst = u32::MAX;
        'scan: for y in y0..y1 {
            for x in x0..x1 {
                let p = image.get_pixel(x, y).0;
                let d: u32 = (0..3).map(|k| p[k].abs_diff(c[k]) as u32).sum();
                worst = worst.min(d);
                if worst <= best.1 {
                    break 'scan; // cannot beat the best so far
                }
            }
        }
        if worst > best.1 {
            best = (c, worst);
        }
        if best.1 >= MIN_CONTRAST {
            break;
        }
    }
    best.0
}

/// Rasterises a shape of class `class_id` and size `size` pixels, turned by `rotation` radians,
/// with its centre at sub-pixel offset `phase`. Returns its mask cropped to the tight box, and the
/// box's width and height (0 when no pixel centre falls inside).
fn rasterise(class_id: usize, size: f64, rotation: f64, phase: (f64, f64)) -> (Vec<bool>, u32, u32) {
    let half = size / 2.0;
    // Every shape lies within a circle of radius half * sqrt 2 around its centre.
    let reach = half * std::f64::consts::SQRT_2;
    let span = (2.0 * reach).ceil() as i64 + 3;
    let (cx, cy) = (reach + 1.0 + phase.0, reach + 1.0 + phase.1);
    let (sin, cos) = rotation.sin_cos();
    // Equilateral triangle of side `size`, pointing up (y grows downwards): circumradius side/sqrt 3.
    let r = size / 3f64.sqrt();
    let tri = [(0.0, -r), (r * 0.866_025_403_784_438_6, r / 2.0), (-r * 0.866_025_403_784_438_6, r / 2.0)];
    let arm = size / 6.0; // half the thickness of a cross's bars
    let inside = |u: f64, v: f64| match class_id {
        0 => u * u + v * v <= half * half,
        1 => u.abs() <= half && v.abs() <= half,
        2 => (0..3).all(|i| {
            let ((ax, ay), (bx, by)) = (tri[i], tri[(i + 1) % 3]);
            (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0.0
        }),
        _ => (u.abs() <= half && v.abs() <= arm) || (u.abs() <= arm && v.abs() <= half),
    };
    let mut full = vec![false; (span * span) as usize];
    let (mut x0, mut y0, mut x1, mut y1) = (i64::MAX, i64::MAX, i64::MIN, i64::MIN);
    for y in 0..span {
        for x in 0..span {
            let (px, py) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            // Into the shape's own frame.
            let (u, v) = (px * cos + py * sin, -px * sin + py * cos);
            if inside(u, v) {
                full[(y * span + x) as usize] = true;
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    if x1 <= x0 {
        return (Vec::new(), 0, 0);
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut mask = Vec::with_capacity((w * h) as usize);
    for y in y0..y1 {
        mask.extend_from_slice(&full[(y * span + x0) as usize..(y * span + x1) as usize]);
    }
    (mask, w as u32, h as u32)
}

/// Encodes an image in the dataset's format.
pub fn encode(image: &RgbImage, format: SyntheticFormat) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (w, h) = image.dimensions();
    match format {
        SyntheticFormat::Jpeg { quality } => {
            JpegEncoder::new_with_quality(&mut out, quality).write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
        SyntheticFormat::Png => PngEncoder::new_with_quality(Cursor::new(&mut out), CompressionType::Fast, FilterType::Adaptive)
            .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?,
    }
    Ok(out)
}

/// File stem of image `index` (`00042`): zero-padded so names sort in index order.
pub fn file_stem(index: usize, count: usize) -> String {
    let digits = count.saturating_sub(1).to_string().len().max(5);
    format!("{index:0digits$}")
}

/// Writes a synthetic dataset into `dir` and returns the path of its `data.yaml`.
///
/// `dir` must be new, empty, or a dataset this function wrote before (it carries
/// [`MARKER_FILE`]); in that last case its `images/`, `labels/` and `data.yaml` are replaced and
/// anything else is left alone. `data.yaml` is written last (atomically), so a folder without it
/// is an interrupted run; such a folder can be regenerated.
pub fn generate(dir: &Path, spec: &SyntheticSpec) -> Result<PathBuf> {
    spec.validate()?;
    let root = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let root_text = root.to_str().ok_or_else(|| anyhow!("dataset folder {} is not valid UTF-8, which a YAML file cannot name", root.display()))?;
    prepare_dir(dir)?;
    std::fs::write(dir.join(MARKER_FILE), format!("ferroyolo synthetic dataset: {spec}\n"))
        .with_context(|| format!("writing {}", dir.join(MARKER_FILE).display()))?;
    let ext = spec.format.extension();
    for split in SyntheticSplit::ALL {
        let images = dir.join("images").join(split.name());
        let labels = dir.join("labels").join(split.name());
        for d in [&images, &labels] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let count = spec.count(split);
        (0..count).into_par_iter().try_for_each(|i| -> Result<()> {
            let sample = render(spec, split, i);
            let stem = file_stem(i, count);
            let image_path = images.join(format!("{stem}.{ext}"));
            let bytes = encode(&sample.image, spec.format).with_context(|| format!("encoding {}", image_path.display()))?;
            std::fs::write(&image_path, bytes).with_context(|| format!("writing {}", image_path.display()))?;
            let label_path = labels.join(format!("{stem}.txt"));
            std::fs::write(&label_path, sample.label_text()).with_context(|| format!("writing {}", label_path.display()))?;
            Ok(())
        })?;
    }
    let mut yaml = format!("# Synthetic shapes dataset written by ferroyolo: {spec}\n");
    // Absolute, as the reference resolves a relative `path` against its own datasets folder.
    yaml += &format!("path: {}\ntrain: images/train\nval: images/val\nnames:\n", yaml_string(root_text));
    for (i, name) in spec.names().iter().enumerate() {
        yaml += &format!("  {i}: {name}\n");
    }
    let yaml_path = dir.join("data.yaml");
    write_atomic(&yaml_path, yaml.as_bytes())?;
    Ok(yaml_path)
}

/// A YAML double-quoted string (safe for any path).
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Makes `dir` ready: creates it, or clears a previous synthetic dataset in it; refuses anything
/// else that is not empty.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder; choose a new folder for the synthetic dataset", dir.display());
    }
    if !dir.exists() {
        return std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()));
    }
    let empty = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none();
    if empty {
        return Ok(());
    }
    if !dir.join(MARKER_FILE).is_file() {
        bail!(
            "{} is not empty and is not a synthetic dataset written by ferroyolo (no {MARKER_FILE} file); \
             choose a new or empty folder",
            dir.display()
        );
    }
    // data.yaml goes first, so that an interruption never leaves a YAML naming half-deleted splits.
    let yaml = dir.join("data.yaml");
    if yaml.exists() {
        std::fs::remove_file(&yaml).with_context(|| format!("removing {}", yaml.display()))?;
    }
    for sub in ["images", "labels"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing the previous {}", p.display()))?;
        }
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same folder and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{scan_split, DatasetConfig};
    use crate::data::image_io::load_image;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferroyolo-synthetic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn small(seed: u64, format: SyntheticFormat) -> SyntheticSpec {
        SyntheticSpec { train: 24, val: 12, imgsz: 128, seed, format, ..Default::default() }
    }

    fn l1(a: [u8; 3], b: [u8; 3]) -> u32 {
        (0..3).map(|k| a[k].abs_diff(b[k]) as u32).sum()
    }

    /// Largest L1 change grain can make to a pixel.
    const GRAIN_L1: u32 = 3 * MAX_GRAIN as u32;

    /// Every file of a dataset folder (relative path -> bytes), sorted.
    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(root: &Path, d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push((p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn masks_are_tight_separate_and_painted() {
        let spec = SyntheticSpec { imgsz: 160, ..Default::default() };
        let mut per_class = [0usize; 4];
        let mut objects = 0;
        for i in 0..150 {
            let s = render(&spec, SyntheticSplit::Train, i);
            assert!((1..=4).contains(&s.objects.len()), "image {i}: {} objects", s.objects.len());
            for (j, o) in s.objects.iter().enumerate() {
                let [x0, y0, x1, y1] = o.bbox;
                let (w, h) = (x1 - x0, y1 - y0);
                assert!(x1 <= 160 && y1 <= 160 && w > 0 && h > 0, "image {i}: box {:?}", o.bbox);
                // The box's longest side is the shape's size, up to rotation (factor sqrt 2) and
                // the triangle's height (factor 0.87).
                let side = w.max(h) as f32 / 160.0;
                assert!((0.15 * 0.85..=0.45 * 1.42 + 0.02).contains(&side), "image {i}: box {:?}", o.bbox);
                // Tight: the mask reaches every side of the box.
                let m = |x: u32, y: u32| o.mask[(y * w + x) as usize];
                assert!((0..w).any(|x| m(x, 0)) && (0..w).any(|x| m(x, h - 1)), "image {i}: rows of {:?}", o.bbox);
                assert!((0..h).any(|y| m(0, y)) && (0..h).any(|y| m(w - 1, y)), "image {i}: columns of {:?}", o.bbox);
                // Separate: boxes keep their gap.
                for p in &s.objects[..j] {
                    let [a0, b0, a1, b1] = p.bbox;
                    assert!(x1 + BOX_GAP <= a0 || a1 + BOX_GAP <= x0 || y1 + BOX_GAP <= b0 || b1 + BOX_GAP <= y0, "image {i}: overlap");
                }
                // Painted: shape pixels carry the colour (up to grain); the background around
                // and under the box stands apart from it.
                for y in y0.saturating_sub(1)..(y1 + 1).min(160) {
                    for x in x0.saturating_sub(1)..(x1 + 1).min(160) {
                        let d = l1(s.image.get_pixel(x, y).0, o.colour);
                        if o.contains(x, y) {
                            assert!(d <= GRAIN_L1, "image {i} object {j}: pixel ({x}, {y}) off by {d}");
                        } else {
                            assert!(d > 2 * GRAIN_L1, "image {i} object {j}: background ({x}, {y}) only {d} from the colour");
                        }
                    }
                }
                per_class[o.class_id] += 1;
                objects += 1;
            }
        }
        assert!(per_class.iter().all(|&n| n > objects / 8), "classes unbalanced: {per_class:?}");
        assert!(objects > 150 * 2, "only {objects} objects in 150 images");
    }

    #[test]
    fn label_files_agree_with_decoded_pixels() {
        let dir = temp_dir("pixels");
        let spec = small(7, SyntheticFormat::Png);
        let yaml = generate(&dir, &spec).unwrap();
        let cfg = DatasetConfig::load(&yaml).unwrap();
        for split in SyntheticSplit::ALL {
            let scanned = scan_split(&cfg, split.name()).unwrap();
            assert_eq!(scanned.images.len(), spec.count(split));
            for (i, item) in scanned.images.iter().enumerate() {
                let truth = render(&spec, split, i);
                let image = load_image(&item.image).unwrap();
                assert_eq!(image, truth.image, "{}: PNG must be lossless", item.image.display());
                let (w, h) = image.dimensions();
                assert_eq!(item.boxes.len(), truth.objects.len());
                for (b, o) in item.boxes.iter().zip(&truth.objects) {
                    assert_eq!(b.class_id, o.class_id);
                    let [cx, cy, bw, bh] = b.xywh;
                    let px = |v: f32, n: u32| (v * n as f32).round() as i64;
                    let (x0, y0, x1, y1) = (px(cx - bw / 2.0, w), px(cy - bh / 2.0, h), px(cx + bw / 2.0, w), px(cy + bh / 2.0, h));
                    // From the pixels alone: the object-coloured pixels in and around the label's
                    // box touch each of its sides and none lies outside it.
                    let shape = |x: i64, y: i64| {
                        (0..w as i64).contains(&x) && (0..h as i64).contains(&y) && l1(image.get_pixel(x as u32, y as u32).0, o.colour) <= GRAIN_L1
                    };
                    let at = item.image.display();
                    assert!((x0..x1).any(|x| shape(x, y0)) && (x0..x1).any(|x| shape(x, y1 - 1)), "{at}: top/bottom of {:?}", b.xywh);
                    assert!((y0..y1).any(|y| shape(x0, y)) && (y0..y1).any(|y| shape(x1 - 1, y)), "{at}: left/right of {:?}", b.xywh);
                    for x in x0 - 1..=x1 {
                        assert!(!shape(x, y0 - 1) && !shape(x, y1), "{at}: shape beyond the top/bottom of {:?}", b.xywh);
                    }
                    for y in y0 - 1..=y1 {
                        assert!(!shape(x0 - 1, y) && !shape(x1, y), "{at}: shape beyond the left/right of {:?}", b.xywh);
                    }
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jpegs_take_the_exact_decoder_and_stay_close_to_the_render() {
        let spec = small(3, SyntheticFormat::Jpeg { quality: 95 });
        for i in 0..8 {
            let truth = render(&spec, SyntheticSplit::Val, i);
            let bytes = encode(&truth.image, spec.format).unwrap();
            // Our own decoder (libjpeg-exact) reads the encoder's output, no fallback needed.
            let ours = crate::data::jpeg::decode(&bytes).expect("exact JPEG decoder");
            let decoded = RgbImage::from_raw(ours.width, ours.height, ours.rgb).unwrap();
            // Grain (up to ±10 a channel) is what JPEG loses most; shapes and backgrounds are smooth.
            let diff: Vec<u32> = decoded.as_raw().iter().zip(truth.image.as_raw()).map(|(a, b)| a.abs_diff(*b) as u32).collect();
            let mean = diff.iter().sum::<u32>() as f64 / diff.len() as f64;
            assert!(mean < 4.0, "image {i}: mean error {mean}");
            // Shape pixels keep their colour, up to grain and a little compression noise.
            for o in &truth.objects {
                let [x0, y0, x1, y1] = o.bbox;
                let (mut n, mut close) = (0, 0);
                for y in y0..y1 {
                    for x in x0..x1 {
                        if o.contains(x, y) {
                            n += 1;
                            close += (l1(decoded.get_pixel(x, y).0, o.colour) <= GRAIN_L1 + 15) as usize;
                        }
                    }
                }
                assert!(close * 100 >= n * 97, "image {i}: {close} of {n} shape pixels keep their colour");
            }
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_data() {
        let (a, b, c) = (temp_dir("seed-a"), temp_dir("seed-b"), temp_dir("seed-c"));
        let spec = small(11, SyntheticFormat::Jpeg { quality: 90 });
        generate(&a, &spec).unwrap();
        // One thread instead of the default pool: the files must not depend on scheduling.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| generate(&b, &spec)).unwrap();
        generate(&c, &SyntheticSpec { seed: 12, ..spec.clone() }).unwrap();
        let strip_path = |files: Vec<(PathBuf, Vec<u8>)>, dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            let abs = std::path::absolute(dir).unwrap().to_string_lossy().into_owned();
            files
                .into_iter()
                .map(|(p, bytes)| {
                    let bytes = if p == Path::new("data.yaml") { String::from_utf8(bytes).unwrap().replace(&abs, "ROOT").into_bytes() } else { bytes };
                    (p, bytes)
                })
                .collect()
        };
        let (fa, fb, fc) = (strip_path(files(&a), &a), strip_path(files(&b), &b), strip_path(files(&c), &c));
        assert_eq!(fa.len(), 2 * (24 + 12) + 2, "images, labels, data.yaml and the marker");
        assert!(fa == fb, "same spec, different files");
        let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&fa), names(&fc));
        let differing = fa.iter().zip(&fc).filter(|(x, y)| x.1 != y.1 && x.0.starts_with("labels")).count();
        assert!(differing >= 30, "another seed changed only {differing} of 36 label files");
        // Splits draw from separate streams.
        assert_ne!(render(&spec, SyntheticSplit::Train, 0).image, render(&spec, SyntheticSplit::Val, 0).image);
        for d in [a, b, c] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn dataset_loads_cleanly_with_the_right_counts() {
        let dir = temp_dir("load");
        let spec = SyntheticSpec { classes: 3, ..small(5, SyntheticFormat::Jpeg { quality: 95 }) };
        let yaml = generate(&dir, &spec).unwrap();
        assert_eq!(yaml, dir.join("data.yaml"));
        let cfg = DatasetConfig::load(&yaml).unwrap();
        assert_eq!(cfg.names, ["circle", "square", "triangle"]);
        assert_eq!(cfg.root, std::path::absolute(&dir).unwrap());
        for split in SyntheticSplit::ALL {
            let s = scan_split(&cfg, split.name()).unwrap();
            assert_eq!((s.images.len(), s.issues.len(), s.missing_labels, s.empty_labels, s.duplicates), (spec.count(split), 0, 0, 0, 0), "{}", split.name());
            assert!(s.images.iter().all(|im| im.shape == (128, 128) && im.boxes.iter().all(|b| b.class_id < 3)));
            let first = &s.images[0];
            assert_eq!(first.image.file_name().unwrap(), "00000.jpg");
            assert_eq!(first.boxes.len(), render(&spec, split, 0).objects.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_new_empty_or_synthetic_folders_are_written() {
        let dir = temp_dir("overwrite");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("precious.txt"), "keep").unwrap();
        let e = generate(&dir, &small(0, SyntheticFormat::Png)).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()) && e.contains("not empty"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a refused folder is left untouched");

        let file = dir.join("precious.txt");
        let e = generate(&file, &small(0, SyntheticFormat::Png)).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");

        // A previous synthetic dataset is replaced, leftovers of its bigger splits included.
        let ours = dir.join("shapes");
        generate(&ours, &small(0, SyntheticFormat::Png)).unwrap();
        std::fs::write(ours.join("notes.md"), "mine").unwrap();
        let spec = SyntheticSpec { train: 3, val: 2, ..small(1, SyntheticFormat::Jpeg { quality: 90 }) };
        generate(&ours, &spec).unwrap();
        let count = |sub: &str| std::fs::read_dir(ours.join(sub)).unwrap().count();
        assert_eq!((count("images/train"), count("labels/train"), count("images/val"), count("labels/val")), (3, 3, 2, 2));
        assert_eq!(std::fs::read_to_string(ours.join("notes.md")).unwrap(), "mine");
        let yaml = std::fs::read_to_string(ours.join("data.yaml")).unwrap();
        assert!(yaml.contains("train=3 val=2") && yaml.contains("seed=1"), "{yaml}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let base = SyntheticSpec::default();
        let cases = [
            (SyntheticSpec { val: 0, ..base.clone() }, "at least 1"),
            (SyntheticSpec { imgsz: 16, ..base.clone() }, "imgsz=16"),
            (SyntheticSpec { classes: 5, ..base.clone() }, "classes=5"),
            (SyntheticSpec { min_objects: 3, max_objects: 2, ..base.clone() }, "objects per image 3-2"),
            (SyntheticSpec { max_size: 0.9, ..base.clone() }, "0.7"),
            (SyntheticSpec { min_size: f32::NAN, ..base.clone() }, "size"),
            (SyntheticSpec { imgsz: 32, min_size: 0.1, ..base.clone() }, "pixels"),
            (SyntheticSpec { max_rotation: -1.0, ..base.clone() }, "max_rotation"),
            (SyntheticSpec { format: SyntheticFormat::Jpeg { quality: 0 }, ..base.clone() }, "quality 0"),
        ];
        for (spec, what) in cases {
            let e = spec.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{spec}: {e}");
        }
        base.validate().unwrap();
        assert_eq!(file_stem(7, 10), "00007");
        assert_eq!(file_stem(7, 1_000_001), "0000007");
    }
}
