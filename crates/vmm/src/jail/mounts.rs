//! The jail's namespaces and root file system.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{check, sys, BindKind, JailError, JailSpec};

/// The tmpfs that holds the mount points (never more than a few dirs).
const ROOT_OPTIONS: &str = "size=1m,nr_inodes=4096,mode=0755";
/// Flags every bind keeps: nothing in the jail is executed, and the jail
/// honours no setuid bit or device node except those bound as devices.
const HARDENED: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Path {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let err = |source_err| JailError::Mount {
        path: source.map_or_else(
            || PathBuf::from(fstype.unwrap_or("none")),
            Path::to_path_buf,
        ),
        target: target.to_path_buf(),
        source: source_err,
    };
    let c_source = source.map(cstr).transpose()?;
    let c_target = cstr(target)?;
    let c_fstype = fstype
        .map(CString::new)
        .transpose()
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    let c_data = data
        .map(CString::new)
        .transpose()
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call; mount reads them only.
    let rc = unsafe {
        libc::mount(
            ptr(&c_source),
            c_target.as_ptr(),
            ptr(&c_fstype),
            flags,
            ptr(&c_data).cast(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Unshares the namespaces (network only when no tap is opened by name)
/// and stops mount propagation back to the host.
pub(super) fn enter_namespaces(spec: &JailSpec) -> Result<(), JailError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if !spec.tap_by_name {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only; the process is single-threaded.
    check(unsafe { libc::unshare(flags) }, "unshare")?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
}

/// Where `path` of the host appears under the jail root `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Creates the mount point for `source` at `target` (a directory for a
/// directory, an empty file otherwise).
fn mount_point(source: &Path, target: &Path) -> Result<(), JailError> {
    let err = |e| JailError::Path {
        path: target.to_path_buf(),
        source: e,
    };
    let is_dir = std::fs::metadata(source)
        .map_err(|e| JailError::Path {
            path: source.to_path_buf(),
            source: e,
        })?
        .is_dir();
    if is_dir {
        return std::fs::create_dir_all(target).map_err(err);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
    {
        Ok(_) => Ok(()),
        // A file that exists is a mount point already (a bound parent).
        Err(_) if target.exists() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

fn bind(root: &Path, path: &Path, kind: BindKind) -> Result<(), JailError> {
    let target = inside(root, path);
    mount_point(path, &target)?;
    let recursive = if kind == BindKind::Share {
        libc::MS_REC
    } else {
        0
    };
    mount(Some(path), &target, None, libc::MS_BIND | recursive, None)?;
    let flags = match kind {
        // The share keeps the flags of its own mounts (read-only volumes
        // stay read-only, recursively, as bound).
        BindKind::Share => return Ok(()),
        BindKind::ReadWrite => HARDENED,
        BindKind::ReadOnly => HARDENED | libc::MS_RDONLY,
        BindKind::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
    };
    mount(
        None,
        &target,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | flags,
        None,
    )
}

/// Builds the jail root on `spec.dir` and pivots into it.
pub(super) fn build_root(spec: &JailSpec) -> Result<(), JailError> {
    let root = spec.dir.as_path();
    std::fs::create_dir_all(root).map_err(|source| JailError::Path {
        path: root.to_path_buf(),
        source,
    })?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        HARDENED,
        Some(ROOT_OPTIONS),
    )?;
    // Parents before children, so a bind inside a bound directory (a
    // share in the run directory) lands on top.
    let mut binds = spec.binds.clone();
    binds.sort_by_key(|b| b.path.components().count());
    for b in &binds {
        bind(root, &b.path, b.kind)?;
    }
    if spec.tap_by_name {
        bind(root, Path::new("/dev/net/tun"), BindKind::Device)?;
    }
    if spec.share {
        // fuse-backend-rs reopens inodes through /proc/self/fd (only the
        // VMM's own descriptors and mount table; no /proc of host
        // processes).
        bind_proc_self_fd(root)?;
    }
    mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | HARDENED,
        None,
    )?;
    pivot(root)
}

fn bind_proc_self_fd(root: &Path) -> Result<(), JailError> {
    // /proc/self resolves now, to this process's directory. fuse-backend-rs
    // opens `fd` (to reopen inodes) and `mountinfo` (its mount table,
    // which then lists the jail's mounts only).
    for entry in ["fd", "mountinfo"] {
        let own = PathBuf::from(format!("/proc/{}/{entry}", std::process::id()));
        let target = root.join("proc/self").join(entry);
        mount_point(&own, &target)?;
        mount(Some(&own), &target, None, libc::MS_BIND, None)?;
        mount(
            None,
            &target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | HARDENED,
            None,
        )?;
    }
    Ok(())
}

/// `pivot_root(root, root)` and a lazy unmount of the old root, which is
/// stacked on the new one.
fn pivot(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(sys("chdir to the jail"))?;
    let dot = c".";
    // SAFETY: pivot_root reads two NUL-terminated strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(i32::try_from(rc).unwrap_or(-1), "pivot_root")?;
    // SAFETY: umount2 reads a NUL-terminated string.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(rc, "detaching the old root")?;
    std::env::set_current_dir("/").map_err(sys("chdir to /"))
}
