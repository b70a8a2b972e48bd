//! End-to-end tests: the device with its worker thread over mock virtqueues
//! in real guest memory, a fake guest driver in the test thread, and real
//! Unix sockets on the host side.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::{
    ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING,
};
use super::packet::{
    Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{listener_path, Vsock, VsockError, VSOCK_DEVICE_TYPE};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 16 << 20;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x4000;
const EVT_RING: u64 = 0x8000;
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
const RX_CHAINS: u16 = 128;
/// Payload room of a guest rx buffer (Linux posts 4 KiB ones).
const RX_PAYLOAD: u32 = 4096;
const TX_BUFS: u64 = 0x20_0000;
const TX_STRIDE: u64 = 0x1_1000;
const TX_CHAINS: u16 = 64;
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const WAIT: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nacre-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The driver's view of one split virtqueue: descriptor table, available
/// ring and used ring laid out from `base`.
struct Ring<'a> {
    mem: &'a GuestMemory,
    desc: u64,
    avail: u64,
    used: u64,
}

impl<'a> Ring<'a> {
    fn at(mem: &'a GuestMemory, base: u64) -> Self {
        let avail = base + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        Self {
            mem,
            desc: base,
            avail,
            used,
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

    fn set_desc(&self, idx: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let d = SplitDescriptor::new(addr, len, flags as u16, next);
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
            .unwrap();
    }

    /// Publishes `head` as the `pos`-th available chain.
    fn push_avail(&self, pos: u16, head: u16) {
        let slot = u64::from(pos % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        std::sync::atomic::fence(Ordering::Release);
        self.mem
            .write_obj(pos.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        let idx = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        std::sync::atomic::fence(Ordering::Acquire);
        idx
    }

    /// The `pos`-th used element: (head, length).
    fn used_elem(&self, pos: u16) -> (u16, u32) {
        let at = self.used + 4 + 8 * u64::from(pos % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id as u16, len)
    }
}

/// The guest side: a driver over the three queues, and the device.
struct Guest<'a> {
    mem: &'a GuestMemory,
    rxq: Ring<'a>,
    txq: Ring<'a>,
    evq: Ring<'a>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    ev_kick: EventFd,
    irq_status: Arc<AtomicU32>,
    rx_avail: u16,
    rx_used: u16,
    tx_avail: u16,
    tx_used: u16,
    tx_free: Vec<u16>,
    device: Vsock,
    uds: PathBuf,
}

impl<'a> Guest<'a> {
    fn start(mem: &'a GuestMemory, dir: &Path) -> Self {
        let uds = dir.join("vsock.sock");
        Self::with_device(mem, Vsock::new(GUEST_CID, uds).unwrap())
    }

    /// Activates `device` over fresh queues.
    fn with_device(mem: &'a GuestMemory, mut device: Vsock) -> Self {
        let uds = device.uds_path().to_path_buf();
        mem.write_slice(&vec![0; RX_BUFS as usize], GuestAddress(0))
            .unwrap();
        let rxq = Ring::at(mem, RX_RING);
        let txq = Ring::at(mem, TX_RING);
        let evq = Ring::at(mem, EVT_RING);
        let notify = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues: Vec<ActiveQueue> = [&rxq, &txq, &evq]
            .into_iter()
            .map(|q| ActiveQueue {
                queue: q.queue(),
                notify: notify(),
            })
            .collect();
        let rx_kick = queues[0].notify.try_clone().unwrap();
        let tx_kick = queues[1].notify.try_clone().unwrap();
        let ev_kick = queues[2].notify.try_clone().unwrap();
        let irq_status = Arc::new(AtomicU32::new(0));
        let interrupt =
            Arc::new(Interrupt::new(irq_status.clone(), notify()).counted(device.counters()));
        device.set_acked_features(device.avail_features());
        device.activate(mem.clone(), interrupt, queues).unwrap();
        let mut guest = Self {
            mem,
            rxq,
            txq,
            evq,
            rx_kick,
            tx_kick,
            ev_kick,
            irq_status,
            rx_avail: 0,
            rx_used: 0,
            tx_avail: 0,
            tx_used: 0,
            tx_free: (0..TX_CHAINS).rev().collect(),
            device,
            uds,
        };
        for i in 0..RX_CHAINS {
            guest.post_rx(i);
        }
        guest.rx_kick.write(1).unwrap();
        guest
    }

    /// Rx chain `i`: even ones split header and payload in two
    /// descriptors, odd ones use a single descriptor.
    fn rx_layout(i: u16) -> Vec<(u64, u32)> {
        let base = RX_BUFS + u64::from(i) * RX_STRIDE;
        if i & 1 == 0 {
            vec![(base, Header::SIZE as u32), (base + 0x100, RX_PAYLOAD)]
        } else {
            vec![(base, Header::SIZE as u32 + RX_PAYLOAD)]
        }
    }

    fn post_rx(&mut self, i: u16) {
        let layout = Self::rx_layout(i);
        let head = 2 * i;
        for (k, &(addr, len)) in layout.iter().enumerate() {
            let last = k + 1 == layout.len();
            let flags = VRING_DESC_F_WRITE | if last { 0 } else { VRING_DESC_F_NEXT };
            let idx = head + k as u16;
            self.rxq.set_desc(idx, addr, len, flags, idx + 1);
        }
        self.rxq.push_avail(self.rx_avail, head);
        self.rx_avail = self.rx_avail.wrapping_add(1);
    }

    /// Takes every packet the device has put in rx buffers, giving the
    /// buffers back.
    fn poll_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_used != self.rxq.used_idx() {
            let (head, used_len) = self.rxq.used_elem(self.rx_used);
            self.rx_used = self.rx_used.wrapping_add(1);
            assert_eq!(head & 1, 0, "not a chain head: {head}");
            let i = head / 2;
            let mut bytes = Vec::new();
            let mut left = used_len as usize;
            for (addr, len) in Self::rx_layout(i) {
                let n = left.min(len as usize);
                let mut part = vec![0; n];
                self.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
                bytes.extend_from_slice(&part);
                left -= n;
            }
            assert_eq!(left, 0, "used length beyond the chain");
            let raw: [u8; Header::SIZE] = bytes[..Header::SIZE].try_into().unwrap();
            let hdr = Header::decode(&raw);
            assert_eq!(
                bytes.len(),
                Header::SIZE + hdr.len as usize,
                "chain {i}: {hdr:?}"
            );
            out.push((hdr, bytes[Header::SIZE..].to_vec()));
            self.post_rx(i);
        }
        if !out.is_empty() {
            self.rx_kick.write(1).unwrap();
        }
        out
    }

    /// Waits for the next packet.
    fn recv(&mut self, pending: &mut Vec<(Header, Vec<u8>)>) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if pending.is_empty() {
                *pending = self.poll_rx();
                pending.reverse();
            }
            if let Some(p) = pending.pop() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet from the device");
            thread::sleep(Duration::from_micros(200));
        }
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut pending = Vec::new();
        let p = self.recv(&mut pending);
        assert!(pending.is_empty(), "unexpected extra packets: {pending:?}");
        p
    }

