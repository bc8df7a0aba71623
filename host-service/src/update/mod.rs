//! `taos-host update`: installs a new taos-host package and rolls it back when it does not come
//! up healthy.
//!
//! An update is a state machine persisted in `<data dir>/update/state.json` (written atomically
//! at every step), so a crash of the updater at any point leaves a state that says what to undo:
//!
//! ```text
//! preparing → prepared → installing → gating → done
//!                  \__________\___________\____→ rolling_back → rolled_back
//! ```
//!
//! - `preparing`: the service is stopped, the database copied with `VACUUM INTO` (one read
//!   transaction: a consistent snapshot) and the running binary copied to `taos-host.prev`.
//! - `installing`: apt installs the package (it replaces `/usr/bin/taos-host`).
//! - `gating`: the service is started and the gates run for up to [`GATE_WINDOW`]: health,
//!   the TLS pin unchanged, the database migrated, and every agent that was connected before
//!   connected again.
//! - `rolling_back`: the previous binary is put back (and the database backup, when the new
//!   version changed the schema so the previous one can't open it), a notification saying
//!   what failed is stored, and the service started.
//!
//! The updater holds an exclusive lock on `update/lock` while it works; the kernel drops it
//! when the updater dies, however it dies. `taos-host.service` runs `taos-host.prev update
//! --recover` before every start (`ExecStartPre`): when an update is unfinished and nobody holds
//! the lock, it rolls back before the service's binary is even executed. So a killed updater
//! is repaired by the next start (a crashing new version restarts at once, by `Restart=`), or
//! by `taos-host update --resume`.
//!
//! The rollback and the recovery always run the *previous* binary (the updater itself is the
//! binary that was installed when it started; the recovery hook runs `taos-host.prev`): a
//! broken new version can't be trusted to undo itself.

mod gates;
mod system;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Connection;

use crate::db;
use crate::fsutil;

pub use gates::GateFailure;

/// How long the new version has to pass every gate.
pub const GATE_WINDOW: Duration = Duration::from_secs(60);
pub const UPDATE_DIR: &str = "update";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
/// The binary that ran before the update began (kept after a good update too: the next
/// update replaces it). The unit's recovery hook runs it.
pub const PREVIOUS_BINARY: &str = "taos-host.prev";
const DB_BACKUP: &str = "taos.db.before-update";
/// Where the package puts the binary.
pub const INSTALLED_BINARY: &str = "/usr/bin/taos-host";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preparing,
    Prepared,
    Installing,
    Gating,
    RollingBack,
    Done,
    RolledBack,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Done | Phase::RolledBack)
    }
}

/// What the updater persists between its steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateState {
    pub phase: Phase,
    /// The installed package's version when the update began.
    pub from_version: String,
    /// The new package's version.
    pub to_version: String,
    /// The host's TLS pin before the update; paired apps trust only this one.
    pub pin: Option<String>,
    /// The newest migration the database had before the update.
    pub schema_before: i64,
    /// The health subsystems that were ok before the update.
    pub ok_before: Vec<String>,
    /// The agents whose bridge stream was connected before the update.
    pub connected_before: Vec<String>,
    /// The agents (of `connected_before`) that answered a round trip through their bridge on
    /// the new version.
    #[serde(default)]
    pub round_trips: Vec<String>,
    pub started_ms: i64,
    /// Why it rolled back.
    pub failure: Option<String>,
    /// Whether the rollback put the database backup back.
    pub database_restored: Option<bool>,
    /// The phase the rollback began from (a resumed rollback must undo the same things).
    #[serde(default)]
    pub rollback_from: Option<Phase>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    System(#[from] system::SystemError),
    #[error("the update to {to} failed and was rolled back: {failure}")]
    RolledBack { to: String, failure: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// The files of one data dir's update.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub dir: PathBuf,
    /// The binary the package installs (replaced on update, put back on rollback).
    pub binary: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            data_dir: data_dir.to_path_buf(),
            dir: data_dir.join(UPDATE_DIR),
            binary: PathBuf::from(INSTALLED_BINARY),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    fn previous(&self) -> PathBuf {
        self.dir.join(PREVIOUS_BINARY)
    }
    fn backup(&self) -> PathBuf {
        self.dir.join(DB_BACKUP)
    }
}

/// Reads the persisted state; `None` when no update ever ran.
pub fn read_state(paths: &Paths) -> Result<Option<UpdateState>, UpdateError> {
    match fs::read(paths.state()) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            UpdateError::Refused(format!(
                "{} is unreadable ({e}); move it away to start over",
                paths.state().display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("cannot read {}", paths.state().display()))(
            e,
        )),
    }
}

