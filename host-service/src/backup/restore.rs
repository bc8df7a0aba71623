//! `taos-host restore`: a backup back into an empty data dir, for a new board or a wiped card.
//!
//! The snapshot is chosen (the one asked for, else the newest the host made) and checked
//! before anything is written: a snapshot from a newer database schema is refused, since this
//! binary could not open what it would restore. restic restores it into a folder inside the
//! data dir, its parts are moved into place, and the database is opened (migrated forward if
//! it is older) to settle what moved: archives' folders now live under the new data dir, and
//! the run that made the snapshot is recorded as succeeded. A restore that fails part-way
//! empties the data dir again, so it can simply be run again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::restic::{Repository, Restic, ResticError, Snapshot};
use super::stage::{Manifest, StagedContainer, CONTAINERS_DIR, MANIFEST_FILE, MANIFEST_FORMAT};
use super::{BACKUP_DIR, SCHEMA_TAG_PREFIX, STAGE_NAME, TAG};
use crate::fsutil;

/// The folder inside the data dir restic restores into before the parts move into place.
const RESTORE_DIR: &str = ".restore";
/// `taos-host setup --restore-from`: the agents' containers wait here (in the backup module's
/// private folder) until setup has provisioned the runtime, with the list of them in
/// [`DEFERRED_LIST`]; a setup run again finds them and imports them then.
pub const DEFERRED_DIR: &str = "restored-containers";
const DEFERRED_LIST: &str = "containers.json";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "{0} is not empty: restore only writes into an empty (or missing) data dir; move it \
         away or pass another --data-dir"
    )]
    NotEmpty(PathBuf),
    #[error("cannot read the password file {path}: {error}")]
    PasswordFile { path: PathBuf, error: io::Error },
    #[error("{0}")]
    Source(String),
    #[error("the repository holds no taos backup{0}")]
    NoSnapshot(String),
    #[error(
        "snapshot {snapshot} was written by a newer taos (database schema {theirs}; this \
         taos-host knows up to {ours}): install a newer taos-host and restore with it"
    )]
    NewerSchema {
        snapshot: String,
        theirs: i64,
        ours: i64,
    },
    #[error("snapshot {0} is not a taos backup: {1}")]
    NotTaos(String, String),
    #[error(transparent)]
    Restic(#[from] ResticError),
    #[error("file error: {0}")]
    Io(#[from] io::Error),
    #[error("cannot open the restored database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("cannot settle the restored database: {0}")]
    Settle(String),
    #[error("cannot bring the agents' containers back: {0}")]
    Containers(String),
}

/// What to restore, and from where.
pub struct RestoreRequest {
    pub data_dir: PathBuf,
    /// The repository: a folder, `sftp://user@host[:port]/path` (with `ssh_key` and
    /// `known_hosts`), or `s3:<endpoint>/<bucket>` (with `s3_keys`).
    pub from: String,
    /// SFTP: the private key file, and a `known_hosts` file that pins the server's key.
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// S3: the access key id and secret (from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub s3_keys: Option<(String, String)>,
    pub password_file: PathBuf,
    /// A snapshot id or its prefix (restic's short id); `None`: the newest.
    pub snapshot: Option<String>,
    /// Leave the agents' containers for [`import_deferred`] (setup, which provisions the
    /// runtime only after the restore brought back the `taos.toml` it is provisioned with),
    /// instead of importing them now.
    pub defer_containers: bool,
}

/// What was restored.
#[derive(Debug)]
pub struct Restored {
    pub snapshot_id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub schema_version: i64,
    pub old_data_dir: String,
    pub archives_moved: u64,
    /// Agents' containers imported (and started if they were running), or, with
    /// `defer_containers`, left for [`import_deferred`].
    pub containers: usize,
}

/// Restores a backup into an empty data dir.
pub async fn restore(request: &RestoreRequest) -> Result<Restored, RestoreError> {
    let data_dir = &request.data_dir;
    if !is_empty_or_missing(data_dir)? {
        return Err(RestoreError::NotEmpty(data_dir.clone()));
    }
    // Read here so a missing file is named as such, not as restic's "wrong password".
    fs::metadata(&request.password_file).map_err(|error| RestoreError::PasswordFile {
        path: request.password_file.clone(),
        error,
    })?;
    let existed = data_dir.exists();
    fsutil::ensure_private_dir(data_dir)?;
    let result = restore_into(request).await;
    // Cleanup only: restic's temporary files are not part of the host, and a leftover is
    // removed by the next backup run.
    let _ = fs::remove_dir_all(data_dir.join(BACKUP_DIR).join(super::TMP_DIR));
    if result.is_err() {
        // It was empty (or missing) before: what is in it now is this restore's, half done.
        let cleaned = if existed {
            empty_dir(data_dir)
        } else {
            fs::remove_dir_all(data_dir)
        };
        if let Err(e) = cleaned {
            eprintln!(
                "taos-host: cannot empty {} after the failed restore: {e}",
                data_dir.display()
            );
        }
    }
    result
}

async fn restore_into(request: &RestoreRequest) -> Result<Restored, RestoreError> {
    let data_dir = &request.data_dir;
    let private = data_dir.join(BACKUP_DIR);
    let restic = Restic {
        bin: PathBuf::from(super::restic::DEFAULT_BIN),
        repo: repository(request)?,
        password_file: request.password_file.clone(),
        cache_dir: private.join(super::CACHE_DIR),
        tmp_dir: private.join(super::TMP_DIR),
    };
    fsutil::ensure_private_subdir(&restic.cache_dir)?;
    fsutil::ensure_private_subdir(&restic.tmp_dir)?;

    let snapshots = restic.snapshots(&[TAG]).await?;
    let snapshot = choose(&snapshots, request.snapshot.as_deref())?;
    let ours = crate::db::schema_version();
    let theirs = schema_of(snapshot)?;
    if theirs > ours {
        return Err(RestoreError::NewerSchema {
            snapshot: snapshot.short_id.clone(),
            theirs,
            ours,
        });
    }

    let target = data_dir.join(RESTORE_DIR);
    fsutil::ensure_private_subdir(&target)?;
    restic.restore(&snapshot.id, &target).await?;
    // Our snapshots hold `taos-data/` at the top; one made from an absolute path by hand
    // holds every folder of it.
    let root = match snapshot.paths.first() {
        Some(path) if !target.join(STAGE_NAME).exists() => {
            target.join(path.trim_start_matches('/'))
        }
        _ => target.join(STAGE_NAME),
    };
    let manifest: Manifest = fs::read(root.join(MANIFEST_FILE))
        .map_err(|e| format!("no readable {MANIFEST_FILE}: {e}"))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| format!("unreadable {MANIFEST_FILE}: {e}"))
        })
        .map_err(|why| RestoreError::NotTaos(snapshot.short_id.clone(), why))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(RestoreError::NotTaos(
            snapshot.short_id.clone(),
            format!("manifest format {} is unknown", manifest.format),
        ));
    }
    if manifest.schema_version > ours {
        return Err(RestoreError::NewerSchema {
            snapshot: snapshot.short_id.clone(),
            theirs: manifest.schema_version,
            ours,
        });
    }
    for entry in fs::read_dir(&root)? {
        let entry = entry?;
        // The containers' tarballs are imported from where restic put them, then removed.
        if entry.file_name() == MANIFEST_FILE || entry.file_name() == CONTAINERS_DIR {
            continue;
        }
        fs::rename(entry.path(), data_dir.join(entry.file_name()))?;
    }
    fsutil::sync_dir(data_dir)?;

    let db = crate::db::open(data_dir).await?;
    let settled = async {
        let moved =
            crate::agents::archive::rebase_dirs(&db, Path::new(&manifest.data_dir), data_dir)
                .await
                .map_err(|e| e.to_string())?;
        super::mark_restored(&db, &manifest.run_id, &snapshot.id, snapshot.time)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<u64, String>(moved)
    }
    .await;
    db.close().await;
    let archives_moved = settled.map_err(RestoreError::Settle)?;
    let containers = manifest.containers.len();
    if !manifest.containers.is_empty() && request.defer_containers {
        let deferred = private.join(DEFERRED_DIR);
        fs::rename(root.join(CONTAINERS_DIR), &deferred)?;
        let list = serde_json::to_vec(&manifest.containers)
            .map_err(|e| RestoreError::Settle(e.to_string()))?;
        // Written last: the list's presence says the tarballs are all there.
        fsutil::write_atomic(&deferred.join(DEFERRED_LIST), &list)?;
    } else if !manifest.containers.is_empty() {
        import_containers(data_dir, &root.join(CONTAINERS_DIR), &manifest.containers).await?;
    }
    fs::remove_dir_all(&target)?;
    Ok(Restored {
        snapshot_id: snapshot.id.clone(),
        time: snapshot.time,
        schema_version: manifest.schema_version,
        old_data_dir: manifest.data_dir,
        archives_moved,
        containers,
    })
}

