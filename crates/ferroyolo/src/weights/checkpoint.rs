//! [`Checkpoint`]: a YOLO26 checkpoint as the rest of the crate sees it, read from an Ultralytics
//! `.pt` file or from (and to) our safetensors layout.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::{json, Map, Value as Json};

use super::pickle::{Node, Pickle, PickleError, Value};
use super::pt::{RawTensor, TorchArchive};

/// Element type of a tensor as stored in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    /// Quantized weights (ferroyolo's INT8 files).
    I8,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The torch name (`float16`, `int64`, ...), as in `yolo26n_state_dict.tsv`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
        }
    }

    /// Whether values decode to [`TensorValues::F32`] (else [`TensorValues::I64`]).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The legacy typed-storage class torch pickles for this dtype (`HalfStorage`, ...).
    pub fn storage_class(self) -> &'static str {
        match self {
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I8 => "CharStorage",
        }
    }

    /// Inverse of [`DType::storage_class`].
    pub fn from_storage_class(name: &str) -> Option<DType> {
        [DType::F16, DType::BF16, DType::F32, DType::F64, DType::I64, DType::I32, DType::I8]
            .into_iter()
            .find(|d| d.storage_class() == name)
    }

    fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::I64 => safetensors::Dtype::I64,
            DType::I32 => safetensors::Dtype::I32,
            DType::I8 => safetensors::Dtype::I8,
        }
    }

    fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        Some(match d {
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::I32 => DType::I32,
            safetensors::Dtype::I8 => DType::I8,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a state_dict entry is a learnable parameter or a buffer (BatchNorm statistics...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// Tensor values in the crate's compute types: every float dtype widened (or, for f64,
/// narrowed) to f32, every integer dtype to i64.
#[derive(Clone, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorValues {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values if floating point.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            TensorValues::F32(v) => Some(v),
            TensorValues::I64(_) => None,
        }
    }

    /// The values if integer.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match self {
            TensorValues::I64(v) => Some(v),
            TensorValues::F32(_) => None,
        }
    }

    /// Values as f64, whatever the type (for metadata and display).
    fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorValues::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorValues::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

impl fmt::Debug for TensorValues {
    /// Length and the first few values: weights are too long to print whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorValues::F32(v) => write!(f, "F32(len {}, {:?}..)", v.len(), &v[..v.len().min(4)]),
            TensorValues::I64(v) => write!(f, "I64(len {}, {:?}..)", v.len(), &v[..v.len().min(4)]),
        }
    }
}

/// One state_dict tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    /// The dtype in the file (values are converted, see [`TensorValues`]).
    pub dtype: DType,
    pub kind: TensorKind,
    pub values: TensorValues,
}

impl StoredTensor {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One `nn.Module` of the pickled model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleInfo {
    /// Dotted path as in state_dict names (`model.0.conv`); the root model is `""`.
    pub path: String,
    /// Qualified class name (`torch.nn.modules.conv.Conv2d`).
    pub class: String,
    /// Plain attributes of the instance (`stride`, `padding`, `groups`, `eps`, `f`, `i`, ...):
    /// every public (no leading `_`) entry of its `__dict__` that is a scalar, a string, or a
    /// list/tuple of those, as a JSON object. Tensors and dicts are left out.
    pub attrs: Json,
}

/// A YOLO26 checkpoint: state_dict tensors plus what is needed to build and label the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The file it was read from.
    pub source: PathBuf,
    /// state_dict entries, in state_dict order, named as PyTorch names them
    /// (`model.0.conv.weight`, ...).
    pub tensors: Vec<(String, StoredTensor)>,
    /// The module tree in registration order (parents before children).
    pub modules: Vec<ModuleInfo>,
    /// `DetectionModel.yaml`: the model config dict (`nc`, `scales`, `backbone`, `head`, `scale`...).
    pub model_yaml: Json,
    /// Class names, index = class id.
    pub names: Vec<String>,
    /// `DetectionModel.stride` (usually `[8, 16, 32]`; empty if the checkpoint has none).
    pub stride: Vec<f32>,
    /// `ckpt["train_args"]` (`null` if absent).
    pub train_args: Json,
    /// The other entries of the checkpoint's root dict (`date`, `version`, `license`, `docs`,
    /// `epoch`, `best_fitness`, ...), the model, EMA and optimizer excepted.
    pub metadata: Json,
    /// Whether the weights come from `ckpt["ema"]` (rather than `ckpt["model"]`).
    pub from_ema: bool,
}

