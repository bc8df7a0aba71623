//! `ApiError`: the one error type handlers return. It maps to a status and the
//! `{"error": {"code", "message"}}` body, and never carries internals to the client.
//! Every domain error's mapping is here, so a status code is found in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use taos_proto::error::{ErrorBody, ErrorDetail};

use crate::agents::archive::ArchiveError;
use crate::agents::deploy::DeployError;
use crate::agents::quota::QuotaError;
use crate::agents::recycle::RecycleError;
use crate::auth::AuthError;
use crate::llm::budget::BudgetError;
use crate::llm::providers::ProviderError;
use crate::notify::NotifyError;
use crate::overview::OverviewError;
use crate::prompts::PromptError;

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
            BridgeError::NotStored(e) => {
                tracing::error!("a message was not stored: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_stored",
                    "the message was not stored; send it again",
                )
            }
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
            LifecycleError::Runtime(e) => {
                tracing::error!(error = %e, "runtime operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "runtime_error",
                    e.to_string(),
                )
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

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::NoAgent => ApiError::not_found("no such agent"),
            ArchiveError::NoArchive => ApiError::not_found("no such archive"),
            ArchiveError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ ArchiveError::NoRuntime => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_runtime", e.to_string())
            }
            // The runtime's own words, so the owner knows why (e.g. a snapshot that failed).
            e @ (ArchiveError::Runtime(_) | ArchiveError::Failed(_)) => {
                tracing::error!(error = %e, "runtime operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "runtime_error",
                    e.to_string(),
                )
            }
            ArchiveError::Unsupported(m) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", m)
            }
            ArchiveError::Agent(e) => e.into(),
            ArchiveError::Chat(e) => e.into(),
            e @ (ArchiveError::Io(_) | ArchiveError::Plan(_) | ArchiveError::Db(_)) => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::BadInput(m) => ApiError::bad_request(m),
            e @ (DeployError::NoRuntime | DeployError::NoIsolation(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_runtime", e.to_string())
            }
            DeployError::NotEnoughMemory(m) => {
                ApiError::new(StatusCode::CONFLICT, "not_enough_memory", m)
            }
            DeployError::NotFound => ApiError::not_found("no deploy for that agent"),
            DeployError::Agent(e) => e.into(),
            DeployError::Chat(e) => e.into(),
            e @ DeployError::Db(_) => ApiError::internal(e),
        }
    }
}

impl From<OverviewError> for ApiError {
    fn from(e: OverviewError) -> Self {
        match e {
            OverviewError::BadInput(m) => ApiError::bad_request(m),
            OverviewError::NoAgent => ApiError::not_found("no such agent"),
            e @ (OverviewError::Db(_) | OverviewError::Agent(_) | OverviewError::Budget(_)) => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::NoAgent => ApiError::not_found("no such agent"),
            QuotaError::BadInput(m) => ApiError::bad_request(m),
            QuotaError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ QuotaError::NoRuntime => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_runtime", e.to_string())
            }
            e @ (QuotaError::Runtime(_) | QuotaError::Agent(_) | QuotaError::Db(_)) => {
                ApiError::internal(e)
            }
        }
    }
}

impl From<RecycleError> for ApiError {
    fn from(e: RecycleError) -> Self {
        match e {
            RecycleError::NoAgent => ApiError::not_found("no such agent"),
            RecycleError::NoItem => ApiError::not_found("no such item in the recycle bin"),
            RecycleError::BadInput(m) => ApiError::bad_request(m),
            RecycleError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            e @ (RecycleError::NoRuntime
            | RecycleError::Runtime(_)
            | RecycleError::Agent(_)
            | RecycleError::Helper(_)) => ApiError::internal(e),
        }
    }
}

impl From<PromptError> for ApiError {
    fn from(e: PromptError) -> Self {
        match e {
            PromptError::BadName => ApiError::bad_request("invalid prompt name"),
            PromptError::NotFound => ApiError::not_found("no such prompt"),
            e @ PromptError::MissingVariables(_) => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::BadInput(m) => ApiError::bad_request(m),
            ProviderError::NotFound => ApiError::not_found("no such provider"),
            ProviderError::Exists(name) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a provider named {name} already exists"),
            ),
            e @ (ProviderError::Db(_) | ProviderError::Decode(_)) => ApiError::internal(e),
        }
    }
}

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        match e {
            BudgetError::BadInput(m) => ApiError::bad_request(m),
            e @ BudgetError::Db(_) => ApiError::internal(e),
        }
    }
}

impl From<crate::trace::ingest::IngestError> for ApiError {
    fn from(e: crate::trace::ingest::IngestError) -> Self {
        use crate::trace::ingest::IngestError;
        match e {
            IngestError::BadInput(m) => ApiError::bad_request(m),
            e @ IngestError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                e.to_string(),
            ),
            IngestError::Rate(e) => e.into(),
            IngestError::Trace(e) => e.into(),
            IngestError::Agent(e) => e.into(),
        }
    }
}

impl From<crate::approvals::ApprovalError> for ApiError {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        use crate::approvals::ApprovalError;
        match e {
            ApprovalError::BadInput(m) => ApiError::bad_request(m),
            e @ ApprovalError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "args_too_large",
                e.to_string(),
            ),
            e @ ApprovalError::TooManyPending { .. } => ApiError {
                retry_after_secs: Some(10),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_pending",
                    e.to_string(),
                )
            },
            ApprovalError::NotFound => ApiError::not_found("no such approval"),
            e @ ApprovalError::Forbidden => ApiError::forbidden(e.to_string()),
            e @ (ApprovalError::AlreadyDecided(_) | ApprovalError::Settled) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ApprovalError::Bridge(e) => e.into(),
            ApprovalError::Chat(e) => e.into(),
            ApprovalError::Agent(e) => e.into(),
            e @ (ApprovalError::Db(_) | ApprovalError::Decode(_)) => ApiError::internal(e),
        }
    }
}

impl From<crate::backup::BackupError> for ApiError {
    fn from(e: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError;
        match e {
            BackupError::BadInput(m) => ApiError::bad_request(m),
            e @ BackupError::NotConfigured => {
                ApiError::new(StatusCode::CONFLICT, "not_configured", e.to_string())
            }
            e @ BackupError::AlreadyRunning(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            BackupError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            BackupError::NotFound => ApiError::not_found("no such backup run"),
            BackupError::DrillNotFound => ApiError::not_found("no such restore drill"),
            BackupError::NotInBackup(m) => ApiError::not_found(m),
            BackupError::Archive(e) => e.into(),
            e => ApiError::internal(e),
        }
    }
}
