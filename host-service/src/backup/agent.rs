//! One agent of a backup back into this running host: its container, its DM history and its
//! traces, under its old slug or `-2`, `-3`… when that is taken (`POST /api/backups/agents`).
//!
//! It goes through the archive: the agent is first made an archived agent of this host
//! exactly as `agents::archive` would have left it (its row with a placeholder slug and no
//! credentials, its DM channel archived with its messages, its container imported under an
//! archive name with an archive snapshot, its trace folder in an archive folder), and then the
//! archive's own restore brings it back: the slug chosen, new credentials pushed into the
//! container, the container started on its network, the bridge waited for, with its journal
//! and crash recovery. Up to the archive entry's commit a failure removes what was made; after
//! it, the agent is an archived agent (listed, restorable) if bringing it up fails.
//!
//! Only the parts of the backup it needs are restored (restic `--include`), into a folder in
//! the module's private folder that is removed afterwards.

use std::path::Path;

use sqlx::Connection;
use taos_proto::backup::BackupAgentRestore;
use uuid::Uuid;

use super::restic::Restic;
use super::stage::{Manifest, CONTAINERS_DIR, MANIFEST_FILE};
use super::{BackupError, Backups, CACHE_DIR, STAGE_NAME, TAG, TMP_DIR};
use crate::agents::archive::{self, Restored};
use crate::agents::AGENT_TOKEN_PREFIX;
use crate::auth::{hash_token, new_secret};
use crate::db::now_ms;
use crate::fsutil;
use crate::runtime::Runtime;

const WORK_DIR: &str = "agent-restore";
const PASSWORD_FILE: &str = "agent-restore-password";
/// What an agent restore is making before its transaction commits (the container's archive
/// name and the archive folder), so a host killed meanwhile removes them at its next start.
const PENDING_FILE: &str = "agent-restore.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    container: Option<String>,
    dir: std::path::PathBuf,
}
const MAX_SNAPSHOT_CHARS: usize = 64;

