//! A JSON body extractor whose every failure is an OpenAI error envelope naming the field
//! (axum's own `Json` answers with plain text and never names the parameter).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The request body parsed as `T`; malformed JSON, wrong types and oversized bodies are
/// rejected with 400/413 in the envelope. The Content-Type is checked before any handler runs,
/// for every /v1 route (`api::guard`): only `application/json` bodies reach this.
pub struct OpenAiJson<T>(pub T);

impl<T, S> FromRequest<S> for OpenAiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|limit| limit.0)
            .unwrap_or(0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// The configured body limit, put in request extensions so the 413 message can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Parses a JSON body, naming the field that has the wrong type.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if !inner.is_data() {
            return ApiError::bad_request(format!(
                "We could not parse the JSON body of your request ({inner}). \
                 The body must be a JSON object."
            ));
        }
        let message = strip_position(&inner.to_string());
        let param = match missing_field(&message) {
            Some(field) if path != "." => Some(format!("{path}.{field}")),
            Some(field) => Some(field),
            None => (path != ".").then_some(path),
        };
        match param {
            Some(param) => {
                ApiError::invalid_param(param.clone(), format!("Invalid '{param}': {message}."))
            }
            None => ApiError::bad_request(format!("Invalid request body: {message}.")),
        }
    })?;
    deserializer.end().map_err(|err| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request ({err})."
        ))
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C", which means nothing to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// "missing field `model`" names the parameter in the message, not in the path.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        model: String,
        temperature: Option<f32>,
        nested: Option<Vec<Inner>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let err = parse_json::<Sample>(br#"{"model":"m","temperature":"hot"}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("temperature"));
        assert!(err.message.contains("expected f32"), "{}", err.message);
        assert!(!err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn names_nested_fields_and_missing_fields() {
        let err =
            parse_json::<Sample>(br#"{"model":"m","nested":[{"n":1},{"n":-2}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("nested[1].n"));
        let err = parse_json::<Sample>(br#"{"temperature":1}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err = parse_json::<Sample>(br#"{"model":"m","nested":[{}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("nested[0].n"));
    }

    #[test]
    fn malformed_json_has_no_param() {
        let err = parse_json::<Sample>(br#"{"model": "m""#).unwrap_err();
        assert_eq!(err.param, None);
        assert!(err.message.contains("could not parse"), "{}", err.message);
        let err = parse_json::<Sample>(br#"{"model":"m"} trailing"#).unwrap_err();
        assert!(err.message.contains("could not parse"), "{}", err.message);
    }
}
