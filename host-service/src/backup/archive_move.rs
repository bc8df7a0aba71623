//! Archive targets (issue 18 item 7): with `archive_target = backup`, archived agents'
//! containers leave the storage pool for the backup repository, and come back when the
//! archive is restored.
//!
//! Moving out happens in a successful backup run, after the host's snapshot is made and the
//! repository checked: each archived container still on the pool is exported (it is stopped,
//! at its archive snapshot) into a file, backed up as its own restic snapshot (tags
//! `taos-archive` and `taos-archive-<archive id>`, never `taos`, so retention leaves it alone
//! and restores and drills don't pick it), and only once that snapshot's id is committed is
//! the container deleted from the pool. Coming back (`POST /api/agents/archived/{id}/restore`)
//! restores that file, imports the container under its archive name and takes the archive
//! snapshot again (exports are instance-only, and the container is unchanged since it was
//! taken), then the archive's own restore runs as for any archive.
//!
//! Docker archives move the same way through the runtime's own export and import (the
//! stopped container committed and saved; loaded and created again with the limits and
//! network it had). Docker can't restore a snapshot in place, which is why an archived Docker
//! agent on the pool can't be restored; one that went through the repository can: the export
//! was of the archived container, stopped at its archive snapshot and never started since, so
//! the container made again is as that snapshot would make it, and its archive loses the
//! snapshot's name (`archive::forget_snapshot`), so the restore needs none. A Docker container
//! that exists after a killed return is whole: `create` made it in one call from the loaded
//! image.
//!
//! The archive's `location` column is the move's persisted state: `pool` → `moving_out` →
//! `backup` → `moving_in` → `pool`. A host killed mid-move settles it at its next start from
//! what exists, so the container is always in one of the two places: a `moving_out` archive
//! whose container still exists goes back to `pool`; one whose container is gone had its
//! snapshot committed first, so it is `backup`. A `moving_in` archive whose container exists
//! with its archive snapshot is `pool`; otherwise the half-imported container is removed and
//! it is `backup` again.
//!
//! One move at a time, and never while the same archive is restored or purged (a mutex).

use std::path::PathBuf;

use taos_proto::agents::ArchiveLocation;

use super::containers::TRANSFER_TIMEOUT;
use super::restic::Restic;
use super::{BackupError, Backups, CACHE_DIR, SNAPSHOT_HOST, TMP_DIR};
use crate::agents::archive::{self, set_location, settle, ArchivedAgent};
use crate::fsutil;
use crate::runtime::{ContainerRuntime, Runtime};

/// Where a moving container's file is staged (`<private>/archive-move/<archive id>/`).
const MOVE_DIR: &str = "archive-move";
/// Where a returning container's file is restored.
const RETURN_DIR: &str = "archive-return";
const PASSWORD_FILE: &str = "archive-return-password";
const CONTAINER_FILE: &str = "container.tar";
/// The tag every moved container's snapshot has (and `<tag>-<archive id>`).
pub const ARCHIVE_TAG: &str = "taos-archive";

/// Held while an archive's container moves, and by a restore or purge of an archive.
pub type MoveGuard = tokio::sync::OwnedMutexGuard<()>;

fn remove_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(folder = %dir.display(), error = %e, "cannot remove an archive move's folder")
        }
        _ => {}
    }
}

impl Backups {
    fn runtime(&self) -> Option<&ContainerRuntime> {
        self.0.agents.runtime.as_ref()
    }

    /// Waits for any archive move to end and keeps others out until the guard is dropped.
    pub async fn lock_archive_moves(&self) -> MoveGuard {
        self.0.archive_moves.clone().lock_owned().await
    }

