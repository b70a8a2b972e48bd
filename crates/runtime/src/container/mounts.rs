//! The shared directory on the host: the bundle's rootfs and bind mount
//! sources bind-mounted under `<root>/<id>/shared/<id>/`, which the VMM
//! serves to the guest over virtio-fs.
//!
//! The shared directory is first bind-mounted onto itself in a peer group
//! of its own, so no mount made under it propagates to other host mounts
//! (only to the jailed VMM's slave copy of it), and one lazy unmount of it
//! removes everything. Binds are attached read-only already (open_tree,
//! mount_setattr, move_mount): a later remount would not reach the VMM.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::paths::ContainerPaths;
use super::spec::Bundle;
use super::ContainerError;

fn cstr(path: &Path) -> Result<CString, ContainerError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ContainerError::Io {
        what: "mounting",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// mount(2) with no file system type and no data.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), ContainerError> {
    let target_c = cstr(target)?;
    let source_c = source.map(cstr).transpose()?;
    // SAFETY: the strings are NUL-terminated and outlive the call; a null
    // source, type and data are allowed for bind, remount and propagation
    // changes.
    let rc = unsafe {
        libc::mount(
            source_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ContainerError::Io {
            what: "mounting",
            path: target.to_path_buf(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Bind-mounts `source` at `target` (created as a directory or an empty
/// file like the source), recursively, read-only (recursively) if asked.
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), ContainerError> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(ContainerError::io("creating", parent))?;
    }
    if source.is_dir() {
        fs::create_dir(target).map_err(ContainerError::io("creating", target))?;
    } else {
        fs::File::create(target).map_err(ContainerError::io("creating", target))?;
    }
    attach_copy(source, target, readonly)?;
    mount(None, target, libc::MS_PRIVATE | libc::MS_REC)
}

/// `OPEN_TREE_CLONE`, `AT_RECURSIVE`, `MOUNT_ATTR_RDONLY`,
/// `MOVE_MOUNT_F_EMPTY_PATH` (<linux/mount.h>, <fcntl.h>).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Attaches a recursive copy of `source` at `target`, read-only
/// (recursively) if asked. The copy is made read-only while it is still
/// detached (open_tree, mount_setattr, move_mount), so every copy the
/// attach propagates (a jailed VMM's view of the shared directory, a
/// slave of it) is read-only too: a remount after a bind would not
/// propagate, and the VMM would see the volume writable.
fn attach_copy(source: &Path, target: &Path, readonly: bool) -> Result<(), ContainerError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move || ContainerError::Io {
            what: "mounting",
            path,
            source: std::io::Error::last_os_error(),
        }
    };
    let source_c = cstr(source)?;
    let target_c = cstr(target)?;
    // SAFETY: a NUL-terminated path and integer flags; returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(err(source))?;
    // SAFETY: open_tree returned this new descriptor, owned here only.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    if readonly {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: the descriptor is open, the path an empty C string, the
        // attribute struct valid for its size.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(err(source)());
        }
    }
    // SAFETY: the descriptor is open; the paths are NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(err(target)());
    }
    Ok(())
}

/// Creates the shared directory and mounts the bundle's rootfs and bind
/// sources into it. On failure, whatever was mounted is unmounted again.
pub fn setup_shared(paths: &ContainerPaths, bundle: &Bundle) -> Result<(), ContainerError> {
    let shared = paths.shared_dir();
    fs::create_dir(&shared).map_err(ContainerError::io("creating", &shared))?;
    mount(Some(&shared), &shared, libc::MS_BIND)?;
    let result = (|| {
        mount(None, &shared, libc::MS_PRIVATE)?;
        // A peer group of its own: nothing propagates to other host
        // mounts, but a jailed VMM's copy (a slave) sees what is mounted
        // here after it started.
        mount(None, &shared, libc::MS_SHARED)?;
        bind_container(bundle, &shared.join(paths.id()))
    })();
    if result.is_err() {
        let _ = teardown_shared(paths);
    }
    result
}

