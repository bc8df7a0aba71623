//! Wire types shared by the taos host, the app and the agent sidecar.
//!
//! Plain serde data and the event-stream parser, no I/O. With the `openapi` feature every type also derives its OpenAPI schema,
//! so the host's generated document and the clients agree by construction.

pub mod agents;
pub mod approvals;
pub mod auth;
pub mod backup;
pub mod bridge;
pub mod chat;
pub mod error;
pub mod events;
pub mod llm;
pub mod ops;
pub mod sse;
pub mod text_enum;
pub mod trace;
