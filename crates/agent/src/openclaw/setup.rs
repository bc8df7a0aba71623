//! openclaw's configuration file, written by the sidecar at every start from what the host
//! gave it (LLM base URL and key, models) plus a fresh gateway token.
//!
//! The file lives in openclaw's state directory, in the home of the account openclaw runs as.
//! That account (and anything openclaw runs) owns the directory and could plant a symlink
//! where the sidecar, as root, writes: so the directory is opened without following links,
//! the file is created new (`O_EXCL`, never through a link) with mode 0600, handed to the
//! account, and renamed into place, all relative to that directory's handle.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self, Mode, OFlags};
use serde_json::{json, Value};

use crate::config::Secret;

/// The provider name in openclaw's config; model refs are `litellm/<model>`.
pub const PROVIDER: &str = "litellm";
pub const CONFIG_FILE: &str = "openclaw.json";
/// The environment variable openclaw reads the LLM key from; the file refers to it as
/// `${LITELLM_API_KEY}`, so the file and the environment always agree.
pub const KEY_ENV: &str = "LITELLM_API_KEY";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot prepare openclaw's state directory {path}: {error}")]
    StateDir { path: String, error: String },
    #[error("cannot write openclaw's configuration {path}: {error}")]
    Write { path: String, error: String },
}

/// What goes into openclaw's configuration.
pub struct Settings<'a> {
    /// The agent's LLM gateway (OpenAI-compatible, ends in `/v1`), reached through the
    /// container's proxy device.
    pub llm_base_url: &'a str,
    /// The primary model first, then the fallbacks.
    pub models: &'a [String],
    pub port: u16,
    pub gateway_token: &'a Secret,
    pub workspace: &'a Path,
    /// openclaw's own log file (by default it writes to `/tmp/openclaw-<uid>/`): kept with its
    /// state, so it is archived with the agent and nothing is left in a shared /tmp.
    pub log_file: &'a Path,
    /// openclaw's `tools.exec.mode` (`full`, `deny`, …).
    pub exec_mode: &'a str,
}

/// openclaw's configuration as JSON. Strict on openclaw's side: an unknown key stops the
/// gateway (exit 78), so only documented keys are used.
pub fn config_json(settings: &Settings<'_>) -> Value {
    let models: Vec<Value> = settings
        .models
        .iter()
        .map(|id| {
            json!({
                "id": id, "name": id, "reasoning": false, "input": ["text"],
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                "contextWindow": 128000, "maxTokens": 8192,
            })
        })
        .collect();
    let refs: Vec<String> = settings
        .models
        .iter()
        .map(|m| format!("{PROVIDER}/{m}"))
        .collect();
    json!({
        "gateway": {
            "mode": "local",
            "port": settings.port,
            // Loopback only: the token gives full operator access.
            "bind": "loopback",
            "auth": {"mode": "token", "token": settings.gateway_token.expose()},
        },
        "models": {
            "mode": "replace",
            "providers": {
                PROVIDER: {
                    "baseUrl": settings.llm_base_url,
                    "apiKey": format!("${{{KEY_ENV}}}"),
                    "api": "openai-completions",
                    "models": models,
                },
            },
        },
        "agents": {
            "defaults": {
                "model": {"primary": refs[0], "fallbacks": refs[1..]},
                "workspace": settings.workspace.display().to_string(),
            },
        },
        "tools": {"exec": {"mode": settings.exec_mode}},
        "logging": {"file": settings.log_file.display().to_string()},
    })
}

/// A fresh gateway token: 244 random bits, hex.
pub fn new_token() -> Secret {
    Secret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Makes `state_dir` (a directory directly in `home`) exist, owned by `owner`, mode 0700, and
/// writes `config` into it as [`CONFIG_FILE`], 0600, owned by `owner`, atomically. Returns the
/// config file's path.
pub fn write_config(
    home: &Path,
    state_name: &str,
    owner: Option<(u32, u32)>,
    config: &Value,
) -> Result<PathBuf, SetupError> {
    let state_path = home.join(state_name);
    // The home is the account's own (0700 in the container) and the sidecar's unit keeps no
    // DAC override, so root can't even open it: the files are made as the account itself.
    let _as_owner = owner
        .map(|(uid, gid)| ActingAs::account(uid, gid))
        .transpose()
        .map_err(|e| SetupError::StateDir {
            path: state_path.display().to_string(),
            error: format!("cannot act as uid {:?}: {e}", owner.map(|o| o.0)),
        })?;
    let dir_error = |error: String| SetupError::StateDir {
        path: state_path.display().to_string(),
        error,
    };
    let home_fd = fs::open(
        home,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dir_error(format!("cannot open the home directory: {e}")))?;
    match fs::mkdirat(&home_fd, state_name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(dir_error(e.to_string())),
    }
    // NOFOLLOW: a symlink planted in place of the directory is refused, not followed.
    let state_fd = fs::openat(
        &home_fd,
        state_name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| dir_error(format!("not a plain directory: {e}")))?;
    if let Some((uid, gid)) = owner {
        chown(&state_fd, uid, gid).map_err(|e| dir_error(e.to_string()))?;
    }
    let path = state_path.join(CONFIG_FILE);
    let write_error = |error: String| SetupError::Write {
        path: path.display().to_string(),
        error,
    };
    let tmp = format!(".{CONFIG_FILE}.taos-{}", std::process::id());
    // A leftover of an earlier start (or something planted): removed, never followed.
    let _ = fs::unlinkat(&state_fd, tmp.as_str(), fs::AtFlags::empty());
    let file = fs::openat(
        &state_fd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| write_error(e.to_string()))?;
    if let Some((uid, gid)) = owner {
        chown(&file, uid, gid).map_err(|e| write_error(e.to_string()))?;
    }
    let mut file = std::fs::File::from(file);
    let text = serde_json::to_vec_pretty(config).map_err(|e| write_error(e.to_string()))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| write_error(e.to_string()))?;
    drop(file);
    fs::renameat(&state_fd, tmp.as_str(), &state_fd, CONFIG_FILE)
        .map_err(|e| write_error(e.to_string()))?;
    Ok(path)
}

