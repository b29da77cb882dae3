//! The OpenAI-compatible HTTP layer.

pub mod caller;

pub mod admin;
pub mod app;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod completions;
pub mod convert;
pub mod dto;
pub mod error;
pub mod extract;
pub mod generation;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod server;
pub mod shutdown;
pub mod testing;
pub mod tool_parse;
pub mod turn_record;

pub use app::{app, app_with_routes, AppState, ReadinessProbe, ServerConfig};
pub use auth::ApiKeys;
pub use error::ApiError;
pub use shutdown::ShutdownHooks;
pub mod feedback;
pub mod sessions;
