//! `taos-recycle restore <id> <path>`: puts a recycle-bin item back, for the image's
//! `recycle` helper (`images/agent/recycle`), which the host runs through the container
//! runtime's exec when the owner asks for a restore.
//!
//! The restore runs as the container's full root, but the bin and most of the agent's files are
//! writable by the agent's sandboxed service: a record can be forged and any directory can be
//! swapped for a symbolic link at any moment. So nothing here resolves a path the agent could
//! have touched: the target's parent is walked from `/` one component at a time with `openat`
//! and `O_NOFOLLOW` (a link anywhere is refused, not followed), the item itself must not be a
//! link, the target must lie under an allowed root, and the move is one `renameat2` between the
//! two directories held open, with `RENAME_NOREPLACE` (never over something that is there now).
//!
//! Exit codes: 0 restored, 2 refused or bad input, 3 no such item, 17 something is at the path
//! now, 1 any other failure. The reason goes to stderr.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustix::fs::{self, AtFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

const BIN: &str = "/var/recycle-bin";
/// Where a restore may write: the agent's home, its tools user's home, its service data and
/// temporary files. Never system paths (`/etc`, `/usr`, unit files…), which would let a forged
/// record turn the agent's sandboxed service into the container's root.
const ROOTS: &[&str] = &["root", "home", "srv", "tmp"];
const MAX_INFO_BYTES: u64 = 64 * 1024;

