//! Integration tests: the real `taos-host` binary, a temp data dir, a pinned TLS client.
//! One test binary (modules below) keeps link time down.
//!
//! Set-up the tests share lives once in the test kit (`taos_e2e::fixtures`: a host with the
//! fake provider, agents, deploys, test containers) or, where it needs this binary's `BIN`,
//! below. Long scenarios run as named `fixtures::step`s, so a failure names its step. The
//! kit's typed calls (`Host::get`, `post`, `call`, `expect_error`) take `taos-proto` types; a
//! few tests read raw JSON on purpose as wire-contract checks and say so in their doc comment.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod access;
mod acp_image;
mod agent_access;
mod approvals;
mod auth;
mod backup;
mod backup_agents;
mod backup_remote;
mod bridge_edges;
mod chat;
mod concurrency;
mod conversation;
mod crash;
mod deploy;
mod deploy_memory;
mod devices;
mod docker;
mod events;
mod files;
mod first_run;
mod flood;
mod framework_images;
mod input;
mod isolation;
mod lifecycle_crash;
mod llm;
mod migrations;
mod openclaw;
mod opencode;
mod ops;
mod overview;
mod quota;
mod recycle;
mod revoke;
mod roles;
mod routes;
mod runtime;
mod settings;
mod setup_check;
mod snapshots;
mod tls;
mod tools;
mod trace_limits;
mod trace_pages;
mod trace_store;
mod traces;
mod ui;

pub const BIN: &str = env!("CARGO_BIN_EXE_taos-host");

pub async fn start() -> taos_e2e::Host {
    taos_e2e::Host::start(BIN).await
}

/// A host on a fresh data dir with these environment overrides.
pub async fn start_with_env(env: &[(&str, &str)]) -> taos_e2e::Host {
    taos_e2e::Host::start_with(BIN, taos_e2e::HostOptions::with_env(env))
        .await
        .expect("host starts")
}

/// How many messages the host's database holds for `channel_id` (to check a purge from
/// underneath the API, which no longer shows the channel).
pub async fn messages_stored(host: &taos_e2e::Host, channel_id: &str) -> i64 {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(host.data_dir.join("taos.db"))
        .connect()
        .await
        .expect("open the host's database");
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM messages WHERE channel_id = ?")
        .bind(channel_id)
        .fetch_one(&mut conn)
        .await
        .expect("count the messages")
}

/// A host without LiteLLM (for tests that never call a model), with these overrides.
pub async fn host_with(env: &[(&str, &str)]) -> taos_e2e::Host {
    let mut all = vec![taos_e2e::fixtures::NO_LITELLM];
    all.extend_from_slice(env);
    start_with_env(&all).await
}
