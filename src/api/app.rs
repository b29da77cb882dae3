//! The one place the HTTP application is assembled: each handler module's router, then the
//! browser guard (`guard`), auth, limits, metrics and tracing around them.
//!
//! Handler modules return `OpenApiRouter`s: a route and its `#[utoipa::path]` documentation are
//! registered together, and the merged router is split here into the axum `Router` and the
//! document served at /openapi.json, so the two cannot disagree.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_axum::router::OpenApiRouter;

use super::admin::{self, Admin, AdminMode};
use super::auth::{authenticate, Gate};
use super::error::ApiError;
use super::extract::BodyLimit;
use super::guard::{guard_v1, Guard};
use super::state::AppState;
use super::{chat, completions, feedback, metrics, models, openapi, responses, sessions};
use crate::store::Store;

/// The built-in routes, one line per handler module. A module's `router()` may return an
/// `OpenApiRouter<AppState>` (served and documented) or a plain `Router<AppState>` (served,
/// not documented): `.merge(module::router().into())` takes either, so switching a module
/// from one to the other needs no change here.
fn builtin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(chat::router())
        .merge(completions::router())
        .merge(models::router())
        .merge(openapi::router())
        .merge(responses::router())
}

/// The routes that need the store: /v1/feedback, /v1/sessions, and the admin API and
/// dashboard. `hindsight serve` passes them to [`app_with_routes`].
pub fn store_routes(store: &Store, admin: Admin) -> OpenApiRouter {
    feedback::openapi_router(store.clone())
        .merge(sessions::openapi_router(store.clone()))
        .merge(admin::openapi_router(admin))
}

/// The application with the built-in routes only.
pub fn app(state: AppState) -> Router {
    app_with_routes(state, OpenApiRouter::new())
}

/// The application plus `extra` routes (see [`store_routes`]), which get the same
/// authentication, limits, metrics and error envelope. `extra` is an `OpenApiRouter` (its
/// documented routes join /openapi.json) or a plain `Router` (served, not documented).
pub fn app_with_routes(state: AppState, extra: impl Into<OpenApiRouter>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.config.max_body_bytes;
    let gate = Gate {
        keys: state.keys.clone(),
        protect_ops: state.protect_ops.clone(),
    };
    let guard = Guard {
        hosts: state.hosts.clone(),
        keyed: !state.keys.is_empty(),
    };
    let security = openapi::Security {
        keys: !state.keys.is_empty(),
        protect_ops: state.protect_ops.is_some(),
        admin_token: state
            .protect_ops
            .as_ref()
            .is_some_and(|admin| admin.mode() == AdminMode::Token),
    };
    let (routes, doc) = builtin_routes()
        .with_state(state)
        .merge(extra.into())
        .split_for_parts();
    let routes = routes
        .layer(Extension(openapi::Document::new(&doc, security)))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    routes
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |mut request: Request, next: Next| {
            request.extensions_mut().insert(BodyLimit(body_limit));
            next.run(request)
        }))
        .layer(middleware::from_fn_with_state(gate, authenticate))
        // Before authentication: a page on another site is refused whatever it sends.
        .layer(middleware::from_fn_with_state(guard, guard_v1))
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
