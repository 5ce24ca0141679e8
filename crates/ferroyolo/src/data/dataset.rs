//! Datasets in the YOLO format: the dataset YAML, image lists, and label files.
//!
//! A dataset YAML names a root (`path`), the image sources of each split (`train`, `val` or its
//! alias `validation`, `test`) and the class `names`. A split is an image directory (searched
//! recursively), a `*.txt` file listing image paths, or a list of those. Each image's labels live
//! at the same path with the last `/images/` component replaced by `/labels/` and the extension by
//! `.txt`, one `class cx cy w h` row (normalised to 0..1) per object; rows with more than 6 values
//! are polygons and stand for their bounding box.
//!
//! [`scan_split`] reads every label file and image header of a split. Entries the reference
//! rejects (malformed rows, classes out of range, coordinates outside [0, 1] beyond its 1 %
//! tolerance, negative sizes, unreadable images) are left out and reported as
//! [`DatasetIssue`]s; the rest of the split is still usable.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use rayon::prelude::*;
use serde_yaml::Value;

/// File extensions the reference treats as images (lower case). Formats this crate cannot decode
/// are still listed, so that they are reported rather than silently ignored.
pub const IMG_FORMATS: [&str; 15] =
    ["avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "jxl"];

/// Largest coordinate accepted in a label file: the reference allows 1 % beyond the image.
pub const COORD_TOLERANCE: f32 = 1.01;

/// A parsed dataset YAML with its paths resolved.
#[derive(Clone, Debug)]
pub struct DatasetConfig {
    /// The YAML file it was read from.
    pub yaml_path: PathBuf,
    /// The dataset root (`path`), absolute.
    pub root: PathBuf,
    /// Image sources of each split (directories or `*.txt` lists), absolute; empty when the YAML
    /// does not name the split.
    pub train: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
    pub test: Vec<PathBuf>,
    /// Class names, indexed by class id.
    pub names: Vec<String>,
}

impl DatasetConfig {
    /// Reads a dataset YAML.
    ///
    /// `path` is taken relative to the YAML file's folder (an empty or missing `path` means that
    /// folder); split entries are relative to `path`. `names` may be a list or an `{id: name}`
    /// map; `nc`, when given, must equal the number of names, and generates `class_0...` names
    /// when `names` is absent.
    pub fn load(yaml: impl AsRef<Path>) -> Result<Self> {
        let yaml = yaml.as_ref();
        let text = match std::fs::read_to_string(yaml) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("dataset YAML {} does not exist", yaml.display()),
            Err(e) => bail!("cannot read dataset YAML {}: {e}", yaml.display()),
        };
        let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("dataset YAML {} is not valid YAML", yaml.display()))?;
        Self::from_value(&doc, yaml)
    }

    /// Builds the config from an already parsed YAML document; `yaml` locates relative paths.
    pub fn from_value(doc: &Value, yaml: &Path) -> Result<Self> {
        let ctx = yaml.display();
        let map = doc.as_mapping().ok_or_else(|| anyhow!("dataset YAML {ctx} must be a mapping of keys to values"))?;
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());

        let yaml_abs = std::path::absolute(yaml).unwrap_or_else(|_| yaml.to_path_buf());
        let yaml_dir = yaml_abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let root = match get("path") {
            None => yaml_dir.clone(),
            Some(Value::String(s)) if s.trim().is_empty() => yaml_dir.clone(),
            Some(Value::String(s)) => {
                let p = PathBuf::from(s.trim());
                if p.is_absolute() {
                    p
                } else {
                    // Relative to the YAML file; the reference resolves against the working
                    // directory, so fall back to that when only it exists.
                    let by_yaml = yaml_dir.join(&p);
                    if !by_yaml.exists() && p.exists() {
                        std::path::absolute(&p).unwrap_or(p)
                    } else {
                        by_yaml
                    }
                }
            }
            Some(v) => bail!("dataset YAML {ctx}: 'path' must be a string, not {}", type_name(v)),
        };
        let root = normalize(&root);

        let split = |key: &str| -> Result<Vec<PathBuf>> {
            let entries = match get(key) {
                None => return Ok(Vec::new()),
                Some(Value::String(s)) => vec![s.trim().to_string()],
                Some(Value::Sequence(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(|s| s.trim().to_string()).ok_or_else(|| anyhow!("dataset YAML {ctx}: '{key}' entries must be strings")))
                    .collect::<Result<_>>()?,
                Some(v) => bail!("dataset YAML {ctx}: '{key}' must be a string or a list, not {}", type_name(v)),
            };
            Ok(entries
                .into_iter()
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let p = normalize(&root.join(&e));
                    // As the reference: "../x" that does not exist is retried as "x" under the root.
                    match e.strip_prefix("../") {
                        Some(rest) if !p.exists() => normalize(&root.join(rest)),
                        _ => p,
                    }
                })
                .collect())
        };
        let train = split("train")?;
        let mut val = split("val")?;
        if get("val").is_none() {
            val = split("validation")?;
        }
        let test = split("test")?;

        let nc = match get("nc") {
            None => None,
            Some(v) => Some(int_like(v).ok_or_else(|| anyhow!("dataset YAML {ctx}: 'nc: {}' must be an integer", scalar_text(v)))?),
        };
        let names = match get("names") {
            None => match nc {
                Some(n) => (0..n).map(|i| format!("class_{i}")).collect(),
                None => bail!("dataset YAML {ctx}: either 'names' or 'nc' is required"),
            },
            Some(v) => parse_names(v).with_context(|| format!("dataset YAML {ctx}: 'names'"))?,
        };
        if names.is_empty() {
            bail!("dataset YAML {ctx}: at least one class name is required");
        }
        if let Some(n) = nc {
            if n != names.len() {
                bail!("dataset YAML {ctx}: 'names' has {} entries but 'nc' is {n}; they must match", names.len());
            }
        }
        Ok(Self { yaml_path: yaml_abs, root, train, val, test, names })
    }

    /// Number of classes.
    pub fn nc(&self) -> usize {
        self.names.len()
    }

    /// The image sources of a split (`train`, `val`, `validation` or `test`), checked to exist.
    pub fn split(&self, name: &str) -> Result<&[PathBuf]> {
        let sources = match name {
            "train" => &self.train,
            "val" | "validation" => &self.val,
            "test" => &self.test,
            _ => bail!("unknown split '{name}' (use train, val or test)"),
        };
        if sources.is_empty() {
            bail!("dataset YAML {} has no '{name}' split", self.yaml_path.display());
        }
        if let Some(missing) = sources.iter().find(|p| !p.exists()) {
            bail!("dataset YAML {}: '{name}' images not found: {} does not exist", self.yaml_path.display(), missing.display());
        }
        Ok(sources)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn scalar_text(v: &Value) -> String {
    serde_yaml::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An integer, or a float / string holding one (`10`, `10.0`, `"10"`), as the reference accepts.
fn int_like(v: &Value) -> Option<usize> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f >= 0.0 && f.fract() == 0.0 && f < 1e9).then_some(f as usize)
}

