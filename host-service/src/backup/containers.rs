//! Agents' containers in a backup: each container agent's container exported through the
//! runtime into the staged folder's `containers/`, one uncompressed tarball each (an incus
//! backup, or under Docker the container committed to an image and `docker save`d), and
//! imported again by a restore, by the runtime that exported it.
//!
//! Why files in the staged folder and not `restic backup --stdin` per container: one snapshot
//! then holds the whole host as it was at one moment (database, chats and the containers that
//! go with them), so retention, restore and drills deal with one snapshot, not a set that may
//! be incomplete. Memory stays bounded either way: the export is streamed to the file one HTTP
//! frame at a time, and restic reads files in chunks. The cost is disk: the staged tarball
//! needs as much free space in the data dir as the container uses (removed after the run).
//! Tarballs are uncompressed so restic's content-defined chunks of unchanged files repeat from
//! one run to the next and deduplicate; restic compresses what it stores.

use std::path::Path;
use std::time::Duration;

use taos_proto::agents::AgentStatus;

use super::stage::{StagedContainer, CONTAINERS_DIR};
use crate::agents::AgentHost;
use crate::fsutil;
use crate::runtime::{ContainerRuntime, Runtime, RuntimeError};

/// How long one container's export or import may take (an SD card reads ~20 MB/s).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ContainerBackupError {
    #[error("cannot export agent {slug}'s container {container}: {error}")]
    Export {
        slug: String,
        container: String,
        error: RuntimeError,
    },
    #[error("cannot list the agents: {0}")]
    Agents(String),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

/// What staging the containers gave: the ones in the snapshot, and what was left out, in
/// words (the run succeeds with these as warnings: the rest of the host is still worth having).
#[derive(Debug, Default)]
pub struct StagedContainers {
    pub containers: Vec<StagedContainer>,
    pub warnings: Vec<String>,
}

/// Exports every container agent's container into `<stage>/containers/`. A container that
/// exists and can't be exported fails the run (the owner must know); agents whose container is
/// gone, or on a host without a runtime, are left out with a warning.
pub async fn stage(
    host: &AgentHost,
    stage: &Path,
) -> Result<StagedContainers, ContainerBackupError> {
    let agents = crate::agents::list(&host.db)
        .await
        .map_err(|e| ContainerBackupError::Agents(e.to_string()))?;
    let mut out = StagedContainers::default();
    // Archived containers moved into the repository are there already (their own snapshot).
    let moved = crate::agents::archive::moved_agents(&host.db)
        .await
        .map_err(|e| ContainerBackupError::Agents(e.to_string()))?;
    let with_containers: Vec<_> = agents
        .into_iter()
        .filter(|a| !moved.contains(&a.id.to_string()))
        .filter_map(|a| a.container.clone().map(|c| (a, c)))
        .collect();
    if with_containers.is_empty() {
        return Ok(out);
    }
    let Some(rt) = host.runtime.as_ref() else {
        out.warnings.push(format!(
            "{} agent container(s) were not backed up: the host has no container runtime \
             (see /api/health)",
            with_containers.len()
        ));
        return Ok(out);
    };
    let dir = stage.join(CONTAINERS_DIR);
    fsutil::ensure_private_subdir(&dir)?;
    for (agent, container) in with_containers {
        if agent.status == AgentStatus::Deploying {
            out.warnings.push(format!(
                "agent {}'s container was not backed up: it was still being deployed",
                agent.slug
            ));
            continue;
        }
        let state = match rt.state(&container).await {
            Ok(state) => state,
            Err(RuntimeError::NotFound(_)) => {
                out.warnings.push(format!(
                    "agent {}'s container {container} was not backed up: it no longer exists",
                    agent.slug
                ));
                continue;
            }
            Err(error) => {
                return Err(ContainerBackupError::Export {
                    slug: agent.slug,
                    container,
                    error,
                })
            }
        };
        let file = format!("{container}.tar");
        let bytes = rt
            .export_container(&container, &dir.join(&file), TRANSFER_TIMEOUT)
            .await
            .map_err(|error| ContainerBackupError::Export {
                slug: agent.slug.clone(),
                container: container.clone(),
                error,
            })?;
        tracing::info!(agent = %agent.slug, %container, bytes, running = state.running, "exported the container for the backup");
        let service = crate::agents::deploy::service_of(&agent);
        out.containers.push(StagedContainer {
            agent_id: agent.id.to_string(),
            slug: agent.slug,
            container,
            file,
            bytes,
            running: state.running,
            service,
            runtime: rt.kind().to_string(),
        });
    }
    Ok(out)
}

/// Imports the containers of a restored backup (`dir` holds their files) under their own
/// names, starting those that were running. Every name is checked free first, so a clash
/// changes nothing. On a failure, the containers this call made are deleted again.
pub async fn import_all(
    rt: &ContainerRuntime,
    dir: &Path,
    containers: &[StagedContainer],
) -> Result<(), String> {
    for c in containers {
        crate::runtime::validate_name("container name", &c.container).map_err(|e| e.to_string())?;
        if c.runtime != rt.kind() {
            return Err(format!(
                "agent {}'s container was exported by {} and this host runs {}: only {} can \
                 import it (install it, or restore onto a host that has it)",
                c.slug,
                c.runtime,
                rt.kind(),
                c.runtime
            ));
        }
        if c.file != format!("{}.tar", c.container) {
            return Err(format!(
                "the manifest names an unexpected file {:?}",
                c.file
            ));
        }
        match rt.exists(&c.container).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(format!(
                    "a container named {} already exists in {}: restoring would replace it; \
                     delete it (`{} rm {}`) or restore on a fresh runtime",
                    c.container,
                    rt.kind(),
                    rt.kind(),
                    c.container
                ))
            }
            Err(e) => return Err(format!("cannot ask the runtime about {}: {e}", c.container)),
        }
    }
    let mut made: Vec<&str> = Vec::new();
    let mut result = Ok(());
    for c in containers {
        let step = async {
            rt.import_container(&dir.join(&c.file), &c.container, TRANSFER_TIMEOUT)
                .await
                .map_err(|e| format!("cannot import agent {}'s container: {e}", c.slug))?;
            made.push(&c.container);
            if c.running {
                rt.start(&c.container)
                    .await
                    .map_err(|e| format!("cannot start agent {}'s container: {e}", c.slug))?;
            }
            Ok::<(), String>(())
        };
        if let Err(e) = step.await {
            result = Err(e);
            break;
        }
    }
    if result.is_err() {
        for name in made {
            let _ = rt.stop(name, true).await;
            if let Err(e) = rt.delete(name).await {
                tracing::warn!(container = name, error = %e, "cannot remove a container a failed restore imported");
            }
        }
    }
    result
}
