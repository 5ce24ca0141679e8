//! Tests of the end-to-end loss: reference parity on synthetic head outputs, and the gradient
//! against central finite differences.

use super::*;

/// The counter-based generator the oracle script below shares: `splitmix64(seed·1000003 + i)`,
/// top 53 bits scaled to `[0, 1)`, mapped to `[lo, hi)` in f64 and rounded to f32.
fn uniform(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut x = seed.wrapping_mul(1_000_003).wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            (lo + (hi - lo) * ((x >> 11) as f64 / (1u64 << 53) as f64)) as f32
        })
        .collect()
}

/// A synthetic head output over the three YOLO26 levels (strides 8, 16, 32) of an `h × w` input,
/// anchors ordered as the reference makes them: level by level, row-major, cell centres.
fn synthetic_head(batch: usize, nc: usize, (h, w): (usize, usize), seed: u64) -> HeadOutput {
    let mut anchor_points = Vec::new();
    let mut anchor_strides = Vec::new();
    for s in [8usize, 16, 32] {
        for y in 0..h / s {
            for x in 0..w / s {
                anchor_points.extend([x as f32 + 0.5, y as f32 + 0.5]);
                anchor_strides.push(s as f32);
            }
        }
    }
    let anchors = anchor_strides.len();
    HeadOutput {
        batch,
        nc,
        anchors,
        boxes: uniform(seed, batch * 4 * anchors, -0.3, 4.0),
        logits: uniform(seed + 1, batch * nc * anchors, -5.0, 2.0),
        anchor_points,
        anchor_strides,
    }
}

fn targets(rows: &[(usize, usize, f32, f32, f32, f32)]) -> Vec<Target> {
    rows.iter()
        .map(|&(batch_index, class, cx, cy, w, h)| Target { batch_index, class, cxcywh: [cx, cy, w, h] })
        .collect()
}

/// One synthetic case: batch, classes, input `(h, w)`, generator seed, targets.
struct Case {
    batch: usize,
    nc: usize,
    hw: (usize, usize),
    seed: u64,
    targets: &'static [(usize, usize, f32, f32, f32, f32)],
}

const TINY: Case = Case {
    batch: 2,
    nc: 3,
    hw: (64, 32),
    seed: 11,
    targets: &[
        (0, 1, 0.5, 0.4, 0.6, 0.5),
        (0, 2, 0.3, 0.7, 0.2, 0.1),
        (0, 0, 0.55, 0.45, 0.5, 0.4),
        (1, 2, 0.6, 0.3, 0.7, 0.35),
        (1, 1, 0.2, 0.8, 0.3, 0.2),
    ],
};

const MID: Case = Case {
    batch: 3,
    nc: 4,
    hw: (96, 128),
    seed: 21,
    targets: &[
        (0, 0, 0.3, 0.4, 0.4, 0.5),
        (0, 1, 0.35, 0.45, 0.3, 0.4),
        (0, 3, 0.7, 0.2, 0.05, 0.08),
        (0, 2, 0.72, 0.25, 0.1, 0.12),
        (0, 1, 0.5, 0.5, 0.9, 0.9),
        (0, 0, 0.1, 0.9, 0.15, 0.1),
        (1, 3, 0.6, 0.6, 0.5, 0.3),
        (1, 2, 0.25, 0.3, 0.2, 0.35),
    ],
};

const WIDE: Case = Case {
    batch: 2,
    nc: 80,
    hw: (192, 192),
    seed: 31,
    targets: &[
        (0, 5, 0.5, 0.5, 0.6, 0.7),
        (0, 17, 0.2, 0.25, 0.1, 0.15),
        (0, 79, 0.8, 0.7, 0.3, 0.2),
        (1, 0, 0.45, 0.55, 0.5, 0.5),
        (1, 0, 0.5, 0.5, 0.45, 0.6),
    ],
};

/// Heavily overlapping boxes: anchors claimed by two ground truths, some of them won by a third
/// that merely has the anchor as a candidate (the reference's conflict resolution looks at every
/// ground truth's CIoU, not only the claimants').
const CROWD: Case = Case {
    batch: 2,
    nc: 3,
    hw: (96, 96),
    seed: 212,
    targets: &[
        (0, 0, 0.5, 0.5, 0.8, 0.8),
        (0, 1, 0.45, 0.5, 0.5, 0.6),
        (0, 2, 0.55, 0.45, 0.6, 0.5),
        (0, 0, 0.5, 0.55, 0.3, 0.3),
        (1, 1, 0.4, 0.4, 0.5, 0.5),
        (1, 2, 0.5, 0.5, 0.5, 0.5),
        (1, 0, 0.6, 0.6, 0.5, 0.5),
    ],
};

