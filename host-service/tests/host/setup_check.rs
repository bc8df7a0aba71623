//! `taos-host setup` on this machine: `--check` reports the machine's facts and changes
//! nothing; bad arguments are refused before anything changes; the incus step's storage pool
//! and subnet choice work against this machine's real incus and interfaces (with a throwaway
//! pool). The whole of setup runs in a clean Debian container in scripts/install-test.sh.

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
        report.contains("nothing was changed") && report.contains("`sudo taos-host setup` does"),
        "the check must say it changed nothing and what setup does: {report}"
    );
}

#[test]
fn setup_refuses_bad_arguments_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let dir = data_dir.to_str().unwrap();
    for (args, words) in [
        (
            vec!["--agent-image", "/nonexistent/taos-agent.tar.gz"],
            "--agent-image /nonexistent/taos-agent.tar.gz: no such file",
        ),
        (
            vec!["--pool-device", "/dev/no-such-disk"],
            "--pool-device /dev/no-such-disk: no such device",
        ),
    ] {
        let mut all = vec!["--data-dir", dir, "setup"];
        all.extend(args);
        let (ok, stdout, stderr) = run(&all);
        assert!(!ok, "setup accepted {all:?}: {stdout}");
        assert!(stderr.contains(words), "{stderr}");
        assert!(!stdout.contains("setting up:"), "{stdout}");
        assert!(!data_dir.exists(), "a refused setup made the data dir");
    }
}

/// Deletes the throwaway pool however the test ends.
struct Pool(String);
impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("incus")
            .args(["storage", "delete", &self.0])
            .output();
    }
}

#[test]
fn the_incus_step_makes_a_btrfs_pool_once_against_real_incus() {
    use taos_host::setup::provision::IncusStep;
    let pool = Pool(format!("setup-test-{}", std::process::id()));
    let step = IncusStep {
        socket: taos_host::runtime::incus::DEFAULT_SOCKET,
        pool: &pool.0,
        pool_device: None,
        free_disk_mib: 4096,
        no_backports: true,
    };
    let (made, words) = step.ensure_pool().expect("make the pool");
    assert!(made, "{words}");
    assert!(
        words.contains("created the btrfs storage pool") && words.contains("2 GiB loop file"),
        "{words}"
    );
    let show = Command::new("incus")
        .args(["storage", "show", &pool.0])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("driver: btrfs"), "{show}");
    assert!(show.contains("size: 2GiB"), "{show}");
    // Again: found, left alone, said so.
    let (made, words) = step.ensure_pool().expect("re-run");
    assert!(!made, "{words}");
    assert!(
        words.contains("exists (agents' disk quotas are enforced)"),
        "{words}"
    );
}

#[test]
fn the_subnet_choice_sees_this_machines_real_networks() {
    use taos_host::setup::net;
    let addresses = net::gather_addresses();
    let routes = net::gather_routes().expect("ip route");
    let taken = net::taken_ranges(&addresses, &routes);
    // incus's own bridge here (scripts/dev-incus.sh) holds 10.200.0.1/24: asked for, it moves
    // to the first candidate nothing on this machine uses.
    let incusbr0 = addresses
        .iter()
        .find(|a| a.interface == "incusbr0" && a.address.is_ipv4())
        .expect("incusbr0 has an IPv4 address on this machine (scripts/dev-incus.sh)");
    let wanted = format!("{}/{}", incusbr0.address, incusbr0.prefix);
    let chosen = net::choose_subnets(&[&wanted], net::SUBNET_CANDIDATES, &taken).unwrap();
    assert_ne!(chosen[0], wanted);
    assert!(net::SUBNET_CANDIDATES.contains(&chosen[0].as_str()));
    // The host's own bridges (taos-inet, taos-lan) are not collisions: their subnets stay.
    let chosen = net::choose_subnets(
        &["10.203.0.1/24", "10.204.0.1/24"],
        net::SUBNET_CANDIDATES,
        &taken,
    )
    .unwrap();
    assert_eq!(chosen, ["10.203.0.1/24", "10.204.0.1/24"]);
    // The LAN: this machine's eth0 network is in it, no container bridge is.
    let lan: Vec<String> = net::derive_lan(&addresses)
        .iter()
        .map(ToString::to_string)
        .collect();
    let eth0 = addresses
        .iter()
        .find(|a| a.interface == "eth0" && a.address.is_ipv4())
        .expect("eth0 has an IPv4 address");
    assert!(
        lan.iter()
            .any(|n| n.ends_with(&format!("/{}", eth0.prefix)) && n.contains('.')),
        "{lan:?}"
    );
    assert!(
        !lan.iter()
            .any(|n| n.starts_with("10.200.0.") || n.starts_with("10.203.0.")),
        "{lan:?}"
    );
}