    fn reclaim_tx(&mut self) {
        while self.tx_used != self.txq.used_idx() {
            let (head, len) = self.txq.used_elem(self.tx_used);
            assert_eq!(len, 0, "the device wrote into a tx buffer");
            self.tx_used = self.tx_used.wrapping_add(1);
            self.tx_free.push(head / 2);
        }
    }

    /// Publishes a tx chain made of `descs` (readable).
    fn send_descs(&mut self, i: u16, descs: &[(u64, u32)]) {
        let head = 2 * i;
        assert!(descs.len() <= 2);
        for (k, &(addr, len)) in descs.iter().enumerate() {
            let last = k + 1 == descs.len();
            let flags = if last { 0 } else { VRING_DESC_F_NEXT };
            let idx = head + k as u16;
            self.txq.set_desc(idx, addr, len, flags, idx + 1);
        }
        self.txq.push_avail(self.tx_avail, head);
        self.tx_avail = self.tx_avail.wrapping_add(1);
        self.tx_kick.write(1).unwrap();
    }

    fn tx_slot(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            self.reclaim_tx();
            if let Some(i) = self.tx_free.pop() {
                return i;
            }
            assert!(Instant::now() < deadline, "tx queue never drained");
            thread::sleep(Duration::from_micros(100));
        }
    }

    /// Sends a packet: even slots split header and payload.
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let hdr = Header {
            len: payload.len() as u32,
            ..hdr
        };
        let i = self.tx_slot();
        let base = TX_BUFS + u64::from(i) * TX_STRIDE;
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(base))
            .unwrap();
        if i & 1 == 0 && !payload.is_empty() {
            let data = base + 0x100;
            self.mem.write_slice(payload, GuestAddress(data)).unwrap();
            self.send_descs(
                i,
                &[(base, Header::SIZE as u32), (data, payload.len() as u32)],
            );
        } else {
            let data = base + Header::SIZE as u64;
            self.mem.write_slice(payload, GuestAddress(data)).unwrap();
            self.send_descs(i, &[(base, (Header::SIZE + payload.len()) as u32)]);
        }
    }

    /// Sends raw descriptors (for malformed packets).
    fn send_raw(&mut self, descs: &[(u64, u32)]) {
        let i = self.tx_slot();
        self.send_descs(i, descs);
    }

    fn tx_buf(&self, i: u16) -> u64 {
        TX_BUFS + u64::from(i) * TX_STRIDE
    }

    /// Waits for the device to consume every tx chain.
    fn tx_flushed(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.reclaim_tx();
            if self.tx_free.len() == usize::from(TX_CHAINS) {
                return;
            }
            assert!(Instant::now() < deadline, "tx queue never drained");
            thread::sleep(Duration::from_micros(100));
        }
    }
}

