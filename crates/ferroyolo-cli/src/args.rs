//! Argument conventions shared by every command.

use anyhow::{bail, Result};

/// Rewrites Ultralytics-style `key=value` words into `--key=value`, so clap sees one syntax.
/// Words that already start with `-`, and the command name, are left alone.
pub fn normalize(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && !a.starts_with('-') {
                // Bare boolean words of the reference's CLI (`yolo train resume`).
                if a == "resume" {
                    return "--resume".to_string();
                }
                if let Some((k, v)) = a.split_once('=') {
                    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                        return format!("--{}={v}", k.replace('_', "-"));
                    }
                }
            }
            a
        })
        .collect()
}

/// Parses `640`, `640,480`, `[640, 480]` or `(640, 480)` into `(h, w)`.
pub fn parse_imgsz(s: &str) -> Result<(u32, u32), String> {
    let nums = parse_list(s)?;
    match nums.as_slice() {
        [n] => Ok((*n as u32, *n as u32)),
        [h, w] => Ok((*h as u32, *w as u32)),
        _ => Err(format!("imgsz must be one or two integers, got '{s}'")),
    }
    .and_then(|(h, w)| if h == 0 || w == 0 { Err("imgsz must be positive".into()) } else { Ok((h, w)) })
}

/// Class ids given as one word (`classes=0,2`). A newtype, because clap would read a bare
/// `Vec` as a repeated option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassIds(pub Vec<usize>);

/// Detection-head and filtering options shared by `predict` and `val` (their `conf` defaults
/// differ, so `conf` stays with each command).
#[derive(clap::Args, Debug, Clone)]
pub struct HeadArgs {
    /// NMS IoU threshold (with nms=true).
    #[arg(long, default_value_t = 0.7)]
    pub iou: f32,
    /// Maximum detections per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Keep (predict) or score (val) only these class ids, e.g. classes=0,2.
    #[arg(long, value_parser = parse_classes)]
    pub classes: Option<ClassIds>,
    /// Use the one-to-many head with NMS instead of YOLO26's NMS-free head.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub nms: bool,
    /// Class-agnostic NMS / top-k.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub agnostic_nms: bool,
}

/// Parses `0`, `0,2`, `[0, 2]` into class ids.
pub fn parse_classes(s: &str) -> Result<ClassIds, String> {
    parse_list(s).map(ClassIds)
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let inner = s.trim().trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<usize>().map_err(|_| format!("'{p}' is not a non-negative integer")))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| if v.is_empty() { Err(format!("empty list '{s}'")) } else { Ok(v) })
}

/// Parses Python- and YAML-style booleans.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use true or false)")),
    }
}

/// Sets the compute thread count (0 = all cores).
pub fn set_threads(n: usize) -> Result<()> {
    if n > 0 {
        ferroyolo::engine::set_num_threads(n);
    }
    if n > 4096 {
        bail!("threads={n} is not reasonable");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_words_become_flags() {
        let v = normalize(["ferroyolo", "predict", "model=a.pt", "--conf", "0.3", "max_det=5", "source=x=y.jpg"].map(String::from));
        assert_eq!(v, ["ferroyolo", "predict", "--model=a.pt", "--conf", "0.3", "--max-det=5", "--source=x=y.jpg"]);
    }

    #[test]
    fn lists_and_booleans() {
        assert_eq!(parse_imgsz("640").unwrap(), (640, 640));
        assert_eq!(parse_imgsz("[640, 480]").unwrap(), (640, 480));
        assert!(parse_imgsz("0").is_err());
        assert!(parse_imgsz("a").is_err());
        assert_eq!(parse_classes("0,2").unwrap(), ClassIds(vec![0, 2]));
        assert!(!parse_bool("False").unwrap());
        assert!(parse_bool("maybe").is_err());
    }
}
