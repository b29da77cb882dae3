//! The serving engine: one thread owns every serving tensor; the HTTP layer reaches it only
//! through the [`Backend`] trait, so handlers can be tested against a fake.

pub mod types;

pub use types::*;

pub mod local;

pub use local::{EngineOptions, LocalEngine};
pub mod detokenize;
pub mod handle;
pub mod masks;
pub mod sampling;
pub mod scheduler;
#[cfg(test)]
mod scheduler_tests;
pub mod step_model;
pub mod stop;
