//! What an admin can change: feedback on any turn, the served version, and signing in or out.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::{admin_error, assets, store_error, Admin, AdminMode, Denied, LearnerStatus};
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::openapi::schemas::fixed;
use crate::api::openapi::{BadRequest, NotFound, Unavailable};
use crate::store::{FeedbackOutcome, Rating};

const MAX_CORRECTION_CHARS: usize = 32 * 1024;

/// Every action body is JSON: a cross-site page cannot send one without a CORS preflight.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let mut err = ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()));
        err.status = e.status();
        err
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AdminFeedbackBody)]
pub struct FeedbackBody {
    /// The `id` of any key's chat or text completion.
    response_id: String,
    #[schema(schema_with = fixed::rating)]
    rating: String,
    /// What the reply should have said (at most 32768 characters; blank means none).
    #[serde(default)]
    #[schema(max_length = 32768)]
    correction: Option<String>,
}

/// Thumbs up/down and an optional correction on any key's turn, recorded with source
/// `dashboard` through the store's feedback path (so the judge re-judges the turn).
#[utoipa::path(
    post,
    path = "/admin/api/feedback",
    tag = "admin",
    operation_id = "admin_feedback",
    summary = "Rate any key's response",
    request_body = FeedbackBody,
    responses(
        (status = 200, description = "The stored feedback", body = Object),
        (status = 202, description = "The turn is still being written: the feedback is queued \
            right behind it", body = Object),
        BadRequest, Denied, NotFound, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn feedback(
    State(admin): State<Admin>,
    b: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let rating = Rating::parse(&b.rating).ok_or_else(|| {
        ApiError::invalid_param(
            "rating",
            format!("rating must be \"up\" or \"down\", got {:?}", b.rating),
        )
    })?;
    if b.response_id.is_empty() {
        return Err(ApiError::invalid_param(
            "response_id",
            "response_id is empty",
        ));
    }
    let correction = b.correction.filter(|c| !c.trim().is_empty());
    if correction
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CORRECTION_CHARS)
    {
        return Err(ApiError::invalid_param(
            "correction",
            format!("correction is longer than {MAX_CORRECTION_CHARS} characters"),
        ));
    }
    let outcome = admin
        .store
        .admin_feedback(&b.response_id, rating, correction)
        .await
        .map_err(store_error)?;
    match outcome {
        FeedbackOutcome::Stored(view) => Ok((StatusCode::OK, Json(view)).into_response()),
        FeedbackOutcome::Queued(view) => Ok((StatusCode::ACCEPTED, Json(view)).into_response()),
        FeedbackOutcome::UnknownTurn => Err(admin_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no response with id {:?}", b.response_id),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    /// 0 (the base model) or a published version.
    #[schema(minimum = 0)]
    version: i64,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// The refusals of the version actions.
#[derive(utoipa::IntoResponses)]
pub enum VersionRefused {
    /// Learning is off here, or the learner refused (e.g. the version does not exist).
    #[response(status = 409)]
    Conflict(ErrorEnvelope),
}

fn learner_off() -> ApiError {
    let note = LearnerStatus::off().note.unwrap_or_default();
    admin_error(StatusCode::CONFLICT, "learning_off", note)
}

fn refused(message: String) -> ApiError {
    admin_error(StatusCode::CONFLICT, "learner_refused", message)
}

fn version_of(b: Result<Json<VersionBody>, JsonRejection>) -> Result<i64, ApiError> {
    let version = body(b)?.version;
    if version < 0 {
        return Err(ApiError::invalid_param(
            "version",
            "version must be 0 (the base model) or a published version",
        ));
    }
    Ok(version)
}

/// Serve `version` now and pin it.
#[utoipa::path(
    post,
    path = "/admin/api/learner/rollback",
    tag = "admin",
    operation_id = "admin_rollback",
    summary = "Serve a version now and pin it",
    request_body = VersionBody,
    responses(
        (status = 200, description = "The learner after the change", body = LearnerStatus),
        BadRequest, Denied, VersionRefused,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn rollback(
    State(admin): State<Admin>,
    b: Result<Json<VersionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let version = version_of(b)?;
    let control = admin.control.as_ref().ok_or_else(learner_off)?;
    let status = control.rollback(version).await.map_err(refused)?;
    tracing::info!(version, "admin: rolled back");
    Ok(Json(status).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/api/learner/pin",
    tag = "admin",
    operation_id = "admin_pin",
    summary = "Keep serving a version whatever later steps publish",
    request_body = VersionBody,
    responses(
        (status = 200, description = "The learner after the change", body = LearnerStatus),
        BadRequest, Denied, VersionRefused,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn pin(
    State(admin): State<Admin>,
    b: Result<Json<VersionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let version = version_of(b)?;
    let control = admin.control.as_ref().ok_or_else(learner_off)?;
    let status = control.pin(version).await.map_err(refused)?;
    tracing::info!(version, "admin: pinned");
    Ok(Json(status).into_response())
}

#[utoipa::path(
    post,
    path = "/admin/api/learner/follow-latest",
    tag = "admin",
    operation_id = "admin_follow_latest",
    summary = "Unpin: serve the latest promoted version from now on",
    request_body = EmptyBody,
    responses(
        (status = 200, description = "The learner after the change", body = LearnerStatus),
        BadRequest, Denied, VersionRefused,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn follow_latest(
    State(admin): State<Admin>,
    b: Result<Json<EmptyBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    body(b)?;
    let control = admin.control.as_ref().ok_or_else(learner_off)?;
    let status = control.follow_latest().await.map_err(refused)?;
    tracing::info!("admin: following the latest version");
    Ok(Json(status).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignInForm {
    token: String,
}

fn see_dashboard(cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(LOCATION, "/dashboard")]).into_response();
    if let Some(cookie) = cookie {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(SET_COOKIE, value);
        }
    }
    response
}

/// The sign-in form's POST: sets the HttpOnly cookie and goes back to the dashboard.
#[utoipa::path(
    post,
    path = "/admin/login",
    tag = "admin",
    operation_id = "admin_sign_in",
    summary = "Sign in to the dashboard",
    request_body(content = SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To /dashboard, with the sign-in cookie when a token was \
            given", headers(("Set-Cookie" = String), ("Location" = String))),
        (status = 401, description = "The sign-in form again: the token is not right",
            content_type = "text/html", body = String),
        (status = 403, description = "The admin API is off", body = ErrorEnvelope),
        (status = 429, description = "Too many failed sign-ins from this address: wait \
            `Retry-After` seconds", body = ErrorEnvelope, headers(("Retry-After" = u64))),
    )
)]
pub async fn sign_in(
    State(admin): State<Admin>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    match admin.auth.mode() {
        AdminMode::Refused => return super::auth::refused(),
        AdminMode::OpenLocal => return see_dashboard(None),
        AdminMode::Token => {}
    }
    let client = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    if let Err(wait) = admin.login_limit.check(client) {
        return too_many_sign_ins(wait);
    }
    match form {
        Ok(Form(form)) if admin.auth.token_matches(form.token.trim()) => {
            see_dashboard(Some(admin.auth.sign_in_cookie(form.token.trim())))
        }
        _ => {
            admin.login_limit.record_failure(client);
            assets::login_page(Some("That token is not right."), StatusCode::UNAUTHORIZED)
        }
    }
}

/// 429 in the envelope, with `Retry-After` in whole seconds (rounded up).
fn too_many_sign_ins(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::rate_limited(format!(
        "Too many failed sign-ins from this address; try again in {secs} s."
    ))
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

#[utoipa::path(
    post,
    path = "/admin/logout",
    tag = "admin",
    operation_id = "admin_sign_out",
    summary = "Sign out of the dashboard",
    responses((
        status = 303,
        description = "To /dashboard, clearing the sign-in cookie",
        headers(("Set-Cookie" = String), ("Location" = String))
    ))
)]
pub async fn sign_out() -> Response {
    see_dashboard(Some(AdminAuth::sign_out_cookie()))
}
