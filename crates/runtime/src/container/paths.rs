//! Where a container's state lives on the host: `<root>/<id>/`.
//!
//! ```text
//! <root>/<id>/state.json     the container's state (see `state`)
//! <root>/<id>/vm/            the VMM's run directory (sockets, logs,
//!                            vmm.pid written as soon as it runs)
//! <root>/<id>/rw/            host only: where the binds are made
//!     <id>/rootfs            bind mount of the bundle's rootfs
//!     <id>/mounts/<n>        bind mount of the spec's n-th mount
//! <root>/<id>/shared/        read-only view of rw (see `share`), served
//!                            to the guest over virtio-fs as `nacre`
//! ```
//!
//! `<root>`, `<root>/<id>` and everything nacre makes in it are 0700.

use std::path::{Path, PathBuf};

use super::ContainerError;

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/nacre";
/// Where VMM run directories go when `<root>/<id>/vm` is too long.
pub const SHORT_VM_BASE: &str = "/run/nacre-vm";
/// Longest socket path accepted (`sun_path` is 108 bytes with the NUL;
/// leave room).
const MAX_SOCKET_PATH: usize = 100;
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

    /// The VMM's run directory: `<root>/<id>/vm`, unless its socket paths
    /// would not fit a Unix socket address (108 bytes; container ids are
    /// often 64 characters), then [`SHORT_VM_BASE`]`/<hash of root and id>`.
    pub fn vm_dir(&self) -> PathBuf {
        let inside = self.dir().join("vm");
        // The longest socket name the VMM creates is "vsock.sock".
        if inside.join("vsock.sock").as_os_str().len() < MAX_SOCKET_PATH {
            inside
        } else {
            self.short_vm_dir()
        }
    }

    /// The fallback VMM run directory for long roots or ids.
    pub fn short_vm_dir(&self) -> PathBuf {
        let h = short_hash(&[self.root.as_os_str().as_encoded_bytes(), self.id.as_bytes()]);
        PathBuf::from(SHORT_VM_BASE).join(h)
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

    /// Where the guest finds this container's shared files.
    pub fn guest(&self) -> GuestLayout {
        GuestLayout::new(&self.id)
    }
}

/// Where the guest finds a container's shared files: the same for a CLI
/// container (its own VM) and a pod's container (the pod's VM), since
/// both share `<sandbox>/shared/<id>/` as `/run/nacre/shared/<id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    id: String,
}

impl GuestLayout {
    /// The layout of container `id` (an id [`validate_id`] accepts).
    pub fn new(id: &str) -> Self {
        Self { id: id.to_string() }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The rootfs as the guest sees it.
    pub fn rootfs(&self) -> String {
        format!("{GUEST_SHARED_DIR}/{}/rootfs", self.id)
    }

    /// The `n`-th mount source as the guest sees it.
    pub fn mount(&self, n: usize) -> String {
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

/// Root of the containerd shim's sandbox directories;
/// `NACRE_SHIM_ROOT` overrides it.
pub const DEFAULT_SHIM_ROOT: &str = "/run/nacre-shim";

/// The directory of one pod sandbox of the containerd shim (layout in
/// the shim's `layout.rs`).
pub fn pod_sandbox_dir(namespace: &str, sandbox: &str) -> PathBuf {
    pod_sandbox_dir_in(&shim_root(), namespace, sandbox)
}

/// The shim's root: `NACRE_SHIM_ROOT`, else [`DEFAULT_SHIM_ROOT`].
pub fn shim_root() -> PathBuf {
    std::env::var_os("NACRE_SHIM_ROOT")
        .filter(|r| !r.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SHIM_ROOT), PathBuf::from)
}

/// [`pod_sandbox_dir`] under the shim root `root`.
pub fn pod_sandbox_dir_in(root: &Path, namespace: &str, sandbox: &str) -> PathBuf {
    // Short (socket paths must fit 108 bytes), stable, collision-resistant.
    root.join(short_hash(&[namespace.as_bytes(), sandbox.as_bytes()]))
}

/// A short name for a host directory keyed by `parts`: the first 128
/// bits of SHA-256 over the parts, each followed by a NUL, in hex (32
/// characters, so socket paths under it fit a Unix socket address).
/// Collision-resistant: nobody can choose an id whose directory is
/// another container's (a 64-bit FNV hash was; security review L6).
pub fn short_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        assert_eq!(p.guest().rootfs(), "/run/nacre/shared/c1/rootfs");
        assert_eq!(p.guest().mount(0), "/run/nacre/shared/c1/mounts/0");
        assert_eq!(p.vsock_socket(), Path::new("/run/nacre/c1/vm/vsock.sock"));
    }

    #[test]
    fn long_ids_get_a_short_vm_dir() {
        let id = "b3a1f8ac633ffb0e9a08ad83a5d0222d640e307f746d34568673fc648c2e4b19";
        let p = ContainerPaths::new(Path::new("/run/nacre"), id).unwrap();
        assert_eq!(
            p.vm_dir(),
            p.dir().join("vm"),
            "fits under the default root"
        );
        let p = ContainerPaths::new(Path::new("/tmp/some/long/podman/test/root"), id).unwrap();
        let vm = p.vm_dir();
        assert!(vm.starts_with(SHORT_VM_BASE), "{}", vm.display());
        assert!(p.vsock_socket().as_os_str().len() < 100);
        assert_eq!(vm, p.vm_dir(), "stable");
        let other = ContainerPaths::new(Path::new("/tmp/some/long/podman/test/root2"), id).unwrap();
        assert_ne!(vm, other.vm_dir());
        // SHA-256 of "<root>\0<id>\0", first 128 bits.
        // (printf '/r\0c\0' | sha256sum | cut -c1-32)
        assert_eq!(
            short_hash(&[b"/r", b"c"]),
            "2c82a5cf143bad312e3edd87d661bf28"
        );
    }
}
