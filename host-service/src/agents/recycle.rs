//! The recycle bin inside agents: listing, restoring and purging what an agent's `rm` moved to
//! `/var/recycle-bin`, through the runtime's exec with argv (the image's helper does the file
//! work; ids are validated here first).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::agents::AgentHost;
use crate::agents::{self, AgentRecord};
use crate::runtime::Runtime;

const HELPER: &str = "/usr/local/lib/taos/recycle";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RecycleError {
    #[error("no such agent")]
    NoAgent,
    #[error("no such item in the recycle bin")]
    NoItem,
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no container runtime")]
    NoRuntime,
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    /// The image's helper failed, in its own words.
    #[error("{0}")]
    Helper(String),
}

pub use taos_proto::agents::{RecycleItem, RecycleList, RecycleState};

fn valid_id(id: &str) -> Result<(), RecycleError> {
    let ok = !id.is_empty()
        && id.len() <= 80
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RecycleError::BadInput("invalid item id".into()))
    }
}

async fn container_agent(
    host: &AgentHost,
    slug: &str,
) -> Result<(AgentRecord, String), RecycleError> {
    let agent = agents::get_by_slug(&host.db, slug)
        .await
        .map_err(|_| RecycleError::NoAgent)?;
    let container = agent
        .container
        .clone()
        .ok_or_else(|| RecycleError::Conflict(format!("{slug} is not a container agent")))?;
    Ok((agent, container))
}

async fn run(
    host: &AgentHost,
    container: &str,
    argv: &[&str],
) -> Result<crate::runtime::ExecResult, RecycleError> {
    let rt = host.runtime.as_ref().ok_or(RecycleError::NoRuntime)?;
    Ok(rt.exec(container, argv, &BTreeMap::new(), TIMEOUT).await?)
}

async fn online(host: &AgentHost, container: &str) -> bool {
    match host.runtime.as_ref() {
        Some(rt) => rt
            .state(container)
            .await
            .map(|s| s.running)
            .unwrap_or(false),
        None => false,
    }
}

/// One agent's bin; an agent whose container isn't running is reported as offline.
pub async fn list(host: &AgentHost, slug: &str) -> Result<RecycleList, RecycleError> {
    let (agent, container) = container_agent(host, slug).await?;
    if !online(host, &container).await {
        return Ok(RecycleList {
            agent: agent.slug,
            items: Vec::new(),
            status: RecycleState::ContainerOffline,
        });
    }
    let out = run(host, &container, &[HELPER, "list"]).await?;
    if out.exit_code != 0 {
        return Err(RecycleError::Helper(format!(
            "recycle list failed: {}",
            out.stderr.trim()
        )));
    }
    let items = out
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| RecycleItem {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            original_path: STANDARD
                .decode(v["path_b64"].as_str().unwrap_or_default())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            deleted_at: v["deleted_at"].as_str().unwrap_or_default().to_string(),
            size_bytes: v["size_bytes"].as_u64().unwrap_or(0),
        })
        .collect();
    Ok(RecycleList {
        agent: agent.slug,
        items,
        status: RecycleState::Ok,
    })
}

/// Every container agent's bin.
pub async fn list_all(host: &AgentHost) -> Result<Vec<RecycleList>, RecycleError> {
    let mut all = Vec::new();
    for agent in agents::list(&host.db).await? {
        if agent.container.is_some() && agent.status != taos_proto::agents::AgentStatus::Deploying {
            all.push(list(host, &agent.slug).await?);
        }
    }
    Ok(all)
}

/// Where a restore may write: the agent's home, its service data and temporary files. The
/// restore runs as the container's root while the bin is writable by the agent's sandboxed
/// service, so a forged record must never reach system paths (`/etc`, `/usr`, unit files).
pub const RESTORE_ROOTS: &[&str] = &["/root", "/home", "/srv", "/tmp"];

