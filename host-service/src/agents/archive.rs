//! Archive, restore and purge agents (start, stop, pause… are in `lifecycle`).
//!
//! Archiving keeps everything needed to bring the agent back — a snapshot of its container
//! (renamed out of the way), its chat exported to JSONL, its trace folder — and frees its slug:
//! the agent row takes a placeholder slug and the archive remembers the real one. Restoring
//! picks the old slug (or `-2`, `-3`… if it was reused), mints new credentials, puts them where
//! the agent reads them, and starts it. Purging removes every trace of it.

use std::path::{Path, PathBuf};

use sqlx::Row;
use taos_proto::agents::{AgentStatus, ArchiveLocation};
use taos_proto::chat::Message;
use uuid::Uuid;

use crate::agents::AgentHost;
use crate::agents::{self, AgentRecord, AGENT_TOKEN_PREFIX, LLM_KEY_PREFIX};
use crate::agents::{deploy, frameworks};
use crate::auth::{hash_token, new_secret};
use crate::db::{from_ms, now_ms, Db};
use crate::fsutil;
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
    #[error(transparent)]
    Runtime(RuntimeError),
    /// A step that reports in words failed (bringing the agent up, isolation, an injected
    /// fault), or the runtime did with more context: the words say what.
    #[error("{0}")]
    Failed(String),
    /// The runtime can't do this at all (Docker: restoring a snapshot).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A journal entry's plan that can't be written or read back.
    #[error("unreadable plan: {0}")]
    Plan(#[from] serde_json::Error),
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
            e => ArchiveError::Runtime(e),
        }
    }
}

pub use taos_proto::agents::ArchivedAgent;

fn runtime(host: &AgentHost) -> Result<&ContainerRuntime, ArchiveError> {
    host.runtime.as_ref().ok_or(ArchiveError::NoRuntime)
}

fn archive_root(host: &AgentHost) -> PathBuf {
    host.data_dir.join("archive")
}

