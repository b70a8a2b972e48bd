//! The checks every device target makes after the device ran, computed
//! from the driver's side of the rings independently of virtio-queue:
//!
//! - the device wrote guest memory only inside buffers the driver marked
//!   device-writable (in a descriptor table or one level of indirect
//!   table) and inside the used rings;
//! - every used element names a head inside the queue, with a length no
//!   larger than the writable bytes of the chain at that head;
//! - the used index advanced by no more than the chains made available.
//!
//! The descriptors are read from the copy of guest memory taken before
//! the device ran (plain slices), not through `GuestMemory`: an indirect
//! table may claim up to 65,535 entries, and reading those through
//! vm-memory (region lookup per field, every comparison instrumented)
//! made this oracle the bulk of an execution.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use crate::guest::{self, Mem, Ring, DATA, DATA_LEN, RINGS, RINGS_LEN};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const DESC_SIZE: u64 = 16;

#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Guest memory as it was before the device ran: the two regions.
struct Image<'a> {
    rings: &'a [u8],
    data: &'a [u8],
}

impl Image<'_> {
    /// The regions with their guest addresses.
    fn regions(&self) -> [(u64, &[u8]); 2] {
        [(RINGS, self.rings), (DATA, self.data)]
    }

    /// The descriptor at `index` of the table at `table`, if its 16 bytes
    /// lie inside one region (what a read through `GuestMemory` of two
    /// non-adjacent regions allows).
    fn desc_at(&self, table: u64, index: u16) -> Option<RawDesc> {
        let at = table.checked_add(DESC_SIZE * u64::from(index))?;
        for (base, bytes) in self.regions() {
            let Some(off) = at.checked_sub(base) else {
                continue;
            };
            if off > (bytes.len() as u64).saturating_sub(DESC_SIZE) {
                continue;
            }
            let b = &bytes[off as usize..(off + DESC_SIZE) as usize];
            return Some(RawDesc {
                addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
                next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
            });
        }
        None
    }

    /// The indices `0..count` of the table at `table` whose descriptor
    /// lies inside a region, as ranges (one per region at most).
    fn readable(&self, table: u64, count: u16) -> Vec<std::ops::Range<u16>> {
        let mut out = Vec::new();
        for (base, bytes) in self.regions() {
            let end = base + bytes.len() as u64;
            // First index at or after `base`, last whose 16 bytes end by `end`.
            let lo = if table >= base {
                0
            } else {
                (base - table).div_ceil(DESC_SIZE)
            };
            if end < DESC_SIZE || table > end - DESC_SIZE {
                continue;
            }
            let hi = (end - DESC_SIZE - table) / DESC_SIZE + 1;
            let (lo, hi) = (lo.min(u64::from(count)), hi.min(u64::from(count)));
            if lo < hi {
                out.push(lo as u16..hi as u16);
            }
        }
        out
    }

    /// Every descriptor of `table` (of `count` entries) and, one level
    /// down, every descriptor reachable in the indirect tables it names:
    /// a device walks an indirect table from entry 0 along `next` links
    /// (each table once: `tables` holds the indirect tables already
    /// listed, which the fuzzer's repeated data names over and over).
    /// Listing every entry of an indirect table instead (up to 4,096 in
    /// the data region) was a third of an execution.
    fn all_descs(
        &self,
        table: u64,
        count: u16,
        out: &mut Vec<RawDesc>,
        tables: &mut std::collections::HashSet<(u64, u16)>,
    ) {
        for range in self.readable(table, count) {
            for i in range {
                let Some(d) = self.desc_at(table, i) else {
                    continue;
                };
                out.push(d);
                if d.flags & INDIRECT != 0 {
                    let n = u16::try_from(d.len / 16).unwrap_or(u16::MAX);
                    if tables.insert((d.addr, n)) {
                        self.reachable(d.addr, n, out);
                    }
                }
            }
        }
    }

    /// The descriptors of the chain at entry 0 of the table at `table`
    /// (of `count` entries), each once.
    fn reachable(&self, table: u64, count: u16, out: &mut Vec<RawDesc>) {
        let mut seen = std::collections::HashSet::new();
        let mut index = 0u16;
        while index < count && seen.insert(index) {
            let Some(d) = self.desc_at(table, index) else {
                break;
            };
            out.push(d);
            if d.flags & NEXT == 0 {
                break;
            }
            index = d.next;
        }
    }

    /// Writable bytes of the chain at `start` of a table of `count`
    /// entries: every writable descriptor reached by `next` links in at
    /// most `count` steps (repeats counted: a looping chain is walked
    /// `count` steps, as the device's walk is bounded), with the indirect
    /// tables on the way at the top level. A loop is summed in closed
    /// form once found instead of stepped through.
    fn walk(&self, table: u64, count: u16, start: u16, nested: bool) -> u64 {
        let steps = usize::from(count);
        // Per descriptor index, the step it was first reached at.
        let mut seen: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
        // prefix[s]: bytes summed over the first `s` steps.
        let mut prefix: Vec<u64> = vec![0];
        let mut index = start;
        let mut step = 0;
        while step < steps {
            if index >= count {
                break;
            }
            if let Some(&first) = seen.get(&index) {
                // From `first` on, the walk repeats with period `len`.
                let len = step - first;
                let cycle = prefix[step] - prefix[first];
                let left = steps - step;
                let tail = prefix[first + left % len] - prefix[first];
                return prefix[step] + (left / len) as u64 * cycle + tail;
            }
            seen.insert(index, step);
            let Some(d) = self.desc_at(table, index) else {
                break;
            };
            let add = if d.flags & INDIRECT != 0 && !nested {
                let n = u16::try_from(d.len / 16).unwrap_or(u16::MAX);
                self.walk(d.addr, n, 0, true)
            } else if d.flags & WRITE != 0 {
                u64::from(d.len)
            } else {
                0
            };
            prefix.push(prefix[step] + add);
            step += 1;
            if d.flags & NEXT == 0 {
                break;
            }
            index = d.next;
        }
        prefix[step]
    }
}

