//! data.pkl bytes through the whole loader. Mutating data.pkl inside a `.pt` mostly just breaks
//! the zip CRC, so this harness builds the archive itself: the input becomes `archive/data.pkl`,
//! and every storage the pickle declares gets a `data/<key>` entry of the declared size (filled
//! with a byte pattern), so tensor reading, the state_dict walk and the metadata conversion all
//! run on fuzzed object graphs.
#![no_main]

use std::io::{Cursor, Write};

use ferroyolo::weights::pickle::{self, Node};
use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

/// Storages larger than this in total are given 0-byte entries (a size mismatch error) to keep
/// each execution fast.
const MAX_TOTAL_BYTES: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = pickle::unpickle(data) else { return };
    let mut storages: Vec<(String, u64)> = Vec::new();
    let mut total = 0u64;
    for node in p.nodes() {
        if let Node::Storage(s) = node {
            if storages.iter().any(|(k, _)| k == &s.key) {
                continue;
            }
            let bytes = s.numel.saturating_mul(s.dtype.size_bytes() as u64);
            let bytes = if total.saturating_add(bytes) > MAX_TOTAL_BYTES { 0 } else { bytes };
            total += bytes;
            storages.push((s.key.clone(), bytes));
        }
    }
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let build = || -> zip::result::ZipResult<Vec<u8>> {
        w.start_file("archive/data.pkl", opts)?;
        w.write_all(data)?;
        for (i, (key, bytes)) in storages.iter().enumerate() {
            // Names the zip writer refuses (duplicates after normalisation...) are skipped.
            if w.start_file(format!("archive/data/{key}"), opts).is_err() {
                continue;
            }
            let fill: Vec<u8> = (0..*bytes).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
            w.write_all(&fill)?;
        }
        Ok(w.finish()?.into_inner())
    };
    let Ok(bytes) = build() else { return };
    let _ = ferroyolo::weights::Checkpoint::from_pt_bytes(&bytes, std::path::Path::new("fuzz.pt"));
});
