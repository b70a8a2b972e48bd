//! Register state machine tests with a fake device.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::ActivateError;

#[derive(Default)]
struct Seen {
    acked: u64,
    activated_queues: Vec<u16>,
    interrupt: Option<Arc<Interrupt>>,
    resets: u32,
}

struct FakeDevice {
    seen: Arc<Mutex<Seen>>,
    resettable: bool,
    config: [u8; 8],
    counters: Arc<super::super::counters::DeviceCounters>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256, 64]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1
    }
    fn set_acked_features(&mut self, acked: u64) {
        if let Ok(mut s) = self.seen.lock() {
            s.acked = acked;
        }
    }
    fn counters(&self) -> Option<Arc<super::super::counters::DeviceCounters>> {
        Some(self.counters.clone())
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if let Ok(mut s) = self.seen.lock() {
            s.activated_queues = queues.iter().map(|q| q.queue.size()).collect();
            s.interrupt = Some(interrupt);
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        if let Ok(mut s) = self.seen.lock() {
            s.resets += 1;
        }
        self.resettable
    }
    fn shared_memory(&self, id: u32) -> Option<(u64, u64)> {
        (id == 0).then_some((0x1_2345_6000, 0x4000_0000))
    }
}

fn transport(resettable: bool) -> (MmioTransport, Arc<Mutex<Seen>>, EventFd) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dev = FakeDevice {
        seen: seen.clone(),
        resettable,
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        counters: Arc::new(super::super::counters::DeviceCounters::new(
            super::super::counters::DeviceKind::Vsock,
            "vsock",
        )),
    };
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]) else {
        panic!("guest memory");
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        panic!("eventfd");
    };
    let Ok(irq_clone) = irq.try_clone() else {
        panic!("eventfd clone");
    };
    let Ok(t) = MmioTransport::new(mem, Box::new(dev), irq) else {
        panic!("transport");
    };
    (t, seen, irq_clone)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport) {
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, 0xffff_ffff);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, 1);
    wr(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
    wr(t, REG_QUEUE_SEL, index);
    wr(t, REG_QUEUE_NUM, 16);
    wr(t, REG_QUEUE_DESC_LOW, base as u32);
    wr(t, REG_QUEUE_DESC_HIGH, 0);
    wr(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    wr(t, REG_QUEUE_DRIVER_HIGH, 0);
    wr(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    wr(t, REG_QUEUE_DEVICE_HIGH, 0);
    wr(t, REG_QUEUE_READY, 1);
}

#[test]
fn identification_registers() {
    let (mut t, _, _) = transport(true);
    assert_eq!(rd(&mut t, REG_MAGIC), MMIO_MAGIC_VALUE);
    assert_eq!(rd(&mut t, REG_VERSION), 2);
    assert_eq!(rd(&mut t, REG_DEVICE_ID), 19);
    assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
    wr(&mut t, REG_QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 64);
    wr(&mut t, REG_QUEUE_SEL, 3);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
}

#[test]
fn shared_memory_regions_read_back_by_selector() {
    let (mut t, _, _) = transport(true);
    wr(&mut t, 0x0ac, 0);
    assert_eq!(rd(&mut t, 0x0b0), 0x4000_0000, "length, low");
    assert_eq!(rd(&mut t, 0x0b4), 0, "length, high");
    assert_eq!(rd(&mut t, 0x0b8), 0x2345_6000, "base, low");
    assert_eq!(rd(&mut t, 0x0bc), 1, "base, high");
    // No region 1: a length of all ones.
    wr(&mut t, 0x0ac, 1);
    assert_eq!(rd(&mut t, 0x0b0), u32::MAX);
    assert_eq!(rd(&mut t, 0x0b4), u32::MAX);
    assert_eq!(rd(&mut t, 0x0b8), 0);
}

#[test]
fn features_are_paged_and_masked() {
    let (mut t, seen, _) = transport(true);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), (1 << 29) | 1);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
    negotiate(&mut t);
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    let acked = seen.lock().map(|s| s.acked).unwrap_or(0);
    // Bits the device never offered are dropped.
    assert_eq!(acked, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1);
}

