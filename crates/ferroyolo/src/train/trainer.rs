//! The training loop: epochs of augmented batches through forward, loss, backward and optimizer
//! steps, a validation of the averaged (EMA) weights after each epoch, and the run folder the
//! reference writes (`weights/last.pt`, `weights/best.pt`, `results.csv`, `results.png`,
//! `args.yaml`).
//!
//! The loop follows the Ultralytics 8.4.190 trainer step by step (YOLO26.md §3.4-3.5): warmup and
//! accumulation per iteration, clipping at norm 10 before each step, the EMA after it, the
//! one-to-many loss weight decaying per epoch, `close_mosaic`, fitness = mAP50-95 for `best.pt`
//! and early stopping. Where the reference is not exactly repeatable, this loop is: batches are a
//! function of (seed, epoch, index) only, and `last.pt` carries every piece of evolving state
//! (weights, BatchNorm statistics, EMA, optimizer buffers, gradients accumulated but not yet
//! applied), so a run resumed from it ends with the same weights as an uninterrupted one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, TrainLoader};
use super::loss::{e2e_loss, o2m_weight, BranchLoss, LossConfig, Target};
use super::optim::{clip_grad_norm, resolve_optimizer, Ema, OptimConfig, Optimizer, OptimizerState, ParamSpec, MAX_GRAD_NORM};
use super::results::{ResultsLog, ResultsRow};
use crate::data::dataset::{scan_split, DatasetConfig, LabeledSplit};
use crate::model::state::checkpoint_with_state;
use crate::model::transfer::{check_trainable, frozen_prefixes, FreezeSpec};
use crate::model::{self, Yolo26};
use crate::output::run_dir::increment_run_dir;
use crate::val::{self, Metrics, ValOptions};
use crate::weights::{hub, Checkpoint};

/// Training settings, named and defaulted as the reference's (`default.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// Weights to start from (`.pt`, `.safetensors`, an official name) or a config
    /// (`yolo26n.yaml` … `yolo26x.yaml`) for random initial weights.
    pub model: String,
    /// Dataset YAML.
    pub data: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub imgsz: usize,
    pub patience: usize,
    pub optimizer: String,
    pub lr0: f32,
    pub lrf: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub warmup_epochs: f32,
    pub warmup_momentum: f32,
    pub warmup_bias_lr: f32,
    pub cos_lr: bool,
    pub nbs: usize,
    pub close_mosaic: usize,
    pub seed: u64,
    pub workers: usize,
    /// Layers kept fixed: a count or a list (see [`FreezeSpec`]).
    pub freeze: FreezeSpec,
    pub project: PathBuf,
    pub name: String,
    pub exist_ok: bool,
    /// Validate after every epoch (the last epoch is always validated).
    pub val: bool,
    pub plots: bool,
    #[serde(rename = "box")]
    pub box_gain: f32,
    #[serde(rename = "cls")]
    pub cls_gain: f32,
    #[serde(rename = "dfl")]
    pub dfl_gain: f32,
    pub hsv_h: f32,
    pub hsv_s: f32,
    pub hsv_v: f32,
    pub degrees: f32,
    pub translate: f32,
    pub scale: f32,
    pub shear: f32,
    pub perspective: f32,
    pub flipud: f32,
    pub fliplr: f32,
    pub mosaic: f32,
    /// Validation: end-to-end head (false, default) or one-to-many + NMS.
    pub nms: bool,
    /// Show progress bars.
    pub verbose: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        let aug = AugmentConfig::default();
        let opt = OptimConfig::default();
        let loss = LossConfig::default();
        TrainArgs {
            model: "yolo26n.pt".into(),
            data: PathBuf::new(),
            epochs: 100,
            batch: 16,
            imgsz: 640,
            patience: 100,
            optimizer: "auto".into(),
            lr0: opt.lr0,
            lrf: opt.lrf,
            momentum: opt.momentum,
            weight_decay: opt.weight_decay,
            warmup_epochs: opt.warmup_epochs,
            warmup_momentum: opt.warmup_momentum,
            warmup_bias_lr: opt.warmup_bias_lr,
            cos_lr: opt.cos_lr,
            nbs: opt.nbs,
            close_mosaic: 10,
            seed: 0,
            workers: 2,
            freeze: FreezeSpec::None,
            project: PathBuf::from("runs/detect"),
            name: "train".into(),
            exist_ok: false,
            val: true,
            plots: true,
            box_gain: loss.box_gain,
            cls_gain: loss.cls_gain,
            dfl_gain: loss.dfl_gain,
            hsv_h: aug.hsv_h,
            hsv_s: aug.hsv_s,
            hsv_v: aug.hsv_v,
            degrees: aug.degrees,
            translate: aug.translate,
            scale: aug.scale,
            shear: aug.shear,
            perspective: aug.perspective,
            flipud: aug.flipud,
            fliplr: aug.fliplr,
            mosaic: aug.mosaic,
            nms: false,
            verbose: true,
        }
    }
}

