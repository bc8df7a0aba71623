//! Read-only btrfs snapshots of the data dir: the board's own backstop between backups
//! (TinyAgentOS ran snapper for this). When the data dir is a btrfs subvolume, the host
//! snapshots it before it migrates the database and every hour, and `taos-host snapshot` takes
//! one on request (the updater calls it before it swaps binaries). A snapshot is atomic, so the
//! database in it is what a power cut at that instant would have left: SQLite recovers that.
//!
//! Snapshots live in `<data dir>/.snapshots/<UTC time>-<why>`, `.snapshots` being a subvolume
//! of its own: a snapshot leaves nested subvolumes out (they show as empty folders), so
//! snapshots never contain older snapshots. Only the data dir's own root decides anything here: nothing an agent can write is
//! read (agents' files live in their containers, not in the data dir).

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

/// The folder, inside the data dir, that holds the snapshots.
pub const SNAPSHOT_DIR: &str = ".snapshots";
const TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%SZ";
/// statfs(2)'s f_type of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INODE: u64 = 256;

/// Whether this data dir can be snapshotted, and if not, why (in words for `setup --check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Support {
    Ready,
    /// The data dir is not on btrfs: nothing to do (the nightly backup is the safety net).
    NotBtrfs,
    /// On btrfs, but the data dir is an ordinary folder: only whole subvolumes snapshot.
    NotSubvolume,
}

impl Support {
    pub fn explain(self) -> &'static str {
        match self {
            Support::Ready => "the data dir is a btrfs subvolume: snapshots are taken",
            Support::NotBtrfs => {
                "the data dir is not on btrfs: no local snapshots (backups still run)"
            }
            Support::NotSubvolume => {
                "the data dir is on btrfs but not a subvolume of its own, so it can't be \
                 snapshotted alone; with the host stopped, move it aside, `btrfs subvolume create` \
                 it and copy it back"
            }
        }
    }
}

/// Why a snapshot was taken; retention keeps each kind apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Before the database was migrated to a newer schema.
    Migration,
    /// Before an update (`taos-host snapshot --reason update`).
    Update,
    Hourly,
    /// `taos-host snapshot` by hand.
    Manual,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Migration => "migration",
            Reason::Update => "update",
            Reason::Hourly => "hourly",
            Reason::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Option<Reason> {
        [
            Reason::Migration,
            Reason::Update,
            Reason::Hourly,
            Reason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// The folder's name in `.snapshots`.
    pub name: String,
    pub reason: Reason,
    pub taken_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot snapshot the data dir: {}", .0.explain())]
    Unsupported(Support),
    #[error("cannot read the data dir {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run btrfs: {0}")]
    Spawn(std::io::Error),
    #[error("btrfs {action} failed: {detail}")]
    Btrfs {
        action: &'static str,
        detail: String,
    },
}

/// Whether `data_dir` is a btrfs subvolume's root (statfs type and inode 256).
pub fn support(data_dir: &Path) -> Result<Support, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let read = |source| SnapshotError::Read {
        path: data_dir.to_path_buf(),
        source,
    };
    // f_type is signed: btrfs's magic reads back as itself on 64-bit and sign-extended on
    // 32-bit boards, so compare the low 32 bits.
    let kind = crate::sys::filesystem_type(data_dir).map_err(read)?;
    if kind & 0xffff_ffff != BTRFS_SUPER_MAGIC {
        return Ok(Support::NotBtrfs);
    }
    let meta = std::fs::metadata(data_dir).map_err(read)?;
    Ok(if meta.ino() == SUBVOLUME_ROOT_INODE {
        Support::Ready
    } else {
        Support::NotSubvolume
    })
}

fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_DIR)
}

/// Takes a read-only snapshot of the data dir now.
pub async fn take(data_dir: &Path, reason: Reason) -> Result<Snapshot, SnapshotError> {
    match support(data_dir)? {
        Support::Ready => {}
        other => return Err(SnapshotError::Unsupported(other)),
    }
    let dir = snapshot_dir(data_dir);
    // A subvolume of its own, so each snapshot of the data dir holds an empty `.snapshots`
    // instead of a folder of (empty) older snapshots.
    if !dir.exists() {
        btrfs(
            "subvolume create",
            &["subvolume".as_ref(), "create".as_ref(), dir.as_os_str()],
        )
        .await?;
    }
    crate::fsutil::ensure_private_subdir(&dir).map_err(|source| SnapshotError::Read {
        path: dir.clone(),
        source,
    })?;
    let name_now = || format!("{}-{}", Utc::now().format(TIME_FORMAT), reason.as_str());
    let mut name = name_now();
    // Two in one second (a migration right after an update's): the later waits its turn.
    while dir.join(&name).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        name = name_now();
    }
    let target = dir.join(&name);
    btrfs(
        "subvolume snapshot",
        &[
            "subvolume".as_ref(),
            "snapshot".as_ref(),
            "-r".as_ref(),
            data_dir.as_os_str(),
            target.as_os_str(),
        ],
    )
    .await?;
    tracing::info!(snapshot = %name, "took a read-only snapshot of the data dir");
    parse_name(&name).ok_or(SnapshotError::Btrfs {
        action: "subvolume snapshot",
        detail: format!("made {name}, which does not parse back"),
    })
}