/// This thread's effective uid and gid switched to an account's until dropped (Linux keeps
/// them per thread, so the rest of the sidecar stays root). The saved ids stay, so they can
/// be switched back.
struct ActingAs {
    euid: rustix::process::Uid,
    egid: rustix::process::Gid,
}

impl ActingAs {
    fn account(uid: u32, gid: u32) -> rustix::io::Result<ActingAs> {
        let saved = ActingAs {
            euid: rustix::process::geteuid(),
            egid: rustix::process::getegid(),
        };
        // The group first: once the uid is not root, changing it is no longer allowed.
        rustix::thread::set_thread_res_gid(None, Some(rustix::fs::Gid::from_raw(gid)), None)?;
        if let Err(e) =
            rustix::thread::set_thread_res_uid(None, Some(rustix::fs::Uid::from_raw(uid)), None)
        {
            let _ = rustix::thread::set_thread_res_gid(None, Some(saved.egid), None);
            return Err(e);
        }
        Ok(saved)
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        let back = rustix::thread::set_thread_res_uid(None, Some(self.euid), None)
            .and_then(|()| rustix::thread::set_thread_res_gid(None, Some(self.egid), None));
        if let Err(e) = back {
            // A thread of the sidecar left as the agent's account would be a worse failure.
            eprintln!("taos-agent: cannot switch back from the agent's account: {e}");
            std::process::abort();
        }
    }
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> rustix::io::Result<()> {
    fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn settings<'a>(models: &'a [String], token: &'a Secret) -> Settings<'a> {
        Settings {
            llm_base_url: "http://127.0.0.1:6970/v1",
            models,
            port: 18789,
            gateway_token: token,
            workspace: Path::new("/home/agent/.openclaw/workspace"),
            log_file: Path::new("/home/agent/.openclaw/logs/openclaw.log"),
            exec_mode: "full",
        }
    }

    #[test]
    fn the_config_names_the_gateway_models_and_key_variable() {
        let models = vec!["small".to_string(), "big".to_string()];
        let token = Secret::new("t0ken".into());
        let config = config_json(&settings(&models, &token));
        assert_eq!(config["gateway"]["bind"], "loopback");
        assert_eq!(config["gateway"]["auth"]["token"], "t0ken");
        let provider = &config["models"]["providers"]["litellm"];
        assert_eq!(provider["apiKey"], "${LITELLM_API_KEY}");
        assert_eq!(provider["baseUrl"], "http://127.0.0.1:6970/v1");
        assert_eq!(provider["models"][1]["id"], "big");
        assert_eq!(
            config["agents"]["defaults"]["model"],
            json!({"primary": "litellm/small", "fallbacks": ["litellm/big"]})
        );
        // No OpenAI-compatible endpoint on the gateway: the sidecar uses the WebSocket only.
        assert!(config["gateway"].get("http").is_none());
    }

    #[test]
    fn the_file_is_private_and_a_planted_symlink_is_not_followed() {
        let home = std::env::temp_dir().join(format!("taos-oc-setup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let path = write_config(&home, ".openclaw", None, &json!({"a": 1})).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\n  \"a\": 1\n}");
        // Written again (a restart): replaced whole.
        write_config(&home, ".openclaw", None, &json!({"b": 2})).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"b\""));
        assert_eq!(
            std::fs::metadata(home.join(".openclaw")).unwrap().mode() & 0o777,
            0o700
        );

        // The state directory replaced by a link elsewhere: refused.
        let elsewhere = home.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::remove_dir_all(home.join(".openclaw")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, home.join(".openclaw")).unwrap();
        let err = write_config(&home, ".openclaw", None, &json!({})).unwrap_err();
        assert!(matches!(err, SetupError::StateDir { .. }), "{err}");
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        std::fs::remove_dir_all(&home).unwrap();
    }
}
