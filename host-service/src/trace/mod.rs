//! Per-agent trace store: what each agent reports about its own work, kept on disk by hour.
//!
//! Layout: `<root>/<slug>/YYYY-MM-DDTHH.db`, one SQLite file per agent per UTC hour, chosen by the
//! event's own `created_at` so a late or replayed event lands next to its neighbours. Small files
//! are cheap to drop, copy and seal, and a damaged file costs one hour of one agent.
//!
//! Writes go through one writer task per agent that commits everything queued in one transaction
//! per bucket (group commit): with `synchronous=FULL` every commit is an fsync, so batching is what
//! makes many small concurrent appends fast on an SD card. A request is answered only after its
//! events are durable. If SQLite refuses a write, the events go to `YYYY-MM-DDTHH.jsonl` instead,
//! so a corrupt file does not lose data.
//!
//! Buckets whose hour ended more than [`SEAL_AFTER_HOURS`] ago are sealed: WAL checkpointed,
//! switched to `journal_mode=DELETE`, made read-only (0400). The host runs as root, which ignores
//! permission bits, so "sealed" is decided by the mode bits and never by a write failing. Events
//! for a sealed hour go to `YYYY-MM-DDTHH.late.jsonl`. Reads merge all three files.
//!
//! Each agent folder also has an hour index (`index.db`, see `index`): events by kind and time
//! per hour, kept in step with every commit. Reads open only the hours it says can answer, a few
//! at a time, newest first, and stop once they have enough; totals come from it without reading
//! events. Bucket connections are pooled between reads for a short while (`read::Pool`).
//!
//! The store is the host's alone: `<data>/traces`, 0700, never mounted into a container (agents
//! send traces over HTTP). Even so, it opens nothing it did not check: bucket files are opened
//! without following links and must be plain files (see `bucket`), folders must be real ones.
//!
//! Each agent may keep [`StoreLimits::quota_bytes`] of trace files. Before a round is written,
//! an agent over its quota loses its oldest closed hours (past the write window) until it is
//! under 90 % of it, and whoever listens on [`StoreLimits::notices`] hears about it; if only open
//! hours are left, writes are refused with [`TraceError::QuotaFull`] until hours close.

mod bucket;
pub mod copy;
mod index;
pub mod ingest;
mod jsonl;
pub mod legacy;
pub mod pages;
mod read;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use taos_proto::trace::{TraceEvent, TraceKind, TRACE_SCHEMA_VERSION};
use tokio::sync::{mpsc, oneshot};

use crate::fsutil;
pub use bucket::bucket_name;
use writer::Command;

/// Agent slugs become directory names here and `taos-<slug>` container names (63 chars max).
pub const MAX_SLUG_LEN: usize = 58;
pub const MAX_LIST_LIMIT: usize = 1000;
/// How long after its hour ends a bucket still takes writes into its database.
pub const SEAL_AFTER_HOURS: i64 = 2;
pub const MAX_ID_CHARS: usize = 200;
/// How far from the host's clock an event's `created_at` may be before it is clamped.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::hours(24);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("invalid agent name")]
    BadSlug,
    #[error("{0}")]
    BadInput(String),
    #[error("trace file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("trace database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("trace writer stopped")]
    WriterStopped,
    #[error(
        "the agent's traces fill its quota of {quota_bytes} bytes and no closed hour is left \
         to delete; retry when the oldest open hour has closed"
    )]
    QuotaFull { quota_bytes: u64 },
}

/// Per-agent limits of a store and where to report what they cost.
#[derive(Clone, Default)]
pub struct StoreLimits {
    /// Bytes of trace files one agent may keep; `None` is no limit.
    pub quota_bytes: Option<u64>,
    /// Told whenever retention deletes an agent's hours or its quota is full.
    pub notices: Option<mpsc::UnboundedSender<QuotaNotice>>,
}

/// What quota enforcement did to one agent's traces.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaNotice {
    /// These hours (oldest first) were deleted to make room.
    Deleted {
        slug: String,
        buckets: Vec<String>,
        bytes_freed: u64,
        bytes_kept: u64,
        quota_bytes: u64,
    },
    /// Over quota with no closed hour left to delete: new events are refused for now.
    Full { slug: String, quota_bytes: u64 },
}

/// Filters for [`TraceStore::list`]. `since` and `until` are inclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceQuery {
    pub kind: Option<TraceKind>,
    pub channel_id: Option<String>,
    pub trace_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// 1..=[`MAX_LIST_LIMIT`]; values outside are clamped.
    pub limit: usize,
}

/// Handle to the store; clones share the same writers.
#[derive(Clone)]
pub struct TraceStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    limits: StoreLimits,
    /// One writer task per agent slug, started on first use and retired when idle.
    writers: Mutex<HashMap<String, mpsc::Sender<Command>>>,
    /// Each agent's hour index, loaded on first use (see `index`).
    indexes: Mutex<HashMap<String, SharedIndex>>,
    /// Bucket connections kept open between reads.
    readers: read::Pool,
}

