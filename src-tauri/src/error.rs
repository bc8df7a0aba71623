//! The one error every command returns: a code the UI can branch on and a message it can show.

use serde::Serialize;
use taos_client::cache::CacheError;
use taos_client::hosts::HostsError;
use taos_client::net::NetError;
use taos_client::pairing::PairError;
use taos_client::secrets::SecretError;
use taos_client::session::SessionError;

#[derive(Debug, Serialize)]
pub struct CommandError {
    /// `offline`, `revoked`, `not_paired`, `wrong_key`, `pairing`, `host`, `keychain`, `cache`,
    /// `bad_input`.
    pub code: String,
    pub message: String,
    /// The host's HTTP status when it answered with an error, else 0.
    pub status: u16,
}

impl CommandError {
    pub fn new(code: &str, message: impl Into<String>) -> CommandError {
        CommandError {
            code: code.into(),
            message: message.into(),
            status: 0,
        }
    }

    pub fn not_paired() -> CommandError {
        CommandError::new("not_paired", "this app is not paired with a host yet")
    }
}

impl From<NetError> for CommandError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Host {
                status,
                code,
                message,
            } => CommandError {
                code,
                message,
                status,
            },
            NetError::Unreachable { .. } => CommandError::new("offline", e.to_string()),
            NetError::WrongKey(_) => CommandError::new("wrong_key", e.to_string()),
            NetError::Unauthorized => CommandError::new("revoked", e.to_string()),
            NetError::Protocol(_) => CommandError::new("host", e.to_string()),
        }
    }
}

impl From<SessionError> for CommandError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Revoked => CommandError::new("revoked", e.to_string()),
            SessionError::Net(e) => e.into(),
            SessionError::Secrets(e) => e.into(),
        }
    }
}

impl From<PairError> for CommandError {
    fn from(e: PairError) -> Self {
        match e {
            PairError::WrongKey(_) => CommandError::new("wrong_key", e.to_string()),
            PairError::Secrets(e) => e.into(),
            PairError::Unreachable(_) => CommandError::new("offline", e.to_string()),
            PairError::BadInput(_) => CommandError::new("bad_input", e.to_string()),
            other => CommandError::new("pairing", other.to_string()),
        }
    }
}

impl From<SecretError> for CommandError {
    fn from(e: SecretError) -> Self {
        CommandError::new("keychain", e.to_string())
    }
}

impl From<CacheError> for CommandError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::BadInput(_) => CommandError::new("bad_input", e.to_string()),
            other => CommandError::new("cache", other.to_string()),
        }
    }
}

impl From<HostsError> for CommandError {
    fn from(e: HostsError) -> Self {
        CommandError::new("cache", e.to_string())
    }
}

pub type CommandResult<T> = Result<T, CommandError>;
