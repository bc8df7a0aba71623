//! The Docker runtime, through the Engine API (bollard) on its unix socket: the fallback when
//! incus is not installed.
//!
//! Docker can't do everything incus does. What it lacks answers [`RuntimeError::Unsupported`]:
//! restoring a snapshot in place, changing a container's environment or mounts after create,
//! and proxy devices (agents reach the host through the Docker bridge gateway instead).
//! Snapshots are images committed from the container, labelled with the container's id so they
//! follow it through renames. There is no per-container disk quota on overlay2 over ext4, so a
//! root disk size is recorded by the host but not enforced here.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ExecConfig, HostConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, DownloadFromContainerOptions,
    InspectContainerOptions, InspectNetworkOptions, ListContainersOptions, ListImagesOptions,
    LogsOptions, RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StatsOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use taos_proto::agents::AgentNetwork;

use super::firewall::AgentBridge;
use super::{
    validate_env_key, validate_name, validate_path, ContainerState, CreateSpec, Device, ExecResult,
    Runtime, RuntimeError,
};

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const RUNTIME: &str = "docker";
/// Snapshots are images in this repository, tagged `<container id prefix>-<snapshot>`.
const SNAPSHOT_REPO: &str = "taos-snapshot";
const SNAPSHOT_OF_LABEL: &str = "taos.snapshot.of";
const SNAPSHOT_NAME_LABEL: &str = "taos.snapshot.name";
/// A file pulled out of a container is held in memory; nothing the host reads is this big.
const MAX_PULL_BYTES: usize = 64 * 1024 * 1024;
/// The agents' networks per choice: (Docker network, Linux bridge). No inter-container traffic
/// on any of them (`enable_icc=false`); `none` is internal (no route out at all). What each may
/// reach beyond is the host firewall's business (`firewall.rs`).
const AGENT_NETWORKS: [(AgentNetwork, &str, &str); 3] = [
    (
        AgentNetwork::Internet,
        "taos-agents-internet",
        "taosdk-inet",
    ),
    (AgentNetwork::Lan, "taos-agents-lan", "taosdk-lan"),
    (AgentNetwork::None, "taos-agents-none", "taosdk-none"),
];
/// Held while agent networks are made, so hosts starting together make each one once
/// (Docker 20.10 would otherwise accept two networks with one name).
const NETWORK_LOCK: &str = "/run/taos-agent-networks.lock";
/// Capabilities agent containers keep: the three the image's systemd unit grants the sidecar
/// under incus, so tools mode can start its tools as the unprivileged `agent` account (setuid,
/// setgid) and kill everything they leave behind (kill). Nothing else: root in the container
/// can't read past file modes (no DAC override), so the tools account still can't read the
/// 0600 credentials, and no-new-privileges keeps setuid binaries from giving any back. Other
/// modes drop all three before their first thread (taos-agent's `main`).
const AGENT_CAPS: &[&str] = &["SETUID", "SETGID", "KILL"];

fn network_name(mode: AgentNetwork) -> &'static str {
    AGENT_NETWORKS
        .iter()
        .find(|(m, _, _)| *m == mode)
        .map(|(_, name, _)| *name)
        .unwrap_or("taos-agents-none")
}

/// An exclusive lock on a file, released when dropped (flock).
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    #[allow(unsafe_code)]
    fn acquire(path: &str) -> Result<FileLock, RuntimeError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| RuntimeError::Unreachable(format!("{path}: {e}")))?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(RuntimeError::Unreachable(format!(
                "{path}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(FileLock { _file: file })
    }
}

pub struct Docker {
    client: bollard::Docker,
    socket: String,
}

fn refused(e: DockerError) -> RuntimeError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        DockerError::DockerResponseServerError { message, .. } => RuntimeError::Refused {
            runtime: RUNTIME,
            message,
        },
        other => RuntimeError::Unreachable(other.to_string()),
    }
}

fn unsupported(what: &'static str) -> RuntimeError {
    RuntimeError::Unsupported {
        what,
        runtime: RUNTIME,
    }
}

