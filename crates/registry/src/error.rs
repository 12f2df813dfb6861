//! The distribution spec's error codes and the one place they become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error code from the distribution spec (plus berth's own for server faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// Range not satisfiable (blob range or out-of-order chunk).
    RangeInvalid,
    /// Something failed on the server side.
    Internal,
}

impl Code {
    /// The code string in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid | Code::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Internal => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status the spec pairs with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::BlobUploadInvalid
            | Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to a client: a spec code, a message, optional detail and extra headers.
#[derive(Debug)]
pub struct ApiError {
    /// The spec code.
    pub code: Code,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Machine-readable detail.
    pub detail: serde_json::Value,
    /// Headers the response must carry (e.g. `WWW-Authenticate`, `Range`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    status: Option<StatusCode>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
            status: None,
        }
    }

    /// Adds machine-readable detail.
    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = detail;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// Overrides the status the code implies (the spec pairs some codes with several).
    pub fn status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    /// A server-side failure; the cause is logged, the client sees a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "request failed on the server side");
        ApiError::new(Code::Internal, "internal error; see the registry's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| self.code.status());
        let body = json!({"errors": [{
            "code": self.code.as_str(),
            "message": self.message,
            "detail": self.detail,
        }]});
        let mut response = (status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> ApiError {
        ApiError::internal(e)
    }
}

impl From<crate::metadata::MetadataError> for ApiError {
    fn from(e: crate::metadata::MetadataError) -> ApiError {
        ApiError::internal(e)
    }
}

/// Result of a request handler.
pub type ApiResult<T> = Result<T, ApiError>;