#[test]
fn features_ok_refused_without_version_1() {
    let (mut t, _, _) = transport(true);
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, REG_DRIVER_FEATURES, 1);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn driver_ok_activates_ready_queues() {
    let (mut t, seen, _) = transport(true);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    wr(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    let queues = seen
        .lock()
        .map(|s| s.activated_queues.clone())
        .unwrap_or_default();
    assert_eq!(queues, vec![16, 16]);
    // Registers still read back after the device took the queues.
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
    // Queue writes after DRIVER_OK are ignored.
    wr(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
}

#[test]
fn invalid_queue_sets_needs_reset() {
    let (mut t, seen, _) = transport(true);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10_0000); // beyond guest memory
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert!(seen.lock().map(|s| s.interrupt.is_none()).unwrap_or(false));
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, seen, irq) = transport(true);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    let interrupt = seen.lock().ok().and_then(|s| s.interrupt.clone());
    let Some(interrupt) = interrupt else {
        panic!("device not activated");
    };
    assert!(interrupt.signal_used_queue().is_ok());
    assert!(interrupt.signal_config_change().is_ok());
    assert_eq!(irq.read().ok(), Some(2));
    // The transport's interrupt counts in the device's counters.
    let counted = t.counters().map(|c| c.snapshot().interrupts);
    assert_eq!(counted, Some(2));
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 3);
    wr(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 2);
    wr(&mut t, REG_INTERRUPT_ACK, 2);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn notify_write_reaches_the_eventfd() {
    let (mut t, _, _) = transport(true);
    wr(&mut t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().ok(), Some(1));
    assert!(t.queue_evts()[0].read().is_err(), "nothing on queue 0");
    wr(&mut t, REG_QUEUE_NOTIFY, 9); // no such queue: ignored
}

#[test]
fn reset_clears_state_and_resets_device() {
    let (mut t, seen, _) = transport(true);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert_eq!(seen.lock().map(|s| s.resets).unwrap_or(0), 1);
    wr(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    // A reset before activation does not bother the device.
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(seen.lock().map(|s| s.resets).unwrap_or(0), 1);
}

#[test]
fn unresettable_device_is_marked() {
    let (mut t, _, _) = transport(false);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), STATUS_NEEDS_RESET);
    negotiate(&mut t);
    assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn config_space_is_delegated() {
    let (mut t, _, _) = transport(true);
    let mut d = [0u8; 2];
    t.read(CONFIG_SPACE + 3, &mut d);
    assert_eq!(d, [4, 5]);
}

#[test]
fn misaligned_register_access_is_harmless() {
    let (mut t, _, _) = transport(true);
    let mut d = [0xffu8; 2];
    t.read(REG_MAGIC, &mut d);
    assert_eq!(d, [0, 0]);
    t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
}

/// A guest hammering the queue registers with invalid values (each makes
/// virtio-queue log an error through the `log` crate) and cycling
/// DRIVER_OK over an invalid queue: the bounded logger keeps the output
/// small and counts what it dropped.
#[test]
fn register_storm_logs_stay_bounded() {
    use crate::logging::test_util::{bridge_log, SharedBuf};
    use crate::logging::{subscriber, LogLimits};

    bridge_log();
    let buf = SharedBuf::default();
    let limits = LogLimits::default();
    let (sub, handle) = subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        &limits,
        buf.clone(),
    );
    const WRITES: u32 = 100_000;
    tracing::subscriber::with_default(sub, || {
        let (mut t, _, _) = transport(true);
        negotiate(&mut t);
        wr(&mut t, REG_QUEUE_SEL, 0);
        for i in 0..WRITES {
            // Not a power of two; a misaligned descriptor table.
            wr(&mut t, REG_QUEUE_NUM, 3);
            wr(&mut t, REG_QUEUE_DESC_LOW, 0x1001 + 2 * (i % 8));
        }
        // Reset, renegotiate and DRIVER_OK over a queue outside memory.
        for _ in 0..1000 {
            wr(&mut t, REG_STATUS, 0);
            negotiate(&mut t);
            setup_queue(&mut t, 0, 0x10_0000);
            wr(
                &mut t,
                REG_STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        }
    });
    handle.flush();
    let text = buf.contents();
    eprintln!(
        "register storm: {} log bytes in {} lines, {} messages suppressed\n{text}",
        text.len(),
        text.lines().count(),
        handle.suppressed()
    );
    assert!(text.len() < 16 << 10, "{}", text.len());
    assert_eq!(handle.bytes_dropped(), 0);
    assert!(text.contains("virtio queue with invalid size"), "{text}");
    // Each site logs 10 and counts the rest: at least the two 100k storms.
    assert!(handle.suppressed() >= 2 * u64::from(WRITES - 10));
    assert!(
        text.contains(&format!("{} messages from virtio_queue", WRITES - 10)),
        "{text}"
    );
}

/// Found by the `mmio` fuzz target: a guest that clears FEATURES_OK and
/// DRIVER_OK without a reset leaves the device running; a restore of that
/// state restarted the device without telling it its features.
#[test]
fn restore_of_a_running_device_tells_its_features() {
    let (mut t, _seen, _irq) = transport(true);
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x1_0000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    let Ok(state) = t.snapshot(crate::snapshot::DeviceState::Vsock { cid: 3 }) else {
        panic!("snapshot");
    };
    assert!(state.activated && state.status & STATUS_FEATURES_OK == 0);
    let (mut fresh, seen, _irq) = transport(true);
    assert_eq!(fresh.restore(&state), Ok(true));
    assert!(fresh.activate_restored().is_ok());
    let Ok(seen) = seen.lock() else {
        panic!("lock");
    };
    assert_eq!(seen.acked, state.acked_features);
    assert_ne!(seen.acked & VIRTIO_F_VERSION_1, 0);
}
