//! Geometric warps: the reference's `cv2.warpAffine` / `cv2.warpPerspective` with bilinear
//! interpolation and a constant border.
//!
//! OpenCV 5 (the version the reference runs on) maps each output pixel back through the inverse
//! matrix in single precision and interpolates in floating point; older versions quantised the
//! source position to 1/32 pixel. [`warp`] follows the newer arithmetic: the inverse affine
//! matrix rounded to `f32`, the row term `m01*y + m02` rounded once, the column term added with a
//! single rounding, and the two horizontal lerps then the vertical one each with a single
//! rounding, rounded half to even into 8 bits. On random images and matrices this gives
//! OpenCV's pixels in all but about one in a million samples (those differ by one level, from
//! the order in which OpenCV happens to round); on the reference runs replayed in the tests it
//! is exact. Exact equality is not a goal in itself (augmentation only needs the same geometry),
//! but it costs nothing and makes the comparison with the reference sharp.
//!
//! The single-rounding multiply-adds are computed in `f64` (an `f32` product is exact there)
//! rather than with FMA instructions, so every machine gives the same pixels.
//!
//! Border: any of the four taps that falls outside the source reads the border value, so
//! pixels along the image edge blend into it, as OpenCV's `BORDER_CONSTANT` does.

use image::RgbImage;

/// A 3x3 homogeneous transform, row major, mapping source pixel coordinates to output ones.
pub type Mat3 = [[f64; 3]; 3];

/// The 3x3 identity.
pub const IDENTITY: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// `a @ b`.
pub fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Applies `m` to the point `(x, y)`, dividing by the homogeneous coordinate when `perspective`.
pub fn apply(m: &Mat3, x: f64, y: f64, perspective: bool) -> (f64, f64) {
    let px = m[0][0] * x + m[0][1] * y + m[0][2];
    let py = m[1][0] * x + m[1][1] * y + m[1][2];
    if perspective {
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        (px / w, py / w)
    } else {
        (px, py)
    }
}

/// Inverse of the affine part (first two rows) of `m`, as `cv2.invertAffineTransform` computes
/// it; a singular matrix gives zeros (every output pixel then samples the source origin).
fn invert_affine(m: &Mat3) -> [[f64; 3]; 2] {
    let d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22, a12, a21) = (m[1][1] * d, m[0][0] * d, -m[0][1] * d, -m[1][0] * d);
    let b1 = -a11 * m[0][2] - a12 * m[1][2];
    let b2 = -a21 * m[0][2] - a22 * m[1][2];
    [[a11, a12, b1], [a21, a22, b2]]
}

/// Inverse of a full 3x3 matrix (zeros when singular).
fn invert3(m: &Mat3) -> Mat3 {
    let c = |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let cof = [
        [c(1, 2, 1, 2), -c(1, 2, 0, 2), c(1, 2, 0, 1)],
        [-c(0, 2, 1, 2), c(0, 2, 0, 2), -c(0, 2, 0, 1)],
        [c(0, 1, 1, 2), -c(0, 1, 0, 2), c(0, 1, 0, 1)],
    ];
    let det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2];
    let inv = if det != 0.0 { 1.0 / det } else { 0.0 };
    // The inverse is the transposed cofactor matrix over the determinant.
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = cof[j][i] * inv;
        }
    }
    out
}

/// `x.floor()` for the small finite values of source coordinates. (`f32::floor` is a library
/// call on baseline x86-64, which made it the costliest step of the warp.)
#[inline]
fn floor(x: f32) -> i64 {
    let i = x as i64;
    if (i as f32) > x {
        i - 1
    } else {
        i
    }
}

/// Rounds half to even and saturates to 0..255, like OpenCV's `saturate_cast<uchar>(float)`.
/// Adding and subtracting 2^23 rounds a value in [0, 2^23) to an integer in the current (nearest
/// even) mode without a library call.
#[inline]
fn round_u8(v: f32) -> u8 {
    const MAGIC: f32 = 8_388_608.0;
    let v = v.clamp(0.0, 255.0);
    ((v + MAGIC) - MAGIC) as u8
}