/// Bind-mounts the bundle's rootfs at `<dir>/rootfs` and each bind
/// source at `<dir>/mounts/<n>` except those the guest makes a tmpfs
/// for (see [`super::volumes`]) (the layout the guest spec names, see
/// [`super::spec::Bundle::guest_spec`]). `dir` lies in an already private
/// shared directory; the caller unmounts it on failure.
///
/// The rootfs is shared read-write even when `root.readonly` is set: as
/// with runc, mount points (e.g. CRI's `/etc/resolv.conf`) are created in
/// it before the agent remounts the container's root read-only.
pub fn bind_container(bundle: &Bundle, dir: &Path) -> Result<(), ContainerError> {
    bind(&bundle.rootfs, &dir.join("rootfs"), false)?;
    // A guest tmpfs needs nothing from the host.
    for b in bundle.binds.iter().filter(|b| b.ephemeral.is_none()) {
        bind(
            &b.source,
            &dir.join("mounts").join(b.index.to_string()),
            b.readonly,
        )?;
    }
    Ok(())
}

/// Makes `dir` (created if missing) a bind mount of itself in a peer
/// group of its own, so that nothing mounted under it propagates to other
/// host mounts, while the copy in a jailed VMM's mount namespace (a
/// slave, see `nacre-vmm --jail`) still receives what is mounted under
/// it later (a pod's containers).
pub fn make_private_dir(dir: &Path) -> Result<(), ContainerError> {
    fs::create_dir_all(dir).map_err(ContainerError::io("creating", dir))?;
    mount(Some(dir), dir, libc::MS_BIND)?;
    mount(None, dir, libc::MS_PRIVATE)?;
    mount(None, dir, libc::MS_SHARED)
}

/// Unmounts the shared directory and everything under it (lazily, so a
/// busy mount does not stop it) and removes it. Safe to call when nothing
/// is mounted or the directory is gone. Returns false (and removes
/// nothing) when mounts remain.
pub fn teardown_shared(paths: &ContainerPaths) -> bool {
    let shared = paths.shared_dir();
    if let Ok(c) = cstr(&shared) {
        // Each bind under it and the directory's own bind: a few rounds.
        for _ in 0..64 {
            // SAFETY: a NUL-terminated path that outlives the call.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                break;
            }
        }
    }
    // Never recurse into a rootfs that is still mounted here.
    let left = mounts_under(&shared);
    if !left.is_empty() {
        tracing::warn!(
            ?left,
            "mounts remain under {}; not removing it",
            shared.display()
        );
        return false;
    }
    if let Err(e) = fs::remove_dir_all(&shared) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", shared.display());
        }
    }
    true
}

/// Mount points at or under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|mp| mp == &prefix || mp.starts_with(&format!("{prefix}/")))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn pipe() -> [libc::c_int; 2] {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        fds
    }

    /// A jailed VMM's copy of the shared directory is a slave made when
    /// the VM started; a read-only volume bound in later must arrive
    /// there read-only.
    #[test]
    fn a_read_only_bind_reaches_an_earlier_slave_copy_read_only() {
        if !crate::testing::root_prereqs("a_read_only_bind_reaches_an_earlier_slave_copy") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("nacre-ro-prop-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (share, src) = (dir.join("share"), dir.join("src"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        make_private_dir(&share).unwrap();
        let file = CString::new(share.join("vol/f").as_os_str().as_bytes()).unwrap();
        let (ready, go) = (pipe(), pipe());
        // SAFETY: the child makes system calls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: system calls on prepared strings and descriptors.
            unsafe {
                let slave = libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null(),
                    ) == 0;
                libc::write(ready[1], [u8::from(slave)].as_ptr().cast(), 1);
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                if libc::access(file.as_ptr(), libc::F_OK) != 0 {
                    libc::_exit(2); // the volume did not propagate
                }
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                libc::_exit(if fd < 0 { 0 } else { 1 });
            }
        }
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        unsafe { libc::read(ready[0], (&mut byte as *mut u8).cast(), 1) };
        assert_eq!(byte, 1, "the child could not make its slave copy");
        bind(&src, &share.join("vol"), true).unwrap();
        // SAFETY: writes one byte from a local.
        unsafe { libc::write(go[1], [1u8].as_ptr().cast(), 1) };
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let share_c = CString::new(share.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(share_c.as_ptr(), libc::MNT_DETACH) };
        for fd in ready.into_iter().chain(go) {
            // SAFETY: closing descriptors this test opened.
            unsafe { libc::close(fd) };
        }
        let _ = fs::remove_dir_all(&dir);
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: writable in the slave copy, 2: not there"
        );
    }
}
