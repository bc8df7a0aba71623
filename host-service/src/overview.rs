//! The board at a glance: periodic samples of the host (CPU, memory, the data dir's disk, the
//! agents' storage) and of each agent (memory from the runtime, disk from the quota monitor),
//! kept 7 days in `host_samples` and `agent_samples`; the home screen's summary
//! (`overview`), the history (`history`), and the task that samples and tells live clients.
//!
//! Sampling is cheap on purpose (it runs on a Pi): per sample, two small /proc reads, two
//! statfs calls, the runtime's pool figures and one memory reading per container (incus's
//! state, Docker's one-shot stats, both from cgroup counters), a read of the quota monitor's last disk
//! figures (the monitor itself walks disks only every `[quota] interval_secs`), and one
//! transaction of small inserts. At the default 60 s that is 10 080 rows per series a week.

use std::time::Duration;

use sqlx::Row;
use taos_proto::agents::AgentStatus;
use taos_proto::llm::{BudgetPeriod, LlmState};
use taos_proto::ops::{
    AgentHistory, AgentOverview, AgentSample, HostOverview, HostSample, SampleHistory,
};
use uuid::Uuid;

use crate::agents::{self, AgentHost};
use crate::db::{from_ms, now_ms, Db};

/// How long samples are kept.
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest history one can ask for: all that is kept.
pub const MAX_HOURS: u32 = 7 * 24;
/// At most this many points per series in one answer: a sparkline needs no more, and a week
/// of 60 s samples for 20 agents stays a small answer.
pub const MAX_POINTS: u32 = 1000;

/// The event live clients get after each sample (data: a `HostOverview`). It is sent only to
/// connected clients, not stored in the event log: a sample a minute would push everything
/// else out of the log's 10 000 events within a week, and a missed one is replaced by the next.
pub const EVENT_KIND: &str = "host.overview";

#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    #[error("{0}")]
    BadInput(String),
    #[error("no such agent")]
    NoAgent,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error(transparent)]
    Budget(#[from] crate::llm::budget::BudgetError),
}

/// Cumulative CPU time from the first line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn read() -> Option<CpuTimes> {
        parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
    }

    /// Busy share between `self` (earlier) and `later`, 0–100; `None` if no time passed.
    pub fn percent_until(self, later: CpuTimes) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        let busy = later.busy.checked_sub(self.busy)?;
        (total > 0).then(|| ((busy as f64 * 1000.0 / total as f64).round() / 10.0).min(100.0))
    }
}

/// `cpu  user nice system idle iowait irq softirq steal …`: idle and iowait are idle time,
/// the rest up to steal is busy (guest time is already counted in user).
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 5 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values[4];
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

