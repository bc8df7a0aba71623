//! Local btrfs snapshots of the data dir (issue 18 item 8) on a real btrfs filesystem: a loop
//! file the test makes and mounts (CI runs as root). The host snapshots a data dir that is a
//! subvolume before it migrates the database, `taos-host snapshot` takes one on request,
//! retention keeps the newest of each kind, and a data dir that can't be snapshotted is refused
//! with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

use crate::BIN;

/// A btrfs filesystem on a loop file, unmounted (and so detached) when dropped.
struct Btrfs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Btrfs {
        assert!(
            taos_host::sys::is_root(),
            "this test mounts a btrfs loop file and needs root (CI runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            // Sparse: the host refuses a data dir with less than 2 GiB free; little is written.
            .set_len(3 << 30)
            .unwrap();
        sh("mkfs.btrfs", &["-q".as_ref(), image.as_os_str()]);
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        sh(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        );
        Btrfs { mount, _dir: dir }
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn sh(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn snapshot_names(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(data_dir.join(".snapshots")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The newest applied migration of the database file at `db` (copied out first: a snapshot is
/// read-only, and SQLite wants to write beside a database it opens).
async fn schema_of(db: &Path) -> i64 {
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("taos.db{suffix}"))).unwrap();
        }
    }
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        copy.path().join("taos.db").display()
    ))
    .await
    .unwrap();
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_migration_is_preceded_by_a_read_only_snapshot_and_retention_keeps_each_kind() {
    let fs = Btrfs::new();
    let data_dir = fs.mount.join("taos");
    sh(
        "btrfs",
        &[
            "subvolume".as_ref(),
            "create".as_ref(),
            data_dir.as_os_str(),
        ],
    );

    // A database one migration behind this binary, as the previous version left it.
    let latest = taos_host::db::schema_version();
    {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.migrations = std::borrow::Cow::Owned(
            migrator
                .migrations
                .iter()
                .filter(|m| m.version < latest)
                .cloned()
                .collect(),
        );
        let mut conn = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("taos.db").display()
        ))
        .await
        .unwrap();
        migrator.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    let (ok, report, stderr) = host(&data_dir, &["setup", "--check"]);
    assert!(ok, "{stderr}");
    assert!(
        report.contains("snapshots: the data dir is a btrfs subvolume"),
        "{report}"
    );

    // The host starts: it snapshots, then migrates.
    let started = taos_e2e::Host::start_with(
        BIN,
        taos_e2e::HostOptions {
            data_dir: Some(data_dir.clone()),
            env: Vec::new(),
        },
    )
    .await
    .unwrap();
    drop(started);
    let names = snapshot_names(&data_dir);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("-migration"), "{names:?}");
    let snap = data_dir.join(".snapshots").join(&names[0]);
    assert_eq!(
        sh(
            "btrfs",
            &[
                "property".as_ref(),
                "get".as_ref(),
                "-ts".as_ref(),
                snap.as_os_str(),
                "ro".as_ref(),
            ]
        )
        .trim(),
        "ro=true"
    );
    assert_eq!(schema_of(&snap.join("taos.db")).await, latest - 1);
    assert_eq!(schema_of(&data_dir.join("taos.db")).await, latest);

    // Nothing to migrate the next time: no snapshot.
    let again = taos_e2e::Host::start_with(
        BIN,
        taos_e2e::HostOptions {
            data_dir: Some(data_dir.clone()),
            env: Vec::new(),
        },
    )
    .await
    .unwrap();
    drop(again);
    assert_eq!(snapshot_names(&data_dir).len(), 1);

    // On request (the updater's), with retention keeping one of each kind: the migration
    // snapshot stays, the older update snapshot goes.
    let (ok, _, stderr) = host(&data_dir, &["config", "set", "snapshots.keep_other", "1"]);
    assert!(ok, "{stderr}");
    let (ok, first, stderr) = host(&data_dir, &["snapshot", "--reason", "update"]);
    assert!(ok, "{stderr}");
    let (ok, second, stderr) = host(&data_dir, &["snapshot", "--reason", "update"]);
    assert!(ok, "{stderr}");
    assert_ne!(first, second);
    let names = snapshot_names(&data_dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-migration")));
    assert!(
        second
            .trim()
            .ends_with(names.iter().find(|n| n.ends_with("-update")).unwrap()),
        "{second} {names:?}"
    );
    let (ok, listed, stderr) = host(&data_dir, &["snapshot", "--list"]);
    assert!(ok, "{stderr}");
    for name in &names {
        assert!(listed.contains(name.as_str()), "{listed}");
    }
    // A snapshot never holds older snapshots (nested subvolumes are left out).
    let nested = data_dir
        .join(".snapshots")
        .join(names.iter().find(|n| n.ends_with("-update")).unwrap())
        .join(".snapshots");
    assert!(
        std::fs::read_dir(&nested).map_or(true, |mut d| d.next().is_none()),
        "a snapshot holds snapshots"
    );
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_snapshotted_is_refused_with_the_reason() {
    let fs = Btrfs::new();
    // On btrfs, but a plain folder.
    let plain = fs.mount.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let (ok, _, stderr) = host(&plain, &["snapshot"]);
    assert!(!ok);
    assert!(stderr.contains("not a subvolume"), "{stderr}");
    assert!(snapshot_names(&plain).is_empty());

    // Not on btrfs at all.
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = host(elsewhere.path(), &["snapshot"]);
    assert!(!ok);
    assert!(stderr.contains("not on btrfs"), "{stderr}");
    let (ok, listed, _) = host(elsewhere.path(), &["snapshot", "--list"]);
    assert!(ok);
    assert!(listed.contains("not on btrfs"), "{listed}");
}
