//! SFTP and S3-compatible destinations: their fields checked strictly, their credentials
//! checked, and the restic repository each becomes for a run.
//!
//! SFTP goes through restic's sftp backend, which runs the `ssh` client. taos hands it the
//! whole command with `-o sftp.command=…` (restic splits it on spaces, no shell): the private
//! key and a `known_hosts` file holding only the pinned host key are 0600 files inside the
//! data dir for the run, `StrictHostKeyChecking=yes`, no user or system ssh config. Every
//! value in that command is checked here to be made of characters that need no quoting
//! (letters, digits, `._-/:@`), so nothing the owner typed can split into another argument.
//!
//! S3 goes through restic's s3 backend: `s3:<endpoint>/<bucket>`, the keys in restic's
//! environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).

use std::path::Path;

use taos_proto::backup::{BackupCredentials, BackupDestination};

use super::restic::Repository;
use super::BackupError;

const MAX_HOST_CHARS: usize = 253;
const MAX_USER_CHARS: usize = 32;
const MAX_REMOTE_PATH_CHARS: usize = 1024;
const MAX_HOST_KEY_CHARS: usize = 8192;
const MAX_PRIVATE_KEY_BYTES: usize = 16 * 1024;
const MAX_S3_KEY_CHARS: usize = 256;
const MAX_ENDPOINT_CHARS: usize = 2048;
/// Host key types OpenSSH accepts in `known_hosts`.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

fn bad(field: &str, why: &str) -> BackupError {
    BackupError::BadInput(format!("destination {field}: {why}"))
}

/// A DNS name or IPv4 address: letters, digits, `.` and `-`, not starting with `-` or `.`.
pub fn validate_host(host: &str) -> Result<(), BackupError> {
    if host.is_empty() || host.len() > MAX_HOST_CHARS {
        return Err(bad("host", "must be 1 to 253 characters"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        || host.starts_with(['-', '.'])
    {
        return Err(bad(
            "host",
            "must be a DNS name or IPv4 address (letters, digits, `.`, `-`; not starting with \
             `-` or `.`)",
        ));
    }
    Ok(())
}

fn validate_user(user: &str) -> Result<(), BackupError> {
    if user.is_empty()
        || user.len() > MAX_USER_CHARS
        || user.starts_with('-')
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad(
            "user",
            "must be 1 to 32 letters, digits, `.`, `_` or `-`, not starting with `-`",
        ));
    }
    Ok(())
}

/// An absolute path of letters, digits and `._-/`, without `.` or `..` parts.
fn validate_remote_path(path: &str) -> Result<(), BackupError> {
    if !path.starts_with('/') || path.len() < 2 || path.len() > MAX_REMOTE_PATH_CHARS {
        return Err(bad(
            "path",
            "must be an absolute path (starting with /, not / itself), at most 1024 characters",
        ));
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(bad(
            "path",
            "may hold only letters, digits, `.`, `_`, `-` and `/`",
        ));
    }
    if path.split('/').any(|part| part == "." || part == "..") {
        return Err(bad("path", "must not contain `.` or `..`"));
    }
    Ok(())
}

/// `type base64` of a host key, with a trailing comment dropped.
fn host_key_line(host_key: &str) -> Result<String, BackupError> {
    let why = "must be the server's public host key as `ssh-keyscan` prints it after the host \
               name: a key type (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa) and its \
               base64";
    if host_key.len() > MAX_HOST_KEY_CHARS || host_key.contains(['\n', '\r', '\0']) {
        return Err(bad("host_key", why));
    }
    let mut parts = host_key.split_whitespace();
    let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
        return Err(bad("host_key", why));
    };
    let base64 = key.len() >= 16
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !HOST_KEY_TYPES.contains(&kind) || !base64 {
        return Err(bad("host_key", why));
    }
    Ok(format!("{kind} {key}"))
}

fn validate_endpoint(endpoint: &str) -> Result<(), BackupError> {
    let why = "must be the service's base URL, http:// or https:// and a host (and port), \
               without a path, user, query or fragment";
    if endpoint.len() > MAX_ENDPOINT_CHARS {
        return Err(bad("endpoint", why));
    }
    let url = reqwest::Url::parse(endpoint).map_err(|_| bad("endpoint", why))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        // The text itself, not only what the parser made of it.
        && !endpoint.trim_end_matches('/').contains(['@', '?', '#', ' '])
        && endpoint.trim_end_matches('/').matches('/').count() == 2;
    if !plain {
        return Err(bad("endpoint", why));
    }
    Ok(())
}

