//! A typed wrapper around the `restic` binary (Debian's 0.14): argv vectors, never a shell
//! string; `--json` where restic 0.14 has it; the repository password only through
//! `--password-file` (a 0600 file in the host's private area), never in argv or the
//! environment. restic runs with a cleared environment (so a stray `RESTIC_PASSWORD` or
//! `RESTIC_REPOSITORY` in the host's can't redirect it), its cache and temp files inside the
//! data dir, and dies with the host.
//!
//! Errors carry restic's own words (its last `Fatal:` line), so a failed run says why.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The Debian package's binary; `TAOS_RESTIC_BIN` points elsewhere (a newer restic).
pub const DEFAULT_BIN: &str = "restic";
/// Most of restic's error output kept for the message (its last lines say what failed).
const MAX_STDERR_BYTES: usize = 16 * 1024;
const MAX_MESSAGE_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error(
        "restic is not installed (looked for {bin:?}): install the Debian package `restic` \
         (scripts/provision.sh does)"
    )]
    Missing { bin: String },
    #[error("cannot run restic: {0}")]
    Spawn(std::io::Error),
    #[error("there is no restic repository at {location}: {message}")]
    NoRepository { location: String, message: String },
    #[error("the passphrase does not open the restic repository at {location}")]
    WrongPassword { location: String },
    #[error("restic {command} failed: {message}")]
    Failed {
        command: &'static str,
        message: String,
    },
    #[error("restic {command} printed what taos can't read: {message}")]
    BadOutput {
        command: &'static str,
        message: String,
    },
}

/// A repository: where (restic's repository string: a path, `sftp:user@host:/path` or
/// `s3:https://host/bucket`), the environment its backend needs (none for a path or SFTP; the
/// S3 backend's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, opened from their sealed form
/// only for the call), and its `-o` options (SFTP's `sftp.command`, which names files only).
#[derive(Clone)]
pub struct Repository {
    pub location: String,
    pub env: Vec<(String, String)>,
    pub options: Vec<String>,
}

/// Without the environment, which may hold the S3 secret.
impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One restic invocation context: the binary, the repository, the password file, and the
/// host-private folders restic keeps its cache and temporary pack files in.
#[derive(Debug, Clone)]
pub struct Restic {
    pub bin: PathBuf,
    pub repo: Repository,
    pub password_file: PathBuf,
    pub cache_dir: PathBuf,
    pub tmp_dir: PathBuf,
}

/// What `restic backup --json` sums up at the end.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackupSummary {
    pub snapshot_id: String,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub data_added: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
}

/// A `restic backup --json` status line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackupStatus {
    #[serde(default)]
    pub percent_done: f64,
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub bytes_done: u64,
}

/// One snapshot as `restic snapshots --json` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hostname: String,
}

/// One key of `restic key list --json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Key {
    pub id: String,
    #[serde(default)]
    pub current: bool,
}

/// restic's retention flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepPolicy {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// What `forget --prune` did, counted from its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forgotten {
    pub kept: usize,
    pub removed: usize,
}

#[derive(Deserialize)]
struct ForgetGroup {
    #[serde(default)]
    keep: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    remove: Option<Vec<serde_json::Value>>,
}