/// Why a checkpoint could not be read or written. Every message starts with the file path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: neither a PyTorch zip checkpoint (.pt) nor a safetensors file ({detail})", path.display())]
    Unrecognized { path: PathBuf, detail: String },
    #[error(
        "{}: not a PyTorch zip checkpoint (no zip signature; legacy pre-1.6 torch.save files are not supported)",
        path.display()
    )]
    NotZip { path: PathBuf },
    #[error("{}: truncated or corrupt zip archive: {source}", path.display())]
    Zip { path: PathBuf, source: zip::result::ZipError },
    #[error("{}: forbidden global '{global}' in data.pkl (refusing to execute arbitrary code)", path.display())]
    ForbiddenGlobal { path: PathBuf, global: String },
    #[error("{}: malformed data.pkl: {source}", path.display())]
    Pickle { path: PathBuf, source: PickleError },
    #[error("{}: storage '{key}' referenced by data.pkl is missing from the archive", path.display())]
    MissingStorage { path: PathBuf, key: String },
    #[error(
        "{}: storage '{key}' holds {actual} bytes but the pickle declares {numel} elements of {dtype} ({expected} bytes)",
        path.display()
    )]
    StorageSize { path: PathBuf, key: String, actual: u64, numel: u64, dtype: &'static str, expected: u128 },
    #[error(
        "{}: tensor view of {view} elements at offset {offset} exceeds its storage of {storage} (tensor '{tensor}')",
        path.display()
    )]
    ViewOutOfBounds { path: PathBuf, tensor: String, view: u64, offset: u64, storage: u64 },
    #[error("{}: {what} is too large to load", path.display())]
    TooLarge { path: PathBuf, what: String },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: invalid safetensors file: {source}", path.display())]
    Safetensors { path: PathBuf, source: safetensors::SafeTensorError },
    #[error(
        "{}: safetensors file without ferroyolo metadata ({reason}); only files written by ferroyolo carry the model config",
        path.display()
    )]
    NotFerroyolo { path: PathBuf, reason: String },
}

/// Deepest nesting of containers/modules followed (YOLO26 needs ~8).
const MAX_DEPTH: usize = 64;
/// Most steps (JSON values produced, dict entries and set elements visited) while building a
/// checkpoint from the object graph. The graph is a DAG: a container or module referenced many
/// times is visited once per reference, so without a bound a small pickle could expand
/// exponentially. YOLO26n needs ~20k steps.
const MAX_WORK: usize = 1 << 22;
/// Most bytes of module paths and tensor names built (same reason as [`MAX_WORK`]).
const MAX_NAME_BYTES: usize = 1 << 26;
/// Tensors in metadata with more elements become a `{dtype, shape}` summary.
const MAX_JSON_TENSOR: usize = 4096;
/// Most modules walked (YOLO26x has under 1,000).
const MAX_MODULES: usize = 1 << 16;
/// Magic of `format` in our safetensors metadata.
const FORMAT: &str = "ferroyolo";

