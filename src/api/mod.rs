//! The OpenAI-compatible HTTP layer.

pub mod caller;
