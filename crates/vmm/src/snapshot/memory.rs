//! Guest RAM in and out of a template: written from the memfd with its
//! holes kept (and all-zero pages left out), mapped back copy-on-write.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::ram_regions;
use crate::memory::GuestRam;

const PAGE: usize = 4096;
const COPY_CHUNK: usize = 1 << 20;

/// Errors saving or mapping template memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("memory file {path} is {actual} bytes, the template says {expected}")]
    Size {
        path: std::path::PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("mapping template memory: {0}")]
    Map(String),
}

/// The checksum of a memory image: sha256 over each non-zero page and its
/// offset, so it does not depend on where the file's holes fall.
struct PageDigest(Sha256);

impl PageDigest {
    fn new() -> Self {
        Self(Sha256::new())
    }

    /// Adds `page` at `offset`; false (and nothing added) if it is all zero.
    fn page(&mut self, offset: u64, page: &[u8]) -> bool {
        if page.iter().all(|&b| b == 0) {
            return false;
        }
        self.0.update(offset.to_le_bytes());
        self.0.update(page);
        true
    }

    fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What [`save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Bytes of non-zero pages written.
    pub written: u64,
    /// The image's checksum ([`digest`] of the file).
    pub sha256: String,
}

/// Calls `each(offset, page)` for every page of the data ranges of
/// `file` (of `size` bytes).
fn for_each_page(
    file: &File,
    size: u64,
    mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    for (start, end) in data_ranges(file, size)? {
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(COPY_CHUNK);
            let chunk = &mut buf[..len];
            file.read_exact_at(chunk, at)?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                each(at + (i * PAGE) as u64, page)?;
            }
            at += len as u64;
        }
    }
    Ok(())
}

/// The checksum of the memory image at `path` (`size` bytes), as [`save`]
/// computed it; reads only the file's data ranges.
pub fn digest(path: &Path, size: u64) -> Result<String, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = File::open(path).map_err(io("opening"))?;
    let mut digest = PageDigest::new();
    for_each_page(&file, size, |offset, page| {
        digest.page(offset, page);
        Ok(())
    })
    .map_err(io("reading"))?;
    Ok(digest.finish())
}

/// `lseek(fd, offset, whence)`, `None` at ENXIO (no more data/holes).
fn seek(file: &File, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a valid descriptor with a valid whence; no memory
    // is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The byte ranges of `file` (of `size` bytes) that hold data.
fn data_ranges(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < size {
        let Some(start) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        if end > start {
            ranges.push((start, end));
        }
        at = end;
    }
    Ok(ranges)
}

/// Writes `ram` to `path` (created; must not exist): a file of `ram.size`
/// bytes with only the non-zero pages written, and their checksum.
pub fn save(ram: &GuestRam, path: &Path) -> Result<Saved, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("creating"))?;
    out.set_len(ram.size).map_err(io("sizing"))?;
    let mut digest = PageDigest::new();
    let mut written = 0u64;
    for_each_page(&ram.file, ram.size, |offset, page| {
        if digest.page(offset, page) {
            out.write_all_at(page, offset)?;
            written += page.len() as u64;
        }
        Ok(())
    })
    .map_err(io("copying guest RAM to"))?;
    out.sync_all().map_err(io("syncing"))?;
    Ok(Saved {
        written,
        sha256: digest.finish(),
    })
}

/// Maps the memory file at `path` (`size` bytes) as guest RAM, private and
/// copy-on-write: the file is never written.
pub fn map_private(path: &Path, size: u64) -> Result<GuestRam, MemoryFileError> {
    let file = File::open(path).map_err(|source| MemoryFileError::Io {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    let actual = file
        .metadata()
        .map_err(|source| MemoryFileError::Io {
            what: "reading the size of",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if actual != size {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            expected: size,
            actual,
        });
    }
    let file = Arc::new(file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_regions(size) {
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| MemoryFileError::Map(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
        offset += len;
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryFileError::Map(e.to_string()))?;
    Ok(GuestRam { mem, file, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn save_and_map_round_trip_is_private() {
        let dir = std::env::temp_dir().join(format!("nacre-snapmem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let Ok(ram) = crate::memory::create(64 << 20) else {
            panic!("guest memory");
        };
        assert!(ram
            .mem
            .write_obj(0x1234_5678u32, GuestAddress(0x20_0000))
            .is_ok());
        let path = dir.join("memory.bin");
        let saved = save(&ram, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.written, PAGE as u64, "only the one non-zero page");
        assert_eq!(digest(&path, 64 << 20).ok(), Some(saved.sha256.clone()));
        // One changed byte changes the checksum.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        file.write_all_at(&[1], 0x30_0000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(digest(&path, 64 << 20).ok(), Some(saved.sha256.clone()));
        file.write_all_at(&[0], 0x30_0000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digest(&path, 64 << 20).ok(), Some(saved.sha256));
        assert!(matches!(
            map_private(&path, 32 << 20),
            Err(MemoryFileError::Size { .. })
        ));
        let Ok(a) = map_private(&path, 64 << 20) else {
            panic!("map a");
        };
        let Ok(b) = map_private(&path, 64 << 20) else {
            panic!("map b");
        };
        assert_eq!(
            a.mem.read_obj::<u32>(GuestAddress(0x20_0000)).ok(),
            Some(0x1234_5678)
        );
        assert!(a.mem.write_obj(7u32, GuestAddress(0x20_0000)).is_ok());
        assert_eq!(
            b.mem.read_obj::<u32>(GuestAddress(0x20_0000)).ok(),
            Some(0x1234_5678)
        );
        assert!(save(&ram, &path).is_err(), "never overwrites");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
