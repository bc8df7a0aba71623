//! Reading an agent's trace: newest buckets first, each bucket's database merged with its JSONL
//! side files.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use chrono::TimeDelta;
use sqlx::{Connection, SqliteConnection};
use taos_proto::trace::TraceEvent;

use super::bucket::{self, bucket_start};
use super::{jsonl, TraceError, TraceQuery, MAX_LIST_LIMIT};

pub(super) async fn list(dir: &Path, query: &TraceQuery) -> Result<Vec<TraceEvent>, TraceError> {
    let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
    let buckets = buckets_in_range(dir, query)?;
    let mut events = Vec::new();
    // Events are filed by their own time, so every event in a bucket is newer than every event in
    // an earlier bucket: walking buckets newest first, we can stop once we have enough.
    for name in buckets.iter().rev() {
        let mut found = read_bucket(dir, name, query, limit - events.len()).await?;
        events.append(&mut found);
        if events.len() >= limit {
            break;
        }
    }
    events.truncate(limit);
    Ok(events)
}

/// Buckets with any file in `dir` whose hour overlaps [since, until].
fn buckets_in_range(dir: &Path, query: &TraceQuery) -> Result<BTreeSet<String>, TraceError> {
    let entries = match bucket::read_agent_dir(dir) {
        Ok(Some(entries)) => entries,
        Ok(None) => return Ok(BTreeSet::new()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!("trace folder ignored: {e}");
            return Ok(BTreeSet::new());
        }
        Err(e) => return Err(e.into()),
    };
    let mut buckets = BTreeSet::new();
    for entry in entries {
        let entry = entry?;
        // Only plain files hold data: a symlink, FIFO or folder named like a bucket is not
        // ours and is never opened (the type comes from the directory entry, not followed).
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some((name, _)) = name.to_str().and_then(bucket::bucket_of_file) else {
            continue;
        };
        let Some(start) = bucket_start(name) else {
            continue;
        };
        let after_since = query
            .since
            .is_none_or(|since| start + TimeDelta::hours(1) > since);
        let before_until = query.until.is_none_or(|until| start <= until);
        if after_since && before_until {
            buckets.insert(name.to_string());
        }
    }
    Ok(buckets)
}

/// The newest `limit` matching events of one bucket. The database copy of an event wins over a
/// JSONL copy, and `.jsonl` wins over `.late.jsonl`.
async fn read_bucket(
    dir: &Path,
    name: &str,
    query: &TraceQuery,
    limit: usize,
) -> Result<Vec<TraceEvent>, TraceError> {
    let db = bucket::db_path(dir, name);
    let mut events = Vec::new();
    let mut conn = None;
    if std::fs::symlink_metadata(&db).is_ok_and(|m| m.is_file()) {
        // A damaged database must not hide the events that were diverted to JSONL because of it,
        // so its errors are logged and the side files are still read.
        match read_db(&db, query, limit).await {
            Ok((found, c)) => {
                events = found;
                conn = Some(c);
            }
            Err(e) => tracing::warn!(path = %db.display(), "cannot read trace bucket: {e}"),
        }
    }

    let side = read_side_files(bucket::jsonl_path(dir, name), bucket::late_path(dir, name)).await?;
    let in_page: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    for event in side {
        if in_page.contains(&event.id) {
            continue;
        }
        // The database may hold this id outside the page we fetched (or filtered out); its copy
        // still wins, so the JSONL one is dropped.
        if let Some(c) = conn.as_mut() {
            if bucket::contains_id(c, &event.id).await.unwrap_or(false) {
                continue;
            }
        }
        if matches(query, &event) {
            events.push(event);
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    events.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    events.truncate(limit);
    Ok(events)
}

async fn read_db(
    path: &Path,
    query: &TraceQuery,
    limit: usize,
) -> Result<(Vec<TraceEvent>, SqliteConnection), TraceError> {
    let mut conn = bucket::open_for_read(path, bucket::is_sealed(path)).await?;
    match bucket::query(&mut conn, query, limit).await {
        Ok(events) => Ok((events, conn)),
        Err(e) => {
            let _ = conn.close().await;
            Err(e)
        }
    }
}

/// `.jsonl` then `.late.jsonl`, first copy of each id kept.
async fn read_side_files(jsonl: PathBuf, late: PathBuf) -> Result<Vec<TraceEvent>, TraceError> {
    let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<TraceEvent>> {
        let mut events = jsonl::read(&jsonl)?;
        events.extend(jsonl::read(&late)?);
        Ok(events)
    });
    let events = read.await.map_err(io::Error::other)??;
    let mut seen = HashSet::new();
    Ok(events
        .into_iter()
        .filter(|e| seen.insert(e.id.clone()))
        .collect())
}

fn matches(query: &TraceQuery, event: &TraceEvent) -> bool {
    query.kind.is_none_or(|k| event.kind == k)
        && query
            .channel_id
            .as_deref()
            .is_none_or(|c| event.channel_id.as_deref() == Some(c))
        && query
            .trace_id
            .as_deref()
            .is_none_or(|t| event.trace_id.as_deref() == Some(t))
        && query.since.is_none_or(|s| event.created_at >= s)
        && query.until.is_none_or(|u| event.created_at <= u)
}
