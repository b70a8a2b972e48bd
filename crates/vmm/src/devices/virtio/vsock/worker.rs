//! The device thread: one epoll loop over the queue notifications, the
//! kill eventfd and the muxer's sockets. Guest tx packets go to the muxer;
//! the muxer's packets fill guest rx buffers.

use crate::devices::virtio::worker::WorkerHandle;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};
use virtio_queue::{QueueOwnedT, QueueT, Writer};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::super::counters::DeviceCounters;
use super::super::{ActiveQueue, GuestMemory, Interrupt};
use super::muxer::Muxer;
use super::packet::{read_packet, Header, RxBuffer, MAX_PAYLOAD};

const KILL_TOKEN: u64 = 0;
const RX_TOKEN: u64 = 1;
const TX_TOKEN: u64 = 2;
const EVENT_TOKEN: u64 = 3;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Malformed guest packets logged at warn before switching to debug.
const WARN_BUDGET: u32 = 16;

pub struct Worker {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    rx: ActiveQueue,
    tx: ActiveQueue,
    event: ActiveQueue,
    kill: EventFd,
    muxer: Muxer,
    payload: Vec<u8>,
    warnings_left: u32,
    /// A TRANSPORT_RESET event still to give the guest.
    pending_reset_event: bool,
    /// Host clients wait until the guest has handled the reset (it kicks
    /// the event queue when it re-posts the buffer), or until this time:
    /// a connection accepted earlier would be reset with the old ones.
    reset_ack_deadline: Option<Instant>,
    /// When the guest is interrupted again while the reset is unhandled.
    reset_nudge_at: Option<Instant>,
    counters: Arc<DeviceCounters>,
}

/// How often the guest is interrupted again while it has not handled a
/// TRANSPORT_RESET: an interrupt raised while a restored guest was not
/// yet running can be lost, and then the guest never looks.
const RESET_NUDGE_INTERVAL: Duration = Duration::from_millis(200);

