//! The device thread: one epoll loop over the kill eventfd, the two queue
//! notifications and the tap. Guest transmit chains are written to the
//! tap as they come; frames read from the tap fill guest receive buffers.
//! While the guest has no receive buffer the tap is left out of the epoll
//! set (a frame already read waits in `pending`), and the receive queue's
//! notification brings it back.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::super::counters::DeviceCounters;
use super::super::worker::WorkerHandle;
use super::super::{ActiveQueue, GuestMemory, Interrupt};
use super::frame::{read_tx, write_rx, MAX_FRAME_LEN, VNET_HDR_LEN};

const KILL_TOKEN: u64 = 0;
const RX_TOKEN: u64 = 1;
const TX_TOKEN: u64 = 2;
const TAP_TOKEN: u64 = 3;

/// Malformed guest chains or failed tap writes logged at warn before
/// switching to debug.
const WARN_BUDGET: u32 = 16;

pub struct Worker {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// None: a detached device (transmit frames dropped, nothing received).
    tap: Option<Arc<File>>,
    kill: EventFd,
    epoll: Epoll,
    tap_armed: bool,
    /// The frame read from the tap and its length, while no receive
    /// buffer was there for it.
    rx_buf: Vec<u8>,
    pending: Option<usize>,
    tx_buf: Vec<u8>,
    warnings_left: u32,
    counters: Arc<DeviceCounters>,
}

impl Worker {
    /// Builds a worker over the receive and transmit queues (in that
    /// order) and `tap`, a non-blocking descriptor that reads and writes
    /// one frame (with its vnet header) per call (None: detached),
    /// counting in `counters`.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: [ActiveQueue; 2],
        tap: Option<Arc<File>>,
        counters: Arc<DeviceCounters>,
    ) -> std::io::Result<Self> {
        let [rx, tx] = queues;
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let mut fds = vec![
            (kill.as_raw_fd(), KILL_TOKEN),
            (rx.notify.as_raw_fd(), RX_TOKEN),
            (tx.notify.as_raw_fd(), TX_TOKEN),
        ];
        if let Some(tap) = &tap {
            fds.push((tap.as_raw_fd(), TAP_TOKEN));
        }
        for (fd, token) in fds {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            mem,
            interrupt,
            rx,
            tx,
            tap_armed: tap.is_some(),
            tap,
            kill,
            epoll,
            rx_buf: vec![0; MAX_FRAME_LEN],
            pending: None,
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            warnings_left: WARN_BUDGET,
            counters,
        })
    }

    /// Starts the thread.
    pub fn spawn(self, name: &str) -> std::io::Result<WorkerHandle> {
        let kill = self.kill.try_clone()?;
        let thread = crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Net,
            format!("net-{name}"),
            move || self.run(),
        )?;
        Ok(WorkerHandle::new("virtio-net", kill, thread))
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 8];
        // The driver may have queued buffers before the device started.
        self.process();
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("virtio-net: epoll_wait failed, stopping the device: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    KILL_TOKEN => {
                        debug!("virtio-net: worker stopping");
                        return;
                    }
                    RX_TOKEN => self.counters.take_notifications(&self.rx.notify),
                    TX_TOKEN => self.counters.take_notifications(&self.tx.notify),
                    _ => {}
                }
            }
            self.process();
        }
    }

    /// Moves frames both ways until neither can go on, then interrupts the
    /// guest once if any buffer was used and the driver wants to know.
    /// Interrupts are skipped while the driver suppresses them for both
    /// queues that were used (VRING_AVAIL_F_NO_INTERRUPT, e.g. while NAPI
    /// polls): each costs a guest exit, dear where kernel mode is emulated.
    pub(super) fn process(&mut self) {
        let tx_used = self.transmit() > 0;
        let rx_used = self.receive() > 0;
        let notify = (tx_used && wants_interrupt(&self.tx.queue, &self.mem))
            | (rx_used && wants_interrupt(&self.rx.queue, &self.mem));
        if notify {
            if let Err(e) = self.interrupt.signal_used_queue() {
                error!("virtio-net: interrupting the guest: {e}");
            }
        }
    }

    /// Writes every guest transmit chain to the tap; returns the chains used.
    fn transmit(&mut self) -> usize {
        let mut count = 0;
        while let Some(chain) = self.tx.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            match read_tx(&self.mem, chain, &mut self.tx_buf) {
                Ok(()) => {
                    let written = self.tap.as_deref().map(|mut tap| tap.write(&self.tx_buf));
                    match written {
                        // A full tap queue drops the frame, as a wire would.
                        Some(Err(e)) => self.warn(format_args!("dropping a transmit frame: {e}")),
                        // Sent (or dropped by a detached device, as unplugged).
                        _ => self.counters.sent(payload_len(self.tx_buf.len())),
                    }
                }
                Err(e) => self.warn(format_args!("dropping a transmit chain: {e}")),
            }
            if let Err(e) = self.tx.queue.add_used(&self.mem, head, 0) {
                warn!("virtio-net: returning a transmit buffer: {e}");
            }
            count += 1;
        }
        count
    }

    /// Fills guest receive buffers with frames from the tap; returns the
    /// chains used.
    fn receive(&mut self) -> usize {
        let Some(tap) = self.tap.clone() else {
            return 0;
        };
        let mut count = 0;
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match (&*tap).read(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.arm_tap(true);
                        return count;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // E.g. the interface was deleted: stop polling it.
                        error!("virtio-net: reading the tap: {e}");
                        self.arm_tap(false);
                        return count;
                    }
                },
            };
            let Some(chain) = self.rx.queue.pop_descriptor_chain(&self.mem) else {
                self.pending = Some(len);
                self.arm_tap(false);
                return count;
            };
            let head = chain.head_index();
            let written = match write_rx(&self.mem, chain, &self.rx_buf[..len]) {
                Ok(n) => {
                    self.counters.received(payload_len(len));
                    n
                }
                Err(e) => {
                    self.warn(format_args!("dropping a receive frame: {e}"));
                    0
                }
            };
            if let Err(e) = self.rx.queue.add_used(&self.mem, head, written) {
                warn!("virtio-net: returning a receive buffer: {e}");
            }
            count += 1;
        }
    }

    /// Puts the tap in (or takes it out of) the epoll set.
    fn arm_tap(&mut self, armed: bool) {
        let Some(tap) = &self.tap else {
            return;
        };
        if armed == self.tap_armed {
            return;
        }
        let op = if armed {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        match self.epoll.ctl(
            op,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TAP_TOKEN),
        ) {
            Ok(()) => self.tap_armed = armed,
            Err(e) => error!("virtio-net: epoll_ctl on the tap: {e}"),
        }
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        if self.warnings_left > 0 {
            self.warnings_left -= 1;
            warn!("virtio-net: {what}");
        } else {
            debug!("virtio-net: {what}");
        }
    }
}

/// Whether the driver leaves interrupts on for `queue`: its avail ring's
/// flags lack VRING_AVAIL_F_NO_INTERRUPT (virtio-queue does not look at
/// that flag; EVENT_IDX is not offered). An unreadable ring: yes.
fn wants_interrupt(queue: &Queue, mem: &GuestMemory) -> bool {
    // Our used-ring writes before the driver's flags read.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    mem.read_obj::<u16>(GuestAddress(queue.avail_ring()))
        .map(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
        .unwrap_or(true)
}

/// The Ethernet frame's length in a tap frame of `len` bytes.
fn payload_len(len: usize) -> u64 {
    len.saturating_sub(VNET_HDR_LEN) as u64
}