fn pkt(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF_ALLOC,
        ..Header::default()
    }
}

fn new_memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A host client connects through the handshake; the guest accepts.
/// Returns the client and the host port.
fn host_connect(g: &mut Guest<'_>, guest_port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let (req, _) = g.recv_one();
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, guest_port);
    assert_eq!(req.type_, TYPE_STREAM);
    assert!(req.src_port >= 1 << 30);
    let host_port = req.src_port;
    g.send(pkt(OP_RESPONSE, guest_port, host_port), &[]);
    let expected = format!("OK {host_port}\n");
    let mut ok = vec![0; expected.len()];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, expected.as_bytes());
    (client, host_port)
}

/// Deterministic test data.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a.
fn checksum(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

#[test]
fn device_identity_and_config_space() {
    let dir = temp_dir("config");
    let uds = dir.join("v.sock");
    let dev = Vsock::new(0x1122_3344_5566_7788, uds.clone()).unwrap();
    assert_eq!(dev.device_type(), VSOCK_DEVICE_TYPE);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(dev.avail_features(), 1 << 32);
    let mut lo = [0u8; 4];
    dev.read_config(0, &mut lo);
    assert_eq!(lo, [0x88, 0x77, 0x66, 0x55]);
    let mut all = [0u8; 8];
    dev.read_config(0, &mut all);
    assert_eq!(u64::from_le_bytes(all), 0x1122_3344_5566_7788);
    let mut beyond = [0xffu8; 4];
    dev.read_config(6, &mut beyond);
    assert_eq!(beyond, [0x22, 0x11, 0, 0]);
    dev.read_config(u64::MAX, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert!(uds.exists());
    drop(dev);
    assert!(!uds.exists(), "socket file left behind");
}

#[test]
fn stale_socket_is_replaced_other_files_are_not() {
    let dir = temp_dir("stale");
    let uds = dir.join("v.sock");
    let stale = UnixListener::bind(&uds).unwrap();
    drop(stale);
    let dev = Vsock::new(3, uds.clone()).unwrap();
    drop(dev);
    let file = dir.join("plain");
    std::fs::write(&file, b"keep me").unwrap();
    match Vsock::new(3, file.clone()) {
        Err(e @ VsockError::NotASocket { .. }) => {
            assert!(e.to_string().contains("plain"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    match Vsock::new(3, dir.join("missing/v.sock")) {
        Err(e @ VsockError::Bind { .. }) => assert!(e.to_string().contains("missing")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn activate_wants_three_queues_and_reset_stops_the_worker() {
    let dir = temp_dir("reset");
    let mem = new_memory();
    let mut dev = Vsock::new(GUEST_CID, dir.join("v.sock")).unwrap();
    let irq = Arc::new(Interrupt::new(
        Arc::new(AtomicU32::new(0)),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    assert!(matches!(
        dev.activate(mem.clone(), irq.clone(), Vec::new()),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 0
        })
    ));
    let mut g = Guest::start(&mem, &dir);
    let (mut client, _) = host_connect(&mut g, 1024);
    assert!(g.device.reset());
    // The reset dropped the connection.
    assert_closed(&mut client);
    // Activated again, the device serves new clients.
    let Guest { device, .. } = g;
    let mut g = Guest::with_device(&mem, device);
    let (_client, hport) = host_connect(&mut g, 1024);
    assert_eq!(hport, 1 << 30);
}

/// The device closed the client's connection.
fn assert_closed(client: &mut UnixStream) {
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "got {rest:?}"),
        // Closed with some of our bytes unread.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn transport_reset_event_after_restore() {
    let dir = temp_dir("transport-reset");
    let mem = new_memory();
    let mut device = Vsock::new(GUEST_CID, dir.join("v.sock")).unwrap();
    device.request_transport_reset();
    let mut g = Guest::with_device(&mem, device);
    // A host client arriving before the guest handled the reset waits.
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    // The driver posts its event buffer after the device started.
    const EV_BUF: u64 = 0xf0_0000;
    g.mem
        .write_obj(0xffff_ffffu32, GuestAddress(EV_BUF))
        .unwrap();
    g.evq.set_desc(0, EV_BUF, 8, VRING_DESC_F_WRITE, 0);
    g.evq.push_avail(0, 0);
    g.ev_kick.write(1).unwrap();
    let deadline = Instant::now() + WAIT;
    while g.evq.used_idx() == 0 {
        assert!(Instant::now() < deadline, "no transport reset event");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(g.evq.used_elem(0), (0, 4));
    let id: u32 = g.mem.read_obj(GuestAddress(EV_BUF)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    thread::sleep(Duration::from_millis(50));
    assert!(
        g.poll_rx().is_empty(),
        "client served before the reset was handled"
    );
    // The guest handled the event: it re-posts the buffer and kicks. The
    // event is sent only once; the waiting client is served now.
    g.evq.set_desc(1, EV_BUF, 8, VRING_DESC_F_WRITE, 0);
    g.evq.push_avail(1, 1);
    g.ev_kick.write(1).unwrap();
    let (req, _) = g.recv_one();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
    assert_eq!(g.evq.used_idx(), 1);
}

#[test]
fn host_connect_ping_pong_and_disconnect() {
    let dir = temp_dir("pingpong");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let (mut client, hport) = host_connect(&mut g, 1024);

    client.write_all(b"ping").unwrap();
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (OP_RW, hport, 1024));
    assert_eq!(data, b"ping");

    g.send(pkt(OP_RW, 1024, hport), b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    g.send(pkt(OP_CREDIT_REQUEST, 1024, hport), &[]);
    let (update, _) = g.recv_one();
    assert_eq!(update.op, OP_CREDIT_UPDATE);
    assert_eq!(update.fwd_cnt, 4);

    // The client goes away: SHUTDOWN, then RST.
    drop(client);
    let mut pending = Vec::new();
    let (shut, _) = g.recv(&mut pending);
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    let (rst, _) = g.recv(&mut pending);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, hport, 1024));
    assert_ne!(
        g.irq_status.load(Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING,
        0
    );

    // Packets for the dead connection are answered with RST.
    g.send(pkt(OP_RW, 1024, hport), b"late");
    let (rst, _) = g.recv_one();
    assert_eq!(rst.op, OP_RST);

    // Payload bytes only: "ping" to the guest, "pong" and "late" from it;
    // each packet either way (request, ping, credit update, shutdown, two
    // RSTs; response, pong, credit request, late), the guest's kicks and
    // the interrupts for them.
    let c = g.device.counters().unwrap().snapshot();
    assert_eq!((c.device.as_str(), c.name.as_str()), ("vsock", "vsock"));
    assert_eq!(c.bytes, [("rx".into(), 4), ("tx".into(), 8)].into());
    assert!(c.packets["rx"] >= 6 && c.packets["tx"] >= 4, "{c:?}");
    assert!(c.notifications >= 4 && c.interrupts >= 1, "{c:?}");
}

#[test]
fn guest_refusal_closes_the_client_without_ok() {
    let dir = temp_dir("refused");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 7\n").unwrap();
    let (req, _) = g.recv_one();
    assert_eq!(req.op, OP_REQUEST);
    g.send(pkt(OP_RST, 7, req.src_port), &[]);
    assert_closed(&mut client);
}

#[test]
fn bad_handshakes_are_closed() {
    let dir = temp_dir("handshake");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    for line in [&b"CONNECT abc\n"[..], &[b'x'; 100][..], b"HELLO 1\n"] {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client.write_all(line).unwrap();
        assert_closed(&mut client);
    }
    // A line split over several writes works.
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONN").unwrap();
    thread::sleep(Duration::from_millis(20));
    client.write_all(b"ECT 99\n").unwrap();
    let (req, _) = g.recv_one();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 99));
    // Nothing reached the guest for the bad ones.
    thread::sleep(Duration::from_millis(50));
    assert!(g.poll_rx().is_empty());
}

#[test]
fn guest_connects_to_a_host_listener() {
    let dir = temp_dir("guestconn");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let listener = UnixListener::bind(listener_path(&g.uds, 5000)).unwrap();

    g.send(pkt(OP_REQUEST, 40000, 5000), &[]);
    let (resp, _) = g.recv_one();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port, resp.dst_cid),
        (OP_RESPONSE, 5000, 40000, GUEST_CID)
    );
    let (mut server, _) = listener.accept().unwrap();

    g.send(pkt(OP_RW, 40000, 5000), b"hello host");
    let mut got = [0u8; 10];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");
    server.write_all(b"hello guest").unwrap();
    let (rw, data) = g.recv_one();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"hello guest"[..]));

    // The guest closes: the host sees EOF, the guest gets RST.
    g.send(pkt(OP_SHUTDOWN, 40000, 5000), &[]);
    g.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..pkt(OP_SHUTDOWN, 40000, 5000)
        },
        &[],
    );
    let (rst, _) = g.recv_one();
    assert_eq!(rst.op, OP_RST);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Nobody listens on 5001: RST.
    g.send(pkt(OP_REQUEST, 40001, 5001), &[]);
    let (rst, _) = g.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 40001));
}

