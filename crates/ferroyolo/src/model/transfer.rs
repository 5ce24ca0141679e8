//! Transfer learning as the reference trainer does it: pretrained weights loaded into a freshly
//! initialised model with the dataset's classes (`BaseModel.load`), and the `freeze` rule that
//! decides which parameters stay fixed while training.
//!
//! Loading, in the reference's order:
//! 1. The target is built from the source's model config with the new `nc`, freshly initialised.
//!    When the Detect input widths match, its class branch keeps the source's hidden width (the
//!    nc rule would give another one for nc < 80 at scale n), so the hidden class layers transfer
//!    and only the final 1×1 class convs are new (default init, then the head's bias init).
//! 2. Final class-conv rows are remapped by class name when both sides have real names, some
//!    match, and order or count differ.
//! 3. Every other tensor with the same name and shape is copied.
//! 4. A first convolution with another input-channel count is filled from the source filters.
//! 5. A target with placeholder names adopts the source's when everything transferred.

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::config::{self, LayerSpec};
use super::init;
use crate::weights::{Checkpoint, StoredTensor, TensorValues};

/// Input channels of every ferroyolo model (the config resolver builds RGB networks only).
pub const MODEL_CHANNELS: usize = 3;

/// What to build and fill from the pretrained checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// Model config (a YOLO26 YAML dict); `None`: the source checkpoint's embedded config, as
    /// `train model=yolo26n.pt` does.
    pub model_yaml: Option<Value>,
    /// Scale letter (`n` … `x`); `None`: the config's own.
    pub scale: Option<String>,
    /// Number of classes of the dataset.
    pub nc: usize,
    /// Class names of the dataset, index = class id (`nc` entries). Use
    /// [`TargetSpec::placeholder_names`] when the dataset has none.
    pub names: Vec<String>,
    /// Image channels of the dataset (`channels` in its YAML, 3 by default).
    pub channels: usize,
}

impl TargetSpec {
    /// The source's own architecture with the dataset's classes, RGB input.
    pub fn new(nc: usize, names: Vec<String>) -> Self {
        Self { model_yaml: None, scale: None, nc, names, channels: MODEL_CHANNELS }
    }

    /// The names a model built from a YAML config has: `"0"`, `"1"`, … (the reference's
    /// placeholders, which never take part in the name remap).
    pub fn placeholder_names(nc: usize) -> Vec<String> {
        (0..nc).map(|i| i.to_string()).collect()
    }
}

/// One class row of the final class convs copied from a source class of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemappedRow {
    /// Class id in the target (dataset) model.
    pub target: usize,
    /// Class id in the source model.
    pub source: usize,
    /// The target's class name.
    pub name: String,
}

/// What [`transfer`] did. Its `Display` prints the reference's log lines.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferReport {
    /// Target tensors (state_dict entries, buffers included) filled from the source, counted as the
    /// reference counts them: copied, plus remapped class convs, plus a filled first conv.
    pub transferred: usize,
    /// Target state_dict entries.
    pub total: usize,
    /// Target classes whose final class-conv rows come from the source, by name.
    pub remapped_rows: Vec<RemappedRow>,
    /// Final class-conv tensors (weights and biases, both branches) whose rows were remapped.
    pub remapped_tensors: usize,
    /// Number of target classes.
    pub target_nc: usize,
    /// `(nc rule, kept)`: the class-branch hidden width the nc rule gives and the source width
    /// the target was built with instead, when they differ.
    pub cls_width: Option<(usize, usize)>,
    /// Whether `model.0.conv.weight` was filled from source filters of another channel count.
    pub first_conv_filled: bool,
    /// Whether the target took the source's class names (it had placeholders).
    pub names_adopted: bool,
    /// Target tensors left wholly at their fresh init, in state_dict order.
    pub fresh: Vec<String>,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.remapped_tensors > 0 {
            writeln!(
                f,
                "Remapped {}/{} cls head rows from pretrained weights by class name",
                self.remapped_rows.len(),
                self.target_nc
            )?;
        }
        write!(f, "Transferred {}/{} items from pretrained weights", self.transferred, self.total)
    }
}

