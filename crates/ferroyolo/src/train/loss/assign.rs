//! The task-aligned assigner: which anchors learn which ground-truth box, and with what soft
//! classification target.
//!
//! Everything here is a constant for differentiation (the reference runs its assigner without
//! gradient tracking) and is computed in f32 in the reference's order of operations, because its
//! decisions (candidate tests, top-k ranking, arg-max ties) depend on the exact rounding.

use super::ciou::ciou;
use crate::model::HeadOutput;
use rayon::prelude::*;
use std::cmp::Ordering;

/// Alignment metric `t = s^0.5 · u^BETA` (score, CIoU). The square root is taken as such, as the
/// reference's power kernel does for an exponent of one half.
const BETA: f64 = 6.0;
/// Guards the rescaling of the metric against a zero maximum.
const NORM_EPS: f32 = 1e-9;
/// Margin by which an anchor centre must lie inside a ground-truth box to be a candidate.
const INSIDE_EPS: f32 = 1e-9;

/// One ground-truth box of one image, as the reference pads them.
#[derive(Clone, Copy, Debug)]
pub(super) struct GtBox {
    pub class: usize,
    /// `x1, y1, x2, y2` in input pixels.
    pub xyxy: [f32; 4],
    /// False for boxes whose coordinates sum to ≤ 0: the reference treats those as padding.
    pub valid: bool,
}

/// How many anchors each ground truth may claim.
#[derive(Clone, Copy, Debug)]
pub(super) struct AssignerSpec {
    /// Candidates kept per ground truth by alignment metric.
    pub topk: usize,
    /// After conflicts are resolved, positives kept per ground truth (only applied when it differs
    /// from `topk`, as in the reference).
    pub topk2: usize,
}

/// The assignment of one head output: per `(image, anchor)`, row-major by image.
#[derive(Clone, Debug, Default)]
pub(super) struct Assignment {
    /// Foreground flag.
    pub fg: Vec<bool>,
    /// Soft target score in the assigned class's slot (0 for background; may be 0 for foreground).
    pub score: Vec<f32>,
    /// Assigned class (meaningful for foreground only).
    pub class: Vec<usize>,
    /// Assigned box, `xyxy` input pixels (meaningful for foreground only).
    pub target_xyxy: Vec<[f32; 4]>,
}

impl Assignment {
    /// The reference's `target_scores_sum`: the sum of all soft targets, at least 1.
    pub fn score_sum(&self) -> f64 {
        self.score.iter().map(|&s| s as f64).sum::<f64>().max(1.0)
    }
}

/// Runs the assigner on every image of `head` (in parallel), `gts[n]` holding image `n`'s boxes in
/// the order the targets listed them.
pub(super) fn assign(head: &HeadOutput, gts: &[Vec<GtBox>], spec: AssignerSpec, stride_val: f32) -> Assignment {
    let a = head.anchors;
    let per_image: Vec<Assignment> =
        (0..head.batch).into_par_iter().map(|n| assign_image(head, n, &gts[n], spec, stride_val)).collect();
    let mut out = Assignment {
        fg: Vec::with_capacity(head.batch * a),
        score: Vec::with_capacity(head.batch * a),
        class: Vec::with_capacity(head.batch * a),
        target_xyxy: Vec::with_capacity(head.batch * a),
    };
    for img in per_image {
        out.fg.extend(img.fg);
        out.score.extend(img.score);
        out.class.extend(img.class);
        out.target_xyxy.extend(img.target_xyxy);
    }
    out
}

/// The reference's candidate region: the box with any side shorter than `stride_val` widened to
/// `stride_val` about its centre, after a round trip through centre/size form that rounds even
/// unwidened boxes.
fn candidate_region(b: [f32; 4], stride_val: f32) -> [f32; 4] {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let (w, h) = (if w < stride_val { stride_val } else { w }, if h < stride_val { stride_val } else { h });
    let (hw, hh) = (w / 2.0, h / 2.0);
    [cx - hw, cy - hh, cx + hw, cy + hh]
}

/// Indices of the `k` largest `values`, ties broken by lower index (a total order, so the result is
/// deterministic). The reference leaves tie order to its sort implementation (CPU and CUDA differ).
/// Ties occur in practice only among zero metrics: when a ground truth has fewer than `k` candidates
/// with a positive metric, zero-metric anchors fill its list, and those that are candidates (CIoU
/// clamped to 0) become positives with a zero soft target. They add nothing to the loss unless they
/// collide with another ground truth's positive and so trigger the conflict resolution.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let order = |&i: &usize, &j: &usize| values[j].partial_cmp(&values[i]).unwrap_or(Ordering::Equal).then(i.cmp(&j));
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k < idx.len() {
        if k == 0 {
            return Vec::new();
        }
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx
}

