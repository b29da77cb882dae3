//! Who may use the dashboard and the admin API.
//!
//! - With an admin token: `Authorization: Bearer TOKEN`, or the HttpOnly, SameSite=Strict cookie
//!   that the sign-in form sets (so the page never holds the token in JavaScript). The cookie
//!   carries a digest of the token, not the token, and stops working when the token changes.
//! - Without a token on a loopback bind: open, but only to requests addressed to a loopback host
//!   name or an `--allowed-host` (a DNS-rebinding page cannot reach it through its own domain),
//!   and not to requests whose `Origin` is another site (see `api::guard`, shared with /v1).
//! - Without a token on any other bind: refused with a 403 envelope.
//!
//! Unsafe admin calls take JSON bodies: a cross-site form cannot send one without a CORS
//! preflight, which this server never grants.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{admin_error, assets};
use crate::api::guard::{HostPolicy, Refusal};

pub const COOKIE_NAME: &str = "hindsight_admin";
/// How long a sign-in lasts.
pub const COOKIE_MAX_AGE_SECS: u64 = 12 * 60 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// A token is required.
    Token,
    /// No token, loopback bind: open to local requests.
    OpenLocal,
    /// No token, public bind: the dashboard is off.
    Refused,
}

#[derive(Clone)]
pub struct AdminAuth {
    mode: AdminMode,
    token_digest: [u8; 32],
    cookie_digest: [u8; 32],
    /// Names besides loopback that the open (token-less) mode answers.
    hosts: HostPolicy,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("mode", &self.mode)
            .finish()
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The cookie's value for a token: a digest, so a leaked cookie jar does not leak the token.
fn cookie_value(token: &str) -> String {
    hex::encode(digest(&format!("hindsight-admin-cookie\0{token}")))
}

impl AdminAuth {
    /// `token` (empty counts as none) and whether every bound address is loopback.
    pub fn new(token: Option<&str>, loopback_bind: bool) -> AdminAuth {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let mode = match (token, loopback_bind) {
            (Some(_), _) => AdminMode::Token,
            (None, true) => AdminMode::OpenLocal,
            (None, false) => AdminMode::Refused,
        };
        let token = token.unwrap_or("");
        AdminAuth {
            mode,
            token_digest: digest(token),
            cookie_digest: digest(&cookie_value(token)),
            hosts: HostPolicy::default(),
        }
    }

    /// The host names the token-less mode answers besides loopback (`--allowed-host`).
    pub fn with_hosts(mut self, hosts: HostPolicy) -> AdminAuth {
        self.hosts = hosts;
        self
    }

    pub fn mode(&self) -> AdminMode {
        self.mode
    }

    pub fn describe(&self) -> &'static str {
        match self.mode {
            AdminMode::Token => "admin token",
            AdminMode::OpenLocal => "open to loopback requests (no --admin-token)",
            AdminMode::Refused => "off: set --admin-token to use it on a non-loopback bind",
        }
    }

    /// Whether `presented` is the token (compared as digests).
    pub fn token_matches(&self, presented: &str) -> bool {
        self.mode == AdminMode::Token && digest(presented) == self.token_digest
    }

    /// `Set-Cookie` for a signed-in browser.
    pub fn sign_in_cookie(&self, token: &str) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}",
            cookie_value(token)
        )
    }

    pub fn sign_out_cookie() -> String {
        format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// The admin token as a bearer, or the sign-in cookie (also accepted by `--protect-metrics`).
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        if bearer.is_some_and(|t| self.token_matches(t)) {
            return true;
        }
        self.mode == AdminMode::Token
            && cookie(headers, COOKIE_NAME).is_some_and(|c| digest(c) == self.cookie_digest)
    }

    /// Refusal for the current mode, or None when the request may go on.
    pub fn check(&self, request: &Request) -> Option<Response> {
        match self.mode {
            AdminMode::Refused => Some(refused()),
            AdminMode::OpenLocal => {
                let refusal = self.hosts.refusal(request.headers(), request.uri())?;
                let (code, message) = match refusal {
                    Refusal::Host => (
                        "admin_host_refused",
                        "without --admin-token the dashboard answers only requests addressed \
                         to localhost, a loopback address or an --allowed-host name",
                    ),
                    Refusal::Origin => (
                        "admin_origin_refused",
                        "without --admin-token the dashboard refuses requests from pages on \
                         other sites",
                    ),
                };
                Some(admin_error(StatusCode::FORBIDDEN, code, message).into_response())
            }
            AdminMode::Token if self.authorized(request.headers()) => None,
            AdminMode::Token => Some(if wants_page(request) {
                assets::login_page(None, StatusCode::UNAUTHORIZED)
            } else {
                admin_error(
                    StatusCode::UNAUTHORIZED,
                    "admin_token_required",
                    "this needs the admin token: send 'Authorization: Bearer TOKEN' or sign in \
                     at /dashboard",
                )
                .into_response()
            }),
        }
    }
}

pub fn refused() -> Response {
    admin_error(
        StatusCode::FORBIDDEN,
        "admin_disabled",
        "the dashboard and admin API are off: this server listens beyond loopback and has no \
         admin token. Start it with --admin-token TOKEN (or HINDSIGHT_ADMIN_TOKEN)",
    )
    .into_response()
}

/// A browser asking for the page (not the API) gets the sign-in form instead of JSON.
fn wants_page(request: &Request) -> bool {
    request.method() == Method::GET && request.uri().path() == "/dashboard"
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Middleware for every protected admin route.
pub async fn require_admin(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(&request) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_or_cookie_digest_but_never_the_raw_token_as_cookie() {
        let auth = AdminAuth::new(Some("s3cret"), false);
        assert!(auth.authorized(&headers(&[(AUTHORIZATION, "Bearer s3cret")])));
        assert!(!auth.authorized(&headers(&[(AUTHORIZATION, "Bearer nope")])));
        let set = auth.sign_in_cookie("s3cret");
        let value = set.split(';').next().unwrap();
        assert!(auth.authorized(&headers(&[(COOKIE, &format!("a=b; {value}"))])));
        assert!(!auth.authorized(&headers(&[(COOKIE, "hindsight_admin=s3cret")])));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }

    #[test]
    fn modes_follow_token_and_bind() {
        assert_eq!(AdminAuth::new(None, true).mode(), AdminMode::OpenLocal);
        assert_eq!(AdminAuth::new(Some("  "), false).mode(), AdminMode::Refused);
        assert_eq!(AdminAuth::new(Some("t"), false).mode(), AdminMode::Token);
        let open = AdminAuth::new(None, true);
        assert!(!open.token_matches(""));
        let forged = format!("{COOKIE_NAME}={}", cookie_value(""));
        assert!(!open.authorized(&headers(&[(COOKIE, &forged)])));
    }
}