/// The reference's class-name normalisation: surrounding whitespace stripped, lower case.
fn normalize_name(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Names that carry no meaning: `"0"`, `"1"`, … (an empty list counts too, as in the reference).
fn is_placeholder(names: &[String]) -> bool {
    names.iter().enumerate().all(|(i, n)| *n == i.to_string())
}

/// For each target class, the source class of the same name, or `None` when the remap does not
/// apply (placeholder names, no match, or identical order and count).
fn class_mapping(source: &[String], target: &[String]) -> Option<Vec<Option<usize>>> {
    if is_placeholder(source) || is_placeholder(target) {
        return None;
    }
    // Later duplicates win, as in a dict built from the source names.
    let lookup: HashMap<String, usize> = source.iter().enumerate().map(|(i, n)| (normalize_name(n), i)).collect();
    let mapping: Vec<Option<usize>> = target.iter().map(|n| lookup.get(&normalize_name(n)).copied()).collect();
    let matched = mapping.iter().flatten().count();
    let identity = source.len() == target.len() && mapping.iter().enumerate().all(|(i, m)| *m == Some(i));
    (matched > 0 && !identity).then_some(mapping)
}

/// The reference's `is_fused`: fewer than 10 BatchNorm layers left.
fn is_fused(ckpt: &Checkpoint) -> bool {
    ckpt.tensors.iter().filter(|(n, _)| n.ends_with(".bn.weight")).count() < 10
}

/// Loads `source` (pretrained weights) into a fresh model described by `target`, initialised
/// deterministically from `seed`, as the reference's `BaseModel.load` does when the trainer
/// starts from a `.pt` file. Returns the filled checkpoint (fp32, ready for
/// [`crate::model::from_checkpoint`]) and what was transferred.
pub fn transfer(source: &Checkpoint, target: &TargetSpec, seed: u64) -> Result<(Checkpoint, TransferReport)> {
    let src_path = source.source.display().to_string();
    if target.channels != MODEL_CHANNELS {
        bail!(
            "a {}-channel dataset is not supported: ferroyolo models take {MODEL_CHANNELS}-channel (RGB) images",
            target.channels
        );
    }
    if target.nc == 0 {
        bail!("the dataset must have at least one class");
    }
    if target.names.len() != target.nc {
        bail!("{} class names for {} classes", target.names.len(), target.nc);
    }
    let cfg = target.model_yaml.as_ref().unwrap_or(&source.model_yaml);
    if cfg.is_null() {
        bail!("{src_path}: the checkpoint has no embedded model config to build the model from");
    }
    let plan = config::resolve(cfg, Some(target.nc), target.scale.as_deref()).with_context(|| format!("{src_path}: model config"))?;
    let detect = plan.layers.len() - 1;
    let ch = match &plan.layers[detect].spec {
        LayerSpec::Detect { ch, .. } => ch.clone(),
        _ => bail!("{src_path}: the model config does not end with Detect"),
    };
    let src_index: HashMap<&str, &StoredTensor> = source.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();

    // 1. Keep the source's class-branch width when the head sees the same feature widths.
    let rule_width = ch[0].max(target.nc.min(100));
    let src_input_widths: Vec<Option<usize>> = (0..=ch.len())
        .map(|i| src_index.get(format!("model.{detect}.cv2.{i}.0.conv.weight").as_str()).and_then(|t| t.shape.get(1).copied()))
        .collect();
    let same_head_inputs = src_input_widths[..ch.len()].iter().zip(&ch).all(|(s, c)| *s == Some(*c)) && src_input_widths[ch.len()].is_none();
    let src_width = src_index.get(format!("model.{detect}.cv3.0.2.weight").as_str()).and_then(|t| t.shape.get(1).copied());
    let cls_width = match src_width {
        Some(w) if same_head_inputs && !is_fused(source) && w != rule_width => Some(w),
        _ => None,
    };
    let mut built = init::fresh_checkpoint(cfg, target.scale.as_deref(), target.nc, target.names.clone(), seed, cls_width)
        .with_context(|| format!("{src_path}: building the target model"))?;

    // 2. Class rows by name.
    let mut remapped: HashSet<String> = HashSet::new();
    let mut remapped_rows = Vec::new();
    if let Some(mapping) = class_mapping(&source.names, &target.names) {
        for (name, t) in built.tensors.iter_mut() {
            if !is_final_cls_conv(name, detect) || t.shape.first() != Some(&target.nc) {
                continue;
            }
            let Some(s) = src_index.get(name.as_str()) else { continue };
            // A class conv of another input width (another scale) cannot take the source rows.
            if s.shape.get(1..) != t.shape.get(1..) {
                continue;
            }
            if s.shape[0] != source.names.len() {
                bail!("{src_path}: '{name}' has {} class rows but the checkpoint names {} classes", s.shape[0], source.names.len());
            }
            let (Some(src_vals), TensorValues::F32(dst_vals)) = (s.values.as_f32(), &mut t.values) else {
                bail!("{src_path}: '{name}' is not a floating-point tensor");
            };
            let row: usize = t.shape[1..].iter().product();
            for (to, from) in mapping.iter().enumerate() {
                if let Some(from) = from {
                    dst_vals[to * row..][..row].copy_from_slice(&src_vals[from * row..][..row]);
                }
            }
            remapped.insert(name.clone());
        }
        if !remapped.is_empty() {
            remapped_rows = mapping
                .iter()
                .enumerate()
                .filter_map(|(to, from)| from.map(|source| RemappedRow { target: to, source, name: target.names[to].clone() }))
                .collect();
        }
    }

    // 3. Everything else with the same name and shape.
    let mut transferred = remapped.len();
    let mut fresh = Vec::new();
    for (name, t) in built.tensors.iter_mut() {
        if remapped.contains(name) {
            continue;
        }
        match src_index.get(name.as_str()) {
            Some(s) if s.shape == t.shape && same_value_type(&s.values, &t.values) => {
                t.values = s.values.clone();
                transferred += 1;
            }
            _ => fresh.push(name.clone()),
        }
    }

    // 4. A first conv of another input-channel count takes the source filters it can.
    const FIRST_CONV: &str = "model.0.conv.weight";
    let mut first_conv_filled = false;
    if let (Some(pos), Some(s)) = (fresh.iter().position(|n| n == FIRST_CONV), src_index.get(FIRST_CONV)) {
        let t = built.tensors.iter_mut().find(|(n, _)| n == FIRST_CONV).map(|(_, t)| t).ok_or_else(|| anyhow!("{FIRST_CONV} missing"))?;
        if s.shape.len() == 4 && t.shape.len() == 4 && s.shape[2..] == t.shape[2..] {
            let (Some(src_vals), TensorValues::F32(dst_vals)) = (s.values.as_f32(), &mut t.values) else {
                bail!("{src_path}: '{FIRST_CONV}' is not a floating-point tensor");
            };
            fill_first_conv(dst_vals, &t.shape, src_vals, &s.shape);
            fresh.remove(pos);
            transferred += 1;
            first_conv_filled = true;
        }
    }

    // 5. Placeholder names give way to the source's when the whole model transferred.
    let total = built.tensors.len();
    let names_adopted = transferred == total && target.names == TargetSpec::placeholder_names(source.names.len());
    if names_adopted {
        built.names = source.names.clone();
    }
    built.source = source.source.clone();

    let report = TransferReport {
        transferred,
        total,
        remapped_rows,
        remapped_tensors: remapped.len(),
        target_nc: target.nc,
        cls_width: cls_width.map(|w| (rule_width, w)),
        first_conv_filled,
        names_adopted,
        fresh,
    };
    Ok((built, report))
}

/// `model.<detect>.{cv3,one2one_cv3}.<level>.2.{weight,bias}`: the final class convs.
fn is_final_cls_conv(name: &str, detect: usize) -> bool {
    let Some(rest) = name.strip_prefix(&format!("model.{detect}.")) else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 4
        && matches!(parts[0], "cv3" | "one2one_cv3")
        && parts[1].parse::<usize>().is_ok()
        && parts[2] == "2"
        && matches!(parts[3], "weight" | "bias")
}

fn same_value_type(a: &TensorValues, b: &TensorValues) -> bool {
    matches!((a, b), (TensorValues::F32(_), TensorValues::F32(_)) | (TensorValues::I64(_), TensorValues::I64(_)))
}

/// The reference's first-conv fill: the leading `min` output filters and input channels are
/// copied; when either side has a single input channel, it gets the sum of the source's channels.
fn fill_first_conv(dst: &mut [f32], dst_shape: &[usize], src: &[f32], src_shape: &[usize]) {
    let (dst_in, src_in, kernel) = (dst_shape[1], src_shape[1], dst_shape[2] * dst_shape[3]);
    let outs = dst_shape[0].min(src_shape[0]);
    let ins = dst_in.min(src_in);
    for o in 0..outs {
        let src_filter = &src[o * src_in * kernel..][..src_in * kernel];
        let dst_filter = &mut dst[o * dst_in * kernel..][..dst_in * kernel];
        if ins == 1 {
            for k in 0..kernel {
                dst_filter[k] = (0..src_in).map(|c| src_filter[c * kernel + k]).sum();
            }
        } else {
            dst_filter[..ins * kernel].copy_from_slice(&src_filter[..ins * kernel]);
        }
    }
}

/// Which layers stay fixed while training (`freeze`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum FreezeSpec {
    /// Nothing but the always-frozen names.
    #[default]
    None,
    /// Layers `0..N`.
    First(usize),
    /// Layer indices or name fragments (`"23.cv2"`), each meaning the prefix `model.<x>.`.
    List(Vec<String>),
}