impl Backups {
    /// Restores one agent of a backup into this host. Bad input and what can't be done (no
    /// such agent in the backup, the agent is on this host already, no runtime for its
    /// container, another schema) are refused before anything is written.
    pub async fn restore_agent(
        &self,
        request: &BackupAgentRestore,
    ) -> Result<Restored, BackupError> {
        if !crate::agents::is_valid_slug(&request.agent) {
            return Err(BackupError::BadInput(
                "agent: a slug (lowercase letters, digits and dashes)".into(),
            ));
        }
        if let Some(snapshot) = &request.snapshot {
            if snapshot.is_empty()
                || snapshot.len() > MAX_SNAPSHOT_CHARS
                || !snapshot.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(BackupError::BadInput(
                    "snapshot: a snapshot id or a prefix of it (hex digits)".into(),
                ));
            }
        }
        let Some(settings) = self.stored().await? else {
            return Err(BackupError::NotConfigured);
        };
        if !settings.repository_ready {
            return Err(BackupError::Conflict(
                "no backup has been made at this destination yet".into(),
            ));
        }
        let Ok(_one) = self.0.agent_restore.try_lock() else {
            return Err(BackupError::Conflict(
                "another agent is being restored from a backup; wait for it to finish".into(),
            ));
        };
        let private = self.private_dir();
        fsutil::ensure_private_subdir(&private)?;
        let work = private.join(WORK_DIR);
        let result = self.restore_agent_in(request, &settings, &work).await;
        match &result {
            Ok(restored) => {
                self.agent_restore_progress(
                    &request.agent,
                    "finished",
                    serde_json::json!({"slug": restored.agent.slug}),
                )
                .await
            }
            Err(e) => {
                self.agent_restore_progress(
                    &request.agent,
                    "failed",
                    serde_json::json!({"error": e.to_string()}),
                )
                .await
            }
        }
        for leftover in [work, private.join(PASSWORD_FILE)] {
            let removed = if leftover.is_dir() {
                std::fs::remove_dir_all(&leftover)
            } else {
                std::fs::remove_file(&leftover)
            };
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %leftover.display(), error = %e, "cannot remove an agent restore's file")
                }
                _ => {}
            }
        }
        result
    }

    async fn restore_agent_in(
        &self,
        request: &BackupAgentRestore,
        settings: &super::Stored,
        work: &Path,
    ) -> Result<Restored, BackupError> {
        let _ = std::fs::remove_dir_all(work);
        fsutil::ensure_private_subdir(work)?;
        let private = self.private_dir();
        let restic = Restic {
            bin: self.0.restic_bin.clone(),
            repo: self.repository(settings)?,
            password_file: private.join(PASSWORD_FILE),
            cache_dir: private.join(CACHE_DIR),
            tmp_dir: private.join(TMP_DIR),
        };
        for dir in [&restic.cache_dir, &restic.tmp_dir] {
            fsutil::ensure_private_subdir(dir)?;
        }
        let passphrase = self.0.secrets.open(&settings.sealed_passphrase)?;
        fsutil::write_atomic(&restic.password_file, passphrase.as_bytes())?;
        drop(passphrase);

        self.agent_restore_progress(&request.agent, "checking", serde_json::json!({}))
            .await;
        let snapshots = restic.snapshots(&[TAG]).await?;
        let snapshot = super::restore::choose(&snapshots, request.snapshot.as_deref())
            .map_err(|e| BackupError::NotInBackup(e.to_string()))?
            .clone();
        // The database and manifest first: what the agent is, and whether it can come back.
        let top = format!("/{STAGE_NAME}");
        restic
            .restore_including(
                &snapshot.id,
                work,
                &[
                    format!("{top}/{}", crate::db::DB_FILE),
                    format!("{top}/{MANIFEST_FILE}"),
                ],
            )
            .await?;
        let root = work.join(STAGE_NAME);
        let manifest: Manifest = std::fs::read(root.join(MANIFEST_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                BackupError::NotInBackup(format!(
                    "snapshot {} has no readable {MANIFEST_FILE}",
                    snapshot.short_id
                ))
            })?;
        let ours = crate::db::schema_version();
        if manifest.schema_version != ours {
            return Err(BackupError::Conflict(format!(
                "snapshot {} is of database schema {} and this host's is {ours}: one agent \
                 can only be restored from a backup of the same schema (make a new backup, or \
                 restore the whole host)",
                snapshot.short_id, manifest.schema_version
            )));
        }
        let backup_db = root.join(crate::db::DB_FILE);
        let (agent_id, display_name) =
            find_agent(&backup_db, &request.agent)
                .await?
                .ok_or_else(|| {
                    BackupError::NotInBackup(format!(
                        "snapshot {} has no agent {}",
                        snapshot.short_id, request.agent
                    ))
                })?;
        if crate::agents::get_by_id(&self.0.db, agent_id).await.is_ok() {
            return Err(BackupError::Conflict(format!(
                "agent {} of the backup is on this host already (the same agent, perhaps \
                 archived or under another slug): restore it from the archive, or purge it \
                 first to bring back the backup's copy",
                request.agent
            )));
        }
        let container = manifest
            .containers
            .iter()
            .find(|c| c.agent_id == agent_id.to_string())
            .cloned();
        let has_container: bool = {
            let mut conn = open_readonly(&backup_db).await?;
            let found =
                crate::agents::slug_and_container_in(&mut conn, &agent_id.to_string()).await?;
            let _ = conn.close().await;
            found.is_some_and(|(_, container)| container.is_some())
        };
        if has_container && container.is_none() {
            return Err(BackupError::NotInBackup(format!(
                "snapshot {} holds agent {}'s history but not its container (made before \
                 containers were backed up, or left out: see that run's warnings)",
                snapshot.short_id, request.agent
            )));
        }
        let rt = match (&container, self.0.agents.runtime.as_ref()) {
            (None, _) => None,
            (Some(c), Some(rt)) if rt.kind() == c.runtime => Some(rt),
            (Some(c), rt) => {
                return Err(BackupError::Conflict(format!(
                    "the agent's container was exported by {} and this host {}: only {} can \
                     import it",
                    c.runtime,
                    match rt {
                        Some(rt) => format!("runs {}", rt.kind()),
                        None => "has no container runtime".into(),
                    },
                    c.runtime
                )))
            }
        };

        // Then its container and traces.
        self.agent_restore_progress(
            &request.agent,
            "downloading",
            serde_json::json!({"snapshot": snapshot.short_id}),
        )
        .await;
        let mut includes = vec![format!(
            "{top}/{}/{}",
            crate::trace::legacy::STORE_DIR,
            request.agent
        )];
        if let Some(c) = &container {
            includes.push(format!("{top}/{CONTAINERS_DIR}/{}", c.file));
        }
        restic
            .restore_including(&snapshot.id, work, &includes)
            .await?;

        let ts = now_ms();
        let unique = Uuid::now_v7();
        let archived_name = format!("taos-x-{}", &unique.simple().to_string()[20..]);
        // incus: the archive snapshot its restore goes back to. Docker can't restore a
        // snapshot in place, and needs none: the container is made from the backup's image
        // and not started before the archive's restore starts it.
        let archive_snapshot = rt
            .filter(|rt| rt.has_proxy_devices())
            .map(|_| format!("taos-archive-{ts}"));
        let dir = self
            .0
            .data_dir
            .join("archive")
            .join(format!("{}-{ts}", request.agent));
        let pending = self.private_dir().join(PENDING_FILE);
        let planned = Pending {
            container: container.as_ref().map(|_| archived_name.clone()),
            dir: dir.clone(),
        };
        fsutil::write_atomic(
            &pending,
            &serde_json::to_vec(&planned).map_err(|e| BackupError::Decode(e.to_string()))?,
        )?;
        let made = async {
            if let (Some(c), Some(rt)) = (&container, rt) {
                self.agent_restore_progress(
                    &request.agent,
                    "importing",
                    serde_json::json!({"runtime": rt.kind()}),
                )
                .await;
                rt.import_container(
                    &root.join(CONTAINERS_DIR).join(&c.file),
                    &archived_name,
                    super::containers::TRANSFER_TIMEOUT,
                )
                .await
                .map_err(|e| BackupError::Stage(format!("cannot import the container: {e}")))?;
                if let Some(archive_snapshot) = &archive_snapshot {
                    rt.snapshot_create(&archived_name, archive_snapshot)
                        .await
                        .map_err(|e| {
                            BackupError::Stage(format!("cannot snapshot the container: {e}"))
                        })?;
                }
            }
            crate::faults::check("agent-restore", "imported")
                .await
                .map_err(BackupError::Stage)?;
            fsutil::ensure_private_dir(&dir)?;
            let traces = root
                .join(crate::trace::legacy::STORE_DIR)
                .join(&request.agent);
            if traces.is_dir() {
                std::fs::rename(&traces, dir.join(crate::trace::legacy::ARCHIVE_SUBDIR))?;
            }
            let archive_id = Uuid::now_v7().to_string();
            insert_as_archived(
                &self.0.db,
                &backup_db,
                agent_id,
                &request.agent,
                &display_name,
                container.as_ref().map(|_| archived_name.as_str()),
                archive_snapshot.as_deref(),
                &dir,
                &archive_id,
            )
            .await?;
            Ok::<String, BackupError>(archive_id)
        }
        .await;
        let archive_id = match made {
            Ok(id) => {
                // Committed: the archive entry owns the container and the folder now.
                let _ = std::fs::remove_file(&pending);
                id
            }
            Err(e) => {
                if let (Some(_), Some(rt)) = (&container, rt) {
                    if rt.exists(&archived_name).await.unwrap_or(false) {
                        if let Err(e) = rt.delete(&archived_name).await {
                            tracing::warn!(container = %archived_name, error = %e, "cannot remove a half-restored agent's container");
                        }
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_file(&pending);
                return Err(e);
            }
        };
        tracing::info!(agent = %request.agent, snapshot = %snapshot.short_id, archive = %archive_id, "agent taken from the backup into the archive; restoring it");
        // From here the archive's restore owns it (journal, crash recovery, new credentials).
        self.agent_restore_progress(
            &request.agent,
            "starting",
            serde_json::json!({"archive_id": archive_id}),
        )
        .await;
        Ok(archive::restore(&self.0.agents, &archive_id).await?)
    }

    /// `backup.agent_restore {agent, phase, …}` on `/api/events`: checking → downloading →
    /// importing (when it has a container) → starting → finished | failed.
    async fn agent_restore_progress(&self, agent: &str, phase: &str, detail: serde_json::Value) {
        let mut event = serde_json::json!({"agent": agent, "phase": phase});
        if let (Some(event), serde_json::Value::Object(detail)) = (event.as_object_mut(), detail) {
            event.extend(detail);
        }
        self.0.hub.announce("backup.agent_restore", event).await;
    }
}

impl Backups {
    /// At start-up: what a single-agent restore the last host died in made before its
    /// transaction (the imported container, the archive folder) is removed, unless an archive
    /// entry took it (then the archive owns it), and so are its working files.
    pub async fn recover_agent_restore(&self) {
        let private = self.private_dir();
        let pending = private.join(PENDING_FILE);
        if let Ok(bytes) = std::fs::read(&pending) {
            match serde_json::from_slice::<Pending>(&bytes) {
                Ok(p) => self.undo_pending(&p).await,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable record of an unfinished agent restore")
                }
            }
        }
        // Cleanup only: a working copy the next restore would replace anyway.
        let _ = std::fs::remove_dir_all(private.join(WORK_DIR));
        for leftover in [private.join(PASSWORD_FILE), pending] {
            let _ = std::fs::remove_file(leftover);
        }
    }

    async fn undo_pending(&self, p: &Pending) {
        let dir = p.dir.display().to_string();
        match archive::dir_is_archived(&self.0.db, &p.dir).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot look up an unfinished agent restore");
                return;
            }
        }
        if let (Some(name), Some(rt)) = (&p.container, self.0.agents.runtime.as_ref()) {
            if rt.exists(name).await.unwrap_or(false) {
                let _ = rt.stop(name, true).await;
                if let Err(e) = rt.delete(name).await {
                    tracing::error!(container = %name, error = %e, "cannot remove the container of an unfinished agent restore");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&p.dir);
        tracing::warn!(folder = %dir, "removed what an agent restore the host died in had made");
    }
}

