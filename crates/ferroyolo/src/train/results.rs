//! The run's `results.csv` (one row per epoch, the reference's columns and `%.6g` numbers) and
//! `results.png` (each column against the epoch, raw and smoothed, as the reference's
//! `plot_results`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::Rgb;

use super::loss::BranchLoss;
use crate::val::plots::{text_width, Canvas, TAB10};
use crate::val::{format_g, Metrics};

/// One epoch's row.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultsRow {
    /// 1-based epoch.
    pub epoch: usize,
    /// Seconds since the run started.
    pub time: f64,
    pub train: [f64; 3],
    /// Precision, recall, mAP50, mAP50-95 (`None`: not validated this epoch).
    pub metrics: Option<[f64; 4]>,
    pub val: Option<[f64; 3]>,
    pub lrs: Vec<f64>,
}

fn items(l: BranchLoss) -> [f64; 3] {
    [l.box_loss as f64, l.cls_loss as f64, l.l1_loss as f64]
}

impl ResultsRow {
    pub fn new(epoch: usize, time: f64, train: BranchLoss, metrics: Option<&Metrics>, val: Option<BranchLoss>, lrs: &[f64]) -> Self {
        ResultsRow {
            epoch,
            time,
            train: items(train),
            metrics: metrics.map(|m| [m.precision, m.recall, m.map50, m.map50_95]),
            val: val.map(items),
            lrs: lrs.to_vec(),
        }
    }
}

const LOSS_NAMES: [&str; 3] = ["box_loss", "cls_loss", "l1_loss"];
const METRIC_NAMES: [&str; 4] = ["metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"];

/// All rows of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultsLog {
    pub rows: Vec<ResultsRow>,
}

impl ResultsLog {
    pub fn push(&mut self, row: ResultsRow) {
        self.rows.push(row);
    }

    fn header(&self) -> Vec<String> {
        let lrs = self.rows.iter().map(|r| r.lrs.len()).max().unwrap_or(0);
        let mut h = vec!["epoch".to_string(), "time".to_string()];
        h.extend(LOSS_NAMES.iter().map(|n| format!("train/{n}")));
        h.extend(METRIC_NAMES.iter().map(|n| n.to_string()));
        h.extend(LOSS_NAMES.iter().map(|n| format!("val/{n}")));
        h.extend((0..lrs).map(|i| format!("lr/pg{i}")));
        h
    }

    /// The CSV text. An epoch without validation repeats the last metrics (0 before any), as
    /// the reference keeps its last metrics dict; validation losses not computed are empty.
    pub fn to_csv(&self) -> String {
        let mut s = self.header().join(",") + "\n";
        let mut last = [0.0; 4];
        for r in &self.rows {
            let m = r.metrics.unwrap_or(last);
            last = m;
            let mut cells = vec![r.epoch.to_string(), format_g(r.time, 6)];
            cells.extend(r.train.iter().map(|&v| format_g(v, 6)));
            cells.extend(m.iter().map(|&v| format_g(v, 6)));
            match r.val {
                Some(v) => cells.extend(v.iter().map(|&v| format_g(v, 6))),
                None => cells.extend(["", "", ""].map(String::from)),
            }
            cells.extend(r.lrs.iter().map(|&v| format_g(v, 6)));
            s += &cells.join(",");
            s.push('\n');
        }
        s
    }

