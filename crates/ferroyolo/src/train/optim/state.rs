//! Optimizer state for resuming: in memory ([`OptimizerState`]) and as bytes (a safetensors
//! blob, exact to the bit).

use super::groups::{GroupKind, ParamGroup};
use super::OptimizerKind;
use anyhow::{bail, ensure, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The buffers one parameter has accumulated, named as in PyTorch's optimizer state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamBuffers {
    /// SGD momentum buffer; in MuSGD's Muon groups, the Muon (exponential-average) buffer.
    pub momentum_buffer: Option<Vec<f32>>,
    /// MuSGD's Muon groups: the buffer of their SGD half (`momentum_buffer_SGD`).
    pub momentum_buffer_sgd: Option<Vec<f32>>,
    /// Adam's first moment.
    pub exp_avg: Option<Vec<f32>>,
    /// Adam's second moment.
    pub exp_avg_sq: Option<Vec<f32>>,
    /// Adam's step count (bias correction).
    pub step: u64,
}

/// Buffer names, as PyTorch's optimizers call them.
const KEYS: [&str; 4] = ["momentum_buffer", "momentum_buffer_SGD", "exp_avg", "exp_avg_sq"];

impl ParamBuffers {
    /// No update has touched the parameter yet.
    pub fn is_empty(&self) -> bool {
        self.step == 0 && self.named().next().is_none()
    }

    /// The buffers present, with their PyTorch names.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &Vec<f32>)> {
        let slots = [&self.momentum_buffer, &self.momentum_buffer_sgd, &self.exp_avg, &self.exp_avg_sq];
        KEYS.into_iter().zip(slots).filter_map(|(k, b)| b.as_ref().map(|b| (k, b)))
    }

    fn slot_mut(&mut self, key: &str) -> Option<&mut Option<Vec<f32>>> {
        match key {
            "momentum_buffer" => Some(&mut self.momentum_buffer),
            "momentum_buffer_SGD" => Some(&mut self.momentum_buffer_sgd),
            "exp_avg" => Some(&mut self.exp_avg),
            "exp_avg_sq" => Some(&mut self.exp_avg_sq),
            _ => None,
        }
    }
}

/// A snapshot of an [`super::Optimizer`]: group hyperparameters, accumulation and buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Current gradient accumulation.
    pub accumulate: usize,
    /// Groups with their current hyperparameters.
    pub groups: Vec<ParamGroup>,
    /// Buffers of every parameter that has been updated, in registration order.
    pub buffers: Vec<(String, ParamBuffers)>,
}

/// What the safetensors header carries besides the tensors (the `f64` hyperparameters travel
/// as a tensor, so that no decimal conversion can perturb them).
#[derive(Serialize, Deserialize)]
struct Header {
    kind: OptimizerKind,
    accumulate: usize,
    groups: Vec<GroupHeader>,
    /// Parameters with state, in order, with their step counts.
    params: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct GroupHeader {
    kind: GroupKind,
    boosted: bool,
    use_muon: bool,
    nesterov: bool,
    params: Vec<String>,
}

const FORMAT: &str = "ferroyolo.optimizer.v1";
const HYPER: &str = "__group_hyperparameters__";
const HYPER_FIELDS: usize = 5;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl OptimizerState {
    /// The state as a safetensors blob: one `F32` tensor per buffer (`<param>/<buffer>`), the
    /// groups' `f64` hyperparameters as one `F64` tensor, the rest as JSON metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            kind: self.kind,
            accumulate: self.accumulate,
            groups: self
                .groups
                .iter()
                .map(|g| GroupHeader {
                    kind: g.kind,
                    boosted: g.boosted,
                    use_muon: g.use_muon,
                    nesterov: g.nesterov,
                    params: g.params.clone(),
                })
                .collect(),
            params: self.buffers.iter().map(|(n, b)| (n.clone(), b.step)).collect(),
        };
        let hyper: Vec<u8> = self
            .groups
            .iter()
            .flat_map(|g| [g.lr, g.initial_lr, g.momentum, g.beta2, g.weight_decay])
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut owned: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> =
            vec![(HYPER.to_string(), vec![self.groups.len(), HYPER_FIELDS], Dtype::F64, hyper)];
        for (name, b) in &self.buffers {
            for (key, v) in b.named() {
                owned.push((format!("{name}/{key}"), vec![v.len()], Dtype::F32, f32_bytes(v)));
            }
        }
        let views = owned
            .iter()
            .map(|(n, shape, dt, bytes)| Ok((n.as_str(), TensorView::new(*dt, shape.clone(), bytes)?)))
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("header".to_string(), serde_json::to_string(&header)?),
        ]);
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Reads a blob written by [`OptimizerState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, metadata) = SafeTensors::read_metadata(bytes).context("optimizer state: not a safetensors blob")?;
        let meta = metadata.metadata().as_ref().context("optimizer state: no metadata")?;
        ensure!(
            meta.get("format").map(String::as_str) == Some(FORMAT),
            "optimizer state: unknown format {:?}",
            meta.get("format")
        );
        let header: Header = serde_json::from_str(meta.get("header").context("optimizer state: no header")?)
            .context("optimizer state header")?;
        let st = SafeTensors::deserialize(bytes).context("optimizer state tensors")?;
        let hyper = st.tensor(HYPER).context("optimizer state: no group hyperparameters")?;
        ensure!(
            hyper.dtype() == Dtype::F64 && hyper.shape() == [header.groups.len(), HYPER_FIELDS],
            "optimizer state: group hyperparameters have the wrong type or shape"
        );
        let h: Vec<f64> =
            hyper.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let groups = header
            .groups
            .into_iter()
            .zip(h.chunks_exact(HYPER_FIELDS))
            .map(|(g, v)| ParamGroup {
                kind: g.kind,
                boosted: g.boosted,
                use_muon: g.use_muon,
                lr: v[0],
                initial_lr: v[1],
                momentum: v[2],
                beta2: v[3],
                weight_decay: v[4],
                nesterov: g.nesterov,
                params: g.params,
            })
            .collect::<Vec<_>>();
        let mut by_name: HashMap<String, ParamBuffers> = HashMap::new();
        for (name, view) in st.tensors() {
            if name == HYPER {
                continue;
            }
            let Some((param, key)) = name.rsplit_once('/') else {
                bail!("optimizer state: unexpected tensor {name}");
            };
            ensure!(view.dtype() == Dtype::F32, "optimizer state: {name} is not float32");
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            let entry = by_name.entry(param.to_string()).or_default();
            let slot = entry.slot_mut(key).with_context(|| format!("optimizer state: unknown buffer {name}"))?;
            *slot = Some(values);
        }
        let mut buffers = Vec::with_capacity(header.params.len());
        for (name, step) in header.params {
            let mut b = by_name.remove(&name).unwrap_or_default();
            b.step = step;
            buffers.push((name, b));
        }
        if let Some(name) = by_name.keys().next() {
            bail!("optimizer state: buffers for {name}, which the header does not list");
        }
        Ok(OptimizerState { kind: header.kind, accumulate: header.accumulate, groups, buffers })
    }
}
