//! Template (snapshot) files: `header.json` and `state.json` read back by
//! the VMM's own readers, and the saved virtio-mmio transports restored
//! onto fresh transports over a guest memory.
//!
//! Inputs: raw header and state bytes (written to a scratch template
//! directory, read with `read_header`/`read_state`), and structure-aware
//! transport states (any registers, queue addresses and ring positions)
//! restored directly.
//!
//! Invariants: what parses round-trips (header: equal after encode and
//! decode; state: its encoding is a fixed point); a restored transport
//! keeps only features its device offers and, when it restarts its
//! device, hands it only queues that are ready and valid in guest memory.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_vmm::devices::virtio::{
    ActivateError, ActiveQueue, GuestMemory, Interrupt, MmioTransport, VirtioDevice,
};
use nacre_vmm::snapshot::format::{read_header, read_state, sha256_bytes};
use nacre_vmm::snapshot::{
    DeviceState, FileId, Header, MmioState, QueueSnapshot, HEADER_FILE, STATE_FILE,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Large enough for the ring addresses of a real template's state.
const MEM_LEN: usize = 16 << 20;
const FEATURES: u64 = (1 << 32) | (1 << 29) | 1;

struct Checker {
    kind: u32,
    sizes: Vec<u16>,
}

impl VirtioDevice for Checker {
    fn device_type(&self) -> u32 {
        self.kind
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        FEATURES
    }
    fn set_acked_features(&mut self, acked: u64) {
        assert_eq!(
            acked & !FEATURES,
            0,
            "restored features the device never offered"
        );
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        _interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        for q in &queues {
            assert!(
                q.queue.ready() && q.queue.is_valid(&mem),
                "restored an invalid queue"
            );
        }
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
struct ArbQueue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    near: bool,
}

#[derive(Arbitrary, Debug)]
struct ArbMmio {
    kind: u8,
    status: u32,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_select: u32,
    interrupt_status: u32,
    activated: bool,
    queues: Vec<ArbQueue>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Header(Vec<u8>),
    State(Vec<u8>),
    Mmio(ArbMmio),
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| nacre_fuzz::scratch::dir("snapshot"))
}

fn restore(m: &ArbMmio) {
    let kinds = [19u32, 26, 1];
    let kind = kinds[usize::from(m.kind) % kinds.len()];
    let addr = |a: u64, near: bool| if near { a % MEM_LEN as u64 } else { a };
    let state = MmioState {
        device_type: kind,
        device: DeviceState::Vsock { cid: 3 },
        status: m.status,
        acked_features: m.acked_features,
        device_features_sel: m.device_features_sel,
        driver_features_sel: m.driver_features_sel,
        queue_select: m.queue_select,
        interrupt_status: m.interrupt_status,
        activated: m.activated,
        queues: m
            .queues
            .iter()
            .take(4)
            .map(|q| QueueSnapshot {
                max_size: if q.near { 256 } else { q.max_size },
                size: q.size,
                ready: q.ready,
                desc_table: addr(q.desc_table, q.near),
                avail_ring: addr(q.avail_ring, q.near),
                used_ring: addr(q.used_ring, q.near),
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx: q.event_idx,
            })
            .collect(),
    };
    restore_state(&state);
}

/// Restores `state` onto a fresh transport whose device checks what it
/// is handed, and restarts the device if the state says it ran.
fn restore_state(state: &MmioState) {
    // The queue sizes of nacre's devices: three for vsock, two otherwise.
    let sizes = if state.device_type == 19 {
        vec![256; 3]
    } else {
        vec![256; 2]
    };
    let kind = state.device_type;
    // One memory for every restore: restoring and activating only check
    // ring addresses against it (nothing writes it), and a 16 MiB mapping
    // per restore was most of an execution.
    thread_local! {
        static MEM: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap();
    }
    let mem = MEM.with(GuestMemory::clone);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(mem, Box::new(Checker { kind, sizes }), irq).unwrap();
    if let Ok(true) = t.restore(state) {
        let _ = t.activate_restored();
    }
}

fuzz_target!(|input: Input| {
    let dir = dir();
    match input {
        Input::Header(bytes) => {
            std::fs::write(dir.join(HEADER_FILE), &bytes).unwrap();
            let Ok(h) = read_header(dir) else {
                if let Ok(h) = serde_json::from_slice::<Header>(&bytes) {
                    assert!(
                        h.check_compatible(dir).is_err(),
                        "a compatible header refused"
                    );
                }
                return;
            };
            let again: Header = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
            assert_eq!(again, h, "header round trip");
        }
        Input::State(bytes) => {
            std::fs::write(dir.join(STATE_FILE), &bytes).unwrap();
            let header = Header {
                magic: String::new(),
                format_version: 0,
                vmm_version: String::new(),
                kernel: FileId {
                    path: PathBuf::from("/k"),
                    sha256: String::new(),
                    size: 0,
                    dev: 0,
                    ino: 0,
                    mtime_ns: 0,
                },
                initrd: None,
                memory_size: 0,
                state_sha256: sha256_bytes(&bytes),
                memory_sha256: String::new(),
                created_unix: 0,
            };
            let Ok(state) = read_state(dir, &header) else {
                return;
            };
            let once = serde_json::to_vec(&state).unwrap();
            let back: nacre_vmm::snapshot::SnapshotState = serde_json::from_slice(&once).unwrap();
            assert_eq!(serde_json::to_vec(&back).unwrap(), once, "state round trip");
            for m in state.devices.virtio.iter().take(8) {
                restore_state(m);
            }
        }
        Input::Mmio(m) => restore(&m),
    }
});