/// Writes every message of the agent's DM channels to `chat.jsonl` (0600, atomic).
async fn export_chat(
    host: &AgentHost,
    channels: &[String],
    dir: &Path,
) -> Result<(), ArchiveError> {
    let mut lines = String::new();
    for channel in channels {
        let mut after = 0;
        loop {
            let page = host.chat.messages(channel, Some(after), None, 500).await?;
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
    fsutil::write_atomic(&dir.join("chat.jsonl"), lines.as_bytes()).map_err(ArchiveError::Io)
}

/// What archiving did.
pub enum Archived {
    Archived(ArchivedAgent),
    /// The agent had no container left and no history: there was nothing to keep.
    Removed,
}

/// Whether an agent has anything worth keeping: messages in its DM, or a trace folder.
async fn has_history(host: &AgentHost, agent: &AgentRecord) -> Result<bool, ArchiveError> {
    let messages = crate::chat::dm_message_count(&host.db, agent.id).await?;
    // Its own start and stop (lifecycle events) are not history; anything else it did is.
    let query = crate::trace::TraceQuery {
        limit: 200,
        ..Default::default()
    };
    let traces = host
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

/// What an archive will do, written to the journal before it starts (see `agent_ops`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ArchivePlan {
    slug: String,
    /// The container's name now, if the agent has a live one.
    container: Option<String>,
    archived_name: String,
    snapshot: String,
    dir: PathBuf,
    was_running: bool,
}

impl ArchivePlan {
    /// The names an archive of `slug` made at `ts` (ms) uses; `unique` tells apart the
    /// renamed containers. Nothing is known about the container yet.
    fn new(root: &Path, slug: &str, ts: i64, unique: Uuid) -> Self {
        ArchivePlan {
            slug: slug.to_string(),
            container: None,
            // A name independent of the slug's length, so it always fits incus's 63
            // characters. The last 12 hex digits of a v7 id are random.
            archived_name: format!("taos-x-{}", &unique.simple().to_string()[20..]),
            snapshot: format!("taos-archive-{ts}"),
            dir: root.join(format!("{slug}-{ts}")),
            was_running: false,
        }
    }
}

/// The slug an archived agent's row takes, so its real one is free for a new agent (the
/// archive remembers the real one). Unique because the agent id is.
pub(crate) fn placeholder_slug(agent_id: Uuid) -> String {
    format!("x-{}", agent_id.simple())
}

/// Records an archive entry for an agent made archived elsewhere (a single-agent restore from
/// a backup), in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn insert_entry(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    agent_id: Uuid,
    slug: &str,
    display_name: &str,
    container: Option<&str>,
    snapshot: Option<&str>,
    dir: &Path,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO archives (id, agent_id, slug, display_name, container, snapshot, dir, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(agent_id.to_string())
    .bind(slug)
    .bind(display_name)
    .bind(container)
    .bind(snapshot)
    .bind(dir.display().to_string())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an archive entry has this folder (a single-agent restore's start-up recovery).
pub async fn dir_is_archived(db: &Db, dir: &Path) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM archives WHERE dir = ?")
        .bind(dir.display().to_string())
        .fetch_optional(db)
        .await?;
    Ok(found.is_some())
}

/// Archives an agent. Any failure — or a crash, found at the next start — undoes what was
/// done: the container is renamed back, its archive snapshot dropped, its trace folder moved
/// home, and it runs again if it ran before. An agent whose container is gone is archived as
/// a tombstone (chat and traces kept) if it has history, and removed outright if it has none.
pub async fn archive(host: &AgentHost, slug: &str) -> Result<Archived, ArchiveError> {
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|e| match e {
            agents::AgentError::NotFound => ArchiveError::NoAgent,
            e => e.into(),
        })?;
    if agent.status == AgentStatus::Deploying {
        return Err(ArchiveError::Conflict(
            "the agent is still deploying".into(),
        ));
    }
    let mut plan = ArchivePlan::new(&archive_root(host), &agent.slug, now_ms(), Uuid::now_v7());
    if let Some(name) = agent.container.clone() {
        let rt = runtime(host)?;
        let exists = rt.exists(&name).await?;
        if !exists && !has_history(host, &agent).await? {
            agents::remove(&host.db, agent.id).await?;
            let traces = host.traces.root().join(&agent.slug);
            match std::fs::remove_dir_all(&traces) {
                // Usually it has none: it never ran.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(folder = %traces.display(), error = %e, "could not remove a removed agent's trace folder");
                }
                _ => {}
            }
            host.bridge.kick(agent.id);
            host.live.revoke_agent_llm(agent.id);
            tracing::info!(agent = %agent.slug, "agent without container or history removed");
            return Ok(Archived::Removed);
        }
        if exists {
            plan.was_running = rt.state(&name).await.map(|s| s.running).unwrap_or(false);
            plan.container = Some(name);
        }
    }
    journal::begin(&host.db, agent.id, OpKind::Archive, &plan).await?;
    match archive_steps(host, &agent, &plan).await {
        Ok(id) => {
            // Both credentials are gone: the bridge stream and any gateway call in flight end too.
            host.bridge.kick(agent.id);
            host.live.revoke_agent_llm(agent.id);
            host.hub
                .announce(
                    "agent.archived",
                    serde_json::json!({"slug": agent.slug, "archive_id": id}),
                )
                .await;
            tracing::info!(agent = %agent.slug, archive = %id, "agent archived");
            Ok(Archived::Archived(get(&host.db, &id).await?))
        }
        Err(e) => {
            tracing::warn!(agent = %agent.slug, error = %e, "archive failed; undoing it");
            undo_archive(host, agent.id, &plan).await;
            Err(e)
        }
    }
}

/// The archive's changes, in order; the last one commits the result and ends the journal entry.
async fn archive_steps(
    host: &AgentHost,
    agent: &AgentRecord,
    plan: &ArchivePlan,
) -> Result<String, ArchiveError> {
    let fault = |step: &'static str| async move {
        crate::faults::check("archive", step)
            .await
            .map_err(ArchiveError::Failed)
    };
    if let Some(name) = &plan.container {
        let rt = runtime(host)?;
        fault("stop").await?;
        if plan.was_running && rt.stop(name, false).await.is_err() {
            rt.stop(name, true).await?;
        }
        journal::step(&host.db, agent.id, "stopped").await?;
        fault("snapshot").await?;
        rt.snapshot_create(name, &plan.snapshot)
            .await
            .map_err(|e| ArchiveError::Failed(format!("snapshot failed, nothing archived: {e}")))?;
        journal::step(&host.db, agent.id, "snapshotted").await?;
        fault("rename").await?;
        rt.rename(name, &plan.archived_name).await?;
        journal::step(&host.db, agent.id, "renamed").await?;
    }
    fault("export").await?;
    fsutil::ensure_private_dir(&plan.dir)?;
    let channels = crate::chat::dm_channels(&host.db, agent.id).await?;
    export_chat(host, &channels, &plan.dir).await?;
    let trace = host.traces.root().join(&agent.slug);
    if trace.exists() {
        std::fs::rename(&trace, plan.dir.join(ARCHIVE_TRACES))?;
    }
    journal::step(&host.db, agent.id, "exported").await?;
    fault("commit").await?;
    let id = Uuid::now_v7().to_string();
    let container = plan.container.as_ref().map(|_| plan.archived_name.clone());
    let placeholder = placeholder_slug(agent.id);
    let mut tx = host.db.begin().await?;
    // Its DM read-only from now on, and out of group channels.
    crate::chat::archive_dm(&mut tx, agent.id, &agent.slug).await?;
    agents::mark_archived(
        &mut tx,
        agent.id,
        &placeholder,
        // Revoked: the hash of a secret nobody has.
        &hash_token(&new_secret(AGENT_TOKEN_PREFIX)),
        container.as_deref(),
    )
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
    .bind(container.as_ref().map(|_| plan.snapshot.clone()))
    .bind(plan.dir.display().to_string())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    journal::end(&mut tx, agent.id).await?;
    tx.commit().await?;
    Ok(id)
}