/// The snapshots there are, oldest first. Names that aren't ours are left alone.
pub fn list(data_dir: &Path) -> Result<Vec<Snapshot>, SnapshotError> {
    let dir = snapshot_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SnapshotError::Read { path: dir, source }),
    };
    let mut out: Vec<Snapshot> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| parse_name(&name))
        .collect();
    out.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

fn parse_name(name: &str) -> Option<Snapshot> {
    // "2026-12-06T02-55-00Z-hourly": the time has a fixed width.
    let (time, reason) = (name.get(..20)?, name.get(21..)?);
    if name.as_bytes().get(20) != Some(&b'-') {
        return None;
    }
    let taken_at = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()?
        .and_utc();
    Some(Snapshot {
        name: name.to_string(),
        reason: Reason::parse(reason)?,
        taken_at,
    })
}

/// How many of each kind to keep; older ones are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub hourly: usize,
    /// Of the snapshots taken before a migration, an update or by hand, each kind.
    pub other: usize,
}

/// The snapshots retention would delete, oldest first: pure, so it is unit-tested.
pub fn to_delete(snapshots: &[Snapshot], keep: Retention) -> Vec<Snapshot> {
    let mut out = Vec::new();
    for reason in [
        Reason::Hourly,
        Reason::Migration,
        Reason::Update,
        Reason::Manual,
    ] {
        let of_kind: Vec<&Snapshot> = snapshots.iter().filter(|s| s.reason == reason).collect();
        let keep_n = if reason == Reason::Hourly {
            keep.hourly
        } else {
            keep.other
        };
        let extra = of_kind.len().saturating_sub(keep_n);
        out.extend(of_kind.into_iter().take(extra).cloned());
    }
    out.sort_by_key(|s| s.taken_at);
    out
}

/// Deletes what retention no longer keeps; returns how many went.
pub async fn prune(data_dir: &Path, keep: Retention) -> Result<usize, SnapshotError> {
    let doomed = to_delete(&list(data_dir)?, keep);
    for s in &doomed {
        let path = snapshot_dir(data_dir).join(&s.name);
        btrfs(
            "subvolume delete",
            &["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()],
        )
        .await?;
    }
    Ok(doomed.len())
}

/// Every hour on the hour: a snapshot, then retention. Runs only where snapshots work; a
/// failure is logged and tried again the next hour (the backup is the safety net that
/// notifies).
pub async fn run_hourly(data_dir: PathBuf, keep: Retention) {
    if keep.hourly == 0 {
        return;
    }
    loop {
        let now = Utc::now().timestamp();
        let next = (now / 3600 + 1) * 3600;
        tokio::time::sleep(std::time::Duration::from_secs((next - now).max(1) as u64)).await;
        match take(&data_dir, Reason::Hourly).await {
            Ok(_) => {
                if let Err(e) = prune(&data_dir, keep).await {
                    tracing::warn!(error = %e, "could not delete old snapshots");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the hourly snapshot failed"),
        }
    }
}

async fn btrfs(action: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), SnapshotError> {
    let out = tokio::process::Command::new("btrfs")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(SnapshotError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(SnapshotError::Btrfs {
        action,
        detail: if detail.is_empty() {
            out.status.to_string()
        } else {
            detail
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str) -> Snapshot {
        parse_name(name).unwrap()
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let s = snap("2026-12-06T02-55-07Z-migration");
        assert_eq!(s.reason, Reason::Migration);
        assert_eq!(s.taken_at.to_rfc3339(), "2026-12-06T02:55:07+00:00");
        for stranger in [
            "notes",
            "2026-12-06T02-55-07Z",
            "2026-12-06T02-55-07Z-weekly",
            "2026-13-06T02-55-07Z-hourly",
            "2026-12-06T02-55-07Zxhourly",
        ] {
            assert!(parse_name(stranger).is_none(), "{stranger}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_of_each_kind() {
        let all: Vec<Snapshot> = [
            "2026-12-06T00-00-00Z-hourly",
            "2026-12-06T00-30-00Z-migration",
            "2026-12-06T01-00-00Z-hourly",
            "2026-12-06T02-00-00Z-hourly",
            "2026-12-06T02-10-00Z-migration",
            "2026-12-06T02-20-00Z-update",
        ]
        .iter()
        .map(|n| snap(n))
        .collect();
        let doomed: Vec<String> = to_delete(
            &all,
            Retention {
                hourly: 2,
                other: 1,
            },
        )
        .into_iter()
        .map(|s| s.name)
        .collect();
        assert_eq!(
            doomed,
            [
                "2026-12-06T00-00-00Z-hourly",
                "2026-12-06T00-30-00Z-migration"
            ]
        );
        assert!(to_delete(
            &all,
            Retention {
                hourly: 9,
                other: 9
            }
        )
        .is_empty());
    }

    #[test]
    fn a_plain_folder_is_not_snapshotted() {
        // The test machine's temp dir is not a btrfs subvolume root.
        let dir = tempfile::tempdir().unwrap();
        assert_ne!(support(dir.path()).unwrap(), Support::Ready);
    }
}
