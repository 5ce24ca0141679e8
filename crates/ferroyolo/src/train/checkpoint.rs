//! Training checkpoints: `last.pt` / `best.pt` in the Ultralytics format (they load unchanged in
//! `ultralytics.YOLO`), carrying everything a resumed run needs, and the adaptation of
//! pretrained weights to a dataset's classes.
//!
//! The training layout holds the trained model and its EMA in fp32, the optimizer state in the
//! shape of a PyTorch `state_dict` (see [`OptimizerState::to_py`]) plus two entries of ours that
//! PyTorch ignores: the iteration of the last optimizer step and the gradients accumulated
//! since (`ferroyolo_last_step`, `ferroyolo_pending`). With those, a resumed run repeats the
//! uninterrupted one exactly.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::optim::OptimizerState;
use super::trainer::{RunState, Stopper, TrainArgs};
use crate::model;
use crate::model::transfer::{transfer, TargetSpec};
use crate::weights::pickle_write::{PyTensor, TensorData};
use crate::weights::{load_training_state, save_pt, Checkpoint, DType, ModelWeights, PyValue, StopperState, TrainingCheckpoint};

const LAST_STEP: &str = "ferroyolo_last_step";
const PENDING: &str = "ferroyolo_pending";

/// The run's arguments as `train_args` (the reference's keys, plus its `task` and `mode`).
fn train_args_json(args: &TrainArgs) -> Result<Json> {
    let mut v = serde_json::to_value(args)?;
    if let Json::Object(m) = &mut v {
        m.insert("task".into(), "detect".into());
        m.insert("mode".into(), "train".into());
    }
    Ok(v)
}

/// Writes a resumable training checkpoint (model, EMA, optimizer, run state) to `path`,
/// atomically. `model` and `ema` are full checkpoints of the run's architecture.
pub(crate) fn save_run(path: &Path, args: &TrainArgs, model: &Checkpoint, ema: &Checkpoint, state: &RunState, names: &[String]) -> Result<()> {
    let train_args = train_args_json(args)?;
    let model_w = ModelWeights { tensors: &model.tensors, yaml: &model.model_yaml, names, stride: &model.stride, args: &train_args };
    let ema_w = ModelWeights { tensors: &ema.tensors, ..model_w };
    let mut optimizer = state.optimizer.to_py()?;
    let PyValue::Dict(entries) = &mut optimizer else { bail!("optimizer state is not a dict") };
    entries.push((PyValue::str(LAST_STEP), state.last_step.map_or(PyValue::None, |s| PyValue::Int(s as i64))));
    let pending = state
        .pending
        .iter()
        .map(|(n, g)| (PyValue::str(n.as_str()), PyValue::Tensor(PyTensor::new(DType::F32, vec![g.len()], TensorData::F32(Cow::Borrowed(g))))))
        .collect();
    entries.push((PyValue::str(PENDING), PyValue::Dict(pending)));

    let mut ck = TrainingCheckpoint::training(state.epochs_done as i64 - 1, &train_args);
    ck.best_fitness = state.best_fitness;
    ck.stopper = Some(StopperState { best_fitness: Some(state.stopper.best_fitness), best_epoch: state.stopper.best_epoch as i64 });
    ck.model = Some(model_w);
    ck.ema = Some(ema_w);
    ck.updates = Some(state.ema_updates as u64);
    ck.optimizer = Some(optimizer);
    save_pt(path, &ck)?;
    Ok(())
}

/// Reads back what [`save_run`] wrote: the run's arguments, the model checkpoint it continues
/// from, and the evolving state.
pub(crate) fn load_run(path: &Path) -> Result<(TrainArgs, Checkpoint, RunState)> {
    let st = load_training_state(path)?;
    let what = || format!("{}: not a resumable ferroyolo training checkpoint", path.display());
    let args: TrainArgs = serde_json::from_value(st.train_args.clone()).with_context(|| format!("{}: train_args", what()))?;
    let model = st.model.with_context(|| format!("{}: it holds no trained model (a finished or released checkpoint cannot be resumed)", what()))?;
    let ema_ckpt = st.ema.with_context(|| format!("{}: no EMA", what()))?;
    let (mut ema_model, _) = model::from_checkpoint(&ema_ckpt)?;
    let opt = st.optimizer.with_context(|| format!("{}: no optimizer state", what()))?;
    let optimizer = OptimizerState::from_py(&opt).with_context(what)?;
    let last_step = match opt.get(LAST_STEP) {
        Some(PyValue::Int(s)) if *s >= 0 => Some(*s as usize),
        Some(PyValue::None) => None,
        _ => bail!("{}: optimizer entry '{LAST_STEP}' missing or not an iteration", what()),
    };
    let mut pending = Vec::new();
    for (k, v) in opt.get(PENDING).and_then(PyValue::as_dict).with_context(|| format!("{}: no '{PENDING}'", what()))? {
        let (Some(name), Some(t)) = (k.as_str(), v.as_tensor()) else { bail!("{}: malformed '{PENDING}'", what()) };
        let TensorData::F32(g) = &t.data else { bail!("{}: gradient of {name} is not float", what()) };
        pending.push((name.to_string(), g.to_vec()));
    }
    let stopper = st.stopper.map_or(Stopper::default(), |s| Stopper { best_fitness: s.best_fitness.unwrap_or(0.0), best_epoch: s.best_epoch.max(0) as usize });
    let state = RunState {
        epochs_done: usize::try_from(st.epoch + 1).with_context(|| format!("{}: epoch {}", what(), st.epoch))?,
        best_fitness: st.best_fitness,
        stopper,
        optimizer,
        ema: ema_model.float_state(),
        ema_updates: st.updates.unwrap_or(0) as usize,
        last_step,
        pending,
    };
    Ok((args, model, state))
}

/// Turns a finished training checkpoint into the release layout (EMA weights in fp16, no
/// optimizer, epoch -1), as the reference's `strip_optimizer` does at the end of training.
pub(crate) fn strip(path: &Path) -> Result<()> {
    let st = load_training_state(path)?;
    let Some(weights) = st.ema.as_ref().or(st.model.as_ref()) else { bail!("{}: no model to keep", path.display()) };
    let mut ck = TrainingCheckpoint::release(ModelWeights::from_checkpoint(weights), &st.train_args);
    ck.best_fitness = st.best_fitness;
    ck.train_metrics = Some(st.train_metrics.clone());
    ck.train_results = Some(st.train_results.clone());
    save_pt(path, &ck)?;
    Ok(())
}

/// A pretrained checkpoint adapted to a dataset's classes by the reference's transfer rules.
pub(crate) fn adapt_to_dataset(ckpt: Checkpoint, names: &[String], seed: u64, verbose: bool) -> Result<Checkpoint> {
    let (out, report) = transfer(&ckpt, &TargetSpec::new(names.len(), names.to_vec()), seed)?;
    // A model whose own shapes differ from its config (channel-pruned) would come back at the
    // config's widths with those tensors fresh. When the classes are already the dataset's and
    // the checkpoint builds as it is, it is the starting point itself.
    let narrowed = report.fresh.iter().any(|n| ckpt.tensors.iter().any(|(m, _)| m == n));
    if narrowed && ckpt.names == names && model::from_checkpoint(&ckpt).is_ok() {
        if verbose {
            eprintln!("Starting from {} as it is: its tensor shapes differ from its config (pruned), its classes are the dataset's", ckpt.source.display());
        }
        return Ok(ckpt);
    }
    if verbose {
        eprintln!("{report}");
    }
    Ok(out)
}
