//! Writing Ultralytics `.pt` checkpoints: the `DetectionModel` object tree the reference pickles,
//! the checkpoint dict around it (release or training layout), and the torch zip container.
//!
//! The file loads unchanged in Ultralytics (`YOLO("best.pt")`, also with
//! `ULTRALYTICS_SAFE_LOAD=1`): every module carries the `__dict__` entries its real class has, and
//! only the globals of a released checkpoint appear. Conv2d/BatchNorm attributes come from the
//! tensor shapes, so any scale and class count work, including a class branch whose hidden width
//! differs from `nc` (transfer learning keeps the source width).
//!
//! [`load_training_state`] reads such a file back with everything a trainer needs to resume.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

use super::checkpoint::{self, Checkpoint, CheckpointError, DType, StoredTensor, TensorValues};
use super::pickle::{Node, Value};
use super::pickle_write::{self, PyObject, PyTensor, PyValue, TensorData};
use super::pt::TorchArchive;
use crate::model::config::{self, LayerSpec};

/// The Ultralytics release whose checkpoint layout this module writes (the `version` entry).
pub const ULTRALYTICS_VERSION: &str = "8.4.190";
/// `license` and `docs` entries of a checkpoint, as the reference writes them.
pub const LICENSE: &str = "AGPL-3.0 License (https://ultralytics.com/license)";
pub const DOCS: &str = "https://docs.ultralytics.com";

/// One model to pickle as a `DetectionModel`.
#[derive(Clone, Copy, Debug)]
pub struct ModelWeights<'a> {
    /// state_dict entries (parameters and buffers, `num_batches_tracked` included), any order.
    pub tensors: &'a [(String, StoredTensor)],
    /// The model config dict (`DetectionModel.yaml`): `nc`, `scales`, `backbone`, `head`, `scale`...
    pub yaml: &'a Json,
    /// Class names, index = class id.
    pub names: &'a [String],
    /// `DetectionModel.stride` (usually `[8, 16, 32]`).
    pub stride: &'a [f32],
    /// `DetectionModel.args` (a dict; `null` leaves the attribute out: the loader sets it anyway).
    pub args: &'a Json,
}

impl<'a> ModelWeights<'a> {
    /// The model of a loaded checkpoint, with its `train_args` as `args`.
    pub fn from_checkpoint(ckpt: &'a Checkpoint) -> Self {
        ModelWeights {
            tensors: &ckpt.tensors,
            yaml: &ckpt.model_yaml,
            names: &ckpt.names,
            stride: &ckpt.stride,
            args: &ckpt.train_args,
        }
    }
}

/// `ckpt["stopper"]`: the early-stopping state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StopperState {
    pub best_fitness: Option<f64>,
    pub best_epoch: i64,
}

/// Which dict layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// What `strip_optimizer` leaves (released weights, final `best.pt`): metadata first, then
    /// `epoch`, `best_fitness`, `model`, `ema`, `updates`, `optimizer`, `train_args`,
    /// `train_metrics`, `train_results`.
    Release,
    /// What the trainer writes while training (`last.pt`): `epoch`, `best_fitness`, `stopper`,
    /// `model`, `ema`, `updates`, `optimizer`, `train_args`, `train_metrics`, `train_results`,
    /// then `date`, `version`, `license`, `docs`.
    Training,
}

/// A checkpoint to write with [`save_pt`].
#[derive(Clone, Debug)]
pub struct TrainingCheckpoint<'a> {
    pub layout: Layout,
    /// Last completed epoch (0-based), or -1 for finished weights.
    pub epoch: i64,
    pub best_fitness: Option<f64>,
    /// Written in the training layout only (`None` writes `None`).
    pub stopper: Option<StopperState>,
    pub model: Option<ModelWeights<'a>>,
    pub ema: Option<ModelWeights<'a>>,
    /// EMA update count.
    pub updates: Option<u64>,
    /// The optimizer state (see `OptimizerState::to_py`).
    pub optimizer: Option<PyValue<'a>>,
    /// The full training configuration (a dict), `null` for none.
    pub train_args: &'a Json,
    pub train_metrics: Option<Json>,
    pub train_results: Option<Json>,
    /// Float tensors as fp16 (release style) instead of fp32 (exact, for resuming).
    pub half: bool,
    /// ISO 8601 timestamp; `None` = now (UTC).
    pub date: Option<String>,
    /// The `version` entry (default [`ULTRALYTICS_VERSION`]).
    pub version: &'a str,
}

impl<'a> TrainingCheckpoint<'a> {
    /// Finished weights as Ultralytics releases them: `model` in fp16, no training state.
    pub fn release(model: ModelWeights<'a>, train_args: &'a Json) -> Self {
        TrainingCheckpoint {
            layout: Layout::Release,
            epoch: -1,
            best_fitness: None,
            stopper: None,
            model: Some(model),
            ema: None,
            updates: None,
            optimizer: None,
            train_args,
            train_metrics: None,
            train_results: None,
            half: true,
            date: None,
            version: ULTRALYTICS_VERSION,
        }
    }

    /// A resumable training checkpoint in fp32 (fields to fill: model, ema, optimizer...).
    pub fn training(epoch: i64, train_args: &'a Json) -> Self {
        TrainingCheckpoint {
            layout: Layout::Training,
            epoch,
            best_fitness: None,
            stopper: None,
            model: None,
            ema: None,
            updates: None,
            optimizer: None,
            train_args,
            train_metrics: None,
            train_results: None,
            half: false,
            date: None,
            version: ULTRALYTICS_VERSION,
        }
    }
}

