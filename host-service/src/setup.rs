//! `taos-host setup --check`: what this machine can run, and what `setup` would do on it.
//!
//! It only reads: /proc, /sys, the filesystem's free space, the container runtimes' sockets and
//! the config (without writing the defaults, as the host's own start does). Provisioning itself
//! (incus, the storage pool, LiteLLM, the agent image, the firewall, the service) is
//! [`provision`]; the network choices it makes are [`net`].

pub mod net;
pub mod provision;
pub mod restore_from;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::runtime::{docker, incus};

/// Below this much memory taos can't hold LiteLLM (~300 MB) next to the host and an agent.
pub const MIN_RAM_MIB: u64 = 1024;
/// Recommended: LiteLLM, the host and a handful of Debian agents (~30 MiB each) with headroom.
pub const RECOMMENDED_RAM_MIB: u64 = 2048;
/// Below this much free disk the agent image (~170 MiB), LiteLLM's venv (~500 MiB) and one
/// agent's root disk don't fit.
pub const MIN_DISK_MIB: u64 = 2048;
pub const RECOMMENDED_DISK_MIB: u64 = 8192;

/// How the machine's cgroups are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2 only (Debian 12+, Raspberry Pi OS bookworm, Ubuntu 22.04+).
    V2,
    /// v1 controllers with a v2 tree beside them (at /sys/fs/cgroup/unified).
    Hybrid,
    V1,
    Unknown,
}

/// Whether a container runtime can be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    Usable { version: String },
    Unusable { why: String },
}

/// The facts `--check` gathers.
#[derive(Debug, Clone)]
pub struct Report {
    pub arch: String,
    pub os: String,
    pub kernel: String,
    pub ram_total_mib: Option<u64>,
    pub ram_available_mib: Option<u64>,
    /// Where the free space was measured: the data dir, or its nearest existing parent.
    pub disk_path: PathBuf,
    pub disk_free_mib: Option<u64>,
    pub cgroups: Cgroups,
    pub btrfs_in_kernel: bool,
    pub incus: Runtime,
    pub docker: Runtime,
    pub litellm: Option<PathBuf>,
    pub litellm_user: String,
    pub litellm_user_exists: bool,
    pub data_dir: PathBuf,
    pub data_dir_exists: bool,
    /// Whether the data dir can have local snapshots (None: it doesn't exist yet).
    pub data_dir_snapshots: Option<crate::snapshots::Support>,
    pub public_bind: String,
}

/// Gathers the report. Changes nothing.
pub async fn check(config: &Config, data_dir: &Path) -> Report {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // The data dir may not exist yet.
    let disk_path = crate::fsutil::nearest_existing(data_dir).unwrap_or_else(|| PathBuf::from("."));
    Report {
        arch: std::env::consts::ARCH.to_string(),
        os: os_name(&std::fs::read_to_string("/etc/os-release").unwrap_or_default()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string()),
        ram_total_mib: meminfo_mib(&meminfo, "MemTotal"),
        ram_available_mib: meminfo_mib(&meminfo, "MemAvailable"),
        disk_free_mib: crate::sys::free_disk_bytes(&disk_path)
            .ok()
            .map(|b| b / (1024 * 1024)),
        disk_path,
        cgroups: cgroups(Path::new("/sys/fs/cgroup")),
        btrfs_in_kernel: std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().last() == Some("btrfs")),
        incus: probe_incus(&config.runtime.incus_socket).await,
        docker: probe_docker(&config.runtime.docker_socket).await,
        litellm: crate::llm::supervisor::find_litellm(&config.llm.litellm_bin),
        litellm_user: config.llm.litellm_user.clone(),
        litellm_user_exists: std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(':').next() == Some(config.llm.litellm_user.as_str())),
        data_dir: data_dir.to_path_buf(),
        data_dir_exists: data_dir.exists(),
        data_dir_snapshots: crate::snapshots::support(data_dir).ok(),
        public_bind: config.server.bind.to_string(),
    }
}

async fn probe_incus(socket: &str) -> Runtime {
    if !Path::new(socket).exists() {
        return Runtime::Unusable {
            why: format!("not installed or not running (no socket at {socket})"),
        };
    }
    let candidate = incus::Incus::new(socket, None, "default");
    if !candidate.available().await {
        return Runtime::Unusable {
            why: format!("its socket {socket} does not answer{}", not_root_hint()),
        };
    }
    Runtime::Usable {
        version: candidate.version().await.unwrap_or_else(|| "?".to_string()),
    }
}

