//! Which session a request names, from the identity hints real clients send. The first one
//! present wins:
//!
//! 1. `X-Session-Id` header (`header`), then the body's `session_id` (`body`): Hindsight's own;
//! 2. `previous_response_id` (Responses API): the predecessor's session, exactly;
//! 3. OpenClaw's `session_id` or `x-session-affinity` header (`affinity_header`), sent when its
//!    `compat.sendSessionAffinityHeaders` is on;
//! 4. the body's `prompt_cache_key` (`prompt_cache_key`): clients such as Codex set it per
//!    conversation; as it may also be shared by conversations with a common prefix, a turn
//!    named only by it links to an earlier turn by content, never to "the session's latest";
//! 5. the body's `metadata.session_id`, else `metadata.conversation_id` (`metadata`).
//!
//! `user` names a person, and a person has many conversations, so it never names a session:
//! it narrows content linking to earlier turns with the same `user`. With none of these the
//! store links by content (see `store::linking`).
//!
//! Every id is capped at [`MAX_SESSION_ID_BYTES`]: a longer one is a 400, never truncated
//! (two long ids sharing a prefix must not merge).

use serde_json::{Map, Value};

use super::error::ApiError;
use super::turn_record::SessionHeaders;
use crate::store::LinkMethod;

pub const MAX_SESSION_ID_BYTES: usize = 256;

/// OpenClaw's session headers, in the order they are read.
pub const AFFINITY_HEADERS: [&str; 2] = ["session_id", "x-session-affinity"];

/// The hints a request body may carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyHints<'a> {
    pub session_id: Option<&'a str>,
    pub prompt_cache_key: Option<&'a str>,
    pub metadata: Option<&'a Map<String, Value>>,
    pub user: Option<&'a str>,
}

/// A hint's value, trimmed; None when empty; a 400 naming `param` when too long.
pub fn hint(param: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_SESSION_ID_BYTES {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "{param} must be at most {MAX_SESSION_ID_BYTES} bytes, got {}.",
                value.len()
            ),
        ));
    }
    Ok(Some(value.to_string()))
}

impl SessionHeaders {
    /// Picks the session id by the precedence above; `previous` is the session of the
    /// Responses API predecessor, if any.
    pub fn resolve(mut self, body: &BodyHints, previous: Option<String>) -> Result<Self, ApiError> {
        let metadata = |field: &str| {
            let value = body
                .metadata
                .and_then(|m| m.get(field))
                .and_then(Value::as_str);
            hint(&format!("metadata.{field}"), value)
        };
        // Every hint is checked, used or not, so a request is refused the same way whatever
        // else it carries.
        let ranked = [
            (self.session_id.take(), LinkMethod::Header),
            (hint("session_id", body.session_id)?, LinkMethod::Body),
            (previous, LinkMethod::PreviousResponseId),
            (self.affinity.take(), LinkMethod::AffinityHeader),
            (
                hint("prompt_cache_key", body.prompt_cache_key)?,
                LinkMethod::PromptCacheKey,
            ),
            (metadata("session_id")?, LinkMethod::Metadata),
            (metadata("conversation_id")?, LinkMethod::Metadata),
        ];
        self.user = hint("user", body.user)?;
        let (session_id, source) = ranked
            .into_iter()
            .find_map(|(id, source)| id.map(|id| (id, source)))
            .unzip();
        self.session_id = session_id;
        self.session_source = source;
        Ok(self)
    }

    /// Names a conversation that starts here (Responses API), so its follow-ups can name it.
    pub fn name_new(&mut self, name: String) {
        self.session_id = Some(name);
        self.session_source = Some(LinkMethod::New);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> SessionHeaders {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        SessionHeaders::parse(&map).unwrap()
    }

    fn resolved(
        pairs: &[(&'static str, &str)],
        body: BodyHints,
        previous: Option<&str>,
    ) -> (Option<String>, Option<LinkMethod>) {
        let s = headers(pairs)
            .resolve(&body, previous.map(str::to_string))
            .unwrap();
        (s.session_id, s.session_source)
    }

    #[test]
    fn precedence() {
        let meta = json!({"conversation_id": "conv", "session_id": "meta"});
        let mut body = BodyHints {
            session_id: Some("body"),
            prompt_cache_key: Some("pck"),
            metadata: meta.as_object(),
            user: Some("ann"),
        };
        let all = [
            ("x-session-id", "hdr"),
            ("session_id", "oc"),
            ("x-session-affinity", "aff"),
        ];
        let named = |id: &str, m| (Some(id.to_string()), Some(m));
        assert_eq!(
            resolved(&all, body, Some("prev")),
            named("hdr", LinkMethod::Header)
        );
        assert_eq!(
            resolved(&all[1..], body, Some("prev")),
            named("body", LinkMethod::Body)
        );
        body.session_id = None;
        assert_eq!(
            resolved(&all[1..], body, Some("prev")),
            named("prev", LinkMethod::PreviousResponseId)
        );
        assert_eq!(
            resolved(&all[1..], body, None),
            named("oc", LinkMethod::AffinityHeader)
        );
        assert_eq!(
            resolved(&all[2..], body, None),
            named("aff", LinkMethod::AffinityHeader)
        );
        assert_eq!(
            resolved(&[], body, None),
            named("pck", LinkMethod::PromptCacheKey)
        );
        body.prompt_cache_key = Some("  ");
        assert_eq!(
            resolved(&[], body, None),
            named("meta", LinkMethod::Metadata)
        );
        let conv = json!({"conversation_id": "conv"});
        body.metadata = conv.as_object();
        assert_eq!(
            resolved(&[], body, None),
            named("conv", LinkMethod::Metadata)
        );
        body.metadata = None;
        // `user` alone never names a session.
        let s = headers(&[]).resolve(&body, None).unwrap();
        assert_eq!((s.session_id, s.user.as_deref()), (None, Some("ann")));
    }

    #[test]
    fn ids_are_capped() {
        let long = "x".repeat(MAX_SESSION_ID_BYTES + 1);
        let fits = "é".repeat(MAX_SESSION_ID_BYTES / 2);
        let body = BodyHints {
            prompt_cache_key: Some(&fits),
            ..BodyHints::default()
        };
        assert!(headers(&[]).resolve(&body, None).is_ok());
        for (param, body) in [
            (
                "session_id",
                BodyHints {
                    session_id: Some(&long),
                    ..body
                },
            ),
            (
                "prompt_cache_key",
                BodyHints {
                    prompt_cache_key: Some(&long),
                    ..body
                },
            ),
            (
                "user",
                BodyHints {
                    user: Some(&long),
                    ..body
                },
            ),
        ] {
            let err = headers(&[("x-session-id", "ok")])
                .resolve(&body, None)
                .unwrap_err();
            assert_eq!(err.status.as_u16(), 400);
            assert_eq!(err.param.as_deref(), Some(param));
        }
        let meta = json!({"session_id": long});
        let body = BodyHints {
            metadata: meta.as_object(),
            ..BodyHints::default()
        };
        let err = headers(&[]).resolve(&body, None).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("metadata.session_id"));
    }
}
