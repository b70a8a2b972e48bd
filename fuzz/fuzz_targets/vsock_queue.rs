//! virtio-vsock queue processing: rx, tx and event queues the fuzzer lays
//! out over a guest memory it fills, with well-formed packet headers
//! planted where it asks (a raw byte string rarely makes one), a host
//! listener on one port and the worker's tx → muxer → rx loop.
//!
//! Invariants: the device writes guest memory only inside device-writable
//! buffers and the used rings; used lengths fit their chains (a tx chain
//! is returned with length 0, an rx chain with at most its room); the
//! muxer's bookkeeping and credit invariants hold (checked by the muxer
//! target, which drives the same code step by step).

#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_fuzz::guest::{self, QueueSpec, DATA};
use nacre_fuzz::oracle::{self, Before};
use nacre_vmm::devices::virtio::vsock::fuzzing::{Header, QueueDriver, HOST_CID, TYPE_STREAM};
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
/// The guest port a host listener serves (`<uds>_1234`).
const LISTENING: u32 = 1234;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

impl Cid {
    fn get(self) -> u64 {
        match self {
            Cid::Guest => GUEST_CID,
            Cid::Host => HOST_CID,
            Cid::Raw(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Hdr {
    at: u16,
    src_cid: Cid,
    dst_cid: Cid,
    src_port: u8,
    listening: bool,
    dst_port: u32,
    len: u16,
    raw_type: Option<u16>,
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn header(&self) -> Header {
        Header {
            src_cid: self.src_cid.get(),
            dst_cid: self.dst_cid.get(),
            src_port: u32::from(self.src_port),
            dst_port: if self.listening {
                LISTENING
            } else {
                self.dst_port
            },
            len: u32::from(self.len),
            type_: self.raw_type.unwrap_or(TYPE_STREAM),
            op: u16::from(self.op % 9),
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    rx: QueueSpec,
    tx: QueueSpec,
    event: QueueSpec,
    data: Vec<u8>,
    headers: Vec<Hdr>,
    rounds: u8,
}

struct Host {
    dir: PathBuf,
    listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = nacre_fuzz::scratch::dir("vsock-queue");
        let listener = UnixListener::bind(dir.join("v.sock_1234")).unwrap();
        listener.set_nonblocking(true).unwrap();
        Host { dir, listener }
    })
}

fuzz_target!(|input: Input| {
    nacre_fuzz::ignore_sigpipe();
    let host = host();
    let mem = guest::memory(&input.data);
    for h in input.headers.iter().take(32) {
        let at = DATA + u64::from(h.at % 0xffd4);
        mem.write_slice(&h.header().encode(), GuestAddress(at))
            .unwrap();
    }
    let (rxq, rx) = guest::lay_out(&mem, 0, &input.rx);
    let (txq, tx) = guest::lay_out(&mem, 1, &input.tx);
    let (evq, ev) = guest::lay_out(&mem, 2, &input.event);
    let before = Before::take(&mem, &[rx, tx, ev]);
    let uds = host.dir.join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let queues = [guest::active(rxq), guest::active(txq), guest::active(evq)];
    let mut driver = QueueDriver::new(
        mem.clone(),
        guest::interrupt(),
        queues,
        GUEST_CID,
        uds,
        listener,
    )
    .unwrap();
    for _ in 0..=(input.rounds % 3) {
        driver.process();
    }
    drop(driver);
    // Connections the guest opened to the host listener: accept and drop.
    while host.listener.accept().is_ok() {}

    before.check_writes(&mem);
    oracle::check_used(&mem, &before, 0, &rx, input.rx.avail_idx());
    oracle::check_used(&mem, &before, 1, &tx, input.tx.avail_idx());
    oracle::check_used(&mem, &before, 2, &ev, input.event.avail_idx());
    // Every tx chain goes back with length 0 (used fields a guest aliased
    // with a device-writable buffer hold packet data: not checked).
    let aliased = |at: u64, len: u64| before.aliased(at, len);
    if aliased(tx.used + 2, 2) {
        return;
    }
    for pos in 0..tx.used_idx(&mem).min(tx.size) {
        if aliased(tx.used + 4 + 8 * u64::from(pos), 8) {
            continue;
        }
        assert_eq!(
            tx.used_elem(&mem, pos).1,
            0,
            "a tx chain returned with a length"
        );
    }
});
