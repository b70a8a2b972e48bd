//! The Unix-socket side of hybrid vsock: the listener host clients connect
//! to, their `CONNECT` handshakes, the connections to host listeners at
//! `<uds_path>_<port>`, and which connection gets the next rx buffer.
//!
//! The muxer owns the epoll set of all its sockets; the worker adds its
//! own descriptors (queue eventfds, kill eventfd) with tokens below
//! [`SOCKET_TOKEN_BASE`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, Connection, Verdict};
use super::handshake::{parse_connect, MAX_LINE};
use super::packet::{
    Header, RxBuffer, HOST_CID, MAX_PAYLOAD, OP_REQUEST, OP_RST, OP_SHUTDOWN, SHUTDOWN_BOTH,
    TYPE_STREAM,
};

/// Epoll token of the Unix listener.
pub const LISTENER_TOKEN: u64 = 8;
/// Sockets use `SOCKET_TOKEN_BASE + fd` as their epoll token.
pub const SOCKET_TOKEN_BASE: u64 = 16;
/// First host-side port handed to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// Most connections served at once; each may buffer BUF_ALLOC bytes.
pub const MAX_CONNECTIONS: usize = 512;
/// Packets waiting for rx buffers beyond which guest tx is paused.
pub const MAX_CONTROL_BACKLOG: usize = 256;
/// How long a host client may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A host client that has not finished its `CONNECT` line.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    clients: HashMap<RawFd, Client>,
    /// Connections that may have a packet for the guest, in turn.
    rx_ready: VecDeque<ConnKey>,
    in_rx_ready: HashSet<ConnKey>,
    /// Packets of no live connection (RST, the SHUTDOWN before it).
    control: VecDeque<Header>,
    next_port: u32,
    scratch: Vec<u8>,
}

