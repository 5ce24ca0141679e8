//! Images in: sources, decoding, letterbox preprocessing, and NumPy arrays for fixtures.
//!
//! - [`source`]: what the user points at (file, folder, glob, list, URL) → items to read.
//! - [`image_io`]: encoded bytes → RGB pixels, matching `cv2.imread` (exact for JPEG via [`jpeg`]).
//! - [`letterbox`]: resize and pad for the network, matching `cv2.resize`, and CHW float layout.
//! - [`dataset`]: YOLO-format datasets (dataset YAML, image lists, label files), checked.
//! - [`npy`]: NumPy arrays, for the reference fixtures.
//! - [`synthetic`]: generated shape datasets with exact labels, for learning from scratch.

pub mod dataset;
pub mod image_io;
pub mod jpeg;
pub mod letterbox;
pub mod npy;
pub mod source;
pub mod synthetic;