impl Checkpoint {
    /// Reads a checkpoint, choosing the format by content: zip (`.pt`) or safetensors.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let io = |source| CheckpointError::Io { path: path.to_owned(), source };
        let mut magic = [0u8; 4];
        let mut f = File::open(path).map_err(io)?;
        let n = read_up_to(&mut f, &mut magic).map_err(io)?;
        drop(f);
        if magic.get(..n).is_some_and(|m| m.starts_with(b"PK")) {
            return Self::load_pt(path);
        }
        match Self::load_safetensors(path) {
            Err(CheckpointError::Safetensors { source, .. }) => {
                Err(CheckpointError::Unrecognized { path: path.to_owned(), detail: source.to_string() })
            }
            other => other,
        }
    }

    /// Reads an Ultralytics `.pt` file (torch zip format) without executing any of its code.
    pub fn load_pt(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let io = |source| CheckpointError::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 2];
        let n = read_up_to(&mut file, &mut magic).map_err(io)?;
        if magic.get(..n) != Some(b"PK".as_slice()) {
            return Err(CheckpointError::NotZip { path: path.to_owned() });
        }
        file.rewind().map_err(io)?;
        let archive = TorchArchive::open(std::io::BufReader::new(file), len, path)?;
        from_archive(archive)
    }

    /// Reads a `.pt` checkpoint from memory; `source` names it in errors and in [`Self::source`].
    pub fn from_pt_bytes(bytes: &[u8], source: &Path) -> Result<Self, CheckpointError> {
        if !bytes.starts_with(b"PK") {
            return Err(CheckpointError::NotZip { path: source.to_owned() });
        }
        let archive = TorchArchive::open(std::io::Cursor::new(bytes), bytes.len() as u64, source)?;
        from_archive(archive)
    }

    /// The tensor with this state_dict name.
    pub fn tensor(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Number of parameter elements (buffers excluded), as PyTorch's
    /// `sum(p.numel() for p in model.parameters())`.
    pub fn parameter_count(&self) -> usize {
        self.tensors.iter().filter(|(_, t)| t.kind == TensorKind::Parameter).map(|(_, t)| t.numel()).sum()
    }

    /// Writes the checkpoint as safetensors, atomically (a temporary file in the same folder,
    /// flushed to disk, then renamed over `path`).
    ///
    /// Tensors keep their stored dtype. The `__metadata__` map holds, as JSON text:
    /// `format` = `"ferroyolo"`, `format_version` = `"1"`, `order` (tensor names in state_dict
    /// order: safetensors itself sorts them), `tensor_kinds` (names of the buffers; all others
    /// are parameters), `model_yaml`, `names`, `stride`, `train_args`, `metadata`, `modules`
    /// (list of `{path, class, attrs}`) and `from_ema`.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let format_err = |msg: String| CheckpointError::Format { path: path.to_owned(), msg };
        let mut views = Vec::with_capacity(self.tensors.len());
        let mut seen = HashSet::new();
        for (name, t) in &self.tensors {
            if !seen.insert(name.as_str()) {
                return Err(format_err(format!("duplicate tensor name '{name}'")));
            }
            views.push((name.clone(), encode(t).map_err(|e| format_err(format!("tensor '{name}': {e}")))?));
        }
        let buffers: Vec<&str> =
            self.tensors.iter().filter(|(_, t)| t.kind == TensorKind::Buffer).map(|(n, _)| n.as_str()).collect();
        let order: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let meta: HashMap<String, String> = [
            ("format", Json::from(FORMAT)),
            ("format_version", Json::from("1")),
            ("order", json!(order)),
            ("tensor_kinds", json!(buffers)),
            ("model_yaml", self.model_yaml.clone()),
            ("names", json!(self.names)),
            ("stride", json!(self.stride)),
            ("train_args", self.train_args.clone()),
            ("metadata", self.metadata.clone()),
            ("modules", serde_json::to_value(&self.modules).unwrap_or(Json::Null)),
            ("from_ema", Json::from(self.from_ema)),
        ]
        .into_iter()
        .map(|(k, v)| {
            // Plain strings are stored as such, everything else as JSON text.
            let text = match v {
                Json::String(s) => s,
                other => other.to_string(),
            };
            (k.to_owned(), text)
        })
        .collect();
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|source| CheckpointError::Safetensors { path: path.to_owned(), source })?;
        write_atomic(path, &bytes)
    }

    /// Reads a safetensors file written by [`Checkpoint::save_safetensors`].
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_owned(), source })?;
        Self::from_safetensors_bytes(&bytes, path)
    }

    /// Reads a ferroyolo safetensors file from memory; `path` names it in errors and in
    /// [`Self::source`].
    pub fn from_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let st_err = |source| CheckpointError::Safetensors { path: path.to_owned(), source };
        let not_ours = |reason: &str| CheckpointError::NotFerroyolo { path: path.to_owned(), reason: reason.to_owned() };
        let bad = |msg: String| CheckpointError::Format { path: path.to_owned(), msg };

        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(st_err)?;
        let meta = header.metadata().clone().ok_or_else(|| not_ours("no __metadata__"))?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(not_ours("__metadata__ has no format=ferroyolo"));
        }
        let field = |key: &str| -> Result<Json, CheckpointError> {
            let text = meta.get(key).ok_or_else(|| not_ours(&format!("__metadata__ lacks '{key}'")))?;
            serde_json::from_str(text).map_err(|e| bad(format!("__metadata__ '{key}' is not valid JSON: {e}")))
        };
        let order: Vec<String> = serde_json::from_value(field("order")?)
            .map_err(|e| bad(format!("__metadata__ 'order' is not a list of names: {e}")))?;
        let buffers: HashSet<String> = serde_json::from_value(field("tensor_kinds")?)
            .map_err(|e| bad(format!("__metadata__ 'tensor_kinds' is not a list of names: {e}")))?;
        let names: Vec<String> = serde_json::from_value(field("names")?)
            .map_err(|e| bad(format!("__metadata__ 'names' is not a list of strings: {e}")))?;
        let stride: Vec<f32> = serde_json::from_value(field("stride")?)
            .map_err(|e| bad(format!("__metadata__ 'stride' is not a list of numbers: {e}")))?;
        let modules: Vec<ModuleInfo> = match meta.get("modules") {
            Some(_) => serde_json::from_value(field("modules")?)
                .map_err(|e| bad(format!("__metadata__ 'modules' is malformed: {e}")))?,
            None => Vec::new(),
        };
        let from_ema = meta.get("from_ema").is_some_and(|s| s == "true");

        let st = safetensors::SafeTensors::deserialize(bytes).map_err(st_err)?;
        if st.len() != order.len() {
            return Err(bad(format!(
                "__metadata__ 'order' lists {} tensors but the file holds {}",
                order.len(),
                st.len()
            )));
        }
        let mut tensors = Vec::with_capacity(order.len());
        for name in order {
            let view = st.tensor(&name).map_err(st_err)?;
            let dtype = DType::from_safetensors(view.dtype())
                .ok_or_else(|| bad(format!("tensor '{name}' has unsupported dtype {}", view.dtype())))?;
            let kind = if buffers.contains(&name) { TensorKind::Buffer } else { TensorKind::Parameter };
            let values = decode_le(dtype, view.data());
            tensors.push((name, StoredTensor { shape: view.shape().to_vec(), dtype, kind, values }));
        }
        Ok(Checkpoint {
            source: path.to_owned(),
            tensors,
            modules,
            model_yaml: field("model_yaml")?,
            names,
            stride,
            train_args: field("train_args")?,
            metadata: field("metadata")?,
            from_ema,
        })
    }
}

