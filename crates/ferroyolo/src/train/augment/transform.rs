//! The per-sample transforms of the reference's training pipeline (`v8_transforms`): mosaic,
//! random perspective with its box filter, flips, and the final normalised boxes.
//!
//! Boxes travel as `xyxy` pixel corners of the image they currently belong to, in `f32` as the
//! reference keeps them. Random draws come from the caller's `uniform(a, b)` in the reference's
//! order, so one seeded stream per sample fixes everything about it (and a test can script the
//! draws to replay a reference run).

use anyhow::Result;
use image::{Rgb, RgbImage};

use super::warp::{self, Mat3};
use crate::data::dataset::LabelBox;
use crate::data::letterbox::resize_bilinear;

/// Grey level of the padding around and between images (the reference's 114).
pub const PAD_VALUE: u8 = 114;

/// One labelled object in pixel coordinates of the image it belongs to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelBox {
    pub class_id: usize,
    /// Corners `x1, y1, x2, y2` in pixels.
    pub xyxy: [f32; 4],
}

impl PixelBox {
    pub fn width(&self) -> f32 {
        self.xyxy[2] - self.xyxy[0]
    }

    pub fn height(&self) -> f32 {
        self.xyxy[3] - self.xyxy[1]
    }
}

/// An image and its objects as they move through the pipeline.
#[derive(Clone, Debug)]
pub struct Sample {
    pub img: RgbImage,
    pub boxes: Vec<PixelBox>,
}

/// The geometric settings of [`random_perspective`] (the reference's hyperparameter names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerspectiveConfig {
    /// Rotation range, ± degrees.
    pub degrees: f32,
    /// Translation range, ± fraction of the output size around its centre.
    pub translate: f32,
    /// Scale range: the image is scaled by U(1 - scale, 1 + scale).
    pub scale: f32,
    /// Shear range, ± degrees on each axis.
    pub shear: f32,
    /// Perspective range, ± on each axis of the projective row.
    pub perspective: f32,
}

/// Resizes a decoded image as the reference's `load_image` does for training: the long side
/// becomes `imgsz` (up or down), the other side `ceil(side * ratio)` capped at `imgsz`, with
/// OpenCV's bilinear resize; an image whose long side is already `imgsz` is kept as is.
pub fn resize_long_side(img: RgbImage, imgsz: usize) -> RgbImage {
    let (w0, h0) = (img.width() as f64, img.height() as f64);
    let r = imgsz as f64 / w0.max(h0);
    if r == 1.0 {
        return img;
    }
    let w = ((w0 * r).ceil() as usize).min(imgsz).max(1);
    let h = ((h0 * r).ceil() as usize).min(imgsz).max(1);
    resize_bilinear(&img, w as u32, h as u32)
}

/// Normalised `cx, cy, w, h` labels to pixel corners of a `w` x `h` image.
pub fn to_pixel_boxes(labels: &[LabelBox], w: u32, h: u32) -> Vec<PixelBox> {
    let (w, h) = (w as f32, h as f32);
    labels
        .iter()
        .map(|l| {
            let [cx, cy, bw, bh] = l.xywh;
            let xyxy = [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h];
            PixelBox { class_id: l.class_id, xyxy }
        })
        .collect()
}

