//! `taos-host setup --restore-from <repository>`: a new board set up as the host a backup holds.
//!
//! The order is fixed by what each part needs. The restore needs an empty data dir and brings
//! the old `taos.toml` (its subnets, ports, runtime), which provisioning must use; the agents'
//! containers need the runtime that provisioning makes. So: every input is checked before
//! anything is written (the repository, the passphrase's file, the data dir), then the backup
//! is restored into the data dir with its containers left aside
//! (`backup::restore::DEFERRED_DIR`), then setup provisions as usual from the restored
//! config, and imports the containers just before it starts the service
//! (`provision::Step::Containers`). A setup that stops after the restore is finished by
//! running `taos-host setup` again (without `--restore-from`: the data dir is the host's now).
//!
//! The passphrase never comes on the command line: a file only its owner can read
//! (`--password-file`, mode 0600 or stricter), or one line on standard input
//! (`--password-stdin`), which is held in a 0600 file of its own for restic, removed after.

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::backup::restore::{self, RestoreError, RestoreRequest, Restored};

/// Where the backup's passphrase comes from.
#[derive(Debug, Clone)]
pub enum Passphrase {
    /// A file readable by its owner only.
    File(PathBuf),
    /// One line on standard input.
    Stdin,
}

/// What `--restore-from` and its companions asked for.
#[derive(Debug, Clone)]
pub struct RestoreFrom {
    /// A folder (absolute path), `sftp://user@host[:port]/path` or `s3:<endpoint>/<bucket>`.
    pub from: String,
    pub passphrase: Passphrase,
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub snapshot: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupRestoreError {
    /// Refused before anything was written; the reason in words.
    #[error("--restore-from: {0}")]
    Refused(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

fn refused(why: impl Into<String>) -> SetupRestoreError {
    SetupRestoreError::Refused(why.into())
}

/// What [`validate`] found in the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    /// Empty or missing: the restore writes into it.
    Empty,
    /// The one the package's service made at its first start on this new board, never used
    /// (see [`USED_TABLES`]): [`set_aside_unused`] stops the service and moves it away first,
    /// since `apt install` then `setup --restore-from` is the path on a new board.
    UnusedFirstStart,
}

/// The tables a host that anyone used has rows in (an owner, a paired device, an agent, a
/// provider, a message, backup settings, an archive); a first start writes none of them.
const USED_TABLES: [&str; 7] = [
    "users",
    "devices",
    "agents",
    "providers",
    "messages",
    "backup_settings",
    "archives",
];

/// Checks everything that can be checked without writing: the repository's form (and, for a
/// folder, that it is a restic repository), the passphrase's file, and that the data dir is
/// empty (or missing), or an unused first start's, and apart from the repository.
pub async fn validate(
    data_dir: &Path,
    request: &RestoreFrom,
) -> Result<DataDir, SetupRestoreError> {
    let from = request.from.as_str();
    let local = !(from.starts_with("sftp:") || from.starts_with("s3:"));
    if local {
        let path = Path::new(from);
        // `Path::components` drops inner `.`s, so the words are checked as written too.
        let dotted = from.split('/').any(|part| part == "." || part == "..");
        if !path.is_absolute()
            || dotted
            || path
                .components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(refused(format!(
                "{from:?}: a folder repository is named by an absolute path without `.` or \
                 `..` (or use sftp://user@host[:port]/path, s3:<endpoint>/<bucket>)"
            )));
        }
        if !path.join("config").is_file() || !path.join("keys").is_dir() {
            return Err(refused(format!(
                "{from} is not a backup repository (no restic `config` and `keys` in it): \
                 name the folder the backups went to"
            )));
        }
        let repo = path
            .canonicalize()
            .map_err(|e| refused(format!("{from}: {e}")))?;
        let data = resolved(data_dir)?;
        if data.starts_with(&repo) || repo.starts_with(&data) {
            return Err(refused(format!(
                "the data dir {} and the repository {from} overlap: restore into a folder \
                 outside the repository",
                data_dir.display()
            )));
        }
    }
    if let Passphrase::File(file) = &request.passphrase {
        let meta = std::fs::metadata(file).map_err(|e| {
            refused(format!(
                "cannot read the password file {}: {e}",
                file.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(refused(format!(
                "the password file {} is not a file",
                file.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refused(format!(
                "the password file {} can be read by others (mode {:o}): `chmod 600` it first",
                file.display(),
                meta.mode() & 0o777
            )));
        }
    }
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(DataDir::Empty);
            }
            match unused_first_start(data_dir).await {
                Ok(()) => Ok(DataDir::UnusedFirstStart),
                Err(why) => Err(refused(format!(
                    "the data dir {} is not empty and {why}: a restore only writes into an \
                     empty (or missing) data dir, or the one the package's service made at its \
                     first start and nobody used, since it brings the whole host back. Move it \
                     away first (`systemctl stop taos-host`, `mv {} {}.old`), or pass another \
                     --data-dir",
                    data_dir.display(),
                    data_dir.display(),
                    data_dir.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DataDir::Empty),
        Err(e) => Err(refused(format!("{}: {e}", data_dir.display()))),
    }
}

/// `Ok` when the data dir's database has no row in any of [`USED_TABLES`]; else why not, in
/// words (no database, one that can't be read, or what it holds).
async fn unused_first_start(data_dir: &Path) -> Result<(), String> {
    use sqlx::{ConnectOptions, Connection};
    let file = crate::db::db_path(data_dir);
    if !file.is_file() {
        return Err(format!("has no {}", crate::db::DB_FILE));
    }
    // Read-only: a check changes nothing, and the service may still be running on it.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| format!("its database can't be read ({e})"))?;
    let mut used = Vec::new();
    for table in USED_TABLES {
        // The names are the constants above, never input.
        let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("its database can't be read ({e})"))?;
        if any {
            used.push(table);
        }
    }
    let _ = conn.close().await;
    if used.is_empty() {
        Ok(())
    } else {
        Err(format!("was used (its database has {})", used.join(", ")))
    }
}

/// Stops the service and moves the unused data dir of its first start (checked again once the
/// service is stopped, so nothing was added meanwhile) to `<data dir>.unused-<unix time>`
/// beside it, which it returns. Nothing in it is needed (a TLS key no app was paired with, a
/// setup code nobody used), but it is moved, not deleted, so nothing is lost unseen.
pub async fn set_aside_unused(data_dir: &Path) -> Result<PathBuf, SetupRestoreError> {
    crate::setup::provision::stop_service().map_err(|e| {
        refused(format!(
            "cannot stop the service to set its data dir aside: {e}"
        ))
    })?;
    unused_first_start(data_dir).await.map_err(|why| {
        refused(format!(
            "the data dir {} {why} once the service was stopped: nothing was moved",
            data_dir.display()
        ))
    })?;
    let mut aside = data_dir.as_os_str().to_owned();
    aside.push(format!(".unused-{}", chrono::Utc::now().timestamp()));
    let aside = PathBuf::from(aside);
    std::fs::rename(data_dir, &aside).map_err(|e| {
        refused(format!(
            "cannot move the unused data dir {} to {}: {e}",
            data_dir.display(),
            aside.display()
        ))
    })?;
    Ok(aside)
}

/// The path with its existing part resolved (symlinks followed), the rest kept.
fn resolved(path: &Path) -> Result<PathBuf, SetupRestoreError> {
    let absolute =
        std::path::absolute(path).map_err(|e| refused(format!("{}: {e}", path.display())))?;
    let mut rest = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// A passphrase read from standard input, in a 0600 file for restic; removed when dropped.
struct StdinPassword(PathBuf);

impl StdinPassword {
    fn read(input: impl BufRead) -> Result<StdinPassword, SetupRestoreError> {
        let mut line = String::new();
        let mut input = input;
        input.read_line(&mut line).map_err(|e| {
            refused(format!(
                "cannot read the passphrase from standard input: {e}"
            ))
        })?;
        let passphrase = line.trim_end_matches(['\n', '\r']);
        if passphrase.is_empty() {
            return Err(refused("no passphrase on standard input (one line)"));
        }
        let path = std::env::temp_dir().join(format!(
            "taos-restore-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                refused(format!(
                    "cannot hold the passphrase in {}: {e}",
                    path.display()
                ))
            })?;
        let held = StdinPassword(path);
        std::io::Write::write_all(&mut file, passphrase.as_bytes())
            .map_err(|e| refused(format!("cannot hold the passphrase: {e}")))?;
        Ok(held)
    }
}

impl Drop for StdinPassword {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Validates, then restores the backup into the data dir, leaving its agents' containers for
/// provisioning to import (`backup::restore::import_deferred`). A restore that fails leaves the
/// data dir as it was (empty, or missing).
pub async fn restore_first(
    data_dir: &Path,
    request: &RestoreFrom,
    s3_keys: Option<(String, String)>,
    stdin: impl BufRead,
) -> Result<Restored, SetupRestoreError> {
    if validate(data_dir, request).await? != DataDir::Empty {
        return Err(refused(format!(
            "the data dir {} is not empty: set the unused one aside first (set_aside_unused)",
            data_dir.display()
        )));
    }
    let held;
    let password_file = match &request.passphrase {
        Passphrase::File(file) => file.clone(),
        Passphrase::Stdin => {
            held = StdinPassword::read(stdin)?;
            held.0.clone()
        }
    };
    Ok(restore::restore(&RestoreRequest {
        data_dir: data_dir.to_path_buf(),
        from: request.from.clone(),
        ssh_key: request.ssh_key.clone(),
        known_hosts: request.known_hosts.clone(),
        s3_keys,
        password_file,
        snapshot: request.snapshot.clone(),
        defer_containers: true,
    })
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: &str, passphrase: Passphrase) -> RestoreFrom {
        RestoreFrom {
            from: from.into(),
            passphrase,
            ssh_key: None,
            known_hosts: None,
            snapshot: None,
        }
    }

    #[test]
    fn a_passphrase_from_stdin_is_held_in_a_private_file_until_dropped() {
        let held = StdinPassword::read("correct horse\n".as_bytes()).unwrap();
        let path = held.0.clone();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "correct horse");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(held);
        assert!(!path.exists());
        assert!(StdinPassword::read("\n".as_bytes()).is_err());
        assert!(StdinPassword::read("".as_bytes()).is_err());
    }

    /// `apt install` starts the service, which makes the data dir; `setup --restore-from` right
    /// after must accept that one, and nothing anyone used.
    #[tokio::test]
    async fn only_an_empty_or_unused_first_start_data_dir_is_restored_into() {
        let temp = tempfile::tempdir().unwrap();
        let repo = temp.path().join("repo");
        std::fs::create_dir_all(repo.join("keys")).unwrap();
        std::fs::write(repo.join("config"), "x").unwrap();
        let pass = temp.path().join("pass");
        std::fs::write(&pass, "x").unwrap();
        std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let req = request(repo.to_str().unwrap(), Passphrase::File(pass));
        let data = temp.path().join("data");
        assert_eq!(validate(&data, &req).await.unwrap(), DataDir::Empty);
        std::fs::create_dir(&data).unwrap();
        assert_eq!(validate(&data, &req).await.unwrap(), DataDir::Empty);

        std::fs::write(data.join("notes"), "x").unwrap();
        let e = validate(&data, &req).await.unwrap_err().to_string();
        assert!(e.contains("has no taos.db"), "{e}");

        // What a first start leaves: a migrated database with nothing anyone added.
        let db = crate::db::open(&data).await.unwrap();
        assert_eq!(
            validate(&data, &req).await.unwrap(),
            DataDir::UnusedFirstStart
        );
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, is_owner, created_at) \
             VALUES ('u', 'owner', 'x', 1, 0)",
        )
        .execute(&db)
        .await
        .unwrap();
        let e = validate(&data, &req).await.unwrap_err().to_string();
        assert!(e.contains("was used (its database has users)"), "{e}");
        db.close().await;
        assert!(data.join("notes").exists(), "a check changes nothing");
    }

    #[tokio::test]
    async fn repository_paths_must_be_plain_and_absolute() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        let pass = temp.path().join("pass");
        std::fs::write(&pass, "x").unwrap();
        std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        for from in [
            "repo",
            "./repo",
            "/tmp/../etc",
            "/tmp/./x",
            "rclone:remote:x",
            "-o=x",
        ] {
            let e = validate(&data, &request(from, Passphrase::File(pass.clone())))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("absolute path"), "{from}: {e}");
        }
    }
}
