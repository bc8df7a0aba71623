//! The disk quota monitor: samples container agents' root disk usage through the runtime,
//! moves each between `ok`, `warn` (87.5 %) and `hard` (100 %) with hysteresis (back to `ok`
//! only below 80 %), notifies on each transition, pauses an agent that hits its quota, and
//! resumes it when the owner gives it room. State is persisted: a restart doesn't alert again.

use std::time::Duration;

use sqlx::Row;
use taos_proto::agents::{AgentStatus, DiskState, DiskStatus};
use taos_proto::events::{Level, NewNotification};
use uuid::Uuid;

use crate::agents::AgentHost;
use crate::agents::{self, AgentRecord};
use crate::db::{from_ms, now_ms};
use crate::runtime::Runtime;

pub const WARN_AT: f64 = 0.875;
/// btrfs refuses writes a few KiB short of the limit: a disk that can't take 4 MiB more is full.
pub const FULL_SLACK_BYTES: u64 = 4 * 1024 * 1024;
pub const CLEAR_BELOW: f64 = 0.80;
const GIB: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("no such agent")]
    NoAgent,
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no container runtime")]
    NoRuntime,
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// The next state, with hysteresis: a warned or full agent is `ok` again only below 80 %.
pub fn next_state(current: DiskState, used: u64, quota: u64) -> DiskState {
    let ratio = if quota == 0 {
        1.0
    } else {
        used as f64 / quota as f64
    };
    if used.saturating_add(FULL_SLACK_BYTES.min(quota / 100)) >= quota {
        DiskState::Hard
    } else if ratio >= WARN_AT || (ratio >= CLEAR_BELOW && current != DiskState::Ok) {
        DiskState::Warn
    } else {
        DiskState::Ok
    }
}

/// Starts watching a new container agent's disk, in the transaction that creates it.
pub async fn add_agent(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
    quota_bytes: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO agent_disk (agent_id, quota_bytes) VALUES (?, ?)")
        .bind(agent.to_string())
        .bind(i64::try_from(quota_bytes).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whether the monitor paused the agent for running out of disk (false if it never sampled it).
pub async fn paused_for_disk(db: &crate::db::Db, agent: Uuid) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT paused_for_disk FROM agent_disk WHERE agent_id = ?")
            .bind(agent.to_string())
            .fetch_optional(db)
            .await?
            .unwrap_or(false),
    )
}

/// Records an agent's quota (on resize).
pub async fn set_quota_bytes(
    db: &crate::db::Db,
    agent: Uuid,
    quota_bytes: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agent_disk (agent_id, quota_bytes) VALUES (?, ?) \
         ON CONFLICT(agent_id) DO UPDATE SET quota_bytes = excluded.quota_bytes",
    )
    .bind(agent.to_string())
    .bind(i64::try_from(quota_bytes).unwrap_or(i64::MAX))
    .execute(db)
    .await?;
    Ok(())
}

async fn load(
    host: &AgentHost,
    agent: &AgentRecord,
) -> Result<Option<(u64, Option<u64>, DiskState, Option<i64>, bool)>, QuotaError> {
    let row = sqlx::query(
        "SELECT quota_bytes, used_bytes, state, last_checked_at, paused_for_disk FROM agent_disk WHERE agent_id = ?",
    )
    .bind(agent.id.to_string())
    .fetch_optional(&host.db)
    .await?;
    Ok(row.map(|r| {
        (
            r.try_get::<i64, _>("quota_bytes").unwrap_or(0).max(0) as u64,
            r.try_get::<Option<i64>, _>("used_bytes")
                .ok()
                .flatten()
                .map(|u| u.max(0) as u64),
            // A row the monitor hasn't judged (or can't read) counts as fine until the next sample.
            r.try_get::<String, _>("state")
                .ok()
                .and_then(|state| state.parse().ok())
                .unwrap_or(DiskState::Ok),
            r.try_get("last_checked_at").ok().flatten(),
            r.try_get("paused_for_disk").unwrap_or(false),
        )
    }))
}

fn status_of(
    slug: &str,
    quota: u64,
    used: Option<u64>,
    state: DiskState,
    checked: Option<i64>,
) -> DiskStatus {
    DiskStatus {
        slug: slug.to_string(),
        used_bytes: used,
        quota_bytes: quota,
        percent: used.map(|u| {
            if quota == 0 {
                100.0
            } else {
                (u as f64 * 1000.0 / quota as f64).round() / 10.0
            }
        }),
        state,
        last_checked_at: checked.map(from_ms),
    }
}

