//! A guest memory for device targets and the virtqueues in it.
//!
//! Layout: the rings of up to four queues in region A (queue `i` at
//! `i * 0x1000`: descriptor table, then the available ring at +0x100,
//! the used ring at +0x200), an unmapped gap, then 64 KiB of data in
//! region B that the fuzzer fills. Descriptors point anywhere: into the
//! data, into the rings, into the gap or past the end.

use arbitrary::Arbitrary;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the devices see it.
pub type Mem = GuestMemoryMmap<()>;

pub const RINGS: u64 = 0;
pub const RINGS_LEN: usize = 0x4000;
pub const DATA: u64 = 0x1_0000;
pub const DATA_LEN: usize = 0x1_0000;
/// Largest queue the targets lay out (keeps inputs small).
pub const MAX_QUEUE: u16 = 16;
const AVAIL_AT: u64 = 0x100;
const USED_AT: u64 = 0x200;

/// Where a descriptor points.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// An offset into the data region.
    Data(u16),
    /// Any guest address (rings, gap, beyond memory).
    Raw(u64),
}

impl Addr {
    pub fn gpa(self) -> u64 {
        match self {
            Addr::Data(off) => DATA + u64::from(off),
            Addr::Raw(a) => a,
        }
    }
}

/// A descriptor length: mostly small, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Small(u16),
    Raw(u32),
}

impl Len {
    pub fn get(self) -> u32 {
        match self {
            Len::Small(l) => u32::from(l),
            Len::Raw(l) => l,
        }
    }
}

/// One descriptor as the fuzzer writes it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Desc {
    pub addr: Addr,
    pub len: Len,
    pub flags: u16,
    pub next: u16,
}

/// One queue as the driver sets it up: its size, descriptor table and
/// available ring.
#[derive(Arbitrary, Debug, Clone)]
pub struct QueueSpec {
    /// The queue size is `1 << (size_log2 % 5)`: 1 to 16.
    pub size_log2: u8,
    pub descs: Vec<Desc>,
    /// Heads published in the available ring, in order.
    pub heads: Vec<u16>,
    /// The available index; default: the number of heads.
    pub avail_idx: Option<u16>,
    pub avail_flags: u16,
    pub event_idx: bool,
}

impl QueueSpec {
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 5)
    }

    /// The available index the driver publishes.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
            .unwrap_or(self.heads.len().min(usize::from(self.size())) as u16)
    }
}

/// The two-region guest memory, the data region filled with `data`
/// (repeated; zeros if empty) and the rings region zeroed.
///
/// One memory per thread, reset on each call: a fresh mapping per input
/// (two mmaps, page faults on first touch, munmap) cost more than the
/// device's work. The caller must drop every device holding the memory
/// before the next input (each target does: its driver lives for one
/// input).
pub fn memory(data: &[u8]) -> Mem {
    thread_local! {
        static MEM: Mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(RINGS), RINGS_LEN),
            (GuestAddress(DATA), DATA_LEN),
        ])
        .unwrap();
    }
    let mem = MEM.with(Mem::clone);
    // SAFETY: no device runs while a target sets its memory up (devices
    // run on the target's thread, for one input), so nothing else
    // accesses the regions while these slices live.
    unsafe { region_mut(&mem, RINGS, RINGS_LEN) }.fill(0);
    fill(unsafe { region_mut(&mem, DATA, DATA_LEN) }, data);
    mem
}