/// Reads until `buf` is full or the end of the file; returns the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `path` via a temporary file in the same folder, fsync, rename: readers see either the
/// old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_atomic_with(path, |mut w| {
        w.write_all(bytes)?;
        Ok(w)
    })
}

/// Writes via `write` to a temporary file next to `path`, fsyncs it and renames it over `path`.
/// On any error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(BufWriter<File>) -> std::io::Result<BufWriter<File>>,
) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let f = File::create(&tmp)?;
        let f = write(BufWriter::with_capacity(1 << 20, f))?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// A tensor's bytes in its stored dtype, for safetensors.
struct Encoded {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for Encoded {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode(t: &StoredTensor) -> Result<Encoded, String> {
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    if numel != t.values.len() {
        return Err(format!("shape {:?} has {numel} elements but {} values are present", t.shape, t.values.len()));
    }
    let data: Vec<u8> = match (&t.values, t.dtype) {
        (TensorValues::F32(v), DType::F16) => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        (TensorValues::F32(v), DType::BF16) => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        (TensorValues::F32(v), DType::F32) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        (TensorValues::F32(v), DType::F64) => v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect(),
        (TensorValues::I64(v), DType::I64) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        (TensorValues::I64(v), DType::I32) => {
            let narrowed: Result<Vec<i32>, _> = v.iter().map(|&x| i32::try_from(x)).collect();
            narrowed.map_err(|_| "value out of int32 range")?.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        (TensorValues::I64(v), DType::I8) => {
            let narrowed: Result<Vec<i8>, _> = v.iter().map(|&x| i8::try_from(x)).collect();
            narrowed.map_err(|_| "value out of int8 range")?.iter().map(|&x| x as u8).collect()
        }
        (_, d) => return Err(format!("values do not match the dtype {d}")),
    };
    Ok(Encoded { dtype: t.dtype.to_safetensors(), shape: t.shape.clone(), data })
}

/// Little-endian bytes (length validated by safetensors) to values.
fn decode_le(dtype: DType, bytes: &[u8]) -> TensorValues {
    fn conv<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    match dtype {
        DType::F16 => TensorValues::F32(conv(bytes, |a| f16::from_le_bytes(a).to_f32())),
        DType::BF16 => TensorValues::F32(conv(bytes, |a| bf16::from_le_bytes(a).to_f32())),
        DType::F32 => TensorValues::F32(conv(bytes, f32::from_le_bytes)),
        DType::F64 => TensorValues::F32(conv(bytes, |a| f64::from_le_bytes(a) as f32)),
        DType::I64 => TensorValues::I64(conv(bytes, i64::from_le_bytes)),
        DType::I32 => TensorValues::I64(conv(bytes, |a| i64::from(i32::from_le_bytes(a)))),
        DType::I8 => TensorValues::I64(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
    }
}

// ----- from the unpickled object graph -----

/// Builds the checkpoint from an opened torch archive.
fn from_archive<R: Read + Seek>(mut archive: TorchArchive<R>) -> Result<Checkpoint, CheckpointError> {
    let path = archive.path().to_owned();
    from_archive_slot(&mut archive, None)?
        .ok_or_else(|| CheckpointError::Format { path, msg: "checkpoint holds no model".into() })
}

/// Builds the checkpoint of one model in an opened torch archive: `slot` names the root-dict
/// entry (`"model"` or `"ema"`; `None` on a missing or non-module entry), or with `None` the
/// loader's choice: `ckpt["ema"]` when a module, else `ckpt["model"]` (an error when neither is).
pub(crate) fn from_archive_slot<R: Read + Seek>(
    archive: &mut TorchArchive<R>,
    slot: Option<&str>,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let mut b = Builder { a: archive, work: 0, name_bytes: 0, modules_seen: 0 };
    let root = b.a.pickle().root();

    // The model is ckpt["ema"] when truthy (a module), else ckpt["model"]; a bare pickled model
    // (torch.save(model)) is accepted too.
    let (model, from_ema, root_dict) = match b.a.pickle().node(root) {
        Some(Node::Dict(d)) => {
            let module = |key: &str| d.get_str(key).filter(|&v| b.a.pickle().as_object(v).is_some());
            match slot {
                Some(key) => match module(key) {
                    Some(m) => (m, key == "ema", Some(root)),
                    None => return Ok(None),
                },
                None => match module("ema") {
                    Some(e) => (e, true, Some(root)),
                    None => (
                        module("model").ok_or_else(|| {
                            b.format("checkpoint holds no model (neither 'ema' nor 'model' is a module)")
                        })?,
                        false,
                        Some(root),
                    ),
                },
            }
        }
        Some(Node::Object(_)) if slot.is_none() => (root, false, None),
        Some(Node::Object(_)) => return Ok(None),
        _ => return Err(b.format("data.pkl holds neither a checkpoint dict nor a model")),
    };

    let mut tensors = Vec::new();
    let mut index = HashMap::new();
    let mut modules = Vec::new();
    b.walk(model, "", 0, &mut tensors, &mut index, &mut modules)?;

    let state = b.state_of(model)?;
    let get = |key: &str| b.a.pickle().as_dict(state).and_then(|d| d.get_str(key));
    let yaml_v = get("yaml");
    let names_v = get("names");
    let stride_v = get("stride");
    let model_yaml = match yaml_v {
        Some(v) => b.json_of(v, 0, true)?,
        None => Json::Null,
    };
    let names = b.names(names_v, &model_yaml)?;
    let stride = match stride_v {
        Some(v) => b.json_of(v, 0, true)?,
        None => Json::Null,
    };
    let stride: Vec<f32> = flat_numbers(&stride).into_iter().map(|x| x as f32).collect();

    let mut train_args = Json::Null;
    let mut metadata = Map::new();
    if let Some(root) = root_dict {
        let entries = b.a.pickle().as_dict(root).map(|d| d.entries().to_vec()).unwrap_or_default();
        for (k, v) in entries {
            let Some(key) = b.a.pickle().as_str(k).map(str::to_owned) else { continue };
            match key.as_str() {
                "model" | "ema" | "optimizer" => {}
                "train_args" => train_args = b.json_of(v, 0, true)?,
                _ => {
                    // Modules (anything but plain data) have no JSON form; leave them out.
                    if b.a.pickle().as_object(v).is_none() {
                        metadata.insert(key, b.json_of(v, 0, true)?);
                    }
                }
            }
        }
    }

    Ok(Some(Checkpoint {
        source: b.a.path().to_owned(),
        tensors,
        modules,
        model_yaml,
        names,
        stride,
        train_args,
        metadata: Json::Object(metadata),
        from_ema,
    }))
}

/// All numbers of a (nested) JSON array, in order.
fn flat_numbers(v: &Json) -> Vec<f64> {
    match v {
        Json::Number(n) => n.as_f64().into_iter().collect(),
        Json::Array(a) => a.iter().flat_map(flat_numbers).collect(),
        _ => Vec::new(),
    }
}

struct Builder<'x, R: Read + Seek> {
    a: &'x mut TorchArchive<R>,
    /// Steps taken so far (bounded by [`MAX_WORK`]).
    work: usize,
    /// Bytes of names built so far (bounded by [`MAX_NAME_BYTES`]).
    name_bytes: usize,
    modules_seen: usize,
}

impl<R: Read + Seek> Builder<'_, R> {
    fn format(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Format { path: self.a.path().to_owned(), msg: msg.into() }
    }

