//! The first-run setup code: `<data>/setup-code` (0600). Creating the owner from the browser
//! needs it, so whoever reaches the listener first — a LAN neighbour, or a web page that rebinds
//! its DNS name to a host on loopback — can't claim the host. The host makes it at start while
//! no owner exists, prints it on stdout, and removes it once an owner exists;
//! `taos-host user create` on the host needs none.

use std::io;
use std::path::{Path, PathBuf};

use rand::RngCore;

use super::secrets_equal;
use crate::fsutil;

pub const SETUP_CODE_FILE: &str = "setup-code";

/// Crockford's base32 alphabet: no I, L, O or U, so a code read off a screen types back right.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 12 characters of 5 bits: 60 bits, far beyond what the rate-limited setup route lets anyone
/// guess.
const CODE_CHARS: usize = 12;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETUP_CODE_FILE)
}

fn new_code() -> String {
    let mut bytes = [0u8; CODE_CHARS];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // 32 divides 256, so masking keeps every character equally likely.
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    chars
        .chunks(4)
        .map(|group| group.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Upper case without dashes or spaces, so `abcd efgh-jkmn` matches `ABCD-EFGH-JKMN`.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn is_valid(code: &str) -> bool {
    let plain = normalize(code);
    plain.len() == CODE_CHARS && plain.bytes().all(|b| ALPHABET.contains(&b))
}

/// The current code, made (0600 from the first byte) if there is none. Kept across restarts
/// until an owner exists, so a code someone already copied stays good.
pub fn load_or_create(data_dir: &Path) -> io::Result<String> {
    let path = path(data_dir);
    fsutil::remove_stale_temps(&path);
    let fresh = new_code();
    match fsutil::create_new_atomic(&path, format!("{fresh}\n").as_bytes()) {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let code = std::fs::read_to_string(&path)?.trim().to_string();
            if is_valid(&code) {
                Ok(code)
            } else {
                fsutil::write_atomic(&path, format!("{fresh}\n").as_bytes())?;
                Ok(fresh)
            }
        }
        Err(e) => Err(e),
    }
}

/// Removes the code: an owner exists now. A missing file is fine.
pub fn remove(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(path(data_dir)) {
        Ok(()) => fsutil::sync_dir(data_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `offered` is the current code, compared in constant time. No code file: no match.
pub fn matches(data_dir: &Path, offered: &str) -> io::Result<bool> {
    let stored = match std::fs::read_to_string(path(data_dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let stored = normalize(stored.trim());
    Ok(is_valid(&stored) && secrets_equal(&normalize(offered), &stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_private_stable_and_forgiving_to_type() {
        let dir = tempfile::tempdir().unwrap();
        let code = load_or_create(dir.path()).unwrap();
        assert_eq!(code.len(), 14, "{code}");
        assert!(is_valid(&code), "{code}");
        assert_eq!(fsutil::mode_of(&path(dir.path())).unwrap(), 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), code);
        assert!(matches(dir.path(), &code).unwrap());
        assert!(matches(dir.path(), &code.to_lowercase().replace('-', " ")).unwrap());
        assert!(!matches(dir.path(), "").unwrap());
        assert!(!matches(dir.path(), "0000-0000-0000").unwrap() || code == "0000-0000-0000");
        remove(dir.path()).unwrap();
        assert!(!matches(dir.path(), &code).unwrap());
        remove(dir.path()).unwrap();
        let next = load_or_create(dir.path()).unwrap();
        assert_ne!(next, code);
    }

    #[test]
    fn a_damaged_file_gets_a_new_code() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "junk").unwrap();
        let code = load_or_create(dir.path()).unwrap();
        assert!(is_valid(&code));
        assert!(!matches(dir.path(), "junk").unwrap());
        assert!(matches(dir.path(), &code).unwrap());
    }
}
