//! Changing the repository's passphrase (`POST /api/backups/passphrase`, issue 18): restic's
//! own key rotation, so every existing snapshot stays readable and the old passphrase stops
//! opening the repository.
//!
//! Order, so a failure or a killed host never leaves the host without a passphrase that opens
//! the repository, and never leaves the owner holding one that no longer works: `restic key
//! add` with the new passphrase (both open it now), the new one checked by opening the
//! repository with it, the change written down (`<private>/passphrase-change.json`: both key
//! ids and the old passphrase, sealed), the new passphrase sealed into the settings, then
//! `restic key remove` of the old key. Only then is the change done and the new passphrase
//! returned. A failure anywhere before is undone at once (the old passphrase back in the
//! settings, the added key removed); a host killed before the end undoes it at its next start
//! (or, if the repository can't be reached then, before its next backup run): the owner never
//! saw the new passphrase, so the old one must keep working.

use std::path::Path;

use taos_proto::backup::BackupSettingsSaved;

use super::restic::Restic;
use super::{BackupError, Backups, CACHE_DIR, TMP_DIR};
use crate::db::now_ms;
use crate::fsutil;

const OLD_FILE: &str = "passphrase-old";
const NEW_FILE: &str = "passphrase-new";
/// The old key to remove once the new passphrase is committed.
const PENDING_FILE: &str = "passphrase-change.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    old_key: String,
    new_key: String,
    /// The old passphrase, sealed with the host's secret box like the stored one.
    sealed_old: String,
}

impl Backups {
    /// Changes the passphrase to `new` (or one the host makes, returned this once). Refused
    /// before backups are set up and while a backup or drill runs; bad input is refused
    /// before anything is done.
    pub async fn change_passphrase(
        &self,
        new: Option<String>,
    ) -> Result<BackupSettingsSaved, BackupError> {
        if let Some(p) = &new {
            super::validate_passphrase(p)?;
        }
        let Ok(_one) = self.0.key_change.try_lock() else {
            return Err(BackupError::Conflict(
                "the passphrase is being changed already".into(),
            ));
        };
        let Some(settings) = self.stored().await? else {
            return Err(BackupError::NotConfigured);
        };
        let busy: Option<String> = sqlx::query_scalar(
            "SELECT 'a backup' FROM backup_runs WHERE state IN ('queued', 'running') \
             UNION ALL SELECT 'a restore drill' FROM backup_drills WHERE state = 'running' LIMIT 1",
        )
        .fetch_optional(&self.0.db)
        .await?;
        if let Some(what) = busy {
            return Err(BackupError::Conflict(format!(
                "{what} is running; change the passphrase when it has finished"
            )));
        }
        let old = self.0.secrets.open(&settings.sealed_passphrase)?;
        if new.as_deref() == Some(old.as_str()) {
            return Err(BackupError::BadInput(
                "passphrase: the new passphrase is the current one".into(),
            ));
        }
        let (new, generated) = match new {
            Some(p) => (p, None),
            None => {
                let made = super::generate_passphrase();
                (made.clone(), Some(made))
            }
        };
        if settings.repository_ready {
            let private = self.private_dir();
            fsutil::ensure_private_subdir(&private)?;
            let result = self.rotate_key(&settings, &private, &old, &new).await;
            for file in [OLD_FILE, NEW_FILE] {
                let _ = std::fs::remove_file(private.join(file));
            }
            self.remove_run_files();
            result?;
        } else {
            // No repository yet: the next run makes it with the new one.
            self.store_passphrase(&new).await?;
        }
        tracing::info!("backup passphrase changed");
        Ok(BackupSettingsSaved {
            settings: self.settings().await?,
            generated_passphrase: generated,
        })
    }

    async fn store_passphrase(&self, new: &str) -> Result<(), BackupError> {
        sqlx::query("UPDATE backup_settings SET passphrase = ?, updated_at = ? WHERE id = 1")
            .bind(self.0.secrets.seal(new))
            .bind(now_ms())
            .execute(&self.0.db)
            .await?;
        Ok(())
    }

