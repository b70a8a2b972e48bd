//! The device with its worker thread over hand-laid virtqueues in real
//! (in-process) guest memory, a fake driver in the test thread, and a
//! datagram socket pair standing in for the tap: like a tap, each read or
//! write on it is one whole frame.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};
use super::{MacAddr, VirtioNet, VNET_HDR_LEN};

pub(super) const QSIZE: u16 = 16;
pub(super) const MEM_SIZE: usize = 4 << 20;
pub(super) const RX_RING: u64 = 0x0;
pub(super) const TX_RING: u64 = 0x1000;
pub(super) const BUF: u64 = 0x10_0000;
pub(super) const WAIT: Duration = Duration::from_secs(30);
pub(super) const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);

/// The driver's view of one split virtqueue.
pub(super) struct Ring<'a> {
    mem: &'a GuestMemory,
    pub(super) desc: u64,
    pub(super) avail: u64,
    pub(super) used: u64,
    next_desc: u16,
    next_avail: u16,
    next_used: u16,
}

impl<'a> Ring<'a> {
    pub(super) fn at(mem: &'a GuestMemory, base: u64) -> Self {
        let avail = base + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        Self {
            mem,
            desc: base,
            avail,
            used,
            next_desc: 0,
            next_avail: 0,
            next_used: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Publishes a chain of (addr, len, device-writable) descriptors;
    /// returns its head index.
    pub(super) fn push(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, writable)) in descs.iter().enumerate() {
            let index = (head + k as u16) % QSIZE;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let d = SplitDescriptor::new(addr, len, flags as u16, (index + 1) % QSIZE);
            self.mem
                .write_obj(d, GuestAddress(self.desc + 16 * u64::from(index)))
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        let slot = u64::from(self.next_avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        std::sync::atomic::fence(Ordering::Release);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Waits for the next used element; returns (head, length).
    pub(super) fn wait_used(&mut self) -> (u32, u32) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(used) = self.try_used() {
                return used;
            }
            assert!(Instant::now() < deadline, "the device used no buffer");
            thread::sleep(Duration::from_micros(100));
        }
    }

    pub(super) fn try_used(&mut self) -> Option<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        std::sync::atomic::fence(Ordering::Acquire);
        if idx == self.next_used {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.next_used % QSIZE);
        self.next_used = self.next_used.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        Some((id, len))
    }
}

struct Harness {
    mem: GuestMemory,
    device: VirtioNet,
    status: Arc<AtomicU32>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    /// The far end of the "tap".
    wire: UnixDatagram,
}

impl Harness {
    /// The device's counters once `done` holds for them (or the wait ran
    /// out: the caller's assertions then say what is missing).
    fn counters_when(
        &self,
        done: impl Fn(&nacre_vmm_api::DeviceCounters) -> bool,
    ) -> nacre_vmm_api::DeviceCounters {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.device.counters().unwrap().snapshot();
            if done(&c) || Instant::now() > deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

pub(super) fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(std::iter::repeat_n(fill, payload_len));
    f
}

impl Harness {
    fn start() -> Self {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (tap, wire) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        wire.set_read_timeout(Some(WAIT)).unwrap();
        let tap = File::from(OwnedFd::from(tap));
        let mut device = VirtioNet::with_tap("test0".into(), tap, MAC, Some(1500));
        let status = Arc::new(AtomicU32::new(0));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(status.clone(), irq).counted(device.counters()));
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues = vec![
            ActiveQueue {
                queue: Ring::at(&mem, RX_RING).queue(),
                notify: rx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: Ring::at(&mem, TX_RING).queue(),
                notify: tx_kick.try_clone().unwrap(),
            },
        ];
        device.activate(mem.clone(), interrupt, queues).unwrap();
        Self {
            mem,
            device,
            status,
            rx_kick,
            tx_kick,
            wire,
        }
    }
}

#[test]
fn features_and_config_space() {
    // SAFETY: a fresh descriptor from a pipe, owned by the File only.
    let (r, _w) = {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned here once each.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    };
    let dev = VirtioNet::with_tap("t".into(), r, MAC, Some(1400));
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let f = dev.avail_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1");
    assert_ne!(f & (1 << 5), 0, "MAC");
    assert_ne!(f & (1 << 3), 0, "MTU");
    assert_eq!(f & 1, 0, "no checksum offload");
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC.0);
    let mut mtu = [0u8; 2];
    dev.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1400);
}

