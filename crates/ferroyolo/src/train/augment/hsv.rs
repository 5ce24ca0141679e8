//! Colour-space jitter in OpenCV's 8-bit HSV, the way the reference's `RandomHSV` does it.
//!
//! The reference converts the image to 8-bit HSV (hue 0..180 in 2° steps, saturation and value
//! 0..255), maps each channel through a 256-entry lookup table built from the random gains, and
//! converts back. Both conversions below reproduce OpenCV 5's scalar algorithms: RGB to HSV in
//! 12-bit fixed point with its reciprocal tables, HSV to RGB in single precision with the
//! six-sector formula. The unit tests compare them against every colour OpenCV converts.
//!
//! The round trip is lossy even with no gain (hue has only 180 levels): up to 6 grey levels on
//! rare saturated colours, 0.55 on average over all 2^24 colours, exactly as in OpenCV. That is
//! why the reference skips the whole step when all three gains are zero, and so does [`jitter`].

use std::sync::OnceLock;

use image::RgbImage;

/// Fixed-point fraction bits of OpenCV's RGB to HSV conversion.
const HSV_SHIFT: u32 = 12;

/// OpenCV's reciprocal tables: `sdiv[v] = round(255 * 2^12 / v)` for saturation and
/// `hdiv[d] = round(180 * 2^12 / (6 d))` for hue, both 0 at index 0.
struct DivTables {
    sdiv: [i32; 256],
    hdiv: [i32; 256],
}

fn div_tables() -> &'static DivTables {
    static TABLES: OnceLock<DivTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = DivTables { sdiv: [0; 256], hdiv: [0; 256] };
        for i in 1..256 {
            // cvRound rounds half to even.
            t.sdiv[i] = ((255i64 << HSV_SHIFT) as f64 / i as f64).round_ties_even() as i32;
            t.hdiv[i] = ((180i64 << HSV_SHIFT) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        t
    })
}

/// One RGB pixel to OpenCV's 8-bit HSV (`COLOR_RGB2HSV`): `[h 0..180, s, v]`.
#[inline]
pub fn rgb_to_hsv(rgb: [u8; 3]) -> [u8; 3] {
    let t = div_tables();
    let (r, g, b) = (rgb[0] as i32, rgb[1] as i32, rgb[2] as i32);
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let round = 1 << (HSV_SHIFT - 1);
    let s = (diff * t.sdiv[v as usize] + round) >> HSV_SHIFT;
    // Hue sector by the maximum channel, red first, then green, as OpenCV tests them.
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * t.hdiv[diff as usize] + round) >> HSV_SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// One OpenCV 8-bit HSV pixel (hue 0..180) back to RGB (`COLOR_HSV2RGB`).
///
/// This follows OpenCV's vectorised path, which converts all but a remainder of fewer than 32
/// (AVX2) or 64 (AVX-512) pixels at the end of a run, none for the square, stride-multiple
/// training images: saturation and value scaled to 0..1, six-sector formula in single precision
/// with `1 - s*h` fused, then scaled back by 255 and *truncated*. (OpenCV's scalar remainder
/// rounds instead; that difference is deliberately not copied.)
#[inline]
pub fn hsv_to_rgb(hsv: [u8; 3]) -> [u8; 3] {
    let s = hsv[1] as f32 * (1.0f32 / 255.0);
    let v = hsv[2] as f32 * (1.0f32 / 255.0);
    let mut h = hsv[0] as f32 * (6.0f32 / 180.0);
    // `as i32` truncates like `trunc` (h is never negative) without a library call.
    let pre = (h as i32) as f32;
    h -= pre;
    let tab0 = v;
    let tab1 = v * (1.0 - s);
    // OpenCV's compiled kernel fuses `1 - s*h` into one multiply-add (single rounding); the
    // product of two f32 is exact in f64, so this reproduces it without an FMA instruction.
    let one_minus = |a: f32, b: f32| (1.0 - a as f64 * b as f64) as f32;
    let tab2 = v * one_minus(s, h);
    let tab3 = v * one_minus(s, 1.0 - h);
    let sector = pre - ((pre * (1.0f32 / 6.0)) as i32) as f32 * 6.0;
    let (r, g, b) = if sector < 1.0 {
        (tab0, tab3, tab1)
    } else if sector < 2.0 {
        (tab2, tab0, tab1)
    } else if sector < 3.0 {
        (tab1, tab0, tab3)
    } else if sector < 4.0 {
        (tab1, tab2, tab0)
    } else if sector < 5.0 {
        (tab3, tab1, tab0)
    } else {
        (tab0, tab1, tab2)
    };
    // `as u8` truncates toward zero and saturates, like OpenCV's truncate-then-pack.
    let px = |x: f32| (x * 255.0) as u8;
    [px(r), px(g), px(b)]
}

