//! Optimizer state for resuming: in memory ([`OptimizerState`]) and as bytes (a safetensors
//! blob, exact to the bit).

use super::groups::{GroupKind, ParamGroup};
use super::OptimizerKind;
use anyhow::{bail, ensure, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;

use crate::weights::checkpoint::DType;
use crate::weights::pickle_write::{PyTensor, PyValue, TensorData};

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

/// `param_group` label back to its kind.
fn group_kind(label: &str) -> Result<GroupKind> {
    Ok(match label {
        "weight" => GroupKind::Weight,
        "bn" => GroupKind::Bn,
        "bias" => GroupKind::Bias,
        "muon" => GroupKind::Muon,
        other => bail!("optimizer state: unknown param_group '{other}'"),
    })
}

impl OptimizerState {
    /// The state as Python data for a `.pt` checkpoint, shaped like a torch optimizer
    /// `state_dict()`: `state` maps parameter indices (numbered through the groups in order) to
    /// their buffers (fp32 tensors) and `step`; `param_groups` holds the hyperparameters as exact
    /// Python floats, `params` (indices), `param_names` and the `param_group` label. Our extras:
    /// `beta2`, `use_muon`, `boosted` per group, `optimizer` and `accumulate` at the top.
    pub fn to_py(&self) -> Result<PyValue<'_>> {
        let s = |x: &'static str| PyValue::Str(Cow::Borrowed(x));
        let mut index: HashMap<&str, i64> = HashMap::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let mut ids = Vec::with_capacity(g.params.len());
            for name in &g.params {
                let id = index.len() as i64;
                ensure!(index.insert(name.as_str(), id).is_none(), "optimizer state: '{name}' is in two groups");
                ids.push(PyValue::Int(id));
            }
            groups.push(PyValue::Dict(vec![
                (s("lr"), PyValue::Float(g.lr)),
                (s("initial_lr"), PyValue::Float(g.initial_lr)),
                (s("momentum"), PyValue::Float(g.momentum)),
                (s("beta2"), PyValue::Float(g.beta2)),
                (s("weight_decay"), PyValue::Float(g.weight_decay)),
                (s("nesterov"), PyValue::Bool(g.nesterov)),
                (s("param_group"), s(g.kind.as_str())),
                (s("use_muon"), PyValue::Bool(g.use_muon)),
                (s("boosted"), PyValue::Bool(g.boosted)),
                (s("params"), PyValue::List(ids)),
                (s("param_names"), PyValue::List(g.params.iter().map(|n| PyValue::Str(Cow::Borrowed(n.as_str()))).collect())),
            ]));
        }
        let mut state = Vec::with_capacity(self.buffers.len());
        for (name, b) in &self.buffers {
            let id = *index.get(name.as_str()).with_context(|| format!("optimizer state: '{name}' has buffers but no group"))?;
            let mut entry = Vec::new();
            for (key, v) in b.named() {
                let t = PyTensor::new(DType::F32, vec![v.len()], TensorData::F32(Cow::Borrowed(v.as_slice())));
                entry.push((s(key), PyValue::Tensor(t)));
            }
            entry.push((s("step"), PyValue::Int(i64::try_from(b.step).context("optimizer state: step out of range")?)));
            state.push((PyValue::Int(id), PyValue::Dict(entry)));
        }
        Ok(PyValue::Dict(vec![
            (s("state"), PyValue::Dict(state)),
            (s("param_groups"), PyValue::List(groups)),
            (s("optimizer"), s(self.kind.name())),
            (s("accumulate"), PyValue::Int(i64::try_from(self.accumulate)?)),
        ]))
    }

    /// Reads the value written by [`OptimizerState::to_py`] (as loaded from a checkpoint).
    pub fn from_py(v: &PyValue<'_>) -> Result<Self> {
        let field = |d: &PyValue<'_>, k: &str| -> Result<PyValue<'static>> {
            d.get(k).map(owned).with_context(|| format!("optimizer state: no '{k}'"))
        };
        let float = |d: &PyValue<'_>, k: &str| -> Result<f64> {
            field(d, k)?.as_f64().with_context(|| format!("optimizer state: '{k}' is not a number"))
        };
        let boolean = |d: &PyValue<'_>, k: &str| -> Result<bool> {
            field(d, k)?.as_bool().with_context(|| format!("optimizer state: '{k}' is not a bool"))
        };
        let kind_name = field(v, "optimizer")?;
        let kind = OptimizerKind::from_name(kind_name.as_str().context("optimizer state: 'optimizer' is not a string")?)?;
        let accumulate = usize::try_from(
            field(v, "accumulate")?.as_int().context("optimizer state: 'accumulate' is not an integer")?,
        )
        .context("optimizer state: negative 'accumulate'")?;

        let groups_v = v.get("param_groups").and_then(PyValue::as_sequence).context("optimizer state: no 'param_groups' list")?;
        let mut names_by_id: HashMap<i64, String> = HashMap::new();
        let mut groups = Vec::with_capacity(groups_v.len());
        for g in groups_v {
            let ids = g.get("params").and_then(PyValue::as_sequence).context("optimizer state: group without 'params'")?;
            let names =
                g.get("param_names").and_then(PyValue::as_sequence).context("optimizer state: group without 'param_names'")?;
            ensure!(ids.len() == names.len(), "optimizer state: group 'params' and 'param_names' differ in length");
            let mut params = Vec::with_capacity(names.len());
            for (id, name) in ids.iter().zip(names) {
                let id = id.as_int().context("optimizer state: parameter index is not an integer")?;
                let name = name.as_str().context("optimizer state: parameter name is not a string")?.to_string();
                ensure!(names_by_id.insert(id, name.clone()).is_none(), "optimizer state: parameter index {id} repeated");
                params.push(name);
            }
            let label = field(g, "param_group")?;
            groups.push(ParamGroup {
                kind: group_kind(label.as_str().context("optimizer state: 'param_group' is not a string")?)?,
                boosted: boolean(g, "boosted")?,
                use_muon: boolean(g, "use_muon")?,
                lr: float(g, "lr")?,
                initial_lr: float(g, "initial_lr")?,
                momentum: float(g, "momentum")?,
                beta2: float(g, "beta2")?,
                weight_decay: float(g, "weight_decay")?,
                nesterov: boolean(g, "nesterov")?,
                params,
            });
        }

        let state = v.get("state").and_then(PyValue::as_dict).context("optimizer state: no 'state' dict")?;
        let mut buffers = Vec::with_capacity(state.len());
        for (id, entry) in state {
            let id = id.as_int().context("optimizer state: state key is not an integer")?;
            let name = names_by_id.get(&id).with_context(|| format!("optimizer state: state for unknown parameter {id}"))?;
            let mut b = ParamBuffers::default();
            for (key, value) in entry.as_dict().context("optimizer state: a parameter's state is not a dict")? {
                let key = key.as_str().context("optimizer state: buffer name is not a string")?;
                if key == "step" {
                    b.step = u64::try_from(value.as_int().context("optimizer state: 'step' is not an integer")?)
                        .context("optimizer state: negative 'step'")?;
                    continue;
                }
                let t = value.as_tensor().with_context(|| format!("optimizer state: '{name}/{key}' is not a tensor"))?;
                ensure!(t.dtype == DType::F32, "optimizer state: '{name}/{key}' is {}, not float32", t.dtype);
                let TensorData::F32(values) = &t.data else { bail!("optimizer state: '{name}/{key}' is not float") };
                let slot = b.slot_mut(key).with_context(|| format!("optimizer state: unknown buffer '{name}/{key}'"))?;
                *slot = Some(values.to_vec());
            }
            buffers.push((name.clone(), b));
        }
        Ok(OptimizerState { kind, accumulate, groups, buffers })
    }
}

/// A scalar or string field copied out of a borrowed value (containers are not needed).
fn owned(v: &PyValue<'_>) -> PyValue<'static> {
    match v {
        PyValue::None => PyValue::None,
        PyValue::Bool(b) => PyValue::Bool(*b),
        PyValue::Int(i) => PyValue::Int(*i),
        PyValue::Float(f) => PyValue::Float(*f),
        PyValue::Str(s) => PyValue::Str(Cow::Owned(s.to_string())),
        _ => PyValue::None,
    }
}
