//! Container runtimes behind one trait: what the host needs from incus, or Docker as a fallback.
//!
//! Names and paths are validated here, before they reach a URL or a runtime, so nothing a
//! caller passes can address another instance or escape a query string.

pub mod docker;
pub mod firewall;
pub mod incus;
pub mod netpolicy;

use crate::config::{RuntimeConfig, RuntimeKind};

use std::collections::BTreeMap;
use std::time::Duration;

use taos_proto::agents::AgentNetwork;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime can't do this at all (Docker: snapshot restore, live env, proxy devices).
    #[error("{what} is not supported by the {runtime} runtime")]
    Unsupported {
        what: &'static str,
        runtime: &'static str,
    },
    #[error("no such container or snapshot: {0}")]
    NotFound(String),
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    /// The runtime refused, with its own message.
    #[error("{runtime}: {message}")]
    Refused {
        runtime: &'static str,
        message: String,
    },
    #[error("cannot reach the container runtime: {0}")]
    Unreachable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Resource limits for a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_mib: Option<u64>,
    pub cpus: Option<u32>,
    pub processes: Option<u32>,
}

/// A device attached to a container.
#[derive(Debug, Clone, PartialEq)]
pub enum Device {
    /// A TCP port inside the container forwarded to the host (`bind=instance`): how agents reach
    /// host services on loopback without the host ever dialling a container.
    Proxy {
        name: String,
        listen: String,
        connect: String,
    },
    /// A host directory mounted inside. `shift` maps ownership so container root can write it
    /// without being host root.
    Disk {
        name: String,
        source: String,
        path: String,
        readonly: bool,
        shift: bool,
    },
}

impl Device {
    pub fn name(&self) -> &str {
        match self {
            Device::Proxy { name, .. } | Device::Disk { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateSpec {
    pub name: String,
    /// An image alias known to the runtime.
    pub image: String,
    pub limits: Limits,
    /// Root disk quota. Enforced on a btrfs (or zfs) pool; a `dir` pool ignores it.
    pub root_disk_mib: Option<u64>,
    pub env: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    /// `Some` for an agent: the agents' profile (incus) or hardened settings (Docker), on the
    /// network for this choice. `None`: the runtime's defaults (tests and tools).
    pub network: Option<AgentNetwork>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    /// The runtime's word, e.g. `Running`, `Stopped`.
    pub status: String,
    pub running: bool,
    pub disk_used_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Everything the host asks of a container runtime.
#[allow(async_fn_in_trait)] // used with concrete types, never as `dyn`
pub trait Runtime: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn create(&self, spec: &CreateSpec) -> Result<(), RuntimeError>;
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Graceful (the container's init gets to shut down) or forced.
    async fn stop(&self, name: &str, force: bool) -> Result<(), RuntimeError>;
    async fn delete(&self, name: &str) -> Result<(), RuntimeError>;
    async fn rename(&self, name: &str, new_name: &str) -> Result<(), RuntimeError>;
    async fn exists(&self, name: &str) -> Result<bool, RuntimeError>;
    async fn state(&self, name: &str) -> Result<ContainerState, RuntimeError>;
    async fn exec(
        &self,
        name: &str,
        argv: &[&str],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;
    async fn push_file(
        &self,
        name: &str,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), RuntimeError>;
    async fn pull_file(&self, name: &str, path: &str) -> Result<Vec<u8>, RuntimeError>;
    async fn snapshot_create(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError>;
    async fn snapshot_list(&self, name: &str) -> Result<Vec<String>, RuntimeError>;
    async fn snapshot_restore(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError>;
    async fn snapshot_delete(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError>;
    async fn set_env(&self, name: &str, key: &str, value: &str) -> Result<(), RuntimeError>;
    async fn add_device(&self, name: &str, device: &Device) -> Result<(), RuntimeError>;
    async fn remove_device(&self, name: &str, device: &str) -> Result<(), RuntimeError>;
}

/// The runtime the host uses. An enum rather than `dyn Runtime`: the trait's async methods
/// are not object-safe, and there are exactly two runtimes.
pub enum ContainerRuntime {
    Incus(incus::Incus),
    Docker(docker::Docker),
}

macro_rules! delegate {
    ($self:ident, $rt:ident => $call:expr) => {
        match $self {
            ContainerRuntime::Incus($rt) => $call,
            ContainerRuntime::Docker($rt) => $call,
        }
    };
}

impl Runtime for ContainerRuntime {
    fn kind(&self) -> &'static str {
        delegate!(self, rt => rt.kind())
    }
    async fn create(&self, spec: &CreateSpec) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.create(spec).await)
    }
    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.start(name).await)
    }
    async fn stop(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.stop(name, force).await)
    }
    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.delete(name).await)
    }
    async fn rename(&self, name: &str, new_name: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.rename(name, new_name).await)
    }
    async fn exists(&self, name: &str) -> Result<bool, RuntimeError> {
        delegate!(self, rt => rt.exists(name).await)
    }
    async fn state(&self, name: &str) -> Result<ContainerState, RuntimeError> {
        delegate!(self, rt => rt.state(name).await)
    }
    async fn exec(
        &self,
        name: &str,
        argv: &[&str],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        delegate!(self, rt => rt.exec(name, argv, env, timeout).await)
    }
    async fn push_file(
        &self,
        name: &str,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.push_file(name, path, contents, mode).await)
    }
    async fn pull_file(&self, name: &str, path: &str) -> Result<Vec<u8>, RuntimeError> {
        delegate!(self, rt => rt.pull_file(name, path).await)
    }
    async fn snapshot_create(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.snapshot_create(name, snapshot).await)
    }
    async fn snapshot_list(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        delegate!(self, rt => rt.snapshot_list(name).await)
    }
    async fn snapshot_restore(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.snapshot_restore(name, snapshot).await)
    }
    async fn snapshot_delete(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.snapshot_delete(name, snapshot).await)
    }
    async fn set_env(&self, name: &str, key: &str, value: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.set_env(name, key, value).await)
    }
    async fn add_device(&self, name: &str, device: &Device) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.add_device(name, device).await)
    }
    async fn remove_device(&self, name: &str, device: &str) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.remove_device(name, device).await)
    }
}

