//! Tests across the module: MuSGD against the reference fixture, the yolo26n groups, the
//! schedule as the optimizer applies it, and exact resume.

use super::*;
use crate::data::npy::read_npz;
use std::collections::HashMap;

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn diff(a: &[f32], b: &[f32]) -> Vec<f64> {
    a.iter().zip(b).map(|(&x, &y)| x as f64 - y as f64).collect()
}

/// ‖a − b‖ / ‖b‖ for `f64` vectors.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(b)
}

/// The fixture's groups: w4 and w2 in a Muon group (lr 0.01, momentum 0.9, Nesterov, decay
/// 5e-4), b in a plain SGD group without decay; `use_muon` switches the Muon half on or off.
fn musgd_fixture_optimizer(use_muon: bool) -> Optimizer {
    let specs = [
        ParamSpec::new("w4", vec![16, 8, 3, 3], false),
        ParamSpec::new("w2", vec![32, 24], false),
        ParamSpec::new("b", vec![16], false),
    ];
    let muon = ParamGroup {
        use_muon,
        params: vec!["w4".into(), "w2".into()],
        ..ParamGroup::new(GroupKind::Muon, 0.01, 0.9, 5e-4, true)
    };
    let sgd = ParamGroup { params: vec!["b".into()], ..ParamGroup::new(GroupKind::Bias, 0.01, 0.9, 0.0, true) };
    Optimizer::from_groups(
        OptimizerKind::MuSgd,
        vec![muon, sgd],
        &specs,
        Schedule::from_config(&OptimConfig::default()),
    )
    .unwrap()
}