/// The last sample of an agent's disk.
pub async fn status(host: &AgentHost, slug: &str) -> Result<DiskStatus, QuotaError> {
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|_| QuotaError::NoAgent)?;
    let (quota, used, disk_state, checked, _) = load(host, &agent).await?.ok_or_else(|| {
        QuotaError::Conflict(format!("{slug} has no disk quota (not a container agent)"))
    })?;
    Ok(status_of(&agent.slug, quota, used, disk_state, checked))
}

/// An agent's disk as of the monitor's last sample, without sampling; `None` for an agent
/// it doesn't watch (external agents).
pub async fn last_reading(
    host: &AgentHost,
    agent: &AgentRecord,
) -> Result<Option<DiskStatus>, QuotaError> {
    Ok(load(host, agent)
        .await?
        .map(|(quota, used, state, checked, _)| {
            status_of(&agent.slug, quota, used, state, checked)
        }))
}

/// Samples one agent, persists the result, and acts on a state change.
pub async fn scan_agent(
    host: &AgentHost,
    agent: &AgentRecord,
) -> Result<Option<DiskStatus>, QuotaError> {
    let Some((quota, _, current, _, paused_for_disk)) = load(host, agent).await? else {
        return Ok(None);
    };
    let (Some(rt), Some(container)) = (host.runtime.as_ref(), agent.container.as_ref()) else {
        return Ok(None);
    };
    let used = match rt.quota_usage(container).await {
        Ok(used) => used,
        Err(e) => {
            tracing::debug!(agent = %agent.slug, error = %e, "disk sample failed");
            return Ok(None);
        }
    };
    let Some(used) = used else {
        return Ok(None);
    };
    let next = next_state(current, used, quota);
    let now = now_ms();
    sqlx::query(
        "UPDATE agent_disk SET used_bytes = ?, state = ?, last_checked_at = ? WHERE agent_id = ?",
    )
    .bind(i64::try_from(used).unwrap_or(i64::MAX))
    .bind(next.as_str())
    .bind(now)
    .bind(agent.id.to_string())
    .execute(&host.db)
    .await?;
    if next != current {
        transition(host, agent, current, next, used, quota, paused_for_disk).await?;
    }
    Ok(Some(status_of(
        &agent.slug,
        quota,
        Some(used),
        next,
        Some(now),
    )))
}

async fn transition(
    host: &AgentHost,
    agent: &AgentRecord,
    from: DiskState,
    to: DiskState,
    used: u64,
    quota: u64,
    paused_for_disk: bool,
) -> Result<(), QuotaError> {
    let pct = used as f64 * 100.0 / quota.max(1) as f64;
    let figures = figures(used, quota);
    let (level, title, message) = notice(&agent.display_name, to, &figures);
    tracing::info!(agent = %agent.slug, %from, %to, %figures, "disk quota state changed");
    if let Err(e) = host
        .hub
        .notify(NewNotification {
            level,
            title,
            message,
            source: Some("disk_quota".into()),
            data: Some(serde_json::json!({
                "agent": agent.slug, "from": from, "to": to, "used_bytes": used, "quota_bytes": quota,
                "percent": (pct * 10.0).round() / 10.0,
                "actions": ["resize", "admin-prompt:disk-audit"],
            })),
        })
        .await
    {
        tracing::warn!(error = %e, "disk quota notification failed");
    }
    match action_on(from, to, agent.paused, paused_for_disk) {
        Some(DiskAction::Pause) => pause_for_disk(host, agent).await?,
        Some(DiskAction::Resume) => resume_after_disk(host, agent).await?,
        None => {}
    }
    Ok(())
}

/// What a state change does to the agent, besides telling the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskAction {
    Pause,
    Resume,
}

/// A full disk pauses the agent (unless the owner already did); leaving `hard` resumes it,
/// but only if the disk paused it: an agent the owner paused stays paused.
fn action_on(
    from: DiskState,
    to: DiskState,
    agent_paused: bool,
    paused_for_disk: bool,
) -> Option<DiskAction> {
    if to == DiskState::Hard && !agent_paused {
        Some(DiskAction::Pause)
    } else if from == DiskState::Hard && to != DiskState::Hard && paused_for_disk {
        Some(DiskAction::Resume)
    } else {
        None
    }
}

/// "1.23 GiB of 4.00 GiB (30.8%)".
fn figures(used: u64, quota: u64) -> String {
    let pct = used as f64 * 100.0 / quota.max(1) as f64;
    format!(
        "{:.2} GiB of {:.2} GiB ({pct:.1}%)",
        used as f64 / GIB as f64,
        quota as f64 / GIB as f64
    )
}