/// Warps `src` by `m` (source to output coordinates) into an `out_w` x `out_h` image with
/// bilinear interpolation and constant `border` outside the source: `cv2.warpAffine(src, m[:2],
/// (out_w, out_h), borderValue=border)`, or `cv2.warpPerspective` when `perspective`.
pub fn warp(src: &RgbImage, m: &Mat3, out_w: u32, out_h: u32, border: u8, perspective: bool) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    let (sw, sh) = (src.width() as i64, src.height() as i64);
    let raw = src.as_raw();
    let stride = sw as usize * 3;
    let inv: [[f32; 3]; 3] = if perspective {
        invert3(m).map(|r| r.map(|v| v as f32))
    } else {
        let a = invert_affine(m);
        [a[0].map(|v| v as f32), a[1].map(|v| v as f32), [0.0, 0.0, 1.0]]
    };
    let border_px = [border as f32; 3];
    // One source pixel, or the border value outside the image.
    let tap = |x: i64, y: i64| -> [f32; 3] {
        if x >= 0 && y >= 0 && x < sw && y < sh {
            let o = y as usize * stride + x as usize * 3;
            [raw[o] as f32, raw[o + 1] as f32, raw[o + 2] as f32]
        } else {
            border_px
        }
    };
    // `a * b + c` with one rounding to f32: the product of two f32 is exact in f64.
    let fma = |a: f32, b: f32, c: f32| (a as f64 * b as f64 + c as f64) as f32;
    let out_stride = out_w as usize * 3;
    let dst: &mut [u8] = &mut out;
    for (y, row) in dst.chunks_exact_mut(out_stride.max(1)).enumerate().take(out_h as usize) {
        let yf = y as f32;
        let bx = inv[0][1] * yf + inv[0][2];
        let by = inv[1][1] * yf + inv[1][2];
        let bw = inv[2][1] * yf + inv[2][2];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let xf = x as f32;
            let (mut fx, mut fy) = (fma(inv[0][0], xf, bx), fma(inv[1][0], xf, by));
            if perspective {
                let w = fma(inv[2][0], xf, bw);
                let w = if w != 0.0 { 1.0 / w } else { 0.0 };
                fx *= w;
                fy *= w;
            }
            // Far outside (or not a number): all four taps are border.
            if !(fx > -2.0 && fy > -2.0 && fx < sw as f32 + 1.0 && fy < sh as f32 + 1.0) {
                px.copy_from_slice(&[border; 3]);
                continue;
            }
            let (x0, y0) = (floor(fx), floor(fy));
            let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
            let (p00, p01, p10, p11) = if x0 >= 0 && y0 >= 0 && x0 + 1 < sw && y0 + 1 < sh {
                let o = y0 as usize * stride + x0 as usize * 3;
                let f = |o: usize| [raw[o] as f32, raw[o + 1] as f32, raw[o + 2] as f32];
                (f(o), f(o + 3), f(o + stride), f(o + stride + 3))
            } else {
                (tap(x0, y0), tap(x0 + 1, y0), tap(x0, y0 + 1), tap(x0 + 1, y0 + 1))
            };
            for c in 0..3 {
                let v0 = fma(ax, p01[c] - p00[c], p00[c]);
                let v1 = fma(ax, p11[c] - p10[c], p10[c]);
                let v = fma(ay, v1 - v0, v0);
                px[c] = round_u8(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([((x * 37 + y * 11) % 256) as u8, (((x * 5) ^ (y * 3)) % 256) as u8, ((x * y) % 256) as u8]))
    }

    #[test]
    fn identity_and_integer_shift_copy_pixels() {
        let img = pattern(23, 17);
        assert_eq!(warp(&img, &IDENTITY, 23, 17, 114, false), img);
        let shift = [[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]];
        let out = warp(&img, &shift, 30, 20, 114, false);
        for y in 0..20 {
            for x in 0..30 {
                let (sx, sy) = (x as i64 - 3, y as i64 + 2);
                let want = if sx >= 0 && sy >= 0 && sx < 23 && sy < 17 { *img.get_pixel(sx as u32, sy as u32) } else { Rgb([114; 3]) };
                assert_eq!(*out.get_pixel(x, y), want, "({x}, {y})");
            }
        }
        // The perspective path with an affine matrix gives the same image.
        assert_eq!(warp(&img, &shift, 30, 20, 114, true), out);
    }

    #[test]
    fn half_scale_averages_and_border_blends() {
        // Upscaling by 2 puts output pixel 1 halfway between source pixels 0 and 1... in OpenCV's
        // convention of integer pixel coordinates (no half-pixel offset): out(x) = src(x / 2).
        let img = RgbImage::from_fn(2, 1, |x, _| Rgb([[0, 100][x as usize]; 3]));
        let m = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let out = warp(&img, &m, 4, 1, 114, false);
        let row: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        // x = 3 samples 1.5: halfway between the last pixel (100) and the border (114).
        assert_eq!(row, vec![0, 50, 100, 107]);
    }

    #[test]
    fn matches_opencv_on_a_rotated_scaled_warp() {
        // cv2.warpAffine(img, M, (8, 6), borderValue=114) for img[y, x] = (x*40 + y*7) % 256 in
        // all channels and M = [[0.9, -0.3, 2.5], [0.35, 0.8, -1.25]], computed in OpenCV 5.0.
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([((x * 40 + y * 7) % 256) as u8; 3]));
        let m = [[0.9, -0.3, 2.5], [0.35, 0.8, -1.25], [0.0, 0.0, 1.0]];
        let out = warp(&img, &m, 8, 6, 114, false);
        let got: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(got, OPENCV_ROTATED.to_vec());
    }

    const OPENCV_ROTATED: [u8; 48] = [
        114, 114, 14, 46, 81, 117, 149, 150, 114, 80, 32, 68, 104, 139, 175, 211, 114, 63, 54, 90, 126, 162, 197, 233, 114, 114, 107, 111,
        148, 184, 220, 86, 114, 114, 114, 114, 114, 143, 151, 39, 114, 114, 114, 114, 114, 114, 114, 111,
    ];

    #[test]
    fn matches_opencv_on_a_larger_warp() {
        // FNV-1a of cv2.warpAffine(pattern(50, 40), M, (64, 48), borderValue=114) in OpenCV 5.0,
        // M a 17 degree rotation scaled by 1.3 plus a shift.
        let (c, s) = (17f64.to_radians().cos() * 1.3, 17f64.to_radians().sin() * 1.3);
        let m = [[c, -s, 9.5], [s, c, -12.25], [0.0, 0.0, 1.0]];
        let out = warp(&pattern(50, 40), &m, 64, 48, 114, false);
        let h = out.as_raw().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        assert_eq!(h, 0x784f_7d47_727f_1696, "{h:#x}");
    }
}
