//! Hindsight: an OpenAI-compatible proxy that serves a local model with libtorch and learns
//! from the turns that follow each response.

pub mod api;
pub mod cli;
pub mod engine;
pub mod learn;
pub mod model;
pub mod store;
