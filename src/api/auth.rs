//! Bearer-key authentication for /v1 routes. Keys are kept only as SHA-256 digests; the
//! caller's identity is a short prefix of that digest, never the key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::admin::AdminAuth;
use super::caller::Caller;
use super::error::ApiError;

/// Hex characters of the digest used as a key's id.
const KEY_ID_LEN: usize = 16;

/// The accepted API keys; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    ids_by_digest: Arc<HashMap<[u8; 32], String>>,
}

impl ApiKeys {
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids_by_digest = keys
            .into_iter()
            .map(|key| {
                let digest = digest(key.as_ref());
                (digest, hex::encode(digest)[..KEY_ID_LEN].to_string())
            })
            .collect();
        Self {
            ids_by_digest: Arc::new(ids_by_digest),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids_by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ids_by_digest.len()
    }

    /// The id of a key: the first 16 hex characters of its SHA-256.
    pub fn key_id(key: &str) -> String {
        hex::encode(digest(key))[..KEY_ID_LEN].to_string()
    }

    /// The caller a presented key identifies, if it is one of ours. Comparing digests keeps the
    /// lookup independent of how much of a guessed key matches.
    pub fn identify(&self, presented: &str) -> Option<String> {
        self.ids_by_digest.get(&digest(presented)).cloned()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What [`authenticate`] checks: the API keys, and whether /metrics and /readyz need a key or
/// the admin token (`--protect-metrics`).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub keys: ApiKeys,
    /// Some: the operational routes need an API key, or this admin's token or sign-in cookie.
    pub protect_ops: Option<AdminAuth>,
}

/// The routes `--protect-metrics` covers (/healthz stays open for liveness probes).
pub const OPS_ROUTES: [&str; 2] = ["/metrics", "/readyz"];

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
}

/// Inserts [`Caller`] into every request; with keys configured, /v1 routes need a valid
/// `Authorization: Bearer` header; with `protect_ops`, so do /metrics and /readyz (a key or the
/// admin token).
pub async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if let Some(admin) = gate
        .protect_ops
        .as_ref()
        .filter(|_| OPS_ROUTES.contains(&path))
    {
        let presented = bearer(&request);
        let admitted = admin.authorized(request.headers())
            || presented.is_some_and(|key| gate.keys.identify(key).is_some());
        if !admitted {
            return match presented {
                None => ApiError::missing_api_key(),
                Some(_) => ApiError::invalid_api_key(),
            }
            .into_response();
        }
    }
    let protected = !gate.keys.is_empty() && (path == "/v1" || path.starts_with("/v1/"));
    let caller = if protected {
        let Some(presented) = bearer(&request) else {
            return ApiError::missing_api_key().into_response();
        };
        match gate.keys.identify(presented) {
            Some(key_id) => Caller {
                key_id: Some(key_id),
            },
            None => return ApiError::invalid_api_key().into_response(),
        }
    } else {
        Caller::default()
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
