//! The one place the HTTP application is assembled: routes, auth, limits, metrics, tracing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::auth::{authenticate, ApiKeys};
use super::error::ApiError;
use super::extract::BodyLimit;
use super::{chat, completions, metrics, models, openapi};
use crate::engine::Backend;
use crate::store::TurnSink;

pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Settings of the HTTP layer itself.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Something `/readyz` must see ready (the model is ready once a backend exists; the store
/// adds its own probe).
pub trait ReadinessProbe: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Err explains what is not ready.
    fn check(&self) -> Result<(), String>;
    /// State shown beside the verdict on /readyz (e.g. the store's queue and journal).
    fn detail(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub turns: Arc<dyn TurnSink>,
    pub keys: ApiKeys,
    pub metrics: PrometheusHandle,
    pub config: ServerConfig,
    pub readiness: Vec<Arc<dyn ReadinessProbe>>,
}

impl AppState {
    /// Auth off, default limits, the process-wide metrics recorder.
    pub fn new(backend: Arc<dyn Backend>, turns: Arc<dyn TurnSink>) -> Self {
        Self {
            backend,
            turns,
            keys: ApiKeys::default(),
            metrics: metrics::recorder(),
            config: ServerConfig::default(),
            readiness: Vec::new(),
        }
    }

    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    pub fn with_config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    pub fn with_probe(mut self, probe: Arc<dyn ReadinessProbe>) -> Self {
        self.readiness.push(probe);
        self
    }
}

/// The application with the built-in routes only.
pub fn app(state: AppState) -> Router {
    app_with_routes(state, Router::new())
}

/// The application plus `extra` routes (the store's /v1/feedback, /v1/sessions...), which get
/// the same authentication, limits, metrics and error envelope.
pub fn app_with_routes(state: AppState, extra: Router) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.config.max_body_bytes;
    let keys = state.keys.clone();
    let routes = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{id}", get(models::get_model))
        .route("/healthz", get(models::healthz))
        .route("/readyz", get(models::readyz))
        .route("/metrics", get(models::prometheus))
        .route("/openapi.json", get(openapi::openapi_json))
        .with_state(state)
        .merge(extra)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    routes
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |mut request: Request, next: Next| {
            request.extensions_mut().insert(BodyLimit(body_limit));
            next.run(request)
        }))
        .layer(middleware::from_fn_with_state(keys, authenticate))
        .layer(middleware::from_fn(metrics::track_http))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id, method = %request.method(), uri = %request.uri())
                })
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn route_not_found(method: Method, uri: Uri) -> Response {
    ApiError::route_not_found(method.as_str(), uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

/// How long graceful shutdown waits for each shutdown hook.
pub const SHUTDOWN_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
