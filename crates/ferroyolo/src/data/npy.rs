//! Minimal reader for NumPy `.npy` arrays (little-endian `<f4`, `<f8`, `<i8`, C order), as the
//! reference fixtures are stored, and a reader for `.npz` archives of them.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// A dense f32 array with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads a `.npy` file, converting float64/int64 to f32.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Reads every array of a `.npz` archive, by name (without the `.npy` suffix).
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, NpyArray)>> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("reading zip {}", path.display()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name()?.trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        out.push((name.clone(), parse_npy(&bytes).with_context(|| format!("array {name}"))?));
    }
    Ok(out)
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file (bad magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + header_len)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header)?;
    let descr = dict_value(header, "descr").context("no descr in .npy header")?;
    if dict_value(header, "fortran_order").as_deref() == Some("True") {
        bail!("fortran-order arrays are not supported");
    }
    let shape_txt = dict_value(header, "shape").context("no shape in .npy header")?;
    let shape: Vec<usize> = shape_txt
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let numel: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    let descr = descr.trim_matches('\'');
    let elem = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => bail!("unsupported dtype {other}"),
    };
    if body.len() < numel * elem {
        bail!("truncated data: {} bytes for {} elements of {}", body.len(), numel, descr);
    }
    let data = body[..numel * elem]
        .chunks_exact(elem)
        .map(|c| match descr {
            "<f4" => f32::from_le_bytes(c.try_into().unwrap()),
            "<i4" => i32::from_le_bytes(c.try_into().unwrap()) as f32,
            "<f8" => f64::from_le_bytes(c.try_into().unwrap()) as f32,
            _ => i64::from_le_bytes(c.try_into().unwrap()) as f32,
        })
        .collect();
    Ok(NpyArray { shape, data })
}

/// The text value of `'key': value` in the Python-dict header, up to the next top-level comma.
fn dict_value(header: &str, key: &str) -> Option<String> {
    let pat = format!("'{key}':");
    let rest = header[header.find(&pat)? + pat.len()..].trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim().to_string()),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_values() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in 0..6 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        }
        let a = parse_npy(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(parse_npy(&bytes[..bytes.len() - 1]).is_err());
    }
}
