//! The hosts this app is paired with (non-secret facts only: names, addresses, pins, device
//! ids) and which one is active, in `hosts.json` in the app's data dir. Refresh tokens are in
//! the keychain (see `secrets`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::net::Trust;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedHost {
    /// This app's device id on that host; also how the app names the host.
    pub device_id: String,
    pub host_name: String,
    /// `host:port`, tried in order; the one that answered last goes first.
    pub addresses: Vec<String>,
    pub trust: Trust,
    pub paired_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hosts {
    pub active: Option<String>,
    pub hosts: Vec<PairedHost>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read or write {path}: {reason}")]
    Io { path: String, reason: String },
}

impl Hosts {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("hosts.json")
    }

    /// Reads the file; a missing file is no hosts. A corrupt one is an error rather than a
    /// silent reset, which would forget every pairing.
    pub fn load(data_dir: &Path) -> Result<Hosts, HostsError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HostsError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Hosts::default()),
            Err(e) => Err(HostsError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), HostsError> {
        let path = Self::path(data_dir);
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(&path, &json).map_err(|e| HostsError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn active_host(&self) -> Option<&PairedHost> {
        let id = self.active.as_deref()?;
        self.hosts.iter().find(|h| h.device_id == id)
    }

    /// Adds or replaces a host (by device id) and makes it active.
    pub fn upsert_active(&mut self, host: PairedHost) {
        self.hosts.retain(|h| h.device_id != host.device_id);
        self.active = Some(host.device_id.clone());
        self.hosts.push(host);
    }

    pub fn remove(&mut self, device_id: &str) {
        self.hosts.retain(|h| h.device_id != device_id);
        if self.active.as_deref() == Some(device_id) {
            self.active = self.hosts.first().map(|h| h.device_id.clone());
        }
    }

    /// Moves the address that answered to the front, so the next start tries it first.
    pub fn remember_address(&mut self, device_id: &str, address: &str) -> bool {
        let Some(host) = self.hosts.iter_mut().find(|h| h.device_id == device_id) else {
            return false;
        };
        let Some(at) = host.addresses.iter().position(|a| a == address) else {
            return false;
        };
        if at == 0 {
            return false;
        }
        let address = host.addresses.remove(at);
        host.addresses.insert(0, address);
        true
    }
}

/// Temp file, fsync, rename, fsync the directory; mode 0600 from the first byte.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> PairedHost {
        PairedHost {
            device_id: id.into(),
            host_name: "board".into(),
            addresses: vec!["10.0.0.2:6969".into(), "127.0.0.1:6969".into()],
            trust: Trust::Pinned(taos_pin::SpkiPin([7; 32])),
            paired_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn hosts_persist_atomically_privately_and_keep_one_active() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Hosts::load(dir.path()).unwrap(), Hosts::default());
        let mut hosts = Hosts::default();
        hosts.upsert_active(host("a"));
        hosts.upsert_active(host("b"));
        assert_eq!(hosts.active.as_deref(), Some("b"));
        assert!(hosts.remember_address("b", "127.0.0.1:6969"));
        hosts.save(dir.path()).unwrap();
        let back = Hosts::load(dir.path()).unwrap();
        assert_eq!(back, hosts);
        assert_eq!(back.active_host().unwrap().addresses[0], "127.0.0.1:6969");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(Hosts::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        hosts.remove("b");
        assert_eq!(hosts.active.as_deref(), Some("a"));
        std::fs::write(Hosts::path(dir.path()), b"{broken").unwrap();
        assert!(
            Hosts::load(dir.path()).is_err(),
            "a corrupt file is not a reset"
        );
    }
}
