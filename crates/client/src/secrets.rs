//! Where refresh tokens live: the OS keychain, never a plain file. With no keychain the app
//! refuses to pair and says why.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no OS keychain is available ({0}). taos keeps its sign-in token only in the keychain: \
         on Linux start a Secret Service (GNOME Keyring or KeePassXC) and unlock it, then pair again"
    )]
    Unavailable(String),
    #[error("the keychain refused: {0}")]
    Failed(String),
}

/// A small key-value store for secrets.
pub trait SecretStore: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError>;
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError>;
    fn delete(&self, key: &str) -> Result<(), SecretError>;

    /// Checks the store works at all (write, read back, delete), so pairing can refuse
    /// before it spends a single-use token.
    fn probe(&self) -> Result<(), SecretError> {
        let key = "taos-probe";
        self.set(key, "probe")?;
        let back = self.get(key)?;
        self.delete(key)?;
        match back.as_deref() {
            Some("probe") => Ok(()),
            _ => Err(SecretError::Unavailable("it did not keep a value".into())),
        }
    }
}

/// The refresh token's key for a paired device.
pub fn refresh_key(device_id: &str) -> String {
    format!("refresh:{device_id}")
}

/// Keeps secrets in memory only: for tests, and for nothing else.
#[derive(Default)]
pub struct MemoryStore(Mutex<HashMap<String, String>>);

impl SecretStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned())
    }
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), SecretError> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
        Ok(())
    }
}

/// A store that refuses, saying why: what the app uses when the platform's keystore could not
/// be opened, so pairing explains itself instead of keeping a token anywhere less safe.
pub struct Unavailable(pub String);

impl SecretStore for Unavailable {
    fn get(&self, _: &str) -> Result<Option<String>, SecretError> {
        Err(SecretError::Unavailable(self.0.clone()))
    }
    fn set(&self, _: &str, _: &str) -> Result<(), SecretError> {
        Err(SecretError::Unavailable(self.0.clone()))
    }
    fn delete(&self, _: &str) -> Result<(), SecretError> {
        Ok(())
    }
}

/// The OS keychain through `keyring`: Secret Service on Linux, Keychain on Apple systems,
/// Credential Manager on Windows.
#[cfg(feature = "keychain")]
pub struct Keychain {
    service: String,
}

#[cfg(feature = "keychain")]
impl Keychain {
    pub fn new(service: &str) -> Keychain {
        Keychain {
            service: service.to_string(),
        }
    }

    fn entry(&self, key: &str) -> Result<keyring::Entry, SecretError> {
        keyring::Entry::new(&self.service, key).map_err(classify)
    }
}

#[cfg(feature = "keychain")]
fn classify(e: keyring::Error) -> SecretError {
    match e {
        keyring::Error::PlatformFailure(_) | keyring::Error::NoStorageAccess(_) => {
            SecretError::Unavailable(e.to_string())
        }
        other => SecretError::Failed(other.to_string()),
    }
}

/// Runs a keychain call on a thread of its own. The Secret Service client blocks on a runtime
/// of its own, which panics inside the app's async runtime; a fresh thread has none. Keychain
/// calls are rare (pairing, a refresh every few minutes), so the thread is cheap.
#[cfg(feature = "keychain")]
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(feature = "keychain")]
impl SecretStore for Keychain {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError> {
        off_runtime(|| match self.entry(key)?.get_password() {
            Ok(value) => Ok(Some(value)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(classify(e)),
        })
    }
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError> {
        off_runtime(|| self.entry(key)?.set_password(value).map_err(classify))
    }
    fn delete(&self, key: &str) -> Result<(), SecretError> {
        off_runtime(|| match self.entry(key)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(classify(e)),
        })
    }
}
