//! The per-agent index of hourly buckets: for each hour, events by kind (count, first and last
//! time, tokens, cost), whether the hour has JSONL side files and whether it is sealed. Reads use
//! it to skip hours that cannot answer and to stop once they have enough; totals use it instead
//! of reading events.
//!
//! It lives beside the buckets, `<traces>/<slug>/index.db`, in the host-only store: it moves with
//! the agent's folder (archive, restore, purge) and costs the host database nothing per event.
//! The host keeps each agent's index in memory once loaded; the file is what lets a restart
//! trust it without opening every bucket.
//!
//! A bucket and the index are two SQLite files, and a commit across them is not atomic in WAL
//! mode, so the index heals itself instead: before the writer first touches an hour it marks
//! that hour `writing` in the file (fsynced); while the hour is open the in-memory counts follow
//! every commit (before the writer acknowledges, so a reader never misses an acknowledged event);
//! when the writer lets the hour go, the counts are written with the sizes and times of the
//! hour's files and the mark is cleared. Loading trusts a row only if it is not `writing` and the
//! files still look as recorded; any other hour on disk (a crash mid-hour, a missing or damaged
//! index, files copied in by the migration) is counted again from its files, and rows whose
//! files are gone are dropped.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, Executor, Row, SqliteConnection};
use taos_proto::trace::{TraceEvent, TraceKind};

use super::bucket::{self, bucket_start};
use super::{TraceError, TraceQuery};

pub(super) const INDEX_FILE: &str = "index.db";
const KINDS: usize = TraceKind::ALL.len();