/// The notification for an agent entering state `to`: level, title, message.
fn notice(name: &str, to: DiskState, figures: &str) -> (Level, String, String) {
    match to {
        DiskState::Hard => (
            Level::Error,
            format!("{name} ran out of disk and was paused"),
            format!("{figures}. Give it more room (resize its quota) or ask it to clean up (disk-audit); it resumes once it is below its quota."),
        ),
        DiskState::Warn => (
            Level::Warning,
            format!("{name} is running out of disk"),
            format!("{figures}. Resize its quota or ask it to clean up (disk-audit)."),
        ),
        DiskState::Ok => (
            Level::Info,
            format!("{name}'s disk is fine again"),
            format!("{figures}."),
        ),
    }
}

async fn pause_for_disk(host: &AgentHost, agent: &AgentRecord) -> Result<(), QuotaError> {
    let patch = taos_proto::agents::AgentPatch {
        paused: Some(true),
        ..Default::default()
    };
    agents::update(&host.db, &agent.slug, &patch).await?;
    sqlx::query("UPDATE agent_disk SET paused_for_disk = 1 WHERE agent_id = ?")
        .bind(agent.id.to_string())
        .execute(&host.db)
        .await?;
    agents::set_status(&host.db, agent.id, AgentStatus::Paused).await?;
    host.bridge.wake(agent.id);
    if let (Some(rt), Some(container)) = (host.runtime.as_ref(), agent.container.as_ref()) {
        if rt.stop(container, false).await.is_err() {
            if let Err(e) = rt.stop(container, true).await {
                // Paused all the same: deliveries wait, and the gateway refuses it.
                tracing::warn!(agent = %agent.slug, error = %e, "could not stop an agent whose disk is full");
            }
        }
    }
    Ok(())
}

async fn resume_after_disk(host: &AgentHost, agent: &AgentRecord) -> Result<(), QuotaError> {
    if let (Some(rt), Some(container)) = (host.runtime.as_ref(), agent.container.as_ref()) {
        rt.start(container).await?;
    }
    let patch = taos_proto::agents::AgentPatch {
        paused: Some(false),
        ..Default::default()
    };
    agents::update(&host.db, &agent.slug, &patch).await?;
    sqlx::query("UPDATE agent_disk SET paused_for_disk = 0 WHERE agent_id = ?")
        .bind(agent.id.to_string())
        .execute(&host.db)
        .await?;
    agents::set_status(&host.db, agent.id, AgentStatus::Running).await?;
    host.bridge.clear_notices(agent.id);
    host.bridge.wake(agent.id);
    Ok(())
}

/// Samples every container agent.
pub async fn scan_all(host: &AgentHost) -> Result<Vec<DiskStatus>, QuotaError> {
    let mut results = Vec::new();
    if let Some(rt) = host.runtime.as_ref() {
        rt.repair_quota_accounting().await;
    }
    for agent in agents::list(&host.db).await? {
        if agent.container.is_none() || agent.status == AgentStatus::Deploying {
            continue;
        }
        // One agent's trouble must not stop the others from being checked.
        match scan_agent(host, &agent).await {
            Ok(Some(status)) => results.push(status),
            Ok(None) => {}
            Err(e) => tracing::warn!(agent = %agent.slug, error = %e, "disk check failed"),
        }
    }
    Ok(results)
}

/// Resizes an agent's root disk quota (1–1024 GiB) and re-evaluates it at once.
pub async fn resize(host: &AgentHost, slug: &str, size_gib: u64) -> Result<DiskStatus, QuotaError> {
    if !(1..=1024).contains(&size_gib) {
        return Err(QuotaError::BadInput(
            "size_gib must be between 1 and 1024".into(),
        ));
    }
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|_| QuotaError::NoAgent)?;
    let rt = host.runtime.as_ref().ok_or(QuotaError::NoRuntime)?;
    let container = agent
        .container
        .clone()
        .ok_or_else(|| QuotaError::Conflict(format!("{slug} is not a container agent")))?;
    if !rt.enforces_disk_quota().await? {
        let driver = rt.storage_driver().await?;
        return Err(QuotaError::Conflict(format!(
            "agents' disks are on {driver:?} storage, which can't enforce a disk size; use an incus btrfs pool"
        )));
    }
    rt.set_root_size(&container, size_gib * 1024).await?;
    set_quota_bytes(&host.db, agent.id, size_gib * GIB).await?;
    rt.repair_quota_accounting().await;
    // The paused flag may have changed since the agent was loaded.
    let agent = agents::get_by_id(&host.db, agent.id).await?;
    match scan_agent(host, &agent).await? {
        Some(status) => Ok(status),
        None => status(host, slug).await,
    }
}