/// A copy of guest memory before the device runs, with the ranges the
/// device may write.
pub struct Before {
    rings: Vec<u8>,
    data: Vec<u8>,
    writable: Vec<(u64, u64)>,
    /// The queues passed to [`Before::take`].
    queues: Vec<Ring>,
}

impl Before {
    pub fn take(mem: &Mem, rings: &[Ring]) -> Self {
        let r = guest::region(mem, RINGS, RINGS_LEN).to_vec();
        let d = guest::region(mem, DATA, DATA_LEN).to_vec();
        let image = Image {
            rings: &r,
            data: &d,
        };
        let mut descs = Vec::new();
        let mut tables = std::collections::HashSet::new();
        for ring in rings {
            image.all_descs(ring.desc, ring.size, &mut descs, &mut tables);
        }
        let mut writable: Vec<(u64, u64)> = descs
            .iter()
            .filter(|d| d.flags & WRITE != 0)
            .map(|d| (d.addr, d.addr.saturating_add(u64::from(d.len))))
            .collect();
        writable.extend(rings.iter().map(|r| (r.used, r.used + r.used_len())));
        Self {
            rings: r,
            data: d,
            writable,
            queues: rings.to_vec(),
        }
    }

    /// The data region as it was.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn image(&self) -> Image<'_> {
        Image {
            rings: &self.rings,
            data: &self.data,
        }
    }

    /// Writable bytes of the chain at `head` of queue `index` (as passed
    /// to [`Before::take`]) before the device ran: an upper bound of what
    /// a used element for it may report.
    pub fn chain_writable(&self, index: usize, head: u16) -> u64 {
        let ring = &self.queues[index];
        self.image().walk(ring.desc, ring.size, head, false)
    }

    /// Whether any of `[start, start + len)` lies in a device-writable
    /// buffer: a guest that aliases a buffer with a used ring gets packet
    /// data where it reads used elements, its own doing, not the device's.
    pub fn aliased(&self, start: u64, len: u64) -> bool {
        let end = start.saturating_add(len);
        self.writable.iter().any(|&(a, b)| a < end && start < b)
    }

    fn allowed(&self, gpa: u64) -> bool {
        self.writable.iter().any(|&(a, b)| gpa >= a && gpa < b)
    }

    /// Panics (a finding) if the device wrote outside what it may write.
    pub fn check_writes(&self, mem: &Mem) {
        for (base, old) in [(RINGS, &self.rings), (DATA, &self.data)] {
            let now = guest::region(mem, base, old.len());
            if now == old.as_slice() {
                continue;
            }
            // Whole 64-byte blocks first (one memcmp each), bytes only in
            // the blocks that changed.
            let blocks = old.chunks(64).zip(now.chunks(64)).enumerate();
            for (k, (ob, nb)) in blocks.filter(|(_, (ob, nb))| ob != nb) {
                let start = base + (k * 64) as u64;
                let end = start + ob.len() as u64;
                if self.writable.iter().any(|&(a, b)| a <= start && end <= b) {
                    continue;
                }
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
///
/// Fields of the used ring that alias a device-writable buffer are not
/// checked (see [`Before::aliased`]).
pub fn check_used(mem: &Mem, before: &Before, index: usize, ring: &Ring, avail_idx: u16) {
    if before.aliased(ring.used + 2, 2) {
        return;
    }
    let used = ring.used_idx(mem);
    if avail_idx <= ring.size {
        assert!(
            used <= avail_idx,
            "used index {used} beyond the {avail_idx} chains made available"
        );
    }
    for pos in 0..used.min(ring.size) {
        if before.aliased(ring.used + 4 + 8 * u64::from(pos), 8) {
            continue;
        }
        let (id, len) = ring.used_elem(mem, pos);
        assert!(
            id < u32::from(ring.size),
            "used element {pos} names head {id} of a {}-entry queue",
            ring.size
        );
        let cap = before.chain_writable(index, id as u16);
        assert!(
            u64::from(len) <= cap,
            "used element {pos}: length {len} beyond the {cap} writable bytes of chain {id}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        b
    }

    /// The walk the closed form replaces: one step at a time.
    fn slow_walk(img: &Image, table: u64, count: u16, start: u16, nested: bool) -> u64 {
        let mut sum = 0u64;
        let mut index = start;
        for _ in 0..count {
            if index >= count {
                break;
            }
            let Some(d) = img.desc_at(table, index) else {
                break;
            };
            if d.flags & INDIRECT != 0 && !nested {
                let n = u16::try_from(d.len / 16).unwrap_or(u16::MAX);
                sum += slow_walk(img, d.addr, n, 0, true);
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

    #[test]
    fn closed_form_walk_matches_stepping() {
        let mut rings = vec![0u8; RINGS_LEN];
        let mut data = vec![0u8; DATA_LEN];
        let mut seed = 0x1234_5678_u64;
        for round in 0..200 {
            for b in rings
                .iter_mut()
                .take(0x200)
                .chain(data.iter_mut().take(0x400))
            {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (seed >> 33) as u8;
            }
            // Descriptors with small next links, some flags, an indirect
            // table in the data region.
            for i in 0..16u16 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let r = seed >> 20;
                let flags = (r & 7) as u16;
                let next = ((r >> 3) % 20) as u16;
                let len = ((r >> 8) & 0xfff) as u32;
                let (addr, len) = if flags & INDIRECT != 0 {
                    (DATA + (r >> 30) % 0x100, 16 * (len % 64))
                } else {
                    (DATA, len)
                };
                rings[16 * usize::from(i)..16 * usize::from(i) + 16]
                    .copy_from_slice(&desc(addr, len, flags, next));
            }
            let img = Image {
                rings: &rings,
                data: &data,
            };
            let size = 1u16 << (round % 5);
            for head in 0..size {
                assert_eq!(
                    img.walk(RINGS, size, head, false),
                    slow_walk(&img, RINGS, size, head, false),
                    "round {round} head {head}"
                );
            }
            for table in [DATA, DATA + 8, DATA - 0x40, RINGS + RINGS_LEN as u64 - 0x20] {
                for count in [0u16, 1, 7, 300, u16::MAX] {
                    let fast: usize = img.readable(table, count).iter().map(|r| r.len()).sum();
                    let slow = (0..count)
                        .filter(|&i| img.desc_at(table, i).is_some())
                        .count();
                    assert_eq!(fast, slow, "table {table:#x} count {count}");
                }
            }
        }
    }
}
