//! Removing a sandbox directory: its share first, then the directory once
//! no mount is left under it.

use std::path::Path;

use crate::container::mounts;
use crate::container::share::SharedDir;

/// Tears the sandbox directory `dir`'s share down (unmounting only inside
/// `rw`, see [`SharedDir::teardown`]) and removes `dir` once no mount
/// remains under it.
pub fn remove_sandbox_dir(dir: &Path) {
    if let Err(e) = SharedDir::open(dir).teardown() {
        tracing::warn!("tearing the share of {} down: {e}", dir.display());
    }
    let left = mounts::mounts_under(dir);
    if !left.is_empty() {
        tracing::warn!(
            ?left,
            "mounts remain under {}; not removing it",
            dir.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}