/// Region `base` (`RINGS` or `DATA`, of `len` bytes) of `mem` as host
/// memory: compared and copied in place, without the copies (and their
/// zeroed buffers) of `read_slice`.
pub fn region(mem: &Mem, base: u64, len: usize) -> &[u8] {
    let ptr = mem.get_host_address(GuestAddress(base)).unwrap();
    assert!(mem.check_range(GuestAddress(base), len));
    // SAFETY: the `len` bytes from `ptr` are one mapped region of `mem`
    // (checked above), alive as long as `mem`; the targets read them only
    // while no device runs.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// [`region`], writable.
///
/// # Safety
///
/// Nothing else may access the region while the slice lives.
unsafe fn region_mut(mem: &Mem, base: u64, len: usize) -> &mut [u8] {
    let ptr = mem.get_host_address(GuestAddress(base)).unwrap();
    assert!(mem.check_range(GuestAddress(base), len));
    // SAFETY: as in `region`; exclusivity is the caller's.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// Fills `out` with `data` repeated (zeros if empty), by doubling copies:
/// a chunk-by-chunk loop over a one-byte `data` took 65,536 iterations.
fn fill(out: &mut [u8], data: &[u8]) {
    if data.is_empty() {
        out.fill(0);
        return;
    }
    let first = data.len().min(out.len());
    out[..first].copy_from_slice(&data[..first]);
    let mut done = first;
    while done < out.len() {
        let n = done.min(out.len() - done);
        out.copy_within(..n, done);
        done += n;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fill_repeats_the_data() {
        for data in [
            &b""[..],
            b"x",
            b"abc",
            &[7u8; 70_000][..],
            &[1, 2, 3, 4, 5, 6, 7][..],
        ] {
            let want: Vec<u8> = if data.is_empty() {
                vec![0; super::DATA_LEN]
            } else {
                data.iter().copied().cycle().take(super::DATA_LEN).collect()
            };
            let mut out = vec![0xaa; super::DATA_LEN];
            super::fill(&mut out, data);
            assert_eq!(out, want);
        }
    }
}

/// The ring addresses of queue `index`.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

impl Ring {
    pub fn of(index: u64, size: u16) -> Self {
        let base = RINGS + index * 0x1000;
        Self {
            desc: base,
            avail: base + AVAIL_AT,
            used: base + USED_AT,
            size,
        }
    }

    /// The used ring's bytes: flags, idx, the elements, avail_event.
    pub fn used_len(&self) -> u64 {
        4 + 8 * u64::from(self.size) + 2
    }

    pub fn used_idx(&self, mem: &Mem) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The `pos`-th used element: (head, length).
    pub fn used_elem(&self, mem: &Mem, pos: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(pos % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// Writes `spec`'s descriptor table and available ring as queue `index`
/// and returns the device's queue over them.
pub fn lay_out(mem: &Mem, index: u64, spec: &QueueSpec) -> (Queue, Ring) {
    let size = spec.size();
    let ring = Ring::of(index, size);
    for (i, d) in spec.descs.iter().take(usize::from(size)).enumerate() {
        let raw = Descriptor::new(d.addr.gpa(), d.len.get(), d.flags, d.next);
        mem.write_obj(raw, GuestAddress(ring.desc + 16 * i as u64))
            .unwrap();
    }
    for (i, head) in spec.heads.iter().take(usize::from(size)).enumerate() {
        mem.write_obj(*head, GuestAddress(ring.avail + 4 + 2 * i as u64))
            .unwrap();
    }
    let idx = spec.avail_idx();
    mem.write_obj(spec.avail_flags, GuestAddress(ring.avail))
        .unwrap();
    mem.write_obj(idx, GuestAddress(ring.avail + 2)).unwrap();
    (queue(mem, ring, spec.event_idx), ring)
}

/// A ready queue over `ring`, as the transport hands it to a device.
pub fn queue(mem: &Mem, ring: Ring, event_idx: bool) -> Queue {
    let mut q = Queue::new(MAX_QUEUE).unwrap();
    q.set_size(ring.size);
    q.try_set_desc_table_address(GuestAddress(ring.desc))
        .unwrap();
    q.try_set_avail_ring_address(GuestAddress(ring.avail))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(ring.used))
        .unwrap();
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem), "the harness laid out an invalid queue");
    q
}

/// A queue with its notification eventfd, as `activate` receives it.
pub fn active(queue: Queue) -> nacre_vmm::devices::virtio::ActiveQueue {
    nacre_vmm::devices::virtio::ActiveQueue {
        queue,
        notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    }
}

/// An interrupt line whose eventfd nobody reads (it saturates harmlessly).
pub fn interrupt() -> std::sync::Arc<nacre_vmm::devices::virtio::Interrupt> {
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    std::sync::Arc::new(nacre_vmm::devices::virtio::Interrupt::new(status, evt))
}
