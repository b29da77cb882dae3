//! The OpenAI-compatible HTTP layer.

pub mod caller;
pub mod feedback;
pub mod sessions;
