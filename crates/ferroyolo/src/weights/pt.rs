//! The torch zip container (`torch.save` since PyTorch 1.6).
//!
//! Layout: every entry sits under one root folder whose name is arbitrary (torch uses the file
//! stem, or `archive`): `<root>/data.pkl` is the pickled object graph, `<root>/data/<key>` the raw
//! bytes of each storage (little-endian unless `<root>/byteorder` says `big`). Tensors in the
//! pickle refer to storages by key; [`TorchArchive::read_tensor`] checks the declared sizes against
//! the archive *before* allocating, then decodes the (possibly strided) view.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use zip::ZipArchive;

use super::checkpoint::{CheckpointError, DType, TensorValues};
use super::pickle::{self, Pickle, PickleError, TensorMeta};

/// Largest `data.pkl` accepted (real ones are a few hundred kB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Decoded tensor bytes allowed beyond 4x the archive size (see [`TorchArchive::budget`]).
const BUDGET_SLACK: u64 = 64 << 20;

/// An opened torch zip checkpoint: its unpickled `data.pkl` and access to the storages.
pub struct TorchArchive<R: Read + Seek> {
    zip: ZipArchive<R>,
    path: PathBuf,
    /// `<root>/` (or empty when entries have no root folder).
    prefix: String,
    archive_len: u64,
    big_endian: bool,
    pickle: Pickle,
    /// Bytes of decoded tensor data still allowed. Decoding widens f16 to f32, so a real
    /// checkpoint needs at most ~2x its size; a hostile pickle that views the same storage
    /// thousands of times (or broadcasts it with stride 0) runs out of budget instead of memory.
    budget: u64,
    /// The initial budget, which also bounds any single storage read.
    budget_total: u64,
}

/// A decoded tensor: dtype as stored, shape, values (floats widened to f32, ints to i64).
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: TensorValues,
}

