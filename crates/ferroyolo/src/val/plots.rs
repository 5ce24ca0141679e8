//! Validation plots as PNG / JPEG files: precision-recall and metric-confidence curves, the
//! confusion matrix (counts and column-normalised), and mosaics of validation images with their
//! labels or predictions.
//!
//! Drawn directly on an [`RgbImage`] with anti-aliased lines and the public-domain `font8x8`
//! glyphs (already used for annotated images), so no plotting or font crate and no system font
//! is needed. The layout follows the reference's matplotlib figures: same file names, titles,
//! axes, legends and colours.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

use super::metrics::smooth;
use super::Metrics;
use crate::data::letterbox::resize_bilinear;
use crate::output::annotate::{draw_detections, BoxLabel};
use crate::predict::postprocess::Detection;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([128, 128, 128]);
const BLUE: Rgb<u8> = Rgb([0, 0, 255]);
/// Matplotlib's default colour cycle ("tab10"), which the reference's per-class curves use.
pub(crate) const TAB10: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
/// The "Blues" colour map (ColorBrewer's nine steps), white to dark blue.
const BLUES: [[u8; 3]; 9] = [
    [247, 251, 255],
    [222, 235, 247],
    [198, 219, 239],
    [158, 202, 225],
    [107, 174, 214],
    [66, 146, 198],
    [33, 113, 181],
    [8, 81, 156],
    [8, 48, 107],
];
/// Predictions below this confidence are left out of the mosaics (the reference's choice).
const MOSAIC_CONF: f32 = 0.25;
/// Most images in one mosaic, and its largest side.
const MOSAIC_MAX_IMAGES: usize = 16;
const MOSAIC_MAX_SIZE: u32 = 1920;

/// A raster canvas with the few primitives the plots need.
pub(crate) struct Canvas {
    pub(crate) img: RgbImage,
}

impl Canvas {
    pub(crate) fn new(w: u32, h: u32) -> Self {
        Self { img: RgbImage::from_pixel(w, h, WHITE) }
    }

    /// Mixes `color` into pixel (x, y) with weight `a` (0..1), ignoring pixels off the canvas.
    pub(crate) fn blend(&mut self, x: i64, y: i64, color: Rgb<u8>, a: f64) {
        if x < 0 || y < 0 || x >= self.img.width() as i64 || y >= self.img.height() as i64 || a <= 0.0 {
            return;
        }
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        let a = a.min(1.0);
        for c in 0..3 {
            p.0[c] = (p.0[c] as f64 * (1.0 - a) + color.0[c] as f64 * a).round() as u8;
        }
    }

