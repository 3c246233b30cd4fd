//! [`AppError`], every error the service answers with, and its JSON body: 4xx with a plain
//! message for bad requests, a generic 500 plus a log line for internal failures.

use allscan_preprocess::DecodeError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Every error the service answers with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Unknown route.
    #[error("no such route: {0}")]
    NotFound(String),
    /// Known route, wrong method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Not a multipart form, or a file that is not an image.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A malformed request (no file, empty file, broken form).
    #[error("{0}")]
    BadRequest(String),
    /// A token is configured and the request lacks it or has another one.
    #[error("missing or wrong token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// The upload was not read completely within the limit.
    #[error("upload not received within {0} s")]
    BodyTimeout(u64),
    /// Body or image over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// An image that cannot be decoded (truncated, corrupt, too small).
    #[error("{0}")]
    Unprocessable(String),
    /// Every processing slot is busy.
    #[error("server busy: every processing slot is in use, retry in {retry_after_s} s")]
    Busy {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The request took longer than the limit.
    #[error("request took longer than {0} s")]
    Timeout(u64),
    /// A failure on our side; the detail goes to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A decode error of an uploaded file, as a client error.
    pub(crate) fn from_decode(e: DecodeError) -> Self {
        let msg = e.to_string();
        match e {
            DecodeError::Empty { .. } => Self::BadRequest(msg),
            DecodeError::UnknownFormat { .. } => Self::UnsupportedMediaType(msg),
            DecodeError::TooLarge { .. } => Self::TooLarge(msg),
            DecodeError::TooSmall { .. } | DecodeError::Corrupt { .. } | DecodeError::Io { .. } => {
                Self::Unprocessable(msg)
            }
        }
    }
}

/// JSON body of every error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A plain message.
    pub error: String,
    /// The HTTP status code.
    pub status: u16,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(detail) = &self {
            eprintln!("allscan-server: internal error: {detail}");
        }
        let body = Json(ErrorBody { error: self.to_string(), status: status.as_u16() });
        let mut resp = (status, body).into_response();
        match self {
            Self::Busy { retry_after_s } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            Self::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
