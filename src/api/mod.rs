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
pub mod guard;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod params;
pub mod server;
pub mod session_hints;
pub mod shutdown;
pub mod state;
pub mod structured;
pub mod testing;
pub mod tool_parse;
pub mod turn_record;

pub use app::{app, app_with_routes, SHUTDOWN_HOOK_TIMEOUT};
pub use auth::ApiKeys;
pub use error::ApiError;
pub use shutdown::ShutdownHooks;
pub use state::{AppState, ReadinessProbe, ServerConfig, DEFAULT_MAX_BODY_BYTES};
pub mod feedback;
pub mod responses;
pub mod sessions;
