//! virtio-net queue processing: receive and transmit queues the fuzzer
//! lays out over a guest memory it fills, and frames waiting on the "tap"
//! (a datagram socket pair: one frame per read or write, like a tap).
//!
//! Invariants: the device writes guest memory only inside device-writable
//! buffers and the used rings; used lengths fit their chains; every frame
//! that reaches the tap is at least a header long, at most
//! `MAX_FRAME_LEN`, and carries an all-zero `virtio_net_hdr` whatever the
//! guest put there (no offload was negotiated).

#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_fuzz::guest::{self, QueueSpec};
use nacre_fuzz::oracle::{self, Before};
use nacre_vmm::devices::virtio::net::fuzzing::{QueueDriver, MAX_FRAME_LEN};
use nacre_vmm::devices::virtio::net::VNET_HDR_LEN;

#[derive(Arbitrary, Debug)]
struct Input {
    rx: QueueSpec,
    tx: QueueSpec,
    data: Vec<u8>,
    /// Frames the tap has for the guest.
    frames: Vec<Vec<u8>>,
    detached: bool,
}

fuzz_target!(|input: Input| {
    nacre_fuzz::ignore_sigpipe();
    let mem = guest::memory(&input.data);
    let (rxq, rx) = guest::lay_out(&mem, 0, &input.rx);
    let (txq, tx) = guest::lay_out(&mem, 1, &input.tx);
    let before = Before::take(&mem, &[rx, tx]);
    let (device_end, host_end) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    host_end.set_nonblocking(true).unwrap();
    for frame in input.frames.iter().take(8) {
        let _ = host_end.send(frame);
    }
    let tap = (!input.detached).then(|| Arc::new(File::from(OwnedFd::from(device_end))));
    let queues = [guest::active(rxq), guest::active(txq)];
    let mut driver = QueueDriver::new(mem.clone(), guest::interrupt(), queues, tap).unwrap();
    driver.process();
    driver.process();

    before.check_writes(&mem);
    oracle::check_used(&mem, &before, 0, &rx, input.rx.avail_idx());
    oracle::check_used(&mem, &before, 1, &tx, input.tx.avail_idx());
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    while let Ok(n) = host_end.recv(&mut buf) {
        assert!(
            (VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&n),
            "a {n}-byte frame on the tap"
        );
        assert!(
            buf[..VNET_HDR_LEN].iter().all(|&b| b == 0),
            "a guest vnet header reached the tap"
        );
    }
});
