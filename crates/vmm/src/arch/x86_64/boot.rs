//! Loading the guest: the ELF `vmlinux`, the initrd, the command line and
//! the zero page, for the Linux 64-bit boot protocol.
//!
//! Why the 64-bit protocol rather than PVH: the kernel is entered at
//! `startup_64` already in long mode, on page tables and a GDT we wrote.
//! PVH enters in 32-bit protected mode with paging off, and the kernel then
//! builds its early page tables and switches modes itself. On hosts where
//! guest kernel mode is emulated (PVM, see HOST.md) every such instruction
//! is interpreted, and mode switches are the emulator's least travelled
//! paths; the 64-bit entry skips them and needs no `hvm_start_info`. On
//! hardware virtualization both work equally well.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    low_ram_end, E820Entry, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START,
};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 0x1000;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel image {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel image {path}: not a loadable ELF vmlinux: {source}")]
    KernelElf {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel image {path}: not an ELF file (nacre boots an uncompressed vmlinux)")]
    NotElf { path: PathBuf },
    #[error("initrd {path}: {source}")]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {ram_end:#x}")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        ram_end: u64,
    },
    #[error("kernel command line is {len} bytes, at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("too many e820 entries: {0}")]
    TooManyE820(usize),
}

/// Checks that the kernel and initrd can be opened and that the kernel is
/// an ELF file, before anything else is set up.
pub fn preflight(kernel: &Path, initrd: Option<&Path>) -> Result<(), BootError> {
    let mut file = File::open(kernel).map_err(|source| BootError::KernelOpen {
        path: kernel.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Err(BootError::NotElf {
            path: kernel.to_path_buf(),
        });
    }
    if let Some(initrd) = initrd {
        let open_err = |source| BootError::InitrdOpen {
            path: initrd.to_path_buf(),
            source,
        };
        let file = File::open(initrd).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(open_err(std::io::Error::other("not a regular file")));
        }
    }
    Ok(())
}

/// Loads the ELF `vmlinux` at `path`; returns its entry point and end.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelLoaderResult, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BootError::KernelElf {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of low RAM.
pub fn initrd_addr(mem_size: u64, size: u64, kernel_end: u64) -> Option<u64> {
    let top = low_ram_end(mem_size);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at `path` high in guest memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let open_err = |source| BootError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let addr = initrd_addr(mem_size, size, kernel_end).ok_or_else(|| BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        kernel_end,
        ram_end: low_ram_end(mem_size),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| open_err(std::io::Error::other(format!("reading: {e}"))))?;
    Ok((addr, size))
}

/// Writes the NUL-terminated kernel command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_START))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_START + cmdline.len() as u64))?;
    Ok(())
}

/// The zero page, as a type guest memory can take.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct ZeroPage(pub boot_params);

// SAFETY: boot_params is a plain-old-data C struct of integers and arrays of
// integers; any byte pattern is a valid value.
unsafe impl ByteValued for ZeroPage {}

/// Builds the zero page.
pub fn zero_page(
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> Result<ZeroPage, BootError> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820(e820.len()));
    }
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.type_ = entry.kind;
    }
    params.e820_entries = e820.len() as u8;
    Ok(ZeroPage(params))
}

/// Writes the zero page where RSI points.
pub fn write_zero_page(mem: &GuestMemoryMmap, page: &ZeroPage) -> Result<(), BootError> {
    mem.write_obj(*page, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::layout::e820_map;
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn initrd_goes_high_and_aligned() {
        assert_eq!(
            initrd_addr(256 * MIB, 0x1801, 32 * MIB),
            Some(256 * MIB - 0x2000)
        );
        assert_eq!(initrd_addr(64 * MIB, 40 * MIB, 32 * MIB), None);
        assert_eq!(initrd_addr(16 * MIB, 32 * MIB, 0), None);
    }

    #[test]
    fn zero_page_fields() {
        let map = e820_map(256 * MIB, 1);
        let page = zero_page(42, Some((0x100_0000, 0x2000)), &map);
        let Ok(ZeroPage(p)) = page else {
            panic!("zero page");
        };
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 0x2000);
        assert_eq!(usize::from(p.e820_entries), map.len());
        assert_eq!({ p.e820_table[2].addr }, HIMEM_START);
    }

    #[test]
    fn cmdline_too_long_rejected() {
        let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]) else {
            panic!("guest memory");
        };
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&mem, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(write_cmdline(&mem, "console=ttyS0").is_ok());
    }
}