impl<R: Read + Seek> TorchArchive<R> {
    /// Opens the archive, finds and unpickles `data.pkl`.
    ///
    /// `archive_len` is the total size of the archive in bytes; `path` names it in errors.
    pub fn open(reader: R, archive_len: u64, path: &Path) -> Result<Self, CheckpointError> {
        let zip_err = |source| CheckpointError::Zip { path: path.to_owned(), source };
        let zip = ZipArchive::new(reader).map_err(zip_err)?;

        // `<root>/data.pkl` with a single-level root, the first in archive order.
        let pkl_name = zip
            .file_names()
            .filter_map(Result::ok)
            .find(|n| n.as_ref() == "data.pkl" || n.strip_suffix("/data.pkl").is_some_and(|r| !r.contains('/')))
            .map(|n| n.into_owned())
            .ok_or_else(|| CheckpointError::Format {
                path: path.to_owned(),
                msg: "no '<root>/data.pkl' entry: a zip file, but not a PyTorch checkpoint".into(),
            })?;
        let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or_default().to_owned();

        let budget_total = archive_len.saturating_mul(4).saturating_add(BUDGET_SLACK);
        let mut archive = TorchArchive {
            zip,
            path: path.to_owned(),
            prefix,
            archive_len,
            big_endian: false,
            pickle: Pickle::default(),
            budget: budget_total,
            budget_total,
        };

        if let Some(order) = archive.read_small_entry("byteorder", 64)? {
            archive.big_endian = match order.trim_ascii() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(archive.format(format!(
                        "unknown byteorder '{}'",
                        String::from_utf8_lossy(other)
                    )))
                }
            };
        }

        let data = archive
            .read_small_entry("data.pkl", MAX_PICKLE_BYTES)?
            .ok_or_else(|| archive.format("data.pkl disappeared from the archive"))?;
        archive.pickle = pickle::unpickle(&data).map_err(|e| match e {
            PickleError::ForbiddenGlobal { module, name } => {
                CheckpointError::ForbiddenGlobal { path: path.to_owned(), global: format!("{module}.{name}") }
            }
            source => CheckpointError::Pickle { path: path.to_owned(), source },
        })?;
        Ok(archive)
    }

    /// The unpickled `data.pkl`.
    pub fn pickle(&self) -> &Pickle {
        &self.pickle
    }

    /// The file name used in error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Format { path: self.path.clone(), msg: msg.into() }
    }

    fn zip_err(&self, source: zip::result::ZipError) -> CheckpointError {
        CheckpointError::Zip { path: self.path.clone(), source }
    }

    /// Reads `<root>/<name>` if present, refusing entries larger than `max` bytes.
    fn read_small_entry(&mut self, name: &str, max: u64) -> Result<Option<Vec<u8>>, CheckpointError> {
        let full = format!("{}{name}", self.prefix);
        let Some(idx) = self.zip.index_for_name(&full) else {
            return Ok(None);
        };
        let size = self.zip.by_index_data(idx).map_err(|e| self.zip_err(e))?.size();
        if size > max {
            return Err(self.format(format!("entry '{full}' is {size} bytes (limit {max})")));
        }
        self.read_entry(idx, &full, size).map(Some)
    }

    /// Reads exactly `size` bytes of entry `idx`; `size` was validated by the caller.
    fn read_entry(&mut self, idx: usize, name: &str, size: u64) -> Result<Vec<u8>, CheckpointError> {
        // The capacity never exceeds the archive: a lying size in the zip directory can only
        // make the read fail, not allocate.
        let cap = usize::try_from(size.min(self.archive_len)).unwrap_or(0);
        let mut buf = Vec::with_capacity(cap);
        let path = self.path.clone();
        let mut entry = self.zip.by_index(idx).map_err(|source| CheckpointError::Zip { path: path.clone(), source })?;
        // Read one byte past the declared size: detects entries longer than declared, and makes
        // the zip reader reach the end of the entry, where it verifies the CRC.
        let io = (&mut entry).take(size.saturating_add(1)).read_to_end(&mut buf);
        drop(entry);
        if let Err(e) = io {
            return Err(CheckpointError::Zip {
                path,
                source: zip::result::ZipError::Io(std::io::Error::new(e.kind(), format!("entry '{name}': {e}"))),
            });
        }
        if buf.len() as u64 != size {
            return Err(self.format(format!(
                "entry '{name}' holds {} bytes but the zip directory declares {size}",
                buf.len()
            )));
        }
        Ok(buf)
    }

    /// Reads and decodes one tensor; `what` names it in errors (state_dict name or attribute).
    ///
    /// Checks, in order, before anything large is allocated: the storage entry exists; its size
    /// is exactly `numel * element size` as the pickle declares; the view (offset, size, stride)
    /// lies inside the storage; the decoded size fits the remaining budget.
    pub fn read_tensor(&mut self, t: &TensorMeta, what: &str) -> Result<RawTensor, CheckpointError> {
        let path = self.path.clone();
        let storage = self
            .pickle
            .storage(t.storage)
            .cloned()
            .ok_or_else(|| self.format(format!("tensor '{what}' has no storage")))?;
        let dtype = storage.dtype;
        let elem = dtype.size_bytes() as u64;
        let name = format!("{}data/{}", self.prefix, storage.key);
        let idx = self.zip.index_for_name(&name).ok_or_else(|| CheckpointError::MissingStorage {
            path: path.clone(),
            key: format!("data/{}", storage.key),
        })?;
        let (size, compressed, stored) = {
            let e = self.zip.by_index_data(idx).map_err(|e| self.zip_err(e))?;
            (e.size(), e.compressed_size(), e.compression() == zip::CompressionMethod::Stored)
        };
        let expected = u128::from(storage.numel) * u128::from(elem);
        if u128::from(size) != expected {
            return Err(CheckpointError::StorageSize {
                path,
                key: format!("data/{}", storage.key),
                actual: size,
                numel: storage.numel,
                dtype: dtype.name(),
                expected,
            });
        }
        if stored && compressed != size {
            return Err(self.format(format!(
                "storage '{name}' is stored uncompressed but its sizes differ ({compressed} vs {size} bytes)"
            )));
        }
        if size > self.budget_total {
            return Err(CheckpointError::TooLarge {
                path,
                what: format!("storage 'data/{}' ({size} bytes) of tensor '{what}'", storage.key),
            });
        }

        // The view: every element index offset + sum(i_d * stride_d) must be < numel.
        let view_numel = t.size.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(view_numel) = view_numel else {
            return Err(CheckpointError::TooLarge {
                path,
                what: format!("tensor '{what}' of shape {:?}", t.size),
            });
        };
        if view_numel > 0 {
            let last = t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&d, &s)| {
                d.checked_sub(1).and_then(|d1| d1.checked_mul(s)).and_then(|x| acc.checked_add(x))
            });
            if last.is_none_or(|l| l >= storage.numel) {
                return Err(CheckpointError::ViewOutOfBounds {
                    path,
                    tensor: what.to_owned(),
                    view: view_numel,
                    offset: t.offset,
                    storage: storage.numel,
                });
            }
        }
        // Charged: the decoded view and the storage bytes read for it (a storage shared by
        // many views is read once per view).
        let out_bytes = view_numel.checked_mul(if dtype.is_float() { 4 } else { 8 }).and_then(|b| b.checked_add(size));
        match out_bytes {
            Some(b) if b <= self.budget => self.budget -= b,
            _ => {
                return Err(CheckpointError::TooLarge {
                    path,
                    what: format!(
                        "tensor '{what}' ({view_numel} elements; the checkpoint's tensors would decode to more than {} bytes)",
                        self.budget_total
                    ),
                })
            }
        }
        let shape = t
            .size
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CheckpointError::TooLarge { path: path.clone(), what: format!("tensor '{what}'") })?;

        let bytes = self.read_entry(idx, &name, size)?;
        let src = decode(dtype, &bytes, self.big_endian);
        let values = match src {
            TensorValues::F32(v) => TensorValues::F32(view(v, t.offset, &t.size, &t.stride)),
            TensorValues::I64(v) => TensorValues::I64(view(v, t.offset, &t.size, &t.stride)),
        };
        match &values {
            TensorValues::F32(v) if v.len() as u64 == view_numel => {}
            TensorValues::I64(v) if v.len() as u64 == view_numel => {}
            _ => return Err(self.format(format!("tensor '{what}' could not be gathered from its storage"))),
        }
        Ok(RawTensor { dtype, shape, values })
    }
}

