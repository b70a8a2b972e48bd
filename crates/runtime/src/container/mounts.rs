//! The one mount helper of the host side: directories and bind mounts made
//! through file descriptors, and checked lazy unmounts.
//!
//! Nothing here resolves a path the guest can write to. Mount targets are
//! created and opened one component at a time below a directory fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`, so a planted symlink or mount fails the call instead
//! of redirecting it. A bind is prepared detached (`open_tree`), gets its
//! flags (`mount_setattr`) and only then is attached (`move_mount`), so
//! the copy that propagates into the guest's read-only view (see
//! [`super::share`]) carries the final flags from its first moment:
//! flags changed after attaching would not propagate. Needs Linux 5.12.
//!
//! Unmounts are `MNT_DETACH | UMOUNT_NOFOLLOW` of a mount point whose
//! mount id was checked against `/proc/self/mountinfo` before, and gone
//! from it after.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Mode of every directory the host makes for the share.
pub const DIR_MODE: libc::mode_t = 0o700;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor a system call returned.
fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd =
        RawFd::try_from(check(rc)?).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `path` as an `O_PATH` descriptor, not following a
/// symlink in its last component. Only for paths the guest cannot write.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    owned(libc::c_long::from(fd))
}

/// `openat2(dir, name, flags, RESOLVE_BENEATH | NO_SYMLINKS | NO_MAGICLINKS
/// | NO_XDEV)`: `name` must lie below `dir`, on the same mount, reached
/// without a symlink.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstr(name.as_bytes())?;
    let mut how: libc::open_how = {
        // SAFETY: open_how is plain integers; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    how.flags = u64::try_from(flags | libc::O_NOFOLLOW | libc::O_CLOEXEC).unwrap_or(0);
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: a valid directory fd, a NUL-terminated name and an open_how
    // of the size passed, all outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(rc)
}

