//! Restore drills: the newest backup restored into a throwaway place and checked, on request
//! (`POST /api/backups/drill`) and every `drill_every_days` days (weekly by default). A backup
//! nobody ever restored is a hope; a drill makes it a fact, or says in words why not.
//!
//! restic runs with a fresh cache in the drill's folder, so it reads the destination's copy.
//! The checks, each recorded with what it found: **repository** (`restic check
//! --read-data-subset`, the repository's structure and part of its data read back),
//! **restore** (the snapshot restored into `<data>/backup/drill/`: every blob it needs is read
//! and authenticated, so damaged pack files fail here), **database** (the restored copy passes
//! SQLite's integrity check, and its schema, its backup run and the agents of the manifest's
//! containers are all in it), and per agent container **container:<name>** (imported into a
//! throwaway incus project, cut off from the network and the live host's listener, started:
//! its system boots and the agent's service runs), then **bridge_round_trip:<name>** (the copy,
//! given a drill-only credential and bridge address in place of the live agent's, answers the
//! drill's message: see `drill_bridge`). Everything is torn down after, whatever happened; a
//! host that dies mid-drill marks it failed and tears down at its next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Row};
use taos_proto::backup::{BackupDrill, DrillCheck, DrillReason, DrillState};
use taos_proto::events::{Level, NewNotification};
use uuid::Uuid;

use super::restic::Restic;
use super::stage::{Manifest, StagedContainer, CONTAINERS_DIR, MANIFEST_FILE};
use super::{
    BackupError, Backups, CACHE_DIR, KNOWN_HOSTS_FILE, SSH_KEY_FILE, STAGE_NAME, TAG, TMP_DIR,
};
use crate::db::{from_ms, now_ms};
use crate::fsutil;
use crate::runtime::{ContainerRuntime, Runtime};

/// The drill's folder in the module's private folder (the restored copy).
pub const DRILL_DIR: &str = "drill";
const PASSWORD_FILE: &str = "drill-password";
/// incus projects of drills are named this and 8 random hex digits.
pub const PROJECT_PREFIX: &str = "taos-drill-";
/// A drilled Docker copy's container name: agents' containers are `taos-<slug>`, so no agent's
/// can start with it (recovery removes whatever does).
const DOCKER_COPY_PREFIX: &str = "taosdrill-";
/// How much of the repository's data a drill's `restic check` reads (a backup run reads 5 %;
/// the drill's restore reads all the newest snapshot needs anyway).
const CHECK_SUBSET: &str = "10%";
/// How long the agent's service may take to be up in the drilled container.
const SERVICE_WAIT: Duration = Duration::from_secs(60);
/// How long the drilled copy's sidecar may take to answer the drill's message.
const ROUND_TRIP_WAIT: Duration = Duration::from_secs(90);
/// The LLM address a drilled copy is given: nothing listens there (the discard port on its own
/// loopback), so its sidecar answers the drill's message with an error, without a model.
const NO_LLM_URL: &str = "http://127.0.0.1:9/v1";

const COLUMNS: &str = "id, state, reason, snapshot_id, created_at, finished_at, checks, error";