/// Writes `ckpt` to `path` as a torch zip checkpoint, atomically: a temporary file in the same
/// folder, flushed to disk, then renamed over `path` (an existing file stays intact on failure).
pub fn save_pt(path: impl AsRef<Path>, ckpt: &TrainingCheckpoint<'_>) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let format = |msg: String| CheckpointError::Format { path: path.to_owned(), msg };
    let root = checkpoint_value(ckpt).map_err(format)?;
    let pickled = pickle_write::pickle(&root).map_err(format)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("archive");
    // Only plain names: the stem becomes the archive's root folder.
    let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    checkpoint::write_atomic_with(path, |w| write_archive(w, &stem, &pickled))
}

/// The checkpoint as a torch zip archive in memory (see [`save_pt`]); `stem` names its root folder.
pub fn pt_bytes(ckpt: &TrainingCheckpoint<'_>, stem: &str) -> Result<Vec<u8>, String> {
    let root = checkpoint_value(ckpt)?;
    let pickled = pickle_write::pickle(&root)?;
    let mut out = Vec::new();
    write_archive(&mut out, stem, &pickled).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The root dict of the checkpoint.
pub fn checkpoint_value<'a>(ckpt: &TrainingCheckpoint<'a>) -> Result<PyValue<'a>, String> {
    let float = if ckpt.half { DType::F16 } else { DType::F32 };
    let model = |m: &Option<ModelWeights<'a>>, what: &str| -> Result<PyValue<'a>, String> {
        match m {
            Some(w) => model_value(w, float).map_err(|e| format!("{what}: {e}")),
            None => Ok(PyValue::None),
        }
    };
    let s = |x: &'static str| PyValue::Str(Cow::Borrowed(x));
    let opt_f64 = |x: Option<f64>| x.map_or(PyValue::None, PyValue::Float);
    let json = |j: &Option<Json>| j.as_ref().map_or(PyValue::None, json_to_py);
    let updates = match ckpt.updates {
        Some(u) => PyValue::Int(i64::try_from(u).map_err(|_| "updates out of range".to_string())?),
        None => PyValue::None,
    };
    let date = ckpt.date.clone().unwrap_or_else(now_iso8601);
    let meta = [
        (s("date"), PyValue::Str(Cow::Owned(date))),
        (s("version"), PyValue::Str(Cow::Owned(ckpt.version.to_owned()))),
        (s("license"), s(LICENSE)),
        (s("docs"), s(DOCS)),
    ];
    let mut entries: Vec<(PyValue<'a>, PyValue<'a>)> = Vec::new();
    if ckpt.layout == Layout::Release {
        entries.extend(meta.clone());
    }
    entries.push((s("epoch"), PyValue::Int(ckpt.epoch)));
    entries.push((s("best_fitness"), opt_f64(ckpt.best_fitness)));
    if ckpt.layout == Layout::Training {
        let stopper = match ckpt.stopper {
            Some(st) => PyValue::Dict(vec![
                (s("best_fitness"), opt_f64(st.best_fitness)),
                (s("best_epoch"), PyValue::Int(st.best_epoch)),
            ]),
            None => PyValue::None,
        };
        entries.push((s("stopper"), stopper));
    }
    entries.push((s("model"), model(&ckpt.model, "model")?));
    entries.push((s("ema"), model(&ckpt.ema, "ema")?));
    entries.push((s("updates"), updates));
    entries.push((s("optimizer"), ckpt.optimizer.clone().unwrap_or(PyValue::None)));
    entries.push((s("train_args"), json_to_py(ckpt.train_args)));
    entries.push((s("train_metrics"), json(&ckpt.train_metrics)));
    entries.push((s("train_results"), json(&ckpt.train_results)));
    if ckpt.layout == Layout::Training {
        entries.extend(meta);
    }
    Ok(PyValue::Dict(entries))
}

/// JSON as Python data: objects become dicts (string keys), arrays lists, integers ints and
/// other numbers floats.
pub fn json_to_py(j: &Json) -> PyValue<'static> {
    match j {
        Json::Null => PyValue::None,
        Json::Bool(b) => PyValue::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => PyValue::Int(i),
            None => PyValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => PyValue::Str(Cow::Owned(s.clone())),
        Json::Array(a) => PyValue::List(a.iter().map(json_to_py).collect()),
        Json::Object(m) => {
            PyValue::Dict(m.iter().map(|(k, v)| (PyValue::Str(Cow::Owned(k.clone())), json_to_py(v))).collect())
        }
    }
}

// ----- the DetectionModel object tree -----

const CONV_MOD: &str = "ultralytics.nn.modules.conv";
const BLOCK_MOD: &str = "ultralytics.nn.modules.block";
const CONTAINER_MOD: &str = "torch.nn.modules.container";