/// `names` as a list, or a map from ids (integers or integer strings) to names; ids must cover
/// 0..n-1. Non-string names are written as text (`true` becomes `"true"`).
fn parse_names(v: &Value) -> Result<Vec<String>> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => scalar_text(other),
    };
    match v {
        Value::Sequence(items) => Ok(items.iter().map(text).collect()),
        Value::Mapping(m) => {
            let mut pairs = Vec::with_capacity(m.len());
            for (k, name) in m {
                let id = int_like(k).ok_or_else(|| anyhow!("class id '{}' is not a non-negative integer", scalar_text(k)))?;
                pairs.push((id, text(name)));
            }
            let n = pairs.len();
            let mut names = vec![None; n];
            for (id, name) in pairs {
                if id >= n {
                    bail!("{n} classes need ids 0-{}, but id {id} is used", n.saturating_sub(1));
                }
                if names[id].replace(name).is_some() {
                    bail!("class id {id} is given twice");
                }
            }
            Ok(names.into_iter().map(|n| n.unwrap_or_default()).collect())
        }
        other => bail!("must be a list or a mapping, not {}", type_name(other)),
    }
}

/// Removes `.` and resolves `..` components lexically (the paths may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether a file name has one of the [`IMG_FORMATS`] extensions (case-insensitive).
pub fn is_image_file(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.rsplit_once('.').is_some_and(|(_, ext)| IMG_FORMATS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Every image of the given sources, sorted by path as the reference sorts them.
///
/// A directory contributes the images anywhere below it (hidden entries skipped); a file is a
/// list with one image path per line, where `./x` is relative to the list's folder and other
/// relative paths to the working directory (or, when that does not exist, the list's folder).
pub fn list_images(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for src in sources {
        if src.is_dir() {
            let mut visited = HashSet::new();
            walk_images(src, &mut files, &mut visited).with_context(|| format!("listing images under {}", src.display()))?;
        } else if src.is_file() {
            let text = std::fs::read(src).with_context(|| format!("reading image list {}", src.display()))?;
            let text = String::from_utf8_lossy(&text);
            let parent = src.parent().unwrap_or(Path::new(""));
            for line in text.trim_start_matches('\u{feff}').trim().lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let p = match line.strip_prefix("./") {
                    Some(rest) => parent.join(rest),
                    None => {
                        let p = PathBuf::from(line);
                        if p.is_absolute() || p.exists() || !parent.join(&p).exists() {
                            p
                        } else {
                            parent.join(p)
                        }
                    }
                };
                if is_image_file(&p) {
                    files.push(p);
                }
            }
        } else {
            bail!("{} does not exist", src.display());
        }
    }
    files.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    files.dedup();
    if files.is_empty() {
        let list: Vec<String> = sources.iter().map(|s| s.display().to_string()).collect();
        bail!("no images found in {} (supported extensions: {})", list.join(", "), IMG_FORMATS.join(", "));
    }
    Ok(files)
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) -> Result<()> {
    // Symlinked folders are followed, but a folder is entered only once (no cycles).
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if !visited.insert(canonical) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            walk_images(&path, out, visited)?;
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The label file of an image: the last `/images/` becomes `/labels/`, the extension `.txt`.
pub fn label_path(image: &Path) -> PathBuf {
    let s = image.to_string_lossy();
    let sep = std::path::MAIN_SEPARATOR;
    let (from, to) = (format!("{sep}images{sep}"), format!("{sep}labels{sep}"));
    let swapped = match s.rfind(&from) {
        Some(i) => format!("{}{to}{}", &s[..i], &s[i + from.len()..]),
        None => s.into_owned(),
    };
    // The reference cuts at the last dot of the whole path.
    let stem = swapped.rsplit_once('.').map_or(swapped.as_str(), |(a, _)| a);
    PathBuf::from(format!("{stem}.txt"))
}

/// One labelled object: class and normalised `cx, cy, w, h`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelBox {
    pub class_id: usize,
    pub xywh: [f32; 4],
}

/// A problem with one image or label file, which keeps that image out of the split.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetIssue {
    /// The offending file (the image, or its label file).
    pub file: PathBuf,
    /// 1-based line of the label file, when one line is at fault.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for DatasetIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A label file's rows, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedLabels {
    pub boxes: Vec<LabelBox>,
    /// Duplicate rows dropped.
    pub duplicates: usize,
}

