//! The shared directory on the host: the bundle's rootfs and bind mount
//! sources bind-mounted under `<root>/<id>/shared/<id>/`, which the VMM
//! serves to the guest over virtio-fs.
//!
//! The shared directory is first bind-mounted onto itself and made
//! private, so no mount made under it propagates anywhere else, and one
//! lazy unmount of it removes everything.

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
/// file like the source), read-only if asked.
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), ContainerError> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(ContainerError::io("creating", parent))?;
    }
    if source.is_dir() {
        fs::create_dir(target).map_err(ContainerError::io("creating", target))?;
    } else {
        fs::File::create(target).map_err(ContainerError::io("creating", target))?;
    }
    mount(Some(source), target, libc::MS_BIND | libc::MS_REC)?;
    mount(None, target, libc::MS_PRIVATE | libc::MS_REC)?;
    if readonly {
        mount(
            None,
            target,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        )?;
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