/// A listening socket at `path` whose backlog is full: listen(2) with a
/// backlog of 0, then connections until the kernel refuses one.
fn full_listener(path: &Path) -> (std::os::fd::OwnedFd, Vec<UnixStream>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let listener = crate::unix_socket::bind_private(path).unwrap();
    // SAFETY: lowers the backlog of a listening socket we own.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // SAFETY: the listener's descriptor moves into an OwnedFd.
    let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(listener)) };
    let mut queued = Vec::new();
    loop {
        match crate::unix_socket::connect_nonblocking(path) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(queued.len() < 1000, "the backlog never filled");
    }
    (fd, queued)
}

/// Attack (review L5): the guest connects to a host listener that
/// accepts nothing and whose backlog is full. Safe outcome: the guest
/// gets RST at once and the device keeps serving others (a blocking
/// connect on the device thread would stall every connection of the VM,
/// the agent's included).
#[test]
fn a_host_listener_with_a_full_backlog_does_not_stall_the_device() {
    let dir = temp_dir("fullbacklog");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let (_full, _queued) = full_listener(&listener_path(&g.uds, 5002));
    let began = Instant::now();
    g.send(pkt(OP_REQUEST, 40002, 5002), &[]);
    let (rst, _) = g.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5002, 40002));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // The device still serves a host client's connection.
    let (mut client, hport) = host_connect(&mut g, 1024);
    g.send(pkt(OP_RW, 1024, hport), b"still here");
    let mut got = [0u8; 10];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
}