/// Puts an agent back as it was before an unfinished archive. Each part looks at how things
/// are rather than trusting the step reached, so it is safe to run twice.
async fn undo_archive(host: &AgentHost, agent_id: Uuid, plan: &ArchivePlan) {
    let trace = host.traces.root().join(&plan.slug);
    let moved = plan.dir.join(ARCHIVE_TRACES);
    if moved.exists() && !trace.exists() {
        if let Err(e) = std::fs::rename(&moved, &trace) {
            tracing::error!(agent = %plan.slug, error = %e, "could not move the trace folder back");
        }
    }
    if plan.dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&plan.dir) {
            tracing::warn!(dir = %plan.dir.display(), error = %e, "could not remove a half-made archive");
        }
    }
    if let (Some(name), Some(rt)) = (&plan.container, host.runtime.as_ref()) {
        let undone = async {
            if rt.exists(&plan.archived_name).await? && !rt.exists(name).await? {
                rt.rename(&plan.archived_name, name).await?;
            }
            if rt.snapshot_list(name).await?.contains(&plan.snapshot) {
                rt.snapshot_delete(name, &plan.snapshot).await?;
            }
            if plan.was_running && !rt.state(name).await?.running {
                rt.start(name).await?;
            }
            Ok::<(), RuntimeError>(())
        };
        if let Err(e) = undone.await {
            // The entry stays: the next start tries again.
            tracing::error!(agent = %plan.slug, error = %e, "could not undo an archive in the runtime; will retry at the next start");
            return;
        }
    }
    if let Err(e) = journal::drop_entry(&host.db, agent_id).await {
        tracing::error!(agent = %plan.slug, error = %e, "could not clear an undone archive's journal entry");
    }
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
        location: row
            .try_get::<String, _>("location")?
            .parse()
            .map_err(|e: taos_proto::text_enum::UnknownVariant| sqlx::Error::Decode(e.into()))?,
        backup_snapshot: row.try_get("backup_snapshot")?,
    })
}