impl Case {
    /// The one-to-many head (generator seeds `seed`, `seed + 1`) and one-to-one head (`seed + 2`,
    /// `seed + 3`), as the oracle builds them.
    fn heads(&self) -> (HeadOutput, HeadOutput) {
        (
            synthetic_head(self.batch, self.nc, self.hw, self.seed),
            synthetic_head(self.batch, self.nc, self.hw, self.seed + 2),
        )
    }

    fn run(&self) -> LossOutput {
        let (m, o) = self.heads();
        e2e_loss(&m, &o, &targets(self.targets), self.hw, &LossConfig::default())
    }
}

/// Expected values from the reference, per case: total; one-to-one and one-to-many
/// (box, cls, l1); then for each gradient (o2m boxes, o2m logits, o2o boxes, o2o logits) its L1
/// norm and its dot product with `uniform(99, len, -0.5, 0.5)`.
///
/// Produced by `/tmp/ref/bin/python synthetic.py` with Ultralytics 8.4.190, torch 2.15 CPU, 2 threads.
/// The script builds the same heads with the same generator (`np.float32(lo + (hi−lo)·u)`), wraps
/// them as `{"boxes": (B,4,A), "scores": (B,nc,A), "feats": [zeros(B,1,H/s,W/s) for s in 8,16,32]}`
/// for both branches, the targets as `batch_idx, cls, bboxes` float32 tensors, and evaluates
/// `E2ELoss(DetectionModel("yolo26n.yaml", nc=nc))` with `model.args = get_cfg()` (defaults), then
/// `loss.sum().backward()`; the one-to-many items come from `crit.one2many.loss(preds["one2many"], batch)`.
struct Expected {
    total: f64,
    o2o: [f64; 3],
    o2m: [f64; 3],
    grads: [[f64; 2]; 4],
}

const TINY_REF: Expected = Expected {
    total: 82.08016967773438,
    o2o: [3.5656845569610596, 57.69718551635742, 0.14270390570163727],
    o2m: [3.977411985397339, 31.80075454711914, 0.17054679989814758],
    grads: [
        [6.845805955128277, 0.328065050888993],
        [30.60244344943203, -0.302587259153762],
        [2.3285924916633842, 0.273069580720451],
        [14.19647823588457, -0.11999133481102421],
    ],
};

const MID_REF: Expected = Expected {
    total: 447.56817626953125,
    o2o: [3.522301435470581, 249.02920532226562, 0.09772451967000961],
    o2m: [3.8304929733276367, 119.38623046875, 0.10771418362855911],
    grads: [
        [10.232104209933585, 1.0147176232385515],
        [172.77182550833095, 2.5504282402586345],
        [2.3942057632270917, 0.030815349425893014],
        [90.79007478925632, 0.6980021931099403],
    ],
};

const WIDE_REF: Expected = Expected {
    total: 14598.791015625,
    o2o: [3.7293190956115723, 12764.515625, 0.11188885569572449],
    o2m: [4.343805313110352, 5927.693359375, 0.11830301582813263],
    grads: [
        [4.780053096789816, 0.020030990614781134],
        [5727.790572756436, -5.827351940316479],
        [1.4710328900255263, 0.16714362048909043],
        [3082.8149596404983, -3.9482644260428574],
    ],
};

const CROWD_REF: Expected = Expected {
    total: 123.58187103271484,
    o2o: [3.576547145843506, 82.22931671142578, 0.12760676443576813],
    o2m: [3.8521957397460938, 51.76548767089844, 0.1376206874847412],
    grads: [
        [5.575356827881478, -0.04054162090140488],
        [49.084990214701975, 0.8190612075963442],
        [1.2593119032680988, 0.03236262519831409],
        [19.556848086765967, 0.4383583306943531],
    ],
};

fn assert_close(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-6), "{what}: got {got}, reference {want}");
}

