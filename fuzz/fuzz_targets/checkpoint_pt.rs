//! Whole `.pt` files: zip container, data.pkl, storages. Any input must give `Ok` or `Err`,
//! never a panic, an abort on allocation, or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferroyolo::weights::Checkpoint::from_pt_bytes(data, std::path::Path::new("fuzz.pt"));
});