#[test]
fn malformed_packets_are_dropped() {
    let dir = temp_dir("malformed");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let base = g.tx_buf(0);
    // A header cut short.
    g.send_raw(&[(base, 10)]);
    // A length beyond the chain.
    let lying = Header {
        len: 5000,
        ..pkt(OP_RW, 1, 2)
    };
    g.mem
        .write_slice(&lying.encode(), GuestAddress(base))
        .unwrap();
    g.send_raw(&[(base, Header::SIZE as u32 + 100)]);
    // A huge length.
    let huge = Header {
        len: u32::MAX,
        ..pkt(OP_RW, 1, 2)
    };
    g.mem
        .write_slice(&huge.encode(), GuestAddress(base))
        .unwrap();
    g.send_raw(&[(base, Header::SIZE as u32)]);
    // Descriptors outside guest memory.
    g.send_raw(&[(MEM_SIZE as u64 - 8, 64)]);
    g.send_raw(&[(u64::MAX - 16, 64)]);
    g.send_raw(&[
        (base, Header::SIZE as u32),
        (MEM_SIZE as u64 + 0x1000, 0x1000),
    ]);
    // A spoofed source CID and a foreign destination.
    g.send(
        Header {
            src_cid: 99,
            ..pkt(OP_REQUEST, 1, 2)
        },
        &[],
    );
    g.tx_flushed();
    thread::sleep(Duration::from_millis(50));
    assert!(g.poll_rx().is_empty());
    g.send(
        Header {
            dst_cid: 7,
            ..pkt(OP_REQUEST, 1, 2)
        },
        &[],
    );
    let (rst, _) = g.recv_one();
    assert_eq!((rst.op, rst.src_cid, rst.dst_port), (OP_RST, 7, 1));
    // A datagram type.
    g.send(
        Header {
            type_: 3,
            ..pkt(OP_REQUEST, 1, 2)
        },
        &[],
    );
    assert_eq!(g.recv_one().0.op, OP_RST);
    // The device still works.
    let (mut client, hport) = host_connect(&mut g, 1024);
    g.send(pkt(OP_RW, 1024, hport), b"ok");
    let mut got = [0u8; 2];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}