impl TrainArgs {
    fn augment(&self) -> AugmentConfig {
        AugmentConfig {
            imgsz: self.imgsz,
            mosaic: self.mosaic,
            degrees: self.degrees,
            translate: self.translate,
            scale: self.scale,
            shear: self.shear,
            perspective: self.perspective,
            hsv_h: self.hsv_h,
            hsv_s: self.hsv_s,
            hsv_v: self.hsv_v,
            fliplr: self.fliplr,
            flipud: self.flipud,
        }
    }

    fn optim(&self, batches_per_epoch: usize) -> OptimConfig {
        OptimConfig {
            lr0: self.lr0,
            lrf: self.lrf,
            momentum: self.momentum,
            build_momentum: self.momentum,
            weight_decay: self.weight_decay,
            warmup_epochs: self.warmup_epochs,
            warmup_momentum: self.warmup_momentum,
            warmup_bias_lr: self.warmup_bias_lr,
            cos_lr: self.cos_lr,
            nbs: self.nbs,
            batch: self.batch,
            epochs: self.epochs,
            batches_per_epoch,
            ..OptimConfig::default()
        }
    }

    fn check(&self) -> Result<()> {
        if self.epochs == 0 || self.batch == 0 || self.nbs == 0 {
            bail!("epochs, batch and nbs must be positive (epochs={} batch={} nbs={})", self.epochs, self.batch, self.nbs);
        }
        if self.imgsz < 32 || !self.imgsz.is_multiple_of(32) {
            bail!("imgsz={} must be a positive multiple of 32 (the model's largest stride)", self.imgsz);
        }
        for (name, v) in [("lr0", self.lr0), ("lrf", self.lrf), ("momentum", self.momentum), ("weight_decay", self.weight_decay)] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name}={v} must be a finite non-negative number");
            }
        }
        Ok(())
    }
}

/// What a finished (or stopped) run leaves.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The run folder.
    pub save_dir: PathBuf,
    /// Epochs trained in this call.
    pub epochs_run: usize,
    /// Best fitness (mAP50-95) seen, and its epoch (1-based).
    pub best_fitness: f64,
    pub best_epoch: usize,
    /// Validation of `best.pt` at the end (absent when the run was stopped by a hook).
    pub final_metrics: Option<Metrics>,
    /// Mean one-to-one training loss items of each epoch trained in this call.
    pub epoch_losses: Vec<BranchLoss>,
    pub seconds: f64,
}

impl TrainSummary {
    pub fn last(&self) -> PathBuf {
        self.save_dir.join("weights/last.pt")
    }

    pub fn best(&self) -> PathBuf {
        self.save_dir.join("weights/best.pt")
    }
}

/// Callbacks for embedding code and tests.
#[derive(Default)]
pub struct TrainHooks<'a> {
    /// Called after each epoch's checkpoint is written, with the number of epochs done; returning
    /// `true` stops the run at once, as if the process were killed (no final validation, no
    /// stripping of the checkpoints).
    pub after_epoch: Option<Box<dyn FnMut(usize) -> bool + 'a>>,
}

/// The reference's early stopping on fitness.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Stopper {
    pub best_fitness: f64,
    /// 1-based epoch of the best fitness.
    pub best_epoch: usize,
}