/// An S3 bucket name: 3–63 of `a-z0-9.-`, starting and ending with a letter or digit.
fn validate_bucket(bucket: &str) -> Result<(), BackupError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(bad(
            "bucket",
            "must be an S3 bucket name: 3 to 63 lowercase letters, digits, `.` or `-`, \
             starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks an SFTP or S3 destination's fields.
pub fn validate(destination: &BackupDestination) -> Result<(), BackupError> {
    match destination {
        BackupDestination::Local { .. } => Ok(()),
        BackupDestination::Sftp {
            host,
            port,
            user,
            path,
            host_key,
        } => {
            validate_host(host)?;
            if *port == 0 {
                return Err(bad("port", "must be 1 to 65535"));
            }
            validate_user(user)?;
            validate_remote_path(path)?;
            host_key_line(host_key).map(|_| ())
        }
        BackupDestination::S3 { endpoint, bucket } => {
            validate_endpoint(endpoint)?;
            validate_bucket(bucket)
        }
    }
}

/// Checks that `credentials` fit `destination` and are well-formed.
pub fn validate_credentials(
    destination: &BackupDestination,
    credentials: &BackupCredentials,
) -> Result<(), BackupError> {
    let bad = |why: &str| BackupError::BadInput(format!("credentials: {why}"));
    match (destination, credentials) {
        (BackupDestination::Local { .. }, _) => Err(bad(
            "a folder destination takes no credentials (they are for SFTP and S3)",
        )),
        (BackupDestination::Sftp { .. }, BackupCredentials::Sftp { private_key }) => {
            let key = private_key.trim();
            if key.len() > MAX_PRIVATE_KEY_BYTES
                || key.contains('\0')
                || !key.starts_with("-----BEGIN ")
                || !key.ends_with("PRIVATE KEY-----")
            {
                return Err(bad(
                    "private_key must be an SSH private key without a passphrase, as \
                     `ssh-keygen` writes it (-----BEGIN OPENSSH PRIVATE KEY----- …)",
                ));
            }
            if key.contains("ENCRYPTED") || key.contains("Proc-Type: 4,ENCRYPTED") {
                return Err(bad(
                    "private_key is protected by a passphrase, which the host can't type: \
                     use a key without one",
                ));
            }
            Ok(())
        }
        (
            BackupDestination::S3 { .. },
            BackupCredentials::S3 {
                access_key_id,
                secret_access_key,
            },
        ) => {
            let plain = |v: &str| {
                !v.is_empty()
                    && v.len() <= MAX_S3_KEY_CHARS
                    && v.chars().all(|c| c.is_ascii_graphic())
            };
            if !plain(access_key_id) || !plain(secret_access_key) {
                return Err(bad(
                    "access_key_id and secret_access_key must be 1 to 256 printable characters \
                     without spaces",
                ));
            }
            Ok(())
        }
        (BackupDestination::Sftp { .. }, _) => Err(bad(
            "an SFTP destination takes SFTP credentials ({\"kind\": \"sftp\", \"private_key\": …})",
        )),
        (BackupDestination::S3 { .. }, _) => Err(bad(
            "an S3 destination takes S3 credentials ({\"kind\": \"s3\", \"access_key_id\": …, \
             \"secret_access_key\": …})",
        )),
    }
}

/// The lines of a `known_hosts` file pinning `host_key` for `host:port`.
pub fn known_hosts(host: &str, port: u16, host_key: &str) -> Result<String, BackupError> {
    let line = host_key_line(host_key)?;
    Ok(if port == 22 {
        format!("{host} {line}\n")
    } else {
        format!("[{host}]:{port} {line}\n")
    })
}

/// restic's SFTP repository: `ssh` with only the given key and the pinned host key, no
/// config, no prompts. `key_file` and `known_hosts_file` must be paths without spaces or
/// quotes (restic splits the command on them); the caller's paths are checked here.
pub fn sftp_repository(
    host: &str,
    port: u16,
    user: &str,
    path: &str,
    key_file: &Path,
    known_hosts_file: &Path,
) -> Result<Repository, BackupError> {
    validate_host(host)?;
    validate_user(user)?;
    validate_remote_path(path)?;
    let plain = |p: &Path| -> Result<String, BackupError> {
        let text = p.to_str().unwrap_or("");
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'))
        {
            return Err(BackupError::Unreachable {
                path: format!("sftp:{user}@{host}:{path}"),
                why: format!(
                    "the file {} can't be handed to ssh through restic: its path must hold \
                     only letters, digits and `._-/+` (move the data dir)",
                    p.display()
                ),
            });
        }
        Ok(text.to_string())
    };
    let key = plain(key_file)?;
    let pinned = plain(known_hosts_file)?;
    let command = [
        "ssh".to_string(),
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={pinned}"),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "PasswordAuthentication=no".into(),
        "-i".into(),
        key,
        "-p".into(),
        port.to_string(),
        "-l".into(),
        user.into(),
        "-s".into(),
        host.into(),
        "sftp".into(),
    ]
    .join(" ");
    Ok(Repository {
        location: format!("sftp:{user}@{host}:{path}"),
        env: Vec::new(),
        options: vec![format!("sftp.command={command}")],
    })
}

/// restic's S3 repository, the keys in its environment only.
pub fn s3_repository(
    endpoint: &str,
    bucket: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> Repository {
    Repository {
        location: format!("s3:{}/{bucket}", endpoint.trim_end_matches('/')),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), access_key_id.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret_access_key.into()),
        ],
        options: Vec::new(),
    }
}

