//! `GET /v1/sessions`, `GET /v1/sessions/{id}`, `DELETE /v1/sessions/{id}`: a key sees and
//! deletes only its own sessions (another key's is a 404, never a 403, so ids do not leak).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::caller::Caller;
use super::feedback::{caller_key, ApiError};
use crate::store::Store;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", get(show).delete(remove))
        .with_state(store)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

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