impl Stopper {
    /// Records epoch `epoch` (1-based) and says whether patience ran out.
    fn update(&mut self, epoch: usize, fitness: f64, patience: usize) -> bool {
        if fitness > self.best_fitness || self.best_fitness == 0.0 {
            self.best_epoch = epoch;
            self.best_fitness = fitness;
        }
        patience > 0 && epoch - self.best_epoch >= patience
    }
}

/// Everything that evolves during a run: what `last.pt` must carry to resume exactly.
pub(crate) struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    pub best_fitness: Option<f64>,
    pub stopper: Stopper,
    pub optimizer: OptimizerState,
    pub ema: Vec<(String, Vec<f32>)>,
    pub ema_updates: usize,
    /// Iteration of the last optimizer step.
    pub last_step: Option<usize>,
    /// Gradients summed since the last step (carried across epochs, as the reference does).
    pub pending: Vec<(String, Vec<f32>)>,
}

/// Trains a model as `args` say. See the module documentation.
pub fn train(args: &TrainArgs) -> Result<TrainSummary> {
    train_with_hooks(args, TrainHooks::default())
}

/// [`train`] with callbacks.
pub fn train_with_hooks(args: &TrainArgs, hooks: TrainHooks) -> Result<TrainSummary> {
    args.check()?;
    let data = DatasetConfig::load(&args.data)?;
    let save_dir = increment_run_dir(&args.project, &args.name, args.exist_ok)?;
    Trainer::new(args.clone(), data, save_dir, None)?.run(hooks)
}

/// Continues the run whose `last.pt` is `last`, with the arguments it was started with.
pub fn resume(last: &Path, hooks: TrainHooks) -> Result<TrainSummary> {
    let (args, base, state) = super::checkpoint::load_run(last)?;
    let data = DatasetConfig::load(&args.data)?;
    let save_dir = last
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{}: a resumable checkpoint lives in <run>/weights/", last.display()))?
        .to_path_buf();
    if state.epochs_done >= args.epochs {
        bail!("{}: training to {} epochs is finished, nothing to resume; start a new run with model={}", last.display(), args.epochs, last.display());
    }
    Trainer::new(args, data, save_dir, Some((base, state)))?.run(hooks)
}

struct Trainer {
    args: TrainArgs,
    save_dir: PathBuf,
    names: Vec<String>,
    /// The checkpoint training started from: the template for saved checkpoints.
    base: Checkpoint,
    model: Yolo26,
    specs: Vec<ParamSpec>,
    optimizer: Optimizer,
    ema: Ema,
    loader: TrainLoader,
    val_split: LabeledSplit,
    frozen: Vec<String>,
    stopper: Stopper,
    best_fitness: Option<f64>,
    start_epoch: usize,
    last_step: Option<usize>,
    /// Gradient sums since the last step, by parameter index in `specs` (`None`: no gradient).
    pending: Vec<Option<Vec<f32>>>,
    batches_seen: i64,
    results: ResultsLog,
}

