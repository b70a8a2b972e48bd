//! One vsock stream connection and the Unix socket that carries its host
//! side: the state machine of §5.10.6 (REQUEST/RESPONSE, RW, SHUTDOWN, RST)
//! plus credit accounting and buffering.
//!
//! The connection never blocks: its socket is non-blocking and registered
//! edge-triggered, so it tracks readiness itself (`readable`, `writable`).
//! Guest data the socket cannot take yet waits in `tx_buf`, which the
//! credit we advertise keeps below [`BUF_ALLOC`](super::credit::BUF_ALLOC);
//! host data is only read from the socket when an rx buffer and guest
//! credit are both available, so nothing host→guest is ever buffered.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::credit::Credit;
use super::handshake::ok_line;
use super::packet::{
    Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// How long the guest has to answer a host-initiated REQUEST. Generous:
/// guest kernels may run emulated, ~1000x slower than native.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long buffered guest data may take to drain after the guest closed.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies a connection: the host-side and the guest-side ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host client asked for the guest port; waiting for RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The guest shut both directions; draining buffered data, then RST.
    Closing,
}

/// What the owner must do with the connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Drop it and send the guest RST.
    Reset,
    /// The host client went away: drop it, send SHUTDOWN then RST.
    Disconnect,
    /// Drop it silently (the guest reset it).
    Drop,
}