/// Builds the `DetectionModel` object for `w` with float tensors stored as `float`.
pub fn model_value<'a>(w: &ModelWeights<'a>, float: DType) -> Result<PyValue<'a>, String> {
    let plan = config::resolve(w.yaml, None, None).map_err(|e| format!("model config: {e:#}"))?;
    let mut tensors = HashMap::with_capacity(w.tensors.len());
    for (name, t) in w.tensors {
        if tensors.insert(name.as_str(), t).is_some() {
            return Err(format!("duplicate tensor '{name}'"));
        }
    }
    let mut tree = Tree { tensors, used: HashSet::new(), float, silu: Arc::new(silu()), params: 0 };

    let mut layers = Vec::with_capacity(plan.layers.len());
    let mut save = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        tree.params = 0;
        let p = format!("model.{i}");
        let (module, mut attrs) = tree.layer(&p, &layer.spec, w.stride)?;
        let f = match layer.from_raw.as_slice() {
            [one] => PyValue::Int(*one),
            many => PyValue::List(many.iter().map(|&x| PyValue::Int(x)).collect()),
        };
        let type_name = match module {
            PyValue::Object(ref o) => format!("{}.{}", o.module, o.name),
            _ => String::new(),
        };
        let mut layer_attrs = vec![
            (Cow::Borrowed("np"), PyValue::Int(tree.params as i64)),
            (Cow::Borrowed("i"), PyValue::Int(i as i64)),
            (Cow::Borrowed("f"), f),
            (Cow::Borrowed("type"), PyValue::Str(Cow::Owned(type_name))),
        ];
        // Detect's `inplace`, `anchors`, `strides` follow the layer attributes.
        let tail = attrs.split_off(attrs.iter().position(|(k, _)| k == "inplace").unwrap_or(attrs.len()));
        attrs.append(&mut layer_attrs);
        attrs.extend(tail);
        let PyValue::Object(mut obj) = module else { return Err("internal: layer is not a module".into()) };
        obj.state.extend(attrs);
        layers.push((i.to_string(), PyValue::Object(obj)));
        // parse_model's `save`: every input other than the previous layer, `x % i`, sorted.
        for &x in &layer.from_raw {
            if x != -1 && i > 0 {
                save.push(x.rem_euclid(i as i64));
            }
        }
    }
    save.sort_unstable();

    let unused: Vec<&str> = {
        let mut v: Vec<&str> = w.tensors.iter().map(|(n, _)| n.as_str()).filter(|n| !tree.used.contains(n)).collect();
        v.truncate(5);
        v
    };
    if !unused.is_empty() {
        return Err(format!("tensors not part of the YOLO26 model described by its config: {}", unused.join(", ")));
    }

    let sequential = module(CONTAINER_MOD, "Sequential", vec![], vec![], layers, vec![]);
    let names = PyValue::Dict(
        w.names.iter().enumerate().map(|(i, n)| (PyValue::Int(i as i64), PyValue::Str(Cow::Owned(n.clone())))).collect(),
    );
    let stride = PyTensor::new(DType::F32, vec![w.stride.len()], TensorData::F32(Cow::Borrowed(w.stride)));
    let mut attrs = vec![
        ("yaml", json_to_py(w.yaml)),
        ("save", PyValue::List(save.into_iter().map(PyValue::Int).collect())),
        ("names", names),
        ("inplace", PyValue::Bool(true)),
        ("stride", PyValue::Tensor(stride)),
    ];
    if w.args.is_object() {
        attrs.push(("args", json_to_py(w.args)));
    }
    attrs.push(("task", PyValue::str("detect")));
    Ok(module("ultralytics.nn.tasks", "DetectionModel", vec![], vec![], vec![("model".into(), sequential)], attrs))
}

type State<'a> = Vec<(Cow<'static, str>, PyValue<'a>)>;

/// The `nn.Module.__dict__` entries every module has, in `nn.Module.__init__` order.
fn base_state<'a>(
    params: Vec<(&'static str, PyValue<'a>)>,
    buffers: Vec<(&'static str, PyValue<'a>)>,
    children: Vec<(String, PyValue<'a>)>,
) -> State<'a> {
    let key = |k: &'static str| PyValue::Str(Cow::Borrowed(k));
    let hooks = || PyValue::OrderedDict(vec![]);
    vec![
        ("training".into(), PyValue::Bool(false)),
        ("_parameters".into(), PyValue::Dict(params.into_iter().map(|(k, v)| (key(k), v)).collect())),
        ("_buffers".into(), PyValue::Dict(buffers.into_iter().map(|(k, v)| (key(k), v)).collect())),
        ("_non_persistent_buffers_set".into(), PyValue::Set(vec![])),
        ("_backward_pre_hooks".into(), hooks()),
        ("_backward_hooks".into(), hooks()),
        ("_is_full_backward_hook".into(), PyValue::None),
        ("_forward_hooks".into(), hooks()),
        ("_forward_hooks_with_kwargs".into(), hooks()),
        ("_forward_hooks_always_called".into(), hooks()),
        ("_forward_pre_hooks".into(), hooks()),
        ("_forward_pre_hooks_with_kwargs".into(), hooks()),
        ("_state_dict_hooks".into(), hooks()),
        ("_state_dict_pre_hooks".into(), hooks()),
        ("_load_state_dict_pre_hooks".into(), hooks()),
        ("_load_state_dict_post_hooks".into(), hooks()),
        (
            "_modules".into(),
            PyValue::Dict(children.into_iter().map(|(k, v)| (PyValue::Str(Cow::Owned(k)), v)).collect()),
        ),
    ]
}

fn object<'a>(module: &'static str, name: &'static str, mut state: State<'a>, attrs: Vec<(&'static str, PyValue<'a>)>) -> PyValue<'a> {
    state.extend(attrs.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)));
    PyValue::Object(Box::new(PyObject { module, name, state }))
}

fn module<'a>(
    module_name: &'static str,
    name: &'static str,
    params: Vec<(&'static str, PyValue<'a>)>,
    buffers: Vec<(&'static str, PyValue<'a>)>,
    children: Vec<(String, PyValue<'a>)>,
    attrs: Vec<(&'static str, PyValue<'a>)>,
) -> PyValue<'a> {
    object(module_name, name, base_state(params, buffers, children), attrs)
}

fn container<'a>(name: &'static str, items: Vec<PyValue<'a>>) -> PyValue<'a> {
    let children = items.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect();
    module(CONTAINER_MOD, name, vec![], vec![], children, vec![])
}

/// An `nn.SiLU` instance (Ultralytics' `Conv.default_act`, shared by every Conv of a model).
fn silu<'a>() -> PyValue<'a> {
    module("torch.nn.modules.activation", "SiLU", vec![], vec![], vec![], vec![("inplace", PyValue::Bool(false))])
}

