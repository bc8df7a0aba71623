//! Reading an agent's trace: the hours the index says can answer, newest first, each bucket's
//! database merged with its JSONL side files.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use sqlx::{Connection, SqliteConnection};
use taos_proto::trace::{TraceEvent, TraceKind};

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
    /// Events of kinds that are rare in their hour (see [`Rare`]).
    rare: std::sync::Mutex<Rare>,
    /// A sweeper task is running (see [`Pool::needs_sweeper`]).
    sweeping: std::sync::atomic::AtomicBool,
}

struct Pooled {
    path: PathBuf,
    file: FileId,
    sealed: bool,
    used: Instant,
    conn: SqliteConnection,
}

/// The events of a kind that an hour holds few of ([`RARE_MAX`] at most), as a read of the hour
/// finds them (its database merged with its side files): "the newest 100 of a rare kind" needs
/// every hour that has one, and a round trip to a SQLite worker thread per hour costs far more
/// than the few events. An entry is only used for a query by kind (and time), for the same
/// database file (device, inode, change time) sealed as it was, and an hour the index says has
/// side files (or not) as it did. The writer calls [`Pool::changed`] after every commit to an
/// hour and every append to its side files, and a read only stores what it found if no change
/// was reported since it began (`generation`), so an entry never misses an acknowledged event.
/// Bounded by [`RARE_BYTES`] and swept like the connections, so an idle host holds none.
#[derive(Default)]
struct Rare {
    generation: u64,
    bytes: usize,
    entries: Vec<RareEntry>,
}

struct RareEntry {
    path: PathBuf,
    file: FileId,
    sealed: bool,
    side_files: bool,
    kind: TraceKind,
    /// Newest first.
    events: Vec<TraceEvent>,
    bytes: usize,
    used: Instant,
}

/// Device, inode and change time of a bucket's database: a file deleted and another created in
/// its place may get the inode back, not the change time.
type FileId = (u64, u64, i64, i64);

/// What a kept entry is valid for: its database file, whether that was sealed, and whether the
/// index said the hour has side files.
type Kept = (FileId, bool, bool);

/// Most events of one kind an hour may hold for its events to be kept (see [`Rare`]).
pub(super) const RARE_MAX: u64 = 8;
/// Bytes of kept events at most (their JSON size), over all agents.
const RARE_BYTES: usize = 512 * 1024;

/// Connections kept at most, over all agents: a day of hours (a rare kind) and then some, so
/// one query over a day does not evict its own connections.
const POOL_MAX: usize = 48;
/// A connection unused this long is closed by the sweeper (or the next take or give).
pub(super) const POOL_IDLE: Duration = Duration::from_secs(30);

