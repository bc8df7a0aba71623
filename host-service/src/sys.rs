//! Small facts about the machine the host runs on.

use std::net::IpAddr;

/// Whether the process runs as root (decides the default data dir).
pub fn is_root() -> bool {
    // /proc/self is owned by the process's effective uid.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// This machine's host name, or `taos` if it can't be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "taos".to_string())
}

/// The machine's own interface addresses, non-loopback first, link-local IPv6 left out (they
/// need a zone id to be dialled, which a pairing token can't carry usefully).
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    addrs.retain(|ip| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => true,
    });
    addrs.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    addrs.dedup();
    addrs
}

/// Resident set size of this process in bytes, from /proc/self/status (in kB there, so no
/// page-size guess: Raspberry Pi 5 kernels use 16 KiB pages).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory the kernel says can be given to new work without swapping (`MemAvailable` in
/// /proc/meminfo, in kB there), in bytes.
pub fn memory_available_bytes() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes free for an unprivileged user on the filesystem holding `path` (statvfs's `f_bavail`).
pub fn free_disk_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    filesystem_space(path).map(|(free, _)| free)
}

/// Tells systemd the host is ready (`Type=notify` in taos-host.service), so `systemctl start`
/// and `restart` return once the listeners are bound. Nothing to do when not started by
/// systemd; a failure is logged, and systemd then says the start timed out.
pub fn notify_ready() {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(b"READY=1", &addr)
            }
            None => socket.send_to(b"READY=1", &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, "cannot tell systemd the host is ready: {e}");
    }
}

/// Whether standard output is the systemd journal (`JOURNAL_STREAM` names its device and
/// inode): there it is a log, readable by the adm group, so secrets stay out of it.
pub fn stdout_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stdout) = std::fs::metadata("/proc/self/fd/1") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stdout.dev(), stdout.ino())
}

