//! taos-host: the agent host daemon and its admin CLI.
//!
//! One module per concern; each owns its tables and domain logic. `http` is the only module that
//! knows axum, and its handlers stay thin.

pub mod agents;
pub mod approvals;
pub mod auth;
pub mod backup;
pub mod bridge;
pub mod chat;
pub mod config;
pub mod db;
pub mod failure;
pub mod faults;
pub mod fsutil;
pub mod group_commit;
pub mod host_firewall;
pub mod http;
pub mod isolation;
#[cfg(test)]
mod layout;
pub mod legacy;
pub mod llm;
pub mod metrics;
pub mod notify;
pub mod overview;
pub mod peer;
pub mod prompts;
pub mod qr;
pub mod ratelimit;
pub mod round_trip;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod setup;
pub mod snapshots;
pub mod sys;
pub mod tls;
pub mod trace;
pub mod update;
