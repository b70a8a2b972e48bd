//! The virtio-mmio register file: sequences of guest register reads and
//! writes (any offset and width) against a transport whose device records
//! what the transport hands it.
//!
//! Invariants: identification registers never change; the device is only
//! activated after FEATURES_OK and DRIVER_OK with VERSION_1 acked, with
//! only features it offered, at most once per reset, and every queue it
//! gets is ready and valid in guest memory; InterruptStatus only loses the
//! bits the guest acknowledged; the transport's saved state restores onto
//! a fresh transport and saves back identically (snapshot round trip).

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_vmm::devices::virtio::{
    ActivateError, ActiveQueue, GuestMemory, Interrupt, MmioTransport, VirtioDevice,
};
use nacre_vmm::devices::BusDevice;
use nacre_vmm::snapshot::DeviceState;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 3) | 1;
const VERSION_1: u64 = 1 << 32;
const MEM_LEN: usize = 0x2_0000;
const REGS: [u64; 27] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0b0, 0x0b4, 0x0fc, 0x100,
    0x104,
];

#[derive(Default)]
struct Seen {
    activations: u32,
    acked: u64,
}

struct Recorder {
    seen: Arc<Mutex<Seen>>,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8, 4]
    }
    fn avail_features(&self) -> u64 {
        FEATURES
    }
    fn set_acked_features(&mut self, acked: u64) {
        assert_eq!(
            acked & !FEATURES,
            0,
            "acked features the device never offered"
        );
        self.seen.lock().unwrap().acked = acked;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        nacre_vmm::devices::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        _interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut seen = self.seen.lock().unwrap();
        seen.activations += 1;
        assert_eq!(seen.activations, 1, "activated twice without a reset");
        assert_ne!(seen.acked & VERSION_1, 0, "activated without VERSION_1");
        assert!(queues.len() <= 3);
        for q in &queues {
            assert!(
                q.queue.ready() && q.queue.is_valid(&mem),
                "an invalid queue"
            );
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.seen.lock().unwrap().activations = 0;
        true
    }
    fn snapshot_state(&self) -> Result<DeviceState, String> {
        Ok(DeviceState::Vsock { cid: 3 })
    }
}

#[derive(Arbitrary, Debug)]
enum Offset {
    Reg(u8),
    Raw(u16),
}

impl Offset {
    fn get(&self) -> u64 {
        match self {
            Offset::Reg(i) => REGS[usize::from(*i) % REGS.len()],
            Offset::Raw(o) => u64::from(*o),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        at: Offset,
        width: u8,
    },
    Write {
        at: Offset,
        value: u32,
    },
    WriteBytes {
        at: Offset,
        bytes: Vec<u8>,
    },
    /// The usual driver steps, so deep states are reached quickly.
    Negotiate {
        features_hi: u32,
        features_lo: u32,
    },
    SetupQueue {
        index: u8,
        size: u16,
        desc: u32,
        avail: u32,
        used: u32,
    },
    Status(u8),
}

fn transport(mem: &GuestMemory, seen: Arc<Mutex<Seen>>) -> MmioTransport {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    MmioTransport::new(mem.clone(), Box::new(Recorder { seen }), irq).unwrap()
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn run(t: &mut MmioTransport, op: &Op) {
    match op {
        Op::Read { at, width } => {
            let mut d = vec![0u8; usize::from(*width % 9)];
            t.read(at.get(), &mut d);
        }
        Op::Write { at, value } => {
            let off = at.get();
            let before = rd(t, 0x060);
            wr(t, off, *value);
            if off == 0x064 {
                let after = rd(t, 0x060);
                assert_eq!(after & !before, 0, "ACK raised interrupt bits");
                assert_eq!(after & value, 0, "ACK left acknowledged bits set");
            }
        }
        Op::WriteBytes { at, bytes } => t.write(at.get(), bytes),
        Op::Negotiate {
            features_hi,
            features_lo,
        } => {
            wr(t, 0x070, 1);
            wr(t, 0x070, 3);
            wr(t, 0x024, 0);
            wr(t, 0x020, *features_lo);
            wr(t, 0x024, 1);
            wr(t, 0x020, *features_hi);
            wr(t, 0x070, 3 | 8);
        }
        Op::SetupQueue {
            index,
            size,
            desc,
            avail,
            used,
        } => {
            wr(t, 0x030, u32::from(*index % 4));
            wr(t, 0x038, u32::from(*size));
            wr(t, 0x080, *desc % MEM_LEN as u32);
            wr(t, 0x084, 0);
            wr(t, 0x090, *avail % MEM_LEN as u32);
            wr(t, 0x094, 0);
            wr(t, 0x0a0, *used % MEM_LEN as u32);
            wr(t, 0x0a4, 0);
            wr(t, 0x044, 1);
        }
        Op::Status(s) => wr(t, 0x070, u32::from(*s)),
    }
    assert_eq!(rd(t, 0x000), 0x7472_6976);
    assert_eq!(rd(t, 0x004), 2);
    assert_eq!(rd(t, 0x008), 19);
}

fuzz_target!(|ops: Vec<Op>| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut t = transport(&mem, seen.clone());
    for op in ops.iter().take(256) {
        run(&mut t, op);
    }
    // Snapshot round trip: save, restore onto a fresh transport (and
    // restart its device if it ran), save again: the same state.
    let Ok(device) = t.snapshot_check() else {
        return;
    };
    let Ok(saved) = t.snapshot(device.clone()) else {
        return;
    };
    assert_eq!(saved.acked_features & !FEATURES, 0);
    let mut fresh = transport(&mem, Arc::new(Mutex::new(Seen::default())));
    let running = fresh
        .restore(&saved)
        .expect("restoring a transport's own state");
    if running {
        fresh
            .activate_restored()
            .expect("restarting a device that ran");
    }
    let again = fresh.snapshot(device).expect("saving a restored transport");
    assert_eq!(saved, again, "snapshot round trip");
});
