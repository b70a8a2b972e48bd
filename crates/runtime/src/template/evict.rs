//! The store's bound (security review L2): a pod's VM shape, and so a
//! template key, partly comes from its tenant (the `io.nacre.vm.*`
//! annotations, the command line among them), so without a bound every
//! new shape adds a template (tens of MiB each) to the host's disk. The
//! store keeps at most [`TemplateStore::max`] templates: before one more
//! is made, the least recently used complete ones go. "Used" is the
//! modification time of a template's `header.json`: written last when it
//! is made, touched at each restore. A sandbox restored from an evicted
//! template keeps its private mapping of the memory file.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::TemplateStore;

/// Templates kept when `NACRE_TEMPLATE_MAX` does not say.
pub const DEFAULT_MAX: usize = 16;

/// `NACRE_TEMPLATE_MAX` (at least 1), else [`DEFAULT_MAX`].
pub fn max_from_env() -> usize {
    std::env::var("NACRE_TEMPLATE_MAX")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_MAX)
}

/// Records that the template in `dir` was just used (best effort).
pub fn mark_used(dir: &Path) {
    let header = dir.join("header.json");
    let touched = fs::File::open(&header).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!("marking template {} used: {e}", dir.display());
    }
}

impl TemplateStore {
    /// Removes complete templates, least recently used first, until at
    /// most `keep` remain; returns what it removed. Work directories
    /// (dot names) are [`TemplateStore::prune`]'s.
    pub fn evict(&self, keep: usize) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.root()) else {
            return Vec::new();
        };
        let mut templates: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let used = fs::metadata(e.path().join("header.json"))
                    .and_then(|m| m.modified())
                    .ok()?;
                Some((used, e.path()))
            })
            .collect();
        if templates.len() <= keep {
            return Vec::new();
        }
        templates.sort();
        let excess = templates.len() - keep;
        let mut removed = Vec::new();
        for (_, path) in templates.into_iter().take(excess) {
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(template = %path.display(), "evicted the least recently used template");
                    removed.push(path);
                }
                Err(e) => tracing::warn!("evicting template {}: {e}", path.display()),
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::time::Duration;

    /// Attack (review L2): a tenant asks for one new VM shape after
    /// another. Safe outcome: the store never holds more than its bound;
    /// the templates in use stay, the oldest go; work directories and the
    /// lock are left alone.
    #[test]
    fn the_store_keeps_its_most_recently_used_templates() {
        let root = std::env::temp_dir().join(format!("nacre-tplevict-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let store = TemplateStore::new(root.clone());
        let base = SystemTime::now() - Duration::from_secs(1000);
        for i in 0..6u64 {
            let dir = root.join(format!("t{i}"));
            fs::create_dir(&dir).unwrap();
            let header = fs::File::create(dir.join("header.json")).unwrap();
            header.set_modified(base + Duration::from_secs(i)).unwrap();
        }
        fs::create_dir(root.join(".work.1")).unwrap();
        fs::write(root.join(".lock"), "").unwrap();
        // An incomplete template (no header) is not a template to count.
        fs::create_dir(root.join("partial")).unwrap();
        // t0 was just restored: it is the most recent now.
        mark_used(&root.join("t0"));
        let removed = store.evict(3);
        let mut names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["t1", "t2", "t3"]);
        for kept in ["t0", "t4", "t5", ".work.1", ".lock", "partial"] {
            assert!(root.join(kept).exists(), "{kept} removed");
        }
        assert!(store.evict(3).is_empty());
        let _ = fs::remove_dir_all(&root);
    }
}
