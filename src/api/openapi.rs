//! GET /openapi.json: the OpenAPI 3.1 description of what this server serves, generated from
//! the handlers' `#[utoipa::path]` annotations and the DTOs' `ToSchema` derives.
//!
//! Each handler module returns a `utoipa_axum::router::OpenApiRouter`, which registers a route
//! and its documentation together; `app_with_routes` splits the merged router into the axum
//! router and this document, so a served route cannot be missing from it (a module merged as a
//! plain axum `Router` is served but undocumented). tests/api_misc.rs requests every documented
//! operation and checks a fixed list of served routes is documented.

pub mod schemas;

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use schemas::{
    BadRequest, NotFound, PayloadTooLarge, ServerError, TooManyRequests, Unauthorized, Unavailable,
};

/// Security scheme of the OpenAI-compatible routes: `Authorization: Bearer <API key>`.
pub const BEARER: &str = "bearer";
/// Security schemes of the admin API: the admin token as a bearer, or the sign-in cookie.
pub const ADMIN_TOKEN: &str = "admin_token";
pub const ADMIN_COOKIE: &str = "admin_cookie";

/// The document's fixed parts: info, tags, security schemes. Paths and their schemas come from
/// the routers merged onto it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hindsight",
        description = "An OpenAI-compatible server for a local model that learns from being used."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(crate::api::error::ErrorEnvelope)),
    tags(
        (name = "chat", description = "Chat completions"),
        (name = "completions", description = "Legacy text completions"),
        (name = "responses", description = "The Responses API"),
        (name = "models", description = "The served model"),
        (name = "feedback", description = "Explicit ratings of a response"),
        (name = "sessions", description = "Conversations recorded for the caller's key"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "admin", description = "The admin API behind the dashboard"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            BEARER,
            bearer("An API key (`--api-key`); required on /v1 routes when keys are configured"),
        );
        components.add_security_scheme(ADMIN_TOKEN, bearer("The admin token (`--admin-token`)"));
        let mut cookie = ApiKeyValue::new(crate::api::admin::auth::COOKIE_NAME);
        cookie.description = Some("The HttpOnly cookie that POST /admin/login sets".into());
        components
            .add_security_scheme(ADMIN_COOKIE, SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    }
}

/// The base every application's router starts from.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Which credentials this server asks for, so the document declares only those.
#[derive(Debug, Clone, Copy, Default)]
pub struct Security {
    /// API keys are configured: /v1 operations need `bearer`.
    pub keys: bool,
    /// `--protect-metrics`: /metrics and /readyz need a key or the admin token.
    pub protect_ops: bool,
    /// An admin token is configured (it then also opens the protected operational routes).
    pub admin_token: bool,
}

/// The finished document as JSON, handed to [`openapi_json`] as a request extension.
#[derive(Clone)]
pub struct Document(Arc<str>);

impl Document {
    pub fn new(doc: &utoipa::openapi::OpenApi, security: Security) -> Self {
        let mut value = serde_json::to_value(doc).expect("an OpenAPI document always serializes");
        security.apply(&mut value);
        Self(value.to_string().into())
    }
}

impl Security {
    /// Without keys, no operation requires `bearer` (and the scheme is dropped when unused);
    /// with `protect_ops`, /metrics and /readyz require what opens them.
    fn apply(self, doc: &mut serde_json::Value) {
        let ops_security: Vec<serde_json::Value> = [
            self.keys.then_some(BEARER),
            self.admin_token.then_some(ADMIN_TOKEN),
            self.admin_token.then_some(ADMIN_COOKIE),
        ]
        .into_iter()
        .flatten()
        .map(|scheme| serde_json::json!({ scheme: [] }))
        .collect();
        let mut bearer_used = false;
        let paths = doc.get_mut("paths").and_then(|p| p.as_object_mut());
        for (path, item) in paths.into_iter().flatten() {
            let ops = item.as_object_mut().into_iter().flatten();
            for (_, op) in ops.filter_map(|(m, op)| Some((m, op.as_object_mut()?))) {
                if self.protect_ops && crate::api::auth::OPS_ROUTES.contains(&path.as_str()) {
                    op.insert("security".into(), ops_security.clone().into());
                }
                if let Some(requirements) = op.get_mut("security").and_then(|s| s.as_array_mut()) {
                    if !self.keys {
                        requirements.retain(|r| r.get(BEARER).is_none());
                    }
                    bearer_used |= requirements.iter().any(|r| r.get(BEARER).is_some());
                    if requirements.is_empty() {
                        op.remove("security");
                    }
                }
            }
        }
        if !bearer_used {
            let schemes = doc
                .pointer_mut("/components/securitySchemes")
                .and_then(|s| s.as_object_mut());
            if let Some(schemes) = schemes {
                schemes.remove(BEARER);
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
}

/// GET /openapi.json.
pub fn router<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}