fn file_id(path: &Path) -> Option<(FileId, bool)> {
    let meta = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())?;
    Some((
        (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        meta.permissions().mode() & 0o222 == 0,
    ))
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        // Only pushes, removals and retains under it: a panic can't leave it inconsistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled connection to the file at `path` as it is now, if there is one.
    fn take(&self, path: &Path, now: FileId, sealed: bool) -> Option<SqliteConnection> {
        let mut conns = self.lock();
        conns.retain(|c| c.used.elapsed() < POOL_IDLE);
        let at = conns
            .iter()
            .position(|c| c.path == path && c.file == now && c.sealed == sealed)?;
        Some(conns.swap_remove(at).conn)
    }

    fn give(&self, path: &Path, file: FileId, sealed: bool, conn: SqliteConnection) {
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
        let idle = self.lock().is_empty() && self.lock_rare().entries.is_empty();
        !idle
            && !self
                .sweeping
                .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Closes connections idle for [`POOL_IDLE`]; false (and the sweeper stops) once none are
    /// left.
    pub(super) fn sweep(&self) -> bool {
        let rare_left = {
            let mut rare = self.lock_rare();
            rare.retain(|e| e.used.elapsed() < POOL_IDLE);
            !rare.entries.is_empty()
        };
        let mut conns = self.lock();
        conns.retain(|c| c.used.elapsed() < POOL_IDLE);
        if conns.is_empty() && !rare_left {
            self.sweeping
                .store(false, std::sync::atomic::Ordering::Release);
            return false;
        }
        true
    }

    /// Closes every pooled connection (dropping one closes it on its own worker thread).
    pub(super) fn evict_all(&self) {
        self.lock().clear();
        let mut rare = self.lock_rare();
        rare.generation += 1;
        rare.retain(|_| false);
    }

    /// Closes pooled connections to one bucket's database and forgets its kept events.
    pub(super) fn evict_file(&self, path: &Path) {
        self.lock().retain(|c| c.path != path);
        self.changed(path);
    }

    /// The writer committed to the bucket at `path` or appended to its side files: its kept
    /// events are out of date, and so is anything a read that began before now found there.
    pub(super) fn changed(&self, path: &Path) {
        let mut rare = self.lock_rare();
        rare.generation += 1;
        rare.retain(|e| e.path != path);
    }

    fn lock_rare(&self) -> std::sync::MutexGuard<'_, Rare> {
        // As for `lock`: a panic can't leave it inconsistent.
        self.rare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept events of `kind` in the file at `path` as it is now, newest first.
    fn rare_get(&self, path: &Path, file: Kept, kind: TraceKind) -> Option<Vec<TraceEvent>> {
        let mut rare = self.lock_rare();
        let entry = rare.entries.iter_mut().find(|e| {
            e.path == path && (e.file, e.sealed, e.side_files) == file && e.kind == kind
        })?;
        entry.used = Instant::now();
        Some(entry.events.clone())
    }

    fn rare_generation(&self) -> u64 {
        self.lock_rare().generation
    }

    /// Keeps what a read that began at `generation` found, unless a commit was reported since.
    fn rare_put(
        &self,
        generation: u64,
        path: &Path,
        (file, sealed, side_files): Kept,
        kind: TraceKind,
        events: &[TraceEvent],
    ) {
        let bytes: usize = events
            .iter()
            .map(|e| serde_json::to_vec(e).map_or(RARE_BYTES, |v| v.len()))
            .sum();
        let mut rare = self.lock_rare();
        if rare.generation != generation || bytes > RARE_BYTES / 8 {
            return;
        }
        rare.retain(|e| e.used.elapsed() < POOL_IDLE && !(e.path == path && e.kind == kind));
        while rare.bytes + bytes > RARE_BYTES {
            // The least recently used go.
            let Some(oldest) = rare
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let gone = rare.entries.swap_remove(oldest);
            rare.bytes -= gone.bytes;
        }
        rare.bytes += bytes;
        rare.entries.push(RareEntry {
            path: path.to_path_buf(),
            file,
            sealed,
            side_files,
            kind,
            events: events.to_vec(),
            bytes,
            used: Instant::now(),
        });
    }
}

impl Rare {
    fn retain(&mut self, mut keep: impl FnMut(&RareEntry) -> bool) {
        let mut bytes = 0;
        self.entries.retain(|e| {
            let kept = keep(e);
            if kept {
                bytes += e.bytes;
            }
            kept
        });
        self.bytes = bytes;
    }
}

#[cfg(test)]
thread_local! {
    /// Hours a read opened on this thread: what the tests of skipping and stopping count.
    pub(super) static HOURS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Queries a read sent to a bucket's database on this thread, and hours answered from the
    /// kept events of a rare kind: what the tests of [`Rare`] count.
    pub(super) static DB_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    pub(super) static RARE_HITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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
                reads.push(read_bucket(pool, dir, hour, query, want));
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

/// The newest `limit` matching events of one bucket: for a kind the hour holds few of, from
/// what is kept of it (see [`Rare`]), else read from its files.
async fn read_bucket(
    pool: &Pool,
    dir: &Path,
    hour: &Planned,
    query: &TraceQuery,
    limit: usize,
) -> Result<Vec<TraceEvent>, TraceError> {
    #[cfg(test)]
    HOURS_READ.with(|n| n.set(n.get() + 1));
    let rare_kind = query.kind.filter(|_| {
        hour.bound <= RARE_MAX && query.channel_id.is_none() && query.trace_id.is_none()
    });
    if let Some(kind) = rare_kind {
        if let Some(all) = read_rare(pool, dir, hour, kind).await? {
            let mut events: Vec<TraceEvent> =
                all.into_iter().filter(|e| matches(query, e)).collect();
            events.truncate(limit);
            return Ok(events);
        }
    }
    Ok(read_hour(pool, dir, hour, query, limit).await?.0)
}

/// The newest `limit` matching events of one bucket's files, and whether every query to its
/// database worked (else what was found is only what could be read). The database copy of an
/// event wins over a JSONL copy, and `.jsonl` wins over `.late.jsonl`.
async fn read_hour(
    pool: &Pool,
    dir: &Path,
    hour: &Planned,
    query: &TraceQuery,
    limit: usize,
) -> Result<(Vec<TraceEvent>, bool), TraceError> {
    let (name, side_files) = (hour.bucket.as_str(), hour.side_files);
    let db = bucket::db_path(dir, name);
    let mut events = Vec::new();
    let mut conn = None;
    let mut complete = true;
    if let Some((file, sealed)) = file_id(&db) {
        // A damaged database must not hide the events that were diverted to JSONL because of it,
        // so its errors are logged and the side files are still read.
        match read_db(pool, &db, file, sealed, query, limit).await {
            Ok((found, c)) => {
                events = found;
                conn = Some((c, file, sealed));
            }
            Err(e) => {
                complete = false;
                tracing::warn!(path = %db.display(), "cannot read trace bucket: {e}");
            }
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
        // Filtered first: each look-up below is a round trip to the database's worker thread.
        if in_page.contains(&event.id) || !matches(query, &event) {
            continue;
        }
        // The database may hold this id outside the page we fetched (or filtered out); its copy
        // still wins, so the JSONL one is dropped.
        if let Some((c, _, _)) = conn.as_mut() {
            #[cfg(test)]
            DB_READS.with(|n| n.set(n.get() + 1));
            match bucket::contains_id(c, &event.id).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => complete = false,
            }
        }
        events.push(event);
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
    Ok((events, complete))
}

/// Every event of `kind` in a bucket (its database merged with its side files), newest first,
/// kept or read (and then kept); `None` when it holds more than [`RARE_MAX`] of them or has no
/// database to key them by (the caller reads it the usual way).
async fn read_rare(
    pool: &Pool,
    dir: &Path,
    hour: &Planned,
    kind: TraceKind,
) -> Result<Option<Vec<TraceEvent>>, TraceError> {
    let db = bucket::db_path(dir, &hour.bucket);
    let Some((file, sealed)) = file_id(&db) else {
        return Ok(None);
    };
    let kept = (file, sealed, hour.side_files);
    if let Some(events) = pool.rare_get(&db, kept, kind) {
        #[cfg(test)]
        RARE_HITS.with(|n| n.set(n.get() + 1));
        return Ok(Some(events));
    }
    // Before anything is read: a commit reported from here on makes what we find unkeepable.
    let generation = pool.rare_generation();
    let all = TraceQuery {
        kind: Some(kind),
        ..TraceQuery::default()
    };
    let max = usize::try_from(RARE_MAX).unwrap_or(usize::MAX);
    let (events, complete) = read_hour(pool, dir, hour, &all, max + 1).await?;
    if events.len() > max {
        return Ok(None);
    }
    // What a failed database query left out is not kept: the next read tries again.
    if complete {
        pool.rare_put(generation, &db, kept, kind, &events);
    }
    Ok(Some(events))
}

/// The page from a bucket's database, on a pooled connection if there is one for this file
/// (else a new one). A connection that failed is closed, never pooled.
async fn read_db(
    pool: &Pool,
    path: &Path,
    file: FileId,
    sealed: bool,
    query: &TraceQuery,
    limit: usize,
) -> Result<(Vec<TraceEvent>, SqliteConnection), TraceError> {
    #[cfg(test)]
    DB_READS.with(|n| n.set(n.get() + 1));
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
