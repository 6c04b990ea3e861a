//! Errors as the API shows them: an HTTP status, a stable machine-readable
//! code and a message for people. Bad input is always a 4xx; a 5xx means
//! the server or its database failed, and its message never carries
//! internals such as connection strings.

use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drydock_engine::client::ClientError;
use drydock_store::StoreError;
use serde::Serialize;

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `bad-request`, `bad-json`, `not-found`, `conflict`,
    /// `too-large`, `unsupported-media-type`, `method-not-allowed`,
    /// `internal`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = (self.status == StatusCode::SERVICE_UNAVAILABLE)
            .then_some([(axum::http::header::RETRY_AFTER, "1")]);
        (
            self.status,
            retry_after,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::Invalid { .. } => Self::bad_request(e.to_string()),
            // An outage, not a fault of the request: say so, and when to retry.
            StoreError::Unavailable(_) | StoreError::Busy(_) => {
                tracing::warn!("request failed: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database-unavailable",
                    format!("{e}; try again shortly"),
                )
            }
            e => {
                tracing::error!("request failed: {e}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server could not complete the request; see its log",
                )
            }
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Store(s) => s.into(),
            ClientError::NotReleasable { .. }
            | ClientError::NotRenewable { .. }
            | ClientError::NotActive { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ClientError::Interface(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "resource-unreachable",
                e.to_string(),
            ),
            ClientError::UnknownType(..)
            | ClientError::InvalidFields(_)
            | ClientError::InvalidRequest(_) => Self::bad_request(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too-large")
            }
            _ => (StatusCode::BAD_REQUEST, "bad-json"),
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", r.body_text());
        }
        Self::bad_request(r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