/// An agent's index, shared by its writer (which keeps it in step with every commit) and readers.
type SharedIndex = Arc<tokio::sync::Mutex<Option<index::AgentIndex>>>;

/// Checks that `slug` is a safe directory name: `^[a-z0-9][a-z0-9-]{0,62}$` and at most
/// [`MAX_SLUG_LEN`] bytes. Must run before a slug is joined to any path.
pub fn validate_slug(slug: &str) -> Result<(), TraceError> {
    let bytes = slug.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if first_ok && rest_ok && bytes.len() <= MAX_SLUG_LEN {
        Ok(())
    } else {
        Err(TraceError::BadSlug)
    }
}

/// Parses a `since`/`until` value: epoch seconds (`1764237600` or `1764237600.25`) or RFC 3339.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let numeric = !whole.is_empty()
        && whole.bytes().all(|c| c.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()));
    if numeric {
        let secs: i64 = whole.parse().ok()?;
        // Digits after the point as nanoseconds, exactly (no float rounding); beyond 9 are dropped.
        let nanos = match fraction {
            Some(f) => {
                let mut digits: String = f.chars().take(9).collect();
                while digits.len() < 9 {
                    digits.push('0');
                }
                digits.parse::<u32>().ok()?
            }
            None => 0,
        };
        return DateTime::from_timestamp(secs, nanos);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl TraceStore {
    /// Opens (creating 0700 if needed) the store rooted at `root`, without limits. Cheap;
    /// writers start lazily.
    pub fn open(root: PathBuf) -> Result<TraceStore, TraceError> {
        Self::open_with(root, StoreLimits::default())
    }

    /// Like [`TraceStore::open`], with a per-agent quota and a listener for what it deletes.
    pub fn open_with(root: PathBuf, limits: StoreLimits) -> Result<TraceStore, TraceError> {
        fsutil::ensure_private_dir(&root)?;
        Ok(TraceStore {
            inner: Arc::new(Inner {
                root,
                limits,
                writers: Mutex::new(HashMap::new()),
                indexes: Mutex::new(HashMap::new()),
                readers: read::Pool::default(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn agent_dir(&self, slug: &str) -> Result<PathBuf, TraceError> {
        validate_slug(slug)?;
        Ok(self.inner.root.join(slug))
    }

    /// Stores complete events for agent `slug`; returns once they are durable. Idempotent by id.
    /// `created_at` is stored with millisecond precision.
    pub async fn append(&self, slug: &str, events: Vec<TraceEvent>) -> Result<(), TraceError> {
        validate_slug(slug)?;
        let mut events = events;
        for event in &mut events {
            check_event(slug, event)?;
            // The database keeps milliseconds; truncate up front so every copy of an event
            // (database or JSONL) reads back the same.
            if let Some(t) = DateTime::from_timestamp_millis(event.created_at.timestamp_millis()) {
                event.created_at = t;
            }
            event.agent_created_at = event
                .agent_created_at
                .and_then(|t| DateTime::from_timestamp_millis(t.timestamp_millis()));
        }
        if events.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.send(slug, Command::Append { events, reply }).await?;
        answer.await.map_err(|_| TraceError::WriterStopped)?
    }

    /// Newest first, at most `query.limit` events. An agent without traces has an empty list.
    pub async fn list(
        &self,
        slug: &str,
        query: &TraceQuery,
    ) -> Result<Vec<TraceEvent>, TraceError> {
        let dir = self.agent_dir(slug)?;
        let plan = {
            let shared = self.index(slug);
            let mut index = shared.lock().await;
            index::ensure_loaded(&mut index, &dir).await?;
            index.as_ref().map(|i| i.plan(query)).unwrap_or_default()
        };
        let events = read::list(&self.inner.readers, &dir, query, &plan).await;
        if self.inner.readers.needs_sweeper() {
            let store = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(read::POOL_IDLE).await;
                    match store.upgrade() {
                        Some(inner) if inner.readers.sweep() => {}
                        _ => break,
                    }
                }
            });
        }
        events
    }

    /// What the index knows of `[since, until]`: exact totals of the whole hours inside it, and
    /// the ranges that must be read event by event (hours cut by the range, inexact hours).
    async fn cover(
        &self,
        slug: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<index::Covered, TraceError> {
        let dir = self.agent_dir(slug)?;
        let shared = self.index(slug);
        let mut index = shared.lock().await;
        index::ensure_loaded(&mut index, &dir).await?;
        Ok(index
            .as_ref()
            .map(|i| i.cover(since, until))
            .unwrap_or_default())
    }

    /// The agent's shared index (not yet loaded the first time).
    fn index(&self, slug: &str) -> SharedIndex {
        lock(&self.inner.indexes)
            .entry(slug.to_string())
            .or_default()
            .clone()
    }

    /// Seals every bucket whose hour ended more than [`SEAL_AFTER_HOURS`] before `now`; returns
    /// how many were sealed. Buckets that cannot be sealed now are logged and retried next time.
    pub async fn seal_old_buckets(&self, now: DateTime<Utc>) -> Result<usize, TraceError> {
        let entries = match std::fs::read_dir(&self.inner.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut slugs = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_slug(&name).is_ok() && entry.file_type()?.is_dir() {
                slugs.push(name);
            }
        }
        let mut sealed = 0;
        for slug in slugs {
            let dir = self.inner.root.join(&slug);
            // Most agents have nothing to seal; don't wake (or start) their writer for nothing.
            match bucket::sealable(&dir, now) {
                Ok(buckets) if buckets.is_empty() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(slug, "cannot scan trace buckets: {e}");
                    continue;
                }
            }
            let (reply, answer) = oneshot::channel();
            self.send(&slug, Command::Seal { now, reply }).await?;
            sealed += answer.await.map_err(|_| TraceError::WriterStopped)?;
        }
        Ok(sealed)
    }

    /// Stops all writers and closes their database files. Everything acknowledged is already
    /// durable; this only makes the files tidy (WAL checkpointed). Later appends start new writers.
    pub async fn shutdown(&self) {
        let senders: Vec<_> = {
            let mut writers = lock(&self.inner.writers);
            writers.drain().map(|(_, tx)| tx).collect()
        };
        for tx in senders {
            let (reply, answer) = oneshot::channel();
            if tx.send(Command::Shutdown { reply }).await.is_ok() {
                // A writer that ended without answering has nothing left to flush.
                let _ = answer.await;
            }
        }
        self.inner.readers.evict_all();
    }

    /// Hands a command to the agent's writer, starting one if there is none or the old one retired.
    async fn send(&self, slug: &str, command: Command) -> Result<(), TraceError> {
        let mut command = command;
        // A writer that retires between our lookup and our send closes its channel first, so a
        // failed send means "start a new one"; the retry bound only guards against a bug.
        for _ in 0..3 {
            let tx = self.writer_for(slug);
            match tx.send(command).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    command = back;
                    let mut writers = lock(&self.inner.writers);
                    if writers.get(slug).is_some_and(|t| t.same_channel(&tx)) {
                        writers.remove(slug);
                    }
                }
            }
        }
        Err(TraceError::WriterStopped)
    }

    fn writer_for(&self, slug: &str) -> mpsc::Sender<Command> {
        let mut writers = lock(&self.inner.writers);
        if let Some(tx) = writers.get(slug) {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let tx = writer::spawn(
            Arc::downgrade(&self.inner),
            slug.to_string(),
            self.inner.root.join(slug),
            self.inner.limits.clone(),
            self.index(slug),
        );
        writers.insert(slug.to_string(), tx.clone());
        tx
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The length of `value` as JSON text, counted without building the text.
pub fn json_bytes(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The size of an event's variable parts: every text field and the payload as stored (JSON).
/// This is what `[traces] max_event_bytes` limits.
pub fn event_bytes(event: &TraceEvent) -> usize {
    let text = [
        &event.trace_id,
        &event.parent_id,
        &event.channel_id,
        &event.thread_id,
        &event.backend_name,
        &event.model,
        &event.error,
    ]
    .iter()
    .map(|field| field.as_deref().map_or(0, str::len))
    .sum::<usize>();
    json_bytes(&event.payload) + text + event.id.len() + event.agent_name.len()
}

/// Keeps an agent-given time within [`MAX_CLOCK_SKEW`] of `now`, so a wrong or hostile clock
/// can't make buckets for 1971 or 9998 (or push events past retention). A clamped event keeps
/// the time it was given in `agent_created_at`.
pub fn clamp_created_at(event: &mut TraceEvent, now: DateTime<Utc>) {
    let clamped = event
        .created_at
        .clamp(now - MAX_CLOCK_SKEW, now + MAX_CLOCK_SKEW);
    if clamped != event.created_at {
        event.agent_created_at = Some(event.created_at);
        event.created_at = clamped;
    }
}

fn check_event(slug: &str, event: &TraceEvent) -> Result<(), TraceError> {
    let bad = |m: &str| Err(TraceError::BadInput(m.to_string()));
    if event.v != TRACE_SCHEMA_VERSION {
        return bad("unsupported trace schema version");
    }
    if event.id.is_empty() || event.id.chars().count() > MAX_ID_CHARS {
        return Err(TraceError::BadInput(format!(
            "id must be 1-{MAX_ID_CHARS} characters"
        )));
    }
    if event.agent_name != slug {
        return bad("agent_name must be the agent's own name");
    }
    if !event.payload.is_object() {
        return bad("payload must be a JSON object");
    }
    if event.cost_usd.is_some_and(|c| !c.is_finite()) {
        return bad("cost_usd must be a finite number");
    }
    // Keeps bucket names fixed-width (4-digit years) so they sort by time.
    if !(1970..=9999).contains(&event.created_at.year()) {
        return bad("created_at is out of range");
    }
    Ok(())
}
