//! Start-up clean-up of the trace store's old home, once its contents have been copied out
//! (`trace::legacy`): the `trace` disk device comes out of every container, then the old
//! folders go.
//!
//! - incus: the device is removed from each agent's container (archived ones too) while it
//!   runs; a folder is deleted only once no container can have it mounted, because incus refuses
//!   to start a container whose disk source is missing. A failure is logged and retried at the
//!   next start.
//! - Docker can't change an existing container's mounts. Its agents keep `<data>/trace/<slug>`
//!   mounted at `/root/.taos/trace` until they are re-deployed; the host never reads, opens or
//!   chmods anything there again, and leaves the folder in place (deleting it would make dockerd
//!   recreate it at the container's next start). Docker has no per-container disk quota here
//!   anyway, so the folder gives an agent no room it doesn't already have.
//! - Without a runtime nothing is removed: incus may only be down for now.

use crate::agents::AgentHost;
use crate::runtime::{Runtime, RuntimeError};
use crate::trace::legacy::LEGACY_DIR;

/// The name deploys before this version gave the trace mount.
pub const TRACE_DEVICE: &str = "trace";

pub async fn retire_trace_mounts(host: &AgentHost) {
    let legacy = host.data_dir.join(LEGACY_DIR);
    if std::fs::symlink_metadata(&legacy).is_err() {
        return;
    }
    let Some(rt) = host.runtime.as_ref() else {
        tracing::warn!(
            "the old trace folders stay until a container runtime answers (the host no longer \
             reads them)"
        );
        return;
    };
    if !rt.has_proxy_devices() {
        tracing::warn!(
            folder = %legacy.display(),
            "Docker can't unmount the old trace folders from existing containers: they stay \
             mounted until the agents are re-deployed, and the host no longer reads them"
        );
        return;
    }
    let containers: Vec<String> = match crate::agents::containers(&host.db).await {
        Ok(containers) => containers,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers; old trace mounts stay for now");
            return;
        }
    };
    let mut all_out = true;
    for name in containers {
        match rt.remove_device(&name, TRACE_DEVICE).await {
            Ok(()) => tracing::info!(container = %name, "old trace mount removed"),
            // No such device, or no such container: nothing mounted.
            Err(RuntimeError::NotFound(_)) => {}
            Err(e) => {
                all_out = false;
                tracing::warn!(container = %name, error = %e, "cannot remove the old trace mount; will retry at the next start");
            }
        }
    }
    if !all_out {
        return;
    }
    // Unmounted everywhere: the folders go, with whatever was planted in them
    // (`remove_dir_all` unlinks a symlink, never what it points to).
    match std::fs::remove_dir_all(&legacy) {
        Ok(()) => tracing::info!(folder = %legacy.display(), "old trace folders removed"),
        Err(e) => {
            tracing::warn!(folder = %legacy.display(), error = %e, "cannot remove the old trace folders")
        }
    }
}