fn check_against_reference(case: &Case, want: &Expected) {
    let out = case.run();
    assert_close("total", out.total as f64, want.total, 1e-5);
    let items = |b: BranchLoss| [b.box_loss as f64, b.cls_loss as f64, b.l1_loss as f64];
    for (name, got, want) in [("one2one", items(out.one2one), want.o2o), ("one2many", items(out.one2many), want.o2m)] {
        for k in 0..3 {
            assert_close(&format!("{name} item {k}"), got[k], want[k], 1e-5);
        }
    }
    let grads = [&out.grad_o2m_boxes, &out.grad_o2m_logits, &out.grad_o2o_boxes, &out.grad_o2o_logits];
    for (k, (g, want)) in grads.iter().zip(want.grads).enumerate() {
        let l1: f64 = g.iter().map(|&v| v.abs() as f64).sum();
        let probe = uniform(99, g.len(), -0.5, 0.5);
        let dot: f64 = g.iter().zip(&probe).map(|(&v, &r)| v as f64 * r as f64).sum();
        assert_close(&format!("gradient {k} L1 norm"), l1, want[0], 1e-5);
        // The probe mixes signs, so its error is bounded by the norm, not by its own size.
        assert!((dot - want[1]).abs() <= 1e-5 * want[0], "gradient {k} probe: got {dot}, reference {}", want[1]);
    }
}

#[test]
fn matches_reference_tiny() {
    check_against_reference(&TINY, &TINY_REF);
}

#[test]
fn matches_reference_mid() {
    check_against_reference(&MID, &MID_REF);
}

#[test]
fn matches_reference_wide() {
    check_against_reference(&WIDE, &WIDE_REF);
}

#[test]
fn matches_reference_crowd() {
    check_against_reference(&CROWD, &CROWD_REF);
}

/// The loss of one branch in f64 at arbitrary inputs, with the assignment and CIoU's `α` frozen.
fn branch_value(
    head: &HeadOutput,
    (boxes, logits): (&[f64], &[f64]),
    asg: &Assignment,
    alphas: &[f64],
    case: &Case,
) -> f64 {
    let t = branch_terms(head, boxes, logits, asg, case.hw, &LossConfig::default(), 1.0, Some(alphas));
    t.values.iter().sum()
}

/// Central differences of each branch's loss against the gradient `e2e_loss` returns, on every
/// coordinate of both heads. What the reference differentiates has the assignment (soft targets
/// included) and CIoU's `α` computed without gradient, so both are frozen at the base point: a
/// plain finite difference of the loss value would differentiate them too.
fn check_gradient(case: &Case) {
    let (m, o) = case.heads();
    let cfg = LossConfig::default();
    let out = e2e_loss(&m, &o, &targets(case.targets), case.hw, &cfg);
    let gts = ground_truths(&targets(case.targets), case.batch, case.nc, case.hw);
    let stride_val = small_target_side(&m.anchor_strides);
    let branches = [
        (&m, ONE_TO_MANY, cfg.o2m_weight as f64, &out.grad_o2m_boxes, &out.grad_o2m_logits),
        (&o, ONE_TO_ONE, (1.0 - cfg.o2m_weight) as f64, &out.grad_o2o_boxes, &out.grad_o2o_logits),
    ];
    for (head, spec, weight, grad_boxes, grad_logits) in branches {
        let asg = assign::assign(head, &gts, spec, stride_val);
        // The test is only meaningful with soft targets that are not all zero.
        assert!(asg.score.iter().filter(|&&s| s > 0.0).count() >= 3);
        let scale = weight * case.batch as f64;
        let boxes: Vec<f64> = head.boxes.iter().map(|&v| v as f64).collect();
        let logits: Vec<f64> = head.logits.iter().map(|&v| v as f64).collect();
        let base = branch_terms(head, &boxes, &logits, &asg, case.hw, &cfg, 1.0, None);
        // Not trivially right: α does vary with the boxes, so freezing it changes the derivative.
        assert!(base.alphas.iter().any(|&a| a > 1e-3));
        let h = 1e-6;
        let mut worst = 0.0f64;
        for (is_box, analytic) in [(true, grad_boxes), (false, grad_logits)] {
            let norm = analytic.iter().fold(0.0f64, |m, &g| m.max(g.abs() as f64));
            for i in 0..analytic.len() {
                let (mut plus_b, mut minus_b, mut plus_l, mut minus_l) =
                    (boxes.clone(), boxes.clone(), logits.clone(), logits.clone());
                if is_box {
                    plus_b[i] += h;
                    minus_b[i] -= h;
                } else {
                    plus_l[i] += h;
                    minus_l[i] -= h;
                }
                let numeric = scale
                    * (branch_value(head, (&plus_b, &plus_l), &asg, &base.alphas, case)
                        - branch_value(head, (&minus_b, &minus_l), &asg, &base.alphas, case))
                    / (2.0 * h);
                let err = (numeric - analytic[i] as f64).abs() / norm;
                worst = worst.max(err);
                assert!(err < 1e-5, "coordinate {i} (box: {is_box}): analytic {} vs numeric {numeric}", analytic[i]);
            }
        }
        assert!(worst < 1e-5);
    }
}