    pub(crate) fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
        for y in y0.max(0)..y1.min(self.img.height() as i64) {
            for x in x0.max(0)..x1.min(self.img.width() as i64) {
                self.img.put_pixel(x as u32, y as u32, color);
            }
        }
    }

    /// A straight segment `width` pixels wide with round ends, anti-aliased by pixel coverage.
    pub(crate) fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: f64, color: Rgb<u8>) {
        if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
            return;
        }
        let r = width / 2.0;
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let xa = (x0.min(x1) - r - 1.0).floor() as i64;
        let xb = (x0.max(x1) + r + 1.0).ceil() as i64;
        let ya = (y0.min(y1) - r - 1.0).floor() as i64;
        let yb = (y0.max(y1) + r + 1.0).ceil() as i64;
        for y in ya.max(0)..=yb.min(self.img.height() as i64 - 1) {
            for x in xa.max(0)..=xb.min(self.img.width() as i64 - 1) {
                // Distance from the pixel centre to the segment.
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 > 0.0 { (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (cx, cy) = (x0 + t * dx, y0 + t * dy);
                let d = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
                let cover = (r + 0.5 - d).clamp(0.0, 1.0);
                if cover > 0.0 {
                    // Overlapping segments of one polyline must not darken joints: keep the
                    // stronger coverage by blending only towards the colour.
                    self.blend(x, y, color, cover);
                }
            }
        }
    }

    pub(crate) fn polyline(&mut self, pts: &[(f64, f64)], width: f64, color: Rgb<u8>) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], width, color);
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale` pixels wide.
    pub(crate) fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, color: Rgb<u8>) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = glyph(ch);
            let gx = x + i as i64 * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (gx + col * scale, y + row as i64 * scale);
                        self.fill_rect(px, py, px + scale, py + scale, color);
                    }
                }
            }
        }
    }

    /// Text turned 90° anticlockwise (reading upwards), its bounding box's top-left at (x, y).
    pub(crate) fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, color: Rgb<u8>) {
        let len = s.chars().count() as i64;
        for (i, ch) in s.chars().enumerate() {
            let glyph = glyph(ch);
            // Character i sits i glyphs up from the bottom of the box.
            let base_y = y + (len - i as i64) * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8i64 {
                    if bits >> col & 1 == 1 {
                        let px = x + row as i64 * scale;
                        let py = base_y - (col + 1) * scale;
                        self.fill_rect(px, py, px + scale, py + scale, color);
                    }
                }
            }
        }
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        self.img.save(path).with_context(|| format!("saving {}", path.display()))
    }
}

fn glyph(ch: char) -> [u8; 8] {
    let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
    font8x8::legacy::BASIC_LEGACY[code]
}

pub(crate) fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 8 * scale
}

/// A colour of the "Blues" map for `t` in 0..1.
fn blues(t: f64) -> Rgb<u8> {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (BLUES.len() - 1) as f64;
    let i = (pos.floor() as usize).min(BLUES.len() - 2);
    let f = pos - i as f64;
    let mix = |a: u8, b: u8| (a as f64 * (1.0 - f) + b as f64 * f).round() as u8;
    Rgb([mix(BLUES[i][0], BLUES[i + 1][0]), mix(BLUES[i][1], BLUES[i + 1][1]), mix(BLUES[i][2], BLUES[i + 1][2])])
}

/// One curve of a line plot.
struct Series<'a> {
    y: &'a [f64],
    color: Rgb<u8>,
    width: f64,
    /// Legend text; `None` keeps it out of the legend.
    label: Option<String>,
}

/// A unit-square line plot (x and y in 0..1) with title, axis labels, ticks and a legend at the
/// right, as the reference's 9x6-inch figures.
fn line_plot(path: &Path, title: &str, xlabel: &str, ylabel: &str, x: &[f64], series: &[Series]) -> Result<()> {
    let (left, top, side) = (110i64, 70i64, 740i64);
    // The legend sits right of the axes; the figure widens to hold long class names.
    let entries: Vec<&Series> = series.iter().filter(|s| s.label.is_some()).collect();
    let text_w = entries.iter().map(|s| text_width(s.label.as_deref().unwrap_or(""), 2)).max().unwrap_or(0);
    let (lx, ly, row) = (left + side + 30, top, 30i64);
    let (bw, bh) = (text_w + 90, entries.len() as i64 * row + 16);
    let (w, h) = ((lx + bw + 20).max(1350) as u32, 900u32);
    let mut c = Canvas::new(w, h);
    let to_px = |xv: f64, yv: f64| (left as f64 + xv * side as f64, top as f64 + (1.0 - yv) * side as f64);
    // Light grid at the ticks, then the curves, then the frame on top.
    for k in 0..=5 {
        let v = k as f64 / 5.0;
        let (gx, _) = to_px(v, 0.0);
        let (_, gy) = to_px(0.0, v);
        c.line((gx, top as f64), (gx, (top + side) as f64), 1.0, Rgb([235, 235, 235]));
        c.line((left as f64, gy), ((left + side) as f64, gy), 1.0, Rgb([235, 235, 235]));
    }
    for s in series {
        let pts: Vec<(f64, f64)> = x.iter().zip(s.y).map(|(&a, &b)| to_px(a, b.clamp(-0.01, 1.01))).collect();
        c.polyline(&pts, s.width, s.color);
    }
    // Clear what spilled outside the axes, then draw the frame.
    c.fill_rect(0, 0, w as i64, top, WHITE);
    c.fill_rect(0, top + side + 1, w as i64, h as i64, WHITE);
    c.fill_rect(0, 0, left, h as i64, WHITE);
    c.fill_rect(left + side + 1, 0, w as i64, h as i64, WHITE);
    c.fill_rect(left - 1, top - 1, left + side + 1, top + 1, BLACK);
    c.fill_rect(left - 1, top + side - 1, left + side + 1, top + side + 1, BLACK);
    c.fill_rect(left - 1, top - 1, left + 1, top + side + 1, BLACK);
    c.fill_rect(left + side - 1, top - 1, left + side + 1, top + side + 1, BLACK);
    for k in 0..=5 {
        let v = k as f64 / 5.0;
        let label = format!("{v:.1}");
        let (tx, _) = to_px(v, 0.0);
        let (_, ty) = to_px(0.0, v);
        c.fill_rect(tx as i64 - 1, top + side, tx as i64 + 1, top + side + 8, BLACK);
        c.text(tx as i64 - text_width(&label, 2) / 2, top + side + 14, &label, 2, BLACK);
        c.fill_rect(left - 8, ty as i64 - 1, left, ty as i64 + 1, BLACK);
        c.text(left - 14 - text_width(&label, 2), ty as i64 - 8, &label, 2, BLACK);
    }
    c.text(left + side / 2 - text_width(title, 3) / 2, 24, title, 3, BLACK);
    c.text(left + side / 2 - text_width(xlabel, 2) / 2, top + side + 48, xlabel, 2, BLACK);
    c.text_up(24, top + side / 2 - text_width(ylabel, 2) / 2, ylabel, 2, BLACK);

    if !entries.is_empty() {
        c.fill_rect(lx, ly, lx + bw, ly + bh, Rgb([200, 200, 200]));
        c.fill_rect(lx + 1, ly + 1, lx + bw - 1, ly + bh - 1, WHITE);
        for (k, s) in entries.iter().enumerate() {
            let y = ly + 8 + k as i64 * row + row / 2;
            c.line(((lx + 12) as f64, y as f64), ((lx + 62) as f64, y as f64), s.width.min(5.0), s.color);
            c.text(lx + 76, y - 8, s.label.as_deref().unwrap_or(""), 2, BLACK);
        }
    }
    c.save(path)
}

/// The curves of one metric for every class with ground truth, plus the class mean in blue.
fn curve_series<'a>(curves: &'a [Vec<f64>], names: &[String], show_classes: bool) -> Vec<Series<'a>> {
    curves
        .iter()
        .enumerate()
        .map(|(i, y)| Series {
            y,
            color: if show_classes { Rgb(TAB10[i % TAB10.len()]) } else { GREY },
            width: if show_classes { 2.0 } else { 1.0 },
            label: show_classes.then(|| names[i].clone()),
        })
        .collect()
}

/// Class-mean of curves at each grid point.
fn mean_curve(curves: &[Vec<f64>], len: usize) -> Vec<f64> {
    let mut m = vec![0.0; len];
    for c in curves {
        for (a, b) in m.iter_mut().zip(c) {
            *a += b;
        }
    }
    let n = curves.len().max(1) as f64;
    m.iter_mut().for_each(|v| *v /= n);
    m
}

/// Writes the curve plots and confusion matrices of a finished run into `dir`, with the
/// reference's file names.
pub fn save_metric_plots(dir: &Path, m: &Metrics) -> Result<()> {
    let ap = &m.curves;
    let names: Vec<String> = ap.classes.iter().map(|&c| m.names.get(c).cloned().unwrap_or_else(|| c.to_string())).collect();
    let show = !names.is_empty() && names.len() < 21;
    if !ap.classes.is_empty() {
        let n = ap.px.len();
        // Precision-recall, with each class's AP50 in its legend entry.
        let mut pr = curve_series(&ap.prec_values, &names, show);
        for (s, a) in pr.iter_mut().zip(&ap.ap) {
            if let Some(l) = &mut s.label {
                *l = format!("{l} {:.3}", a[0]);
            }
        }
        let pr_mean = mean_curve(&ap.prec_values, n);
        pr.push(Series { y: &pr_mean, color: BLUE, width: 5.0, label: Some(format!("all classes {:.3} mAP@0.5", m.map50)) });
        line_plot(&dir.join("BoxPR_curve.png"), "Precision-Recall Curve", "Recall", "Precision", &ap.px, &pr)?;

        for (file, ylabel, curves) in [
            ("BoxF1_curve.png", "F1", &ap.f1_curve),
            ("BoxP_curve.png", "Precision", &ap.p_curve),
            ("BoxR_curve.png", "Recall", &ap.r_curve),
        ] {
            let mean = smooth(&mean_curve(curves, n), 0.1);
            let best = mean.iter().enumerate().fold(0, |b, (i, &v)| if v > mean[b] { i } else { b });
            let mut s = curve_series(curves, &names, show);
            s.push(Series { y: &mean, color: BLUE, width: 5.0, label: Some(format!("all classes {:.2} at {:.3}", mean[best], ap.px[best])) });
            line_plot(&dir.join(file), &format!("{ylabel}-Confidence Curve"), "Confidence", ylabel, &ap.px, &s)?;
        }
    }
    for normalize in [true, false] {
        confusion_plot(dir, m, normalize)?;
    }
    Ok(())
}

/// The confusion matrix as a heat map (rows predicted, columns true), cells under 0.005 blank,
/// values written in the cells when there are fewer than 30 rows, with a colour bar.
fn confusion_plot(dir: &Path, m: &Metrics, normalize: bool) -> Result<()> {
    let nc = m.confusion.nc;
    let full = if normalize { m.confusion.normalized() } else { m.confusion.matrix.clone() };
    let mut labels: Vec<String> = m.names.clone();
    labels.truncate(nc);
    while labels.len() < nc {
        labels.push(labels.len().to_string());
    }
    // Large class counts: every k-th class (and background), as the reference.
    let keep: Vec<usize> = if nc >= 100 {
        let k = (nc / 60).max(2);
        (0..nc).step_by(k).chain(std::iter::once(nc)).collect()
    } else {
        (0..=nc).collect()
    };
    labels.push("background".into());
    let labels: Vec<&str> = keep.iter().map(|&i| labels[i].as_str()).collect();
    let n = keep.len();
    let cell_val = |i: usize, j: usize| {
        let v = full[keep[i]][keep[j]];
        if v < 0.005 {
            f64::NAN
        } else {
            v
        }
    };
    let vmax = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| cell_val(i, j)).filter(|v| !v.is_nan()).fold(0.0, f64::max);
    let vmax = if vmax > 0.0 { vmax } else { 1.0 };

    let cell = (960 / n as i64).clamp(10, 60);
    let with_ticks = n < 99;
    let label_w = if with_ticks { labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(0) } else { 0 };
    let (left, top) = (60 + label_w + 12, 80i64);
    let side = cell * n as i64;
    let bar_x = left + side + 50;
    let (w, h) = (bar_x + 140, top + side + label_w + 80);
    let mut c = Canvas::new(w as u32, h as u32);
    for i in 0..n {
        for j in 0..n {
            let v = cell_val(i, j);
            if !v.is_nan() {
                let (x0, y0) = (left + j as i64 * cell, top + i as i64 * cell);
                c.fill_rect(x0, y0, x0 + cell, y0 + cell, blues(v / vmax));
            }
        }
    }
    if n < 30 {
        let threshold = 0.45 * if normalize { 1.0 } else { vmax };
        for i in 0..n {
            for j in 0..n {
                let v = cell_val(i, j);
                if v.is_nan() {
                    continue;
                }
                let t = if normalize { format!("{v:.2}") } else { format!("{}", v as i64) };
                let scale = if cell >= 2 * text_width(&t, 1) + 8 { 2 } else { 1 };
                let color = if v > threshold { WHITE } else { BLACK };
                let (cx, cy) = (left + j as i64 * cell + cell / 2, top + i as i64 * cell + cell / 2);
                c.text(cx - text_width(&t, scale) / 2, cy - 4 * scale, &t, scale, color);
            }
        }
    }
    if with_ticks {
        for (k, l) in labels.iter().enumerate() {
            let mid = k as i64 * cell + cell / 2;
            c.text(left - 8 - text_width(l, 1), top + mid - 4, l, 1, BLACK);
            c.text_up(left + mid - 4, top + side + 8, l, 1, BLACK);
        }
    }
    let title = if normalize { "Confusion Matrix Normalized" } else { "Confusion Matrix" };
    c.text(left + side / 2 - text_width(title, 2) / 2, 30, title, 2, BLACK);
    c.text(left + side / 2 - text_width("True", 2) / 2, top + side + label_w + 30, "True", 2, BLACK);
    c.text_up(16, top + side / 2 - text_width("Predicted", 2) / 2, "Predicted", 2, BLACK);
    // Colour bar with five ticks.
    for y in 0..side {
        let t = 1.0 - y as f64 / (side - 1).max(1) as f64;
        c.fill_rect(bar_x, top + y, bar_x + 30, top + y + 1, blues(t));
    }
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        let y = top + side - 1 - ((side - 1) as f64 * k as f64 / 4.0) as i64;
        let label = if normalize || vmax < 10.0 { format!("{v:.2}") } else { format!("{}", v.round() as i64) };
        c.fill_rect(bar_x + 30, y, bar_x + 38, y + 2, BLACK);
        c.text(bar_x + 44, y - 8, &label, 2, BLACK);
    }
    let file = if normalize { "confusion_matrix_normalized.png" } else { "confusion_matrix.png" };
    c.save(&dir.join(file))
}

/// A box to draw on a mosaic tile, in the tile image's pixels.
#[derive(Clone, Debug)]
pub struct PlotBox {
    pub xyxy: [f32; 4],
    pub class_id: usize,
    /// `None` for ground truth.
    pub conf: Option<f32>,
}

/// Ground truth of each image as plot boxes.
pub fn labels_as_boxes(gts: &[&[([f32; 4], usize)]]) -> Vec<Vec<PlotBox>> {
    gts.iter().map(|g| g.iter().map(|&(xyxy, class_id)| PlotBox { xyxy, class_id, conf: None }).collect()).collect()
}

/// Predictions of each image above the mosaic threshold as plot boxes.
pub fn detections_as_boxes(dets: &[Vec<Detection>]) -> Vec<Vec<PlotBox>> {
    dets.iter()
        .map(|d| {
            d.iter()
                .filter(|d| d.confidence > MOSAIC_CONF)
                .map(|d| PlotBox { xyxy: d.xyxy, class_id: d.class_id, conf: Some(d.confidence) })
                .collect()
        })
        .collect()
}

/// Draws up to 16 letterboxed images of a batch in a square grid (largest side at most 1920
/// pixels), each with its boxes and file name, and saves it.
pub fn save_batch_mosaic(path: &Path, images: &[(&RgbImage, &Path)], boxes: &[Vec<PlotBox>], names: &[String]) -> Result<()> {
    let count = images.len().min(MOSAIC_MAX_IMAGES);
    if count == 0 {
        return Ok(());
    }
    let grid = (count as f64).sqrt().ceil() as u32;
    let (tw, th) = images[..count].iter().fold((1, 1), |(w, h), (im, _)| (w.max(im.width()), h.max(im.height())));
    let scale = (MOSAIC_MAX_SIZE as f64 / grid as f64 / tw.max(th) as f64).min(1.0);
    let (cw, ch) = (((tw as f64 * scale).ceil() as u32).max(1), ((th as f64 * scale).ceil() as u32).max(1));
    let mut mosaic = RgbImage::from_pixel(grid * cw, grid * ch, WHITE);
    for (k, ((im, file), bx)) in images.iter().zip(boxes).take(count).enumerate() {
        let (gx, gy) = (k as u32 % grid * cw, k as u32 / grid * ch);
        let (iw, ih) = (((im.width() as f64 * scale).round() as u32).max(1), ((im.height() as f64 * scale).round() as u32).max(1));
        let mut tile = if scale < 1.0 { resize_bilinear(im, iw, ih) } else { (*im).clone() };
        let texts: Vec<String> = bx
            .iter()
            .map(|b| {
                let name = names.get(b.class_id).cloned().unwrap_or_else(|| b.class_id.to_string());
                match b.conf {
                    Some(c) => format!("{name} {c:.1}"),
                    None => name,
                }
            })
            .collect();
        let s = scale as f32;
        let labels: Vec<BoxLabel> = bx
            .iter()
            .zip(&texts)
            .map(|(b, t)| BoxLabel { xyxy: [b.xyxy[0] * s, b.xyxy[1] * s, b.xyxy[2] * s, b.xyxy[3] * s], class_id: b.class_id, label: t })
            .collect();
        draw_detections(&mut tile, &labels);
        let mut c = Canvas { img: tile };
        let name: String = file.file_name().map(|n| n.to_string_lossy().chars().take(40).collect()).unwrap_or_default();
        c.fill_rect(0, 0, text_width(&name, 2) + 8, 22, WHITE);
        c.text(4, 3, &name, 2, BLACK);
        image::imageops::replace(&mut mosaic, &c.img, gx as i64, gy as i64);
        // Tile border.
        for x in gx..gx + cw {
            for y in [gy, gy + ch - 1] {
                mosaic.put_pixel(x, y, WHITE);
            }
        }
        for y in gy..gy + ch {
            for x in [gx, gx + cw - 1] {
                mosaic.put_pixel(x, y, WHITE);
            }
        }
    }
    mosaic.save(path).with_context(|| format!("saving {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upright_and_turned_text_cover_the_same_pixel_count() {
        let mut a = Canvas::new(100, 100);
        a.text(10, 10, "Ab", 2, BLACK);
        let mut b = Canvas::new(100, 100);
        b.text_up(10, 10, "Ab", 2, BLACK);
        let dark = |c: &Canvas| c.img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(dark(&a) > 0);
        assert_eq!(dark(&a), dark(&b));
        // The turned text stays inside its 16 x 32 box.
        assert!(b.img.enumerate_pixels().filter(|(_, _, p)| p.0 == [0, 0, 0]).all(|(x, y, _)| (10..26).contains(&x) && (10..42).contains(&y)));
    }

    #[test]
    fn thick_lines_have_the_asked_width() {
        let mut c = Canvas::new(50, 50);
        c.line((5.0, 25.0), (45.0, 25.0), 4.0, BLACK);
        let column: Vec<u8> = (0..50).map(|y| c.img.get_pixel(25, y).0[0]).collect();
        let solid = column.iter().filter(|&&v| v == 0).count();
        assert!((3..=5).contains(&solid), "{column:?}");
        assert_eq!(c.img.get_pixel(25, 10).0, [255; 3]);
    }

    #[test]
    fn blues_runs_from_white_to_dark_blue() {
        assert_eq!(blues(0.0).0, BLUES[0]);
        assert_eq!(blues(1.0).0, BLUES[8]);
        assert_eq!(blues(f64::NAN).0, BLUES[0]);
    }
}
