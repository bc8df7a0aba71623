//! One hour of one agent: file names, opening the SQLite file, inserting, querying, sealing.
//!
//! SQLite opens files by path and follows symlinks while resolving it (it only adds `O_NOFOLLOW`
//! after resolving), and sqlx 0.8 gives no way to pass `SQLITE_OPEN_NOFOLLOW`. So before SQLite
//! sees a bucket path, we open it ourselves with `O_NOFOLLOW | O_NONBLOCK` and check with `fstat`
//! that it is a plain file ([`fsutil::open_plain`]); once per open, never per event. The folder
//! is the host's own (no container sees it), so nothing can swap the file in between; the check
//! is the second line. Every connection runs with `trusted_schema=OFF`, so a schema we did not
//! write can't make SQLite call functions with side effects.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, Row, SqliteConnection};
use taos_proto::trace::{TraceEvent, TraceKind};

use super::index::KindCount;
use super::{TraceError, TraceQuery, SEAL_AFTER_HOURS};
use crate::fsutil;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const SEALED_MODE: u32 = 0o400;

const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS trace_events (
    id TEXT PRIMARY KEY,
    v INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL,
    trace_id TEXT,
    parent_id TEXT,
    agent_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel_id TEXT,
    thread_id TEXT,
    backend_name TEXT,
    model TEXT,
    duration_ms INTEGER,
    tokens_in INTEGER,
    tokens_out INTEGER,
    cost_usd REAL,
    error TEXT,
    payload TEXT NOT NULL DEFAULT '{}',
    agent_created_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS trace_events_created ON trace_events (created_at_ms);
CREATE INDEX IF NOT EXISTS trace_events_trace ON trace_events (trace_id);
CREATE INDEX IF NOT EXISTS trace_events_kind ON trace_events (kind, created_at_ms);
";

const COLUMNS: &str = "id, v, created_at_ms, trace_id, parent_id, agent_name, kind, channel_id, \
     thread_id, backend_name, model, duration_ms, tokens_in, tokens_out, cost_usd, error, payload, \
     agent_created_at_ms";
/// Added after the first buckets were written; older buckets get it when opened for writing, and
/// reads of sealed ones (which are never altered) treat it as absent.
const ADD_AGENT_TIME: &str = "ALTER TABLE trace_events ADD COLUMN agent_created_at_ms INTEGER";

/// The bucket an event at `t` belongs to, e.g. `2026-11-27T10`.
pub fn bucket_name(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H").to_string()
}

/// Start of a bucket's hour, or `None` if `name` is not exactly a bucket name.
pub(super) fn bucket_start(name: &str) -> Option<DateTime<Utc>> {
    let start = NaiveDateTime::parse_from_str(&format!("{name}:00"), "%Y-%m-%dT%H:%M")
        .ok()?
        .and_utc();
    (bucket_name(start) == name).then_some(start)
}

pub(super) fn db_path(dir: &Path, bucket: &str) -> PathBuf {
    dir.join(format!("{bucket}.db"))
}

pub(super) fn jsonl_path(dir: &Path, bucket: &str) -> PathBuf {
    dir.join(format!("{bucket}.jsonl"))
}

pub(super) fn late_path(dir: &Path, bucket: &str) -> PathBuf {
    dir.join(format!("{bucket}.late.jsonl"))
}

/// The bucket a file in an agent directory holds data for (`.db`, `.jsonl` or `.late.jsonl`);
/// SQLite's `-wal`/`-shm` files and anything else are not buckets.
pub(super) fn bucket_of_file(file_name: &str) -> Option<(&str, bool)> {
    let (bucket, is_db) = if let Some(b) = file_name.strip_suffix(".late.jsonl") {
        (b, false)
    } else if let Some(b) = file_name.strip_suffix(".jsonl") {
        (b, false)
    } else if let Some(b) = file_name.strip_suffix(".db") {
        (b, true)
    } else {
        return None;
    };
    bucket_start(bucket).map(|_| (bucket, is_db))
}

/// Every file that can belong to a bucket: its database with SQLite's two companions, and the
/// two JSONL side files.
pub(super) fn files_of(dir: &Path, bucket: &str) -> [PathBuf; 5] {
    [
        db_path(dir, bucket),
        dir.join(format!("{bucket}.db-wal")),
        dir.join(format!("{bucket}.db-shm")),
        jsonl_path(dir, bucket),
        late_path(dir, bucket),
    ]
}

/// The bucket any of [`files_of`] belongs to, including SQLite's `-wal`/`-shm` files.
pub(super) fn owner_of_file(file_name: &str) -> Option<&str> {
    let base = file_name
        .strip_suffix("-wal")
        .or_else(|| file_name.strip_suffix("-shm"))
        .filter(|b| b.ends_with(".db"))
        .unwrap_or(file_name);
    bucket_of_file(base).map(|(bucket, _)| bucket)
}

/// Bytes on disk of a bucket's plain files (what the per-agent quota counts).
pub(super) fn bytes_of(dir: &Path, bucket: &str) -> u64 {
    files_of(dir, bucket)
        .iter()
        .filter_map(|path| fs::symlink_metadata(path).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// Lists an agent folder, which must be a real directory (`None` if there is none yet): a
/// symlink in its place is refused, never listed through.
pub(super) fn read_agent_dir(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => fs::read_dir(dir).map(Some),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a real directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes per bucket in `dir`, from one listing (entries are not followed).
pub(super) fn usage(dir: &Path) -> io::Result<std::collections::BTreeMap<String, u64>> {
    let mut usage = std::collections::BTreeMap::new();
    let Some(entries) = read_agent_dir(dir)? else {
        return Ok(usage);
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some(bucket) = name.to_str().and_then(owner_of_file) else {
            continue;
        };
        *usage.entry(bucket.to_string()).or_insert(0) += entry.metadata()?.len();
    }
    Ok(usage)
}

/// Deletes every file of a bucket (unlinking never follows a link). The caller holds no
/// connection to it.
pub(super) fn delete(dir: &Path, bucket: &str) -> io::Result<()> {
    for path in files_of(dir, bucket) {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    fsutil::sync_dir(dir)
}

/// True once a bucket's hour is past the write window: it is sealed or about to be, and the
/// first to go when an agent is over its trace quota.
pub(super) fn is_closed(bucket: &str, now: DateTime<Utc>) -> bool {
    bucket_start(bucket).is_some_and(|start| start + TimeDelta::hours(1 + SEAL_AFTER_HOURS) < now)
}

/// True if `path` is a regular file with no write bit set. Root ignores permission bits, so a
/// failing write cannot be the test.
pub(super) fn is_sealed(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o222 == 0,
        Err(_) => false,
    }
}

/// Unsealed bucket databases in `dir` whose hour ended more than [`SEAL_AFTER_HOURS`] before `now`.
pub(super) fn sealable(dir: &Path, now: DateTime<Utc>) -> io::Result<Vec<String>> {
    let Some(entries) = read_agent_dir(dir)? else {
        return Ok(Vec::new());
    };
    let mut buckets = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some((bucket, true)) = name.to_str().and_then(bucket_of_file) else {
            continue;
        };
        let Some(start) = bucket_start(bucket) else {
            continue;
        };
        let ended = start + TimeDelta::hours(1);
        if ended + TimeDelta::hours(SEAL_AFTER_HOURS) < now
            && entry.file_type()?.is_file()
            && !is_sealed(&entry.path())
        {
            buckets.push(bucket.to_string());
        }
    }
    buckets.sort();
    Ok(buckets)
}

/// Opens a bucket for writing, creating it (0600) and its table if needed.
pub(super) async fn open_for_write(
    dir: &Path,
    bucket: &str,
) -> Result<SqliteConnection, TraceError> {
    fsutil::ensure_private_subdir(dir)?;
    // Writers only append: a small page cache (512 KiB instead of 2 MiB) keeps two open
    // buckets per agent cheap on a Pi.
    let mut conn = open_private_wal(&db_path(dir, bucket), "-512").await?;
    // Plain `execute` of a &str runs every statement in it (and, unlike `raw_sql`, keeps the
    // writer's future `Send`).
    if let Err(e) = prepare_schema(&mut conn).await {
        // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
        let _ = conn.close().await;
        return Err(e);
    }
    Ok(conn)
}

/// Opens (creating it 0600 first, so it is private from the first byte; SQLite gives -wal and
/// -shm the same mode) a plain-file SQLite database in WAL mode for writing: FULL sync, so a
/// commit acknowledged is on disk; schemas untrusted; `cache_size` as SQLite's pragma takes it.
pub(super) async fn open_private_wal(
    path: &Path,
    cache_size: &str,
) -> Result<SqliteConnection, TraceError> {
    fsutil::touch_private(path)?;
    fsutil::open_plain(path)?;
    Ok(SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .pragma("trusted_schema", "OFF")
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .pragma("cache_size", cache_size.to_string())
        .connect()
        .await?)
}

async fn prepare_schema(conn: &mut SqliteConnection) -> Result<(), TraceError> {
    conn.execute(SCHEMA).await?;
    let has_agent_time: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM pragma_table_info('trace_events') WHERE name = 'agent_created_at_ms'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if has_agent_time.is_none() {
        conn.execute(ADD_AGENT_TIME).await?;
    }
    Ok(())
}

/// Opens a bucket for reading. Sealed files are opened immutable so SQLite creates no -wal/-shm
/// next to a file that must not change.
pub(super) async fn open_for_read(
    path: &Path,
    sealed: bool,
) -> Result<SqliteConnection, TraceError> {
    fsutil::open_plain(path)?;
    let conn = SqliteConnectOptions::new()
        .filename(path)
        .pragma("trusted_schema", "OFF")
        .read_only(true)
        .create_if_missing(false)
        .immutable(sealed)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await?;
    Ok(conn)
}

/// Rows per INSERT statement. Each statement is a round trip to sqlx's SQLite worker thread, which
/// costs more than the row itself; 32 rows x 18 columns stays far below SQLite's variable limit.
const ROWS_PER_INSERT: usize = 32;

fn insert_sql(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; rows].join(", ");
    format!("INSERT OR IGNORE INTO trace_events ({COLUMNS}) VALUES {values}")
}

/// Inserts `events` in one transaction; ids already present are left alone. True if every
/// event was new (no id repeated one already stored or earlier in `events`).
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    events: &[TraceEvent],
) -> Result<bool, TraceError> {
    let mut all_new = true;
    // At most two distinct statements per call (full chunks and the remainder), both cached.
    let full_sql = insert_sql(ROWS_PER_INSERT);
    let mut tx = conn.begin().await?;
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let partial_sql;
        let sql = if chunk.len() == ROWS_PER_INSERT {
            &full_sql
        } else {
            partial_sql = insert_sql(chunk.len());
            &partial_sql
        };
        let mut query = sqlx::query(sql);
        for event in chunk {
            query = query
                .bind(&event.id)
                .bind(i64::from(event.v))
                .bind(event.created_at.timestamp_millis())
                .bind(&event.trace_id)
                .bind(&event.parent_id)
                .bind(&event.agent_name)
                .bind(event.kind.as_str())
                .bind(&event.channel_id)
                .bind(&event.thread_id)
                .bind(&event.backend_name)
                .bind(&event.model)
                .bind(event.duration_ms)
                .bind(event.tokens_in)
                .bind(event.tokens_out)
                .bind(event.cost_usd)
                .bind(&event.error)
                .bind(event.payload.to_string())
                .bind(event.agent_created_at.map(|t| t.timestamp_millis()));
        }
        let inserted = query.execute(&mut *tx).await?.rows_affected();
        all_new &= usize::try_from(inserted).is_ok_and(|n| n == chunk.len());
    }
    tx.commit().await?;
    Ok(all_new)
}

