//! API errors: a status code and a JSON body `{"error": "...", "hint": "..."}`
//! that says what to do next. Internal details go to the log, not the body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::workflow::WorkflowError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message).hint("sign in with `jit-gateway login --gateway <URL>`")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .hint("try again later; the gateway's operators can see details in its log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(hint) = self.hint {
            body["hint"] = hint.into();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        let status = match &e {
            WorkflowError::Refused(_) | WorkflowError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            WorkflowError::Approval(crate::policy::ApprovalDenied::NotPending { .. }) => StatusCode::CONFLICT,
            WorkflowError::Approval(_) | WorkflowError::Forbidden(_) => StatusCode::FORBIDDEN,
            WorkflowError::NotFound(_) => StatusCode::NOT_FOUND,
            WorkflowError::Conflict(_) => StatusCode::CONFLICT,
            WorkflowError::Store(detail) => {
                tracing::error!(error = %detail, "store error behind an API call");
                return ApiError::unavailable("the gateway's store is unavailable");
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match &r {
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
            _ => r.status(),
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than api.max_body allows".to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "send JSON with Content-Type: application/json".to_string(),
            _ => r.body_text(),
        };
        ApiError::new(status, message).hint("see docs/api.md for the request shapes")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