/// What is wrong with a label file: message and the 1-based line at fault, if one is.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelError {
    pub line: Option<usize>,
    pub message: String,
}

impl LabelError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        Self { line: Some(line), message: message.into() }
    }
}

/// Parses and checks a label file's text against `nc` classes, with the reference's rules:
/// five values per row, or polygons (`class x1 y1 x2 y2 ...`, more than 6 values) in every row;
/// integer classes below `nc`; coordinates at most 1.01; no negative value except down to -0.01
/// for positions when widths and heights are non-negative. Exact duplicate rows are removed (the
/// remaining rows then come sorted, as the reference's `np.unique` leaves them).
pub fn parse_labels(text: &str, nc: usize) -> std::result::Result<ParsedLabels, LabelError> {
    let text = text.trim_start_matches('\u{feff}');
    // (1-based line number, values) of the non-blank rows.
    let rows: Vec<(usize, Vec<&str>)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let number = |line: usize, s: &str| -> std::result::Result<f32, LabelError> {
        let v: f32 = s.parse().map_err(|_| LabelError::at(line, format!("'{s}' is not a number")))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(LabelError::at(line, format!("'{s}' is not a finite number")))
        }
    };

    // (line, class value, xywh) of every row.
    let mut parsed: Vec<(usize, f32, [f32; 4], Vec<f32>)> = Vec::with_capacity(rows.len());
    let is_polygon = rows.iter().any(|(_, v)| v.len() > 6);
    if is_polygon {
        if let Some((line, _)) = rows.iter().find(|(_, v)| v.len() == 5) {
            return Err(LabelError::at(*line, "labels mix polygon and box rows"));
        }
        for (line, v) in &rows {
            let coords = v[1..].iter().map(|s| number(*line, s)).collect::<std::result::Result<Vec<f32>, _>>()?;
            if coords.is_empty() || coords.len() % 2 != 0 {
                return Err(LabelError::at(*line, format!("polygon needs x y pairs, got {} coordinates", coords.len())));
            }
            let xs = coords.iter().step_by(2);
            let ys = coords.iter().skip(1).step_by(2);
            let (x1, x2) = xs.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let (y1, y2) = ys.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
            let xywh = [(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1];
            parsed.push((*line, number(*line, v[0])?, xywh, coords));
        }
    } else {
        for (line, v) in &rows {
            if v.len() != 5 {
                return Err(LabelError::at(*line, format!("labels require 5 columns, {} columns detected", v.len())));
            }
            let mut xywh = [0f32; 4];
            for (o, s) in xywh.iter_mut().zip(&v[1..]) {
                *o = number(*line, s)?;
            }
            parsed.push((*line, number(*line, v[0])?, xywh, Vec::new()));
        }
    }

    // The reference checks the whole array, one rule after the other; report the first row that
    // breaks the first failing rule.
    let first = |bad: &dyn Fn(f32, &[f32; 4]) -> bool| parsed.iter().find(|(_, c, b, _)| bad(*c, b));
    if let Some((line, _, b, _)) = first(&|_, b| b.iter().any(|&v| v > COORD_TOLERANCE)) {
        let v = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        return Err(LabelError::at(*line, format!("coordinate {v} is out of bounds (labels must be normalised to 0-1)")));
    }
    let overall_min = parsed.iter().flat_map(|(_, c, b, _)| std::iter::once(*c).chain(b.iter().copied())).fold(f32::INFINITY, f32::min);
    let sizes_ok = parsed.iter().all(|(_, _, b, _)| b[2] >= 0.0 && b[3] >= 0.0);
    if !(overall_min >= 0.0 || (overall_min >= -0.01 && sizes_ok)) {
        if let Some((line, _, b, _)) = first(&|_, b| b[2] < 0.0 || b[3] < 0.0) {
            return Err(LabelError::at(*line, format!("negative box size (width {}, height {})", b[2], b[3])));
        }
        if let Some((line, c, b, _)) = first(&|c, b| c < -0.01 || b.iter().any(|&v| v < -0.01)) {
            let v = b.iter().copied().fold(*c, f32::min);
            return Err(LabelError::at(*line, format!("negative label value {v}")));
        }
    }
    if let Some((line, c, _, _)) = first(&|c, _| c.fract() != 0.0) {
        return Err(LabelError::at(*line, format!("class {c} is not an integer")));
    }
    if let Some((line, c, _, _)) = first(&|c, _| c as usize >= nc) {
        return Err(LabelError::at(
            *line,
            format!("class {} exceeds the dataset's class count {nc} (classes are 0-{})", *c as i64, nc.saturating_sub(1)),
        ));
    }

    let n = parsed.len();
    let mut unique: Vec<(usize, f32, [f32; 4], Vec<f32>)> = Vec::with_capacity(n);
    if is_polygon {
        // Distinct polygons may share a class and box; only identical rows are duplicates.
        for row in parsed {
            if !unique.iter().any(|u| u.1 == row.1 && u.3 == row.3) {
                unique.push(row);
            }
        }
    } else {
        let key = |r: &(usize, f32, [f32; 4], Vec<f32>)| [r.1, r.2[0], r.2[1], r.2[2], r.2[3]];
        let mut sorted = parsed.clone();
        sorted.sort_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal));
        sorted.dedup_by(|a, b| key(a) == key(b));
        // Only when something was dropped does the reference reorder the rows.
        unique = if sorted.len() < n { sorted } else { parsed };
    }
    let duplicates = n - unique.len();
    let boxes = unique.into_iter().map(|(_, c, xywh, _)| LabelBox { class_id: c as usize, xywh }).collect();
    Ok(ParsedLabels { boxes, duplicates })
}

