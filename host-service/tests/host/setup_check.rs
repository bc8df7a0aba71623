//! `taos-host setup --check` on this machine: the facts it reports are the machine's, it
//! changes nothing, and plain `setup` refuses clearly (provisioning is a later slice).

use std::path::Path;
use std::process::Command;

use crate::BIN;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TAOS_DATA_DIR")
        .output()
        .expect("run taos-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in:\n{report}"))
}

#[test]
fn the_check_reports_this_machine_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("not-yet");
    let (ok, report, stderr) = run(&["--data-dir", data_dir.to_str().unwrap(), "setup", "--check"]);
    assert!(
        ok,
        "setup --check failed on this machine:\n{report}\n{stderr}"
    );
    assert!(!data_dir.exists(), "a check must not create the data dir");

    // RAM: the total, in MiB, as /proc/meminfo has it.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        line(&report, "ram").starts_with(&format!("ram: {} MiB total", total_kib / 1024)),
        "{report}"
    );
    // Disk: measured at the nearest existing parent of the data dir.
    assert!(
        line(&report, "disk").ends_with(&format!("free at {}", temp.path().display())),
        "{report}"
    );
    // cgroups: as the kernel mounted them.
    let cgroups = line(&report, "cgroups");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(cgroups, "cgroups: v2", "{report}");
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        assert!(cgroups.starts_with("cgroups: hybrid"), "{report}");
    } else {
        assert!(cgroups.starts_with("cgroups: v1"), "{report}");
    }
    // incus: usable exactly when its own CLI reaches the daemon, with the same version.
    let incus = Command::new("incus")
        .args(["query", "/1.0"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            info["environment"]["server_version"]
                .as_str()
                .unwrap()
                .to_string()
        });
    match incus {
        Some(version) => {
            assert_eq!(line(&report, "incus"), format!("incus: usable ({version})"));
            assert!(
                report.contains(&format!("  - use incus {version}")),
                "{report}"
            );
        }
        None => {
            assert!(
                line(&report, "incus").starts_with("incus: not usable: "),
                "{report}"
            );
            assert!(report.contains("  - install incus"), "{report}");
        }
    }
    assert!(
        report.contains("nothing was changed") && report.contains("not built yet"),
        "the check must say it changed nothing and that setup is not built: {report}"
    );
}

#[test]
fn setup_without_check_refuses_and_says_why() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let (ok, stdout, stderr) = run(&["--data-dir", data_dir.to_str().unwrap(), "setup"]);
    assert!(!ok, "setup must not pretend to provision: {stdout}");
    assert!(
        stderr.contains("not built yet") && stderr.contains("--check"),
        "{stderr}"
    );
    assert!(!data_dir.exists());
}
