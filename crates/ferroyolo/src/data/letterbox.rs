//! Letterbox preprocessing: resize keeping the aspect ratio, pad to the network's shape, and turn
//! pixels into the CHW float tensor layout the model reads.
//!
//! Everything here reproduces the reference bit for bit: its resize is OpenCV's `INTER_LINEAR`
//! on 8-bit images, which works in fixed point, so a float bilinear resize would differ by one
//! grey level in many pixels.

use image::{Rgb, RgbImage};

/// Fractional bits of OpenCV's resize interpolation weights (`INTER_RESIZE_COEF_BITS`).
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// One output column or row: the first source index and the weights of it and the next one.
#[derive(Clone, Copy, Debug)]
struct Tap {
    src: isize,
    w0: i32,
    w1: i32,
}

/// Interpolation taps along one axis, computed like OpenCV: source coordinate
/// `(d + 0.5) * scale - 0.5` in double precision, then single precision for the fraction, and
/// weights rounded (half to even) to 11 bits. `clamp` applies OpenCV's horizontal border rule
/// (weights collapse onto the edge sample); rows are instead clipped when they are fetched.
fn taps(src_len: u32, dst_len: u32, clamp: bool) -> Vec<Tap> {
    // OpenCV derives the scale from the inverse ratio; keep the same double rounding.
    let inv_scale = dst_len as f64 / src_len as f64;
    let scale = 1.0 / inv_scale;
    (0..dst_len)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as isize;
            let mut frac = f - s as f32;
            if clamp {
                if s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if s >= src_len as isize - 1 {
                    s = src_len as isize - 1;
                    frac = 0.0;
                }
            }
            Tap {
                src: s,
                w0: ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32,
                w1: (frac * COEF_SCALE).round_ties_even() as i32,
            }
        })
        .collect()
}

