//! The per-agent writer task: the only code that writes an agent's trace files.
//!
//! It takes everything queued (up to a cap), writes it with one transaction per bucket, and only
//! then answers each request. Under load many requests share one fsync; an idle agent costs a
//! parked task and at most [`OPEN_BUCKETS`] open files, and the task retires after
//! [`IDLE_RETIRE`] without work. Sealing runs here too, so it never races a write to the same file.
//!
//! So does the quota: the writer knows the agent's bytes per bucket (one listing when it starts,
//! then a few `lstat`s of the buckets each round touched), deletes the oldest closed hours when
//! the agent is over quota, and refuses a round when nothing closed is left to delete.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{Connection, SqliteConnection};
use taos_proto::trace::TraceEvent;
use tokio::sync::{mpsc, oneshot};

use super::bucket::{self, bucket_name};
use super::index::{self, Change, Hour};
use super::{jsonl, lock, Inner, QuotaNotice, SharedIndex, StoreLimits, TraceError};

/// Queued requests per agent before `append` waits (backpressure).
const QUEUE: usize = 1024;
/// Most events committed in one round; bounds how long the first request in a round waits.
const MAX_ROUND_EVENTS: usize = 5000;
/// Bucket databases kept open between rounds (normally this hour and the previous one).
const OPEN_BUCKETS: usize = 2;
/// After SQLite refused a bucket, how long its writes go straight to JSONL before trying again.
const RETRY_BROKEN: Duration = Duration::from_secs(30);
const IDLE_RETIRE: Duration = Duration::from_secs(600);
const SEAL_CHECK_EVERY: Duration = Duration::from_secs(600);
/// Retention deletes down to this share of the quota, so it runs once per tenth of the quota
/// written rather than on every round at the limit.
const RETAIN_PERCENT: u64 = 90;

