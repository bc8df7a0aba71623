//! Running a tool's process: as the tools account, never as the sidecar, with an environment
//! of its own, in a process group of its own, under a time limit, with its output capped.
//!
//! Every tool that touches the container (commands, files, directories) goes through
//! [`Sandbox::run`], so the rules live in one place:
//! - the process switches to the tools account (uid, gid, no supplementary groups) before it
//!   runs anything, so it can read only what that account can: not the sidecar's credentials
//!   file (0600 root) and not the sidecar's environment (`/proc/<pid>/environ` is the owner's);
//! - its environment is built here from nothing (PATH, HOME, USER, LANG): nothing of the
//!   sidecar's, which holds the agent's token and LLM key, is passed on;
//! - when it ends or times out, its process group is killed, and under a dedicated account
//!   every process of that account too: tools leave nothing running behind them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::{RunAs, ToolsConfig};

/// PATH for tools: `/usr/local/bin` first, where the image puts the recycle bin's `rm`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After the process ended, how long its output may take to drain.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the tools account {0:?} does not exist (it is made when the agent image is built)")]
    NoSuchUser(String),
    #[error("the tools account {0:?} is root; tools never run as root")]
    Root(String),
    #[error(
        "the sidecar is not root, so it cannot run tools as {0:?}; run it as root (the agent \
         image does) or as that account"
    )]
    CannotSwitch(String),
    #[error(
        "the sidecar lacks CAP_SETUID/CAP_SETGID, so it cannot run tools as {0:?} (the agent \
         image's unit grants them under incus, and taos adds them to its Docker containers)"
    )]
    NoCapability(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// Where and as whom tools run, and their output cap.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `None`: the sidecar's own account.
    account: Option<Account>,
    workdir: PathBuf,
    home: String,
    user: String,
    output_bytes: usize,
}

/// How a tool's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// `None` when it was killed by a signal (also on a timeout).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

/// Output kept within the cap: its start and its end, with what was cut said in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub text: String,
    pub total_bytes: u64,
    pub truncated: bool,
}

impl Sandbox {
    /// Resolves the account once, at start, so a missing account stops the sidecar with the
    /// reason instead of failing every tool call.
    pub fn new(config: &ToolsConfig) -> Result<Sandbox, SetupError> {
        Sandbox::with_passwd(config, Path::new("/etc/passwd"))
    }

    fn with_passwd(config: &ToolsConfig, passwd: &Path) -> Result<Sandbox, SetupError> {
        let (account, home, user) = match &config.run_as {
            RunAs::User(name) => {
                let text = std::fs::read_to_string(passwd).map_err(|e| SetupError::Read {
                    path: passwd.display().to_string(),
                    error: e.to_string(),
                })?;
                let account = find_account(&text, name)
                    .ok_or_else(|| SetupError::NoSuchUser(name.clone()))?;
                if account.uid == 0 {
                    return Err(SetupError::Root(name.clone()));
                }
                let me = rustix::process::geteuid().as_raw();
                if me != 0 && me != account.uid {
                    return Err(SetupError::CannotSwitch(name.clone()));
                }
                let home = account.home.clone();
                if me == 0 && !can_switch_user() {
                    return Err(SetupError::NoCapability(name.clone()));
                }
                // Running as that account already: nothing to switch.
                let account = (me == 0).then_some(account);
                (account, home, name.clone())
            }
            RunAs::Ids { uid, gid } => {
                if *uid == 0 {
                    return Err(SetupError::Root(uid.to_string()));
                }
                if !rustix::process::geteuid().is_root() {
                    return Err(SetupError::CannotSwitch(uid.to_string()));
                }
                let home = config.workdir.clone().unwrap_or_else(|| "/".to_string());
                let account = Account {
                    name: uid.to_string(),
                    uid: *uid,
                    gid: *gid,
                    home: home.clone(),
                };
                (Some(account), home, uid.to_string())
            }
            RunAs::Current => (
                None,
                std::env::var("HOME").unwrap_or_else(|_| "/".to_string()),
                std::env::var("USER").unwrap_or_default(),
            ),
        };
        let workdir = PathBuf::from(config.workdir.clone().unwrap_or_else(|| home.clone()));
        Ok(Sandbox {
            account,
            workdir,
            home,
            user,
            output_bytes: config.output_bytes,
        })
    }

    /// The account tools run as, for people: its name, and whether the sidecar switches to it.
    pub fn describe(&self) -> String {
        match &self.account {
            Some(a) => format!("{} (uid {}, home {})", a.name, a.uid, a.home),
            None => format!("the sidecar's own account {:?}", self.user),
        }
    }

