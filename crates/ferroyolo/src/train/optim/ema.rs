//! Exponential moving average of the model weights (the reference's `ModelEMA`), used for
//! validation and checkpoints.

use super::optimizer::lerp;
use std::collections::HashMap;

/// Largest decay of the average.
pub const EMA_DECAY: f64 = 0.9999;
/// Time constant (in updates) of the decay's ramp from 0 to [`EMA_DECAY`].
pub const EMA_TAU: f64 = 2000.0;

/// An `f32` moving average of every floating-point `state_dict` entry: parameters and also
/// BatchNorm running means and variances (integer entries such as `num_batches_tracked` are not
/// averaged and do not belong here).
#[derive(Clone, Debug, PartialEq)]
pub struct Ema {
    tensors: Vec<(String, Vec<f32>)>,
    index: HashMap<String, usize>,
    updates: usize,
}

impl Ema {
    /// Starts the average at the current model state, with no updates counted.
    ///
    /// # Panics
    /// When two entries share a name.
    pub fn new(params: &[(String, Vec<f32>)]) -> Self {
        Self::with_updates(params, 0)
    }

    /// Starts from a saved average and its update count (resume; the reference stores
    /// `updates` in the checkpoint).
    ///
    /// # Panics
    /// When two entries share a name.
    pub fn with_updates(params: &[(String, Vec<f32>)], updates: usize) -> Self {
        let mut index = HashMap::with_capacity(params.len());
        for (i, (name, _)) in params.iter().enumerate() {
            assert!(index.insert(name.clone(), i).is_none(), "Ema: {name} given twice");
        }
        Ema { tensors: params.to_vec(), index, updates }
    }

    /// The decay after `updates` updates: `0.9999 · (1 − exp(−updates / 2000))`, so early
    /// averages follow the model closely (d ≈ 0.0005 at the first update, 0.63 at 2000).
    pub fn decay_at(updates: usize) -> f64 {
        EMA_DECAY * (1.0 - (-(updates as f64) / EMA_TAU).exp())
    }

    /// Counts one update and moves every entry towards the model: `ema ← d·ema + (1 − d)·model`
    /// with d = [`Ema::decay_at`] of the new count (evaluated as PyTorch's `lerp` with weight
    /// `1 − d`).
    ///
    /// # Panics
    /// When an averaged entry is missing from `model_state` or has another length, or when
    /// `model_state` has an entry the average does not know.
    pub fn update(&mut self, model_state: &[(&str, &[f32])]) {
        self.updates += 1;
        let w = (1.0 - Self::decay_at(self.updates)) as f32;
        let mut seen = vec![false; self.tensors.len()];
        let mut next = 0;
        for &(name, values) in model_state {
            // Usually the order is the registration order: try the next position before hashing.
            let i = match self.tensors.get(next) {
                Some((n, _)) if n == name => next,
                _ => *self.index.get(name).unwrap_or_else(|| panic!("Ema::update: unknown entry {name}")),
            };
            next = i + 1;
            assert!(!seen[i], "Ema::update: {name} given twice");
            seen[i] = true;
            let avg = &mut self.tensors[i].1;
            assert_eq!(avg.len(), values.len(), "Ema::update: {name} changed size");
            for (a, &m) in avg.iter_mut().zip(values) {
                *a = lerp(*a, m, w);
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            panic!("Ema::update: {} missing from the model state", self.tensors[i].0);
        }
    }

    /// Updates so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The averaged entries, in the order given at construction.
    pub fn state(&self) -> &[(String, Vec<f32>)] {
        &self.tensors
    }

    /// One averaged entry by name.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.index.get(name).map(|&i| self.tensors[i].1.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p0(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0).collect()
    }
    fn gr(n: usize, s: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 13 + s * 29) % 23) as f32 - 11.0) / 5.0).collect()
    }

    #[test]
    fn decay_formula() {
        assert_eq!(Ema::decay_at(0), 0.0);
        assert!((Ema::decay_at(1) - 0.9999 * (1.0 - (-1.0f64 / 2000.0).exp())).abs() < 1e-18);
        assert!((Ema::decay_at(2000) - 0.9999 * (1.0 - (-1.0f64).exp())).abs() < 1e-15);
        assert!((Ema::decay_at(100_000) - 0.9999).abs() < 1e-12);
    }

    #[test]
    fn averages_parameters_and_running_stats_as_torch() {
        // PyTorch 2.15 / ultralytics 8.4.190 ModelEMA on a BatchNorm1d(3) (p0/gr as in the
        // optimizer tests), for updates counted from 0 and from 1000:
        //   m = torch.nn.BatchNorm1d(3)
        //   for start in [0, 1000]:
        //       with torch.no_grad(): m.weight.copy_(p0(3)); m.running_mean.copy_(p0(3) + 2)
        //       ema = ModelEMA(m, updates=start)
        //       for s in range(3):
        //           with torch.no_grad(): m.weight.copy_(gr(3, s)); m.running_mean.copy_(gr(3, s + 1) * 3)
        //           ema.update(m)
        //       print(list(ema.ema.weight), list(ema.ema.running_mean))
        // (in place: ModelEMA keeps references to the model's tensors from its first update)
        let expect: [(usize, [f32; 3], [f32; 3]); 2] = [
            (0, [0.19819976, -1.7949061, 0.7981998], [4.194599, -1.8053801, 5.9945993]),
            (1000, [-0.40373167, -0.5915201, 0.30813995], [2.4482367, -1.7273489, 4.2866926]),
        ];
        for (start, weight, running_mean) in expect {
            let init = vec![
                ("bn.weight".to_string(), p0(3)),
                ("bn.running_mean".to_string(), p0(3).iter().map(|v| v + 2.0).collect()),
            ];
            let mut ema = Ema::with_updates(&init, start);
            for s in 0..3 {
                let w = gr(3, s);
                let rm: Vec<f32> = gr(3, s + 1).iter().map(|v| v * 3.0).collect();
                // Entries in another order than registered: matched by name.
                ema.update(&[("bn.running_mean", &rm), ("bn.weight", &w)]);
            }
            assert_eq!(ema.updates(), start + 3);
            assert_eq!(ema.get("bn.weight").unwrap(), weight, "weight from {start}");
            assert_eq!(ema.get("bn.running_mean").unwrap(), running_mean, "running mean from {start}");
        }
    }

    #[test]
    fn update_is_the_convex_combination() {
        let mut ema = Ema::with_updates(&[("a".into(), vec![1.0, -2.0])], 4999);
        ema.update(&[("a", &[3.0, 6.0])]);
        let d = Ema::decay_at(5000);
        for (got, (e, m)) in ema.state()[0].1.iter().zip([(1.0, 3.0), (-2.0, 6.0)]) {
            assert!((*got as f64 - (d * e + (1.0 - d) * m)).abs() < 1e-6);
        }
    }

    #[test]
    #[should_panic(expected = "missing")]
    fn every_entry_must_be_given() {
        let mut ema = Ema::new(&[("a".into(), vec![1.0]), ("bn.running_var".into(), vec![1.0])]);
        ema.update(&[("a", &[2.0])]);
    }
}
