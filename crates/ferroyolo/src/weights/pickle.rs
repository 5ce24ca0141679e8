//! A restricted pickle machine: reads the `data.pkl` of a PyTorch checkpoint without executing
//! anything.
//!
//! Python's pickle format is a small stack-machine program, and its `GLOBAL` + `REDUCE` opcodes
//! can call any importable function (`os.system`, `builtins.eval`, ...). Loading an untrusted
//! `.pt` with Python's `pickle` is therefore arbitrary code execution. This module interprets the
//! opcodes itself and only *recognises* a fixed allow-list of globals (see [`resolve_global`]):
//! the handful of callables that appear in Ultralytics YOLO26 checkpoints, each replaced by a
//! data-only Rust equivalent. Module classes are never instantiated; they become [`Node::Object`]
//! records holding the class name and the state dict that `BUILD` gives them.
//!
//! Objects live in an arena ([`Pickle::node`]); the stack and the memo hold [`Value`]s, which are
//! small copyable scalars or ids into the arena. Pickle builds containers *after* memoizing them
//! (`EMPTY_DICT`, `BINPUT`, ..., `SETITEMS`), so a memo entry and a later `BINGET` must refer to the
//! same object: ids give that sharing for free and, unlike `Rc<RefCell<_>>`, cannot leak on cycles
//! or panic on re-entrant borrows.
//!
//! Every input-derived size is checked: lengths against the remaining input, and the stack, mark
//! stack, memo, arena and copying work against [`Limits`]. No input can make this code panic.

use std::collections::HashMap;

use super::checkpoint::DType;

/// Bounds that keep a hostile pickle from exhausting memory or time.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most values on the stack at once.
    pub max_stack: usize,
    /// Most open `MARK`s at once.
    pub max_marks: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Most objects (strings, containers, tensors, ...) created.
    pub max_nodes: usize,
    /// Most values copied out of existing containers by calls such as `set(list)` or
    /// `torch.Size(tuple)`; without it, one big memoized list passed to many calls would make
    /// memory grow quadratically in the input size.
    pub max_copied: usize,
    /// Most dimensions of a tensor.
    pub max_ndim: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A YOLO26 checkpoint's data.pkl (~180 kB) needs ~45k nodes, ~16k memo entries, a stack
        // of a few hundred. These limits leave two orders of magnitude of headroom while bounding
        // the worst case to a few hundred MB.
        Self {
            max_stack: 1 << 20,
            max_marks: 1 << 16,
            max_memo: 1 << 22,
            max_nodes: 1 << 22,
            max_copied: 1 << 22,
            max_ndim: 64,
        }
    }
}

/// Why a pickle was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// A `GLOBAL`/`STACK_GLOBAL` outside the allow-list.
    #[error("forbidden global '{module}.{name}' (refusing to execute arbitrary code)")]
    ForbiddenGlobal { module: String, name: String },
    /// The input ends inside an opcode or before `STOP`.
    #[error("truncated pickle: {opcode} at byte {pos} needs {needed} bytes, {available} remain")]
    Truncated { opcode: &'static str, pos: usize, needed: u64, available: usize },
    /// An opcode this machine does not implement (or not a pickle opcode at all).
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {pos}")]
    UnsupportedOpcode { opcode: u8, pos: usize },
    /// A resource limit was hit.
    #[error("pickle exceeds the {what} limit of {limit} (at byte {pos})")]
    Limit { what: &'static str, limit: usize, pos: usize },
    /// Well-formed bytes that make no sense (wrong operand types, stack underflow, ...).
    #[error("invalid pickle at byte {pos} ({opcode}): {msg}")]
    Invalid { opcode: &'static str, pos: usize, msg: String },
}

/// Index of an object in [`Pickle`]'s arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(u32);

/// A pickle value: an immediate scalar or a reference to an object in the arena.
///
/// `Copy`, so `BINGET` and `DUP` are O(1) whatever they refer to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(NodeId),
}

/// A Python `dict` (also `OrderedDict`): insertion-ordered, later assignments to an existing key
/// replace its value in place, as in Python.
#[derive(Clone, Debug, Default)]
pub struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

impl Dict {
    /// Entries in insertion order.
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value under a string key (keys longer than 256 bytes are not found by content).
    pub fn get_str(&self, key: &str) -> Option<Value> {
        let i = *self.index.get(&Key::Str(key.to_owned()))?;
        self.entries.get(i).map(|e| e.1)
    }

    fn insert(&mut self, key: Key, k: Value, v: Value) {
        if let Some(&i) = self.index.get(&key) {
            if let Some(e) = self.entries.get_mut(i) {
                e.1 = v;
            }
        } else {
            self.index.insert(key, self.entries.len());
            self.entries.push((k, v));
        }
    }
}

/// Hashable identity of a dict key: by content for scalars, strings and bytes, by object
/// identity for anything else (good enough: checkpoints only use str and int keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
    Bytes(Vec<u8>),
    Node(NodeId),
}

/// A torch storage reference, from `BINPERSID ('storage', <type>, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    pub dtype: DType,
    /// Name of the `data/<key>` archive entry holding the bytes.
    pub key: String,
    /// Device the storage was saved from (`cpu`, `cuda:0`, ...); informational.
    pub location: String,
    /// Number of elements the pickle says the storage holds.
    pub numel: u64,
}

/// A tensor as rebuilt by `torch._utils._rebuild_tensor_v2`: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// The [`Node::Storage`] viewed.
    pub storage: NodeId,
    /// First element of the view, in elements.
    pub offset: u64,
    pub size: Vec<u64>,
    /// Strides in elements.
    pub stride: Vec<u64>,
    pub requires_grad: bool,
    /// Wrapped by `torch._utils._rebuild_parameter` (an `nn.Parameter`).
    pub is_parameter: bool,
}

/// An instance of an allow-listed class (an `nn.Module`), never constructed, only described.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Qualified class name, e.g. `torch.nn.modules.conv.Conv2d`.
    pub class: String,
    /// What `BUILD` gave it (its `__dict__`), if anything.
    pub state: Option<Value>,
}

