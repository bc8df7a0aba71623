//! A process's CPU time, read from `/proc/<pid>/stat`: what the bench binaries report beside
//! wall-clock figures, since a busy machine moves CPU time much less than latency.

/// (utime + stime, cutime + cstime) of a process, in clock ticks (100 per second on Linux):
/// its own CPU over all its threads, and that of the children it has waited for. Zeros when
/// the process is gone.
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name (which may itself hold spaces or ')');
    // utime, stime, cutime, cstime are the 12th to 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .take(15)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    (field(11) + field(12), field(13) + field(14))
}

/// A process's own CPU time so far (user + system, all its threads; not its children's), in
/// milliseconds, to the 10 ms of a clock tick.
pub fn cpu_ms(pid: u32) -> f64 {
    cpu_ticks(pid).0 as f64 * 10.0
}
