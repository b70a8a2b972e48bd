//! An address bus: ranges of port or MMIO addresses, each served by one
//! device. The vCPU threads dispatch their I/O exits through it.
//!
//! A bus is built before the vCPUs start and never changes afterwards, so
//! the vCPU threads share it without locking; each device has its own lock.

use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the base the device was
/// inserted at.
pub trait BusDevice: Send {
    /// Fills `data` from the device at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the device at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Address ranges and their devices, sorted by base.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .entries
            .iter()
            .map(|e| format!("{:#x}+{:#x}", e.base, e.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Reads from the device at `addr`; false when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((entry, offset)) = self.find(addr) else {
            return false;
        };
        // A poisoned lock means a device panicked on another vCPU; its state
        // is still the best we have.
        let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
        dev.read(offset, data);
        true
    }

    /// Writes to the device at `addr`; false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((entry, offset)) = self.find(addr) else {
            return false;
        };
        let mut dev = entry.device.lock().unwrap_or_else(|p| p.into_inner());
        dev.write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        assert!(bus.insert(0x3f8, 8, a.clone()).is_ok());
        assert!(bus
            .insert(0x60, 5, Arc::new(Mutex::new(Recorder::default())))
            .is_ok());
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data[0], 3);
        assert!(bus.write(0x3f9, &[7]));
        let last = a.lock().map(|d| d.last_write.clone()).unwrap_or_default();
        assert_eq!(last, Some((1, vec![7])));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
        assert!(bus.read(0x64, &mut data));
        assert!(!bus.read(0x65, &mut data));
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        assert!(bus.insert(0x100, 0x10, dev()).is_ok());
        assert!(bus.insert(0x10f, 1, dev()).is_err());
        assert!(bus.insert(0xf8, 9, dev()).is_err());
        assert!(bus.insert(0xf8, 8, dev()).is_ok());
        assert!(bus.insert(0x200, 0, dev()).is_err());
    }
}
