//! Connection state machine tests over real Unix socket pairs.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::super::credit::BUF_ALLOC;
use super::super::packet::MAX_PAYLOAD;
use super::*;

const GUEST_CID: u64 = 3;
const KEY: ConnKey = ConnKey {
    local_port: 1 << 30,
    peer_port: 1024,
};

/// The device's end (non-blocking) and the host client's end.
fn pair() -> (UnixStream, UnixStream) {
    let (dev, client) = UnixStream::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    (dev, client)
}

fn guest(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: KEY.peer_port,
        dst_port: KEY.local_port,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc,
        fwd_cnt,
        ..Header::default()
    }
}

fn next(conn: &mut Connection) -> Option<(Header, Vec<u8>)> {
    let mut buf = vec![0; MAX_PAYLOAD];
    conn.next_packet(4096, &mut buf)
        .unwrap()
        .map(|(hdr, n)| (hdr, buf[..n].to_vec()))
}

/// A host-initiated connection the guest accepted with `buf_alloc` credit.
fn established(buf_alloc: u32) -> (Connection, UnixStream) {
    let (dev, mut client) = pair();
    let mut conn = Connection::new_local(dev, KEY, GUEST_CID, Vec::new(), Instant::now());
    let (req, _) = next(&mut conn).unwrap();
    assert_eq!(req.op, OP_REQUEST);
    let v = conn.on_guest_packet(&guest(OP_RESPONSE, 0, buf_alloc, 0), &[]);
    assert_eq!(v, Verdict::Keep);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    (conn, client)
}

#[test]
fn host_connect_sends_request_then_ok_on_response() {
    let (dev, mut client) = pair();
    let mut conn = Connection::new_local(dev, KEY, GUEST_CID, b"early".to_vec(), Instant::now());
    assert_eq!(conn.state(), State::Connecting);
    assert!(conn.deadline().is_some());
    let (req, payload) = next(&mut conn).unwrap();
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.src_port, req.dst_port),
        (OP_REQUEST, HOST_CID, GUEST_CID, 1 << 30, 1024)
    );
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    assert!(payload.is_empty());
    // Nothing else until the guest answers, not even the early bytes.
    assert!(next(&mut conn).is_none());

    let v = conn.on_guest_packet(&guest(OP_RESPONSE, 0, 4096, 0), &[]);
    assert_eq!(v, Verdict::Keep);
    assert_eq!(conn.state(), State::Established);
    assert!(conn.deadline().is_none());
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    // Bytes sent along with the CONNECT line come first.
    let (rw, payload) = next(&mut conn).unwrap();
    assert_eq!(rw.op, OP_RW);
    assert_eq!(payload, b"early");
}

#[test]
fn guest_rst_refuses_a_host_connect() {
    let (dev, _client) = pair();
    let mut conn = Connection::new_local(dev, KEY, GUEST_CID, Vec::new(), Instant::now());
    next(&mut conn).unwrap();
    assert_eq!(
        conn.on_guest_packet(&guest(OP_RST, 0, 0, 0), &[]),
        Verdict::Drop
    );
}

#[test]
fn data_before_response_is_a_protocol_error() {
    let (dev, _client) = pair();
    let mut conn = Connection::new_local(dev, KEY, GUEST_CID, Vec::new(), Instant::now());
    next(&mut conn).unwrap();
    assert_eq!(
        conn.on_guest_packet(&guest(OP_RW, 0, 4096, 0), b"x"),
        Verdict::Reset
    );
    assert_eq!(conn.on_timeout(), Verdict::Reset);
}

#[test]
fn guest_request_gets_a_response() {
    let (dev, _client) = pair();
    let mut hdr = guest(OP_REQUEST, 0, 8192, 0);
    hdr.dst_port = 5000;
    let key = ConnKey {
        local_port: 5000,
        peer_port: 1024,
    };
    let mut conn = Connection::new_peer(dev, key, GUEST_CID, &hdr);
    assert_eq!(conn.state(), State::Established);
    let (resp, _) = next(&mut conn).unwrap();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 1024)
    );
}

#[test]
fn host_data_respects_guest_credit() {
    let (mut conn, mut client) = established(4);
    client.write_all(b"hello").unwrap();
    let (rw, payload) = next(&mut conn).unwrap();
    assert_eq!(rw.op, OP_RW);
    assert_eq!(payload, b"hell");
    // Out of credit: nothing is read from the socket.
    assert!(!conn.has_rx_work());
    assert!(next(&mut conn).is_none());
    let v = conn.on_guest_packet(&guest(OP_CREDIT_UPDATE, 0, 4, 4), &[]);
    assert_eq!(v, Verdict::Keep);
    assert!(conn.has_rx_work());
    let (_, payload) = next(&mut conn).unwrap();
    assert_eq!(payload, b"o");
    // Socket drained: the next read hits EAGAIN and clears readiness.
    assert!(next(&mut conn).is_none());
    assert!(!conn.has_rx_work());
    client.write_all(b"!").unwrap();
    conn.on_socket_event(true, false, false);
    assert!(conn.has_rx_work());
}

#[test]
fn guest_data_reaches_the_client_and_credit_flows_back() {
    let (mut conn, mut client) = established(4096);
    let chunk = vec![0x5a; MAX_PAYLOAD];
    for _ in 0..(BUF_ALLOC as usize / 4 / MAX_PAYLOAD) {
        let mut hdr = guest(OP_RW, 0, 4096, 0);
        hdr.len = chunk.len() as u32;
        let v = conn.on_guest_packet(&hdr, &chunk);
        assert_eq!(v, Verdict::Keep);
        let mut got = vec![0; chunk.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, chunk);
    }
    // A quarter of the buffer was forwarded: the guest hears about it.
    let (update, _) = next(&mut conn).unwrap();
    assert_eq!(update.op, OP_CREDIT_UPDATE);
    assert_eq!(update.fwd_cnt, BUF_ALLOC / 4);
    assert_eq!(update.buf_alloc, BUF_ALLOC);
    assert!(next(&mut conn).is_none());
}

