use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` when every subsystem is ok, else `degraded`.
    pub status: String,
    /// The host's version. Only for authenticated callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Subsystem name → `ok`, `disabled`, or a short reason it is not ok. Only for
    /// authenticated callers: versions and runtime details help an attacker pick an exploit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystems: Option<BTreeMap<String, String>>,
}