#[test]
fn musgd_matches_reference_fixture() {
    let dir = crate::fixtures_or_skip!();
    let arrays: HashMap<String, Vec<f32>> = read_npz(dir.join("reference/musgd_steps.npz"))
        .expect("musgd_steps.npz")
        .into_iter()
        .map(|(k, a)| (k, a.data))
        .collect();
    let get = |k: &str| arrays.get(k).unwrap_or_else(|| panic!("fixture has no {k}")).clone();
    let keys = ["w4", "w2", "b"];

    // (1) Continuous run from the initial values, as the reference ran.
    let mut opt = musgd_fixture_optimizer(true);
    let mut ours: Vec<Vec<f32>> = keys.iter().map(|k| get(&format!("init_{k}"))).collect();
    // (2) From the reference's own values before each step, with and without the Muon half, so
    // the Muon contribution can be isolated: the SGD half is computed identically in both.
    let mut full = musgd_fixture_optimizer(true);
    let mut sgd_only = musgd_fixture_optimizer(false);
    let mut before: Vec<Vec<f32>> = ours.clone();
    let mut worst = [0f64; 4];
    for s in 0..3 {
        let grads: Vec<Vec<f32>> = keys.iter().map(|k| get(&format!("step{s}_grad_{k}"))).collect();
        let after: Vec<Vec<f32>> = keys.iter().map(|k| get(&format!("step{s}_after_{k}"))).collect();
        {
            let mut it = ours.iter_mut();
            let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            opt.step(&mut [("w4", a, &grads[0]), ("w2", b, &grads[1]), ("b", c, &grads[2])]);
        }
        let mut from_ref_full = before.clone();
        let mut from_ref_sgd = before.clone();
        for (o, v) in [(&mut full, &mut from_ref_full), (&mut sgd_only, &mut from_ref_sgd)] {
            let mut it = v.iter_mut();
            let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            o.step(&mut [("w4", a, &grads[0]), ("w2", b, &grads[1]), ("b", c, &grads[2])]);
        }
        for (i, k) in keys.iter().enumerate() {
            let d_ref = diff(&after[i], &before[i]);
            let d_ours = diff(&from_ref_full[i], &before[i]);
            let update_err = rel(&d_ours, &d_ref);
            let param_err = diff(&ours[i], &after[i]).iter().fold(0f64, |m, x| m.max(x.abs()));
            let scale = d_ref.iter().fold(0f64, |m, x| m.max(x.abs()));
            if *k == "b" {
                // Plain SGD: no bfloat16 anywhere, so equal up to float32 rounding.
                assert!(update_err < 1e-5, "step {s} {k}: update error {update_err:.3e}");
                assert!(param_err < 1e-6, "step {s} {k}: parameter error {param_err:.3e}");
                continue;
            }
            let d_sgd = diff(&from_ref_sgd[i], &before[i]);
            let muon_ref: Vec<f64> = d_ref.iter().zip(&d_sgd).map(|(a, b)| a - b).collect();
            let muon_ours: Vec<f64> = d_ours.iter().zip(&d_sgd).map(|(a, b)| a - b).collect();
            let muon_err = rel(&muon_ours, &muon_ref);
            // The Muon part is lr·0.2·O with ‖O‖ ≈ √rows: a sanity check on the isolation.
            let rows = if *k == "w4" { 16.0 } else { 24.0 };
            let expect = 0.01 * 0.2 * f64::sqrt(rows) * if *k == "w2" { (32.0f64 / 24.0).sqrt() } else { 1.0 };
            assert!((norm(&muon_ref) / expect - 1.0).abs() < 0.3, "{k}: Muon part {} vs {expect}", norm(&muon_ref));
            eprintln!(
                "MuSGD step {s} {k}: update rel {update_err:.2e}, Muon part rel {muon_err:.2e}, \
                 continuous-run max |param diff| {param_err:.2e} (max |update| {scale:.2e})"
            );
            // bfloat16 Newton–Schulz in the reference: the whole update within 1e-2, the Muon part
            // alone within its bfloat16 noise (about 1.5 %).
            assert!(update_err < 1e-2, "step {s} {k}: update error {update_err:.3e}");
            assert!(muon_err < 4e-2, "step {s} {k}: Muon part error {muon_err:.3e}");
            assert!(param_err < 2e-3 * scale, "step {s} {k}: parameter error {param_err:.3e}");
            let wi = if *k == "w4" { 0 } else { 2 };
            worst[wi] = worst[wi].max(update_err);
            worst[wi + 1] = worst[wi + 1].max(muon_err);
        }
        before = after;
    }
    eprintln!(
        "MuSGD worst: w4 update {:.2e} muon {:.2e}; w2 update {:.2e} muon {:.2e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

/// yolo26n's trainable parameters from the reference listing (name, shape).
fn yolo26n_params() -> Option<Vec<ParamSpec>> {
    let path = crate::testing::workspace_root().join("../shared/reference/yolo26n_state_dict.tsv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
            panic!("{} is missing (required under CI=true)", path.display());
        }
        eprintln!("skipping: {} not found", path.display());
        return None;
    };
    let specs = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols.get(4) == Some(&"param")).then(|| {
                let shape = if cols[2] == "scalar" {
                    vec![]
                } else {
                    cols[2].split('x').map(|d| d.parse().expect("dimension")).collect()
                };
                ParamSpec::from_name(cols[1], shape)
            })
        })
        .collect();
    Some(specs)
}

