//! Lifecycle actions on a live agent: start, stop, restart, pause, resume, and its service's
//! log. The runtime is asked first and the database after, so a refused runtime call changes
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use taos_proto::agents::AgentStatus;

use crate::agents::deploy;
use crate::agents::AgentHost;
use crate::agents::{self, AgentRecord};
use crate::runtime::ContainerRuntime;
use crate::runtime::{Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no such agent")]
    NoAgent,
    #[error("{0}")]
    Conflict(String),
    #[error("no container runtime: install incus (scripts/dev-incus.sh)")]
    NoRuntime,
    /// The runtime failed.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// The runtime can't do this at all.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<RuntimeError> for LifecycleError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unsupported { .. } => LifecycleError::Unsupported(e.to_string()),
            e => LifecycleError::Runtime(e),
        }
    }
}

fn runtime(host: &AgentHost) -> Result<&ContainerRuntime, LifecycleError> {
    host.runtime.as_ref().ok_or(LifecycleError::NoRuntime)
}

/// Lifecycle actions on a live agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

/// The runtime calls an action makes on a container that is (not) running now. Asking for
/// the state a container is already in makes no call: it is a no-op, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuntimeCalls {
    stop: bool,
    start: bool,
}

fn runtime_calls(action: Action, running: bool) -> RuntimeCalls {
    match action {
        Action::Start | Action::Resume => RuntimeCalls {
            stop: false,
            start: !running,
        },
        Action::Stop | Action::Pause => RuntimeCalls {
            stop: running,
            start: false,
        },
        Action::Restart => RuntimeCalls {
            stop: running,
            start: true,
        },
    }
}

/// The agent's status once an action succeeded.
fn status_after(action: Action) -> AgentStatus {
    match action {
        Action::Start | Action::Restart | Action::Resume => AgentStatus::Running,
        Action::Stop => AgentStatus::Stopped,
        Action::Pause => AgentStatus::Paused,
    }
}

pub async fn act(
    host: &AgentHost,
    slug: &str,
    action: Action,
) -> Result<AgentRecord, LifecycleError> {
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|e| match e {
            agents::AgentError::NotFound => LifecycleError::NoAgent,
            e => e.into(),
        })?;
    let container = agent.container.clone();
    let needs_container = || {
        container
            .clone()
            .ok_or_else(|| LifecycleError::Conflict(format!("{slug} is not a container agent")))
    };
    // Runtime first, database after: a refused runtime call changes nothing, and asking for
    // the state something is already in is a no-op, not an error.
    let running = match (&container, host.runtime.as_ref()) {
        (Some(name), Some(rt)) => rt.state(name).await.map(|s| s.running).unwrap_or(false),
        _ => false,
    };
    let stop = |name: String| async move {
        let rt = runtime(host)?;
        if rt.stop(&name, false).await.is_err() {
            rt.stop(&name, true).await?;
        }
        Ok::<(), LifecycleError>(())
    };
    let calls = runtime_calls(action, running);
    match action {
        Action::Start | Action::Stop | Action::Restart => {
            let name = needs_container()?;
            if calls.stop {
                stop(name.clone()).await?;
            }
            if calls.start {
                runtime(host)?.start(&name).await?;
            }
            agents::set_status(&host.db, agent.id, status_after(action)).await?;
        }
        Action::Pause | Action::Resume => {
            let paused = action == Action::Pause;
            // Pausing is about deliveries first: an agent without a container (or a host
            // without a runtime) is paused all the same.
            if let (Some(name), Some(rt)) = (&container, host.runtime.as_ref()) {
                if calls.stop {
                    stop(name.clone()).await?;
                } else if calls.start {
                    rt.start(name).await?;
                }
            }
            let patch = taos_proto::agents::AgentPatch {
                paused: Some(paused),
                ..Default::default()
            };
            agents::update(&host.db, slug, &patch).await?;
            if container.is_some() {
                agents::set_status(&host.db, agent.id, status_after(action)).await?;
            }
            if !paused {
                host.bridge.clear_notices(agent.id);
            }
            host.bridge.wake(agent.id);
        }
    }
    Ok(agents::get_by_slug(&host.db, slug).await?)
}

/// The last `lines` lines of the agent service's journal.
pub async fn logs(host: &AgentHost, slug: &str, lines: u32) -> Result<String, LifecycleError> {
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|_| LifecycleError::NoAgent)?;
    let name = agent
        .container
        .clone()
        .ok_or_else(|| LifecycleError::Conflict(format!("{slug} is not a container agent")))?;
    let service = deploy::service_of(&agent);
    let rt = runtime(host)?;
    // Under Docker the service is the container's main process: its log is the container's.
    if let ContainerRuntime::Docker(docker) = rt {
        return Ok(docker.logs(&name, lines).await?);
    }
    let out = rt
        .exec(
            &name,
            &[
                "journalctl",
                "-u",
                &service,
                "-n",
                &lines.to_string(),
                "--no-pager",
                "-o",
                "short-iso",
            ],
            &BTreeMap::new(),
            Duration::from_secs(20),
        )
        .await?;
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_call_the_runtime_only_to_change_something() {
        let calls = |stop, start| RuntimeCalls { stop, start };
        for (action, running, expected) in [
            (Action::Start, false, calls(false, true)),
            (Action::Start, true, calls(false, false)),
            (Action::Stop, true, calls(true, false)),
            (Action::Stop, false, calls(false, false)),
            (Action::Restart, true, calls(true, true)),
            (Action::Restart, false, calls(false, true)),
            (Action::Pause, true, calls(true, false)),
            (Action::Pause, false, calls(false, false)),
            (Action::Resume, false, calls(false, true)),
            (Action::Resume, true, calls(false, false)),
        ] {
            assert_eq!(
                runtime_calls(action, running),
                expected,
                "{action:?}, running: {running}"
            );
        }
    }

    #[test]
    fn each_action_leaves_its_status() {
        assert_eq!(status_after(Action::Start), AgentStatus::Running);
        assert_eq!(status_after(Action::Restart), AgentStatus::Running);
        assert_eq!(status_after(Action::Resume), AgentStatus::Running);
        assert_eq!(status_after(Action::Stop), AgentStatus::Stopped);
        assert_eq!(status_after(Action::Pause), AgentStatus::Paused);
    }
}