impl Backups {
    /// Records a drill (`running`) and starts it. Refused while a drill or a backup runs (both
    /// use the repository; restic's check wants it alone), or before any backup was made.
    pub async fn start_drill(&self, reason: DrillReason) -> Result<BackupDrill, BackupError> {
        let Some(settings) = self.stored().await? else {
            return Err(BackupError::NotConfigured);
        };
        if self.0.key_change.try_lock().is_err() {
            return Err(BackupError::Conflict(
                "the passphrase is being changed; start the drill when it has finished".into(),
            ));
        }
        if !settings.repository_ready {
            return Err(BackupError::Conflict(
                "no backup has been made at this destination yet: run one first, then drill it"
                    .into(),
            ));
        }
        let id = Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO backup_drills (id, state, reason, created_at) \
             SELECT ?, 'running', ?, ? WHERE NOT EXISTS \
             (SELECT 1 FROM backup_drills WHERE state = 'running') AND NOT EXISTS \
             (SELECT 1 FROM backup_runs WHERE state IN ('queued', 'running'))",
        )
        .bind(&id)
        .bind(reason.as_str())
        .bind(now_ms())
        .execute(&self.0.db)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(BackupError::Conflict(
                "a backup or a restore drill is running; wait for it to finish".into(),
            ));
        }
        let drill = self.drill(&id).await?;
        let me = self.clone();
        tokio::spawn(async move { me.execute_drill(id).await });
        Ok(drill)
    }

    /// Drills, newest first.
    pub async fn drills(&self, limit: i64) -> Result<Vec<BackupDrill>, BackupError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM backup_drills ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(limit.clamp(1, super::MAX_LIST_LIMIT))
        .fetch_all(&self.0.db)
        .await?;
        rows.iter().map(drill_from_row).collect()
    }

    pub async fn drill(&self, id: &str) -> Result<BackupDrill, BackupError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM backup_drills WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.0.db)
            .await?
            .ok_or(BackupError::DrillNotFound)?;
        drill_from_row(&row)
    }

    /// At start-up: a drill the last host died in is marked failed (and notified), and what
    /// it left is removed: the restored copy, and its incus project with the container in it.
    pub async fn recover_drills(&self) -> Result<(), BackupError> {
        let reason = "the host stopped while this restore drill was running, so it did not finish";
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE backup_drills SET state = 'failed', error = ?, finished_at = ? \
             WHERE state = 'running' RETURNING id",
        )
        .bind(reason)
        .bind(now_ms())
        .fetch_all(&self.0.db)
        .await?;
        self.remove_drill_files();
        if !ids.is_empty() {
            if let Some(ContainerRuntime::Incus(incus)) = self.0.agents.runtime.as_ref() {
                // Only projects this host's drills made are named in its log; on a shared incus
                // another host's running drill has a project too, so only a host that died
                // mid-drill clears the prefix.
                match incus.projects_with_prefix(PROJECT_PREFIX).await {
                    Ok(projects) => {
                        for project in projects {
                            tear_down(incus, &project).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list leftover drill projects"),
                }
            }
            if let Some(rt @ ContainerRuntime::Docker(docker)) = self.0.agents.runtime.as_ref() {
                match docker.containers_with_prefix(DOCKER_COPY_PREFIX).await {
                    Ok(copies) => {
                        for copy in copies {
                            if let Err(e) = rt.delete(&copy).await {
                                tracing::warn!(container = %copy, error = %e, "cannot remove a drill's Docker copy");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list leftover drill containers"),
                }
            }
        }
        for id in ids {
            tracing::warn!(drill = %id, "{reason}");
            self.announce_drill(&id, DrillState::Failed, Some(reason))
                .await;
        }
        Ok(())
    }

    /// Whether the schedule wants a drill now: `drill_every_days` since the last drill, or
    /// since the first backup when there was none.
    pub async fn drill_due(&self, now: DateTime<Utc>) -> Result<bool, BackupError> {
        let Some(settings) = self.stored().await? else {
            return Ok(false);
        };
        let last_drill: Option<i64> =
            sqlx::query_scalar("SELECT MAX(created_at) FROM backup_drills")
                .fetch_one(&self.0.db)
                .await?;
        let first_backup: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(finished_at) FROM backup_runs WHERE state = 'succeeded'",
        )
        .fetch_one(&self.0.db)
        .await?;
        Ok(settings.repository_ready
            && drill_due(
                now,
                settings.drill_every_days,
                last_drill.map(from_ms),
                first_backup.map(from_ms),
            ))
    }

    fn remove_drill_files(&self) {
        let dir = self.private_dir();
        match std::fs::remove_dir_all(dir.join(DRILL_DIR)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(error = %e, "cannot remove a drill's restored copy"),
        }
        for file in [PASSWORD_FILE, SSH_KEY_FILE, KNOWN_HOSTS_FILE] {
            match std::fs::remove_file(dir.join(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!(file, error = %e, "cannot remove a drill's file"),
            }
        }
    }

    async fn execute_drill(self, id: String) {
        let started = Instant::now();
        let mut checks = Vec::new();
        let outcome = self.drill_steps(&id, &mut checks).await;
        self.remove_drill_files();
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        let error = match outcome {
            Err(e) => Some(e),
            Ok(()) if !failed.is_empty() => Some(failed.join("; ")),
            Ok(()) => None,
        };
        let state = if error.is_some() {
            DrillState::Failed
        } else {
            DrillState::Passed
        };
        let recorded = sqlx::query(
            "UPDATE backup_drills SET state = ?, finished_at = ?, checks = ?, error = ? \
             WHERE id = ? AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(now_ms())
        .bind(serde_json::to_string(&checks).unwrap_or_else(|_| "[]".into()))
        .bind(&error)
        .bind(&id)
        .execute(&self.0.db)
        .await;
        if let Err(e) = recorded {
            tracing::error!(drill = %id, error = %e, "cannot record a finished drill");
        }
        match &error {
            None => {
                tracing::info!(drill = %id, secs = started.elapsed().as_secs(), "restore drill passed")
            }
            Some(why) => tracing::warn!(drill = %id, error = %why, "restore drill failed"),
        }
        self.announce_drill(&id, state, error.as_deref()).await;
    }

    /// While a drill runs: the checks done so far go into its row (so `GET` shows them before
    /// it ends), and [`Self::announce_drill_step`] says which check starts now.
    async fn drill_progress(&self, id: &str, checks: &[DrillCheck], step: &str) {
        let recorded =
            sqlx::query("UPDATE backup_drills SET checks = ? WHERE id = ? AND state = 'running'")
                .bind(serde_json::to_string(checks).unwrap_or_else(|_| "[]".into()))
                .bind(id)
                .execute(&self.0.db)
                .await;
        if let Err(e) = recorded {
            tracing::warn!(drill = %id, error = %e, "cannot record a drill's checks so far");
        }
        self.announce_drill_step(id, step).await;
    }

    /// `backup.drill_progress {drill_id, step}`: the check (named as in `checks`) that starts.
    async fn announce_drill_step(&self, id: &str, step: &str) {
        self.0
            .hub
            .announce(
                "backup.drill_progress",
                serde_json::json!({"drill_id": id, "step": step}),
            )
            .await;
    }

    /// `backup.drill` on the event stream; for a failure also a notification with the reason.
    async fn announce_drill(&self, id: &str, state: DrillState, error: Option<&str>) {
        self.0
            .hub
            .announce(
                "backup.drill",
                serde_json::json!({"drill_id": id, "state": state, "error": error}),
            )
            .await;
        if let Some(why) = error {
            let note = NewNotification {
                level: Level::Error,
                title: "Restore drill failed".into(),
                message: format!(
                    "The newest backup did not restore cleanly: {why}. Run a new backup now, \
                     and check the destination's disk (`restic check --read-data` on the \
                     repository reads all of it)."
                ),
                source: Some("backup".into()),
                data: Some(serde_json::json!({"drill_id": id})),
            };
            if let Err(e) = self.0.hub.notify(note).await {
                tracing::warn!(error = %e, "cannot post the drill failure notification");
            }
        }
    }

    /// The drill's steps; each check is pushed as it ends. `Err` is a failure before any
    /// check could run (the repository can't be opened, there is no snapshot).
    async fn drill_steps(&self, id: &str, checks: &mut Vec<DrillCheck>) -> Result<(), String> {
        let settings = self
            .stored()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| BackupError::NotConfigured.to_string())?;
        let private = self.private_dir();
        fsutil::ensure_private_subdir(&private).map_err(|e| e.to_string())?;
        let drill_dir = private.join(DRILL_DIR);
        self.remove_drill_files();
        fsutil::ensure_private_subdir(&drill_dir).map_err(|e| e.to_string())?;
        let repo = self.repository(&settings).map_err(|e| e.to_string())?;
        let passphrase = self
            .0
            .secrets
            .open(&settings.sealed_passphrase)
            .map_err(|e| e.to_string())?;
        // A fresh cache of the drill's own: restic then reads the index and every tree from
        // the repository itself, not from the copies the backups left in the host's cache (a
        // damaged pack at the destination must fail the drill).
        let restic = Restic {
            bin: self.0.restic_bin.clone(),
            repo,
            password_file: private.join(PASSWORD_FILE),
            cache_dir: drill_dir.join(CACHE_DIR),
            tmp_dir: private.join(TMP_DIR),
        };
        for dir in [&restic.cache_dir, &restic.tmp_dir] {
            fsutil::ensure_private_subdir(dir).map_err(|e| e.to_string())?;
        }
        fsutil::write_atomic(&restic.password_file, passphrase.as_bytes())
            .map_err(|e| e.to_string())?;
        drop(passphrase);

        let snapshot = restic
            .snapshots(&[TAG])
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .max_by_key(|s| s.time)
            .ok_or("the repository holds no taos backup yet")?;
        sqlx::query("UPDATE backup_drills SET snapshot_id = ? WHERE id = ?")
            .bind(&snapshot.id)
            .bind(id)
            .execute(&self.0.db)
            .await
            .map_err(|e| e.to_string())?;

        self.drill_progress(id, checks, "repository").await;
        checks.push(match restic.check(Some(CHECK_SUBSET)).await {
            Ok(()) => check_ok(
                "repository",
                format!("restic check read {CHECK_SUBSET} of the data back: no errors"),
            ),
            Err(e) => check_failed("repository", e.to_string()),
        });

        self.drill_progress(id, checks, "restore").await;
        let target = drill_dir.join("restore");
        if let Err(e) = restic.restore(&snapshot.id, &target).await {
            checks.push(check_failed(
                "restore",
                format!("snapshot {} did not restore: {e}", snapshot.short_id),
            ));
            return Ok(());
        }
        crate::faults::check("drill", "restored").await?;
        let root = target.join(STAGE_NAME);
        let manifest = match read_manifest(&root) {
            Ok(m) => m,
            Err(why) => {
                checks.push(check_failed("restore", why));
                return Ok(());
            }
        };
        checks.push(check_ok(
            "restore",
            format!(
                "snapshot {} restored (made by taos {}, schema {}, {} container(s))",
                snapshot.short_id,
                manifest.taos_version,
                manifest.schema_version,
                manifest.containers.len()
            ),
        ));

        self.drill_progress(id, checks, "database").await;
        checks.push(match check_database(&root, &manifest).await {
            Ok(detail) => check_ok("database", detail),
            Err(why) => check_failed("database", why),
        });

        for container in &manifest.containers {
            self.drill_container(id, &root.join(CONTAINERS_DIR), container, checks)
                .await;
        }
        Ok(())
    }

    /// One container: `container:<name>` (imported into a throwaway project, cut off, started,
    /// its agent's service seen running) and, when that passed, `bridge_round_trip:<name>`;
    /// the project torn down whatever happened.
    async fn drill_container(
        &self,
        id: &str,
        dir: &Path,
        container: &StagedContainer,
        checks: &mut Vec<DrillCheck>,
    ) {
        let name = format!("container:{}", container.container);
        let trip = format!("bridge_round_trip:{}", container.container);
        self.drill_progress(id, checks, &name).await;
        if container.runtime == "docker" {
            // The saved image is read through first: a damaged one says which layer it lacks.
            let path = dir.join(&container.file);
            let whole =
                match tokio::task::spawn_blocking(move || docker_archive_is_whole(&path)).await {
                    Ok(Ok(detail)) => detail,
                    Ok(Err(why)) => return checks.push(check_failed(&name, why)),
                    Err(e) => {
                        return checks.push(check_failed(&name, format!("the check stopped: {e}")))
                    }
                };
            let Some(rt @ ContainerRuntime::Docker(docker)) = self.0.agents.runtime.as_ref() else {
                // A Docker agent's backup on a host without Docker (restored onto incus).
                return checks.push(check_ok(
                    &name,
                    format!("{whole}; this host has no Docker to start it in"),
                ));
            };
            match self
                .drill_docker_steps(id, rt, docker, dir, container)
                .await
            {
                Err(why) => checks.push(check_failed(&name, format!("{whole}; but {why}"))),
                Ok((booted, round_trip)) => {
                    checks.push(check_ok(&name, format!("{whole}; {booted}")));
                    checks.push(match round_trip {
                        Ok(detail) => check_ok(&trip, detail),
                        Err(why) => check_failed(&trip, why),
                    });
                }
            }
            return;
        }
        match self.drill_container_steps(id, dir, container).await {
            Err(why) => checks.push(check_failed(&name, why)),
            Ok((detail, round_trip)) => {
                checks.push(check_ok(&name, detail));
                checks.push(match round_trip {
                    Ok(detail) => check_ok(&trip, detail),
                    Err(why) => check_failed(&trip, why),
                });
            }
        }
    }

    async fn drill_container_steps(
        &self,
        id: &str,
        dir: &Path,
        container: &StagedContainer,
    ) -> Result<(String, Result<String, String>), String> {
        let incus = match self.0.agents.runtime.as_ref() {
            Some(ContainerRuntime::Incus(incus)) => incus,
            Some(ContainerRuntime::Docker(_)) => {
                return Err("this host runs Docker, which can't import an incus container".into())
            }
            None => return Err("the host has no container runtime to drill it in".into()),
        };
        if container.file != format!("{}.tar", container.container) {
            return Err(format!(
                "the manifest names an unexpected file {:?}",
                container.file
            ));
        }
        let project = format!("{PROJECT_PREFIX}{:08x}", rand::random::<u32>());
        incus
            .create_project(&project)
            .await
            .map_err(|e| format!("cannot make the throwaway incus project: {e}"))?;
        let result = async {
            let scoped = incus.in_project(&project).map_err(|e| e.to_string())?;
            scoped
                .import_from_file(
                    &dir.join(&container.file),
                    &container.container,
                    super::containers::TRANSFER_TIMEOUT,
                )
                .await
                .map_err(|e| format!("the container did not import: {e}"))?;
            scoped
                .isolate_for_drill(&container.container)
                .await
                .map_err(|e| format!("cannot cut the drilled copy off: {e}"))?;
            let rt = ContainerRuntime::Incus(scoped);
            rt.start(&container.container)
                .await
                .map_err(|e| format!("the container did not start: {e}"))?;
            crate::agents::deploy::wait_for_boot(&rt, &container.container)
                .await
                .map_err(|e| format!("{e} (from the backup)"))?;
            wait_service(&rt, &container.container, &container.service).await?;
            let booted = format!(
                "imported into a throwaway incus project, booted, and its {} service runs \
                 (agent {})",
                container.service, container.slug
            );
            let trip = format!("bridge_round_trip:{}", container.container);
            self.announce_drill_step(id, &trip).await;
            Ok::<_, String>((booted, self.round_trip(&rt, container).await))
        }
        .await;
        tear_down(incus, &project).await;
        result
    }
}

impl Backups {
    /// A Docker agent's container: loaded from the backup as a throwaway container on the
    /// `none` agents' network (the host's agent listener and nothing else), its credentials
    /// file rewritten for a drill session before it first starts, started, and the drill's
    /// message answered. The container (and the image it was loaded as) removed whatever
    /// happened.
    async fn drill_docker_steps(
        &self,
        id: &str,
        rt: &ContainerRuntime,
        docker: &crate::runtime::docker::Docker,
        dir: &Path,
        container: &StagedContainer,
    ) -> Result<(String, Result<String, String>), String> {
        if container.file != format!("{}.tar", container.container) {
            return Err(format!(
                "the manifest names an unexpected file {:?}",
                container.file
            ));
        }
        let copy = format!("{DOCKER_COPY_PREFIX}{:08x}", rand::random::<u32>());
        docker
            .import_cut_off(
                &dir.join(&container.file),
                &copy,
                super::containers::TRANSFER_TIMEOUT,
            )
            .await
            .map_err(|e| format!("the saved container did not load into Docker: {e}"))?;
        let booted = format!(
            "loaded into Docker as the throwaway container {copy}, on the agents' network              that reaches only the host (agent {})",
            container.slug
        );
        self.announce_drill_step(id, &format!("bridge_round_trip:{}", container.container))
            .await;
        let round_trip = self.docker_round_trip(docker, rt, &copy, container).await;
        if let Err(e) = rt.delete(&copy).await {
            tracing::warn!(container = %copy, error = %e, "cannot remove a drill's Docker copy");
        }
        Ok((booted, round_trip))
    }

    /// The copy has never run: its own credentials file is read from the stopped container
    /// (hostile input, as in `round_trip`), rewritten for the drill session, and only then is
    /// it started.
    async fn docker_round_trip(
        &self,
        docker: &crate::runtime::docker::Docker,
        rt: &ContainerRuntime,
        copy: &str,
        container: &StagedContainer,
    ) -> Result<String, String> {
        let current = crate::agents::deploy::read_credentials(rt, copy)
            .await
            .map_err(|e| format!("the copy's credentials: {e}"))?;
        let session = self.0.drill_bridge.open(&container.slug);
        let (bridge, _) = crate::agents::deploy::agent_endpoints(
            &self.0.agents.agent_gateways,
            taos_proto::agents::AgentNetwork::None,
        );
        let bridge_url = format!("{bridge}/drill/{}", session.id);
        let env = drill_env(&current, &container.slug, &bridge_url, &session.token);
        crate::agents::deploy::push_credentials(rt, copy, &env)
            .await
            .map_err(|e| format!("cannot write the drill's credentials into the copy: {e}"))?;
        rt.start(copy)
            .await
            .map_err(|e| format!("the copy did not start: {e}"))?;
        let mut session = session;
        match session.answer(ROUND_TRIP_WAIT).await {
            Some(answer) => Ok(answered(&answer)),
            None => {
                let log = docker.logs(copy, 3).await.unwrap_or_default();
                let log: String = log
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(300)
                    .collect();
                Err(format!(
                    "its sidecar did not answer the drill's message within {} s over its \
                     drill bridge session (its last log lines: {log:?})",
                    ROUND_TRIP_WAIT.as_secs(),
                ))
            }
        }
    }

    /// The bridge round trip with the drilled copy, over its own drill session (see
    /// `drill_bridge`): its service stopped, its credentials file rewritten (the drill's
    /// credential and address; no LLM key, and an LLM address nothing answers at), only then a
    /// proxy device to the agent listener added, the service started, and the drill's message
    /// answered. The session closes when this returns, which revokes the credential.
    async fn round_trip(
        &self,
        rt: &ContainerRuntime,
        container: &StagedContainer,
    ) -> Result<String, String> {
        use crate::agents::deploy::{BRIDGE_PORT_INSIDE, CREDENTIALS_PATH};
        let name = &container.container;
        let exec = |argv: &'static [&'static str]| async move {
            rt.exec(name, argv, &Default::default(), Duration::from_secs(30))
                .await
                .map_err(|e| format!("cannot run {} in the copy: {e}", argv.join(" ")))
        };
        let stopped = rt
            .exec(
                name,
                &["systemctl", "stop", &container.service],
                &Default::default(),
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| format!("cannot stop the copy's {} service: {e}", container.service))?;
        if stopped.exit_code != 0 {
            return Err(format!(
                "cannot stop the copy's {} service: {}",
                container.service,
                stopped.stderr.trim()
            ));
        }
        // The copy's own file (hostile input: only its other lines are kept, as they are).
        let current = exec(&["cat", CREDENTIALS_PATH]).await?;
        let session = self.0.drill_bridge.open(&container.slug);
        let bridge_url = format!("http://127.0.0.1:{BRIDGE_PORT_INSIDE}/drill/{}", session.id);
        let env = drill_env(
            &current.stdout,
            &container.slug,
            &bridge_url,
            &session.token,
        );
        crate::agents::deploy::push_credentials(rt, name, &env)
            .await
            .map_err(|e| format!("cannot write the drill's credentials into the copy: {e}"))?;
        rt.add_device(
            name,
            &crate::runtime::Device::Proxy {
                name: "taos-drill-bridge".into(),
                listen: format!("tcp:127.0.0.1:{BRIDGE_PORT_INSIDE}"),
                connect: format!("tcp:{}", self.0.agents.agent_addr),
            },
        )
        .await
        .map_err(|e| format!("cannot give the copy a way to its drill session: {e}"))?;
        crate::agents::deploy::restart_service(rt, name, &container.service)
            .await
            .map_err(|e| {
                format!(
                    "the copy's {} service did not start: {e}",
                    container.service
                )
            })?;
        let mut session = session;
        match session.answer(ROUND_TRIP_WAIT).await {
            Some(answer) => Ok(answered(&answer)),
            None => {
                let log = rt
                    .exec(
                        name,
                        &[
                            "journalctl",
                            "--no-pager",
                            "-o",
                            "cat",
                            "-n",
                            "3",
                            "-u",
                            &container.service,
                        ],
                        &Default::default(),
                        Duration::from_secs(20),
                    )
                    .await
                    .map(|o| o.stdout.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let log: String = log.chars().take(300).collect();
                Err(format!(
                    "its sidecar did not answer the drill's message within {} s over its \
                     drill bridge session (the {} service's last log lines: {:?})",
                    ROUND_TRIP_WAIT.as_secs(),
                    container.service,
                    log
                ))
            }
        }
    }
}

/// What a drilled copy's answer says, for its check.
fn answered(answer: &super::drill_bridge::DrillAnswer) -> String {
    format!(
        "its sidecar got the drill's message over a drill-only bridge session and answered \
         ({}: {:?}); the live agent's session was not used",
        serde_json::to_value(answer.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        answer.text
    )
}

/// The drilled copy's credentials file: its own lines kept, except where to reach the host,
/// its token and the LLM's, which become the drill session's (and no LLM at all).
fn drill_env(current: &str, slug: &str, bridge_url: &str, token: &str) -> String {
    const REPLACED: [&str; 5] = [
        "TAOS_BRIDGE_URL",
        "TAOS_AGENT_NAME",
        "TAOS_AGENT_TOKEN",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ];
    let mut env = format!(
        "TAOS_BRIDGE_URL={bridge_url}\nTAOS_AGENT_NAME={slug}\nTAOS_AGENT_TOKEN={token}\n\
         OPENAI_BASE_URL={NO_LLM_URL}\nOPENAI_API_KEY=none-in-a-restore-drill\n"
    );
    for line in current.lines().take(200) {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key {
            Some(key) if !REPLACED.contains(&key) && line.len() <= 64 * 1024 => {
                env.push_str(line);
                env.push('\n');
            }
            _ => {}
        }
    }
    env
}

/// The agent's service is `active` (polled: it may still be starting).
async fn wait_service(rt: &ContainerRuntime, name: &str, service: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let out = rt
            .exec(
                name,
                &["systemctl", "is-active", service],
                &Default::default(),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("cannot ask systemd about {service}: {e}"))?;
        let last = out.stdout.trim();
        if last == "active" {
            return Ok(());
        }
        if started.elapsed() > SERVICE_WAIT {
            return Err(format!("its {service} service is {last:?}, not active"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes a drill's project and every instance in it. Failures are logged (the next start's
/// recovery tries again for a host that died; a live leftover is named in the log).
async fn tear_down(incus: &crate::runtime::incus::Incus, project: &str) {
    let Ok(scoped) = incus.in_project(project) else {
        return;
    };
    match scoped.instance_names().await {
        Ok(names) => {
            for name in names {
                let _ = scoped.stop(&name, true).await;
                if let Err(e) = scoped.delete(&name).await {
                    tracing::error!(project, container = %name, error = %e, "cannot delete a drilled container");
                }
            }
        }
        Err(e) => tracing::error!(project, error = %e, "cannot list a drill project's containers"),
    }
    if let Err(e) = incus.delete_project(project).await {
        tracing::error!(project, error = %e, "cannot delete a drill's incus project");
    }
}

fn read_manifest(root: &Path) -> Result<Manifest, String> {
    let bytes = std::fs::read(root.join(MANIFEST_FILE))
        .map_err(|e| format!("the snapshot has no readable {MANIFEST_FILE}: {e}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the snapshot's {MANIFEST_FILE} is unreadable: {e}"))?;
    if manifest.format != super::stage::MANIFEST_FORMAT {
        return Err(format!("manifest format {} is unknown", manifest.format));
    }
    Ok(manifest)
}

/// The restored database, opened read-only: SQLite's integrity check passes, its newest
/// migration is the manifest's schema, and the run that made it and the agents of the
/// manifest's containers are in it.
async fn check_database(root: &Path, manifest: &Manifest) -> Result<String, String> {
    let file: PathBuf = root.join(crate::db::DB_FILE);
    if !file.is_file() {
        return Err(format!("the snapshot holds no {}", crate::db::DB_FILE));
    }
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| format!("cannot open the restored database: {e}"))?;
    let result = async {
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("its integrity check did not run: {e}"))?;
        if integrity != "ok" {
            return Err(format!("its integrity check found: {integrity}"));
        }
        let schema: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("its schema can't be read: {e}"))?;
        if schema != manifest.schema_version {
            return Err(format!(
                "its schema is {schema}, the manifest says {}",
                manifest.schema_version
            ));
        }
        let run: Option<String> = sqlx::query_scalar("SELECT id FROM backup_runs WHERE id = ?")
            .bind(&manifest.run_id)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if run.is_none() {
            return Err(format!(
                "the run {} that made it is not in it",
                manifest.run_id
            ));
        }
        for container in &manifest.containers {
            let found = crate::agents::slug_and_container_in(&mut conn, &container.agent_id)
                .await
                .map_err(|e| e.to_string())?;
            if found.map(|(slug, _)| slug).as_deref() != Some(container.slug.as_str()) {
                return Err(format!(
                    "agent {} ({}) of the manifest's containers is not in it",
                    container.slug, container.agent_id
                ));
            }
        }
        let agents = crate::agents::count_in(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let messages = crate::chat::message_count_in(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "integrity ok, schema {schema}, {agents} agent(s), {messages} message(s)"
        ))
    }
    .await;
    use sqlx::Connection;
    let _ = conn.close().await;
    result
}

/// A Docker agent's saved image (`docker save` format) is whole: a readable tar whose
/// `manifest.json` names layers that are all in it. The restored copy was written by the
/// host's own export; only entry names and the manifest are read, never unpacked.
fn docker_archive_is_whole(path: &Path) -> Result<String, String> {
    const MAX_MANIFEST: u64 = 1 << 20;
    let file = std::fs::File::open(path).map_err(|e| format!("the saved image is missing: {e}"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut names = std::collections::HashSet::new();
    let mut manifest: Option<serde_json::Value> = None;
    let entries = archive
        .entries()
        .map_err(|e| format!("the saved image is not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the saved image is damaged: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("the saved image has a bad entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        if name == "manifest.json" {
            if entry.size() > MAX_MANIFEST {
                return Err("the saved image's manifest.json is too large".into());
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| format!("the saved image's manifest.json is unreadable: {e}"))?;
            manifest = Some(
                serde_json::from_str(&text)
                    .map_err(|e| format!("the saved image's manifest.json is not JSON: {e}"))?,
            );
        }
        names.insert(name);
    }
    let manifest = manifest.ok_or("the saved image has no manifest.json")?;
    let layers: Vec<&str> = manifest
        .as_array()
        .and_then(|images| images.first())
        .and_then(|image| image["Layers"].as_array())
        .map(|layers| layers.iter().filter_map(|l| l.as_str()).collect())
        .ok_or("the saved image's manifest.json lists no layers")?;
    if let Some(missing) = layers.iter().find(|layer| !names.contains(**layer)) {
        return Err(format!("the saved image lacks its layer {missing}"));
    }
    Ok(format!(
        "the saved Docker image is whole ({} layers)",
        layers.len()
    ))
}

fn check_ok(name: &str, detail: String) -> DrillCheck {
    DrillCheck {
        name: name.to_string(),
        ok: true,
        detail,
    }
}

fn check_failed(name: &str, detail: String) -> DrillCheck {
    DrillCheck {
        name: name.to_string(),
        ok: false,
        detail,
    }
}

/// Due when `every_days` (0: never by itself) have passed since the last drill, or since the
/// first backup when there was no drill (and never before there is a backup).
pub fn drill_due(
    now: DateTime<Utc>,
    every_days: u32,
    last_drill: Option<DateTime<Utc>>,
    first_backup: Option<DateTime<Utc>>,
) -> bool {
    if every_days == 0 {
        return false;
    }
    let Some(since) = last_drill.or(first_backup) else {
        return false;
    };
    now - since >= chrono::Duration::days(i64::from(every_days))
}

fn drill_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<BackupDrill, BackupError> {
    let decode = |e: taos_proto::text_enum::UnknownVariant| BackupError::Decode(e.to_string());
    Ok(BackupDrill {
        id: row.get("id"),
        state: row.get::<String, _>("state").parse().map_err(decode)?,
        reason: row.get::<String, _>("reason").parse().map_err(decode)?,
        snapshot_id: row.get("snapshot_id"),
        created_at: from_ms(row.get("created_at")),
        finished_at: row.get::<Option<i64>, _>("finished_at").map(from_ms),
        checks: serde_json::from_str(&row.get::<String, _>("checks"))
            .map_err(|e| BackupError::Decode(format!("checks: {e}")))?,
        error: row.get("error"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `docker save`-shaped archive with `layers` listed in its manifest and `present` in it.
    fn saved_image(dir: &Path, layers: &[&str], present: &[&str]) -> PathBuf {
        let path = dir.join("agent.tar");
        let mut archive = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, name, data).unwrap();
        };
        let manifest = serde_json::json!([{"Config": "c.json", "Layers": layers}]);
        add("manifest.json", manifest.to_string().as_bytes());
        for layer in present {
            add(layer, b"layer bytes");
        }
        archive.finish().unwrap();
        path
    }

    #[test]
    fn a_saved_docker_image_is_whole_only_with_every_layer_its_manifest_names() {
        let dir = tempfile::tempdir().unwrap();
        let good = saved_image(
            dir.path(),
            &["a/layer.tar", "b/layer.tar"],
            &["a/layer.tar", "b/layer.tar"],
        );
        let detail = docker_archive_is_whole(&good).unwrap();
        assert!(detail.contains("2 layers"), "{detail}");

        let short = saved_image(
            dir.path(),
            &["a/layer.tar", "b/layer.tar"],
            &["a/layer.tar"],
        );
        let why = docker_archive_is_whole(&short).unwrap_err();
        assert!(why.contains("b/layer.tar"), "{why}");

        let not_tar = dir.path().join("junk.tar");
        std::fs::write(&not_tar, b"not an archive at all").unwrap();
        assert!(docker_archive_is_whole(&not_tar).is_err());
        assert!(docker_archive_is_whole(&dir.path().join("missing.tar"))
            .unwrap_err()
            .contains("missing"));
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn drills_are_due_every_n_days_after_the_first_backup() {
        let now = at("2026-12-10T12:00:00Z");
        // No backup yet: nothing to drill.
        assert!(!drill_due(now, 7, None, None));
        // The first backup 3 days ago: not yet; 7 days ago: due.
        assert!(!drill_due(now, 7, None, Some(at("2026-12-07T12:00:00Z"))));
        assert!(drill_due(now, 7, None, Some(at("2026-12-03T12:00:00Z"))));
        // The last drill counts over the first backup.
        assert!(!drill_due(
            now,
            7,
            Some(at("2026-12-09T12:00:00Z")),
            Some(at("2026-11-01T00:00:00Z"))
        ));
        assert!(drill_due(
            now,
            1,
            Some(at("2026-12-09T12:00:00Z")),
            Some(at("2026-11-01T00:00:00Z"))
        ));
        // 0: only on request.
        assert!(!drill_due(now, 0, None, Some(at("2020-01-01T00:00:00Z"))));
    }
}