pub async fn list(db: &Db) -> Result<Vec<ArchivedAgent>, ArchiveError> {
    let rows = sqlx::query("SELECT * FROM archives ORDER BY created_at DESC")
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// After a restore into another data dir (`taos-host restore`): archives record their folder
/// by absolute path, so those under the old data dir are pointed at the same place under the
/// new one. Returns how many moved.
pub async fn rebase_dirs(
    db: &Db,
    old_data_dir: &Path,
    new_data_dir: &Path,
) -> Result<u64, sqlx::Error> {
    if old_data_dir == new_data_dir {
        return Ok(0);
    }
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, dir FROM archives")
        .fetch_all(db)
        .await?;
    let mut moved = 0;
    for (id, dir) in rows {
        let Ok(rest) = Path::new(&dir).strip_prefix(old_data_dir) else {
            continue;
        };
        sqlx::query("UPDATE archives SET dir = ? WHERE id = ?")
            .bind(new_data_dir.join(rest).display().to_string())
            .bind(&id)
            .execute(db)
            .await?;
        moved += 1;
    }
    Ok(moved)
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
async fn free_slug(host: &AgentHost, base: &str) -> Result<String, ArchiveError> {
    for n in 1..=100 {
        let candidate = agents::slug_candidate(base, n);
        let taken = agents::slug_taken(&host.db, &candidate).await?;
        let container_taken = match host.runtime.as_ref() {
            Some(rt) => rt
                .exists(&agents::container_name(&candidate))
                .await
                .unwrap_or(true),
            None => false,
        };
        if !taken && !container_taken {
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

/// What a restore will do, written to the journal before it starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RestorePlan {
    archive_id: String,
    archived_slug: String,
    /// The slug it comes back under (the old one, or `-2`, `-3`… if that was taken).
    slug: String,
    container: String,
    /// The archived container and its snapshot, if it had one.
    archived_name: Option<String>,
    snapshot: Option<String>,
    dir: PathBuf,
}

/// Brings an archived agent back, running, under its old slug if it is free. Until its
/// database commit, a failure (or a crash, found at the next start) undoes it and the archive
/// stays restorable; after the commit, the next start finishes it.
pub async fn restore(host: &AgentHost, id: &str) -> Result<Restored, ArchiveError> {
    let archived = get(&host.db, id).await?;
    let dir = archive_dir(&host.db, id).await?;
    let agent_id = Uuid::parse_str(&archived.agent_id).map_err(|_| ArchiveError::NoArchive)?;
    let slug = free_slug(host, &archived.slug).await?;
    let plan = RestorePlan {
        archive_id: id.to_string(),
        archived_slug: archived.slug.clone(),
        container: agents::container_name(&slug),
        slug,
        archived_name: archived.container.clone(),
        snapshot: archived.snapshot.clone(),
        dir,
    };
    if plan.archived_name.is_some() {
        runtime(host)?;
        // It comes back on its network, so that must be possible first.
        crate::isolation::ready(host)
            .await
            .map_err(ArchiveError::Failed)?;
    }
    journal::begin(&host.db, agent_id, OpKind::Restore, &plan).await?;
    if let Err(e) = restore_until_commit(host, agent_id, &plan).await {
        tracing::warn!(agent = %plan.slug, error = %e, "restore failed; undoing it");
        undo_restore(host, agent_id, &plan).await;
        return Err(e);
    }
    let (agent_token, llm_key) = finish_restore(host, agent_id, &plan).await?;
    Ok(Restored {
        agent: agents::get_by_id(&host.db, agent_id).await?,
        agent_token,
        llm_key,
    })
}

/// Container and files back in place, then one transaction that makes the agent live again
/// (and marks the journal entry committed).
async fn restore_until_commit(
    host: &AgentHost,
    agent_id: Uuid,
    plan: &RestorePlan,
) -> Result<(), ArchiveError> {
    let fault = |step: &'static str| async move {
        crate::faults::check("restore", step)
            .await
            .map_err(ArchiveError::Failed)
    };
    if let Some(archived_name) = &plan.archived_name {
        let rt = runtime(host)?;
        fault("rename").await?;
        rt.rename(archived_name, &plan.container).await?;
        journal::step(&host.db, agent_id, "renamed").await?;
        // An archive a backup made has no snapshot: its container was made from the backup,
        // never started, so it is as the snapshot would make it (Docker ones: Docker can't
        // restore a snapshot in place).
        if let Some(snapshot) = &plan.snapshot {
            fault("snapshot").await?;
            rt.snapshot_restore(&plan.container, snapshot).await?;
            journal::step(&host.db, agent_id, "snapshot_restored").await?;
        }
    }
    fault("trace").await?;
    // The trace folder comes home under the (possibly new) slug.
    let trace = host.traces.root().join(&plan.slug);
    if plan.dir.join(ARCHIVE_TRACES).exists() {
        if trace.exists() {
            // Left over from an agent that had this slug: keep it, out of the way.
            let stale = trace.with_extension(format!("stale-{}", now_ms()));
            if let Err(e) = std::fs::rename(&trace, &stale) {
                // The rename below then fails and the restore is undone, with this as why.
                tracing::warn!(folder = %trace.display(), error = %e, "could not move a stale trace folder aside");
            }
        }
        std::fs::rename(plan.dir.join(ARCHIVE_TRACES), &trace)?;
    }
    journal::step(&host.db, agent_id, "trace_moved").await?;
    fault("commit").await?;
    let has_container = plan.archived_name.is_some();
    let mut tx = host.db.begin().await?;
    agents::mark_restored(
        &mut tx,
        agent_id,
        &plan.slug,
        if has_container {
            AgentStatus::Restoring
        } else {
            AgentStatus::Ready
        },
        has_container.then_some(plan.container.as_str()),
    )
    .await?;
    // The DM keeps its member list in step with the slug.
    crate::chat::unarchive_dm(&mut tx, agent_id, &plan.archived_slug, &plan.slug).await?;
    sqlx::query("DELETE FROM archives WHERE id = ?")
        .bind(&plan.archive_id)
        .execute(&mut *tx)
        .await?;
    journal::step_in(&mut tx, agent_id, "committed").await?;
    tx.commit().await?;
    Ok(())
}

/// After the commit: new credentials, the chat back, the container up. Runs again at start-up
/// if a crash came first. A failure here leaves the agent `failed` (visible), not archived.
async fn finish_restore(
    host: &AgentHost,
    agent_id: Uuid,
    plan: &RestorePlan,
) -> Result<(String, String), ArchiveError> {
    let agent_token = new_secret(AGENT_TOKEN_PREFIX);
    let llm_key = new_secret(LLM_KEY_PREFIX);
    agents::set_credentials(
        &host.db,
        agent_id,
        &hash_token(&agent_token),
        &hash_token(&llm_key),
    )
    .await?;
    reimport_chat(&host.db, &plan.dir.join("chat.jsonl")).await?;
    let agent = agents::get_by_id(&host.db, agent_id).await?;
    let brought_up = async {
        crate::faults::check("restore", "start")
            .await
            .map_err(ArchiveError::Failed)?;
        if plan.archived_name.is_some() {
            let rt = runtime(host)?;
            bring_up(host, rt, &agent, &agent_token, &llm_key).await?;
        }
        Ok::<(), ArchiveError>(())
    };
    let outcome = brought_up.await;
    let status = match (&outcome, plan.archived_name.is_some()) {
        (Err(_), _) => AgentStatus::Failed,
        (Ok(()), true) => AgentStatus::Running,
        (Ok(()), false) => AgentStatus::Ready,
    };
    agents::set_status(&host.db, agent_id, status).await?;
    if let (Ok(()), Some(snapshot), Some(rt)) = (&outcome, &plan.snapshot, host.runtime.as_ref()) {
        // Restored from it: the archive's snapshot would otherwise pile up in the pool.
        if let Err(e) = rt.snapshot_delete(&plan.container, snapshot).await {
            tracing::warn!(agent = %plan.slug, error = %e, "could not drop the archive snapshot");
        }
    }
    journal::drop_entry(&host.db, agent_id).await?;
    if let Err(e) = std::fs::remove_dir_all(&plan.dir) {
        // Restored all the same; only the archive's copy of the chat stays on disk.
        tracing::warn!(folder = %plan.dir.display(), error = %e, "could not remove a restored archive's folder");
    }
    if let Err(e) = outcome {
        // Restored but not running: say so instead of leaving it "restoring".
        tracing::warn!(agent = %plan.slug, error = %e, "restored agent did not come up");
        return Err(e);
    }
    host.hub
        .announce(
            "agent.restored",
            serde_json::json!({"slug": plan.slug, "archive_id": plan.archive_id}),
        )
        .await;
    tracing::info!(agent = %plan.slug, archive = %plan.archive_id, "agent restored");
    Ok((agent_token, llm_key))
}

/// Puts an archive back as it was before an uncommitted restore. Safe to run twice.
async fn undo_restore(host: &AgentHost, agent_id: Uuid, plan: &RestorePlan) {
    let trace = host.traces.root().join(&plan.slug);
    let archived_trace = plan.dir.join(ARCHIVE_TRACES);
    if trace.exists() && !archived_trace.exists() && plan.dir.exists() {
        if let Err(e) = std::fs::rename(&trace, &archived_trace) {
            tracing::error!(agent = %plan.slug, error = %e, "could not move the trace folder back to the archive");
        }
    }
    if let (Some(archived_name), Some(rt)) = (&plan.archived_name, host.runtime.as_ref()) {
        let undone = async {
            if rt.exists(&plan.container).await? && !rt.exists(archived_name).await? {
                if rt.state(&plan.container).await?.running {
                    rt.stop(&plan.container, true).await?;
                }
                rt.rename(&plan.container, archived_name).await?;
            }
            Ok::<(), RuntimeError>(())
        };
        if let Err(e) = undone.await {
            tracing::error!(agent = %plan.slug, error = %e, "could not undo a restore in the runtime; will retry at the next start");
            return;
        }
    }
    if let Err(e) = journal::drop_entry(&host.db, agent_id).await {
        tracing::error!(agent = %plan.slug, error = %e, "could not clear an undone restore's journal entry");
    }
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
        crate::chat::import_message(db, &m).await?;
    }
    Ok(())
}

/// Starts the container, gives the agent its new credentials, and waits for it to connect.
async fn bring_up(
    host: &AgentHost,
    rt: &ContainerRuntime,
    agent: &AgentRecord,
    agent_token: &str,
    llm_key: &str,
) -> Result<(), ArchiveError> {
    let name = agent
        .container
        .clone()
        .unwrap_or_else(|| agents::container_name(&agent.slug));
    // The agent listener may have moved since the archive (a restart): re-point the proxies.
    deploy::repoint_proxies(host, rt, &name).await?;
    // A snapshot taken before the store left the container brings back its old trace mount
    // (and incus would refuse to start with its folder gone): take it out again.
    match rt.remove_device(&name, crate::legacy::TRACE_DEVICE).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) | Err(RuntimeError::Unsupported { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // The snapshot brought back the devices and profiles it was taken with.
    rt.set_agent_network(&name, agent.network).await?;
    rt.start(&name).await?;
    let env = deploy::agent_env(
        &host.agent_gateways,
        &agent.slug,
        agent_token,
        llm_key,
        agent.model.as_deref().unwrap_or_default(),
        &agent.fallback_models,
        agent.network,
    );
    let env = deploy::with_mode(env, &frameworks::agent_mode_of(agent.framework.as_deref()));
    let manifest = agent.framework.as_deref().and_then(frameworks::get);
    let env = deploy::with_acp(env, manifest.as_ref().and_then(|m| m.acp.as_ref()));
    deploy::wait_for_boot(rt, &name)
        .await
        .map_err(ArchiveError::Failed)?;
    deploy::push_credentials(rt, &name, &env)
        .await
        .map_err(ArchiveError::Failed)?;
    deploy::restart_service(rt, &name, &deploy::service_of(agent))
        .await
        .map_err(ArchiveError::Failed)?;
    deploy::wait_for_bridge(host, agent.id)
        .await
        .map_err(ArchiveError::Failed)?;
    Ok(())
}

/// What a purge will remove, written to the journal before it starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PurgePlan {
    archive_id: String,
    slug: String,
    container: Option<String>,
    dir: PathBuf,
}

/// Removes an archived agent for good: container and snapshots, archive folder, channels and
/// messages, trace folder, the agent itself. Once started it is finished, at the next start
/// if a crash interrupts it.
pub async fn purge(host: &AgentHost, id: &str) -> Result<(), ArchiveError> {
    let archived = get(&host.db, id).await?;
    let plan = PurgePlan {
        archive_id: id.to_string(),
        slug: archived.slug.clone(),
        container: archived.container.clone(),
        dir: archive_dir(&host.db, id).await?,
    };
    if plan.container.is_some() {
        runtime(host)?;
    }
    let agent_id = Uuid::parse_str(&archived.agent_id).map_err(|_| ArchiveError::NoArchive)?;
    journal::begin(&host.db, agent_id, OpKind::Purge, &plan).await?;
    purge_steps(host, agent_id, &plan).await
}

async fn purge_steps(
    host: &AgentHost,
    agent_id: Uuid,
    plan: &PurgePlan,
) -> Result<(), ArchiveError> {
    let fault = |step: &'static str| async move {
        crate::faults::check("purge", step)
            .await
            .map_err(ArchiveError::Failed)
    };
    if let Some(name) = &plan.container {
        let rt = runtime(host)?;
        fault("container").await?;
        if rt.exists(name).await? {
            // A stop that fails leaves the delete below to say why.
            let _ = rt.stop(name, true).await;
            rt.delete(name).await?;
        }
        journal::step(&host.db, agent_id, "container_deleted").await?;
    }
    fault("files").await?;
    if plan.dir.exists() {
        std::fs::remove_dir_all(&plan.dir)?;
    }
    journal::step(&host.db, agent_id, "files_removed").await?;
    fault("commit").await?;
    // Channels (and their messages, by cascade) and the journal entry go with the agent.
    agents::remove(&host.db, agent_id).await?;
    tracing::info!(agent = %plan.slug, archive = %plan.archive_id, "agent purged");
    Ok(())
}

/// At start-up: undoes or finishes every archive, restore and purge a crash interrupted.
pub async fn recover(host: &AgentHost) {
    let entries = match journal::unfinished(&host.db).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the agent operations journal");
            return;
        }
    };
    for entry in entries {
        tracing::warn!(agent = %entry.agent_id, kind = entry.kind.as_str(), step = %entry.step,
            "an agent operation was interrupted; recovering");
        let outcome = match entry.kind {
            OpKind::Archive => match serde_json::from_str::<ArchivePlan>(&entry.plan) {
                Ok(plan) => {
                    undo_archive(host, entry.agent_id, &plan).await;
                    Ok(())
                }
                Err(e) => Err(ArchiveError::Plan(e)),
            },
            OpKind::Restore => match serde_json::from_str::<RestorePlan>(&entry.plan) {
                Ok(plan) if entry.step == "committed" => {
                    finish_restore(host, entry.agent_id, &plan)
                        .await
                        .map(|_| ())
                }
                Ok(plan) => {
                    undo_restore(host, entry.agent_id, &plan).await;
                    Ok(())
                }
                Err(e) => Err(ArchiveError::Plan(e)),
            },
            OpKind::Purge => match serde_json::from_str::<PurgePlan>(&entry.plan) {
                Ok(plan) => purge_steps(host, entry.agent_id, &plan).await,
                Err(e) => Err(ArchiveError::Plan(e)),
            },
        };
        if let Err(e) = outcome {
            tracing::error!(agent = %entry.agent_id, kind = entry.kind.as_str(), error = %e,
                "recovering an interrupted agent operation failed");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Archive,
    Restore,
    Purge,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Archive => "archive",
            OpKind::Restore => "restore",
            OpKind::Purge => "purge",
        }
    }

    fn parse(kind: &str) -> Option<OpKind> {
        match kind {
            "archive" => Some(OpKind::Archive),
            "restore" => Some(OpKind::Restore),
            "purge" => Some(OpKind::Purge),
            _ => None,
        }
    }
}