/// The reference's three lookup tables for random gains `r = [dh, ds, dv]` (each already
/// multiplied by its configured gain): hue shifted by `dh * 180` modulo 180, saturation and
/// value scaled by `1 + ds` and `1 + dv`, clipped and truncated to 8 bits. Saturation 0 stays 0
/// so that greys (white in particular) keep no hue.
pub fn luts(r: [f64; 3]) -> [[u8; 256]; 3] {
    // Float to u8 casts truncate, as numpy's `astype(uint8)` does on these non-negative values.
    let hue = std::array::from_fn(|x| (x as f64 + r[0] * 180.0).rem_euclid(180.0) as u8);
    let mut sat: [u8; 256] = std::array::from_fn(|x| (x as f64 * (r[1] + 1.0)).clamp(0.0, 255.0) as u8);
    let val = std::array::from_fn(|x| (x as f64 * (r[2] + 1.0)).clamp(0.0, 255.0) as u8);
    sat[0] = 0;
    [hue, sat, val]
}

/// Applies `RandomHSV` with gains `r = [dh, ds, dv]`: RGB to HSV, the three [`luts`], back to RGB.
pub fn apply(img: &mut RgbImage, r: [f64; 3]) {
    let lut = luts(r);
    for px in img.pixels_mut() {
        let hsv = rgb_to_hsv(px.0);
        px.0 = hsv_to_rgb([lut[0][hsv[0] as usize], lut[1][hsv[1] as usize], lut[2][hsv[2] as usize]]);
    }
}

