//! The YOLO26 end-to-end detection loss and its gradient with respect to the head outputs.
//!
//! YOLO26 trains two heads on the same features: a one-to-many head (each ground truth teaches up
//! to 10 anchors) and a one-to-one head (one anchor per ground truth, the head used for NMS-free
//! inference). Each head gets the same per-branch loss, with its own assigner settings:
//!
//! 1. A task-aligned assigner picks positive anchors and soft class targets from the current
//!    predictions. It is a constant for differentiation.
//! 2. Class loss: binary cross-entropy with logits against the soft targets, over every anchor and
//!    class, divided by the sum of the soft targets (at least 1).
//! 3. Box loss: `1 − CIoU` of each positive anchor's box, weighted by its soft target.
//! 4. The "DFL" slot, which for YOLO26 (one bin per side) is an L1 loss between the predicted and
//!    target side distances, both scaled by stride and normalised by the image width (left,
//!    right) or height (top, bottom), averaged over the 4 sides and weighted like the box loss.
//!
//! The three terms are multiplied by their gains (7.5, 0.5, 1.5 by default). The total is
//! `w·L_o2m + (1 − w)·L_o2o` with each branch's `L` = (box + cls + l1) × batch size, and `w` falling
//! from 0.8 to 0.1 over training ([`o2m_weight`]).
//!
//! Gradients are the exact derivative of that total with the reference's detachments: the
//! assignment and soft targets are constants, and so is CIoU's aspect-ratio weight `α`.
//!
//! Precision: the assigner runs in f32 in the reference's order of operations, so its discrete
//! decisions follow the reference's rounding. The box and L1 terms (few anchors) run in f64. The
//! class term's values follow the reference's f32 formula, whose rounding measurably lowers the
//! loss of a confident model (see `bce_with_logits`); sums are accumulated in f64.

mod assign;
mod ciou;
#[cfg(test)]
mod tests;

use crate::model::HeadOutput;
use assign::{AssignerSpec, Assignment, GtBox};
use ciou::Real;
use rayon::prelude::*;

/// Loss gains and the current one-to-many branch weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// Gain of the CIoU box loss (reference `box`, 7.5).
    pub box_gain: f32,
    /// Gain of the classification loss (reference `cls`, 0.5).
    pub cls_gain: f32,
    /// Gain of the L1 side-distance loss (reference `dfl`, 1.5).
    pub dfl_gain: f32,
    /// Weight of the one-to-many branch; the one-to-one branch gets `1 − o2m_weight`. See
    /// [`o2m_weight`] for the schedule (0.8 at the start of training).
    pub o2m_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { box_gain: 7.5, cls_gain: 0.5, dfl_gain: 1.5, o2m_weight: O2M_START }
    }
}

/// A ground-truth box of one image in the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Image within the batch.
    pub batch_index: usize,
    /// Class id, `< nc`.
    pub class: usize,
    /// Centre x, centre y, width, height, normalised to the input image (0..1).
    pub cxcywh: [f32; 4],
}

/// The loss items of one branch: gain-weighted, not multiplied by the batch size (what the reference
/// logs as `box_loss`, `cls_loss`, `l1_loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BranchLoss {
    pub box_loss: f32,
    pub cls_loss: f32,
    pub l1_loss: f32,
}

impl BranchLoss {
    /// `box + cls + l1`.
    pub fn sum(&self) -> f32 {
        self.box_loss + self.cls_loss + self.l1_loss
    }
}

/// The end-to-end loss of a batch and its gradient with respect to both heads' raw outputs.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// `w·L_o2m + (1 − w)·L_o2o`, each `L = (box + cls + l1)·batch` (the reference's total, the
    /// quantity whose gradient is returned).
    pub total: f32,
    /// Loss items of the one-to-one branch (the ones the reference logs).
    pub one2one: BranchLoss,
    /// Loss items of the one-to-many branch.
    pub one2many: BranchLoss,
    /// `∂total/∂boxes` of the one-to-many head, laid out like [`HeadOutput::boxes`].
    pub grad_o2m_boxes: Vec<f32>,
    /// `∂total/∂logits` of the one-to-many head, laid out like [`HeadOutput::logits`].
    pub grad_o2m_logits: Vec<f32>,
    /// `∂total/∂boxes` of the one-to-one head.
    pub grad_o2o_boxes: Vec<f32>,
    /// `∂total/∂logits` of the one-to-one head.
    pub grad_o2o_logits: Vec<f32>,
}