    /// `(uid, gid)` to switch to (`None`: the sidecar's own), the home and the user name: for
    /// openclaw mode, which runs its gateway as the same account.
    pub fn account(&self) -> (Option<(u32, u32)>, String, String) {
        (
            self.account.as_ref().map(|a| (a.uid, a.gid)),
            self.home.clone(),
            self.user.clone(),
        )
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn output_bytes(&self) -> usize {
        self.output_bytes
    }

    /// Resolves `path` against the working directory (relative paths are the workspace's).
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.workdir.join(path)
    }

    /// Runs `argv` (never through a shell unless argv says `sh -c`) as the tools account, in
    /// `cwd` (default: the workspace), feeding it `stdin`, for at most `timeout`.
    pub async fn run(
        &self,
        argv: &[String],
        cwd: Option<&Path>,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> std::io::Result<Ran> {
        self.run_capped(argv, cwd, stdin, timeout, self.output_bytes)
            .await
    }

    /// [`Sandbox::run`] keeping `cap` bytes of each stream.
    pub async fn run_capped(
        &self,
        argv: &[String],
        cwd: Option<&Path>,
        stdin: Option<&[u8]>,
        timeout: Duration,
        cap: usize,
    ) -> std::io::Result<Ran> {
        let mut command = self.command(argv, cwd)?;
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let started = Instant::now();
        let mut child = command.spawn()?;
        // Kills what is left when this returns, and also when the call is dropped part way
        // (the turn was cancelled or the sidecar is stopping).
        let reaper = Reaper {
            pid: child.id(),
            uid: self.account_uid(),
        };
        let stdout = child.stdout.take().map(|r| tokio::spawn(capture(r, cap)));
        let stderr = child.stderr.take().map(|r| tokio::spawn(capture(r, cap)));
        if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), stdin) {
            let bytes = bytes.to_vec();
            // Written alongside, so a process that doesn't read its input can't block us.
            tokio::spawn(async move {
                // A command that exits without reading its input closes the pipe: not an error of ours.
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            });
        }
        let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => (status?.code(), false),
            Err(_) => (None, true),
        };
        // Whatever it left running (a timed-out pipeline, a background job) goes now, so the
        // pipes close and the output can be read to its end.
        drop(reaper);
        // Fails only when it already exited.
        let _ = child.kill().await;
        let stdout = drained(stdout, cap).await;
        let stderr = drained(stderr, cap).await;
        Ok(Ran {
            exit_code,
            timed_out,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }
}

impl Sandbox {
    /// A command for `argv` as the tools account: an environment built from nothing (PATH,
    /// HOME, USER, LANG), in `cwd` (default: the workspace), in a process group of its own,
    /// stdout and stderr piped, stdin closed, killed when dropped. The `acp` framework starts
    /// its agent process with it too, so the rules stay in this one place.
    pub fn command(
        &self,
        argv: &[String],
        cwd: Option<&Path>,
    ) -> std::io::Result<tokio::process::Command> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("an empty command"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", &self.home)
            .env("USER", &self.user)
            .env("LOGNAME", &self.user)
            .env("SHELL", "/bin/sh")
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .current_dir(cwd.unwrap_or(&self.workdir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so the whole pipeline it starts can be killed at once.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(account) = &self.account {
            // std sets the gid, drops supplementary groups (we are root), then sets the uid,
            // all before exec.
            command.uid(account.uid).gid(account.gid);
        }
        Ok(command)
    }

    /// The account's uid when the sidecar switches to it (so its leftovers can be swept).
    pub fn account_uid(&self) -> Option<u32> {
        self.account.as_ref().map(|a| a.uid)
    }

    /// The account's home (HOME for what runs as it).
    pub fn home(&self) -> &str {
        &self.home
    }
}

/// Kills a process group and, when `uid` is a dedicated account, every process of it.
pub fn kill_all(pid: Option<u32>, uid: Option<u32>) {
    drop(Reaper { pid, uid });
}

/// Whether this process holds CAP_SETUID and CAP_SETGID (bits 7 and 6 of `CapEff`).
fn can_switch_user() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 7) != 0 && caps & (1 << 6) != 0)
}

/// `name`'s entry in passwd text.
fn find_account(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != name {
            return None;
        }
        Some(Account {
            name: name.to_string(),
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5].to_string(),
        })
    })
}

