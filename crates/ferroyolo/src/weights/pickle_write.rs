//! A pickle (protocol 2) writer for the object graphs torch checkpoints hold.
//!
//! The counterpart of the restricted reader in [`super::pickle`]: it writes only data (scalars,
//! strings, containers, tensors) and instances of `nn.Module` classes, the latter as
//! `GLOBAL cls`, `EMPTY_TUPLE`, `NEWOBJ`, `BUILD state`, exactly as Python's pickler writes them.
//! Globals and strings are emitted once and then fetched from the memo (`BINGET`), as are values
//! wrapped in [`PyValue::Shared`] (one Python object referenced from several places, such as the
//! `SiLU` instance all Ultralytics `Conv` blocks share).
//!
//! Tensors are not serialised inline: each becomes a `BINPERSID` reference to storage key `N`
//! (first-use order), and [`Pickled::storages`] lists the storages for the container writer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use half::f16;

use super::checkpoint::DType;

/// A Python value to pickle (and what [`super::pt_write`] reads back from a checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// A Python float, written as its exact IEEE double (`BINFLOAT`).
    Float(f64),
    Str(Cow<'a, str>),
    Tuple(Vec<PyValue<'a>>),
    List(Vec<PyValue<'a>>),
    /// A plain `dict`, in insertion order.
    Dict(Vec<(PyValue<'a>, PyValue<'a>)>),
    /// A `collections.OrderedDict`.
    OrderedDict(Vec<(PyValue<'a>, PyValue<'a>)>),
    /// A `set` (written in the given order).
    Set(Vec<PyValue<'a>>),
    Tensor(PyTensor<'a>),
    /// An instance of an allow-listed `nn.Module` class with its `__dict__`.
    Object(Box<PyObject<'a>>),
    /// One object referenced from several places: pickled the first time, then `BINGET`.
    /// Identity is the `Arc` allocation.
    Shared(Arc<PyValue<'a>>),
}

impl<'a> PyValue<'a> {
    /// A string value.
    pub fn str(s: impl Into<Cow<'a, str>>) -> Self {
        PyValue::Str(s.into())
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            PyValue::Shared(v) => v.as_str(),
            _ => None,
        }
    }

    /// The integer, if this is one (bools are not integers here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as f64 (an int is converted), if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Float(f) => Some(*f),
            PyValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            PyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Entries of a dict or OrderedDict.
    pub fn as_dict(&self) -> Option<&[(PyValue<'a>, PyValue<'a>)]> {
        match self {
            PyValue::Dict(d) | PyValue::OrderedDict(d) => Some(d),
            PyValue::Shared(v) => v.as_dict(),
            _ => None,
        }
    }

    /// Elements of a list, tuple or set.
    pub fn as_sequence(&self) -> Option<&[PyValue<'a>]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) | PyValue::Set(v) => Some(v),
            PyValue::Shared(v) => v.as_sequence(),
            _ => None,
        }
    }

    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&PyTensor<'a>> {
        match self {
            PyValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&PyValue<'a>> {
        self.as_dict()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }
}

/// An `nn.Module` instance: `module.name` must be one of the reader's allow-listed classes.
#[derive(Clone, Debug, PartialEq)]
pub struct PyObject<'a> {
    pub module: &'static str,
    pub name: &'static str,
    /// The instance `__dict__`, in order.
    pub state: Vec<(Cow<'static, str>, PyValue<'a>)>,
}

/// Tensor values in the crate's compute types; converted to the stored dtype when written.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData<'a> {
    F32(Cow<'a, [f32]>),
    I64(Cow<'a, [i64]>),
}

impl TensorData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A contiguous tensor: `torch._utils._rebuild_tensor_v2` over its own storage, wrapped in
/// `_rebuild_parameter` for an `nn.Parameter`.
#[derive(Clone, Debug, PartialEq)]
pub struct PyTensor<'a> {
    /// Element type in the file.
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData<'a>,
    pub parameter: bool,
    pub requires_grad: bool,
}

impl<'a> PyTensor<'a> {
    /// A plain (non-parameter) tensor without gradient.
    pub fn new(dtype: DType, shape: Vec<usize>, data: TensorData<'a>) -> Self {
        PyTensor { dtype, shape, data, parameter: false, requires_grad: false }
    }

    /// Little-endian bytes of the storage in [`Self::dtype`]. Floats are rounded to nearest
    /// (fp16, bf16) or widened exactly; integers must fit the stored type.
    pub fn storage_bytes(&self) -> Result<Vec<u8>, String> {
        let numel = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
        if numel != self.data.len() {
            return Err(format!("shape {:?} has {numel} elements but {} values are present", self.shape, self.data.len()));
        }
        Ok(match (&self.data, self.dtype) {
            (TensorData::F32(v), DType::F16) => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            (TensorData::F32(v), DType::BF16) => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            (TensorData::F32(v), DType::F32) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
            (TensorData::F32(v), DType::F64) => v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect(),
            (TensorData::I64(v), DType::I64) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
            (TensorData::I64(v), DType::I32) => {
                let narrowed: Result<Vec<i32>, _> = v.iter().map(|&x| i32::try_from(x)).collect();
                narrowed.map_err(|_| "value out of int32 range")?.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            (_, d) => return Err(format!("values do not match the dtype {d}")),
        })
    }
}

/// A pickled graph: the `data.pkl` bytes and the tensors whose storages `data/0`, `data/1`, ...
/// must hold (index = storage key).
pub struct Pickled<'v, 'a> {
    pub bytes: Vec<u8>,
    pub storages: Vec<&'v PyTensor<'a>>,
}

/// Pickles `value` with protocol 2.
pub fn pickle<'v, 'a>(value: &'v PyValue<'a>) -> Result<Pickled<'v, 'a>, String> {
    let mut w = Writer { out: vec![op::PROTO, 2], memo: HashMap::new(), storages: Vec::new() };
    w.value(value, 0)?;
    w.out.push(op::STOP);
    Ok(Pickled { bytes: w.out, storages: w.storages })
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const TUPLE: u8 = b't';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
}

/// Python's pickler batches `APPENDS`/`SETITEMS` by this many items.
const BATCH: usize = 1000;
/// Deeper nesting than this is a bug in the caller (YOLO26 needs ~12 levels).
const MAX_DEPTH: usize = 200;

#[derive(Hash, PartialEq, Eq)]
enum MemoKey {
    Global(&'static str, &'static str),
    Str(String),
    Shared(usize),
}

struct Writer<'v, 'a> {
    out: Vec<u8>,
    memo: HashMap<MemoKey, u32>,
    storages: Vec<&'v PyTensor<'a>>,
}

impl<'v, 'a> Writer<'v, 'a> {
    /// Fetches a memoized value; false if `key` was never stored.
    fn get(&mut self, key: &MemoKey) -> bool {
        let Some(&i) = self.memo.get(key) else { return false };
        match u8::try_from(i) {
            Ok(b) => self.out.extend([op::BINGET, b]),
            Err(_) => {
                self.out.push(op::LONG_BINGET);
                self.out.extend(i.to_le_bytes());
            }
        }
        true
    }

    /// Stores the value on top of the stack under `key`.
    fn put(&mut self, key: MemoKey) -> Result<(), String> {
        let i = u32::try_from(self.memo.len()).map_err(|_| "more than 2^32 memo entries".to_string())?;
        match u8::try_from(i) {
            Ok(b) => self.out.extend([op::BINPUT, b]),
            Err(_) => {
                self.out.push(op::LONG_BINPUT);
                self.out.extend(i.to_le_bytes());
            }
        }
        self.memo.insert(key, i);
        Ok(())
    }

    fn global(&mut self, module: &'static str, name: &'static str) -> Result<(), String> {
        let key = MemoKey::Global(module, name);
        if self.get(&key) {
            return Ok(());
        }
        self.out.push(op::GLOBAL);
        self.out.extend(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend(name.as_bytes());
        self.out.push(b'\n');
        self.put(key)
    }

    fn int(&mut self, i: i64) {
        if let Ok(b) = u8::try_from(i) {
            self.out.extend([op::BININT1, b]);
        } else if let Ok(s) = u16::try_from(i) {
            self.out.push(op::BININT2);
            self.out.extend(s.to_le_bytes());
        } else if let Ok(s) = i32::try_from(i) {
            self.out.push(op::BININT);
            self.out.extend(s.to_le_bytes());
        } else {
            // Shortest little-endian two's complement: drop high bytes that only repeat the sign.
            let mut bytes = i.to_le_bytes().to_vec();
            while bytes.len() > 1 {
                let last = bytes[bytes.len() - 1];
                let prev_sign = bytes[bytes.len() - 2] & 0x80;
                if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
                    bytes.pop();
                } else {
                    break;
                }
            }
            self.out.extend([op::LONG1, bytes.len() as u8]);
            self.out.extend(bytes);
        }
    }

    fn string(&mut self, s: &str) -> Result<(), String> {
        let key = MemoKey::Str(s.to_owned());
        if self.get(&key) {
            return Ok(());
        }
        let len = u32::try_from(s.len()).map_err(|_| "string longer than 4 GiB".to_string())?;
        self.out.push(op::BINUNICODE);
        self.out.extend(len.to_le_bytes());
        self.out.extend(s.as_bytes());
        self.put(key)
    }

    /// A tuple of already-known length: the short opcodes where they exist.
    fn tuple(&mut self, items: &'v [PyValue<'a>], depth: usize) -> Result<(), String> {
        match items.len() {
            0 => self.out.push(op::EMPTY_TUPLE),
            n @ 1..=3 => {
                for x in items {
                    self.value(x, depth + 1)?;
                }
                self.out.push([op::TUPLE1, op::TUPLE2, op::TUPLE3][n - 1]);
            }
            _ => {
                self.out.push(op::MARK);
                for x in items {
                    self.value(x, depth + 1)?;
                }
                self.out.push(op::TUPLE);
            }
        }
        Ok(())
    }

    fn usize_tuple(&mut self, items: &[usize]) -> Result<(), String> {
        if items.is_empty() {
            self.out.push(op::EMPTY_TUPLE);
            return Ok(());
        }
        if items.len() > 3 {
            self.out.push(op::MARK);
        }
        for &d in items {
            self.int(i64::try_from(d).map_err(|_| "dimension out of range".to_string())?);
        }
        self.out.push(match items.len() {
            1 => op::TUPLE1,
            2 => op::TUPLE2,
            3 => op::TUPLE3,
            _ => op::TUPLE,
        });
        Ok(())
    }

    /// `collections.OrderedDict()` with these items (REDUCE, then SETITEMS).
    fn ordered_dict(&mut self, items: &'v [(PyValue<'a>, PyValue<'a>)], depth: usize) -> Result<(), String> {
        self.global("collections", "OrderedDict")?;
        self.out.extend([op::EMPTY_TUPLE, op::REDUCE]);
        self.dict_items(items, depth)
    }

    fn dict_items(&mut self, items: &'v [(PyValue<'a>, PyValue<'a>)], depth: usize) -> Result<(), String> {
        for chunk in items.chunks(BATCH) {
            if let [(k, v)] = chunk {
                self.value(k, depth + 1)?;
                self.value(v, depth + 1)?;
                self.out.push(op::SETITEM);
                continue;
            }
            self.out.push(op::MARK);
            for (k, v) in chunk {
                self.value(k, depth + 1)?;
                self.value(v, depth + 1)?;
            }
            self.out.push(op::SETITEMS);
        }
        Ok(())
    }

    fn tensor(&mut self, t: &'v PyTensor<'a>) -> Result<(), String> {
        if t.parameter {
            self.global("torch._utils", "_rebuild_parameter")?;
        }
        self.global("torch._utils", "_rebuild_tensor_v2")?;
        self.out.push(op::MARK);
        // The storage: BINPERSID ('storage', torch.<Type>Storage, key, 'cpu', numel).
        let key = self.storages.len().to_string();
        self.storages.push(t);
        self.out.push(op::MARK);
        self.string("storage")?;
        self.global("torch", storage_class(t.dtype))?;
        self.string(&key)?;
        self.string("cpu")?;
        self.int(i64::try_from(t.data.len()).map_err(|_| "tensor too large".to_string())?);
        self.out.extend([op::TUPLE, op::BINPERSID]);
        self.int(0); // storage offset
        self.usize_tuple(&t.shape)?;
        // Row-major (contiguous) strides.
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1].saturating_mul(t.shape[d + 1]);
        }
        self.usize_tuple(&stride)?;
        self.out.push(if t.requires_grad && !t.parameter { op::NEWTRUE } else { op::NEWFALSE });
        self.ordered_dict(&[], 0)?; // backward hooks
        self.out.extend([op::TUPLE, op::REDUCE]);
        if t.parameter {
            self.out.push(if t.requires_grad { op::NEWTRUE } else { op::NEWFALSE });
            self.ordered_dict(&[], 0)?;
            self.out.extend([op::TUPLE3, op::REDUCE]);
        }
        Ok(())
    }

    fn value(&mut self, v: &'v PyValue<'a>, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("object graph nested deeper than {MAX_DEPTH} levels"));
        }
        match v {
            PyValue::None => self.out.push(op::NONE),
            PyValue::Bool(b) => self.out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            PyValue::Int(i) => self.int(*i),
            PyValue::Float(f) => {
                self.out.push(op::BINFLOAT);
                self.out.extend(f.to_be_bytes());
            }
            PyValue::Str(s) => self.string(s)?,
            PyValue::Tuple(items) => self.tuple(items, depth)?,
            PyValue::List(items) => {
                self.out.push(op::EMPTY_LIST);
                for chunk in items.chunks(BATCH) {
                    if let [x] = chunk {
                        self.value(x, depth + 1)?;
                        self.out.push(op::APPEND);
                        continue;
                    }
                    self.out.push(op::MARK);
                    for x in chunk {
                        self.value(x, depth + 1)?;
                    }
                    self.out.push(op::APPENDS);
                }
            }
            PyValue::Dict(items) => {
                self.out.push(op::EMPTY_DICT);
                self.dict_items(items, depth)?;
            }
            PyValue::OrderedDict(items) => self.ordered_dict(items, depth)?,
            PyValue::Set(items) => {
                // Protocol 2 has no set opcodes: set([items]) via REDUCE, as Python writes it.
                self.global("__builtin__", "set")?;
                self.out.push(op::EMPTY_LIST);
                if !items.is_empty() {
                    self.out.push(op::MARK);
                    for x in items {
                        self.value(x, depth + 1)?;
                    }
                    self.out.push(op::APPENDS);
                }
                self.out.extend([op::TUPLE1, op::REDUCE]);
            }
            PyValue::Tensor(t) => self.tensor(t)?,
            PyValue::Object(o) => {
                self.global(o.module, o.name)?;
                self.out.extend([op::EMPTY_TUPLE, op::NEWOBJ, op::EMPTY_DICT]);
                if !o.state.is_empty() {
                    self.out.push(op::MARK);
                    for (k, x) in &o.state {
                        self.string(k)?;
                        self.value(x, depth + 1)?;
                    }
                    self.out.push(op::SETITEMS);
                }
                self.out.push(op::BUILD);
            }
            PyValue::Shared(rc) => {
                let key = MemoKey::Shared(Arc::as_ptr(rc) as usize);
                if !self.get(&key) {
                    self.value(rc.as_ref(), depth + 1)?;
                    self.put(key)?;
                }
            }
        }
        Ok(())
    }
}

