//! Backups: settings (where, how long, the passphrase), runs and their progress events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::text_enum::text_enum;

/// Where backups go, tagged by `kind`: a folder, an SFTP server or an S3-compatible bucket
/// (restic's local, `sftp:` and `s3:` repositories). The secrets an SFTP or S3 destination
/// needs are not part of it: they come in [`BackupCredentials`], are stored sealed and are
/// never returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupDestination {
    /// A folder on this machine, such as a mounted USB disk: an absolute path outside the
    /// data dir. Its parent folder must exist when a backup runs (an unplugged disk's mount
    /// point is then empty, and the backup fails rather than fill the SD card).
    Local { path: String },
    /// A folder on an SFTP server, reached with the `ssh` client as `user@host:port` with the
    /// private key of the credentials, and only if the server shows `host_key`
    /// (`StrictHostKeyChecking=yes` against that pin alone). `host`: a DNS name or IPv4
    /// address (letters, digits, `.`, `-`); `user`: letters, digits, `.`, `_`, `-`; `path`:
    /// absolute, letters, digits and `._-/` only, without `.` or `..` parts.
    Sftp {
        host: String,
        port: u16,
        user: String,
        path: String,
        /// The server's public host key as in `known_hosts` or `ssh-keyscan`:
        /// `ssh-ed25519 AAAA…` (type and base64; a trailing comment is dropped).
        host_key: String,
    },
    /// A bucket of an S3-compatible service: `endpoint` is its base URL (`https://…`, or
    /// `http://…` on a trusted network; no path, query or user), `bucket` an S3 bucket name
    /// (3–63 of `a-z0-9.-`). The access key and secret come in the credentials.
    S3 { endpoint: String, bucket: String },
}

/// The secrets of an SFTP or S3 destination, write-only: sealed like provider keys, given to
/// restic only for a run (a 0600 key file that is removed after it, or restic's environment),
/// never in an answer, argv or the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupCredentials {
    /// An OpenSSH private key without a passphrase (`-----BEGIN OPENSSH PRIVATE KEY-----`…),
    /// whose public half is in the server's `authorized_keys`.
    Sftp { private_key: String },
    S3 {
        access_key_id: String,
        secret_access_key: String,
    },
}

/// When the host backs up by itself. Two plain forms instead of cron syntax: "every night at
/// 03:00" and "every 6 hours" are what people set, and neither can be mistyped into "every
/// minute". Times are UTC (the board's clock zone is not the owner's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupSchedule {
    /// Only on request.
    #[default]
    Off,
    /// Every day at `hour`:`minute` UTC.
    Daily { hour: u8, minute: u8 },
    /// Every `hours` hours (1–168), at the whole hours that are multiples of it counted from
    /// 1970-01-01 00:00 UTC (every 6 hours: 00:00, 06:00, 12:00, 18:00).
    EveryHours { hours: u32 },
}

/// Why a run was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupReason {
    /// Someone asked for it (`POST /api/backups`).
    Manual,
    /// The schedule's time came.
    Scheduled,
    /// The schedule's time passed while the host was off; run once at its next start.
    Missed,
}

text_enum!(BackupReason {
    Manual => "manual",
    Scheduled => "scheduled",
    Missed => "missed",
});

/// How many backups are kept: restic's `forget --keep-daily/--keep-weekly/--keep-monthly`,
/// applied (with a prune) after every successful backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupRetention {
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Default for BackupRetention {
    fn default() -> Self {
        BackupRetention {
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
        }
    }
}

/// `GET /api/backups/settings`. The passphrase is never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupSettings {
    /// False until a destination and passphrase are set; backups can't run before.
    pub configured: bool,
    pub destination: Option<BackupDestination>,
    pub retention: BackupRetention,
    #[serde(default)]
    pub schedule: BackupSchedule,
    /// How often the host runs a restore drill on the newest backup by itself, in days
    /// (0: only on request). Default 7.
    #[serde(default = "default_drill_every_days")]
    pub drill_every_days: u32,
    /// Where archived agents' containers are kept (default `pool`).
    #[serde(default)]
    pub archive_target: ArchiveTarget,
    pub passphrase_set: bool,
    /// True when the SFTP or S3 destination's credentials are stored (never returned).
    #[serde(default)]
    pub credentials_set: bool,
    /// True once a backup opened (or created) the repository with the passphrase; from then
    /// on the passphrase can't be changed for this destination.
    pub repository_ready: bool,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Where archived agents' containers are kept (`archive.target`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ArchiveTarget {
    /// On the container runtime's storage pool, stopped, with their archive snapshot.
    #[default]
    Pool,
    /// Moved into the backup repository by the next successful backup run, and deleted from
    /// the pool (freeing it); restoring the archive brings the container back from there.
    Backup,
}

text_enum!(ArchiveTarget {
    Pool => "pool",
    Backup => "backup",
});

/// Restore drills' default interval: weekly.
pub const DEFAULT_DRILL_EVERY_DAYS: u32 = 7;

fn default_drill_every_days() -> u32 {
    DEFAULT_DRILL_EVERY_DAYS
}