impl Trainer {
    fn new(args: TrainArgs, data: DatasetConfig, save_dir: PathBuf, resumed: Option<(Checkpoint, RunState)>) -> Result<Self> {
        let train_split = scan_split(&data, "train")?;
        let val_split = scan_split(&data, "val")?;
        if train_split.images.is_empty() {
            bail!("{}: no usable training images ({})", data.yaml_path.display(), train_split.summary());
        }
        let names = data.names.clone();
        let (base, state) = match resumed {
            Some((base, state)) => (base, Some(state)),
            None => (initial_checkpoint(&args, &names)?, None),
        };
        let (mut model, _) = model::from_checkpoint(&base)?;
        if model.nc() != names.len() {
            bail!("{}: the model predicts {} classes, the dataset has {}", base.source.display(), model.nc(), names.len());
        }
        let n_train = train_split.images.len();
        let loader = TrainLoader::new(train_split, args.augment(), args.batch, args.workers, args.seed)?;
        let cfg = resolve_optimizer(&args.optimizer, &args.optim(loader.len()), n_train, names.len())?;
        let shapes: std::collections::HashMap<&str, &[usize]> = base.tensors.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice())).collect();
        let specs: Vec<ParamSpec> = model
            .parameters_mut()
            .into_iter()
            .map(|(n, v)| {
                let shape = shapes.get(n.as_str()).map(|s| s.to_vec()).unwrap_or_else(|| vec![v.len()]);
                ParamSpec::from_name(n, shape)
            })
            .collect();
        let frozen = frozen_prefixes(&args.freeze);
        check_trainable(&args.freeze, specs.iter().map(|p| p.name.as_str()))?;
        let mut trainer = Trainer {
            optimizer: Optimizer::new(&cfg, &specs),
            ema: Ema::new(&model.float_state()),
            pending: vec![None; specs.len()],
            specs,
            args,
            save_dir,
            names,
            base,
            model,
            loader,
            val_split,
            frozen,
            stopper: Stopper::default(),
            best_fitness: None,
            start_epoch: 0,
            last_step: None,
            batches_seen: 0,
            results: ResultsLog::default(),
        };
        if let Some(state) = state {
            trainer.restore(state)?;
        }
        Ok(trainer)
    }

    fn restore(&mut self, s: RunState) -> Result<()> {
        self.optimizer.load_state_dict(&s.optimizer)?;
        self.ema = Ema::with_updates(&s.ema, s.ema_updates);
        self.start_epoch = s.epochs_done;
        self.best_fitness = s.best_fitness;
        self.stopper = s.stopper;
        self.last_step = s.last_step;
        // The resumed model's `num_batches_tracked` already counts the earlier batches.
        self.batches_seen = 0;
        let index: std::collections::HashMap<&str, usize> = self.specs.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        for (name, g) in s.pending {
            let Some(&i) = index.get(name.as_str()) else { bail!("resume state has a gradient for unknown parameter {name}") };
            self.pending[i] = Some(g);
        }
        self.results = ResultsLog::load(&self.save_dir.join("results.csv"), self.start_epoch)?;
        Ok(())
    }

    fn is_frozen(&self, module: &str) -> bool {
        self.frozen.iter().any(|p| module.contains(p.as_str()))
    }

    fn run(mut self, mut hooks: TrainHooks) -> Result<TrainSummary> {
        let t_start = Instant::now();
        let weights_dir = self.save_dir.join("weights");
        fs::create_dir_all(&weights_dir).with_context(|| format!("creating {}", weights_dir.display()))?;
        if self.start_epoch == 0 {
            let yaml = serde_yaml::to_string(&self.args)?;
            crate::weights::write_atomic(&self.save_dir.join("args.yaml"), yaml.as_bytes())?;
        }
        let trainable = self.specs.len() - self.specs.iter().filter(|p| self.is_frozen(&p.name)).count();
        self.say(format!(
            "{} {}: {} parameters ({} trainable), {} classes; {} train images, {} batches of {} per epoch; optimizer {} lr0={}",
            if self.start_epoch > 0 { "Resuming" } else { "Training" },
            self.base.source.display(),
            self.specs.iter().map(ParamSpec::numel).sum::<usize>(),
            trainable,
            self.names.len(),
            self.loader.num_images(),
            self.loader.len(),
            self.loader.batch_size(),
            self.optimizer.kind().name(),
            self.optimizer.groups().first().map(|g| g.initial_lr).unwrap_or(0.0),
        ));
        self.say(format!("Results go to {}", self.save_dir.display()));

        let epochs = self.args.epochs;
        let mut epoch_losses = Vec::new();
        let mut epochs_run = 0;
        let mut stopped_by_hook = false;
        for epoch in self.start_epoch..epochs {
            let t_epoch = Instant::now();
            if self.args.close_mosaic > 0 && epoch >= epochs.saturating_sub(self.args.close_mosaic) {
                if epoch == epochs.saturating_sub(self.args.close_mosaic) || epoch == self.start_epoch {
                    self.say("Closing dataloader mosaic".to_string());
                }
                self.loader.close_mosaic();
            }
            let tloss = self.train_epoch(epoch)?;
            epoch_losses.push(tloss);
            epochs_run += 1;
            let lrs = self.optimizer.lrs_f64();

            let final_epoch = epoch + 1 >= epochs;
            let metrics = if self.args.val || final_epoch { Some(self.validate(None, false, epoch)?) } else { None };
            let mut stop = final_epoch;
            if let Some(m) = &metrics {
                let (fitness, val_loss) = (m.0.fitness(), m.1);
                if self.best_fitness.is_none_or(|b| b < fitness) {
                    self.best_fitness = Some(fitness);
                }
                stop |= self.stopper.update(epoch + 1, fitness, self.args.patience);
                self.results.push(ResultsRow::new(epoch + 1, t_start.elapsed().as_secs_f64(), tloss, Some(&m.0), val_loss, &lrs));
            } else {
                self.results.push(ResultsRow::new(epoch + 1, t_start.elapsed().as_secs_f64(), tloss, None, None, &lrs));
            }
            self.results.save(&self.save_dir.join("results.csv"))?;
            let is_best = metrics.as_ref().is_some_and(|m| Some(m.0.fitness()) == self.best_fitness);
            self.save_checkpoints(epoch + 1, is_best)?;
            self.say(format!("epoch {}/{} done in {:.1}s", epoch + 1, epochs, t_epoch.elapsed().as_secs_f64()));
            if let Some(hook) = hooks.after_epoch.as_mut() {
                if hook(epoch + 1) {
                    stopped_by_hook = true;
                    break;
                }
            }
            if stop {
                if !final_epoch {
                    self.say(format!(
                        "EarlyStopping: no improvement in the last {} epochs; best results at epoch {}, saved as best.pt (patience=0 disables this)",
                        self.args.patience, self.stopper.best_epoch
                    ));
                }
                break;
            }
        }
        let seconds = t_start.elapsed().as_secs_f64();
        let mut final_metrics = None;
        if !stopped_by_hook {
            self.say(format!("\n{epochs_run} epochs completed in {:.3} hours.", seconds / 3600.0));
            super::checkpoint::strip(&weights_dir.join("last.pt"))?;
            let best = weights_dir.join("best.pt");
            if best.exists() {
                super::checkpoint::strip(&best)?;
                self.say(format!("\nValidating {}...", best.display()));
                let ckpt = Checkpoint::load(&best)?;
                let (best_model, _) = model::from_checkpoint(&ckpt)?;
                final_metrics = Some(self.validate(Some(&best_model), self.args.plots, epochs - 1)?.0);
            }
            if self.args.plots {
                self.results.plot(&self.save_dir.join("results.png"))?;
            }
            self.say(format!("Results saved to {}", self.save_dir.display()));
        }
        Ok(TrainSummary {
            save_dir: self.save_dir.clone(),
            epochs_run,
            best_fitness: self.stopper.best_fitness,
            best_epoch: self.stopper.best_epoch,
            final_metrics,
            epoch_losses,
            seconds,
        })
    }

    /// Loss gains and the one-to-many weight of `epoch` (0-based).
    fn loss_config(&self, epoch: usize) -> LossConfig {
        LossConfig {
            box_gain: self.args.box_gain,
            cls_gain: self.args.cls_gain,
            dfl_gain: self.args.dfl_gain,
            o2m_weight: o2m_weight(epoch, self.args.epochs),
        }
    }

    fn say(&self, s: String) {
        if self.args.verbose {
            eprintln!("{s}");
        }
    }

    /// One epoch of batches; returns the mean one-to-one loss items.
    fn train_epoch(&mut self, epoch: usize) -> Result<BranchLoss> {
        let epochs = self.args.epochs;
        let nb = self.loader.len();
        self.loader.set_epoch(epoch);
        let loss_cfg = self.loss_config(epoch);
        let bar = if self.args.verbose {
            eprintln!("\n{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}", "Epoch", "RAM", "box_loss", "cls_loss", "l1_loss", "Instances", "Size");
            let bar = ProgressBar::with_draw_target(Some(nb as u64), ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{prefix} {bar:20} {pos}/{len} {elapsed}<{eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar
        } else {
            ProgressBar::hidden()
        };
        let frozen = self.frozen.clone();
        let is_frozen = move |m: &str| frozen.iter().any(|p| m.contains(p.as_str()));
        let index: std::collections::HashMap<String, usize> = self.specs.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        let mut tloss = BranchLoss::default();
        let batches = self.loader.iter();
        for (i, batch) in batches.enumerate() {
            let batch = batch?;
            let ni = i + nb * epoch;
            self.optimizer.set_iteration(epoch, ni);

            let [_, _, h, w] = batch.images.shape();
            let (out, tape) = self.model.forward_train(&batch.images, &is_frozen);
            self.batches_seen += 1;
            let targets: Vec<Target> = batch.targets.iter().map(|&(b, c, xywh)| Target { batch_index: b, class: c, cxcywh: xywh }).collect();
            let loss = e2e_loss(&out.one2many, &out.one2one, &targets, (h, w), &loss_cfg);
            drop(out);
            if !loss.total.is_finite() {
                bail!("epoch {}: the loss became {} at batch {i}; lower lr0 (now {}) or check the labels", epoch + 1, loss.total, self.args.lr0);
            }
            let grads = self.model.backward(tape, &loss.grad_o2m_boxes, &loss.grad_o2m_logits, &loss.grad_o2o_boxes, &loss.grad_o2o_logits);
            for (name, g) in grads.iter() {
                let slot = &mut self.pending[index[name]];
                match slot {
                    Some(acc) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
                    None => *slot = Some(g.to_vec()),
                }
            }
            let items = loss.one2one;
            let k = i as f32;
            tloss = BranchLoss {
                box_loss: (tloss.box_loss * k + items.box_loss) / (k + 1.0),
                cls_loss: (tloss.cls_loss * k + items.cls_loss) / (k + 1.0),
                l1_loss: (tloss.l1_loss * k + items.l1_loss) / (k + 1.0),
            };

            if self.optimizer.step_due(ni, self.last_step) {
                optimizer_step(&mut self.model, &mut self.optimizer, &mut self.ema, &mut self.pending, &self.specs);
                self.last_step = Some(ni);
            }
            bar.set_prefix(format!(
                "{:>11}{:>11}{:>11.4}{:>11.4}{:>11.4}{:>11}{:>11}",
                format!("{}/{}", epoch + 1, epochs),
                format!("{:.3}G", peak_rss_gb()),
                tloss.box_loss,
                tloss.cls_loss,
                tloss.l1_loss,
                batch.targets.len(),
                w
            ));
            bar.inc(1);
        }
        bar.finish();
        // Without a terminal the bar is not drawn; keep the epoch's line in the log anyway.
        if self.args.verbose && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("{}", bar.prefix());
        }
        Ok(tloss)
    }

    /// Validates the EMA weights (or `model`); returns the metrics and the one-to-one loss items
    /// (with the loss weights of `epoch`).
    fn validate(&self, model: Option<&Yolo26>, plots: bool, epoch: usize) -> Result<(Metrics, Option<BranchLoss>)> {
        let ema_model;
        let model = match model {
            Some(m) => m,
            None => {
                let mut m = self.model.clone();
                m.load_float_state(self.ema.state())?;
                ema_model = m;
                &ema_model
            }
        };
        let opts = ValOptions {
            imgsz: self.args.imgsz as u32,
            batch: self.args.batch * 2,
            nms: self.args.nms,
            plots,
            save_dir: plots.then(|| self.save_dir.clone()),
            progress: self.args.verbose,
            loss: Some(self.loss_config(epoch)),
            ..ValOptions::default()
        };
        let metrics = val::validate(model, &self.names, &self.val_split, &opts)?;
        if self.args.verbose {
            eprint!("{}", metrics.table(plots));
        }
        let loss = metrics.loss;
        Ok((metrics, loss))
    }

    fn run_state(&self, epochs_done: usize) -> RunState {
        RunState {
            epochs_done,
            best_fitness: self.best_fitness,
            stopper: self.stopper,
            optimizer: self.optimizer.state_dict(),
            ema: self.ema.state().to_vec(),
            ema_updates: self.ema.updates(),
            last_step: self.last_step,
            pending: self.pending.iter().zip(&self.specs).filter_map(|(g, p)| g.as_ref().map(|g| (p.name.clone(), g.clone()))).collect(),
        }
    }

    /// Writes `last.pt` (and `best.pt` when this epoch is the best so far), with safetensors
    /// copies of the averaged weights beside them.
    fn save_checkpoints(&mut self, epochs_done: usize, is_best: bool) -> Result<()> {
        let dir = self.save_dir.join("weights");
        let frozen = self.frozen.clone();
        let tracked = |name: &str| !frozen.iter().any(|p| name.contains(p.as_str()));
        let model_ckpt = checkpoint_with_state(&self.base, &self.model.float_state(), &tracked, self.batches_seen)?;
        let ema_ckpt = checkpoint_with_state(&self.base, self.ema.state(), &tracked, self.batches_seen)?;
        let state = self.run_state(epochs_done);
        super::checkpoint::save_run(&dir.join("last.pt"), &self.args, &model_ckpt, &ema_ckpt, &state, &self.names)?;
        with_names(&ema_ckpt, &self.names).save_safetensors(dir.join("last.safetensors"))?;
        if is_best {
            super::checkpoint::save_run(&dir.join("best.pt"), &self.args, &model_ckpt, &ema_ckpt, &state, &self.names)?;
            with_names(&ema_ckpt, &self.names).save_safetensors(dir.join("best.safetensors"))?;
        }
        Ok(())
    }
}