impl Docker {
    pub fn new(socket: &str) -> Result<Docker, RuntimeError> {
        let client = bollard::Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(Docker {
            client,
            socket: socket.to_string(),
        })
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Whether dockerd answers (for runtime auto-detection).
    pub async fn available(&self) -> bool {
        self.client.ping().await.is_ok()
    }

    pub async fn version(&self) -> Option<String> {
        self.client.version().await.ok()?.version
    }

    /// Whether container root is remapped to an unprivileged host uid (`userns-remap`).
    pub async fn userns_remapped(&self) -> bool {
        self.client
            .info()
            .await
            .ok()
            .and_then(|info| info.security_options)
            .is_some_and(|options| options.iter().any(|o| o.contains("name=userns")))
    }

    /// The storage driver, e.g. `overlay2`.
    pub async fn storage_driver(&self) -> Result<String, RuntimeError> {
        let info = self.client.info().await.map_err(refused)?;
        Ok(info.driver.unwrap_or_default())
    }

    /// Where Docker keeps images and containers (`DockerRootDir`), e.g. `/var/lib/docker`.
    pub async fn data_root(&self) -> Result<String, RuntimeError> {
        let info = self.client.info().await.map_err(refused)?;
        info.docker_root_dir.ok_or_else(|| RuntimeError::Refused {
            runtime: "docker",
            message: "docker did not say where it keeps its data".into(),
        })
    }

    /// Makes the agents' networks if they are missing and returns each one's bridge and
    /// gateway (where the host's agent listener binds for agents on it). A network that exists
    /// with other settings is an error: it can't be changed in place.
    pub async fn prepare_agent_networks(&self) -> Result<Vec<AgentBridge>, RuntimeError> {
        let lock = tokio::task::spawn_blocking(|| FileLock::acquire(NETWORK_LOCK))
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))??;
        let mut bridges = Vec::new();
        for (mode, name, interface) in AGENT_NETWORKS {
            let options = HashMap::from([
                (
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "false".to_string(),
                ),
                (
                    "com.docker.network.bridge.name".to_string(),
                    interface.to_string(),
                ),
            ]);
            let internal = mode == AgentNetwork::None;
            let network = match self
                .client
                .inspect_network(name, None::<InspectNetworkOptions>)
                .await
            {
                Ok(network) => network,
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    self.client
                        .create_network(NetworkCreateRequest {
                            name: name.to_string(),
                            driver: Some("bridge".into()),
                            internal: Some(internal),
                            enable_ipv6: Some(false),
                            options: Some(options.clone()),
                            labels: Some(HashMap::from([(
                                "taos.managed".to_string(),
                                "true".to_string(),
                            )])),
                            ..Default::default()
                        })
                        .await
                        .map_err(refused)?;
                    self.client
                        .inspect_network(name, None::<InspectNetworkOptions>)
                        .await
                        .map_err(refused)?
                }
                Err(e) => return Err(refused(e)),
            };
            let same = network.internal.unwrap_or(false) == internal
                && options.iter().all(|(k, v)| {
                    network
                        .options
                        .as_ref()
                        .and_then(|o| o.get(k))
                        .is_some_and(|have| have == v)
                });
            if !same {
                return Err(RuntimeError::Refused {
                    runtime: RUNTIME,
                    message: format!(
                        "network {name} exists with other settings (it must be a bridge named \
                         {interface}, enable_icc=false{}); remove it: docker network rm {name}",
                        if internal { ", internal" } else { "" }
                    ),
                });
            }
            let gateway = network
                .ipam
                .and_then(|ipam| ipam.config)
                .into_iter()
                .flatten()
                .filter_map(|config| config.gateway)
                .find_map(|gateway| gateway.parse::<std::net::Ipv4Addr>().ok())
                .ok_or_else(|| RuntimeError::Refused {
                    runtime: RUNTIME,
                    message: format!("network {name} has no IPv4 gateway"),
                })?;
            bridges.push(AgentBridge {
                mode,
                interface: interface.to_string(),
                gateway,
            });
        }
        drop(lock);
        Ok(bridges)
    }

    /// Attaches an agent's container to its network choice's network and detaches it from any
    /// other (containers made before agents had their own networks sat on Docker's bridge).
    pub async fn set_agent_network(
        &self,
        name: &str,
        mode: AgentNetwork,
    ) -> Result<bool, RuntimeError> {
        validate_name("container name", name)?;
        let inspect = self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(refused)?;
        let wanted = network_name(mode);
        let attached: Vec<String> = inspect
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default();
        if attached == [wanted] {
            return Ok(false);
        }
        if !attached.iter().any(|n| n == wanted) {
            self.client
                .connect_network(
                    wanted,
                    NetworkConnectRequest {
                        container: name.to_string(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(refused)?;
        }
        for other in attached.iter().filter(|n| n.as_str() != wanted) {
            self.client
                .disconnect_network(
                    other,
                    NetworkDisconnectRequest {
                        container: name.to_string(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(refused)?;
        }
        Ok(true)
    }

    /// The host uid container root runs as: the start of `dockremap`'s subordinate range under
    /// `userns-remap`, else 0 (Docker's default, where container root is host root).
    pub async fn root_host_uid(&self) -> Result<Option<u32>, RuntimeError> {
        if !self.userns_remapped().await {
            return Ok(Some(0));
        }
        let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        Ok(subuid.lines().find_map(|line| {
            let mut parts = line.split(':');
            (parts.next() == Some("dockremap"))
                .then(|| parts.next()?.parse::<u32>().ok())
                .flatten()
        }))
    }

    /// One memory reading of a running container from its cgroup (`stats`, one shot).
    async fn memory_sample(&self, name: &str) -> Option<u64> {
        let mut stats = self.client.stats(
            name,
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        );
        match stats.next().await {
            Some(Ok(sample)) => sample.memory_stats.and_then(|m| m.usage),
            _ => None,
        }
    }

    /// A container's memory if it runs, without `state`'s size of the writable layer (which
    /// Docker computes by walking the layer: too dear for the home screen's periodic sample).
    pub async fn memory_used(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        validate_name("container name", name)?;
        let inspect = self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(refused)?;
        if !inspect.state.and_then(|s| s.running).unwrap_or(false) {
            return Ok(None);
        }
        Ok(self.memory_sample(name).await)
    }

    /// The bytes in the container's writable layer: what the agent itself wrote.
    pub async fn disk_used(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        validate_name("container name", name)?;
        let inspect = self
            .client
            .inspect_container(name, Some(InspectContainerOptions { size: true }))
            .await
            .map_err(refused)?;
        Ok(inspect.size_rw.and_then(|n| u64::try_from(n).ok()))
    }

    /// The last `lines` lines the container's main process wrote, stdout and stderr merged,
    /// with timestamps.
    pub async fn logs(&self, name: &str, lines: u32) -> Result<String, RuntimeError> {
        validate_name("container name", name)?;
        let mut stream = self.client.logs(
            name,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                timestamps: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(
                &chunk.map_err(refused)?.into_bytes(),
            ));
        }
        Ok(text)
    }

    async fn container_id(&self, name: &str) -> Result<String, RuntimeError> {
        let inspect = self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(refused)?;
        inspect
            .id
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }

    fn snapshot_tag(id: &str, snapshot: &str) -> String {
        format!("{}-{snapshot}", &id[..id.len().min(12)])
    }

    /// The snapshot images of a container: (snapshot name, image id).
    async fn snapshots(&self, name: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let id = self.container_id(name).await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{SNAPSHOT_OF_LABEL}={id}")],
        )]);
        let images = self
            .client
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(refused)?;
        let mut found: Vec<(String, String)> = images
            .into_iter()
            .filter_map(|image| {
                let snapshot = image.labels.get(SNAPSHOT_NAME_LABEL)?.clone();
                Some((snapshot, image.id))
            })
            .collect();
        found.sort();
        Ok(found)
    }
}

/// Backups: a container is committed to an image in this repository (tag: the container's
/// name) and that image saved as a tarball; a restore loads it and creates the container again.
const BACKUP_REPO: &str = "taos-backup";
/// On the committed image: what the container was created with beyond the image (its limits
/// and network), as JSON, so a restore creates it through `create` as deploy did.
const BACKUP_SPEC_LABEL: &str = "taos.backup.spec";

/// The container's settings a backup carries (the image config keeps env, command and files).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BackupSpec {
    memory_mib: Option<u64>,
    cpus: Option<u32>,
    processes: Option<u32>,
    network: Option<AgentNetwork>,
}