/// Kills a tool's process group and, under a dedicated account, every process of it.
struct Reaper {
    pid: Option<u32>,
    uid: Option<u32>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            kill_group(pid);
        }
        if let Some(uid) = self.uid {
            kill_account(uid);
        }
    }
}

fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        // ESRCH: the group is already gone, which is the goal.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills every process of `uid`, a few rounds over, since one may fork while we look.
fn kill_account(uid: u32) {
    for _ in 0..5 {
        let mut found = false;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(raw) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            if is_live_process_of(&status, uid) {
                if let Some(pid) = rustix::process::Pid::from_raw(raw) {
                    found = true;
                    // ESRCH: it exited on its own meanwhile, which is the goal.
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        if !found {
            return;
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "runs from Drop, which can't await; a few 10 ms rounds at a tool's end"
        )]
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a `/proc/<pid>/status` text is a live (not zombie) process of `uid` (real, effective,
/// saved or filesystem id). Zombies are already dead; their parent reaps them.
pub fn is_live_process_of(status: &str, uid: u32) -> bool {
    let zombie = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    let uid = uid.to_string();
    !zombie
        && status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().any(|id| id == uid))
}

async fn drained(task: Option<tokio::task::JoinHandle<Capture>>, cap: usize) -> Captured {
    let Some(task) = task else {
        return Capture::new(cap).finish();
    };
    let abort = task.abort_handle();
    match tokio::time::timeout(DRAIN, task).await {
        Ok(Ok(capture)) => capture.finish(),
        _ => {
            abort.abort();
            Captured {
                text: "[output unavailable: a process outside the tool kept it open]".to_string(),
                total_bytes: 0,
                truncated: true,
            }
        }
    }
}

async fn capture(mut reader: impl AsyncRead + Unpin, cap: usize) -> Capture {
    let mut capture = Capture::new(cap);
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return capture,
            Ok(n) => capture.push(&buf[..n]),
        }
    }
}

/// Keeps the first and the last half of `cap` bytes and counts the rest: reading goes on to
/// the end, so a chatty process never blocks on a full pipe.
pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        let head_cap = cap / 2;
        Capture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: cap - head_cap,
            total: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head.len();
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        self.tail.extend(bytes);
        while self.tail.len() > self.tail_cap {
            self.tail.pop_front();
        }
    }

    pub fn finish(self) -> Captured {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let cut = self.total - kept;
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if cut > 0 {
            text.push_str(&format!(
                "\n[... {cut} bytes cut: output is capped at {} bytes, its start and end kept ...]\n",
                self.head_cap + self.tail_cap
            ));
        }
        text.push_str(&String::from_utf8_lossy(&tail));
        Captured {
            text,
            total_bytes: self.total,
            truncated: cut > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_over_the_cap_keeps_start_and_end_and_says_so() {
        let mut small = Capture::new(10);
        small.push(b"hello");
        assert_eq!(
            small.finish(),
            Captured {
                text: "hello".into(),
                total_bytes: 5,
                truncated: false
            }
        );
        let mut big = Capture::new(10);
        for chunk in [&b"abc"[..], b"defgh", b"ijklmnop", b"qrstuvwxyz"] {
            big.push(chunk);
        }
        let got = big.finish();
        assert!(got.truncated);
        assert_eq!(got.total_bytes, 26);
        assert!(
            got.text.starts_with("abcde\n[... 16 bytes cut"),
            "{}",
            got.text
        );
        assert!(got.text.ends_with("...]\nvwxyz"), "{}", got.text);
    }

    #[test]
    fn accounts_are_found_in_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nagent:x:1000:1000::/home/agent:/bin/bash\nbad:line\n";
        assert_eq!(
            find_account(passwd, "agent"),
            Some(Account {
                name: "agent".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/agent".into()
            })
        );
        assert_eq!(find_account(passwd, "nobody"), None);
        let dir = std::env::temp_dir().join(format!("taos-passwd-{}", std::process::id()));
        std::fs::write(&dir, passwd).unwrap();
        let config = |name: &str| ToolsConfig {
            run_as: RunAs::User(name.into()),
            ..ToolsConfig::default()
        };
        assert!(matches!(
            Sandbox::with_passwd(&config("root"), &dir),
            Err(SetupError::Root(_))
        ));
        assert!(matches!(
            Sandbox::with_passwd(&config("ghost"), &dir),
            Err(SetupError::NoSuchUser(_))
        ));
        std::fs::remove_file(&dir).unwrap();
    }
}