fn identity<'a>() -> PyValue<'a> {
    module("torch.nn.modules.linear", "Identity", vec![], vec![], vec![], vec![])
}

fn pair<'a>(a: usize, b: usize) -> PyValue<'a> {
    PyValue::Tuple(vec![PyValue::Int(a as i64), PyValue::Int(b as i64)])
}

/// How a Conv block's convolution is shaped and activated.
#[derive(Clone, Copy)]
struct ConvKind {
    stride: usize,
    /// Depthwise: `groups = out_channels` (DWConv, Attention.pe).
    depthwise: bool,
    /// SiLU (shared instance) or Identity.
    act: bool,
    /// Pickled as `DWConv` rather than `Conv`.
    dw_class: bool,
}

const PLAIN: ConvKind = ConvKind { stride: 1, depthwise: false, act: true, dw_class: false };
const NO_ACT: ConvKind = ConvKind { stride: 1, depthwise: false, act: false, dw_class: false };

struct Tree<'a> {
    tensors: HashMap<&'a str, &'a StoredTensor>,
    used: HashSet<&'a str>,
    float: DType,
    silu: Arc<PyValue<'a>>,
    /// Parameter elements taken since the current layer began (the layer's `np`).
    params: usize,
}

impl<'a> Tree<'a> {
    fn get(&self, name: &str) -> Result<(&'a str, &'a StoredTensor), String> {
        self.tensors.get_key_value(name).map(|(k, v)| (*k, *v)).ok_or_else(|| format!("missing tensor '{name}'"))
    }