/// The `agent_ops` journal: one unfinished operation per agent.
mod journal {
    use sqlx::{Row, Sqlite, Transaction};
    use uuid::Uuid;

    use super::{ArchiveError, OpKind};
    use crate::db::{now_ms, Db};

    pub struct Entry {
        pub agent_id: Uuid,
        pub kind: OpKind,
        pub step: String,
        pub plan: String,
    }

    /// Records an operation before its first change; refuses if one is already under way.
    pub async fn begin(
        db: &Db,
        agent_id: Uuid,
        kind: OpKind,
        plan: &impl serde::Serialize,
    ) -> Result<(), ArchiveError> {
        let plan = serde_json::to_string(plan)?;
        let inserted = sqlx::query(
            "INSERT INTO agent_ops (agent_id, kind, step, plan, started_at) VALUES (?, ?, 'started', ?, ?) \
             ON CONFLICT (agent_id) DO NOTHING",
        )
        .bind(agent_id.to_string())
        .bind(kind.as_str())
        .bind(plan)
        .bind(now_ms())
        .execute(db)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(ArchiveError::Conflict(
                "another archive, restore or purge of this agent is under way".into(),
            ));
        }
        Ok(())
    }

    pub async fn step(db: &Db, agent_id: Uuid, step: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE agent_ops SET step = ? WHERE agent_id = ?")
            .bind(step)
            .bind(agent_id.to_string())
            .execute(db)
            .await?;
        Ok(())
    }

    pub async fn step_in(
        tx: &mut Transaction<'_, Sqlite>,
        agent_id: Uuid,
        step: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE agent_ops SET step = ? WHERE agent_id = ?")
            .bind(step)
            .bind(agent_id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Ends the entry in the transaction that makes the operation's result visible.
    pub async fn end(tx: &mut Transaction<'_, Sqlite>, agent_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM agent_ops WHERE agent_id = ?")
            .bind(agent_id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn drop_entry(db: &Db, agent_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM agent_ops WHERE agent_id = ?")
            .bind(agent_id.to_string())
            .execute(db)
            .await?;
        Ok(())
    }

    pub async fn unfinished(db: &Db) -> Result<Vec<Entry>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT agent_id, kind, step, plan FROM agent_ops ORDER BY started_at")
                .fetch_all(db)
                .await?;
        let mut entries = Vec::new();
        for row in rows {
            let agent_id: String = row.try_get("agent_id")?;
            let kind: String = row.try_get("kind")?;
            let (Ok(agent_id), Some(kind)) = (Uuid::parse_str(&agent_id), OpKind::parse(&kind))
            else {
                tracing::error!(agent = %agent_id, %kind, "unreadable agent operations journal entry");
                continue;
            };
            entries.push(Entry {
                agent_id,
                kind,
                step: row.try_get("step")?,
                plan: row.try_get("plan")?,
            });
        }
        Ok(entries)
    }
}

// Where archived containers are (`backup/archive_move.rs` moves them; this module owns the table).

/// How many archives have their container in (or moving to or from) the backup repository.
pub async fn in_repository(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM archives WHERE location != 'pool'")
        .fetch_one(db)
        .await
}

/// The agent ids whose archived container is not on the pool (a backup leaves them out of
/// its container exports: they are in the repository already).
pub async fn moved_agents(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT agent_id FROM archives WHERE location != 'pool'")
        .fetch_all(db)
        .await
}

/// Moves an archive's container location from `from` to `to` if it is still at `from`; false if it was not.
pub async fn set_location(
    db: &Db,
    id: &str,
    from: ArchiveLocation,
    to: ArchiveLocation,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE archives SET location = ? WHERE id = ? AND location = ?")
        .bind(to.as_str())
        .bind(id)
        .bind(from.as_str())
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the repository snapshot of an archive moving out (before its container is deleted).
pub async fn record_backup_snapshot(db: &Db, id: &str, snapshot: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE archives SET backup_snapshot = ? WHERE id = ? AND location = 'moving_out'")
        .bind(snapshot)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Drops the archive snapshot's name from an archive whose container was made again without
/// it (a Docker one back from the backup repository: made from an export of the archived,
/// never-started container, it is as the snapshot would make it, so its restore needs none).
pub async fn forget_snapshot(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE archives SET snapshot = NULL WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Sets an archive's container location and its repository snapshot.
pub async fn settle(
    db: &Db,
    id: &str,
    to: ArchiveLocation,
    snapshot: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE archives SET location = ?, backup_snapshot = ? WHERE id = ?")
        .bind(to.as_str())
        .bind(snapshot)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_is_named_by_slug_and_time_and_its_container_name_always_fits() {
        let root = Path::new("/data/archive");
        let long = "x".repeat(agents::MAX_SLUG_LEN);
        let plan = ArchivePlan::new(root, &long, 1_700_000_000_000, Uuid::now_v7());
        assert_eq!(plan.snapshot, "taos-archive-1700000000000");
        assert_eq!(plan.dir, root.join(format!("{long}-1700000000000")));
        assert!(plan.archived_name.starts_with("taos-x-"));
        assert_eq!(plan.archived_name.len(), "taos-x-".len() + 12);
        assert!(plan.container.is_none() && !plan.was_running);
        // Two archives in the same millisecond still rename to different containers.
        let other = ArchivePlan::new(root, &long, 1_700_000_000_000, Uuid::now_v7());
        assert_ne!(plan.archived_name, other.archived_name);
    }

    #[test]
    fn the_placeholder_slug_is_the_agents_id() {
        let id = Uuid::now_v7();
        let placeholder = placeholder_slug(id);
        assert_eq!(placeholder, format!("x-{}", id.simple()));
        assert!(agents::is_valid_slug(&placeholder));
    }

    #[test]
    fn journal_kinds_round_trip() {
        for kind in [OpKind::Archive, OpKind::Restore, OpKind::Purge] {
            assert_eq!(OpKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(OpKind::parse("deploy"), None);
    }

    /// Plans are stored in `agent_ops` and read back by the next start, possibly by a newer
    /// host: their field names are a file format.
    #[test]
    fn journal_plans_written_by_this_version_are_read_back() {
        let archive: ArchivePlan = serde_json::from_str(
            r#"{"slug":"ada","container":"taos-ada","archived_name":"taos-x-0123456789ab",
                "snapshot":"taos-archive-1","dir":"/d/archive/ada-1","was_running":true}"#,
        )
        .expect("an archive plan");
        assert_eq!(archive.container.as_deref(), Some("taos-ada"));
        assert!(archive.was_running);
        let restore: RestorePlan = serde_json::from_str(
            r#"{"archive_id":"a1","archived_slug":"ada","slug":"ada-2","container":"taos-ada-2",
                "archived_name":null,"snapshot":null,"dir":"/d/archive/ada-1"}"#,
        )
        .expect("a restore plan");
        assert_eq!(restore.slug, "ada-2");
        assert!(restore.archived_name.is_none());
        let purge: PurgePlan = serde_json::from_str(
            r#"{"archive_id":"a1","slug":"ada","container":null,"dir":"/d/archive/ada-1"}"#,
        )
        .expect("a purge plan");
        assert_eq!(purge.dir, PathBuf::from("/d/archive/ada-1"));
    }
}