impl fmt::Display for FreezeSpec {
    /// The value as it would be written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "None"),
            Self::First(n) => write!(f, "{n}"),
            Self::List(items) => write!(f, "[{}]", items.join(",")),
        }
    }
}

/// Name fragments frozen whatever `freeze` says (the reference's DFL; YOLO26 has none).
pub const ALWAYS_FROZEN: &[&str] = &[".dfl"];

impl FreezeSpec {
    /// Parses the command-line value: `10`, `[0,1,"23.cv2"]`, `0,1,2`, `(0,1)`, `23.cv2`, or
    /// `none` / empty for nothing. (The reference silently freezes nothing for a tuple such as
    /// `0,1,2` or a bare fragment; both mean the listed layers here.)
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let bad = |why: &str| anyhow!("freeze={text}: {why}; expected a layer count (freeze=10) or a list (freeze=[0,1,\"23.cv2\"])");
        if t.is_empty() || t.eq_ignore_ascii_case("none") {
            return Ok(Self::None);
        }
        if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
            return Err(bad("a boolean is not a layer count"));
        }
        if let Ok(n) = t.parse::<i64>() {
            return usize::try_from(n).map(Self::First).map_err(|_| bad("a negative layer count"));
        }
        let bracketed = (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('(') && t.ends_with(')'));
        let inner = if bracketed { &t[1..t.len() - 1] } else { t };
        if !bracketed && !inner.contains(',') && inner.parse::<f64>().is_ok() {
            return Err(bad("a layer count must be a whole number"));
        }
        let mut items = Vec::new();
        for raw in inner.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                continue; // a trailing comma, as Python allows
            }
            let unquoted = ['"', '\''].iter().find_map(|q| item.strip_prefix(*q).and_then(|s| s.strip_suffix(*q))).unwrap_or(item);
            if unquoted.is_empty() || unquoted.contains(['[', ']', '(', ')', '"', '\'']) {
                return Err(bad(&format!("cannot read the entry '{item}'")));
            }
            items.push(normalize_item(unquoted));
        }
        Ok(Self::List(items))
    }

    /// Reads the value as a YAML/JSON config holds it: an integer, a list of integers and
    /// strings, or null.
    pub fn from_json(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(Self::None),
            Value::Number(n) => n
                .as_u64()
                .map(|n| Self::First(n as usize))
                .ok_or_else(|| anyhow!("freeze: {n} is not a layer count (a non-negative whole number)")),
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::Number(n) if n.is_i64() => Ok(n.to_string()),
                    Value::String(s) if !s.trim().is_empty() => Ok(normalize_item(s.trim())),
                    other => Err(anyhow!("freeze: list entry {other} is neither a layer index nor a name fragment")),
                })
                .collect::<Result<_>>()
                .map(Self::List),
            Value::String(s) => Self::parse(s),
            other => bail!("freeze: {other} is neither a layer count nor a list"),
        }
    }
}

