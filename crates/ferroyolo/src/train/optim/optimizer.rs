//! The optimizer: parameter groups, per-parameter state and the update rules.

use super::groups::{build_groups, GroupKind, ParamGroup, ParamSpec};
use super::newton_schulz::{muon_shape_scale, newton_schulz};
use super::state::{OptimizerState, ParamBuffers};
use super::{interp, widen, OptimConfig, OptimizerKind, Schedule, ADAM_EPS, MUON_SCALE, SGD_SCALE};
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use std::collections::HashMap;

/// SGD, Adam, AdamW or MuSGD over named parameters, with the reference trainer's groups,
/// schedule, warmup and accumulation.
///
/// Parameters are identified by name; [`Optimizer::step`] takes any subset of them (a
/// parameter without a gradient, e.g. a frozen layer, is simply left out, as PyTorch skips
/// `grad is None`). State is created on a parameter's first update.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    groups: Vec<ParamGroup>,
    specs: Vec<ParamSpec>,
    /// name → (parameter index, group index)
    lookup: HashMap<String, (usize, usize)>,
    /// Per parameter, by index in `specs`.
    states: Vec<ParamBuffers>,
    schedule: Schedule,
    accumulate: usize,
}

/// One parameter's update, prepared for a parallel step.
struct Job<'a> {
    values: &'a mut [f32],
    grad: &'a [f32],
    state: &'a mut ParamBuffers,
    group: &'a ParamGroup,
    spec: &'a ParamSpec,
}

impl Optimizer {
    /// The optimizer of a resolved configuration (see [`super::resolve_optimizer`]) over the
    /// model's parameters in registration order: the reference's groups (8 under MuSGD, with the
    /// class branches at 3× the learning rate, else 3), weight decay scaled by
    /// `batch·accumulate/nbs`, and the run's schedule.
    ///
    /// # Panics
    /// When two parameters share a name.
    pub fn new(cfg: &OptimConfig, params: &[ParamSpec]) -> Self {
        let groups = build_groups(
            cfg.kind,
            widen(cfg.lr0),
            widen(cfg.build_momentum),
            cfg.scaled_weight_decay(),
            cfg.nesterov,
            params,
        );
        Self::from_groups(cfg.kind, groups, params, Schedule::from_config(cfg))
            .unwrap_or_else(|e| panic!("Optimizer::new: {e:#}"))
    }

    /// An optimizer over explicit groups, as `torch.optim.X(param_groups)` would be built.
    /// Every group member must be one of `params`, and in one group only.
    pub fn from_groups(
        kind: OptimizerKind,
        groups: Vec<ParamGroup>,
        params: &[ParamSpec],
        schedule: Schedule,
    ) -> Result<Self> {
        let mut index = HashMap::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            ensure!(index.insert(p.name.as_str(), i).is_none(), "parameter {} registered twice", p.name);
        }
        let mut lookup = HashMap::with_capacity(params.len());
        for (gi, g) in groups.iter().enumerate() {
            ensure!(!(g.use_muon && kind != OptimizerKind::MuSgd), "use_muon groups need MuSGD");
            for name in &g.params {
                let Some(&pi) = index.get(name.as_str()) else {
                    bail!("group {gi} names parameter {name}, which is not registered");
                };
                if g.use_muon {
                    let rank = params[pi].shape.len();
                    ensure!(rank >= 2, "Muon needs a matrix or conv weight; {name} has rank {rank}");
                }
                ensure!(lookup.insert(name.clone(), (pi, gi)).is_none(), "parameter {name} is in two groups");
            }
        }
        let accumulate = schedule.accumulate;
        Ok(Optimizer {
            kind,
            groups,
            specs: params.to_vec(),
            lookup,
            states: vec![ParamBuffers::default(); params.len()],
            schedule,
            accumulate,
        })
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// The parameter groups with their current hyperparameters.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Mutable access to the groups' hyperparameters (e.g. to change the weight decay after a
    /// batch-size change, as the reference does after an out-of-memory retry).
    pub fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    /// The schedule applied by [`Optimizer::set_iteration`].
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Per-parameter state (momentum buffers, Adam moments) of a parameter, if it has any yet.
    pub fn param_state(&self, name: &str) -> Option<&ParamBuffers> {
        self.lookup.get(name).map(|&(pi, _)| &self.states[pi])
    }

