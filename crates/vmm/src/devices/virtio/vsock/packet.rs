//! The virtio-vsock packet header (virtio 1.x §5.10.6) and moving packets
//! in and out of descriptor chains.
//!
//! Everything here treats guest memory as hostile: lengths come from the
//! guest and are checked against the chain and [`MAX_PAYLOAD`] before any
//! byte is copied.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::super::GuestMemory;

/// The host's well-known CID.
pub const HOST_CID: u64 = 2;

/// The only socket type served: a connection-oriented byte stream.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The largest payload accepted from or sent to the guest in one packet
/// (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Why a descriptor chain did not hold a valid packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain: {0}")]
    Chain(#[source] virtio_queue::Error),
    #[error("chain too short for a header: {0} bytes")]
    ShortHeader(usize),
    #[error("payload length {len} exceeds the limit {MAX_PAYLOAD}")]
    PayloadTooLarge { len: u32 },
    #[error("payload length {len} exceeds the {available} bytes of the chain")]
    PayloadBeyondChain { len: u32, available: usize },
    #[error("copying from guest memory: {0}")]
    Copy(#[source] std::io::Error),
}

/// `struct virtio_vsock_hdr`: 44 bytes, packed, little-endian.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8; Header::SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8; Header::SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; Header::SIZE], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Header {
    /// Size of the header on the wire.
    pub const SIZE: usize = 44;

    /// Decodes a header from its wire form.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the header to its wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads one guest→host packet from a tx descriptor chain: the header, then
/// `len` payload bytes into `payload` (cleared first). The header and the
/// payload may be spread over any number of readable descriptors.
pub fn read_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    let mut reader: Reader<'_> = Reader::new(mem, chain).map_err(PacketError::Chain)?;
    let available = reader.available_bytes();
    if available < Header::SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let mut raw = [0u8; Header::SIZE];
    reader.read_exact(&mut raw).map_err(PacketError::Copy)?;
    let hdr = Header::decode(&raw);
    if hdr.len == 0 {
        return Ok(hdr);
    }
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLarge { len: hdr.len });
    }
    let available = reader.available_bytes();
    if len > available {
        return Err(PacketError::PayloadBeyondChain {
            len: hdr.len,
            available,
        });
    }
    payload.resize(len, 0);
    reader.read_exact(payload).map_err(PacketError::Copy)?;
    Ok(hdr)
}

/// A writable rx descriptor chain being filled with one host→guest packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Wraps the writable part of `chain`; fails if it cannot hold a header.
    pub fn new(
        mem: &'a GuestMemory,
        chain: DescriptorChain<&'a GuestMemory>,
    ) -> Result<Self, PacketError> {
        let writer: Writer<'a> = Writer::new(mem, chain).map_err(PacketError::Chain)?;
        let available = writer.available_bytes();
        if available < Header::SIZE {
            return Err(PacketError::ShortHeader(available));
        }
        Ok(Self { writer })
    }

    /// Room for payload after the header, capped at [`MAX_PAYLOAD`].
    pub fn payload_capacity(&self) -> usize {
        (self.writer.available_bytes() - Header::SIZE).min(MAX_PAYLOAD)
    }

    /// Writes the header (its `len` set from `payload`) and the payload;
    /// returns the number of bytes written to the chain. `payload` must fit
    /// [`Self::payload_capacity`].
    pub fn write(mut self, mut hdr: Header, payload: &[u8]) -> Result<u32, PacketError> {
        let len = payload.len().min(self.payload_capacity());
        // `len` is at most MAX_PAYLOAD, far below u32::MAX.
        hdr.len = len as u32;
        self.writer
            .write_all(&hdr.encode())
            .map_err(PacketError::Copy)?;
        self.writer
            .write_all(&payload[..len])
            .map_err(PacketError::Copy)?;
        Ok((Header::SIZE + len) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_layout() {
        let hdr = Header {
            src_cid: 2,
            dst_cid: 0x0102_0304_0506_0708,
            src_port: 1 << 30,
            dst_port: 1024,
            len: 4096,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0xdead_beef,
        };
        let raw = hdr.encode();
        assert_eq!(Header::decode(&raw), hdr);
        assert_eq!(&raw[0..8], &2u64.to_le_bytes());
        assert_eq!(&raw[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&raw[16..20], &(1u32 << 30).to_le_bytes());
        assert_eq!(&raw[20..24], &1024u32.to_le_bytes());
        assert_eq!(&raw[24..28], &4096u32.to_le_bytes());
        assert_eq!(&raw[28..30], &[1, 0]);
        assert_eq!(&raw[30..32], &[5, 0]);
        assert_eq!(&raw[32..36], &[3, 0, 0, 0]);
        assert_eq!(&raw[36..40], &(256u32 * 1024).to_le_bytes());
        assert_eq!(&raw[40..44], &[0xef, 0xbe, 0xad, 0xde]);
    }

    #[test]
    fn decode_of_zeroes_is_default() {
        assert_eq!(Header::decode(&[0; Header::SIZE]), Header::default());
    }
}
