//! Optimizers (SGD, AdamW, MuSGD), parameter groups, learning-rate schedules, warmup and EMA.
