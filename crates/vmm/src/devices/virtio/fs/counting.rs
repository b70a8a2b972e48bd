//! What one served FUSE request adds to the device's counters: its
//! opcode group, and the file data it moved. The opcode and length come
//! from the FUSE server's own copy of the request header (its
//! `MetricsHook`), not from a second read of guest memory; the data read
//! is the reply's length past its header; the data written is what the
//! WRITE request carried, counted only when it succeeded.

use std::cell::Cell;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader, WriteIn};
use fuse_backend_rs::api::server::MetricsHook;

use super::super::counters::{DeviceCounters, FsOp};

/// Notes the header of the request being served (one per request, on
/// the stack: nothing is allocated).
#[derive(Debug, Default)]
pub(super) struct RequestHook {
    /// The opcode and total length the request declared.
    header: Cell<Option<(u32, u32)>>,
}

impl MetricsHook for RequestHook {
    fn collect(&self, ih: &InHeader) {
        self.header.set(Some((ih.opcode, ih.len)));
    }

    fn release(&self, _oh: Option<&OutHeader>) {}
}

impl RequestHook {
    /// Counts the request once it was served with a reply of `written`
    /// bytes (a reply with nothing past its header is an error, or none).
    pub(super) fn count(&self, written: usize, counters: &DeviceCounters) {
        let Some((opcode, len)) = self.header.get() else {
            return;
        };
        let op = FsOp::of(opcode);
        let body = (written as u64).saturating_sub(size_of::<OutHeader>() as u64);
        let (read, wrote) = match op {
            FsOp::Read => (body, 0),
            FsOp::Write if body > 0 => (
                0,
                u64::from(len)
                    .saturating_sub((size_of::<InHeader>() + size_of::<WriteIn>()) as u64),
            ),
            _ => (0, 0),
        };
        counters.fs_request(op, read, wrote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::counters::DeviceKind;

    fn served(opcode: u32, len: u32, written: usize) -> nacre_vmm_api::DeviceCounters {
        let c = DeviceCounters::new(DeviceKind::Fs, "t");
        let hook = RequestHook::default();
        hook.collect(&InHeader {
            len,
            opcode,
            ..Default::default()
        });
        hook.count(written, &c);
        c.snapshot()
    }

    #[test]
    fn counts_read_and_write_payloads() {
        let read = served(15, 80, 16 + 4096);
        assert_eq!(read.requests["read"], 1);
        assert_eq!(read.bytes["read"], 4096);
        let write = served(16, 80 + 100, 16 + 8);
        assert_eq!(write.requests["write"], 1);
        assert_eq!(write.bytes["write"], 100);
        let failed = served(16, 80 + 100, 16);
        assert_eq!(failed.requests["write"], 1);
        assert_eq!(failed.bytes["write"], 0, "an error reply moved no data");
        let lying = served(16, 10, 24);
        assert_eq!(lying.bytes["write"], 0, "a header shorter than a WRITE");
    }

    #[test]
    fn a_request_the_server_never_decoded_is_not_counted() {
        let c = DeviceCounters::new(DeviceKind::Fs, "t");
        RequestHook::default().count(100, &c);
        assert!(c.snapshot().requests.values().all(|&n| n == 0));
    }
}