/// Pixel corners to normalised `cx, cy, w, h` of a `w` x `h` image (the reference's `Format`).
pub fn to_normalized_xywh(b: &PixelBox, w: u32, h: u32) -> [f32; 4] {
    let [x1, y1, x2, y2] = b.xyxy;
    let (w, h) = (w as f32, h as f32);
    [(x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h]
}

/// The mosaic centre `(xc, yc)` on the `2 imgsz` canvas: each coordinate U(imgsz/2, 3 imgsz/2),
/// truncated to an integer (`y` is drawn first, as in the reference).
pub fn mosaic_centre(imgsz: usize, uniform: &mut impl FnMut(f64, f64) -> f64) -> (i64, i64) {
    let s = imgsz as i64;
    // The reference's border is -(imgsz // 2) with Python's floor division: ceil(imgsz / 2).
    let lo = (s + 1) / 2;
    let hi = 2 * s - lo;
    let yc = uniform(lo as f64, hi as f64) as i64;
    let xc = uniform(lo as f64, hi as f64) as i64;
    (xc, yc)
}

/// The reference's 2x2 mosaic: a `2 imgsz` square canvas of grey 114 with the four images
/// placed around the centre `(xc, yc)` (top-left, top-right, bottom-left, bottom-right, in that
/// order), each cut where it leaves the canvas. Boxes move with their image, are clipped to the
/// canvas, and those left with no area are dropped.
pub fn mosaic4(imgsz: usize, centre: (i64, i64), tiles: [(&RgbImage, &[LabelBox]); 4]) -> Sample {
    let s2 = 2 * imgsz as i64;
    let (xc, yc) = centre;
    let mut canvas = RgbImage::from_pixel(s2 as u32, s2 as u32, Rgb([PAD_VALUE; 3]));
    let mut boxes = Vec::new();
    for (i, (img, labels)) in tiles.into_iter().enumerate() {
        let (w, h) = (img.width() as i64, img.height() as i64);
        // Placement on the canvas (a) and the part of the image that lands there (b).
        let (x1a, y1a, x2a, y2a, x1b, y1b) = match i {
            0 => {
                let (x1a, y1a) = ((xc - w).max(0), (yc - h).max(0));
                (x1a, y1a, xc, yc, w - (xc - x1a), h - (yc - y1a))
            }
            1 => {
                let (y1a, x2a) = ((yc - h).max(0), (xc + w).min(s2));
                (xc, y1a, x2a, yc, 0, h - (yc - y1a))
            }
            2 => {
                let (x1a, y2a) = ((xc - w).max(0), (yc + h).min(s2));
                (x1a, yc, xc, y2a, w - (xc - x1a), 0)
            }
            _ => (xc, yc, (xc + w).min(s2), (yc + h).min(s2), 0, 0),
        };
        copy_region(img, (x1b, y1b), &mut canvas, (x1a, y1a), (x2a - x1a, y2a - y1a));
        let (padw, padh) = ((x1a - x1b) as f32, (y1a - y1b) as f32);
        boxes.extend(to_pixel_boxes(labels, w as u32, h as u32).into_iter().map(|mut b| {
            b.xyxy[0] += padw;
            b.xyxy[1] += padh;
            b.xyxy[2] += padw;
            b.xyxy[3] += padh;
            b
        }));
    }
    clip_boxes(&mut boxes, s2 as f32, s2 as f32);
    boxes.retain(|b| b.width() * b.height() > 0.0);
    Sample { img: canvas, boxes }
}

/// Copies a `size` (w, h) block from `src` at `from` to `dst` at `to`; empty sizes copy nothing.
fn copy_region(src: &RgbImage, from: (i64, i64), dst: &mut RgbImage, to: (i64, i64), size: (i64, i64)) {
    let (w, h) = size;
    if w <= 0 || h <= 0 {
        return;
    }
    let (ss, ds) = (src.width() as usize * 3, dst.width() as usize * 3);
    let (sraw, draw): (&[u8], &mut [u8]) = (src.as_raw(), &mut **dst);
    let n = w as usize * 3;
    for r in 0..h as usize {
        let so = (from.1 as usize + r) * ss + from.0 as usize * 3;
        let d = (to.1 as usize + r) * ds + to.0 as usize * 3;
        draw[d..d + n].copy_from_slice(&sraw[so..so + n]);
    }
}

/// Clips box corners to `[0, w] x [0, h]`.
pub fn clip_boxes(boxes: &mut [PixelBox], w: f32, h: f32) {
    for b in boxes {
        b.xyxy[0] = b.xyxy[0].clamp(0.0, w);
        b.xyxy[2] = b.xyxy[2].clamp(0.0, w);
        b.xyxy[1] = b.xyxy[1].clamp(0.0, h);
        b.xyxy[3] = b.xyxy[3].clamp(0.0, h);
    }
}

/// A setting as the reference reads it: the decimal the `f32` was written from, in `f64` (so
/// `0.1f32` becomes `0.1`, not `0.10000000149`).
pub fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// 3x3 matrix product in `f32`, each entry summed left to right without fusing.
fn matmul_f32(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j]))
}

