//! Guest RAM in and out of a template: written from the memfd with its
//! holes kept (and all-zero pages left out), mapped back copy-on-write.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

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
/// bytes with only the non-zero pages written. Returns the bytes written.
pub fn save(ram: &GuestRam, path: &Path) -> Result<u64, MemoryFileError> {
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
    let ranges =
        data_ranges(&ram.file, ram.size).map_err(io("finding the data in guest RAM for"))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut written = 0u64;
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(COPY_CHUNK);
            let chunk = &mut buf[..len];
            ram.file
                .read_exact_at(chunk, at)
                .map_err(io("reading guest RAM for"))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    out.write_all_at(page, at + (i * PAGE) as u64)
                        .map_err(io("writing"))?;
                    written += page.len() as u64;
                }
            }
            at += len as u64;
        }
    }
    out.sync_all().map_err(io("syncing"))?;
    Ok(written)
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
        let written = save(&ram, &path).unwrap_or(0);
        assert_eq!(written, PAGE as u64, "only the one non-zero page");
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