    fn pickle(&self) -> &Pickle {
        self.a.pickle()
    }

    /// The `__dict__` of a module object (must be a dict).
    fn state_of(&self, module: Value) -> Result<Value, CheckpointError> {
        let obj = self.pickle().as_object(module).ok_or_else(|| self.format("expected a module object"))?;
        match obj.state {
            Some(s) if self.pickle().as_dict(s).is_some() => Ok(s),
            _ => Err(self.format(format!("module of class {} has no state dict", obj.class))),
        }
    }

    /// Entries of `state[key]` if it is a dict (missing → empty).
    fn dict_entries(&self, state: Value, key: &str) -> Vec<(Value, Value)> {
        self.pickle()
            .as_dict(state)
            .and_then(|d| d.get_str(key))
            .and_then(|v| self.pickle().as_dict(v))
            .map(|d| d.entries().to_vec())
            .unwrap_or_default()
    }

    /// The state_dict walk: this module's parameters, then its persistent buffers, then each
    /// child (in `_modules` order) recursively, the way `nn.Module.state_dict` orders them.
    fn walk(
        &mut self,
        module: Value,
        prefix: &str,
        depth: usize,
        tensors: &mut Vec<(String, StoredTensor)>,
        index: &mut HashMap<String, usize>,
        modules: &mut Vec<ModuleInfo>,
    ) -> Result<(), CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(self.format(format!("modules nested deeper than {MAX_DEPTH} levels")));
        }
        self.modules_seen += 1;
        if self.modules_seen > MAX_MODULES {
            return Err(self.format(format!("more than {MAX_MODULES} modules")));
        }
        let class = self.pickle().as_object(module).map(|o| o.class.clone()).unwrap_or_default();
        let state = self.state_of(module)?;
        let path = prefix.strip_suffix('.').unwrap_or(prefix).to_owned();

