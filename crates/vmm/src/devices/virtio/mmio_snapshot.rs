//! Saving and restoring a virtio-mmio transport and its queues.
//!
//! Ring positions: once the device is quiesced every chain it popped has
//! been returned, so the next chain to take and the next used slot are
//! both the used ring's `idx` in guest memory. That holds for every device
//! here (each returns a chain before it pops the next); a device that
//! kept chains across calls would have to save them itself.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::MmioTransport;
use crate::snapshot::{DeviceState, MmioState, QueueSnapshot};

impl MmioTransport {
    fn ring_idx(&self, ring: u64) -> Result<u16, String> {
        self.mem
            .read_obj::<u16>(GuestAddress(ring.wrapping_add(2)))
            .map_err(|e| format!("reading a ring index at {ring:#x}: {e}"))
    }

    /// Whether this transport can be saved, and how to recreate its
    /// device. Changes nothing.
    pub fn snapshot_check(&self) -> Result<DeviceState, String> {
        if self.broken {
            return Err("the device is broken (NEEDS_RESET)".into());
        }
        let device = self.device.snapshot_state()?;
        if let DeviceState::Fs { tag } = &device {
            for q in self.queues.iter().filter(|q| q.ready()) {
                if self.ring_idx(q.avail_ring())? != 0 || self.ring_idx(q.used_ring())? != 0 {
                    return Err(format!(
                        "virtio-fs {tag:?}: the guest has used the share (mounted it); \
                         a template must be taken before the share is mounted"
                    ));
                }
            }
        }
        Ok(device)
    }

    /// Stops the device and saves the transport. The device does no more
    /// work afterwards: the VM can only be shut down.
    pub fn snapshot(&mut self, device: DeviceState) -> Result<MmioState, String> {
        self.device.quiesce();
        let mut queues = Vec::new();
        for q in &self.queues {
            let next = if self.activated && q.ready() {
                self.ring_idx(q.used_ring())?
            } else {
                0
            };
            queues.push(QueueSnapshot {
                max_size: q.max_size(),
                size: q.size(),
                ready: q.ready(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                next_avail: next,
                next_used: next,
                event_idx: q.event_idx_enabled(),
            });
        }
        Ok(MmioState {
            device_type: self.device.device_type(),
            device,
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_select: self.queue_select,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            activated: self.activated,
            queues,
        })
    }

    /// Loads a saved transport into this new one (same device type).
    /// Returns whether the device was running: then call
    /// [`Self::activate_restored`] once the vCPUs exist (a device may
    /// interrupt the guest as soon as it starts, and an interrupt sent
    /// before the vCPUs' local APICs are restored is lost).
    pub fn restore(&mut self, state: &MmioState) -> Result<bool, String> {
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "saved device type {} restored onto device type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            if s.max_size != q.max_size() {
                return Err(format!(
                    "queue maximum size {} saved, the device has {}",
                    s.max_size,
                    q.max_size()
                ));
            }
            let mut fresh = Queue::new(s.max_size).map_err(|e| format!("queue: {e:?}"))?;
            fresh.set_size(s.size);
            fresh.set_desc_table_address(
                Some(s.desc_table as u32),
                Some((s.desc_table >> 32) as u32),
            );
            fresh.set_avail_ring_address(
                Some(s.avail_ring as u32),
                Some((s.avail_ring >> 32) as u32),
            );
            fresh.set_used_ring_address(Some(s.used_ring as u32), Some((s.used_ring >> 32) as u32));
            fresh.set_event_idx(s.event_idx);
            fresh.set_ready(s.ready);
            fresh.set_next_avail(s.next_avail);
            fresh.set_next_used(s.next_used);
            *q = fresh;
        }
        self.acked_features = state.acked_features & self.device.avail_features();
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_select = state.queue_select;
        self.status = state.status;
        self.interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        // A device that ran was told its features, even if the guest
        // cleared FEATURES_OK afterwards without a reset (found by the
        // `mmio` fuzz target: the device restarted knowing none).
        if state.status & super::STATUS_FEATURES_OK != 0 || state.activated {
            self.device.set_acked_features(self.acked_features);
        }
        self.device.prepare_restore();
        Ok(state.activated)
    }

    /// Starts the device of a restored transport with its saved queues.
    pub fn activate_restored(&mut self) -> Result<(), String> {
        self.activate()
    }
}
