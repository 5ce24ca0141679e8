//! Learning weights: the YOLO26 loss ([`loss`]), optimizers and schedules ([`optim`]), and the
//! augmented training data pipeline ([`augment`]).

pub mod augment;
pub mod loss;
pub mod optim;
