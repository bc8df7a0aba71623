//! `ApiError`: the one error type handlers return. It maps to a status and the
//! `{"error": {"code", "message"}}` body, and never carries internals to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use taos_proto::error::{ErrorBody, ErrorDetail};

use crate::auth::AuthError;
use crate::notify::NotifyError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "authentication required",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Logs the real error (the request span carries the request id) and returns a bland 500.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the host log has details under this request's x-request-id",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid username or password",
            ),
            AuthError::WrongPassword => ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_password",
                "the current password is wrong",
            ),
            AuthError::InvalidToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "invalid, used or expired token",
            ),
            AuthError::RateLimited { retry_after_secs } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many failed attempts; retry in {retry_after_secs} s"),
                )
            },
            AuthError::Busy { retry_after_secs } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!("too many sign-ins at once; retry in {retry_after_secs} s"),
                )
            },
            AuthError::AlreadyConfigured => ApiError::new(
                StatusCode::CONFLICT,
                "already_configured",
                "the owner account already exists; log in instead",
            ),
            AuthError::BadInput(m) => ApiError::bad_request(m),
            AuthError::NotFound => ApiError::not_found("not found"),
            e @ (AuthError::Db(_) | AuthError::Hash(_)) => ApiError::internal(e),
        }
    }
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::BadInput(m) => ApiError::bad_request(m),
            NotifyError::NotFound => ApiError::not_found("no such notification"),
            e @ (NotifyError::Db(_) | NotifyError::Json(_) | NotifyError::Decode(_)) => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<crate::chat::ChatError> for ApiError {
    fn from(e: crate::chat::ChatError) -> Self {
        use crate::chat::ChatError;
        match e {
            ChatError::BadInput(m) => ApiError::bad_request(m),
            ChatError::NotFound(m) => ApiError::not_found(m),
            ChatError::Forbidden(m) => ApiError::forbidden(m),
            ChatError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ (ChatError::Db(_) | ChatError::Decode(_)) => ApiError::internal(e),
        }
    }
}

impl From<crate::agents::AgentError> for ApiError {
    fn from(e: crate::agents::AgentError) -> Self {
        use crate::agents::AgentError;
        match e {
            AgentError::BadInput(m) => ApiError::bad_request(m),
            AgentError::NotFound => ApiError::not_found("no such agent"),
            e @ (AgentError::Db(_) | AgentError::Decode(_)) => ApiError::internal(e),
        }
    }
}

impl From<crate::bridge::BridgeError> for ApiError {
    fn from(e: crate::bridge::BridgeError) -> Self {
        use crate::bridge::BridgeError;
        match e {
            BridgeError::BadInput(m) => ApiError::bad_request(m),
            BridgeError::UnknownTrace => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_trace",
                "this trace_id was never delivered to this agent",
            ),
            BridgeError::Chat(e) => e.into(),
            e @ (BridgeError::Db(_) | BridgeError::Decode(_)) => ApiError::internal(e),
        }
    }
}

impl From<crate::trace::TraceError> for ApiError {
    fn from(e: crate::trace::TraceError) -> Self {
        use crate::trace::TraceError;
        match e {
            TraceError::BadSlug => ApiError::bad_request("not a valid agent name"),
            TraceError::BadInput(m) => ApiError::bad_request(m),
            e @ TraceError::QuotaFull { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "trace_quota_full",
                e.to_string(),
            ),
            e => ApiError::internal(e),
        }
    }
}

impl From<crate::ratelimit::RateError> for ApiError {
    fn from(e: crate::ratelimit::RateError) -> Self {
        use crate::ratelimit::RateError;
        match e {
            RateError::Limited { retry_after } => {
                // Whole seconds, rounded up: retrying at the announced time must succeed.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                ApiError {
                    retry_after_secs: Some(secs.max(1)),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!("this agent is sending too fast; retry in {} s", secs.max(1)),
                    )
                }
            }
            RateError::TooMany { asked, burst } => ApiError::bad_request(format!(
                "{asked} in one request is more than this agent's limit of {burst}; send smaller \
                 batches"
            )),
        }
    }
}

impl From<crate::agents::lifecycle::LifecycleError> for ApiError {
    fn from(e: crate::agents::lifecycle::LifecycleError) -> Self {
        use crate::agents::lifecycle::LifecycleError;
        match e {
            LifecycleError::NoAgent => ApiError::not_found("no such agent"),
            LifecycleError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ LifecycleError::NoRuntime => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_runtime", e.to_string())
            }
            // The runtime's own words, so the owner knows why.
            LifecycleError::Runtime(m) => {
                tracing::error!(error = %m, "runtime operation failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "runtime_error", m)
            }
            LifecycleError::Unsupported(m) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", m)
            }
            LifecycleError::Agent(e) => e.into(),
            e @ LifecycleError::Db(_) => ApiError::internal(e),
        }
    }
}

impl From<crate::agents::CreateError> for ApiError {
    fn from(e: crate::agents::CreateError) -> Self {
        use crate::agents::CreateError;
        match e {
            e @ CreateError::Race => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CreateError::Agent(e) => e.into(),
            CreateError::Chat(e) => e.into(),
            e @ CreateError::Db(_) => ApiError::internal(e),
        }
    }
}