/// One usable image of a split with its labels.
#[derive(Clone, Debug)]
pub struct LabeledImage {
    pub image: PathBuf,
    pub label_file: PathBuf,
    /// `(h, w)` as decoded (EXIF orientation applied), read from the file header.
    pub shape: (u32, u32),
    pub boxes: Vec<LabelBox>,
}

/// The result of scanning a split: its usable images and what was wrong with the rest.
#[derive(Clone, Debug)]
pub struct LabeledSplit {
    /// Split name (`val`, ...).
    pub split: String,
    pub images: Vec<LabeledImage>,
    /// One entry per image left out.
    pub issues: Vec<DatasetIssue>,
    /// Images without a label file (backgrounds).
    pub missing_labels: usize,
    /// Images whose label file is empty (backgrounds).
    pub empty_labels: usize,
    /// Duplicate label rows removed, over all files.
    pub duplicates: usize,
    /// Class names of the dataset.
    pub names: Vec<String>,
}

impl LabeledSplit {
    /// Number of image files found, usable or not.
    pub fn total(&self) -> usize {
        self.images.len() + self.issues.len()
    }

    /// The one-line scan summary, in the reference's words.
    pub fn summary(&self) -> String {
        format!(
            "{} images, {} backgrounds, {} corrupt",
            self.images.len(),
            self.missing_labels + self.empty_labels,
            self.issues.len()
        )
    }
}