const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS hours (
    bucket TEXT PRIMARY KEY,
    writing INTEGER NOT NULL,
    exact INTEGER NOT NULL,
    side_files INTEGER NOT NULL,
    sealed INTEGER NOT NULL,
    files TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kinds (
    bucket TEXT NOT NULL,
    kind TEXT NOT NULL,
    events INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (bucket, kind)
) WITHOUT ROWID;
";

/// One kind's events in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct KindCount {
    pub events: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

impl KindCount {
    pub(super) fn add(&mut self, event: &TraceEvent) {
        let ms = event.created_at.timestamp_millis();
        if self.events == 0 {
            self.first_ms = ms;
            self.last_ms = ms;
        } else {
            self.first_ms = self.first_ms.min(ms);
            self.last_ms = self.last_ms.max(ms);
        }
        self.events += 1;
        // The same rules as the totals have always used: negative or missing counts as 0.
        self.tokens_in = self
            .tokens_in
            .saturating_add(event.tokens_in.unwrap_or(0).max(0));
        self.tokens_out = self
            .tokens_out
            .saturating_add(event.tokens_out.unwrap_or(0).max(0));
        self.cost_usd += event
            .cost_usd
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or(0.0);
    }

    /// Whether any of these events can fall in `[since_ms, until_ms]`.
    fn overlaps(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> bool {
        self.events > 0
            && since_ms.is_none_or(|s| self.last_ms >= s)
            && until_ms.is_none_or(|u| self.first_ms <= u)
    }
}

/// What the index knows about one hour of one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Hour {
    /// By position in [`TraceKind::ALL`].
    pub kinds: [KindCount; KINDS],
    /// The counts are exactly the hour's events. A write that may repeat ids already stored
    /// (a retried batch, an event diverted to JSONL) makes them an upper bound: still right for
    /// skipping, not for totals, until the hour is counted again at the next load.
    pub exact: bool,
    /// The hour has a `.jsonl` or `.late.jsonl` file that reads must merge.
    pub side_files: bool,
    pub sealed: bool,
}

impl Hour {
    pub(super) fn empty() -> Hour {
        Hour {
            exact: true,
            ..Hour::default()
        }
    }

    pub(super) fn add(&mut self, event: &TraceEvent) {
        self.kinds[kind_index(event.kind)].add(event);
    }

    pub(super) fn events(&self) -> u64 {
        self.kinds.iter().map(|k| k.events).sum()
    }

    /// An upper bound of the events in this hour that match `query`'s kind and time window
    /// (other filters are not indexed): the counts of the kinds whose first..last time meets
    /// the window.
    fn bound(&self, query: &TraceQuery) -> u64 {
        let since_ms = query.since.map(|s| s.timestamp_millis());
        let until_ms = query.until.map(|u| u.timestamp_millis());
        self.kinds
            .iter()
            .zip(TraceKind::ALL)
            .filter(|(count, kind)| {
                query.kind.is_none_or(|k| k == *kind) && count.overlaps(since_ms, until_ms)
            })
            .map(|(count, _)| count.events)
            .sum()
    }
}

pub(super) fn kind_index(kind: TraceKind) -> usize {
    TraceKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

/// Which `index.db` an in-memory index came from: device, inode and birth time (a deleted and
/// recreated folder can get the same inode back, not the same birth time).
type Identity = (u64, u64, Option<std::time::SystemTime>);

/// An agent's index as loaded into memory. `identity` names the `index.db` it was loaded from,
/// so a folder moved away (archive) or replaced (restore, purge, a rolled-back deploy) is
/// noticed and loaded again.
#[derive(Debug, Default)]
pub(super) struct AgentIndex {
    identity: Option<Identity>,
    pub hours: BTreeMap<String, Hour>,
}

/// One hour a read will look at, newest first, with whether it has side files and at most how
/// many matches it holds.
pub(super) struct Planned {
    pub bucket: String,
    pub side_files: bool,
    pub bound: u64,
}

impl AgentIndex {
    /// True if this is still the index of the folder at `dir`.
    fn is_current(&self, dir: &Path) -> bool {
        self.identity == identity(dir)
    }

    /// The hours that may hold events matching `query`, newest first.
    pub(super) fn plan(&self, query: &TraceQuery) -> Vec<Planned> {
        let from = query.since.map(bucket_bound);
        let to = query.until.map(bucket_bound);
        self.hours
            .iter()
            .rev()
            .filter(|(name, _)| {
                from.as_ref().is_none_or(|f| name.as_str() >= f.as_str())
                    && to.as_ref().is_none_or(|t| name.as_str() <= t.as_str())
            })
            .filter_map(|(name, hour)| {
                let bound = hour.bound(query);
                (bound > 0).then(|| Planned {
                    bucket: name.clone(),
                    side_files: hour.side_files,
                    bound,
                })
            })
            .collect()
    }
}

/// The name of the hour `t` falls in, for comparing with bucket names: a time outside the
/// years bucket names can spell (0000-9999) is brought to the nearest end first.
fn bucket_bound(t: DateTime<Utc>) -> String {
    let first = DateTime::<Utc>::from_timestamp(-62_167_219_200, 0).unwrap_or(t);
    let last = DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(t);
    bucket::bucket_name(t.clamp(first, last))
}

fn identity(dir: &Path) -> Option<Identity> {
    real_dir(dir).ok()?;
    std::fs::symlink_metadata(dir.join(INDEX_FILE))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// The index is only ever created, written or deleted inside a real agent folder, never
/// through a symlink in its place.
fn real_dir(dir: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(dir)?.is_dir() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a real directory", dir.display()),
        ))
    }
}

/// Makes sure `index` holds the current index of the agent folder `dir`, loading (and where
/// needed rebuilding) it if it was never loaded or the folder changed under it. An agent
/// without a folder has an empty index and nothing is created. True if it (re)loaded.
pub(super) async fn ensure_loaded(
    index: &mut Option<AgentIndex>,
    dir: &Path,
) -> Result<bool, TraceError> {
    if let Some(loaded) = index {
        if loaded.is_current(dir) {
            return Ok(false);
        }
    }
    *index = Some(load(dir).await?);
    Ok(true)
}

/// Deletes an index the writer could not keep its promise for (a `writing` mark that did not
/// reach the disk), so the next load counts every hour again.
pub(super) fn discard(dir: &Path) {
    if let Err(e) = remove_index(dir) {
        tracing::error!(dir = %dir.display(), "cannot delete a stale trace index: {e}");
    }
}

/// The sizes and modification times of an hour's files, as recorded with clean rows. SQLite's
/// `-shm` is left out: readers write to it.
/// `-shm` is left out (readers write to it), and of the `-wal` only the length counts (a reader
/// may leave an empty one behind).
fn fingerprint(dir: &Path, name: &str) -> String {
    let stat = |path: PathBuf| std::fs::symlink_metadata(path).ok();
    let mut parts = Vec::with_capacity(4);
    for path in [
        bucket::db_path(dir, name),
        bucket::jsonl_path(dir, name),
        bucket::late_path(dir, name),
    ] {
        parts.push(match stat(path) {
            Some(m) => format!(
                "{}:{}.{}:{:o}",
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.mode()
            ),
            None => "-".to_string(),
        });
    }
    let wal = stat(dir.join(format!("{name}.db-wal"))).map_or(0, |m| m.len());
    parts.push(wal.to_string());
    parts.join(",")
}

