//! Reading an agent's trace: the hours the index says can answer, newest first, each bucket's
//! database merged with its JSONL side files.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use sqlx::{Connection, SqliteConnection};
use taos_proto::trace::TraceEvent;

use super::bucket;
use super::index::{kind_index, Hour, Planned};
use super::{jsonl, TraceError, TraceQuery, MAX_LIST_LIMIT};

/// Read connections kept open between reads: opening a bucket (a worker thread, the file, its
/// schema) costs more than a page of events from it. A connection is taken out while one read
/// uses it, and checked on the way out and in: the file must still be the one it was opened on
/// (same device and inode) and sealed as it was. The writer evicts a bucket's connections before
/// it seals or deletes it, since an open reader would stop the seal. Few are kept, and none for
/// long, so an idle host holds none of them for more than [`POOL_IDLE`] after its last read.
#[derive(Default)]
pub(super) struct Pool {
    conns: std::sync::Mutex<Vec<Pooled>>,
    /// A sweeper task is running (see [`Pool::needs_sweeper`]).
    sweeping: std::sync::atomic::AtomicBool,
}

struct Pooled {
    path: PathBuf,
    file: (u64, u64),
    sealed: bool,
    used: Instant,
    conn: SqliteConnection,
}

/// Connections kept at most, over all agents: a day of hours (a rare kind) and then some, so
/// one query over a day does not evict its own connections.
const POOL_MAX: usize = 48;
/// A connection unused this long is closed by the sweeper (or the next take or give).
pub(super) const POOL_IDLE: Duration = Duration::from_secs(30);

fn file_id(path: &Path) -> Option<((u64, u64), bool)> {
    let meta = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())?;
    Some((
        (meta.dev(), meta.ino()),
        meta.permissions().mode() & 0o222 == 0,
    ))
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        // Only pushes, removals and retains under it: a panic can't leave it inconsistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled connection to the file at `path` as it is now, if there is one.
    fn take(&self, path: &Path, now: (u64, u64), sealed: bool) -> Option<SqliteConnection> {
        let mut conns = self.lock();
        conns.retain(|c| c.used.elapsed() < POOL_IDLE);
        let at = conns
            .iter()
            .position(|c| c.path == path && c.file == now && c.sealed == sealed)?;
        Some(conns.swap_remove(at).conn)
    }

    fn give(&self, path: &Path, file: (u64, u64), sealed: bool, conn: SqliteConnection) {
        let mut conns = self.lock();
        conns.retain(|c| c.used.elapsed() < POOL_IDLE);
        if conns.len() >= POOL_MAX {
            // The least recently used goes.
            if let Some(oldest) = conns
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.used)
                .map(|(i, _)| i)
            {
                conns.swap_remove(oldest);
            }
        }
        conns.push(Pooled {
            path: path.to_path_buf(),
            file,
            sealed,
            used: Instant::now(),
            conn,
        });
    }

    /// True once per idle period in which connections are pooled: the caller starts the task that
    /// calls [`Pool::sweep`] until it returns false.
    pub(super) fn needs_sweeper(&self) -> bool {
        !self.lock().is_empty()
            && !self
                .sweeping
                .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Closes connections idle for [`POOL_IDLE`]; false (and the sweeper stops) once none are
    /// left.
    pub(super) fn sweep(&self) -> bool {
        let mut conns = self.lock();
        conns.retain(|c| c.used.elapsed() < POOL_IDLE);
        if conns.is_empty() {
            self.sweeping
                .store(false, std::sync::atomic::Ordering::Release);
            return false;
        }
        true
    }

    /// Closes every pooled connection (dropping one closes it on its own worker thread).
    pub(super) fn evict_all(&self) {
        self.lock().clear();
    }

    /// Closes pooled connections to one bucket's database.
    pub(super) fn evict_file(&self, path: &Path) {
        self.lock().retain(|c| c.path != path);
    }
}