/// Deletes the throwaway image alias (and the export) however the test ends.
struct Image(String, tempfile::TempDir);
impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("incus")
            .args(["image", "delete", &self.0])
            .output();
    }
}

fn ok(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The busybox test image (scripts/dev-incus.sh), exported and unpacked in `dir/unpacked`.
fn unpacked_busybox(dir: &Path) -> std::path::PathBuf {
    let export = dir.join("busybox");
    ok(&[
        "incus",
        "image",
        "export",
        "busybox",
        export.to_str().unwrap(),
    ]);
    let unpacked = dir.join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tarball = dir.join("busybox.tar.gz");
    ok(&[
        "tar",
        "-C",
        unpacked.to_str().unwrap(),
        "-xzf",
        tarball.to_str().unwrap(),
    ]);
    unpacked
}

/// `unpacked` packed again as `name` beside it, with a marker file saying `marker` (and this
/// process), so its fingerprint is new: incus refuses an image it already has.
fn repack(unpacked: &Path, name: &str, marker: &str) -> std::path::PathBuf {
    std::fs::write(
        unpacked.join("marker"),
        format!("{marker} {}", std::process::id()),
    )
    .unwrap();
    let file = unpacked.parent().unwrap().join(name);
    ok(&[
        "tar",
        "-C",
        unpacked.to_str().unwrap(),
        "-czf",
        file.to_str().unwrap(),
        "metadata.yaml",
        "rootfs",
        "marker",
    ]);
    file
}

#[test]
fn the_image_step_imports_a_file_once_against_real_incus() {
    use taos_host::setup::provision::{agent_image, Outcome};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = taos_host::runtime::incus::DEFAULT_SOCKET;
    let image = Image(
        format!("setup-test-image-{}", std::process::id()),
        tempfile::tempdir().unwrap(),
    );
    // A missing file: not provisioned, with what to do.
    let missing = image.1.path().join("none.tar.gz");
    match rt.block_on(agent_image(socket, &missing, &image.0)) {
        Outcome::NotDone(words) => assert!(words.contains("--agent-image FILE"), "{words}"),
        other => panic!("{other:?}"),
    }
    // A real image file: the busybox test image, re-packed so its fingerprint is new.
    let unpacked = unpacked_busybox(image.1.path());
    let repacked = repack(&unpacked, "repacked.tar.gz", "setup test");
    match rt.block_on(agent_image(socket, &repacked, &image.0)) {
        Outcome::Done(words) => assert!(words.contains(&image.0), "{words}"),
        other => panic!("{other:?}"),
    }
    let show = Command::new("incus")
        .args(["image", "show", &image.0])
        .output()
        .unwrap();
    assert!(show.status.success());
    // Again: found by its alias, nothing imported.
    match rt.block_on(agent_image(socket, &repacked, &image.0)) {
        Outcome::AlreadyDone(words) => assert!(words.contains(&image.0), "{words}"),
        other => panic!("{other:?}"),
    }
    let fingerprint = |alias: &str| {
        let out = Command::new("incus")
            .args(["image", "info", alias])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Fingerprint:").map(|f| f.trim().to_string()))
    };
    let first = fingerprint(&image.0).expect("the alias names an image");
    // A newer file (the image package upgraded): it replaces the image under the alias, and
    // the old image goes.
    let newer = repack(&unpacked, "newer.tar.gz", "a newer image");
    match rt.block_on(agent_image(socket, &newer, &image.0)) {
        Outcome::Done(words) => assert!(
            words.contains(&format!("replacing image {}, now deleted", &first[..12])),
            "{words}"
        ),
        other => panic!("{other:?}"),
    }
    let second = fingerprint(&image.0).expect("the alias names the new image");
    assert_ne!(first, second);
    assert_eq!(fingerprint(&first), None, "the old image is still there");
    // No file any more, but the image is there: nothing to do.
    match rt.block_on(agent_image(socket, &missing, &image.0)) {
        Outcome::AlreadyDone(words) => assert!(words.contains("no image file"), "{words}"),
        other => panic!("{other:?}"),
    }
}

/// The step as setup runs it, with a framework image's package installed beside the agent
/// image's: both are imported under their aliases in one step, and again it is already done.
/// (Throwaway aliases stand for taos-agent and taos-openclaw, which other tests use.)
#[test]
fn the_image_step_imports_the_framework_images_that_are_there_against_real_incus() {
    use taos_host::setup::provision::{agent_image, image_step, Outcome};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = taos_host::runtime::incus::DEFAULT_SOCKET;
    let agent = Image(
        format!("setup-test-agent-{}", std::process::id()),
        tempfile::tempdir().unwrap(),
    );
    let framework = Image(
        format!("setup-test-framework-{}", std::process::id()),
        tempfile::tempdir().unwrap(),
    );
    let unpacked = unpacked_busybox(agent.1.path());
    let agent_file = repack(&unpacked, "agent.tar.gz", "agent image");
    let framework_file = repack(&unpacked, "framework.tar.gz", "framework image");
    // Only the agent image (no framework package): the same outcome as its import alone.
    let alone = [(agent.0.clone(), agent.1.path().join("none.tar.gz"))];
    let by_itself = rt.block_on(agent_image(socket, &alone[0].1, &alone[0].0));
    assert_eq!(rt.block_on(image_step(socket, &alone)), by_itself);
    assert!(matches!(by_itself, Outcome::NotDone(_)), "{by_itself:?}");

    let images = [
        (agent.0.clone(), agent_file.clone()),
        (framework.0.clone(), framework_file.clone()),
    ];
    match rt.block_on(image_step(socket, &images)) {
        Outcome::Done(words) => {
            assert!(
                words.contains(&format!("imported {} as {}", agent_file.display(), agent.0)),
                "{words}"
            );
            assert!(
                words.contains(&format!(
                    "imported {} as {}",
                    framework_file.display(),
                    framework.0
                )),
                "{words}"
            );
        }
        other => panic!("{other:?}"),
    }
    for alias in [&agent.0, &framework.0] {
        let show = Command::new("incus")
            .args(["image", "show", alias])
            .output()
            .unwrap();
        assert!(show.status.success(), "incus has no image {alias}");
    }
    match rt.block_on(image_step(socket, &images)) {
        Outcome::AlreadyDone(words) => assert!(words.contains(&framework.0), "{words}"),
        other => panic!("{other:?}"),
    }
    // A framework file that is not an image fails the step, with its words; the agent
    // image's import stays done.
    let broken = framework.1.path().join("broken.tar.zst");
    std::fs::write(&broken, b"not an image").unwrap();
    let broken_images = [(agent.0.clone(), agent_file), (framework.0.clone(), broken)];
    match rt.block_on(image_step(socket, &broken_images)) {
        Outcome::Failed(words) => {
            assert!(
                words.contains(&format!("cannot import the image {}", framework.0)),
                "{words}"
            );
            assert!(words.contains(&agent.0), "{words}");
        }
        other => panic!("{other:?}"),
    }
}
