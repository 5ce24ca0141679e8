//! Detection metrics computed the way the reference computes them: greedy matching at ten IoU
//! thresholds, 101-point trapezoidal AP over the precision envelope, and precision / recall taken
//! at the confidence that maximises the smoothed class-mean F1.
//!
//! The arithmetic follows the reference's types so that results agree to the last digits that
//! matter: IoU and thresholds in `f32` (as its tensors), curves in `f64` (as its NumPy arrays),
//! `np.interp` reproduced exactly, and NumPy's pairwise summation for means.

/// The IoU thresholds 0.50, 0.55 ... 0.95 as `f32` (the reference's `torch.linspace` values).
pub const IOU_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];
/// Number of IoU thresholds.
pub const NIOU: usize = IOU_THRESHOLDS.len();
/// Points of the confidence / recall grids of the curves.
pub const CURVE_POINTS: usize = 1000;

/// IoU of two `xyxy` boxes with the reference's `1e-7` in the denominator (so empty boxes give 0).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    crate::predict::postprocess::box_iou_eps(a, b, 1e-7)
}

/// IoU of every (ground truth, prediction) pair, ground-truth major: `iou[g * preds.len() + p]`.
pub fn iou_matrix(gts: &[[f32; 4]], preds: &[[f32; 4]]) -> Vec<f32> {
    gts.iter().flat_map(|g| preds.iter().map(move |p| box_iou(g, p))).collect()
}

/// Which predictions are true positives at each IoU threshold.
///
/// Predictions must come in descending confidence. At each threshold independently, each
/// prediction in turn takes the still-unclaimed ground truth of its class with the highest IoU
/// (the first one on ties); it is a true positive, and claims that ground truth, when the IoU
/// reaches the threshold. `iou` is ground-truth major, as [`iou_matrix`] builds it.
pub fn match_predictions(pred_cls: &[usize], gt_cls: &[usize], iou: &[f32]) -> Vec<[bool; NIOU]> {
    let (m, n) = (gt_cls.len(), pred_cls.len());
    assert_eq!(iou.len(), m * n, "IoU matrix must be gt x pred");
    let mut correct = vec![[false; NIOU]; n];
    let mut claimed = vec![[false; NIOU]; m];
    let same_class_iou = |g: usize, p: usize| if gt_cls[g] == pred_cls[p] { iou[g * n + p] } else { 0.0 };
    for (p, row) in correct.iter_mut().enumerate() {
        if !(0..m).any(|g| same_class_iou(g, p) >= IOU_THRESHOLDS[0]) {
            continue;
        }
        for (t, &thr) in IOU_THRESHOLDS.iter().enumerate() {
            let (mut best, mut best_iou) = (0, f32::NEG_INFINITY);
            for (g, c) in claimed.iter().enumerate() {
                let v = if c[t] { 0.0 } else { same_class_iou(g, p) };
                if v > best_iou {
                    (best, best_iou) = (g, v);
                }
            }
            if best_iou >= thr {
                row[t] = true;
                claimed[best][t] = true;
            }
        }
    }
    correct
}