    /// Sets every group's learning rate and momentum, and the accumulation, for global
    /// iteration `ni = i + batches_per_epoch · epoch` of `epoch`.
    ///
    /// Outside warmup the learning rate is `initial_lr · lf(epoch)` (the reference's `LambdaLR`,
    /// stepped at each epoch start) and momentum and accumulation keep their last values. During
    /// warmup (`ni ≤ nw`) they are interpolated over `[0, nw]`: accumulation 1 → nominal;
    /// learning rate from `warmup_bias_lr` (bias groups) or 0 (others) to
    /// `initial_lr · lf(epoch)`; SGD momentum from `warmup_momentum` to `momentum`.
    pub fn set_iteration(&mut self, epoch: usize, ni: usize) {
        let lf = self.schedule.lr_factor(epoch);
        let s = &self.schedule;
        if !s.in_warmup(ni) {
            for g in &mut self.groups {
                g.lr = g.initial_lr * lf;
            }
            return;
        }
        let nw = s.warmup_iterations;
        self.accumulate = s.warmup_accumulate(ni);
        let has_momentum = self.kind.has_momentum();
        for g in &mut self.groups {
            let start = if g.kind == GroupKind::Bias { s.warmup_bias_lr } else { 0.0 };
            g.lr = interp(ni, nw, start, g.initial_lr * lf);
            if has_momentum {
                g.momentum = interp(ni, nw, s.warmup_momentum, s.momentum);
            }
        }
    }

    /// Batches to accumulate before a step: ramps from 1 to `nominal_accumulate` during warmup.
    pub fn accumulate(&self) -> usize {
        self.accumulate
    }

    /// Whether the trainer steps after the backward pass of iteration `ni`, given the iteration
    /// of the previous step (`None` before the first): `ni − last ≥ accumulate`, with the
    /// reference's `last_opt_step = −1` start.
    pub fn step_due(&self, ni: usize, last_step: Option<usize>) -> bool {
        let since = match last_step {
            Some(last) => ni.saturating_sub(last),
            None => ni + 1,
        };
        since >= self.accumulate
    }

    /// Current learning rate per group, for logging (`lr/pg0`, `lr/pg1`, ...).
    pub fn lrs(&self) -> Vec<f32> {
        self.groups.iter().map(|g| g.lr as f32).collect()
    }

    /// Current learning rate per group at full precision.
    pub fn lrs_f64(&self) -> Vec<f64> {
        self.groups.iter().map(|g| g.lr).collect()
    }

    /// Applies one update to each given `(name, values, grad)` with its group's current
    /// hyperparameters. Parameters are independent, so they are updated in parallel.
    ///
    /// # Panics
    /// On an unknown or repeated name, or when a length differs from the registered shape.
    pub fn step(&mut self, params: &mut [(&str, &mut [f32], &[f32])]) {
        let mut slots: Vec<Option<&mut ParamBuffers>> = self.states.iter_mut().map(Some).collect();
        let mut jobs = Vec::with_capacity(params.len());
        for (name, values, grad) in params.iter_mut() {
            let Some(&(pi, gi)) = self.lookup.get(*name) else {
                panic!("Optimizer::step: parameter {name} is not in any group");
            };
            let spec = &self.specs[pi];
            let n = spec.numel();
            assert!(
                values.len() == n && grad.len() == n,
                "Optimizer::step: {name} has {} values and {} gradients, its shape {:?} has {n}",
                values.len(),
                grad.len(),
                spec.shape
            );
            let state = slots[pi].take().unwrap_or_else(|| panic!("Optimizer::step: {name} given twice"));
            jobs.push(Job { values, grad, state, group: &self.groups[gi], spec });
        }
        // Largest first, so the costly orthogonalisations do not end up last on one thread.
        jobs.sort_by_key(|j| std::cmp::Reverse(j.values.len()));
        let kind = self.kind;
        jobs.into_par_iter().for_each(|job| update_param(kind, job));
    }

