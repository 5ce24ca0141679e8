//! Parameter groups: which parameters decay, which get Muon, which get the class-branch gain.

use super::{OptimizerKind, ADAM_BETA2, CLASS_BRANCH_LR_GAIN};
use serde::{Deserialize, Serialize};

/// The reference's `param_group` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupKind {
    /// Weights with decay (all conv weights, except under MuSGD where they are [`GroupKind::Muon`]).
    Weight,
    /// Normalisation-layer weights: no decay.
    Bn,
    /// Every parameter whose name contains `bias`: no decay, own warmup start.
    Bias,
    /// MuSGD: 2-D and 4-D tensors, orthogonalised update plus SGD with decay.
    Muon,
}

impl GroupKind {
    /// The reference's label (`weight`, `bn`, `bias`, `muon`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Weight => "weight",
            GroupKind::Bn => "bn",
            GroupKind::Bias => "bias",
            GroupKind::Muon => "muon",
        }
    }
}

/// One trainable parameter as the trainer registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// The `state_dict` name, e.g. `model.0.conv.weight`.
    pub name: String,
    /// Tensor shape (Muon needs the rank and the last two dimensions).
    pub shape: Vec<usize>,
    /// The weight of a normalisation layer (BatchNorm): grouped without decay.
    pub is_bn_weight: bool,
}

impl ParamSpec {
    /// A parameter with an explicit BatchNorm flag.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, is_bn_weight: bool) -> Self {
        ParamSpec { name: name.into(), shape, is_bn_weight }
    }

    /// A parameter whose BatchNorm flag is read from its name: in YOLO26 every normalisation
    /// layer is a module called `bn`, so `*.bn.weight` is exactly the set of BatchNorm weights.
    pub fn from_name(name: impl Into<String>, shape: Vec<usize>) -> Self {
        let name = name.into();
        let is_bn_weight = name.ends_with(".bn.weight");
        ParamSpec { name, shape, is_bn_weight }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parameter group with its hyperparameters, as in a PyTorch optimizer's `param_groups`.
///
/// Hyperparameters are `f64` (Python floats); kernels round them to `f32` at use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// `param_group` label.
    pub kind: GroupKind,
    /// Class-branch group under MuSGD (learning rate × 3).
    pub boosted: bool,
    /// Apply the Muon update (MuSGD's `use_muon`).
    pub use_muon: bool,
    /// Current learning rate.
    pub lr: f64,
    /// Learning rate the schedule scales (`initial_lr`, the rate at construction).
    pub initial_lr: f64,
    /// SGD momentum, or Adam's beta1.
    pub momentum: f64,
    /// Adam's beta2 (unused by SGD-style groups).
    pub beta2: f64,
    /// Weight decay (L2 for SGD/Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Nesterov momentum (SGD-style groups).
    pub nesterov: bool,
    /// Parameter names in the group, in registration order.
    pub params: Vec<String>,
}

impl ParamGroup {
    /// A group with the given hyperparameters (`initial_lr = lr`) and no parameters.
    pub fn new(kind: GroupKind, lr: f64, momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        ParamGroup {
            kind,
            boosted: false,
            use_muon: kind == GroupKind::Muon,
            lr,
            initial_lr: lr,
            momentum,
            beta2: ADAM_BETA2,
            weight_decay,
            nesterov,
            params: Vec::new(),
        }
    }

    /// Label for logs: `weight`, `bn ×3`, ...
    pub fn label(&self) -> String {
        if self.boosted {
            format!("{} x{CLASS_BRANCH_LR_GAIN}", self.kind.as_str())
        } else {
            self.kind.as_str().to_string()
        }
    }
}

/// The index of the detection head: the last layer, `model.<N>` with the largest `N`.
fn head_index(params: &[ParamSpec]) -> Option<usize> {
    params.iter().filter_map(|p| p.name.strip_prefix("model.")?.split('.').next()?.parse::<usize>().ok()).max()
}

/// Whether a parameter belongs to the head's class branches (`cv3`, `one2one_cv3`), which
/// MuSGD trains at three times the learning rate; semantic-segmentation prototypes are boosted
/// by the same rule in the reference.
fn is_boosted(name: &str, head: Option<usize>) -> bool {
    let in_class_branch = head.is_some_and(|h| {
        let prefix = format!("model.{h}.");
        name.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with("cv3.") || rest.starts_with("one2one_cv3."))
    });
    in_class_branch || name.contains("proto.semseg")
}