/// One-to-many weight before the first epoch ends.
const O2M_START: f32 = 0.8;
/// One-to-many weight reached at the last epoch.
const O2M_END: f32 = 0.1;

/// The one-to-many assigner: 10 anchors per ground truth.
const ONE_TO_MANY: AssignerSpec = AssignerSpec { topk: 10, topk2: 10 };
/// The one-to-one assigner: the best of 7 candidates, one anchor per ground truth.
const ONE_TO_ONE: AssignerSpec = AssignerSpec { topk: 7, topk2: 1 };

/// The branch-weight schedule: the one-to-many weight for the epoch after `epochs_done` completed
/// epochs of `total_epochs`. It falls linearly from 0.8 (first epoch) to 0.1 (last epoch) and stays
/// there; the one-to-one branch gets the rest.
pub fn o2m_weight(epochs_done: usize, total_epochs: usize) -> f32 {
    let span = total_epochs.saturating_sub(1).max(1) as f64;
    let remaining = (1.0 - epochs_done as f64 / span).max(0.0);
    // The reference computes this in f64 and applies it to f32 tensors.
    (remaining * (O2M_START as f64 - O2M_END as f64) + O2M_END as f64) as f32
}

/// The end-to-end loss of one batch: both heads' outputs (from the same training-mode forward),
/// the batch's ground truths, and the network input size `(height, width)` in pixels.
///
/// Targets of one image are taken in the order given (the reference's order when the targets are
/// sorted by image, as its data loader produces them).
///
/// # Panics
/// If the heads' shapes are inconsistent, or a target names an image or class out of range.
pub fn e2e_loss(
    o2m: &HeadOutput,
    o2o: &HeadOutput,
    targets: &[Target],
    image_hw: (usize, usize),
    cfg: &LossConfig,
) -> LossOutput {
    check_head(o2m);
    check_head(o2o);
    assert!(
        (o2m.batch, o2m.nc, o2m.anchors) == (o2o.batch, o2o.nc, o2o.anchors),
        "the two heads disagree on batch, classes or anchors"
    );
    let gts = ground_truths(targets, o2m.batch, o2m.nc, image_hw);
    let stride_val = small_target_side(&o2m.anchor_strides);
    let batch = o2m.batch as f64;
    let w_o2m = cfg.o2m_weight as f64;
    let w_o2o = (1.0 - cfg.o2m_weight).max(0.0) as f64;

    let run = |head: &HeadOutput, spec: AssignerSpec, weight: f64| {
        let assignment = assign::assign(head, &gts, spec, stride_val);
        branch_terms(head, &head.boxes, &head.logits, &assignment, image_hw, cfg, weight * batch, None)
    };
    let (many, one) = rayon::join(|| run(o2m, ONE_TO_MANY, w_o2m), || run(o2o, ONE_TO_ONE, w_o2o));
    let total = w_o2m * batch * many.values.iter().sum::<f64>() + w_o2o * batch * one.values.iter().sum::<f64>();
    LossOutput {
        total: total as f32,
        one2one: one.items(),
        one2many: many.items(),
        grad_o2m_boxes: many.grad_boxes,
        grad_o2m_logits: many.grad_logits,
        grad_o2o_boxes: one.grad_boxes,
        grad_o2o_logits: one.grad_logits,
    }
}

fn check_head(h: &HeadOutput) {
    assert_eq!(h.boxes.len(), h.batch * 4 * h.anchors, "boxes must be (batch, 4, anchors)");
    assert_eq!(h.logits.len(), h.batch * h.nc * h.anchors, "logits must be (batch, nc, anchors)");
    assert_eq!(h.anchor_points.len(), 2 * h.anchors, "anchor_points must be (anchors, 2)");
    assert_eq!(h.anchor_strides.len(), h.anchors, "anchor_strides must be (anchors,)");
}

