//! Hostile checkpoints: code-execution attempts, lying sizes, truncation and random corruption
//! must all end in a clear error, never in a panic, a huge allocation, or executed code.

use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ferroyolo::weights::{Checkpoint, CheckpointError, TensorValues};
use zip::write::SimpleFileOptions;

const SRC: &str = "evil.pt";

fn src() -> &'static Path {
    Path::new(SRC)
}

// ----- a tiny pickle assembler (protocol 2, as torch writes) -----

#[derive(Default)]
struct Pkl(Vec<u8>);

impl Pkl {
    fn new() -> Self {
        Pkl(vec![0x80, 2])
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
        self.op(b'X').raw(&(s.len() as u32).to_le_bytes()).raw(s.as_bytes())
    }
    /// Any non-negative integer, as LONG1 with 8 bytes (two's complement, little-endian).
    fn int(self, v: u64) -> Self {
        let mut b = v.to_le_bytes().to_vec();
        if v >> 63 != 0 {
            b.push(0);
        }
        self.op(0x8a).raw(&[b.len() as u8]).raw(&b)
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
    }
    fn mark(self) -> Self {
        self.op(b'(')
    }
    fn tuple(self) -> Self {
        self.op(b't')
    }
    fn ints(mut self, v: &[u64]) -> Self {
        self = self.mark();
        for &x in v {
            self = self.int(x);
        }
        self.tuple()
    }
    fn empty_dict(self) -> Self {
        self.op(b'}')
    }
    fn setitems(self) -> Self {
        self.op(b'u')
    }
    fn reduce(self) -> Self {
        self.op(b'R')
    }
    /// `_rebuild_tensor_v2(storage(key, HalfStorage, numel), offset, size, stride, False, OrderedDict())`.
    fn tensor(self, key: &str, numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .mark()
            .s("storage")
            .global("torch", "HalfStorage")
            .s(key)
            .s("cpu")
            .int(numel)
            .tuple()
            .op(b'Q')
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .reduce()
            .tuple()
            .reduce()
    }
    fn stop(self) -> Vec<u8> {
        self.op(b'.').0
    }
}

/// `{'model': DetectionModel(_parameters={'w': tensor}, _buffers={}, _modules={}, names={0: 'a'})}`.
fn model_pickle(numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
    model_pickle_with(numel, offset, size, stride, Pkl::default())
}

/// [`model_pickle`] with `extra` (key/value pairs, possibly using the memo) added to the root dict.
fn model_pickle_with(numel: u64, offset: u64, size: &[u64], stride: &[u64], extra: Pkl) -> Vec<u8> {
    Pkl::new()
        .empty_dict()
        .mark()
        .s("model")
        .global("ultralytics.nn.tasks", "DetectionModel")
        .op(b')')
        .op(0x81)
        .empty_dict()
        .mark()
        .s("_parameters")
        .empty_dict()
        .mark()
        .s("w")
        .tensor("0", numel, offset, size, stride)
        .setitems()
        .s("_buffers")
        .empty_dict()
        .s("_modules")
        .empty_dict()
        .s("names")
        .empty_dict()
        .int(0)
        .s("a")
        .op(b's')
        .setitems()
        .op(b'b')
        .raw(&extra.0)
        .setitems()
        .stop()
}