/// Asks a child process to stop (SIGTERM). LiteLLM exits cleanly on it; SIGHUP would kill it
/// without cleanup.
#[allow(unsafe_code)]
pub fn terminate(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid at worst hits nothing
    // (the caller only passes pids of children it has not yet reaped).
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

/// Makes a command's process receive SIGTERM when this process (strictly: the thread that
/// spawns it) dies, so a crashed parent never leaves an orphan holding ports and memory.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs a command's process at background priority: on the upper half of the CPUs this
/// process may use ([`background_cpus`]), at CPU niceness 10 and in the idle I/O class, so a
/// long batch job (a backup's restic) takes the cores and the disk only when the host's own
/// requests don't want them. Lowering one's own priority needs no privilege; if the kernel
/// or a seccomp filter refuses, the job runs at normal priority rather than not at all.
///
/// Why the CPUs and not only niceness: on a kernel without full preemption (the test machines
/// run `preempt=none`, Debian's kernels voluntary preemption), a job's time inside the
/// kernel (reading its files, copying pages) is not cut short for a chat request that wakes
/// up, whatever the job's niceness or scheduling class. Measured on two cores, restic at
/// niceness 10 or in `SCHED_IDLE` left chat's p99 at about 3× idle while it read and
/// uploaded; kept on one core, about 2.2× (docs/benchmarks.md, backups).
#[allow(unsafe_code)]
pub fn background_priority(command: &mut tokio::process::Command) {
    // ioprio_set(2) has no libc wrapper: IOPRIO_WHO_PROCESS is 1, and the idle class (3) sits
    // in the value's top bits (IOPRIO_CLASS_SHIFT is 13).
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_IDLE: libc::c_long = 3 << 13;
    // Built here: the child between fork and exec may not allocate.
    let cpus = background_cpus();
    let set = cpu_set(&cpus);
    let pin = !cpus.is_empty();
    // SAFETY: the closure runs in the forked child before exec and makes three syscalls,
    // sched_setaffinity(2), setpriority(2) and ioprio_set(2), all async-signal-safe; the CPU
    // set is the closure's own copy.
    unsafe {
        command.pre_exec(move || {
            if pin {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE);
            Ok(())
        });
    }
}

/// The CPUs a background job runs on: the upper half of those this process may use (at least
/// one), leaving the rest to the host. Empty (no pinning) on a single CPU, or when the
/// process's CPU set can't be read.
pub fn background_cpus() -> Vec<usize> {
    upper_half(&allowed_cpus())
}

/// The upper half of `allowed` (rounded down, at least one), or nothing if there is only one.
fn upper_half(allowed: &[usize]) -> Vec<usize> {
    if allowed.len() < 2 {
        return Vec::new();
    }
    allowed[allowed.len() - allowed.len() / 2..].to_vec()
}

/// The CPUs this process may run on (its affinity mask: a container's or a service's
/// `AllowedCPUs` narrow it), in ascending order.
fn allowed_cpus() -> Vec<usize> {
    cpus_of(0)
}

/// The CPUs process (thread) `pid` may run on, 0 for this one; empty if they can't be read.
#[allow(unsafe_code)]
fn cpus_of(pid: libc::pid_t) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity(2) writes at most the size we pass into the set we own.
    if unsafe { libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
        != 0
    {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of the set, and the index is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

#[allow(unsafe_code)]
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: CPU_SET writes one bit of the set, and the index is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Raises this process's soft limit on open files towards `wanted` (at most to the hard
/// limit). Distributions start services with a soft limit of 1024, fewer than the listeners'
/// connection budgets: past it `accept` fails and the kernel's queue fills up behind it, so
/// the budgets (which close excess connections at once) would never get to act.
#[allow(unsafe_code)]
pub fn raise_open_files_limit(wanted: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    if !ok || raised.rlim_cur < wanted {
        tracing::warn!(
            soft = limit.rlim_cur,
            hard = limit.rlim_max,
            wanted,
            "the open-files limit is below the listeners' connection budgets; lower \
             [server] max_connections or raise LimitNOFILE"
        );
    }
}

/// Total memory (`MemTotal` in /proc/meminfo), in bytes.
pub fn memory_total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The type of the filesystem holding `path` (statfs's `f_type`, e.g. btrfs's 0x9123683e).
#[allow(unsafe_code)]
// f_type is a signed long of the target's width (32 bits on armhf).
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
pub fn filesystem_type(path: &std::path::Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads the NUL-terminated path we own and writes only into `st`, which
    // outlives the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// statvfs(2) of the filesystem holding `path`.
#[allow(unsafe_code)]
fn statvfs(path: &std::path::Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs reads the NUL-terminated path we own and writes only into `st`, which
    // outlives the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Space on the filesystem holding `path`, in bytes: `(free to unprivileged users, total)`.
// The statvfs fields are u64 here but 32 bits on 32-bit ARM boards (armhf), where the
// conversions are real.
#[allow(clippy::useless_conversion)]
pub fn filesystem_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let st = statvfs(path)?;
    let block = u64::from(st.f_frsize);
    Ok((
        u64::from(st.f_bavail).saturating_mul(block),
        u64::from(st.f_blocks).saturating_mul(block),
    ))
}

/// Whether the filesystem holding `path` is mounted read-only (statvfs's `ST_RDONLY`). Under
/// the service's sandbox every folder outside its `ReadWritePaths` is such a mount.
// f_flag is an unsigned long of the target's width (32 bits on armhf).
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
pub fn is_read_only(path: &std::path::Path) -> std::io::Result<bool> {
    Ok((statvfs(path)?.f_flag as u64) & (libc::ST_RDONLY as u64) != 0)
}

/// Starts writing `len` bytes of `file` at `offset` to disk, and waits until everything before
/// `offset` is written (`sync_file_range(2)`). Durable only with a later fsync; what it buys is
/// a large file leaving the page cache in steps while it is written, instead of all at once at
/// its fsync.
#[allow(unsafe_code)]
pub fn write_behind(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let (Ok(at), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range(2) takes a descriptor the borrowed file keeps open and plain
    // integers; it touches no memory of ours.
    if unsafe { libc::sync_file_range(fd, at, n, libc::SYNC_FILE_RANGE_WRITE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if at > 0 {
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: as above.
        if unsafe { libc::sync_file_range(fd, 0, at, wait) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24730624 kB\nMemFree:          230400 kB\n\
                       MemAvailable:   23835648 kB\nBuffers:            1024 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_835_648 * 1024));
        // Kernels before 3.14 have no MemAvailable: no figure rather than a wrong one.
        assert_eq!(parse_mem_available("MemTotal: 1 kB\nMemFree: 1 kB\n"), None);
        assert!(memory_available_bytes().is_some_and(|b| b > 0));
        assert!(memory_total_bytes().is_some_and(|t| t >= memory_available_bytes().unwrap()));
    }

    #[test]
    fn filesystem_space_of_the_root_is_read_and_a_missing_path_is_an_error() {
        let (free, total) = filesystem_space(std::path::Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
        assert!(filesystem_space(std::path::Path::new("/no/such/path")).is_err());
    }

    #[test]
    fn background_jobs_get_the_upper_half_of_the_cpus() {
        assert_eq!(upper_half(&[]), Vec::<usize>::new());
        assert_eq!(upper_half(&[0]), Vec::<usize>::new());
        assert_eq!(upper_half(&[0, 1]), vec![1]);
        assert_eq!(upper_half(&[0, 1, 2]), vec![2]);
        assert_eq!(upper_half(&[0, 1, 2, 3]), vec![2, 3]);
        // A narrowed set (a service's AllowedCPUs) is halved as it is.
        assert_eq!(upper_half(&[2, 5, 6, 7]), vec![6, 7]);
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "this process's CPUs can be read");
        assert_eq!(background_cpus(), upper_half(&allowed));
    }

    /// The job really starts where and how it is meant to: the kernel's own account of it.
    #[tokio::test]
    #[allow(unsafe_code)]
    async fn a_background_job_runs_pinned_nice_and_in_the_idle_io_class() {
        let mut command = tokio::process::Command::new("sleep");
        command.arg("30").kill_on_drop(true);
        background_priority(&mut command);
        let child = command.spawn().unwrap();
        let pid = child.id().unwrap();
        let expected = if allowed_cpus().len() > 1 {
            background_cpus()
        } else {
            allowed_cpus()
        };
        assert!(!expected.is_empty());
        assert_eq!(cpus_of(pid as libc::pid_t), expected);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // Field 19 of stat(5), the 17th after the name: niceness.
        assert_eq!(fields[16], "10");
        // SAFETY: ioprio_get(2) takes plain integers and reads the class of our own child.
        let ioprio =
            unsafe { libc::syscall(libc::SYS_ioprio_get, 1, libc::c_long::from(pid as i32)) };
        assert_eq!(ioprio >> 13, 3, "the idle I/O class");
    }
}