    /// In a successful run with `archive_target = backup`: moves every archived container
    /// still on the pool into the repository. What could not move stays on the pool and is
    /// returned as a warning in words (the run's warnings, and its notification).
    pub(super) async fn move_archives_out(&self, restic: &Restic) -> Vec<String> {
        let mut warnings = Vec::new();
        let archives = match archive::list(&self.0.db).await {
            Ok(list) => list,
            Err(e) => return vec![format!("archived agents were not moved to the backup: {e}")],
        };
        let to_move: Vec<ArchivedAgent> = archives
            .into_iter()
            .filter(|a| a.location == ArchiveLocation::Pool && a.container.is_some())
            .collect();
        if to_move.is_empty() {
            return warnings;
        }
        let Some(rt) = self.runtime() else {
            warnings.push(format!(
                "{} archived agent(s) stay on the storage pool: moving containers into the \
                 backup needs the container runtime, which this host does not have now",
                to_move.len()
            ));
            return warnings;
        };
        for archived in to_move {
            let _moves = self.lock_archive_moves().await;
            match self.move_out(rt, restic, &archived).await {
                Ok(true) => {
                    tracing::info!(archive = %archived.id, agent = %archived.slug, "archived container moved into the backup repository")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(archive = %archived.id, agent = %archived.slug, error = %e, "archived container not moved");
                    warnings.push(format!(
                        "archived agent {}'s container stays on the storage pool: {e}",
                        archived.slug
                    ));
                }
            }
        }
        warnings
    }

    /// One archive out; false if it was no longer on the pool. A failure before the
    /// container is deleted puts it back to `pool`.
    async fn move_out(
        &self,
        rt: &ContainerRuntime,
        restic: &Restic,
        archived: &ArchivedAgent,
    ) -> Result<bool, BackupError> {
        let Some(container) = &archived.container else {
            return Ok(false);
        };
        if !set_location(
            &self.0.db,
            &archived.id,
            ArchiveLocation::Pool,
            ArchiveLocation::MovingOut,
        )
        .await?
        {
            return Ok(false);
        }
        let parent = self.private_dir().join(MOVE_DIR);
        let dir = parent.join(&archived.id);
        let stored = async {
            remove_dir(&dir);
            fsutil::ensure_private_subdir(&parent)?;
            fsutil::ensure_private_subdir(&dir)?;
            rt.export_container(container, &dir.join(CONTAINER_FILE), TRANSFER_TIMEOUT)
                .await
                .map_err(|e| BackupError::Stage(format!("cannot export the container: {e}")))?;
            let own_tag = format!("{ARCHIVE_TAG}-{}", archived.id);
            let summary = restic
                .backup(
                    &parent,
                    &archived.id,
                    SNAPSHOT_HOST,
                    &[ARCHIVE_TAG.to_string(), own_tag.clone()],
                    None,
                )
                .await?;
            // restic 0.14's summary gives the short id; the archive's own tag finds the full one.
            let snapshot = restic
                .snapshots(&[own_tag.as_str()])
                .await?
                .into_iter()
                .find(|s| s.id.starts_with(&summary.snapshot_id))
                .map(|s| s.id)
                .ok_or_else(|| {
                    BackupError::Stage(format!(
                        "snapshot {} is not in the repository after the backup",
                        summary.snapshot_id
                    ))
                })?;
            archive::record_backup_snapshot(&self.0.db, &archived.id, &snapshot).await?;
            Ok::<String, BackupError>(snapshot)
        }
        .await;
        remove_dir(&dir);
        let snapshot = match stored {
            Ok(snapshot) => snapshot,
            Err(e) => {
                settle(&self.0.db, &archived.id, ArchiveLocation::Pool, None).await?;
                return Err(e);
            }
        };
        // From here the repository holds it: a host killed now finds the snapshot recorded.
        crate::faults::check("archive-move", "stored")
            .await
            .map_err(BackupError::Stage)?;
        if let Err(e) = rt.delete(container).await {
            settle(&self.0.db, &archived.id, ArchiveLocation::Pool, None).await?;
            return Err(BackupError::Stage(format!(
                "cannot delete the container from the pool: {e}"
            )));
        }
        settle(
            &self.0.db,
            &archived.id,
            ArchiveLocation::Backup,
            Some(&snapshot),
        )
        .await?;
        Ok(true)
    }