#[test]
fn guest_frames_reach_the_tap() {
    let h = Harness::start();
    let mut tx = Ring::at(&h.mem, TX_RING);
    // Header and frame in separate descriptors, as Linux sends them.
    let mut sent = frame(60, 0xab);
    sent[0] = 0; // flags
    h.mem
        .write_slice(&sent[..VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    h.mem
        .write_slice(&sent[VNET_HDR_LEN..], GuestAddress(BUF + 0x1000))
        .unwrap();
    tx.push(&[(BUF, VNET_HDR_LEN as u32, false), (BUF + 0x1000, 60, false)]);
    h.tx_kick.write(1).unwrap();
    let mut got = vec![0u8; 4096];
    let n = h.wire.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &sent[..]);
    assert_eq!(tx.wait_used(), (0, 0));
    assert_ne!(h.status.load(Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING, 0);

    // A chain shorter than the header is returned unused, nothing sent.
    tx.push(&[(BUF, 4, false)]);
    let good = frame(20, 0x11);
    h.mem
        .write_slice(&good, GuestAddress(BUF + 0x2000))
        .unwrap();
    tx.push(&[(BUF + 0x2000, good.len() as u32, false)]);
    h.tx_kick.write(1).unwrap();
    let n = h.wire.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &good[..], "the short chain was dropped");
    // Two frames of 60 and 20 bytes sent (headers not counted), the short
    // chain not; two kicks, an interrupt per batch.
    let c = h.counters_when(|c| c.packets["tx"] == 2 && c.notifications == 2);
    assert_eq!((c.device.as_str(), c.name.as_str()), ("net", "test0"));
    assert_eq!(c.packets, [("rx".into(), 0), ("tx".into(), 2)].into());
    assert_eq!(c.bytes, [("rx".into(), 0), ("tx".into(), 80)].into());
    assert_eq!(c.notifications, 2);
    assert!((1..=2).contains(&c.interrupts), "{c:?}");
    assert!(c.requests.is_empty());
    drop(h.device);
}

/// The guest's virtio_net_hdr (GSO and checksum requests nobody
/// negotiated) reaches the tap zeroed; the frame itself is unchanged.
#[test]
fn the_tx_header_is_zeroed() {
    let h = Harness::start();
    let mut tx = Ring::at(&h.mem, TX_RING);
    let mut sent = frame(60, 0xcd);
    // flags NEEDS_CSUM, gso_type TCPV4, hdr_len, gso_size, csum_start/offset.
    sent[..VNET_HDR_LEN].copy_from_slice(&[1, 1, 54, 0, 0xff, 0xff, 14, 0, 16, 0, 7, 0]);
    h.mem.write_slice(&sent, GuestAddress(BUF)).unwrap();
    tx.push(&[(BUF, sent.len() as u32, false)]);
    h.tx_kick.write(1).unwrap();
    let mut got = vec![0u8; 4096];
    let n = h.wire.recv(&mut got).unwrap();
    assert_eq!(n, sent.len());
    assert_eq!(&got[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..n], &sent[VNET_HDR_LEN..]);
    drop(h.device);
}

#[test]
fn tap_frames_fill_guest_buffers() {
    let h = Harness::start();
    let mut rx = Ring::at(&h.mem, RX_RING);
    // A frame before any buffer waits for one.
    let mut first = frame(100, 0x5a);
    first[10] = 0xff; // num_buffers as the tap leaves it: overwritten
    h.wire.send(&first).unwrap();
    thread::sleep(Duration::from_millis(50));
    assert!(rx.try_used().is_none());
    let head = rx.push(&[(BUF, 2048, true)]);
    h.rx_kick.write(1).unwrap();
    assert_eq!(rx.wait_used(), (u32::from(head), first.len() as u32));
    let mut got = vec![0u8; first.len()];
    h.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &first[VNET_HDR_LEN..]);
    assert_eq!(&got[..10], &first[..10]);

    // A frame longer than the buffer is dropped (used with length 0); the
    // next one, spread over two descriptors, arrives whole.
    rx.push(&[(BUF + 0x1000, 64, true)]);
    let head = rx.push(&[(BUF + 0x2000, 16, true), (BUF + 0x3000, 1024, true)]);
    h.wire.send(&frame(500, 1)).unwrap();
    let second = frame(200, 2);
    h.wire.send(&second).unwrap();
    assert_eq!(rx.wait_used().1, 0);
    assert_eq!(rx.wait_used(), (u32::from(head), second.len() as u32));
    let mut tail = vec![0u8; 200 - 4];
    h.mem
        .read_slice(&mut tail, GuestAddress(BUF + 0x3000))
        .unwrap();
    assert!(tail.iter().all(|&b| b == 2));
    assert_ne!(h.status.load(Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING, 0);
    // The frames of 100 and 200 bytes arrived; the dropped one is not
    // counted.
    let c = h.counters_when(|c| c.packets["rx"] == 2);
    assert_eq!(c.packets["rx"], 2, "{c:?}");
    assert_eq!(c.bytes["rx"], 300, "{c:?}");
    assert_eq!(c.packets["tx"], 0, "{c:?}");

    // A reset stops the worker; the device can be dropped cleanly.
    let mut device = h.device;
    assert!(device.reset());
}

#[test]
fn suppressed_interrupts_are_not_sent() {
    let h = Harness::start();
    let mut tx = Ring::at(&h.mem, TX_RING);
    // VRING_AVAIL_F_NO_INTERRUPT on the transmit ring.
    h.mem.write_obj(1u16, GuestAddress(tx.avail)).unwrap();
    let sent = frame(30, 7);
    h.mem.write_slice(&sent, GuestAddress(BUF)).unwrap();
    tx.push(&[(BUF, sent.len() as u32, false)]);
    h.tx_kick.write(1).unwrap();
    let mut got = vec![0u8; 256];
    assert_eq!(h.wire.recv(&mut got).unwrap(), sent.len());
    assert_eq!(tx.wait_used(), (0, 0));
    assert_eq!(h.status.load(Ordering::SeqCst), 0, "an interrupt was sent");
    assert_eq!(h.device.counters().unwrap().snapshot().interrupts, 0);

    // The receive ring still wants interrupts.
    let mut rx = Ring::at(&h.mem, RX_RING);
    rx.push(&[(BUF + 0x1000, 2048, true)]);
    h.rx_kick.write(1).unwrap();
    h.wire.send(&frame(40, 8)).unwrap();
    assert_eq!(rx.wait_used().1, 52);
    let deadline = Instant::now() + WAIT;
    while h.status.load(Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING == 0 {
        assert!(
            Instant::now() < deadline,
            "no interrupt for the receive ring"
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.device.counters().unwrap().snapshot().interrupts, 1);
}
