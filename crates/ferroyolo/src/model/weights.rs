//! Filling a model with named tensors, with every name and shape checked: a model never runs on
//! silently wrong weights.

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, bail, Result};

use crate::weights::{Checkpoint, DType, StoredTensor, TensorKind, TensorValues};

/// A source of named weights, consumed while the model is built.
pub trait WeightStore {
    /// Takes the tensor `name`, which must have exactly `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Takes the int8 tensor `name` (quantized weights), which must have exactly `shape`.
    fn take_i8(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i8>> {
        let _ = shape;
        bail!("tensor '{name}': this weight source holds no int8 tensors")
    }
    /// Marks a tensor the model does not need as consumed (e.g. `num_batches_tracked`).
    fn skip(&mut self, name: &str);
    /// The shape of `name`, if present (for sizes a checkpoint decides, like the class-branch width).
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// Called once the model is built: fails if tensors were left unused.
    fn finish(&mut self) -> Result<()>;
}

/// Where a parameter sits, for parameter accounting (`info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    Weight,
    Bias,
    BatchNorm,
}

/// A record of one tensor the model took.
#[derive(Clone, Debug)]
pub struct ParamRecord {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: ParamRole,
}

impl ParamRecord {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Role of a state_dict entry by its name.
pub fn role_of(name: &str) -> ParamRole {
    if name.contains(".bn.") {
        ParamRole::BatchNorm
    } else if name.ends_with(".bias") || name.ends_with(".qbias") {
        ParamRole::Bias
    } else {
        ParamRole::Weight
    }
}

/// Weights from a loaded checkpoint.
pub struct CheckpointStore<'a> {
    ckpt: &'a Checkpoint,
    index: BTreeMap<&'a str, usize>,
    used: HashSet<String>,
    /// Parameters (not buffers) taken, in load order.
    pub params: Vec<ParamRecord>,
}

impl<'a> CheckpointStore<'a> {
    pub fn new(ckpt: &'a Checkpoint) -> Self {
        let index = ckpt.tensors.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
        Self { ckpt, index, used: HashSet::new(), params: Vec::new() }
    }
}

impl CheckpointStore<'_> {
    /// Takes tensor `name`: checks it exists with exactly `shape`, converts its values with
    /// `convert` (whose error completes "tensor 'name' ..."), records it if it is a parameter and
    /// marks it used.
    fn take_as<T>(&mut self, name: &str, shape: &[usize], convert: impl FnOnce(&StoredTensor) -> Result<T, String>) -> Result<T> {
        let src = self.ckpt.source.display();
        let &i = self.index.get(name).ok_or_else(|| anyhow!("{src}: tensor '{name}' is missing (expected shape {shape:?})"))?;
        let t = &self.ckpt.tensors[i].1;
        // Scalars and 1-D tensors are compared as stored; a 1×1 conv weight must be 4-D.
        if t.shape != shape {
            bail!("{src}: tensor '{name}' has shape {:?}, the model config needs {shape:?}", t.shape);
        }
        let values = convert(t).map_err(|why| anyhow!("{src}: tensor '{name}' {why}"))?;
        if t.kind == TensorKind::Parameter {
            self.params.push(ParamRecord { name: name.to_string(), shape: shape.to_vec(), role: role_of(name) });
        }
        self.used.insert(name.to_string());
        Ok(values)
    }
}

impl WeightStore for CheckpointStore<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.take_as(name, shape, |t| {
            let TensorValues::F32(v) = &t.values else { return Err("is an integer tensor, expected floating point".into()) };
            match v.iter().position(|v| !v.is_finite()) {
                Some(bad) => Err(format!("holds a non-finite value at element {bad}")),
                None => Ok(v.clone()),
            }
        })
    }

    fn take_i8(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i8>> {
        self.take_as(name, shape, |t| {
            let (DType::I8, TensorValues::I64(v)) = (t.dtype, &t.values) else { return Err(format!("is {}, expected int8", t.dtype)) };
            v.iter().map(|&x| i8::try_from(x)).collect::<Result<Vec<i8>, _>>().map_err(|_| "holds a value outside int8".to_string())
        })
    }

    fn skip(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|&i| self.ckpt.tensors[i].1.shape.clone())
    }

    fn finish(&mut self) -> Result<()> {
        let unused: Vec<&str> = self
            .ckpt
            .tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !self.used.contains(*n))
            .collect();
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(5).copied().collect();
            bail!(
                "{}: {} tensors do not belong to the model described by its config (e.g. {}); refusing to load mismatched weights",
                self.ckpt.source.display(),
                unused.len(),
                shown.join(", ")
            );
        }
        Ok(())
    }
}