/// A recognised global: what `GLOBAL module name` resolved to.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    /// `collections.OrderedDict`: builds a [`Dict`].
    OrderedDict,
    /// `builtins.set`: builds a set (from an iterable argument).
    Set,
    /// `builtins.frozenset`.
    FrozenSet,
    /// `torch.Size`: a tuple.
    TorchSize,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor` (older format).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// A typed storage class such as `torch.HalfStorage`; only valid inside `BINPERSID`.
    StorageType(DType),
    /// An allow-listed `nn.Module` subclass (qualified name).
    Class(String),
}

impl Global {
    fn describe(&self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::Set => "builtins.set".into(),
            Global::FrozenSet => "builtins.frozenset".into(),
            Global::TorchSize => "torch.Size".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildTensor => "torch._utils._rebuild_tensor".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::StorageType(d) => format!("torch.{}", d.storage_class()),
            Global::Class(c) => c.clone(),
        }
    }
}

/// An object in the arena.
#[derive(Clone, Debug)]
pub enum Node {
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
    Global(Global),
    Object(Object),
    Storage(Storage),
    Tensor(TensorMeta),
}

/// `nn.Module` classes that may appear in a YOLO26 detection checkpoint, as `(module, name)`.
///
/// These are exactly the classes listed in the reference's description of the released
/// checkpoints. They are never instantiated: the name only labels a state dict.
const MODULE_CLASSES: &[(&str, &str)] = &[
    ("torch.nn.modules.activation", "SiLU"),
    ("torch.nn.modules.batchnorm", "BatchNorm2d"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.linear", "Identity"),
    ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.upsampling", "Upsample"),
    ("ultralytics.nn.modules.block", "Attention"),
    ("ultralytics.nn.modules.block", "Bottleneck"),
    ("ultralytics.nn.modules.block", "C2PSA"),
    ("ultralytics.nn.modules.block", "C3k"),
    ("ultralytics.nn.modules.block", "C3k2"),
    ("ultralytics.nn.modules.block", "PSABlock"),
    ("ultralytics.nn.modules.block", "SPPF"),
    ("ultralytics.nn.modules.conv", "Concat"),
    ("ultralytics.nn.modules.conv", "Conv"),
    ("ultralytics.nn.modules.conv", "DWConv"),
    ("ultralytics.nn.modules.head", "Detect"),
    ("ultralytics.nn.tasks", "DetectionModel"),
];

/// Maps `module.name` to a [`Global`], or refuses it.
///
/// Besides the 27 globals of a released YOLO26 checkpoint this accepts a few equally inert ones:
/// `builtins.set` (the protocol-3+ spelling), `frozenset`, `torch.Size` (the tuple subclass
/// some checkpoints store cached shapes as), the other typed storage classes, and the older
/// `_rebuild_tensor`.
pub fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("__builtin__" | "builtins", "set") => Global::Set,
        ("__builtin__" | "builtins", "frozenset") => Global::FrozenSet,
        ("torch", "Size") => Global::TorchSize,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", storage) if DType::from_storage_class(storage).is_some() => {
            Global::StorageType(DType::from_storage_class(storage).unwrap_or(DType::F32))
        }
        _ if MODULE_CLASSES.contains(&(module, name)) => Global::Class(format!("{module}.{name}")),
        _ => return Err(PickleError::ForbiddenGlobal { module: module.to_owned(), name: name.to_owned() }),
    };
    Ok(g)
}

/// The result of unpickling: the arena and the root value.
///
/// The default is the pickle of `None`.
#[derive(Clone, Debug)]
pub struct Pickle {
    nodes: Vec<Node>,
    root: Value,
}

impl Default for Pickle {
    fn default() -> Self {
        Self { nodes: Vec::new(), root: Value::None }
    }
}

impl Pickle {
    /// The value `STOP` returned.
    pub fn root(&self) -> Value {
        self.root
    }

    /// The object a value refers to (`None` for immediates).
    pub fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(id) => self.get(id),
            _ => None,
        }
    }

    /// The object with this id.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize)
    }

    /// Number of objects in the arena.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every object in the arena, in creation order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The string a value refers to.
    pub fn as_str(&self, v: Value) -> Option<&str> {
        match self.node(v)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The dict a value refers to.
    pub fn as_dict(&self, v: Value) -> Option<&Dict> {
        match self.node(v)? {
            Node::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The object (module instance) a value refers to.
    pub fn as_object(&self, v: Value) -> Option<&Object> {
        match self.node(v)? {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The tensor a value refers to.
    pub fn as_tensor(&self, v: Value) -> Option<&TensorMeta> {
        match self.node(v)? {
            Node::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The storage with this id.
    pub fn storage(&self, id: NodeId) -> Option<&Storage> {
        match self.get(id)? {
            Node::Storage(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of a tuple, list, set or frozenset.
    pub fn as_sequence(&self, v: Value) -> Option<&[Value]> {
        match self.node(v)? {
            Node::Tuple(x) | Node::List(x) | Node::Set(x) | Node::FrozenSet(x) => Some(x),
            _ => None,
        }
    }
}

/// Runs the restricted machine on `data` with the default [`Limits`].
pub fn unpickle(data: &[u8]) -> Result<Pickle, PickleError> {
    unpickle_with_limits(data, &Limits::default())
}

/// Runs the restricted machine on `data`.
pub fn unpickle_with_limits(data: &[u8], limits: &Limits) -> Result<Pickle, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        opcode: "start",
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: Vec::new(),
        copied: 0,
        limits,
    };
    let root = m.run()?;
    Ok(Pickle { nodes: m.nodes, root })
}

/// Pickle opcodes (`pickletools` names).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    // Protocol 2.
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    // Protocol 3.
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    // Protocol 4.
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    // Protocol 5.
    pub const BYTEARRAY8: u8 = 0x96;
}

/// `pickletools` name of an opcode, for error messages.
fn opcode_name(code: u8) -> &'static str {
    match code {
        op::MARK => "MARK",
        op::STOP => "STOP",
        op::POP => "POP",
        op::POP_MARK => "POP_MARK",
        op::DUP => "DUP",
        op::BINFLOAT => "BINFLOAT",
        op::BININT => "BININT",
        op::BININT1 => "BININT1",
        op::BININT2 => "BININT2",
        op::NONE => "NONE",
        op::BINPERSID => "BINPERSID",
        op::REDUCE => "REDUCE",
        op::BINSTRING => "BINSTRING",
        op::SHORT_BINSTRING => "SHORT_BINSTRING",
        op::BINUNICODE => "BINUNICODE",
        op::APPEND => "APPEND",
        op::BUILD => "BUILD",
        op::GLOBAL => "GLOBAL",
        op::DICT => "DICT",
        op::EMPTY_DICT => "EMPTY_DICT",
        op::APPENDS => "APPENDS",
        op::BINGET => "BINGET",
        op::LONG_BINGET => "LONG_BINGET",
        op::LIST => "LIST",
        op::EMPTY_LIST => "EMPTY_LIST",
        op::BINPUT => "BINPUT",
        op::LONG_BINPUT => "LONG_BINPUT",
        op::SETITEM => "SETITEM",
        op::TUPLE => "TUPLE",
        op::EMPTY_TUPLE => "EMPTY_TUPLE",
        op::SETITEMS => "SETITEMS",
        op::PROTO => "PROTO",
        op::NEWOBJ => "NEWOBJ",
        op::TUPLE1 => "TUPLE1",
        op::TUPLE2 => "TUPLE2",
        op::TUPLE3 => "TUPLE3",
        op::NEWTRUE => "NEWTRUE",
        op::NEWFALSE => "NEWFALSE",
        op::LONG1 => "LONG1",
        op::LONG4 => "LONG4",
        op::BINBYTES => "BINBYTES",
        op::SHORT_BINBYTES => "SHORT_BINBYTES",
        op::SHORT_BINUNICODE => "SHORT_BINUNICODE",
        op::BINUNICODE8 => "BINUNICODE8",
        op::BINBYTES8 => "BINBYTES8",
        op::EMPTY_SET => "EMPTY_SET",
        op::ADDITEMS => "ADDITEMS",
        op::FROZENSET => "FROZENSET",
        op::NEWOBJ_EX => "NEWOBJ_EX",
        op::STACK_GLOBAL => "STACK_GLOBAL",
        op::MEMOIZE => "MEMOIZE",
        op::FRAME => "FRAME",
        op::BYTEARRAY8 => "BYTEARRAY8",
        _ => "unknown opcode",
    }
}

/// Longest `GLOBAL` line (module or name) accepted; real ones are under 50 bytes.
const MAX_GLOBAL_LINE: usize = 512;
/// Longest string or bytes dict key compared by content (see [`Machine::key_of`]).
const MAX_CONTENT_KEY: usize = 256;

struct Machine<'a> {
    data: &'a [u8],
    /// Next byte to read.
    pos: usize,
    /// Start of the current opcode and its name, for error messages.
    op_pos: usize,
    opcode: &'static str,
    stack: Vec<Value>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
    /// Values copied so far (see [`Limits::max_copied`]).
    copied: usize,
    limits: &'a Limits,
}

impl<'a> Machine<'a> {
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            self.opcode = "opcode";
            let code = self.read_u8()?;
            self.opcode = opcode_name(code);
            match code {
                op::PROTO => {
                    let proto = self.read_u8()?;
                    if proto > 5 {
                        return Err(self.invalid(format!("unsupported protocol {proto}")));
                    }
                }
                op::FRAME => {
                    // A framing hint for buffered readers; the frame contents follow inline.
                    self.take(8)?;
                }
                op::STOP => return self.pop(),
                op::MARK => {
                    if self.marks.len() >= self.limits.max_marks {
                        return Err(self.limit("mark depth", self.limits.max_marks));
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.peek()?;
                    self.push(v)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::BININT => {
                    let v = i32::from_le_bytes(self.array::<4>()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT1 => {
                    let v = self.read_u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array::<2>()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.read_u8()?);
                    let bytes = self.take(n)?;
                    let v = self.decode_long(bytes)?;
                    self.push(Value::Int(v))?;
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.array::<4>()?);
                    let n = usize::try_from(n).map_err(|_| self.invalid("negative LONG4 length"))?;
                    let bytes = self.take(n)?;
                    let v = self.decode_long(bytes)?;
                    self.push(Value::Int(v))?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.array::<8>()?);
                    self.push(Value::Float(v))?;
                }
                op::SHORT_BINUNICODE => {
                    let n = usize::from(self.read_u8()?);
                    self.push_str(n)?;
                }
                op::BINUNICODE => {
                    let n = u32::from_le_bytes(self.array::<4>()?);
                    self.push_str(self.len_to_usize(n.into())?)?;
                }
                op::BINUNICODE8 => {
                    let n = u64::from_le_bytes(self.array::<8>()?);
                    self.push_str(self.len_to_usize(n)?)?;
                }
                op::SHORT_BINSTRING => {
                    let n = usize::from(self.read_u8()?);
                    self.push_binstring(n)?;
                }
                op::BINSTRING => {
                    let n = i32::from_le_bytes(self.array::<4>()?);
                    let n = usize::try_from(n).map_err(|_| self.invalid("negative BINSTRING length"))?;
                    self.push_binstring(n)?;
                }
                op::SHORT_BINBYTES => {
                    let n = usize::from(self.read_u8()?);
                    self.push_bytes(n)?;
                }
                op::BINBYTES => {
                    let n = u32::from_le_bytes(self.array::<4>()?);
                    self.push_bytes(self.len_to_usize(n.into())?)?;
                }
                op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = u64::from_le_bytes(self.array::<8>()?);
                    self.push_bytes(self.len_to_usize(n)?)?;
                }
                op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    let items = self.pop_n(n)?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::EMPTY_LIST => self.push_node(Node::List(Vec::new()))?,
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items))?;
                }
                op::APPEND => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                op::EMPTY_DICT => self.push_node(Node::Dict(Dict::default()))?,
                op::DICT => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Dict(Dict::default()))?;
                    self.set_items(items)?;
                }
                op::SETITEM => {
                    let items = self.pop_n(2)?;
                    self.set_items(items)?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                op::EMPTY_SET => self.push_node(Node::Set(Vec::new()))?,
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    let target = self.peek()?;
                    match self.node_mut(target) {
                        Some(Node::Set(s)) => s.extend(items),
                        _ => return Err(self.invalid("ADDITEMS target is not a set")),
                    }
                }
                op::FROZENSET => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::FrozenSet(items))?;
                }
                op::BINPUT => {
                    let i = self.read_u8()?;
                    self.memo_put(i.into())?;
                }
                op::LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.array::<4>()?);
                    self.memo_put(i)?;
                }
                op::MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.limit("memo", self.limits.max_memo))?;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.read_u8()?;
                    self.memo_get(i.into())?;
                }
                op::LONG_BINGET => {
                    let i = u32::from_le_bytes(self.array::<4>()?);
                    self.memo_get(i)?;
                }
                op::GLOBAL => {
                    let module = self.read_line()?;
                    let name = self.read_line()?;
                    let g = resolve_global(&module, &name)?;
                    self.push_node(Node::Global(g))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.invalid("STACK_GLOBAL needs two strings"));
                    };
                    let g = resolve_global(module, name)?;
                    self.push_node(Node::Global(g))?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v)?;
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push(v)?;
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match self.node(kwargs) {
                        Some(Node::Dict(d)) if d.is_empty() => {}
                        _ => return Err(self.invalid("NEWOBJ_EX with keyword arguments")),
                    }
                    let v = self.new_object(cls, args)?;
                    self.push(v)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.peek()?;
                    self.build(target, state)?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                other => return Err(PickleError::UnsupportedOpcode { opcode: other, pos: self.op_pos }),
            }
        }
    }

    // ----- errors -----

    fn invalid(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Invalid { opcode: self.opcode, pos: self.op_pos, msg: msg.into() }
    }

    fn limit(&self, what: &'static str, limit: usize) -> PickleError {
        PickleError::Limit { what, limit, pos: self.op_pos }
    }

    // ----- input -----

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, checked against the remaining input before anything is allocated.
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len());
        match end.and_then(|e| data.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(PickleError::Truncated {
                opcode: self.opcode,
                pos: self.op_pos,
                needed: n as u64,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    /// A declared length that must fit in the remaining input.
    fn len_to_usize(&self, n: u64) -> Result<usize, PickleError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(PickleError::Truncated {
                opcode: self.opcode,
                pos: self.op_pos,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    /// A `\n`-terminated line (for `GLOBAL`).
    fn read_line(&mut self) -> Result<String, PickleError> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let window = &rest[..rest.len().min(MAX_GLOBAL_LINE + 1)];
        let Some(n) = window.iter().position(|&b| b == b'\n') else {
            return if rest.len() <= MAX_GLOBAL_LINE {
                Err(PickleError::Truncated {
                    opcode: self.opcode,
                    pos: self.op_pos,
                    needed: rest.len() as u64 + 1,
                    available: rest.len(),
                })
            } else {
                Err(self.invalid(format!("GLOBAL line longer than {MAX_GLOBAL_LINE} bytes")))
            };
        };
        let line = self.take(n)?;
        self.take(1)?;
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| self.invalid("GLOBAL line is not UTF-8"))
    }

    /// Little-endian two's-complement integer of `LONG1`/`LONG4`, which must fit in an `i64`.
    fn decode_long(&self, bytes: &[u8]) -> Result<i64, PickleError> {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0x00 };
        let mut buf = [fill; 8];
        for (i, &b) in bytes.iter().enumerate() {
            match buf.get_mut(i) {
                Some(slot) => *slot = b,
                // Bytes beyond the eighth must be pure sign extension.
                None if b == fill => {}
                None => return Err(self.invalid("integer does not fit in 64 bits")),
            }
        }
        let v = i64::from_le_bytes(buf);
        // The sign must survive truncation to 8 bytes.
        if bytes.len() > 8 && (v < 0) != negative {
            return Err(self.invalid("integer does not fit in 64 bits"));
        }
        Ok(v)
    }

    // ----- stack, memo, arena -----

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(self.limit("stack depth", self.limits.max_stack));
        }
        self.stack.push(v);
        Ok(())
    }

    /// Lowest stack index above the innermost mark: values below it belong to an enclosing frame.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.invalid("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.invalid("stack underflow"))
    }

    fn peek(&self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.invalid("stack underflow"));
        }
        self.stack.last().copied().ok_or_else(|| self.invalid("stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, PickleError> {
        let start = self.stack.len().checked_sub(n).filter(|&s| s >= self.floor());
        match start {
            Some(s) => Ok(self.stack.split_off(s)),
            None => Err(self.invalid("stack underflow")),
        }
    }

    /// Everything above the innermost mark, and the mark itself.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.invalid("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.invalid("MARK above the stack top"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn new_node(&mut self, node: Node) -> Result<NodeId, PickleError> {
        if self.nodes.len() >= self.limits.max_nodes {
            return Err(self.limit("object count", self.limits.max_nodes));
        }
        let id = u32::try_from(self.nodes.len()).map_err(|_| self.limit("object count", self.limits.max_nodes))?;
        self.nodes.push(node);
        Ok(NodeId(id))
    }

    fn push_node(&mut self, node: Node) -> Result<(), PickleError> {
        let id = self.new_node(node)?;
        self.push(Value::Ref(id))
    }

    fn push_str(&mut self, n: usize) -> Result<(), PickleError> {
        // Python writes lone surrogates with "surrogatepass"; replace rather than refuse them.
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.push_node(Node::Str(s))
    }

    fn push_bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?.to_vec();
        self.push_node(Node::Bytes(b))
    }

    /// Python 2 `str`: text when it is valid UTF-8 (it always is in practice), bytes otherwise.
    fn push_binstring(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => self.push_node(Node::Str(s.to_owned())),
            Err(_) => self.push_node(Node::Bytes(b.to_vec())),
        }
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        let v = self.peek()?;
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&i) {
            return Err(self.limit("memo size", self.limits.max_memo));
        }
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Result<(), PickleError> {
        let v = *self.memo.get(&i).ok_or_else(|| self.invalid(format!("memo key {i} was never stored")))?;
        self.push(v)
    }

    fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Ref(id) => self.nodes.get(id.0 as usize),
            _ => None,
        }
    }

    fn node_mut(&mut self, v: Value) -> Option<&mut Node> {
        match v {
            Value::Ref(id) => self.nodes.get_mut(id.0 as usize),
            _ => None,
        }
    }

    fn str_of(&self, v: Value) -> Option<&str> {
        match self.node(v)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of a tuple/list/set argument, copied (counted against `max_copied`).
    fn copy_sequence(&mut self, v: Value) -> Result<Vec<Value>, PickleError> {
        let items = match self.node(v) {
            Some(Node::Tuple(x) | Node::List(x) | Node::Set(x) | Node::FrozenSet(x)) => x.clone(),
            _ => return Err(self.invalid("expected a tuple, list or set")),
        };
        self.copied = self.copied.saturating_add(items.len());
        if self.copied > self.limits.max_copied {
            return Err(self.limit("copied values", self.limits.max_copied));
        }
        Ok(items)
    }

    fn key_of(&self, v: Value) -> Key {
        match v {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Float(f) => Key::Float(f.to_bits()),
            // Long keys go by identity: hashing and copying them on every SETITEM would let a
            // pickle that reuses one huge string as a key cost time quadratic in its size.
            Value::Ref(id) => match self.nodes.get(id.0 as usize) {
                Some(Node::Str(s)) if s.len() <= MAX_CONTENT_KEY => Key::Str(s.clone()),
                Some(Node::Bytes(b)) if b.len() <= MAX_CONTENT_KEY => Key::Bytes(b.clone()),
                _ => Key::Node(id),
            },
        }
    }

    // ----- container mutation -----

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let target = self.peek()?;
        match self.node_mut(target) {
            Some(Node::List(l)) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.invalid("APPEND target is not a list")),
        }
    }

    /// Applies alternating key/value items to the dict on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.invalid("odd number of items for a dict"));
        }
        let target = self.peek()?;
        let keyed: Vec<(Key, Value, Value)> =
            items.chunks_exact(2).map(|kv| (self.key_of(kv[0]), kv[0], kv[1])).collect();
        match self.node_mut(target) {
            Some(Node::Dict(d)) => {
                for (key, k, v) in keyed {
                    d.insert(key, k, v);
                }
                Ok(())
            }
            _ => Err(self.invalid("SETITEM target is not a dict")),
        }
    }

    // ----- calls -----

    fn global_of(&self, v: Value) -> Result<Global, PickleError> {
        match self.node(v) {
            Some(Node::Global(g)) => Ok(g.clone()),
            _ => Err(self.invalid("callable is not an allow-listed global")),
        }
    }

    /// `REDUCE`: `callable(*args)` for the allow-listed callables, computed in Rust.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let g = self.global_of(callable)?;
        // Every supported call takes at most 7 arguments; checking before copying keeps a huge
        // memoized tuple passed over and over from costing its size each time.
        let args = match self.node(args) {
            Some(Node::Tuple(a)) if a.len() <= 7 => a.clone(),
            Some(Node::Tuple(a)) => {
                return Err(self.invalid(format!("unsupported call {}(<{} arguments>)", g.describe(), a.len())))
            }
            _ => return Err(self.invalid("REDUCE arguments are not a tuple")),
        };
        let node = match (&g, args.as_slice()) {
            (Global::OrderedDict, []) => Node::Dict(Dict::default()),
            (Global::OrderedDict, [pairs]) => {
                let pairs = self.copy_sequence(*pairs)?;
                let mut items = Vec::with_capacity(pairs.len().saturating_mul(2));
                for p in pairs {
                    match self.node(p) {
                        Some(Node::Tuple(kv) | Node::List(kv)) if kv.len() == 2 => items.extend_from_slice(kv),
                        _ => return Err(self.invalid("OrderedDict items must be pairs")),
                    }
                }
                let id = self.new_node(Node::Dict(Dict::default()))?;
                self.push(Value::Ref(id))?;
                self.set_items(items)?;
                return self.pop();
            }
            (Global::Set, []) => Node::Set(Vec::new()),
            (Global::Set, [items]) => Node::Set(self.copy_sequence(*items)?),
            (Global::FrozenSet, []) => Node::FrozenSet(Vec::new()),
            (Global::FrozenSet, [items]) => Node::FrozenSet(self.copy_sequence(*items)?),
            (Global::TorchSize, [dims]) => Node::Tuple(self.copy_sequence(*dims)?),
            (Global::RebuildTensorV2, [storage, offset, size, stride, requires_grad, _hooks, ..]) if args.len() <= 7 => {
                Node::Tensor(self.rebuild_tensor(*storage, *offset, *size, *stride, *requires_grad)?)
            }
            (Global::RebuildTensor, [storage, offset, size, stride]) => {
                Node::Tensor(self.rebuild_tensor(*storage, *offset, *size, *stride, Value::Bool(false))?)
            }
            (Global::RebuildParameter, [tensor, requires_grad, _hooks]) => {
                let mut t = match self.node(*tensor) {
                    Some(Node::Tensor(t)) => t.clone(),
                    _ => return Err(self.invalid("_rebuild_parameter of a non-tensor")),
                };
                t.is_parameter = true;
                t.requires_grad = self.truthy_bool(*requires_grad)?;
                Node::Tensor(t)
            }
            (Global::Class(class), []) => Node::Object(Object { class: class.clone(), state: None }),
            _ => {
                return Err(self.invalid(format!(
                    "unsupported call {}(<{} arguments>)",
                    g.describe(),
                    args.len()
                )))
            }
        };
        Ok(Value::Ref(self.new_node(node)?))
    }

    /// `NEWOBJ`: `cls.__new__(cls, *args)`; only module classes and `OrderedDict`.
    fn new_object(&mut self, cls: Value, args: Value) -> Result<Value, PickleError> {
        let g = self.global_of(cls)?;
        match self.node(args) {
            Some(Node::Tuple(a)) if a.is_empty() => {}
            _ => return Err(self.invalid(format!("{}.__new__ with arguments", g.describe()))),
        }
        let node = match g {
            Global::Class(class) => Node::Object(Object { class, state: None }),
            Global::OrderedDict => Node::Dict(Dict::default()),
            Global::Set => Node::Set(Vec::new()),
            other => return Err(self.invalid(format!("cannot instantiate {}", other.describe()))),
        };
        Ok(Value::Ref(self.new_node(node)?))
    }

    /// `BUILD`: sets an object's `__dict__`.
    fn build(&mut self, target: Value, state: Value) -> Result<(), PickleError> {
        // `(dict_state, slot_state)` pairs come from classes with `__slots__`; keep the dict.
        let state = match self.node(state) {
            Some(Node::Tuple(t)) if t.len() == 2 => t.first().copied().unwrap_or(Value::None),
            _ => state,
        };
        match self.node_mut(target) {
            Some(Node::Object(o)) => {
                o.state = Some(state);
                Ok(())
            }
            Some(Node::Dict(_)) if state == Value::None => Ok(()),
            _ => Err(self.invalid("BUILD target is not an object")),
        }
    }

    fn truthy_bool(&self, v: Value) -> Result<bool, PickleError> {
        match v {
            Value::Bool(b) => Ok(b),
            Value::Int(i) => Ok(i != 0),
            _ => Err(self.invalid("expected a bool")),
        }
    }

    fn non_negative(&self, v: Value, what: &str) -> Result<u64, PickleError> {
        match v {
            Value::Int(i) => u64::try_from(i).map_err(|_| self.invalid(format!("negative {what}"))),
            _ => Err(self.invalid(format!("{what} is not an integer"))),
        }
    }

    fn int_tuple(&mut self, v: Value, what: &str) -> Result<Vec<u64>, PickleError> {
        let len = match self.node(v) {
            Some(Node::Tuple(x) | Node::List(x)) => x.len(),
            _ => return Err(self.invalid(format!("tensor {what} is not a tuple"))),
        };
        if len > self.limits.max_ndim {
            return Err(self.invalid(format!("tensor with {len} dimensions (limit {})", self.limits.max_ndim)));
        }
        let items = self.copy_sequence(v)?;
        items.into_iter().map(|x| self.non_negative(x, what)).collect()
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`: records the
    /// view; its bounds are checked against the storage when the data is read.
    fn rebuild_tensor(
        &mut self,
        storage: Value,
        offset: Value,
        size: Value,
        stride: Value,
        requires_grad: Value,
    ) -> Result<TensorMeta, PickleError> {
        let storage = match (storage, self.node(storage)) {
            (Value::Ref(id), Some(Node::Storage(_))) => id,
            _ => return Err(self.invalid("tensor storage is not a persistent storage reference")),
        };
        let offset = self.non_negative(offset, "storage offset")?;
        let size = self.int_tuple(size, "size")?;
        let stride = self.int_tuple(stride, "stride")?;
        if size.len() != stride.len() {
            return Err(self.invalid(format!("tensor size has {} dims but stride {}", size.len(), stride.len())));
        }
        let requires_grad = self.truthy_bool(requires_grad)?;
        Ok(TensorMeta { storage, offset, size, stride, requires_grad, is_parameter: false })
    }

    /// `BINPERSID`: torch's `('storage', StorageType, key, location, numel)` references.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, PickleError> {
        let items = match self.node(pid) {
            Some(Node::Tuple(t)) if t.len() == 5 => t.clone(),
            Some(Node::Tuple(t)) => {
                return Err(self.invalid(format!("persistent id has {} fields, expected 5", t.len())))
            }
            _ => return Err(self.invalid("persistent id is not a tuple")),
        };
        let [tag, ty, key, location, numel] = items.as_slice() else {
            return Err(self.invalid(format!("persistent id has {} fields, expected 5", items.len())));
        };
        if self.str_of(*tag) != Some("storage") {
            return Err(self.invalid("persistent id is not a 'storage' reference"));
        }
        let dtype = match self.node(*ty) {
            Some(Node::Global(Global::StorageType(d))) => *d,
            _ => return Err(self.invalid("persistent storage type is not a torch storage class")),
        };
        let key = self.str_of(*key).ok_or_else(|| self.invalid("storage key is not a string"))?.to_owned();
        let location = self.str_of(*location).ok_or_else(|| self.invalid("storage location is not a string"))?.to_owned();
        let numel = self.non_negative(*numel, "storage size")?;
        let id = self.new_node(Node::Storage(Storage { dtype, key, location, numel }))?;
        Ok(Value::Ref(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny pickle assembler for the tests.
    struct P(Vec<u8>);

    impl P {
        fn new() -> Self {
            P(vec![op::PROTO, 2])
        }
        fn op(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(self, s: &str) -> Self {
            let n = (s.len() as u32).to_le_bytes();
            self.op(op::BINUNICODE).raw(&n).raw(s.as_bytes())
        }
        fn i(self, v: u8) -> Self {
            self.op(op::BININT1).raw(&[v])
        }
        fn global(self, m: &str, n: &str) -> Self {
            self.op(op::GLOBAL).raw(format!("{m}\n{n}\n").as_bytes())
        }
        fn put(self, i: u8) -> Self {
            self.op(op::BINPUT).raw(&[i])
        }
        fn get(self, i: u8) -> Self {
            self.op(op::BINGET).raw(&[i])
        }
        fn stop(self) -> Vec<u8> {
            self.op(op::STOP).0
        }
    }

    fn ints(p: &Pickle, v: Value) -> Vec<i64> {
        p.as_sequence(v)
            .unwrap()
            .iter()
            .map(|x| match x {
                Value::Int(i) => *i,
                other => panic!("not an int: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn scalars() {
        let data = P::new()
            .op(op::MARK)
            .op(op::NONE)
            .op(op::NEWTRUE)
            .op(op::NEWFALSE)
            .op(op::BININT)
            .raw(&(-5i32).to_le_bytes())
            .i(200)
            .op(op::BININT2)
            .raw(&60000u16.to_le_bytes())
            .op(op::LONG1)
            .raw(&[3, 0x00, 0x80, 0x00]) // 32768 (a third byte keeps it positive)
            .op(op::LONG1)
            .raw(&[2, 0x00, 0x80]) // -32768
            .op(op::LONG1)
            .raw(&[1, 0xff]) // -1
            .op(op::LONG1)
            .raw(&[0])
            .op(op::LONG4)
            .raw(&9i32.to_le_bytes())
            .raw(&[1, 0, 0, 0, 0, 0, 0, 0, 0]) // 1, sign-extended to 9 bytes
            .op(op::BINFLOAT)
            .raw(&1.5f64.to_be_bytes())
            .op(op::TUPLE)
            .stop();
        let p = unpickle(&data).unwrap();
        let items = p.as_sequence(p.root()).unwrap();
        assert_eq!(
            items,
            &[
                Value::None,
                Value::Bool(true),
                Value::Bool(false),
                Value::Int(-5),
                Value::Int(200),
                Value::Int(60000),
                Value::Int(32768),
                Value::Int(-32768),
                Value::Int(-1),
                Value::Int(0),
                Value::Int(1),
                Value::Float(1.5)
            ]
        );
    }

    #[test]
    fn long_too_big_is_an_error() {
        let data = P::new().op(op::LONG1).raw(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 1]).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Invalid { .. })));
        // A LONG4 length beyond the input is refused before reading.
        let data = P::new().op(op::LONG4).raw(&i32::MAX.to_le_bytes()).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Truncated { .. })));
    }

    #[test]
    fn strings_and_bytes() {
        let data = P::new()
            .op(op::MARK)
            .s("héllo")
            .op(op::SHORT_BINUNICODE)
            .raw(&[2])
            .raw(b"ab")
            .op(op::BINUNICODE8)
            .raw(&1u64.to_le_bytes())
            .raw(b"c")
            .op(op::SHORT_BINSTRING)
            .raw(&[1])
            .raw(b"d")
            .op(op::BINSTRING)
            .raw(&1i32.to_le_bytes())
            .raw(b"e")
            .op(op::SHORT_BINBYTES)
            .raw(&[2, 1, 2])
            .op(op::BINBYTES)
            .raw(&1u32.to_le_bytes())
            .raw(&[9])
            .op(op::LIST)
            .stop();
        let p = unpickle(&data).unwrap();
        let items = p.as_sequence(p.root()).unwrap();
        let strs: Vec<_> = items.iter().take(5).map(|v| p.as_str(*v).unwrap()).collect();
        assert_eq!(strs, ["héllo", "ab", "c", "d", "e"]);
        assert!(matches!(p.node(items[5]), Some(Node::Bytes(b)) if b == &[1, 2]));
        assert!(matches!(p.node(items[6]), Some(Node::Bytes(b)) if b == &[9]));
    }

    #[test]
    fn string_length_checked_against_input() {
        let data = P::new().op(op::BINUNICODE).raw(&u32::MAX.to_le_bytes()).raw(b"abc").stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Truncated { .. })));
        let data = P::new().op(op::BINBYTES8).raw(&u64::MAX.to_le_bytes()).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Truncated { .. })));
    }

    #[test]
    fn tuples_lists_sets() {
        let data = P::new()
            .op(op::MARK)
            .op(op::EMPTY_TUPLE)
            .i(1)
            .op(op::TUPLE1)
            .i(1)
            .i(2)
            .op(op::TUPLE2)
            .i(1)
            .i(2)
            .i(3)
            .op(op::TUPLE3)
            .op(op::EMPTY_LIST)
            .i(7)
            .op(op::APPEND)
            .op(op::MARK)
            .i(8)
            .i(9)
            .op(op::APPENDS)
            .op(op::EMPTY_SET)
            .op(op::MARK)
            .i(4)
            .op(op::ADDITEMS)
            .op(op::MARK)
            .i(5)
            .op(op::FROZENSET)
            .op(op::TUPLE)
            .stop();
        let p = unpickle(&data).unwrap();
        let items = p.as_sequence(p.root()).unwrap().to_vec();
        assert_eq!(ints(&p, items[0]), Vec::<i64>::new());
        assert_eq!(ints(&p, items[1]), [1]);
        assert_eq!(ints(&p, items[2]), [1, 2]);
        assert_eq!(ints(&p, items[3]), [1, 2, 3]);
        assert!(matches!(p.node(items[4]), Some(Node::List(_))));
        assert_eq!(ints(&p, items[4]), [7, 8, 9]);
        assert!(matches!(p.node(items[5]), Some(Node::Set(_))));
        assert_eq!(ints(&p, items[5]), [4]);
        assert!(matches!(p.node(items[6]), Some(Node::FrozenSet(_))));
    }

    #[test]
    fn memo_shares_containers_mutated_after_memoization() {
        // d = {}; memo[0] = d; l = [d]; d['a'] = 1 (after l was built); root = (l, memo[0])
        let data = P::new()
            .op(op::EMPTY_DICT)
            .put(0)
            .op(op::POP)
            .op(op::EMPTY_LIST)
            .get(0)
            .op(op::APPEND)
            .put(1)
            .op(op::POP)
            .get(0)
            .s("a")
            .i(1)
            .op(op::SETITEM)
            .op(op::POP)
            .get(1)
            .get(0)
            .op(op::TUPLE2)
            .stop();
        let p = unpickle(&data).unwrap();
        let root = p.as_sequence(p.root()).unwrap();
        let list = p.as_sequence(root[0]).unwrap();
        // The dict inside the list and the one from the memo are the same object...
        assert_eq!(list[0], root[1]);
        // ...and it holds the item set after the list was built.
        assert_eq!(p.as_dict(list[0]).unwrap().get_str("a"), Some(Value::Int(1)));
    }

    #[test]
    fn memoize_and_long_binput() {
        let data = P::new()
            .s("x")
            .op(op::MEMOIZE)
            .op(op::POP)
            .i(3)
            .op(op::LONG_BINPUT)
            .raw(&70000u32.to_le_bytes())
            .op(op::POP)
            .op(op::BINGET)
            .raw(&[0])
            .op(op::LONG_BINGET)
            .raw(&70000u32.to_le_bytes())
            .op(op::TUPLE2)
            .stop();
        let p = unpickle(&data).unwrap();
        let t = p.as_sequence(p.root()).unwrap();
        assert_eq!(p.as_str(t[0]), Some("x"));
        assert_eq!(t[1], Value::Int(3));
    }

    #[test]
    fn dicts_keep_order_and_replace_in_place() {
        let data = P::new()
            .op(op::MARK)
            .s("b")
            .i(1)
            .s("a")
            .i(2)
            .op(op::DICT)
            .op(op::MARK)
            .s("b")
            .i(3)
            .i(0)
            .s("zero")
            .op(op::SETITEMS)
            .stop();
        let p = unpickle(&data).unwrap();
        let d = p.as_dict(p.root()).unwrap();
        let keys: Vec<String> = d
            .entries()
            .iter()
            .map(|(k, _)| p.as_str(*k).map(str::to_owned).unwrap_or_else(|| format!("{k:?}")))
            .collect();
        assert_eq!(keys, ["b", "a", "Int(0)"]);
        assert_eq!(d.get_str("b"), Some(Value::Int(3)));
    }

    #[test]
    fn forbidden_globals_are_refused_by_name() {
        for (m, n) in [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("__builtin__", "getattr")] {
            let data = P::new().global(m, n).s("echo pwned").op(op::TUPLE1).op(op::REDUCE).stop();
            let err = unpickle(&data).unwrap_err();
            assert_eq!(err, PickleError::ForbiddenGlobal { module: m.into(), name: n.into() });
            assert!(err.to_string().contains(&format!("'{m}.{n}'")), "{err}");
        }
        // STACK_GLOBAL goes through the same allow-list.
        let data = P::new().s("subprocess").s("Popen").op(op::STACK_GLOBAL).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::ForbiddenGlobal { .. })));
    }

    #[test]
    fn allowed_callables_run_in_rust() {
        let data = P::new()
            .op(op::MARK)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .global("__builtin__", "set")
            .op(op::EMPTY_LIST)
            .op(op::MARK)
            .s("x")
            .s("y")
            .op(op::APPENDS)
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .global("torch", "Size")
            .i(1)
            .i(64)
            .op(op::TUPLE2)
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .op(op::TUPLE)
            .stop();
        let p = unpickle(&data).unwrap();
        let t = p.as_sequence(p.root()).unwrap();
        assert!(p.as_dict(t[0]).unwrap().is_empty());
        assert!(matches!(p.node(t[1]), Some(Node::Set(s)) if s.len() == 2));
        assert_eq!(ints(&p, t[2]), [1, 64]);
    }

    #[test]
    fn tensor_rebuild_records_the_view() {
        // _rebuild_parameter(_rebuild_tensor_v2(storage, 0, (2, 3), (3, 1), False, OrderedDict()), True, {})
        // with storage = persistent ('storage', torch.HalfStorage, '0', 'cpu', 6), as torch writes it.
        let mut d = P::new()
            .global("torch._utils", "_rebuild_parameter")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(op::MARK)
            .op(op::MARK)
            .s("storage")
            .global("torch", "HalfStorage")
            .s("0")
            .s("cpu")
            .i(6)
            .op(op::TUPLE)
            .op(op::BINPERSID)
            .i(0)
            .i(2)
            .i(3)
            .op(op::TUPLE2)
            .i(3)
            .i(1)
            .op(op::TUPLE2)
            .op(op::NEWFALSE)
            .global("collections", "OrderedDict")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::TUPLE)
            .op(op::REDUCE)
            .op(op::NEWTRUE)
            .op(op::EMPTY_DICT)
            .op(op::TUPLE3)
            .op(op::REDUCE)
            .stop();
        let p = unpickle(&d).unwrap();
        let t = p.as_tensor(p.root()).unwrap();
        assert_eq!(t.size, [2, 3]);
        assert_eq!(t.stride, [3, 1]);
        assert_eq!(t.offset, 0);
        assert!(t.is_parameter && t.requires_grad);
        let s = p.storage(t.storage).unwrap();
        assert_eq!((s.dtype, s.key.as_str(), s.location.as_str(), s.numel), (DType::F16, "0", "cpu", 6));

        // A negative dimension is rejected.
        let pos = d.windows(2).position(|w| w == [op::BININT1, 2]).unwrap();
        d.splice(pos..pos + 2, [op::BININT].into_iter().chain((-2i32).to_le_bytes()));
        assert!(matches!(unpickle(&d), Err(PickleError::Invalid { .. })));
    }

    #[test]
    fn modules_become_objects_with_state() {
        let data = P::new()
            .global("torch.nn.modules.conv", "Conv2d")
            .op(op::EMPTY_TUPLE)
            .op(op::NEWOBJ)
            .op(op::EMPTY_DICT)
            .s("groups")
            .i(4)
            .op(op::SETITEM)
            .op(op::BUILD)
            .stop();
        let p = unpickle(&data).unwrap();
        let o = p.as_object(p.root()).unwrap();
        assert_eq!(o.class, "torch.nn.modules.conv.Conv2d");
        let state = p.as_dict(o.state.unwrap()).unwrap();
        assert_eq!(state.get_str("groups"), Some(Value::Int(4)));
        // Arguments to a module's __new__ are refused (nothing is ever constructed from data).
        let data = P::new().global("torch.nn.modules.conv", "Conv2d").i(1).op(op::TUPLE1).op(op::NEWOBJ).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Invalid { .. })));
        // A storage type is not callable.
        let data = P::new().global("torch", "FloatStorage").op(op::EMPTY_TUPLE).op(op::REDUCE).stop();
        assert!(matches!(unpickle(&data), Err(PickleError::Invalid { .. })));
    }

    #[test]
    fn binpersid_only_for_storage_tuples() {
        let data = P::new().s("storage").op(op::BINPERSID).stop();
        assert!(unpickle(&data).is_err());
        let data = P::new()
            .op(op::MARK)
            .s("storage")
            .s("not a type")
            .s("0")
            .s("cpu")
            .i(1)
            .op(op::TUPLE)
            .op(op::BINPERSID)
            .stop();
        assert!(unpickle(&data).is_err());
    }

    #[test]
    fn stack_underflow_and_marks() {
        for data in [
            P::new().stop(),
            P::new().op(op::APPEND).stop(),
            P::new().i(1).op(op::MARK).op(op::POP).stop(),
            P::new().op(op::TUPLE).stop(),
            P::new().i(1).op(op::SETITEM).stop(),
            P::new().i(1).op(op::MARK).op(op::TUPLE3).stop(),
        ] {
            assert!(matches!(unpickle(&data), Err(PickleError::Invalid { .. })), "{data:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits { max_stack: 4, ..Limits::default() };
        let data = P::new().i(1).i(1).i(1).i(1).i(1).stop();
        assert!(matches!(unpickle_with_limits(&data, &limits), Err(PickleError::Limit { .. })));
        let limits = Limits { max_memo: 1, ..Limits::default() };
        let data = P::new().i(1).put(0).put(0).put(1).stop();
        assert!(matches!(unpickle_with_limits(&data, &limits), Err(PickleError::Limit { .. })));
        let limits = Limits { max_nodes: 2, ..Limits::default() };
        let data = P::new().op(op::EMPTY_LIST).op(op::EMPTY_LIST).op(op::EMPTY_LIST).stop();
        assert!(matches!(unpickle_with_limits(&data, &limits), Err(PickleError::Limit { .. })));
        // Copying one big list over and over is bounded.
        let limits = Limits { max_copied: 10, ..Limits::default() };
        let mut p = P::new().op(op::EMPTY_LIST).op(op::MARK);
        for _ in 0..6 {
            p = p.i(1);
        }
        p = p.op(op::APPENDS).put(0).op(op::POP);
        for _ in 0..3 {
            p = p.global("__builtin__", "set").get(0).op(op::TUPLE1).op(op::REDUCE).op(op::POP);
        }
        let data = p.op(op::NONE).stop();
        assert!(matches!(unpickle_with_limits(&data, &limits), Err(PickleError::Limit { .. })));
    }

    #[test]
    fn errors_on_truncation_and_garbage() {
        let data = P::new().s("abc").op(op::TUPLE1).stop();
        for cut in 0..data.len() {
            assert!(unpickle(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(unpickle(&data).is_ok());
        assert!(matches!(unpickle(b"\x80\x02\xff."), Err(PickleError::UnsupportedOpcode { opcode: 0xff, .. })));
        assert!(matches!(unpickle(b"\x80\x09N."), Err(PickleError::Invalid { .. })));
        // A GLOBAL line without its newline.
        assert!(unpickle(b"\x80\x02cposix").is_err());
    }

    #[test]
    fn self_referencing_list_is_fine() {
        // l = []; l.append(l)
        let data = P::new().op(op::EMPTY_LIST).put(0).get(0).op(op::APPEND).stop();
        let p = unpickle(&data).unwrap();
        let l = p.as_sequence(p.root()).unwrap();
        assert_eq!(l, &[p.root()]);
    }
}