/// The reference's random transform for an `in_w` x `in_h` image warped to `out_w` x `out_h`:
/// centre the image on the origin, then perspective, rotation and scale, shear, and a translation
/// to U(0.5 ± translate) of the output size (`M = T S R P C`). Returns `M` and the drawn scale.
/// `uniform(a, b)` supplies the draws, in the reference's order.
///
/// Like the reference, the five matrices hold `f32` and are multiplied in `f32` (the rotation is
/// computed in `f64` first, as `cv2.getRotationMatrix2D` does): a matrix composed in `f64`
/// instead moves rotated pixels enough to change a few percent of them by a level or more.
pub fn random_matrix(
    cfg: &PerspectiveConfig,
    uniform: &mut impl FnMut(f64, f64) -> f64,
    in_size: (u32, u32),
    out_size: (u32, u32),
) -> (Mat3, f64) {
    const I: [[f32; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let mut c = I;
    c[0][2] = -(in_size.0 as f32) / 2.0;
    c[1][2] = -(in_size.1 as f32) / 2.0;

    let p_range = decimal(cfg.perspective);
    let mut p = I;
    p[2][0] = uniform(-p_range, p_range) as f32;
    p[2][1] = uniform(-p_range, p_range) as f32;

    let degrees = decimal(cfg.degrees);
    let angle = uniform(-degrees, degrees);
    let scale = uniform(1.0 - decimal(cfg.scale), 1.0 + decimal(cfg.scale));
    // cv2.getRotationMatrix2D about the origin: a positive angle turns counter-clockwise on
    // screen (y pointing down).
    let (sin, cos) = angle.to_radians().sin_cos();
    let (a, b) = ((scale * cos) as f32, (scale * sin) as f32);
    let r = [[a, b, 0.0], [-b, a, 0.0], [0.0, 0.0, 1.0]];

    let shear = decimal(cfg.shear);
    let mut sh = I;
    sh[0][1] = (uniform(-shear, shear) * std::f64::consts::PI / 180.0).tan() as f32;
    sh[1][0] = (uniform(-shear, shear) * std::f64::consts::PI / 180.0).tan() as f32;

    let t_range = decimal(cfg.translate);
    let mut t = I;
    t[0][2] = (uniform(0.5 - t_range, 0.5 + t_range) * out_size.0 as f64) as f32;
    t[1][2] = (uniform(0.5 - t_range, 0.5 + t_range) * out_size.1 as f64) as f32;

    // Python's `@` groups from the left: ((((T S) R) P) C).
    let m = matmul_f32(&matmul_f32(&matmul_f32(&matmul_f32(&t, &sh), &r), &p), &c);
    (m.map(|row| row.map(|v| v as f64)), scale)
}

/// The reference's filter of transformed boxes (`box_candidates`): keep a box when it is more
/// than 2 pixels wide and high, keeps more than 10 % of its area (`before` is the original box
/// already multiplied by the transform's scale), and its aspect ratio stays under 100.
pub fn box_candidate(before: &[f32; 4], after: &[f32; 4]) -> bool {
    const EPS: f32 = 1e-16;
    let (w1, h1) = (before[2] - before[0], before[3] - before[1]);
    let (w2, h2) = (after[2] - after[0], after[3] - after[1]);
    let ar = (w2 / (h2 + EPS)).max(h2 / (w2 + EPS));
    w2 > 2.0 && h2 > 2.0 && w2 * h2 / (w1 * h1 + EPS) > 0.1 && ar < 100.0
}

/// Maps boxes through `m` (bounding box of the four transformed corners), clips them to the
/// output and applies [`box_candidate`].
pub fn transform_boxes(boxes: &[PixelBox], m: &Mat3, scale: f64, perspective: bool, out_size: (u32, u32)) -> Vec<PixelBox> {
    let scale = scale as f32;
    boxes
        .iter()
        .filter_map(|b| {
            let [x1, y1, x2, y2] = b.xyxy;
            let corners = [(x1, y1), (x2, y2), (x1, y2), (x2, y1)];
            let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
            for (x, y) in corners {
                let (tx, ty) = warp::apply(m, x as f64, y as f64, perspective);
                let (tx, ty) = (tx as f32, ty as f32);
                lo = [lo[0].min(tx), lo[1].min(ty)];
                hi = [hi[0].max(tx), hi[1].max(ty)];
            }
            let mut nb = PixelBox { class_id: b.class_id, xyxy: [lo[0], lo[1], hi[0], hi[1]] };
            clip_boxes(std::slice::from_mut(&mut nb), out_size.0 as f32, out_size.1 as f32);
            let before = b.xyxy.map(|v| v * scale);
            box_candidate(&before, &nb.xyxy).then_some(nb)
        })
        .collect()
}

/// The reference's `RandomPerspective`: a random transform of `img` warped onto an `out_size`
/// canvas (border 114), its boxes transformed, clipped and filtered.
pub fn random_perspective(
    img: &RgbImage,
    boxes: &[PixelBox],
    cfg: &PerspectiveConfig,
    uniform: &mut impl FnMut(f64, f64) -> f64,
    out_size: (u32, u32),
) -> Sample {
    let (m, scale) = random_matrix(cfg, uniform, img.dimensions(), out_size);
    let perspective = cfg.perspective != 0.0;
    let img = warp::warp(img, &m, out_size.0, out_size.1, PAD_VALUE, perspective);
    let boxes = transform_boxes(boxes, &m, scale, perspective, out_size);
    Sample { img, boxes }
}

/// Mirrors the sample left to right.
pub fn flip_lr(sample: &mut Sample) {
    image::imageops::flip_horizontal_in_place(&mut sample.img);
    let w = sample.img.width() as f32;
    for b in &mut sample.boxes {
        let [x1, _, x2, _] = b.xyxy;
        b.xyxy[0] = w - x2;
        b.xyxy[2] = w - x1;
    }
}

/// Mirrors the sample top to bottom.
pub fn flip_ud(sample: &mut Sample) {
    image::imageops::flip_vertical_in_place(&mut sample.img);
    let h = sample.img.height() as f32;
    for b in &mut sample.boxes {
        let [_, y1, _, y2] = b.xyxy;
        b.xyxy[1] = h - y2;
        b.xyxy[3] = h - y1;
    }
}

/// Decodes an image file and resizes it for training ([`resize_long_side`]).
pub fn load_resized(path: &std::path::Path, imgsz: usize) -> Result<RgbImage> {
    let img = crate::data::image_io::load_image(path)?;
    Ok(resize_long_side(img, imgsz))
}
