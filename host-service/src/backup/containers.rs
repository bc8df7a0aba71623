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
//!
//! Exports give way to people chatting. Reading a container's file system off the storage
//! pool queues disk reads that every durable chat commit (an fsync) then waits behind: while
//! incus reads, a few percent of chat posts take 3-5 ms instead of 1. Nothing the host can
//! set makes those reads cheaper (throttling them only spreads the same number of slow
//! commits over a longer time; see docs/benchmarks.md), so while people chat the exports run
//! a tenth of the time: after each one, the next waits [`YIELD_FACTOR`] times as long as it
//! took, or until chat has been quiet for [`CONVERSATION_GAP`]. A post meets an export a
//! tenth as often; a backup while people chat takes up to ten times as long in its export
//! phase; a backup at night doesn't wait. Only people's posts count ([`ChatActivity`]): an
//! agent talking without a break can't hold backups back.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use taos_proto::agents::AgentStatus;
use taos_proto::backup::BackupPhase;

use super::stage::{StagedContainer, CONTAINERS_DIR};
use crate::agents::AgentHost;
use crate::chat::hub::ChatActivity;
use crate::fsutil;
use crate::runtime::{ContainerRuntime, Runtime, RuntimeError};

/// How long one container's export or import may take (an SD card reads ~20 MB/s).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// While people chat, exports take at most one part in `YIELD_FACTOR + 1` of the time.
const YIELD_FACTOR: u32 = 9;

/// Chat is going on if it was written within this long: people in a conversation post a
/// few times a minute, and each of their posts should meet an export as rarely as a flood's.
const CONVERSATION_GAP: Duration = Duration::from_secs(60);

/// The longest wait after one export, however long it took.
const MAX_YIELD: Duration = Duration::from_secs(600);

/// Whether people are chatting: a person posted less than [`CONVERSATION_GAP`] ago.
fn chat_going_on(activity: &ChatActivity) -> bool {
    activity
        .last()
        .is_some_and(|last| last + CONVERSATION_GAP > Instant::now())
}

/// After an export that took `took`: while chat goes on, waits for `YIELD_FACTOR` times as
/// long, or until chat has been quiet for [`CONVERSATION_GAP`] (see the module docs).
/// Returns how long it waited.
async fn give_way_to_chat(activity: &ChatActivity, took: Duration) -> Duration {
    let began = Instant::now();
    let deadline = began + (took * YIELD_FACTOR).min(MAX_YIELD);
    loop {
        let now = Instant::now();
        let quiet_at = match activity.last() {
            Some(last) => last + CONVERSATION_GAP,
            None => return now - began,
        };
        if quiet_at <= now || deadline <= now {
            return now - began;
        }
        tokio::time::sleep_until(quiet_at.min(deadline)).await;
    }
}

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
/// `progress` hears of the pauses for chat (and of the exports going on after each).
pub async fn stage<F: std::future::Future<Output = ()>>(
    host: &AgentHost,
    stage: &Path,
    chat: &ChatActivity,
    progress: impl Fn(BackupPhase) -> F,
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
    let mut last_export: Option<Duration> = None;
    for (agent, container) in with_containers {
        if let Some(took) = last_export.take() {
            if chat_going_on(chat) {
                progress(BackupPhase::PausedForChat).await;
                let waited = give_way_to_chat(chat, took).await;
                tracing::info!(
                    waited_ms = waited.as_millis() as u64,
                    "the backup gave way to chat before its next export"
                );
                progress(BackupPhase::Containers).await;
            }
        }
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
        let started = Instant::now();
        let bytes = rt
            .export_container(&container, &dir.join(&file), TRANSFER_TIMEOUT)
            .await
            .map_err(|error| ContainerBackupError::Export {
                slug: agent.slug.clone(),
                container: container.clone(),
                error,
            })?;
        last_export = Some(started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Chat written every 10 s for `for_how_long`, as people in a conversation would.
    fn chatting(activity: &ChatActivity, for_how_long: Duration) -> tokio::task::JoinHandle<()> {
        let activity = activity.clone();
        tokio::spawn(async move {
            let until = Instant::now() + for_how_long;
            while Instant::now() < until {
                activity.touch();
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_conversation_going_on_the_next_export_starts_at_once() {
        let never = ChatActivity::default();
        assert_eq!(
            give_way_to_chat(&never, Duration::from_secs(2)).await,
            Duration::ZERO
        );
        let activity = ChatActivity::default();
        activity.touch();
        tokio::time::sleep(CONVERSATION_GAP).await;
        assert_eq!(
            give_way_to_chat(&activity, Duration::from_secs(2)).await,
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_conversation_holds_the_next_export_back_for_nine_times_the_last() {
        let activity = ChatActivity::default();
        let chat = chatting(&activity, Duration::from_secs(600));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waited = give_way_to_chat(&activity, Duration::from_secs(2)).await;
        assert_eq!(waited.as_secs(), 18, "{waited:?}");
        chat.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_conversation_ends_the_wait() {
        let activity = ChatActivity::default();
        let chat = chatting(&activity, Duration::from_secs(25));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The last post is at 20 s; a quiet minute later (80 s) the wait ends, before 9 × 10 s.
        let waited = give_way_to_chat(&activity, Duration::from_secs(10)).await;
        assert_eq!(waited.as_secs(), 79, "{waited:?}");
        chat.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_export_waits_at_most_the_cap() {
        let activity = ChatActivity::default();
        let chat = chatting(&activity, Duration::from_secs(7200));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waited = give_way_to_chat(&activity, Duration::from_secs(3600)).await;
        assert_eq!(waited, MAX_YIELD);
        chat.abort();
    }
}