/// Decodes raw storage bytes (length already validated as a multiple of the element size).
fn decode(dtype: DType, bytes: &[u8], big_endian: bool) -> TensorValues {
    macro_rules! conv {
        ($n:literal, $f:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    if big_endian {
                        a.reverse();
                    }
                    $f(a)
                })
                .collect()
        };
    }
    match dtype {
        DType::F16 => TensorValues::F32(conv!(2, |a| f16::from_le_bytes(a).to_f32())),
        DType::BF16 => TensorValues::F32(conv!(2, |a| bf16::from_le_bytes(a).to_f32())),
        DType::F32 => TensorValues::F32(conv!(4, f32::from_le_bytes)),
        // Widened/narrowed to the crate's f32 compute type; documented on `TensorValues`.
        DType::F64 => TensorValues::F32(conv!(8, |a| f64::from_le_bytes(a) as f32)),
        DType::I64 => TensorValues::I64(conv!(8, i64::from_le_bytes)),
        DType::I32 => TensorValues::I64(conv!(4, |a| i64::from(i32::from_le_bytes(a)))),
        DType::I8 => TensorValues::I64(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
    }
}

/// The elements of a strided view, in row-major order. Bounds were checked by the caller; an
/// out-of-range index here (impossible) yields a shorter vector, which the caller rejects.
fn view<T: Copy>(src: Vec<T>, offset: u64, size: &[u64], stride: &[u64]) -> Vec<T> {
    let Some(numel) = size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?)) else {
        return Vec::new();
    };
    if numel == 0 {
        return Vec::new();
    }
    // Dimensions of size 1 never move the index; dropping them also keeps their (arbitrary)
    // strides out of the arithmetic below.
    let dims: Vec<(u64, u64)> = size.iter().zip(stride).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).collect();
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for &(d, s) in dims.iter().rev() {
            ok &= s == expect;
            expect = expect.saturating_mul(d);
        }
        ok
    };
    let start = offset;
    let Ok(offset) = usize::try_from(offset) else {
        return Vec::new();
    };
    if contiguous {
        if offset == 0 && src.len() == numel {
            return src;
        }
        return offset.checked_add(numel).and_then(|end| src.get(offset..end)).map(<[T]>::to_vec).unwrap_or_default();
    }
    // Odometer over the multi-index, carrying the linear storage position along.
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0u64; dims.len()];
    let mut pos = start;
    for _ in 0..numel {
        match usize::try_from(pos).ok().and_then(|p| src.get(p)) {
            Some(&v) => out.push(v),
            None => return out,
        }
        for (k, &(d, s)) in dims.iter().enumerate().rev() {
            let Some(i) = idx.get_mut(k) else { return out };
            *i += 1;
            if *i < d {
                pos = pos.saturating_add(s);
                break;
            }
            *i = 0;
            pos = pos.saturating_sub(s.saturating_mul(d - 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_and_strided_views() {
        let src: Vec<i32> = (0..12).collect();
        assert_eq!(view(src.clone(), 0, &[3, 4], &[4, 1]), src);
        assert_eq!(view(src.clone(), 2, &[2], &[1]), [2, 3]);
        // Transposed (4, 3) view of a row-major (3, 4) storage.
        assert_eq!(view(src.clone(), 0, &[4, 3], &[1, 4]), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // The Detect.anchors layout in a real checkpoint: size (2, 5) stride (1, 2).
        assert_eq!(view(src.clone(), 0, &[2, 5], &[1, 2]), [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]);
        // Size-1 dims with odd strides, broadcast (stride 0), scalar.
        assert_eq!(view(src.clone(), 0, &[1, 3], &[99, 1]), [0, 1, 2]);
        assert_eq!(view(src.clone(), 5, &[3], &[0]), [5, 5, 5]);
        assert_eq!(view(src.clone(), 7, &[], &[]), [7]);
        assert!(view(src, 0, &[0, 3], &[3, 1]).is_empty());
    }

    #[test]
    fn decode_dtypes() {
        assert_eq!(decode(DType::F16, &f16::from_f32(1.5).to_le_bytes(), false), TensorValues::F32(vec![1.5]));
        assert_eq!(decode(DType::BF16, &bf16::from_f32(-2.0).to_le_bytes(), false), TensorValues::F32(vec![-2.0]));
        assert_eq!(decode(DType::F32, &0.25f32.to_be_bytes(), true), TensorValues::F32(vec![0.25]));
        assert_eq!(decode(DType::F64, &3.0f64.to_le_bytes(), false), TensorValues::F32(vec![3.0]));
        assert_eq!(decode(DType::I64, &(-7i64).to_le_bytes(), false), TensorValues::I64(vec![-7]));
        assert_eq!(decode(DType::I32, &(-7i32).to_le_bytes(), false), TensorValues::I64(vec![-7]));
    }
}
