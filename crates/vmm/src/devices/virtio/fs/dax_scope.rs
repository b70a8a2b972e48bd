//! Which files the guest may map through the DAX window: those of the
//! containers' root file systems (`<cid>/rootfs/...` in the share), never
//! a volume (`<cid>/mounts/<n>/...`) or anything else.
//!
//! A file mapped in the window is the host's page cache: if the host
//! shrinks it under the guest (a log rotated with `copytruncate` on a
//! host path volume, another pod writing a shared volume), the guest's
//! next access lands past the file's end, which the host kernel cannot
//! back. KVM then fails the vCPU (or, on the emulating hosts here, spins
//! on it): the whole pod stops, where a container on runc would get a
//! SIGBUS in one process. Only the host's root changes a rootfs under a
//! running container; volumes are meant to be changed from outside.
//!
//! The guest mounts the share `dax=inode`: it maps a file only when the
//! entry the server returned for it carries `FUSE_ATTR_DAX`, decided once,
//! when the guest first learns the inode. `PassthroughFs` sets the flag on
//! every entry (`dax_file_size: Some(0)`); the guard keeps it only for
//! regular files whose parent directory is inside a rootfs. To know that,
//! it follows the guest's lookups of directories down from the share's
//! root (the container directories, then each one's `rootfs`, then every
//! directory below), and forgets a directory with the guest's own lookup
//! count (FUSE_FORGET), so what it holds is bounded by what the FUSE
//! server itself holds. A guest can only map less than this allows: the
//! flag is the guest's permission, not an obligation.

use std::collections::HashMap;
use std::sync::Mutex;

use fuse_backend_rs::abi::fuse_abi::FUSE_ATTR_DAX;
use fuse_backend_rs::api::filesystem::Entry;

/// The FUSE inode of the share's root.
const ROOT: u64 = 1;

/// A directory the scope follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// A container's directory (`<cid>`, right under the root).
    Container,
    /// A rootfs (`<cid>/rootfs`) or a directory inside one.
    Rootfs,
}

/// The directories followed, with the guest's lookup count of each.
#[derive(Debug, Default)]
pub struct DaxScope {
    dirs: Mutex<HashMap<u64, (Dir, u64)>>,
}

