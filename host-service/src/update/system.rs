//! The system tools an update drives: systemctl, dpkg-deb, dpkg-query and apt-get, each run
//! as an argv (never a shell string).

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The installed service.
pub const UNIT: &str = "taos-host.service";
/// Set for the maintainer scripts when `taos-host update` drives the install, so they leave
/// the backup and the gates to it.
pub const DRIVER_ENV: &str = "TAOS_UPDATE_DRIVER";

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Package(String),
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<Output, SystemError> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().map_err(|source| SystemError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        // The tail says why; apt's whole output would drown the message.
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        Err(SystemError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        })
    }
}

/// `systemctl <action> taos-host.service`.
pub fn systemctl(action: &str) -> Result<(), SystemError> {
    run("systemctl", &[action, UNIT], &[]).map(|_| ())
}

/// The guard's unit (a transient timer and service made with systemd-run).
pub const GUARD: &str = "taos-host-update-guard";

/// Arms the dead man's switch: every 15 s, `<previous binary> update --resume`. While the
/// updater lives it holds the lock and the resume refuses; once the update is finished the
/// resume finds nothing to do and disarms it; if the updater died, it rolls back.
pub fn arm_guard(previous: &Path, data_dir: &Path) -> Result<(), SystemError> {
    disarm_guard();
    let _ = run(
        "systemctl",
        &[
            "reset-failed",
            &format!("{GUARD}.service"),
            &format!("{GUARD}.timer"),
        ],
        &[],
    );
    let previous = previous.to_string_lossy();
    let data_dir = data_dir.to_string_lossy();
    run(
        "systemd-run",
        &[
            "--unit",
            GUARD,
            "--description=taos-host update guard (rolls back an update whose updater died)",
            "--on-active=15",
            "--on-unit-active=15",
            "--timer-property=AccuracySec=1s",
            "--quiet",
            &previous,
            "--data-dir",
            &data_dir,
            "update",
            "--resume",
        ],
        &[],
    )
    .map(|_| ())
}

/// Stops the guard's timer (without waiting: the guard itself may be the caller).
pub fn disarm_guard() {
    let _ = run(
        "systemctl",
        &["stop", "--no-block", &format!("{GUARD}.timer")],
        &[],
    );
}

/// Whether apt or dpkg is running: a package being unpacked or configured must not have its
/// files rolled back under it (the rollback waits for the next try).
pub fn package_manager_running() -> bool {
    const NAMES: &[&str] = &["dpkg", "apt", "apt-get", "aptitude", "unattended-upgr"];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("comm"))
            .map(|comm| NAMES.contains(&comm.trim()))
            .unwrap_or(false)
    })
}

/// Queues a start of the service without waiting for it to be ready.
pub fn start_no_block() -> Result<(), SystemError> {
    run("systemctl", &["start", "--no-block", UNIT], &[]).map(|_| ())
}

/// `systemctl is-active`'s word for the service (`active`, `activating`, `failed`, …).
pub fn service_state() -> Result<String, SystemError> {
    let output = Command::new("systemctl")
        .args(["is-active", UNIT])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SystemError::Spawn {
            program: "systemctl".into(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Whether the service's process exited since it was last started: systemd is about to
/// restart it (`auto-restart`) or gave up (`failed`).
pub fn service_exited() -> bool {
    let output = Command::new("systemctl")
        .args(["show", "--property=ActiveState,SubState", UNIT])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines()
                .any(|l| l == "ActiveState=failed" || l == "SubState=auto-restart")
        }
        Err(_) => false,
    }
}

/// The service's last journal lines, for saying why it exited.
pub fn journal_tail(lines: u32) -> String {
    let lines = lines.to_string();
    let output = Command::new("journalctl")
        .args([
            "--unit",
            UNIT,
            "--lines",
            &lines,
            "--no-pager",
            "--output",
            "cat",
        ])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / "),
        Err(e) => format!("(no journal: {e})"),
    }
}

/// The package's name must be taos-host; returns its version.
pub fn package_version(package: &Path) -> Result<String, SystemError> {
    let path = package.to_string_lossy();
    let output = run("dpkg-deb", &["--field", &path, "Package", "Version"], &[])?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut name = None;
    let mut version = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Package: ") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version: ") {
            version = Some(v.trim().to_string());
        }
    }
    match (name.as_deref(), version) {
        (Some("taos-host"), Some(version)) => Ok(version),
        (Some(other), _) => Err(SystemError::Package(format!(
            "{path} is the package {other}, not taos-host"
        ))),
        _ => Err(SystemError::Package(format!(
            "{path} is not a Debian package dpkg-deb can read"
        ))),
    }
}

/// The installed taos-host package's version.
pub fn installed_version() -> Result<String, SystemError> {
    let output = run(
        "dpkg-query",
        &["--show", "--showformat=${Version}", "taos-host"],
        &[],
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `apt-get install <package>` (apt brings the dependencies; a path is taken as a file).
pub fn install_package(package: &Path) -> Result<(), SystemError> {
    let path = package.to_string_lossy();
    run(
        "apt-get",
        &["install", "--yes", "--quiet", "--allow-downgrades", &path],
        &[("DEBIAN_FRONTEND", "noninteractive"), (DRIVER_ENV, "1")],
    )
    .map(|_| ())
}