/// A finished restic process: its exit code, all of stdout, the tail of stderr.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Restic {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg("--repo")
            .arg(&self.repo.location)
            .arg("--password-file")
            .arg(&self.password_file)
            .arg("--cache-dir")
            .arg(&self.cache_dir);
        for option in &self.repo.options {
            command.arg("-o").arg(option);
        }
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            // restic writes pack files to TMPDIR before it uploads them.
            .env("TMPDIR", &self.tmp_dir)
            .env("HOME", &self.cache_dir)
            // Status lines twice a second in --json mode (not only at the end).
            .env("RESTIC_PROGRESS_FPS", "2")
            // As many threads as the cores it is kept on (`background_priority`).
            .env("GOMAXPROCS", restic_threads().to_string())
            .envs(self.repo.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::sys::die_with_parent(&mut command);
        // A backup may take minutes; chat and the agents come first.
        crate::sys::background_priority(&mut command);
        command
    }

    /// Runs restic with `args` (in `cwd` if given), handing each stdout line to `on_line` as
    /// it comes.
    async fn run(
        &self,
        command_name: &'static str,
        args: &[&str],
        cwd: Option<&Path>,
        mut on_line: impl FnMut(&str),
    ) -> Result<Output, ResticError> {
        let mut command = self.command(args);
        if let Some(dir) = cwd {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ResticError::Missing {
                    bin: self.bin.display().to_string(),
                }
            } else {
                ResticError::Spawn(e)
            }
        })?;
        let stdout = child.stdout.take().ok_or_else(|| ResticError::BadOutput {
            command: command_name,
            message: "no stdout".into(),
        })?;
        let mut stderr = child.stderr.take().ok_or_else(|| ResticError::BadOutput {
            command: command_name,
            message: "no stderr".into(),
        })?;
        // stderr is drained beside stdout, or a chatty restic would block on a full pipe.
        let errors = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&chunk[..n]);
                if all.len() > MAX_STDERR_BYTES {
                    all.drain(..all.len() - MAX_STDERR_BYTES);
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut out = String::new();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    on_line(&line);
                    // Status lines are many and only for progress; keep the rest.
                    if !line.starts_with("{\"message_type\":\"status\"") {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ResticError::BadOutput {
                        command: command_name,
                        message: e.to_string(),
                    })
                }
            }
        }
        let status = child.wait().await.map_err(ResticError::Spawn)?;
        let stderr = errors.await.unwrap_or_default();
        Ok(Output {
            code: status.code(),
            stdout: out,
            stderr,
        })
    }

    /// Runs restic and returns its stdout, or the error its words describe.
    async fn run_ok(&self, command: &'static str, args: &[&str]) -> Result<String, ResticError> {
        let output = self.run(command, args, None, |_| {}).await?;
        if output.code == Some(0) {
            return Ok(output.stdout);
        }
        Err(self.failure(command, &output))
    }

    /// The error a failed run means, in restic's words.
    fn failure(&self, command: &'static str, output: &Output) -> ResticError {
        let message = restic_message(&output.stderr, output.code);
        let lower = message.to_lowercase();
        if lower.contains("wrong password") {
            ResticError::WrongPassword {
                location: self.repo.location.clone(),
            }
        } else if lower.contains("is there a repository at the following location")
            || lower.contains("unable to open config file")
            || lower.contains("repository does not exist")
        {
            ResticError::NoRepository {
                location: self.repo.location.clone(),
                message,
            }
        } else {
            ResticError::Failed { command, message }
        }
    }

    /// Creates the repository (restic 0.14's `init` has no JSON output).
    pub async fn init(&self) -> Result<(), ResticError> {
        self.run_ok("init", &["init"]).await.map(|_| ())
    }

    /// Removes locks left by restic processes that no longer exist (a host killed mid-backup).
    pub async fn unlock(&self) -> Result<(), ResticError> {
        self.run_ok("unlock", &["unlock"]).await.map(|_| ())
    }

    /// Snapshots carrying every tag in `tags`, oldest first.
    pub async fn snapshots(&self, tags: &[&str]) -> Result<Vec<Snapshot>, ResticError> {
        let mut args = vec!["snapshots", "--json"];
        let joined = tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tag", joined.as_str()]);
        }
        let out = self.run_ok("snapshots", &args).await?;
        serde_json::from_str::<Option<Vec<Snapshot>>>(out.trim())
            .map(Option::unwrap_or_default)
            .map_err(|e| ResticError::BadOutput {
                command: "snapshots",
                message: e.to_string(),
            })
    }

    /// Backs up the folder `name` inside `parent` as host `host` with `tags`; status lines go
    /// to `progress`. It is named relative to `parent`, so the snapshot's top folder is `name`
    /// (restic 0.14 would otherwise record every folder of an absolute path). Exit code 3 (some
    /// files could not be read) is a failure: the snapshot would be partial.
    pub async fn backup(
        &self,
        parent: &Path,
        name: &str,
        host: &str,
        tags: &[String],
        progress: Option<mpsc::UnboundedSender<BackupStatus>>,
    ) -> Result<BackupSummary, ResticError> {
        let mut args = vec!["backup", "--json", "--host", host];
        for tag in tags {
            args.extend(["--tag", tag.as_str()]);
        }
        args.push(name);
        let mut read_errors = Vec::new();
        let output = self
            .run("backup", &args, Some(parent), |line| {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    return;
                };
                match value["message_type"].as_str() {
                    Some("status") => {
                        if let (Some(tx), Ok(status)) =
                            (&progress, serde_json::from_value::<BackupStatus>(value))
                        {
                            // The run may have stopped listening; progress is best effort.
                            let _ = tx.send(status);
                        }
                    }
                    Some("error") => read_errors.push(format!(
                        "{}: {}",
                        value["item"].as_str().unwrap_or("?"),
                        value["error"]["message"]
                            .as_str()
                            .or_else(|| value["error"].as_str())
                            .unwrap_or("unreadable")
                    )),
                    _ => {}
                }
            })
            .await?;
        if output.code == Some(3) {
            return Err(ResticError::Failed {
                command: "backup",
                message: format!(
                    "some files could not be read, so the snapshot would be incomplete: {}",
                    clip(&read_errors.join("; "))
                ),
            });
        }
        if output.code != Some(0) {
            return Err(self.failure("backup", &output));
        }
        output
            .stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|v| v["message_type"] == "summary")
            .and_then(|v| serde_json::from_value::<BackupSummary>(v).ok())
            .ok_or_else(|| ResticError::BadOutput {
                command: "backup",
                message: "no summary line".into(),
            })
    }

    /// Restores snapshot `id` into `target` (restic 0.14's `restore` has no JSON output).
    /// Restores only the paths matching `includes` (restic's `--include` patterns).
    pub async fn restore_including(
        &self,
        id: &str,
        target: &Path,
        includes: &[String],
    ) -> Result<(), ResticError> {
        let target = target.to_string_lossy().into_owned();
        let mut args = vec!["restore", id, "--target", target.as_str()];
        for include in includes {
            args.extend(["--include", include.as_str()]);
        }
        self.run_ok("restore", &args).await.map(|_| ())
    }

    pub async fn restore(&self, id: &str, target: &Path) -> Result<(), ResticError> {
        let target = target.to_string_lossy().into_owned();
        self.run_ok("restore", &["restore", id, "--target", target.as_str()])
            .await
            .map(|_| ())
    }

    /// Checks the repository's structure, and with `read_data_subset` (e.g. `5%`, `1/10`)
    /// also reads and verifies that part of the data. Uses our cache folder, not /tmp.
    pub async fn check(&self, read_data_subset: Option<&str>) -> Result<(), ResticError> {
        let mut args = vec!["check", "--with-cache"];
        if let Some(subset) = read_data_subset {
            args.extend(["--read-data-subset", subset]);
        }
        self.run_ok("check", &args).await.map(|_| ())
    }

    /// The repository's keys; `current` is the one this password opened.
    pub async fn keys(&self) -> Result<Vec<Key>, ResticError> {
        let out = self.run_ok("key list", &["key", "list", "--json"]).await?;
        serde_json::from_str(out.trim()).map_err(|e| ResticError::BadOutput {
            command: "key list",
            message: e.to_string(),
        })
    }

    /// The id of the key this password opens.
    pub async fn current_key(&self) -> Result<String, ResticError> {
        self.keys()
            .await?
            .into_iter()
            .find(|k| k.current)
            .map(|k| k.id)
            .ok_or_else(|| ResticError::BadOutput {
                command: "key list",
                message: "no key is marked current".into(),
            })
    }

    /// Adds a key for the password in `new_password_file` (the current one stays).
    pub async fn key_add(&self, new_password_file: &Path) -> Result<(), ResticError> {
        let file = new_password_file.to_string_lossy().into_owned();
        self.run_ok(
            "key add",
            &["key", "add", "--new-password-file", file.as_str()],
        )
        .await
        .map(|_| ())
    }

    /// Removes the key `id` (restic refuses to remove the current one).
    pub async fn key_remove(&self, id: &str) -> Result<(), ResticError> {
        self.run_ok("key remove", &["key", "remove", id])
            .await
            .map(|_| ())
    }

    /// Forgets the snapshots `ids` (their data goes at the next prune).
    pub async fn forget_ids(&self, ids: &[&str]) -> Result<(), ResticError> {
        let mut args = vec!["forget"];
        args.extend(ids);
        self.run_ok("forget", &args).await.map(|_| ())
    }

    /// Forgets snapshots tagged `tag` beyond `keep`, and prunes the data only they used.
    pub async fn forget_prune(
        &self,
        tag: &str,
        keep: KeepPolicy,
    ) -> Result<Forgotten, ResticError> {
        let (daily, weekly, monthly) = (
            keep.daily.to_string(),
            keep.weekly.to_string(),
            keep.monthly.to_string(),
        );
        let out = self
            .run_ok(
                "forget",
                &[
                    "forget",
                    "--json",
                    "--prune",
                    "--tag",
                    tag,
                    "--keep-daily",
                    &daily,
                    "--keep-weekly",
                    &weekly,
                    "--keep-monthly",
                    &monthly,
                ],
            )
            .await?;
        // The JSON array is one line among prune's words.
        let groups = out
            .lines()
            .find_map(|line| serde_json::from_str::<Option<Vec<ForgetGroup>>>(line).ok())
            .ok_or_else(|| ResticError::BadOutput {
                command: "forget",
                message: "no JSON list of snapshot groups".into(),
            })?
            .unwrap_or_default();
        Ok(groups
            .iter()
            .fold(Forgotten::default(), |sum, g| Forgotten {
                kept: sum.kept + g.keep.as_ref().map_or(0, Vec::len),
                removed: sum.removed + g.remove.as_ref().map_or(0, Vec::len),
            }))
    }
}