/// Reads an image's `(h, w)` from its header, after EXIF orientation; falls back to decoding it
/// when the header reader does not know the variant. Images under 10 pixels a side are refused,
/// as the reference refuses them.
pub fn image_shape(path: &Path) -> Result<(u32, u32)> {
    let header = || -> Result<(u32, u32)> {
        let reader = ImageReader::open(path)?.with_guessed_format()?;
        if reader.format().is_none() {
            bail!("not an image (unrecognised file format)");
        }
        let mut dec = reader.into_decoder()?;
        let (w, h) = dec.dimensions();
        let rotated = matches!(
            dec.orientation().unwrap_or(Orientation::NoTransforms),
            Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
        );
        Ok(if rotated { (w, h) } else { (h, w) })
    };
    let (h, w) = match header() {
        Ok(s) => s,
        Err(_) => {
            let img = super::image_io::load_image(path)?;
            (img.height(), img.width())
        }
    };
    if h < 10 || w < 10 {
        bail!("image size {h}x{w} is under 10 pixels");
    }
    Ok((h, w))
}

/// Reads the labels and image headers of one split of a dataset, in parallel.
///
/// Images with a problem (unreadable, too small, or a bad label file) are left out and listed in
/// [`LabeledSplit::issues`]; the call fails only when the split is missing or no image is usable.
pub fn scan_split(cfg: &DatasetConfig, split: &str) -> Result<LabeledSplit> {
    let sources = cfg.split(split)?;
    let files = list_images(sources).with_context(|| format!("dataset {} split '{split}'", cfg.yaml_path.display()))?;
    scan_images(&files, &cfg.names, split)
}