impl ContainerRuntime {
    /// Exports a container (live, if it is running) into a new file at `to`, for a backup.
    /// Docker: `docker commit` + `docker save` of the container (paused for the commit).
    pub async fn export_container(
        &self,
        name: &str,
        to: &std::path::Path,
        timeout: Duration,
    ) -> Result<u64, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.export_to_file(name, to, timeout).await,
            ContainerRuntime::Docker(rt) => rt.export_to_file(name, to, timeout).await,
        }
    }

    /// Makes container `name` (stopped) from a file `export_container` wrote.
    pub async fn import_container(
        &self,
        from: &std::path::Path,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.import_from_file(from, name, timeout).await,
            ContainerRuntime::Docker(rt) => rt.import_from_file(from, name, timeout).await,
        }
    }

    /// Whether agents reach the host through proxy devices inside their containers (incus)
    /// or through the bridge gateway (Docker).
    pub fn has_proxy_devices(&self) -> bool {
        matches!(self, ContainerRuntime::Incus(_))
    }

    /// The host uid that container root maps to, for owning the trace folder.
    pub async fn root_host_uid(&self, name: &str) -> Result<Option<u32>, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.root_host_uid(name).await,
            ContainerRuntime::Docker(rt) => rt.root_host_uid().await,
        }
    }

    /// What agents' root disks live on, e.g. `btrfs`, `dir`, `docker/overlay2`.
    pub async fn storage_driver(&self) -> Result<String, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.pool_driver().await,
            ContainerRuntime::Docker(rt) => Ok(format!("docker/{}", rt.storage_driver().await?)),
        }
    }

    /// Free and total bytes where agents' root disks live, and that place in words: the incus
    /// pool, or the filesystem of Docker's data root (read on this machine, so a Docker
    /// daemon elsewhere is an error that says so).
    pub async fn storage_space(&self) -> Result<(u64, u64, String), RuntimeError> {
        let driver = self.storage_driver().await?;
        match self {
            ContainerRuntime::Incus(rt) => {
                let (free, total) = rt.pool_space().await?;
                Ok((
                    free,
                    total,
                    format!("incus storage pool {:?} ({driver})", rt.pool_name()),
                ))
            }
            ContainerRuntime::Docker(rt) => {
                let root = rt.data_root().await?;
                let (free, total) = crate::sys::filesystem_space(std::path::Path::new(&root))
                    .map_err(|e| RuntimeError::Refused {
                        runtime: "docker",
                        message: format!(
                            "cannot read the free space at {root} on this machine: {e}"
                        ),
                    })?;
                Ok((free, total, format!("Docker's data root {root} ({driver})")))
            }
        }
    }

    /// Whether a root disk size is enforced on this storage.
    pub async fn enforces_disk_quota(&self) -> Result<bool, RuntimeError> {
        let driver = self.storage_driver().await?;
        Ok(["btrfs", "zfs", "lvm", "lvmcluster", "ceph"].contains(&driver.as_str()))
    }

    pub async fn set_root_size(&self, name: &str, mib: u64) -> Result<(), RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.set_root_size(name, mib).await,
            ContainerRuntime::Docker(_) => Err(RuntimeError::Unsupported {
                what: "a root disk size",
                runtime: "docker",
            }),
        }
    }

    /// See [`incus::Incus::repair_quota_accounting`]; nothing to repair under Docker.
    pub async fn repair_quota_accounting(&self) {
        if let ContainerRuntime::Incus(rt) = self {
            rt.repair_quota_accounting().await;
        }
    }

    /// Puts an agent's container on the network for its choice (and, under incus, the agent
    /// profile), as at deploy. Returns whether anything changed.
    pub async fn set_agent_network(
        &self,
        name: &str,
        mode: AgentNetwork,
    ) -> Result<bool, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.set_agent_network(name, mode).await,
            ContainerRuntime::Docker(rt) => rt.set_agent_network(name, mode).await,
        }
    }

    /// A container's memory use if it runs (`None` when stopped), as cheaply as the runtime
    /// can say it: incus's state comes from cgroup counters; Docker's `state` would also size
    /// the writable layer, so it asks for the memory alone.
    pub async fn memory_used(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => {
                let state = rt.state(name).await?;
                Ok(state.memory_used_bytes.filter(|_| state.running))
            }
            ContainerRuntime::Docker(rt) => rt.memory_used(name).await,
        }
    }

    /// What counts toward a container's disk use, in bytes.
    pub async fn quota_usage(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        match self {
            ContainerRuntime::Incus(rt) => rt.quota_usage(name).await,
            ContainerRuntime::Docker(rt) => rt.disk_used(name).await,
        }
    }
}