impl DaxScope {
    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Dir, u64)>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes `entry`, which the guest now looks up once more as `name` in
    /// `parent`, and clears its DAX flag unless it is a regular file of a
    /// rootfs. Returns what [`DaxScope::undo`] needs if the entry does not
    /// reach the guest after all.
    pub fn entry(&self, parent: u64, name: &[u8], entry: &mut Entry) -> Option<u64> {
        let mut dirs = self.dirs();
        let parent_dir = dirs.get(&parent).map(|(d, _)| *d);
        let mode = entry.attr.st_mode & libc::S_IFMT;
        let in_rootfs = parent_dir == Some(Dir::Rootfs);
        if !(in_rootfs && mode == libc::S_IFREG) {
            entry.attr_flags &= !FUSE_ATTR_DAX;
        }
        // `.` and `..` name directories already followed (or not): they
        // never make a directory what its name says.
        if mode != libc::S_IFDIR || matches!(name, b"." | b"..") {
            return None;
        }
        let dir = match parent_dir {
            _ if parent == ROOT => Dir::Container,
            Some(Dir::Container) if name == b"rootfs" => Dir::Rootfs,
            Some(Dir::Rootfs) => Dir::Rootfs,
            _ => return None,
        };
        // A directory reached two ways keeps the first way's kind (the
        // share's tree has no hard-linked directories; a bind inside a
        // rootfs is the same directory as seen from there).
        let slot = dirs.entry(entry.inode).or_insert((dir, 0));
        slot.1 = slot.1.saturating_add(1);
        Some(entry.inode)
    }

    /// Takes back one lookup noted by [`DaxScope::entry`].
    pub fn undo(&self, inode: u64) {
        self.forget(inode, 1);
    }

    /// The guest forgot `count` lookups of `inode`.
    pub fn forget(&self, inode: u64, count: u64) {
        let mut dirs = self.dirs();
        if let Some(slot) = dirs.get_mut(&inode) {
            slot.1 = slot.1.saturating_sub(count);
            if slot.1 == 0 {
                dirs.remove(&inode);
            }
        }
    }

    /// How many directories are followed (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.dirs().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(inode: u64, mode: u32) -> Entry {
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut attr: libc::stat64 = unsafe { std::mem::zeroed() };
        attr.st_mode = mode;
        Entry {
            inode,
            generation: 0,
            attr,
            attr_flags: FUSE_ATTR_DAX,
            attr_timeout: Default::default(),
            entry_timeout: Default::default(),
        }
    }

    fn look(s: &DaxScope, parent: u64, name: &str, inode: u64, mode: u32) -> bool {
        let mut e = entry(inode, mode);
        s.entry(parent, name.as_bytes(), &mut e);
        e.attr_flags & FUSE_ATTR_DAX != 0
    }

    const DIR: u32 = libc::S_IFDIR | 0o755;
    const REG: u32 = libc::S_IFREG | 0o755;

    #[test]
    fn only_files_inside_a_rootfs_keep_the_flag() {
        let s = DaxScope::default();
        assert!(!look(&s, ROOT, "c1", 2, DIR));
        assert!(!look(&s, ROOT, "file-at-the-top", 9, REG));
        assert!(!look(&s, 2, "rootfs", 3, DIR), "directories never map");
        assert!(look(&s, 3, "busybox", 4, REG));
        assert!(!look(&s, 3, "link", 10, libc::S_IFLNK | 0o777));
        assert!(!look(&s, 3, "bin", 5, DIR));
        assert!(look(&s, 5, "sh", 6, REG), "deeper in the rootfs");
        // A volume, and a file named like a rootfs elsewhere.
        assert!(!look(&s, 2, "mounts", 7, DIR));
        assert!(!look(&s, 7, "0", 8, DIR));
        assert!(!look(&s, 8, "app.log", 11, REG));
        assert!(!look(&s, 8, "rootfs", 12, DIR));
        assert!(!look(&s, 12, "x", 13, REG), "a volume's own rootfs dir");
        // An unknown parent (never looked up as a directory).
        assert!(!look(&s, 99, "x", 14, REG));
        // `..` from a rootfs does not turn the container's directory (or,
        // once that is forgotten, anything) into a rootfs.
        s.forget(2, 1);
        look(&s, 3, "..", 2, DIR);
        look(&s, 2, "mounts", 7, DIR);
        look(&s, 7, "0", 8, DIR);
        assert!(!look(&s, 8, "app.log", 15, REG));
    }

    #[test]
    fn forgotten_directories_are_dropped_and_no_longer_count() {
        let s = DaxScope::default();
        look(&s, ROOT, "c1", 2, DIR);
        look(&s, 2, "rootfs", 3, DIR);
        look(&s, 2, "rootfs", 3, DIR);
        assert_eq!(s.len(), 2);
        s.forget(3, 1);
        assert!(look(&s, 3, "f", 4, REG), "one lookup left");
        s.forget(3, 2);
        assert_eq!(s.len(), 1);
        assert!(!look(&s, 3, "f", 5, REG), "forgotten: not a rootfs now");
        s.forget(2, u64::MAX);
        s.forget(12345, 1);
        assert_eq!(s.len(), 0);
        // A thousand lookup-forget rounds leave nothing behind.
        for i in 0..1000 {
            look(&s, ROOT, "c", 100 + i, DIR);
            s.forget(100 + i, 1);
        }
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn an_undone_lookup_is_taken_back() {
        let s = DaxScope::default();
        let mut e = entry(2, DIR);
        let undo = s.entry(ROOT, b"c1", &mut e);
        assert_eq!(undo, Some(2));
        s.undo(2);
        assert_eq!(s.len(), 0);
    }
}
