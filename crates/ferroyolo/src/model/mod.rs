//! The YOLO26 network: its config ([`config`]), its layers and forward pass ([`yolo26`]), and how
//! checkpoint tensors fill it ([`weights`]).

pub mod config;
pub mod init;
pub mod state;
pub mod train;
pub mod transfer;
pub mod weights;
pub mod yolo26;

pub use config::{LayerSpec, ModelPlan};
pub use weights::{ParamRecord, ParamRole};
pub use yolo26::{HeadMode, HeadOutput, Yolo26};

use anyhow::{Context, Result};

use crate::weights::Checkpoint;

/// Builds the model described by a checkpoint's embedded config and fills it with its weights.
/// Returns the model and the parameters it took (for parameter counts).
pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<(Yolo26, Vec<ParamRecord>)> {
    let src = ckpt.source.display().to_string();
    let plan = config::resolve(&ckpt.model_yaml, None, None).with_context(|| format!("{src}: embedded model config"))?;
    let strides = if ckpt.stride.is_empty() { vec![8.0, 16.0, 32.0] } else { ckpt.stride.clone() };
    let mut store = weights::CheckpointStore::new(ckpt);
    let model = Yolo26::load(plan, strides, &mut store)?;
    Ok((model, store.params))
}