/// Clip, update, zero the gradients, update the EMA (the reference's `optimizer_step`).
fn optimizer_step(model: &mut Yolo26, optimizer: &mut Optimizer, ema: &mut Ema, pending: &mut [Option<Vec<f32>>], specs: &[ParamSpec]) {
    let mut grads: Vec<(usize, Vec<f32>)> = pending.iter_mut().enumerate().filter_map(|(i, g)| g.take().map(|g| (i, g))).collect();
    {
        let mut slices: Vec<&mut [f32]> = grads.iter_mut().map(|(_, g)| g.as_mut_slice()).collect();
        clip_grad_norm(&mut slices, MAX_GRAD_NORM);
    }
    let mut params = model.parameters_mut();
    let mut by_index: Vec<Option<&mut Vec<f32>>> = params.iter_mut().map(|(_, v)| Some(&mut **v)).collect();
    let mut jobs: Vec<(&str, &mut [f32], &[f32])> = Vec::with_capacity(grads.len());
    for (i, g) in &grads {
        let values = by_index[*i].take().expect("each parameter once");
        jobs.push((specs[*i].name.as_str(), values.as_mut_slice(), g.as_slice()));
    }
    optimizer.step(&mut jobs);
    drop(jobs);
    drop(by_index);
    drop(params);
    let state = model.float_state_mut();
    let view: Vec<(&str, &[f32])> = state.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    ema.update(&view);
}

fn with_names(c: &Checkpoint, names: &[String]) -> Checkpoint {
    let mut c = c.clone();
    c.names = names.to_vec();
    c
}

/// The weights a new run starts from: a config gives fresh weights; a checkpoint is adapted to
/// the dataset's classes.
fn initial_checkpoint(args: &TrainArgs, names: &[String]) -> Result<Checkpoint> {
    let path = Path::new(&args.model);
    if let Some(scale) = model::init::config_scale(path) {
        return model::init::random_checkpoint(&scale, names.len(), Some(names.to_vec()), args.seed);
    }
    let weights = hub::resolve_weights(path)?;
    let ckpt = Checkpoint::load(&weights)?;
    super::checkpoint::adapt_to_dataset(ckpt, names, args.seed, args.verbose)
}

/// Peak resident memory of this process in GB (Linux; 0 elsewhere).
fn peak_rss_gb() -> f64 {
    let Ok(s) = fs::read_to_string("/proc/self/status") else { return 0.0 };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}
