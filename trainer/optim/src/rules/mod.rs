//! The per-tensor update rules.

pub(crate) mod adafactor;
pub(crate) mod adamw;
pub(crate) mod adamw8bit;
pub(crate) mod sgd;
