//! Guest RAM: one memfd, mapped shared, one mapping per RAM region.
//!
//! A memfd rather than anonymous memory so that a snapshot can later save
//! the guest's RAM by reading the file (or hand it to another process) and
//! a restore can map a file in its place; nothing else changes.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_regions;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create for guest RAM: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("sizing guest RAM memfd to {size} bytes: {source}")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping guest RAM: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub file: Arc<File>,
    pub size: u64,
}

/// Creates `size` bytes of guest RAM laid out per the x86_64 layout.
pub fn create(size: u64) -> Result<GuestRam, MemoryError> {
    const NAME: &CStr = c"nacre-guest-ram";
    // SAFETY: NAME is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let fo = FileOffset::from_arc(file.clone(), offset);
            offset += len;
            (addr, len as usize, Some(fo))
        })
        .collect();
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges)?;
    Ok(GuestRam { mem, file, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemory};

    #[test]
    fn memfd_backed_ram_is_usable() {
        let Ok(ram) = create(64 << 20) else {
            panic!("guest memory");
        };
        assert_eq!(ram.mem.num_regions(), 1);
        assert!(ram.mem.write_obj(0xabcdu32, GuestAddress(0x1000)).is_ok());
        assert_eq!(
            ram.mem.read_obj::<u32>(GuestAddress(0x1000)).ok(),
            Some(0xabcd)
        );
        assert_eq!(ram.file.metadata().map(|m| m.len()).ok(), Some(64 << 20));
    }
}
