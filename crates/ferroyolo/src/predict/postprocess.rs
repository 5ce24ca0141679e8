//! From raw head output to detections: the NMS-free top-k of the one-to-one head, class-aware
//! NMS for the one-to-many head, and mapping boxes back to the original image.

use crate::model::HeadOutput;

/// One detected object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Box corners `x1, y1, x2, y2` in pixels (of the network input until mapped back, then of
    /// the original image).
    pub xyxy: [f32; 4],
    pub confidence: f32,
    pub class_id: usize,
}

/// Settings shared by both post-processing paths.
#[derive(Clone, Debug)]
pub struct PostprocessOptions {
    pub conf: f32,
    pub iou: f32,
    pub max_det: usize,
    /// Keep only these class ids.
    pub classes: Option<Vec<usize>>,
    /// NMS across classes (one box per location whatever its class).
    pub agnostic: bool,
    /// NMS: one candidate per (anchor, class) above `conf` instead of the best class only.
    pub multi_label: bool,
}

impl Default for PostprocessOptions {
    fn default() -> Self {
        Self { conf: 0.25, iou: 0.7, max_det: 300, classes: None, agnostic: false, multi_label: false }
    }
}

/// Largest number of boxes fed into NMS (as the reference).
pub const MAX_NMS: usize = 30_000;
/// Class offset that keeps boxes of different classes apart in one NMS pass.
const MAX_WH: f32 = 7680.0;

/// Indices of the `k` largest values, sorted descending (ties by lower index first).
fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    } else if k == 0 {
        idx.clear();
    }
    idx.sort_unstable_by(cmp);
    idx
}

/// The one-to-one head's NMS-free selection for image `n`: the best `k` anchors by their top
/// class score, then the best `k` (anchor, class) pairs among those. Unfiltered, sorted by score.
pub fn end_to_end_topk(head: &HeadOutput, n: usize, k: usize, agnostic: bool) -> Vec<Detection> {
    let (a_count, nc) = (head.anchors, head.nc);
    let logits = &head.logits[n * nc * a_count..(n + 1) * nc * a_count];
    // Sigmoid is monotonic: rank on logits, convert only what is kept.
    let mut best = vec![f32::NEG_INFINITY; a_count];
    for c in 0..nc {
        for (b, &l) in best.iter_mut().zip(&logits[c * a_count..(c + 1) * a_count]) {
            if l > *b {
                *b = l;
            }
        }
    }
    let k = k.min(a_count);
    let anchors = top_k_indices(&best, k);
    if agnostic {
        return anchors
            .iter()
            .map(|&a| {
                let c = (0..nc).max_by(|&x, &y| logits[x * a_count + a].total_cmp(&logits[y * a_count + a]).then(y.cmp(&x))).unwrap_or(0);
                Detection { xyxy: head.xyxy(n, a), confidence: crate::engine::sigmoid(best[a]), class_id: c }
            })
            .collect();
    }
    let pair_scores: Vec<f32> = anchors.iter().flat_map(|&a| (0..nc).map(move |c| logits[c * a_count + a])).collect();
    top_k_indices(&pair_scores, k)
        .into_iter()
        .map(|flat| {
            let a = anchors[flat / nc];
            Detection { xyxy: head.xyxy(n, a), confidence: crate::engine::sigmoid(pair_scores[flat]), class_id: flat % nc }
        })
        .collect()
}

/// Keeps detections above `conf` (and of the wanted classes), at most `max_det`: the only
/// filtering the end-to-end path needs.
pub fn filter_detections(dets: Vec<Detection>, opts: &PostprocessOptions) -> Vec<Detection> {
    dets.into_iter()
        .filter(|d| d.confidence > opts.conf)
        .filter(|d| opts.classes.as_ref().is_none_or(|cs| cs.contains(&d.class_id)))
        .take(opts.max_det)
        .collect()
}

/// Intersection over union of two `xyxy` boxes, as NMS computes it (no epsilon).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    box_iou_eps(a, b, 0.0)
}

