//! The one error type every route answers with, mapped to a status and a
//! JSON body (`{"error": {"code": "...", "message": "..."}}`) in one place.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use serde_json::json;

use crate::response::json_response;

/// An error a route answers with. Expected failures carry a stable `code`
/// for clients; unexpected ones are logged with their cause chain and reach
/// the client only as a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message names the field and limit.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no credentials, or wrong ones.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: authenticated, but not allowed to do this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404: no such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the resource's state (a revoked key
    /// cannot be rotated, say).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 405: the route exists but not for this method.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// 429: a rate limit or quota refused the request; retry after the given time.
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// 413: the body is over the limit named in the message.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 413 with a code of its own, e.g. a gzip body that inflates past the
    /// allowed ratio (`decompression_ratio_exceeded`).
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// 503: a dependency is down; retry after the given time.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// 500: a bug or an unexpected failure; details go to the log only.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unauthorized { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::TooManyRequests { code, .. }
            | ApiError::TooLarge { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Unexpected(_) => "internal_error",
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) | ApiError::TooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response for this error. Internal causes are logged, never sent.
    pub fn into_response(self) -> Response<Bytes> {
        let message = match &self {
            ApiError::Unexpected(cause) => {
                tracing::error!(error = ?cause, "request failed unexpectedly");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = json_response(
            self.status(),
            &json!({ "error": { "code": self.code(), "message": message } }),
        );
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            ApiError::Unavailable { retry_after, .. }
            | ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn expected_errors_carry_their_code_and_message() {
        let response = ApiError::BadRequest {
            code: "invalid_json",
            message: "body is not JSON".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(&response),
            json!({"error": {"code": "invalid_json", "message": "body is not JSON"}})
        );
    }

    #[test]
    fn unexpected_errors_hide_their_cause() {
        let response =
            ApiError::Unexpected(anyhow::anyhow!("password=hunter2 rejected")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!String::from_utf8_lossy(response.body()).contains("hunter2"));
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let response = ApiError::Unavailable {
            message: "try later".into(),
            retry_after: Duration::from_secs(30),
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
    }
}
