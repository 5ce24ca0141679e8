//! Optimizers (SGD, Adam, AdamW, MuSGD), parameter groups, learning-rate schedules, warmup,
//! gradient clipping and the weight EMA, with the rules of the Ultralytics 8.4.190 trainer.
//!
//! Everything here works on named flat `f32` tensors, named like the entries of an Ultralytics
//! `state_dict` (`model.0.conv.weight`, `model.23.one2one_cv3.0.2.bias`, ...), so the trainer
//! needs no knowledge of the internals:
//!
//! ```ignore
//! use ferroyolo::train::optim::*;
//! // 1. The concrete optimizer: `optimizer=auto` picks MuSGD or AdamW from the run length.
//! let cfg = resolve_optimizer(&args.optimizer, &base_cfg, n_train_images, nc)?;
//! // 2. Groups and state, from the parameters in registration order.
//! let mut opt = Optimizer::new(&cfg, &param_specs);
//! let mut ema = Ema::new(&float_state_dict_entries);          // BatchNorm statistics included
//! let mut last_step = None;
//! for epoch in start_epoch..cfg.epochs {
//!     for i in 0..cfg.batches_per_epoch {
//!         let ni = i + cfg.batches_per_epoch * epoch;
//!         opt.set_iteration(epoch, ni);                          // schedule, warmup, accumulate
//!         /* forward, backward: gradients summed over the accumulated batches */
//!         if opt.step_due(ni, last_step) {
//!             clip_grad_norm(&mut grads, MAX_GRAD_NORM);
//!             opt.step(&mut named_params_and_grads);
//!             /* zero the gradients */
//!             ema.update(&float_state_dict_entries);
//!             last_step = Some(ni);
//!         }
//!     }
//!     /* results.csv: opt.lrs() as lr/pg0, lr/pg1, ... */
//! }
//! ```
//!
//! Numbers follow the reference's precision: hyperparameters (learning rates, momenta, decay,
//! the schedule and warmup interpolation) are `f64` as Python floats are, and are rounded to
//! `f32` where PyTorch hands them to a float32 kernel; tensor arithmetic is `f32` with fused
//! multiply-adds where PyTorch's CPU kernels use them. One deliberate difference: the
//! Newton–Schulz orthogonalisation of MuSGD runs in `f32`, where the reference casts to
//! bfloat16 (see [`newton_schulz`]); the Muon part of an update therefore differs by about
//! 1–2 % from the reference's, which is below bfloat16's own rounding noise.

mod clip;
mod ema;
mod groups;
mod newton_schulz;
mod optimizer;
mod state;

#[cfg(test)]
mod tests;

pub use clip::clip_grad_norm;
pub use ema::Ema;
pub use groups::{build_groups, GroupKind, ParamGroup, ParamSpec};
pub use newton_schulz::{newton_schulz, NS_COEFFICIENTS, NS_EPS, NS_STEPS};
pub use optimizer::Optimizer;
pub use state::{OptimizerState, ParamBuffers};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Gradient clipping threshold of the reference trainer (`clip_grad_norm_(max_norm=10.0)`).
pub const MAX_GRAD_NORM: f32 = 10.0;
/// Share of the learning rate the Muon (orthogonalised) update gets in MuSGD, as the trainer
/// constructs it (the class default would be 0.5).
pub const MUON_SCALE: f64 = 0.2;
/// Share of the learning rate the SGD part gets in MuSGD's Muon groups (class default 0.5).
pub const SGD_SCALE: f64 = 1.0;
/// Learning-rate multiplier of the class branches (`cv3`, `one2one_cv3`) under MuSGD.
pub const CLASS_BRANCH_LR_GAIN: f64 = 3.0;
/// Adam's second-moment decay (the trainer passes `betas=(momentum, 0.999)`).
pub const ADAM_BETA2: f64 = 0.999;
/// Adam's denominator epsilon (PyTorch default).
pub const ADAM_EPS: f64 = 1e-8;
/// `optimizer=auto` picks MuSGD when the run has more optimizer iterations than this.
pub const AUTO_MUSGD_MIN_ITERATIONS: usize = 10_000;

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// `torch.optim.SGD` with momentum (Nesterov in the trainer) and L2 weight decay.
    Sgd,
    /// `torch.optim.AdamW`: decoupled weight decay.
    AdamW,
    /// Ultralytics' MuSGD: Muon (orthogonalised momentum) plus SGD on conv weights, SGD elsewhere.
    MuSgd,
    /// `torch.optim.Adam`: L2 weight decay added to the gradient.
    Adam,
}

