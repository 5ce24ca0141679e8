//! Detections of one image, with what is needed to print, draw and save them.

use std::sync::Arc;

use serde_json::json;

use super::Detection;

/// Time spent per stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Speed {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// The detections of one image.
#[derive(Clone, Debug)]
pub struct Results {
    /// The image's path (absolute) or URL.
    pub source: String,
    /// `(h, w)` of the original image; boxes are in its pixels.
    pub orig_shape: (u32, u32),
    /// `(h, w)` of the network input.
    pub input_shape: (u32, u32),
    /// Detections, best first.
    pub boxes: Vec<Detection>,
    pub names: Arc<Vec<String>>,
    pub speed: Speed,
}

impl Results {
    /// The class name of a detection.
    pub fn name(&self, d: &Detection) -> &str {
        self.names.get(d.class_id).map(String::as_str).unwrap_or("?")
    }

    /// Counts per class in class-id order, like the reference's log line: `4 persons, 1 bus`,
    /// or `(no detections)`.
    pub fn summary(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for d in &self.boxes {
            *counts.entry(d.class_id).or_insert(0usize) += 1;
        }
        if counts.is_empty() {
            return "(no detections)".to_string();
        }
        counts
            .iter()
            .map(|(&c, &n)| {
                let name = self.names.get(c).map(String::as_str).unwrap_or("?");
                format!("{n} {name}{}", if n > 1 { "s" } else { "" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `{"image", "width", "height", "detections": [{class_id, class_name, confidence, box}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let dets: Vec<_> = self
            .boxes
            .iter()
            .map(|d| {
                json!({
                    "class_id": d.class_id,
                    "class_name": self.name(d),
                    "confidence": round_to(d.confidence, 5),
                    "box": d.xyxy.iter().map(|&v| round_to(v, 3)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "image": self.source,
            "width": self.orig_shape.1,
            "height": self.orig_shape.0,
            "detections": dets,
        })
    }

    /// YOLO label lines: `class cx cy w h [conf]`, normalised to the image size.
    pub fn to_txt(&self, with_conf: bool) -> String {
        let (h, w) = (self.orig_shape.0 as f32, self.orig_shape.1 as f32);
        let mut s = String::new();
        for d in &self.boxes {
            let [x1, y1, x2, y2] = d.xyxy;
            let (cx, cy, bw, bh) = ((x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h);
            s.push_str(&format!("{} {cx:.6} {cy:.6} {bw:.6} {bh:.6}", d.class_id));
            if with_conf {
                s.push_str(&format!(" {:.6}", d.confidence));
            }
            s.push('\n');
        }
        s
    }
}

fn round_to(v: f32, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v as f64 * p).round() / p
}