    /// Writes `results.csv` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(crate::weights::write_atomic(path, self.to_csv().as_bytes())?)
    }

    /// Reads the first `epochs` rows of a `results.csv` this module wrote (to continue it on
    /// resume). A missing file gives an empty log.
    pub fn load(path: &Path, epochs: usize) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        if header.len() < 12 || header[0] != "epoch" {
            bail!("{}: not a results.csv written by ferroyolo (header {:?})", path.display(), header);
        }
        let mut rows = Vec::new();
        for (k, line) in lines.enumerate().take(epochs) {
            let bad = || format!("{}:{}: malformed row", path.display(), k + 2);
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != header.len() {
                bail!("{}", bad());
            }
            let num = |i: usize| -> Result<f64> { cells[i].trim().parse::<f64>().with_context(bad) };
            let opt3 = |i: usize| -> Result<Option<[f64; 3]>> {
                if cells[i].is_empty() {
                    Ok(None)
                } else {
                    Ok(Some([num(i)?, num(i + 1)?, num(i + 2)?]))
                }
            };
            rows.push(ResultsRow {
                epoch: cells[0].parse().with_context(bad)?,
                time: num(1)?,
                train: [num(2)?, num(3)?, num(4)?],
                metrics: Some([num(5)?, num(6)?, num(7)?, num(8)?]),
                val: opt3(9)?,
                lrs: (12..cells.len()).map(num).collect::<Result<_>>()?,
            });
        }
        Ok(ResultsLog { rows })
    }

    /// `results.png`: ten panels (training losses, precision, recall; validation losses,
    /// mAP50, mAP50-95), each with the values and a smoothed curve.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let x: Vec<f64> = self.rows.iter().map(|r| r.epoch as f64).collect();
        let col = |f: &dyn Fn(&ResultsRow) -> Option<f64>| -> Vec<Option<f64>> { self.rows.iter().map(f).collect() };
        let panels: Vec<(String, Vec<Option<f64>>)> = vec![
            ("train/box_loss".into(), col(&|r| Some(r.train[0]))),
            ("train/cls_loss".into(), col(&|r| Some(r.train[1]))),
            ("train/l1_loss".into(), col(&|r| Some(r.train[2]))),
            ("metrics/precision(B)".into(), col(&|r| r.metrics.map(|m| m[0]))),
            ("metrics/recall(B)".into(), col(&|r| r.metrics.map(|m| m[1]))),
            ("val/box_loss".into(), col(&|r| r.val.map(|v| v[0]))),
            ("val/cls_loss".into(), col(&|r| r.val.map(|v| v[1]))),
            ("val/l1_loss".into(), col(&|r| r.val.map(|v| v[2]))),
            ("metrics/mAP50(B)".into(), col(&|r| r.metrics.map(|m| m[2]))),
            ("metrics/mAP50-95(B)".into(), col(&|r| r.metrics.map(|m| m[3]))),
        ];
        let (pw, ph) = (360i64, 300i64);
        let mut c = Canvas::new((pw * 5) as u32, (ph * 2) as u32);
        for (k, (title, ys)) in panels.iter().enumerate() {
            draw_panel(&mut c, (k as i64 % 5) * pw, (k as i64 / 5) * ph, pw, ph, title, &x, ys);
        }
        c.save(path)
    }
}