impl OptimizerKind {
    /// The reference's spelling (`SGD`, `AdamW`, `MuSGD`, `Adam`).
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "SGD",
            OptimizerKind::AdamW => "AdamW",
            OptimizerKind::MuSgd => "MuSGD",
            OptimizerKind::Adam => "Adam",
        }
    }

    /// Case-insensitive parse of an explicit optimizer name (not `auto`, see [`resolve_optimizer`]).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::AdamW),
            "musgd" => Ok(OptimizerKind::MuSgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamax" | "nadam" | "radam" | "rmsprop" => {
                bail!("optimizer '{name}' is accepted by the reference but not implemented here; use SGD, MuSGD, Adam, AdamW or auto")
            }
            _ => bail!("optimizer '{name}' not found; available: SGD, MuSGD, Adam, AdamW, auto"),
        }
    }

    /// SGD-style optimizers have a `momentum` that warmup ramps; Adam-style ones have betas.
    pub fn has_momentum(self) -> bool {
        matches!(self, OptimizerKind::Sgd | OptimizerKind::MuSgd)
    }

    /// Adam-style optimizers (per-parameter moments).
    pub fn is_adam(self) -> bool {
        matches!(self, OptimizerKind::Adam | OptimizerKind::AdamW)
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Training hyperparameters that shape the optimizer, with the reference's defaults.
///
/// `batch`, `epochs` and `batches_per_epoch` describe the run and must be set by the trainer.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimConfig {
    /// The concrete optimizer (after [`resolve_optimizer`]).
    pub kind: OptimizerKind,
    /// Initial learning rate (`lr0`).
    pub lr0: f32,
    /// Final learning rate as a fraction of `lr0` (`lrf`).
    pub lrf: f32,
    /// `args.momentum`: the SGD momentum warmup ramps up to, and Adam's beta1 when Adam is chosen
    /// explicitly.
    pub momentum: f32,
    /// The momentum (SGD) / beta1 (Adam) the optimizer is constructed with: `momentum` for an
    /// explicit choice, 0.9 under `optimizer=auto`. Warmup later moves SGD momentum to
    /// `momentum`, so this only lasts when there is no warmup.
    pub build_momentum: f32,
    /// Weight decay before scaling by `batch · accumulate / nbs`.
    pub weight_decay: f32,
    /// Warmup length in epochs (fractions allowed).
    pub warmup_epochs: f32,
    /// SGD momentum at the start of warmup.
    pub warmup_momentum: f32,
    /// Learning rate of the bias groups at the start of warmup (0.0 under `optimizer=auto`).
    pub warmup_bias_lr: f32,
    /// Cosine instead of linear learning-rate decay.
    pub cos_lr: bool,
    /// Nominal batch size: gradients accumulate to about this many images per step.
    pub nbs: usize,
    /// Images per batch.
    pub batch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Batches (iterations) per epoch, i.e. `len(train_loader)`.
    pub batches_per_epoch: usize,
    /// Nesterov momentum for SGD / MuSGD (the trainer always uses it).
    pub nesterov: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::Sgd,
            lr0: 0.01,
            lrf: 0.01,
            momentum: 0.937,
            build_momentum: 0.937,
            weight_decay: 0.0005,
            warmup_epochs: 3.0,
            warmup_momentum: 0.8,
            warmup_bias_lr: 0.1,
            cos_lr: false,
            nbs: 64,
            batch: 16,
            epochs: 100,
            batches_per_epoch: 0,
            nesterov: true,
        }
    }
}

/// The decimal value an `f32` hyperparameter was written as (`0.01f32` → `0.01f64`), so that
/// the `f64` schedule arithmetic starts from the same numbers as Python's floats rather than
/// from `f32` rounding residue.
pub(crate) fn widen(x: f32) -> f64 {
    // Rust prints the shortest decimal that round-trips, and parses decimals exactly.
    format!("{x}").parse().unwrap_or(x as f64)
}