/// Bilinear resize that reproduces OpenCV `cv2.resize(..., INTER_LINEAR)` on uint8 images
/// bit-exactly (OpenCV's fixed-point path: half-pixel centres, 11-bit coefficients, its
/// rounding and border clamping).
///
/// The horizontal pass keeps full precision (weights sum to 2^11); the vertical pass drops 4
/// bits from each row, multiplies by the 11-bit weight keeping the high 16 bits, and rounds the
/// sum by 2 bits: that is OpenCV's vectorised arithmetic, which its scalar code mirrors.
/// A zero-sized target gives an empty image; an empty source gives a black one.
pub fn resize_bilinear(img: &RgbImage, new_w: u32, new_h: u32) -> RgbImage {
    let (sw, sh) = img.dimensions();
    if (sw, sh) == (new_w, new_h) {
        return img.clone(); // OpenCV copies in this case too
    }
    let mut out = RgbImage::new(new_w, new_h);
    if new_w == 0 || new_h == 0 || sw == 0 || sh == 0 {
        return out;
    }
    let xt = taps(sw, new_w, true);
    let yt = taps(sh, new_h, false);
    let src = img.as_raw();
    let row_len = sw as usize * 3;

    // Horizontally resized source rows, cached because consecutive output rows share them.
    // Taps whose right neighbour is past the edge use the edge sample alone (weight 2^11).
    let inner = xt.iter().take_while(|t| (t.src as u32) + 1 < sw).count();
    let hrow = |y: usize, buf: &mut Vec<i32>| {
        buf.resize(xt.len() * 3, 0);
        let s = &src[y * row_len..(y + 1) * row_len];
        let (inner_out, edge_out) = buf.split_at_mut(inner * 3);
        for (t, d) in xt[..inner].iter().zip(inner_out.chunks_exact_mut(3)) {
            let x = t.src as usize * 3;
            let (p, q) = (&s[x..x + 3], &s[x + 3..x + 6]);
            for c in 0..3 {
                d[c] = p[c] as i32 * t.w0 + q[c] as i32 * t.w1;
            }
        }
        for (t, d) in xt[inner..].iter().zip(edge_out.chunks_exact_mut(3)) {
            let x = t.src as usize * 3;
            for c in 0..3 {
                d[c] = s[x + c] as i32 * (1 << COEF_BITS);
            }
        }
    };
    let mut cache: [(usize, Vec<i32>); 2] = [(usize::MAX, Vec::new()), (usize::MAX, Vec::new())];
    let out_row_len = new_w as usize * 3;
    let out_buf: &mut [u8] = &mut out;
    for (dy, t) in yt.iter().enumerate() {
        let clip = |y: isize| y.clamp(0, sh as isize - 1) as usize;
        let (y0, y1) = (clip(t.src), clip(t.src + 1));
        // Slot 0 must hold row y0 and slot 1 row y1; the window usually slides by one row.
        if cache[0].0 != y0 && cache[1].0 == y0 {
            cache.swap(0, 1);
        }
        if cache[0].0 != y0 {
            hrow(y0, &mut cache[0].1);
            cache[0].0 = y0;
        }
        if cache[1].0 != y1 {
            hrow(y1, &mut cache[1].1);
            cache[1].0 = y1;
        }
        let (r0, r1) = (&cache[0].1, &cache[1].1);
        let dst = &mut out_buf[dy * out_row_len..(dy + 1) * out_row_len];
        for ((d, &a), &b) in dst.iter_mut().zip(r0.iter()).zip(r1.iter()) {
            let v = ((t.w0 * (a >> 4)) >> 16) + ((t.w1 * (b >> 4)) >> 16);
            *d = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    out
}

/// How to letterbox an image for the network.
#[derive(Clone, Copy, Debug)]
pub struct LetterboxSpec {
    /// Target shape as (height, width).
    pub new_shape: (u32, u32),
    /// Pad only up to the next multiple of `stride` (minimal padding, as `predict` does).
    pub auto: bool,
    /// Allow enlarging images smaller than the target (otherwise they are only padded).
    pub scaleup: bool,
    /// Stride for `auto` padding (32 for YOLO26).
    pub stride: u32,
    /// Grey level of the padding (114 in the reference).
    pub pad_value: u8,
}

impl LetterboxSpec {
    /// The predict-time letterbox of the reference: square `imgsz`, minimal padding to a
    /// multiple of 32, scale up allowed, padding grey 114.
    pub fn predict(imgsz: u32) -> Self {
        LetterboxSpec {
            new_shape: (imgsz, imgsz),
            auto: true,
            scaleup: true,
            stride: 32,
            pad_value: 114,
        }
    }
}

/// What [`letterbox`] did, to map boxes back to the original image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LetterboxInfo {
    /// Scale factor applied to the original image.
    pub ratio: f64,
    /// Size of the resized image before padding, (width, height).
    pub new_unpad: (u32, u32),
    /// Padding added on the left.
    pub pad_left: u32,
    /// Padding added on top.
    pub pad_top: u32,
    /// Size of the letterboxed image, (width, height).
    pub out_size: (u32, u32),
}

/// Resizes (keeping the aspect ratio) and pads an image as the reference `LetterBox` does.
///
/// r = min(h_t/h, w_t/w), capped at 1 unless `scaleup`; the resized size rounds w·r and h·r
/// half to even (Python's `round`), at least 1; the padding (down to its remainder modulo the
/// stride when `auto`) is split with the odd pixel going right / down.
pub fn letterbox(img: &RgbImage, spec: &LetterboxSpec) -> (RgbImage, LetterboxInfo) {
    let (w, h) = img.dimensions();
    let (th, tw) = spec.new_shape;
    let mut r = f64::min(th as f64 / h.max(1) as f64, tw as f64 / w.max(1) as f64);
    if !spec.scaleup {
        r = r.min(1.0);
    }
    let new_w = ((w as f64 * r).round_ties_even() as u32).max(1);
    let new_h = ((h as f64 * r).round_ties_even() as u32).max(1);
    let mut dw = tw as i64 - new_w as i64;
    let mut dh = th as i64 - new_h as i64;
    if spec.auto && spec.stride > 0 {
        dw = dw.rem_euclid(spec.stride as i64);
        dh = dh.rem_euclid(spec.stride as i64);
    }
    // The ±0.1 sends the odd pixel of an odd padding to the right / bottom; it also keeps the
    // halves away from .5, so Python's half-to-even rounding plays no part here.
    let split = |d: i64| {
        let half = d.max(0) as f64 / 2.0;
        ((half - 0.1).round() as u32, (half + 0.1).round() as u32)
    };
    let (left, right) = split(dw);
    let (top, bottom) = split(dh);

    let resized;
    let src = if (w, h) != (new_w, new_h) {
        resized = resize_bilinear(img, new_w, new_h);
        &resized
    } else {
        img
    };
    let (out_w, out_h) = (new_w + left + right, new_h + top + bottom);
    let mut out = RgbImage::from_pixel(out_w, out_h, Rgb([spec.pad_value; 3]));
    let row = new_w as usize * 3;
    let out_row = out_w as usize * 3;
    let dst: &mut [u8] = &mut out;
    for (y, src_row) in src
        .as_raw()
        .chunks_exact(row.max(1))
        .enumerate()
        .take(new_h as usize)
    {
        let start = (y + top as usize) * out_row + left as usize * 3;
        dst[start..start + row].copy_from_slice(src_row);
    }
    let info = LetterboxInfo {
        ratio: r,
        new_unpad: (new_w, new_h),
        pad_left: left,
        pad_top: top,
        out_size: (out_w, out_h),
    };
    (out, info)
}

/// HWC RGB u8 -> CHW f32 / 255, appended to `out` (so a batch is built by calling it per image).
///
/// Division (not multiplication by 1/255) matches the reference's float32 values exactly.
pub fn extend_chw_f32(img: &RgbImage, out: &mut Vec<f32>) {
    let raw = img.as_raw();
    out.reserve(raw.len());
    for c in 0..3 {
        out.extend(raw.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0));
    }
}

