//! Moving one frame between a descriptor chain and the tap's byte format:
//! the 12-byte `virtio_net_hdr_v1`, then the Ethernet frame.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::super::GuestMemory;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame (with its header) either way: 64 KiB of frame.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_536;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;

/// A frame that cannot be moved.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("descriptor chain: {0}")]
    Chain(#[source] virtio_queue::Error),
    #[error("copying the frame: {0}")]
    Copy(#[source] std::io::Error),
    #[error("a {len}-byte transmit buffer has no room for the {VNET_HDR_LEN}-byte header")]
    ShortTx { len: usize },
    #[error("a {len}-byte transmit frame is longer than {MAX_FRAME_LEN} bytes")]
    LongTx { len: usize },
    #[error("a {len}-byte frame does not fit the {room}-byte receive buffer")]
    RxTooSmall { len: usize, room: usize },
    #[error("a {len}-byte frame from the tap is shorter than its header")]
    ShortRx { len: usize },
}

/// Gathers the readable part of a transmit chain (header and frame) into
/// `buf`, ready to be written to the tap in one piece, the header zeroed.
pub fn read_tx(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    let mut reader = Reader::new(mem, chain).map_err(FrameError::Chain)?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN {
        return Err(FrameError::ShortTx { len });
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::LongTx { len });
    }
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(FrameError::Copy)?;
    // No offload was negotiated, so the only valid header is all zeros:
    // whatever the guest put in flags, gso_type, gso_size or csum_* must
    // not reach the host kernel's virtio_net_hdr_to_skb. The copy is in
    // host memory, so the guest cannot change it after this.
    buf[..VNET_HDR_LEN].fill(0);
    Ok(())
}

/// Writes `frame` (header and frame as the tap gave them) into the
/// writable part of a receive chain, `num_buffers` set to 1; returns the
/// bytes written.
pub fn write_rx(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &[u8],
) -> Result<u32, FrameError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(FrameError::ShortRx { len: frame.len() });
    }
    let mut writer = Writer::new(mem, chain).map_err(FrameError::Chain)?;
    let room = writer.available_bytes();
    if frame.len() > room {
        return Err(FrameError::RxTooSmall {
            len: frame.len(),
            room,
        });
    }
    writer
        .write_all(&frame[..NUM_BUFFERS_AT])
        .map_err(FrameError::Copy)?;
    writer
        .write_all(&1u16.to_le_bytes())
        .map_err(FrameError::Copy)?;
    writer
        .write_all(&frame[VNET_HDR_LEN..])
        .map_err(FrameError::Copy)?;
    // At most MAX_FRAME_LEN: fits u32.
    Ok(frame.len() as u32)
}