fn write_state(paths: &Paths, state: &UpdateState) -> Result<(), UpdateError> {
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|e| UpdateError::Refused(e.to_string()))?;
    fsutil::write_atomic(&paths.state(), &bytes)
        .map_err(io_err(format!("cannot write {}", paths.state().display())))?;
    // A test may stop the updater right after a phase is durable (then SIGKILL it).
    crate::faults::pause_blocking_if_asked("update", phase_name(state.phase));
    Ok(())
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Preparing => "preparing",
        Phase::Prepared => "prepared",
        Phase::Installing => "installing",
        Phase::Gating => "gating",
        Phase::RollingBack => "rolling_back",
        Phase::Done => "done",
        Phase::RolledBack => "rolled_back",
    }
}

/// The exclusive lock of a running updater; released when dropped or when the process dies.
pub struct UpdateLock(#[allow(dead_code, reason = "held for its lock")] File);

/// Takes the updater lock without waiting; `None` when another updater holds it.
fn try_lock(paths: &Paths) -> Result<Option<UpdateLock>, UpdateError> {
    fsutil::ensure_private_dir(&paths.dir)
        .map_err(io_err(format!("cannot create {}", paths.dir.display())))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(paths.dir.join(LOCK_FILE))
        .map_err(io_err("cannot open the update lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(UpdateLock(file))),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(io_err("cannot lock the update lock")(e)),
    }
}

fn lock_or_refuse(paths: &Paths) -> Result<UpdateLock, UpdateError> {
    try_lock(paths)?.ok_or_else(|| {
        UpdateError::Refused("another `taos-host update` is running on this data dir".into())
    })
}

fn refuse_if_unfinished(paths: &Paths) -> Result<(), UpdateError> {
    if let Some(state) = read_state(paths)? {
        if !state.phase.is_finished() {
            return Err(UpdateError::Refused(format!(
                "an update to {} was interrupted ({}); run `sudo {} update --resume` first",
                state.to_version,
                phase_name(state.phase),
                paths.previous().display()
            )));
        }
    }
    Ok(())
}

/// `taos-host update <package>`: the whole update, driven by this process (the binary that is
/// installed now, which is the one rollbacks need).
pub async fn run(paths: &Paths, package: &Path) -> Result<UpdateState, UpdateError> {
    let _lock = lock_or_refuse(paths)?;
    refuse_if_unfinished(paths)?;
    let package =
        fs::canonicalize(package).map_err(io_err(format!("cannot read {}", package.display())))?;
    let to_version = system::package_version(&package)?;
    let mut state = prepare(paths, &to_version).await?;
    state.phase = Phase::Installing;
    write_state(paths, &state)?;
    if let Err(e) = system::install_package(&package) {
        return Err(roll_back(
            paths,
            state,
            format!("installing the package failed: {e}"),
            true,
        )
        .await);
    }
    gate_and_finish(paths, state).await
}

/// The apt path, step 1 (the new package's preinst, running the old binary): everything up to
/// the install. It holds no lock afterwards; dpkg unpacks next.
pub async fn prepare_for_package(paths: &Paths, to_version: &str) -> Result<(), UpdateError> {
    let _lock = lock_or_refuse(paths)?;
    refuse_if_unfinished(paths)?;
    let mut state = prepare(paths, to_version).await?;
    state.phase = Phase::Installing;
    write_state(paths, &state)
}

/// The apt path, step 2 (the new package's postinst, running `taos-host.prev`): the package is
/// unpacked; start it and gate it. Does nothing when no update is being installed.
pub async fn finish_for_package(paths: &Paths) -> Result<Option<UpdateState>, UpdateError> {
    let _lock = lock_or_refuse(paths)?;
    match read_state(paths)? {
        Some(state) if state.phase == Phase::Installing => {
            gate_and_finish(paths, state).await.map(Some)
        }
        _ => Ok(None),
    }
}

/// `taos-host update --resume`: finishes an interrupted update by rolling it back (the gates
/// can't be trusted to have seen the whole window). Nothing to do when none is unfinished.
pub async fn resume(paths: &Paths) -> Result<Option<UpdateState>, UpdateError> {
    let _lock = lock_or_refuse(paths)?;
    match read_state(paths)? {
        Some(state) if !state.phase.is_finished() => {
            refuse_while_packages_change(&state)?;
            let reason = interrupted_reason(&state);
            Err(roll_back(paths, state, reason, true).await)
        }
        other => {
            system::disarm_guard();
            Ok(other)
        }
    }
}

/// Between the backup and the gates, apt may still be unpacking the package (its updater
/// died, apt did not): rolling back now would be overwritten. The guard tries again.
fn refuse_while_packages_change(state: &UpdateState) -> Result<(), UpdateError> {
    if matches!(state.phase, Phase::Prepared | Phase::Installing)
        && system::package_manager_running()
    {
        return Err(UpdateError::Refused(
            "apt or dpkg is still running; the rollback waits until it is done".into(),
        ));
    }
    Ok(())
}

/// The unit's `ExecStartPre` hook: if an update is unfinished and its updater is gone, roll
/// back the files before the service starts (the start in progress then runs the previous
/// binary). Never calls systemctl: the service is starting right now.
pub async fn recover_before_start(paths: &Paths) -> Result<Option<String>, UpdateError> {
    let Some(_lock) = try_lock(paths)? else {
        // An updater is at work and started this service itself.
        return Ok(None);
    };
    match read_state(paths)? {
        Some(state) if !state.phase.is_finished() => {
            if refuse_while_packages_change(&state).is_err() {
                // The package's postinst or the guard finishes it.
                return Ok(None);
            }
            let reason = interrupted_reason(&state);
            match roll_back(paths, state, reason.clone(), false).await {
                UpdateError::RolledBack { .. } => Ok(Some(reason)),
                e => Err(e),
            }
        }
        _ => Ok(None),
    }
}

fn interrupted_reason(state: &UpdateState) -> String {
    format!(
        "the updater stopped while {} (it was killed, or the machine went down); the update \
         was not verified",
        match state.phase {
            Phase::Preparing => "backing up",
            Phase::Prepared | Phase::Installing => "installing the package",
            Phase::Gating => "checking the new version",
            Phase::RollingBack => "rolling back",
            Phase::Done | Phase::RolledBack => "finishing",
        }
    )
}

/// Records what the gates compare against, stops the service, backs up the database and keeps
/// the running binary.
async fn prepare(paths: &Paths, to_version: &str) -> Result<UpdateState, UpdateError> {
    let config = crate::config::load_or_init(&paths.data_dir)
        .map_err(|e| UpdateError::Refused(format!("cannot read taos.toml: {e}")))?;
    let pin = crate::tls::read_pin(&paths.data_dir)
        .map_err(|e| UpdateError::Refused(e.to_string()))?
        .map(|p| p.to_string());
    let before = gates::observe(&paths.data_dir, &config, pin.as_deref()).await;
    let mut state = UpdateState {
        phase: Phase::Preparing,
        from_version: system::installed_version().unwrap_or_else(|_| "unknown".into()),
        to_version: to_version.to_string(),
        pin,
        schema_before: 0,
        ok_before: before.ok_subsystems(),
        connected_before: before.connected_agents(),
        round_trips: Vec::new(),
        started_ms: db::now_ms(),
        failure: None,
        database_restored: None,
        rollback_from: None,
    };
    write_state(paths, &state)?;
    let steps = async {
        // The binary first: the guard runs it if this process dies from here on.
        copy_binary(&paths.binary, &paths.previous())?;
        system::arm_guard(&paths.previous(), &paths.data_dir)?;
        // Stopped before the copy, so nothing is written after the backup's snapshot.
        system::systemctl("stop")?;
        let schema = backup_database(paths).await?;
        snapshot_data_dir(&paths.data_dir).await;
        Ok::<i64, UpdateError>(schema)
    };
    match steps.await {
        Ok(schema) => {
            state.schema_before = schema;
            state.phase = Phase::Prepared;
            write_state(paths, &state)?;
            Ok(state)
        }
        // Nothing was installed: the rollback only starts the service again and says why.
        Err(e) => Err(roll_back(paths, state, format!("the backup failed: {e}"), true).await),
    }
}

/// Where the data dir is a btrfs subvolume, a read-only snapshot of all of it (not only the
/// database) with the service stopped. Best effort: the database backup above is what a
/// rollback uses, so a snapshot that fails is logged, not a reason to stop the update.
async fn snapshot_data_dir(data_dir: &Path) {
    use crate::snapshots;
    if !matches!(snapshots::support(data_dir), Ok(snapshots::Support::Ready)) {
        return;
    }
    match snapshots::take(data_dir, snapshots::Reason::Update).await {
        Ok(s) => {
            tracing::info!(snapshot = %s.name, "snapshot taken before the update");
            let keep = crate::config::load_or_init(data_dir)
                .map(|c| c.snapshots.retention())
                .unwrap_or_else(|_| crate::config::SnapshotsConfig::default().retention());
            if let Err(e) = snapshots::prune(data_dir, keep).await {
                tracing::warn!(error = %e, "could not delete old snapshots");
            }
        }
        Err(e) => tracing::warn!(error = %e, "no snapshot before the update"),
    }
}

/// `VACUUM INTO` the backup (temp name, then rename); returns the newest migration it holds.
async fn backup_database(paths: &Paths) -> Result<i64, UpdateError> {
    let source = db::db_path(&paths.data_dir);
    if !source.exists() {
        return Ok(0);
    }
    let temp = paths.dir.join(format!("{DB_BACKUP}.tmp"));
    let _ = fs::remove_file(&temp);
    fsutil::touch_private(&temp).map_err(io_err("cannot create the database backup"))?;
    let mut conn = open_plain(&source).await?;
    let schema = max_migration(&mut conn).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(temp.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot sync the database backup"))?;
    fs::rename(&temp, paths.backup()).map_err(io_err("cannot place the database backup"))?;
    fsutil::sync_dir(&paths.dir).map_err(io_err("cannot sync the update dir"))?;
    Ok(schema)
}

/// Opens the database without migrating it (its schema may be another version's).
async fn open_plain(path: &Path) -> Result<sqlx::SqliteConnection, sqlx::Error> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10));
    sqlx::SqliteConnection::connect_with(&options).await
}

