//! The trace file: each process merges its events into it under a lock.
//!
//! The file may be shared by processes of one user (one `nacre run`, every
//! shim of a node) and may sit in a directory others can write (`/tmp`):
//! it is created 0600, nothing on its path is followed through a symbolic
//! link (the lock, the temporary file, the file itself: `O_NOFOLLOW`, the
//! temporary one `O_EXCL`), and a file that is not a regular file of this
//! user is never merged from (it is replaced). It stays bounded: at most
//! [`FILE_EVENTS_MAX`] events (the oldest go first), and an existing file
//! above [`FILE_BYTES_MAX`] is not read.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The most events the file keeps (spans and instants; each process's
/// name record comes on top).
pub const FILE_EVENTS_MAX: usize = 50_000;
/// A larger existing file is replaced, not read.
pub const FILE_BYTES_MAX: u64 = 64 << 20;

/// Merges this process's events (named `process` in the viewer) into the
/// trace file `path` and forgets them. The file is created if missing;
/// concurrent writers take turns (flock on `<path>.lock`).
pub fn flush(path: &Path, process: &str) -> io::Result<()> {
    let mut events = super::take();
    events.push(super::self_cpu());
    events.push(json!({
        "name": "process_name", "ph": "M", "pid": std::process::id(),
        "args": {"name": process},
    }));
    let lock = open_private(&path.with_extension("lock"), false)?;
    // SAFETY: flock(2) on a descriptor this function owns; released when
    // `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let all = merge(read_own(path)?, events, FILE_EVENTS_MAX);
    let doc = json!({"traceEvents": all, "displayTimeUnit": "ms"});
    let tmp = PathBuf::from(format!("{}.tmp.{}", path.display(), std::process::id()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written =
        open_private(&tmp, true).and_then(|mut f| f.write_all(doc.to_string().as_bytes()));
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Opens `path` for writing, 0600, never through a symbolic link; `new`:
/// it must not exist yet.
fn open_private(path: &Path, new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    options.open(path)
}

/// The events of the trace file at `path`: none when it is missing, not a
/// regular file of this user, larger than [`FILE_BYTES_MAX`] or not a
/// trace. A symbolic link is an error.
fn read_own(path: &Path) -> io::Result<Vec<Value>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != euid || meta.len() > FILE_BYTES_MAX {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    (&mut file).take(FILE_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut v| match v.get_mut("traceEvents").map(Value::take) {
            Some(Value::Array(a)) => Some(a),
            _ => None,
        })
        .unwrap_or_default())
}

/// `old` then `new`, bounded: the last `max` events that are not metadata
/// (`"ph": "M"`), and the metadata of the processes and threads they
/// still name, one record per (pid, tid, name), the latest.
pub fn merge(old: Vec<Value>, new: Vec<Value>, max: usize) -> Vec<Value> {
    let (meta, events): (Vec<Value>, Vec<Value>) =
        old.into_iter().chain(new).partition(|e| e["ph"] == "M");
    let events: Vec<Value> = {
        let skip = events.len().saturating_sub(max);
        events.into_iter().skip(skip).collect()
    };
    let pids: BTreeSet<u64> = events.iter().filter_map(|e| e["pid"].as_u64()).collect();
    let mut latest: HashMap<(Option<u64>, Option<u64>, String), usize> = HashMap::new();
    for (i, m) in meta.iter().enumerate() {
        let key = (
            m["pid"].as_u64(),
            m["tid"].as_u64(),
            m["name"].as_str().unwrap_or_default().to_owned(),
        );
        latest.insert(key, i);
    }
    let mut keep: Vec<usize> = latest
        .into_iter()
        .filter(|((pid, _, _), _)| pid.is_some_and(|p| pids.contains(&p)))
        .map(|(_, i)| i)
        .collect();
    keep.sort_unstable();
    let mut out: Vec<Value> = Vec::with_capacity(keep.len() + events.len());
    let mut meta: Vec<Option<Value>> = meta.into_iter().map(Some).collect();
    out.extend(
        keep.into_iter()
            .filter_map(|i| meta.get_mut(i).and_then(Option::take)),
    );
    out.extend(events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(pid: u64, ts: u64) -> Value {
        json!({"name": "s", "ph": "X", "ts": ts, "dur": 1, "pid": pid, "tid": 1})
    }

    fn name(pid: u64, name: &str) -> Value {
        json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
    }

    #[test]
    fn merging_keeps_the_newest_events_and_the_names_they_need() {
        let old = vec![name(1, "gone"), span(1, 1), name(2, "old"), span(2, 2)];
        let new = vec![span(2, 3), span(3, 4), name(3, "new"), name(2, "renamed")];
        let out = merge(old, new, 3);
        let spans: Vec<u64> = out
            .iter()
            .filter(|e| e["ph"] == "X")
            .filter_map(|e| e["ts"].as_u64())
            .collect();
        assert_eq!(spans, [2, 3, 4], "the oldest span went");
        let names: Vec<&str> = out
            .iter()
            .filter(|e| e["ph"] == "M")
            .filter_map(|e| e["args"]["name"].as_str())
            .collect();
        // pid 1 has no span left; pid 2 keeps its latest name only.
        assert_eq!(names, ["new", "renamed"]);
        // Metadata first, so a viewer names lanes before it draws them.
        assert!(out[0]["ph"] == "M" && out[1]["ph"] == "M");
    }

    #[test]
    fn the_file_stays_bounded_over_many_flushes() {
        let _serial = super::super::TEST_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let old: Vec<Value> = (0..FILE_EVENTS_MAX as u64 + 10)
            .map(|i| span(7, i))
            .collect();
        std::fs::write(&path, json!({"traceEvents": old}).to_string()).unwrap();
        flush(&path, "p").unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let events = doc["traceEvents"].as_array().unwrap();
        let non_meta = events.iter().filter(|e| e["ph"] != "M").count();
        assert_eq!(non_meta, FILE_EVENTS_MAX);
        // The oldest went, this flush's own CPU record is there.
        assert_eq!(events.iter().find(|e| e["ph"] == "X").unwrap()["ts"], 11);
        assert!(events.iter().any(|e| e["name"] == "cpu.self"));
    }

    /// Another user plants a symbolic link where the trace, its lock or
    /// its temporary file go, to make a root process write through it:
    /// no link is followed, and the file is 0600.
    #[test]
    fn no_symbolic_link_is_followed_and_the_file_is_private() {
        let _serial = super::super::TEST_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("t.json");
        // The trace file itself.
        symlink(&victim, &path).unwrap();
        assert!(flush(&path, "p").is_err());
        std::fs::remove_file(&path).unwrap();
        // Its lock (the refused flush made one).
        std::fs::remove_file(path.with_extension("lock")).unwrap();
        symlink(&victim, path.with_extension("lock")).unwrap();
        assert!(flush(&path, "p").is_err());
        std::fs::remove_file(path.with_extension("lock")).unwrap();
        // Its temporary file: removed (the link, not its target), then
        // created anew.
        let tmp = PathBuf::from(format!("{}.tmp.{}", path.display(), std::process::id()));
        symlink(&victim, &tmp).unwrap();
        flush(&path, "p").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!tmp.exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let lock = std::fs::metadata(path.with_extension("lock")).unwrap();
        assert_eq!(lock.permissions().mode() & 0o077, 0);
    }

    #[test]
    fn a_file_that_is_not_a_trace_is_replaced() {
        let _serial = super::super::TEST_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, "not json").unwrap();
        flush(&path, "p").unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(doc["traceEvents"].is_array());
    }
}