fn to_i64(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn to_u64(n: Option<i64>) -> Option<u64> {
    n.map(|n| u64::try_from(n).unwrap_or(0))
}

/// Reads the host's figures now; `cpu_percent` is computed against `previous` (and `previous`
/// becomes this reading).
pub async fn read_host(host: &AgentHost, previous: &mut Option<CpuTimes>, at: i64) -> HostSample {
    let cpu = CpuTimes::read();
    let cpu_percent = match (*previous, cpu) {
        (Some(before), Some(now)) => before.percent_until(now),
        _ => None,
    };
    *previous = cpu;
    let total = crate::sys::memory_total_bytes();
    let available = crate::sys::memory_available_bytes();
    let data = crate::sys::filesystem_space(&host.data_dir).ok();
    let pool = match host.runtime.as_ref() {
        Some(rt) => match rt.storage_space().await {
            Ok((free, total, _)) => Some((free, total)),
            Err(e) => {
                tracing::debug!(error = %e, "agents' storage unreadable for the sample");
                None
            }
        },
        None => None,
    };
    HostSample {
        at: from_ms(at),
        cpu_percent,
        memory_used_bytes: total.zip(available).map(|(t, a)| t.saturating_sub(a)),
        memory_total_bytes: total,
        data_disk_used_bytes: data.map(|(free, total)| total.saturating_sub(free)),
        data_disk_total_bytes: data.map(|(_, total)| total),
        pool_used_bytes: pool.map(|(free, total)| total.saturating_sub(free)),
        pool_total_bytes: pool.map(|(_, total)| total),
    }
}

/// Reads one agent's figures: memory from its container (if running), disk from the quota
/// monitor's last reading.
async fn read_agent(host: &AgentHost, agent: &agents::AgentRecord, at: i64) -> AgentSample {
    let memory = match (host.runtime.as_ref(), agent.container.as_ref()) {
        (Some(rt), Some(container)) if agent.status != AgentStatus::Deploying => {
            match rt.memory_used(container).await {
                Ok(memory) => memory,
                Err(e) => {
                    tracing::debug!(agent = %agent.slug, error = %e, "container state unreadable");
                    None
                }
            }
        }
        _ => None,
    };
    let disk = match agents::quota::last_reading(host, agent).await {
        Ok(disk) => disk,
        Err(e) => {
            tracing::debug!(agent = %agent.slug, error = %e, "disk reading unavailable");
            None
        }
    };
    AgentSample {
        at: from_ms(at),
        memory_used_bytes: memory,
        disk_used_bytes: disk.as_ref().and_then(|d| d.used_bytes),
        disk_quota_bytes: disk.map(|d| d.quota_bytes),
    }
}

/// Stores one sample of the host and its agents, and prunes what is older than 7 days
/// before `at`, in one transaction.
pub async fn store(
    db: &Db,
    host: &HostSample,
    agents: &[(Uuid, AgentSample)],
    at: i64,
) -> Result<(), OverviewError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT OR REPLACE INTO host_samples (at, cpu_percent, memory_used_bytes, \
         memory_total_bytes, data_disk_used_bytes, data_disk_total_bytes, pool_used_bytes, \
         pool_total_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(host.cpu_percent)
    .bind(to_i64(host.memory_used_bytes))
    .bind(to_i64(host.memory_total_bytes))
    .bind(to_i64(host.data_disk_used_bytes))
    .bind(to_i64(host.data_disk_total_bytes))
    .bind(to_i64(host.pool_used_bytes))
    .bind(to_i64(host.pool_total_bytes))
    .execute(&mut *tx)
    .await?;
    for (id, sample) in agents {
        sqlx::query(
            "INSERT OR REPLACE INTO agent_samples (agent_id, at, memory_used_bytes, \
             disk_used_bytes, disk_quota_bytes) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(at)
        .bind(to_i64(sample.memory_used_bytes))
        .bind(to_i64(sample.disk_used_bytes))
        .bind(to_i64(sample.disk_quota_bytes))
        .execute(&mut *tx)
        .await?;
    }
    prune(&mut tx, at).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes samples taken more than 7 days before `now`; returns how many rows went.
pub async fn prune(conn: &mut sqlx::SqliteConnection, now: i64) -> Result<u64, sqlx::Error> {
    let cutoff = now - RETENTION_MS;
    let hosts = sqlx::query("DELETE FROM host_samples WHERE at < ?")
        .bind(cutoff)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let agents = sqlx::query("DELETE FROM agent_samples WHERE at < ?")
        .bind(cutoff)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(hosts + agents)
}

fn host_sample_from(row: &sqlx::sqlite::SqliteRow) -> HostSample {
    let bytes = |name: &str| to_u64(row.try_get::<Option<i64>, _>(name).ok().flatten());
    HostSample {
        at: from_ms(row.try_get("at").unwrap_or_default()),
        cpu_percent: row
            .try_get::<Option<f64>, _>("cpu_percent")
            .ok()
            .flatten()
            .map(|p| (p * 10.0).round() / 10.0),
        memory_used_bytes: bytes("memory_used_bytes"),
        memory_total_bytes: bytes("memory_total_bytes"),
        data_disk_used_bytes: bytes("data_disk_used_bytes"),
        data_disk_total_bytes: bytes("data_disk_total_bytes"),
        pool_used_bytes: bytes("pool_used_bytes"),
        pool_total_bytes: bytes("pool_total_bytes"),
    }
}

/// The newest host sample.
pub async fn latest_host(db: &Db) -> Result<Option<HostSample>, OverviewError> {
    let row = sqlx::query(
        "SELECT at, cpu_percent, memory_used_bytes, memory_total_bytes, data_disk_used_bytes, \
         data_disk_total_bytes, pool_used_bytes, pool_total_bytes FROM host_samples \
         ORDER BY at DESC LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(host_sample_from))
}

/// Each agent's newest memory figure, by agent id.
async fn latest_memory(db: &Db) -> Result<std::collections::HashMap<String, u64>, OverviewError> {
    let rows = sqlx::query(
        "SELECT agent_id, memory_used_bytes FROM agent_samples s WHERE at = \
         (SELECT MAX(at) FROM agent_samples WHERE agent_id = s.agent_id)",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let id: String = r.try_get("agent_id").ok()?;
            let memory = to_u64(r.try_get::<Option<i64>, _>("memory_used_bytes").ok()?)?;
            Some((id, memory))
        })
        .collect())
}

/// The home screen's summary: the newest host sample, LiteLLM's and the runtime's state, each
/// agent's state, memory, disk and spend today. `runtime` is the runtime's health in words.
pub async fn overview(
    host: &AgentHost,
    host_name: &str,
    sample_secs: u64,
    runtime: String,
) -> Result<HostOverview, OverviewError> {
    let sample = latest_host(&host.db).await?;
    let memory = latest_memory(&host.db).await?;
    let now = chrono::Utc::now();
    let mut list = Vec::new();
    let mut spend_total = 0.0;
    for agent in agents::list(&host.db).await? {
        let spend = crate::llm::budget::spend(&host.db, agent.id, BudgetPeriod::Day, now).await?;
        spend_total += spend;
        let disk = match agents::quota::last_reading(host, &agent).await {
            Ok(disk) => disk,
            Err(e) => {
                tracing::debug!(agent = %agent.slug, error = %e, "disk reading unavailable");
                None
            }
        };
        let running = agent.status == AgentStatus::Running;
        list.push(AgentOverview {
            connected: host.bridge.is_connected(agent.id),
            // A stopped container's last figure is history, not its memory now.
            memory_used_bytes: memory
                .get(&agent.id.to_string())
                .copied()
                .filter(|_| running),
            disk_used_bytes: disk.as_ref().and_then(|d| d.used_bytes),
            disk_quota_bytes: disk.as_ref().map(|d| d.quota_bytes),
            disk_state: disk.map(|d| d.state),
            spend_today_usd: spend,
            slug: agent.slug,
            display_name: agent.display_name,
            emoji: agent.emoji,
            status: agent.status,
        });
    }
    let llm = host.llm.supervisor.status();
    Ok(HostOverview {
        host_name: host_name.to_string(),
        sample,
        sample_secs,
        llm_error: (llm.state != LlmState::Ready)
            .then_some(llm.last_error)
            .flatten(),
        llm: llm.state,
        runtime,
        agents: list,
        spend_today_usd: spend_total,
    })
}

/// Checks a history request: `hours` 1–168, `points` 1–1000.
pub fn check_range(hours: u32, points: u32) -> Result<(), OverviewError> {
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(OverviewError::BadInput(format!(
            "hours must be between 1 and {MAX_HOURS} (samples are kept 7 days)"
        )));
    }
    if !(1..=MAX_POINTS).contains(&points) {
        return Err(OverviewError::BadInput(format!(
            "points must be between 1 and {MAX_POINTS}"
        )));
    }
    Ok(())
}

/// The bucket width that fits `hours` into at most `points` buckets, whole seconds.
pub fn bucket_ms(hours: u32, points: u32) -> i64 {
    let span = i64::from(hours) * 3600 * 1000;
    let per = (span + i64::from(points) - 1) / i64::from(points.max(1));
    // Whole seconds, at least one.
    ((per + 999) / 1000).max(1) * 1000
}

/// Samples of the last `hours` before `now`, in at most `points` buckets per series; with
/// `agent`, only that agent's (and the host's).
pub async fn history(
    db: &Db,
    hours: u32,
    points: u32,
    agent: Option<&str>,
    now: i64,
) -> Result<SampleHistory, OverviewError> {
    check_range(hours, points)?;
    let only = match agent {
        Some(slug) => Some(
            agents::get_by_slug(db, slug)
                .await
                .map_err(|_| OverviewError::NoAgent)?,
        ),
        None => None,
    };
    let bucket = bucket_ms(hours, points);
    let since = now - i64::from(hours) * 3600 * 1000;
    let host_rows = sqlx::query(
        "SELECT (at / ?1) * ?1 AS at, AVG(cpu_percent) AS cpu_percent, \
         CAST(AVG(memory_used_bytes) AS INTEGER) AS memory_used_bytes, \
         MAX(memory_total_bytes) AS memory_total_bytes, \
         MAX(data_disk_used_bytes) AS data_disk_used_bytes, \
         MAX(data_disk_total_bytes) AS data_disk_total_bytes, \
         MAX(pool_used_bytes) AS pool_used_bytes, MAX(pool_total_bytes) AS pool_total_bytes \
         FROM host_samples WHERE at >= ?2 GROUP BY at / ?1 ORDER BY at / ?1",
    )
    .bind(bucket)
    .bind(since)
    .fetch_all(db)
    .await?;
    let agent_rows = sqlx::query(
        "SELECT agent_id, (at / ?1) * ?1 AS at, \
         CAST(AVG(memory_used_bytes) AS INTEGER) AS memory_used_bytes, \
         MAX(disk_used_bytes) AS disk_used_bytes, MAX(disk_quota_bytes) AS disk_quota_bytes \
         FROM agent_samples WHERE at >= ?2 AND (?3 IS NULL OR agent_id = ?3) \
         GROUP BY agent_id, at / ?1 ORDER BY agent_id, at / ?1",
    )
    .bind(bucket)
    .bind(since)
    .bind(only.as_ref().map(|a| a.id.to_string()))
    .fetch_all(db)
    .await?;
    let known = match &only {
        Some(agent) => vec![agent.clone()],
        None => agents::list(db).await?,
    };
    let mut series: Vec<AgentHistory> = known
        .iter()
        .map(|a| AgentHistory {
            slug: a.slug.clone(),
            samples: Vec::new(),
        })
        .collect();
    for row in &agent_rows {
        let id: String = row.try_get("agent_id").unwrap_or_default();
        let Some(at) = known.iter().position(|a| a.id.to_string() == id) else {
            continue; // archived since
        };
        let bytes = |name: &str| to_u64(row.try_get::<Option<i64>, _>(name).ok().flatten());
        series[at].samples.push(AgentSample {
            at: from_ms(row.try_get("at").unwrap_or_default()),
            memory_used_bytes: bytes("memory_used_bytes"),
            disk_used_bytes: bytes("disk_used_bytes"),
            disk_quota_bytes: bytes("disk_quota_bytes"),
        });
    }
    Ok(SampleHistory {
        hours,
        bucket_secs: u64::try_from(bucket / 1000).unwrap_or(1),
        host: host_rows.iter().map(host_sample_from).collect(),
        agents: series,
    })
}

/// Takes one sample of the host and every listed agent and stores it (pruning old rows).
pub async fn sample_once(
    host: &AgentHost,
    previous_cpu: &mut Option<CpuTimes>,
) -> Result<(), OverviewError> {
    let at = now_ms();
    let host_sample = read_host(host, previous_cpu, at).await;
    let mut per_agent = Vec::new();
    for agent in agents::list(&host.db).await? {
        let sample = read_agent(host, &agent, at).await;
        per_agent.push((agent.id, sample));
    }
    store(&host.db, &host_sample, &per_agent, at).await
}

/// Samples every `interval` until shutdown, and after each but the first sends the overview to
/// live clients. The first is taken a second after start (so the CPU figure has something to
/// compare with and the home screen has figures at once) and kept quiet: clients that connect
/// at start read the overview themselves, and streams opened then see nothing unasked for
/// until a full interval has passed. `describe_runtime` gives the runtime's health in words.
pub fn spawn_sampler(
    host: AgentHost,
    interval: Duration,
    host_name: String,
    describe_runtime: impl Fn() -> String + Send + 'static,
) {
    tokio::spawn(async move {
        let mut shutdown = host.shutdown.clone();
        let mut cpu = CpuTimes::read();
        let mut wait = Duration::from_secs(1).min(interval);
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = interval;
            if let Err(e) = sample_once(&host, &mut cpu).await {
                tracing::warn!(error = %e, "taking the host's sample failed");
                continue;
            }
            if std::mem::take(&mut first) {
                continue;
            }
            match overview(&host, &host_name, interval.as_secs(), describe_runtime()).await {
                Ok(view) => match serde_json::to_value(&view) {
                    Ok(data) => host.hub.broadcast_transient(EVENT_KIND, data),
                    Err(e) => tracing::warn!(error = %e, "the overview could not be encoded"),
                },
                Err(e) => tracing::warn!(error = %e, "the overview could not be read"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_share_is_busy_over_total() {
        let a = parse_cpu_line("cpu  100 0 100 700 100 0 0 0 0 0").unwrap();
        let b = parse_cpu_line("cpu  150 0 150 800 100 0 0 0 0 0").unwrap();
        assert_eq!(a.busy, 200);
        assert_eq!(a.total, 1000);
        assert_eq!(a.percent_until(b), Some(50.0));
        assert_eq!(a.percent_until(a), None, "no time passed");
        assert_eq!(
            b.percent_until(a),
            None,
            "a counter going back is no figure"
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5"), None);
        assert_eq!(parse_cpu_line("cpu 1 2 x 4 5"), None);
        assert_eq!(parse_cpu_line("cpu 1 2 3"), None);
    }

    #[test]
    fn buckets_fit_the_points_in_whole_seconds() {
        assert_eq!(bucket_ms(1, 60), 60_000);
        assert_eq!(bucket_ms(168, 1000), 605_000);
        assert_eq!(bucket_ms(1, 1000), 4_000);
        assert!(check_range(0, 10).is_err());
        assert!(check_range(169, 10).is_err());
        assert!(check_range(1, 0).is_err());
        assert!(check_range(1, 1001).is_err());
        assert!(check_range(168, 1000).is_ok());
    }

    #[tokio::test]
    async fn samples_older_than_a_week_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        let now = 10 * RETENTION_MS;
        let sample = |at: i64| HostSample {
            at: from_ms(at),
            cpu_percent: Some(1.0),
            memory_used_bytes: Some(1),
            memory_total_bytes: Some(2),
            data_disk_used_bytes: None,
            data_disk_total_bytes: None,
            pool_used_bytes: None,
            pool_total_bytes: None,
        };
        let old = now - RETENTION_MS - 1;
        let kept = now - RETENTION_MS + 1;
        store(&db, &sample(old), &[], old).await.unwrap();
        store(&db, &sample(kept), &[], kept).await.unwrap();
        store(&db, &sample(now), &[], now).await.unwrap();
        let history = history(&db, MAX_HOURS, MAX_POINTS, None, now)
            .await
            .unwrap();
        let times: Vec<i64> = history
            .host
            .iter()
            .map(|s| s.at.timestamp_millis())
            .collect();
        assert_eq!(times.len(), 2, "{times:?}");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM host_samples")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(count, 2, "the 8-day-old row is gone from the table");
    }
}
