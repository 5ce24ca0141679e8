//! Learning weights: the YOLO26 loss ([`loss`]), optimizers and schedules ([`optim`]), the
//! augmented training data pipeline ([`augment`]), and the loop that ties them together
//! ([`trainer`]) with its checkpoints ([`checkpoint`]) and logs ([`results`]).

pub mod augment;
pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod results;
pub mod trainer;

pub use crate::model::transfer::FreezeSpec;
pub use trainer::{resume, train, train_with_hooks, TrainArgs, TrainHooks, TrainSummary};