/// Index of the first maximum of `values` (the reference's arg-max keeps the first of equal values).
fn first_argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn assign_image(head: &HeadOutput, n: usize, gts: &[GtBox], spec: AssignerSpec, stride_val: f32) -> Assignment {
    let na = head.anchors;
    let g_count = gts.len();
    let mut out =
        Assignment { fg: vec![false; na], score: vec![0.0; na], class: vec![0; na], target_xyxy: vec![[0.0; 4]; na] };
    if g_count == 0 {
        return out;
    }

    // Alignment metric and CIoU of every (ground truth, anchor) candidate pair; zero elsewhere.
    let mut metric = vec![0.0f32; g_count * na];
    let mut overlap = vec![0.0f32; g_count * na];
    let mut candidate = vec![false; g_count * na];
    for (g, gt) in gts.iter().enumerate() {
        if !gt.valid {
            continue;
        }
        let region = candidate_region(gt.xyxy, stride_val);
        for a in 0..na {
            let s = head.anchor_strides[a];
            let (ax, ay) = (head.anchor_points[2 * a] * s, head.anchor_points[2 * a + 1] * s);
            let inside = ax - region[0] > INSIDE_EPS
                && ay - region[1] > INSIDE_EPS
                && region[2] - ax > INSIDE_EPS
                && region[3] - ay > INSIDE_EPS;
            if !inside {
                continue;
            }
            let u = ciou(gt.xyxy, head.xyxy(n, a)).max(0.0);
            let score = sigmoid(head.logits[(n * head.nc + gt.class) * na + a]);
            candidate[g * na + a] = true;
            overlap[g * na + a] = u;
            metric[g * na + a] = score.sqrt() * (u as f64).powf(BETA) as f32;
        }
    }

    // Each ground truth claims its top-k anchors by metric, keeping those that are candidates.
    let mut pos = vec![false; g_count * na];
    for (g, gt) in gts.iter().enumerate() {
        if gt.valid {
            for a in top_k(&metric[g * na..][..na], spec.topk) {
                pos[g * na + a] = candidate[g * na + a];
            }
        }
    }

    // An anchor claimed more than once goes to the ground truth it overlaps most: the arg-max runs
    // over all ground truths, claimants or not, so a mere candidate can win it.
    for a in 0..na {
        if (0..g_count).filter(|&g| pos[g * na + a]).count() > 1 {
            let best = first_argmax((0..g_count).map(|g| overlap[g * na + a]));
            for g in 0..g_count {
                pos[g * na + a] = g == best;
            }
        }
    }

    // One-to-one branch: each ground truth keeps only its best positives.
    if spec.topk2 != spec.topk {
        let mut masked = vec![0.0f32; na];
        for g in 0..g_count {
            for a in 0..na {
                masked[a] = if pos[g * na + a] { metric[g * na + a] } else { 0.0 };
            }
            let mut keep = vec![false; na];
            for a in top_k(&masked, spec.topk2) {
                keep[a] = true;
            }
            for a in 0..na {
                pos[g * na + a] &= keep[a];
            }
        }
    }

    // Soft targets: each ground truth's metrics rescaled so their maximum equals its best CIoU.
    let mut max_metric = vec![0.0f32; g_count];
    let mut max_overlap = vec![0.0f32; g_count];
    for g in 0..g_count {
        for a in 0..na {
            if pos[g * na + a] {
                max_metric[g] = max_metric[g].max(metric[g * na + a]);
                max_overlap[g] = max_overlap[g].max(overlap[g * na + a]);
            }
        }
    }
    for a in 0..na {
        if let Some(g) = (0..g_count).find(|&g| pos[g * na + a]) {
            out.fg[a] = true;
            out.score[a] = metric[g * na + a] * max_overlap[g] / (max_metric[g] + NORM_EPS);
            out.class[a] = gts[g].class;
            out.target_xyxy[a] = gts[g].xyxy;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        let v = [0.0, 3.0, 1.0, 3.0, 0.0, 2.0];
        let mut t = top_k(&v, 3);
        t.sort();
        assert_eq!(t, vec![1, 3, 5]);
        let mut t = top_k(&v, 5);
        t.sort();
        assert_eq!(t, vec![0, 1, 2, 3, 5]);
        assert_eq!(top_k(&v, 10).len(), 6);
        assert_eq!(top_k(&[0.0, 0.0], 1), vec![0]);
    }

    #[test]
    fn small_boxes_are_widened_for_candidacy() {
        let r = candidate_region([10.0, 10.0, 14.0, 40.0], 16.0);
        assert_eq!(r, [4.0, 10.0, 20.0, 40.0]);
    }
}
