//! The pod's tmpfs volumes: memory-backed emptyDirs and /dev/shm, which
//! the host names as binds of `/run/nacre/ephemeral/<key>` with `size=`
//! and `mode=` options instead of sharing its own tmpfs over virtio-fs.
//!
//! The agent mounts each such tmpfs once, in its own mount namespace,
//! before the first container naming it is created; every container of
//! the pod then bind-mounts the same directory. The tmpfs lives as long as
//! the VM (a restarted container finds its emptyDir as it left it) and
//! goes with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ffi;
use super::mounts;
use super::spec::Spec;

/// Where the ephemeral volumes live in the guest.
pub const EPHEMERAL_DIR: &str = "/run/nacre/ephemeral";

/// A tmpfs a spec needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// Its mount point.
    pub path: PathBuf,
    /// Its mount data (`size=...,mode=...`).
    pub data: String,
}

/// Serializes the check-then-mount of concurrent creates.
static MOUNTING: Mutex<()> = Mutex::new(());

/// The tmpfs volumes the spec's binds name, checked.
pub fn wanted(spec: &Spec) -> Result<Vec<Tmpfs>, String> {
    let mut out = Vec::new();
    for m in &spec.mounts {
        let source = m.source.as_deref().unwrap_or_default();
        let Some(key) = source
            .strip_prefix(EPHEMERAL_DIR)
            .and_then(|k| k.strip_prefix('/'))
        else {
            continue;
        };
        if !mounts::parse(m.kind.as_deref(), &m.options).is_bind() {
            continue;
        }
        let bad_part = |p: &str| {
            p.is_empty()
                || p.starts_with('.')
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        };
        if key.split('/').any(bad_part) {
            return Err(format!(
                "mount {}: bad ephemeral volume {source:?}",
                m.destination
            ));
        }
        let mut data = Vec::new();
        for opt in &m.options {
            if let Some(size) = opt.strip_prefix("size=") {
                if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("mount {}: bad tmpfs {opt:?}", m.destination));
                }
                data.push(opt.as_str());
            } else if let Some(mode) = opt.strip_prefix("mode=") {
                if mode.is_empty()
                    || mode.len() > 4
                    || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
                {
                    return Err(format!("mount {}: bad tmpfs {opt:?}", m.destination));
                }
                data.push(opt.as_str());
            }
        }
        let t = Tmpfs {
            path: PathBuf::from(source),
            data: data.join(","),
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Mounts the spec's tmpfs volumes that are not mounted yet.
pub fn prepare(spec: &Spec) -> Result<(), String> {
    let wanted = wanted(spec)?;
    if wanted.is_empty() {
        return Ok(());
    }
    let _guard = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for t in &wanted {
        ensure(t)?;
    }
    Ok(())
}

fn ensure(t: &Tmpfs) -> Result<(), String> {
    std::fs::create_dir_all(&t.path).map_err(|e| format!("creating {}: {e}", t.path.display()))?;
    if is_mount_point(&t.path) {
        return Ok(());
    }
    ffi::mount(
        Some(Path::new("tmpfs")),
        &t.path,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&t.data),
    )
    .map_err(|e| format!("mounting a tmpfs ({}) on {}: {e}", t.data, t.path.display()))?;
    tracing::info!("ephemeral volume {} ({})", t.path.display(), t.data);
    Ok(())
}

/// Whether `path` is on another file system than its parent.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(path), path.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: &str) -> Spec {
        Spec::parse(
            format!(r#"{{"root":{{"path":"/r"}},"process":{{"args":["sh"]}},"mounts":{mounts}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn finds_the_tmpfs_volumes_once() {
        let s = spec(
            r#"[{"destination":"/dev/shm","type":"bind","source":"/run/nacre/ephemeral/shm",
                 "options":["rbind","size=67108864","mode=1777"]},
                {"destination":"/cache","type":"bind","source":"/run/nacre/ephemeral/empty-dir/cache",
                 "options":["rbind","ro","size=1024"]},
                {"destination":"/again","type":"bind","source":"/run/nacre/ephemeral/shm",
                 "options":["rbind","size=67108864","mode=1777"]},
                {"destination":"/data","type":"bind","source":"/run/nacre/shared/c/mounts/3"},
                {"destination":"/tmp","type":"tmpfs","source":"/run/nacre/ephemeral/x"}]"#,
        );
        assert_eq!(
            wanted(&s).unwrap(),
            vec![
                Tmpfs {
                    path: "/run/nacre/ephemeral/shm".into(),
                    data: "size=67108864,mode=1777".into()
                },
                Tmpfs {
                    path: "/run/nacre/ephemeral/empty-dir/cache".into(),
                    data: "size=1024".into()
                },
            ]
        );
    }

    #[test]
    fn refuses_odd_keys_and_options() {
        for (source, opt) in [
            ("/run/nacre/ephemeral/../etc", "size=1"),
            ("/run/nacre/ephemeral/empty-dir/", "size=1"),
            ("/run/nacre/ephemeral/a", "size=1k,nr_inodes=1"),
            ("/run/nacre/ephemeral/a", "mode=999"),
        ] {
            let s = spec(&format!(
                r#"[{{"destination":"/x","type":"bind","source":"{source}","options":["{opt}"]}}]"#
            ));
            let err = wanted(&s).unwrap_err();
            assert!(err.contains("/x"), "{err}");
        }
    }
}
