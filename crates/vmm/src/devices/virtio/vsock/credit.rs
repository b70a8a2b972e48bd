//! Per-connection flow control (virtio 1.x §5.10.6.3).
//!
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (the
//! bytes it has consumed from that buffer). A sender may have at most
//! `buf_alloc - (tx_cnt - fwd_cnt)` bytes in flight. All counters are free
//! running `u32`s compared with wrapping arithmetic.

/// Receive buffer the device advertises per connection (guest→host data).
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Credit state of one connection, seen from the device.
#[derive(Debug, Clone)]
pub struct Credit {
    /// Our receive buffer for guest data.
    buf_alloc: u32,
    /// Guest bytes received (the guest's tx_cnt).
    rx_cnt: u32,
    /// Guest bytes forwarded to the Unix socket (our fwd_cnt).
    fwd_cnt: u32,
    /// The fwd_cnt last told to the guest.
    fwd_cnt_sent: u32,
    /// The guest's receive buffer.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed of ours.
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
}

impl Default for Credit {
    fn default() -> Self {
        Self::new(BUF_ALLOC)
    }
}

impl Credit {
    pub fn new(buf_alloc: u32) -> Self {
        Self {
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
        }
    }

    /// Our receive buffer for guest data.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_alloc
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes we may still send to the guest.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest that shrank its buffer or reports a fwd_cnt beyond what we
        // sent gets no credit rather than a huge one.
        if in_flight > self.peer_buf_alloc {
            return 0;
        }
        self.peer_buf_alloc - in_flight
    }

    /// Records `n` payload bytes sent to the guest.
    pub fn record_sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    /// Guest bytes received and not yet forwarded.
    pub fn buffered(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Whether the guest may send `len` more bytes: a guest that exceeds
    /// the credit we gave it breaks the protocol.
    pub fn can_accept(&self, len: u32) -> bool {
        u64::from(self.buffered()) + u64::from(len) <= u64::from(self.buf_alloc)
    }

    /// Records `n` bytes received from the guest.
    pub fn record_received(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Records `n` guest bytes written to the Unix socket.
    pub fn record_forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// Whether the guest should be told about freed buffer space: once a
    /// quarter of the buffer was forwarded since we last said.
    pub fn needs_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= self.buf_alloc / 4
    }

    /// The (buf_alloc, fwd_cnt) to put in an outgoing header; records that
    /// the guest now knows this fwd_cnt.
    pub fn stamp(&mut self) -> (u32, u32) {
        self.fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_credit_until_the_guest_advertises() {
        let c = Credit::default();
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn send_credit_follows_guest_fwd_cnt() {
        let mut c = Credit::default();
        c.update_peer(1000, 0);
        assert_eq!(c.peer_free(), 1000);
        c.record_sent(600);
        assert_eq!(c.peer_free(), 400);
        c.record_sent(400);
        assert_eq!(c.peer_free(), 0);
        c.update_peer(1000, 700);
        assert_eq!(c.peer_free(), 700);
        // The guest shrinking its buffer below what is in flight: no credit.
        c.update_peer(100, 700);
        assert_eq!(c.peer_free(), 0);
        // A bogus fwd_cnt ahead of tx_cnt: no credit either.
        c.update_peer(1000, 5000);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut c = Credit::new(1000);
        c.tx_cnt = u32::MAX - 10;
        c.update_peer(100, u32::MAX - 10);
        c.record_sent(50);
        assert_eq!(c.peer_free(), 50);
        c.rx_cnt = u32::MAX - 5;
        c.fwd_cnt = u32::MAX - 5;
        c.fwd_cnt_sent = c.fwd_cnt;
        c.record_received(300);
        assert_eq!(c.buffered(), 300);
        c.record_forwarded(260);
        assert_eq!(c.buffered(), 40);
        assert!(c.needs_update());
    }

    #[test]
    fn receive_credit_is_enforced() {
        let mut c = Credit::new(1000);
        assert!(c.can_accept(1000));
        assert!(!c.can_accept(1001));
        c.record_received(800);
        assert!(c.can_accept(200));
        assert!(!c.can_accept(201));
        c.record_forwarded(500);
        assert!(c.can_accept(700));
        assert!(!c.can_accept(701));
    }

    #[test]
    fn update_after_a_quarter_of_the_buffer() {
        let mut c = Credit::new(1000);
        c.record_received(1000);
        c.record_forwarded(249);
        assert!(!c.needs_update());
        c.record_forwarded(1);
        assert!(c.needs_update());
        assert_eq!(c.stamp(), (1000, 250));
        assert!(!c.needs_update());
    }
}