/// `np.interp(x, xp, fp, left, right)` for increasing `xp` (ties allowed), bit for bit: the
/// segment is the last one starting at or before `x`, and an exact hit returns its value.
pub fn np_interp(x: f64, xp: &[f64], fp: &[f64], left: f64, right: f64) -> f64 {
    let n = xp.len();
    assert!(n > 0 && n == fp.len(), "np_interp needs matching, non-empty xp and fp");
    if x > xp[n - 1] {
        return right;
    }
    if x < xp[0] {
        return left;
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut y = slope * (x - xp[j]) + fp[j];
    if y.is_nan() {
        y = slope * (x - xp[j + 1]) + fp[j + 1];
        if y.is_nan() && fp[j] == fp[j + 1] {
            y = fp[j];
        }
    }
    y
}

/// NumPy's pairwise summation (what `np.sum` / `np.mean` do on a 1-D `f64` array): blocks of up
/// to 128 summed with eight interleaved accumulators, larger arrays split in halves.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= 128 {
        let mut r = [0f64; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for k in 0..8 {
                r[k] += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[full..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// Mean as `np.mean` computes it (0 for an empty slice, where NumPy would give NaN).
pub fn np_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        0.0
    } else {
        pairwise_sum(a) / a.len() as f64
    }
}

/// `np.linspace(0, 1, n)`: `i * (1 / (n - 1))`, the last point exactly 1.
pub fn linspace01(n: usize) -> Vec<f64> {
    let step = 1.0 / (n - 1) as f64;
    (0..n).map(|i| if i + 1 == n { 1.0 } else { i as f64 * step }).collect()
}

/// Box filter over a fraction `f` of the length (odd width, edges padded with the end values),
/// the reference's smoothing of the mean F1 curve.
pub fn smooth(y: &[f64], f: f64) -> Vec<f64> {
    if y.is_empty() {
        return Vec::new();
    }
    let nf = ((y.len() as f64 * f * 2.0).round_ties_even() as usize) / 2 + 1;
    let half = nf / 2;
    let mut padded = Vec::with_capacity(y.len() + 2 * half);
    padded.extend(std::iter::repeat_n(y[0], half));
    padded.extend_from_slice(y);
    padded.extend(std::iter::repeat_n(y[y.len() - 1], half));
    let k = 1.0 / nf as f64;
    padded.windows(nf).map(|w| w.iter().fold(0.0, |s, &v| s + v * k)).collect()
}

/// Average precision from a recall and precision curve (in descending confidence order):
/// sentinels added, precision made monotone (running max from the right), then the trapezoid
/// integral of that envelope sampled at 101 recall points. Returns `(ap, envelope, recall)`,
/// the last two with their sentinels.
pub fn compute_ap(recall: &[f64], precision: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let mut mrec = Vec::with_capacity(recall.len() + 3);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(recall.last().copied().unwrap_or(1.0));
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(precision.len() + 3);
    mpre.push(1.0);
    mpre.extend_from_slice(precision);
    mpre.extend([0.0, 0.0]);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    let x = linspace01(101);
    let y: Vec<f64> = x.iter().map(|&xi| np_interp(xi, &mrec, &mpre, mpre[0], mpre[mpre.len() - 1])).collect();
    let parts: Vec<f64> = (0..x.len() - 1).map(|i| (x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0).collect();
    (pairwise_sum(&parts), mpre, mrec)
}

/// Per-prediction and per-target records gathered over a validation run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// True-positive flags of each prediction at each IoU threshold.
    pub tp: Vec<[bool; NIOU]>,
    pub conf: Vec<f32>,
    pub pred_cls: Vec<usize>,
    /// Class of every ground-truth box.
    pub target_cls: Vec<usize>,
    /// For each image, the distinct classes it contains (to count images per class).
    pub target_img: Vec<usize>,
}

impl Stats {
    /// Adds one image: its predictions (descending confidence, boxes in the same pixel space as
    /// the ground truth) and ground-truth boxes. Returns the image's true-positive flags.
    pub fn add_image(&mut self, preds: &[([f32; 4], f32, usize)], gts: &[([f32; 4], usize)]) -> Vec<[bool; NIOU]> {
        let gt_cls: Vec<usize> = gts.iter().map(|g| g.1).collect();
        let pred_cls: Vec<usize> = preds.iter().map(|p| p.2).collect();
        let tp = if gts.is_empty() || preds.is_empty() {
            vec![[false; NIOU]; preds.len()]
        } else {
            let gt_boxes: Vec<[f32; 4]> = gts.iter().map(|g| g.0).collect();
            let pred_boxes: Vec<[f32; 4]> = preds.iter().map(|p| p.0).collect();
            match_predictions(&pred_cls, &gt_cls, &iou_matrix(&gt_boxes, &pred_boxes))
        };
        self.tp.extend_from_slice(&tp);
        self.conf.extend(preds.iter().map(|p| p.1));
        self.pred_cls.extend_from_slice(&pred_cls);
        let mut distinct = gt_cls.clone();
        distinct.sort_unstable();
        distinct.dedup();
        self.target_cls.extend_from_slice(&gt_cls);
        self.target_img.extend(distinct);
        tp
    }
}

/// AP and the P / R / F1 curves of every class that has ground truth.
#[derive(Clone, Debug, Default)]
pub struct ApPerClass {
    /// Classes with at least one ground-truth box, ascending.
    pub classes: Vec<usize>,
    /// Ground-truth count of each of those classes.
    pub n_targets: Vec<usize>,
    /// Precision, recall and F1 of each class at the chosen confidence.
    pub p: Vec<f64>,
    pub r: Vec<f64>,
    pub f1: Vec<f64>,
    /// AP at each IoU threshold.
    pub ap: Vec<[f64; NIOU]>,
    /// The confidence (and recall) grid of the curves: 0..1 in [`CURVE_POINTS`] steps.
    pub px: Vec<f64>,
    /// Precision, recall and F1 against confidence, one curve per class.
    pub p_curve: Vec<Vec<f64>>,
    pub r_curve: Vec<Vec<f64>>,
    pub f1_curve: Vec<Vec<f64>>,
    /// Precision envelope against recall at IoU 0.5, one curve per class.
    pub prec_values: Vec<Vec<f64>>,
    /// Index into `px` of the confidence maximising the smoothed mean F1.
    pub best: usize,
}

/// The reference's `ap_per_class`: sorts predictions by confidence, builds each class's
/// cumulative precision / recall, its AP at every threshold, and samples P, R (IoU 0.5) on a
/// confidence grid; P, R and F1 are read at the grid point where the class-mean F1, box-smoothed
/// over 10 % of the grid, is highest.
pub fn ap_per_class(stats: &Stats) -> ApPerClass {
    let mut order: Vec<usize> = (0..stats.conf.len()).collect();
    // Stable, so equal confidences keep the order they were produced in.
    order.sort_by(|&a, &b| stats.conf[b].total_cmp(&stats.conf[a]));
    let tp: Vec<[bool; NIOU]> = order.iter().map(|&i| stats.tp[i]).collect();
    let conf: Vec<f32> = order.iter().map(|&i| stats.conf[i]).collect();
    let pred_cls: Vec<usize> = order.iter().map(|&i| stats.pred_cls[i]).collect();

    let mut classes = stats.target_cls.clone();
    classes.sort_unstable();
    classes.dedup();
    let n_targets: Vec<usize> = classes.iter().map(|&c| stats.target_cls.iter().filter(|&&t| t == c).count()).collect();
    let px = linspace01(CURVE_POINTS);
    let nc = classes.len();
    let mut out = ApPerClass {
        classes,
        n_targets,
        ap: vec![[0.0; NIOU]; nc],
        p_curve: vec![vec![0.0; CURVE_POINTS]; nc],
        r_curve: vec![vec![0.0; CURVE_POINTS]; nc],
        prec_values: Vec::with_capacity(nc),
        px,
        ..Default::default()
    };
    for ci in 0..nc {
        let c = out.classes[ci];
        let idx: Vec<usize> = (0..pred_cls.len()).filter(|&i| pred_cls[i] == c).collect();
        let n_l = out.n_targets[ci];
        if idx.is_empty() || n_l == 0 {
            out.prec_values.push(vec![0.0; CURVE_POINTS]);
            continue;
        }
        // Cumulative TP / FP per threshold.
        let n_p = idx.len();
        let mut recall = vec![[0f64; NIOU]; n_p];
        let mut precision = vec![[0f64; NIOU]; n_p];
        let mut tpc = [0u64; NIOU];
        for (k, &i) in idx.iter().enumerate() {
            for t in 0..NIOU {
                tpc[t] += tp[i][t] as u64;
                let fpc = (k as u64 + 1) - tpc[t];
                recall[k][t] = tpc[t] as f64 / (n_l as f64 + 1e-16);
                precision[k][t] = tpc[t] as f64 / (tpc[t] + fpc) as f64;
            }
        }
        // Curves against confidence: x decreasing, so interpolate on negated values.
        let neg_conf: Vec<f64> = idx.iter().map(|&i| -(conf[i] as f64)).collect();
        let r0: Vec<f64> = recall.iter().map(|r| r[0]).collect();
        let p0: Vec<f64> = precision.iter().map(|p| p[0]).collect();
        let (r_last, p_last) = (r0[n_p - 1], p0[n_p - 1]);
        for (k, &x) in out.px.iter().enumerate() {
            out.r_curve[ci][k] = np_interp(-x, &neg_conf, &r0, 0.0, r_last);
            out.p_curve[ci][k] = np_interp(-x, &neg_conf, &p0, 1.0, p_last);
        }
        for t in 0..NIOU {
            let rt: Vec<f64> = recall.iter().map(|r| r[t]).collect();
            let pt: Vec<f64> = precision.iter().map(|p| p[t]).collect();
            let (ap, mpre, mrec) = compute_ap(&rt, &pt);
            out.ap[ci][t] = ap;
            if t == 0 {
                let (first, last) = (mpre[0], mpre[mpre.len() - 1]);
                out.prec_values.push(out.px.iter().map(|&x| np_interp(x, &mrec, &mpre, first, last)).collect());
            }
        }
    }
    out.f1_curve = out
        .p_curve
        .iter()
        .zip(&out.r_curve)
        .map(|(p, r)| p.iter().zip(r).map(|(&p, &r)| 2.0 * p * r / (p + r + 1e-16)).collect())
        .collect();
    if nc > 0 {
        // Class mean per grid point (NumPy sums axis 0 row after row).
        let mut mean = vec![0f64; CURVE_POINTS];
        for row in &out.f1_curve {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= nc as f64);
        let smoothed = smooth(&mean, 0.1);
        // First maximum, as argmax.
        out.best = smoothed.iter().enumerate().fold(0, |b, (i, &v)| if v > smoothed[b] { i } else { b });
    }
    let i = out.best;
    out.p = out.p_curve.iter().map(|c| c[i]).collect();
    out.r = out.r_curve.iter().map(|c| c[i]).collect();
    out.f1 = out.f1_curve.iter().map(|c| c[i]).collect();
    out
}

impl ApPerClass {
    /// Mean precision over the classes with ground truth.
    pub fn mp(&self) -> f64 {
        np_mean(&self.p)
    }

    /// Mean recall.
    pub fn mr(&self) -> f64 {
        np_mean(&self.r)
    }

    /// Mean AP at IoU 0.5.
    pub fn map50(&self) -> f64 {
        np_mean(&self.ap.iter().map(|a| a[0]).collect::<Vec<_>>())
    }

    /// Mean AP at IoU 0.75.
    pub fn map75(&self) -> f64 {
        np_mean(&self.ap.iter().map(|a| a[5]).collect::<Vec<_>>())
    }

    /// Mean AP over classes and the ten thresholds.
    pub fn map(&self) -> f64 {
        np_mean(&self.ap.iter().flatten().copied().collect::<Vec<_>>())
    }

    /// AP50-95 of the `i`-th class of [`ApPerClass::classes`].
    pub fn class_map(&self, i: usize) -> f64 {
        np_mean(&self.ap[i])
    }
}

/// Detection confusion matrix: rows are predicted classes, columns true classes, the last row
/// and column "background" (missed objects and false detections).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusionMatrix {
    pub nc: usize,
    /// `(nc + 1) x (nc + 1)` counts, `matrix[predicted][true]`.
    pub matrix: Vec<Vec<f64>>,
}

impl ConfusionMatrix {
    /// IoU a detection needs with a ground truth to be matched to it.
    pub const IOU_THRESHOLD: f32 = 0.45;

    pub fn new(nc: usize) -> Self {
        Self { nc, matrix: vec![vec![0.0; nc + 1]; nc + 1] }
    }

    /// Adds one image. Detections at or below `conf` are ignored; matching ignores classes (so
    /// confusions show), each detection in descending confidence taking the ground truth it
    /// overlaps most (IoU above 0.45), which is then no longer available.
    pub fn process(&mut self, dets: &[([f32; 4], f32, usize)], gts: &[([f32; 4], usize)], conf: f32) {
        let bg = self.nc;
        if gts.is_empty() {
            for d in dets.iter().filter(|d| d.1 > conf) {
                self.matrix[d.2][bg] += 1.0;
            }
            return;
        }
        if dets.is_empty() {
            for g in gts {
                self.matrix[bg][g.1] += 1.0;
            }
            return;
        }
        let dets: Vec<&([f32; 4], f32, usize)> = dets.iter().filter(|d| d.1 > conf).collect();
        let n = dets.len();
        let mut iou: Vec<f32> = gts.iter().flat_map(|g| dets.iter().map(move |d| box_iou(&g.0, &d.0))).collect();
        let mut candidates: Vec<usize> = (0..n).filter(|&j| (0..gts.len()).any(|g| iou[g * n + j] > Self::IOU_THRESHOLD)).collect();
        candidates.sort_by(|&a, &b| dets[b].1.total_cmp(&dets[a].1));
        let mut gt_match: Vec<Option<usize>> = vec![None; gts.len()];
        for j in candidates {
            let g = (0..gts.len()).fold(0, |b, g| if iou[g * n + j] > iou[b * n + j] { g } else { b });
            if iou[g * n + j] > Self::IOU_THRESHOLD {
                gt_match[g] = Some(j);
                iou[g * n..(g + 1) * n].fill(0.0);
            }
        }
        let mut matched_det = vec![false; n];
        for (g, m) in gt_match.iter().enumerate() {
            match m {
                Some(j) => {
                    matched_det[*j] = true;
                    self.matrix[dets[*j].2][gts[g].1] += 1.0;
                }
                None => self.matrix[bg][gts[g].1] += 1.0,
            }
        }
        for (j, d) in dets.iter().enumerate() {
            if !matched_det[j] {
                self.matrix[d.2][bg] += 1.0;
            }
        }
    }

    /// The matrix with each column divided by its total (1e-9 added), so a column shows where
    /// the objects of one true class went.
    pub fn normalized(&self) -> Vec<Vec<f64>> {
        let n = self.nc + 1;
        let col: Vec<f64> = (0..n).map(|j| self.matrix.iter().map(|r| r[j]).sum::<f64>() + 1e-9).collect();
        self.matrix.iter().map(|r| r.iter().zip(&col).map(|(v, c)| v / c).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert!(close(box_iou(&a, &a) as f64, 1.0, 1e-6));
        assert_eq!(box_iou(&a, &[10.0, 10.0, 20.0, 20.0]), 0.0);
        assert!(close(box_iou(&a, &[5.0, 0.0, 15.0, 10.0]) as f64, 50.0 / 150.0, 1e-6));
        // Contained box: 25 / 100.
        assert!(close(box_iou(&a, &[0.0, 0.0, 5.0, 5.0]) as f64, 0.25, 1e-6));
        // Degenerate boxes do not divide by zero.
        assert_eq!(box_iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
        assert_eq!(iou_matrix(&[a, [20.0, 20.0, 30.0, 30.0]], &[a]).len(), 2);
    }

    #[test]
    fn matching_is_greedy_by_confidence_and_takes_the_best_free_gt() {
        // Two ground truths of class 0; the first prediction overlaps both, more so the second.
        let gts = [[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]];
        let preds = [[1.5, 0.0, 11.5, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]];
        let iou = iou_matrix(&gts, &preds);
        let tp = match_predictions(&[0, 0, 0], &[0, 0], &iou);
        // Prediction 0 claims gt 1 (IoU 0.9 > 0.74); prediction 1 takes gt 0 (exact);
        // prediction 2 finds both claimed.
        assert!(tp[0].iter().take(9).all(|&t| t), "{:?}", tp[0]);
        assert!(!tp[0][9], "IoU 0.905 is below 0.95");
        assert!(tp[1].iter().all(|&t| t));
        assert!(tp[2].iter().all(|&t| !t));

        // Had prediction 0 taken gt 0 (its second best), prediction 1 would be a duplicate.
        // A class mismatch never matches.
        let tp = match_predictions(&[1], &[0, 0], &iou_matrix(&gts, &[gts[0]]));
        assert!(tp[0].iter().all(|&t| !t));

        // Per threshold: at high thresholds a prediction may fail on its best gt and leave it for
        // a later, better one.
        let gts = [[0.0, 0.0, 10.0, 10.0]];
        let preds = [[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0]];
        let tp = match_predictions(&[0, 0], &[0], &iou_matrix(&gts, &preds));
        // IoU of the first is 100/120 = 0.833: TP up to 0.80, not at 0.85 and above.
        assert_eq!(tp[0], [true, true, true, true, true, true, true, false, false, false]);
        assert_eq!(tp[1], [false, false, false, false, false, false, false, true, true, true]);
    }

    #[test]
    fn interp_matches_numpy_rules() {
        let xp = [0.0, 1.0, 1.0, 2.0];
        let fp = [0.0, 1.0, 3.0, 5.0];
        assert_eq!(np_interp(-1.0, &xp, &fp, -9.0, 9.0), -9.0);
        assert_eq!(np_interp(3.0, &xp, &fp, -9.0, 9.0), 9.0);
        assert_eq!(np_interp(0.5, &xp, &fp, -9.0, 9.0), 0.5);
        // On a repeated x the last of the equal points is used.
        assert_eq!(np_interp(1.0, &xp, &fp, -9.0, 9.0), 3.0);
        assert_eq!(np_interp(1.5, &xp, &fp, -9.0, 9.0), 4.0);
        assert_eq!(np_interp(2.0, &xp, &fp, -9.0, 9.0), 5.0);
    }

    #[test]
    fn pairwise_sum_is_numpy_order() {
        let v: Vec<f64> = (0..300).map(|i| 0.1 * i as f64).collect();
        assert!(close(pairwise_sum(&v), 0.1 * (299.0 * 300.0 / 2.0), 1e-9));
        assert_eq!(pairwise_sum(&[]), 0.0);
        assert_eq!(np_mean(&[1.0, 2.0, 3.0]), 2.0);
    }

    #[test]
    fn smoothing_keeps_constants_and_spreads_peaks() {
        assert!(smooth(&[0.5; 1000], 0.1).iter().all(|&v| close(v, 0.5, 1e-12)));
        let mut y = vec![0.0; 1000];
        y[500] = 101.0;
        let s = smooth(&y, 0.1);
        assert_eq!(s.len(), 1000);
        assert!(close(s[450], 1.0, 1e-12) && close(s[550], 1.0, 1e-12) && s[449] == 0.0 && s[551] == 0.0);
    }

    #[test]
    fn ap_of_perfect_and_empty_predictions() {
        // All hits, no false positives. The envelope is 1 up to recall 1, where the last sample
        // lands on the closing sentinel (precision 0): the final half-step trapezoid gives
        // 0.99 + 0.01 * (1 + 0) / 2 = 0.995, the reference's "perfect" AP.
        let (ap, _, _) = compute_ap(&[0.5, 1.0], &[1.0, 1.0]);
        assert!(close(ap, 0.995, 1e-12), "{ap}");
        // A class with ground truth but no predictions: AP, P and R all 0.
        let mut stats = Stats::default();
        stats.add_image(&[], &[([0.0, 0.0, 10.0, 10.0], 3)]);
        let r = ap_per_class(&stats);
        assert_eq!(r.classes, vec![3]);
        assert_eq!(r.ap[0], [0.0; NIOU]);
        assert_eq!((r.p[0], r.r[0]), (0.0, 0.0));
        assert_eq!(r.map(), 0.0);
    }

    #[test]
    fn perfect_predictions_score_one() {
        let mut stats = Stats::default();
        let gts = [([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 40.0, 30.0], 1), ([50.0, 50.0, 60.0, 60.0], 0)];
        let preds: Vec<([f32; 4], f32, usize)> = gts.iter().enumerate().map(|(i, g)| (g.0, 0.9 - 0.1 * i as f32, g.1)).collect();
        stats.add_image(&preds, &gts);
        let r = ap_per_class(&stats);
        // AP is the reference's maximum of 0.995 (see above) at every threshold; P and R are 1.
        assert!(close(r.map50(), 0.995, 1e-12) && close(r.map(), 0.995, 1e-12), "{:?}", r.ap);
        assert!(close(r.mp(), 1.0, 1e-9) && close(r.mr(), 1.0, 1e-9), "{} {}", r.mp(), r.mr());
    }

    #[test]
    fn mixed_case_by_hand() {
        // One class, 2 ground truths; predictions in confidence order: TP, FP, TP.
        // Recall 0.5, 0.5, 1.0; precision 1, 0.5, 2/3; envelope 1, 1, 2/3, 2/3, then 0 at the
        // sentinel. Sampled at recall 0, 0.01 ... 1 (np.interp takes the last point of equal
        // recalls): 1 below 0.5, 2/3 from 0.5 to 0.99, 0 at 1. Trapezoids: 49 steps of 1, the
        // step 0.49-0.50 from 1 to 2/3, 49 steps of 2/3, the step 0.99-1 from 2/3 to 0.
        let expected = 0.49 + 0.01 * (1.0 + 2.0 / 3.0) / 2.0 + 0.49 * (2.0 / 3.0) + 0.01 * (2.0 / 3.0) / 2.0;
        let (ap, _, _) = compute_ap(&[0.5, 0.5, 1.0], &[1.0, 0.5, 2.0 / 3.0]);
        assert!(close(ap, expected, 1e-12), "{ap} vs {expected}");
        assert!(close(ap, 0.828_333_333_333_333, 1e-12));

        // The same through matching: gt A, gt B; predictions hit A, miss, hit B.
        let mut stats = Stats::default();
        let gts = [([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 30.0, 30.0], 0)];
        let preds = [([0.0, 0.0, 10.0, 10.0], 0.9, 0), ([100.0, 100.0, 110.0, 110.0], 0.8, 0), ([20.0, 20.0, 30.0, 30.0], 0.7, 0)];
        stats.add_image(&preds, &gts);
        let r = ap_per_class(&stats);
        assert!(r.ap[0].iter().all(|&a| close(a, expected, 1e-12)), "{:?}", r.ap[0]);
        // Best smoothed F1 is at the low-confidence end: all 3 kept, P = 2/3, R = 1.
        assert!(close(r.r[0], 1.0, 1e-9), "{}", r.r[0]);
        assert!(close(r.p[0], 2.0 / 3.0, 1e-9), "{}", r.p[0]);
    }

    #[test]
    fn classes_without_ground_truth_are_ignored_and_missed_classes_count_zero() {
        let mut stats = Stats::default();
        let gts = [([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 30.0, 30.0], 1)];
        // Class 0 found; class 1 missed; class 2 predicted but has no ground truth.
        let preds = [([0.0, 0.0, 10.0, 10.0], 0.9, 0), ([20.0, 20.0, 30.0, 30.0], 0.8, 2)];
        stats.add_image(&preds, &gts);
        let r = ap_per_class(&stats);
        assert_eq!(r.classes, vec![0, 1]);
        // Class 0 at the reference's perfect 0.995, class 1 at 0.
        assert!(close(r.map50(), 0.995 / 2.0, 1e-12), "{}", r.map50());
    }

    #[test]
    fn confusion_matrix_counts_hits_confusions_misses_and_false_alarms() {
        let mut cm = ConfusionMatrix::new(2);
        let gts = [([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 30.0, 30.0], 1), ([50.0, 50.0, 60.0, 60.0], 1)];
        let dets = [
            ([0.0, 0.0, 10.0, 10.0], 0.9, 0),       // hit
            ([20.0, 20.0, 30.0, 30.0], 0.8, 0),     // class 1 taken for 0
            ([80.0, 80.0, 90.0, 90.0], 0.7, 1),     // false alarm
            ([50.0, 50.0, 60.0, 60.0], 0.0005, 1),  // below conf: ignored, so gt 3 is missed
        ];
        cm.process(&dets, &gts, 0.001);
        assert_eq!(cm.matrix, vec![vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]);
        let n = cm.normalized();
        assert!(close(n[0][1], 0.5, 1e-6) && close(n[2][1], 0.5, 1e-6));
    }
}