enum Failure {
    Refused(String),
    NoItem,
    Exists(String),
    Other(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Refused(m) => (2, m),
            Failure::NoItem => (3, "no such item".to_string()),
            Failure::Exists(m) => (17, m),
            Failure::Other(m) => (1, m),
        };
        eprintln!("{message}");
        ExitCode::from(code)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 80 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The components of a restore target: absolute, no empty, `.` or `..` parts, under one of
/// [`ROOTS`] and not the root itself.
fn target_components(path: &str) -> Result<Vec<&str>, Failure> {
    let refuse = |why: &str| {
        Err(Failure::Refused(format!(
            "refusing to restore to {path:?}: {why}"
        )))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return refuse("not an absolute path");
    };
    if path.len() > 4096 || path.contains('\0') {
        return refuse("not a usable path");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return refuse("empty, `.` or `..` components");
    }
    if parts.len() < 2 || !ROOTS.contains(&parts[0]) {
        return refuse("only paths under /root, /home, /srv and /tmp are restored");
    }
    Ok(parts)
}

fn open_dir_nofollow<Fd: std::os::fd::AsFd>(dir: Fd, name: &str) -> Result<OwnedFd, Errno> {
    fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The recorded original path of an item, read without following links.
fn recorded_path(item_dir: &OwnedFd) -> Result<Vec<u8>, Failure> {
    let info = fs::openat(
        item_dir,
        "info",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::Refused(format!("unreadable record: {e}")))?;
    let stat = fs::fstat(&info).map_err(|e| Failure::Other(e.to_string()))?;
    if !fs::FileType::from_raw_mode(stat.st_mode).is_file() || stat.st_size as u64 > MAX_INFO_BYTES
    {
        return Err(Failure::Refused(
            "the record is not a small regular file".into(),
        ));
    }
    let mut text = String::new();
    std::fs::File::from(info)
        .take(MAX_INFO_BYTES)
        .read_to_string(&mut text)
        .map_err(|_| Failure::Refused("the record is not text".into()))?;
    let encoded = text
        .lines()
        .find_map(|l| l.strip_prefix("path_b64="))
        .ok_or_else(|| Failure::Refused("the record has no path".into()))?;
    STANDARD
        .decode(encoded.trim())
        .map_err(|_| Failure::Refused("the record's path is not base64".into()))
}

fn restore(id: &str, path: &str) -> Result<(), Failure> {
    if !valid_id(id) {
        return Err(Failure::Refused("invalid id".into()));
    }
    let parts = target_components(path)?;
    let bin = open_dir_nofollow(CWD, BIN).map_err(|e| Failure::Other(format!("{BIN}: {e}")))?;
    let item_dir = match open_dir_nofollow(&bin, id) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(Failure::NoItem),
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
            return Err(Failure::Refused("refusing a symlinked entry".into()))
        }
        Err(e) => return Err(Failure::Other(e.to_string())),
    };
    // The host read the record before asking; it must still say the same.
    if recorded_path(&item_dir)? != path.as_bytes() {
        return Err(Failure::Refused(
            "the item's record changed since it was listed".into(),
        ));
    }
    match fs::statat(&item_dir, "item", AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if fs::FileType::from_raw_mode(stat.st_mode).is_symlink() => {
            return Err(Failure::Refused(format!(
                "refusing to restore {path:?}: the item is a symbolic link"
            )))
        }
        Ok(_) => {}
        Err(Errno::NOENT) => return Err(Failure::NoItem),
        Err(e) => return Err(Failure::Other(e.to_string())),
    }
    let (name, parents) = parts.split_last().ok_or(Failure::NoItem)?;
    let mut dir = open_dir_nofollow(CWD, "/").map_err(|e| Failure::Other(e.to_string()))?;
    let mut walked = String::new();
    for part in parents {
        walked.push('/');
        walked.push_str(part);
        let next = match open_dir_nofollow(&dir, part) {
            Err(Errno::NOENT) => {
                match fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Failure::Other(format!("mkdir {walked}: {e}"))),
                }
                open_dir_nofollow(&dir, part)
            }
            other => other,
        };
        dir = match next {
            Ok(fd) => fd,
            // O_NOFOLLOW with O_DIRECTORY reports a link as ELOOP or ENOTDIR: say which.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let link = fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| fs::FileType::from_raw_mode(s.st_mode).is_symlink())
                    .unwrap_or(false);
                let what = if link {
                    "is a symbolic link"
                } else {
                    "is not a directory"
                };
                return Err(Failure::Refused(format!(
                    "refusing to restore {path:?}: {walked} {what}"
                )));
            }
            Err(e) => return Err(Failure::Other(format!("{walked}: {e}"))),
        };
    }
    // The bin takes deletions from the unprivileged tools user too (its entries are its own).
    // Such an item goes back only into a folder that user owns: a record it forged must not
    // plant its file in root's home (a `.bash_profile` root's shells would read).
    let owner = fs::fstat(&item_dir)
        .map_err(|e| Failure::Other(e.to_string()))?
        .st_uid;
    let into = fs::fstat(&dir)
        .map_err(|e| Failure::Other(e.to_string()))?
        .st_uid;
    if owner != 0 && into != owner {
        return Err(Failure::Refused(format!(
            "refusing to restore {path:?}: it was deleted by uid {owner}, and its folder belongs \
             to uid {into}"
        )));
    }
    match fs::renameat_with(&item_dir, "item", &dir, *name, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
            Err(Failure::Exists(format!("something is already at {path}")))
        }
        Err(Errno::XDEV) => Err(Failure::Other(format!(
            "{path} is on another filesystem than the recycle bin; move it back by hand"
        ))),
        Err(e) => Err(Failure::Other(format!("restoring {path}: {e}"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [_, "restore", id, path] => match restore(id, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => failure.exit(),
        },
        _ => Failure::Refused("usage: taos-recycle restore <id> <absolute path>".into()).exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_plain_absolute_paths_under_the_roots() {
        assert!(target_components("/root/notes.txt").is_ok());
        assert!(target_components("/srv/app/data").is_ok());
        assert!(target_components("/tmp/x").is_ok());
        assert!(target_components("/root/nl\n_").is_ok());
        for bad in [
            "root/x",
            "/etc/cron.d/x",
            "/usr/local/bin/rm",
            "/root",
            "/root/",
            "/root//x",
            "/root/./x",
            "/root/../etc/passwd",
            "/tmp/..",
            "/var/recycle-bin/x",
            "/rootkit/x",
            "",
        ] {
            assert!(target_components(bad).is_err(), "{bad:?}");
        }
        assert!(valid_id("20260101T000000Z-abcd1234"));
        assert!(!valid_id("../x") && !valid_id("") && !valid_id("a b"));
    }
}
