//! Secrets at rest (provider API keys): sealed with ChaCha20-Poly1305 under a key kept in its
//! own 0600 file, so a copy of the database — a backup, a bug report — doesn't carry them.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::fsutil;

pub const KEY_FILE: &str = "secret.key";
const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or write the secret key file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the secret key file is damaged")]
    BadKeyFile,
    #[error("a stored secret can't be opened (wrong key or damaged)")]
    CannotOpen,
}

#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    /// Loads `<data>/secret.key`, creating it (0600 from the first byte) on first run.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretBox, SecretError> {
        let path = data_dir.join(KEY_FILE);
        let fresh = ChaCha20Poly1305::generate_key(&mut OsRng);
        match fsutil::create_new_atomic(&path, STANDARD.encode(fresh).as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let text = std::fs::read_to_string(&path)?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKeyFile)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKeyFile);
        }
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a fresh nonce and a valid key cannot fail.
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let data = stored
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|d| d.len() > 12)
            .ok_or(SecretError::CannotOpen)?;
        let (nonce, sealed) = data.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| SecretError::CannotOpen)?;
        String::from_utf8(plain).map_err(|_| SecretError::CannotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let sb = SecretBox::load_or_create(dir.path()).unwrap();
        assert_eq!(fsutil::mode_of(&dir.path().join(KEY_FILE)).unwrap(), 0o600);
        let sealed = sb.seal("sk-very-secret");
        assert!(!sealed.contains("very-secret"));
        assert_eq!(sb.open(&sealed).unwrap(), "sk-very-secret");
        assert_ne!(sb.seal("x"), sb.seal("x"), "fresh nonce each time");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(sb.open(&tampered).is_err());
        let again = SecretBox::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open(&sealed).unwrap(),
            "sk-very-secret",
            "the key persists"
        );
    }
}