pub(super) enum Command {
    Append {
        events: Vec<TraceEvent>,
        reply: oneshot::Sender<Result<(), TraceError>>,
    },
    Seal {
        now: DateTime<Utc>,
        reply: oneshot::Sender<usize>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

struct AppendRequest {
    events: Vec<TraceEvent>,
    reply: oneshot::Sender<Result<(), TraceError>>,
}

enum Bucket {
    Open(SqliteConnection),
    /// SQLite refused this bucket at this instant.
    Broken(Instant),
}

struct Writer {
    store: Weak<Inner>,
    slug: String,
    dir: PathBuf,
    buckets: BTreeMap<String, Bucket>,
    last_seal_check: Option<Instant>,
    limits: StoreLimits,
    /// Bytes per bucket, kept only under a quota; `None` until the first listing.
    usage: Option<BTreeMap<String, u64>>,
    /// The agent is over quota with nothing left to delete (reported once per episode).
    full: bool,
    /// The agent's hour index, updated after every commit and before the acknowledgement.
    index: SharedIndex,
    /// Hours marked `writing` in the index file this session; cleared once their files are
    /// closed and their counts written (see `index`).
    touched: BTreeSet<String>,
}

/// Where `write_bucket` put a bucket's events.
enum Wrote {
    /// Into the database; `all_new` if no id was already there.
    Db { all_new: bool },
    /// Into a JSONL side file.
    Side,
}

pub(super) fn spawn(
    store: Weak<Inner>,
    slug: String,
    dir: PathBuf,
    limits: StoreLimits,
    index: SharedIndex,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        store,
        slug,
        dir,
        buckets: BTreeMap::new(),
        last_seal_check: None,
        limits,
        usage: None,
        full: false,
        index,
        touched: BTreeSet::new(),
    };
    tokio::spawn(writer.run(rx));
    tx
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let first = match tokio::time::timeout(IDLE_RETIRE, rx.recv()).await {
                Ok(Some(command)) => command,
                // Every handle to the store is gone.
                Ok(None) => break,
                Err(_) => {
                    self.retire(&mut rx);
                    break;
                }
            };
            let mut round = vec![first];
            let mut events = round_size(&round[0]);
            while events < MAX_ROUND_EVENTS {
                match rx.try_recv() {
                    Ok(command) => {
                        events += round_size(&command);
                        round.push(command);
                    }
                    Err(_) => break,
                }
            }
            if let Some(reply) = self.handle(round).await {
                rx.close();
                self.finish(&mut rx).await;
                // The asker may have given up (timed out or gone away); nobody is left to tell.
                let _ = reply.send(());
                return;
            }
            self.close_extra_buckets().await;
            if self
                .last_seal_check
                .is_none_or(|t| t.elapsed() >= SEAL_CHECK_EVERY)
            {
                self.seal_old(Utc::now()).await;
            }
        }
        self.finish(&mut rx).await;
    }

    /// Leaves the store's writer map, so the next append starts a fresh writer, and stops taking
    /// commands. Anything sent before the close is still handled by `finish`.
    fn retire(&mut self, rx: &mut mpsc::Receiver<Command>) {
        rx.close();
        let Some(store) = self.store.upgrade() else {
            return;
        };
        let mut writers = lock(&store.writers);
        // Only our own (now closed) sender is removed, never a successor's.
        if writers.get(&self.slug).is_some_and(|tx| tx.is_closed()) {
            writers.remove(&self.slug);
        }
    }

    /// Handles what is left in a closed channel, then closes every bucket.
    async fn finish(&mut self, rx: &mut mpsc::Receiver<Command>) {
        let mut rest = Vec::new();
        while let Ok(command) = rx.try_recv() {
            rest.push(command);
        }
        let shutdown = self.handle(rest).await;
        self.close_buckets(0).await;
        if let Some(reply) = shutdown {
            // The asker may have given up (timed out or gone away); nobody is left to tell.
            let _ = reply.send(());
        }
    }

    /// Runs a round in order; consecutive appends share their commits. Returns the shutdown reply
    /// if the round asked to stop.
    async fn handle(&mut self, round: Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut appends = Vec::new();
        let mut shutdown = None;
        for command in round {
            match command {
                Command::Append { events, reply } => appends.push(AppendRequest { events, reply }),
                Command::Seal { now, reply } => {
                    self.append_all(std::mem::take(&mut appends)).await;
                    let sealed = self.seal_old(now).await;
                    // The asker may have given up (timed out or gone away); nobody is left to tell.
                    let _ = reply.send(sealed);
                }
                Command::Shutdown { reply } => shutdown = Some(reply),
            }
        }
        self.append_all(appends).await;
        shutdown
    }

    async fn append_all(&mut self, requests: Vec<AppendRequest>) {
        if requests.is_empty() {
            return;
        }
        // The quota is checked before anything is written.
        if let Err(quota_bytes) = self.make_room(Utc::now()).await {
            for request in requests {
                // The asker may have given up (timed out or gone away); nobody is left to tell.
                let _ = request
                    .reply
                    .send(Err(TraceError::QuotaFull { quota_bytes }));
            }
            return;
        }
        // bucket -> (indexes of the requests with events in it, those events)
        let mut by_bucket: BTreeMap<String, (Vec<usize>, Vec<TraceEvent>)> = BTreeMap::new();
        let mut replies = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            for event in request.events {
                let (owners, events) = by_bucket.entry(bucket_name(event.created_at)).or_default();
                if owners.last() != Some(&index) {
                    owners.push(index);
                }
                events.push(event);
            }
            replies.push((request.reply, None::<io::Error>));
        }
        for (name, (owners, events)) in &by_bucket {
            self.mark_writing(name).await;
            let wrote = self.write_bucket(name, events).await;
            if let Err(e) = &wrote {
                for &owner in owners {
                    replies[owner].1 = Some(io::Error::new(e.kind(), e.to_string()));
                }
            }
            // Before anyone is answered, so a read after an acknowledgement finds the events.
            self.count(name, events, wrote.ok()).await;
            self.recount(name);
        }
        for (reply, failure) in replies {
            // The asker may have given up (timed out or gone away); nobody is left to tell.
            let _ = reply.send(match failure {
                None => Ok(()),
                Some(e) => Err(TraceError::Io(e)),
            });
        }
        // Hours written only through side files have no open database to wait for.
        let idle: Vec<String> = self
            .touched
            .iter()
            .filter(|name| !matches!(self.buckets.get(*name), Some(Bucket::Open(_))))
            .cloned()
            .collect();
        self.flush(idle).await;
    }

    /// Marks an hour `writing` in the index file before its first write this session, so a crash
    /// before its counts are written makes the next load count it again.
    async fn mark_writing(&mut self, name: &str) {
        if self.touched.contains(name) {
            return;
        }
        let hour = {
            let mut index = self.index.lock().await;
            if let Err(e) = fsutil_dir(&self.dir) {
                tracing::warn!(slug = self.slug, "cannot make the trace folder: {e}");
            }
            if let Err(e) = index::ensure_loaded(&mut index, &self.dir).await {
                tracing::warn!(slug = self.slug, "cannot load the trace index: {e}");
            }
            index
                .as_ref()
                .and_then(|i| i.hours.get(name).cloned())
                .unwrap_or_else(Hour::empty)
        };
        if let Err(e) = index::write(&self.dir, &[Change::Writing(name, &hour)]).await {
            // Without the mark the file could be trusted after a crash: drop it, so the next
            // load counts everything again.
            tracing::warn!(
                slug = self.slug,
                "cannot mark a trace hour in the index, discarding the index: {e}"
            );
            index::discard(&self.dir);
        }
        self.touched.insert(name.to_string());
    }

    /// Adds what a write stored to the in-memory index. `None`: the write failed part way, so
    /// the counts become an upper bound (right for skipping, and totals read the hour instead).
    async fn count(&mut self, name: &str, events: &[TraceEvent], wrote: Option<Wrote>) {
        let mut index = self.index.lock().await;
        match index::ensure_loaded(&mut index, &self.dir).await {
            // Loaded just now: the write is already counted from the files.
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(slug = self.slug, "cannot load the trace index: {e}");
                return;
            }
        }
        let Some(index) = index.as_mut() else {
            return;
        };
        let hour = index
            .hours
            .entry(name.to_string())
            .or_insert_with(Hour::empty);
        for event in events {
            hour.add(event);
        }
        match wrote {
            Some(Wrote::Db { all_new: true }) => {}
            Some(Wrote::Db { all_new: false }) => hour.exact = false,
            Some(Wrote::Side) | None => {
                hour.exact = false;
                hour.side_files = true;
            }
        }
    }

    /// Writes the counts of `names` to the index file as clean rows (their files are closed),
    /// or forgets those that have no files any more.
    async fn flush(&mut self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let hours: Vec<(String, Option<Hour>)> = {
            let index = self.index.lock().await;
            let Some(index) = index.as_ref() else {
                // Never loaded (it failed): rows left `writing` are counted again at the next
                // load, and nothing here can say better.
                for name in names {
                    self.touched.remove(&name);
                }
                return;
            };
            names
                .iter()
                .map(|name| (name.clone(), index.hours.get(name).cloned()))
                .collect()
        };
        let changes: Vec<Change<'_>> = hours
            .iter()
            .map(|(name, hour)| match hour {
                Some(hour) => Change::Clean(name, hour),
                None => Change::Gone(name),
            })
            .collect();
        if let Err(e) = index::write(&self.dir, &changes).await {
            // The rows stay `writing`: the next load counts these hours again. Slower, not wrong.
            tracing::warn!(slug = self.slug, "cannot update the trace index: {e}");
        }
        for name in names {
            self.touched.remove(&name);
        }
    }

    /// Closes the store's pooled read connections to an hour's database.
    fn evict_readers(&self, name: &str) {
        if let Some(store) = self.store.upgrade() {
            store.readers.evict_file(&bucket::db_path(&self.dir, name));
        }
    }

    /// Forgets a deleted hour in memory and in the file.
    async fn forget(&mut self, name: &str) {
        if let Some(index) = self.index.lock().await.as_mut() {
            index.hours.remove(name);
        }
        self.flush(vec![name.to_string()]).await;
    }

    /// Makes `events` durable somewhere in bucket `name`: its database, else its `.jsonl`; or its
    /// `.late.jsonl` if it is sealed. Fails only if none of that worked.
    async fn write_bucket(&mut self, name: &str, events: &[TraceEvent]) -> io::Result<Wrote> {
        let db = bucket::db_path(&self.dir, name);
        let side = if !self.buckets.contains_key(name) && bucket::is_sealed(&db) {
            bucket::late_path(&self.dir, name)
        } else {
            match self.write_db(name, events).await {
                Ok(all_new) => return Ok(Wrote::Db { all_new }),
                Err(e) => {
                    tracing::warn!(
                        slug = self.slug,
                        bucket = name,
                        count = events.len(),
                        "trace database refused events, writing them to JSONL: {e}"
                    );
                    bucket::jsonl_path(&self.dir, name)
                }
            }
        };
        let owned = events.to_vec();
        let path = side.clone();
        let written = tokio::task::spawn_blocking(move || jsonl::append(&path, &owned))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        // Appended or not, what readers kept of this hour may be out of date now.
        if let Some(store) = self.store.upgrade() {
            store.readers.changed(&db);
        }
        if let Err(e) = &written {
            tracing::error!(
                slug = self.slug,
                path = %side.display(),
                count = events.len(),
                "trace events lost: {e}"
            );
        }
        written.map(|()| Wrote::Side)
    }

    /// True if every event was new to the database.
    async fn write_db(&mut self, name: &str, events: &[TraceEvent]) -> Result<bool, TraceError> {
        let conn = match self.buckets.remove(name) {
            Some(Bucket::Open(conn)) => conn,
            Some(Bucket::Broken(at)) if at.elapsed() < RETRY_BROKEN => {
                self.buckets.insert(name.to_string(), Bucket::Broken(at));
                return Err(io::Error::other("bucket database failed recently").into());
            }
            Some(Bucket::Broken(_)) | None => match bucket::open_for_write(&self.dir, name).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.buckets
                        .insert(name.to_string(), Bucket::Broken(Instant::now()));
                    return Err(e);
                }
            },
        };
        let mut conn = conn;
        let inserted = bucket::insert(&mut conn, events).await;
        // Whether or not it committed, what readers kept of this hour may be out of date now.
        if let Some(store) = self.store.upgrade() {
            store.readers.changed(&bucket::db_path(&self.dir, name));
        }
        match inserted {
            Ok(all_new) => {
                // A crash test stops here: the events are in the bucket, the index not told.
                if let Err(e) = crate::faults::check("trace-index", "committed").await {
                    tracing::warn!("{e}");
                }
                self.buckets.insert(name.to_string(), Bucket::Open(conn));
                Ok(all_new)
            }
            Err(e) => {
                // The connection may be in any state now; drop it and reopen after a pause.
                let _ = conn.close().await;
                self.buckets
                    .insert(name.to_string(), Bucket::Broken(Instant::now()));
                Err(e)
            }
        }
    }

    /// Keeps the newest [`OPEN_BUCKETS`] databases open and forgets failures that are old enough
    /// to retry.
    async fn close_extra_buckets(&mut self) {
        self.buckets
            .retain(|_, b| !matches!(b, Bucket::Broken(at) if at.elapsed() >= RETRY_BROKEN));
        self.close_buckets(OPEN_BUCKETS).await;
    }

    /// Closes all but the newest `keep` open databases.
    async fn close_buckets(&mut self, keep: usize) {
        let open: Vec<String> = self
            .buckets
            .iter()
            .filter(|(_, b)| matches!(b, Bucket::Open(_)))
            .map(|(name, _)| name.clone())
            .collect();
        let excess = open.len().saturating_sub(keep);
        let mut closed = Vec::new();
        for name in open.into_iter().take(excess) {
            if let Some(Bucket::Open(conn)) = self.buckets.remove(&name) {
                close(conn, &self.slug, &name).await;
                closed.push(name);
            }
        }
        // Every other touched hour is already flushed at the end of its round, but a shutdown
        // (keep 0) flushes whatever is left, open or not.
        let done: Vec<String> = if keep == 0 {
            self.touched.iter().cloned().collect()
        } else {
            closed
                .into_iter()
                .filter(|n| self.touched.contains(n))
                .collect()
        };
        self.flush(done).await;
    }

    async fn seal_old(&mut self, now: DateTime<Utc>) -> usize {
        self.last_seal_check = Some(Instant::now());
        let names = match bucket::sealable(&self.dir, now) {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(slug = self.slug, "cannot scan trace buckets: {e}");
                return 0;
            }
        };
        let mut sealed = 0;
        let mut changed = Vec::new();
        for name in names {
            if let Some(Bucket::Open(conn)) = self.buckets.remove(&name) {
                close(conn, &self.slug, &name).await;
            }
            // A pooled reader would stop the switch out of WAL mode.
            self.evict_readers(&name);
            let result = bucket::seal(&self.dir, &name).await;
            self.recount(&name);
            if result.is_ok() {
                let mut index = self.index.lock().await;
                if let Err(e) = index::ensure_loaded(&mut index, &self.dir).await {
                    tracing::warn!(slug = self.slug, "cannot load the trace index: {e}");
                }
                if let Some(hour) = index.as_mut().and_then(|i| i.hours.get_mut(&name)) {
                    hour.sealed = true;
                }
            }
            // Sealing changed the files: their new sizes and modes go with the counts.
            changed.push(name.clone());
            match result {
                Ok(()) => sealed += 1,
                Err(e) => tracing::warn!(
                    slug = self.slug,
                    bucket = name,
                    "cannot seal trace bucket, will retry: {e}"
                ),
            }
        }
        self.flush(changed).await;
        sealed
    }
}