/// Runs the monitor every `interval` until shutdown.
pub fn spawn_monitor(host: AgentHost, interval: Duration) {
    tokio::spawn(async move {
        let mut shutdown = host.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if host.runtime.is_none() {
                continue;
            }
            if let Err(e) = scan_all(&host).await {
                tracing::warn!(error = %e, "disk quota scan failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_hysteresis() {
        let q = 1000;
        assert_eq!(next_state(DiskState::Ok, 500, q), DiskState::Ok);
        assert_eq!(next_state(DiskState::Ok, 870, q), DiskState::Ok);
        assert_eq!(next_state(DiskState::Ok, 875, q), DiskState::Warn);
        assert_eq!(next_state(DiskState::Ok, 1000, q), DiskState::Hard);
        let gib = 1024 * 1024 * 1024;
        assert_eq!(
            next_state(DiskState::Warn, gib - 16 * 1024, gib),
            DiskState::Hard,
            "btrfs stops just short"
        );
        assert_eq!(
            next_state(DiskState::Warn, gib - 64 * 1024 * 1024, gib),
            DiskState::Warn
        );
        assert_eq!(next_state(DiskState::Hard, 950, q), DiskState::Warn);
        assert_eq!(
            next_state(DiskState::Warn, 850, q),
            DiskState::Warn,
            "no flapping between 80 and 87.5 %"
        );
        assert_eq!(next_state(DiskState::Warn, 799, q), DiskState::Ok);
        assert_eq!(next_state(DiskState::Hard, 100, q), DiskState::Ok);
        assert_eq!(next_state(DiskState::Ok, 1, 0), DiskState::Hard);
    }

    #[test]
    fn a_full_disk_pauses_and_only_a_disk_pause_is_undone() {
        use DiskAction::{Pause, Resume};
        assert_eq!(
            action_on(DiskState::Warn, DiskState::Hard, false, false),
            Some(Pause)
        );
        assert_eq!(
            action_on(DiskState::Ok, DiskState::Hard, false, false),
            Some(Pause)
        );
        // Already paused by the owner: nothing to do, and nothing to undo later.
        assert_eq!(
            action_on(DiskState::Warn, DiskState::Hard, true, false),
            None
        );
        assert_eq!(
            action_on(DiskState::Hard, DiskState::Warn, true, true),
            Some(Resume)
        );
        assert_eq!(
            action_on(DiskState::Hard, DiskState::Ok, true, true),
            Some(Resume)
        );
        assert_eq!(action_on(DiskState::Hard, DiskState::Ok, true, false), None);
        assert_eq!(
            action_on(DiskState::Ok, DiskState::Warn, false, false),
            None
        );
        assert_eq!(
            action_on(DiskState::Warn, DiskState::Ok, false, false),
            None
        );
    }

    #[test]
    fn notices_say_what_happened_at_the_right_level() {
        let gib = 1024 * 1024 * 1024;
        let text = figures(gib, 4 * gib);
        assert_eq!(text, "1.00 GiB of 4.00 GiB (25.0%)");
        let (level, title, message) = notice("Ada", DiskState::Hard, &text);
        assert_eq!(level, Level::Error);
        assert_eq!(title, "Ada ran out of disk and was paused");
        assert!(message.starts_with("1.00 GiB of 4.00 GiB (25.0%). Give it more room"));
        assert_eq!(notice("Ada", DiskState::Warn, &text).0, Level::Warning);
        assert_eq!(
            notice("Ada", DiskState::Ok, &text).1,
            "Ada's disk is fine again"
        );
        assert_eq!(
            figures(5, 0),
            format!("0.00 GiB of 0.00 GiB ({:.1}%)", 500.0)
        );
    }

    #[test]
    fn status_rounds_to_a_tenth_of_a_percent() {
        let status = status_of("ada", 1000, Some(333), DiskState::Ok, None);
        assert_eq!(status.percent, Some(33.3));
        assert_eq!(status.state, DiskState::Ok);
        assert_eq!(
            status_of("ada", 0, Some(1), DiskState::Hard, None).percent,
            Some(100.0)
        );
        assert_eq!(
            status_of("ada", 1000, None, DiskState::Ok, None).percent,
            None
        );
    }
}