async fn open(dir: &Path) -> Result<SqliteConnection, TraceError> {
    real_dir(dir)?;
    // FULL sync: the `writing` mark must be on disk before the bucket write it guards.
    let mut conn = bucket::open_private_wal(&dir.join(INDEX_FILE), "-256").await?;
    if let Err(e) = conn.execute(SCHEMA).await {
        // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
        let _ = conn.close().await;
        return Err(e.into());
    }
    Ok(conn)
}

/// Rows as stored: `(writing, files, hour)` by bucket.
type Stored = BTreeMap<String, (bool, String, Hour)>;

async fn read_rows(conn: &mut SqliteConnection) -> Result<Stored, TraceError> {
    let mut rows = Stored::new();
    for row in sqlx::query("SELECT bucket, writing, exact, side_files, sealed, files FROM hours")
        .fetch_all(&mut *conn)
        .await?
    {
        let hour = Hour {
            exact: row.try_get::<i64, _>("exact")? != 0,
            side_files: row.try_get::<i64, _>("side_files")? != 0,
            sealed: row.try_get::<i64, _>("sealed")? != 0,
            ..Hour::default()
        };
        rows.insert(
            row.try_get("bucket")?,
            (
                row.try_get::<i64, _>("writing")? != 0,
                row.try_get("files")?,
                hour,
            ),
        );
    }
    for row in sqlx::query(
        "SELECT bucket, kind, events, first_ms, last_ms, tokens_in, tokens_out, cost_usd \
         FROM kinds",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let bucket: String = row.try_get("bucket")?;
        let kind: String = row.try_get("kind")?;
        let (Some((_, _, hour)), Some(kind)) = (rows.get_mut(&bucket), TraceKind::parse(&kind))
        else {
            continue;
        };
        hour.kinds[kind_index(kind)] = KindCount {
            events: u64::try_from(row.try_get::<i64, _>("events")?).unwrap_or(0),
            first_ms: row.try_get("first_ms")?,
            last_ms: row.try_get("last_ms")?,
            tokens_in: row.try_get("tokens_in")?,
            tokens_out: row.try_get("tokens_out")?,
            cost_usd: row.try_get("cost_usd")?,
        };
    }
    Ok(rows)
}

/// A change to the file: an hour to (re)write, marked `writing` or clean, or one to forget.
pub(super) enum Change<'a> {
    Writing(&'a str, &'a Hour),
    Clean(&'a str, &'a Hour),
    Gone(&'a str),
}

