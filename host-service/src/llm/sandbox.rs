//! How LiteLLM's process is started and confined.
//!
//! LiteLLM holds every provider key and the master key, and it is a large Python program that
//! parses what agents send. So it gets as little as possible:
//! - When the host runs as root, LiteLLM runs as a dedicated unprivileged user (supplementary
//!   groups cleared) in its own mount namespace, where `/tmp` is a private tmpfs it owns (its
//!   HOME and TMPDIR, gone when it exits) and the host's data dir is covered by an empty,
//!   read-only tmpfs. The data dir is 0700 root anyway; the cover means a mode mistake there
//!   still shows LiteLLM nothing.
//! - Always: `PR_SET_NO_NEW_PRIVS` (no setuid binary can give privileges back), and
//!   `PR_SET_PDEATHSIG` so it dies with the host.
//! - Its config reaches it as a memfd at fd 3 (`--config /proc/self/fd/3`), so it needs no path
//!   into the data dir.
//! - It does not bind its port: the host binds 127.0.0.1:<port> once and hands the listening
//!   socket over as fd 4; a small launcher (below) makes uvicorn serve on it. No other process
//!   can hold the port in between, so the master key only ever goes to the process the host
//!   started. (LiteLLM's CLI has no `--uds`, and uvicorn's own `fd=` option assumes a unix
//!   socket, hence the launcher.)

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// Where the child finds its config and its listening socket.
pub const CONFIG_FD: i32 = 3;
pub const LISTEN_FD: i32 = 4;
/// The environment variable that tells the launcher to serve on [`LISTEN_FD`].
pub const LISTEN_FD_ENV: &str = "TAOS_LITELLM_LISTEN_FD";
/// The private `/tmp` of a confined LiteLLM: its HOME and TMPDIR.
pub const PRIVATE_TMP: &str = "/tmp";

/// Runs LiteLLM's own CLI entry point, but when the host passed a listening socket, makes
/// uvicorn serve on that socket instead of binding host:port itself. Run as `python3 -c`.
/// As a systemd unit (`llm/unit.rs`), the keys come as a credential (a JSON object of
/// environment variables) rather than in the environment.
pub const LAUNCHER: &str = r#"
import json, os, socket, sys
credentials = os.environ.get("CREDENTIALS_DIRECTORY")
if credentials and os.path.exists(os.path.join(credentials, "secrets")):
    with open(os.path.join(credentials, "secrets")) as f:
        os.environ.update(json.load(f))
fd = os.environ.pop("TAOS_LITELLM_LISTEN_FD", None)
if fd is not None:
    import uvicorn
    def serve_on_inherited_socket(app, **kwargs):
        for key in ("host", "port", "uds", "fd", "workers", "reload"):
            kwargs.pop(key, None)
        server = uvicorn.Server(uvicorn.Config(app, **kwargs))
        server.run(sockets=[socket.socket(fileno=int(fd))])
        if not server.started:
            sys.exit(3)
    uvicorn.run = serve_on_inherited_socket
sys.argv[0] = "litellm"
from litellm import run_server
sys.exit(run_server())
"#;

/// Who LiteLLM runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The host is not root: LiteLLM runs as the host's user, with its HOME and TMPDIR in the
    /// host's (0700) LLM directory.
    HostUser { home: PathBuf, tmp: PathBuf },
    /// The host is root: LiteLLM runs as this user, confined as described above.
    Dedicated {
        name: String,
        uid: u32,
        gid: u32,
        /// Covered in LiteLLM's mount namespace.
        data_dir: PathBuf,
    },
}

/// Decides who LiteLLM runs as. A root host whose dedicated user is missing gets an error:
/// LiteLLM never runs as root.
pub fn run_as(data_dir: &Path, llm_dir: &Path, user: &str) -> Result<RunAs, String> {
    if !crate::sys::is_root() {
        return Ok(RunAs::HostUser {
            home: llm_dir.join("home"),
            tmp: llm_dir.join("tmp"),
        });
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    let (uid, gid) = passwd_entry(&passwd, user).ok_or_else(|| {
        format!(
            "the host runs as root and LiteLLM must not: create its user {user:?} \
             (scripts/dev-litellm.sh does) or set [llm] litellm_user"
        )
    })?;
    if uid == 0 || gid == 0 {
        return Err(format!(
            "[llm] litellm_user {user:?} is root or in group root; LiteLLM needs an unprivileged user"
        ));
    }
    Ok(RunAs::Dedicated {
        name: user.to_string(),
        uid,
        gid,
        data_dir: data_dir.to_path_buf(),
    })
}

/// `(uid, gid)` of `name` in a passwd file.
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The Python interpreter that runs LiteLLM: the one its `litellm` script names on its first
/// line (`#!/opt/taos/litellm/bin/python3`, or `#!/usr/bin/env python3`).
pub fn python_of(litellm: &Path) -> Result<PathBuf, String> {
    let text =
        std::fs::read(litellm).map_err(|e| format!("cannot read {}: {e}", litellm.display()))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut words = first
        .strip_prefix("#!")
        .ok_or_else(|| format!("{} is not a Python script", litellm.display()))?
        .split_whitespace();
    let program = PathBuf::from(words.next().unwrap_or_default());
    let program = if program.file_name().is_some_and(|n| n == "env") {
        let name = words.next().unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("cannot find {name} for {}", litellm.display()))?
    } else {
        program
    };
    if program.is_absolute() && program.is_file() {
        Ok(program)
    } else {
        Err(format!(
            "cannot find the Python that runs {}",
            litellm.display()
        ))
    }
}

