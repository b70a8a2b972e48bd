//! Per-process scratch directories under the system temp directory.

use std::path::PathBuf;

/// `$TMPDIR/nacre-fuzz-<target>-<pid>`, created empty. Directories of the
/// same target left by processes that are gone are removed first (a
/// libFuzzer process exits without running destructors).
pub fn dir(target: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
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