/// The legacy typed-storage class torch pickles for a dtype.
fn storage_class(d: DType) -> &'static str {
    d.storage_class()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::pickle::{unpickle, Node, Value};

    fn roundtrip(v: &PyValue<'_>) -> crate::weights::pickle::Pickle {
        let p = pickle(v).unwrap();
        unpickle(&p.bytes).unwrap()
    }

    #[test]
    fn scalars_round_trip_exactly() {
        let ints = [0i64, 1, 255, 256, 65535, 65536, -1, -129, i32::MAX as i64, i32::MIN as i64, 1 << 40, -(1 << 40), i64::MAX, i64::MIN];
        let floats = [0.0, -0.0, 0.1, 1e-300, f64::MAX, 0.937, 1.0 / 3.0, f64::INFINITY];
        let mut items: Vec<PyValue> = vec![PyValue::None, PyValue::Bool(true), PyValue::Bool(false)];
        items.extend(ints.iter().map(|&i| PyValue::Int(i)));
        items.extend(floats.iter().map(|&f| PyValue::Float(f)));
        let p = roundtrip(&PyValue::Tuple(items));
        let got = p.as_sequence(p.root()).unwrap();
        assert_eq!(got[..3], [Value::None, Value::Bool(true), Value::Bool(false)]);
        for (g, &i) in got[3..].iter().zip(&ints) {
            assert_eq!(*g, Value::Int(i));
        }
        for (g, &f) in got[3 + ints.len()..].iter().zip(&floats) {
            match g {
                Value::Float(x) => assert_eq!(x.to_bits(), f.to_bits()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn containers_keep_order_and_strings_are_memoized() {
        let long: Vec<PyValue> = (0..2500).map(PyValue::Int).collect();
        let v = PyValue::Dict(vec![
            (PyValue::str("b"), PyValue::List(long)),
            (PyValue::str("a"), PyValue::Set(vec![PyValue::str("x"), PyValue::str("y")])),
            (PyValue::Int(7), PyValue::Tuple((0..5).map(|_| PyValue::str("same")).collect())),
            (PyValue::str("od"), PyValue::OrderedDict(vec![(PyValue::str("k"), PyValue::List(vec![PyValue::Int(1)]))])),
            (PyValue::str("empty"), PyValue::Set(vec![])),
        ]);
        let bytes = pickle(&v).unwrap().bytes;
        // "same" is written once and fetched four times.
        assert_eq!(bytes.windows(4).filter(|w| w == b"same").count(), 1);
        let p = unpickle(&bytes).unwrap();
        let d = p.as_dict(p.root()).unwrap();
        let keys: Vec<String> =
            d.entries().iter().map(|(k, _)| p.as_str(*k).map(str::to_owned).unwrap_or_else(|| format!("{k:?}"))).collect();
        assert_eq!(keys, ["b", "a", "Int(7)", "od", "empty"]);
        let list = p.as_sequence(d.get_str("b").unwrap()).unwrap();
        assert_eq!(list.len(), 2500);
        assert_eq!(list[2499], Value::Int(2499));
        assert!(matches!(p.node(d.get_str("a").unwrap()), Some(Node::Set(s)) if s.len() == 2));
        let tuple = p.as_sequence(d.entries()[2].1).unwrap();
        assert!(tuple.iter().all(|&x| p.as_str(x) == Some("same")));
        let od = p.as_dict(d.get_str("od").unwrap()).unwrap();
        assert!(p.as_sequence(od.get_str("k").unwrap()).is_some());
        assert!(matches!(p.node(d.get_str("empty").unwrap()), Some(Node::Set(s)) if s.is_empty()));
    }

    #[test]
    fn tensors_modules_and_shared_objects() {
        let silu = Arc::new(PyValue::Object(Box::new(PyObject {
            module: "torch.nn.modules.activation",
            name: "SiLU",
            state: vec![("inplace".into(), PyValue::Bool(false))],
        })));
        let weight = PyTensor {
            dtype: DType::F16,
            shape: vec![2, 3],
            data: TensorData::F32(Cow::Owned(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
            parameter: true,
            requires_grad: false,
        };
        let count = PyTensor::new(DType::I64, vec![], TensorData::I64(Cow::Owned(vec![5])));
        let conv = PyValue::Object(Box::new(PyObject {
            module: "torch.nn.modules.conv",
            name: "Conv2d",
            state: vec![
                ("_parameters".into(), PyValue::Dict(vec![(PyValue::str("weight"), PyValue::Tensor(weight))])),
                ("_buffers".into(), PyValue::Dict(vec![(PyValue::str("n"), PyValue::Tensor(count))])),
                ("a".into(), PyValue::Shared(silu.clone())),
                ("b".into(), PyValue::Shared(silu)),
            ],
        }));
        let pickled = pickle(&conv).unwrap();
        assert_eq!(pickled.storages.len(), 2);
        assert_eq!(pickled.storages[0].storage_bytes().unwrap().len(), 12);
        // SiLU's NEWOBJ appears once.
        assert_eq!(pickled.bytes.windows(4).filter(|w| w == b"SiLU").count(), 1);
        let p = unpickle(&pickled.bytes).unwrap();
        let o = p.as_object(p.root()).unwrap();
        assert_eq!(o.class, "torch.nn.modules.conv.Conv2d");
        let state = p.as_dict(o.state.unwrap()).unwrap();
        assert_eq!(state.get_str("a"), state.get_str("b"));
        let params = p.as_dict(state.get_str("_parameters").unwrap()).unwrap();
        let t = p.as_tensor(params.get_str("weight").unwrap()).unwrap();
        assert!(t.is_parameter && !t.requires_grad);
        assert_eq!((t.size.as_slice(), t.stride.as_slice(), t.offset), ([2u64, 3].as_slice(), [3u64, 1].as_slice(), 0));
        let s = p.storage(t.storage).unwrap();
        assert_eq!((s.dtype, s.key.as_str(), s.numel), (DType::F16, "0", 6));
        let bufs = p.as_dict(state.get_str("_buffers").unwrap()).unwrap();
        let n = p.as_tensor(bufs.get_str("n").unwrap()).unwrap();
        assert!(n.size.is_empty() && !n.is_parameter);
        assert_eq!(p.storage(n.storage).unwrap().dtype, DType::I64);
    }

    #[test]
    fn memo_switches_to_long_opcodes_past_256_entries() {
        let strings: Vec<PyValue> = (0..300).map(|i| PyValue::Str(Cow::Owned(format!("s{i}")))).collect();
        let mut all = strings.clone();
        all.extend(strings);
        let p = roundtrip(&PyValue::List(all));
        let l = p.as_sequence(p.root()).unwrap();
        assert_eq!(p.as_str(l[299]), Some("s299"));
        assert_eq!(p.as_str(l[599]), Some("s299"));
    }

    #[test]
    fn encoding_checks_length_and_type() {
        let bad = PyTensor::new(DType::F32, vec![2, 2], TensorData::F32(Cow::Owned(vec![1.0])));
        assert!(bad.storage_bytes().unwrap_err().contains("4 elements"));
        let bad = PyTensor::new(DType::I64, vec![1], TensorData::F32(Cow::Owned(vec![1.0])));
        assert!(bad.storage_bytes().is_err());
        let half = PyTensor::new(DType::F16, vec![1], TensorData::F32(Cow::Owned(vec![0.1])));
        assert_eq!(half.storage_bytes().unwrap(), f16::from_f32(0.1).to_le_bytes());
    }
}
