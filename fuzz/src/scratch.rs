//! Per-process scratch directories, in memory when the machine has a
//! tmpfs for it.

use std::path::{Path, PathBuf};

/// Where scratch directories go: `$NACRE_FUZZ_TMPDIR` if set, else
/// `/dev/shm` (a tmpfs) if it is a writable directory, else the system
/// temp directory. On a disk file system, rewriting a file per input
/// (snapshot) or rebuilding a share (fs_queue) made ext4 flush data and
/// journal metadata on every execution.
fn base() -> PathBuf {
    if let Some(dir) = std::env::var_os("NACRE_FUZZ_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    // SAFETY: access(2) on a NUL-terminated path literal; reads nothing else.
    let writable = unsafe { libc::access(c"/dev/shm".as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if shm.is_dir() && writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// `<base>/nacre-fuzz-<target>-<pid>`, created empty (`<base>`: see
/// [`base`]). Directories of the same target left by processes that are
/// gone are removed first (a libFuzzer process exits without running
/// destructors).
pub fn dir(target: &str) -> PathBuf {
    let tmp = base();
    let prefix = format!("nacre-fuzz-{target}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
