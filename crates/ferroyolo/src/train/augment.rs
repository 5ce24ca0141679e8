//! Training data pipeline: mosaic, random perspective, HSV jitter, flips, seeded batches.