impl Docker {
    /// Commits container `name` (paused for the moment of the commit, so live) to an image and
    /// saves that image into a new file at `to` (`docker commit` + `docker save`, through the
    /// Engine API); the image is removed again. Returns the bytes written.
    pub async fn export_to_file(
        &self,
        name: &str,
        to: &std::path::Path,
        timeout: Duration,
    ) -> Result<u64, RuntimeError> {
        validate_name("container name", name)?;
        let inspect = self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(refused)?;
        let host = inspect.host_config.unwrap_or_default();
        if host.binds.as_ref().is_some_and(|b| !b.is_empty()) {
            // Agents have none; a bind mount's files live outside the container.
            return Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("container {name} has bind mounts, which a backup cannot carry"),
            });
        }
        let network = host.network_mode.as_deref().and_then(|mode| {
            AGENT_NETWORKS
                .iter()
                .find(|(_, net, _)| *net == mode)
                .map(|(m, _, _)| *m)
        });
        let spec = BackupSpec {
            memory_mib: host
                .memory
                .and_then(|m| u64::try_from(m).ok())
                .filter(|m| *m > 0)
                .map(|m| m / (1024 * 1024)),
            cpus: host
                .nano_cpus
                .filter(|n| *n > 0)
                .and_then(|n| u32::try_from(n / 1_000_000_000).ok()),
            processes: host
                .pids_limit
                .filter(|n| *n > 0)
                .and_then(|n| u32::try_from(n).ok()),
            network,
        };
        let spec = serde_json::to_string(&spec).map_err(|e| RuntimeError::Refused {
            runtime: RUNTIME,
            message: e.to_string(),
        })?;
        let image = format!("{BACKUP_REPO}:{name}");
        self.client
            .commit_container(
                CommitContainerOptions {
                    container: Some(name.to_string()),
                    repo: Some(BACKUP_REPO.to_string()),
                    tag: Some(name.to_string()),
                    pause: true,
                    ..Default::default()
                },
                ContainerConfig {
                    labels: Some(HashMap::from([(BACKUP_SPEC_LABEL.to_string(), spec)])),
                    ..Default::default()
                },
            )
            .await
            .map_err(refused)?;
        let save = async {
            let io = |e: std::io::Error| RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("cannot write {}: {e}", to.display()),
            };
            let mut file = crate::fsutil::StreamedFile::create_new(to).map_err(io)?;
            let mut stream = self.client.export_image(&image);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(refused)?;
                file.write(&chunk).await.map_err(io)?;
            }
            file.finish().await.map_err(io)
        };
        let written = match tokio::time::timeout(timeout, save).await {
            Ok(result) => result,
            Err(_) => Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("saving {image} took longer than {}s", timeout.as_secs()),
            }),
        };
        // The image's layers stay with the container; only the tag goes.
        if let Err(e) = self
            .client
            .remove_image(&image, None::<RemoveImageOptions>, None)
            .await
        {
            tracing::warn!(%image, error = %e, "cannot remove the image a backup committed");
        }
        written
    }

    /// Loads a file `export_to_file` wrote and creates container `name` (stopped) from its
    /// image with the limits and network it had, through `create` as deploy does.
    pub async fn import_from_file(
        &self,
        from: &std::path::Path,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.load_and_create(from, name, timeout, None).await
    }

    /// Makes container `name` (stopped) from a backup's file as [`Self::import_from_file`]
    /// does, but on the `none` agents' network whatever network it had: a restore drill's copy
    /// reaches the host's agent listener and nothing else, as incus's drilled copies are cut off.
    pub async fn import_cut_off(
        &self,
        from: &std::path::Path,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.load_and_create(from, name, timeout, Some(AgentNetwork::None))
            .await
    }

    /// Containers whose names start with `prefix` (drills left by a host that died mid-drill).
    pub async fn containers_with_prefix(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        let containers = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "name".to_string(),
                    vec![prefix.to_string()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(refused)?;
        // Docker's name filter matches anywhere in the name: keep the true prefixes.
        Ok(containers
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .filter_map(|n| n.strip_prefix('/').map(str::to_string))
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    async fn load_and_create(
        &self,
        from: &std::path::Path,
        name: &str,
        timeout: Duration,
        network: Option<AgentNetwork>,
    ) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        let file = tokio::fs::File::open(from)
            .await
            .map_err(|e| RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("cannot read {}: {e}", from.display()),
            })?;
        let chunks = super::file_chunks(file);
        let load = async {
            let mut images = Vec::new();
            let mut progress = self.client.import_image_stream(
                bollard::query_parameters::ImportImageOptions {
                    quiet: true,
                    ..Default::default()
                },
                chunks,
                None,
            );
            while let Some(info) = progress.next().await {
                let info = info.map_err(refused)?;
                // "Loaded image: taos-backup:<name>"
                if let Some(loaded) = info
                    .stream
                    .as_deref()
                    .and_then(|s| s.trim().strip_prefix("Loaded image: "))
                {
                    images.push(loaded.to_string());
                }
            }
            Ok::<Vec<String>, RuntimeError>(images)
        };
        let images =
            tokio::time::timeout(timeout, load)
                .await
                .map_err(|_| RuntimeError::Refused {
                    runtime: RUNTIME,
                    message: format!(
                        "loading {} took longer than {}s",
                        from.display(),
                        timeout.as_secs()
                    ),
                })??;
        let [image] = images.as_slice() else {
            return Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!(
                    "{} held {} images, not the one a backup saves",
                    from.display(),
                    images.len()
                ),
            });
        };
        let inspect = self.client.inspect_image(image).await.map_err(refused)?;
        let spec: BackupSpec = inspect
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(BACKUP_SPEC_LABEL).cloned())
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("{image} is not a container saved by a taos backup"),
            })?;
        self.create(&CreateSpec {
            name: name.to_string(),
            image: image.clone(),
            limits: super::Limits {
                memory_mib: spec.memory_mib,
                cpus: spec.cpus,
                processes: spec.processes,
            },
            root_disk_mib: None,
            // The image's config carries the container's environment.
            env: BTreeMap::new(),
            devices: Vec::new(),
            network: network.or(spec.network),
        })
        // The image stays (the container's base) until `delete` removes the container.
        .await
    }
}