    /// A snapshot of everything that evolves during training (group hyperparameters,
    /// accumulation, per-parameter buffers), for an exact resume.
    pub fn state_dict(&self) -> OptimizerState {
        OptimizerState {
            kind: self.kind,
            accumulate: self.accumulate,
            groups: self.groups.clone(),
            buffers: self
                .specs
                .iter()
                .zip(&self.states)
                .filter(|(_, s)| !s.is_empty())
                .map(|(p, s)| (p.name.clone(), s.clone()))
                .collect(),
        }
    }

    /// Restores a snapshot from [`Optimizer::state_dict`] taken from an optimizer over the same
    /// parameters and groups. Group hyperparameters come from the snapshot, as PyTorch's
    /// `load_state_dict` restores them.
    pub fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        ensure!(state.kind == self.kind, "optimizer state is {}, this optimizer is {}", state.kind, self.kind);
        ensure!(
            state.groups.len() == self.groups.len(),
            "optimizer state has {} parameter groups, this optimizer {}",
            state.groups.len(),
            self.groups.len()
        );
        for (i, (saved, mine)) in state.groups.iter().zip(&self.groups).enumerate() {
            ensure!(
                saved.params == mine.params && saved.kind == mine.kind && saved.use_muon == mine.use_muon,
                "parameter group {i} ({}) differs between the saved state and this model",
                mine.label()
            );
        }
        let mut states = vec![ParamBuffers::default(); self.specs.len()];
        for (name, buffers) in &state.buffers {
            let Some(&(pi, _)) = self.lookup.get(name) else {
                bail!("optimizer state for unknown parameter {name}");
            };
            let n = self.specs[pi].numel();
            for (key, b) in buffers.named() {
                ensure!(b.len() == n, "{name}.{key} has {} values, the parameter {n}", b.len());
            }
            states[pi] = buffers.clone();
        }
        self.groups = state.groups.clone();
        self.states = states;
        self.accumulate = state.accumulate.max(1);
        Ok(())
    }

    /// [`Optimizer::new`] followed by [`Optimizer::load_state_dict`].
    pub fn from_state_dict(cfg: &OptimConfig, params: &[ParamSpec], state: &OptimizerState) -> Result<Self> {
        let mut opt = Optimizer::new(cfg, params);
        opt.load_state_dict(state)?;
        Ok(opt)
    }
}

/// One parameter's update with its group's rule.
fn update_param(kind: OptimizerKind, job: Job<'_>) {
    let Job { values, grad, state, group, spec } = job;
    match kind {
        OptimizerKind::Sgd => {
            sgd_update(values, grad, &mut state.momentum_buffer, group, group.lr, true);
        }
        OptimizerKind::MuSgd if group.use_muon => {
            muon_update(values, grad, &mut state.momentum_buffer, group, &spec.shape);
            sgd_update(values, grad, &mut state.momentum_buffer_sgd, group, group.lr * SGD_SCALE, false);
        }
        OptimizerKind::MuSgd => {
            sgd_update(values, grad, &mut state.momentum_buffer, group, group.lr, false);
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            adam_update(values, grad, state, group, kind == OptimizerKind::AdamW);
        }
    }
}