/// Parses `sftp://user@host[:port]/path` (the form `taos-host restore --from` takes).
pub fn parse_sftp_url(from: &str) -> Result<(String, String, u16, String), BackupError> {
    let bad = || {
        BackupError::BadInput(format!(
            "{from:?} is not an SFTP location: use sftp://user@host[:port]/absolute/path"
        ))
    };
    let url = reqwest::Url::parse(from).map_err(|_| bad())?;
    if url.scheme() != "sftp" || url.password().is_some() || url.query().is_some() {
        return Err(bad());
    }
    let host = url.host_str().ok_or_else(bad)?.to_string();
    let user = url.username().to_string();
    let path = url.path().to_string();
    validate_host(&host)?;
    validate_user(&user)?;
    validate_remote_path(&path)?;
    Ok((user, host, url.port().unwrap_or(22), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sftp(host: &str, port: u16, user: &str, path: &str, key: &str) -> BackupDestination {
        BackupDestination::Sftp {
            host: host.into(),
            port,
            user: user.into(),
            path: path.into(),
            host_key: key.into(),
        }
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn sftp_fields_are_strict() {
        validate(&sftp("backup.example.org", 22, "taos", "/srv/taos", KEY)).unwrap();
        validate(&sftp(
            "127.0.0.1",
            2222,
            "root",
            "/tmp/x-1/repo",
            &format!("{KEY} me@box"),
        ))
        .unwrap();
        for (host, port, user, path, key) in [
            ("-oProxyCommand=x", 22, "u", "/p", KEY),
            ("host name", 22, "u", "/p", KEY),
            ("h;rm", 22, "u", "/p", KEY),
            ("h", 0, "u", "/p", KEY),
            ("h", 22, "-l", "/p", KEY),
            ("h", 22, "u u", "/p", KEY),
            ("h", 22, "u", "relative", KEY),
            ("h", 22, "u", "/", KEY),
            ("h", 22, "u", "/a/../b", KEY),
            ("h", 22, "u", "/a b", KEY),
            ("h", 22, "u", "/a'b", KEY),
            ("h", 22, "u", "/p", ""),
            ("h", 22, "u", "/p", "ssh-dss AAAAB3NzaC1kc3MAAACBAP"),
            ("h", 22, "u", "/p", "ssh-ed25519 not$base64!!!!!!!!!!!"),
            ("h", 22, "u", "/p", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\nAAAA"),
        ] {
            assert!(
                validate(&sftp(host, port, user, path, key)).is_err(),
                "{host} {port} {user} {path} {key}"
            );
        }
    }

    #[test]
    fn s3_fields_are_strict() {
        let s3 = |endpoint: &str, bucket: &str| BackupDestination::S3 {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
        };
        validate(&s3("https://s3.example.org", "taos-backups")).unwrap();
        validate(&s3("http://127.0.0.1:9000/", "b.c-d")).unwrap();
        for (endpoint, bucket) in [
            ("ftp://h", "bucket"),
            ("https://u:p@h", "bucket"),
            ("https://h/path", "bucket"),
            ("https://h?x=1", "bucket"),
            ("h:9000", "bucket"),
            ("https://h", "ab"),
            ("https://h", "Upper"),
            ("https://h", "-dash"),
            ("https://h", "a/b"),
        ] {
            assert!(
                validate(&s3(endpoint, bucket)).is_err(),
                "{endpoint} {bucket}"
            );
        }
    }

    #[test]
    fn the_ssh_command_holds_only_checked_words() {
        let repo = sftp_repository(
            "127.0.0.1",
            2222,
            "root",
            "/srv/repo",
            Path::new("/data/backup/sftp-key"),
            Path::new("/data/backup/known_hosts"),
        )
        .unwrap();
        assert_eq!(repo.location, "sftp:root@127.0.0.1:/srv/repo");
        let command = repo.options[0].strip_prefix("sftp.command=").unwrap();
        assert!(command.contains("StrictHostKeyChecking=yes"));
        assert!(command.ends_with("-s 127.0.0.1 sftp"));
        assert!(sftp_repository(
            "h",
            22,
            "u",
            "/p",
            Path::new("/my data/key"),
            Path::new("/k")
        )
        .is_err());
        assert_eq!(
            known_hosts("h", 2222, &format!("{KEY} comment")).unwrap(),
            format!("[h]:2222 {KEY}\n")
        );
        assert_eq!(
            parse_sftp_url("sftp://root@127.0.0.1:2222/srv/repo").unwrap(),
            ("root".into(), "127.0.0.1".into(), 2222, "/srv/repo".into())
        );
        assert!(parse_sftp_url("sftp://-oX@h/p").is_err());
    }
}
