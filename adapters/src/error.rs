//! The one error type of the HTTP API, and its single mapping to responses.
//!
//! Every handler returns `Result<_, ApiError>`. `IntoResponse` turns it into
//! one JSON shape, `{"error": {"code": "...", "message": "..."}}`, with a
//! stable machine code and the status that tells the client what to do:
//! 4xx for its own input, 503 when the store cannot take writes, 500 for
//! anything else. Client errors are not logged; server errors are logged
//! once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pepper_storage::Error as StoreError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra machine-readable fields of the error object.
    extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    /// 503 `overloaded`: a named limit on concurrent work is reached. The
    /// response carries `Retry-After: 1`.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }

    /// An error with an explicit status and machine code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None }
    }

    /// 401 `unauthorized`: auth is on and the request carries no valid
    /// token. The response carries `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`: the caller's principal holds no grant for this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for a path the API does not have.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "no_route", format!("no such endpoint: {path}"))
    }

    /// 404 for a lease that is not live.
    pub fn no_lease(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no live lease {id}"))
    }

    /// 500 for a task that panicked or was cancelled by the runtime.
    pub fn task_failed(e: tokio::task::JoinError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("request task failed: {e}"))
    }

    /// 400 for a channel name that breaks PsEPR's grammar.
    pub fn bad_channel(e: pepper_router::Error) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_channel", e.to_string())
    }

    /// 403 for a client publishing on pepper's control plane.
    pub fn reserved_channel(channel: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "reserved_channel",
            format!("channel {channel} is reserved for pepper's control plane"),
        )
    }

    /// 400 for an event envelope that breaks a rule.
    pub fn invalid_event(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", message)
    }

    /// 400 for XML that is malformed, hostile or not a PsEPR envelope.
    pub fn invalid_xml(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_xml", message)
    }

    /// 413 for input over a named limit.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 400 for a body that is not what the endpoint takes.
    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// 400 for a query string that is not what the endpoint takes.
    pub fn invalid_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 410 for a start below what retention kept, with the earliest
    /// sequence number the client can resume from.
    pub fn compacted(asked: u64, earliest: u64) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::GONE,
            "compacted",
            format!("sequence number {asked} was trimmed by retention; the log starts at {earliest}"),
        );
        e.extra = Some(("earliest_seq", serde_json::Value::from(earliest)));
        e
    }

    /// The error with one more machine-readable field.
    pub fn with_extra(mut self, key: &'static str, value: serde_json::Value) -> ApiError {
        self.extra = Some((key, value));
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid_input"),
            StoreError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            StoreError::Poisoned(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_poisoned"),
            StoreError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            StoreError::Corruption { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corruption"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The machine code of an error response, kept in the response's
/// extensions for the layers on the way out (refusals counted by reason).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let retry_after = match (&self.extra, self.code) {
            (Some(("retry_after_s", serde_json::Value::Number(n))), "quota_exceeded") => n.as_u64(),
            _ => None,
        };
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let (Some((key, value)), Some(map)) = (self.extra, error.as_object_mut()) {
            map.insert(key.to_string(), value);
        }
        let body = serde_json::json!({ "error": error });
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        if self.code == "overloaded" {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "unauthorized" {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if self.code == "body_timeout" {
            // The rest of the body may still be on its way: the connection
            // cannot carry another request.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}