/// SGD with momentum, L2 weight decay and optional Nesterov, as `torch.optim.SGD` (and the SGD
/// half of MuSGD) computes it:
/// `g' = g + wd·p; b = m·b + g'; u = g' + m·b (Nesterov) or b; p −= lr·u`.
///
/// `clone_first`: PyTorch's SGD starts the buffer as a copy of g'; MuSGD starts it at zero and
/// applies the same recurrence (equal values; only the sign of a zero can differ).
fn sgd_update(p: &mut [f32], g: &[f32], buf: &mut Option<Vec<f32>>, group: &ParamGroup, lr: f64, clone_first: bool) {
    let m = group.momentum as f32;
    let wd = group.weight_decay as f32;
    let decay = group.weight_decay != 0.0;
    let alpha = (-lr) as f32;
    let fresh = buf.is_none() && clone_first;
    let b = buf.get_or_insert_with(|| vec![0.0; p.len()]);
    for ((pi, &gi), bi) in p.iter_mut().zip(g).zip(b.iter_mut()) {
        // PyTorch's `add(x, alpha=a)` is a fused multiply-add; `mul_` then `add_` round twice.
        let gd = if decay { pi.mul_add(wd, gi) } else { gi };
        *bi = if fresh { gd } else { *bi * m + gd };
        let u = if group.nesterov { bi.mul_add(m, gd) } else { *bi };
        *pi = u.mul_add(alpha, *pi);
    }
}

/// The Muon half of MuSGD for one matrix or conv weight: momentum as an exponential average,
/// `b = β·b + (1−β)·g`, Nesterov look-ahead `u = β·b + (1−β)·g`, orthogonalised and scaled by
/// the shape factor, then `p −= lr·0.2·O`. Weight decay belongs to the SGD half only.
fn muon_update(p: &mut [f32], g: &[f32], buf: &mut Option<Vec<f32>>, group: &ParamGroup, shape: &[usize]) {
    let beta = group.momentum as f32;
    let one_minus = (1.0 - group.momentum) as f32;
    let b = buf.get_or_insert_with(|| vec![0.0; p.len()]);
    let mut u = vec![0f32; p.len()];
    for ((bi, &gi), ui) in b.iter_mut().zip(g).zip(u.iter_mut()) {
        *bi = gi.mul_add(one_minus, *bi * beta);
        *ui = if group.nesterov { gi.mul_add(one_minus, *bi * beta) } else { *bi };
    }
    let rows = shape[0];
    let cols = p.len() / rows.max(1);
    let o = newton_schulz(&u, rows, cols);
    let scale = muon_shape_scale(shape) as f32;
    let alpha = (-(group.lr * MUON_SCALE)) as f32;
    for (pi, &oi) in p.iter_mut().zip(&o) {
        *pi = (oi * scale).mul_add(alpha, *pi);
    }
}

/// PyTorch's `lerp` as its CPU kernel evaluates it: `start + w·(end − start)` for |w| < 0.5,
/// else `end − (1 − w)·(end − start)`, each as one fused multiply-add.
#[inline]
pub(crate) fn lerp(start: f32, end: f32, w: f32) -> f32 {
    let diff = end - start;
    if w.abs() < 0.5 {
        w.mul_add(diff, start)
    } else {
        (w - 1.0).mul_add(diff, end)
    }
}

