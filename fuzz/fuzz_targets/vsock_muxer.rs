//! The hybrid vsock muxer driven step by step: guest packets, host
//! clients connecting to the VMM's Unix socket and writing (their
//! `CONNECT` line, then data), guest connections accepted by a host
//! listener, socket events, rx buffers of any size, and time passing.
//!
//! Invariants, after every step: the muxer's socket ↔ connection maps
//! agree and stay within their limits, each connection's buffered guest
//! data is what its credit counts and never beyond the buffer it
//! advertised; every packet for the guest is from the host CID to the
//! guest CID on a stream, a known operation, fits its buffer, and a data
//! packet never carries more than the credit the guest gave its
//! connection (the credit never goes negative).

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_fuzz::guest::{self, Ring, DATA, DATA_LEN};
use nacre_vmm::devices::virtio::vsock::fuzzing::{
    Header, MuxerDriver, HOST_CID, MAX_PAYLOAD, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
const LISTENING: u32 = 1234;

#[derive(Arbitrary, Debug)]
struct Packet {
    foreign_src: Option<u64>,
    foreign_dst: Option<u64>,
    src_port: u8,
    listening: bool,
    dst_port: u32,
    raw_type: Option<u16>,
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    /// Header `len` differs from the payload's length.
    len: Option<u32>,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Guest(Packet),
    /// A guest packet for the connection of host port `1 << 30 | n`
    /// (host clients get ports from there), with valid fields.
    GuestToClient {
        n: u8,
        guest_port: u32,
        op: u8,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
        payload: Vec<u8>,
    },
    ClientConnect {
        port: Option<u32>,
        extra: Vec<u8>,
    },
    ClientWrite {
        idx: u8,
        data: Vec<u8>,
    },
    ClientShutdown {
        idx: u8,
        how: u8,
    },
    ClientClose {
        idx: u8,
    },
    HostAccept {
        data: Vec<u8>,
    },
    HostWrite {
        idx: u8,
        data: Vec<u8>,
    },
    HostRead {
        idx: u8,
    },
    HostClose {
        idx: u8,
    },
    Poll,
    Rx {
        cap: u16,
    },
    Time {
        secs: u8,
    },
}

struct Host {
    dir: PathBuf,
    listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = nacre_fuzz::scratch::dir("vsock-muxer");
        let listener = UnixListener::bind(dir.join(format!("v.sock_{LISTENING}"))).unwrap();
        listener.set_nonblocking(true).unwrap();
        Host { dir, listener }
    })
}

fn guest_header(p: &Packet) -> Header {
    Header {
        src_cid: p.foreign_src.unwrap_or(GUEST_CID),
        dst_cid: p.foreign_dst.unwrap_or(HOST_CID),
        src_port: u32::from(p.src_port),
        dst_port: if p.listening { LISTENING } else { p.dst_port },
        len: p.len.unwrap_or(p.payload.len() as u32),
        type_: p.raw_type.unwrap_or(TYPE_STREAM),
        op: u16::from(p.op % 9),
        flags: p.flags,
        buf_alloc: p.buf_alloc,
        fwd_cnt: p.fwd_cnt,
    }
}

fn pick<T>(v: &mut [T], idx: u8) -> Option<&mut T> {
    let n = v.len();
    (n > 0).then(|| &mut v[usize::from(idx) % n])
}