        // Plain attributes.
        let mut attrs = Map::new();
        let entries = self.pickle().as_dict(state).map(|d| d.entries().to_vec()).unwrap_or_default();
        self.work(entries.len())?;
        for (k, v) in entries {
            let Some(key) = self.pickle().as_str(k) else { continue };
            if key.starts_with('_') {
                continue;
            }
            let key = key.to_owned();
            if let Some(j) = self.plain_json(v, 0)? {
                attrs.insert(key, j);
            }
        }
        modules.push(ModuleInfo { path, class, attrs: Json::Object(attrs) });

        let set_len = self
            .pickle()
            .as_dict(state)
            .and_then(|d| d.get_str("_non_persistent_buffers_set"))
            .and_then(|v| self.pickle().as_sequence(v))
            .map_or(0, <[Value]>::len);
        self.work(set_len)?;
        let non_persistent: HashSet<String> = self
            .pickle()
            .as_dict(state)
            .and_then(|d| d.get_str("_non_persistent_buffers_set"))
            .and_then(|v| self.pickle().as_sequence(v))
            .map(|s| s.iter().filter_map(|&x| self.pickle().as_str(x).map(str::to_owned)).collect())
            .unwrap_or_default();

        for (dict, kind) in [("_parameters", TensorKind::Parameter), ("_buffers", TensorKind::Buffer)] {
            let entries = self.dict_entries(state, dict);
            self.work(entries.len())?;
            for (k, v) in entries {
                if v == Value::None {
                    continue;
                }
                let key = self
                    .pickle()
                    .as_str(k)
                    .ok_or_else(|| self.format(format!("non-string key in {dict} of '{prefix}'")))?
                    .to_owned();
                if kind == TensorKind::Buffer && non_persistent.contains(&key) {
                    continue;
                }
                let name = self.name(prefix, &key, "")?;
                let meta = self
                    .pickle()
                    .as_tensor(v)
                    .cloned()
                    .ok_or_else(|| self.format(format!("'{name}' in {dict} is not a tensor")))?;
                let RawTensor { dtype, shape, values } = self.a.read_tensor(&meta, &name)?;
                let t = StoredTensor { shape, dtype, kind, values };
                // Like the OrderedDict torch builds: a repeated name keeps its first position.
                match index.get(&name) {
                    Some(&i) => {
                        if let Some(slot) = tensors.get_mut(i) {
                            slot.1 = t;
                        }
                    }
                    None => {
                        index.insert(name.clone(), tensors.len());
                        tensors.push((name, t));
                    }
                }
            }
        }

