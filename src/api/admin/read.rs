//! GET handlers of the admin API.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::{admin_error, store_error, Admin, AdminMode, Denied, LearnerStatus};
use crate::api::error::{ApiError, ErrorEnvelope};
use crate::api::openapi::schemas::List;
use crate::api::openapi::{BadRequest, NotFound, Unavailable};
use crate::store::dashboard::{RewardFilter, SessionFilter, Time};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;
const DEFAULT_STEPS: i64 = 500;
const MAX_STEPS: i64 = 5000;

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

/// How the caller got in, for the page's header (never the token).
#[utoipa::path(
    get,
    path = "/admin/api/me",
    tag = "admin",
    operation_id = "admin_me",
    summary = "How the caller got in",
    responses(
        (status = 200, description = "`{auth, store, learner, version}`", body = Object),
        Denied,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn me(State(admin): State<Admin>) -> Response {
    Json(json!({
        "auth": match admin.auth.mode() {
            AdminMode::Token => "token",
            AdminMode::OpenLocal => "open-local",
            AdminMode::Refused => "refused",
        },
        "store": admin.store.backend(),
        "learner": admin.control.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

#[utoipa::path(
    get,
    path = "/admin/api/overview",
    tag = "admin",
    operation_id = "admin_overview",
    summary = "Totals for the overview page",
    responses((status = 200, description = "The overview", body = Object), Denied, Unavailable),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn overview(State(admin): State<Admin>) -> Result<Response, ApiError> {
    let overview = admin
        .store
        .dashboard_overview()
        .await
        .map_err(store_error)?;
    Ok(Json(overview).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// 1h, 6h, 24h (default), 7d or 30d.
    #[param(default = "24h")]
    range: Option<String>,
}

/// `range`: 1h, 6h, 24h (default), 7d or 30d; each has a fixed bucket size.
#[utoipa::path(
    get,
    path = "/admin/api/series",
    tag = "admin",
    operation_id = "admin_series",
    summary = "Time series for the charts",
    params(SeriesQuery),
    responses(
        (status = 200, description = "`{range, since, until, series}`", body = Object),
        BadRequest, Denied, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn series(
    State(admin): State<Admin>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let range = q.range.as_deref().unwrap_or("24h");
    let (seconds, bucket) = match range {
        "1h" => (3600, 60),
        "6h" => (6 * 3600, 300),
        "24h" => (86400, 1800),
        "7d" => (7 * 86400, 6 * 3600),
        "30d" => (30 * 86400, 86400),
        other => {
            return Err(ApiError::invalid_param(
                "range",
                format!("range must be 1h, 6h, 24h, 7d or 30d, got {other:?}"),
            ))
        }
    };
    let until = Utc::now();
    let since = until - chrono::Duration::seconds(seconds);
    let series = admin
        .store
        .dashboard_series(since, until, bucket)
        .await
        .map_err(store_error)?;
    Ok(
        Json(json!({"range": range, "since": since, "until": until, "series": series}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// Text to search for.
    q: Option<String>,
    /// Only this key id ('' is the key id when auth is off).
    key: Option<String>,
    /// A date (YYYY-MM-DD) or an RFC 3339 time.
    from: Option<String>,
    /// A date (YYYY-MM-DD, the whole day included) or an RFC 3339 time.
    to: Option<String>,
    /// any, positive, negative or none.
    rewarded: Option<String>,
    /// yes or no.
    corrected: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// A time as RFC 3339, or a date (YYYY-MM-DD) meaning its start; `end` moves a date to the
/// start of the next day so `to=2025-05-01` includes that day.
fn parse_time(param: &'static str, text: &str, end: bool) -> Result<Time, ApiError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ApiError::invalid_param(
            param,
            format!("{param} must be a date (YYYY-MM-DD) or an RFC 3339 time, got {text:?}"),
        )
    })?;
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    Ok(Utc.from_utc_datetime(&midnight))
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

#[utoipa::path(
    get,
    path = "/admin/api/sessions",
    tag = "admin",
    operation_id = "admin_sessions",
    summary = "Every key's sessions, filtered and paged",
    params(SessionsQuery),
    responses(
        (status = 200, description = "A page of sessions", body = Object),
        BadRequest, Denied, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn sessions(
    State(admin): State<Admin>,
    q: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_param(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::invalid_param(
            "offset",
            "offset must be 0 or more",
        ));
    }
    let rewarded = match non_empty(q.rewarded) {
        None => None,
        Some(text) => Some(RewardFilter::parse(&text).ok_or_else(|| {
            ApiError::invalid_param(
                "rewarded",
                format!("rewarded must be any, positive, negative or none, got {text:?}"),
            )
        })?),
    };
    let corrected = match non_empty(q.corrected).as_deref() {
        None => None,
        Some("yes" | "true") => Some(true),
        Some("no" | "false") => Some(false),
        Some(other) => {
            return Err(ApiError::invalid_param(
                "corrected",
                format!("corrected must be yes or no, got {other:?}"),
            ))
        }
    };
    let filter = SessionFilter {
        search: non_empty(q.q).map(|s| s.trim().to_string()),
        // '' is a real key id (auth off), so only a missing parameter means "any key".
        key: q.key,
        from: non_empty(q.from)
            .map(|t| parse_time("from", &t, false))
            .transpose()?,
        to: non_empty(q.to)
            .map(|t| parse_time("to", &t, true))
            .transpose()?,
        rewarded,
        corrected,
        limit,
        offset,
    };
    let page = admin
        .store
        .dashboard_sessions(&filter)
        .await
        .map_err(store_error)?;
    Ok(Json(page).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/api/sessions/{pk}",
    tag = "admin",
    operation_id = "admin_session_timeline",
    summary = "A session's timeline: turns, next states, feedback, judgements",
    params(("pk" = i64, Path, description = "The session's row id")),
    responses(
        (status = 200, description = "The timeline", body = Object),
        Denied, NotFound, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn timeline(
    State(admin): State<Admin>,
    Path(pk): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        admin_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session with row id {pk:?}"),
        )
    };
    let id: i64 = pk.parse().map_err(|_| not_found())?;
    match admin
        .store
        .dashboard_timeline(id)
        .await
        .map_err(store_error)?
    {
        Some(timeline) => Ok(Json(timeline).into_response()),
        None => Err(not_found()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StepsQuery {
    #[param(minimum = 1, maximum = 5000, default = 500)]
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/admin/api/steps",
    tag = "admin",
    operation_id = "admin_steps",
    summary = "Training steps and their metrics",
    params(StepsQuery),
    responses(
        (status = 200, description = "The steps", body = List),
        BadRequest, Denied, Unavailable,
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn steps(
    State(admin): State<Admin>,
    q: Result<Query<StepsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = query(q)?.limit.unwrap_or(DEFAULT_STEPS);
    if !(1..=MAX_STEPS).contains(&limit) {
        return Err(ApiError::invalid_param(
            "limit",
            format!("limit must be between 1 and {MAX_STEPS}"),
        ));
    }
    let steps = admin
        .store
        .dashboard_steps(limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": steps})).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/api/versions",
    tag = "admin",
    operation_id = "admin_versions",
    summary = "Policy versions: promoted, rejected, serving",
    responses((status = 200, description = "The versions", body = List), Denied, Unavailable),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn versions(State(admin): State<Admin>) -> Result<Response, ApiError> {
    let versions = admin
        .store
        .dashboard_versions()
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": versions})).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/api/learner",
    tag = "admin",
    operation_id = "admin_learner",
    summary = "The learner's status",
    responses(
        (status = 200, description = "The learner", body = LearnerStatus),
        Denied,
        (status = 503, description = "The learner did not answer", body = ErrorEnvelope),
    ),
    security(("admin_token" = []), ("admin_cookie" = []))
)]
pub async fn learner(State(admin): State<Admin>) -> Result<Response, ApiError> {
    let status = match &admin.control {
        None => LearnerStatus::off(),
        Some(control) => control.status().await.map_err(|message| {
            admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "learner_unavailable",
                format!("the learner did not answer: {message}"),
            )
        })?,
    };
    Ok(Json(status).into_response())
}