/// [`scan_split`] for an explicit list of images and the dataset's class names.
pub fn scan_images(files: &[PathBuf], names: &[String], split: &str) -> Result<LabeledSplit> {
    enum Outcome {
        Ok(LabeledImage, LabelState, usize),
        Bad(DatasetIssue),
    }
    #[derive(PartialEq)]
    enum LabelState {
        Found,
        Missing,
        Empty,
    }
    let nc = names.len();
    let outcomes: Vec<Outcome> = files
        .par_iter()
        .map(|image| {
            let label_file = label_path(image);
            let shape = match image_shape(image) {
                Ok(s) => s,
                Err(e) => {
                    // Decoder errors start with the path, which the issue prints anyway.
                    let msg = format!("{e:#}");
                    let prefix = format!("{}: ", image.display());
                    let message = msg.strip_prefix(&prefix).unwrap_or(&msg).to_string();
                    return Outcome::Bad(DatasetIssue { file: image.clone(), line: None, message });
                }
            };
            let (parsed, state) = match std::fs::read(&label_file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (ParsedLabels::default(), LabelState::Missing),
                Err(e) => {
                    return Outcome::Bad(DatasetIssue { file: label_file, line: None, message: format!("cannot read label file: {e}") })
                }
                Ok(bytes) => {
                    let Ok(text) = String::from_utf8(bytes) else {
                        return Outcome::Bad(DatasetIssue { file: label_file, line: None, message: "label file is not UTF-8 text".into() });
                    };
                    match parse_labels(&text, nc) {
                        Ok(p) if p.boxes.is_empty() => (p, LabelState::Empty),
                        Ok(p) => (p, LabelState::Found),
                        Err(e) => return Outcome::Bad(DatasetIssue { file: label_file, line: e.line, message: e.message }),
                    }
                }
            };
            let dup = parsed.duplicates;
            Outcome::Ok(LabeledImage { image: image.clone(), label_file, shape, boxes: parsed.boxes }, state, dup)
        })
        .collect();
    let mut out = LabeledSplit {
        split: split.to_string(),
        images: Vec::with_capacity(files.len()),
        issues: Vec::new(),
        missing_labels: 0,
        empty_labels: 0,
        duplicates: 0,
        names: names.to_vec(),
    };
    for o in outcomes {
        match o {
            Outcome::Ok(img, state, dup) => {
                out.missing_labels += (state == LabelState::Missing) as usize;
                out.empty_labels += (state == LabelState::Empty) as usize;
                out.duplicates += dup;
                out.images.push(img);
            }
            Outcome::Bad(issue) => out.issues.push(issue),
        }
    }
    if out.images.is_empty() {
        let first: Vec<String> = out.issues.iter().take(5).map(|i| i.to_string()).collect();
        bail!("no usable images in split '{split}' ({} files, all rejected):\n  {}", files.len(), first.join("\n  "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferroyolo-dataset-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn label_paths_swap_the_last_images_folder() {
        let sep = std::path::MAIN_SEPARATOR;
        let p = PathBuf::from(format!("{sep}d{sep}images{sep}x{sep}images{sep}a.b.jpg"));
        assert_eq!(label_path(&p), PathBuf::from(format!("{sep}d{sep}images{sep}x{sep}labels{sep}a.b.txt")));
        let q = PathBuf::from(format!("{sep}d{sep}pics{sep}a.png"));
        assert_eq!(label_path(&q), PathBuf::from(format!("{sep}d{sep}pics{sep}a.txt")));
    }

    #[test]
    fn box_rows_parse_and_duplicates_go() {
        let p = parse_labels("\u{feff}1 0.5 0.5 0.2 0.2\n\n0 0.1 0.1 0.1 0.1\n1 0.5 0.5 0.2 0.2\n", 2).unwrap();
        assert_eq!(p.duplicates, 1);
        // After removing a duplicate the rows come sorted (class 0 first).
        assert_eq!(p.boxes.iter().map(|b| b.class_id).collect::<Vec<_>>(), vec![0, 1]);
        let q = parse_labels("1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n", 2).unwrap();
        assert_eq!(q.boxes.iter().map(|b| b.class_id).collect::<Vec<_>>(), vec![1, 0]);
        assert!(parse_labels("", 2).unwrap().boxes.is_empty());
    }

    #[test]
    fn polygons_become_boxes() {
        let p = parse_labels("3 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n", 4).unwrap();
        let b = p.boxes[0];
        assert_eq!(b.class_id, 3);
        for (a, e) in b.xywh.iter().zip([0.3, 0.4, 0.4, 0.4]) {
            assert!((a - e).abs() < 1e-6, "{:?}", b.xywh);
        }
        let mixed = parse_labels("3 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n1 0.5 0.5 0.2 0.2\n", 4).unwrap_err();
        assert_eq!(mixed.line, Some(2));
        assert!(mixed.message.contains("mix"));
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let cases = [
            ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", 2, "5 columns"),
            ("0 0.5 0.5 0.2 0.2\n80 0.5 0.5 0.2 0.2\n", 2, "exceeds"),
            ("0 0.5 0.5 -0.2 0.2\n", 1, "negative box size"),
            ("0 0.5 0.5 0.2 1.2\n", 1, "out of bounds"),
            ("0.5 0.5 0.5 0.2 0.2\n", 1, "not an integer"),
            ("0 0.5 abc 0.2 0.2\n", 1, "not a number"),
            ("0 0.5 nan 0.2 0.2\n", 1, "finite"),
            ("0 -0.5 0.5 0.2 0.2\n", 1, "negative label value"),
        ];
        for (text, line, what) in cases {
            let e = parse_labels(text, 80).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e:?}");
            assert!(e.message.contains(what), "{text:?}: {e:?}");
        }
        // Within the reference's tolerances.
        assert!(parse_labels("0 1.005 0.5 0.2 0.2\n", 80).is_ok());
        assert!(parse_labels("0 -0.005 0.5 0.2 0.2\n", 80).is_ok());
    }

    #[test]
    fn yaml_paths_names_and_errors() {
        let d = temp_dir("yaml");
        std::fs::create_dir_all(d.join("data/images/val")).unwrap();
        let y = d.join("d.yaml");
        std::fs::write(&y, "path: data\ntrain: images/train\nvalidation: [images/val]\nnames:\n  0: a\n  1: b\nnc: 2\n").unwrap();
        let c = DatasetConfig::load(&y).unwrap();
        assert_eq!(c.names, ["a", "b"]);
        assert_eq!(c.root, normalize(&std::path::absolute(d.join("data")).unwrap()));
        assert_eq!(c.split("val").unwrap(), [c.root.join("images/val")]);
        let e = c.split("train").unwrap_err().to_string();
        assert!(e.contains("train") && e.contains("does not exist"), "{e}");
        assert!(c.split("test").unwrap_err().to_string().contains("no 'test' split"));

        std::fs::write(&y, "val: x\nnames: [a, b]\nnc: 3\n").unwrap();
        assert!(DatasetConfig::load(&y).unwrap_err().to_string().contains("must match"));
        std::fs::write(&y, "val: x\nnc: 2\n").unwrap();
        assert_eq!(DatasetConfig::load(&y).unwrap().names, ["class_0", "class_1"]);
        std::fs::write(&y, "val: x\nnames: {0: a, 2: b}\n").unwrap();
        assert!(format!("{:#}", DatasetConfig::load(&y).unwrap_err()).contains("id 2"));
        let missing = DatasetConfig::load(d.join("nope.yaml")).unwrap_err().to_string();
        assert!(missing.contains("nope.yaml") && missing.contains("does not exist"), "{missing}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn image_lists_resolve_dot_slash_against_the_list() {
        let d = temp_dir("list");
        std::fs::create_dir_all(d.join("images/sub")).unwrap();
        for n in ["images/b.jpg", "images/sub/a.PNG", "images/notes.txt", "images/.hidden.jpg"] {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        let listed = list_images(&[d.join("images")]).unwrap();
        assert_eq!(listed, vec![d.join("images/b.jpg"), d.join("images/sub/a.PNG")]);
        std::fs::write(d.join("list.txt"), "./images/b.jpg\n\n./images/sub/a.PNG\n").unwrap();
        assert_eq!(list_images(&[d.join("list.txt")]).unwrap(), vec![d.join("images/b.jpg"), d.join("images/sub/a.PNG")]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
