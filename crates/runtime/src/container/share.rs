//! The directory a sandbox shares with its guest over virtio-fs, laid out
//! like Kata runtime-rs's `share_fs`:
//!
//! ```text
//! <dir>/rw/       host only: a bind of itself, its own shared peer group;
//!                 the host makes every bind here
//!     <cid>/rootfs       bind of the bundle's rootfs
//!     <cid>/mounts/<n>   bind of the spec's n-th bind mount source
//! <dir>/shared/   a bind of rw, MS_SLAVE, read-only, nosuid, nodev:
//!                 what the VMM serves (tag `nacre`)
//! ```
//!
//! A bind made in `rw/<cid>/...` propagates into `shared/<cid>/...` as its
//! own mount with its own flags, so the guest writes inside a rootfs or a
//! writable volume but gets `EROFS` for any entry of the directories the
//! host walks: it can never plant a symlink or rename where a mount target
//! or an unmount path lies. The host only mounts and unmounts inside `rw`
//! (see [`super::mounts`]), and every directory is 0700.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::mounts::{self, Attr, ReadOnly};
use super::paths::validate_id;
use super::spec::Bundle;
use super::ContainerError;

/// One sandbox's shared directory `<dir>/{rw,shared}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    dir: PathBuf,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContainerError {
    ContainerError::io(what, path.to_path_buf())
}

impl SharedDir {
    /// Creates `<dir>` (0700, with its parents) and the `rw` and `shared`
    /// views in it. On failure nothing is left mounted.
    pub fn create(dir: &Path) -> Result<Self, ContainerError> {
        mounts::ensure_private_dir(dir).map_err(io_err("creating", dir))?;
        let share = Self::open(dir);
        if let Err(e) = share.mount_views() {
            if let Err(e2) = share.teardown() {
                tracing::warn!("cleaning up after a failed share setup: {e2}");
            }
            return Err(e);
        }
        Ok(share)
    }

    /// The shared directory of `dir` as [`SharedDir::create`] made it,
    /// to bind into, remove from or tear down. Touches nothing.
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `<dir>/rw`: where the host binds.
    pub fn rw(&self) -> PathBuf {
        self.dir.join("rw")
    }

    /// `<dir>/shared`: the read-only view the VMM serves.
    pub fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    fn mount_views(&self) -> Result<(), ContainerError> {
        let (rw, shared) = (self.rw(), self.shared());
        mounts::create_private_dir(&rw).map_err(io_err("creating", &rw))?;
        mounts::create_private_dir(&shared).map_err(io_err("creating", &shared))?;
        let mounting = |p: &Path| io_err("mounting", p);
        // rw: a bind of itself, out of its parent's peer group, then a
        // peer group of its own that `shared` follows.
        let rw_dir = mounts::open_dir(&rw).map_err(mounting(&rw))?;
        let tree = mounts::clone_tree(Some(rw_dir.as_fd()), &rw, false).map_err(mounting(&rw))?;
        mounts::attach(tree, rw_dir.as_fd()).map_err(mounting(&rw))?;
        let rw_mnt = mounts::open_dir(&rw).map_err(mounting(&rw))?;
        for propagation in [libc::MS_PRIVATE, libc::MS_SHARED] {
            let attr = Attr {
                propagation,
                ..Attr::default()
            };
            mounts::set_attr(rw_mnt.as_fd(), attr).map_err(mounting(&rw))?;
        }
        let nosuid = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        let attr = Attr {
            set: nosuid,
            ..Attr::default()
        };
        mounts::set_attr(rw_mnt.as_fd(), attr).map_err(mounting(&rw))?;
        // shared: a bind of rw (a peer of it), made its slave, read-only.
        // The guest does not run yet, so it never sees it writable.
        let shared_dir = mounts::open_dir(&shared).map_err(mounting(&shared))?;
        let tree =
            mounts::clone_tree(Some(rw_mnt.as_fd()), &rw, false).map_err(mounting(&shared))?;
        mounts::attach(tree, shared_dir.as_fd()).map_err(mounting(&shared))?;
        let shared_mnt = mounts::open_dir(&shared).map_err(mounting(&shared))?;
        let slave = Attr {
            propagation: libc::MS_SLAVE,
            ..Attr::default()
        };
        mounts::set_attr(shared_mnt.as_fd(), slave).map_err(mounting(&shared))?;
        let ro = Attr {
            set: libc::MOUNT_ATTR_RDONLY | nosuid,
            ..Attr::default()
        };
        mounts::set_attr(shared_mnt.as_fd(), ro).map_err(mounting(&shared))
    }

