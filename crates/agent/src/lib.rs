//! The taos agent sidecar. It runs inside an agent's container, follows the host's bridge
//! stream for messages addressed to the agent, answers them (today: straight through the
//! host's LLM gateway), and streams the answers back as bridge replies.
//!
//! Modules by concern: `config` (environment), `sse` (event-stream parsing), `http` (client
//! setup, error bodies), `bridge` (the host's agent API), `follow` (the stream with
//! reconnects), `llm` (chat completions), `framework` (the answering trait and reply
//! handle), `direct` (direct mode), `tools` (tools mode: the tool-calling loop, the tools,
//! and how their processes run), `openclaw` (openclaw mode: its gateway as a child, driven
//! over its WebSocket protocol), `acp` (acp mode: an Agent Client Protocol agent driven over
//! stdio), `runner` (ordering, shutdown, lifecycle traces).

pub mod acp;
pub mod backoff;
pub mod bridge;
pub mod config;
pub mod direct;
pub mod follow;
pub mod framework;
pub mod http;
pub mod llm;
pub mod openclaw;
pub mod runner;
pub mod shutdown;
pub mod tools;
/// The event-stream parser now lives in `taos-proto`, shared with the app.
pub use taos_proto::sse;

pub use config::{Config, ConfigError, CONFIG_EXIT_CODE};
pub use runner::{run, RunError};
