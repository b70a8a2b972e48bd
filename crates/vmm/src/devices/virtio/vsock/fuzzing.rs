//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz). Not an API:
//! hidden from the docs, no stability promise. They reach what the device
//! otherwise only runs on its worker thread (under a seccomp filter), so a
//! fuzzer can drive it synchronously, one input at a time.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::EpollEvent;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::{ActiveQueue, GuestMemory, Interrupt};
use super::muxer::Muxer;
use super::packet::{read_packet, RxBuffer};
use super::worker::Worker;

pub use super::credit::BUF_ALLOC;
pub use super::handshake::{parse_connect, Connect, HandshakeError, MAX_LINE};
pub use super::muxer::{LISTENER_TOKEN, SOCKET_TOKEN_BASE};
pub use super::packet::{
    Header, PacketError, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};

/// The muxer alone: guest packets in, socket events in, rx packets out.
pub struct MuxerDriver {
    muxer: Muxer,
    events: Vec<EpollEvent>,
}

impl MuxerDriver {
    /// A muxer serving host clients of `listener` (bound at `uds_path`,
    /// non-blocking); guest connections go to `<uds_path>_<port>`.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> std::io::Result<Self> {
        Ok(Self {
            muxer: Muxer::new(guest_cid, uds_path, listener)?,
            events: vec![EpollEvent::default(); 64],
        })
    }

    /// A packet from the guest.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        self.muxer.handle_guest_packet(hdr, payload);
    }

    /// Handles the socket events that are ready now (no waiting).
    pub fn poll_sockets(&mut self, now: Instant) -> std::io::Result<usize> {
        let n = self.muxer.epoll().wait(0, &mut self.events)?;
        for ev in &self.events[..n] {
            self.muxer.handle_event(ev.data(), ev.event_set(), now);
        }
        Ok(n)
    }

    /// Expires handshakes and connections whose deadline is before `now`.
    pub fn timeouts(&mut self, now: Instant) {
        self.muxer.handle_timeouts(now);
    }

    /// Whether the guest has packets waiting for rx buffers.
    pub fn has_rx_work(&self) -> bool {
        self.muxer.has_rx_work()
    }

    /// Reads one guest→host packet from a tx chain (what the worker does).
    pub fn read_tx(
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
        payload: &mut Vec<u8>,
    ) -> Result<Header, PacketError> {
        read_packet(mem, chain, payload)
    }

    /// Fills an rx chain with the next packet; `None` if there is none (or
    /// the chain cannot hold a header: `Some(Err)`).
    pub fn fill_rx(
        &mut self,
        mem: &GuestMemory,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
    ) -> Option<Result<u32, PacketError>> {
        match RxBuffer::new(mem, chain) {
            Ok(buf) => self.muxer.fill_rx(buf).map(Ok),
            Err(e) => Some(Err(e)),
        }
    }

    /// The credit each live connection has from the guest, by
    /// (host port, guest port).
    pub fn peer_credit(&self) -> Vec<((u32, u32), u32)> {
        self.muxer
            .connections()
            .map(|c| ((c.key().local_port, c.key().peer_port), c.peer_free()))
            .collect()
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections().count()
    }

    /// The muxer's bookkeeping and flow-control invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.muxer.check_invariants()
    }
}

/// The device's queue processing without its thread: what the worker
/// does when the guest kicks a queue or a socket becomes ready.
pub struct QueueDriver {
    worker: Worker,
}

impl QueueDriver {
    /// Builds the worker over the rx, tx and event queues (in that order)
    /// and a muxer on `listener`.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: [ActiveQueue; 3],
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
    ) -> std::io::Result<Self> {
        let muxer = Muxer::new(guest_cid, uds_path, listener)?;
        Ok(Self {
            worker: Worker::new(
                mem,
                interrupt,
                queues,
                muxer,
                false,
                Arc::new(DeviceCounters::new(DeviceKind::Vsock, "fuzz")),
            )?,
        })
    }

    /// Moves packets both ways until neither direction makes progress.
    pub fn process(&mut self) {
        self.worker.process();
    }
}
