use serde::{Deserialize, Serialize};

/// Every error the host returns: `{"error": {"code": "<snake_case>", "message": "<human>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
}