    fn shape(&self, name: &str) -> Result<&'a [usize], String> {
        Ok(&self.get(name)?.1.shape)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor(&mut self, name: &str, parameter: bool) -> Result<PyValue<'a>, String> {
        let (key, t) = self.get(name)?;
        self.used.insert(key);
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("'{name}': shape overflows"))?;
        if numel != t.values.len() {
            return Err(format!("'{name}': shape {:?} but {} values", t.shape, t.values.len()));
        }
        let (dtype, data) = match &t.values {
            TensorValues::F32(v) => (self.float, TensorData::F32(Cow::Borrowed(v.as_slice()))),
            TensorValues::I64(v) => (DType::I64, TensorData::I64(Cow::Borrowed(v.as_slice()))),
        };
        if parameter {
            self.params += numel;
        }
        Ok(PyValue::Tensor(PyTensor { dtype, shape: t.shape.clone(), data, parameter, requires_grad: false }))
    }

    /// `nn.Conv2d` with attributes read off its weight (`[out, in / groups, kh, kw]`).
    fn conv2d(&mut self, p: &str, stride: usize, depthwise: bool, bias: bool) -> Result<PyValue<'a>, String> {
        let wname = format!("{p}.weight");
        let shape = self.shape(&wname)?;
        let [out, in_per_group, kh, kw] = *shape else {
            return Err(format!("'{wname}' has shape {shape:?}, expected 4 dimensions"));
        };
        let groups = if depthwise { out } else { 1 };
        let (ph, pw) = (kh / 2, kw / 2);
        let weight = self.tensor(&wname, true)?;
        let bias = if bias { self.tensor(&format!("{p}.bias"), true)? } else { PyValue::None };
        let attrs = vec![
            ("in_channels", PyValue::Int((in_per_group * groups) as i64)),
            ("out_channels", PyValue::Int(out as i64)),
            ("kernel_size", pair(kh, kw)),
            ("stride", pair(stride, stride)),
            ("padding", pair(ph, pw)),
            ("dilation", pair(1, 1)),
            ("transposed", PyValue::Bool(false)),
            ("output_padding", pair(0, 0)),
            ("groups", PyValue::Int(groups as i64)),
            ("padding_mode", PyValue::str("zeros")),
            (
                "_reversed_padding_repeated_twice",
                PyValue::Tuple([pw, pw, ph, ph].iter().map(|&x| PyValue::Int(x as i64)).collect()),
            ),
        ];
        Ok(module("torch.nn.modules.conv", "Conv2d", vec![("weight", weight), ("bias", bias)], vec![], vec![], attrs))
    }

    fn batchnorm(&mut self, p: &str) -> Result<PyValue<'a>, String> {
        let features = *self.shape(&format!("{p}.weight"))?.first().ok_or_else(|| format!("'{p}.weight' is a scalar"))?;
        let params = vec![("weight", self.tensor(&format!("{p}.weight"), true)?), ("bias", self.tensor(&format!("{p}.bias"), true)?)];
        let buffers = vec![
            ("running_mean", self.tensor(&format!("{p}.running_mean"), false)?),
            ("running_var", self.tensor(&format!("{p}.running_var"), false)?),
            ("num_batches_tracked", self.tensor(&format!("{p}.num_batches_tracked"), false)?),
        ];
        let attrs = vec![
            ("num_features", PyValue::Int(features as i64)),
            ("eps", PyValue::Float(0.001)),
            ("momentum", PyValue::Float(0.03)),
            ("affine", PyValue::Bool(true)),
            ("track_running_stats", PyValue::Bool(true)),
        ];
        Ok(module("torch.nn.modules.batchnorm", "BatchNorm2d", params, buffers, vec![], attrs))
    }

    /// Ultralytics `Conv` (or `DWConv`): Conv2d without bias, BatchNorm2d, activation.
    fn conv(&mut self, p: &str, kind: ConvKind) -> Result<PyValue<'a>, String> {
        let conv = self.conv2d(&format!("{p}.conv"), kind.stride, kind.depthwise, false)?;
        let bn = self.batchnorm(&format!("{p}.bn"))?;
        let act = if kind.act { PyValue::Shared(self.silu.clone()) } else { identity() };
        let name = if kind.dw_class { "DWConv" } else { "Conv" };
        Ok(module(CONV_MOD, name, vec![], vec![], vec![("conv".into(), conv), ("bn".into(), bn), ("act".into(), act)], vec![]))
    }

    fn bottleneck(&mut self, p: &str, add: bool) -> Result<PyValue<'a>, String> {
        let cv1 = self.conv(&format!("{p}.cv1"), PLAIN)?;
        let cv2 = self.conv(&format!("{p}.cv2"), PLAIN)?;
        Ok(module(BLOCK_MOD, "Bottleneck", vec![], vec![], vec![("cv1".into(), cv1), ("cv2".into(), cv2)], vec![(
            "add",
            PyValue::Bool(add),
        )]))
    }

    fn attention(&mut self, p: &str) -> Result<PyValue<'a>, String> {
        let dim = self.shape(&format!("{p}.proj.conv.weight"))?[0];
        let num_heads = (dim / 64).max(1);
        let head_dim = dim / num_heads;
        let key_dim = head_dim / 2;
        let scale = (key_dim as f64).powf(-0.5);
        let qkv = self.conv(&format!("{p}.qkv"), NO_ACT)?;
        let proj = self.conv(&format!("{p}.proj"), NO_ACT)?;
        let pe = self.conv(&format!("{p}.pe"), ConvKind { depthwise: true, ..NO_ACT })?;
        Ok(module(
            BLOCK_MOD,
            "Attention",
            vec![],
            vec![],
            vec![("qkv".into(), qkv), ("proj".into(), proj), ("pe".into(), pe)],
            vec![
                ("num_heads", PyValue::Int(num_heads as i64)),
                ("head_dim", PyValue::Int(head_dim as i64)),
                ("key_dim", PyValue::Int(key_dim as i64)),
                ("scale", PyValue::Float(scale)),
            ],
        ))
    }

    fn psa_block(&mut self, p: &str) -> Result<PyValue<'a>, String> {
        let attn = self.attention(&format!("{p}.attn"))?;
        let ffn = vec![self.conv(&format!("{p}.ffn.0"), PLAIN)?, self.conv(&format!("{p}.ffn.1"), NO_ACT)?];
        Ok(module(
            BLOCK_MOD,
            "PSABlock",
            vec![],
            vec![],
            vec![("attn".into(), attn), ("ffn".into(), container("Sequential", ffn))],
            vec![("add", PyValue::Bool(true))],
        ))
    }

    fn c3k(&mut self, p: &str, shortcut: bool) -> Result<PyValue<'a>, String> {
        let cv1 = self.conv(&format!("{p}.cv1"), PLAIN)?;
        let cv2 = self.conv(&format!("{p}.cv2"), PLAIN)?;
        let cv3 = self.conv(&format!("{p}.cv3"), PLAIN)?;
        let mut m = Vec::new();
        while self.has(&format!("{p}.m.{}.cv1.conv.weight", m.len())) {
            m.push(self.bottleneck(&format!("{p}.m.{}", m.len()), shortcut)?);
        }
        if m.is_empty() {
            return Err(format!("missing tensor '{p}.m.0.cv1.conv.weight'"));
        }
        Ok(module(
            BLOCK_MOD,
            "C3k",
            vec![],
            vec![],
            vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("cv3".into(), cv3), ("m".into(), container("Sequential", m))],
            vec![],
        ))
    }

    /// Hidden width `c` of a block whose `cv1` outputs `2c` channels.
    fn half_of_cv1(&self, p: &str) -> Result<i64, String> {
        Ok((self.shape(&format!("{p}.cv1.conv.weight"))?[0] / 2) as i64)
    }

    /// One top-level layer: the module and its own attributes (layer attributes are added by the
    /// caller).
    #[allow(clippy::type_complexity)]
    fn layer(&mut self, p: &str, spec: &LayerSpec, stride: &'a [f32]) -> Result<(PyValue<'a>, State<'a>), String> {
        let attr = |k: &'static str, v: PyValue<'a>| (Cow::Borrowed(k), v);
        Ok(match spec {
            LayerSpec::Conv { s, .. } => (self.conv(p, ConvKind { stride: *s, ..PLAIN })?, vec![]),
            LayerSpec::C3k2 { n, c3k, attn, shortcut, .. } => {
                let c = self.half_of_cv1(p)?;
                let cv1 = self.conv(&format!("{p}.cv1"), PLAIN)?;
                let cv2 = self.conv(&format!("{p}.cv2"), PLAIN)?;
                let mut m = Vec::with_capacity(*n);
                for j in 0..*n {
                    let q = format!("{p}.m.{j}");
                    m.push(if *attn {
                        let b = self.bottleneck(&format!("{q}.0"), *shortcut)?;
                        let psa = self.psa_block(&format!("{q}.1"))?;
                        container("Sequential", vec![b, psa])
                    } else if *c3k {
                        self.c3k(&q, *shortcut)?
                    } else {
                        self.bottleneck(&q, *shortcut)?
                    });
                }
                let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), container("ModuleList", m))];
                (module(BLOCK_MOD, "C3k2", vec![], vec![], children, vec![]), vec![attr("c", PyValue::Int(c))])
            }
            LayerSpec::Sppf { c1, c2, k, n, shortcut } => {
                let cv1 = self.conv(&format!("{p}.cv1"), NO_ACT)?;
                let cv2 = self.conv(&format!("{p}.cv2"), PLAIN)?;
                let pool = module("torch.nn.modules.pooling", "MaxPool2d", vec![], vec![], vec![], vec![
                    ("kernel_size", PyValue::Int(*k as i64)),
                    ("stride", PyValue::Int(1)),
                    ("padding", PyValue::Int((*k / 2) as i64)),
                    ("dilation", PyValue::Int(1)),
                    ("return_indices", PyValue::Bool(false)),
                    ("ceil_mode", PyValue::Bool(false)),
                ]);
                let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), pool)];
                (
                    module(BLOCK_MOD, "SPPF", vec![], vec![], children, vec![]),
                    vec![attr("n", PyValue::Int(*n as i64)), attr("add", PyValue::Bool(*shortcut && c1 == c2))],
                )
            }
            LayerSpec::C2psa { n, .. } => {
                let c = self.half_of_cv1(p)?;
                let cv1 = self.conv(&format!("{p}.cv1"), PLAIN)?;
                let cv2 = self.conv(&format!("{p}.cv2"), PLAIN)?;
                let m = (0..*n).map(|j| self.psa_block(&format!("{p}.m.{j}"))).collect::<Result<Vec<_>, _>>()?;
                let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), container("Sequential", m))];
                (module(BLOCK_MOD, "C2PSA", vec![], vec![], children, vec![]), vec![attr("c", PyValue::Int(c))])
            }
            LayerSpec::Upsample { scale } => (
                module("torch.nn.modules.upsampling", "Upsample", vec![], vec![], vec![], vec![]),
                vec![
                    attr("name", PyValue::str("Upsample")),
                    attr("size", PyValue::None),
                    attr("scale_factor", PyValue::Float(*scale as f64)),
                    attr("mode", PyValue::str("nearest")),
                    attr("align_corners", PyValue::None),
                    attr("recompute_scale_factor", PyValue::None),
                ],
            ),
            LayerSpec::Concat => (module(CONV_MOD, "Concat", vec![], vec![], vec![], vec![]), vec![attr("d", PyValue::Int(1))]),
            LayerSpec::Detect { reg_max, end2end, ch, .. } => self.detect(p, *reg_max, *end2end, ch.len(), stride)?,
        })
    }

    #[allow(clippy::type_complexity)]
    fn detect(
        &mut self,
        p: &str,
        reg_max: usize,
        end2end: bool,
        nl: usize,
        stride: &'a [f32],
    ) -> Result<(PyValue<'a>, State<'a>), String> {
        // The class count is the width of the final class convolution, whatever the config says.
        let nc = self.shape(&format!("{p}.cv3.0.2.weight"))?[0];
        let mut children = Vec::new();
        let branches: &[&str] = if end2end { &["cv2", "cv3", "one2one_cv2", "one2one_cv3"] } else { &["cv2", "cv3"] };
        let shared_silu = self.silu.clone();
        for (b, branch) in branches.iter().enumerate() {
            // The one2one branches are deep copies of cv2/cv3: each copy has its own SiLU
            // instance, shared within the branch.
            self.silu = if branch.starts_with("one2one") { Arc::new(silu()) } else { shared_silu.clone() };
            let mut levels = Vec::with_capacity(nl);
            for l in 0..nl {
                let q = format!("{p}.{branch}.{l}");
                let level = if branch.ends_with("cv2") {
                    vec![self.conv(&format!("{q}.0"), PLAIN)?, self.conv(&format!("{q}.1"), PLAIN)?, self.conv2d(&format!("{q}.2"), 1, false, true)?]
                } else {
                    let mut seq = Vec::new();
                    for s in 0..2 {
                        let dw = self.conv(&format!("{q}.{s}.0"), ConvKind { depthwise: true, dw_class: true, ..PLAIN })?;
                        let pw = self.conv(&format!("{q}.{s}.1"), PLAIN)?;
                        seq.push(container("Sequential", vec![dw, pw]));
                    }
                    seq.push(self.conv2d(&format!("{q}.2"), 1, false, true)?);
                    seq
                };
                levels.push(container("Sequential", level));
            }
            children.push((branch.to_string(), container("ModuleList", levels)));
            if b == 1 {
                // `dfl` is registered right after cv3 (an Identity for reg_max 1).
                children.push(("dfl".to_string(), identity()));
            }
        }
        self.silu = shared_silu;
        let head_stride: Vec<f32> = stride.to_vec();
        let empty = |dtype| PyValue::Tensor(PyTensor::new(dtype, vec![0], TensorData::F32(Cow::Owned(Vec::new()))));
        let module = module("ultralytics.nn.modules.head", "Detect", vec![], vec![], children, vec![]);
        let attrs = vec![
            (Cow::Borrowed("nc"), PyValue::Int(nc as i64)),
            (Cow::Borrowed("nl"), PyValue::Int(nl as i64)),
            (Cow::Borrowed("reg_max"), PyValue::Int(reg_max as i64)),
            (Cow::Borrowed("no"), PyValue::Int((nc + 4 * reg_max) as i64)),
            (
                Cow::Borrowed("stride"),
                PyValue::Tensor(PyTensor::new(self.float, vec![head_stride.len()], TensorData::F32(Cow::Owned(head_stride)))),
            ),
            (Cow::Borrowed("inplace"), PyValue::Bool(true)),
            (Cow::Borrowed("anchors"), empty(self.float)),
            (Cow::Borrowed("strides"), empty(self.float)),
        ];
        Ok((module, attrs))
    }
}

