//! `ferroyolo predict`: detections printed, drawn and saved like the reference's `yolo predict`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::args::{parse_bool, parse_imgsz, set_threads, HeadArgs};
use ferroyolo::data::source::resolve_source;
use ferroyolo::output::annotate::{draw_detections, BoxLabel};
use ferroyolo::output::run_dir::increment_run_dir;
use ferroyolo::{PredictOptions, Yolo};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Weights: a .pt or .safetensors path, or an official name (yolo26n.pt ... yolo26x.pt).
    #[arg(long, default_value = "yolo26n.pt")]
    model: PathBuf,
    /// Image file, directory, glob, .txt list of images, or http(s) URL.
    #[arg(long)]
    source: String,
    /// Inference size: 640 or h,w.
    #[arg(long, default_value = "640", value_parser = parse_imgsz)]
    imgsz: (u32, u32),
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    #[command(flatten)]
    head: HeadArgs,
    /// Pad to the next multiple of 32 only (true) or to the full imgsz square (false).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    rect: bool,
    /// Save annotated images.
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    save: bool,
    /// Save YOLO-format label files (class cx cy w h [conf]).
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    save_txt: bool,
    /// Include the confidence in label files.
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    save_conf: bool,
    /// Parent folder of the run folder.
    #[arg(long, default_value = "runs/detect")]
    project: PathBuf,
    /// Run folder name (numbered if it exists).
    #[arg(long, default_value = "predict")]
    name: String,
    /// Reuse the run folder if it exists.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    exist_ok: bool,
    /// Output: text (log lines) or json (one JSON document on stdout).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: PredictArgs) -> Result<()> {
    set_threads(a.threads)?;
    let json = a.format == "json";
    let model = Yolo::load(&a.model)?;
    let opts = PredictOptions {
        imgsz: a.imgsz,
        rect: a.rect,
        conf: a.conf,
        iou: a.head.iou,
        max_det: a.head.max_det,
        classes: a.head.classes.clone().map(|c| c.0),
        nms: a.head.nms,
        agnostic_nms: a.head.agnostic_nms,
    };
    let items = resolve_source(&a.source)?;
    let total = items.len();
    // The run folder is made when the first result is saved, so a run that reads nothing
    // leaves nothing behind.
    let mut save_dir: Option<PathBuf> = None;
    // Log lines go to stderr when stdout carries the JSON document.
    let mut log: Box<dyn Write> = if json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let (mut detected, mut failed, mut done) = (0usize, 0usize, 0usize);
    let mut documents = Vec::new();
    let mut last_shape = (0, 0);
    let mut speed_sum = [0.0f64; 3];
    for (i, (item, result)) in model.predict_items(items, &opts).enumerate() {
        let (res, mut img) = match result {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                eprintln!("WARNING: image {}/{total} {}: {e:#}; skipped", i + 1, item.name());
                continue;
            }
        };
        done += 1;
        detected += res.boxes.len();
        last_shape = res.input_shape;
        speed_sum[0] += res.speed.preprocess_ms;
        speed_sum[1] += res.speed.inference_ms;
        speed_sum[2] += res.speed.postprocess_ms;
        let kind = if res.source.starts_with("http") { "url" } else { "image" };
        writeln!(
            log,
            "{kind} {}/{total} {}: {}x{} {}, {:.1}ms",
            i + 1,
            res.source,
            res.input_shape.0,
            res.input_shape.1,
            res.summary(),
            res.speed.inference_ms
        )?;
        if a.save || a.save_txt {
            if save_dir.is_none() {
                let d = increment_run_dir(&a.project, &a.name, a.exist_ok)?;
                if a.save_txt {
                    std::fs::create_dir_all(d.join("labels")).with_context(|| format!("creating {}", d.join("labels").display()))?;
                }
                save_dir = Some(d);
            }
            let dir = save_dir.as_ref().expect("just set");
            let stem = std::path::Path::new(&item.name()).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| format!("image{i}"));
            if a.save {
                let labels: Vec<String> = res.boxes.iter().map(|d| format!("{} {:.2}", res.name(d), d.confidence)).collect();
                let boxes: Vec<BoxLabel> =
                    res.boxes.iter().zip(&labels).map(|(d, l)| BoxLabel { xyxy: d.xyxy, class_id: d.class_id, label: l }).collect();
                draw_detections(&mut img, &boxes);
                let out = dir.join(save_name(&item.name(), &stem));
                img.save(&out).with_context(|| format!("saving {}", out.display()))?;
            }
            if a.save_txt {
                let out = dir.join("labels").join(format!("{stem}.txt"));
                std::fs::write(&out, res.to_txt(a.save_conf)).with_context(|| format!("writing {}", out.display()))?;
            }
        }
        if json {
            documents.push(res.to_json());
        }
    }
    if done == 0 {
        anyhow::bail!("no image of '{}' could be read", a.source);
    }
    {
        let n = done as f64;
        writeln!(
            log,
            "Speed: {:.1}ms preprocess, {:.1}ms inference, {:.1}ms postprocess per image at shape (1, 3, {}, {})",
            speed_sum[0] / n,
            speed_sum[1] / n,
            speed_sum[2] / n,
            last_shape.0,
            last_shape.1
        )?;
    }
    let saved = match &save_dir {
        Some(d) => format!(" Results saved to {}", d.display()),
        None => String::new(),
    };
    writeln!(log, "Detected {detected} objects.{saved}")?;
    if failed > 0 {
        eprintln!("WARNING: {failed} of {total} images could not be read");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::Value::Array(documents))?);
    }
    Ok(())
}

/// The annotated image's file name: the source name, as PNG when its format cannot be written.
fn save_name(name: &str, stem: &str) -> String {
    let ext = std::path::Path::new(name).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jpg" | "jpeg" | "png" | "bmp") => name.to_string(),
        _ => format!("{stem}.png"),
    }
}