#[test]
fn credit_request_is_answered() {
    let (mut conn, _client) = established(4096);
    conn.on_guest_packet(&guest(OP_CREDIT_REQUEST, 0, 4096, 0), &[]);
    let (update, _) = next(&mut conn).unwrap();
    assert_eq!(update.op, OP_CREDIT_UPDATE);
    assert_eq!(update.buf_alloc, BUF_ALLOC);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    // The client never reads: data piles up in the device's buffer.
    let (mut conn, _client) = established(4096);
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0usize;
    let verdict = loop {
        let mut hdr = guest(OP_RW, 0, 4096, 0);
        hdr.len = chunk.len() as u32;
        let v = conn.on_guest_packet(&hdr, &chunk);
        if v != Verdict::Keep {
            break v;
        }
        sent += chunk.len();
        assert!(sent < 64 * 1024 * 1024, "credit never enforced");
    };
    assert_eq!(verdict, Verdict::Reset);
    assert!(sent >= BUF_ALLOC as usize);
}

#[test]
fn guest_shutdown_send_half_closes_the_client() {
    let (mut conn, mut client) = established(4096);
    let mut hdr = guest(OP_RW, 0, 4096, 0);
    hdr.len = 3;
    conn.on_guest_packet(&hdr, b"bye");
    let v = conn.on_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_SEND, 4096, 0), &[]);
    assert_eq!(v, Verdict::Keep);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    // The other direction still works.
    client.write_all(b"still here").unwrap();
    let (rw, payload) = next(&mut conn).unwrap();
    assert_eq!((rw.op, payload.as_slice()), (OP_RW, &b"still here"[..]));
    // More data after SHUTDOWN(SEND) breaks the protocol.
    assert_eq!(conn.on_guest_packet(&hdr, b"bye"), Verdict::Reset);
}

#[test]
fn guest_full_shutdown_is_answered_with_rst() {
    let (mut conn, _client) = established(4096);
    let v = conn.on_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_BOTH, 4096, 0), &[]);
    assert_eq!(v, Verdict::Reset);
}

#[test]
fn guest_full_shutdown_drains_buffered_data_first() {
    let (mut conn, mut client) = established(4096);
    // Fill the socket so that some data stays buffered in the device.
    let chunk = vec![7u8; MAX_PAYLOAD];
    let mut total = 0usize;
    while conn.tx_buf.is_empty() {
        let mut hdr = guest(OP_RW, 0, 4096, 0);
        hdr.len = chunk.len() as u32;
        assert_eq!(conn.on_guest_packet(&hdr, &chunk), Verdict::Keep);
        total += chunk.len();
    }
    let v = conn.on_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_BOTH, 4096, 0), &[]);
    assert_eq!(v, Verdict::Keep);
    assert_eq!(conn.state(), State::Closing);
    assert!(conn.deadline().is_some());
    let buffered = conn.tx_buf.len();
    let mut got = vec![0; total - buffered];
    client.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 7));
    // The socket has room again: the rest goes out, then RST.
    assert_eq!(conn.on_socket_event(false, true, false), Verdict::Reset);
    let mut rest = vec![0; buffered];
    client.read_exact(&mut rest).unwrap();
    assert!(rest.iter().all(|&b| b == 7));
}

#[test]
fn guest_rst_drops_an_open_connection() {
    let (mut conn, _client) = established(4096);
    assert_eq!(
        conn.on_guest_packet(&guest(OP_RST, 0, 0, 0), &[]),
        Verdict::Drop
    );
}

#[test]
fn client_half_close_sends_shutdown_send() {
    let (mut conn, mut client) = established(4096);
    client.write_all(b"last").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (rw, payload) = next(&mut conn).unwrap();
    assert_eq!((rw.op, payload.as_slice()), (OP_RW, &b"last"[..]));
    let (shut, _) = next(&mut conn).unwrap();
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert!(next(&mut conn).is_none());
    // The guest may still send.
    let mut hdr = guest(OP_RW, 0, 4096, 0);
    hdr.len = 5;
    assert_eq!(conn.on_guest_packet(&hdr, b"reply"), Verdict::Keep);
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");
    // Then the client leaves for good.
    drop(client);
    assert_eq!(conn.on_socket_event(true, false, true), Verdict::Disconnect);
}

#[test]
fn client_disconnect_after_its_data() {
    let (mut conn, mut client) = established(4096);
    client.write_all(b"tail").unwrap();
    drop(client);
    assert_eq!(conn.on_socket_event(true, false, true), Verdict::Keep);
    let (_, payload) = next(&mut conn).unwrap();
    assert_eq!(payload, b"tail");
    let mut buf = vec![0; 64];
    assert_eq!(conn.next_packet(64, &mut buf), Err(Verdict::Disconnect));
}

#[test]
fn writing_to_a_vanished_client_disconnects() {
    let (mut conn, client) = established(4096);
    drop(client);
    let mut hdr = guest(OP_RW, 0, 4096, 0);
    hdr.len = 2;
    assert_eq!(conn.on_guest_packet(&hdr, b"hi"), Verdict::Disconnect);
}

#[test]
fn unexpected_ops_on_an_open_connection() {
    let (mut conn, _client) = established(4096);
    assert_eq!(
        conn.on_guest_packet(&guest(99, 0, 4096, 0), &[]),
        Verdict::Keep
    );
    assert_eq!(
        conn.on_guest_packet(&guest(OP_RESPONSE, 0, 4096, 0), &[]),
        Verdict::Reset
    );
}