/// The reference's `RandomHSV` step: draws `U(-1, 1) * gain` per channel from `uniform` (hue,
/// saturation, value in that order) and applies it; does nothing, and draws nothing, when all
/// gains are zero (the conversion alone would change the image).
pub fn jitter(img: &mut RgbImage, gains: [f32; 3], mut uniform: impl FnMut(f64, f64) -> f64) {
    if gains.iter().all(|&g| g == 0.0) {
        return;
    }
    // The gains as the decimals they were written as (0.4, not 0.4000000059604645): the tables
    // truncate, so the difference would move some entries by a level.
    let r = gains.map(|g| uniform(-1.0, 1.0) * super::transform::decimal(g));
    apply(img, r);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a over a byte stream.
    fn fnv(bytes: impl Iterator<Item = u8>) -> u64 {
        bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    }

    /// Every 8-bit colour in the order r, g, b (b fastest).
    fn cube() -> impl Iterator<Item = [u8; 3]> {
        (0..1u32 << 24).map(|i| [(i >> 16) as u8, (i >> 8) as u8, i as u8])
    }

    // The hashes are of OpenCV 5.0's own output (`cv2.cvtColor`) over the same inputs, computed
    // once in Python: the whole RGB cube through COLOR_RGB2HSV, and every (h < 180, s, v) through
    // COLOR_HSV2RGB.
    const CV_RGB2HSV_FNV: u64 = 0xd22f_261e_ba9e_21a0;
    const CV_HSV2RGB_FNV: u64 = 0xae51_8231_1690_e59c;

    #[test]
    fn rgb_to_hsv_equals_opencv_on_every_colour() {
        let h = fnv(cube().flat_map(rgb_to_hsv));
        assert_eq!(h, CV_RGB2HSV_FNV, "{h:#x}");
    }

    #[test]
    fn hsv_to_rgb_equals_opencv_on_every_hsv_value() {
        let h = fnv((0..180u32 * 65536).flat_map(|i| hsv_to_rgb([(i >> 16) as u8, (i >> 8) as u8, i as u8])));
        assert_eq!(h, CV_HSV2RGB_FNV, "{h:#x}");
    }

    #[test]
    fn round_trip_error_is_opencvs() {
        // No single level is lost on greys; elsewhere the 2-degree hue quantisation costs up to
        // 6 levels on a few saturated colours, 0.55 on average, as OpenCV's own round trip.
        let (mut max, mut sum, mut over2) = (0u8, 0u64, 0u64);
        for rgb in cube() {
            let back = hsv_to_rgb(rgb_to_hsv(rgb));
            for c in 0..3 {
                let d = rgb[c].abs_diff(back[c]);
                max = max.max(d);
                sum += d as u64;
                over2 += (d > 2) as u64;
            }
            if rgb[0] == rgb[1] && rgb[1] == rgb[2] {
                assert_eq!(back, rgb);
            }
        }
        let n = 3.0 * (1u64 << 24) as f64;
        assert_eq!(max, 6);
        assert!((sum as f64 / n - 0.553).abs() < 0.001, "mean {}", sum as f64 / n);
        assert!((over2 as f64 / n) < 0.031, "{}", over2 as f64 / n);
    }

    #[test]
    fn zero_gains_leave_the_image_untouched_and_draw_nothing() {
        let mut img = RgbImage::from_fn(32, 8, |x, y| image::Rgb([(x * 8) as u8, (y * 30) as u8, (x * y) as u8]));
        let orig = img.clone();
        let mut draws = 0;
        jitter(&mut img, [0.0; 3], |a, b| {
            draws += 1;
            (a + b) / 2.0
        });
        assert_eq!(img, orig);
        assert_eq!(draws, 0);
        // Non-zero gains that happen to draw 0 still convert, as the reference does.
        jitter(&mut img, [0.015, 0.7, 0.4], |a, b| (a + b) / 2.0);
        let expect: Vec<u8> = orig.pixels().flat_map(|p| hsv_to_rgb(rgb_to_hsv(p.0))).collect();
        assert_eq!(img.as_raw(), &expect);
    }

    #[test]
    fn lookup_tables_follow_the_reference() {
        let t = luts([0.0, 0.0, 0.0]);
        let identity: Vec<u8> = (0..=255).collect();
        assert_eq!(t[0].to_vec(), identity.iter().map(|&x| x % 180).collect::<Vec<u8>>());
        assert_eq!(t[1].to_vec(), identity);
        assert_eq!(t[2].to_vec(), identity);
        // Hue shifts wrap within 0..180 both ways; saturation and value scale, clip and truncate.
        let t = luts([-0.1, 0.5, -0.25]);
        assert_eq!(t[0][0], 162); // (0 - 18) mod 180
        assert_eq!(t[0][20], 2);
        let t2 = luts([0.1, 0.5, -0.25]);
        assert_eq!(t2[0][170], 8); // (170 + 18) mod 180
        assert_eq!(t[1][0], 0); // saturation 0 stays 0 whatever the gain
        assert_eq!(t[1][3], 4); // 4.5 truncated
        assert_eq!(t[1][200], 255);
        assert_eq!(t[2][255], 191); // 191.25
        let t3 = luts([0.0, -0.5, 0.0]);
        assert_eq!(t3[1][1], 0);
        // A pure hue shift turns red toward yellow (positive) and keeps grey grey.
        let mut img = RgbImage::from_fn(2, 1, |x, _| image::Rgb(if x == 0 { [255, 0, 0] } else { [90, 90, 90] }));
        apply(&mut img, [0.1, 0.0, 0.0]);
        let red = img.get_pixel(0, 0).0;
        assert!(red[0] == 255 && red[1] > 100 && red[2] == 0, "{red:?}");
        assert_eq!(img.get_pixel(1, 0).0, [90, 90, 90]);
    }
}