impl Writer {
    /// Re-reads one bucket's size after it changed (only under a quota, once listed).
    fn recount(&mut self, name: &str) {
        let Some(usage) = self.usage.as_mut() else {
            return;
        };
        match bucket::bytes_of(&self.dir, name) {
            0 => usage.remove(name),
            bytes => usage.insert(name.to_string(), bytes),
        };
    }

    /// Under a quota: if the agent is at or over it, deletes its oldest closed hours down to
    /// [`RETAIN_PERCENT`] of it. `Err(quota)` if it is still at or over it after that.
    async fn make_room(&mut self, now: DateTime<Utc>) -> Result<(), u64> {
        let Some(quota) = self.limits.quota_bytes else {
            return Ok(());
        };
        if self.usage.is_none() {
            match bucket::usage(&self.dir) {
                Ok(usage) => self.usage = Some(usage),
                Err(e) => {
                    // Unknown usage: write (refusing would stop the agent's traces for a
                    // listing error) and try again next round.
                    tracing::warn!(slug = self.slug, "cannot measure the trace folder: {e}");
                    return Ok(());
                }
            }
        }
        let total = |usage: &Option<BTreeMap<String, u64>>| {
            usage.as_ref().map_or(0, |u| u.values().sum::<u64>())
        };
        let before = total(&self.usage);
        if before < quota {
            self.full = false;
            return Ok(());
        }
        let target = quota / 100 * RETAIN_PERCENT;
        let mut deleted = Vec::new();
        let mut now_total = before;
        // Oldest first: bucket names sort by time.
        let closed: Vec<String> = self
            .usage
            .as_ref()
            .map(|u| {
                u.keys()
                    .filter(|name| bucket::is_closed(name, now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for name in closed {
            if now_total < target {
                break;
            }
            // Forget the bucket (open or broken) before its files go.
            if let Some(Bucket::Open(conn)) = self.buckets.remove(&name) {
                close(conn, &self.slug, &name).await;
            }
            self.evict_readers(&name);
            if let Err(e) = bucket::delete(&self.dir, &name) {
                tracing::warn!(
                    slug = self.slug,
                    bucket = name,
                    "cannot delete trace hour: {e}"
                );
            }
            self.recount(&name);
            if bucket::bytes_of(&self.dir, &name) == 0 {
                self.forget(&name).await;
            }
            now_total = total(&self.usage);
            deleted.push(name);
        }
        if !deleted.is_empty() {
            tracing::warn!(
                slug = self.slug,
                hours = deleted.len(),
                freed = before.saturating_sub(now_total),
                quota,
                "trace quota reached: deleted the oldest hours"
            );
            self.tell(QuotaNotice::Deleted {
                slug: self.slug.clone(),
                buckets: deleted,
                bytes_freed: before.saturating_sub(now_total),
                bytes_kept: now_total,
                quota_bytes: quota,
            });
        }
        if now_total < quota {
            self.full = false;
            return Ok(());
        }
        if !self.full {
            self.full = true;
            tracing::warn!(
                slug = self.slug,
                quota,
                "trace quota full: refusing new events"
            );
            self.tell(QuotaNotice::Full {
                slug: self.slug.clone(),
                quota_bytes: quota,
            });
        }
        Err(quota)
    }

    fn tell(&self, notice: QuotaNotice) {
        if let Some(notices) = &self.limits.notices {
            // Notices are advisory; with nobody listening (shutdown) there is nothing to tell.
            let _ = notices.send(notice);
        }
    }
}

fn round_size(command: &Command) -> usize {
    match command {
        Command::Append { events, .. } => events.len(),
        Command::Seal { .. } | Command::Shutdown { .. } => 1,
    }
}

fn fsutil_dir(dir: &std::path::Path) -> io::Result<()> {
    crate::fsutil::ensure_private_subdir(dir)
}

async fn close(conn: SqliteConnection, slug: &str, name: &str) {
    if let Err(e) = conn.close().await {
        tracing::warn!(slug, bucket = name, "closing trace bucket: {e}");
    }
}