async fn max_migration(conn: &mut sqlx::SqliteConnection) -> Result<i64, sqlx::Error> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if exists == 0 {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
}

/// Copies a binary next to its target and renames it into place (atomic for whoever runs it).
fn copy_binary(from: &Path, to: &Path) -> Result<(), UpdateError> {
    let temp = to.with_extension("taos-tmp");
    let _ = fs::remove_file(&temp);
    fs::copy(from, &temp).map_err(io_err(format!("cannot copy {}", from.display())))?;
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("cannot sync {}", temp.display())))?;
    fs::rename(&temp, to).map_err(io_err(format!("cannot place {}", to.display())))?;
    if let Some(dir) = to.parent() {
        fsutil::sync_dir(dir).map_err(io_err(format!("cannot sync {}", dir.display())))?;
    }
    Ok(())
}

/// Starts the new version and runs the gates; rolls back on the first definite failure or when
/// the window ends with a gate still open.
async fn gate_and_finish(
    paths: &Paths,
    mut state: UpdateState,
) -> Result<UpdateState, UpdateError> {
    state.phase = Phase::Gating;
    write_state(paths, &state)?;
    // Not waiting for the start: a version that never gets ready must still be judged within
    // the window, and one that exits is seen by the gates.
    if let Err(e) = system::start_no_block() {
        return Err(roll_back(
            paths,
            state,
            format!("cannot start the new version: {e}"),
            true,
        )
        .await);
    }
    match gates::run(paths, &state, GATE_WINDOW).await {
        Ok(round_trips) => {
            state.round_trips = round_trips;
            state.phase = Phase::Done;
            write_state(paths, &state)?;
            system::disarm_guard();
            Ok(state)
        }
        Err(failure) => Err(roll_back(paths, state, failure.to_string(), true).await),
    }
}

