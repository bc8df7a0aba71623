//! A consistent copy of trace folders for a backup, taken while agents keep writing.
//!
//! Sealed buckets never change again, so they are copied as they are (still 0400, so a
//! restored store knows them as sealed). An open hour can't be sealed early (its writer, and
//! late events within [`super::SEAL_AFTER_HOURS`], still write to it), so it is copied through
//! SQLite instead: `VACUUM INTO` from a read connection is one read transaction, a snapshot
//! holding every event committed before it began, and it never blocks the writer (WAL). JSONL
//! side files are append-only and copied as they are; a last line torn by a write in flight is
//! skipped on read, like one torn by a crash. The hour index is left out: loading rebuilds it
//! from the files it finds (see `index`).

use std::fs;
use std::io;
use std::path::Path;

use sqlx::Connection;

use super::bucket;
use super::{validate_slug, TraceError, TraceStore};
use crate::fsutil;

/// What a copy took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub agents: u64,
    /// Sealed hours, copied as files.
    pub sealed: u64,
    /// Open hours, copied through SQLite.
    pub open: u64,
    /// JSONL side files.
    pub side_files: u64,
}

impl TraceStore {
    /// Copies every agent's traces into `dest` (created 0700), in the store's own layout.
    pub async fn copy_for_backup(&self, dest: &Path) -> Result<Copied, TraceError> {
        let mut copied = Copied::default();
        fsutil::ensure_private_subdir(dest)?;
        let entries = match fs::read_dir(self.root()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(copied),
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
        slugs.sort();
        for slug in slugs {
            copy_agent_dir(&self.root().join(&slug), &dest.join(&slug), &mut copied).await?;
        }
        Ok(copied)
    }
}

/// Copies one agent's trace folder (in the store, or an archived agent's) into `dest`.
pub async fn copy_agent_dir(
    src: &Path,
    dest: &Path,
    copied: &mut Copied,
) -> Result<(), TraceError> {
    let Some(entries) = bucket::read_agent_dir(src)? else {
        return Ok(());
    };
    fsutil::ensure_private_subdir(dest)?;
    copied.agents += 1;
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    for name in names {
        // Only bucket files: not SQLite's -wal/-shm (an open hour is copied through SQLite),
        // not the index (rebuilt on load), not anything else.
        let Some((_, is_db)) = bucket::bucket_of_file(&name) else {
            continue;
        };
        let from = src.join(&name);
        let to = dest.join(&name);
        let result = if !is_db {
            copy_plain(&from, &to, fsutil::PRIVATE_FILE_MODE).map(|()| copied.side_files += 1)
        } else if bucket::is_sealed(&from) {
            copy_plain(&from, &to, 0o400).map(|()| copied.sealed += 1)
        } else {
            vacuum_into(&from, &to).await?;
            copied.open += 1;
            Ok(())
        };
        match result {
            Ok(()) => {}
            // Retention deleted the hour meanwhile: it is not in the store either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies a plain file (never through a link) into a new file of `mode`.
fn copy_plain(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = fsutil::open_plain(from)?;
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)?;
    io::copy(&mut source, &mut target)?;
    target.sync_all()
}

/// A consistent copy of an open bucket: one read transaction written out by SQLite.
async fn vacuum_into(from: &Path, to: &Path) -> Result<(), TraceError> {
    match fs::symlink_metadata(from) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    // Made 0600 first (VACUUM INTO accepts an empty file), so the copy is private from its
    // first byte.
    fsutil::touch_private(to)?;
    let mut conn = bucket::open_for_read(from, false).await?;
    let result = sqlx::query("VACUUM INTO ?")
        .bind(to.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await;
    // Closing only releases the handle; the copy's outcome is already decided.
    let _ = conn.close().await;
    result?;
    Ok(())
}
