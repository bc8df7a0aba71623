//! Moving the store out of the folder containers could write.
//!
//! Until this version the store lived in `<data>/trace/<slug>`, and that folder was bind-mounted
//! read-write into the agent's container. Everything in it may have been planted by the agent:
//! symlinks to host files, FIFOs, hard links, crafted SQLite files, any amount of data. So at
//! start-up the host copies out only what it can check, into the host-only `<data>/traces`, and
//! never reads the old folder again:
//!
//! - only plain files (opened with `O_NOFOLLOW | O_NONBLOCK`, `fstat`-checked: regular, one link)
//!   whose names are bucket names (`.db`, `.db-wal`, `.jsonl`, `.late.jsonl`) are read; anything
//!   else is skipped and logged, never followed;
//! - newest hours first, up to the agent's trace quota, so the copy can't fill the disk;
//! - a copied database must pass `quick_check` and hold exactly our table and indexes (no
//!   triggers, no views), opened with `trusted_schema=OFF`; one that does not is dropped;
//! - JSONL is parsed line by line and written back as events, never copied as bytes.
//!
//! The same goes for the `trace` folder of archives made before (restore now reads `traces`).
//! The copy goes to `<data>/traces.migrating` and is renamed into place at the end, so a crash
//! half-way starts over; once `<data>/traces` exists this never runs again. Taking the old mount
//! out of containers needs the runtime and is done by `crate::legacy`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::bucket::{self, owner_of_file};
use super::{jsonl, validate_slug};
use crate::fsutil;

/// The store's old home, mounted into containers. Read only here, at migration.
pub const LEGACY_DIR: &str = "trace";
/// The store's home: host-only.
pub const STORE_DIR: &str = "traces";
/// An archive's copy of its agent's traces (was `trace`, from the old home).
pub const ARCHIVE_SUBDIR: &str = "traces";
const STAGING_DIR: &str = "traces.migrating";
/// JSONL side files are small (they hold what SQLite refused); a bigger one is not the host's,
/// and parsing it would cost its size in memory.
const MAX_JSONL_BYTES: u64 = 16 * 1024 * 1024;

/// What a migration copied and what it refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Imported {
    /// Files copied (databases, WALs, JSONL files).
    pub files: usize,
    /// Names left behind, with why.
    pub skipped: Vec<(String, String)>,
}

impl Imported {
    fn skip(&mut self, what: &Path, why: impl Into<String>) {
        let why = why.into();
        tracing::warn!(path = %what.display(), %why, "trace migration: not copied");
        self.skipped.push((what.display().to_string(), why));
    }
}

/// At start-up, before the store opens: if `<data>/traces` does not exist yet but the old
/// `<data>/trace` (or an archive's `trace`) does, copies what can be trusted into the new layout.
/// `quota_bytes` bounds what is copied per agent. Returns what was done (`None`: nothing to do).
pub async fn migrate(data_dir: &Path, quota_bytes: Option<u64>) -> io::Result<Option<Imported>> {
    let store = data_dir.join(STORE_DIR);
    let legacy = data_dir.join(LEGACY_DIR);
    let archives = legacy_archives(data_dir)?;
    if fs::symlink_metadata(&store).is_ok() {
        // Already migrated; an archive's old folder may have outlived a crash after the rename.
        remove_old_archive_folders(&archives);
        return Ok(None);
    }
    let has_legacy = fs::symlink_metadata(&legacy).is_ok();
    if !has_legacy && archives.is_empty() {
        return Ok(None);
    }
    tracing::info!("moving the trace store to {} (host-only)", store.display());
    let staging = data_dir.join(STAGING_DIR);
    if fs::symlink_metadata(&staging).is_ok() {
        fs::remove_dir_all(&staging)?;
    }
    fsutil::ensure_private_subdir(&staging)?;
    let mut report = Imported::default();
    if has_legacy {
        for (slug, dir) in agent_dirs(&legacy, &mut report)? {
            import_dir(&dir, &staging.join(&slug), quota_bytes, &mut report).await?;
        }
    }
    for archive in &archives {
        let target = archive.join(ARCHIVE_SUBDIR);
        if fs::symlink_metadata(&target).is_ok() {
            fs::remove_dir_all(&target)?;
        }
        import_dir(&archive.join(LEGACY_DIR), &target, quota_bytes, &mut report).await?;
    }
    fsutil::sync_dir(&staging)?;
    crate::faults::check("migrate-traces", "staged")
        .await
        .map_err(io::Error::other)?;
    fs::rename(&staging, &store)?;
    fsutil::sync_dir(data_dir)?;
    remove_old_archive_folders(&archives);
    tracing::info!(
        files = report.files,
        skipped = report.skipped.len(),
        "trace store moved to {}",
        store.display()
    );
    Ok(Some(report))
}