/// Per-image ground truths in input pixels, converted with the reference's f32 arithmetic (scale the
/// centre and size, then subtract and add half the size).
fn ground_truths(targets: &[Target], batch: usize, nc: usize, image_hw: (usize, usize)) -> Vec<Vec<GtBox>> {
    let (h, w) = (image_hw.0 as f32, image_hw.1 as f32);
    let mut gts = vec![Vec::new(); batch];
    for t in targets {
        assert!(t.batch_index < batch, "target image {} outside a batch of {batch}", t.batch_index);
        assert!(t.class < nc, "target class {} outside {nc} classes", t.class);
        let [cx, cy, bw, bh] = t.cxcywh;
        let (cx, cy, hw, hh) = (cx * w, cy * h, bw * w / 2.0, bh * h / 2.0);
        let xyxy = [cx - hw, cy - hh, cx + hw, cy + hh];
        // The reference marks padding by a non-positive coordinate sum, so such a box never trains.
        let valid = xyxy[0] + xyxy[1] + xyxy[2] + xyxy[3] > 0.0;
        gts[t.batch_index].push(GtBox { class: t.class, xyxy, valid });
    }
    gts
}

/// The side below which a ground truth is widened for candidate selection: the second level's
/// stride (16 px for YOLO26), or the only level's.
fn small_target_side(anchor_strides: &[f32]) -> f32 {
    let mut levels: Vec<f32> = Vec::new();
    for &s in anchor_strides {
        if levels.last() != Some(&s) {
            levels.push(s);
        }
    }
    levels.get(1).or(levels.first()).copied().unwrap_or(0.0)
}

/// Binary cross-entropy of logit `x` against target `t` and its derivative `σ(x) − t`, in the
/// reference's form and precision: `(1 − t)·x − log σ(x)` with `log σ(x) = min(x, 0) − ln(1 + e^−|x|)`.
///
/// In f32 the value cancels badly for confident negatives (x = −15 gives exactly 0 rather than
/// 3e-7); over hundreds of thousands of background scores that lowers a well-trained model's class
/// loss by a few 1e-4 relative. It is kept so the reported loss matches the reference's; the
/// derivative does not suffer from it.
fn bce_with_logits<T: Real>(x: T, t: T) -> (T, T) {
    let (zero, one) = (T::lit(0.0), T::lit(1.0));
    let negative = x < zero;
    let e = (if negative { x } else { zero - x }).exp();
    let log_sigmoid = ciou::min(x, zero) - e.ln_1p();
    let sigmoid = if negative { e / (one + e) } else { one / (one + e) };
    ((one - t) * x - log_sigmoid, sigmoid - t)
}

/// One branch's loss values and gradient.
struct BranchTerms {
    /// Gain-weighted box, class and L1 losses (not multiplied by batch).
    values: [f64; 3],
    grad_boxes: Vec<f32>,
    grad_logits: Vec<f32>,
    /// CIoU's `α` of each foreground anchor, in (image, anchor) order: the finite-difference test
    /// freezes them, as the reference's autograd does.
    #[cfg_attr(not(test), allow(dead_code))]
    alphas: Vec<f64>,
}

impl BranchTerms {
    fn items(&self) -> BranchLoss {
        BranchLoss { box_loss: self.values[0] as f32, cls_loss: self.values[1] as f32, l1_loss: self.values[2] as f32 }
    }
}