/// restic's reason in words: its `Fatal:` line if there is one, else its last lines.
fn restic_message(stderr: &str, code: Option<i32>) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(fatal) = lines.iter().rev().find_map(|l| l.strip_prefix("Fatal: ")) {
        // Over SFTP, restic's own words ("unable to start the sftp session, error: EOF") hide
        // why: the ssh client's line before them says it.
        // The first of SSH_FAILURES found wins (the plainest reason).
        let ssh = SSH_FAILURES.iter().find_map(|f| {
            lines
                .iter()
                .find(|l| l.contains(f) && !l.starts_with("Fatal: "))
                .map(|l| l.trim_start_matches("subprocess ssh: "))
        });
        return match ssh {
            Some(said) => clip(&format!("{fatal} (ssh: {said})")),
            None => clip(fatal),
        };
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        match code {
            Some(code) => format!("exit code {code}, no message"),
            None => "killed by a signal".to_string(),
        }
    } else {
        clip(&tail)
    }
}

/// What the ssh client prints when it can't reach or trust an SFTP server, plainest first.
const SSH_FAILURES: &[&str] = &[
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
    "Connection refused",
    "Connection timed out",
    "No route to host",
    "Could not resolve hostname",
    "Connection closed by",
    "kex_exchange_identification",
];

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// The OS threads restic's Go runtime may run at once: one per core it is kept on (half this
/// machine's, at least one).
fn restic_threads() -> usize {
    crate::sys::background_cpus().len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fatal_line_is_the_message() {
        let stderr = "repository 1234 opened\nFatal: wrong password or no key found\n";
        assert_eq!(
            restic_message(stderr, Some(1)),
            "wrong password or no key found"
        );
        assert_eq!(restic_message("", Some(1)), "exit code 1, no message");
        assert_eq!(restic_message("", None), "killed by a signal");
        assert_eq!(restic_message("a\nb\nc\nd\n", Some(1)), "b / c / d");
        assert_eq!(
            restic_message(
                "Host key verification failed.\nFatal: unable to start the sftp session, error: EOF\n",
                Some(1)
            ),
            "unable to start the sftp session, error: EOF (ssh: Host key verification failed.)"
        );
    }
}
