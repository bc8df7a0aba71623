//! What the host has free for new agents: available memory and free space where agents' root
//! disks live. The framework picker shows it beside each framework's `requires`, and warns
//! when a framework needs more than there is.

use taos_proto::agents::HostCapacity;

use crate::runtime::ContainerRuntime;

/// Reads the figures now. Never fails: a figure that can't be read is `None`, and `problems`
/// says why, so the picker can say "unknown" with the reason rather than nothing.
pub async fn host_capacity(runtime: Option<&ContainerRuntime>) -> HostCapacity {
    let mut problems = Vec::new();
    let memory = crate::sys::memory_available_bytes().zip(crate::sys::memory_total_bytes());
    if memory.is_none() {
        problems.push("the host's memory could not be read from /proc/meminfo".to_string());
    }
    let disk = match runtime {
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
        memory_available_bytes: memory.map(|(available, _)| available),
        memory_total_bytes: memory.map(|(_, total)| total),
        disk_free_bytes: disk.as_ref().map(|(free, _, _)| *free),
        disk_total_bytes: disk.as_ref().map(|(_, total, _)| *total),
        storage: disk.map(|(_, _, words)| words),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_runtime_memory_is_read_and_the_disk_says_why_it_is_unknown() {
        let c = host_capacity(None).await;
        assert!(c.memory_available_bytes.is_some() && c.memory_total_bytes.is_some());
        assert_eq!(c.disk_free_bytes, None);
        assert_eq!(c.storage, None);
        assert_eq!(
            c.problems,
            ["no container runtime: agents' storage is unknown"]
        );
    }
}