#[test]
fn yolo26n_musgd_groups_match_reference_counts() {
    let Some(params) = yolo26n_params() else { return };
    assert_eq!(params.len(), 366);
    let cfg =
        OptimConfig { kind: OptimizerKind::MuSgd, build_momentum: 0.9, batches_per_epoch: 100, ..Default::default() };
    let opt = Optimizer::new(&cfg, &params);
    let numel: HashMap<&str, usize> = params.iter().map(|p| (p.name.as_str(), p.numel())).collect();
    let summary: Vec<(GroupKind, bool, usize, usize, f64)> = opt
        .groups()
        .iter()
        .map(|g| (g.kind, g.boosted, g.params.len(), g.params.iter().map(|n| numel[n.as_str()]).sum(), g.lr))
        .collect();
    use GroupKind::*;
    // Measured with the reference (BaseTrainer.build_optimizer on yolo26n, MuSGD, lr 0.01).
    assert_eq!(
        summary,
        [
            (Weight, true, 0, 0, 0.03),
            (Weight, false, 0, 0, 0.01),
            (Bn, true, 24, 2336, 0.03),
            (Bn, false, 90, 7448, 0.01),
            (Bias, true, 30, 2816, 0.03),
            (Bias, false, 96, 7472, 0.01),
            (Muon, true, 30, 160_864, 0.03),
            (Muon, false, 96, 2_391_344, 0.01),
        ]
    );
    let decay: Vec<f64> = opt.groups().iter().map(|g| g.weight_decay).collect();
    assert_eq!(decay, [5e-4, 5e-4, 0.0, 0.0, 0.0, 0.0, 5e-4, 5e-4]);
    assert!(opt.groups().iter().all(|g| g.use_muon == (g.kind == Muon) && g.nesterov && g.momentum == 0.9));
    // First members in the reference's order.
    assert_eq!(opt.groups()[2].params[0], "model.23.cv3.0.0.0.bn.weight");
    assert_eq!(opt.groups()[6].params[0], "model.23.cv3.0.0.0.conv.weight");
    assert_eq!(opt.groups()[7].params[0], "model.0.conv.weight");

    // SGD / AdamW: three groups, conv weights decayed.
    for kind in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
        let opt = Optimizer::new(&OptimConfig { kind, batches_per_epoch: 100, ..Default::default() }, &params);
        let counts: Vec<(GroupKind, usize)> = opt.groups().iter().map(|g| (g.kind, g.params.len())).collect();
        assert_eq!(counts, [(Weight, 126), (Bn, 114), (Bias, 126)], "{kind}");
        assert_eq!(opt.lrs(), [0.01, 0.01, 0.01]);
    }
}