        let children = self.dict_entries(state, "_modules");
        self.work(children.len())?;
        for (k, v) in children {
            if v == Value::None {
                continue;
            }
            let key = self
                .pickle()
                .as_str(k)
                .ok_or_else(|| self.format(format!("non-string key in _modules of '{prefix}'")))?
                .to_owned();
            let child_prefix = self.name(prefix, &key, ".")?;
            self.walk(v, &child_prefix, depth + 1, tensors, index, modules)?;
        }
        Ok(())
    }

    /// Counts `n` steps against [`MAX_WORK`].
    fn work(&mut self, n: usize) -> Result<(), CheckpointError> {
        self.work = self.work.saturating_add(n);
        if self.work > MAX_WORK {
            return Err(self.format(format!(
                "the object graph expands to more than {MAX_WORK} values (shared containers referenced too often?)"
            )));
        }
        Ok(())
    }

    fn count_json(&mut self) -> Result<(), CheckpointError> {
        self.work(1)
    }

    /// `format!("{prefix}{key}{suffix}")`, counted against [`MAX_NAME_BYTES`].
    fn name(&mut self, prefix: &str, key: &str, suffix: &str) -> Result<String, CheckpointError> {
        let len = prefix.len().saturating_add(key.len()).saturating_add(suffix.len());
        self.name_bytes = self.name_bytes.saturating_add(len);
        if self.name_bytes > MAX_NAME_BYTES {
            return Err(self.format(format!("module and tensor names exceed {MAX_NAME_BYTES} bytes in total")));
        }
        Ok(format!("{prefix}{key}{suffix}"))
    }

