//! ferroyolo: YOLO26 object detection weights in pure Rust.
//!
//! The path of data through the crate follows its folders:
//! - [`weights`]: checkpoints in (`.pt` from Ultralytics, safetensors) and out.
//! - [`data`]: images in (sources, decoding, letterbox).
//! - [`engine`]: the CPU tensor type and kernels everything runs on.
//! - [`model`]: the YOLO26 network, built from its config and filled from a checkpoint.
//! - [`predict`]: the user-facing [`Yolo`] API and post-processing into detections.
//! - [`output`]: detections out (annotated images, label files, JSON).

pub mod compress;
pub mod data;
pub mod engine;
pub mod model;
pub mod output;
pub mod predict;
pub mod val;
pub mod weights;

#[doc(hidden)]
pub mod testing;
pub mod train;

pub use predict::{Detection, PredictOptions, Results, Yolo};