/// Offers one writable buffer of `cap` payload bytes and checks what the
/// muxer puts in it.
fn rx(mux: &mut MuxerDriver, mem: &guest::Mem, cap: u16, addressed: &[u64]) {
    let room = (Header::SIZE + usize::from(cap)).min(DATA_LEN) as u32;
    let ring = Ring::of(0, 1);
    mem.write_obj(Descriptor::new(DATA, room, 2, 0), GuestAddress(ring.desc))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(ring.avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(ring.avail + 2)).unwrap();
    let mut q = guest::queue(mem, ring, false);
    let chain = q.pop_descriptor_chain(mem).unwrap();
    let credit = mux.peer_credit();
    let Some(result) = mux.fill_rx(mem, chain) else {
        return;
    };
    let Ok(n) = result else {
        assert!(
            (room as usize) < Header::SIZE,
            "a header-sized buffer refused"
        );
        return;
    };
    assert!(
        n <= room && n as usize >= Header::SIZE,
        "{n} bytes written to a {room}-byte buffer"
    );
    let mut raw = [0u8; Header::SIZE];
    mem.read_slice(&mut raw, GuestAddress(DATA)).unwrap();
    let h = Header::decode(&raw);
    assert_eq!(n as usize, Header::SIZE + h.len as usize);
    assert_eq!((h.dst_cid, h.type_), (GUEST_CID, TYPE_STREAM), "{h:?}");
    // Only a refusal may speak for another CID: the one the guest named.
    assert!(
        h.src_cid == HOST_CID || (h.op == OP_RST && addressed.contains(&h.src_cid)),
        "{h:?}"
    );
    assert!(
        [
            OP_REQUEST,
            OP_RESPONSE,
            OP_RST,
            OP_SHUTDOWN,
            OP_RW,
            OP_CREDIT_UPDATE
        ]
        .contains(&h.op),
        "{h:?}"
    );
    if h.op == OP_RW {
        assert!(h.len > 0 && h.len as usize <= MAX_PAYLOAD, "{h:?}");
        let had = credit
            .iter()
            .find(|(k, _)| *k == (h.src_port, h.dst_port))
            .map(|(_, c)| *c);
        let had = had.expect("data for no live connection");
        assert!(h.len <= had, "sent {} bytes on a credit of {had}", h.len);
    } else {
        assert_eq!(h.len, 0, "{h:?}");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    nacre_fuzz::ignore_sigpipe();
    let host = host();
    let uds = host.dir.join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut mux = MuxerDriver::new(GUEST_CID, uds.clone(), listener).unwrap();
    let mem = guest::memory(&[]);
    let start = Instant::now();
    let mut now = start;
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    let mut addressed: Vec<u64> = Vec::new();
    for op in ops.iter().take(64) {
        match op {
            Op::Guest(p) => {
                let payload = &p.payload[..p.payload.len().min(MAX_PAYLOAD)];
                let h = guest_header(p);
                addressed.push(h.dst_cid);
                mux.guest_packet(&h, payload);
            }
            Op::GuestToClient {
                n,
                guest_port,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
                payload,
            } => {
                let h = Header {
                    src_cid: GUEST_CID,
                    dst_cid: HOST_CID,
                    src_port: *guest_port,
                    dst_port: (1 << 30) | u32::from(*n % 8),
                    len: payload.len() as u32,
                    type_: TYPE_STREAM,
                    op: u16::from(*op % 8),
                    flags: *flags,
                    buf_alloc: *buf_alloc,
                    fwd_cnt: *fwd_cnt,
                };
                mux.guest_packet(&h, payload);
            }
            Op::ClientConnect { port, extra } => {
                if let Ok(mut c) = UnixStream::connect(&uds) {
                    c.set_nonblocking(true).unwrap();
                    if let Some(port) = port {
                        let _ = c.write_all(format!("CONNECT {port}\n").as_bytes());
                    }
                    let _ = c.write_all(extra);
                    clients.push(c);
                }
            }
            Op::ClientWrite { idx, data } => {
                if let Some(c) = pick(&mut clients, *idx) {
                    let _ = c.write(data);
                }
            }
            Op::ClientShutdown { idx, how } => {
                if let Some(c) = pick(&mut clients, *idx) {
                    let kinds = [
                        std::net::Shutdown::Read,
                        std::net::Shutdown::Write,
                        std::net::Shutdown::Both,
                    ];
                    let _ = c.shutdown(kinds[usize::from(*how) % 3]);
                }
            }
            Op::ClientClose { idx } => {
                if !clients.is_empty() {
                    let i = usize::from(*idx) % clients.len();
                    clients.swap_remove(i);
                }
            }
            Op::HostAccept { data } => {
                if let Ok((mut s, _)) = host.listener.accept() {
                    s.set_nonblocking(true).unwrap();
                    let _ = s.write(data);
                    accepted.push(s);
                }
            }
            Op::HostWrite { idx, data } => {
                if let Some(s) = pick(&mut accepted, *idx) {
                    let _ = s.write(data);
                }
            }
            Op::HostRead { idx } => {
                if let Some(s) = pick(&mut accepted, *idx) {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                }
            }
            Op::HostClose { idx } => {
                if !accepted.is_empty() {
                    let i = usize::from(*idx) % accepted.len();
                    accepted.swap_remove(i);
                }
            }
            Op::Poll => {
                mux.poll_sockets(now).unwrap();
            }
            Op::Rx { cap } => rx(&mut mux, &mem, *cap, &addressed),
            Op::Time { secs } => {
                now += Duration::from_secs(u64::from(*secs % 16));
                mux.timeouts(now);
            }
        }
        if let Err(e) = mux.check_invariants() {
            panic!("muxer invariant: {e}");
        }
    }
    drop(mux);
    while host.listener.accept().is_ok() {}
});
