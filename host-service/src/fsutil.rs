//! Files that must never be half-written or readable by others.
//!
//! Every secret or state file is created 0600 from its first byte (never chmod-ed afterwards, so
//! there is no window where another user could open it), and replaced atomically: write a temp
//! file in the same directory, fsync it, rename it over the target, fsync the directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const PRIVATE_FILE_MODE: u32 = 0o600;
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and parents) as 0700, or tightens an existing one to 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

fn temp_path_for(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy();
    let nonce: u64 = rand::random();
    Ok(target.with_file_name(format!(".{name}.tmp-{}-{nonce:016x}", std::process::id())))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory so a rename or create inside it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `target` with `contents`, mode 0600.
pub fn write_atomic(target: &Path, contents: &[u8]) -> io::Result<()> {
    let temp = temp_path_for(target)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        pause_before_rename_if_asked(target);
        fs::rename(&temp, target)?;
        sync_dir(parent_dir(target))
    })();
    if result.is_err() {
        // Cleanup only: the temp name is never read, and the result says what failed.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `target` with `contents`, mode 0600, failing with `AlreadyExists` if it is there.
/// Atomic like [`write_atomic`]: readers see no file or the whole file, never a prefix.
pub fn create_new_atomic(target: &Path, contents: &[u8]) -> io::Result<()> {
    let temp = temp_path_for(target)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        // link() fails if the target exists, unlike rename(), so two racing creators can't both win.
        fs::hard_link(&temp, target)?;
        fs::remove_file(&temp)?;
        sync_dir(parent_dir(target))
    })();
    // Cleanup only: the temp name is never read, and the result says what failed.
    let _ = fs::remove_file(&temp);
    result
}

/// Creates an empty 0600 file if none exists (for files another library then opens, like SQLite's).
pub fn touch_private(target: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(target)
    {
        Ok(_) => sync_dir(parent_dir(target)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes temp files a crash left behind next to `target`.
pub fn remove_stale_temps(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            // Cleanup only: a leftover temp file is never read, and the next start tries again.
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A test can SIGKILL the writer here (`TAOS_TEST_PAUSE=write:<path>`, see `faults`): the temp
/// file is durable, the rename not yet done, and the old file must survive.
fn pause_before_rename_if_asked(target: &Path) {
    crate::faults::pause_blocking_if_asked("write", &target.to_string_lossy());
}

/// The permission bits of a path, for checks and tests.
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Why a path was refused by the no-follow helpers below.
fn not_plain(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is {what}, not a plain file", path.display()),
    )
}

/// Checks an open file is a regular file with one link: not a FIFO, device, socket or
/// directory (the open would not have followed a symlink), and not a hard link to a file
/// elsewhere, whose mode a later `fchmod` would change too.
fn check_plain(path: &Path, file: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_plain(path, "a special file or directory"));
    }
    if meta.nlink() != 1 {
        return Err(not_plain(path, "hard-linked"));
    }
    Ok(())
}

/// The flags every no-follow open uses: never through a symlink in the last component, never
/// blocking on a FIFO's open or read, never inherited by a child.
const NOFOLLOW_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Opens `path` for reading only if it is a plain file (see [`check_plain`]). For files in a
/// folder whose contents may be hostile, or to check a file before a library opens it by path.
pub fn open_plain(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW_FLAGS)
        .open(path)
        .map_err(|e| refused_link(path, e))?;
    check_plain(path, &file)?;
    Ok(file)
}

/// Opens `path` for appending, creating it 0600 if missing, only if it is a plain file.
pub fn open_plain_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(NOFOLLOW_FLAGS)
        .open(path)
        .map_err(|e| refused_link(path, e))?;
    check_plain(path, &file)?;
    Ok(file)
}

/// `O_NOFOLLOW` on a symlink fails with ELOOP; say what it means.
fn refused_link(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        not_plain(path, "a symlink")
    } else {
        e
    }
}

/// Like [`ensure_private_dir`] for a folder inside one of ours, but the folder itself must be a
/// real directory: a symlink in its place is refused, never followed (or chmod-ed through).
pub fn ensure_private_subdir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(dir)?;
        }
        Err(e) => return Err(e),
    }
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | NOFOLLOW_FLAGS)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a real directory", dir.display()),
            ),
            _ => e,
        })?;
    if handle.metadata()?.mode() & 0o777 != PRIVATE_DIR_MODE {
        handle.set_permissions(fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// The first of `path` and its parents that exists (following symlinks): where a folder not
/// made yet would be made. None for a relative path none of whose parents exist.
pub fn nearest_existing(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|at| !at.as_os_str().is_empty() && at.exists())
        .map(Path::to_path_buf)
}

/// A large file written front to back from a stream (a container's export for a backup), new
/// and 0600 from its first byte. It goes to disk in [`WRITE_BEHIND_STEP`] pieces while it is
/// written: a file of hundreds of MiB flushed only at its final fsync holds that much dirty
/// data at once, and every other fsync on the filesystem (each chat message's commit) waits
/// behind the flush of it.
pub struct StreamedFile {
    file: tokio::fs::File,
    written: u64,
    flushed: u64,
}

/// How much of a [`StreamedFile`] may wait in the page cache before it is sent to disk.
pub const WRITE_BEHIND_STEP: u64 = 8 << 20;

impl StreamedFile {
    /// Creates `path`, which must not exist yet.
    pub fn create_new(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            written: 0,
            flushed: 0,
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(data).await?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITE_BEHIND_STEP {
            // tokio's file finishes its last write in the background: wait for it first.
            self.file.flush().await?;
            let file = self.file.try_clone().await?.into_std().await;
            let (offset, len) = (self.flushed, self.written - self.flushed);
            tokio::task::spawn_blocking(move || crate::sys::write_behind(&file, offset, len))
                .await
                .map_err(io::Error::other)??;
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Makes the whole file durable; how many bytes it holds.
    pub async fn finish(mut self) -> io::Result<u64> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file.toml");
        write_atomic(&target, b"one").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"one");
        assert_eq!(mode_of(&target).unwrap(), 0o600);
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn create_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("token");
        create_new_atomic(&target, b"first").unwrap();
        let err = create_new_atomic(&target, b"second").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(mode_of(&target).unwrap(), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode_of(&data).unwrap(), 0o700);
    }

    #[tokio::test]
    async fn a_streamed_file_is_private_new_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("export.tar");
        let mut file = StreamedFile::create_new(&target).unwrap();
        // Pieces of odd sizes that cross the write-behind step several times.
        let piece: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for _ in 0..20 {
            file.write(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        assert_eq!(file.finish().await.unwrap(), expected.len() as u64);
        assert!(expected.len() as u64 > 2 * WRITE_BEHIND_STEP);
        assert_eq!(fs::read(&target).unwrap(), expected);
        assert_eq!(mode_of(&target).unwrap(), 0o600);
        // Never over a file that is there.
        assert!(StreamedFile::create_new(&target).is_err());
    }
}
