//! The JSON-lines side files of a bucket: `.jsonl` (SQLite refused the write) and `.late.jsonl`
//! (the bucket was already sealed). One `TraceEvent` per line. These functions block; callers run
//! them on the blocking pool. Both open only plain files (no symlink, FIFO or hard link), so a
//! stray entry can neither redirect a write nor hang a reader.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use taos_proto::trace::TraceEvent;

use crate::fsutil;

/// Appends `events` to `path` (created 0600) and fsyncs before returning.
pub(super) fn append(path: &Path, events: &[TraceEvent]) -> io::Result<()> {
    let mut lines = Vec::new();
    for event in events {
        serde_json::to_writer(&mut lines, event).map_err(io::Error::other)?;
        lines.push(b'\n');
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    fsutil::ensure_private_subdir(dir)?;
    let existed = fs::symlink_metadata(path).is_ok();
    let mut file = fsutil::open_plain_append(path)?;
    // A crash mid-append can leave a last line without its newline; start on a fresh line so the
    // new events are not glued to the torn one and lost with it.
    if file.metadata()?.len() > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            lines.insert(0, b'\n');
        }
    }
    file.write_all(&lines)?;
    file.sync_all()?;
    if !existed {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// Every event in `path` (none if it does not exist). Lines that do not parse, such as one torn by
/// a crash, are skipped with a warning.
pub(super) fn read(path: &Path) -> io::Result<Vec<TraceEvent>> {
    let file = match fsutil::open_plain(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        // Nothing the host wrote: not data, and not a reason to fail the whole read.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!("skipping trace side file: {e}");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut events = Vec::new();
    for (number, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<TraceEvent>(&line) {
            Ok(event) => events.push(event),
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = number + 1,
                "skipping unreadable trace line: {e}"
            ),
        }
    }
    Ok(events)
}