/// Makes directory `name` (mode [`DIR_MODE`]) in `dir`; `exclusive`: it
/// must not exist yet. Returns an `O_PATH` descriptor of it.
pub fn mkdir_beneath(dir: BorrowedFd<'_>, name: &OsStr, exclusive: bool) -> io::Result<OwnedFd> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), DIR_MODE) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if exclusive || e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    open_beneath(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Makes the empty mount target `name` in `dir`: a directory, or an empty
/// file (mode 0600) for a file source. It must not exist. Returns an
/// `O_PATH` descriptor of it.
pub fn create_target(dir: BorrowedFd<'_>, name: &OsStr, directory: bool) -> io::Result<OwnedFd> {
    if directory {
        return mkdir_beneath(dir, name, true);
    }
    drop(open_beneath(
        dir,
        name,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    )?);
    open_beneath(dir, name, libc::O_PATH, 0)
}

/// Mount attributes for [`set_attr`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Attr {
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// `MS_PRIVATE`, `MS_SHARED`, `MS_SLAVE` or 0 (unchanged).
    pub propagation: u64,
    /// To every mount of the tree, not only its top.
    pub recursive: bool,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], attr)`. Bits not
/// named are kept (unlike a `MS_REMOUNT`, which resets them).
pub fn set_attr(fd: BorrowedFd<'_>, attr: Attr) -> io::Result<()> {
    let mut a: libc::mount_attr = {
        // SAFETY: mount_attr is plain integers; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    a.attr_set = attr.set;
    a.propagation = attr.propagation;
    let mut flags = libc::AT_EMPTY_PATH;
    if attr.recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: a valid fd, an empty NUL-terminated path and a mount_attr of
    // the size passed, all outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &a as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(rc).map(drop)
}

/// A detached copy of the mount tree at `source` (the source itself when
/// `recursive` is false), as `mount --rbind` / `--bind` would attach.
pub fn clone_tree(
    dir: Option<BorrowedFd<'_>>,
    source: &Path,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let (dirfd, c) = match dir {
        Some(d) => (d.as_raw_fd(), c"".to_owned()),
        None => (libc::AT_FDCWD, cstr(source.as_os_str().as_bytes())?),
    };
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if dir.is_some() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a valid (or AT_FDCWD) fd and a NUL-terminated path that
    // outlives the call.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dirfd, c.as_ptr(), flags) })
}

/// Attaches the detached tree `tree` on `target` (`move_mount` by fds).
pub fn attach(tree: OwnedFd, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: two valid fds and empty NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(rc).map(drop)
}

/// How a volume is bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadOnly {
    /// Writable (the source's own flags permitting).
    #[default]
    No,
    /// The top mount read-only, submounts as they are (runc's `ro`).
    Top,
    /// Every mount of the tree read-only (runc's `rro`).
    Recursive,
}

/// Binds the tree at `source` (recursively, like `rbind`) onto the target
/// `target`: private, `nosuid,nodev` on every mount, read-only as asked,
/// every other flag of the source (`noexec`, ...) kept. The flags are set
/// before the tree is attached.
pub fn bind(source: &Path, target: BorrowedFd<'_>, ro: ReadOnly) -> io::Result<()> {
    let tree = clone_tree(None, source, true)?;
    let nosuid = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    set_attr(
        tree.as_fd(),
        Attr {
            set: nosuid,
            propagation: libc::MS_PRIVATE,
            recursive: true,
        },
    )?;
    if ro != ReadOnly::No {
        set_attr(
            tree.as_fd(),
            Attr {
                set: libc::MOUNT_ATTR_RDONLY,
                propagation: 0,
                recursive: ro == ReadOnly::Recursive,
            },
        )?;
    }
    attach(tree, target)
}

/// The mount id of the mount `path` is on (the mount itself when `path`
/// is a mount point), not following a last symlink.
pub fn mount_id(path: &Path) -> io::Result<u64> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let mut stx: libc::statx = {
        // SAFETY: statx is plain integers; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    // SAFETY: a NUL-terminated path and a statx buffer outliving the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    check(libc::c_long::from(rc))?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(stx.stx_mnt_id)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub point: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// This mount namespace's mounts.
pub fn mount_table() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = unescape(f.nth(2)?);
            Some(MountEntry { id, parent, point })
        })
        .collect()
}

/// Mounts at or under `dir`.
pub fn entries_under(dir: &Path) -> Vec<MountEntry> {
    mount_table()
        .into_iter()
        .filter(|e| e.point.starts_with(dir))
        .collect()
}

/// Mount points at or under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    entries_under(dir)
        .into_iter()
        .map(|e| e.point.to_string_lossy().into_owned())
        .collect()
}

/// Lazily unmounts the mount `entry`, after checking that its mount point
/// still holds that very mount (by id, `statx` not following a last
/// symlink); checks that it is gone afterwards.
pub fn unmount_checked(entry: &MountEntry) -> io::Result<()> {
    let now = mount_id(&entry.point)?;
    if now != entry.id {
        return Err(io::Error::other(format!(
            "{} holds mount {now}, not {}",
            entry.point.display(),
            entry.id
        )));
    }
    let c = cstr(entry.point.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    check(libc::c_long::from(rc))?;
    // Mount ids are reused at once: another thread's new mount may have
    // this one's id, so look for it at its own mount point.
    if mount_table().contains(entry) {
        return Err(io::Error::other(format!(
            "mount {} is still on {}",
            entry.id,
            entry.point.display()
        )));
    }
    Ok(())
}

/// Lazily unmounts every mount under `base`, and the mounts on `base`
/// itself if `with_base`: only the topmost ones, whose mount points are
/// `base` or paths the caller made (`MNT_DETACH` takes their submounts
/// along), each checked by mount id. Fails when mounts remain.
pub fn unmount_tree(base: &Path, with_base: bool) -> io::Result<()> {
    let under = || {
        let mut e = entries_under(base);
        e.retain(|e| with_base || e.point != base);
        e
    };
    for _ in 0..16 {
        let entries = under();
        if entries.is_empty() {
            return Ok(());
        }
        // The topmost: their parent is not unmounted along with them.
        let tops = entries
            .iter()
            .filter(|e| !entries.iter().any(|p| p.id == e.parent && p.id != e.id));
        for e in tops {
            unmount_checked(e)?;
        }
    }
    let left = under();
    if left.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("mounts remain: {left:?}"),
        ))
    }
}

/// Creates directory `path` with mode 0700 whatever the umask (its parent
/// must exist); fails if it exists.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    chmod_dir(path)
}

/// Creates directory `path` and its missing parents (mode 0700 or less),
/// then makes `path` itself 0700 whatever the umask.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    chmod_dir(path)
}

/// `fchmod(0700)` of the directory `path` (not through a symlink).
fn chmod_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    dir.set_permissions(fs::Permissions::from_mode(DIR_MODE))
}

/// Lazily unmounts every mount at or under `dir`, deepest first, never
/// through a symlink in the last component. Not for a sandbox's share
/// (see [`super::share::SharedDir`]): for containerd's bundle rootfs.
pub fn unmount_all(dir: &Path) {
    for _ in 0..8 {
        let mut left = mounts_under(dir);
        if left.is_empty() {
            return;
        }
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\134c"), Path::new("/a b\\c"));
        assert_eq!(unescape(r"/x\0"), Path::new(r"/x\0"));
    }

    #[test]
    fn the_root_is_a_mount() {
        let t = mount_table();
        let root = t.iter().find(|e| e.point == Path::new("/")).unwrap();
        assert_eq!(mount_id(Path::new("/")).unwrap(), root.id);
    }
}
