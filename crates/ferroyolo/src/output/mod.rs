//! Detections out: annotated images and run folders.
//!
//! - [`annotate`]: boxes and label tags drawn onto images.
//! - [`run_dir`]: numbered output folders (`runs/detect/predict2`, …).

pub mod annotate;
pub mod run_dir;