    async fn rotate_key(
        &self,
        settings: &super::Stored,
        private: &Path,
        old: &str,
        new: &str,
    ) -> Result<(), BackupError> {
        let with = |file: &str| -> Result<Restic, BackupError> {
            Ok(Restic {
                bin: self.0.restic_bin.clone(),
                repo: self.repository(settings)?,
                password_file: private.join(file),
                cache_dir: private.join(CACHE_DIR),
                tmp_dir: private.join(TMP_DIR),
            })
        };
        let by_old = with(OLD_FILE)?;
        let by_new = with(NEW_FILE)?;
        for dir in [&by_old.cache_dir, &by_old.tmp_dir] {
            fsutil::ensure_private_subdir(dir)?;
        }
        fsutil::write_atomic(&by_old.password_file, old.as_bytes())?;
        fsutil::write_atomic(&by_new.password_file, new.as_bytes())?;
        let old_key = by_old.current_key().await?;
        by_old.key_add(&by_new.password_file).await?;
        // The new passphrase opens the repository, or nothing is committed.
        let new_key = match by_new.current_key().await {
            Ok(id) => id,
            Err(e) => return Err(e.into()),
        };
        let pending = private.join(PENDING_FILE);
        let done = async {
            fsutil::write_atomic(
                &pending,
                &serde_json::to_vec(&Pending {
                    old_key: old_key.clone(),
                    new_key: new_key.clone(),
                    sealed_old: settings.sealed_passphrase.clone(),
                })
                .map_err(|e| BackupError::Decode(e.to_string()))?,
            )?;
            self.store_passphrase(new).await?;
            crate::faults::check("passphrase", "committed")
                .await
                .map_err(BackupError::Stage)?;
            by_new.key_remove(&old_key).await?;
            Ok::<(), BackupError>(())
        }
        .await;
        match done {
            Ok(()) => {
                let _ = std::fs::remove_file(&pending);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the passphrase change failed; undoing it");
                if pending.exists() {
                    self.recover_passphrase_change().await;
                } else if let Err(undo) = by_old.key_remove(&new_key).await {
                    tracing::warn!(error = %undo, "cannot remove the key a failed passphrase change added");
                }
                Err(e)
            }
        }
    }

    /// Undoes a passphrase change that did not finish (see the module's words): the old
    /// passphrase back in the settings, the added key removed. At start-up and before each
    /// backup run; if the repository can't be reached, the record stays for the next try
    /// (both passphrases open the repository meanwhile, and the stored one is the old).
    pub async fn recover_passphrase_change(&self) {
        let private = self.private_dir();
        let pending = private.join(PENDING_FILE);
        let Ok(bytes) = std::fs::read(&pending) else {
            return;
        };
        let p = match serde_json::from_slice::<Pending>(&bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "unreadable record of an unfinished passphrase change: the stored passphrase is left as it is");
                let _ = std::fs::remove_file(&pending);
                return;
            }
        };
        let undone = async {
            sqlx::query("UPDATE backup_settings SET passphrase = ?, updated_at = ? WHERE id = 1")
                .bind(&p.sealed_old)
                .bind(now_ms())
                .execute(&self.0.db)
                .await?;
            let settings = self.stored().await?.ok_or(BackupError::NotConfigured)?;
            let restic = Restic {
                bin: self.0.restic_bin.clone(),
                repo: self.repository(&settings)?,
                password_file: private.join(OLD_FILE),
                cache_dir: private.join(CACHE_DIR),
                tmp_dir: private.join(TMP_DIR),
            };
            for dir in [&restic.cache_dir, &restic.tmp_dir] {
                fsutil::ensure_private_subdir(dir)?;
            }
            let old = self.0.secrets.open(&p.sealed_old)?;
            fsutil::write_atomic(&restic.password_file, old.as_bytes())?;
            drop(old);
            let keys = restic.keys().await;
            let result = match keys {
                Ok(keys) if keys.iter().any(|k| k.id == p.new_key && !k.current) => restic
                    .key_remove(&p.new_key)
                    .await
                    .map_err(BackupError::from),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            let _ = std::fs::remove_file(&restic.password_file);
            result
        }
        .await;
        match undone {
            Ok(()) => {
                let _ = std::fs::remove_file(&pending);
                tracing::warn!("an unfinished backup passphrase change was undone: the old passphrase still opens the backups");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot finish undoing a passphrase change yet (the old passphrase is stored again); trying again before the next backup")
            }
        }
    }
}
