//! OpenAI's error envelope: every failure the HTTP layer returns, including extractor
//! rejections, unknown routes and engine refusals, has the shape
//! `{"error":{"message","type","param","code"}}` so SDKs raise their own exception classes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::SubmitError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type` (`invalid_request_error`, `rate_limit_error`, `server_error`...).
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// The JSON body of an error response (also sent as an SSE event when a stream fails).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[schema(required)]
    pub param: Option<String>,
    #[schema(required)]
    pub code: Option<&'static str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, message)
    }

    /// A 400 naming the offending request field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("invalid_value"),
            ..Self::bad_request(message)
        }
    }

    /// Names the request field an error is about, unless it already names one.
    pub fn or_param(mut self, param: Option<&str>) -> Self {
        if self.param.is_none() {
            self.param = param.map(str::to_string);
        }
        self
    }

    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        Self {
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
            ..Self::bad_request(message)
        }
    }

    pub fn missing_api_key() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            )
        }
    }

    pub fn invalid_api_key() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                INVALID_REQUEST,
                "Incorrect API key provided.",
            )
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                format!("The model '{model}' does not exist."),
            )
        }
    }

    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            format!("Invalid URL ({method} {path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            code: Some("method_not_allowed"),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                format!("Method {method} is not allowed for {path}"),
            )
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            code: Some("payload_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                format!("The request body is larger than the limit of {limit} bytes."),
            )
        }
    }

    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    /// A body that is not `application/json` (see `api::guard`).
    pub fn unsupported_media_type(found: Option<&str>) -> Self {
        let found = match found {
            Some(found) => format!("'{found}'"),
            None => "no Content-Type".to_string(),
        };
        Self {
            code: Some("unsupported_media_type"),
            ..Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_REQUEST,
                format!(
                    "Request bodies must be JSON sent with 'Content-Type: application/json' \
                     (got {found})."
                ),
            )
        }
    }

    /// A generation that failed inside the engine: a token id outside the model's vocabulary is
    /// the request's fault (400); anything else is a 500 whose details stay in the log.
    pub fn engine_failure(detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        if is_token_out_of_range(&detail) {
            return Self {
                code: Some("invalid_value"),
                ..Self::bad_request(format!("Invalid token id: {detail}."))
            };
        }
        Self::internal(detail)
    }

    /// A 500 whose details go to the log, never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request.",
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}

/// Whether an engine error is `ModelError::TokenOutOfRange` ("token id N is outside the
/// vocabulary of V"): the engine reports failures as text.
fn is_token_out_of_range(detail: &str) -> bool {
    detail.contains("token id ") && detail.contains(" is outside the vocabulary of ")
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::QueueFull => Self::rate_limited(err.to_string()),
            SubmitError::ContextTooLong { .. } => Self::context_length_exceeded(err.to_string()),
            SubmitError::Invalid(message) => Self::bad_request(message),
            SubmitError::UnsupportedConstraint(message) => Self {
                code: Some("invalid_schema"),
                ..Self::bad_request(format!(
                    "The grammar engine cannot enforce this schema: {message}"
                ))
            },
            SubmitError::Stopped => Self::service_unavailable(err.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::TOO_MANY_REQUESTS;
        let mut response = (self.status, axum::Json(self.envelope())).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::ModelError;

    #[test]
    fn an_out_of_vocabulary_token_from_the_engine_is_the_client_s_fault() {
        let detail = ModelError::TokenOutOfRange {
            token: 49152,
            vocab: 49152,
        }
        .to_string();
        let err = ApiError::engine_failure(&detail);
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, Some("invalid_value"));
        assert!(err.message.contains("49152"), "{}", err.message);
        let err = ApiError::engine_failure("CUDA out of memory");
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.message.contains("CUDA"));
    }
}
