//! Bind mounts the guest gets as its own tmpfs instead of a virtio-fs
//! share ("ephemeral" storage, as Kata calls it).
//!
//! Two kinds of bind source are memory on the host and stay memory in the
//! guest, one tmpfs per pod (per VM) shared by every container naming it:
//! - a memory-backed emptyDir: kubelet mounts a tmpfs at
//!   `.../volumes/kubernetes.io~empty-dir/<name>`; the guest gets
//!   `/run/nacre/ephemeral/empty-dir/<name>`;
//! - `/dev/shm`: CRI binds the sandbox's shm tmpfs there in every
//!   container; the guest gets `/run/nacre/ephemeral/shm`.
//!
//! The guest tmpfs has the host tmpfs's size and mode (passed to the agent
//! as `size=`/`mode=` options of the bind, which a bind mount ignores). It
//! lives as long as the VM, so its content outlives a container restart
//! and goes with the pod. Disk-backed emptyDirs and everything else stay
//! virtio-fs binds.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Where the agent mounts the ephemeral tmpfs volumes in the guest.
pub const GUEST_EPHEMERAL_DIR: &str = "/run/nacre/ephemeral";

/// The directory kubelet keeps emptyDir volumes in.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// A bind mount the guest gets as a tmpfs of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ephemeral {
    /// Names the tmpfs in the VM: `shm` or `empty-dir/<name>`.
    pub key: String,
    /// Size of the host tmpfs in bytes.
    pub size: u64,
    /// Permission bits of the host directory.
    pub mode: u32,
}

impl Ephemeral {
    /// The tmpfs's directory in the guest.
    pub fn guest_path(&self) -> String {
        format!("{GUEST_EPHEMERAL_DIR}/{}", self.key)
    }

    /// The options the agent reads to mount the tmpfs.
    pub fn options(&self) -> [String; 2] {
        [
            format!("size={}", self.size),
            format!("mode={:o}", self.mode),
        ]
    }
}

/// What statfs(2) and stat(2) say about a bind source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFs {
    /// On a tmpfs.
    pub tmpfs: bool,
    /// Size of the file system in bytes.
    pub size: u64,
    /// Permission bits of the source.
    pub mode: u32,
}

/// Whether the bind of `source` at `destination` becomes a guest tmpfs.
/// A source statfs cannot read is shared as usual.
pub fn detect(source: &Path, destination: &str) -> Option<Ephemeral> {
    if destination != "/dev/shm" && empty_dir_name(source).is_none() {
        return None;
    }
    let fs = source_fs(source)
        .inspect_err(|e| tracing::debug!("statfs {}: {e}", source.display()))
        .ok()?;
    classify(source, destination, fs)
}

/// The decision of [`detect`], given what the source's file system is.
pub fn classify(source: &Path, destination: &str, fs: SourceFs) -> Option<Ephemeral> {
    if !fs.tmpfs {
        return None;
    }
    let key = if destination == "/dev/shm" {
        "shm".to_owned()
    } else {
        format!("empty-dir/{}", empty_dir_name(source)?)
    };
    Some(Ephemeral {
        key,
        size: fs.size,
        mode: fs.mode & 0o7777,
    })
}

/// `<name>` of a `.../kubernetes.io~empty-dir/<name>` path.
fn empty_dir_name(source: &Path) -> Option<&str> {
    let name = source.file_name()?.to_str()?;
    let plugin = source.parent()?.file_name()?;
    let ok = plugin == EMPTY_DIR_PLUGIN
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    ok.then_some(name)
}

fn source_fs(source: &Path) -> std::io::Result<SourceFs> {
    let c = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer, both live
    // for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mode = std::fs::metadata(source)?.permissions().mode();
    let blocks = st.f_blocks;
    let bsize = u64::try_from(st.f_bsize).unwrap_or(0);
    Ok(SourceFs {
        tmpfs: st.f_type == libc::TMPFS_MAGIC,
        size: blocks.saturating_mul(bsize),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "/var/lib/kubelet/pods/1234/volumes/kubernetes.io~empty-dir";

    fn fs(tmpfs: bool) -> SourceFs {
        SourceFs {
            tmpfs,
            size: 64 << 20,
            mode: 0o41777,
        }
    }

    #[test]
    fn memory_backed_empty_dirs_and_shm_become_guest_tmpfs() {
        let cache = Path::new(POD).join("cache");
        let e = classify(&cache, "/cache", fs(true)).unwrap();
        assert_eq!(e.key, "empty-dir/cache");
        assert_eq!(e.guest_path(), "/run/nacre/ephemeral/empty-dir/cache");
        assert_eq!(
            e.options(),
            ["size=67108864".to_owned(), "mode=1777".into()]
        );
        let shm = Path::new("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/ab/shm");
        let e = classify(shm, "/dev/shm", fs(true)).unwrap();
        assert_eq!(e.guest_path(), "/run/nacre/ephemeral/shm");
        assert_eq!(e.size, 64 << 20);
    }

    #[test]
    fn everything_else_stays_a_share() {
        // Disk-backed emptyDir.
        assert_eq!(
            classify(&Path::new(POD).join("cache"), "/c", fs(false)),
            None
        );
        // A /dev/shm bind of a directory on disk.
        assert_eq!(classify(Path::new("/srv/shm"), "/dev/shm", fs(false)), None);
        // A tmpfs that is no emptyDir, a subdirectory of one, odd names.
        for source in [
            "/run/user/0".to_owned(),
            format!("{POD}/cache/sub"),
            format!("{POD}/.hidden"),
            "/kubernetes.io~empty-dir".into(),
            "/a/kubernetes.io~empty-dir-x/cache".into(),
        ] {
            assert_eq!(
                classify(Path::new(&source), "/x", fs(true)),
                None,
                "{source}"
            );
        }
        // No statfs for paths that cannot be one.
        assert_eq!(detect(Path::new("/nonexistent/x"), "/x"), None);
    }

    #[test]
    fn detects_a_real_tmpfs() {
        // /dev/shm is a tmpfs on any usual host; skip quietly otherwise.
        let Ok(fs) = source_fs(Path::new("/dev/shm")) else {
            return;
        };
        if fs.tmpfs {
            let e = detect(Path::new("/dev/shm"), "/dev/shm").unwrap();
            assert!(e.size > 0);
        }
        let root = source_fs(Path::new("/proc")).unwrap();
        assert!(!root.tmpfs);
    }
}