#[test]
fn warmup_and_schedule_as_applied() {
    let specs = [
        ParamSpec::new("model.0.conv.weight", vec![4, 2, 3, 3], false),
        ParamSpec::new("model.0.bn.weight", vec![4], true),
        ParamSpec::new("model.0.bn.bias", vec![4], false),
    ];
    // 10 epochs of 100 batches at batch 16: 300 warmup iterations, accumulate 4.
    let cfg = OptimConfig { epochs: 10, batches_per_epoch: 100, ..Default::default() };
    let mut opt = Optimizer::new(&cfg, &specs);
    assert_eq!(opt.accumulate(), 4, "nominal before any iteration");
    let lf = |e: usize| cfg.lr_factor(e);
    // Start of warmup: bias at warmup_bias_lr, the others at 0, momentum 0.8, accumulate 1.
    opt.set_iteration(0, 0);
    assert_eq!(opt.lrs_f64(), [0.0, 0.0, 0.1]);
    assert!(opt.groups().iter().all(|g| g.momentum == 0.8));
    assert_eq!(opt.accumulate(), 1);
    assert!(opt.step_due(0, None), "accumulate 1: step after the first batch");
    // Halfway (epoch 1, ni 150).
    opt.set_iteration(1, 150);
    let target = 0.01 * lf(1);
    assert_eq!(opt.lrs_f64()[0], interp(150, 300, 0.0, target));
    assert!((opt.lrs_f64()[0] - target / 2.0).abs() < 1e-15);
    assert!((opt.lrs_f64()[2] - (0.1 + target) / 2.0).abs() < 1e-15);
    assert!((opt.groups()[0].momentum - (0.8 + 0.937) / 2.0).abs() < 1e-15);
    assert_eq!(opt.accumulate(), 2, "interp 2.5 rounds to 2");
    assert!(!opt.step_due(150, Some(149)));
    assert!(opt.step_due(151, Some(149)));
    // End of warmup lands exactly on the targets.
    opt.set_iteration(3, 300);
    assert_eq!(opt.lrs_f64(), [0.01 * lf(3); 3]);
    assert!(opt.groups().iter().all(|g| g.momentum == 0.937));
    assert_eq!(opt.accumulate(), 4);
    // After warmup: lr follows lf per epoch, momentum and accumulate stay.
    opt.set_iteration(3, 301);
    assert_eq!(opt.lrs_f64(), [0.01 * lf(3); 3]);
    opt.set_iteration(9, 950);
    assert_eq!(opt.lrs_f64(), [0.01 * lf(9); 3]);
    assert!((lf(9) - (0.1 * 0.99 + 0.01)).abs() < 1e-15);
    assert!(opt.groups().iter().all(|g| g.momentum == 0.937));
    assert_eq!(opt.accumulate(), 4);
    assert!(!opt.step_due(952, Some(949)));
    assert!(opt.step_due(953, Some(949)));

    // Adam-style groups have no momentum ramp (their beta1 stays), but the same lr ramp.
    let adam = OptimConfig { kind: OptimizerKind::AdamW, lr0: 0.001, build_momentum: 0.9, ..cfg.clone() };
    let mut opt = Optimizer::new(&adam, &specs);
    opt.set_iteration(0, 0);
    assert!(opt.groups().iter().all(|g| g.momentum == 0.9));
    assert_eq!(opt.lrs_f64(), [0.0, 0.0, 0.1]);

    // No warmup: lr straight from the schedule, accumulate nominal, momentum as built.
    let none = OptimConfig { warmup_epochs: 0.0, kind: OptimizerKind::MuSgd, build_momentum: 0.9, ..cfg };
    let mut opt = Optimizer::new(&none, &specs);
    opt.set_iteration(0, 0);
    assert_eq!(opt.accumulate(), 4);
    assert!(opt.groups().iter().all(|g| g.momentum == 0.9));
    assert_eq!(opt.lrs_f64()[7], 0.01);
    assert!(!opt.step_due(0, None));
    assert!(opt.step_due(3, None));
}

