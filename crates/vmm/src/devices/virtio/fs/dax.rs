//! The DAX window of a virtio-fs device (its shared memory region 0): a
//! range of guest physical addresses, outside RAM, where the guest asks
//! (FUSE_SETUPMAPPING) to have parts of files mapped. The VMM maps the
//! host file there with `mmap(MAP_FIXED)`, so the guest reads the host's
//! page cache directly: no FUSE_READ, no copy of the file in the guest's
//! own page cache, and a change made on the host is seen at once.
//!
//! The window is a KVM memory slot over a `PROT_NONE` reservation of the
//! VMM's address space; FUSE_REMOVEMAPPING puts the reservation back.
//! Everything in a request is guest input: an offset, a length or an
//! alignment that does not fit the window is refused with EINVAL, and the
//! file is the one the FUSE server opened for the guest's inode (with the
//! access the guest asked for; a read-only bind mount inside the share
//! refuses a writable mapping as it refuses a writable open). Executable
//! mappings are never made (the VMM's seccomp filter forbids PROT_EXEC).
//!
//! The window is not guest RAM: it is not in the `GuestMemory` the devices
//! read descriptors from (a descriptor pointing into it is an address
//! error), and not in a snapshot. A guest that touches a part of it that
//! nothing is mapped at makes KVM_RUN fail, which stops that VM only.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// The size of each share's window. The guest maps files in 2 MiB
/// ranges, so 32 ranges; the guest reclaims ranges when it runs short.
/// Every page of the window costs the guest a `struct page` set up at
/// boot (64 bytes each, 1 MiB of guest memory here).
pub const WINDOW_SIZE: u64 = 64 << 20;

const PAGE: u64 = 4096;

/// One window: the reservation in the VMM, and where the guest sees it.
#[derive(Debug)]
pub struct DaxWindow {
    host: usize,
    len: u64,
    guest_addr: u64,
}