    /// A module attribute as JSON if it is plain data: scalar, string, or a list/tuple/set of
    /// plain data. `None` for anything else (tensors, dicts, modules).
    fn plain_json(&mut self, v: Value, depth: usize) -> Result<Option<Json>, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(self.format(format!("attribute nested deeper than {MAX_DEPTH} levels")));
        }
        self.count_json()?;
        Ok(Some(match v {
            Value::None => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Int(i) => Json::from(i),
            Value::Float(f) => float_json(f),
            Value::Ref(_) => match self.pickle().node(v) {
                Some(Node::Str(s)) => {
                    let s = s.clone();
                    self.work(s.len() / 64)?;
                    Json::String(s)
                }
                Some(Node::Tuple(items) | Node::List(items) | Node::Set(items) | Node::FrozenSet(items)) => {
                    let items = items.clone();
                    self.work(items.len())?;
                    let mut out = Vec::with_capacity(items.len());
                    for x in items {
                        match self.plain_json(x, depth + 1)? {
                            Some(j) => out.push(j),
                            None => return Ok(None),
                        }
                    }
                    Json::Array(out)
                }
                _ => return Ok(None),
            },
        }))
    }

    /// Any pickle value as JSON: dicts become objects (non-string keys stringified), tuples and
    /// sets arrays, small tensors (nested) arrays of numbers, modules `null`.
    fn json_of(&mut self, v: Value, depth: usize, tensors: bool) -> Result<Json, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(self.format(format!("metadata nested deeper than {MAX_DEPTH} levels")));
        }
        self.count_json()?;
        Ok(match v {
            Value::None => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Int(i) => Json::from(i),
            Value::Float(f) => float_json(f),
            Value::Ref(_) => match self.pickle().node(v) {
                None => Json::Null,
                Some(Node::Str(s)) => {
                    let s = s.clone();
                    self.work(s.len() / 64)?;
                    Json::String(s)
                }
                Some(Node::Bytes(_)) => Json::Null,
                Some(Node::Tuple(items) | Node::List(items) | Node::Set(items) | Node::FrozenSet(items)) => {
                    let items = items.clone();
                    self.work(items.len())?;
                    let mut out = Vec::with_capacity(items.len());
                    for x in items {
                        out.push(self.json_of(x, depth + 1, tensors)?);
                    }
                    Json::Array(out)
                }
                Some(Node::Dict(d)) => {
                    let entries = d.entries().to_vec();
                    self.work(entries.len())?;
                    let mut out = Map::new();
                    for (k, x) in entries {
                        let key = match k {
                            Value::Int(i) => i.to_string(),
                            Value::Bool(b) => if b { "True" } else { "False" }.to_owned(),
                            Value::None => "None".to_owned(),
                            Value::Float(f) => f.to_string(),
                            Value::Ref(_) => match self.pickle().as_str(k) {
                                Some(s) => s.to_owned(),
                                None => continue,
                            },
                        };
                        let val = self.json_of(x, depth + 1, tensors)?;
                        out.insert(key, val);
                    }
                    Json::Object(out)
                }
                Some(Node::Global(_)) | Some(Node::Object(_)) | Some(Node::Storage(_)) => Json::Null,
                Some(Node::Tensor(t)) => {
                    let t = t.clone();
                    let numel = t.size.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
                    if !tensors || numel.is_none_or(|n| n > MAX_JSON_TENSOR as u64) {
                        let dtype = self.pickle().storage(t.storage).map(|s| s.dtype.name()).unwrap_or("unknown");
                        json!({ "tensor": { "dtype": dtype, "shape": t.size } })
                    } else {
                        let raw = self.a.read_tensor(&t, "metadata tensor")?;
                        self.work(raw.values.len())?;
                        let vals: Vec<Json> = raw.values.to_f64().into_iter().map(float_json).collect();
                        nest(&vals, &raw.shape)
                    }
                }
            },
        })
    }

    /// Class names from `DetectionModel.names` ({id: name} or a list), else from the config.
    fn names(&mut self, v: Option<Value>, yaml: &Json) -> Result<Vec<String>, CheckpointError> {
        let j = match v {
            Some(v) => self.json_of(v, 0, false)?,
            None => yaml.get("names").cloned().unwrap_or(Json::Null),
        };
        match j {
            Json::Array(a) => {
                a.into_iter().map(|x| x.as_str().map(str::to_owned).ok_or_else(|| self.format("class names must be strings"))).collect()
            }
            Json::Object(m) => {
                // {"0": "person", ...}: ids must be exactly 0..n.
                let n = m.len();
                let mut out = vec![None; n];
                for (k, x) in m {
                    let id: usize = k.parse().map_err(|_| self.format(format!("class id '{k}' is not a number")))?;
                    let slot = out.get_mut(id).ok_or_else(|| self.format(format!("class id {id} out of range for {n} names")))?;
                    *slot = Some(x.as_str().map(str::to_owned).ok_or_else(|| self.format("class names must be strings"))?);
                }
                out.into_iter().map(|x| x.ok_or_else(|| self.format("class ids are not contiguous"))).collect()
            }
            _ => Ok(Vec::new()),
        }
    }
}

fn float_json(f: f64) -> Json {
    serde_json::Number::from_f64(f).map(Json::Number).unwrap_or(Json::Null)
}

/// Row-major values to nested arrays of `shape` (a scalar for an empty shape). A shape with a
/// zero dimension gives `[]`.
fn nest(vals: &[Json], shape: &[usize]) -> Json {
    match shape.split_first() {
        None => vals.first().cloned().unwrap_or(Json::Null),
        Some((_, [])) => Json::Array(vals.to_vec()),
        Some((_, rest)) => {
            // Checked: with a zero leading dimension the others may multiply past usize.
            let inner = rest.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(0);
            if inner == 0 {
                return Json::Array(Vec::new());
            }
            Json::Array(vals.chunks(inner).map(|c| nest(c, rest)).collect())
        }
    }
}