/// Events matching `query`, newest first, at most `limit`.
pub(super) async fn query(
    conn: &mut SqliteConnection,
    query: &TraceQuery,
    limit: usize,
) -> Result<Vec<TraceEvent>, TraceError> {
    // `*` rather than COLUMNS: a sealed bucket from before `agent_created_at_ms` lacks it.
    let mut sql = "SELECT * FROM trace_events WHERE 1 = 1".to_string();
    if query.kind.is_some() {
        sql.push_str(" AND kind = ?");
    }
    if query.channel_id.is_some() {
        sql.push_str(" AND channel_id = ?");
    }
    if query.trace_id.is_some() {
        sql.push_str(" AND trace_id = ?");
    }
    if query.since.is_some() {
        sql.push_str(" AND created_at_ms >= ?");
    }
    if query.until.is_some() {
        sql.push_str(" AND created_at_ms <= ?");
    }
    sql.push_str(" ORDER BY created_at_ms DESC, id DESC LIMIT ?");
    let mut q = sqlx::query(&sql);
    if let Some(kind) = query.kind {
        q = q.bind(kind.as_str());
    }
    if let Some(channel_id) = &query.channel_id {
        q = q.bind(channel_id);
    }
    if let Some(trace_id) = &query.trace_id {
        q = q.bind(trace_id);
    }
    if let Some(since) = query.since {
        q = q.bind(since_ms(since));
    }
    if let Some(until) = query.until {
        // timestamp_millis rounds down, which is right for an inclusive upper bound.
        q = q.bind(until.timestamp_millis());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = q.bind(limit).fetch_all(&mut *conn).await?;
    rows.iter().map(event_from_row).collect()
}

/// Stored times are whole milliseconds, so an inclusive lower bound rounds up.
fn since_ms(since: DateTime<Utc>) -> i64 {
    let ms = since.timestamp_millis();
    if DateTime::from_timestamp_millis(ms) == Some(since) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// Per kind: count, first and last time, tokens and cost, by the totals' rules (negative or
/// missing is 0). Sums are taken as floats (`TOTAL`), so an agent's absurd token counts saturate
/// instead of failing the count. Rows of a kind we don't know are left out, as reads refuse them.
pub(super) async fn count_by_kind(
    conn: &mut SqliteConnection,
) -> Result<Vec<(TraceKind, KindCount)>, TraceError> {
    let rows = sqlx::query(
        "SELECT kind, COUNT(*) AS events, MIN(created_at_ms) AS first_ms, \
         MAX(created_at_ms) AS last_ms, TOTAL(MAX(COALESCE(tokens_in, 0), 0)) AS tokens_in, \
         TOTAL(MAX(COALESCE(tokens_out, 0), 0)) AS tokens_out, \
         TOTAL(CASE WHEN cost_usd > 0 THEN cost_usd ELSE 0 END) AS cost_usd \
         FROM trace_events GROUP BY kind",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = Vec::new();
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = TraceKind::parse(&kind) else {
            continue;
        };
        // `as` saturates: a float beyond i64 becomes i64::MAX.
        counts.push((
            kind,
            KindCount {
                events: u64::try_from(row.try_get::<i64, _>("events")?).unwrap_or(0),
                first_ms: row.try_get("first_ms")?,
                last_ms: row.try_get("last_ms")?,
                tokens_in: row.try_get::<f64, _>("tokens_in")? as i64,
                tokens_out: row.try_get::<f64, _>("tokens_out")? as i64,
                cost_usd: row.try_get("cost_usd")?,
            },
        ));
    }
    Ok(counts)
}

pub(super) async fn contains_id(conn: &mut SqliteConnection, id: &str) -> Result<bool, TraceError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM trace_events WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(found.is_some())
}

fn event_from_row(row: &SqliteRow) -> Result<TraceEvent, TraceError> {
    let kind_text: String = row.try_get("kind")?;
    let kind = TraceKind::parse(&kind_text).ok_or_else(|| {
        TraceError::BadInput(format!("stored event has unknown kind {kind_text:?}"))
    })?;
    let created_at_ms: i64 = row.try_get("created_at_ms")?;
    let created_at = DateTime::from_timestamp_millis(created_at_ms)
        .ok_or_else(|| TraceError::BadInput("stored event has an invalid time".into()))?;
    let payload_text: String = row.try_get("payload")?;
    let payload = serde_json::from_str(&payload_text)
        .map_err(|e| TraceError::BadInput(format!("stored event has an invalid payload: {e}")))?;
    let v: i64 = row.try_get("v")?;
    let agent_created_at = row
        .try_get::<Option<i64>, _>("agent_created_at_ms")
        .ok()
        .flatten()
        .and_then(DateTime::from_timestamp_millis);
    Ok(TraceEvent {
        v: u32::try_from(v).unwrap_or(0),
        id: row.try_get("id")?,
        trace_id: row.try_get("trace_id")?,
        parent_id: row.try_get("parent_id")?,
        created_at,
        agent_name: row.try_get("agent_name")?,
        kind,
        channel_id: row.try_get("channel_id")?,
        thread_id: row.try_get("thread_id")?,
        backend_name: row.try_get("backend_name")?,
        model: row.try_get("model")?,
        duration_ms: row.try_get("duration_ms")?,
        tokens_in: row.try_get("tokens_in")?,
        tokens_out: row.try_get("tokens_out")?,
        cost_usd: row.try_get("cost_usd")?,
        error: row.try_get("error")?,
        payload,
        agent_created_at,
    })
}

/// Seals one bucket: everything moved from the WAL into the main file, rollback journal mode (so
/// readers need no -wal/-shm), then the database and its `.jsonl` made 0400. The caller must hold
/// no connection to it. On any failure nothing is chmod-ed, so the next attempt starts over.
pub(super) async fn seal(dir: &Path, bucket: &str) -> Result<(), TraceError> {
    let path = db_path(dir, bucket);
    fsutil::open_plain(&path)?;
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .pragma("trusted_schema", "OFF")
        .create_if_missing(false)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .connect()
        .await?;
    let result = finish_journal(&mut conn).await;
    let closed = conn.close().await;
    result?;
    closed?;

    // Through the checked file descriptor (fsync, fchmod), never by path again.
    let db = fsutil::open_plain(&path)?;
    db.sync_all()?;
    db.set_permissions(fs::Permissions::from_mode(SEALED_MODE))?;
    match fsutil::open_plain(&jsonl_path(dir, bucket)) {
        Ok(jsonl) => jsonl.set_permissions(fs::Permissions::from_mode(SEALED_MODE))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    fsutil::sync_dir(dir)?;
    Ok(())
}

async fn finish_journal(conn: &mut SqliteConnection) -> Result<(), TraceError> {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut *conn)
        .await?;
    if busy != 0 {
        return Err(
            io::Error::new(io::ErrorKind::WouldBlock, "checkpoint blocked by a reader").into(),
        );
    }
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode=DELETE")
        .fetch_one(&mut *conn)
        .await?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("journal mode is still {mode}"),
        )
        .into());
    }
    Ok(())
}
