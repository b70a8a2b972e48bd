//! Requests refused before they reach the FUSE server.
//!
//! `PassthroughFs` lets guest root create character and block device nodes
//! in the shared directory. The guest itself never needs them there (its
//! own /dev is elsewhere, and the host never opens them for the guest), but
//! a device node in a host directory is a door for any host process that
//! later walks it. FUSE_MKNOD of those types is answered with EPERM;
//! FIFOs, sockets and regular files are allowed.

use std::io::{Read, Write};

use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;

use super::super::GuestMemory;

/// `FUSE_MKNOD`.
const OP_MKNOD: u32 = 8;
/// `struct fuse_in_header` and `struct fuse_out_header`.
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: u32 = 16;

/// Why a request is refused: the errno to answer with.
pub fn refusal(mem: &GuestMemory, chain: &DescriptorChain<&GuestMemory>) -> Option<(u64, i32)> {
    let mut reader = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
    // The header and the first field of `struct fuse_mknod_in` (mode).
    let mut head = [0u8; IN_HEADER_LEN + 4];
    reader.read_exact(&mut head).ok()?;
    let opcode = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if opcode != OP_MKNOD {
        return None;
    }
    let unique = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let mode = u32::from_le_bytes(head[IN_HEADER_LEN..].try_into().ok()?);
    match mode & libc::S_IFMT {
        libc::S_IFCHR | libc::S_IFBLK => Some((unique, libc::EPERM)),
        _ => None,
    }
}

/// Answers request `unique` with `-errno`; returns the reply's length.
pub fn reply_error(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    unique: u64,
    errno: i32,
) -> Result<u32, String> {
    let mut writer = VirtioFsWriter::new(mem, chain).map_err(|e| format!("reply buffers: {e}"))?;
    let mut out = [0u8; OUT_HEADER_LEN as usize];
    out[0..4].copy_from_slice(&OUT_HEADER_LEN.to_le_bytes());
    out[4..8].copy_from_slice(&(-errno).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    writer
        .write_all(&out)
        .map_err(|e| format!("writing an error reply: {e}"))?;
    Ok(OUT_HEADER_LEN)
}
