//! Saving a running virtio-net device with its transport and restoring it
//! onto a new tap: queues, features and ring positions carry over, frames
//! flow on the new tap only. Also the detached backend.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::thread;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use super::super::GuestMemory;
use super::tests::{frame, Ring, BUF, MAC, MEM_SIZE, QSIZE, RX_RING, TX_RING, WAIT};
use super::{MacAddr, VirtioNet, VNET_HDR_LEN};
use crate::devices::BusDevice;
use crate::snapshot::{DeviceState, MmioState};

const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const CONFIG_SPACE: u64 = 0x100;
const NEW_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x58, 0, 5]);

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// A datagram pair standing in for a tap: (device side, wire side).
fn tap_pair() -> (File, UnixDatagram) {
    let (tap, wire) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    wire.set_read_timeout(Some(WAIT)).unwrap();
    (File::from(OwnedFd::from(tap)), wire)
}

fn transport(mem: &GuestMemory, device: VirtioNet) -> MmioTransport {
    MmioTransport::new(
        mem.clone(),
        Box::new(device),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    )
    .unwrap()
}

/// What the Linux driver does: features (VERSION_1, MAC, MTU), both
/// queues laid out as [`Ring::at`] expects, DRIVER_OK.
fn drive(t: &mut MmioTransport, mem: &GuestMemory) {
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, (1 << 5) | (1 << 3));
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, 1);
    let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(t, REG_STATUS, features_ok);
    for (index, base) in [(0, RX_RING), (1, TX_RING)] {
        let ring = Ring::at(mem, base);
        wr(t, REG_QUEUE_SEL, index);
        wr(t, REG_QUEUE_NUM, u32::from(QSIZE));
        wr(t, REG_QUEUE_DESC_LOW, ring.desc as u32);
        wr(t, REG_QUEUE_DRIVER_LOW, ring.avail as u32);
        wr(t, REG_QUEUE_DEVICE_LOW, ring.used as u32);
        wr(t, REG_QUEUE_READY, 1);
    }
    wr(t, REG_STATUS, features_ok | STATUS_DRIVER_OK);
}

fn kick(t: &MmioTransport, queue: usize) {
    t.queue_evts()[queue].write(1).unwrap();
}

/// The guest sends one frame of `fill` bytes from `at`.
fn send(t: &MmioTransport, mem: &GuestMemory, tx: &mut Ring<'_>, at: u64, fill: u8) -> Vec<u8> {
    let sent = frame(40, fill);
    mem.write_slice(&sent, GuestAddress(at)).unwrap();
    tx.push(&[(at, sent.len() as u32, false)]);
    kick(t, 1);
    sent
}

#[test]
fn state_round_trips_onto_a_new_tap() {
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (tap_a, wire_a) = tap_pair();
    let mut t = transport(
        &mem,
        VirtioNet::with_tap("a".into(), tap_a, MAC, Some(1500)),
    );
    drive(&mut t, &mem);
    let (mut rx, mut tx) = (Ring::at(&mem, RX_RING), Ring::at(&mem, TX_RING));
    // Two receive buffers; one frame each way before the snapshot.
    let first = rx.push(&[(BUF, 2048, true)]);
    let second = rx.push(&[(BUF + 0x1000, 2048, true)]);
    kick(&t, 0);
    wire_a.send(&frame(60, 0xa1)).unwrap();
    assert_eq!(rx.wait_used(), (u32::from(first), 72));
    let sent = send(&t, &mem, &mut tx, BUF + 0x4000, 0xa2);
    let mut got = vec![0u8; 2048];
    let n = wire_a.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &sent[..]);
    assert_eq!(tx.wait_used().1, 0);

    let device = t.snapshot_check().unwrap();
    assert_eq!(
        device,
        DeviceState::Net {
            mac: MAC.to_string(),
            mtu: Some(1500)
        }
    );
    let saved = t.snapshot(device).unwrap();
    let json = serde_json::to_string(&saved).unwrap();
    let loaded: MmioState = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, saved);
    assert!(loaded.activated);
    assert_eq!(loaded.acked_features, (1 << 32) | (1 << 5) | (1 << 3));
    assert_eq!(
        (loaded.queues[0].next_avail, loaded.queues[1].next_avail),
        (1, 1)
    );
    // The old device is stopped: a frame on its tap goes nowhere.
    wire_a.send(&frame(60, 0xaa)).unwrap();
    drop(t);

    // Restored onto a new tap, with the pod's MAC in the configuration
    // space (the guest keeps the one it read until it is told another).
    let (tap_b, wire_b) = tap_pair();
    let mut t = transport(
        &mem,
        VirtioNet::with_tap("b".into(), tap_b, NEW_MAC, Some(1500)),
    );
    assert!(t.restore(&loaded).unwrap());
    t.activate_restored().unwrap();
    let mut mac = [0u8; 6];
    t.read(CONFIG_SPACE, &mut mac);
    assert_eq!(mac, NEW_MAC.0);
    // The still-posted second buffer takes the new tap's frame.
    let arriving = frame(80, 0xb1);
    wire_b.send(&arriving).unwrap();
    assert_eq!(rx.wait_used(), (u32::from(second), arriving.len() as u32));
    let mut landed = vec![0u8; arriving.len()];
    mem.read_slice(&mut landed, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&landed[VNET_HDR_LEN..], &arriving[VNET_HDR_LEN..]);
    let sent = send(&t, &mem, &mut tx, BUF + 0x5000, 0xb2);
    let n = wire_b.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &sent[..]);
    assert_eq!(tx.wait_used().1, 0);
    wire_a.set_nonblocking(true).unwrap();
    assert!(
        wire_a.recv(&mut got).is_err(),
        "a frame left on the old tap"
    );
}

#[test]
fn restore_refuses_another_device_type() {
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut t = transport(&mem, VirtioNet::detached(MAC, None));
    drive(&mut t, &mem);
    let device = t.snapshot_check().unwrap();
    let mut saved = t.snapshot(device).unwrap();
    saved.device_type = 19;
    let mut fresh = transport(&mem, VirtioNet::detached(MAC, None));
    let err = fresh.restore(&saved).unwrap_err();
    assert!(err.contains("device type 19"), "{err}");
}

#[test]
fn detached_device_drops_transmits_and_receives_nothing() {
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut t = transport(&mem, VirtioNet::detached(MAC, Some(1400)));
    drive(&mut t, &mem);
    let (mut rx, mut tx) = (Ring::at(&mem, RX_RING), Ring::at(&mem, TX_RING));
    rx.push(&[(BUF, 2048, true)]);
    kick(&t, 0);
    send(&t, &mem, &mut tx, BUF + 0x4000, 1);
    assert_eq!(tx.wait_used().1, 0, "the transmit buffer came back");
    thread::sleep(Duration::from_millis(50));
    assert!(
        rx.try_used().is_none(),
        "a detached device received a frame"
    );
    let mut mtu = [0u8; 2];
    t.read(CONFIG_SPACE + 10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1400);
}
