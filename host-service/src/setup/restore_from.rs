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

/// Checks everything that can be checked without writing: the repository's form (and, for a
/// folder, that it is a restic repository), the passphrase's file, and that the data dir is
/// empty (or missing) and apart from the repository.
pub fn validate(data_dir: &Path, request: &RestoreFrom) -> Result<(), SetupRestoreError> {
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
            if entries.next().is_some() {
                return Err(refused(format!(
                    "the data dir {} is not empty: a restore only writes into an empty (or \
                     missing) data dir, since it brings the whole host back. If it is the one \
                     the package's service made on this new board, stop the service and move \
                     it away first (`systemctl stop taos-host`, `mv {} {}.unused`); or pass \
                     another --data-dir",
                    data_dir.display(),
                    data_dir.display(),
                    data_dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refused(format!("{}: {e}", data_dir.display()))),
    }
    Ok(())
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
    validate(data_dir, request)?;
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

    #[test]
    fn repository_paths_must_be_plain_and_absolute() {
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
            let e = validate(&data, &request(from, Passphrase::File(pass.clone()))).unwrap_err();
            assert!(e.to_string().contains("absolute path"), "{from}: {e}");
        }
    }
}