/// Puts the previous binary (and, when needed, the database backup) back, stores a
/// notification, and starts the service when `start` (the recovery hook is itself inside a
/// start). Idempotent: a rollback killed half-way is simply run again. Returns
/// [`UpdateError::RolledBack`] when it rolled back, another error when it could not.
async fn roll_back(
    paths: &Paths,
    mut state: UpdateState,
    failure: String,
    start: bool,
) -> UpdateError {
    let from_phase = match (state.phase, state.rollback_from) {
        (Phase::RollingBack, Some(from)) => from,
        (phase, _) => phase,
    };
    state.rollback_from = Some(from_phase);
    state.phase = Phase::RollingBack;
    if state.failure.is_none() {
        state.failure = Some(failure.clone());
    }
    let failure = state.failure.clone().unwrap_or(failure);
    if let Err(e) = write_state(paths, &state) {
        return e;
    }
    match restore(paths, &mut state, from_phase, start).await {
        Ok(()) => UpdateError::RolledBack {
            to: state.to_version.clone(),
            failure,
        },
        Err(e) => UpdateError::Refused(format!(
            "the update to {} failed ({failure}) and rolling back failed too: {e}; the previous \
             binary is {} and the database backup {}",
            state.to_version,
            paths.previous().display(),
            paths.backup().display()
        )),
    }
}