impl FreezeSpec {
    /// The value as a config holds it (`null`, an integer, or a list of integers and strings),
    /// the inverse of [`FreezeSpec::from_json`].
    pub fn to_json(&self) -> Value {
        match self {
            Self::None => Value::Null,
            Self::First(n) => Value::from(*n),
            Self::List(items) => {
                Value::Array(items.iter().map(|x| x.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(x.as_str()))).collect())
            }
        }
    }
}

impl serde::Serialize for FreezeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for FreezeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// Integers are written as Python prints them (`007` → `7`); fragments stay as written.
fn normalize_item(item: &str) -> String {
    item.parse::<i64>().map(|n| n.to_string()).unwrap_or_else(|_| item.to_string())
}

/// The name fragments whose parameters (and BatchNorm statistics) stay fixed: `model.<x>.` for
/// each frozen layer or fragment, plus [`ALWAYS_FROZEN`].
pub fn frozen_prefixes(freeze: &FreezeSpec) -> Vec<String> {
    let layers: Vec<String> = match freeze {
        FreezeSpec::None => Vec::new(),
        FreezeSpec::First(n) => (0..*n).map(|i| i.to_string()).collect(),
        FreezeSpec::List(items) => items.clone(),
    };
    layers.iter().map(|x| format!("model.{x}.")).chain(ALWAYS_FROZEN.iter().map(|s| s.to_string())).collect()
}

