//! Learning from next states: the judge scores turns, the trainer turns judged turns into
//! LoRA updates, and guarded versions are hot-swapped into serving.

pub mod constrained;
pub mod control;
pub mod guard;
pub mod judge;
pub mod judging;
pub mod loss;
pub mod publish;
pub mod samples;
pub mod service;
pub mod trainer;
pub mod training;
pub mod versions;
