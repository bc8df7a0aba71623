//! What the host has free for new agents: available memory and free space where agents' root
//! disks live. The framework picker shows it beside each framework's `requires`, and warns
//! when a framework needs more than there is.

use taos_proto::agents::HostCapacity;

use super::AgentHost;

/// Reads the figures now. Never fails: a figure that can't be read is `None`, and `problems`
/// says why, so the picker can say "unknown" with the reason rather than nothing. Memory is
/// the deploy check's own figure (`deploy::free_memory_bytes`), so the picker never says a
/// framework fits when a deploy of it would be refused.
pub async fn host_capacity(host: &AgentHost) -> HostCapacity {
    let mut problems = Vec::new();
    let available = match host.runtime.as_ref() {
        Some(rt) => match super::deploy::free_memory_bytes(host, rt).await {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "could not count the memory agents have reserved");
                problems.push(format!("memory agents have reserved unknown: {e}"));
                None
            }
        },
        None => crate::sys::memory_available_bytes(),
    };
    let total = crate::sys::memory_total_bytes();
    if available.is_none() || total.is_none() {
        problems.push("the host's memory could not be read from /proc/meminfo".to_string());
    }
    let disk = match host.runtime.as_ref() {
        None => {
            problems.push("no container runtime: agents' storage is unknown".to_string());
            None
        }
        Some(rt) => match rt.storage_space().await {
            Ok(space) => Some(space),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the free space of agents' storage");
                problems.push(format!("free space of agents' storage unknown: {e}"));
                None
            }
        },
    };
    HostCapacity {
        memory_available_bytes: available,
        memory_total_bytes: total,
        disk_free_bytes: disk.as_ref().map(|(free, _, _)| *free),
        disk_total_bytes: disk.as_ref().map(|(_, total, _)| *total),
        storage: disk.map(|(_, _, words)| words),
        problems,
    }
}
