//! What an admin can change: feedback on any turn, the served version, and signing in or out.

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::State;
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::auth::AdminAuth;
use super::{admin_error, assets, store_error, Admin, AdminMode, LearnerStatus};
use crate::api::error::ApiError;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    response_id: String,
    rating: String,
    #[serde(default)]
    correction: Option<String>,
}

/// Thumbs up/down and an optional correction on any key's turn, recorded with source
/// `dashboard` through the store's feedback path (so the judge re-judges the turn).
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    version: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

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

#[derive(Debug, Deserialize)]
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
pub async fn sign_in(
    State(admin): State<Admin>,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    match admin.auth.mode() {
        AdminMode::Refused => return super::auth::refused(),
        AdminMode::OpenLocal => return see_dashboard(None),
        AdminMode::Token => {}
    }
    match form {
        Ok(Form(form)) if admin.auth.token_matches(form.token.trim()) => {
            see_dashboard(Some(admin.auth.sign_in_cookie(form.token.trim())))
        }
        _ => assets::login_page(Some("That token is not right."), StatusCode::UNAUTHORIZED),
    }
}

pub async fn sign_out() -> Response {
    see_dashboard(Some(AdminAuth::sign_out_cookie()))
}