/// An in-memory file holding `bytes`, for the child to read at [`CONFIG_FD`].
#[allow(unsafe_code)]
pub fn memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: memfd_create takes a valid C string and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    io::Write::write_all(&mut file, bytes)?;
    Ok(OwnedFd::from(file))
}

/// A close-on-exec copy of `fd` numbered 10 or higher, so that moving it to 3 or 4 in the
/// child can never overwrite another fd being moved.
#[allow(unsafe_code)]
pub fn dup_high(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new was just returned by fcntl and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Confines `command` as `run_as` says, passing `config` as fd 3 and `listener` as fd 4. The
/// command keeps its own copies of the fds, closed in the host when it is dropped.
#[allow(unsafe_code)]
pub fn confine(
    command: &mut Command,
    run_as: &RunAs,
    config: Option<BorrowedFd<'_>>,
    listener: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let config = config.map(dup_high).transpose()?;
    let listener = listener.map(dup_high).transpose()?;
    // Everything the child needs is prepared here: between fork and exec only
    // async-signal-safe system calls are allowed, so no allocation.
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let dedicated = match run_as {
        RunAs::HostUser { home, tmp } => {
            command.env("HOME", home).env("TMPDIR", tmp);
            None
        }
        RunAs::Dedicated {
            uid, gid, data_dir, ..
        } => {
            let data_dir = std::fs::canonicalize(data_dir)?;
            command
                .env("HOME", PRIVATE_TMP)
                .env("TMPDIR", PRIVATE_TMP)
                .current_dir("/");
            Some(Dedicated {
                uid: *uid,
                gid: *gid,
                data_dir: cstr(&data_dir)?,
                tmp: cstr(Path::new(PRIVATE_TMP))?,
                tmp_options: CString::new(format!("mode=0700,uid={uid},gid={gid},size=256m"))
                    .map_err(io::Error::other)?,
                hidden_options: CString::new("mode=000,size=4k").map_err(io::Error::other)?,
                tmpfs: CString::new("tmpfs").map_err(io::Error::other)?,
                root: CString::new("/").map_err(io::Error::other)?,
            })
        }
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let child_setup = move || -> io::Result<()> {
        // SAFETY: only system calls on memory prepared before the fork (C strings, plain
        // integers) and fds this closure owns; nothing allocates or takes a lock.
        unsafe {
            if let Some(d) = &dedicated {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing mounted here may leak back into the host's namespace.
                check(libc::mount(
                    std::ptr::null(),
                    d.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    d.tmpfs.as_ptr(),
                    d.data_dir.as_ptr(),
                    d.tmpfs.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    d.hidden_options.as_ptr().cast(),
                ))?;
                check(libc::mount(
                    d.tmpfs.as_ptr(),
                    d.tmp.as_ptr(),
                    d.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    d.tmp_options.as_ptr().cast(),
                ))?;
            }
            if let Some(fd) = &config {
                check(libc::dup2(fd.as_raw_fd(), CONFIG_FD))?;
            }
            if let Some(fd) = &listener {
                check(libc::dup2(fd.as_raw_fd(), LISTEN_FD))?;
            }
            if let Some(d) = &dedicated {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(d.gid))?;
                check(libc::setuid(d.uid))?;
                // Dropping root must be final.
                if libc::setuid(0) == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
            check(libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                one,
                zero,
                zero,
                zero,
            ))?;
            // After the uid change, which clears the parent-death signal.
            let sigterm = libc::SIGTERM as libc::c_ulong;
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                sigterm,
                zero,
                zero,
                zero,
            ))?;
            if libc::getppid() != parent {
                // The host died before the signal was armed.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls (see above).
    unsafe {
        command.pre_exec(child_setup);
    }
    Ok(())
}

struct Dedicated {
    uid: u32,
    gid: u32,
    data_dir: CString,
    tmp: CString,
    tmp_options: CString,
    hidden_options: CString,
    tmpfs: CString,
    root: CString,
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      taos-litellm:x:996:993:taos LiteLLM:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(passwd_entry(passwd, "taos-litellm"), Some((996, 993)));
        assert_eq!(passwd_entry(passwd, "taos"), None);
        assert_eq!(passwd_entry(passwd, "root"), Some((0, 0)));
    }

    #[test]
    fn the_python_is_read_from_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("litellm");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(python_of(&script).unwrap(), PathBuf::from("/bin/sh"));
        std::fs::write(&script, "#!/usr/bin/env sh\n").unwrap();
        assert!(python_of(&script).unwrap().ends_with("sh"));
        std::fs::write(&script, "not a script").unwrap();
        assert!(python_of(&script).is_err());
    }
}
