//! Checkpoints in and out.
//!
//! - [`Checkpoint`] is what the rest of the crate sees: state_dict tensors in order, the module
//!   tree with its plain attributes, the model config, class names and strides.
//! - [`pt`] reads the official Ultralytics `.pt` files (a torch zip archive whose `data.pkl` is run
//!   by the restricted, never-executing machine in [`pickle`]).
//! - [`pt_write`] writes `.pt` checkpoints Ultralytics loads unchanged (release and training
//!   layouts, pickled by [`pickle_write`]) and reads training state back.
//! - Checkpoints are also written and read back as safetensors with the metadata of
//!   [`Checkpoint::save_safetensors`].

pub mod checkpoint;
pub mod pickle;
pub mod pickle_write;
pub mod pt;
pub mod pt_write;
pub mod hub;

pub use checkpoint::{write_atomic, Checkpoint, CheckpointError, DType, ModuleInfo, StoredTensor, TensorKind, TensorValues};
pub use pickle_write::PyValue;
pub use pt_write::{load_training_state, save_pt, Layout, ModelWeights, StopperState, TrainingCheckpoint, TrainingState};