pub struct Connection {
    stream: UnixStream,
    key: ConnKey,
    guest_cid: u64,
    state: State,
    credit: Credit,
    /// Guest bytes the socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Handshake reply not fully written yet (not guest data: not counted).
    reply: Vec<u8>,
    /// Host bytes read with the handshake line, to send before the socket's.
    rx_pending: Vec<u8>,
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    /// SHUTDOWN flags still to send to the guest.
    pending_shutdown: u32,
    readable: bool,
    writable: bool,
    /// The client closed its socket entirely.
    hup: bool,
    /// SHUTDOWN flags sent to the guest.
    local_shut: u32,
    /// SHUTDOWN flags received from the guest.
    peer_shut: u32,
    socket_write_shut: bool,
    deadline: Option<Instant>,
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

impl Connection {
    /// A connection a host client asked for: the guest gets a REQUEST.
    /// `initial` holds stream bytes the client sent after its CONNECT line.
    pub fn new_local(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        initial: Vec<u8>,
        now: Instant,
    ) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, State::Connecting);
        conn.pending_request = true;
        conn.rx_pending = initial;
        conn.deadline = Some(now + CONNECT_TIMEOUT);
        conn
    }

    /// A connection the guest asked for (its REQUEST in `hdr`), connected
    /// to a host listener: the guest gets a RESPONSE.
    pub fn new_peer(stream: UnixStream, key: ConnKey, guest_cid: u64, hdr: &Header) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, State::Established);
        conn.credit.update_peer(hdr.buf_alloc, hdr.fwd_cnt);
        conn.pending_response = true;
        conn
    }

    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: State) -> Self {
        Self {
            stream,
            key,
            guest_cid,
            state,
            credit: Credit::default(),
            tx_buf: VecDeque::new(),
            reply: Vec::new(),
            rx_pending: Vec::new(),
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_shutdown: 0,
            readable: true,
            writable: true,
            hup: false,
            local_shut: 0,
            peer_shut: 0,
            socket_write_shut: false,
            deadline: None,
        }
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes the guest may be sent now (its credit).
    pub fn peer_free(&self) -> u32 {
        self.credit.peer_free()
    }

    /// The flow-control invariants, for the fuzz targets: the guest data
    /// buffered here is exactly what the credit counts as received and not
    /// forwarded, and never more than the buffer we advertised.
    pub fn check_credit(&self) -> Result<(), String> {
        let buffered = self.credit.buffered();
        if buffered > self.credit.buf_alloc() {
            return Err(format!(
                "{:?}: {buffered} bytes buffered beyond buf_alloc {}",
                self.key,
                self.credit.buf_alloc()
            ));
        }
        if buffered as usize != self.tx_buf.len() {
            return Err(format!(
                "{:?}: credit counts {buffered} buffered bytes, the buffer holds {}",
                self.key,
                self.tx_buf.len()
            ));
        }
        Ok(())
    }

    /// A header for a packet of this connection, with our credit stamped.
    pub fn header(&mut self, op: u16, flags: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self.credit.stamp();
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.local_shut & SHUTDOWN_SEND == 0
            && self.credit.peer_free() > 0
            && (self.readable || !self.rx_pending.is_empty())
    }

    /// Whether [`Self::next_packet`] may have something for the guest.
    pub fn has_rx_work(&self) -> bool {
        self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.pending_shutdown != 0
            || self.can_send_data()
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        self.credit.update_peer(hdr.buf_alloc, hdr.fwd_cnt);
        if hdr.op == OP_RST {
            return Verdict::Drop;
        }
        match (self.state, hdr.op) {
            (State::Connecting, OP_RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                self.reply = ok_line(self.key.local_port);
                self.flush()
            }
            (State::Connecting, op) => {
                debug!(?self.key, op, "vsock: unexpected packet while connecting");
                Verdict::Reset
            }
            (_, OP_RW) => self.on_rw(payload),
            (_, OP_CREDIT_UPDATE) => Verdict::Keep,
            (_, OP_CREDIT_REQUEST) => {
                self.pending_credit_update = true;
                Verdict::Keep
            }
            (_, OP_SHUTDOWN) => {
                self.peer_shut |= hdr.flags & SHUTDOWN_BOTH;
                if self.peer_shut & SHUTDOWN_RCV != 0 {
                    self.rx_pending.clear();
                }
                self.settle()
            }
            (_, op @ (OP_REQUEST | OP_RESPONSE)) => {
                debug!(?self.key, op, "vsock: unexpected packet on an open connection");
                Verdict::Reset
            }
            (_, op) => {
                debug!(?self.key, op, "vsock: ignoring unknown operation");
                Verdict::Keep
            }
        }
    }

    fn on_rw(&mut self, payload: &[u8]) -> Verdict {
        if self.state == State::Closing || self.peer_shut & SHUTDOWN_SEND != 0 {
            debug!(?self.key, "vsock: guest sent data after its shutdown");
            return Verdict::Reset;
        }
        // MAX_PAYLOAD bounds the length well below u32::MAX.
        let len = payload.len() as u32;
        if !self.credit.can_accept(len) {
            if crate::devices::virtio::guest_errors::VSOCK_CREDIT_VIOLATIONS.record() {
                warn!(?self.key, len, "vsock: guest exceeded its credit");
            }
            return Verdict::Reset;
        }
        self.credit.record_received(len);
        let mut data = payload;
        if self.tx_buf.is_empty() && self.reply.is_empty() && self.writable {
            match self.stream.write(data) {
                Ok(n) => {
                    self.credit.record_forwarded(n as u32);
                    data = &data[n..];
                }
                Err(e) if would_block(&e) || e.kind() == ErrorKind::Interrupted => {
                    self.writable = !would_block(&e);
                }
                Err(e) => {
                    debug!(?self.key, "vsock: writing to the host socket: {e}");
                    return Verdict::Disconnect;
                }
            }
        }
        self.tx_buf.extend(data);
        self.flush()
    }

    /// Writes buffered bytes to the socket as far as it takes them.
    fn flush(&mut self) -> Verdict {
        while self.writable && !self.reply.is_empty() {
            match self.stream.write(&self.reply) {
                Ok(n) => {
                    self.reply.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => self.writable = false,
                Err(e) => {
                    debug!(?self.key, "vsock: writing to the host socket: {e}");
                    return Verdict::Disconnect;
                }
            }
        }
        while self.writable && self.reply.is_empty() && !self.tx_buf.is_empty() {
            let (a, b) = self.tx_buf.as_slices();
            match self
                .stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.credit.record_forwarded(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => self.writable = false,
                Err(e) => {
                    debug!(?self.key, "vsock: writing to the host socket: {e}");
                    return Verdict::Disconnect;
                }
            }
        }
        if self.credit.needs_update() {
            self.pending_credit_update = true;
        }
        self.settle()
    }

    /// Applies the guest's shutdown once its buffered data is out.
    fn settle(&mut self) -> Verdict {
        if self.tx_buf.is_empty() && self.reply.is_empty() {
            if self.peer_shut & SHUTDOWN_SEND != 0 && !self.socket_write_shut {
                self.socket_write_shut = true;
                if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                    debug!(?self.key, "vsock: half-closing the host socket: {e}");
                }
            }
            if self.peer_shut == SHUTDOWN_BOTH {
                return Verdict::Reset;
            }
        }
        if self.peer_shut == SHUTDOWN_BOTH && self.state != State::Closing {
            self.state = State::Closing;
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        Verdict::Keep
    }

    /// Handles readiness of the Unix socket (edge-triggered epoll flags).
    pub fn on_socket_event(&mut self, readable: bool, writable: bool, hup: bool) -> Verdict {
        if readable || hup {
            self.readable = true;
        }
        if hup {
            self.hup = true;
            if self.local_shut & SHUTDOWN_SEND != 0 || self.peer_shut & SHUTDOWN_RCV != 0 {
                // The client is gone and no more of its bytes can reach the
                // guest: EOF was already seen, or the guest takes no more.
                return Verdict::Disconnect;
            }
        }
        if writable {
            self.writable = true;
            return self.flush();
        }
        Verdict::Keep
    }

    /// The deadline passed: the guest did not answer, or did not let us
    /// drain its data.
    pub fn on_timeout(&mut self) -> Verdict {
        debug!(?self.key, state = ?self.state, "vsock: connection timed out");
        Verdict::Reset
    }

    /// Produces the next packet for the guest into `buf` (payload, at most
    /// `cap` bytes): its header and payload length, or `None`.
    pub fn next_packet(
        &mut self,
        cap: usize,
        buf: &mut [u8],
    ) -> Result<Option<(Header, usize)>, Verdict> {
        if self.pending_request {
            self.pending_request = false;
            return Ok(Some((self.control(OP_REQUEST, 0), 0)));
        }
        if self.pending_response {
            self.pending_response = false;
            return Ok(Some((self.control(OP_RESPONSE, 0), 0)));
        }
        if self.can_send_data() {
            let max = cap.min(buf.len()).min(self.credit.peer_free() as usize);
            if max > 0 {
                if let Some(n) = self.read_host(&mut buf[..max])? {
                    self.credit.record_sent(n as u32);
                    return Ok(Some((self.control(OP_RW, 0), n)));
                }
            }
        }
        if self.pending_shutdown != 0 {
            let flags = self.pending_shutdown;
            self.pending_shutdown = 0;
            return Ok(Some((self.control(OP_SHUTDOWN, flags), 0)));
        }
        if self.pending_credit_update {
            return Ok(Some((self.control(OP_CREDIT_UPDATE, 0), 0)));
        }
        Ok(None)
    }

    fn control(&mut self, op: u16, flags: u32) -> Header {
        self.pending_credit_update = false;
        self.header(op, flags)
    }

    /// Reads host bytes for the guest; `None` when there are none now.
    fn read_host(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Verdict> {
        if !self.rx_pending.is_empty() {
            let n = buf.len().min(self.rx_pending.len());
            buf[..n].copy_from_slice(&self.rx_pending[..n]);
            self.rx_pending.drain(..n);
            return Ok(Some(n));
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.readable = false;
                    if self.hup {
                        return Err(Verdict::Disconnect);
                    }
                    // Half-close: the client shut its write side.
                    self.local_shut |= SHUTDOWN_SEND;
                    self.pending_shutdown |= SHUTDOWN_SEND;
                    return Ok(None);
                }
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) => {
                    debug!(?self.key, "vsock: reading the host socket: {e}");
                    return Err(Verdict::Disconnect);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