/// Intersection over union with `eps` added to the union (the metrics use 1e-7 so that empty
/// boxes give 0).
pub fn box_iou_eps(a: &[f32; 4], b: &[f32; 4], eps: f32) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    inter / (area_a + area_b - inter + eps)
}

/// One-to-many head for image `n`: candidates above `conf`, class-aware greedy NMS.
pub fn non_max_suppression(head: &HeadOutput, n: usize, opts: &PostprocessOptions) -> Vec<Detection> {
    let (a_count, nc) = (head.anchors, head.nc);
    let logits = &head.logits[n * nc * a_count..(n + 1) * nc * a_count];
    let wanted = |c: usize| opts.classes.as_ref().is_none_or(|cs| cs.contains(&c));
    let mut cands: Vec<Detection> = Vec::new();
    for a in 0..a_count {
        let score = |c: usize| crate::engine::sigmoid(logits[c * a_count + a]);
        let xyxy = || {
            let [cx, cy, w, h] = head.xywh(n, a);
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        };
        if opts.multi_label {
            for c in 0..nc {
                let s = score(c);
                if s > opts.conf && wanted(c) {
                    cands.push(Detection { xyxy: xyxy(), confidence: s, class_id: c });
                }
            }
        } else {
            let mut best_c = 0;
            for c in 1..nc {
                if logits[c * a_count + a] > logits[best_c * a_count + a] {
                    best_c = c;
                }
            }
            let s = score(best_c);
            if s > opts.conf && wanted(best_c) {
                cands.push(Detection { xyxy: xyxy(), confidence: s, class_id: best_c });
            }
        }
    }
    cands.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    cands.truncate(MAX_NMS);
    let offset = |d: &Detection| {
        let o = if opts.agnostic { 0.0 } else { d.class_id as f32 * MAX_WH };
        [d.xyxy[0] + o, d.xyxy[1] + o, d.xyxy[2] + o, d.xyxy[3] + o]
    };
    let shifted: Vec<[f32; 4]> = cands.iter().map(offset).collect();
    let mut suppressed = vec![false; cands.len()];
    let mut keep = Vec::new();
    for i in 0..cands.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(cands[i]);
        if keep.len() == opts.max_det {
            break;
        }
        for j in i + 1..cands.len() {
            if !suppressed[j] && box_iou(&shifted[i], &shifted[j]) > opts.iou {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Python's `round` (half to even), which the reference's box arithmetic uses.
pub fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// Maps `xyxy` boxes from a letterboxed input of `input_hw` back to an original image of
/// `orig_hw`, then clips them to it (the reference's `scale_boxes`).
pub fn scale_boxes(dets: &mut [Detection], input_hw: (u32, u32), orig_hw: (u32, u32)) {
    let (h1, w1) = (input_hw.0 as f64, input_hw.1 as f64);
    let (h0, w0) = (orig_hw.0 as f64, orig_hw.1 as f64);
    let gain = (h1 / h0).min(w1 / w0);
    let new_h = py_round(h0 * gain).max(1.0);
    let new_w = py_round(w0 * gain).max(1.0);
    let (gy, gx) = (new_h / h0, new_w / w0);
    let pad_x = py_round((w1 - new_w) / 2.0 - 0.1);
    let pad_y = py_round((h1 - new_h) / 2.0 - 0.1);
    for d in dets {
        let b = &mut d.xyxy;
        b[0] = (((b[0] as f64 - pad_x) / gx) as f32).clamp(0.0, w0 as f32);
        b[1] = (((b[1] as f64 - pad_y) / gy) as f32).clamp(0.0, h0 as f32);
        b[2] = (((b[2] as f64 - pad_x) / gx) as f32).clamp(0.0, w0 as f32);
        b[3] = (((b[3] as f64 - pad_y) / gy) as f32).clamp(0.0, h0 as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_complete() {
        let v = [0.1, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(top_k_indices(&v, 3), vec![1, 3, 2]);
        assert_eq!(top_k_indices(&v, 10).len(), 5);
        assert!(top_k_indices(&v, 0).is_empty());
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(box_iou(&a, &a), 1.0);
        assert_eq!(box_iou(&a, &[10.0, 10.0, 20.0, 20.0]), 0.0);
        assert!((box_iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn python_rounding_is_half_to_even() {
        assert_eq!(py_round(0.5), 0.0);
        assert_eq!(py_round(1.5), 2.0);
        assert_eq!(py_round(2.5), 2.0);
        assert_eq!(py_round(-0.6), -1.0);
    }

    #[test]
    fn scale_boxes_undoes_letterbox() {
        // 1080x810 (h, w) image letterboxed to 640x480 exactly (no padding): gain 640/1080.
        let mut d = [Detection { xyxy: [0.0, 0.0, 480.0, 640.0], confidence: 1.0, class_id: 0 }];
        scale_boxes(&mut d, (640, 480), (1080, 810));
        assert_eq!(d[0].xyxy, [0.0, 0.0, 810.0, 1080.0]);
        // 100x200 image in a 640x640 square: gain 3.2, 320 px tall, 160 px padding on top.
        let mut d = [Detection { xyxy: [0.0, 160.0, 640.0, 480.0], confidence: 1.0, class_id: 0 }];
        scale_boxes(&mut d, (640, 640), (100, 200));
        assert_eq!(d[0].xyxy, [0.0, 0.0, 200.0, 100.0]);
    }

    fn head_with(boxes: &[[f32; 4]], scores: &[Vec<f32>]) -> HeadOutput {
        // One image, anchors at (0.5, 0.5) with stride 1 so that ltrb distances are pixels.
        let a = boxes.len();
        let nc = scores[0].len();
        let mut out = HeadOutput {
            batch: 1,
            nc,
            anchors: a,
            boxes: vec![0.0; 4 * a],
            logits: vec![0.0; nc * a],
            anchor_points: vec![0.5; 2 * a],
            anchor_strides: vec![1.0; a],
        };
        for (i, b) in boxes.iter().enumerate() {
            let ltrb = [0.5 - b[0], 0.5 - b[1], b[2] - 0.5, b[3] - 0.5];
            for (k, v) in ltrb.iter().enumerate() {
                out.boxes[k * a + i] = *v;
            }
            for (c, &p) in scores[i].iter().enumerate() {
                out.logits[c * a + i] = (p / (1.0 - p)).ln();
            }
        }
        out
    }

    #[test]
    fn nms_suppresses_overlaps_of_the_same_class_only() {
        let head = head_with(
            &[[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]],
            &[vec![0.9, 0.01], vec![0.8, 0.01], vec![0.01, 0.7], vec![0.6, 0.01]],
        );
        let dets = non_max_suppression(&head, 0, &PostprocessOptions::default());
        let got: Vec<(usize, f32)> = dets.iter().map(|d| (d.class_id, (d.confidence * 10.0).round() / 10.0)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (0, 0.6)]);
        let agnostic = non_max_suppression(&head, 0, &PostprocessOptions { agnostic: true, ..Default::default() });
        assert_eq!(agnostic.len(), 2);
        let only1 = non_max_suppression(&head, 0, &PostprocessOptions { classes: Some(vec![1]), ..Default::default() });
        assert_eq!(only1.len(), 1);
    }

    #[test]
    fn end_to_end_takes_several_classes_of_one_anchor() {
        let head = head_with(
            &[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]],
            &[vec![0.9, 0.8], vec![0.3, 0.1], vec![0.05, 0.02]],
        );
        let dets = end_to_end_topk(&head, 0, 3, false);
        let got: Vec<usize> = dets.iter().map(|d| d.class_id).collect();
        assert_eq!(got, vec![0, 1, 0]);
        assert!((dets[2].confidence - 0.3).abs() < 1e-6);
        assert_eq!(dets[0].xyxy, [0.0, 0.0, 10.0, 10.0]);
    }
}
