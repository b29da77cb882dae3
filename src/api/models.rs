//! GET /v1/models, /v1/models/{id}, and the operational endpoints (/healthz, /readyz, /metrics).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{ModelList, ModelObject};
use super::error::ApiError;
use super::openapi::schemas::{Health, Readiness};
use super::openapi::{NotFound, Unauthorized};
use super::state::AppState;

fn model_object(state: &AppState) -> ModelObject {
    let info = state.backend.info();
    ModelObject {
        id: info.id.clone(),
        object: "model",
        created: info.created,
        owned_by: "hindsight",
        context_length: info.context_length,
        max_model_len: info.context_length,
    }
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    summary = "List the served model",
    responses((status = 200, description = "The model list", body = ModelList), Unauthorized),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![model_object(&state)],
    })
}

#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "models",
    summary = "Describe a model",
    params(("id" = String, Path, description = "The model id")),
    responses(
        (status = 200, description = "The model", body = ModelObject),
        Unauthorized,
        NotFound,
    ),
    security(("bearer" = []))
)]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    if id == state.backend.info().id {
        Ok(Json(model_object(&state)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process answers", body = Health))
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the model is loaded (a backend exists once it is) and every probe passes.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: model loaded and every dependency ready",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is not ready", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = serde_json::Map::new();
    checks.insert("model".into(), json!("ready"));
    let mut ready = true;
    for probe in &state.readiness {
        let status = match probe.check() {
            Ok(()) => "ready".to_string(),
            Err(reason) => {
                ready = false;
                reason
            }
        };
        let detail = probe.detail();
        let entry = if detail.is_null() {
            json!(status)
        } else {
            json!({"status": status, "detail": detail})
        };
        checks.insert(probe.name().to_string(), entry);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "model": state.backend.info().id,
        "policy_version": state.backend.policy_version(),
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((
        status = 200,
        description = "Prometheus text exposition format",
        body = String,
        content_type = "text/plain; version=0.0.4"
    ))
)]
pub async fn prometheus(State(state): State<AppState>) -> Response {
    let text = super::metrics::render(&state.metrics, state.backend.load());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The model list and the operational probes: /v1/models, /healthz, /readyz, /metrics.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus))
}