/// Adam / AdamW as `torch.optim.Adam(W)`'s single-tensor path:
/// `m = lerp(m, g, 1−β1); v = β2·v + (1−β2)·g²; p −= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)`,
/// with weight decay either added to the gradient (Adam) or applied to `p` first (AdamW).
fn adam_update(p: &mut [f32], g: &[f32], state: &mut ParamBuffers, group: &ParamGroup, decoupled: bool) {
    let n = p.len();
    state.step += 1;
    let m = state.exp_avg.get_or_insert_with(|| vec![0.0; n]);
    let v = state.exp_avg_sq.get_or_insert_with(|| vec![0.0; n]);
    let (lr, wd, beta1, beta2) = (group.lr, group.weight_decay, group.momentum, group.beta2);
    let decay = wd != 0.0;
    let shrink = (1.0 - lr * wd) as f32;
    let wd32 = wd as f32;
    let w1 = (1.0 - beta1) as f32;
    let b2 = beta2 as f32;
    let w2 = (1.0 - beta2) as f32;
    // Python evaluates these in double (`beta ** step` is C pow).
    let t = state.step as f64;
    let step_size = lr / (1.0 - beta1.powf(t));
    let bc2_sqrt = (1.0 - beta2.powf(t)).powf(0.5) as f32;
    let neg_step = (-step_size) as f32;
    let eps = ADAM_EPS as f32;
    for i in 0..n {
        let mut pi = p[i];
        let mut gi = g[i];
        if decay {
            if decoupled {
                pi *= shrink;
            } else {
                gi = pi.mul_add(wd32, gi);
            }
        }
        m[i] = lerp(m[i], gi, w1);
        v[i] = v[i] * b2 + w2 * gi * gi;
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] = pi + neg_step * m[i] / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs shared with the PyTorch oracle below: exact in float32 on both sides.
    fn p0(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0).collect()
    }
    fn gr(n: usize, s: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 13 + s * 29) % 23) as f32 - 11.0) / 5.0).collect()
    }

    /// Runs the oracle's three steps: `w` (2×3, decay 5e-4) and `b` (4, no decay), with the
    /// hyperparameters changed before each step as warmup would.
    fn run(kind: OptimizerKind, beta1: f64, lrs: [f64; 3], moms: Option<[f64; 3]>) -> Vec<f32> {
        let specs = [ParamSpec::new("w", vec![2, 3], false), ParamSpec::new("b", vec![4], false)];
        let mk = |kind, wd: f64, name: &str| ParamGroup {
            params: vec![name.to_string()],
            ..ParamGroup::new(kind, 0.01, beta1, wd, true)
        };
        let mut groups = vec![mk(GroupKind::Weight, 5e-4, "w"), mk(GroupKind::Bias, 0.0, "b")];
        if kind.is_adam() {
            groups.iter_mut().for_each(|g| g.nesterov = false);
        }
        let schedule = Schedule::from_config(&OptimConfig::default());
        let mut opt = Optimizer::from_groups(kind, groups, &specs, schedule).unwrap();
        let mut w = p0(6);
        let mut b: Vec<f32> = p0(4).iter().map(|v| v + 1.0).collect();
        for s in 0..3 {
            for g in opt.groups_mut() {
                g.lr = lrs[s];
                if let Some(m) = moms {
                    g.momentum = m[s];
                }
            }
            let (gw, gb) = (gr(6, s), gr(4, s + 7));
            opt.step(&mut [("w", &mut w, &gw), ("b", &mut b, &gb)]);
        }
        w.into_iter().chain(b).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], ulps: u32, what: &str) {
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let d = (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
            assert!(d <= ulps as u64, "{what}[{i}]: {a} vs torch {b} ({d} ulps)");
        }
    }

    // The expected values come from PyTorch 2.15 (CPU) in the reference environment:
    //
    //   import torch, numpy as np
    //   f = np.float32
    //   def p0(n): return torch.tensor([f((i*37 % 19) - 9) / f(7) for i in range(n)])
    //   def gr(n, s): return torch.tensor([f(((i*13 + s*29) % 23) - 11) / f(5) for i in range(n)])
    //   lrs, moms = [0.01, 0.02, 0.005], [0.8, 0.85, 0.937]
    //   def run(make, hyper):
    //       w = torch.nn.Parameter(p0(6).reshape(2, 3)); b = torch.nn.Parameter(p0(4) + 1)
    //       opt = make([{"params": [w], "weight_decay": 5e-4}, {"params": [b], "weight_decay": 0.0}])
    //       for s in range(3):
    //           for g in opt.param_groups: hyper(g, s)
    //           w.grad, b.grad = gr(6, s).reshape(2, 3), gr(4, s + 7)
    //           opt.step()
    //       return [float(x) for x in w.detach().flatten()] + [float(x) for x in b.detach()]
    //   def sgd_h(g, s): g["lr"], g["momentum"] = lrs[s], moms[s]
    //   def adam_h(g, s): g["lr"] = lrs[s] / 10
    //   run(lambda gs: torch.optim.SGD(gs, lr=0.01, momentum=0.9, nesterov=True), sgd_h)
    //   run(lambda gs: torch.optim.AdamW(gs, lr=0.001, betas=(0.937, 0.999), weight_decay=0.0), adam_h)
    //   run(lambda gs: torch.optim.Adam(gs, lr=0.001, betas=(0.937, 0.999), weight_decay=0.0), adam_h)
    const TORCH_SGD: [f32; 10] =
        [-1.1666076, 1.2223954, 1.2095046, 0.8843403, 0.87144935, 0.7366776, -0.26329175, 2.247705, 2.112926, 1.954188];
    const TORCH_ADAMW: [f32; 10] = [
        -1.2825232,
        1.2829576,
        1.1457016,
        0.9969048,
        0.8590709,
        0.7135762,
        -0.28642252,
        2.2856834,
        2.1412559,
        1.9974257,
    ];
    const TORCH_ADAM: [f32; 10] = [
        -1.2825252,
        1.2829593,
        1.1457031,
        0.9969063,
        0.8590714,
        0.7135769,
        -0.28642252,
        2.2856834,
        2.1412559,
        1.9974257,
    ];

    #[test]
    fn sgd_nesterov_weight_decay_matches_torch() {
        let got = run(OptimizerKind::Sgd, 0.9, [0.01, 0.02, 0.005], Some([0.8, 0.85, 0.937]));
        assert_close(&got, &TORCH_SGD, 0, "SGD");
    }

    #[test]
    fn adamw_matches_torch() {
        let got = run(OptimizerKind::AdamW, 0.937, [0.001, 0.002, 0.0005], None);
        assert_close(&got, &TORCH_ADAMW, 0, "AdamW");
    }

    #[test]
    fn adam_matches_torch() {
        let got = run(OptimizerKind::Adam, 0.937, [0.001, 0.002, 0.0005], None);
        assert_close(&got, &TORCH_ADAM, 0, "Adam");
        // Decoupled and L2 decay differ on the decayed tensor only.
        assert_ne!(TORCH_ADAM[..6], TORCH_ADAMW[..6]);
    }

    #[test]
    fn sgd_against_closed_form() {
        // One parameter, two steps, by hand: no momentum history on step 1 (buffer = g').
        let specs = [ParamSpec::new("x", vec![1], false)];
        let g = ParamGroup { params: vec!["x".into()], ..ParamGroup::new(GroupKind::Weight, 0.1, 0.5, 0.25, true) };
        let mut opt =
            Optimizer::from_groups(OptimizerKind::Sgd, vec![g], &specs, Schedule::from_config(&OptimConfig::default()))
                .unwrap();
        let mut x = [2.0f32];
        opt.step(&mut [("x", &mut x, &[1.0])]);
        // g' = 1 + 0.25·2 = 1.5; b = 1.5; u = 1.5 + 0.5·1.5 = 2.25; x = 2 − 0.225
        assert_eq!(x[0], 1.775);
        opt.step(&mut [("x", &mut x, &[-1.0])]);
        // g' = −1 + 0.25·1.775 = −0.55625; b = 0.75 − 0.55625 = 0.19375; u = −0.55625 + 0.096875
        let want = 1.775f64 - 0.1 * (-0.55625 + 0.5 * 0.19375);
        assert!((x[0] as f64 - want).abs() < 1e-6, "{} vs {want}", x[0]);
    }

    #[test]
    fn lerp_branches() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 0.75), 2.5);
        assert_eq!(lerp(1.0, 3.0, 1.0), 3.0, "the large-weight branch lands exactly on end");
    }
}