/// Checks a recorded original path before anything is restored to it: absolute, no NUL, no
/// `..`, `.` or empty components, under one of [`RESTORE_ROOTS`] (and not the root itself).
/// Other bytes are legal in file names (a name may end in a newline) and stay allowed. The image's helper checks the same, and
/// also refuses links anywhere on the way, which only it can see.
pub fn check_restore_target(path: &str) -> Result<(), RecycleError> {
    let refuse = |why: &str| {
        Err(RecycleError::BadInput(format!(
            "refusing to restore to {path:?}: {why}"
        )))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return refuse("not an absolute path");
    };
    if path.len() > 4096 || path.contains('\0') {
        return refuse("not a usable path");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return refuse("empty, `.` or `..` components");
    }
    let root = format!("/{}", parts[0]);
    if parts.len() < 2 || !RESTORE_ROOTS.contains(&root.as_str()) {
        return refuse("only paths under /root, /home, /srv and /tmp are restored");
    }
    Ok(())
}

/// Puts an item back where it was; 409 if something is there now, 400 if its recorded path is
/// outside the allowed roots or leads through a link.
pub async fn restore(host: &AgentHost, slug: &str, id: &str) -> Result<(), RecycleError> {
    valid_id(id)?;
    let (_, container) = container_agent(host, slug).await?;
    if !online(host, &container).await {
        return Err(RecycleError::Conflict(
            "the agent's container is not running".into(),
        ));
    }
    let shown = run(host, &container, &[HELPER, "show", id]).await?;
    match shown.exit_code {
        0 => {}
        3 => return Err(RecycleError::NoItem),
        2 => return Err(RecycleError::BadInput(shown.stderr.trim().to_string())),
        _ => {
            return Err(RecycleError::Helper(format!(
                "recycle show failed: {}",
                shown.stderr.trim()
            )))
        }
    }
    let record: serde_json::Value = serde_json::from_str(shown.stdout.trim())
        .map_err(|_| RecycleError::BadInput("the item's record is unreadable".into()))?;
    let bytes = STANDARD
        .decode(record["path_b64"].as_str().unwrap_or_default())
        .map_err(|_| RecycleError::BadInput("the item's record has no usable path".into()))?;
    let path = String::from_utf8(bytes).map_err(|_| {
        RecycleError::BadInput("the item's path is not UTF-8; restore it by hand".into())
    })?;
    check_restore_target(&path)?;
    let out = run(host, &container, &[HELPER, "restore", id, &path]).await?;
    match out.exit_code {
        0 => Ok(()),
        2 => Err(RecycleError::BadInput(out.stderr.trim().to_string())),
        3 => Err(RecycleError::NoItem),
        17 => Err(RecycleError::Conflict(out.stderr.trim().to_string())),
        _ => Err(RecycleError::Helper(format!(
            "restore failed: {}",
            out.stderr.trim()
        ))),
    }
}

/// Deletes an item for good.
pub async fn purge(host: &AgentHost, slug: &str, id: &str) -> Result<(), RecycleError> {
    valid_id(id)?;
    let (_, container) = container_agent(host, slug).await?;
    if !online(host, &container).await {
        return Err(RecycleError::Conflict(
            "the agent's container is not running".into(),
        ));
    }
    let out = run(host, &container, &[HELPER, "purge", id]).await?;
    match out.exit_code {
        0 => Ok(()),
        3 => Err(RecycleError::NoItem),
        _ => Err(RecycleError::Helper(format!(
            "purge failed: {}",
            out.stderr.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_the_roots_are_restored() {
        for ok in [
            "/root/notes.txt",
            "/root/nl\n_",
            "/srv/app/data.db",
            "/tmp/x",
        ] {
            assert!(check_restore_target(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "etc/passwd",
            "/etc/cron.d/x",
            "/usr/local/sbin/journalctl",
            "/var/recycle-bin/a",
            "/root",
            "/root/",
            "/root/../etc/shadow",
            "/root/./x",
            "/root//x",
            "/tmpx/y",
            "/root/a\0b",
            "",
        ] {
            assert!(
                matches!(check_restore_target(bad), Err(RecycleError::BadInput(_))),
                "{bad:?}"
            );
        }
    }
}
