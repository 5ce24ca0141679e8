//! Fresh weights for a model built from a config (`yolo26n.yaml` … `yolo26x.yaml`), initialised as
//! the reference does: PyTorch's default convolution init, identity BatchNorm, and the Detect
//! head's bias init (box 2.0, class ln(5 / nc / (640 / stride)²)).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::config::{self, LayerSpec};
use super::weights::WeightStore;
use super::Yolo26;
use crate::train::augment::rng::Rng;
use crate::weights::{Checkpoint, DType, StoredTensor, TensorKind, TensorValues};

/// Strides of the three detection levels.
pub const STRIDES: [f32; 3] = [8.0, 16.0, 32.0];

/// Generates every tensor the model asks for, recording them in state_dict order.
struct InitStore {
    rng: Rng,
    nc: usize,
    detect_prefix: String,
    /// Class-branch hidden width to build instead of the nc rule (a transfer keeps the source's).
    cls_width: Option<usize>,
    tensors: Vec<(String, StoredTensor)>,
}

impl InitStore {
    fn push(&mut self, name: &str, shape: &[usize], kind: TensorKind, values: TensorValues) {
        let dtype = match values {
            TensorValues::F32(_) => DType::F32,
            TensorValues::I64(_) => DType::I64,
        };
        self.tensors.push((name.to_string(), StoredTensor { shape: shape.to_vec(), dtype, kind, values }));
    }
}

impl WeightStore for InitStore {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let numel: usize = shape.iter().product();
        let (values, kind) = if name.ends_with(".bn.weight") || name.ends_with(".bn.running_var") {
            (vec![1.0; numel], if name.ends_with("running_var") { TensorKind::Buffer } else { TensorKind::Parameter })
        } else if name.ends_with(".bn.bias") {
            (vec![0.0; numel], TensorKind::Parameter)
        } else if name.ends_with(".bn.running_mean") {
            (vec![0.0; numel], TensorKind::Buffer)
        } else if let Some(bias) = self.head_bias(name) {
            (vec![bias; numel], TensorKind::Parameter)
        } else {
            // PyTorch's Conv2d default: kaiming_uniform(a=√5) for weights, and the same bound for
            // biases: U(−1/√fan_in, 1/√fan_in).
            let fan_in: usize = if shape.len() == 4 { shape[1..].iter().product() } else { self.last_fan_in(name) };
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            ((0..numel).map(|_| self.rng.uniform(-bound, bound) as f32).collect(), TensorKind::Parameter)
        };
        self.push(name, shape, kind, TensorValues::F32(values.clone()));
        Ok(values)
    }

    fn skip(&mut self, name: &str) {
        if name.ends_with("num_batches_tracked") {
            self.push(name, &[], TensorKind::Buffer, TensorValues::I64(vec![0]));
        }
    }

    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        // Only the width the Detect head asks about; its first dimension is all it reads.
        let width = self.cls_width?;
        (name.strip_prefix(&self.detect_prefix)? == "cv3.0.0.1.conv.weight").then(|| vec![width])
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl InitStore {
    /// The bias the reference's `bias_init` gives the Detect head's final convs, if `name` is one.
    fn head_bias(&self, name: &str) -> Option<f32> {
        let rest = name.strip_prefix(&self.detect_prefix)?;
        let parts: Vec<&str> = rest.split('.').collect();
        // e.g. "cv2.0.2.bias", "one2one_cv3.1.2.bias"
        if parts.len() != 4 || parts[2] != "2" || parts[3] != "bias" {
            return None;
        }
        let level: usize = parts[1].parse().ok()?;
        match parts[0] {
            "cv2" | "one2one_cv2" => Some(2.0),
            "cv3" | "one2one_cv3" => {
                let cells = (640.0 / STRIDES.get(level).copied().unwrap_or(32.0) as f64).powi(2);
                Some((5.0 / self.nc as f64 / cells).ln() as f32)
            }
            _ => None,
        }
    }

    /// Fan-in of the conv whose bias `name` is: the weight taken just before it.
    fn last_fan_in(&self, name: &str) -> usize {
        let weight = name.trim_end_matches("bias").to_string() + "weight";
        self.tensors
            .iter()
            .rev()
            .find(|(n, _)| *n == weight)
            .map(|(_, t)| t.shape[1..].iter().product())
            .unwrap_or(1)
    }
}

/// A checkpoint with freshly initialised weights for the built-in YOLO26 config at `scale`
/// (`n`, `s`, `m`, `l`, `x`) with `nc` classes, deterministic for a given `seed`.
pub fn random_checkpoint(scale: &str, nc: usize, names: Option<Vec<String>>, seed: u64) -> Result<Checkpoint> {
    let cfg = config::parse_yaml(config::YOLO26_YAML)?;
    let names = names.unwrap_or_else(|| (0..nc).map(|i| format!("class{i}")).collect());
    fresh_checkpoint(&cfg, Some(scale), nc, names, seed, None)
}