/// Whether a restore left agents' containers for [`import_deferred`].
pub fn has_deferred(data_dir: &Path) -> bool {
    data_dir
        .join(BACKUP_DIR)
        .join(DEFERRED_DIR)
        .join(DEFERRED_LIST)
        .is_file()
}

/// Imports the agents' containers a `defer_containers` restore left, into the runtime the
/// restored `taos.toml` names, and removes their tarballs. Returns how many. A failure
/// (say, an existing container of one's name) removes what it imported and keeps the
/// tarballs, so it can run again.
pub async fn import_deferred(data_dir: &Path) -> Result<usize, RestoreError> {
    let dir = data_dir.join(BACKUP_DIR).join(DEFERRED_DIR);
    let list: Vec<StagedContainer> = match fs::read(dir.join(DEFERRED_LIST)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RestoreError::Containers(format!("unreadable {DEFERRED_LIST}: {e}")))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    import_containers(data_dir, &dir, &list).await?;
    fs::remove_dir_all(&dir)?;
    Ok(list.len())
}

/// The agents' containers back into the runtime the restored `taos.toml` names (its agents'
/// profile and networks made first, as a host's first start would).
async fn import_containers(
    data_dir: &Path,
    dir: &Path,
    containers: &[StagedContainer],
) -> Result<(), RestoreError> {
    let failed = |why: String| RestoreError::Containers(why);
    let config = crate::config::load_or_init(data_dir).map_err(|e| failed(e.to_string()))?;
    let detected = crate::runtime::detect(&config.runtime).await;
    let Some(rt) = detected.runtime else {
        return Err(failed(format!(
            "the backup holds {} agent container(s) and {}",
            containers.len(),
            detected.description
        )));
    };
    match &rt {
        crate::runtime::ContainerRuntime::Incus(incus) => {
            crate::isolation::prepare_incus_now(incus, &config.runtime)
                .await
                .map_err(failed)?;
        }
        // The agents' networks the containers are created on (a fresh Docker has none).
        crate::runtime::ContainerRuntime::Docker(docker) => {
            docker
                .prepare_agent_networks()
                .await
                .map_err(|e| failed(format!("cannot make the agents' Docker networks: {e}")))?;
        }
    }
    super::containers::import_all(&rt, dir, containers)
        .await
        .map_err(failed)
}