impl Runtime for Docker {
    fn kind(&self) -> &'static str {
        RUNTIME
    }

    async fn create(&self, spec: &CreateSpec) -> Result<(), RuntimeError> {
        validate_name("container name", &spec.name)?;
        let mut binds = Vec::new();
        for device in &spec.devices {
            match device {
                Device::Proxy { .. } => return Err(unsupported("proxy devices")),
                Device::Disk {
                    name,
                    source,
                    path,
                    readonly,
                    ..
                } => {
                    validate_name("device name", name)?;
                    validate_path(path)?;
                    validate_path(source)?;
                    if source.contains(':') || path.contains(':') {
                        return Err(RuntimeError::Invalid {
                            what: "mount path",
                            value: format!("{source}:{path}"),
                        });
                    }
                    let mode = if *readonly { "ro" } else { "rw" };
                    binds.push(format!("{source}:{path}:{mode}"));
                }
            }
        }
        let mut env = Vec::new();
        for (key, value) in &spec.env {
            validate_env_key(key)?;
            env.push(format!("{key}={value}"));
        }
        let mib = |m: u64| i64::try_from(m * 1024 * 1024).unwrap_or(i64::MAX);
        let mut host_config = HostConfig {
            memory: spec.limits.memory_mib.map(mib),
            // No swap beyond the memory limit, as with incus's limits.memory.
            memory_swap: spec.limits.memory_mib.map(mib),
            nano_cpus: spec.limits.cpus.map(|c| i64::from(c) * 1_000_000_000),
            pids_limit: spec.limits.processes.map(i64::from),
            binds: Some(binds),
            // A real init reaps zombies and passes SIGTERM on, as systemd does under incus.
            init: Some(true),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            // Comes back after a dockerd or host restart unless someone stopped it.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        if let Some(mode) = spec.network {
            // An agent: its own network, only `AGENT_CAPS`, no IPv6 (the firewall rules are
            // IPv4; without this a container could still reach the host's link-local address).
            host_config.network_mode = Some(network_name(mode).to_string());
            host_config.cap_drop = Some(vec!["ALL".into()]);
            host_config.cap_add = Some(AGENT_CAPS.iter().map(|c| c.to_string()).collect());
            host_config.sysctls = Some(HashMap::from([
                (
                    "net.ipv6.conf.all.disable_ipv6".to_string(),
                    "1".to_string(),
                ),
                (
                    "net.ipv6.conf.default.disable_ipv6".to_string(),
                    "1".to_string(),
                ),
            ]));
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env),
            labels: Some(HashMap::from([("taos.managed".into(), "true".into())])),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.client
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(refused)?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        match self.client.start_container(name, None).await {
            // 304: already running.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => other.map_err(refused),
        }
    }

    async fn stop(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        let options = StopContainerOptions {
            t: Some(if force { 0 } else { 30 }),
            signal: None,
        };
        match self.client.stop_container(name, Some(options)).await {
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => other.map_err(refused),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        // The container first: if it can't go, its snapshots must stay (an archive would lose
        // the one it is restored from). They are found by the id, which outlives the name.
        let snapshots = self.snapshots(name).await?;
        let base = self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(refused)?
            .image;
        self.client
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(refused)?;
        for (_, image) in snapshots {
            self.client
                .remove_image(
                    &image,
                    Some(RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    }),
                    None,
                )
                .await
                .map_err(refused)?;
        }
        // A container a backup restored has that backup's image as its own: it goes too.
        if let Some(base) = base {
            let restored = self
                .client
                .inspect_image(&base)
                .await
                .ok()
                .and_then(|image| image.config?.labels)
                .is_some_and(|labels| labels.contains_key(BACKUP_SPEC_LABEL));
            if restored {
                self.client
                    .remove_image(&base, None::<RemoveImageOptions>, None)
                    .await
                    .map_err(refused)?;
            }
        }
        Ok(())
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_name("container name", new_name)?;
        self.client
            .rename_container(
                name,
                RenameContainerOptions {
                    name: new_name.to_string(),
                },
            )
            .await
            .map_err(refused)
    }

    async fn exists(&self, name: &str) -> Result<bool, RuntimeError> {
        validate_name("container name", name)?;
        match self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(refused(e)),
        }
    }

    async fn state(&self, name: &str) -> Result<ContainerState, RuntimeError> {
        validate_name("container name", name)?;
        let inspect = self
            .client
            .inspect_container(name, Some(InspectContainerOptions { size: true }))
            .await
            .map_err(refused)?;
        let state = inspect.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let memory_used_bytes = if running {
            self.memory_sample(name).await
        } else {
            None
        };
        Ok(ContainerState {
            status: state
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            running,
            disk_used_bytes: inspect.size_rw.and_then(|n| u64::try_from(n).ok()),
            memory_used_bytes,
        })
    }

    async fn exec(
        &self,
        name: &str,
        argv: &[&str],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        validate_name("container name", name)?;
        if argv.is_empty() {
            return Err(RuntimeError::Invalid {
                what: "command",
                value: String::new(),
            });
        }
        let mut vars = Vec::new();
        for (key, value) in env {
            validate_env_key(key)?;
            vars.push(format!("{key}={value}"));
        }
        let run = async {
            let exec = self
                .client
                .create_exec(
                    name,
                    ExecConfig {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(argv.iter().map(|a| a.to_string()).collect()),
                        env: Some(vars),
                        ..Default::default()
                    },
                )
                .await
                .map_err(refused)?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            if let StartExecResults::Attached { mut output, .. } = self
                .client
                .start_exec(&exec.id, None::<StartExecOptions>)
                .await
                .map_err(refused)?
            {
                while let Some(chunk) = output.next().await {
                    match chunk.map_err(refused)? {
                        LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                        LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                        _ => {}
                    }
                }
            }
            let inspect = self.client.inspect_exec(&exec.id).await.map_err(refused)?;
            Ok(ExecResult {
                exit_code: inspect
                    .exit_code
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(-1),
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Timeout(timeout))?
    }

    async fn push_file(
        &self,
        name: &str,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_path(path)?;
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        if file.is_empty() || file == "." {
            return Err(RuntimeError::Invalid {
                what: "path",
                value: path.to_string(),
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        let mut archive = tar::Builder::new(Vec::new());
        archive
            .append_data(&mut header, file, contents)
            .and_then(|_| archive.finish())
            .map_err(|e| RuntimeError::Invalid {
                what: "file",
                value: e.to_string(),
            })?;
        let bytes = archive.into_inner().map_err(|e| RuntimeError::Invalid {
            what: "file",
            value: e.to_string(),
        })?;
        self.client
            .upload_to_container(
                name,
                Some(UploadToContainerOptions {
                    path: if dir.is_empty() {
                        "/".into()
                    } else {
                        dir.into()
                    },
                    ..Default::default()
                }),
                bollard::body_full(bytes.into()),
            )
            .await
            .map_err(refused)
    }

    async fn pull_file(&self, name: &str, path: &str) -> Result<Vec<u8>, RuntimeError> {
        validate_name("container name", name)?;
        validate_path(path)?;
        let mut stream = self.client.download_from_container(
            name,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let mut tarball = Vec::new();
        while let Some(chunk) = stream.next().await {
            tarball.extend_from_slice(&chunk.map_err(refused)?);
            if tarball.len() > MAX_PULL_BYTES + 1024 * 1024 {
                return Err(RuntimeError::Invalid {
                    what: "file (too large)",
                    value: path.to_string(),
                });
            }
        }
        let mut archive = tar::Archive::new(tarball.as_slice());
        let entries = archive.entries().map_err(|e| RuntimeError::Refused {
            runtime: RUNTIME,
            message: e.to_string(),
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| RuntimeError::Refused {
                runtime: RUNTIME,
                message: e.to_string(),
            })?;
            if entry.header().entry_type().is_file() {
                let mut contents = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut contents).map_err(|e| {
                    RuntimeError::Refused {
                        runtime: RUNTIME,
                        message: e.to_string(),
                    }
                })?;
                return Ok(contents);
            }
        }
        Err(RuntimeError::NotFound(format!(
            "{name}:{path} is not a file"
        )))
    }

    async fn snapshot_create(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_name("snapshot name", snapshot)?;
        let id = self.container_id(name).await?;
        if self
            .snapshots(name)
            .await?
            .iter()
            .any(|(s, _)| s == snapshot)
        {
            return Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("snapshot {snapshot} already exists"),
            });
        }
        let labels = HashMap::from([
            (SNAPSHOT_OF_LABEL.to_string(), id.clone()),
            (SNAPSHOT_NAME_LABEL.to_string(), snapshot.to_string()),
        ]);
        self.client
            .commit_container(
                CommitContainerOptions {
                    container: Some(name.to_string()),
                    repo: Some(SNAPSHOT_REPO.to_string()),
                    tag: Some(Self::snapshot_tag(&id, snapshot)),
                    pause: true,
                    ..Default::default()
                },
                ContainerConfig {
                    labels: Some(labels),
                    ..Default::default()
                },
            )
            .await
            .map_err(refused)?;
        Ok(())
    }

    async fn snapshot_list(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        validate_name("container name", name)?;
        Ok(self
            .snapshots(name)
            .await?
            .into_iter()
            .map(|(snapshot, _)| snapshot)
            .collect())
    }

    async fn snapshot_restore(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_name("snapshot name", snapshot)?;
        Err(unsupported("restoring a snapshot in place"))
    }

    async fn snapshot_delete(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_name("snapshot name", snapshot)?;
        let image = self
            .snapshots(name)
            .await?
            .into_iter()
            .find(|(s, _)| s == snapshot)
            .map(|(_, image)| image)
            .ok_or_else(|| RuntimeError::NotFound(format!("{name}/{snapshot}")))?;
        self.client
            .remove_image(
                &image,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map_err(refused)?;
        Ok(())
    }

    async fn set_env(&self, name: &str, key: &str, _value: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_env_key(key)?;
        Err(unsupported(
            "changing a container's environment after create",
        ))
    }

    async fn add_device(&self, name: &str, device: &Device) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        match device {
            Device::Proxy { .. } => Err(unsupported("proxy devices")),
            Device::Disk { .. } => Err(unsupported("adding a mount after create")),
        }
    }

    async fn remove_device(&self, name: &str, device: &str) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        validate_name("device name", device)?;
        Err(unsupported("removing a mount or device after create"))
    }
}
