//! The virtio-net [`VirtioDevice`]: feature bits, configuration space
//! (MAC, MTU) and the worker's lifetime.

use std::fs::File;
use std::sync::Arc;

use tracing::debug;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::worker::WorkerHandle;
use super::super::VirtioDevice;
use super::super::{read_config_bytes, ActivateError, ActiveQueue, GuestMemory, Interrupt};
use super::config::{config_space, MacAddr, NetBackend, NetConfig, CONFIG_LEN};
use super::tap::{Tap, TapError};
use super::worker::Worker;

/// The virtio device ID of a network card.
pub const NET_DEVICE_TYPE: u32 = 1;
/// Maximum size of each queue (receive, then transmit).
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];

/// VIRTIO_NET_F_MTU: the configuration space holds the MTU.
const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// VIRTIO_NET_F_MAC: the configuration space holds the MAC address.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;

/// A virtio-net device on a tap (or detached: no host side).
#[derive(Debug)]
pub struct VirtioNet {
    /// None: detached (frames sent are dropped, none arrive).
    tap: Option<Arc<File>>,
    tap_name: String,
    mac: MacAddr,
    mtu: Option<u16>,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    worker: Option<WorkerHandle>,
    counters: Arc<DeviceCounters>,
}

impl VirtioNet {
    /// Opens or adopts the tap of `config` and builds the device.
    pub fn new(config: &NetConfig) -> Result<Self, TapError> {
        let tap = match &config.backend {
            NetBackend::Fd(fd) => Tap::from_inherited_fd(*fd)?,
            NetBackend::TapName(name) => Tap::open(name)?,
            NetBackend::Detached => return Ok(Self::detached(config.mac, config.mtu)),
        };
        Ok(Self::with_tap(
            tap.name().to_string(),
            tap.into_file(),
            config.mac,
            config.mtu,
        ))
    }

    /// A device without a host side: what the guest sends is dropped,
    /// nothing arrives (a template's VM; its copies get real taps).
    pub fn detached(mac: MacAddr, mtu: Option<u16>) -> Self {
        Self {
            tap: None,
            tap_name: "detached".into(),
            mac,
            mtu,
            config: config_space(mac, mtu),
            acked_features: 0,
            worker: None,
            counters: Arc::new(DeviceCounters::new(DeviceKind::Net, "detached")),
        }
    }

    /// Builds the device over `tap`, a non-blocking descriptor carrying
    /// one frame (with its 12-byte vnet header) per read or write.
    pub fn with_tap(tap_name: String, tap: File, mac: MacAddr, mtu: Option<u16>) -> Self {
        Self {
            tap: Some(Arc::new(tap)),
            counters: Arc::new(DeviceCounters::new(DeviceKind::Net, &tap_name)),
            tap_name,
            mac,
            mtu,
            config: config_space(mac, mtu),
            acked_features: 0,
            worker: None,
        }
    }

    /// The tap's interface name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The advertised MTU.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        NET_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        (1 << VIRTIO_F_VERSION_1) | VIRTIO_NET_F_MAC | mtu
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        Some(self.counters.clone())
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only legacy drivers write the MAC here; it stays as configured.
        debug!(
            offset,
            len = data.len(),
            "virtio-net: ignoring a config write"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let queues: [ActiveQueue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 2, got })?;
        self.stop_worker();
        let worker = Worker::new(
            mem,
            interrupt,
            queues,
            self.tap.clone(),
            self.counters.clone(),
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(
            worker
                .spawn(&self.tap_name)
                .map_err(ActivateError::Worker)?,
        );
        debug!(tap = %self.tap_name, mac = %self.mac, "virtio-net: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.acked_features = 0;
        true
    }

    /// The MAC and MTU the guest driver read at probe time: a restore
    /// needs a device with the same MTU (the MAC may differ; the guest
    /// keeps the saved one until it is told another).
    fn snapshot_state(&self) -> Result<crate::snapshot::DeviceState, String> {
        Ok(crate::snapshot::DeviceState::Net {
            mac: self.mac.to_string(),
            mtu: self.mtu,
        })
    }

    /// The worker returns every chain it takes before it takes the next;
    /// a frame read from the tap and waiting for a receive buffer is
    /// dropped, as a wire would.
    fn quiesce(&mut self) {
        self.stop_worker();
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