/// Gaussian-weighted smoothing of a series (the reference smooths with a 1-D Gaussian filter,
/// sigma 3).
fn smooth(y: &[f64]) -> Vec<f64> {
    let sigma = 3.0f64;
    (0..y.len())
        .map(|i| {
            let (mut s, mut w) = (0.0, 0.0);
            for (j, &v) in y.iter().enumerate() {
                let d = i as f64 - j as f64;
                let g = (-d * d / (2.0 * sigma * sigma)).exp();
                s += g * v;
                w += g;
            }
            s / w
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn draw_panel(c: &mut Canvas, x0: i64, y0: i64, w: i64, h: i64, title: &str, x: &[f64], ys: &[Option<f64>]) {
    let black = Rgb([0, 0, 0]);
    let (left, top, right, bottom) = (x0 + 50, y0 + 30, x0 + w - 15, y0 + h - 30);
    c.text(x0 + w / 2 - text_width(title, 1) / 2, y0 + 10, title, 1, black);
    let pts: Vec<(f64, f64)> = x.iter().zip(ys).filter_map(|(&a, b)| b.filter(|v| v.is_finite()).map(|b| (a, b))).collect();
    if pts.is_empty() {
        return;
    }
    let (xmin, xmax) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let (mut ymin, mut ymax) = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if ymax - ymin < 1e-9 {
        ymin -= 0.5;
        ymax += 0.5;
    }
    let pad = (ymax - ymin) * 0.05;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let to_px = |a: f64, b: f64| {
        (left as f64 + (a - xmin) / (xmax - xmin) * (right - left) as f64, bottom as f64 - (b - ymin) / (ymax - ymin) * (bottom - top) as f64)
    };
    for (v, y) in [(ymax - pad, top), (ymin + pad, bottom)] {
        let label = format_g(v, 3);
        let (_, py) = to_px(xmin, v);
        let _ = y;
        c.text(left - 6 - text_width(&label, 1), py as i64 - 4, &label, 1, black);
    }
    for v in [xmin, xmax] {
        let label = format_g(v, 3);
        let (px, _) = to_px(v, ymin);
        c.text(px as i64 - text_width(&label, 1) / 2, bottom + 8, &label, 1, black);
    }
    c.fill_rect(left, bottom, right + 1, bottom + 1, black);
    c.fill_rect(left, top, left + 1, bottom + 1, black);
    let raw: Vec<(f64, f64)> = pts.iter().map(|&(a, b)| to_px(a, b)).collect();
    let blue = Rgb(TAB10[0]);
    c.polyline(&raw, 2.0, blue);
    for &(px, py) in &raw {
        c.fill_rect(px as i64 - 2, py as i64 - 2, px as i64 + 3, py as i64 + 3, blue);
    }
    if pts.len() > 2 {
        let sm = smooth(&pts.iter().map(|p| p.1).collect::<Vec<_>>());
        let line: Vec<(f64, f64)> = pts.iter().zip(sm).map(|(p, s)| to_px(p.0, s)).collect();
        // Dotted, as the reference's smoothed curve.
        for (k, seg) in line.windows(2).enumerate() {
            if k % 2 == 0 {
                c.line(seg[0], seg[1], 2.0, Rgb(TAB10[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, metrics: Option<[f64; 4]>) -> ResultsRow {
        ResultsRow { epoch, time: 1.5 * epoch as f64, train: [1.25, 2.0, 0.123456789], metrics, val: None, lrs: vec![0.01, 0.0003333, 1e-5] }
    }

    #[test]
    fn csv_has_reference_columns_and_g6_numbers() {
        let log = ResultsLog { rows: vec![row(1, Some([0.5, 0.25, 0.75, 0.4])), row(2, None)] };
        let csv = log.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "epoch,time,train/box_loss,train/cls_loss,train/l1_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/l1_loss,lr/pg0,lr/pg1,lr/pg2");
        assert_eq!(lines[1], "1,1.5,1.25,2,0.123457,0.5,0.25,0.75,0.4,,,,0.01,0.0003333,1e-05");
        // Without validation the last metrics repeat.
        assert!(lines[2].starts_with("2,3,1.25,2,0.123457,0.5,0.25,0.75,0.4,"), "{}", lines[2]);
    }

    #[test]
    fn csv_round_trips_and_truncates_on_load() {
        let dir = std::env::temp_dir().join(format!("ferroyolo-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.csv");
        let log = ResultsLog { rows: vec![row(1, Some([0.5, 0.25, 0.75, 0.4])), row(2, Some([0.6, 0.3, 0.8, 0.5])), row(3, Some([0.7, 0.3, 0.8, 0.5]))] };
        log.save(&path).unwrap();
        let back = ResultsLog::load(&path, 2).unwrap();
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.rows[1].metrics, Some([0.6, 0.3, 0.8, 0.5]));
        assert_eq!(back.to_csv(), ResultsLog { rows: log.rows[..2].to_vec() }.to_csv());
        std::fs::write(&path, "not,a,results,file\n").unwrap();
        assert!(ResultsLog::load(&path, 1).is_err());
        log.plot(&dir.join("results.png")).unwrap();
        let img = image::open(dir.join("results.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1800, 600));
        // Something was drawn in every panel.
        for k in 0..10u32 {
            let (x0, y0) = ((k % 5) * 360, (k / 5) * 300);
            let blue = (x0 + 50..x0 + 345).flat_map(|x| (y0 + 30..y0 + 270).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0 == TAB10[0]).count();
            if k == 5 || k == 6 || k == 7 {
                assert_eq!(blue, 0, "no validation losses recorded, panel {k} stays empty");
            } else {
                assert!(blue > 10, "panel {k} has a curve");
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
