//! Errors in OpenAI's JSON shape, with their HTTP status.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::client::ErrorKind;
use serde_json::json;

/// A request that ends in an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: a field is wrong.
    BadRequest {
        /// The field.
        param: String,
        /// What is wrong.
        message: String,
    },
    /// 401: no key or an unknown key.
    Unauthorized,
    /// 404: a model or path that does not exist.
    NotFound {
        /// What was not found.
        message: String,
        /// OpenAI's code for it.
        code: &'static str,
    },
    /// 405: wrong method.
    MethodNotAllowed,
    /// 413: the body or the prompt is too large.
    TooLarge {
        /// What exceeded what.
        message: String,
    },
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: retry after the given time.
    TooMany {
        /// Why.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// 500: the supervisor failed the answer.
    Internal {
        /// Why.
        message: String,
    },
    /// 503: nothing can serve now.
    Unavailable {
        /// Why.
        message: String,
    },
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn bad_request(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            param: param.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error object: `{"message", "type", "param", "code"}`.
    pub fn body(&self) -> serde_json::Value {
        let (message, kind, param, code): (String, &str, Option<&str>, Option<&str>) = match self {
            Self::BadRequest { param, message } => {
                (message.clone(), "invalid_request_error", Some(param), None)
            }
            Self::Unauthorized => (
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.".into(),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            Self::NotFound { message, code } => {
                (message.clone(), "invalid_request_error", None, Some(code))
            }
            Self::MethodNotAllowed => (
                "Method not allowed for this path.".into(),
                "invalid_request_error",
                None,
                None,
            ),
            Self::TooLarge { message } => (
                message.clone(),
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
            Self::UnsupportedMediaType => (
                "Content-Type must be application/json.".into(),
                "invalid_request_error",
                None,
                None,
            ),
            Self::TooMany { message, .. } => (
                message.clone(),
                "rate_limit_error",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::Internal { message } => (message.clone(), "server_error", None, None),
            Self::Unavailable { message } => {
                (message.clone(), "server_error", None, Some("unavailable"))
            }
        };
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
    }

    /// The error for a supervisor's refusal or failure of a request.
    pub fn from_supervisor(kind: ErrorKind, message: String, busy_retry: Duration) -> Self {
        match kind {
            ErrorKind::Busy => Self::TooMany {
                message,
                retry_after: busy_retry,
            },
            ErrorKind::BadRequest if message.starts_with("the conversation is") => {
                Self::TooLarge { message }
            }
            ErrorKind::BadRequest if message.starts_with("unknown model") => Self::NotFound {
                message,
                code: "model_not_found",
            },
            ErrorKind::BadRequest => Self::bad_request("messages", message),
            ErrorKind::TooHot | ErrorKind::NoWorker | ErrorKind::ShuttingDown => {
                Self::Unavailable { message }
            }
            ErrorKind::WorkerFailed | ErrorKind::Cancelled => Self::Internal { message },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Self::TooMany { retry_after, .. } = &self {
            let secs = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_errors_map_to_statuses() {
        let s = |kind, msg: &str| {
            ApiError::from_supervisor(kind, msg.into(), Duration::from_secs(2)).status()
        };
        assert_eq!(s(ErrorKind::Busy, "busy"), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            s(
                ErrorKind::BadRequest,
                "the conversation is 9 characters; the limit is 1"
            ),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            s(
                ErrorKind::BadRequest,
                "unknown model \"x\": no slot serves it"
            ),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s(ErrorKind::NoWorker, "none"),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn busy_carries_retry_after() {
        let r = ApiError::TooMany {
            message: "busy".into(),
            retry_after: Duration::from_secs(3),
        }
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