/// The runtime the host uses, and why, decided once at start.
pub struct Detected {
    pub runtime: Option<ContainerRuntime>,
    /// For the log and `/api/health`: `incus 6.0.4`, or why there is none.
    pub description: String,
}

/// Picks the container runtime: as configured, or (for `auto`) incus if its socket answers,
/// else Docker if its socket answers, else none.
pub async fn detect(config: &RuntimeConfig) -> Detected {
    let none = |description: String| Detected {
        runtime: None,
        description,
    };
    let try_incus = || async {
        let target = Some(config.incus_target.trim().to_string()).filter(|t| !t.is_empty());
        let candidate = incus::Incus::new(&config.incus_socket, target, &config.incus_pool);
        if candidate.available().await {
            let version = candidate.version().await.unwrap_or_else(|| "?".into());
            Ok(Detected {
                runtime: Some(ContainerRuntime::Incus(candidate)),
                description: format!("incus {version}"),
            })
        } else {
            Err(format!("incus does not answer on {}", config.incus_socket))
        }
    };
    let try_docker = || async {
        let candidate = docker::Docker::new(&config.docker_socket).map_err(|e| e.to_string())?;
        if candidate.available().await {
            let version = candidate.version().await.unwrap_or_else(|| "?".into());
            // Without user namespace remapping, container root is host root, and an agent
            // could write host-root-owned files (or plant links) in its bind-mounted folder.
            if !candidate.userns_remapped().await {
                return Err(format!(
                    "docker {version} runs without userns-remap, so container root would be host \
                     root; enable it (\"userns-remap\": \"default\" in /etc/docker/daemon.json, as \
                     scripts/dev-docker.sh does)"
                ));
            }
            Ok(Detected {
                runtime: Some(ContainerRuntime::Docker(candidate)),
                description: format!("docker {version} (userns-remap)"),
            })
        } else {
            Err(format!(
                "docker does not answer on {}",
                config.docker_socket
            ))
        }
    };
    const ADVICE: &str =
        "install incus: docs/install.md; `taos-host setup --check` says what is missing";
    match config.kind {
        RuntimeKind::None => none("none (configured)".into()),
        RuntimeKind::Incus => try_incus()
            .await
            .unwrap_or_else(|why| none(format!("no container runtime: {why} ({ADVICE})"))),
        RuntimeKind::Docker => try_docker()
            .await
            .unwrap_or_else(|why| none(format!("no container runtime: {why}"))),
        RuntimeKind::Auto => match try_incus().await {
            Ok(found) => found,
            Err(no_incus) => match try_docker().await {
                Ok(mut found) => {
                    found.description = format!("{} (auto: {no_incus})", found.description);
                    found
                }
                Err(no_docker) => none(format!(
                    "no container runtime: {no_incus}; {no_docker} ({ADVICE})"
                )),
            },
        },
    }
}

/// Container, snapshot and device names: a hostname label (a-z, 0-9, '-', not at the ends),
/// at most 63 characters. This is what incus accepts and what keeps URLs unambiguous.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            what,
            value: name.to_string(),
        })
    }
}

/// Absolute paths inside a container, without `..`, NUL or control characters.
pub fn validate_path(path: &str) -> Result<(), RuntimeError> {
    let ok = path.starts_with('/')
        && path.len() <= 4096
        && !path.chars().any(|c| c.is_control())
        && !path.split('/').any(|part| part == "..");
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            what: "path",
            value: path.to_string(),
        })
    }
}

/// Environment variable names: what a shell would accept.
pub fn validate_env_key(key: &str) -> Result<(), RuntimeError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            what: "environment variable name",
            value: key.to_string(),
        })
    }
}

/// A file as a stream of 64 KiB chunks, one in memory at a time: how a backup's container
/// file goes to a runtime's import (incus's HTTP body, Docker's image load).
pub(crate) fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_keys() {
        assert!(validate_name("container", "taos-helper").is_ok());
        for bad in [
            "",
            "-x",
            "x-",
            "1x",
            "A",
            "a/b",
            "a..b",
            "a b",
            "a%2f",
            &"a".repeat(64),
        ] {
            assert!(validate_name("container", bad).is_err(), "{bad:?}");
        }
        assert!(validate_path("/root/.taos/trace").is_ok());
        for bad in ["relative", "/a/../b", "/a\0b", "/a\nb"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_env_key("TAOS_AGENT_TOKEN").is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(validate_env_key(bad).is_err(), "{bad:?}");
        }
    }
}
