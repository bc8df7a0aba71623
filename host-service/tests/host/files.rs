use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::start;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn data_dir_and_secrets_are_private() {
    let host = start().await;
    let d = &host.data_dir;
    assert_eq!(mode(d), 0o700, "data dir");
    assert_eq!(mode(&d.join("tls")), 0o700, "tls dir");
    for file in [
        "taos.toml",
        "taos.db",
        "local-token",
        "tls/key.pem",
        "tls/cert.pem",
    ] {
        assert_eq!(mode(&d.join(file)), 0o600, "{file}");
    }
    for wal in ["taos.db-wal", "taos.db-shm"] {
        if d.join(wal).exists() {
            assert_eq!(mode(&d.join(wal)), 0o600, "{wal}");
        }
    }
    let config = std::fs::read_to_string(d.join("taos.toml")).unwrap();
    assert!(
        config.contains("# Public listener"),
        "first run writes commented defaults"
    );
}

#[tokio::test]
async fn crash_between_temp_write_and_rename_keeps_the_old_config() {
    let host = start().await;
    let config_path = host.data_dir.join("taos.toml");
    let before = std::fs::read_to_string(&config_path).unwrap();

    let mut child = tokio::process::Command::new(&host.bin)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .args(["config", "set", "server.max_body_bytes", "2048"])
        .env(
            taos_host::faults::PAUSE_ENV,
            format!("write:{}", config_path.display()),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let paused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("fault injection: paused at write:") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(paused, "the writer reached the fault point");
    let temps: Vec<_> = std::fs::read_dir(&host.data_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".taos.toml.tmp-")
        })
        .collect();
    assert_eq!(temps.len(), 1, "the new content sits in a temp file");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    assert_eq!(
        std::fs::read_to_string(&config_path).unwrap(),
        before,
        "old config intact"
    );
    let check = host.cli(&["config", "check"]);
    assert!(check.status.success(), "{check:?}");
    let leftovers = std::fs::read_dir(&host.data_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".taos.toml.tmp-")
        })
        .count();
    assert_eq!(
        leftovers, 0,
        "the next load sweeps the crashed writer's temp file"
    );

    let set = host.cli(&["config", "set", "server.max_body_bytes", "2048"]);
    assert!(set.status.success(), "{set:?}");
    let after = std::fs::read_to_string(&config_path).unwrap();
    assert!(after.contains("max_body_bytes = 2048"));
    assert!(after.contains("# Public listener"), "comments kept");
    assert_eq!(mode(&config_path), 0o600);
}