async fn open_readonly(file: &Path) -> Result<sqlx::SqliteConnection, BackupError> {
    use sqlx::ConnectOptions;
    Ok(sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .connect()
        .await?)
}

/// The (live, not archived) agent with this slug in the backup's database: its id and name.
async fn find_agent(file: &Path, slug: &str) -> Result<Option<(Uuid, String)>, BackupError> {
    let mut conn = open_readonly(file).await?;
    let row = crate::agents::find_live_in(&mut conn, slug).await?;
    let _ = conn.close().await;
    row.map(|(id, name)| {
        Uuid::parse_str(&id)
            .map(|id| (id, name))
            .map_err(|e| BackupError::Decode(format!("agent id: {e}")))
    })
    .transpose()
}

/// In one transaction of this host's database: the backup's agent row (placeholder slug, no
/// credentials, archived), its DM channels (archived) with their members and messages, and
/// the archive entry that points at the container and the folder. The backup's copy is
/// attached for the copy (the schemas are the same: checked by the caller); each table's
/// owner does its part.
#[allow(clippy::too_many_arguments)]
async fn insert_as_archived(
    db: &crate::db::Db,
    backup_db: &Path,
    agent_id: Uuid,
    slug: &str,
    display_name: &str,
    container: Option<&str>,
    snapshot: Option<&str>,
    dir: &Path,
    archive_id: &str,
) -> Result<(), BackupError> {
    // A connection of its own (not returned to the pool with the backup attached).
    let mut conn = db.acquire().await?.detach();
    sqlx::query("ATTACH DATABASE ? AS bk")
        .bind(backup_db.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await?;
    let placeholder = archive::placeholder_slug(agent_id);
    let mut tx = conn.begin().await?;
    // Under the placeholder: the backup's slug may be taken here.
    crate::agents::copy_from_attached(&mut tx, agent_id, &placeholder).await?;
    crate::agents::mark_archived(
        &mut tx,
        agent_id,
        &placeholder,
        // Revoked: the hash of a secret nobody has; the restore mints new ones.
        &hash_token(&new_secret(AGENT_TOKEN_PREFIX)),
        container,
    )
    .await?;
    crate::chat::copy_dm_from_attached(&mut tx, agent_id).await?;
    crate::chat::archive_dm(&mut tx, agent_id, slug).await?;
    archive::insert_entry(
        &mut tx,
        archive_id,
        agent_id,
        slug,
        display_name,
        container,
        snapshot,
        dir,
    )
    .await?;
    tx.commit().await?;
    sqlx::query("DETACH DATABASE bk").execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}
