//! `POST /v1/feedback` and `GET /v1/feedback?response_id=`: explicit ratings of a response,
//! scoped to the caller's key.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::caller::Caller;
use super::openapi::schemas::{fixed, List};
use super::openapi::{BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unavailable};
use crate::store::{FeedbackOutcome, FeedbackSource, Rating, Store, StoreError};

/// Feedback bodies are small; anything larger is refused before it is read in full.
pub const MAX_FEEDBACK_BODY: usize = 64 * 1024;
const MAX_CORRECTION_CHARS: usize = 32 * 1024;

/// An error in OpenAI's envelope: `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        tracing::error!("store error answering a request: {err}");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the store is unavailable; try again later".into(),
            kind: "server_error",
            param: None,
            code: Some("store_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn caller_key(caller: &Option<Extension<Caller>>) -> Option<&str> {
    caller.as_ref().and_then(|c| c.0.key_id.as_deref())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// The `id` of a chat or text completion made with the caller's key.
    response_id: String,
    #[schema(schema_with = fixed::rating)]
    rating: String,
    /// What the reply should have said (at most 32768 characters).
    #[serde(default)]
    #[schema(max_length = 32768)]
    correction: Option<String>,
}

/// POST and GET /v1/feedback, documented.
pub fn openapi_router(store: Store) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .layer(DefaultBodyLimit::max(MAX_FEEDBACK_BODY))
        .with_state(store)
}

/// The same routes as a plain axum router.
pub fn router(store: Store) -> Router {
    openapi_router(store).into()
}

#[utoipa::path(
    post,
    path = "/v1/feedback",
    tag = "feedback",
    operation_id = "create_feedback",
    summary = "Rate a response",
    request_body = FeedbackBody,
    responses(
        (status = 200, description = "The stored feedback", body = Object),
        (status = 202, description = "The turn is still being written: the feedback is queued \
            right behind it", body = Object),
        BadRequest, Unauthorized, NotFound, PayloadTooLarge, Unavailable,
    ),
    security(("bearer" = []))
)]
async fn create(
    State(store): State<Store>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        message: format!("request body rejected: {rejection} (limit {MAX_FEEDBACK_BODY} bytes)"),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    let body: FeedbackBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid feedback body: {e}"), None))?;
    let rating = Rating::parse(&body.rating).ok_or_else(|| {
        ApiError::invalid(
            format!("rating must be \"up\" or \"down\", got {:?}", body.rating),
            Some("rating"),
        )
    })?;
    if body.response_id.is_empty() {
        return Err(ApiError::invalid(
            "response_id is empty",
            Some("response_id"),
        ));
    }
    if let Some(c) = &body.correction {
        if c.chars().count() > MAX_CORRECTION_CHARS {
            return Err(ApiError::invalid(
                format!("correction is longer than {MAX_CORRECTION_CHARS} characters"),
                Some("correction"),
            ));
        }
    }
    let outcome = store
        .add_feedback(
            caller_key(&caller),
            &body.response_id,
            rating,
            body.correction,
            FeedbackSource::Api,
        )
        .await?;
    match outcome {
        FeedbackOutcome::Stored(view) => Ok((StatusCode::OK, Json(view)).into_response()),
        FeedbackOutcome::Queued(view) => Ok((StatusCode::ACCEPTED, Json(view)).into_response()),
        FeedbackOutcome::UnknownTurn => Err(unknown_response(&body.response_id)),
    }
}

fn unknown_response(response_id: &str) -> ApiError {
    ApiError::not_found(format!("no response with id {response_id:?}"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// The response whose feedback to list.
    #[param(required)]
    response_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/feedback",
    tag = "feedback",
    operation_id = "list_feedback",
    summary = "The feedback on a response",
    params(ListQuery),
    responses(
        (status = 200, description = "The feedback, oldest first", body = List),
        BadRequest, Unauthorized, NotFound, Unavailable,
    ),
    security(("bearer" = []))
)]
async fn list(
    State(store): State<Store>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text(), None))?;
    let response_id = query
        .response_id
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::invalid("response_id is required", Some("response_id")))?;
    match store.feedback(caller_key(&caller), &response_id).await? {
        Some(items) => Ok(Json(json!({"object": "list", "data": items})).into_response()),
        None => Err(unknown_response(&response_id)),
    }
}
