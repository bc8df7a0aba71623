//! LiteLLM as a transient systemd unit, `taos-litellm.service`, when the host itself runs as
//! root under systemd (the packaged install). systemd then confines LiteLLM with a sandbox of
//! its own, stricter than the host's (which it no longer inherits), and `systemd-analyze
//! security` can rate it.
//!
//! Everything else stays the host's, as with the child (`sandbox`):
//! - the listening socket: bound by the host once, for its whole life, and handed to the unit
//!   as its stdin (`systemd-run --pipe` passes the caller's stdin, stdout and stderr to the
//!   service), so the port is never free for another process to take the master key;
//! - the config, which names keys only as `os.environ/NAME`: a systemd credential
//!   (`LoadCredential=`) read from the host's copy in its data dir;
//! - the master key and provider keys: a credential read from a 0600 file in the host's
//!   runtime directory (`RuntimeDirectory=taos`, a tmpfs: the keys never reach a disk), which
//!   the host deletes once LiteLLM has started. systemd copies credentials into a directory
//!   only the unit's user can read; they never appear in the unit's properties, which any
//!   local user may read over D-Bus (hence no `--setenv` for them);
//! - its output: `--pipe` connects it to the host's pipes, for LiteLLM's log and status
//!   (with systemd-run's own lines, such as how the unit ended);
//! - its life: `systemd-run --wait` lasts as long as the unit, so the supervisor waits on it
//!   as on the child; stopping is `systemctl stop`; `BindsTo=` the host's own unit stops
//!   LiteLLM whenever the host stops, as the parent-death signal does for the child.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The unit's name.
pub const UNIT: &str = "taos-litellm.service";
/// The packaged host's unit, the only one that starts LiteLLM as [`UNIT`].
pub const HOST_UNIT: &str = "taos-host.service";
/// Where systemd puts the unit's credentials (`$CREDENTIALS_DIRECTORY`).
pub const CREDENTIALS_DIR: &str = "/run/credentials/taos-litellm.service";

/// The sandbox, beyond the user: everything LiteLLM (a Python web server that reaches
/// providers over the network) can do without. `systemd-analyze security` rates it.
const HARDENING: &[&str] = &[
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateIPC=yes",
    "PrivateUsers=yes",
    "CapabilityBoundingSet=",
    "NoNewPrivileges=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    // CPython and LiteLLM's wheels need no writable executable memory.
    "MemoryDenyWriteExecute=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "KeyringMode=private",
    "RemoveIPC=yes",
    "DevicePolicy=closed",
    "UMask=0077",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
];

/// What the unit runs: `python args…` as `user`, with the config at `config` (a credential)
/// and `data_dir` out of sight. `env` is what the child would have had, minus the keys (they
/// are in the secrets file).
pub struct Start<'a> {
    pub user: &'a str,
    pub data_dir: &'a Path,
    pub python: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub config: &'a Path,
}

/// How to run LiteLLM as a unit on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitLaunch {
    systemd_run: PathBuf,
    systemctl: PathBuf,
    /// The host's own unit, which LiteLLM's is bound to.
    host_unit: String,
    /// The host's runtime directory (tmpfs), for the keys' credential file.
    runtime_dir: PathBuf,
}

impl UnitLaunch {
    /// `Some` when the host runs as a systemd service with a runtime directory, and systemd's
    /// tools are installed; otherwise LiteLLM is the host's confined child.
    pub fn detect() -> Option<UnitLaunch> {
        std::env::var_os("INVOCATION_ID")?;
        let runtime_dir = PathBuf::from(std::env::var_os("RUNTIME_DIRECTORY")?);
        if !runtime_dir.is_absolute() || !runtime_dir.is_dir() {
            return None;
        }
        // The packaged unit only: the LiteLLM unit's name is fixed, one per machine, and a
        // host run by another service (a CI runner, say) keeps its child.
        let host_unit = own_unit(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
        if host_unit != HOST_UNIT {
            return None;
        }
        let find = |name: &str| {
            ["/usr/bin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        };
        Some(UnitLaunch {
            systemd_run: find("systemd-run")?,
            systemctl: find("systemctl")?,
            host_unit,
            runtime_dir,
        })
    }

    /// Where the keys' credential is written before a start (and deleted after).
    pub fn secrets_path(&self) -> PathBuf {
        self.runtime_dir.join("litellm.secrets")
    }

    /// `systemd-run` starting `start` as the unit, with the listening socket as its stdin.
    pub fn command(&self, start: &Start<'_>, listener: OwnedFd) -> Command {
        let mut command = Command::new(&self.systemd_run);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args([
                "--unit",
                UNIT,
                "--description",
                "LiteLLM for taos-host (its LLM gateway's upstream)",
                "--pipe",
                "--wait",
                "--collect",
                "--service-type=exec",
            ])
            .arg(format!("--property=User={}", start.user))
            .arg(format!("--property=Group={}", start.user))
            .arg(format!("--property=BindsTo={}", self.host_unit))
            .arg(format!("--property=After={}", self.host_unit))
            .arg(format!(
                "--property=LoadCredential=config:{}",
                start.config.display()
            ))
            .arg(format!(
                "--property=LoadCredential=secrets:{}",
                self.secrets_path().display()
            ))
            .args(HARDENING.iter().map(|p| format!("--property={p}")))
            // The host's data dir is 0700 root anyway; here it is not even there to look at.
            .arg(format!(
                "--property=InaccessiblePaths={}",
                start.data_dir.display()
            ))
            .args(start.env.iter().map(|(k, v)| format!("--setenv={k}={v}")))
            .arg("--setenv=HOME=/tmp")
            .arg("--setenv=TMPDIR=/tmp")
            .arg(start.python)
            .args(start.args)
            .stdin(Stdio::from(listener))
            .kill_on_drop(true);
        command
    }

    /// Stops the unit (and forgets a failed one), whoever started it: a host that died hard
    /// may have left one. Best effort: a unit that is not there is what we want.
    pub async fn stop(&self) {
        for verb in ["stop", "reset-failed"] {
            let run = Command::new(&self.systemctl)
                .env_clear()
                .args([verb, UNIT])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(30), run).await {
                tracing::warn!(error = %e, "cannot run systemctl {verb} {UNIT}");
            }
        }
    }
}

/// The service unit a process runs in, from its `/proc/self/cgroup`.
fn own_unit(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let last = path.rsplit('/').next()?;
        (last.ends_with(".service") && last.len() > ".service".len()).then(|| last.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_unit_is_read_from_its_cgroup() {
        assert_eq!(
            own_unit("0::/system.slice/taos-host.service\n").as_deref(),
            Some("taos-host.service")
        );
        // cgroup v1 (hybrid): the systemd hierarchy names it.
        assert_eq!(
            own_unit("12:cpu:/\n1:name=systemd:/system.slice/taos-host.service\n0::/\n").as_deref(),
            Some("taos-host.service")
        );
        assert_eq!(
            own_unit("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(own_unit("0::/\n"), None);
    }
}