    /// Before an archive's restore: brings its container back from the backup repository if
    /// it is there. Returns the guard the restore holds, so no move starts meanwhile.
    pub async fn bring_back_archive(&self, id: &str) -> Result<MoveGuard, BackupError> {
        let guard = self.lock_archive_moves().await;
        let archived = archive::get(&self.0.db, id).await?;
        match archived.location {
            ArchiveLocation::Pool => return Ok(guard),
            ArchiveLocation::Backup => {}
            ArchiveLocation::MovingOut | ArchiveLocation::MovingIn => {
                // Only a crashed move leaves these (the lock is held by live ones): the next
                // start settles it.
                return Err(BackupError::Conflict(
                    "the archive's container is between the storage pool and the backup \
                     repository; restart the host to settle it, then restore again"
                        .into(),
                ));
            }
        }
        let (Some(container), Some(snapshot_id)) =
            (archived.container.clone(), archived.backup_snapshot.clone())
        else {
            return Err(BackupError::Decode(
                "an archive in the backup repository without its container or repository \
                 snapshot"
                    .into(),
            ));
        };
        let Some(rt) = self.runtime() else {
            return Err(BackupError::Conflict(
                "the archive's container is in the backup repository and bringing it back \
                 needs a container runtime, which this host does not have"
                    .into(),
            ));
        };
        // incus archives go back to their archive snapshot; Docker ones have none.
        let snapshot = match (rt, archived.snapshot.clone()) {
            (ContainerRuntime::Docker(_), _) => None,
            (ContainerRuntime::Incus(_), Some(snapshot)) => Some(snapshot),
            (ContainerRuntime::Incus(_), None) => {
                return Err(BackupError::Decode(
                    "an incus archive in the backup repository without its archive snapshot".into(),
                ))
            }
        };
        let Some(settings) = self.stored().await? else {
            return Err(BackupError::NotConfigured);
        };
        let private = self.private_dir();
        fsutil::ensure_private_subdir(&private)?;
        let restic = Restic {
            bin: self.0.restic_bin.clone(),
            repo: self.repository(&settings)?,
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
        if !set_location(
            &self.0.db,
            id,
            ArchiveLocation::Backup,
            ArchiveLocation::MovingIn,
        )
        .await?
        {
            let _ = std::fs::remove_file(&restic.password_file);
            return Err(BackupError::Conflict(
                "the archive changed meanwhile; try again".into(),
            ));
        }
        let work = private.join(RETURN_DIR);
        let returned = async {
            remove_dir(&work);
            fsutil::ensure_private_subdir(&work)?;
            restic.restore(&snapshot_id, &work).await?;
            let file: PathBuf = work.join(id).join(CONTAINER_FILE);
            rt.import_container(&file, &container, TRANSFER_TIMEOUT)
                .await
                .map_err(|e| BackupError::Stage(format!("cannot import the container: {e}")))?;
            if snapshot.is_none() {
                archive::forget_snapshot(&self.0.db, id).await?;
            }
            crate::faults::check("archive-return", "imported")
                .await
                .map_err(BackupError::Stage)?;
            if let Some(snapshot) = &snapshot {
                rt.snapshot_create(&container, snapshot)
                    .await
                    .map_err(|e| {
                        BackupError::Stage(format!("cannot snapshot the container: {e}"))
                    })?;
            }
            settle(&self.0.db, id, ArchiveLocation::Pool, None).await?;
            Ok::<(), BackupError>(())
        }
        .await;
        remove_dir(&work);
        match returned {
            Ok(()) => {
                // Its data goes at the next run's prune; a failure only leaves it longer.
                if let Err(e) = restic.forget_ids(&[&snapshot_id]).await {
                    tracing::warn!(archive = %id, snapshot = %snapshot_id, error = %e, "cannot forget a returned archive's snapshot");
                }
                let _ = std::fs::remove_file(&restic.password_file);
                tracing::info!(archive = %id, agent = %archived.slug, "archived container brought back from the backup repository");
                Ok(guard)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&restic.password_file);
                if rt.exists(&container).await.unwrap_or(false) {
                    if let Err(e) = rt.delete(&container).await {
                        tracing::warn!(%container, error = %e, "cannot remove a half-returned archived container");
                    }
                }
                settle(&self.0.db, id, ArchiveLocation::Backup, Some(&snapshot_id)).await?;
                Err(e)
            }
        }
    }

