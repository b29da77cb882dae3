//! What keeps a server without API keys from being an open door to every web page its user
//! visits. Such a server listens on loopback only (`ServeConfig::bind_addrs`), but a browser on
//! the same machine can still reach it:
//!
//! - a cross-site `<form>` or `fetch(…, {mode: "no-cors"})` can POST `text/plain` or form bodies
//!   without a CORS preflight, so /v1 bodies must be `application/json` (which needs a
//!   preflight, and this server never grants one): 415 otherwise, on every server;
//! - a page on `attacker.example` whose DNS later answers 127.0.0.1 (DNS rebinding) talks to us
//!   with `Host: attacker.example` and may read the answers, so /v1 answers only requests
//!   addressed to a loopback name or an `--allowed-host` (403 `host_not_allowed`);
//! - a browser names the page that sent a request in `Origin`: one whose host is not loopback or
//!   allowed is refused (403 `origin_not_allowed`).
//!
//! With API keys configured, Host and Origin are not checked on /v1: a page cannot attach the key
//! (it never has it, and a cross-site `Authorization` header needs the preflight we never
//! grant), and a keyed server may sit behind proxies or names we cannot list. Only keyed servers
//! may bind beyond loopback, so a public bind always answers any Host.
//!
//! The admin routes use the same [`HostPolicy`] when they are open without a token.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The host names a request may be addressed to: loopback names always, plus the configured
/// extra names (`--allowed-host`, `HINDSIGHT_ALLOWED_HOSTS`), compared without port or case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    extra: Arc<[String]>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Origin,
}

impl HostPolicy {
    /// Loopback names plus `extra` (each a name, optionally with a port, which is ignored).
    pub fn new<I, S>(extra: I) -> HostPolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let extra = extra
            .into_iter()
            .map(|name| normalize(host_name(name.as_ref().trim())))
            .filter(|name| !name.is_empty())
            .collect();
        HostPolicy { extra }
    }

    /// The configured extra names.
    pub fn extra(&self) -> &[String] {
        &self.extra
    }

    /// Whether a host name (no port) is loopback or allowed.
    pub fn allows(&self, name: &str) -> bool {
        let name = normalize(name);
        is_loopback_name(&name) || self.extra.contains(&name)
    }

    /// Whether every Host header (and an absolute request URI's authority) names an allowed
    /// host. A request without any (HTTP/1.0, in-process tests) counts as local.
    pub fn host_allowed(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let headers_ok = headers.get_all(HOST).iter().all(|value| {
            value
                .to_str()
                .is_ok_and(|host| self.allows(host_name(host)))
        });
        headers_ok && uri.host().is_none_or(|host| self.allows(host_name(host)))
    }

    /// Whether every `Origin` header, if any, is a page on an allowed host (any scheme and port).
    /// `Origin: null` (sandboxed frames, local files, redirects) is refused.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        headers.get_all(ORIGIN).iter().all(|value| {
            value
                .to_str()
                .ok()
                .and_then(|origin| origin.trim().split_once("://"))
                .is_some_and(|(_, authority)| {
                    let authority = authority.split('/').next().unwrap_or("");
                    let authority = authority.rsplit('@').next().unwrap_or("");
                    !authority.is_empty() && self.allows(host_name(authority))
                })
        })
    }

    /// The first check a request fails, if any.
    pub fn refusal(&self, headers: &HeaderMap, uri: &Uri) -> Option<Refusal> {
        if !self.host_allowed(headers, uri) {
            Some(Refusal::Host)
        } else if !self.origin_allowed(headers) {
            Some(Refusal::Origin)
        } else {
            None
        }
    }
}

/// `host[:port]` or `[v6]:port` → the host, without brackets.
pub fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address has more than one colon: no port to strip.
        Some((name, _)) if !name.contains(':') => name,
        _ => authority,
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// localhost, *.localhost, 127.0.0.0/8 and ::1.
pub fn is_loopback_name(name: &str) -> bool {
    let name = normalize(name);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the /v1 guard enforces.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub hosts: HostPolicy,
    /// API keys are configured: Host and Origin are not checked.
    pub keyed: bool,
}

fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether the request carries (or, for POST/PUT/PATCH, is meant to carry) a body.
fn has_body(request: &Request) -> bool {
    if matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        return true;
    }
    let headers = request.headers();
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|len| len.trim() != "0")
}

/// `application/json`, with any parameters (`; charset=utf-8`), in any case.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn refused(code: &'static str, message: String) -> Response {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message,
        kind: "invalid_request_error",
        param: None,
        code: Some(code),
    }
    .into_response()
}

/// Middleware for every route: on /v1, Host and Origin (without API keys) and the body's
/// Content-Type (always).
pub async fn guard_v1(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if !is_v1(request.uri().path()) {
        return next.run(request).await;
    }
    if !guard.keyed {
        match guard.hosts.refusal(request.headers(), request.uri()) {
            Some(Refusal::Host) => {
                return refused(
                    "host_not_allowed",
                    "This server answers only requests addressed to localhost, a loopback \
                     address or a name given with --allowed-host (HINDSIGHT_ALLOWED_HOSTS)."
                        .into(),
                )
            }
            Some(Refusal::Origin) => {
                return refused(
                    "origin_not_allowed",
                    "Requests from web pages on other sites are refused. To allow a page's \
                     host, start the server with --allowed-host NAME."
                        .into(),
                )
            }
            None => {}
        }
    }
    if has_body(&request) && !is_json(request.headers()) {
        let found = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return ApiError::unsupported_media_type(found.as_deref()).into_response();
    }
    next.run(request).await
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
    fn loopback_and_allowed_hosts() {
        let policy = HostPolicy::new(["Box.LAN:8080", " ", "[fd00::1]"]);
        assert_eq!(policy.extra(), ["box.lan", "fd00::1"]);
        let uri = Uri::from_static("/v1/models");
        for host in [
            "localhost:8080",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1:1",
            "[::1]:80",
            "127.0.0.1",
            "app.localhost",
            "box.lan:9",
            "[fd00::1]:8080",
        ] {
            assert!(
                policy.host_allowed(&headers(&[(HOST, host)]), &uri),
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
            "localhost.evil",
        ] {
            assert!(
                !policy.host_allowed(&headers(&[(HOST, host)]), &uri),
                "{host}"
            );
        }
        assert!(policy.host_allowed(&HeaderMap::new(), &uri));
        let absolute = Uri::from_static("http://evil.example/v1/models");
        assert!(!policy.host_allowed(&HeaderMap::new(), &absolute));
    }

    #[test]
    fn origins() {
        let policy = HostPolicy::new(["box.lan"]);
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:3000",
            "https://box.lan",
            "http://[::1]:8080",
        ] {
            assert!(
                policy.origin_allowed(&headers(&[(ORIGIN, origin)])),
                "{origin}"
            );
        }
        for origin in [
            "https://evil.example",
            "http://127.0.0.1.evil.example",
            "null",
            "",
        ] {
            assert!(
                !policy.origin_allowed(&headers(&[(ORIGIN, origin)])),
                "{origin}"
            );
        }
        assert!(policy.origin_allowed(&HeaderMap::new()));
    }

    #[test]
    fn json_content_types() {
        for ct in ["application/json", "Application/JSON; charset=utf-8"] {
            assert!(is_json(&headers(&[(CONTENT_TYPE, ct)])), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert!(!is_json(&headers(&[(CONTENT_TYPE, ct)])), "{ct}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
