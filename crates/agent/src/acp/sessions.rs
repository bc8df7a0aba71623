//! Which ACP session answers which conversation (a channel, or a thread in it), kept in a file
//! in the sidecar's state folder so a restarted sidecar (or agent) can `session/load` it.
//!
//! The file is replaced whole on each change: written to a temporary file (0600) beside it,
//! synced, renamed over the old one, and the folder synced, so a crash leaves the old map or
//! the new one, never half of either. It is small (bounded to `MAX_SESSIONS` entries) and
//! written once per new session, so plain blocking file calls are fine.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Conversations remembered; the least recently used go first.
const MAX_SESSIONS: usize = 4096;
/// A session id the agent gives longer than this is not stored (it is the agent's input).
pub const MAX_SESSION_ID_CHARS: usize = 512;
pub const FILE_NAME: &str = "acp-sessions.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct SessionFile {
    /// The agent command the sessions belong to: another agent can't load them.
    command: Vec<String>,
    sessions: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    session_id: String,
    /// A counter of use, for forgetting the least recently used first.
    used: u64,
}

pub struct SessionStore {
    path: PathBuf,
    file: SessionFile,
}

/// The conversation a delivery belongs to: its channel, or its thread there.
pub fn conversation_key(channel_id: &str, thread_id: Option<&str>) -> String {
    match thread_id {
        Some(thread) => format!("{channel_id}/{thread}"),
        None => channel_id.to_string(),
    }
}

impl SessionStore {
    /// Reads the map from `dir`; a missing, unreadable or other agent's map starts empty (and
    /// says so in the log).
    pub fn open(dir: &Path, command: &[String]) -> SessionStore {
        let path = dir.join(FILE_NAME);
        let file = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SessionFile>(&bytes) {
                Ok(file) if file.command == command => file,
                Ok(_) => {
                    tracing::info!(path = %path.display(), "the ACP session map is another agent command's; starting new sessions");
                    SessionFile::default()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the ACP session map is unreadable; starting new sessions");
                    SessionFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SessionFile::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the ACP session map; starting new sessions");
                SessionFile::default()
            }
        };
        let mut store = SessionStore { path, file };
        store.file.command = command.to_vec();
        store
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.file.sessions.get(key).map(|e| e.session_id.as_str())
    }

    /// Remembers `session_id` for `key` and writes the map. A failed write is logged: the
    /// session still works, it just won't be found after a restart.
    pub fn put(&mut self, key: &str, session_id: &str) {
        if session_id.chars().count() > MAX_SESSION_ID_CHARS {
            tracing::warn!(key, "the agent's session id is too long to remember");
            return;
        }
        let used = self
            .file
            .sessions
            .values()
            .map(|e| e.used)
            .max()
            .unwrap_or(0)
            + 1;
        self.file.sessions.insert(
            key.to_string(),
            Entry {
                session_id: session_id.to_string(),
                used,
            },
        );
        while self.file.sessions.len() > MAX_SESSIONS {
            let oldest = self
                .file
                .sessions
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.file.sessions.remove(&k),
                None => break,
            };
        }
        if let Err(e) = self.save() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the ACP session map; sessions will be new after a restart");
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| std::io::Error::other("the map has no folder"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let bytes = serde_json::to_vec(&self.file).map_err(std::io::Error::other)?;
        let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let written = out.write_all(&bytes).and_then(|()| out.sync_all());
        drop(out);
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, &self.path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_map_survives_a_reopen_and_belongs_to_its_command() {
        let dir = std::env::temp_dir().join(format!("taos-acp-sessions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let command = vec!["agent".to_string(), "acp".to_string()];
        let mut store = SessionStore::open(&dir, &command);
        assert_eq!(store.get("c1"), None);
        store.put("c1", "s-1");
        store.put(&conversation_key("c1", Some("t9")), "s-2");
        store.put("c1", "s-3");
        store.put("c2", &"x".repeat(MAX_SESSION_ID_CHARS + 1));
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let again = SessionStore::open(&dir, &command);
        assert_eq!(again.get("c1"), Some("s-3"));
        assert_eq!(again.get("c1/t9"), Some("s-2"));
        assert_eq!(again.get("c2"), None);
        // Another agent's sessions mean nothing to this one.
        let other = SessionStore::open(&dir, &["other".to_string()]);
        assert_eq!(other.get("c1"), None);
        // A broken file starts over rather than stopping the agent.
        std::fs::write(dir.join(FILE_NAME), b"{not json").unwrap();
        assert_eq!(SessionStore::open(&dir, &command).get("c1"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