    /// Binds the bundle's rootfs at `rw/<cid>/rootfs` and each bind source
    /// at `rw/<cid>/mounts/<n>` except those the guest makes a tmpfs for
    /// (see [`super::volumes`]); the guest sees them under
    /// `shared/<cid>/` (the layout [`Bundle::guest_spec`] names). Checks
    /// `cid` before using it. On failure, what was bound is removed again.
    ///
    /// The rootfs is shared read-write even when `root.readonly` is set: as
    /// with runc, mount points (e.g. CRI's `/etc/resolv.conf`) are created
    /// in it before the agent remounts the container's root read-only.
    pub fn bind_container(&self, bundle: &Bundle, cid: &str) -> Result<(), ContainerError> {
        validate_id(cid)?;
        let result = self.bind_all(bundle, cid);
        if result.is_err() {
            if let Err(e) = self.remove_container(cid) {
                tracing::warn!(cid, "cleaning up after a failed bind: {e}");
            }
        }
        result
    }

    fn bind_all(&self, bundle: &Bundle, cid: &str) -> Result<(), ContainerError> {
        let rw = self.rw();
        let rw_fd = mounts::open_dir(&rw).map_err(io_err("opening", &rw))?;
        // Binds made anywhere but on rw's own mount would not reach the
        // guest's view.
        let on_own_mount = mounts::mount_id(&rw).ok() != mounts::mount_id(&self.dir).ok();
        if !on_own_mount {
            return Err(ContainerError::Io {
                what: "binding into",
                path: rw,
                source: io::Error::other("not the share's rw mount"),
            });
        }
        let base = rw.join(cid);
        let creating = |p: &Path| io_err("creating", p);
        let cdir =
            mounts::mkdir_beneath(rw_fd.as_fd(), OsStr::new(cid), true).map_err(creating(&base))?;
        let rootfs = base.join("rootfs");
        let target = mounts::create_target(cdir.as_fd(), OsStr::new("rootfs"), true)
            .map_err(creating(&rootfs))?;
        mounts::bind(&bundle.rootfs, target.as_fd(), ReadOnly::No)
            .map_err(io_err("mounting", &rootfs))?;
        // A guest tmpfs needs nothing from the host.
        let binds: Vec<_> = bundle
            .binds
            .iter()
            .filter(|b| b.ephemeral.is_none())
            .collect();
        if binds.is_empty() {
            return Ok(());
        }
        let mdir = mounts::mkdir_beneath(cdir.as_fd(), OsStr::new("mounts"), true)
            .map_err(creating(&base.join("mounts")))?;
        for b in binds {
            let name = b.index.to_string();
            let path = base.join("mounts").join(&name);
            let target = mounts::create_target(mdir.as_fd(), OsStr::new(&name), b.source.is_dir())
                .map_err(creating(&path))?;
            let ro = match (b.readonly, b.recursive_readonly) {
                (_, true) => ReadOnly::Recursive,
                (true, false) => ReadOnly::Top,
                (false, false) => ReadOnly::No,
            };
            mounts::bind(&b.source, target.as_fd(), ro).map_err(io_err("mounting", &path))?;
        }
        Ok(())
    }

    /// Unmounts what [`SharedDir::bind_container`] bound for `cid` (only
    /// ever inside `rw`, each unmount checked) and removes `rw/<cid>`
    /// once no mount remains under it. Checks `cid` before using it; fine
    /// when nothing is there.
    pub fn remove_container(&self, cid: &str) -> Result<(), ContainerError> {
        validate_id(cid)?;
        let base = self.rw().join(cid);
        mounts::unmount_tree(&base, true).map_err(io_err("unmounting", &base))?;
        // The unmounts propagate to the guest's view.
        let view = self.shared().join(cid);
        let left = mounts::mounts_under(&view);
        if !left.is_empty() {
            return Err(ContainerError::Io {
                what: "unmounting",
                path: view,
                source: io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("mounts remain: {left:?}"),
                ),
            });
        }
        remove_tree(&base)
    }

    /// Unmounts everything (container binds, `shared`, `rw`) and removes
    /// `rw` and `shared`; `<dir>` itself stays. Fine when nothing is there.
    pub fn teardown(&self) -> Result<(), ContainerError> {
        let (rw, shared) = (self.rw(), self.shared());
        let unmounting = |p: &Path| io_err("unmounting", p);
        // The container binds first (their mount points are in rw), then
        // the view (its own mount point only: never a path inside it),
        // then rw.
        mounts::unmount_tree(&rw, false).map_err(unmounting(&rw))?;
        mounts::unmount_tree(&shared, true).map_err(unmounting(&shared))?;
        mounts::unmount_tree(&rw, true).map_err(unmounting(&rw))?;
        remove_tree(&rw)?;
        remove_tree(&shared)
    }
}

/// Removes the directory tree `dir` (it has no mounts left; std's
/// `remove_dir_all` does not follow symlinks). Fine when it is missing.
fn remove_tree(dir: &Path) -> Result<(), ContainerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContainerError::Io {
            what: "removing",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}
