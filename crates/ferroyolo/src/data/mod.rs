//! Images in: sources, decoding, letterbox preprocessing, and NumPy arrays for fixtures.

pub mod npy;
