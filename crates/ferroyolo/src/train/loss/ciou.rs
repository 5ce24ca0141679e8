//! Complete IoU (CIoU) of two `xyxy` boxes: the forward value in f32 or f64, and its exact gradient
//! with respect to the first box.
//!
//! The arithmetic follows the reference's order of operations, including its asymmetric epsilon
//! placement: 1e-7 is added to both heights (not the widths), to the union and to the enclosing
//! diagonal. The aspect-ratio weight α is a constant for differentiation: the reference computes it
//! without gradient tracking, so only `v` (not `α`) carries a derivative.

use std::ops::{Add, Div, Mul, Sub};

/// The epsilon the reference's CIoU uses everywhere.
pub(super) const EPS: f64 = 1e-7;

/// `4 / π²`, the scale of the aspect-ratio term `v`.
const ASPECT_SCALE: f64 = 4.0 / (std::f64::consts::PI * std::f64::consts::PI);

/// The float operations the loss needs in the reference's own precision, so one body serves f32
/// (where rounding must follow the reference's f32 tensors) and f64 (tests, where accuracy is cheap).
pub(in crate::train::loss) trait Real:
    Copy
    + PartialOrd
    + Into<f64>
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    /// A constant, rounded to this type the way a Python scalar meets a tensor of this dtype.
    fn lit(x: f64) -> Self;
    fn atan(self) -> Self;
    fn exp(self) -> Self;
    fn ln_1p(self) -> Self;
}