/// Writes `changes` to the agent's `index.db` in one fsynced transaction.
pub(super) async fn write(dir: &Path, changes: &[Change<'_>]) -> Result<(), TraceError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut conn = open(dir).await?;
    let result = write_with(&mut conn, dir, changes).await;
    // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
    let _ = conn.close().await;
    result
}

async fn write_with(
    conn: &mut SqliteConnection,
    dir: &Path,
    changes: &[Change<'_>],
) -> Result<(), TraceError> {
    let mut tx = conn.begin().await?;
    for change in changes {
        let (name, row) = match change {
            Change::Writing(name, hour) => (*name, Some((true, *hour))),
            Change::Clean(name, hour) => (*name, Some((false, *hour))),
            Change::Gone(name) => (*name, None),
        };
        sqlx::query("DELETE FROM kinds WHERE bucket = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let Some((writing, hour)) = row else {
            sqlx::query("DELETE FROM hours WHERE bucket = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            continue;
        };
        // A clean row records its files after the writer is done with them.
        let files = if writing {
            String::new()
        } else {
            fingerprint(dir, name)
        };
        sqlx::query(
            "INSERT OR REPLACE INTO hours (bucket, writing, exact, side_files, sealed, files) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(writing)
        .bind(hour.exact)
        .bind(hour.side_files)
        .bind(hour.sealed)
        .bind(files)
        .execute(&mut *tx)
        .await?;
        for (kind, count) in TraceKind::ALL.iter().zip(hour.kinds.iter()) {
            if count.events == 0 {
                continue;
            }
            sqlx::query(
                "INSERT INTO kinds (bucket, kind, events, first_ms, last_ms, tokens_in, \
                 tokens_out, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(kind.as_str())
            .bind(i64::try_from(count.events).unwrap_or(i64::MAX))
            .bind(count.first_ms)
            .bind(count.last_ms)
            .bind(count.tokens_in)
            .bind(count.tokens_out)
            .bind(count.cost_usd)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The hours with files in `dir`, from one listing (entries are not followed).
fn hours_on_disk(dir: &Path) -> io::Result<Vec<String>> {
    let Some(entries) = bucket::read_agent_dir(dir)? else {
        return Ok(Vec::new());
    };
    let mut hours = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        if let Some(bucket) = name.to_str().and_then(bucket::owner_of_file) {
            hours.insert(bucket.to_string());
        }
    }
    Ok(hours.into_iter().collect())
}

/// Loads the index of `dir`, counting again every hour it can't trust (see the module doc).
async fn load(dir: &Path) -> Result<AgentIndex, TraceError> {
    let on_disk = match hours_on_disk(dir) {
        Ok(hours) => hours,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            // A symlink in place of the folder: reads ignore it, and so does the index.
            tracing::warn!("trace folder ignored: {e}");
            return Ok(AgentIndex::default());
        }
        Err(e) => return Err(e.into()),
    };
    if !dir.is_dir() {
        return Ok(AgentIndex::default());
    }
    let mut conn = match open(dir).await {
        Ok(conn) => conn,
        Err(e) => {
            // A damaged index is only a cache of the buckets: start it again.
            tracing::warn!(dir = %dir.display(), "trace index unreadable, rebuilding it: {e}");
            remove_index(dir)?;
            open(dir).await?
        }
    };
    let stored = match read_rows(&mut conn).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "trace index unreadable, rebuilding it: {e}");
            // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
            let _ = conn.close().await;
            remove_index(dir)?;
            conn = open(dir).await?;
            Stored::new()
        }
    };
    let mut hours = BTreeMap::new();
    let mut recounted = Vec::new();
    for name in &on_disk {
        match stored.get(name) {
            Some((false, files, hour)) if hour.exact && *files == fingerprint(dir, name) => {
                hours.insert(name.clone(), hour.clone());
            }
            _ => {
                let hour = super::read::summarize(dir, name).await?;
                hours.insert(name.clone(), hour);
                recounted.push(name.clone());
            }
        }
    }
    let gone: Vec<&String> = stored.keys().filter(|n| !hours.contains_key(*n)).collect();
    if !recounted.is_empty() || !gone.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            recounted = recounted.len(),
            dropped = gone.len(),
            "trace index brought up to date with the buckets"
        );
    }
    let mut changes: Vec<Change<'_>> = recounted
        .iter()
        .map(|name| Change::Clean(name, &hours[name]))
        .collect();
    changes.extend(gone.iter().map(|name| Change::Gone(name)));
    let result = if changes.is_empty() {
        Ok(())
    } else {
        write_with(&mut conn, dir, &changes).await
    };
    // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
    let _ = conn.close().await;
    result?;
    Ok(AgentIndex {
        identity: identity(dir),
        hours,
    })
}

fn remove_index(dir: &Path) -> io::Result<()> {
    real_dir(dir)?;
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{INDEX_FILE}{suffix}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Totals of the hours fully inside `[since, until]` whose counts are exact, and the ranges
/// (clipped to `[since, until]`) that must be read event by event instead.
#[derive(Default)]
pub(super) struct Covered {
    pub hours: Vec<(DateTime<Utc>, Hour)>,
    pub read: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl AgentIndex {
    pub(super) fn cover(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Covered {
        let mut covered = Covered {
            hours: Vec::new(),
            read: Vec::new(),
        };
        let from = bucket_bound(since);
        let to = bucket_bound(until);
        if from > to {
            return covered;
        }
        for (name, hour) in self.hours.range(from..=to) {
            let Some(start) = bucket_start(name) else {
                continue;
            };
            let last = start + TimeDelta::hours(1) - TimeDelta::milliseconds(1);
            if hour.exact && start >= since && last <= until {
                covered.hours.push((start, hour.clone()));
            } else if hour.events() > 0 || hour.side_files || !hour.exact {
                covered.read.push((start.max(since), last.min(until)));
            }
        }
        covered
    }
}