#[cfg(test)]
thread_local! {
    /// Hours a read opened on this thread: what the tests of skipping and stopping count.
    pub(super) static HOURS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Hours read at once. Each read waits on its own SQLite worker thread, so a query that needs
/// many hours (a rare kind) is not their sum; more than a few only queue on two cores.
const READ_AHEAD: usize = 4;

/// The newest `query.limit` events matching `query` from the hours `plan` names (newest first:
/// the index's answer to which hours can hold any, with at most how many).
///
/// Events are filed by their own time, so every event in an hour is newer than every event in
/// an earlier hour: walking hours newest first, we can stop once we have enough. The hours are
/// read in waves: each wave holds the hours whose bounds are needed to reach the limit, which
/// a one-by-one walk would read too (a bound is never below what an hour holds), read at once.
pub(super) async fn list(
    pool: &Pool,
    dir: &Path,
    query: &TraceQuery,
    plan: &[Planned],
) -> Result<Vec<TraceEvent>, TraceError> {
    let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
    let mut events = Vec::new();
    let mut next = 0;
    while next < plan.len() && events.len() < limit {
        let missing = (limit - events.len()) as u64;
        let mut wave_end = next;
        let mut bound = 0u64;
        while wave_end < plan.len() && bound < missing {
            bound = bound.saturating_add(plan[wave_end].bound);
            wave_end += 1;
        }
        let want = limit - events.len();
        for hours in plan[next..wave_end].chunks(READ_AHEAD) {
            let mut reads = Vec::with_capacity(hours.len());
            for hour in hours {
                reads.push(read_bucket(
                    pool,
                    dir,
                    &hour.bucket,
                    query,
                    want,
                    hour.side_files,
                ));
            }
            for mut found in try_join_all(reads).await? {
                events.append(&mut found);
            }
        }
        next = wave_end;
    }
    events.truncate(limit);
    Ok(events)
}

/// Counts one hour from its files, the way a read would see them (database copy first, side
/// files only for ids it lacks): what the index holds for an hour it can't trust.
pub(super) async fn summarize(dir: &Path, name: &str) -> Result<Hour, TraceError> {
    let db = bucket::db_path(dir, name);
    let mut hour = Hour::empty();
    hour.sealed = bucket::is_sealed(&db);
    let mut conn = None;
    if std::fs::symlink_metadata(&db).is_ok_and(|m| m.is_file()) {
        match bucket::open_for_read(&db, hour.sealed).await {
            Ok(mut c) => match bucket::count_by_kind(&mut c).await {
                Ok(counts) => {
                    for (kind, count) in counts {
                        hour.kinds[kind_index(kind)] = count;
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(path = %db.display(), "cannot count trace bucket: {e}");
                    // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
                    let _ = c.close().await;
                }
            },
            Err(e) => tracing::warn!(path = %db.display(), "cannot read trace bucket: {e}"),
        }
    }
    let plain = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let (jsonl, late) = (bucket::jsonl_path(dir, name), bucket::late_path(dir, name));
    hour.side_files = plain(&jsonl) || plain(&late);
    if hour.side_files {
        for event in read_side_files(jsonl, late).await? {
            if let Some(c) = conn.as_mut() {
                if bucket::contains_id(c, &event.id).await.unwrap_or(false) {
                    continue;
                }
            }
            hour.add(&event);
        }
    }
    if let Some(c) = conn {
        // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
        let _ = c.close().await;
    }
    Ok(hour)
}

/// The newest `limit` matching events of one bucket. The database copy of an event wins over a
/// JSONL copy, and `.jsonl` wins over `.late.jsonl`.
async fn read_bucket(
    pool: &Pool,
    dir: &Path,
    name: &str,
    query: &TraceQuery,
    limit: usize,
    side_files: bool,
) -> Result<Vec<TraceEvent>, TraceError> {
    #[cfg(test)]
    HOURS_READ.with(|n| n.set(n.get() + 1));
    let db = bucket::db_path(dir, name);
    let mut events = Vec::new();
    let mut conn = None;
    if let Some((file, sealed)) = file_id(&db) {
        // A damaged database must not hide the events that were diverted to JSONL because of it,
        // so its errors are logged and the side files are still read.
        match read_db(pool, &db, file, sealed, query, limit).await {
            Ok((found, c)) => {
                events = found;
                conn = Some((c, file, sealed));
            }
            Err(e) => tracing::warn!(path = %db.display(), "cannot read trace bucket: {e}"),
        }
    }

    // The index knows whether there are side files; most hours have none.
    let side = if side_files {
        read_side_files(bucket::jsonl_path(dir, name), bucket::late_path(dir, name)).await?
    } else {
        Vec::new()
    };
    let in_page: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    for event in side {
        if in_page.contains(&event.id) {
            continue;
        }
        // The database may hold this id outside the page we fetched (or filtered out); its copy
        // still wins, so the JSONL one is dropped.
        if let Some((c, _, _)) = conn.as_mut() {
            if bucket::contains_id(c, &event.id).await.unwrap_or(false) {
                continue;
            }
        }
        if matches(query, &event) {
            events.push(event);
        }
    }
    if let Some((c, file, sealed)) = conn {
        pool.give(&db, file, sealed, c);
    }
    events.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    events.truncate(limit);
    Ok(events)
}

/// The page from a bucket's database, on a pooled connection if there is one for this file
/// (else a new one). A connection that failed is closed, never pooled.
async fn read_db(
    pool: &Pool,
    path: &Path,
    file: (u64, u64),
    sealed: bool,
    query: &TraceQuery,
    limit: usize,
) -> Result<(Vec<TraceEvent>, SqliteConnection), TraceError> {
    let mut conn = match pool.take(path, file, sealed) {
        Some(conn) => conn,
        None => bucket::open_for_read(path, sealed).await?,
    };
    match bucket::query(&mut conn, query, limit).await {
        Ok(events) => Ok((events, conn)),
        Err(e) => {
            // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
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
