//! `GET /v1/sessions`, `GET /v1/sessions/{id}`, `DELETE /v1/sessions/{id}`: a key sees and
//! deletes only its own sessions (another key's is a 404, never a 403, so ids do not leak).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::feedback::{caller_key, ApiError};
use super::openapi::schemas::List;
use super::openapi::{BadRequest, NotFound, Unauthorized, Unavailable};
use crate::store::Store;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// GET /v1/sessions, GET and DELETE /v1/sessions/{id}, documented.
pub fn openapi_router(store: Store) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, remove))
        .with_state(store)
}

/// The same routes as a plain axum router.
pub fn router(store: Store) -> Router {
    openapi_router(store).into()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// How many sessions, newest first.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    operation_id = "list_sessions",
    summary = "The caller's sessions, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "The sessions", body = List),
        BadRequest, Unauthorized, Unavailable,
    ),
    security(("bearer" = []))
)]
async fn list(
    State(store): State<Store>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text(), Some("limit")))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            format!("limit must be between 1 and {MAX_LIMIT}"),
            Some("limit"),
        ));
    }
    let sessions = store.sessions(caller_key(&caller), limit).await?;
    Ok(Json(json!({"object": "list", "data": sessions})).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    operation_id = "get_session",
    summary = "A session and its turns",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session with its turns", body = Object),
        Unauthorized, NotFound, Unavailable,
    ),
    security(("bearer" = []))
)]
async fn show(
    State(store): State<Store>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match store.session(caller_key(&caller), &id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(unknown_session(&id)),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    operation_id = "delete_session",
    summary = "Delete a session and its turns",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "`{\"id\", \"object\": \"session\", \"deleted\": true}`",
            body = Object),
        Unauthorized, NotFound, Unavailable,
    ),
    security(("bearer" = []))
)]
async fn remove(
    State(store): State<Store>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if store.delete_session(caller_key(&caller), &id).await? {
        Ok(Json(json!({"id": id, "object": "session", "deleted": true})).into_response())
    } else {
        Err(unknown_session(&id))
    }
}

fn unknown_session(id: &str) -> ApiError {
    ApiError::not_found(format!("no session with id {id:?}"))
}
