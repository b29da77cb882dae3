//! The dashboard's files (web/), compiled into the binary: nothing is fetched at run time.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::admin_error;

macro_rules! web {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path))
    };
}

/// Served under /dashboard/assets/: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", web!("app.css")),
    ("favicon.svg", "image/svg+xml", web!("favicon.svg")),
    ("js/main.js", JS, web!("js/main.js")),
    ("js/api.js", JS, web!("js/api.js")),
    ("js/dom.js", JS, web!("js/dom.js")),
    ("js/charts.js", JS, web!("js/charts.js")),
    ("js/overview.js", JS, web!("js/overview.js")),
    ("js/sessions.js", JS, web!("js/sessions.js")),
    ("js/training.js", JS, web!("js/training.js")),
    ("js/live.js", JS, web!("js/live.js")),
];

const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = web!("index.html");
const LOGIN: &str = web!("login.html");

/// Scripts and styles only from this origin, no inline script, no framing: even a missed
/// escape cannot run injected code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn page(
    status: StatusCode,
    body: String,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The dashboard shell (the scripts fill it in).
pub async fn index() -> Response {
    page(
        StatusCode::OK,
        INDEX.to_string(),
        "text/html; charset=utf-8",
        "no-store",
    )
}

pub async fn to_dashboard() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, "/dashboard")]).into_response()
}

/// The sign-in form; `error` is one of our own fixed sentences, never request text.
pub fn login_page(error: Option<&'static str>, status: StatusCode) -> Response {
    let body = LOGIN.replace(
        "<!--error-->",
        &error
            .map(|e| format!("<p class=\"error\" role=\"alert\">{e}</p>"))
            .unwrap_or_default(),
    );
    page(status, body, "text/html; charset=utf-8", "no-store")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => {
            page(StatusCode::OK, body.to_string(), content_type, "no-cache")
        }
        None => admin_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dashboard asset {path:?}"),
        )
        .into_response(),
    }
}