fn socket_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// Serves host clients of `listener` (bound at `uds_path`, non-blocking).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            clients: HashMap::new(),
            rx_ready: VecDeque::new(),
            in_rx_ready: HashSet::new(),
            control: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            scratch: vec![0; MAX_PAYLOAD],
        })
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// The live connections (for the fuzz targets' invariant checks).
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values()
    }

    /// The bookkeeping invariants, for the fuzz targets: every socket maps
    /// to its live connection and back, and the limits hold.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.conns.len() > MAX_CONNECTIONS || self.clients.len() > MAX_CONNECTIONS {
            return Err(format!(
                "{} connections, {} pending clients: over {MAX_CONNECTIONS}",
                self.conns.len(),
                self.clients.len()
            ));
        }
        if self.by_fd.len() != self.conns.len() {
            return Err(format!(
                "{} sockets mapped for {} connections",
                self.by_fd.len(),
                self.conns.len()
            ));
        }
        for (fd, key) in &self.by_fd {
            match self.conns.get(key) {
                Some(conn) if conn.stream().as_raw_fd() == *fd && conn.key() == *key => {}
                _ => {
                    return Err(format!(
                        "socket {fd} maps to {key:?}, not a live connection"
                    ))
                }
            }
        }
        for conn in self.conns.values() {
            conn.check_credit()?;
        }
        Ok(())
    }

    /// Stops or restarts accepting host clients; while stopped they wait
    /// in the listener's backlog.
    pub fn set_accepting(&mut self, on: bool) -> std::io::Result<()> {
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        self.epoll.ctl(
            op,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )
    }

    /// Whether the guest has packets waiting for rx buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// Whether guest tx should pause until rx buffers drain the backlog.
    pub fn control_backlog_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL_BACKLOG
    }

    /// The earliest handshake or connection deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().map(|c| c.deadline);
        let conns = self.conns.values().filter_map(Connection::deadline);
        clients.chain(conns).min()
    }

    /// Handles an epoll event with one of the muxer's tokens.
    pub fn handle_event(&mut self, token: u64, events: EventSet, now: Instant) {
        if token == LISTENER_TOKEN {
            self.accept_clients(now);
            return;
        }
        let Some(fd) = token
            .checked_sub(SOCKET_TOKEN_BASE)
            .and_then(|fd| RawFd::try_from(fd).ok())
        else {
            return;
        };
        if self.clients.contains_key(&fd) {
            self.read_handshake(fd, now);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let readable = events.intersects(EventSet::IN | EventSet::READ_HANG_UP);
        let writable = events.contains(EventSet::OUT);
        let hup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let verdict = conn.on_socket_event(readable, writable, hup);
        self.apply(key, verdict);
    }

    /// Handles a packet the guest sent.
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            debug!(
                src_cid = hdr.src_cid,
                "vsock: dropping a packet with a foreign source CID"
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            debug!(
                dst_cid = hdr.dst_cid,
                type_ = hdr.type_,
                "vsock: refusing a packet"
            );
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.op == OP_REQUEST {
            if self.conns.contains_key(&key) {
                debug!(?key, "vsock: REQUEST for an open connection");
                self.apply(key, Verdict::Reset);
                self.reply_rst(hdr);
            } else {
                self.connect_to_host(hdr, key);
            }
            return;
        }
        match self.conns.get_mut(&key) {
            Some(conn) => {
                let verdict = conn.on_guest_packet(hdr, payload);
                self.apply(key, verdict);
            }
            None => self.reply_rst(hdr),
        }
    }

    /// Fills `rx` with the next packet for the guest; returns the bytes
    /// written, or `None` (and leaves the buffer unused) if there is none.
    pub fn fill_rx(&mut self, rx: RxBuffer<'_>) -> Option<u32> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(write_rx(rx, hdr, &[]));
        }
        let cap = rx.payload_capacity();
        let mut deferred = Vec::new();
        let mut out = None;
        while let Some(key) = self.rx_ready.pop_front() {
            self.in_rx_ready.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            match conn.next_packet(cap, &mut self.scratch) {
                Ok(Some((hdr, n))) => {
                    if conn.has_rx_work() {
                        self.schedule(key);
                    }
                    out = Some((hdr, n));
                    break;
                }
                Ok(None) => {
                    // Work left means it did not fit this buffer.
                    if conn.has_rx_work() {
                        deferred.push(key);
                    }
                }
                Err(verdict) => {
                    self.apply(key, verdict);
                    if !self.control.is_empty() {
                        break;
                    }
                }
            }
        }
        for key in deferred {
            self.schedule(key);
        }
        if let Some((hdr, n)) = out {
            return Some(write_rx(rx, hdr, &self.scratch[..n]));
        }
        let hdr = self.control.pop_front()?;
        Some(write_rx(rx, hdr, &[]))
    }

    /// Expires handshakes and connections whose deadline passed.
    pub fn handle_timeouts(&mut self, now: Instant) {
        self.clients.retain(|fd, c| {
            let keep = c.deadline > now;
            if !keep {
                debug!(fd, "vsock: host client sent no CONNECT line in time");
            }
            keep
        });
        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline().is_some_and(|d| d <= now))
            .map(Connection::key)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.on_timeout();
                self.apply(key, verdict);
            }
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        if self.in_rx_ready.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    /// Acts on a connection's verdict.
    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {
                if self.conns.get(&key).is_some_and(Connection::has_rx_work) {
                    self.schedule(key);
                }
            }
            Verdict::Reset => {
                if let Some(mut conn) = self.remove(key) {
                    let rst = conn.header(OP_RST, 0);
                    self.control.push_back(rst);
                }
            }
            Verdict::Disconnect => {
                if let Some(mut conn) = self.remove(key) {
                    let shutdown = conn.header(OP_SHUTDOWN, SHUTDOWN_BOTH);
                    let rst = conn.header(OP_RST, 0);
                    self.control.push_back(shutdown);
                    self.control.push_back(rst);
                }
            }
            Verdict::Drop => {
                self.remove(key);
            }
        }
    }

    fn remove(&mut self, key: ConnKey) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        self.in_rx_ready.remove(&key);
        let fd = conn.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            debug!("vsock: removing a socket from epoll: {e}");
        }
        debug!(?key, "vsock: connection closed");
        Some(conn)
    }

    /// Answers a packet of no connection with RST.
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        self.control.push_back(Header {
            src_cid: hdr.dst_cid,
            dst_cid: hdr.src_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    fn register(&self, stream: &UnixStream) -> std::io::Result<()> {
        let fd = stream.as_raw_fd();
        // Descriptors are non-negative.
        let token = SOCKET_TOKEN_BASE + fd as u64;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(socket_events(), token),
        )
    }

    /// The guest connects to host port `hdr.dst_port`: connect to the host
    /// listener `<uds_path>_<port>`, or refuse with RST.
    fn connect_to_host(&mut self, hdr: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!(?key, "vsock: too many connections, refusing the guest");
            self.reply_rst(hdr);
            return;
        }
        let path = listener_path(&self.uds_path, hdr.dst_port);
        // Never a blocking connect on the device thread: a host listener
        // with a full backlog would stall every connection of the VM,
        // the agent's included (review L5); EAGAIN is a refusal.
        let stream = crate::unix_socket::connect_nonblocking(&path).and_then(|s| {
            self.register(&s)?;
            Ok(s)
        });
        match stream {
            Ok(stream) => {
                debug!(?key, "vsock: guest connected to {}", path.display());
                self.by_fd.insert(stream.as_raw_fd(), key);
                let conn = Connection::new_peer(stream, key, self.guest_cid, hdr);
                self.conns.insert(key, conn);
                self.schedule(key);
            }
            Err(e) => {
                debug!(?key, "vsock: no host listener at {}: {e}", path.display());
                self.reply_rst(hdr);
            }
        }
    }

    fn accept_clients(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CONNECTIONS {
                        warn!("vsock: too many pending host clients, refusing one");
                        continue;
                    }
                    let registered = stream
                        .set_nonblocking(true)
                        .and_then(|()| self.register(&stream));
                    if let Err(e) = registered {
                        warn!("vsock: setting up a host client: {e}");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        fd,
                        Client {
                            stream,
                            line: Vec::with_capacity(MAX_LINE),
                            deadline: now + HANDSHAKE_TIMEOUT,
                        },
                    );
                    // Its first bytes may have raced the registration.
                    self.read_handshake(fd, now);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("vsock: accepting a host client: {e}");
                    return;
                }
            }
        }
    }

    fn read_handshake(&mut self, fd: RawFd, now: Instant) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; MAX_LINE];
        let parsed = loop {
            let room = MAX_LINE.saturating_sub(client.line.len()).max(1);
            match client.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    debug!(fd, "vsock: host client left before CONNECT");
                    self.clients.remove(&fd);
                    return;
                }
                Ok(n) => {
                    client.line.extend_from_slice(&chunk[..n]);
                    match parse_connect(&client.line) {
                        Ok(Some(connect)) => break connect,
                        Ok(None) => {}
                        Err(e) => {
                            warn!(fd, "vsock: bad handshake from a host client: {e}");
                            self.clients.remove(&fd);
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(fd, "vsock: reading a host client: {e}");
                    self.clients.remove(&fd);
                    return;
                }
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!("vsock: too many connections, refusing a host client");
            return;
        }
        let key = ConnKey {
            local_port: self.allocate_port(),
            peer_port: parsed.port,
        };
        debug!(?key, "vsock: host client connects to the guest");
        let initial = client.line[parsed.consumed..].to_vec();
        let conn = Connection::new_local(client.stream, key, self.guest_cid, initial, now);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.schedule(key);
    }

    /// A host port no live connection uses.
    fn allocate_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }
}

/// The host listener for guest connections to `port`: `<uds_path>_<port>`.
pub fn listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

fn write_rx(rx: RxBuffer<'_>, hdr: Header, payload: &[u8]) -> u32 {
    match rx.write(hdr, payload) {
        Ok(n) => n,
        Err(e) => {
            warn!("vsock: writing an rx packet: {e}");
            0
        }
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