/// The agents' folders in the old store: real directories with valid slugs, others skipped.
pub fn agent_dirs(legacy: &Path, report: &mut Imported) -> io::Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    let entries = match fs::read_dir(legacy) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Some(slug) = entry.file_name().to_str().map(str::to_owned) else {
            report.skip(&path, "name is not UTF-8");
            continue;
        };
        if validate_slug(&slug).is_err() {
            report.skip(&path, "not an agent's folder");
            continue;
        }
        if !entry.file_type()?.is_dir() {
            report.skip(&path, "not a real directory");
            continue;
        }
        dirs.push((slug, path));
    }
    dirs.sort();
    Ok(dirs)
}

/// Archive folders that still have a `trace` folder from the old layout.
fn legacy_archives(data_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(data_dir.join("archive")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let old = entry.path().join(LEGACY_DIR);
        if fs::symlink_metadata(&old).is_ok() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn remove_old_archive_folders(archives: &[PathBuf]) {
    for archive in archives {
        // remove_dir_all never follows symlinks inside what it removes.
        if let Err(e) = fs::remove_dir_all(archive.join(LEGACY_DIR)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(archive = %archive.display(), "cannot remove the old trace folder: {e}");
            }
        }
    }
}

/// Copies the trustworthy part of one hostile agent folder `src` into `dst` (created 0700).
pub async fn import_dir(
    src: &Path,
    dst: &Path,
    quota_bytes: Option<u64>,
    report: &mut Imported,
) -> io::Result<()> {
    match fs::symlink_metadata(src) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            report.skip(src, "not a real directory");
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    fsutil::ensure_private_subdir(dst)?;
    // bucket -> its file names, from the directory entries (never followed).
    let mut buckets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            report.skip(&path, "name is not UTF-8");
            continue;
        };
        let owner = owner_of_file(&name).map(str::to_owned);
        match owner {
            // SQLite rebuilds -shm; it holds no data.
            Some(_) if name.ends_with("-shm") => {}
            Some(_) if !entry.file_type()?.is_file() => {
                report.skip(&path, "not a plain file (symlink, FIFO, folder or device)");
            }
            Some(bucket) => buckets.entry(bucket).or_default().push(name),
            None => report.skip(&path, "not a trace file"),
        }
    }
    let mut budget = quota_bytes.unwrap_or(u64::MAX);
    // Newest hours first: if the quota can't hold everything, the oldest stay behind.
    for (bucket, names) in buckets.iter().rev() {
        let size = names
            .iter()
            .filter_map(|n| fs::symlink_metadata(src.join(n)).ok())
            .map(|m| m.len())
            .sum::<u64>();
        if size > budget {
            report.skip(&src.join(bucket), "over the agent's trace quota");
            continue;
        }
        budget -= size;
        import_bucket(src, dst, bucket, names, report).await?;
    }
    fsutil::sync_dir(dst)?;
    Ok(())
}

