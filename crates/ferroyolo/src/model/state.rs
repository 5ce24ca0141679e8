//! The model's weights as named state_dict entries, for what works on whole states: the weight
//! EMA, checkpoints, and building a validation model from averaged weights.

use anyhow::{bail, Result};

use super::train::ModuleMut;
use super::Yolo26;
use crate::weights::{Checkpoint, DType, StoredTensor, TensorValues};

impl Yolo26 {
    /// Every floating-point state_dict entry, in state_dict order: parameters and the BatchNorm
    /// running statistics (what an EMA averages). `num_batches_tracked` is an integer and not
    /// listed.
    pub fn float_state_mut(&mut self) -> Vec<(String, &mut Vec<f32>)> {
        let mut out = Vec::new();
        for (p, m) in self.modules_mut() {
            match m {
                ModuleMut::ConvBn(c) => {
                    out.push((format!("{p}.conv.weight"), &mut c.weight));
                    let bn = &mut c.bn;
                    out.push((format!("{p}.bn.weight"), &mut bn.weight));
                    out.push((format!("{p}.bn.bias"), &mut bn.bias));
                    out.push((format!("{p}.bn.running_mean"), &mut bn.running_mean));
                    out.push((format!("{p}.bn.running_var"), &mut bn.running_var));
                }
                ModuleMut::Bias(b) => {
                    out.push((format!("{p}.weight"), &mut b.weight));
                    out.push((format!("{p}.bias"), &mut b.bias));
                }
            }
        }
        out
    }

    /// A copy of [`Yolo26::float_state_mut`]'s entries.
    pub fn float_state(&mut self) -> Vec<(String, Vec<f32>)> {
        self.float_state_mut().into_iter().map(|(n, v)| (n, v.clone())).collect()
    }

    /// Replaces every floating-point entry with the one of the same name in `state` (which must
    /// hold all of them, with the same lengths) and rebuilds the inference convolutions.
    pub fn load_float_state(&mut self, state: &[(String, Vec<f32>)]) -> Result<()> {
        let index: std::collections::HashMap<&str, &Vec<f32>> = state.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for (name, slot) in self.float_state_mut() {
            let Some(v) = index.get(name.as_str()) else { bail!("state has no entry {name}") };
            if v.len() != slot.len() {
                bail!("state entry {name} has {} values, the model {}", v.len(), slot.len());
            }
            slot.copy_from_slice(v);
        }
        self.refold();
        Ok(())
    }
}

/// `base` (the checkpoint a model was built from) with its floating-point entries replaced by
/// `state`'s and stored as f32, and every `num_batches_tracked` advanced by `batches_tracked`
/// where the entry's BatchNorm is listed in `tracked` (the ones trained in batch-statistics mode).
pub fn checkpoint_with_state(base: &Checkpoint, state: &[(String, Vec<f32>)], tracked: &dyn Fn(&str) -> bool, batches_tracked: i64) -> Result<Checkpoint> {
    let index: std::collections::HashMap<&str, &Vec<f32>> = state.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut out = base.clone();
    for (name, t) in &mut out.tensors {
        if let Some(v) = index.get(name.as_str()) {
            if v.len() != t.numel() {
                bail!("state entry {name} has {} values, the checkpoint's shape {:?}", v.len(), t.shape);
            }
            *t = StoredTensor { shape: t.shape.clone(), dtype: DType::F32, kind: t.kind, values: TensorValues::F32((*v).clone()) };
        } else if let Some(prefix) = name.strip_suffix("num_batches_tracked") {
            if let TensorValues::I64(v) = &mut t.values {
                if tracked(prefix) {
                    for x in v.iter_mut() {
                        *x += batches_tracked;
                    }
                }
            }
        }
    }
    Ok(out)
}
