//! Backups of the whole host into a restic repository (issue 18, first slice).
//!
//! A run copies what the host can't rebuild into a staging folder inside the data dir (0700):
//! the database through `VACUUM INTO` (a consistent copy taken while the host runs), taos.toml,
//! the TLS identity, the secret key, the trace store (see `trace::copy`) and archived agents'
//! chat exports and traces. restic then backs the folder up (encrypted, deduplicated, so a
//! second run adds only what changed), forgets snapshots beyond the retention, prunes, and
//! checks part of the repository. The staging folder and the password file are removed after
//! every run, whatever happened. `restore` brings a backup back into an empty data dir.
//!
//! Owns `backup_settings` (one row) and `backup_runs`. Every run is recorded before it starts
//! and ends `succeeded` or `failed` with its reason; a run the host died in is marked failed at
//! the next start (`recover`). Failures notify the owner with what to do.

pub mod agent;
pub mod archive_move;
pub mod containers;
pub mod drill;
pub mod drill_bridge;
pub mod passphrase;
pub mod remote;
pub mod restic;
pub mod restore;
pub mod schedule;
pub mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::Row;
use taos_proto::backup::{
    ArchiveTarget, BackupCredentials, BackupDestination, BackupPhase, BackupProgress, BackupReason,
    BackupRetention, BackupRun, BackupSchedule, BackupSettings, BackupSettingsSaved,
    BackupSettingsUpdate, BackupState,
};
use taos_proto::events::{Level, NewNotification};
use uuid::Uuid;

use crate::db::{from_ms, now_ms, Db};
use crate::fsutil;
use crate::notify::EventHub;
use crate::secrets::{SecretBox, SecretError};
use crate::trace::TraceStore;
use restic::{KeepPolicy, Repository, Restic, ResticError};