/// The differentiable part of one branch's loss for a fixed assignment. `boxes` and `logits` are
/// laid out like `head`'s (whose anchors and sizes are used); they are separate so tests can
/// evaluate the same function in f64 at perturbed inputs. Gradients are scaled by `grad_scale`
/// (branch weight × batch). `frozen_alphas` (tests only) replaces CIoU's `α` per foreground
/// anchor, so the value is the function whose derivative the gradient is.
#[allow(clippy::too_many_arguments)]
fn branch_terms<T: Real>(
    head: &HeadOutput,
    boxes: &[T],
    logits: &[T],
    assignment: &Assignment,
    image_hw: (usize, usize),
    cfg: &LossConfig,
    grad_scale: f64,
    frozen_alphas: Option<&[f64]>,
) -> BranchTerms {
    let (na, nc) = (head.anchors, head.nc);
    let score_sum = assignment.score_sum();

    // Class loss over every (image, class, anchor), one row of anchors per task. Row sums are added
    // in order afterwards so the result does not depend on the thread count.
    let cls_scale = grad_scale * cfg.cls_gain as f64 / score_sum;
    let mut grad_logits = vec![0.0f32; logits.len()];
    let row_sums: Vec<f64> = grad_logits
        .par_chunks_mut(na.max(1))
        .zip(logits.par_chunks(na.max(1)))
        .enumerate()
        .map(|(row, (grad, x))| {
            let (n, c) = (row / nc, row % nc);
            let mut sum = 0.0f64;
            for (a, (g, &x)) in grad.iter_mut().zip(x).enumerate() {
                let i = n * na + a;
                let t = if assignment.fg[i] && assignment.class[i] == c { assignment.score[i] } else { 0.0 };
                let (value, slope) = bce_with_logits(x, T::lit(t as f64));
                sum += value.into();
                *g = (slope.into() * cls_scale) as f32;
            }
            sum
        })
        .collect();
    let bce_sum: f64 = row_sums.iter().sum();

    // Box (1 − CIoU) and L1 losses over the foreground anchors, in grid units.
    let (img_h, img_w) = (image_hw.0 as f64, image_hw.1 as f64);
    let side_norm = [img_w, img_h, img_w, img_h];
    let box_scale = grad_scale * cfg.box_gain as f64 / score_sum;
    let l1_scale = grad_scale * cfg.dfl_gain as f64 / score_sum;
    let mut grad_boxes = vec![0.0f32; boxes.len()];
    let (mut ciou_sum, mut l1_sum) = (0.0f64, 0.0f64);
    let mut alphas = Vec::new();
    for n in 0..head.batch {
        for a in 0..na {
            let i = n * na + a;
            if !assignment.fg[i] {
                continue;
            }
            let weight = assignment.score[i] as f64;
            let s = head.anchor_strides[a];
            let (ax, ay) = (head.anchor_points[2 * a], head.anchor_points[2 * a + 1]);
            let at = |k: usize| (n * 4 + k) * na + a;
            let raw: [f64; 4] = std::array::from_fn(|k| boxes[at(k)].into());
            // The target box in grid units and its side distances, rounded as the reference's f32.
            let t = assignment.target_xyxy[i].map(|v| v / s);
            let target_ltrb = [ax - t[0], ay - t[1], t[2] - ax, t[3] - ay];

            let (ax, ay) = (ax as f64, ay as f64);
            let pred = [ax - raw[0], ay - raw[1], ax + raw[2], ay + raw[3]];
            let frozen = frozen_alphas.map(|f| f[alphas.len()]);
            let (ciou, d, alpha) = ciou::ciou_grad(pred, t.map(f64::from), frozen);
            alphas.push(alpha);
            ciou_sum += (1.0 - ciou) * weight;
            // ∂(1 − CIoU)/∂(l, t, r, b): x1 = ax − l and y1 = ay − t fall as l, t grow, while
            // x2 = ax + r and y2 = ay + b rise with r, b.
            let d_raw = [d[0], d[1], -d[2], -d[3]];

            let s = s as f64;
            let mut l1 = 0.0;
            for k in 0..4 {
                let diff = (raw[k] - target_ltrb[k] as f64) * s / side_norm[k];
                l1 += diff.abs();
                // |·| has slope 0 at 0, as the reference's autograd takes it (sign(0) = 0).
                let sign = if diff > 0.0 {
                    1.0
                } else if diff < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                let g = weight * (box_scale * d_raw[k] + l1_scale * sign * s / side_norm[k] / 4.0);
                grad_boxes[at(k)] += g as f32;
            }
            l1_sum += l1 / 4.0 * weight;
        }
    }

    BranchTerms {
        values: [
            cfg.box_gain as f64 * ciou_sum / score_sum,
            cfg.cls_gain as f64 * bce_sum / score_sum,
            cfg.dfl_gain as f64 * l1_sum / score_sum,
        ],
        grad_boxes,
        grad_logits,
        alphas,
    }
}
