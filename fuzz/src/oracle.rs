//! The checks every device target makes after the device ran, computed
//! from the driver's side of the rings independently of virtio-queue:
//!
//! - the device wrote guest memory only inside buffers the driver marked
//!   device-writable (in a descriptor table or one level of indirect
//!   table) and inside the used rings;
//! - every used element names a head inside the queue, with a length no
//!   larger than the writable bytes of the chain at that head;
//! - the used index advanced by no more than the chains made available.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{Mem, Ring, DATA, DATA_LEN, RINGS, RINGS_LEN};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn desc_at(mem: &Mem, table: u64, index: u16) -> Option<RawDesc> {
    let at = table.checked_add(16 * u64::from(index))?;
    Some(RawDesc {
        addr: mem.read_obj(GuestAddress(at)).ok()?,
        len: mem.read_obj(GuestAddress(at + 8)).ok()?,
        flags: mem.read_obj(GuestAddress(at + 12)).ok()?,
        next: mem.read_obj(GuestAddress(at + 14)).ok()?,
    })
}

/// Every descriptor of `table` (of `count` entries) and, one level down,
/// of the indirect tables it names.
fn all_descs(mem: &Mem, table: u64, count: u16, out: &mut Vec<RawDesc>, nested: bool) {
    for i in 0..count {
        let Some(d) = desc_at(mem, table, i) else {
            continue;
        };
        out.push(d);
        if d.flags & INDIRECT != 0 && !nested {
            let n = u16::try_from(d.len / 16).unwrap_or(u16::MAX);
            all_descs(mem, d.addr, n, out, true);
        }
    }
}

/// Writable bytes of the chain at `head` (an upper bound: every writable
/// descriptor reachable by `next` links within the queue's size, and in
/// the indirect tables on the way).
pub fn chain_writable(mem: &Mem, ring: &Ring, head: u16) -> u64 {
    fn walk(mem: &Mem, table: u64, count: u16, start: u16, nested: bool) -> u64 {
        let mut sum = 0u64;
        let mut index = start;
        for _ in 0..count {
            if index >= count {
                break;
            }
            let Some(d) = desc_at(mem, table, index) else {
                break;
            };
            if d.flags & INDIRECT != 0 && !nested {
                let n = u16::try_from(d.len / 16).unwrap_or(u16::MAX);
                sum += walk(mem, d.addr, n, 0, true);
            } else if d.flags & WRITE != 0 {
                sum += u64::from(d.len);
            }
            if d.flags & NEXT == 0 {
                break;
            }
            index = d.next;
        }
        sum
    }
    walk(mem, ring.desc, ring.size, head, false)
}

/// A copy of guest memory before the device runs, with the ranges the
/// device may write.
pub struct Before {
    rings: Vec<u8>,
    data: Vec<u8>,
    writable: Vec<(u64, u64)>,
    /// Per queue, the writable bytes of the chain at each head.
    caps: Vec<Vec<u64>>,
}

impl Before {
    pub fn take(mem: &Mem, rings: &[Ring]) -> Self {
        let mut r = vec![0u8; RINGS_LEN];
        let mut d = vec![0u8; DATA_LEN];
        mem.read_slice(&mut r, GuestAddress(RINGS)).unwrap();
        mem.read_slice(&mut d, GuestAddress(DATA)).unwrap();
        let mut descs = Vec::new();
        for ring in rings {
            all_descs(mem, ring.desc, ring.size, &mut descs, false);
        }
        let mut writable: Vec<(u64, u64)> = descs
            .iter()
            .filter(|d| d.flags & WRITE != 0)
            .map(|d| (d.addr, d.addr.saturating_add(u64::from(d.len))))
            .collect();
        writable.extend(rings.iter().map(|r| (r.used, r.used + r.used_len())));
        let caps = rings
            .iter()
            .map(|ring| {
                (0..ring.size)
                    .map(|h| chain_writable(mem, ring, h))
                    .collect()
            })
            .collect();
        Self {
            rings: r,
            data: d,
            writable,
            caps,
        }
    }

    fn allowed(&self, gpa: u64) -> bool {
        self.writable.iter().any(|&(a, b)| gpa >= a && gpa < b)
    }

    /// Panics (a finding) if the device wrote outside what it may write.
    pub fn check_writes(&self, mem: &Mem) {
        for (base, old) in [(RINGS, &self.rings), (DATA, &self.data)] {
            let mut now = vec![0u8; old.len()];
            mem.read_slice(&mut now, GuestAddress(base)).unwrap();
            if now == *old {
                continue;
            }
            // Whole 64-byte blocks first (one memcmp each), bytes only in
            // the blocks that changed.
            let blocks = old.chunks(64).zip(now.chunks(64)).enumerate();
            for (k, (ob, nb)) in blocks.filter(|(_, (ob, nb))| ob != nb) {
                for (i, (a, b)) in ob.iter().zip(nb.iter()).enumerate() {
                    let gpa = base + (k * 64 + i) as u64;
                    assert!(
                        a == b || self.allowed(gpa),
                        "the device wrote {gpa:#x} ({a:#x} -> {b:#x}), outside every \
                     device-writable buffer and used ring"
                    );
                }
            }
        }
    }
}

/// Panics (a finding) if a used element of queue `index` (as passed to
/// [`Before::take`]) is out of bounds or longer than its chain was before
/// the device ran, or more chains were used than made available.
pub fn check_used(mem: &Mem, before: &Before, index: usize, ring: &Ring, avail_idx: u16) {
    let used = ring.used_idx(mem);
    if avail_idx <= ring.size {
        assert!(
            used <= avail_idx,
            "used index {used} beyond the {avail_idx} chains made available"
        );
    }
    for pos in 0..used.min(ring.size) {
        let (id, len) = ring.used_elem(mem, pos);
        assert!(
            id < u32::from(ring.size),
            "used element {pos} names head {id} of a {}-entry queue",
            ring.size
        );
        let cap = before.caps[index][id as usize];
        assert!(
            u64::from(len) <= cap,
            "used element {pos}: length {len} beyond the {cap} writable bytes of chain {id}"
        );
    }
}