async fn import_bucket(
    src: &Path,
    dst: &Path,
    bucket: &str,
    names: &[String],
    report: &mut Imported,
) -> io::Result<()> {
    let mut copied_db = false;
    for name in names {
        let from = src.join(name);
        let to = dst.join(name);
        let result = if name.ends_with(".jsonl") {
            copy_events(&from, &to)
        } else {
            copy_plain(&from, &to)
        };
        match result {
            Ok(()) => {
                report.files += 1;
                copied_db |= name.ends_with(".db");
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => report.skip(&from, e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if copied_db {
        if let Err(why) = check_database(&bucket::db_path(dst, bucket)).await {
            report.skip(&bucket::db_path(src, bucket), why);
            for file in &bucket::files_of(dst, bucket)[..3] {
                // Best effort: a copy left behind is skipped again (and reported) at the next start.
                let _ = fs::remove_file(file);
            }
        }
    } else {
        // A WAL without its database is nothing.
        let _ = fs::remove_file(dst.join(format!("{bucket}.db-wal")));
    }
    Ok(())
}

/// Copies the bytes of a plain file (checked on the open descriptor) into a new 0600 file.
fn copy_plain(from: &Path, to: &Path) -> io::Result<()> {
    let source = fsutil::open_plain(from)?;
    let expected = source.metadata()?.len();
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(to)?;
    // Never more than fstat said: a file that grows while we copy doesn't get to fill the disk.
    let copied = io::copy(&mut source.take(expected), &mut target)?;
    if copied != expected {
        // Best effort: the error below says what went wrong; a partial copy is never read.
        let _ = fs::remove_file(to);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file changed while it was copied",
        ));
    }
    target.flush()?;
    target.sync_all()
}

/// Re-writes the events that parse; lines that don't are dropped (and logged by the reader).
fn copy_events(from: &Path, to: &Path) -> io::Result<()> {
    // `jsonl::read` opens no-follow too; this check gives the reason and the size.
    if fsutil::open_plain(from)?.metadata()?.len() > MAX_JSONL_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than any side file the host writes",
        ));
    }
    let events = jsonl::read(from)?;
    if events.is_empty() {
        return Ok(());
    }
    jsonl::append(to, &events)
}

/// A copied database must be sound and hold only our table and its indexes.
async fn check_database(path: &Path) -> Result<(), String> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .pragma("trusted_schema", "OFF")
        .connect()
        .await
        .map_err(|e| format!("not a database: {e}"))?;
    let result = check_connection(&mut conn).await;
    // Closing only releases the handle; the outcome is already decided, so its error changes nothing.
    let _ = conn.close().await;
    result
}

async fn check_connection(conn: &mut SqliteConnection) -> Result<(), String> {
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("damaged: {e}"))?;
    if check != "ok" {
        return Err(format!("damaged: {check}"));
    }
    let objects: Vec<(String, String)> = sqlx::query_as("SELECT type, name FROM sqlite_master")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| format!("unreadable schema: {e}"))?;
    let ours = [
        ("table", "trace_events"),
        ("index", "trace_events_created"),
        ("index", "trace_events_trace"),
        ("index", "trace_events_kind"),
        ("index", "sqlite_autoindex_trace_events_1"),
    ];
    if let Some((kind, name)) = objects
        .iter()
        .find(|(kind, name)| !ours.contains(&(kind.as_str(), name.as_str())))
    {
        return Err(format!("holds a {kind} {name:?} the host never made"));
    }
    // Every column a read selects must be there.
    sqlx::query(
        "SELECT id, v, created_at_ms, trace_id, parent_id, agent_name, kind, channel_id, \
         thread_id, backend_name, model, duration_ms, tokens_in, tokens_out, cost_usd, error, \
         payload FROM trace_events LIMIT 0",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| format!("not a trace table: {e}"))?;
    // Folds a copied WAL into the file, so what stays is one checked database.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await
        .map_err(|e| format!("cannot checkpoint: {e}"))?;
    Ok(())
}