/// A torch-style zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn torch_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pkl).unwrap();
    w.start_file("archive/byteorder", opts).unwrap();
    w.write_all(b"little").unwrap();
    for (key, data) in storages {
        w.start_file(format!("archive/data/{key}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
}

/// Loads without letting a panic escape: a panic fails the test with the input's description.
fn load_no_panic(bytes: &[u8], what: &str) -> Result<Checkpoint, CheckpointError> {
    match catch_unwind(AssertUnwindSafe(|| Checkpoint::from_pt_bytes(bytes, src()))) {
        Ok(r) => r,
        Err(_) => panic!("loader panicked on {what}"),
    }
}

fn load_err(bytes: &[u8], what: &str) -> CheckpointError {
    match load_no_panic(bytes, what) {
        Ok(_) => panic!("{what}: loaded successfully, expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(SRC), "{what}: message does not name the file: {msg}");
            e
        }
    }
}

#[test]
fn well_formed_synthetic_checkpoint_loads() {
    // The baseline the hostile variants below are derived from: it must load.
    let data = f16_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let zip = torch_zip(&model_pickle(6, 0, &[2, 3], &[3, 1]), &[("0", data.clone())]);
    let ckpt = Checkpoint::from_pt_bytes(&zip, src()).unwrap();
    assert_eq!(ckpt.tensors.len(), 1);
    assert_eq!(ckpt.tensors[0].0, "w");
    assert_eq!(ckpt.tensors[0].1.shape, [2, 3]);
    assert_eq!(ckpt.tensors[0].1.values, TensorValues::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert_eq!(ckpt.names, ["a"]);
    // A transposed view is gathered, not rejected.
    let zip = torch_zip(&model_pickle(6, 0, &[3, 2], &[1, 3]), &[("0", data.clone())]);
    let ckpt = Checkpoint::from_pt_bytes(&zip, src()).unwrap();
    assert_eq!(ckpt.tensors[0].1.values, TensorValues::F32(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
    // An offset view of a larger storage.
    let zip = torch_zip(&model_pickle(6, 4, &[2], &[1]), &[("0", data)]);
    let ckpt = Checkpoint::from_pt_bytes(&zip, src()).unwrap();
    assert_eq!(ckpt.tensors[0].1.values, TensorValues::F32(vec![5.0, 6.0]));
}

#[test]
fn forbidden_globals_are_refused_by_name() {
    let cases: [(&[u8], &str); 4] = [
        (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),
        (b"cposix\nsystem\n(S'echo pwned'\ntR.", "posix.system"),
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1;\x85R.", "builtins.eval"),
        (b"\x80\x02csubprocess\nPopen\n)R.", "subprocess.Popen"),
    ];
    for (pkl, global) in cases {
        let err = load_err(&torch_zip(pkl, &[]), global);
        assert!(matches!(err, CheckpointError::ForbiddenGlobal { .. }), "{err:?}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!("{SRC}: forbidden global '{global}' in data.pkl (refusing to execute arbitrary code)")
        );
    }
    // STACK_GLOBAL (protocol 4) is checked the same way.
    let pkl = Pkl::new().s("os").s("system").op(0x93).s("id").op(0x85).reduce().stop();
    let err = load_err(&torch_zip(&pkl, &[]), "STACK_GLOBAL os.system");
    assert!(err.to_string().contains("'os.system'"), "{err}");
}

#[test]
fn payload_prepended_to_a_real_checkpoint_is_refused() {
    let dir = ferroyolo::fixtures_or_skip!();
    let real = std::fs::read(dir.join("weights/yolo26n-rand-nc3.pt")).unwrap();
    let mut zip = zip::ZipArchive::new(Cursor::new(&real)).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        entries.push((name, data));
    }
    // After PROTO: os.system('id'); POP — the rest of the legitimate pickle is untouched.
    let (_, pkl) = entries.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let payload = b"cos\nsystem\nX\x02\x00\x00\x00id\x85R0";
    pkl.splice(2..2, payload.iter().copied());
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in &entries {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    let err = load_err(&bytes, "real checkpoint with payload");
    assert!(err.to_string().contains("forbidden global 'os.system'"), "{err}");
}

#[test]
fn storage_smaller_than_declared_is_refused() {
    // 432 float16 elements declared, 100 bytes present.
    let zip = torch_zip(&model_pickle(432, 0, &[16, 3, 3, 3], &[27, 9, 3, 1]), &[("0", vec![0u8; 100])]);
    let err = load_err(&zip, "short storage");
    assert!(matches!(err, CheckpointError::StorageSize { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{SRC}: storage 'data/0' holds 100 bytes but the pickle declares 432 elements of float16 (864 bytes)")
    );
    // Larger than declared is just as wrong.
    let zip = torch_zip(&model_pickle(2, 0, &[2], &[1]), &[("0", vec![0u8; 6])]);
    assert!(matches!(load_err(&zip, "long storage"), CheckpointError::StorageSize { .. }));
}

#[test]
fn huge_declared_sizes_fail_without_allocating() {
    // 2^60 elements: 2^61 bytes would abort the process if anything tried to allocate it.
    let zip = torch_zip(&model_pickle(1 << 60, 0, &[1 << 60], &[1]), &[("0", vec![0u8; 16])]);
    let err = load_err(&zip, "2^60 numel");
    assert!(err.to_string().contains("declares 1152921504606846976 elements of float16"), "{err}");
    // Near u64::MAX: the byte count overflows 64 bits.
    let zip = torch_zip(&model_pickle(u64::MAX / 2, 0, &[1], &[1]), &[("0", vec![0u8; 2])]);
    assert!(matches!(load_err(&zip, "u64::MAX/2 numel"), CheckpointError::StorageSize { .. }));
    // A stride-0 broadcast of one element to 2^40 x 2^40: in bounds, but far too large.
    let zip = torch_zip(&model_pickle(1, 0, &[1 << 40, 1 << 40], &[0, 0]), &[("0", vec![0u8; 2])]);
    assert!(matches!(load_err(&zip, "broadcast"), CheckpointError::TooLarge { .. }));
    // A shape whose element count overflows 64 bits.
    let zip = torch_zip(&model_pickle(1, 0, &[1 << 40, 1 << 40, 1 << 40], &[0, 0, 0]), &[("0", vec![0u8; 2])]);
    assert!(matches!(load_err(&zip, "overflowing shape"), CheckpointError::TooLarge { .. }));
}

#[test]
fn view_outside_its_storage_is_refused() {
    let data = vec![0u8; 864];
    let zip = torch_zip(&model_pickle(432, 0, &[10, 100], &[100, 1]), &[("0", data.clone())]);
    let err = load_err(&zip, "view too large");
    assert!(matches!(err, CheckpointError::ViewOutOfBounds { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!("{SRC}: tensor view of 1000 elements at offset 0 exceeds its storage of 432")),
        "{err}"
    );
    // In size but shifted past the end by the offset.
    let zip = torch_zip(&model_pickle(432, 1, &[432], &[1]), &[("0", data.clone())]);
    assert!(matches!(load_err(&zip, "offset"), CheckpointError::ViewOutOfBounds { .. }));
    // A stride that walks out of the storage.
    let zip = torch_zip(&model_pickle(432, 0, &[2, 3], &[432, 1]), &[("0", data.clone())]);
    assert!(matches!(load_err(&zip, "stride"), CheckpointError::ViewOutOfBounds { .. }));
    // A huge offset, and an extent whose arithmetic overflows u64.
    let zip = torch_zip(&model_pickle(432, i64::MAX as u64, &[3], &[1]), &[("0", data.clone())]);
    assert!(matches!(load_err(&zip, "huge offset"), CheckpointError::ViewOutOfBounds { .. }));
    let zip = torch_zip(&model_pickle(432, 0, &[1 << 62], &[1 << 3]), &[("0", data.clone())]);
    assert!(matches!(load_err(&zip, "extent overflow"), CheckpointError::ViewOutOfBounds { .. }));
    // Integers beyond 64 bits are refused by the pickle reader itself.
    let zip = torch_zip(&model_pickle(432, u64::MAX - 1, &[3], &[1]), &[("0", data)]);
    let err = load_err(&zip, "offset beyond i64");
    assert!(matches!(err, CheckpointError::Pickle { .. }), "{err:?}");
    assert!(err.to_string().contains("does not fit in 64 bits"), "{err}");
}

/// Memoized `[L, L]` nested 40 deep: 2^40 elements if expanded naively.
fn list_bomb(levels: u8) -> Pkl {
    let mut p = Pkl::default().op(b']').op(b'q').raw(&[0]).op(b'0');
    for i in 1..=levels {
        p = p.mark().op(b'h').raw(&[i - 1]).op(b'h').raw(&[i - 1]).op(b'l').op(b'q').raw(&[i]).op(b'0');
    }
    p.s("bomb").op(b'h').raw(&[levels])
}

/// Sequential modules whose `_modules` hold the previous level twice: 2^levels paths.
fn module_bomb(levels: u8) -> Pkl {
    let module = |p: Pkl, child: Option<u8>| {
        let p = p
            .global("torch.nn.modules.container", "Sequential")
            .op(b')')
            .op(0x81)
            .empty_dict()
            .mark()
            .s("_parameters")
            .empty_dict()
            .s("_buffers")
            .empty_dict()
            .s("_modules")
            .empty_dict();
        let p = match child {
            Some(c) => p.mark().s("a").op(b'h').raw(&[c]).s("b").op(b'h').raw(&[c]).setitems(),
            None => p,
        };
        p.setitems().op(b'b')
    };
    let mut p = module(Pkl::default(), None).op(b'q').raw(&[0]).op(b'0');
    for i in 1..=levels {
        p = module(p, Some(i - 1)).op(b'q').raw(&[i]).op(b'0');
    }
    p
}

#[test]
fn exponential_sharing_is_bounded() {
    let data = f16_bytes(&[1.0, 2.0]);
    let start = std::time::Instant::now();
    // Metadata: a 2^40-element list through shared references.
    let pkl = model_pickle_with(2, 0, &[2], &[1], list_bomb(40));
    let err = load_err(&torch_zip(&pkl, &[("0", data.clone())]), "list bomb");
    assert!(err.to_string().contains("expands to more than"), "{err}");
    // The same sharing is fine while small: 2^4 elements.
    let pkl = model_pickle_with(2, 0, &[2], &[1], list_bomb(4));
    let ckpt = load_no_panic(&torch_zip(&pkl, &[("0", data.clone())]), "small shared list").unwrap();
    assert_eq!(ckpt.metadata["bomb"][1][0][1][0], serde_json::json!([]));

    // Modules: 2^40 paths through a DAG of 41 module objects, as the model itself.
    let pkl = Pkl::new()
        .raw(&module_bomb(40).0)
        .op(b'}')
        .s("model")
        .op(b'h')
        .raw(&[40])
        .op(b's')
        .stop();
    let err = load_err(&torch_zip(&pkl, &[]), "module bomb");
    assert!(err.to_string().contains("more than 65536 modules"), "{err}");
    assert!(start.elapsed().as_secs() < 20, "bounded but slow: {:?}", start.elapsed());
}

#[test]
fn missing_storage_and_missing_pickle() {
    let zip = torch_zip(&model_pickle(6, 0, &[6], &[1]), &[]);
    let err = load_err(&zip, "missing storage");
    assert!(matches!(err, CheckpointError::MissingStorage { .. }), "{err:?}");
    assert!(err.to_string().contains("'data/0'"), "{err}");

    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("readme.txt", SimpleFileOptions::default()).unwrap();
    w.write_all(b"hello").unwrap();
    let zip = w.finish().unwrap().into_inner();
    let err = load_err(&zip, "zip without data.pkl");
    assert!(err.to_string().contains("data.pkl"), "{err}");

    // A data.pkl that is not a checkpoint at all.
    let err = load_err(&torch_zip(b"\x80\x02K\x05.", &[]), "int pickle");
    assert!(err.to_string().contains("neither a checkpoint dict nor a model"), "{err}");
}

#[test]
fn non_zip_garbage_is_a_clear_error() {
    for (bytes, what) in [
        (&b""[..], "empty"),
        (b"\x80\x02}q\x00.", "legacy raw pickle"),
        (b"garbage garbage garbage garbage", "text"),
        (b"PK\x03\x04 but not really a zip", "fake zip magic"),
    ] {
        let err = load_err(bytes, what);
        let msg = err.to_string();
        assert!(msg.contains("zip"), "{what}: {msg}");
    }
}

fn real_fixture(name: &str) -> Option<Vec<u8>> {
    let dir = ferroyolo::testing::fixtures_dir()?;
    Some(std::fs::read(dir.join("weights").join(name)).unwrap())
}

#[test]
fn truncated_archives_are_errors() {
    let Some(real) = real_fixture("yolo26n-rand-nc3.pt") else { return };
    assert!(load_no_panic(&real, "intact").is_ok());
    let n = real.len();
    let cuts = [0, 1, 4, 22, 100, 1000, n / 10, n / 4, n / 3, n / 2, 2 * n / 3, n - 5000, n - 100, n - 22, n - 1];
    for cut in cuts {
        let err = load_err(&real[..cut], &format!("cut at {cut} of {n}"));
        assert!(
            matches!(err, CheckpointError::Zip { .. } | CheckpointError::NotZip { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    // Cut in half: named as a zip problem.
    let err = load_err(&real[..n / 2], "half");
    assert!(err.to_string().contains("truncated or corrupt zip archive"), "{err}");
}

/// SplitMix64: a deterministic PRNG, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips, overwrites, inserts or deletes a few bytes in `region` of `data`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, region: std::ops::Range<usize>) {
    for _ in 0..1 + rng.below(4) {
        let at = region.start + rng.below(region.len().min(data.len().saturating_sub(region.start)));
        if at >= data.len() {
            continue;
        }
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.next() as u8,
            2 => data[at] = [0, 0xff, 0x7f, 0x80, b'(', b'.', b'q', b'h'][rng.below(8)],
            3 => data.insert(at, rng.next() as u8),
            4 => {
                data.remove(at);
            }
            _ => {
                // Copy a short run from elsewhere (duplicates opcodes and memo references).
                let from = rng.below(data.len());
                let len = rng.below(16).min(data.len() - from);
                let run: Vec<u8> = data[from..from + len].to_vec();
                data.splice(at..at, run);
            }
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let Some(real) = real_fixture("yolo26n-rand-nc3.pt") else { return };
    let mut rng = Rng(0x5EED_F00D);
    let n = real.len();

    // 1. Zip-level corruption: anywhere, and concentrated on the headers and central directory.
    let mut errors = 0;
    for i in 0..150 {
        let mut data = real.clone();
        let region = match i % 3 {
            0 => 0..n,
            1 => 0..4096,
            _ => n.saturating_sub(64 * 1024)..n,
        };
        mutate(&mut rng, &mut data, region);
        errors += usize::from(load_no_panic(&data, &format!("zip mutation {i}")).is_err());
    }
    assert!(errors > 50, "only {errors} of 150 corrupted archives were rejected");

    // 2. data.pkl corruption, re-zipped with valid CRCs so the pickle machine sees it.
    let mut zip = zip::ZipArchive::new(Cursor::new(&real)).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        entries.push((name, data));
    }
    let pkl_index = entries.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let pkl = entries[pkl_index].1.clone();
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut outcomes = [0usize; 2];
    for i in 0..300 {
        let mut bad = pkl.clone();
        let len = bad.len();
        mutate(&mut rng, &mut bad, 0..len);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(n + 4096)));
        for (j, (name, data)) in entries.iter().enumerate() {
            w.start_file(name, opts).unwrap();
            w.write_all(if j == pkl_index { &bad } else { data }).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        outcomes[usize::from(load_no_panic(&bytes, &format!("pickle mutation {i}")).is_err())] += 1;
    }
    // Most single-byte changes in a pickle break it; some (in names, floats) do not.
    assert!(outcomes[1] > 100, "outcomes ok/err = {outcomes:?}");
}