impl DaxWindow {
    /// Reserves `len` bytes (a multiple of the page size) to be seen by
    /// the guest at `guest_addr`.
    pub fn new(guest_addr: u64, len: u64) -> io::Result<Self> {
        let size = usize::try_from(len).map_err(|_| einval())?;
        // SAFETY: a fresh private anonymous reservation; nothing else
        // refers to the address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            host: ptr as usize,
            len,
            guest_addr,
        })
    }

    /// The VMM's address of the window (for the KVM memory slot).
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// The window's size in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The guest physical address of the window.
    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// The VMM address of `[offset, offset + len)` of the window, if that
    /// range is page-aligned, not empty and inside the window.
    fn range(&self, offset: u64, len: u64) -> io::Result<usize> {
        let end = offset.checked_add(len).ok_or_else(einval)?;
        if len == 0 || offset % PAGE != 0 || len % PAGE != 0 || end > self.len {
            return Err(einval());
        }
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.host.checked_add(o))
            .ok_or_else(einval)
    }

    /// Maps `len` bytes of `fd` from `foffset` at `moffset` in the window.
    pub fn map(
        &self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        let addr = self.range(moffset, len)?;
        if foffset % PAGE != 0 {
            return Err(einval());
        }
        let flags = SetupmappingFlags::from_bits(flags).ok_or_else(einval)?;
        let mut prot = 0;
        if flags.contains(SetupmappingFlags::READ) {
            prot |= libc::PROT_READ;
        }
        if flags.contains(SetupmappingFlags::WRITE) {
            prot |= libc::PROT_WRITE;
        }
        let offset = libc::off_t::try_from(foffset).map_err(|_| einval())?;
        // `range` checked len fits the window, so it fits a usize.
        let size = len as usize;
        // SAFETY: [addr, addr + size) lies inside this window's own
        // reservation (checked by `range`), which nothing in the VMM
        // reads or writes: MAP_FIXED replaces only window pages.
        let got = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                size,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset,
            )
        };
        if got == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // A failed MAP_FIXED may have unmapped the range: reserve it
            // again so the address space stays the window's.
            let _ = self.reserve(addr, size);
            return Err(err);
        }
        Ok(())
    }

    /// Puts the reservation back over `[moffset, moffset + len)`.
    pub fn unmap(&self, moffset: u64, len: u64) -> io::Result<()> {
        let (addr, size) = self.removal(moffset, len)?;
        self.reserve(addr, size)
    }

    /// The VMM address and size of a removal of `[moffset, moffset +
    /// len)`, checked as [`DaxWindow::range`] does; a length of all ones
    /// means to the end of the window.
    fn removal(&self, moffset: u64, len: u64) -> io::Result<(usize, usize)> {
        let len = if len == u64::MAX {
            self.len.checked_sub(moffset).ok_or_else(einval)?
        } else {
            len
        };
        // `range` checked len fits the window, so it fits a usize.
        Ok((self.range(moffset, len)?, len as usize))
    }

    fn reserve(&self, addr: usize, size: usize) -> io::Result<()> {
        // SAFETY: as in `map`: only this window's pages are replaced.
        let got = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // SAFETY: unmaps this window's reservation (and whatever files are
        // mapped in it), once.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.len as usize) };
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// What the FUSE server calls for SETUPMAPPING and REMOVEMAPPING.
#[derive(Debug, Clone)]
pub struct WindowMapper(pub Arc<DaxWindow>);

impl FsCacheReqHandler for WindowMapper {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        self.0.map(foffset, moffset, len, flags, fd)
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        // Every range is checked before any is unmapped.
        let removals = requests
            .iter()
            .map(|r| self.0.removal(r.moffset, r.len))
            .collect::<io::Result<Vec<_>>>()?;
        removals
            .into_iter()
            .try_for_each(|(addr, size)| self.0.reserve(addr, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    const R: u64 = SetupmappingFlags::READ.bits();
    const W: u64 = SetupmappingFlags::WRITE.bits();

    fn window() -> DaxWindow {
        DaxWindow::new(1 << 32, 16 * PAGE).unwrap()
    }

    fn at(w: &DaxWindow, offset: u64) -> *const u8 {
        (w.host + offset as usize) as *const u8
    }

    fn file(pages: u64) -> std::fs::File {
        let mut f = tempfile_in_tmp();
        for page in 0..pages {
            f.write_all(&vec![page as u8 + 1; PAGE as usize]).unwrap();
        }
        f
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let dir = std::env::temp_dir().join(format!("nacre-dax-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:?}", std::thread::current().id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn a_mapping_shows_the_file_and_a_removal_hides_it_again() {
        let w = window();
        let f = file(4);
        w.map(2 * PAGE, 3 * PAGE, 2 * PAGE, R, f.as_raw_fd())
            .unwrap();
        // SAFETY: the window's pages 3 and 4 map file pages 2 and 3.
        let (a, b) = unsafe { (*at(&w, 3 * PAGE), *at(&w, 4 * PAGE)) };
        assert_eq!((a, b), (3, 4));
        let mut m = WindowMapper(Arc::new(w));
        m.unmap(vec![RemovemappingOne {
            moffset: 3 * PAGE,
            len: 2 * PAGE,
        }])
        .unwrap();
        let mut vec = [0u8; 1];
        // SAFETY: mincore only reports on the range; a reserved (not
        // mapped) page reports not resident.
        let r = unsafe {
            libc::mincore(
                at(&m.0, 3 * PAGE) as *mut _,
                PAGE as usize,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        assert_eq!(vec[0] & 1, 0);
    }

    #[test]
    fn a_writable_mapping_writes_the_host_file() {
        let w = window();
        let f = file(1);
        w.map(0, 0, PAGE, R | W, f.as_raw_fd()).unwrap();
        // SAFETY: the window's page 0 maps the file's page 0, writable.
        unsafe { *(w.host as *mut u8) = 0x55 };
        let mut buf = [0u8; 1];
        // SAFETY: reads one byte of the file into buf.
        let n = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), 1, 0) };
        assert_eq!((n, buf[0]), (1, 0x55));
    }

    #[test]
    fn ranges_outside_the_window_or_unaligned_are_refused() {
        let w = window();
        let f = file(1);
        let fd = f.as_raw_fd();
        let einval = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EINVAL);
        assert!(einval(w.map(0, 16 * PAGE, PAGE, R, fd)), "past the end");
        assert!(
            einval(w.map(0, 15 * PAGE, 2 * PAGE, R, fd)),
            "across the end"
        );
        assert!(
            einval(w.map(0, u64::MAX - PAGE + 1, PAGE, R, fd)),
            "wrapping"
        );
        assert!(einval(w.map(0, 1, PAGE, R, fd)), "unaligned window offset");
        assert!(einval(w.map(1, 0, PAGE, R, fd)), "unaligned file offset");
        assert!(einval(w.map(0, 0, 100, R, fd)), "unaligned length");
        assert!(einval(w.map(0, 0, 0, R, fd)), "empty");
        assert!(einval(w.map(0, 0, PAGE, 0x80, fd)), "unknown flags");
        assert!(einval(w.unmap(16 * PAGE, PAGE)), "removal past the end");
        let mut m = WindowMapper(Arc::new(w));
        // One bad range of two: nothing is removed.
        m.0.map(0, 0, PAGE, R, fd).unwrap();
        let bad = vec![
            RemovemappingOne {
                moffset: 0,
                len: PAGE,
            },
            RemovemappingOne {
                moffset: 15 * PAGE,
                len: 2 * PAGE,
            },
        ];
        assert!(einval(m.unmap(bad)));
        // The same when the bad one runs "to the end" from past the end.
        let bad = vec![
            RemovemappingOne {
                moffset: 0,
                len: PAGE,
            },
            RemovemappingOne {
                moffset: 17 * PAGE,
                len: u64::MAX,
            },
        ];
        assert!(einval(m.unmap(bad)));
        // SAFETY: page 0 is still mapped to the file's first page.
        assert_eq!(unsafe { *at(&m.0, 0) }, 1);
        // All ones: the rest of the window.
        m.unmap(vec![RemovemappingOne {
            moffset: 0,
            len: u64::MAX,
        }])
        .unwrap();
    }

    #[test]
    fn a_read_only_file_cannot_be_mapped_writable() {
        let w = window();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let err = w.map(0, 0, PAGE, R | W, f.as_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        // The range is reserved again, not left unmapped for another map.
        w.map(0, 0, PAGE, R, f.as_raw_fd()).unwrap();
    }
}
