//! Training data pipeline: mosaic, random perspective, HSV jitter, flips, seeded batches.

pub mod hsv;
pub mod rng;
pub mod warp;
