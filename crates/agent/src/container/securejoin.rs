//! Mount destinations resolved inside the container's rootfs, as runc's
//! `securejoin.SecureJoin`: a symlink in the image is followed as the
//! container would see it (an absolute target starts again at the
//! rootfs, `..` stops at it), so a volume on `/data -> /srv/data` lands
//! on the rootfs's `/srv/data`, never on the agent's own tree.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed at most in one path (the kernel's MAXSYMLINKS is
/// 40; runc's securejoin allows 255).
const MAX_LINKS: u32 = 255;

/// `unsafe_path` resolved within `root`: symlinks under `root` are
/// followed with `root` as `/`; components that do not exist are kept as
/// they are (to be created). The result is always `root` or below it.
pub fn secure_join(root: &Path, unsafe_path: &str) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::new();
    let mut rest: VecDeque<OsString> = parts(Path::new(unsafe_path));
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!(
                        "mount destination {unsafe_path:?}: too many symbolic links in the rootfs"
                    ));
                }
                let target = fs::read_link(&full).map_err(|e| {
                    format!(
                        "mount destination {unsafe_path:?}: reading {}: {e}",
                        full.display()
                    )
                })?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut again = parts(&target);
                again.extend(rest);
                rest = again;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The normal and `..` components of `path` (root and `.` dropped).
fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("nacre-sj-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("srv/data")).unwrap();
        root
    }

    #[test]
    fn plain_paths_and_dots_stay_below_the_root() {
        let root = rootfs("plain");
        assert_eq!(
            secure_join(&root, "/srv/data").unwrap(),
            root.join("srv/data")
        );
        assert_eq!(
            secure_join(&root, "/new/dir/").unwrap(),
            root.join("new/dir")
        );
        assert_eq!(secure_join(&root, "/../../etc").unwrap(), root.join("etc"));
        assert_eq!(
            secure_join(&root, "/srv/./../srv").unwrap(),
            root.join("srv")
        );
        let _ = fs::remove_dir_all(&root);
    }

    /// Attack: an image plants symlinks that point out of its rootfs.
    /// Safe outcome: each resolves as the container would see it, inside.
    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = rootfs("links");
        symlink("/srv/data", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("srv/up")).unwrap();
        symlink("/", root.join("top")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(secure_join(&root, "/abs").unwrap(), root.join("srv/data"));
        assert_eq!(
            secure_join(&root, "/abs/x").unwrap(),
            root.join("srv/data/x")
        );
        assert_eq!(
            secure_join(&root, "/srv/up/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(&root, "/top").unwrap(), root.clone());
        assert_eq!(
            secure_join(&root, "/top/../../srv").unwrap(),
            root.join("srv")
        );
        assert!(secure_join(&root, "/loop1")
            .unwrap_err()
            .contains("too many"));
        let _ = fs::remove_dir_all(&root);
    }
}