/// Deterministic pseudo-random values for the resume test.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn resume_from_state_continues_bit_identically() {
    let specs = vec![
        ParamSpec::from_name("model.0.conv.weight", vec![8, 3, 3, 3]),
        ParamSpec::from_name("model.0.bn.weight", vec![8]),
        ParamSpec::from_name("model.0.bn.bias", vec![8]),
        ParamSpec::from_name("model.1.cv3.0.weight", vec![6, 8, 1, 1]),
        ParamSpec::from_name("model.1.cv3.0.bias", vec![6]),
        ParamSpec::from_name("model.1.frozen.weight", vec![5, 4]),
    ];
    for kind in [OptimizerKind::Sgd, OptimizerKind::AdamW, OptimizerKind::Adam, OptimizerKind::MuSgd] {
        let cfg = OptimConfig { kind, epochs: 4, batches_per_epoch: 3, batch: 32, ..Default::default() };
        let mut values: Vec<Vec<f32>> = specs.iter().enumerate().map(|(i, p)| noise(p.numel(), i as u64)).collect();
        // `last`: the previous step's iteration, carried across the pause like the rest of the
        // trainer's loop state.
        let run = |opt: &mut Optimizer, values: &mut Vec<Vec<f32>>, from: usize, to: usize, mut last: Option<usize>| {
            for ni in from..to {
                opt.set_iteration(ni / 3, ni);
                if !opt.step_due(ni, last) {
                    continue;
                }
                last = Some(ni);
                let grads: Vec<Vec<f32>> =
                    specs.iter().enumerate().map(|(i, p)| noise(p.numel(), 1000 + 10 * ni as u64 + i as u64)).collect();
                // The last parameter never has a gradient (frozen): it must keep no state.
                let mut batch: Vec<(&str, &mut [f32], &[f32])> = specs
                    .iter()
                    .zip(values.iter_mut())
                    .zip(&grads)
                    .take(specs.len() - 1)
                    .map(|((p, v), g)| (p.name.as_str(), v.as_mut_slice(), g.as_slice()))
                    .collect();
                opt.step(&mut batch);
            }
            last
        };
        let mut straight = Optimizer::new(&cfg, &specs);
        let mut straight_values = values.clone();
        run(&mut straight, &mut straight_values, 0, 12, None);

        let mut first = Optimizer::new(&cfg, &specs);
        let last = run(&mut first, &mut values, 0, 7, None);
        let bytes = first.state_dict().to_bytes().unwrap();
        let restored = OptimizerState::from_bytes(&bytes).unwrap();
        assert_eq!(restored, first.state_dict(), "{kind}: byte round trip");
        assert!(first.param_state("model.1.frozen.weight").unwrap().is_empty());
        drop(first);
        let mut resumed = Optimizer::from_state_dict(&cfg, &specs, &restored).unwrap();
        run(&mut resumed, &mut values, 7, 12, last);
        assert_eq!(resumed.state_dict(), straight.state_dict(), "{kind}: state after resume");
        for (a, b) in values.iter().zip(&straight_values) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{kind}: parameters after resume differ");
        }
        // And the run did move the parameters.
        let init = noise(specs[0].numel(), 0);
        assert!(values[0].iter().zip(&init).any(|(a, b)| a != b));
    }
    // A state does not load into a different optimizer or parameter list.
    let cfg = OptimConfig { batches_per_epoch: 3, ..Default::default() };
    let sgd = Optimizer::new(&cfg, &specs).state_dict();
    let adam = OptimConfig { kind: OptimizerKind::AdamW, ..cfg.clone() };
    assert!(Optimizer::from_state_dict(&adam, &specs, &sgd).is_err());
    assert!(Optimizer::from_state_dict(&cfg, &specs[..5], &sgd).is_err());
    assert!(OptimizerState::from_bytes(b"not a state").is_err());
}

#[test]
fn musgd_step_over_all_of_yolo26n() {
    // Every yolo26n shape goes through Newton–Schulz (depthwise 16×1×3×3 is transposed, the
    // head's 4×16×1×1 is tiny, 256×256×3×3 is the largest), with finite results.
    let Some(params) = yolo26n_params() else { return };
    let cfg =
        OptimConfig { kind: OptimizerKind::MuSgd, build_momentum: 0.9, batches_per_epoch: 100, ..Default::default() };
    let mut opt = Optimizer::new(&cfg, &params);
    opt.set_iteration(5, 500);
    let mut values: Vec<Vec<f32>> = params.iter().enumerate().map(|(i, p)| noise(p.numel(), i as u64)).collect();
    let grads: Vec<Vec<f32>> = params.iter().enumerate().map(|(i, p)| noise(p.numel(), 7000 + i as u64)).collect();
    let before = values.clone();
    let mut batch: Vec<(&str, &mut [f32], &[f32])> = params
        .iter()
        .zip(values.iter_mut())
        .zip(&grads)
        .map(|((p, v), g)| (p.name.as_str(), v.as_mut_slice(), g.as_slice()))
        .collect();
    let t = std::time::Instant::now();
    opt.step(&mut batch);
    eprintln!("MuSGD step over yolo26n ({} tensors): {:?}", params.len(), t.elapsed());
    for ((p, a), b) in params.iter().zip(&values).zip(&before) {
        assert!(a.iter().all(|v| v.is_finite()), "{}: non-finite", p.name);
        assert!(a != b, "{}: not updated", p.name);
        let st = opt.param_state(&p.name).unwrap();
        let is_muon = p.shape.len() == 4;
        assert_eq!(st.momentum_buffer_sgd.is_some(), is_muon, "{}", p.name);
        assert!(st.momentum_buffer.is_some());
    }
}
