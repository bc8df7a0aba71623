use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` when every subsystem is ok, else `degraded`.
    pub status: String,
    pub version: String,
    /// Subsystem name → `ok`, `disabled`, or a short reason it is not ok.
    pub subsystems: BTreeMap<String, String>,
}