impl Real for f32 {
    fn lit(x: f64) -> Self {
        x as f32
    }
    fn atan(self) -> Self {
        f32::atan(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln_1p(self) -> Self {
        f32::ln_1p(self)
    }
}

impl Real for f64 {
    fn lit(x: f64) -> Self {
        x
    }
    fn atan(self) -> Self {
        f64::atan(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln_1p(self) -> Self {
        f64::ln_1p(self)
    }
}

pub(in crate::train::loss) fn min<R: Real>(a: R, b: R) -> R {
    if b < a {
        b
    } else {
        a
    }
}

fn max<R: Real>(a: R, b: R) -> R {
    if b > a {
        b
    } else {
        a
    }
}

/// CIoU of boxes `b1` and `b2` (both `x1, y1, x2, y2`). Not clamped: it can be negative.
pub(super) fn ciou<R: Real>(b1: [R; 4], b2: [R; 4]) -> R {
    let eps = R::lit(EPS);
    let zero = R::lit(0.0);
    let (w1, h1) = (b1[2] - b1[0], b1[3] - b1[1] + eps);
    let (w2, h2) = (b2[2] - b2[0], b2[3] - b2[1] + eps);
    let iw = max(min(b1[2], b2[2]) - max(b1[0], b2[0]), zero);
    let ih = max(min(b1[3], b2[3]) - max(b1[1], b2[1]), zero);
    let inter = iw * ih;
    let union = w1 * h1 + w2 * h2 - inter + eps;
    let iou = inter / union;
    let cw = max(b1[2], b2[2]) - min(b1[0], b2[0]);
    let ch = max(b1[3], b2[3]) - min(b1[1], b2[1]);
    let c2 = cw * cw + ch * ch + eps;
    let dx = b2[0] + b2[2] - b1[0] - b1[2];
    let dy = b2[1] + b2[3] - b1[1] - b1[3];
    let rho2 = (dx * dx + dy * dy) / R::lit(4.0);
    let da = (w2 / h2).atan() - (w1 / h1).atan();
    let v = R::lit(ASPECT_SCALE) * (da * da);
    let alpha = v / (R::lit(1.0) - iou + v + eps);
    iou - (rho2 / c2 + v * alpha)
}

/// Derivative of `min(a, b)` with respect to `a`. At a tie the reference's autograd splits the
/// gradient evenly between both arguments.
fn dmin_da(a: f64, b: f64) -> f64 {
    if a < b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// Derivative of `max(a, b)` with respect to `a`, with the same even split at a tie.
fn dmax_da(a: f64, b: f64) -> f64 {
    dmin_da(b, a)
}

/// CIoU of `pred` against the constant box `target`, its gradient with respect to `pred`'s four
/// coordinates (`α` held constant, as in the reference), and the `α` used.
///
/// `frozen_alpha` replaces the `α` computed from the boxes. That is only for tests: the gradient is
/// the derivative of CIoU with `α` fixed, so finite differences must hold `α` at its value at the
/// evaluation point.
pub(super) fn ciou_grad(pred: [f64; 4], target: [f64; 4], frozen_alpha: Option<f64>) -> (f64, [f64; 4], f64) {
    let (p, t) = (pred, target);
    // Forward, keeping every intermediate the backward pass needs.
    let (w1, h1) = (p[2] - p[0], p[3] - p[1] + EPS);
    let (w2, h2) = (t[2] - t[0], t[3] - t[1] + EPS);
    let iw = p[2].min(t[2]) - p[0].max(t[0]);
    let ih = p[3].min(t[3]) - p[1].max(t[1]);
    let (iwc, ihc) = (iw.max(0.0), ih.max(0.0));
    let inter = iwc * ihc;
    let union = w1 * h1 + w2 * h2 - inter + EPS;
    let iou = inter / union;
    let cw = p[2].max(t[2]) - p[0].min(t[0]);
    let ch = p[3].max(t[3]) - p[1].min(t[1]);
    let c2 = cw * cw + ch * ch + EPS;
    let dx = t[0] + t[2] - p[0] - p[2];
    let dy = t[1] + t[3] - p[1] - p[3];
    let rho2 = (dx * dx + dy * dy) / 4.0;
    let r1 = w1 / h1;
    let da = (w2 / h2).atan() - r1.atan();
    let v = ASPECT_SCALE * da * da;
    let alpha = frozen_alpha.unwrap_or(v / (1.0 - iou + v + EPS));
    let value = iou - (rho2 / c2 + v * alpha);

    // Backward: value = iou − rho2/c2 − α·v.
    let mut g = [0.0f64; 4];
    let (mut g_w1, mut g_h1) = (0.0, 0.0);
    // Aspect term: v = k·(atan(w2/h2) − atan(w1/h1))².
    let g_r1 = alpha * 2.0 * ASPECT_SCALE * da / (1.0 + r1 * r1);
    g_w1 += g_r1 / h1;
    g_h1 -= g_r1 * r1 / h1;
    // Centre distance: rho2 = (dx² + dy²)/4 where dx, dy fall as the predicted centre moves right/down.
    let g_rho2 = -1.0 / c2;
    let (g_dx, g_dy) = (g_rho2 * dx / 2.0, g_rho2 * dy / 2.0);
    g[0] -= g_dx;
    g[2] -= g_dx;
    g[1] -= g_dy;
    g[3] -= g_dy;
    // Enclosing box diagonal.
    let g_c2 = rho2 / (c2 * c2);
    let (g_cw, g_ch) = (g_c2 * 2.0 * cw, g_c2 * 2.0 * ch);
    g[2] += g_cw * dmax_da(p[2], t[2]);
    g[0] -= g_cw * dmin_da(p[0], t[0]);
    g[3] += g_ch * dmax_da(p[3], t[3]);
    g[1] -= g_ch * dmin_da(p[1], t[1]);
    // IoU = inter / union, union = w1·h1 + w2·h2 − inter + eps.
    let g_union = -iou / union;
    let g_inter = 1.0 / union - g_union;
    g_w1 += g_union * h1;
    g_h1 += g_union * w1;
    // The clamp at zero passes the gradient at exactly zero, as the reference's clamp does.
    let g_iw = if iw >= 0.0 { g_inter * ihc } else { 0.0 };
    let g_ih = if ih >= 0.0 { g_inter * iwc } else { 0.0 };
    g[2] += g_iw * dmin_da(p[2], t[2]);
    g[0] -= g_iw * dmax_da(p[0], t[0]);
    g[3] += g_ih * dmin_da(p[3], t[3]);
    g[1] -= g_ih * dmax_da(p[1], t[1]);
    // Width and height of the predicted box.
    g[2] += g_w1;
    g[0] -= g_w1;
    g[3] += g_h1;
    g[1] -= g_h1;
    (value, g, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CIoU written out independently with `α` passed in, so central differences see the function
    /// the reference differentiates (α frozen at its value at the evaluation point).
    fn ciou_with_alpha(p: [f64; 4], t: [f64; 4], alpha: Option<f64>) -> (f64, f64) {
        let (w1, h1) = (p[2] - p[0], p[3] - p[1] + EPS);
        let (w2, h2) = (t[2] - t[0], t[3] - t[1] + EPS);
        let iw = (p[2].min(t[2]) - p[0].max(t[0])).max(0.0);
        let ih = (p[3].min(t[3]) - p[1].max(t[1])).max(0.0);
        let iou = iw * ih / (w1 * h1 + w2 * h2 - iw * ih + EPS);
        let cw = p[2].max(t[2]) - p[0].min(t[0]);
        let ch = p[3].max(t[3]) - p[1].min(t[1]);
        let cx = (t[0] + t[2]) / 2.0 - (p[0] + p[2]) / 2.0;
        let cy = (t[1] + t[3]) / 2.0 - (p[1] + p[3]) / 2.0;
        let v = 4.0 / std::f64::consts::PI.powi(2) * ((w2 / h2).atan() - (w1 / h1).atan()).powi(2);
        let alpha = alpha.unwrap_or(v / (1.0 - iou + v + EPS));
        (iou - (cx * cx + cy * cy) / (cw * cw + ch * ch + EPS) - alpha * v, alpha)
    }

    fn numeric_grad(p: [f64; 4], t: [f64; 4]) -> [f64; 4] {
        let alpha = ciou_with_alpha(p, t, None).1;
        let h = 1e-6;
        let mut g = [0.0; 4];
        for k in 0..4 {
            let (mut a, mut b) = (p, p);
            a[k] += h;
            b[k] -= h;
            g[k] = (ciou_with_alpha(a, t, Some(alpha)).0 - ciou_with_alpha(b, t, Some(alpha)).0) / (2.0 * h);
        }
        g
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cases: [([f64; 4], [f64; 4]); 5] = [
            ([1.0, 2.0, 5.0, 4.5], [1.5, 1.0, 4.0, 6.0]),   // partial overlap
            ([0.0, 0.0, 2.0, 1.0], [3.0, 2.0, 6.0, 7.0]),   // disjoint
            ([2.0, 2.0, 3.0, 3.0], [1.0, 0.5, 6.0, 7.0]),   // pred inside target
            ([-1.0, -2.0, 8.0, 9.0], [1.0, 0.5, 6.0, 7.0]), // target inside pred
            ([3.0, 1.0, 2.5, 4.0], [1.0, 0.5, 6.0, 7.0]),   // negative predicted width
        ];
        for (p, t) in cases {
            let (value, g, _) = ciou_grad(p, t, None);
            assert!((value - ciou(p, t)).abs() < 1e-12);
            assert!((value - ciou_with_alpha(p, t, None).0).abs() < 1e-12);
            let n = numeric_grad(p, t);
            for k in 0..4 {
                assert!((g[k] - n[k]).abs() < 1e-7 * (1.0 + n[k].abs()), "{p:?} {t:?} k={k}: {} vs {}", g[k], n[k]);
            }
        }
    }

    #[test]
    fn identical_boxes_have_ciou_one() {
        let b = [1.0f32, 2.0, 4.0, 8.0];
        assert!((ciou(b, b) - 1.0).abs() < 1e-6);
        assert!(ciou([0.0f32, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]) < 0.0);
    }
}