async fn probe_docker(socket: &str) -> Runtime {
    if !Path::new(socket).exists() {
        return Runtime::Unusable {
            why: format!("not installed or not running (no socket at {socket})"),
        };
    }
    let candidate = match docker::Docker::new(socket) {
        Ok(c) => c,
        Err(e) => return Runtime::Unusable { why: e.to_string() },
    };
    if !candidate.available().await {
        return Runtime::Unusable {
            why: format!("its socket {socket} does not answer{}", not_root_hint()),
        };
    }
    let version = candidate.version().await.unwrap_or_else(|| "?".to_string());
    if !candidate.userns_remapped().await {
        // The host refuses such a Docker (runtime::detect): container root would be host root.
        return Runtime::Unusable {
            why: format!("docker {version} runs without userns-remap, which taos requires"),
        };
    }
    Runtime::Usable { version }
}

/// Runtimes' sockets are root's (and their admin group's): a check run by another user may
/// see a runtime as dead when it is only closed to them.
fn not_root_hint() -> &'static str {
    if crate::sys::is_root() {
        ""
    } else {
        " to this user (run the check as root)"
    }
}

/// `MemTotal:  24576000 kB` → MiB.
pub fn meminfo_mib(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn os_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// cgroup v2 has `cgroup.controllers` at the root of its tree; a hybrid system has that tree
/// at `unified/` beside the v1 controllers.
pub fn cgroups(root: &Path) -> Cgroups {
    if root.join("cgroup.controllers").exists() {
        Cgroups::V2
    } else if root.join("unified/cgroup.controllers").exists() {
        Cgroups::Hybrid
    } else if root.join("memory").exists() || root.join("cpu").exists() {
        Cgroups::V1
    } else {
        Cgroups::Unknown
    }
}

impl Report {
    /// What stops taos from running here at all.
    pub fn blockers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !matches!(self.arch.as_str(), "x86_64" | "aarch64") {
            out.push(format!(
                "this machine is {}; taos supports x86_64 and aarch64 (arm64)",
                self.arch
            ));
        }
        match self.ram_total_mib {
            Some(mib) if mib < MIN_RAM_MIB => out.push(format!(
                "{mib} MiB of RAM is less than the {MIN_RAM_MIB} MiB taos needs"
            )),
            None => out.push("cannot read the RAM size from /proc/meminfo".to_string()),
            Some(_) => {}
        }
        match self.disk_free_mib {
            Some(mib) if mib < MIN_DISK_MIB => out.push(format!(
                "{mib} MiB free at {} is less than the {MIN_DISK_MIB} MiB taos needs",
                self.disk_path.display()
            )),
            None => out.push(format!(
                "cannot read the free space at {}",
                self.disk_path.display()
            )),
            Some(_) => {}
        }
        out
    }

    /// The report as printed: one fact a line, then what setup would do.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mib = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |v| format!("{v} MiB"));
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "machine: {} ({}, kernel {})",
            self.os, self.arch, self.kernel
        );
        let ram_note = match self.ram_total_mib {
            Some(m) if m < MIN_RAM_MIB => " — too little",
            Some(m) if m < RECOMMENDED_RAM_MIB => {
                " — enough for LiteLLM and one or two agents (2048 MiB recommended)"
            }
            _ => "",
        };
        let _ = writeln!(
            s,
            "ram: {} total, {} available{ram_note}",
            mib(self.ram_total_mib),
            mib(self.ram_available_mib)
        );
        let disk_note = match self.disk_free_mib {
            Some(m) if m < MIN_DISK_MIB => " — too little",
            Some(m) if m < RECOMMENDED_DISK_MIB => " — tight (8192 MiB recommended)",
            _ => "",
        };
        let _ = writeln!(
            s,
            "disk: {} free at {}{disk_note}",
            mib(self.disk_free_mib),
            self.disk_path.display()
        );
        let cgroups = match self.cgroups {
            Cgroups::V2 => "v2",
            Cgroups::Hybrid => {
                "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified) — incus works; \
                 a v2-only system is what taos is tested for on boards"
            }
            Cgroups::V1 => "v1 only — incus works with v1, but limits are less exact",
            Cgroups::Unknown => "unknown (no cgroup controllers found under /sys/fs/cgroup)",
        };
        let _ = writeln!(s, "cgroups: {cgroups}");
        let _ = writeln!(
            s,
            "btrfs: {}",
            if self.btrfs_in_kernel {
                "in the kernel (agents' disk quotas can be enforced)"
            } else {
                "not in the kernel (agents' disk quotas would not be enforced)"
            }
        );
        if let Some(support) = self.data_dir_snapshots {
            let _ = writeln!(s, "snapshots: {}", support.explain());
        }
        for (name, runtime) in [("incus", &self.incus), ("docker", &self.docker)] {
            let _ = match runtime {
                Runtime::Usable { version } => writeln!(s, "{name}: usable ({version})"),
                Runtime::Unusable { why } => writeln!(s, "{name}: not usable: {why}"),
            };
        }
        let _ = writeln!(
            s,
            "litellm: {}",
            match &self.litellm {
                Some(path) => format!("found at {}", path.display()),
                None => "not installed".to_string(),
            }
        );
        let _ = writeln!(
            s,
            "litellm user: {} {}",
            self.litellm_user,
            if self.litellm_user_exists {
                "exists"
            } else {
                "is missing"
            }
        );
        let _ = writeln!(
            s,
            "data dir: {} {}",
            self.data_dir.display(),
            if self.data_dir_exists {
                "exists"
            } else {
                "does not exist yet"
            }
        );
        let blockers = self.blockers();
        if !blockers.is_empty() {
            let _ = writeln!(s, "\nunsupported here:");
            for b in &blockers {
                let _ = writeln!(s, "  - {b}");
            }
        }
        let _ = writeln!(s, "\nsetup would:");
        for step in self.plan() {
            let _ = writeln!(s, "  - {step}");
        }
        s
    }

    /// What `setup` would do here, in order.
    pub fn plan(&self) -> Vec<String> {
        let mut steps = Vec::new();
        match (&self.incus, &self.docker) {
            (Runtime::Usable { version }, _) => steps.push(format!(
                "use incus {version}: add the agents' networks (fixed subnets, checked for \
                 collisions) and a btrfs storage pool if it has none"
            )),
            (_, Runtime::Usable { version }) => steps.push(format!(
                "use docker {version} (the fallback: no disk quotas); install incus to get them"
            )),
            _ => steps.push(
                "install incus with apt (Debian 12: from bookworm-backports, which it adds to \
                 apt's sources), initialise it with fixed subnets and a btrfs pool on a loop file"
                    .to_string(),
            ),
        }
        if !self.litellm_user_exists {
            steps.push(format!(
                "create the unprivileged user {} that LiteLLM runs as",
                self.litellm_user
            ));
        }
        if self.litellm.is_none() {
            steps.push(format!(
                "install LiteLLM in its own venv at /opt/taos/litellm, run as {}",
                self.litellm_user
            ));
        }
        steps.push(format!(
            "import the taos agent image for {} (the taos-agent-image package)",
            match self.arch.as_str() {
                "aarch64" => "arm64",
                "x86_64" => "amd64",
                other => other,
            }
        ));
        steps.push(format!(
            "install the firewall: the public port ({}) open to the LAN only, the agent listener \
             and LiteLLM never reachable from outside",
            self.public_bind
        ));
        steps.push(
            "enable and start taos-host.service, then print the URL, the key fingerprint, the \
             setup code and a pairing QR"
                .to_string(),
        );
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048000 kB\n";
        assert_eq!(meminfo_mib(text, "MemTotal"), Some(24000));
        assert_eq!(meminfo_mib(text, "MemAvailable"), Some(2000));
        assert_eq!(meminfo_mib(text, "Mem"), None);
    }

    #[test]
    fn cgroup_layouts_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroups(dir.path()), Cgroups::Unknown);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        assert_eq!(cgroups(dir.path()), Cgroups::V1);
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(cgroups(dir.path()), Cgroups::Hybrid);
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        assert_eq!(cgroups(dir.path()), Cgroups::V2);
    }

    #[test]
    fn a_small_board_is_refused_with_the_reason() {
        let report = Report {
            arch: "armv7l".to_string(),
            os: "Raspbian".to_string(),
            kernel: "6.1".to_string(),
            ram_total_mib: Some(512),
            ram_available_mib: Some(300),
            disk_path: PathBuf::from("/var/lib"),
            disk_free_mib: Some(1000),
            cgroups: Cgroups::V2,
            btrfs_in_kernel: true,
            incus: Runtime::Unusable {
                why: "not installed".to_string(),
            },
            docker: Runtime::Unusable {
                why: "not installed".to_string(),
            },
            litellm: None,
            litellm_user: "taos-litellm".to_string(),
            litellm_user_exists: false,
            data_dir: PathBuf::from("/var/lib/taos"),
            data_dir_exists: false,
            data_dir_snapshots: None,
            public_bind: "0.0.0.0:6969".to_string(),
        };
        let blockers = report.blockers();
        assert_eq!(blockers.len(), 3, "{blockers:?}");
        let text = report.render();
        assert!(text.contains("unsupported here:"), "{text}");
        assert!(text.contains("armv7l"), "{text}");
        assert!(text.contains("install incus"), "{text}");
        assert!(
            text.contains("create the unprivileged user taos-litellm"),
            "{text}"
        );
    }
}