// ----- the torch zip container -----

/// Data of every entry starts at a multiple of this (torch's `.storage_alignment`).
const ALIGNMENT: u64 = 64;

struct ZipEntry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

/// A minimal zip writer: stored entries, data aligned with a padding extra field (id `FB`, as
/// torch's writer does), no zip64 (checkpoints over 4 GiB are refused).
struct ZipOut<W: Write> {
    w: W,
    pos: u64,
    entries: Vec<ZipEntry>,
}

impl<W: Write> ZipOut<W> {
    fn add(&mut self, name: String, data: &[u8]) -> std::io::Result<()> {
        let too_big = || std::io::Error::other("checkpoint larger than 4 GiB (zip64 is not supported)");
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let offset = u32::try_from(self.pos).map_err(|_| too_big())?;
        let crc = crc32(data);
        let header_end = self.pos + 30 + name.len() as u64 + 4;
        let pad = (ALIGNMENT - header_end % ALIGNMENT) % ALIGNMENT;
        let mut h = Vec::with_capacity(30 + name.len() + 4 + pad as usize);
        h.extend(0x0403_4b50u32.to_le_bytes());
        h.extend(20u16.to_le_bytes()); // version needed
        h.extend(0u16.to_le_bytes()); // flags
        h.extend(0u16.to_le_bytes()); // stored
        h.extend(0u16.to_le_bytes()); // time
        h.extend(DOS_DATE.to_le_bytes());
        h.extend(crc.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend((name.len() as u16).to_le_bytes());
        h.extend((4 + pad as u16).to_le_bytes());
        h.extend(name.as_bytes());
        h.extend(*b"FB");
        h.extend((pad as u16).to_le_bytes());
        h.resize(h.len() + pad as usize, 0);
        self.w.write_all(&h)?;
        self.w.write_all(data)?;
        self.pos += h.len() as u64 + data.len() as u64;
        self.entries.push(ZipEntry { name, crc, size, offset });
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<W> {
        let too_big = || std::io::Error::other("checkpoint larger than 4 GiB (zip64 is not supported)");
        let cd_start = u32::try_from(self.pos).map_err(|_| too_big())?;
        let count = u16::try_from(self.entries.len()).map_err(|_| std::io::Error::other("more than 65535 storages"))?;
        let mut cd = Vec::new();
        for e in &self.entries {
            cd.extend(0x0201_4b50u32.to_le_bytes());
            cd.extend(20u16.to_le_bytes()); // made by
            cd.extend(20u16.to_le_bytes()); // needed
            cd.extend(0u16.to_le_bytes());
            cd.extend(0u16.to_le_bytes());
            cd.extend(0u16.to_le_bytes());
            cd.extend(DOS_DATE.to_le_bytes());
            cd.extend(e.crc.to_le_bytes());
            cd.extend(e.size.to_le_bytes());
            cd.extend(e.size.to_le_bytes());
            cd.extend((e.name.len() as u16).to_le_bytes());
            cd.extend([0u8; 12]); // extra, comment, disk, internal and external attributes
            cd.extend(e.offset.to_le_bytes());
            cd.extend(e.name.as_bytes());
        }
        let cd_len = u32::try_from(cd.len()).map_err(|_| too_big())?;
        cd.extend(0x0605_4b50u32.to_le_bytes());
        cd.extend([0u8; 4]);
        cd.extend(count.to_le_bytes());
        cd.extend(count.to_le_bytes());
        cd.extend(cd_len.to_le_bytes());
        cd.extend(cd_start.to_le_bytes());
        cd.extend([0u8; 2]);
        self.w.write_all(&cd)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// 1980-01-01, the zip epoch (no timestamps: the file's own mtime says when it was written).
const DOS_DATE: u16 = (1 << 5) | 1;

/// CRC-32 (IEEE), table driven.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            t[0][i as usize] = c;
        }
        for i in 0..256 {
            for k in 1..8 {
                let prev = t[k - 1][i];
                t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            }
        }
        t
    });
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

/// Writes the torch archive: `data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`,
/// `data/0..N`, `version`, `.data/serialization_id`, all under `<stem>/`.
fn write_archive<W: Write>(w: W, stem: &str, pickled: &pickle_write::Pickled<'_, '_>) -> std::io::Result<W> {
    let mut z = ZipOut { w, pos: 0, entries: Vec::new() };
    z.add(format!("{stem}/data.pkl"), &pickled.bytes)?;
    z.add(format!("{stem}/.format_version"), b"1")?;
    z.add(format!("{stem}/.storage_alignment"), b"64")?;
    z.add(format!("{stem}/byteorder"), b"little")?;
    // Storages are encoded one at a time: memory stays at one tensor beyond the caller's.
    let mut id = std::hash::DefaultHasher::new();
    std::hash::Hasher::write(&mut id, &pickled.bytes);
    for (key, t) in pickled.storages.iter().enumerate() {
        let bytes = t.storage_bytes().map_err(|e| std::io::Error::other(format!("storage {key}: {e}")))?;
        std::hash::Hasher::write(&mut id, &bytes);
        z.add(format!("{stem}/data/{key}"), &bytes)?;
    }
    z.add(format!("{stem}/version"), b"3\n")?;
    // A 40-digit decimal id, as torch writes; derived from the content, so reproducible.
    let a = std::hash::Hasher::finish(&id);
    std::hash::Hasher::write_u8(&mut id, 1);
    let b = std::hash::Hasher::finish(&id);
    z.add(format!("{stem}/.data/serialization_id"), format!("{a:020}{b:020}").as_bytes())?;
    z.finish()
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (Python's `isoformat` style).
fn now_iso8601() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

// ----- reading a training checkpoint back -----

/// Everything [`save_pt`] wrote, for resuming training.
#[derive(Clone, Debug)]
pub struct TrainingState {
    pub epoch: i64,
    pub best_fitness: Option<f64>,
    pub stopper: Option<StopperState>,
    pub updates: Option<u64>,
    /// `ckpt["model"]`, if a module (tensors widened to f32 exactly).
    pub model: Option<Checkpoint>,
    /// `ckpt["ema"]`, if a module.
    pub ema: Option<Checkpoint>,
    /// `ckpt["optimizer"]` as data (see `OptimizerState::from_py`).
    pub optimizer: Option<PyValue<'static>>,
    pub train_args: Json,
    pub train_metrics: Json,
    pub train_results: Json,
    /// The other plain entries (`date`, `version`, `license`, `docs`, ...).
    pub metadata: Json,
}

/// Most values converted from the optimizer entry (guards against a pickle whose shared
/// containers expand exponentially).
const MAX_PY_VALUES: usize = 1 << 24;

/// Reads a `.pt` checkpoint (ours or the reference's) with its training state.
pub fn load_training_state(path: impl AsRef<Path>) -> Result<TrainingState, CheckpointError> {
    let path = path.as_ref();
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let format = |msg: String| CheckpointError::Format { path: path.to_owned(), msg };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut archive = TorchArchive::open(std::io::BufReader::new(file), len, path)?;
    let root = archive.pickle().root();
    let Some(dict) = archive.pickle().as_dict(root).cloned() else {
        return Err(format("data.pkl is not a checkpoint dict".into()));
    };
    let model = checkpoint::from_archive_slot(&mut archive, Some("model"))?;
    let ema = checkpoint::from_archive_slot(&mut archive, Some("ema"))?;
    let Some(meta_source) = ema.as_ref().or(model.as_ref()) else {
        return Err(format("checkpoint holds no model (neither 'ema' nor 'model' is a module)".into()));
    };
    let mut metadata = meta_source.metadata.as_object().cloned().unwrap_or_default();
    let train_args = meta_source.train_args.clone();

    let optimizer = match dict.get_str("optimizer") {
        None | Some(Value::None) => None,
        Some(v) => {
            let mut budget = MAX_PY_VALUES;
            Some(py_of(&mut archive, v, 0, &mut budget).map_err(|e| format(format!("optimizer: {e}")))?)
        }
    };

    let mut take = |k: &str| metadata.remove(k).unwrap_or(Json::Null);
    let epoch = take("epoch").as_i64().ok_or_else(|| format("'epoch' is not an integer".into()))?;
    let best_fitness = take("best_fitness").as_f64();
    let updates = take("updates").as_u64();
    let stopper = match take("stopper") {
        Json::Object(m) => Some(StopperState {
            best_fitness: m.get("best_fitness").and_then(Json::as_f64),
            best_epoch: m.get("best_epoch").and_then(Json::as_i64).ok_or_else(|| format("'stopper' lacks best_epoch".into()))?,
        }),
        _ => None,
    };
    let train_metrics = take("train_metrics");
    let train_results = take("train_results");
    Ok(TrainingState {
        epoch,
        best_fitness,
        stopper,
        updates,
        model,
        ema,
        optimizer,
        train_args,
        train_metrics,
        train_results,
        metadata: Json::Object(metadata),
    })
}

/// A pickle value (data and tensors only) as an owned [`PyValue`].
fn py_of<R: Read + Seek>(
    archive: &mut TorchArchive<R>,
    v: Value,
    depth: usize,
    budget: &mut usize,
) -> Result<PyValue<'static>, String> {
    if depth > 64 {
        return Err("nested deeper than 64 levels".into());
    }
    *budget = budget.checked_sub(1).ok_or("more values than allowed")?;
    let node = match v {
        Value::None => return Ok(PyValue::None),
        Value::Bool(b) => return Ok(PyValue::Bool(b)),
        Value::Int(i) => return Ok(PyValue::Int(i)),
        Value::Float(f) => return Ok(PyValue::Float(f)),
        Value::Ref(_) => archive.pickle().node(v).cloned().ok_or("dangling reference")?,
    };
    let seq = |archive: &mut TorchArchive<R>, items: Vec<Value>, budget: &mut usize| {
        items.into_iter().map(|x| py_of(archive, x, depth + 1, budget)).collect::<Result<Vec<_>, _>>()
    };
    Ok(match node {
        Node::Str(s) => PyValue::Str(Cow::Owned(s)),
        Node::Tuple(x) => PyValue::Tuple(seq(archive, x, budget)?),
        Node::List(x) => PyValue::List(seq(archive, x, budget)?),
        Node::Set(x) | Node::FrozenSet(x) => PyValue::Set(seq(archive, x, budget)?),
        Node::Dict(d) => {
            let mut out = Vec::with_capacity(d.len());
            for &(k, x) in d.entries() {
                out.push((py_of(archive, k, depth + 1, budget)?, py_of(archive, x, depth + 1, budget)?));
            }
            PyValue::Dict(out)
        }
        Node::Tensor(t) => {
            let raw = archive.read_tensor(&t, "optimizer tensor").map_err(|e| e.to_string())?;
            let data = match raw.values {
                TensorValues::F32(v) => TensorData::F32(Cow::Owned(v)),
                TensorValues::I64(v) => TensorData::I64(Cow::Owned(v)),
            };
            PyValue::Tensor(PyTensor {
                dtype: raw.dtype,
                shape: raw.shape,
                data,
                parameter: t.is_parameter,
                requires_grad: t.requires_grad,
            })
        }
        Node::Bytes(_) => return Err("bytes values are not supported".into()),
        Node::Global(_) | Node::Object(_) | Node::Storage(_) => return Err("modules and classes are not data".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // Slicing path and byte path agree.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let bytewise = data.iter().fold(!0u32, |c, &b| {
            let mut c = c ^ u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            c
        });
        assert_eq!(crc32(&data), !bytewise);
    }

    #[test]
    fn iso_dates() {
        let d = now_iso8601();
        assert_eq!(d.len(), "2026-11-28T06:42:13.689270+00:00".len(), "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
