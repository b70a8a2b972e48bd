//! Muxer tests without a worker: deadlines and the guest-facing control
//! packets, driven by hand.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::super::connection::{CLOSE_TIMEOUT, CONNECT_TIMEOUT};
use super::super::credit::BUF_ALLOC;
use super::super::packet::{OP_RESPONSE, OP_RW};
use super::*;

const GUEST_CID: u64 = 3;

fn muxer(name: &str) -> (Muxer, PathBuf) {
    let dir = std::env::temp_dir().join(format!("nacre-vsock-mux-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    (Muxer::new(GUEST_CID, path.clone(), listener).unwrap(), path)
}

fn assert_closed(client: &mut UnixStream) {
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "got {rest:?}");
}

/// A host client whose CONNECT the muxer has taken.
fn connected_client(mux: &mut Muxer, path: &Path, now: Instant) -> UnixStream {
    let mut client = UnixStream::connect(path).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    mux.handle_event(LISTENER_TOKEN, EventSet::IN, now);
    assert_eq!(mux.conns.len(), 1);
    client
}

#[test]
fn unanswered_request_times_out() {
    let (mut mux, path) = muxer("connect-timeout");
    let now = Instant::now();
    let mut client = connected_client(&mut mux, &path, now);
    assert!(mux.has_rx_work());
    let deadline = mux.next_deadline().unwrap();
    assert!(deadline >= now + CONNECT_TIMEOUT);
    mux.handle_timeouts(now + CONNECT_TIMEOUT / 2);
    assert_eq!(mux.conns.len(), 1);
    mux.handle_timeouts(deadline);
    assert!(mux.conns.is_empty());
    assert_eq!(mux.control.front().map(|h| h.op), Some(OP_RST));
    assert_closed(&mut client);
    assert!(mux.next_deadline().is_none());
}

#[test]
fn silent_client_times_out() {
    let (mut mux, path) = muxer("handshake-timeout");
    let now = Instant::now();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 10").unwrap();
    mux.handle_event(LISTENER_TOKEN, EventSet::IN, now);
    assert_eq!(mux.clients.len(), 1);
    assert!(mux.conns.is_empty());
    mux.handle_timeouts(now + HANDSHAKE_TIMEOUT);
    assert!(mux.clients.is_empty());
    assert!(!mux.has_rx_work(), "the guest heard of a failed handshake");
    assert_closed(&mut client);
}

#[test]
fn closing_connection_times_out() {
    let (mut mux, path) = muxer("close-timeout");
    let now = Instant::now();
    let _client = connected_client(&mut mux, &path, now);
    let key = *mux.conns.keys().next().unwrap();
    let guest = |op, flags| Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: key.peer_port,
        dst_port: key.local_port,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: 4096,
        ..Header::default()
    };
    mux.handle_guest_packet(&guest(OP_RESPONSE, 0), &[]);
    // The client never reads: a full credit of guest data cannot all fit
    // in the socket, some stays buffered in the device.
    let chunk = vec![0u8; MAX_PAYLOAD];
    for _ in 0..BUF_ALLOC as usize / MAX_PAYLOAD {
        let hdr = Header {
            len: chunk.len() as u32,
            ..guest(OP_RW, 0)
        };
        mux.handle_guest_packet(&hdr, &chunk);
    }
    assert!(mux.control.is_empty());
    mux.handle_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_BOTH), &[]);
    assert!(mux.conns.contains_key(&key), "closed without draining");
    assert!(mux.conns[&key].deadline().is_some());
    mux.control.clear();
    mux.handle_timeouts(Instant::now() + CLOSE_TIMEOUT);
    assert!(mux.conns.is_empty());
    assert_eq!(mux.control.back().map(|h| h.op), Some(OP_RST));
}

#[test]
fn packets_for_nobody_get_rst_and_rst_gets_nothing() {
    let (mut mux, _path) = muxer("nobody");
    let hdr = Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 7,
        dst_port: 8,
        type_: TYPE_STREAM,
        op: OP_RW,
        ..Header::default()
    };
    mux.handle_guest_packet(&hdr, b"x");
    let rst = mux.control.pop_front().unwrap();
    assert_eq!(
        (rst.op, rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
        (OP_RST, HOST_CID, GUEST_CID, 8, 7)
    );
    mux.handle_guest_packet(&Header { op: OP_RST, ..hdr }, &[]);
    assert!(mux.control.is_empty());
}

#[test]
fn host_ports_are_unique() {
    let (mut mux, _path) = muxer("ports");
    let a = mux.allocate_port();
    let b = mux.allocate_port();
    assert_eq!((a, b), (FIRST_HOST_PORT, FIRST_HOST_PORT + 1));
    mux.next_port = u32::MAX;
    assert_eq!(mux.allocate_port(), u32::MAX);
    assert_eq!(mux.allocate_port(), FIRST_HOST_PORT);
}

#[test]
fn listener_paths() {
    assert_eq!(
        listener_path(Path::new("/run/nacre/vm1/vsock.sock"), 1025),
        Path::new("/run/nacre/vm1/vsock.sock_1025")
    );
}