#[test]
fn gradient_matches_finite_differences() {
    check_gradient(&TINY);
    check_gradient(&CROWD);
}

#[test]
fn without_targets_only_the_class_loss_remains() {
    let (m, o) = TINY.heads();
    let out = e2e_loss(&m, &o, &[], TINY.hw, &LossConfig::default());
    for b in [out.one2one, out.one2many] {
        assert_eq!((b.box_loss, b.l1_loss), (0.0, 0.0));
        assert!(b.cls_loss > 0.0);
    }
    // Every score is pushed towards zero: the gradient is 0.5·σ(x)·weight·batch.
    let expected = |x: f32| 0.5 * 0.8 * 2.0 / (1.0 + (-x).exp());
    for (g, &x) in out.grad_o2m_logits.iter().zip(&m.logits) {
        assert!((g - expected(x)).abs() < 1e-6);
    }
    assert!(out.grad_o2m_boxes.iter().chain(&out.grad_o2o_boxes).all(|&g| g == 0.0));
}

/// The class loss's f32 values, rounding included, against the reference's: produced with torch
/// 2.15 CPU by `F.binary_cross_entropy_with_logits(x, t, reduction="none")` for
/// `x = [-15, -14, -12.3, -9.1, 3, 20]` and `t` = 0, 0.3, 1.
#[test]
fn class_loss_rounds_like_the_reference() {
    let x = [-15.0f32, -14.0, -12.3, -9.1, 3.0, 20.0];
    // The f32 results as Python printed them (exact in f64).
    let want: [[f64; 6]; 3] = [
        [0.0, 9.5367431640625e-07, 4.76837158203125e-06, 0.00011157989501953125, 3.0485873222351074, 20.0],
        [4.5, 4.200000762939453, 3.690005302429199, 2.730111598968506, 2.148587226867676, 14.0],
        [15.0, 14.000000953674316, 12.300004959106445, 9.100111961364746, 0.04858735203742981, 2.06115369216775e-09],
    ];
    for (t, want) in [0.0f32, 0.3, 1.0].into_iter().zip(want) {
        for (&x, want) in x.iter().zip(want) {
            let (value, slope) = bce_with_logits(x, t);
            // Within an ulp (the exponential and logarithm may round differently from torch's).
            let want = want as f32;
            assert!((value - want).abs() <= f32::EPSILON * want.abs(), "x {x}, t {t}: {value} vs {want}");
            let sigmoid = 1.0 / (1.0 + (-x as f64).exp());
            assert!((slope as f64 - (sigmoid - t as f64)).abs() < 1e-7);
        }
    }
}

#[test]
fn branch_weight_schedule() {
    assert_eq!(o2m_weight(0, 100), 0.8);
    assert_eq!(o2m_weight(99, 100), 0.1);
    assert_eq!(o2m_weight(150, 100), 0.1);
    assert!((o2m_weight(33, 100) - (0.1 + 0.7 * (1.0 - 33.0 / 99.0))).abs() < 1e-7);
    assert_eq!(o2m_weight(0, 1), 0.8);
    assert_eq!(o2m_weight(1, 1), 0.1);
    assert_eq!(LossConfig::default().o2m_weight, o2m_weight(0, 300));
}

#[test]
fn small_target_side_is_the_second_level_stride() {
    let (m, _) = TINY.heads();
    assert_eq!(small_target_side(&m.anchor_strides), 16.0);
    assert_eq!(small_target_side(&[32.0, 32.0]), 32.0);
}