/// A checkpoint with freshly initialised weights for the model config `cfg` (a YOLO26 YAML dict,
/// e.g. a checkpoint's embedded one) with `nc` classes named `names`, at `scale` (or the config's
/// own). `cls_width` builds the Detect class branch at that hidden width instead of the nc rule
/// `max(ch[0], min(nc, 100))`, as the reference does when it transfers a head of another width.
pub fn fresh_checkpoint(
    cfg: &serde_json::Value,
    scale: Option<&str>,
    nc: usize,
    names: Vec<String>,
    seed: u64,
    cls_width: Option<usize>,
) -> Result<Checkpoint> {
    let plan = config::resolve(cfg, Some(nc), scale)?;
    if names.len() != nc {
        bail!("{} class names for {nc} classes", names.len());
    }
    if cls_width == Some(0) {
        bail!("class-branch width must be at least 1");
    }
    let detect_prefix = format!("model.{}.", plan.layers.len() - 1);
    debug_assert!(matches!(plan.layers.last().map(|l| &l.spec), Some(LayerSpec::Detect { .. })));
    let (scale, scale_requested) = (plan.scale.clone(), scale.is_some());
    let mut store = InitStore { rng: Rng::keyed(&[seed, 0x1d_2026]), nc, detect_prefix, cls_width, tensors: Vec::new() };
    Yolo26::load(plan, STRIDES.to_vec(), &mut store)?;
    let mut cfg = cfg.clone();
    cfg["nc"] = nc.into();
    cfg["scale"] = scale.as_str().into();
    if scale_requested || cfg.get("yaml_file").is_none() {
        cfg["yaml_file"] = format!("yolo26{scale}.yaml").into();
    }
    Ok(Checkpoint {
        source: PathBuf::from(format!("yolo26{scale}.yaml")),
        tensors: store.tensors,
        modules: Vec::new(),
        model_yaml: cfg,
        names,
        stride: STRIDES.to_vec(),
        train_args: serde_json::Value::Null,
        metadata: serde_json::json!({}),
        from_ema: false,
    })
}

/// `yolo26n.yaml` … `yolo26x.yaml` (any folder): the scale letter, if the name is one of those.
pub fn config_scale(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
        return None;
    }
    config::scale_from_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scale_has_the_reference_parameter_count() {
        // YOLO26.md 1.1, confirmed counts (both head branches).
        let expected = [("n", 2_572_280usize), ("s", 10_009_784), ("m", 21_896_248), ("l", 26_299_704), ("x", 58_993_368)];
        for (scale, count) in expected {
            let ckpt = random_checkpoint(scale, 80, None, 0).unwrap();
            assert_eq!(ckpt.parameter_count(), count, "yolo26{scale}");
        }
        // A different class count shrinks the class branch (c3 = max(ch0, min(nc, 100))).
        assert_eq!(random_checkpoint("n", 3, None, 0).unwrap().parameter_count(), 2_504_970);
    }

    #[test]
    fn the_class_branch_can_keep_another_width() {
        // YOLO26.md 5: n with nc = 3 at the COCO width 80 has 2,534,858 parameters.
        let cfg = config::parse_yaml(config::YOLO26_YAML).unwrap();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ckpt = fresh_checkpoint(&cfg, Some("n"), 3, names.clone(), 0, Some(80)).unwrap();
        assert_eq!(ckpt.parameter_count(), 2_534_858);
        assert_eq!(ckpt.tensor("model.23.one2one_cv3.2.1.1.conv.weight").unwrap().shape, [80, 80, 1, 1]);
        assert_eq!(ckpt.tensor("model.23.cv3.0.2.weight").unwrap().shape, [3, 80, 1, 1]);
        // Without it, the nc rule; and the model builds from either.
        assert_eq!(fresh_checkpoint(&cfg, Some("n"), 3, names, 0, None).unwrap().parameter_count(), 2_504_970);
        assert_eq!(crate::Yolo::from_checkpoint(ckpt).unwrap().model().nc(), 3);
    }

    #[test]
    fn larger_scales_build_and_run() {
        use crate::engine::Tensor;
        for scale in ["m", "l", "x"] {
            let ckpt = random_checkpoint(scale, 5, None, 1).unwrap();
            let yolo = crate::Yolo::from_checkpoint(ckpt).unwrap();
            let x = Tensor::new([1, 3, 64, 96], vec![0.5; 3 * 64 * 96]);
            let out = yolo.model().forward(&x, crate::model::HeadMode::OneToOne);
            // 8×12 + 4×6 + 2×3 anchors; every output finite.
            assert_eq!((out.anchors, out.nc), (126, 5), "yolo26{scale}");
            assert!(out.boxes.iter().chain(&out.logits).all(|v| v.is_finite()), "yolo26{scale}");
        }
    }

    #[test]
    fn init_follows_the_reference_rules_and_the_seed() {
        let a = random_checkpoint("n", 80, None, 7).unwrap();
        let b = random_checkpoint("n", 80, None, 7).unwrap();
        let c = random_checkpoint("n", 80, None, 8).unwrap();
        let w = |k: &Checkpoint| k.tensor("model.0.conv.weight").unwrap().values.as_f32().unwrap().to_vec();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        let bound = 1.0 / (27f32).sqrt();
        assert!(w(&a).iter().all(|v| v.abs() <= bound));
        let bias = |n: &str| a.tensor(n).unwrap().values.as_f32().unwrap()[0];
        assert_eq!(bias("model.23.cv2.0.2.bias"), 2.0);
        assert!((bias("model.23.one2one_cv3.0.2.bias") - -11.537).abs() < 1e-3);
        assert!((bias("model.23.cv3.2.2.bias") - -8.764).abs() < 1e-3);
        assert_eq!(bias("model.0.bn.weight"), 1.0);
        // The tensor list has the state_dict layout: 708 entries for yolo26n.
        assert_eq!(a.tensors.len(), 708);
        assert_eq!(a.tensors[5].0, "model.0.bn.num_batches_tracked");
    }
}
