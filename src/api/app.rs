//! The one place the HTTP application is assembled: each handler module's router, then auth,
//! limits, metrics and tracing around them.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::auth::authenticate;
use super::error::ApiError;
use super::extract::BodyLimit;
use super::state::AppState;
use super::{chat, completions, metrics, models, openapi};

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
        .merge(chat::router())
        .merge(completions::router())
        .merge(models::router())
        .merge(openapi::router())
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
