//! The admin dashboard (`/dashboard`) and the admin HTTP API behind it (`/admin/api/…`):
//! what the learner sees and does, feedback on any turn, version actions and a live feed.

pub mod actions;
pub mod assets;
pub mod auth;
pub mod control;
pub mod limit;
pub mod live;
pub mod read;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use utoipa::IntoResponses;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{AdminAuth, AdminMode};
pub use control::{LearnerControl, LearnerStatus};
pub use limit::LoginLimiter;

use super::error::{ApiError, ErrorEnvelope};
use crate::store::{Store, StoreError};

/// How often the live feed looks for new rows by default.
pub const LIVE_POLL: Duration = Duration::from_secs(1);

/// Everything the admin routes need.
#[derive(Clone)]
pub struct Admin {
    pub store: Store,
    /// None: no learner runs here; status says so and version actions are refused.
    pub control: Option<Arc<dyn LearnerControl>>,
    pub auth: AdminAuth,
    /// Turns true when the server starts shutting down, so live feeds end and the graceful
    /// shutdown does not wait on them.
    pub shutdown: Option<watch::Receiver<bool>>,
    pub live_poll: Duration,
    /// Failed sign-ins per client (see [`limit`]).
    pub login_limit: LoginLimiter,
}

impl Admin {
    pub fn new(store: Store, auth: AdminAuth) -> Admin {
        Admin {
            store,
            control: None,
            auth,
            shutdown: None,
            live_poll: LIVE_POLL,
            login_limit: LoginLimiter::default(),
        }
    }

    pub fn with_control(mut self, control: Arc<dyn LearnerControl>) -> Admin {
        self.control = Some(control);
        self
    }

    pub fn with_login_limit(mut self, limit: LoginLimiter) -> Admin {
        self.login_limit = limit;
        self
    }

    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Admin {
        self.shutdown = Some(shutdown);
        self
    }
}

/// The dashboard page, its assets, sign-in/out and the admin API; the API routes and sign-in/out
/// are documented (tag `admin`), the dashboard's pages and files are served undocumented. Merge
/// it into the app with `app_with_routes`; it brings its own authentication (see [`auth`]).
pub fn openapi_router(admin: Admin) -> OpenApiRouter {
    let auth = admin.auth.clone();
    let protected = OpenApiRouter::new()
        .route("/dashboard", get(assets::index))
        .routes(routes!(read::me))
        .routes(routes!(read::overview))
        .routes(routes!(read::series))
        .routes(routes!(read::sessions))
        .routes(routes!(read::timeline))
        .routes(routes!(read::steps))
        .routes(routes!(read::versions))
        .routes(routes!(read::learner))
        .routes(routes!(actions::feedback))
        .routes(routes!(actions::rollback))
        .routes(routes!(actions::pin))
        .routes(routes!(actions::follow_latest))
        .routes(routes!(live::live))
        .route_layer(middleware::from_fn_with_state(
            auth.clone(),
            auth::require_admin,
        ))
        .with_state(admin.clone());
    let public = OpenApiRouter::new()
        .route("/dashboard/", get(assets::to_dashboard))
        .route("/dashboard/assets/{*path}", get(assets::asset))
        .routes(routes!(actions::sign_in))
        .routes(routes!(actions::sign_out))
        .with_state(admin);
    protected.merge(public)
}

/// The same routes as a plain axum router.
pub fn router(admin: Admin) -> Router {
    openapi_router(admin).into()
}

/// The refusals of every protected admin route.
#[derive(IntoResponses)]
pub enum Denied {
    /// The admin token is required: send `Authorization: Bearer TOKEN` or sign in at /dashboard.
    #[response(status = 401)]
    TokenRequired(ErrorEnvelope),
    /// The admin API is off (no admin token on a non-loopback bind), or, without a token, the
    /// request was not addressed to a loopback host (or `--allowed-host`) or came from a page on
    /// another site (`Origin`).
    #[response(status = 403)]
    Refused(ErrorEnvelope),
}

/// An admin error in OpenAI's envelope.
pub fn admin_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
        kind: if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        },
        param: None,
        code: Some(code),
    }
}

pub(crate) fn store_error(err: StoreError) -> ApiError {
    tracing::error!("store error answering an admin request: {err}");
    admin_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store is unavailable; try again later",
    )
}
