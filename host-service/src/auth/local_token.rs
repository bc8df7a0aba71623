//! The local admin token: `<data>/local-token`, for scripts and the CLI on the host itself.
//! Accepted only from loopback clients, so a leaked copy is useless from the network.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{new_secret, LOCAL_TOKEN_PREFIX};
use crate::fsutil;

pub const LOCAL_TOKEN_FILE: &str = "local-token";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCAL_TOKEN_FILE)
}

/// Reads the token, creating it (0600 from the first byte) on first run.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<String> {
    let path = path(data_dir);
    fsutil::remove_stale_temps(&path);
    let fresh = new_secret(LOCAL_TOKEN_PREFIX);
    match fsutil::create_new_atomic(&path, format!("{fresh}\n").as_bytes()) {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            let token = text.trim().to_string();
            if token.starts_with(LOCAL_TOKEN_PREFIX) && token.len() > LOCAL_TOKEN_PREFIX.len() + 20
            {
                Ok(token)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold a taos local token; delete it to make a new one",
                        path.display()
                    ),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether a client address may use the local token: loopback only, including IPv4 loopback
/// carried in an IPv6 socket (`::ffff:127.0.0.1`).
pub fn is_local_client(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_clients_are_local() {
        for ok in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(is_local_client(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "192.168.1.20",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:192.168.1.20",
            "fe80::1",
            "2001:db8::1",
        ] {
            assert!(!is_local_client(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.starts_with(LOCAL_TOKEN_PREFIX));
        assert_eq!(fsutil::mode_of(&path(dir.path())).unwrap(), 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        std::fs::write(path(dir.path()), "junk").unwrap();
        assert!(load_or_create(dir.path()).is_err());
    }
}
