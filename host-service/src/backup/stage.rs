//! The staged copy a backup run hands to restic: the data dir's irreplaceable parts, in the
//! data dir's own layout, plus `manifest.json` (what wrote it, which schema).
//!
//! The database is copied with `VACUUM INTO`, not the online backup API: sqlx exposes no
//! backup API, and reaching SQLite's C functions through the raw handle needs `unsafe`, which
//! the crate forbids. `VACUUM INTO` runs as one read transaction on a pooled connection, so the
//! copy holds exactly what was committed when it began, and in WAL mode writers carry on
//! meanwhile. What the host rebuilds by itself is left out: the LiteLLM folder (its config is
//! made from the database, its master key anew), the local admin token, the trace hour
//! indexes, logs.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::fsutil;
use crate::trace::copy::{copy_agent_dir, Copied};
use crate::trace::TraceStore;

pub const CONTAINERS_DIR: &str = "containers";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's own format; restore refuses one it doesn't know.
pub const MANIFEST_FORMAT: u32 = 1;
const ARCHIVE_DIR: &str = "archive";

/// What a staged copy is: written into it, read back by restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The database schema (newest migration) of the host that wrote it.
    pub schema_version: i64,
    pub taos_version: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The run that made it (its record is in the copied database).
    pub run_id: String,
    /// Where the data dir was: archives record their folders by absolute path.
    pub data_dir: String,
    /// The agents' containers in `containers/` (absent in backups made before they were).
    #[serde(default)]
    pub containers: Vec<StagedContainer>,
}

/// One agent's container in a backup: `containers/<file>`, an incus backup tarball, or under
/// Docker the `docker save` tarball of the container committed to an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagedContainer {
    pub agent_id: String,
    pub slug: String,
    /// The container's name (what restore makes it as again).
    pub container: String,
    /// The file's name inside `containers/`.
    pub file: String,
    pub bytes: u64,
    /// Whether it was running when exported (restore starts it again if so).
    pub running: bool,
    /// The systemd unit of the agent inside (what a drill checks is up).
    #[serde(default = "default_service")]
    pub service: String,
    /// The runtime that exported it (`incus` or `docker`): only that one can import the file.
    #[serde(default = "default_runtime")]
    pub runtime: String,
}

fn default_service() -> String {
    "taos-agent".into()
}

/// Backups made before Docker containers were backed up held incus ones only.
fn default_runtime() -> String {
    "incus".into()
}

/// What was staged, for the log.
#[derive(Debug, Default)]
pub struct Staged {
    pub database_bytes: u64,
    pub traces: Copied,
    pub archives: u64,
}

/// Fills `stage` (made afresh, 0700) from the data dir.
pub async fn stage(
    db: &Db,
    data_dir: &Path,
    traces: &TraceStore,
    stage: &Path,
) -> io::Result<Staged> {
    match fs::remove_dir_all(stage) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fsutil::ensure_private_subdir(stage)?;
    let mut staged = Staged::default();

    let db_copy = stage.join(crate::db::DB_FILE);
    // 0600 from the first byte; VACUUM INTO accepts an empty file.
    fsutil::touch_private(&db_copy)?;
    sqlx::query("VACUUM INTO ?")
        .bind(db_copy.to_string_lossy().into_owned())
        .execute(db)
        .await
        .map_err(|e| io::Error::other(format!("copying the database: {e}")))?;
    staged.database_bytes = fs::metadata(&db_copy)?.len();

    for name in [crate::config::CONFIG_FILE, crate::secrets::KEY_FILE] {
        copy_if_present(&data_dir.join(name), &stage.join(name))?;
    }
    let tls = crate::tls::tls_dir(data_dir);
    let tls_copy = stage.join(crate::tls::TLS_DIR);
    fsutil::ensure_private_subdir(&tls_copy)?;
    for name in [crate::tls::KEY_FILE, crate::tls::CERT_FILE] {
        copy_if_present(&tls.join(name), &tls_copy.join(name))?;
    }

    staged.traces = traces
        .copy_for_backup(&stage.join(crate::trace::legacy::STORE_DIR))
        .await
        .map_err(|e| io::Error::other(format!("copying the traces: {e}")))?;

    // Archived agents: their chat export and their trace folder. (Their container snapshots
    // are the runtime's, and the next slice's.)
    let archive = data_dir.join(ARCHIVE_DIR);
    if let Ok(entries) = fs::read_dir(&archive) {
        let archive_copy = stage.join(ARCHIVE_DIR);
        fsutil::ensure_private_subdir(&archive_copy)?;
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let from = entry.path();
            let to = archive_copy.join(entry.file_name());
            fsutil::ensure_private_subdir(&to)?;
            copy_if_present(&from.join("chat.jsonl"), &to.join("chat.jsonl"))?;
            let mut copied = Copied::default();
            let archived_traces = crate::trace::legacy::ARCHIVE_SUBDIR;
            copy_agent_dir(
                &from.join(archived_traces),
                &to.join(archived_traces),
                &mut copied,
            )
            .await
            .map_err(|e| io::Error::other(format!("copying an archive's traces: {e}")))?;
            staged.archives += 1;
        }
    }

    Ok(staged)
}

/// Writes `manifest.json` last, once everything it describes is in the staged folder.
pub fn write_manifest(
    stage: &Path,
    data_dir: &Path,
    run_id: &str,
    containers: Vec<StagedContainer>,
) -> io::Result<()> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        schema_version: crate::db::schema_version(),
        taos_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now(),
        run_id: run_id.to_string(),
        data_dir: data_dir.display().to_string(),
        containers,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    fsutil::write_atomic(&stage.join(MANIFEST_FILE), &text)
}

/// Copies a plain file (never through a link) into a new 0600 file, if it exists.
fn copy_if_present(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = match fsutil::open_plain(from) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(to)?;
    io::copy(&mut source, &mut target)?;
    target.sync_all()
}