/// restic's repository for `--from` and the files or keys that go with it.
fn repository(request: &RestoreRequest) -> Result<Repository, RestoreError> {
    let from = request.from.as_str();
    if from.starts_with("sftp:") {
        let (Some(key), Some(known_hosts)) = (&request.ssh_key, &request.known_hosts) else {
            return Err(RestoreError::Source(
                "an SFTP repository needs --ssh-key (the private key file) and --known-hosts \
                 (a known_hosts file with the server's host key)"
                    .into(),
            ));
        };
        for file in [key, known_hosts] {
            fs::metadata(file).map_err(|e| {
                RestoreError::Source(format!("cannot read {}: {e}", file.display()))
            })?;
        }
        let (user, host, port, path) =
            super::remote::parse_sftp_url(from).map_err(|e| RestoreError::Source(e.to_string()))?;
        return super::remote::sftp_repository(&host, port, &user, &path, key, known_hosts)
            .map_err(|e| RestoreError::Source(e.to_string()));
    }
    if let Some(rest) = from.strip_prefix("s3:") {
        let Some((id, secret)) = &request.s3_keys else {
            return Err(RestoreError::Source(
                "an S3 repository needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                 environment"
                    .into(),
            ));
        };
        let (endpoint, bucket) = rest
            .trim_end_matches('/')
            .rsplit_once('/')
            .filter(|(endpoint, _)| endpoint.contains("://"))
            .ok_or_else(|| {
                RestoreError::Source(format!(
                    "{from:?} is not an S3 location: use s3:https://host[:port]/bucket"
                ))
            })?;
        return Ok(super::remote::s3_repository(endpoint, bucket, id, secret));
    }
    Ok(Repository {
        location: from.to_string(),
        env: Vec::new(),
        options: Vec::new(),
    })
}

