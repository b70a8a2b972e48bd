//! Where a container's state lives on the host: `<root>/<id>/`.
//!
//! ```text
//! <root>/<id>/state.json     the container's state (see `state`)
//! <root>/<id>/vm/            the VMM's run directory (sockets, logs,
//!                            vmm.pid written as soon as it runs)
//! <root>/<id>/shared/        served to the guest over virtio-fs as `nacre`
//!     <id>/rootfs            bind mount of the bundle's rootfs
//!     <id>/mounts/<n>        bind mount of the spec's n-th mount
//! ```

use std::path::{Path, PathBuf};

use super::ContainerError;

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/nacre";
/// The virtio-fs tag of the shared directory.
pub const SHARED_TAG: &str = "nacre";
/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/nacre/shared";

/// The host paths of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPaths {
    root: PathBuf,
    id: String,
}

impl ContainerPaths {
    /// The paths of container `id` under `root`, after checking the id.
    pub fn new(root: &Path, id: &str) -> Result<Self, ContainerError> {
        validate_id(id)?;
        Ok(Self {
            root: root.to_path_buf(),
            id: id.to_string(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<id>`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.id)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    pub fn vmm_pid_file(&self) -> PathBuf {
        self.vm_dir().join("vmm.pid")
    }

    pub fn vm_dir(&self) -> PathBuf {
        self.dir().join("vm")
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.vm_dir().join("vsock.sock")
    }

    /// The directory served to the guest.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir().join("shared")
    }

    /// Host mount point of the rootfs.
    pub fn shared_rootfs(&self) -> PathBuf {
        self.shared_dir().join(&self.id).join("rootfs")
    }

    /// Host mount point of the spec's `n`-th mount.
    pub fn shared_mount(&self, n: usize) -> PathBuf {
        self.shared_dir()
            .join(&self.id)
            .join("mounts")
            .join(n.to_string())
    }

    /// The rootfs as the guest sees it.
    pub fn guest_rootfs(&self) -> String {
        format!("{GUEST_SHARED_DIR}/{}/rootfs", self.id)
    }

    /// The `n`-th mount source as the guest sees it.
    pub fn guest_mount(&self, n: usize) -> String {
        format!("{GUEST_SHARED_DIR}/{}/mounts/{n}", self.id)
    }
}

/// Accepts what runc accepts: letters, digits, `_`, `+`, `-`, `.`, at most
/// 1024 bytes, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for id in ["a", "abc-123_x.y", "0123456789abcdef", "a+b"] {
            validate_id(id).unwrap();
        }
        for id in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            assert!(validate_id(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn layout() {
        let p = ContainerPaths::new(Path::new("/run/nacre"), "c1").unwrap();
        assert_eq!(p.dir(), Path::new("/run/nacre/c1"));
        assert_eq!(
            p.shared_rootfs(),
            Path::new("/run/nacre/c1/shared/c1/rootfs")
        );
        assert_eq!(
            p.shared_mount(2),
            Path::new("/run/nacre/c1/shared/c1/mounts/2")
        );
        assert_eq!(p.guest_rootfs(), "/run/nacre/shared/c1/rootfs");
        assert_eq!(p.guest_mount(0), "/run/nacre/shared/c1/mounts/0");
        assert_eq!(p.vsock_socket(), Path::new("/run/nacre/c1/vm/vsock.sock"));
    }
}
