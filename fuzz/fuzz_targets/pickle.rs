//! Raw data.pkl bytes through the restricted pickle machine alone (fast: no zip, no CRC).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferroyolo::weights::pickle::unpickle(data);
});