/// The reference's parameter groups (`BaseTrainer.build_optimizer`).
///
/// Each parameter goes to the first matching rule: MuSGD and rank 2 or 4 → `muon`; name
/// contains `bias` → `bias`; BatchNorm weight (or `logit_scale`) → `bn`; else `weight`.
/// `weight` and `muon` decay by `weight_decay`, `bn` and `bias` not at all. The order is
/// `[weight, bn, bias]`, and under MuSGD `[weight, bn, bias, muon]` with each group split into
/// the class-branch part (lr × 3) followed by the rest, eight groups in all. Empty groups are
/// kept so group indices (`lr/pg0`, ...) are stable, as in the reference.
pub fn build_groups(
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    params: &[ParamSpec],
) -> Vec<ParamGroup> {
    let use_muon = kind == OptimizerKind::MuSgd;
    // Adam-style groups carry no nesterov flag in the reference; harmless either way.
    let nesterov = nesterov && kind.has_momentum();
    let mut base = vec![
        ParamGroup::new(GroupKind::Weight, lr, momentum, weight_decay, nesterov),
        ParamGroup::new(GroupKind::Bn, lr, momentum, 0.0, nesterov),
        ParamGroup::new(GroupKind::Bias, lr, momentum, 0.0, nesterov),
    ];
    if use_muon {
        base.push(ParamGroup::new(GroupKind::Muon, lr, momentum, weight_decay, nesterov));
    }
    let slot = |p: &ParamSpec| -> usize {
        let rank = p.shape.len();
        if use_muon && (rank == 2 || rank == 4) {
            3
        } else if p.name.contains("bias") {
            2
        } else if p.is_bn_weight || p.name.contains("logit_scale") {
            1
        } else {
            0
        }
    };
    if !use_muon {
        for p in params {
            base[slot(p)].params.push(p.name.clone());
        }
        return base;
    }
    let head = head_index(params);
    let mut groups = Vec::with_capacity(8);
    for (i, g) in base.into_iter().enumerate() {
        let mut boosted = ParamGroup {
            boosted: true,
            lr: g.lr * CLASS_BRANCH_LR_GAIN,
            initial_lr: g.lr * CLASS_BRANCH_LR_GAIN,
            ..g.clone()
        };
        let mut rest = g;
        for p in params.iter().filter(|p| slot(p) == i) {
            if is_boosted(&p.name, head) {
                boosted.params.push(p.name.clone());
            } else {
                rest.params.push(p.name.clone());
            }
        }
        groups.push(boosted);
        groups.push(rest);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> ParamSpec {
        ParamSpec::from_name(name, shape.to_vec())
    }

    #[test]
    fn rules_and_order() {
        let params = [
            spec("model.0.conv.weight", &[16, 3, 3, 3]),
            spec("model.0.bn.weight", &[16]),
            spec("model.0.bn.bias", &[16]),
            spec("model.5.attn.logit_scale", &[4]),
            spec("model.5.fc.weight", &[8, 4]),
            spec("model.5.gamma", &[4]),
            spec("model.9.cv3.0.2.weight", &[3, 8, 1, 1]),
            spec("model.9.cv3.0.2.bias", &[3]),
            spec("model.9.one2one_cv3.0.1.bn.weight", &[8]),
            spec("model.9.cv2.0.2.weight", &[4, 8, 1, 1]),
        ];
        fn names(g: &ParamGroup) -> Vec<&str> {
            g.params.iter().map(String::as_str).collect()
        }
        let sgd = build_groups(OptimizerKind::Sgd, 0.01, 0.937, 5e-4, true, &params);
        assert_eq!(sgd.len(), 3);
        assert_eq!(
            names(&sgd[0]),
            [
                "model.0.conv.weight",
                "model.5.fc.weight",
                "model.5.gamma",
                "model.9.cv3.0.2.weight",
                "model.9.cv2.0.2.weight"
            ]
        );
        assert_eq!(
            names(&sgd[1]),
            ["model.0.bn.weight", "model.5.attn.logit_scale", "model.9.one2one_cv3.0.1.bn.weight"]
        );
        assert_eq!(names(&sgd[2]), ["model.0.bn.bias", "model.9.cv3.0.2.bias"]);
        assert_eq!([sgd[0].weight_decay, sgd[1].weight_decay, sgd[2].weight_decay], [5e-4, 0.0, 0.0]);
        assert!(sgd.iter().all(|g| g.lr == 0.01 && !g.use_muon && !g.boosted));

        let mu = build_groups(OptimizerKind::MuSgd, 0.01, 0.9, 5e-4, true, &params);
        let kinds: Vec<(GroupKind, bool)> = mu.iter().map(|g| (g.kind, g.boosted)).collect();
        use GroupKind::*;
        assert_eq!(
            kinds,
            [
                (Weight, true),
                (Weight, false),
                (Bn, true),
                (Bn, false),
                (Bias, true),
                (Bias, false),
                (Muon, true),
                (Muon, false)
            ]
        );
        assert_eq!(names(&mu[1]), ["model.5.gamma"]);
        assert_eq!(names(&mu[2]), ["model.9.one2one_cv3.0.1.bn.weight"]);
        assert_eq!(names(&mu[4]), ["model.9.cv3.0.2.bias"]);
        assert_eq!(names(&mu[6]), ["model.9.cv3.0.2.weight"]);
        assert_eq!(names(&mu[7]), ["model.0.conv.weight", "model.5.fc.weight", "model.9.cv2.0.2.weight"]);
        for g in &mu {
            assert_eq!(g.lr, if g.boosted { 0.03 } else { 0.01 });
            assert_eq!(g.initial_lr, g.lr);
            assert_eq!(g.use_muon, g.kind == Muon);
        }
        // cv3 of a layer that is not the head is not a class branch.
        assert!(!is_boosted("model.2.cv3.conv.weight", Some(9)));
        assert!(is_boosted("model.9.cv3.2.0.0.conv.weight", Some(9)));
        assert!(!is_boosted("model.9.cv3x.weight", Some(9)));
    }
}