/// Python's `round(x)` for the non-negative values used here: ties go to even.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

impl OptimConfig {
    /// Nominal gradient accumulation before the run-length cap: `max(round(nbs / batch), 1)`.
    /// This is the value weight decay is scaled with.
    pub fn uncapped_accumulate(&self) -> usize {
        (round_half_even(self.nbs as f64 / self.batch.max(1) as f64) as usize).max(1)
    }

    /// Nominal gradient accumulation, capped at the run's total iterations as the trainer does
    /// (no cap while `batches_per_epoch` is still 0, i.e. unknown).
    pub fn nominal_accumulate(&self) -> usize {
        let total = self.batches_per_epoch * self.epochs;
        let acc = self.uncapped_accumulate();
        if total == 0 {
            acc
        } else {
            acc.min(total)
        }
    }

    /// Weight decay scaled to the effective batch: `weight_decay · batch · accumulate / nbs`
    /// (0.0005 at batch 16, accumulate 4).
    pub fn scaled_weight_decay(&self) -> f64 {
        widen(self.weight_decay) * self.batch as f64 * self.uncapped_accumulate() as f64 / self.nbs as f64
    }

    /// Warmup iterations: `round(min(warmup_epochs, epochs − 1) · batches_per_epoch)`, 0 when
    /// that epoch count is not positive. No minimum (this version has no 100-iteration floor).
    pub fn warmup_iterations(&self) -> usize {
        let warmup_epochs = widen(self.warmup_epochs).min(self.epochs.saturating_sub(1) as f64);
        if warmup_epochs > 0.0 {
            round_half_even(warmup_epochs * self.batches_per_epoch as f64) as usize
        } else {
            0
        }
    }

    /// The learning-rate factor of `epoch` (see [`lr_factor`]).
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        lr_factor(epoch, self.epochs, widen(self.lrf), self.cos_lr)
    }
}

/// The per-epoch learning-rate factor lf(e) of the reference's `LambdaLR` (stepped at the start
/// of each epoch, so epoch `e` trains at `initial_lr · lf(e)`).
///
/// - linear: `max(1 − e/E, 0) · (1 − lrf) + lrf`
/// - cosine: `max((1 − cos(π·e/E)) / 2, 0) · (lrf − 1) + 1`
///
/// Both run from 1 at e = 0 to `lrf` at e = E.
pub fn lr_factor(epoch: usize, epochs: usize, lrf: f64, cos_lr: bool) -> f64 {
    let e = epoch as f64;
    let n = epochs as f64;
    if cos_lr {
        ((1.0 - (e * std::f64::consts::PI / n).cos()) / 2.0).max(0.0) * (lrf - 1.0) + 1.0
    } else {
        (1.0 - e / n).max(0.0) * (1.0 - lrf) + lrf
    }
}

/// `numpy.interp(x, [0, x1], [y0, y1])` for `x ≥ 0`, with NumPy's arithmetic
/// (`slope · (x − 0) + y0`, exact `y1` at and past `x1`), so warmup values match bit for bit.
pub fn interp(x: usize, x1: usize, y0: f64, y1: f64) -> f64 {
    if x >= x1 {
        return y1;
    }
    let slope = (y1 - y0) / x1 as f64;
    slope * x as f64 + y0
}