    /// At start-up: settles every move a killed host left half done (see the module's words).
    pub async fn recover_archive_moves(&self) {
        let private = self.private_dir();
        remove_dir(&private.join(MOVE_DIR));
        remove_dir(&private.join(RETURN_DIR));
        let _ = std::fs::remove_file(private.join(PASSWORD_FILE));
        let archives = match archive::list(&self.0.db).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot list archives to settle their moves");
                return;
            }
        };
        for a in archives {
            if !matches!(
                a.location,
                ArchiveLocation::MovingOut | ArchiveLocation::MovingIn
            ) {
                continue;
            }
            let (Some(container), Some(rt)) = (&a.container, self.runtime()) else {
                tracing::error!(archive = %a.id, "an archive move to settle, and no container runtime to look at its container: left as it is");
                continue;
            };
            let exists = match rt.exists(container).await {
                Ok(exists) => exists,
                Err(e) => {
                    tracing::error!(archive = %a.id, error = %e, "cannot ask incus about an archived container: its move is left to settle at the next start");
                    continue;
                }
            };
            let settled = match (a.location, exists) {
                (ArchiveLocation::MovingOut, true) => {
                    // The pool copy is whole; a snapshot the repository may hold is unused.
                    let settled = settle(&self.0.db, &a.id, ArchiveLocation::Pool, None).await;
                    if let (Ok(()), Some(unused)) = (&settled, &a.backup_snapshot) {
                        self.forget_archive_snapshot(unused).await;
                    }
                    settled
                }
                (ArchiveLocation::MovingOut, false) => match &a.backup_snapshot {
                    Some(s) => settle(&self.0.db, &a.id, ArchiveLocation::Backup, Some(s)).await,
                    None => {
                        tracing::error!(archive = %a.id, %container, "an archived container is neither on the pool nor in the backup repository");
                        settle(&self.0.db, &a.id, ArchiveLocation::Pool, None).await
                    }
                },
                (_, true) => {
                    let whole = match rt {
                        // Made in one `create` from the loaded image: it exists whole or not.
                        ContainerRuntime::Docker(_) => true,
                        ContainerRuntime::Incus(_) => {
                            match (&a.snapshot, rt.snapshot_list(container).await) {
                                (Some(s), Ok(list)) => list.contains(s),
                                _ => false,
                            }
                        }
                    };
                    if whole {
                        // Back on the pool: its repository snapshot is unused now, as after a
                        // return that finished.
                        let settled = settle(&self.0.db, &a.id, ArchiveLocation::Pool, None).await;
                        if let (Ok(()), Some(unused)) = (&settled, &a.backup_snapshot) {
                            self.forget_archive_snapshot(unused).await;
                        }
                        settled
                    } else {
                        let _ = rt.stop(container, true).await;
                        if let Err(e) = rt.delete(container).await {
                            tracing::error!(archive = %a.id, error = %e, "cannot remove a half-returned archived container");
                            continue;
                        }
                        settle(
                            &self.0.db,
                            &a.id,
                            ArchiveLocation::Backup,
                            a.backup_snapshot.as_deref(),
                        )
                        .await
                    }
                }
                (_, false) => {
                    settle(
                        &self.0.db,
                        &a.id,
                        ArchiveLocation::Backup,
                        a.backup_snapshot.as_deref(),
                    )
                    .await
                }
            };
            match settled {
                Ok(()) => {
                    tracing::warn!(archive = %a.id, agent = %a.slug, was = %a.location, "settled an archive move a stopped host left unfinished")
                }
                Err(e) => {
                    tracing::error!(archive = %a.id, error = %e, "cannot settle an archive move")
                }
            }
        }
    }

    /// After a purge: the repository snapshot that held the archive's container is forgotten
    /// (its data goes at the next run's prune). Best effort: a failure is logged.
    pub async fn forget_archive_snapshot(&self, snapshot_id: &str) {
        let Ok(Some(settings)) = self.stored().await else {
            return;
        };
        let private = self.private_dir();
        let forgotten = async {
            let restic = Restic {
                bin: self.0.restic_bin.clone(),
                repo: self.repository(&settings)?,
                password_file: private.join(PASSWORD_FILE),
                cache_dir: private.join(CACHE_DIR),
                tmp_dir: private.join(TMP_DIR),
            };
            fsutil::ensure_private_subdir(&private)?;
            let passphrase = self.0.secrets.open(&settings.sealed_passphrase)?;
            fsutil::write_atomic(&restic.password_file, passphrase.as_bytes())?;
            drop(passphrase);
            let done = restic.forget_ids(&[snapshot_id]).await;
            let _ = std::fs::remove_file(&restic.password_file);
            Ok::<(), BackupError>(done?)
        }
        .await;
        if let Err(e) = forgotten {
            tracing::warn!(snapshot = %snapshot_id, error = %e, "cannot forget a purged archive's snapshot in the backup repository");
        }
    }
}