/// `PUT /api/backups/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupSettingsUpdate {
    pub destination: BackupDestination,
    /// The repository passphrase (at least 8 characters). Omitted on the first save, the host
    /// makes a strong one and returns it once. Omitted later, the current one stays.
    #[serde(default)]
    pub passphrase: Option<String>,
    /// Omitted: unchanged (7 daily, 4 weekly, 6 monthly at first).
    #[serde(default)]
    pub retention: Option<BackupRetention>,
    /// Omitted: unchanged (off at first).
    #[serde(default)]
    pub schedule: Option<BackupSchedule>,
    /// Days between automatic restore drills (0–90, 0: only on request). Omitted: unchanged
    /// (7 at first).
    #[serde(default)]
    pub drill_every_days: Option<u32>,
    /// Where archived agents' containers go. Omitted: unchanged (`pool` at first).
    #[serde(default)]
    pub archive_target: Option<ArchiveTarget>,
    /// The SFTP key or S3 keys, of the destination's kind. Required the first time an SFTP
    /// or S3 destination is saved; omitted later for a destination of the same kind, the
    /// stored ones stay. Refused for a folder.
    #[serde(default)]
    pub credentials: Option<BackupCredentials>,
}

/// `POST /api/backups/passphrase`: the repository re-keyed to a new passphrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupPassphraseChange {
    /// The new passphrase (at least 8 characters, not the current one). Omitted, the host
    /// makes a strong one and returns it once.
    #[serde(default)]
    pub passphrase: Option<String>,
}

/// The answer to `PUT /api/backups/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupSettingsSaved {
    pub settings: BackupSettings,
    /// The passphrase the host made, shown this once: write it down (without it the backups
    /// can't be restored). Absent when the caller chose the passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_passphrase: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

text_enum!(BackupState {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// One backup run (`GET /api/backups`, `POST /api/backups`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupRun {
    pub id: String,
    pub state: BackupState,
    pub reason: BackupReason,
    /// Where it went, in words.
    pub destination: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// restic's snapshot id (full hex), once it succeeded.
    pub snapshot_id: Option<String>,
    /// Bytes this run added to the repository (after deduplication and compression).
    pub data_added: Option<u64>,
    /// Bytes and files the snapshot holds.
    pub total_bytes: Option<u64>,
    pub total_files: Option<u64>,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// How many agents' containers the snapshot holds.
    #[serde(default)]
    pub containers: Option<u64>,
    /// What a run that succeeded left out, in words (a container the runtime can't export,
    /// an agent whose container is gone); each also posted as a warning notification.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// What a running backup is doing (`backup.progress` event, `phase` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupPhase {
    /// Copying the database, config, keys, traces and archives into the staging folder.
    Staging,
    /// Exporting the agents' containers through the runtime into the staging folder.
    Containers,
    /// Between two exports, waiting while people chat (an export slows chat's commits): it
    /// goes on when chat has been quiet for a minute, or after nine times the last export.
    PausedForChat,
    /// restic is reading the staged copy and sending new data to the repository.
    Uploading,
    /// Old snapshots forgotten by the retention, unused data pruned, the repository checked.
    Retention,
    /// Archived agents' containers moving into the repository (`archive_target = backup`).
    Archives,
}

text_enum!(BackupPhase {
    Staging => "staging",
    Containers => "containers",
    PausedForChat => "paused_for_chat",
    Uploading => "uploading",
    Retention => "retention",
    Archives => "archives",
});

/// The data of a `backup.progress` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupProgress {
    pub run_id: String,
    pub phase: BackupPhase,
    /// 0.0–1.0 of the upload, as restic reports it (0 outside `uploading`).
    pub percent_done: f64,
    pub bytes_done: u64,
    pub total_bytes: u64,
}

/// `POST /api/backups/agents`: one agent of a backup brought back into this (running) host,
/// with its container, its DM history and its traces, under its old slug or `-2`, `-3`… if
/// that is taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupAgentRestore {
    /// The agent's slug in the backup.
    pub agent: String,
    /// A snapshot id or a prefix of it (hex); omitted: the newest.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// Where a restore drill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DrillState {
    Running,
    /// Every check passed: the backup restores.
    Passed,
    /// A check failed (`error` says which and why); a notification was posted.
    Failed,
}

text_enum!(DrillState {
    Running => "running",
    Passed => "passed",
    Failed => "failed",
});

/// Why a drill was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DrillReason {
    /// `POST /api/backups/drill`.
    Manual,
    /// `drill_every_days` passed since the last drill.
    Scheduled,
}

text_enum!(DrillReason {
    Manual => "manual",
    Scheduled => "scheduled",
});

/// One check of a drill and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrillCheck {
    /// `repository` (restic check with a read of part of the data), `restore` (the snapshot
    /// restored into a throwaway folder), `database` (its integrity and its agents against the
    /// manifest), `container:<name>` (imported into a throwaway incus project and started).
    pub name: String,
    pub ok: bool,
    /// What was checked or why it failed, in words.
    pub detail: String,
}

/// One restore drill (`POST /api/backups/drill`, `GET /api/backups/drills`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupDrill {
    pub id: String,
    pub state: DrillState,
    pub reason: DrillReason,
    /// The snapshot drilled (the newest), once known.
    pub snapshot_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub checks: Vec<DrillCheck>,
    /// Why it failed, in words.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_serde() {
        crate::text_enum::assert_text_matches_serde(BackupState::ALL);
        crate::text_enum::assert_text_matches_serde(ArchiveTarget::ALL);
        crate::text_enum::assert_text_matches_serde(BackupPhase::ALL);
        crate::text_enum::assert_text_matches_serde(BackupReason::ALL);
        crate::text_enum::assert_text_matches_serde(DrillState::ALL);
        crate::text_enum::assert_text_matches_serde(DrillReason::ALL);
    }

    #[test]
    fn destination_is_tagged_by_kind() {
        let d: BackupDestination =
            serde_json::from_str(r#"{"kind": "local", "path": "/mnt/usb"}"#).unwrap();
        assert_eq!(
            d,
            BackupDestination::Local {
                path: "/mnt/usb".into()
            }
        );
        assert!(serde_json::from_str::<BackupDestination>(r#"{"kind": "ftp"}"#).is_err());
    }
}