/// The module's private folder in the data dir: staging, restic's cache and temp files, and
/// the password file while a run needs it.
pub const BACKUP_DIR: &str = "backup";
/// The staged copy's folder name, which is also the top folder inside every snapshot.
pub const STAGE_NAME: &str = "taos-data";
const PASSWORD_FILE: &str = "repository-password";
/// An SFTP destination's private key and pinned host key, 0600 files for the length of a run.
pub(crate) const SSH_KEY_FILE: &str = "sftp-key";
pub(crate) const KNOWN_HOSTS_FILE: &str = "sftp-known-hosts";
pub(crate) const CACHE_DIR: &str = "cache";
pub(crate) const TMP_DIR: &str = "tmp";
/// Every snapshot the host makes carries this tag (and `taos-schema-<n>`, `taos-run-<id>`).
pub const TAG: &str = "taos";
pub const SCHEMA_TAG_PREFIX: &str = "taos-schema-";
/// The host name snapshots are recorded under, the same on every board, so a restored host's
/// backups continue the same history.
const SNAPSHOT_HOST: &str = "taos";
/// How much of the repository's data each run reads back and verifies.
const CHECK_SUBSET: &str = "5%";
pub const MIN_PASSPHRASE_CHARS: usize = 8;
const MAX_PASSPHRASE_CHARS: usize = 1024;
const MAX_PATH_BYTES: usize = 4096;
const MAX_KEEP: u32 = 1000;
const MAX_DRILL_EVERY_DAYS: u32 = 90;
pub const MAX_LIST_LIMIT: i64 = 500;
/// Progress events at most this often (each is a row in the event log).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    BadInput(String),
    #[error(
        "backups are not set up yet: set a destination and a passphrase first \
         (PUT /api/backups/settings)"
    )]
    NotConfigured,
    #[error("a backup is already running ({0}); wait for it to finish")]
    AlreadyRunning(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no such backup run")]
    NotFound,
    #[error("no such restore drill")]
    DrillNotFound,
    /// What was asked for is not in the backup (no such snapshot, agent or container).
    #[error("{0}")]
    NotInBackup(String),
    #[error(transparent)]
    Archive(#[from] crate::agents::archive::ArchiveError),
    #[error("the destination {path} can't be used: {why}")]
    Unreachable { path: String, why: String },
    #[error(transparent)]
    Restic(#[from] ResticError),
    #[error("cannot stage the host's data: {0}")]
    Stage(String),
    #[error("the backup passphrase can't be opened: {0}")]
    Secret(#[from] SecretError),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored value: {0}")]
    Decode(String),
}

impl BackupError {
    /// What the owner can do about a failed run, for its notification.
    fn advice(&self) -> &'static str {
        match self {
            BackupError::Unreachable { .. } => {
                "Plug in and mount the disk, or choose another folder in the backup settings, \
                 then run the backup again."
            }
            BackupError::Restic(ResticError::WrongPassword { .. }) => {
                "The folder holds a restic repository made with another passphrase: enter that \
                 passphrase, or choose an empty folder."
            }
            BackupError::Restic(ResticError::NoRepository { .. }) => {
                "The repository earlier backups went to is not at the destination any more: \
                 mount the disk that holds it, or choose a new destination (a new repository)."
            }
            BackupError::Restic(ResticError::Missing { .. }) => {
                "Install restic (`apt-get install restic`), then run the backup again."
            }
            BackupError::Secret(_) => {
                "The secret key (secret.key in the data dir) no longer opens the stored \
                 passphrase: set the passphrase again in the backup settings."
            }
            _ => {
                "Run the backup again; if it fails the same way, the host log has the details \
                 and `restic check` can be run on the repository by hand."
            }
        }
    }
}

/// What a run that succeeded made.
struct Done {
    summary: restic::BackupSummary,
    containers: u64,
    warnings: Vec<String>,
}

/// The backup service: settings, runs, recovery. Cheap to clone.
#[derive(Clone)]
pub struct Backups(Arc<Inner>);

struct Inner {
    db: Db,
    data_dir: PathBuf,
    secrets: SecretBox,
    hub: Arc<EventHub>,
    traces: TraceStore,
    /// The agents and the container runtime, for the containers in a backup and drills.
    agents: crate::agents::AgentHost,
    /// When chat was last written: container exports give way to it.
    chat: crate::chat::hub::ChatActivity,
    /// One single-agent restore at a time (each imports a container and writes the archive).
    agent_restore: tokio::sync::Mutex<()>,
    /// One archive container move (or archive restore or purge) at a time.
    archive_moves: Arc<tokio::sync::Mutex<()>>,
    /// Held while the passphrase changes; runs and drills don't start meanwhile.
    key_change: tokio::sync::Mutex<()>,
    /// The restore drill's own bridge session (see `drill_bridge`).
    drill_bridge: drill_bridge::DrillBridge,
    restic_bin: PathBuf,
}

/// The stored settings, passphrase still sealed.
struct Stored {
    destination: BackupDestination,
    sealed_passphrase: String,
    /// The SFTP or S3 credentials' JSON, sealed.
    sealed_credentials: Option<String>,
    retention: BackupRetention,
    schedule: BackupSchedule,
    drill_every_days: u32,
    archive_target: ArchiveTarget,
    repository_ready: bool,
    updated_at: i64,
}

impl Backups {
    pub fn new(
        db: Db,
        data_dir: PathBuf,
        secrets: SecretBox,
        hub: Arc<EventHub>,
        traces: TraceStore,
        agents: crate::agents::AgentHost,
        chat: crate::chat::hub::ChatActivity,
    ) -> Backups {
        Backups(Arc::new(Inner {
            db,
            data_dir,
            secrets,
            hub,
            traces,
            agents,
            chat,
            agent_restore: tokio::sync::Mutex::new(()),
            archive_moves: Arc::new(tokio::sync::Mutex::new(())),
            key_change: tokio::sync::Mutex::new(()),
            drill_bridge: Default::default(),
            restic_bin: PathBuf::from(restic::DEFAULT_BIN),
        }))
    }

    /// The restore drill's bridge session, for the agent listener's `/drill/...` routes.
    pub fn drill_bridge(&self) -> &drill_bridge::DrillBridge {
        &self.0.drill_bridge
    }

    fn private_dir(&self) -> PathBuf {
        self.0.data_dir.join(BACKUP_DIR)
    }

    async fn stored(&self) -> Result<Option<Stored>, BackupError> {
        let row = sqlx::query(
            "SELECT destination, passphrase, credentials, keep_daily, keep_weekly, keep_monthly, \
             schedule, drill_every_days, archive_target, repository_ready, updated_at \
             FROM backup_settings WHERE id = 1",
        )
        .fetch_optional(&self.0.db)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let destination: String = row.get("destination");
        let keep = |column: &str| -> Result<u32, BackupError> {
            u32::try_from(row.get::<i64, _>(column))
                .map_err(|e| BackupError::Decode(format!("{column}: {e}")))
        };
        Ok(Some(Stored {
            destination: serde_json::from_str(&destination)
                .map_err(|e| BackupError::Decode(format!("destination: {e}")))?,
            sealed_passphrase: row.get("passphrase"),
            sealed_credentials: row.get("credentials"),
            retention: BackupRetention {
                keep_daily: keep("keep_daily")?,
                keep_weekly: keep("keep_weekly")?,
                keep_monthly: keep("keep_monthly")?,
            },
            schedule: serde_json::from_str(&row.get::<String, _>("schedule"))
                .map_err(|e| BackupError::Decode(format!("schedule: {e}")))?,
            drill_every_days: keep("drill_every_days")?,
            archive_target: row.get::<String, _>("archive_target").parse().map_err(
                |e: taos_proto::text_enum::UnknownVariant| {
                    BackupError::Decode(format!("archive_target: {e}"))
                },
            )?,
            repository_ready: row.get::<i64, _>("repository_ready") != 0,
            updated_at: row.get("updated_at"),
        }))
    }

    /// The settings as people see them (never the passphrase).
    pub async fn settings(&self) -> Result<BackupSettings, BackupError> {
        Ok(match self.stored().await? {
            None => BackupSettings {
                configured: false,
                destination: None,
                retention: BackupRetention::default(),
                schedule: BackupSchedule::Off,
                drill_every_days: taos_proto::backup::DEFAULT_DRILL_EVERY_DAYS,
                archive_target: ArchiveTarget::Pool,
                passphrase_set: false,
                credentials_set: false,
                repository_ready: false,
                updated_at: None,
            },
            Some(s) => BackupSettings {
                configured: true,
                destination: Some(s.destination),
                retention: s.retention,
                schedule: s.schedule,
                drill_every_days: s.drill_every_days,
                archive_target: s.archive_target,
                passphrase_set: true,
                credentials_set: s.sealed_credentials.is_some(),
                repository_ready: s.repository_ready,
                updated_at: Some(from_ms(s.updated_at)),
            },
        })
    }

    /// Saves the settings. Everything is checked before anything is written, so a refused
    /// update changes nothing. A passphrase made by the host is returned this once.
    pub async fn save_settings(
        &self,
        update: BackupSettingsUpdate,
    ) -> Result<BackupSettingsSaved, BackupError> {
        validate_destination(&update.destination, &self.0.data_dir)?;
        if let Some(retention) = &update.retention {
            validate_retention(retention)?;
        }
        if let Some(passphrase) = &update.passphrase {
            validate_passphrase(passphrase)?;
        }
        if let Some(schedule) = &update.schedule {
            schedule::validate(schedule)?;
        }
        if let Some(days) = update.drill_every_days {
            if days > MAX_DRILL_EVERY_DAYS {
                return Err(BackupError::BadInput(format!(
                    "drill_every_days: must be 0 (only on request) to {MAX_DRILL_EVERY_DAYS}"
                )));
            }
        }
        if let Some(credentials) = &update.credentials {
            remote::validate_credentials(&update.destination, credentials)?;
        }
        let current = self.stored().await?;
        // SFTP and S3 need credentials: new ones, or the stored ones of a destination of the
        // same kind (the owner changed the path, not the key).
        let sealed_credentials = match (&update.destination, &update.credentials) {
            (BackupDestination::Local { .. }, _) => None,
            (_, Some(new)) => Some(self.0.secrets.seal(
                &serde_json::to_string(new).map_err(|e| BackupError::Decode(e.to_string()))?,
            )),
            (_, None) => {
                let same_kind = current.as_ref().is_some_and(|c| {
                    std::mem::discriminant(&c.destination)
                        == std::mem::discriminant(&update.destination)
                });
                match current.as_ref().and_then(|c| c.sealed_credentials.clone()) {
                    Some(kept) if same_kind => Some(kept),
                    _ => {
                        return Err(BackupError::BadInput(
                            "credentials: an SFTP or S3 destination needs them (the SSH \
                             private key, or the S3 access key and secret)"
                                .into(),
                        ))
                    }
                }
            }
        };
        let same_destination = current
            .as_ref()
            .is_some_and(|c| c.destination == update.destination);
        if !same_destination && current.is_some() {
            let moved = crate::agents::archive::in_repository(&self.0.db).await?;
            if moved > 0 {
                return Err(BackupError::Conflict(format!(
                    "{moved} archived agent(s) have their container in the backup repository \
                     at the current destination: restore or purge them (or set archive_target \
                     to pool and restore them) before choosing another destination"
                )));
            }
        }
        let (sealed, generated) = match (&update.passphrase, &current) {
            (Some(new), Some(c)) => {
                let old = self.0.secrets.open(&c.sealed_passphrase)?;
                if *new != old && same_destination && c.repository_ready {
                    return Err(BackupError::Conflict(
                        "the repository at this destination is encrypted with the current \
                         passphrase: change it with POST /api/backups/passphrase (Backups → \
                         Change passphrase), which re-keys the repository"
                            .into(),
                    ));
                }
                (self.0.secrets.seal(new), None)
            }
            (Some(new), None) => (self.0.secrets.seal(new), None),
            (None, Some(c)) => (c.sealed_passphrase.clone(), None),
            (None, None) => {
                let made = generate_passphrase();
                (self.0.secrets.seal(&made), Some(made))
            }
        };
        let retention = update
            .retention
            .or(current.as_ref().map(|c| c.retention))
            .unwrap_or_default();
        let schedule = update
            .schedule
            .or(current.as_ref().map(|c| c.schedule))
            .unwrap_or_default();
        let schedule =
            serde_json::to_string(&schedule).map_err(|e| BackupError::Decode(e.to_string()))?;
        let drill_every_days = update
            .drill_every_days
            .or(current.as_ref().map(|c| c.drill_every_days))
            .unwrap_or(taos_proto::backup::DEFAULT_DRILL_EVERY_DAYS);
        let archive_target = update
            .archive_target
            .or(current.as_ref().map(|c| c.archive_target))
            .unwrap_or_default();
        // A new destination is a new repository (made or opened by the next run).
        let ready = same_destination && current.as_ref().is_some_and(|c| c.repository_ready);
        let destination = serde_json::to_string(&update.destination)
            .map_err(|e| BackupError::Decode(e.to_string()))?;
        sqlx::query(
            "INSERT INTO backup_settings (id, destination, passphrase, credentials, keep_daily, \
             keep_weekly, keep_monthly, schedule, drill_every_days, archive_target, repository_ready, updated_at) \
             VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET destination = excluded.destination, \
             passphrase = excluded.passphrase, credentials = excluded.credentials, keep_daily = excluded.keep_daily, \
             keep_weekly = excluded.keep_weekly, keep_monthly = excluded.keep_monthly, \
             schedule = excluded.schedule, drill_every_days = excluded.drill_every_days, \
             archive_target = excluded.archive_target, \
             repository_ready = excluded.repository_ready, \
             updated_at = excluded.updated_at",
        )
        .bind(&destination)
        .bind(&sealed)
        .bind(&sealed_credentials)
        .bind(i64::from(retention.keep_daily))
        .bind(i64::from(retention.keep_weekly))
        .bind(i64::from(retention.keep_monthly))
        .bind(&schedule)
        .bind(i64::from(drill_every_days))
        .bind(archive_target.as_str())
        .bind(i64::from(ready))
        .bind(now_ms())
        .execute(&self.0.db)
        .await?;
        tracing::info!(destination = %describe(&update.destination), "backup settings saved");
        Ok(BackupSettingsSaved {
            settings: self.settings().await?,
            generated_passphrase: generated,
        })
    }

    /// Records a new run (`queued`) and starts it. Refused while another is queued or
    /// running (checked in the same statement that inserts, so two requests can't both win).
    pub async fn start(&self) -> Result<BackupRun, BackupError> {
        self.start_for(BackupReason::Manual).await
    }

    /// [`Backups::start`], recording why the run was made.
    pub async fn start_for(&self, reason: BackupReason) -> Result<BackupRun, BackupError> {
        let Some(settings) = self.stored().await? else {
            return Err(BackupError::NotConfigured);
        };
        if self.0.key_change.try_lock().is_err() {
            return Err(BackupError::Conflict(
                "the passphrase is being changed; start the backup when it has finished".into(),
            ));
        }
        let id = Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO backup_runs (id, state, reason, destination, created_at) \
             SELECT ?, 'queued', ?, ?, ? WHERE NOT EXISTS \
             (SELECT 1 FROM backup_runs WHERE state IN ('queued', 'running')) AND NOT EXISTS \
             (SELECT 1 FROM backup_drills WHERE state = 'running')",
        )
        .bind(&id)
        .bind(reason.as_str())
        .bind(describe(&settings.destination))
        .bind(now_ms())
        .execute(&self.0.db)
        .await?;
        if inserted.rows_affected() == 0 {
            let busy: Option<String> = sqlx::query_scalar(
                "SELECT id FROM backup_runs WHERE state IN ('queued', 'running') LIMIT 1",
            )
            .fetch_optional(&self.0.db)
            .await?;
            return Err(match busy {
                Some(run) => BackupError::AlreadyRunning(run),
                None => BackupError::Conflict(
                    "a restore drill is running; wait for it to finish".into(),
                ),
            });
        }
        let run = self.get(&id).await?;
        let me = self.clone();
        tokio::spawn(async move { me.execute(id).await });
        Ok(run)
    }

    /// Runs newest first.
    pub async fn list(&self, limit: i64) -> Result<Vec<BackupRun>, BackupError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM backup_runs ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(limit.clamp(1, MAX_LIST_LIMIT))
        .fetch_all(&self.0.db)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn get(&self, id: &str) -> Result<BackupRun, BackupError> {
        get_run(&self.0.db, id).await
    }

    /// At start-up, before the API serves: a run the last host died in is marked failed (with
    /// the reason and a notification), and its staging folder and password file are removed.
    pub async fn recover(&self) -> Result<(), BackupError> {
        self.remove_run_files();
        let reason = "the host stopped while this backup was running (it was killed, crashed \
                      or lost power), so no snapshot was recorded";
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE backup_runs SET state = 'failed', error = ?, finished_at = ? \
             WHERE state IN ('queued', 'running') RETURNING id",
        )
        .bind(reason)
        .bind(now_ms())
        .fetch_all(&self.0.db)
        .await?;
        for id in ids {
            tracing::warn!(run = %id, "{reason}");
            self.announce_failure(&id, reason, "Run the backup again.")
                .await;
        }
        Ok(())
    }

    /// Removes what a run leaves in the private folder: the staged copy, the password file,
    /// and restic's temporary pack files (which a killed restic leaves behind).
    fn remove_run_files(&self) {
        let dir = self.private_dir();
        for folder in [STAGE_NAME, TMP_DIR] {
            match std::fs::remove_dir_all(dir.join(folder)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(folder, error = %e, "cannot remove a backup run's folder")
                }
            }
        }
        for file in [PASSWORD_FILE, SSH_KEY_FILE, KNOWN_HOSTS_FILE] {
            match std::fs::remove_file(dir.join(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!(file, error = %e, "cannot remove a backup run's file"),
            }
        }
    }

    /// One run, start to end; the record and the files are settled whatever happens.
    async fn execute(self, id: String) {
        let started = Instant::now();
        let outcome = self.run_steps(&id).await;
        self.remove_run_files();
        match outcome {
            Ok(Done {
                summary: done,
                containers,
                warnings,
            }) => {
                let finished = sqlx::query(
                    "UPDATE backup_runs SET state = 'succeeded', finished_at = ?, snapshot_id = ?, \
                     data_added = ?, total_bytes = ?, total_files = ?, containers = ?, \
                     warnings = ? WHERE id = ? AND state = 'running'",
                )
                .bind(now_ms())
                .bind(&done.snapshot_id)
                .bind(i64::try_from(done.data_added).unwrap_or(i64::MAX))
                .bind(i64::try_from(done.total_bytes_processed).unwrap_or(i64::MAX))
                .bind(i64::try_from(done.total_files_processed).unwrap_or(i64::MAX))
                .bind(i64::try_from(containers).unwrap_or(i64::MAX))
                .bind(serde_json::to_string(&warnings).unwrap_or_else(|_| "[]".into()))
                .bind(&id)
                .execute(&self.0.db)
                .await;
                if let Err(e) = finished {
                    tracing::error!(run = %id, error = %e, "cannot record a finished backup");
                    return;
                }
                tracing::info!(
                    run = %id,
                    snapshot = %done.snapshot_id,
                    data_added = done.data_added,
                    secs = started.elapsed().as_secs(),
                    "backup finished"
                );
                self.0
                    .hub
                    .announce(
                        "backup.finished",
                        serde_json::json!({
                            "run_id": id,
                            "state": BackupState::Succeeded,
                            "snapshot_id": done.snapshot_id,
                            "data_added": done.data_added,
                            "total_bytes": done.total_bytes_processed,
                            "containers": containers,
                            "warnings": warnings,
                        }),
                    )
                    .await;
                if !warnings.is_empty() {
                    let note = NewNotification {
                        level: Level::Warning,
                        title: "Backup finished without some containers".into(),
                        message: format!(
                            "{}. The rest of the host is in the backup.",
                            warnings.join("; ")
                        ),
                        source: Some("backup".into()),
                        data: Some(serde_json::json!({"run_id": id})),
                    };
                    if let Err(e) = self.0.hub.notify(note).await {
                        tracing::warn!(error = %e, "cannot post the backup warning notification");
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(run = %id, error = %reason, "backup failed");
                let failed = sqlx::query(
                    "UPDATE backup_runs SET state = 'failed', finished_at = ?, error = ? \
                     WHERE id = ? AND state IN ('queued', 'running')",
                )
                .bind(now_ms())
                .bind(&reason)
                .bind(&id)
                .execute(&self.0.db)
                .await;
                if let Err(db) = failed {
                    tracing::error!(run = %id, error = %db, "cannot record a failed backup");
                }
                self.announce_failure(&id, &reason, e.advice()).await;
            }
        }
    }

    /// `backup.finished` (failed) and a notification with the reason and what to do.
    async fn announce_failure(&self, id: &str, reason: &str, advice: &str) {
        self.0
            .hub
            .announce(
                "backup.finished",
                serde_json::json!({"run_id": id, "state": BackupState::Failed, "error": reason}),
            )
            .await;
        let note = NewNotification {
            level: Level::Error,
            title: "Backup failed".into(),
            message: format!("{reason}. {advice}"),
            source: Some("backup".into()),
            data: Some(serde_json::json!({"run_id": id})),
        };
        if let Err(e) = self.0.hub.notify(note).await {
            tracing::warn!(error = %e, "cannot post the backup failure notification");
        }
    }

    async fn progress(&self, id: &str, phase: BackupPhase, status: Option<&restic::BackupStatus>) {
        let progress = BackupProgress {
            run_id: id.to_string(),
            phase,
            percent_done: status.map_or(0.0, |s| s.percent_done),
            bytes_done: status.map_or(0, |s| s.bytes_done),
            total_bytes: status.map_or(0, |s| s.total_bytes),
        };
        self.0
            .hub
            .announce(
                "backup.progress",
                serde_json::to_value(progress).unwrap_or_default(),
            )
            .await;
    }

    async fn run_steps(&self, id: &str) -> Result<Done, BackupError> {
        let marked = sqlx::query(
            "UPDATE backup_runs SET state = 'running', started_at = ? \
             WHERE id = ? AND state = 'queued'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.0.db)
        .await?;
        if marked.rows_affected() == 0 {
            return Err(BackupError::NotFound);
        }
        crate::faults::check("backup", "running")
            .await
            .map_err(BackupError::Stage)?;
        // A passphrase change a killed host left is undone first (the old one is then stored).
        self.recover_passphrase_change().await;
        let settings = self.stored().await?.ok_or(BackupError::NotConfigured)?;
        let private = self.private_dir();
        fsutil::ensure_private_subdir(&private)?;
        let repo = self.repository(&settings)?;
        let passphrase = self.0.secrets.open(&settings.sealed_passphrase)?;
        let restic = Restic {
            bin: self.0.restic_bin.clone(),
            repo,
            password_file: private.join(PASSWORD_FILE),
            cache_dir: private.join(CACHE_DIR),
            tmp_dir: private.join(TMP_DIR),
        };
        fsutil::ensure_private_subdir(&restic.cache_dir)?;
        fsutil::ensure_private_subdir(&restic.tmp_dir)?;
        fsutil::write_atomic(&restic.password_file, passphrase.as_bytes())?;
        drop(passphrase);

        // The repository: opened, or made on the first run at this destination.
        match restic.snapshots(&[TAG]).await {
            Ok(_) => {}
            Err(ResticError::NoRepository { .. }) if !settings.repository_ready => {
                restic.init().await?;
                tracing::info!(repository = %restic.repo.location, "made a new restic repository");
            }
            Err(e) => return Err(e.into()),
        }
        if !settings.repository_ready {
            sqlx::query("UPDATE backup_settings SET repository_ready = 1 WHERE id = 1")
                .execute(&self.0.db)
                .await?;
        }

        self.progress(id, BackupPhase::Staging, None).await;
        let stage = private.join(STAGE_NAME);
        let staged = stage::stage(&self.0.db, &self.0.data_dir, &self.0.traces, &stage)
            .await
            .map_err(|e| BackupError::Stage(e.to_string()))?;
        tracing::info!(run = %id, ?staged, "staged the host's data for the backup");
        self.progress(id, BackupPhase::Containers, None).await;
        let staged_containers = containers::stage(&self.0.agents, &stage, &self.0.chat, |phase| {
            self.progress(id, phase, None)
        })
        .await
        .map_err(|e| BackupError::Stage(e.to_string()))?;
        let container_count = staged_containers.containers.len() as u64;
        stage::write_manifest(&stage, &self.0.data_dir, id, staged_containers.containers)
            .map_err(|e| BackupError::Stage(e.to_string()))?;
        crate::faults::check("backup", "staged")
            .await
            .map_err(BackupError::Stage)?;

        // A host killed mid-backup leaves restic's lock behind; this removes only locks of
        // processes that are gone.
        restic.unlock().await?;
        self.progress(id, BackupPhase::Uploading, None).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tags = vec![
            TAG.to_string(),
            format!("{SCHEMA_TAG_PREFIX}{}", crate::db::schema_version()),
            format!("taos-run-{id}"),
        ];
        let upload = restic.backup(&private, STAGE_NAME, SNAPSHOT_HOST, &tags, Some(tx));
        tokio::pin!(upload);
        let mut last = Instant::now();
        let summary = loop {
            tokio::select! {
                done = &mut upload => break done?,
                Some(status) = rx.recv() => {
                    if last.elapsed() >= PROGRESS_EVERY {
                        last = Instant::now();
                        self.progress(id, BackupPhase::Uploading, Some(&status)).await;
                    }
                }
            }
        };
        // restic 0.14's summary gives the short id; the run's own tag finds the full one.
        let run_tag = format!("taos-run-{id}");
        let mut summary = summary;
        if let Some(snapshot) = restic
            .snapshots(&[run_tag.as_str()])
            .await?
            .into_iter()
            .find(|s| s.id.starts_with(&summary.snapshot_id))
        {
            summary.snapshot_id = snapshot.id;
        }
        // The snapshot exists from here on: a later failure keeps its id on the record.
        sqlx::query("UPDATE backup_runs SET snapshot_id = ? WHERE id = ?")
            .bind(&summary.snapshot_id)
            .bind(id)
            .execute(&self.0.db)
            .await?;
        self.progress(id, BackupPhase::Retention, None).await;
        let keep = KeepPolicy {
            daily: settings.retention.keep_daily,
            weekly: settings.retention.keep_weekly,
            monthly: settings.retention.keep_monthly,
        };
        let forgotten = restic.forget_prune(TAG, keep).await?;
        restic.check(Some(CHECK_SUBSET)).await?;
        tracing::info!(run = %id, kept = forgotten.kept, removed = forgotten.removed, "retention applied, repository checked");
        let mut warnings = staged_containers.warnings;
        if settings.archive_target == ArchiveTarget::Backup {
            self.progress(id, BackupPhase::Archives, None).await;
            warnings.extend(self.move_archives_out(&restic).await);
        }
        Ok(Done {
            summary,
            containers: container_count,
            warnings,
        })
    }
}

impl Backups {
    /// restic's repository for the stored destination, ready for a run: an SFTP destination's
    /// key and pinned host key are written as 0600 files in the private folder (removed with
    /// the run's other files), an S3 destination's keys go into restic's environment.
    fn repository(&self, settings: &Stored) -> Result<Repository, BackupError> {
        let credentials = || -> Result<BackupCredentials, BackupError> {
            let sealed = settings.sealed_credentials.as_deref().ok_or_else(|| {
                BackupError::BadInput(
                    "the destination's credentials are not stored: save the backup settings \
                     with them"
                        .into(),
                )
            })?;
            serde_json::from_str(&self.0.secrets.open(sealed)?)
                .map_err(|e| BackupError::Decode(format!("credentials: {e}")))
        };
        match &settings.destination {
            BackupDestination::Local { .. } => local_repository(&settings.destination),
            BackupDestination::Sftp {
                host,
                port,
                user,
                path,
                host_key,
            } => {
                let BackupCredentials::Sftp { private_key } = credentials()? else {
                    return Err(BackupError::Decode("credentials are not SFTP's".into()));
                };
                let private = self.private_dir();
                let key_file = private.join(SSH_KEY_FILE);
                let known_hosts_file = private.join(KNOWN_HOSTS_FILE);
                let repo =
                    remote::sftp_repository(host, *port, user, path, &key_file, &known_hosts_file)?;
                // ssh wants the key's last line ended.
                fsutil::write_atomic(&key_file, format!("{}\n", private_key.trim()).as_bytes())?;
                fsutil::write_atomic(
                    &known_hosts_file,
                    remote::known_hosts(host, *port, host_key)?.as_bytes(),
                )?;
                Ok(repo)
            }
            BackupDestination::S3 { endpoint, bucket } => {
                let BackupCredentials::S3 {
                    access_key_id,
                    secret_access_key,
                } = credentials()?
                else {
                    return Err(BackupError::Decode("credentials are not S3's".into()));
                };
                Ok(remote::s3_repository(
                    endpoint,
                    bucket,
                    &access_key_id,
                    &secret_access_key,
                ))
            }
        }
    }
}

const RUN_COLUMNS: &str = "id, state, reason, destination, created_at, started_at, finished_at, \
     snapshot_id, data_added, total_bytes, total_files, error, containers, warnings";

async fn get_run(db: &Db, id: &str) -> Result<BackupRun, BackupError> {
    let row = sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM backup_runs WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(BackupError::NotFound)?;
    run_from_row(&row)
}

fn run_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<BackupRun, BackupError> {
    let state: String = row.get("state");
    let count = |column: &str| {
        row.get::<Option<i64>, _>(column)
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    Ok(BackupRun {
        id: row.get("id"),
        state: state
            .parse()
            .map_err(|e: taos_proto::text_enum::UnknownVariant| {
                BackupError::Decode(e.to_string())
            })?,
        reason: row.get::<String, _>("reason").parse().map_err(
            |e: taos_proto::text_enum::UnknownVariant| BackupError::Decode(e.to_string()),
        )?,
        destination: row.get("destination"),
        created_at: from_ms(row.get("created_at")),
        started_at: row.get::<Option<i64>, _>("started_at").map(from_ms),
        finished_at: row.get::<Option<i64>, _>("finished_at").map(from_ms),
        snapshot_id: row.get("snapshot_id"),
        data_added: count("data_added"),
        total_bytes: count("total_bytes"),
        total_files: count("total_files"),
        error: row.get("error"),
        containers: count("containers"),
        warnings: serde_json::from_str(&row.get::<String, _>("warnings"))
            .map_err(|e| BackupError::Decode(format!("warnings: {e}")))?,
    })
}

/// After a restore: the run whose copy of the database this is was `running` when the copy was
/// taken; it is the run that made the snapshot, so it is recorded as succeeded with its id and
/// time (what it added is not in the copy; restic's `snapshots` has it).
pub async fn mark_restored(
    db: &Db,
    run_id: &str,
    snapshot_id: &str,
    snapshot_time: chrono::DateTime<chrono::Utc>,
) -> Result<(), BackupError> {
    sqlx::query(
        "UPDATE backup_runs SET state = 'succeeded', snapshot_id = ?, \
         finished_at = COALESCE(finished_at, ?), error = NULL WHERE id = ?",
    )
    .bind(snapshot_id)
    .bind(snapshot_time.timestamp_millis())
    .bind(run_id)
    .execute(db)
    .await?;
    Ok(())
}

/// The destination in words, for run records and logs.
pub fn describe(destination: &BackupDestination) -> String {
    match destination {
        BackupDestination::Local { path } => format!("folder {path}"),
        BackupDestination::Sftp {
            host,
            port,
            user,
            path,
            ..
        } => format!("sftp {user}@{host}:{port}{path}"),
        BackupDestination::S3 { endpoint, bucket } => {
            format!("s3 {}/{bucket}", endpoint.trim_end_matches('/'))
        }
    }
}

/// restic's repository for a local folder, checked for use now: its parent must exist (a disk
/// that is not mounted must fail the run, not fill the SD card's mount point).
fn local_repository(destination: &BackupDestination) -> Result<Repository, BackupError> {
    match destination {
        BackupDestination::Local { path } => {
            let unreachable = |why: String| BackupError::Unreachable {
                path: path.clone(),
                why,
            };
            let target = Path::new(path);
            let parent = target
                .parent()
                .ok_or_else(|| unreachable("it has no parent folder".into()))?;
            match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(unreachable(format!("{} is not a folder", parent.display()))),
                Err(e) => {
                    return Err(unreachable(format!(
                        "its parent folder {} is missing ({e}); is the disk mounted?",
                        parent.display()
                    )))
                }
            }
            if let Ok(meta) = std::fs::metadata(target) {
                if !meta.is_dir() {
                    return Err(unreachable("it is a file, not a folder".into()));
                }
            }
            Ok(Repository {
                location: path.clone(),
                env: Vec::new(),
                options: Vec::new(),
            })
        }
        BackupDestination::Sftp { .. } | BackupDestination::S3 { .. } => {
            Err(BackupError::Decode("not a local destination".into()))
        }
    }
}

/// A local destination must be an absolute, plain path outside the data dir (a backup inside
/// what it backs up would be lost with it, and copied into itself).
pub fn validate_destination(
    destination: &BackupDestination,
    data_dir: &Path,
) -> Result<(), BackupError> {
    match destination {
        BackupDestination::Local { path } => {
            let bad = |why: &str| BackupError::BadInput(format!("destination path: {why}"));
            if path.is_empty() {
                return Err(bad("must not be empty"));
            }
            if path.len() > MAX_PATH_BYTES {
                return Err(bad("is too long"));
            }
            if path.contains('\0') || path.chars().any(char::is_control) {
                return Err(bad("must not contain NUL or control characters"));
            }
            let target = Path::new(path);
            if !target.is_absolute() {
                return Err(bad("must be absolute (start with /)"));
            }
            // The text, not `components()`, which drops a `.` in the middle unseen.
            if path.split('/').any(|part| part == "." || part == "..") {
                return Err(bad("must not contain `.` or `..`"));
            }
            if target.parent().is_none() {
                return Err(bad("must not be the root folder"));
            }
            let resolved = resolve_existing(target);
            let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
            if resolved.starts_with(&data) || target.starts_with(data_dir) {
                return Err(bad(&format!(
                    "must be outside the data dir {} (a backup inside what it backs up is lost \
                     with it)",
                    data_dir.display()
                )));
            }
            // Found now, not at the first run: under the service's sandbox every folder but
            // its data dir, /mnt, /media and /srv is read-only, and a USB disk may be mounted
            // read-only.
            if let Some(existing) = crate::fsutil::nearest_existing(target) {
                if crate::sys::is_read_only(&existing).unwrap_or(false) {
                    return Err(bad(&format!(
                        "{} is on a file system this host can't write to (read-only). The \
                         taos-host service may write only its data dir and folders under /mnt, \
                         /media and /srv: choose a folder there (mount a USB disk under /media \
                         or /mnt), or remount the disk read-write",
                        existing.display()
                    )));
                }
            }
            Ok(())
        }
        BackupDestination::Sftp { .. } | BackupDestination::S3 { .. } => {
            remote::validate(destination)
        }
    }
}

/// `path` with its longest existing prefix resolved through symlinks (so a link into the data
/// dir is seen for what it is), the rest appended as written.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = path.to_path_buf();
    loop {
        if let Ok(real) = std::fs::canonicalize(&at) {
            let mut out = real;
            for part in missing.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                at = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn validate_retention(retention: &BackupRetention) -> Result<(), BackupError> {
    let all = [
        retention.keep_daily,
        retention.keep_weekly,
        retention.keep_monthly,
    ];
    if all.iter().any(|&n| n > MAX_KEEP) {
        return Err(BackupError::BadInput(format!(
            "retention: each of keep_daily, keep_weekly and keep_monthly must be at most {MAX_KEEP}"
        )));
    }
    if all.iter().all(|&n| n == 0) {
        return Err(BackupError::BadInput(
            "retention: keep at least one daily, weekly or monthly backup".into(),
        ));
    }
    Ok(())
}

fn validate_passphrase(passphrase: &str) -> Result<(), BackupError> {
    let chars = passphrase.chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(BackupError::BadInput(format!(
            "passphrase: must be at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    if chars > MAX_PASSPHRASE_CHARS {
        return Err(BackupError::BadInput(format!(
            "passphrase: must be at most {MAX_PASSPHRASE_CHARS} characters"
        )));
    }
    // restic reads its password file as text and trims it: what is stored must be what it uses.
    if passphrase.chars().any(char::is_control) || passphrase.trim() != passphrase {
        return Err(BackupError::BadInput(
            "passphrase: must not contain control characters or start or end with spaces".into(),
        ));
    }
    Ok(())
}

/// A strong passphrase to write down: 25 letters and digits (about 125 bits) in groups of 5,
/// from an alphabet without look-alikes.
fn generate_passphrase() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    let mut out = String::new();
    for group in 0..5 {
        if group > 0 {
            out.push('-');
        }
        for _ in 0..5 {
            out.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(path: &str) -> BackupDestination {
        BackupDestination::Local { path: path.into() }
    }

    #[test]
    fn destinations_are_checked() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let outside = temp.path().join("usb").display().to_string();
        validate_destination(&local(&outside), &data).unwrap();
        for bad in [
            "",
            "relative/path",
            "/mnt/../etc",
            "/mnt/./x",
            "/mnt/a\0b",
            "/",
            &format!("{}/backups", data.display()),
            &data.display().to_string(),
        ] {
            assert!(
                validate_destination(&local(bad), &data).is_err(),
                "{bad:?} is refused"
            );
        }
        // A symlink that leads into the data dir is seen through.
        let link = temp.path().join("sneaky");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let through = format!("{}/repo", link.display());
        assert!(validate_destination(&local(&through), &data).is_err());
    }

    #[test]
    fn passphrases_and_retention_are_checked() {
        assert!(validate_passphrase("").is_err());
        assert!(validate_passphrase("short").is_err());
        assert!(validate_passphrase(" padded passphrase").is_err());
        assert!(validate_passphrase("line\nbreak here").is_err());
        validate_passphrase("correct horse battery").unwrap();
        let made = generate_passphrase();
        assert_eq!(made.len(), 29);
        validate_passphrase(&made).unwrap();
        assert_ne!(made, generate_passphrase());
        assert!(validate_retention(&BackupRetention {
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0
        })
        .is_err());
        assert!(validate_retention(&BackupRetention {
            keep_daily: 5000,
            keep_weekly: 0,
            keep_monthly: 0
        })
        .is_err());
        validate_retention(&BackupRetention::default()).unwrap();
    }
}