/// The optimizer a run uses: `name` is the `optimizer=` argument (`auto` or an explicit name,
/// any case); `base` carries the user's hyperparameters and run size.
///
/// `auto` follows the reference: with `iterations = ceil(n_train_images / max(batch, nbs)) ·
/// epochs`, more than 10,000 iterations → MuSGD at lr 0.01, otherwise AdamW at
/// `lr = round(0.002 · 5 / (4 + nc), 6)`; both are built with momentum / beta1 0.9 and start the
/// bias warmup at 0. An explicit name keeps `lr0`, builds with `momentum` and keeps
/// `warmup_bias_lr`.
pub fn resolve_optimizer(name: &str, base: &OptimConfig, n_train_images: usize, nc: usize) -> Result<OptimConfig> {
    let mut cfg = base.clone();
    if name.eq_ignore_ascii_case("auto") {
        let per_epoch = n_train_images.div_ceil(base.batch.max(base.nbs).max(1));
        let iterations = per_epoch * base.epochs;
        let (kind, lr) = if iterations > AUTO_MUSGD_MIN_ITERATIONS {
            (OptimizerKind::MuSgd, 0.01)
        } else {
            (OptimizerKind::AdamW, auto_adamw_lr(nc))
        };
        cfg.kind = kind;
        cfg.lr0 = lr as f32;
        cfg.build_momentum = 0.9;
        cfg.warmup_bias_lr = 0.0;
    } else {
        cfg.kind = OptimizerKind::from_name(name)?;
        cfg.build_momentum = base.momentum;
    }
    Ok(cfg)
}

/// The reference's fitted AdamW learning rate, `round(0.002 · 5 / (4 + nc), 6)`
/// (0.000119 for 80 classes).
pub fn auto_adamw_lr(nc: usize) -> f64 {
    let lr = 0.002 * 5.0 / (4.0 + nc as f64);
    // Python's round(x, 6) is the correctly rounded 6-decimal value; formatting does the same.
    format!("{lr:.6}").parse().unwrap_or(lr)
}

/// The learning-rate schedule and warmup of one run, as the optimizer applies them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Epochs in the run (E in lf).
    pub epochs: usize,
    /// Final learning-rate fraction.
    pub lrf: f64,
    /// Cosine decay instead of linear.
    pub cos_lr: bool,
    /// Warmup iterations (0: no warmup).
    pub warmup_iterations: usize,
    /// Start of the bias groups' warmup ramp.
    pub warmup_bias_lr: f64,
    /// Start of the momentum ramp.
    pub warmup_momentum: f64,
    /// End of the momentum ramp (`args.momentum`).
    pub momentum: f64,
    /// Nominal accumulation, reached at the end of warmup.
    pub accumulate: usize,
}

impl Schedule {
    /// The schedule of a configuration.
    pub fn from_config(cfg: &OptimConfig) -> Self {
        Schedule {
            epochs: cfg.epochs,
            lrf: widen(cfg.lrf),
            cos_lr: cfg.cos_lr,
            warmup_iterations: cfg.warmup_iterations(),
            warmup_bias_lr: widen(cfg.warmup_bias_lr),
            warmup_momentum: widen(cfg.warmup_momentum),
            momentum: widen(cfg.momentum),
            accumulate: cfg.nominal_accumulate(),
        }
    }