/// The snapshot asked for (by id or id prefix), else the newest.
pub(crate) fn choose<'a>(
    snapshots: &'a [Snapshot],
    wanted: Option<&str>,
) -> Result<&'a Snapshot, RestoreError> {
    match wanted {
        Some(prefix) => {
            let found: Vec<&Snapshot> = snapshots
                .iter()
                .filter(|s| !prefix.is_empty() && s.id.starts_with(prefix))
                .collect();
            match found.as_slice() {
                [one] => Ok(one),
                [] => Err(RestoreError::NoSnapshot(format!(" with id {prefix}"))),
                _ => Err(RestoreError::NoSnapshot(format!(
                    " with exactly one id starting {prefix} ({} match)",
                    found.len()
                ))),
            }
        }
        None => snapshots
            .iter()
            .max_by_key(|s| s.time)
            .ok_or_else(|| RestoreError::NoSnapshot(String::new())),
    }
}

/// The schema a snapshot's `taos-schema-<n>` tag names.
fn schema_of(snapshot: &Snapshot) -> Result<i64, RestoreError> {
    snapshot
        .tags
        .iter()
        .find_map(|t| t.strip_prefix(SCHEMA_TAG_PREFIX))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            RestoreError::NotTaos(
                snapshot.short_id.clone(),
                format!("it has no {SCHEMA_TAG_PREFIX}<n> tag"),
            )
        })
}

fn is_empty_or_missing(dir: &Path) -> io::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, secs: i64, tags: &[&str]) -> Snapshot {
        Snapshot {
            id: id.into(),
            short_id: id[..4].into(),
            time: chrono::DateTime::from_timestamp(secs, 0).unwrap(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            paths: Vec::new(),
            hostname: "taos".into(),
        }
    }

    #[test]
    fn the_newest_or_the_named_snapshot_is_chosen() {
        let all = [
            snapshot("aaaa1111", 10, &["taos"]),
            snapshot("bbbb2222", 30, &["taos"]),
            snapshot("aaab3333", 20, &["taos"]),
        ];
        assert_eq!(choose(&all, None).unwrap().id, "bbbb2222");
        assert_eq!(choose(&all, Some("aaab")).unwrap().id, "aaab3333");
        assert!(choose(&all, Some("aaa")).is_err(), "ambiguous");
        assert!(choose(&all, Some("cccc")).is_err());
        assert!(choose(&all, Some("")).is_err());
        assert!(choose(&[], None).is_err());
    }

    #[test]
    fn the_schema_comes_from_the_tag() {
        assert_eq!(
            schema_of(&snapshot("aaaa", 1, &["taos", "taos-schema-13"])).unwrap(),
            13
        );
        assert!(schema_of(&snapshot("aaaa", 1, &["taos"])).is_err());
    }
}