/// Moves `size` bytes each way at once over one connection, checking
/// credit, order and content, then closes it half by half.
#[test]
fn large_transfer_both_ways() {
    const SIZE: usize = 4 << 20;
    let dir = temp_dir("large");
    let mem = new_memory();
    let mut g = Guest::start(&mem, &dir);
    let (client, hport) = host_connect(&mut g, 1024);

    let to_guest = pattern(1, SIZE);
    let to_host = pattern(2, SIZE);
    let want_guest = checksum(&to_guest, FNV_INIT);
    let want_host = checksum(&to_host, FNV_INIT);

    let mut writer = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for chunk in to_guest.chunks(100_003) {
            writer.write_all(chunk).unwrap();
        }
        // Half-close: the guest must get SHUTDOWN(SEND) after all data.
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = client.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut sum = FNV_INIT;
        let mut total = 0usize;
        let mut buf = vec![0; 70_000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sum = checksum(&buf[..n], sum);
            total += n;
        }
        (total, sum)
    });

    // The guest: consumes host data at once and reports it like Linux
    // (a credit update when 64 KiB were consumed), sends within credit.
    let mut recv_total = 0usize;
    let mut recv_sum = FNV_INIT;
    let mut fwd_cnt = 0u32;
    let mut fwd_cnt_told = 0u32;
    let mut sent = 0usize;
    // The device advertised its buffer in the REQUEST.
    let mut peer_buf_alloc = 256 * 1024u32;
    let mut peer_fwd_cnt = 0u32;
    let mut host_eof = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while recv_total < SIZE || sent < SIZE || !host_eof {
        assert!(Instant::now() < deadline, "transfer stalled");
        let mut progress = false;
        for (hdr, data) in g.poll_rx() {
            progress = true;
            assert_eq!((hdr.src_port, hdr.dst_port), (hport, 1024));
            peer_buf_alloc = hdr.buf_alloc;
            peer_fwd_cnt = hdr.fwd_cnt;
            match hdr.op {
                OP_RW => {
                    assert!(!host_eof, "data after SHUTDOWN");
                    recv_sum = checksum(&data, recv_sum);
                    recv_total += data.len();
                    // Never more than the credit we gave.
                    assert!(recv_total <= fwd_cnt_told as usize + GUEST_BUF_ALLOC as usize);
                    fwd_cnt = fwd_cnt.wrapping_add(data.len() as u32);
                }
                OP_CREDIT_UPDATE => {}
                OP_SHUTDOWN => {
                    assert_eq!(hdr.flags, SHUTDOWN_SEND);
                    assert_eq!(recv_total, SIZE);
                    host_eof = true;
                }
                op => panic!("unexpected op {op}"),
            }
        }
        if fwd_cnt.wrapping_sub(fwd_cnt_told) >= 64 * 1024 {
            fwd_cnt_told = fwd_cnt;
            g.send(
                Header {
                    fwd_cnt,
                    ..pkt(OP_CREDIT_UPDATE, 1024, hport)
                },
                &[],
            );
            progress = true;
        }
        let credit = peer_buf_alloc as usize - (sent - peer_fwd_cnt as usize);
        if sent < SIZE && credit > 0 {
            let n = credit.min(SIZE - sent).min(32 * 1024 + 7);
            g.send(
                Header {
                    fwd_cnt,
                    ..pkt(OP_RW, 1024, hport)
                },
                &to_host[sent..sent + n],
            );
            fwd_cnt_told = fwd_cnt;
            sent += n;
            progress = true;
        }
        if !progress {
            thread::sleep(Duration::from_micros(100));
        }
    }
    assert_eq!(recv_sum, want_guest, "host→guest data corrupted");
    writer.join().unwrap();

    // The guest is done too: the client reads EOF after all the data.
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            fwd_cnt,
            ..pkt(OP_SHUTDOWN, 1024, hport)
        },
        &[],
    );
    let (total, sum) = reader.join().unwrap();
    assert_eq!(total, SIZE);
    assert_eq!(sum, want_host, "guest→host data corrupted");

    // Finally the client leaves: SHUTDOWN(both), then RST.
    drop(client);
    let mut pending = Vec::new();
    let (hdr, _) = loop {
        let p = g.recv(&mut pending);
        if p.0.op != OP_CREDIT_UPDATE {
            break p;
        }
    };
    assert_eq!((hdr.op, hdr.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    assert_eq!(g.recv(&mut pending).0.op, OP_RST);
}