    /// lf(epoch).
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        lr_factor(epoch, self.epochs, self.lrf, self.cos_lr)
    }

    /// Whether iteration `ni` is inside warmup (`ni ≤ nw`, with `nw > 0`).
    pub fn in_warmup(&self, ni: usize) -> bool {
        self.warmup_iterations > 0 && ni <= self.warmup_iterations
    }

    /// Accumulation during warmup: `max(1, round(interp(ni, [0, nw], [1, nominal])))`,
    /// ties to even as NumPy rounds.
    pub fn warmup_accumulate(&self, ni: usize) -> usize {
        let x = interp(ni, self.warmup_iterations, 1.0, self.accumulate as f64);
        (round_half_even(x) as usize).max(1)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn widen_recovers_decimal_values() {
        assert_eq!(widen(0.01), 0.01f64);
        assert_eq!(widen(0.937), 0.937f64);
        assert_eq!(widen(0.000119), 0.000119f64);
        assert_eq!(widen(0.0), 0.0);
    }

    #[test]
    fn linear_and_cosine_lr_factor() {
        let lrf = 0.01;
        // Linear: 1 at the start, lrf at the end, straight line between.
        assert_eq!(lr_factor(0, 100, lrf, false), 1.0);
        assert!((lr_factor(100, 100, lrf, false) - lrf).abs() < 1e-15);
        assert!((lr_factor(50, 100, lrf, false) - (0.5 * 0.99 + 0.01)).abs() < 1e-15);
        assert!((lr_factor(25, 100, lrf, false) - (0.75 * 0.99 + 0.01)).abs() < 1e-15);
        // Past the end the linear factor is clamped at lrf.
        assert!((lr_factor(120, 100, lrf, false) - lrf).abs() < 1e-15);
        // Cosine: same endpoints, midpoint halfway, slow at both ends.
        assert_eq!(lr_factor(0, 100, lrf, true), 1.0);
        assert!((lr_factor(100, 100, lrf, true) - lrf).abs() < 1e-15);
        assert!((lr_factor(50, 100, lrf, true) - (1.0 + lrf) / 2.0).abs() < 1e-15);
        let c10 = lr_factor(10, 100, lrf, true);
        let expect = (1.0 - (0.1 * std::f64::consts::PI).cos()) / 2.0 * (lrf - 1.0) + 1.0;
        assert!((c10 - expect).abs() < 1e-15);
        assert!(c10 > lr_factor(10, 100, lrf, false), "cosine decays slower early on");
        // Exact expression values the reference computes for epoch 1 of 100.
        assert_eq!(lr_factor(1, 100, 0.01, false), (1.0 - 1.0 / 100.0) * (1.0 - 0.01) + 0.01);
    }

    #[test]
    fn interp_matches_numpy_bits() {
        // Generated with the reference environment (numpy, float64):
        //   nw = 300; lf = lambda x: max(1 - x / 100, 0) * (1.0 - 0.01) + 0.01
        //   [float(np.interp(ni, [0, nw], [0.1, 0.03 * lf(0)])).hex() for ni in [0, 1, 7, 150, 299, 300]]
        //   [float(np.interp(ni, [0, nw], [0.8, 0.937])).hex() for ni in [0, 1, 7, 150, 299, 300]]
        let nis = [0, 1, 7, 150, 299, 300];
        let lr_bits = [
            0x3FB999999999999Au64,
            0x3FB98A4EEA9073C8,
            0x3FB92E8ED05990DD,
            0x3FB0A3D70A3D70A4,
            0x3F9EF57CA7A9B600,
            0x3F9EB851EB851EB8,
        ];
        let mom_bits = [
            0x3FE999999999999Au64,
            0x3FE99D574CA65A2B,
            0x3FE9B3C97EF2DD91,
            0x3FEBCAC083126E98,
            0x3FEDF829B97E8305,
            0x3FEDFBE76C8B4396,
        ];
        let target = 0.03 * lr_factor(0, 100, 0.01, false);
        for (k, &ni) in nis.iter().enumerate() {
            assert_eq!(interp(ni, 300, 0.1, target).to_bits(), lr_bits[k], "lr at {ni}");
            assert_eq!(interp(ni, 300, 0.8, 0.937).to_bits(), mom_bits[k], "momentum at {ni}");
        }
    }

    #[test]
    fn accumulate_ramp_rounds_half_to_even() {
        // [int(np.interp(ni, [0, 300], [1, 4]).round()) for ni in [0, 49, 50, 51, 149, 150, 250, 251, 300]]
        // → [1, 1, 2, 2, 2, 2, 4, 4, 4]: 1.5 → 2, 2.5 → 2, 3.5 → 4.
        let cfg = OptimConfig { batches_per_epoch: 100, ..OptimConfig::default() };
        let s = Schedule::from_config(&cfg);
        assert_eq!(s.warmup_iterations, 300);
        assert_eq!(s.accumulate, 4);
        let got: Vec<usize> =
            [0, 49, 50, 51, 149, 150, 250, 251, 300].iter().map(|&ni| s.warmup_accumulate(ni)).collect();
        assert_eq!(got, [1, 1, 2, 2, 2, 2, 4, 4, 4]);
    }

    #[test]
    fn accumulation_weight_decay_and_warmup_length() {
        let mut cfg = OptimConfig { batches_per_epoch: 10, ..OptimConfig::default() };
        assert_eq!(cfg.uncapped_accumulate(), 4);
        assert_eq!(cfg.scaled_weight_decay(), 0.0005);
        cfg.batch = 24; // 64/24 = 2.67 → 3; decay 5e-4·24·3/64
        assert_eq!(cfg.uncapped_accumulate(), 3);
        assert_eq!(cfg.scaled_weight_decay(), 0.0005 * 24.0 * 3.0 / 64.0);
        cfg.batch = 128; // round(0.5) = 0 → at least 1
        assert_eq!(cfg.uncapped_accumulate(), 1);
        assert_eq!(cfg.scaled_weight_decay(), 0.0005 * 128.0 / 64.0);
        // The cap by total iterations changes accumulate but not the decay scaling.
        let tiny = OptimConfig { batches_per_epoch: 1, epochs: 2, ..OptimConfig::default() };
        assert_eq!(tiny.nominal_accumulate(), 2);
        assert_eq!(tiny.scaled_weight_decay(), 0.0005);
        assert_eq!(OptimConfig::default().nominal_accumulate(), 4, "unknown run length: no cap");
        // Warmup: min(3, E − 1) epochs of iterations, rounded half to even; none for one epoch.
        assert_eq!(cfg.warmup_iterations(), 30);
        assert_eq!(OptimConfig { epochs: 2, ..cfg.clone() }.warmup_iterations(), 10);
        assert_eq!(OptimConfig { epochs: 1, ..cfg.clone() }.warmup_iterations(), 0);
        let half = OptimConfig { warmup_epochs: 0.5, batches_per_epoch: 5, ..cfg.clone() };
        assert_eq!(half.warmup_iterations(), 2, "round(2.5) = 2 as in Python");
        assert_eq!(OptimConfig { warmup_epochs: 0.0, ..cfg }.warmup_iterations(), 0);
    }

    #[test]
    fn auto_selection_rule() {
        let base = OptimConfig { epochs: 100, batch: 16, ..OptimConfig::default() };
        // COCO: 117,266 images → ceil(117266/64) = 1833 per epoch → 183,300 iterations → MuSGD.
        let c = resolve_optimizer("auto", &base, 117_266, 80).unwrap();
        assert_eq!(c.kind, OptimizerKind::MuSgd);
        assert_eq!((c.lr0, c.build_momentum, c.warmup_bias_lr), (0.01, 0.9, 0.0));
        assert_eq!(c.momentum, 0.937, "warmup still ramps to args.momentum");
        // Exactly 10,000 iterations is not more than 10,000 → AdamW; one image more → MuSGD.
        let c = resolve_optimizer("auto", &base, 6400, 80).unwrap();
        assert_eq!(c.kind, OptimizerKind::AdamW);
        assert_eq!(c.lr0, 0.000119);
        assert_eq!((c.build_momentum, c.warmup_bias_lr), (0.9, 0.0));
        assert_eq!(resolve_optimizer("AUTO", &base, 6401, 80).unwrap().kind, OptimizerKind::MuSgd);
        // max(batch, nbs): a batch above 64 divides by the batch.
        let big = OptimConfig { batch: 128, ..base.clone() };
        assert_eq!(resolve_optimizer("auto", &big, 12_801, 80).unwrap().kind, OptimizerKind::MuSgd);
        assert_eq!(resolve_optimizer("auto", &big, 12_800, 80).unwrap().kind, OptimizerKind::AdamW);
        // The fitted AdamW rate: round(0.002·5/(4+nc), 6).
        assert_eq!(auto_adamw_lr(80), 0.000119);
        assert_eq!(auto_adamw_lr(1), 0.002);
        assert_eq!(auto_adamw_lr(3), 0.001429);
        assert_eq!(auto_adamw_lr(10), 0.000714);
        // Explicit names keep lr0, momentum and the bias warmup start.
        let c = resolve_optimizer("sgd", &base, 10, 80).unwrap();
        assert_eq!(c.kind, OptimizerKind::Sgd);
        assert_eq!((c.lr0, c.build_momentum, c.warmup_bias_lr), (0.01, 0.937, 0.1));
        assert_eq!(resolve_optimizer("MuSGD", &base, 10, 80).unwrap().kind, OptimizerKind::MuSgd);
        assert_eq!(resolve_optimizer("AdamW", &base, 10, 80).unwrap().build_momentum, 0.937);
        assert!(resolve_optimizer("RMSProp", &base, 10, 80).is_err());
        assert!(resolve_optimizer("lion", &base, 10, 80).is_err());
    }
}
