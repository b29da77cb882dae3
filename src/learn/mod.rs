//! Learning from next states: the judge scores turns, the trainer turns judged turns into
//! LoRA updates, and guarded versions are hot-swapped into serving.

pub mod guard;
pub mod loss;
pub mod samples;
pub mod trainer;