async fn restore(
    paths: &Paths,
    state: &mut UpdateState,
    from_phase: Phase,
    start: bool,
) -> Result<(), UpdateError> {
    if start {
        system::systemctl("stop")?;
    }
    // Before `prepared` the binary and the database were never touched (and the copy of the
    // binary may be partial).
    let touched = !matches!(from_phase, Phase::Preparing);
    if touched {
        copy_binary(&paths.previous(), &paths.binary)?;
        let restored = restore_database_if_needed(paths, state.schema_before).await?;
        state.database_restored = Some(restored || state.database_restored == Some(true));
    }
    notify_owner(paths, state).await;
    state.phase = Phase::RolledBack;
    write_state(paths, state)?;
    system::disarm_guard();
    if start {
        system::systemctl("start")?;
    }
    Ok(())
}

/// The backup goes back only when the database no longer suits the previous version: a newer
/// migration applied (the previous binary refuses a schema it does not know), or a database
/// that fails its integrity check. Otherwise the live database stays, so nothing written
/// while the new version ran (a chat message answered in the window) is thrown away.
async fn restore_database_if_needed(
    paths: &Paths,
    schema_before: i64,
) -> Result<bool, UpdateError> {
    let live = db::db_path(&paths.data_dir);
    if !paths.backup().exists() {
        return Ok(false);
    }
    let usable = match open_plain(&live).await {
        Ok(mut conn) => {
            let schema = max_migration(&mut conn).await.ok();
            let check: Option<String> = sqlx::query_scalar("PRAGMA quick_check")
                .fetch_one(&mut conn)
                .await
                .ok();
            let _ = conn.close().await;
            schema == Some(schema_before) && check.as_deref() == Some("ok")
        }
        Err(_) => false,
    };
    if usable {
        return Ok(false);
    }
    // The WAL and shared-memory files belong to the database being replaced.
    for suffix in ["-wal", "-shm"] {
        let mut name = live.clone().into_os_string();
        name.push(suffix);
        match fs::remove_file(PathBuf::from(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove the database's WAL")(e)),
        }
    }
    let temp = paths.dir.join(DB_FILE_RESTORE);
    let _ = fs::remove_file(&temp);
    fs::copy(paths.backup(), &temp).map_err(io_err("cannot copy the database backup"))?;
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot sync the restored database"))?;
    fs::rename(&temp, &live).map_err(io_err("cannot put the database backup back"))?;
    fsutil::sync_dir(&paths.data_dir).map_err(io_err("cannot sync the data dir"))?;
    Ok(true)
}

const DB_FILE_RESTORE: &str = "taos.db.restoring";

/// Stores a warning notification for the owner in the (previous version's) database, so the
/// owner sees what failed in the app and the web UI. A failure here is printed, not fatal: the
/// rollback itself succeeded.
async fn notify_owner(paths: &Paths, state: &UpdateState) {
    let failure = state.failure.clone().unwrap_or_default();
    let what = if state.rollback_from == Some(Phase::Preparing) {
        "was not installed"
    } else {
        "did not pass its checks and was rolled back"
    };
    let message = format!(
        "taos-host {} {what}; {} runs again. What failed: {failure}.{}",
        state.to_version,
        state.from_version,
        match state.database_restored {
            Some(true) => " The database was restored from the copy taken before the update.",
            _ => "",
        }
    );
    let result = async {
        let db = db::open(&paths.data_dir).await?;
        let hub = crate::notify::EventHub::new(db.clone());
        hub.notify(taos_proto::events::NewNotification {
            level: taos_proto::events::Level::Warning,
            title: format!("Update to {} rolled back", state.to_version),
            message,
            source: Some("update".into()),
            data: Some(serde_json::json!({
                "from_version": state.from_version,
                "to_version": state.to_version,
                "failure": failure,
            })),
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        db.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("taos-host update: rolled back, but could not store the notification: {e:#}");
    }
}