/// A network input `(1, 3, imgsz, imgsz)` of one image letterboxed to the full square (no
/// minimal-padding rectangle), so that a set of images has one shape: calibration inputs.
pub fn square_input(img: &RgbImage, imgsz: u32) -> crate::engine::Tensor {
    let spec = LetterboxSpec { new_shape: (imgsz, imgsz), auto: false, scaleup: true, stride: 32, pad_value: 114 };
    let (boxed, _) = letterbox(img, &spec);
    let mut data = Vec::with_capacity(3 * (imgsz * imgsz) as usize);
    extend_chw_f32(&boxed, &mut data);
    crate::engine::Tensor::new([1, 3, imgsz as usize, imgsz as usize], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn resize_to_same_size_is_identity() {
        let img = gradient(37, 23);
        assert_eq!(resize_bilinear(&img, 37, 23), img);
    }

    #[test]
    fn resize_keeps_flat_images_flat() {
        // Weights sum to 2^11 and the rounding is centred, so a constant stays constant.
        for v in [0u8, 1, 114, 254, 255] {
            let img = RgbImage::from_pixel(13, 9, Rgb([v; 3]));
            for (w, h) in [(5, 4), (26, 18), (40, 3), (1, 1)] {
                let out = resize_bilinear(&img, w, h);
                assert!(out.pixels().all(|p| p.0 == [v; 3]), "value {v} to {w}x{h}");
            }
        }
    }

    #[test]
    fn resize_halving_averages_pairs() {
        // An exact 2x reduction samples halfway between source pixels: (a + b + c + d + 2) / 4.
        let img = gradient(8, 6);
        let out = resize_bilinear(&img, 4, 3);
        let p = |x, y| img.get_pixel(x, y).0[0] as u32;
        let expected = (p(2, 2) + p(3, 2) + p(2, 3) + p(3, 3) + 2) / 4;
        assert_eq!(out.get_pixel(1, 1).0[0] as u32, expected);
    }

    fn spec(h: u32, w: u32, auto: bool, scaleup: bool) -> LetterboxSpec {
        LetterboxSpec {
            new_shape: (h, w),
            auto,
            scaleup,
            stride: 32,
            pad_value: 114,
        }
    }

    #[test]
    fn letterbox_shapes() {
        // (image w, h), auto, scaleup -> (new_unpad, pad_left, pad_top, out_size)
        let cases = [
            ((810, 1080), true, true, ((480, 640), 0, 0, (480, 640))),
            ((810, 1080), false, true, ((480, 640), 80, 0, (640, 640))),
            ((1280, 720), true, true, ((640, 360), 0, 12, (640, 384))),
            ((1280, 720), false, true, ((640, 360), 0, 140, (640, 640))),
            ((640, 427), true, true, ((640, 427), 0, 10, (640, 448))),
            ((500, 375), true, true, ((640, 480), 0, 0, (640, 480))),
            ((200, 100), false, false, ((200, 100), 220, 270, (640, 640))),
            ((200, 100), true, false, ((200, 100), 12, 14, (224, 128))),
            ((200, 100), true, true, ((640, 320), 0, 0, (640, 320))),
            ((640, 640), false, true, ((640, 640), 0, 0, (640, 640))),
            ((1, 1), true, true, ((640, 640), 0, 0, (640, 640))),
            ((5000, 3), true, true, ((640, 1), 0, 15, (640, 32))),
        ];
        for ((w, h), auto, scaleup, (unpad, left, top, out_size)) in cases {
            let img = gradient(w, h);
            let (out, info) = letterbox(&img, &spec(640, 640, auto, scaleup));
            let ctx = format!("{w}x{h} auto={auto} scaleup={scaleup}: {info:?}");
            assert_eq!(info.new_unpad, unpad, "{ctx}");
            assert_eq!((info.pad_left, info.pad_top), (left, top), "{ctx}");
            assert_eq!(info.out_size, out_size, "{ctx}");
            assert_eq!(out.dimensions(), out_size, "{ctx}");
            if out_size != unpad {
                assert_eq!(
                    out.get_pixel(out_size.0 - 1, out_size.1 - 1).0,
                    [114; 3],
                    "{ctx}"
                );
            }
        }
    }

    #[test]
    fn letterbox_rounds_half_to_even_like_python() {
        // 1280x5 at r = 0.5: h = 2.5 rounds to 2 (Python), not 3.
        let (_, info) = letterbox(&gradient(1280, 5), &spec(640, 640, false, true));
        assert_eq!(info.new_unpad, (640, 2));
        assert_eq!(
            (info.pad_top, info.out_size.1 - 2 - info.pad_top),
            (319, 319)
        );
    }

    #[test]
    fn letterbox_places_the_image_in_the_middle() {
        let img = gradient(100, 50);
        let (out, info) = letterbox(&img, &spec(100, 100, false, false));
        assert_eq!((info.pad_left, info.pad_top), (0, 25));
        assert_eq!(out.get_pixel(3, 25 + 4), img.get_pixel(3, 4));
        assert_eq!(out.get_pixel(3, 24).0, [114; 3]);
    }

    #[test]
    fn chw_layout() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, Rgb([255, 0, 51]));
        img.put_pixel(1, 0, Rgb([0, 255, 102]));
        let mut out = vec![9.0];
        extend_chw_f32(&img, &mut out);
        assert_eq!(out, vec![9.0, 1.0, 0.0, 0.0, 1.0, 0.2, 0.4]);
    }

    #[test]
    fn bus_matches_reference_tensor() {
        let fixtures = crate::fixtures_or_skip!();
        let img = super::super::image_io::load_image(&fixtures.join("images/bus.jpg")).unwrap();
        let (lb, info) = letterbox(&img, &LetterboxSpec::predict(640));
        assert_eq!(info.out_size, (480, 640));
        let mut x = Vec::new();
        extend_chw_f32(&lb, &mut x);
        let reference =
            super::super::npy::read_npy(fixtures.join("reference/bus_letterbox_input.npy"))
                .unwrap();
        assert_eq!(reference.shape, vec![1, 3, 640, 480]);
        let (mut max_diff, mut differing) = (0f32, 0usize);
        for (a, b) in x.iter().zip(&reference.data) {
            if a != b {
                differing += 1;
                max_diff = max_diff.max((a - b).abs());
            }
        }
        eprintln!(
            "bus letterbox: {differing} of {} values differ, max abs diff {max_diff}",
            x.len()
        );
        assert_eq!(differing, 0, "max abs diff {max_diff}");
    }
}