/// How long host clients wait for the guest to handle a TRANSPORT_RESET.
const RESET_ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl Worker {
    /// Builds a worker over the rx, tx and event queues (in that order),
    /// counting in `counters`.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: [ActiveQueue; 3],
        muxer: Muxer,
        transport_reset: bool,
        counters: Arc<DeviceCounters>,
    ) -> std::io::Result<Self> {
        let [rx, tx, event] = queues;
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = muxer.epoll();
        for (fd, token) in [
            (kill.as_raw_fd(), KILL_TOKEN),
            (rx.notify.as_raw_fd(), RX_TOKEN),
            (tx.notify.as_raw_fd(), TX_TOKEN),
            (event.notify.as_raw_fd(), EVENT_TOKEN),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let mut muxer = muxer;
        if transport_reset {
            muxer.set_accepting(false)?;
        }
        Ok(Self {
            mem,
            interrupt,
            rx,
            tx,
            event,
            kill,
            muxer,
            payload: Vec::with_capacity(MAX_PAYLOAD),
            warnings_left: WARN_BUDGET,
            pending_reset_event: transport_reset,
            reset_ack_deadline: None,
            reset_nudge_at: None,
            counters,
        })
    }

    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<WorkerHandle> {
        let kill = self.kill.try_clone()?;
        let thread = crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Vsock,
            "vsock".into(),
            move || self.run(),
        )?;
        Ok(WorkerHandle::new("vsock", kill, thread))
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        if self.pending_reset_event {
            // A kick already pending came before the event exists: it is
            // not the guest's answer to it (the test saw clients served
            // before the guest had handled the reset).
            self.counters.take_notifications(&self.event.notify);
            self.send_reset_event();
        }
        // The driver may have queued packets before the device started.
        self.process();
        loop {
            let deadline = [
                self.muxer.next_deadline(),
                self.reset_ack_deadline,
                self.reset_nudge_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Round up so the deadline has passed on wake-up.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
            };
            let n = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => 0,
                Err(e) => {
                    error!("vsock: epoll_wait failed, stopping the device: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for ev in &events[..n] {
                match ev.data() {
                    KILL_TOKEN => {
                        debug!("vsock: worker stopping");
                        return;
                    }
                    RX_TOKEN => self.counters.take_notifications(&self.rx.notify),
                    TX_TOKEN => self.counters.take_notifications(&self.tx.notify),
                    EVENT_TOKEN => {
                        self.counters.take_notifications(&self.event.notify);
                        if self.pending_reset_event {
                            self.send_reset_event();
                        } else if self.reset_ack_deadline.is_some() {
                            debug!("vsock: the guest handled the transport reset");
                            self.accept_again();
                        }
                    }
                    token => self.muxer.handle_event(token, ev.event_set(), now),
                }
            }
            let now = Instant::now();
            if self.reset_nudge_at.is_some_and(|d| now >= d) {
                self.reset_nudge_at = Some(now + RESET_NUDGE_INTERVAL);
                if let Err(e) = self.interrupt.signal_used_queue() {
                    error!("vsock: interrupting the guest: {e}");
                }
            }
            if self.reset_ack_deadline.is_some_and(|d| now >= d) {
                warn!("vsock: the guest did not acknowledge the transport reset; accepting anyway");
                self.accept_again();
            }
            self.muxer.handle_timeouts(now);
            self.process();
        }
    }

    /// Moves packets both ways until neither direction makes progress,
    /// then interrupts the guest once if any buffer was used.
    pub(super) fn process(&mut self) {
        let mut used = false;
        loop {
            let tx = self.process_tx();
            let rx = self.process_rx();
            if tx == 0 && rx == 0 {
                break;
            }
            used = true;
        }
        if used {
            if let Err(e) = self.interrupt.signal_used_queue() {
                error!("vsock: interrupting the guest: {e}");
            }
        }
    }

    /// Handles guest→host packets; returns how many chains were used.
    fn process_tx(&mut self) -> usize {
        let mut count = 0;
        while !self.muxer.control_backlog_full() {
            let Some(chain) = self.tx.queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_packet(&self.mem, chain, &mut self.payload) {
                Ok(hdr) => {
                    self.counters.sent(self.payload.len() as u64);
                    self.muxer.handle_guest_packet(&hdr, &self.payload);
                }
                Err(e) => {
                    if self.warnings_left > 0 {
                        self.warnings_left -= 1;
                        warn!("vsock: dropping a malformed tx packet: {e}");
                    } else {
                        debug!("vsock: dropping a malformed tx packet: {e}");
                    }
                }
            }
            if let Err(e) = self.tx.queue.add_used(&self.mem, head, 0) {
                warn!("vsock: returning a tx buffer: {e}");
            }
            count += 1;
        }
        count
    }

    /// Fills guest rx buffers; returns how many chains were used.
    fn process_rx(&mut self) -> usize {
        let mut count = 0;
        while self.muxer.has_rx_work() {
            let Some(chain) = self.rx.queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match RxBuffer::new(&self.mem, chain) {
                Ok(buf) => match self.muxer.fill_rx(buf) {
                    Some(n) => {
                        if n > 0 {
                            let payload = (n as usize).saturating_sub(Header::SIZE);
                            self.counters.received(payload as u64);
                        }
                        n
                    }
                    None => {
                        self.rx.queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    if self.warnings_left > 0 {
                        self.warnings_left -= 1;
                        warn!("vsock: unusable rx buffer: {e}");
                    }
                    0
                }
            };
            if let Err(e) = self.rx.queue.add_used(&self.mem, head, written) {
                warn!("vsock: returning an rx buffer: {e}");
            }
            count += 1;
        }
        count
    }
}

impl Worker {
    /// Tells the guest its connections are gone (after a restore): a
    /// `struct virtio_vsock_event` with id VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    /// in the first event buffer; if none is posted yet, on the next kick.
    fn send_reset_event(&mut self) {
        let Some(chain) = self.event.queue.pop_descriptor_chain(&self.mem) else {
            return;
        };
        let head = chain.head_index();
        let written = match Writer::new(&self.mem, chain) {
            Ok(mut w) => match w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()) {
                Ok(()) => 4,
                Err(e) => {
                    warn!("vsock: writing the transport reset event: {e}");
                    0
                }
            },
            Err(e) => {
                warn!("vsock: unusable event buffer: {e}");
                0
            }
        };
        self.pending_reset_event = false;
        self.reset_ack_deadline = Some(Instant::now() + RESET_ACK_TIMEOUT);
        self.reset_nudge_at = Some(Instant::now() + RESET_NUDGE_INTERVAL);
        if let Err(e) = self.event.queue.add_used(&self.mem, head, written) {
            warn!("vsock: returning an event buffer: {e}");
        }
        if let Err(e) = self.interrupt.signal_used_queue() {
            error!("vsock: interrupting the guest: {e}");
        }
    }
}

impl Worker {
    fn accept_again(&mut self) {
        self.reset_ack_deadline = None;
        self.reset_nudge_at = None;
        if let Err(e) = self.muxer.set_accepting(true) {
            error!("vsock: watching the host socket again: {e}");
        }
    }
}