/// Whether the parameter or module `name` (e.g. `model.3.conv.weight`, `model.3.bn`) is frozen:
/// it contains one of `prefixes` anywhere, as the reference tests it.
pub fn is_frozen(prefixes: &[String], name: &str) -> bool {
    prefixes.iter().any(|p| name.contains(p.as_str()))
}

/// Fails, as the reference does, when `freeze` leaves none of `params` trainable.
pub fn check_trainable<'a>(freeze: &FreezeSpec, params: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let prefixes = frozen_prefixes(freeze);
    let mut params = params.into_iter().peekable();
    if params.peek().is_some() && params.all(|p| is_frozen(&prefixes, p)) {
        bail!("freeze={freeze} froze the entire model with no trainable parameters left; reduce 'freeze' or list specific layer indices");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_mapping_applies_only_when_names_say_something_new() {
        let coco = strings(&["person", "bicycle", "car"]);
        assert_eq!(class_mapping(&coco, &strings(&["car", "Person ", "kite"])), Some(vec![Some(2), Some(0), None]));
        // Same order and count: the plain copy does it.
        assert_eq!(class_mapping(&coco, &coco), None);
        // A prefix of the source in order still differs in count, so it is remapped.
        assert_eq!(class_mapping(&coco, &strings(&["person"])), Some(vec![Some(0)]));
        assert_eq!(class_mapping(&coco, &strings(&["kite"])), None);
        assert_eq!(class_mapping(&strings(&["0", "1", "2"]), &strings(&["car"])), None);
        assert_eq!(class_mapping(&coco, &strings(&["0", "1"])), None);
        // Duplicate source names: the last one wins, as in a dict.
        assert_eq!(class_mapping(&strings(&["a", "A", "b"]), &strings(&["a"])), Some(vec![Some(1)]));
    }

    #[test]
    fn a_grey_first_conv_sums_the_rgb_filters() {
        // 2 filters, 3 input channels, 1×2 kernel.
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut grey = vec![0.0; 2 * 2];
        fill_first_conv(&mut grey, &[2, 1, 1, 2], &src, &[2, 3, 1, 2]);
        assert_eq!(grey, vec![0.0 + 2.0 + 4.0, 1.0 + 3.0 + 5.0, 6.0 + 8.0 + 10.0, 7.0 + 9.0 + 11.0]);
        // Four channels from three: the first three copied, the fourth untouched.
        let mut four = vec![-1.0; 2 * 4 * 2];
        fill_first_conv(&mut four, &[2, 4, 1, 2], &src, &[2, 3, 1, 2]);
        assert_eq!(&four[..6], &src[..6]);
        assert_eq!(&four[6..8], &[-1.0, -1.0]);
        assert_eq!(&four[8..14], &src[6..]);
    }

    #[test]
    fn freeze_values_parse_like_the_command_line_writes_them() {
        assert_eq!(FreezeSpec::parse("10").unwrap(), FreezeSpec::First(10));
        assert_eq!(FreezeSpec::parse(" none ").unwrap(), FreezeSpec::None);
        assert_eq!(FreezeSpec::parse("").unwrap(), FreezeSpec::None);
        let list = FreezeSpec::List(strings(&["0", "1", "23.cv2"]));
        assert_eq!(FreezeSpec::parse("[0,1,\"23.cv2\"]").unwrap(), list);
        assert_eq!(FreezeSpec::parse("[0, 1, '23.cv2',]").unwrap(), list);
        assert_eq!(FreezeSpec::parse("(0,01,23.cv2)").unwrap(), list);
        assert_eq!(FreezeSpec::parse("0,1,2").unwrap(), FreezeSpec::List(strings(&["0", "1", "2"])));
        assert_eq!(FreezeSpec::parse("23.cv2").unwrap(), FreezeSpec::List(strings(&["23.cv2"])));
        assert_eq!(FreezeSpec::parse("[]").unwrap(), FreezeSpec::List(vec![]));
        for bad in ["true", "-1", "1.5", "[0,[1]]", "[\"\"]"] {
            let err = FreezeSpec::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("freeze={bad}:")), "{bad}: {err}");
        }
        assert_eq!(FreezeSpec::from_json(&serde_json::json!(3)).unwrap(), FreezeSpec::First(3));
        assert_eq!(FreezeSpec::from_json(&serde_json::json!(["23.cv2", 4])).unwrap(), FreezeSpec::List(strings(&["23.cv2", "4"])));
        assert_eq!(FreezeSpec::from_json(&serde_json::Value::Null).unwrap(), FreezeSpec::None);
        for bad in [serde_json::json!(-1), serde_json::json!(true), serde_json::json!([1.5]), serde_json::json!({"a": 1})] {
            assert!(FreezeSpec::from_json(&bad).is_err(), "{bad}");
        }
        assert_eq!(FreezeSpec::parse(&list.to_string()).unwrap(), list);
    }

    #[test]
    fn frozen_names_follow_the_reference_prefix_rule() {
        let first = frozen_prefixes(&FreezeSpec::First(10));
        assert!(is_frozen(&first, "model.0.conv.weight"));
        assert!(is_frozen(&first, "model.9.cv2.bn.weight"));
        assert!(is_frozen(&first, "model.3.bn")); // a BatchNorm module stays in eval mode
        assert!(!is_frozen(&first, "model.10.m.0.attn.qkv.conv.weight"));
        assert!(!is_frozen(&first, "model.23.cv2.0.0.conv.weight"));
        assert!(is_frozen(&first, "model.23.dfl.conv.weight"), "dfl is always frozen");

        let list = frozen_prefixes(&FreezeSpec::parse("[0,1,\"23.cv2\"]").unwrap());
        assert!(is_frozen(&list, "model.23.cv2.1.0.conv.weight"));
        assert!(!is_frozen(&list, "model.23.one2one_cv2.1.0.conv.weight"));
        assert!(!is_frozen(&list, "model.23.cv3.1.0.0.conv.weight"));
        assert!(!is_frozen(&list, "model.2.cv1.conv.weight"));
        assert!(!is_frozen(&list, "model.10.cv1.conv.weight"));

        let none = frozen_prefixes(&FreezeSpec::None);
        assert_eq!(none, strings(&[".dfl"]));
        assert!(!is_frozen(&none, "model.0.conv.weight"));
    }

    #[test]
    fn freezing_everything_is_an_error() {
        let params = ["model.0.conv.weight", "model.1.conv.weight", "model.2.cv1.conv.weight"];
        assert!(check_trainable(&FreezeSpec::First(2), params).is_ok());
        let err = check_trainable(&FreezeSpec::First(3), params).unwrap_err().to_string();
        assert!(err.contains("freeze=3 froze the entire model"), "{err}");
        assert!(check_trainable(&FreezeSpec::List(strings(&["0", "1", "2"])), params).is_err());
    }
}
