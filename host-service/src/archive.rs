//! Archive, restore and purge agents, and their lifecycle actions (start, stop, pause…).
//!
//! Archiving keeps everything needed to bring the agent back — a snapshot of its container
//! (renamed out of the way), its chat exported to JSONL, its trace folder — and frees its slug:
//! the agent row takes a placeholder slug and the archive remembers the real one. Restoring
//! picks the old slug (or `-2`, `-3`… if it was reused), mints new credentials, puts them where
//! the agent reads them, and starts it. Purging removes every trace of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Row;
use taos_proto::chat::{ChannelPatch, Message};
use uuid::Uuid;

use crate::agents::{self, AgentRecord, AGENT_TOKEN_PREFIX, LLM_KEY_PREFIX};
use crate::auth::{hash_token, new_secret};
use crate::db::{from_ms, now_ms, Db};
use crate::deploy;
use crate::fsutil;
use crate::http::AppState;
use crate::runtime::ContainerRuntime;
use crate::runtime::{Runtime, RuntimeError};
use crate::trace::legacy::ARCHIVE_SUBDIR as ARCHIVE_TRACES;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no such agent")]
    NoAgent,
    #[error("no such archive")]
    NoArchive,
    #[error("{0}")]
    Conflict(String),
    #[error("no container runtime: install incus (scripts/dev-incus.sh)")]
    NoRuntime,
    /// The runtime failed; for archive, nothing was changed.
    #[error("{0}")]
    Runtime(String),
    /// The runtime can't do this at all (Docker: restoring a snapshot).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<RuntimeError> for ArchiveError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unsupported { .. } => ArchiveError::Unsupported(e.to_string()),
            e => ArchiveError::Runtime(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ArchivedAgent {
    pub id: String,
    pub agent_id: String,
    /// The slug it had; restore tries to give it back.
    pub slug: String,
    pub display_name: String,
    pub container: Option<String>,
    pub snapshot: Option<String>,
    pub archived_at: chrono::DateTime<chrono::Utc>,
}

fn runtime(state: &AppState) -> Result<&ContainerRuntime, ArchiveError> {
    state.runtime.as_ref().ok_or(ArchiveError::NoRuntime)
}

fn archive_root(state: &AppState) -> PathBuf {
    state.data_dir.join("archive")
}

/// The DM channels of an agent.
async fn dm_channels(db: &Db, agent: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM channels WHERE dm_agent_id = ?")
        .bind(agent.to_string())
        .fetch_all(db)
        .await
}

/// Writes every message of the agent's DM channels to `chat.jsonl` (0600, atomic).
async fn export_chat(
    state: &AppState,
    channels: &[String],
    dir: &Path,
) -> Result<(), ArchiveError> {
    let mut lines = String::new();
    for channel in channels {
        let mut after = 0;
        loop {
            let page = state.chat.messages(channel, Some(after), None, 500).await?;
            let full = page.len() == 500;
            for m in &page {
                after = m.seq;
                lines.push_str(&serde_json::to_string(m).unwrap_or_default());
                lines.push('\n');
            }
            if !full {
                break;
            }
        }
    }
    fsutil::write_atomic(&dir.join("chat.jsonl"), lines.as_bytes())
        .map_err(|e| ArchiveError::Io(e.to_string()))
}

/// What archiving did.
pub enum Archived {
    Archived(ArchivedAgent),
    /// The agent had no container left and no history: there was nothing to keep.
    Removed,
}

/// Whether an agent has anything worth keeping: messages in its DM, or a trace folder.
async fn has_history(state: &AppState, agent: &AgentRecord) -> Result<bool, ArchiveError> {
    let messages: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE channel_id IN (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(agent.id.to_string())
    .fetch_one(&state.db)
    .await?;
    // Its own start and stop (lifecycle events) are not history; anything else it did is.
    let query = crate::trace::TraceQuery {
        limit: 200,
        ..Default::default()
    };
    let traces = state
        .traces
        .list(&agent.slug, &query)
        .await
        .map(|events| {
            events
                .iter()
                .any(|e| e.kind != taos_proto::trace::TraceKind::Lifecycle)
        })
        .unwrap_or(true);
    Ok(messages > 0 || traces)
}

/// Archives an agent. If its container can't be stopped or snapshotted, nothing changes. An
/// agent whose container is gone is archived as a tombstone (chat and traces kept) if it has
/// history, and removed outright if it has none.
pub async fn archive(state: &AppState, slug: &str) -> Result<Archived, ArchiveError> {
    let agent = agents::get_by_slug(&state.db, slug)
        .await
        .map_err(|e| match e {
            agents::AgentError::NotFound => ArchiveError::NoAgent,
            e => e.into(),
        })?;
    if agent.status == "deploying" {
        return Err(ArchiveError::Conflict(
            "the agent is still deploying".into(),
        ));
    }
    let ts = now_ms();
    let id = Uuid::now_v7().to_string();
    let dir = archive_root(state).join(format!("{}-{ts}", agent.slug));
    let snapshot = format!("taos-archive-{ts}");
    // A name independent of the slug's length, so it always fits incus's 63 characters.
    let archived_name = format!("taos-x-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let mut container = None;
    if let Some(name) = agent.container.clone() {
        let rt = runtime(state)?;
        if !rt.exists(&name).await? && !has_history(state, &agent).await? {
            agents::remove(&state.db, agent.id).await?;
            let _ = std::fs::remove_dir_all(state.traces.root().join(&agent.slug));
            state.bridge.kick(agent.id);
            tracing::info!(agent = %agent.slug, "agent without container or history removed");
            return Ok(Archived::Removed);
        }
        if rt.exists(&name).await? {
            let was_running = rt.state(&name).await.map(|s| s.running).unwrap_or(false);
            if was_running && rt.stop(&name, false).await.is_err() {
                rt.stop(&name, true).await?;
            }
            if let Err(e) = rt.snapshot_create(&name, &snapshot).await {
                if was_running {
                    let _ = rt.start(&name).await;
                }
                return Err(ArchiveError::Runtime(format!(
                    "snapshot failed, nothing archived: {e}"
                )));
            }
            rt.rename(&name, &archived_name).await?;
            container = Some(archived_name.clone());
        }
    }
    fsutil::ensure_private_dir(&dir).map_err(|e| ArchiveError::Io(e.to_string()))?;
    let channels = dm_channels(&state.db, agent.id).await?;
    export_chat(state, &channels, &dir).await?;
    let trace = state.traces.root().join(&agent.slug);
    if trace.exists() {
        std::fs::rename(&trace, dir.join(ARCHIVE_TRACES))
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
    }
    for channel in &channels {
        state
            .chat
            .update_channel(
                channel,
                &ChannelPatch {
                    archived: Some(true),
                    ..Default::default()
                },
            )
            .await?;
    }
    let placeholder = format!("x-{}", agent.id.simple());
    let mut tx = state.db.begin().await?;
    // Out of group channels, so a new agent with this slug doesn't inherit them.
    sqlx::query(
        "DELETE FROM channel_members WHERE member = ? AND channel_id NOT IN \
         (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(&agent.slug)
    .bind(agent.id.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE agents SET slug = ?, status = 'archived', token_hash = ?, llm_key_hash = NULL, \
         container = ? WHERE id = ?",
    )
    .bind(&placeholder)
    // Revoked: the hash of a secret nobody has.
    .bind(hash_token(&new_secret(AGENT_TOKEN_PREFIX)))
    .bind(&container)
    .bind(agent.id.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO archives (id, agent_id, slug, display_name, container, snapshot, dir, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(agent.id.to_string())
    .bind(&agent.slug)
    .bind(&agent.display_name)
    .bind(&container)
    .bind(container.as_ref().map(|_| snapshot.clone()))
    .bind(dir.display().to_string())
    .bind(ts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.bridge.kick(agent.id);
    let _ = state
        .hub
        .publish(
            "agent.archived",
            serde_json::json!({"slug": agent.slug, "archive_id": id}),
        )
        .await;
    tracing::info!(agent = %agent.slug, archive = %id, "agent archived");
    Ok(Archived::Archived(get(&state.db, &id).await?))
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ArchivedAgent, sqlx::Error> {
    Ok(ArchivedAgent {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        slug: row.try_get("slug")?,
        display_name: row.try_get("display_name")?,
        container: row.try_get("container")?,
        snapshot: row.try_get("snapshot")?,
        archived_at: from_ms(row.try_get("created_at")?),
    })
}

pub async fn list(db: &Db) -> Result<Vec<ArchivedAgent>, ArchiveError> {
    let rows = sqlx::query("SELECT * FROM archives ORDER BY created_at DESC")
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

pub async fn get(db: &Db, id: &str) -> Result<ArchivedAgent, ArchiveError> {
    let row = sqlx::query("SELECT * FROM archives WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(ArchiveError::NoArchive)?;
    Ok(from_row(&row)?)
}

async fn archive_dir(db: &Db, id: &str) -> Result<PathBuf, ArchiveError> {
    let dir: String = sqlx::query_scalar("SELECT dir FROM archives WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(ArchiveError::NoArchive)?;
    Ok(PathBuf::from(dir))
}

/// A slug free among agents and containers: the old one, or the old one with `-2`, `-3`…
async fn free_slug(state: &AppState, base: &str) -> Result<String, ArchiveError> {
    for n in 1..=100 {
        let candidate = if n == 1 {
            base.to_string()
        } else {
            format!("{base}-{n}")
        };
        let taken: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE slug = ?")
            .bind(&candidate)
            .fetch_one(&state.db)
            .await?;
        let container_taken = match state.runtime.as_ref() {
            Some(rt) => rt
                .exists(&format!("taos-{candidate}"))
                .await
                .unwrap_or(true),
            None => false,
        };
        if taken == 0 && !container_taken {
            return Ok(candidate);
        }
    }
    Err(ArchiveError::Conflict("no free slug".into()))
}

/// What a restore hands back: the agent, and its new credentials (shown once).
pub struct Restored {
    pub agent: AgentRecord,
    pub agent_token: String,
    pub llm_key: String,
}

/// Brings an archived agent back, running, under its old slug if it is free.
pub async fn restore(state: &AppState, id: &str) -> Result<Restored, ArchiveError> {
    let archived = get(&state.db, id).await?;
    let dir = archive_dir(&state.db, id).await?;
    let agent_id = Uuid::parse_str(&archived.agent_id).map_err(|_| ArchiveError::NoArchive)?;
    let slug = free_slug(state, &archived.slug).await?;
    let container = format!("taos-{slug}");
    if let (Some(archived_name), Some(snapshot)) = (&archived.container, &archived.snapshot) {
        let rt = runtime(state)?;
        rt.rename(archived_name, &container).await?;
        if let Err(e) = rt.snapshot_restore(&container, snapshot).await {
            // Put it back, so the archive stays restorable and purgeable.
            let _ = rt.rename(&container, archived_name).await;
            return Err(e.into());
        }
    }
    // The trace folder comes home under the (possibly new) slug.
    let trace = state.traces.root().join(&slug);
    if dir.join(ARCHIVE_TRACES).exists() {
        if trace.exists() {
            // Left over from an agent that had this slug: keep it, out of the way.
            let _ = std::fs::rename(&trace, trace.with_extension(format!("stale-{}", now_ms())));
        }
        if let Err(e) = std::fs::rename(dir.join(ARCHIVE_TRACES), &trace) {
            if let (Some(archived_name), Some(rt)) = (&archived.container, state.runtime.as_ref()) {
                let _ = rt.rename(&container, archived_name).await;
            }
            return Err(ArchiveError::Io(e.to_string()));
        }
    }
    let agent_token = new_secret(AGENT_TOKEN_PREFIX);
    let llm_key = new_secret(LLM_KEY_PREFIX);
    let has_container = archived.container.is_some();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE agents SET slug = ?, status = ?, token_hash = ?, llm_key_hash = ?, container = ? WHERE id = ?",
    )
    .bind(&slug)
    .bind(if has_container { "restoring" } else { "ready" })
    .bind(hash_token(&agent_token))
    .bind(hash_token(&llm_key))
    .bind(has_container.then(|| container.clone()))
    .bind(agent_id.to_string())
    .execute(&mut *tx)
    .await?;
    // The DM keeps its member list in step with the slug.
    sqlx::query(
        "UPDATE channel_members SET member = ? WHERE member = ? AND channel_id IN \
         (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(&slug)
    .bind(&archived.slug)
    .bind(agent_id.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE channels SET archived = 0 WHERE dm_agent_id = ?")
        .bind(agent_id.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM archives WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    reimport_chat(&state.db, &dir.join("chat.jsonl")).await?;
    let agent = agents::get_by_id(&state.db, agent_id).await?;
    if has_container {
        let rt = runtime(state)?;
        if let Err(e) = bring_up(state, rt, &agent, &agent_token, &llm_key).await {
            // Restored but not running: say so instead of leaving it "restoring".
            agents::set_status(&state.db, agent_id, "failed").await?;
            return Err(e);
        }
        agents::set_status(&state.db, agent_id, "running").await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = state
        .hub
        .publish(
            "agent.restored",
            serde_json::json!({"slug": slug, "archive_id": id}),
        )
        .await;
    tracing::info!(agent = %slug, archive = %id, "agent restored");
    Ok(Restored {
        agent: agents::get_by_id(&state.db, agent_id).await?,
        agent_token,
        llm_key,
    })
}

/// Re-inserts exported messages that are missing (idempotent: existing ids are kept).
async fn reimport_chat(db: &Db, path: &Path) -> Result<(), ArchiveError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    for line in text.lines() {
        let Ok(m) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        sqlx::query(
            "INSERT OR IGNORE INTO messages (id, channel_id, seq, created_seq, author_id, author_type, \
             content, content_type, thread_id, state, client_id, metadata, created_at, edited_at, deleted_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM channels WHERE id = ?)",
        )
        .bind(&m.id)
        .bind(&m.channel_id)
        .bind(m.seq)
        .bind(m.seq)
        .bind(&m.author_id)
        .bind(serde_json::to_value(m.author_type).ok().and_then(|v| v.as_str().map(String::from)))
        .bind(&m.content)
        .bind(&m.content_type)
        .bind(&m.thread_id)
        .bind(serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(String::from)))
        .bind(&m.client_id)
        .bind(m.metadata.to_string())
        .bind(m.created_at.timestamp_millis())
        .bind(m.edited_at.map(|t| t.timestamp_millis()))
        .bind(m.deleted_at.map(|t| t.timestamp_millis()))
        .bind(&m.channel_id)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Starts the container, gives the agent its new credentials, and waits for it to connect.
async fn bring_up(
    state: &AppState,
    rt: &ContainerRuntime,
    agent: &AgentRecord,
    agent_token: &str,
    llm_key: &str,
) -> Result<(), ArchiveError> {
    let name = agent
        .container
        .clone()
        .unwrap_or_else(|| format!("taos-{}", agent.slug));
    // A snapshot taken before the store left the container brings back its old trace mount
    // (and incus would refuse to start with its folder gone): take it out again.
    match rt.remove_device(&name, crate::legacy::TRACE_DEVICE).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) | Err(RuntimeError::Unsupported { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    rt.start(&name).await?;
    let env = deploy::agent_env(
        state,
        &agent.slug,
        agent_token,
        llm_key,
        agent.model.as_deref().unwrap_or_default(),
        &agent.fallback_models,
    );
    deploy::wait_for_boot(rt, &name)
        .await
        .map_err(ArchiveError::Runtime)?;
    deploy::push_credentials(rt, &name, &env)
        .await
        .map_err(ArchiveError::Runtime)?;
    deploy::restart_service(rt, &name, &deploy::service_of(agent))
        .await
        .map_err(ArchiveError::Runtime)?;
    deploy::wait_for_bridge(state, agent.id)
        .await
        .map_err(ArchiveError::Runtime)?;
    Ok(())
}

/// Removes an archived agent for good: container and snapshots, archive folder, channels and
/// messages, trace folder, the agent itself.
pub async fn purge(state: &AppState, id: &str) -> Result<(), ArchiveError> {
    let archived = get(&state.db, id).await?;
    let dir = archive_dir(&state.db, id).await?;
    if let Some(name) = &archived.container {
        let rt = runtime(state)?;
        if rt.exists(name).await? {
            let _ = rt.stop(name, true).await;
            rt.delete(name).await?;
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| ArchiveError::Io(e.to_string()))?;
    }
    let agent_id = Uuid::parse_str(&archived.agent_id).map_err(|_| ArchiveError::NoArchive)?;
    // Channels (and their messages, by cascade) go with the agent.
    agents::remove(&state.db, agent_id).await?;
    tracing::info!(agent = %archived.slug, archive = %id, "agent purged");
    Ok(())
}

/// Lifecycle actions on a live agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

pub async fn act(
    state: &AppState,
    slug: &str,
    action: Action,
) -> Result<AgentRecord, ArchiveError> {
    let agent = agents::get_by_slug(&state.db, slug)
        .await
        .map_err(|e| match e {
            agents::AgentError::NotFound => ArchiveError::NoAgent,
            e => e.into(),
        })?;
    let container = agent.container.clone();
    let needs_container = || {
        container
            .clone()
            .ok_or_else(|| ArchiveError::Conflict(format!("{slug} is not a container agent")))
    };
    // Runtime first, database after: a refused runtime call changes nothing, and asking for
    // the state something is already in is a no-op, not an error.
    let running = match (&container, state.runtime.as_ref()) {
        (Some(name), Some(rt)) => rt.state(name).await.map(|s| s.running).unwrap_or(false),
        _ => false,
    };
    let stop = |name: String| async move {
        let rt = runtime(state)?;
        if rt.stop(&name, false).await.is_err() {
            rt.stop(&name, true).await?;
        }
        Ok::<(), ArchiveError>(())
    };
    match action {
        Action::Start => {
            let name = needs_container()?;
            if !running {
                runtime(state)?.start(&name).await?;
            }
            agents::set_status(&state.db, agent.id, "running").await?;
        }
        Action::Stop => {
            let name = needs_container()?;
            if running {
                stop(name).await?;
            }
            agents::set_status(&state.db, agent.id, "stopped").await?;
        }
        Action::Restart => {
            let name = needs_container()?;
            if running {
                stop(name.clone()).await?;
            }
            runtime(state)?.start(&name).await?;
            agents::set_status(&state.db, agent.id, "running").await?;
        }
        Action::Pause | Action::Resume => {
            let paused = action == Action::Pause;
            if let (Some(name), Some(rt)) = (&container, state.runtime.as_ref()) {
                if paused && running {
                    stop(name.clone()).await?;
                } else if !paused && !running {
                    rt.start(name).await?;
                }
            }
            let patch = taos_proto::agents::AgentPatch {
                paused: Some(paused),
                ..Default::default()
            };
            agents::update(&state.db, slug, &patch).await?;
            if container.is_some() {
                let status = if paused { "paused" } else { "running" };
                agents::set_status(&state.db, agent.id, status).await?;
            }
            if !paused {
                state.bridge.clear_notices(agent.id);
            }
            state.bridge.wake(agent.id);
        }
    }
    Ok(agents::get_by_slug(&state.db, slug).await?)
}

/// The last `lines` lines of the agent service's journal.
pub async fn logs(state: &AppState, slug: &str, lines: u32) -> Result<String, ArchiveError> {
    let agent = agents::get_by_slug(&state.db, slug)
        .await
        .map_err(|_| ArchiveError::NoAgent)?;
    let name = agent
        .container
        .clone()
        .ok_or_else(|| ArchiveError::Conflict(format!("{slug} is not a container agent")))?;
    let service = deploy::service_of(&agent);
    let rt = runtime(state)?;
    // Under Docker the service is the container's main process: its log is the container's.
    if let ContainerRuntime::Docker(docker) = rt {
        return Ok(docker.logs(&name, lines).await?);
    }
    let out = rt
        .exec(
            &name,
            &[
                "journalctl",
                "-u",
                &service,
                "-n",
                &lines.to_string(),
                "--no-pager",
                "-o",
                "short-iso",
            ],
            &BTreeMap::new(),
            Duration::from_secs(20),
        )
        .await?;
    Ok(out.stdout)
}
