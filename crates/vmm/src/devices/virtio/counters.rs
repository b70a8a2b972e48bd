//! What each virtio device counts of the guest's use of it: queue
//! notifications (kicks), interrupts raised, requests or packets and their
//! payload bytes. One [`DeviceCounters`] per device, shared (`Arc`) by the
//! device, its worker thread and its [`Interrupt`](super::Interrupt);
//! plain relaxed atomics, so counting on the hot paths neither locks nor
//! allocates. The control socket's `status` reports
//! [`DeviceCounters::snapshot`] of every device; the names it uses are
//! [`nacre_vmm_api::counters`]'.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};

use nacre_vmm_api::counters::{self as names, FS_OPS};
use vmm_sys_util::eventfd::EventFd;

/// Which kind of device counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Fs,
    Net,
    Vsock,
}

impl DeviceKind {
    /// The kind's name in the `status` answer.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fs => names::FS,
            Self::Net => names::NET,
            Self::Vsock => names::VSOCK,
        }
    }
}

/// A group of FUSE requests (an index into [`FS_OPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Lookup,
    Stat,
    Open,
    Read,
    Write,
    Readdir,
    Modify,
    Sync,
    Map,
    Other,
}

impl FsOp {
    /// The group of FUSE opcode `opcode` (never trusted to be a valid
    /// `Opcode`: its `From<u32>` transmutes, and the ABI has gaps).
    pub fn of(opcode: u32) -> Self {
        use fuse_backend_rs::abi::fuse_abi::Opcode as O;
        const fn op(o: O) -> u32 {
            o as u32
        }
        const LOOKUP: [u32; 3] = [op(O::Lookup), op(O::Forget), op(O::BatchForget)];
        const STAT: [u32; 7] = [
            op(O::Getattr),
            op(O::Readlink),
            op(O::Statfs),
            op(O::Getxattr),
            op(O::Listxattr),
            op(O::Access),
            op(O::Lseek),
        ];
        const OPEN: [u32; 6] = [
            op(O::Open),
            op(O::Release),
            op(O::Flush),
            op(O::Opendir),
            op(O::Releasedir),
            op(O::Create),
        ];
        const READDIR: [u32; 2] = [op(O::Readdir), op(O::Readdirplus)];
        const MODIFY: [u32; 12] = [
            op(O::Setattr),
            op(O::Symlink),
            op(O::Mknod),
            op(O::Mkdir),
            op(O::Unlink),
            op(O::Rmdir),
            op(O::Rename),
            op(O::Link),
            op(O::Setxattr),
            op(O::Removexattr),
            op(O::Fallocate),
            op(O::Rename2),
        ];
        const SYNC: [u32; 2] = [op(O::Fsync), op(O::Fsyncdir)];
        const MAP: [u32; 2] = [op(O::SetupMapping), op(O::RemoveMapping)];
        match opcode {
            o if o == op(O::Read) => Self::Read,
            o if o == op(O::Write) => Self::Write,
            o if LOOKUP.contains(&o) => Self::Lookup,
            o if STAT.contains(&o) => Self::Stat,
            o if OPEN.contains(&o) => Self::Open,
            o if READDIR.contains(&o) => Self::Readdir,
            o if MODIFY.contains(&o) => Self::Modify,
            o if SYNC.contains(&o) => Self::Sync,
            o if MAP.contains(&o) => Self::Map,
            _ => Self::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One device's counters.
#[derive(Debug)]
pub struct DeviceCounters {
    kind: DeviceKind,
    name: String,
    notifications: AtomicU64,
    interrupts: AtomicU64,
    /// Packets or frames to the guest (rx), from the guest (tx).
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    /// Payload bytes to the guest (rx; fs: read), from it (tx; fs: write).
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// virtio-fs requests by [`FsOp`].
    fs_ops: [AtomicU64; FS_OPS.len()],
}

impl DeviceCounters {
    /// Zeroed counters of a `kind` device called `name` (a share tag, an
    /// interface; cut to [`names::NAME_MAX`] bytes).
    pub fn new(kind: DeviceKind, name: &str) -> Self {
        let mut end = name.len().min(names::NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            kind,
            name: name[..end].to_owned(),
            notifications: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            packets_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            fs_ops: Default::default(),
        }
    }

    /// Clears a queue notification eventfd, counting the kicks it held
    /// (an ioeventfd adds one per QueueNotify write).
    pub fn take_notifications(&self, evt: &EventFd) {
        match evt.read() {
            Ok(n) => add(&self.notifications, n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!(
                device = self.kind.name(),
                "reading a queue notification: {e}"
            ),
        }
    }

    /// Counts an interrupt raised to the guest.
    pub fn interrupt(&self) {
        add(&self.interrupts, 1);
    }

    /// Counts a packet (frame) of `bytes` payload bytes the guest received.
    pub fn received(&self, bytes: u64) {
        add(&self.packets_in, 1);
        add(&self.bytes_in, bytes);
    }

    /// Counts a packet (frame) of `bytes` payload bytes the guest sent.
    pub fn sent(&self, bytes: u64) {
        add(&self.packets_out, 1);
        add(&self.bytes_out, bytes);
    }

    /// Counts a FUSE request served, with the file data it carried to the
    /// guest (`read`) and from it (`written`).
    pub fn fs_request(&self, op: FsOp, read: u64, written: u64) {
        add(&self.fs_ops[op.index()], 1);
        add(&self.bytes_in, read);
        add(&self.bytes_out, written);
    }

    /// The counters as the `status` answer carries them.
    pub fn snapshot(&self) -> names::DeviceCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (bytes_in, bytes_out) = match self.kind {
            DeviceKind::Fs => ("read", "write"),
            DeviceKind::Net | DeviceKind::Vsock => ("rx", "tx"),
        };
        let mut out = names::DeviceCounters {
            device: self.kind.name().to_owned(),
            name: self.name.clone(),
            notifications: get(&self.notifications),
            interrupts: get(&self.interrupts),
            bytes: [
                (bytes_in.to_owned(), get(&self.bytes_in)),
                (bytes_out.to_owned(), get(&self.bytes_out)),
            ]
            .into(),
            ..Default::default()
        };
        match self.kind {
            DeviceKind::Fs => {
                out.requests = FS_OPS
                    .iter()
                    .zip(&self.fs_ops)
                    .map(|(op, n)| ((*op).to_owned(), get(n)))
                    .collect();
            }
            DeviceKind::Net | DeviceKind::Vsock => {
                out.packets = [
                    ("rx".to_owned(), get(&self.packets_in)),
                    ("tx".to_owned(), get(&self.packets_out)),
                ]
                .into();
            }
        }
        out
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_ops_follow_the_api_names() {
        for (op, name) in [
            (FsOp::Lookup, "lookup"),
            (FsOp::Stat, "stat"),
            (FsOp::Open, "open"),
            (FsOp::Read, "read"),
            (FsOp::Write, "write"),
            (FsOp::Readdir, "readdir"),
            (FsOp::Modify, "modify"),
            (FsOp::Sync, "sync"),
            (FsOp::Map, "map"),
            (FsOp::Other, "other"),
        ] {
            assert_eq!(FS_OPS[op.index()], name);
        }
        assert_eq!(FsOp::of(1), FsOp::Lookup);
        assert_eq!(FsOp::of(15), FsOp::Read);
        assert_eq!(FsOp::of(16), FsOp::Write);
        assert_eq!(FsOp::of(44), FsOp::Readdir);
        assert_eq!(FsOp::of(11), FsOp::Modify, "RMDIR");
        assert_eq!(FsOp::of(35), FsOp::Open, "CREATE");
        assert_eq!(FsOp::of(48), FsOp::Map, "SETUPMAPPING");
        assert_eq!(FsOp::of(49), FsOp::Map, "REMOVEMAPPING");
        assert_eq!(FsOp::of(7), FsOp::Other, "a gap in the ABI");
        assert_eq!(FsOp::of(26), FsOp::Other, "INIT");
        assert_eq!(FsOp::of(u32::MAX), FsOp::Other);
    }

    #[test]
    fn snapshots_name_what_each_kind_counts() {
        let fs = DeviceCounters::new(DeviceKind::Fs, "nacre");
        fs.fs_request(FsOp::Read, 100, 0);
        fs.fs_request(FsOp::Write, 0, 7);
        fs.interrupt();
        let s = fs.snapshot();
        assert_eq!((s.device.as_str(), s.name.as_str()), ("fs", "nacre"));
        assert_eq!(s.requests.len(), FS_OPS.len());
        assert_eq!(s.requests["read"], 1);
        assert_eq!(s.bytes, [("read".into(), 100), ("write".into(), 7)].into());
        assert!(s.packets.is_empty());
        assert_eq!(s.interrupts, 1);

        let vsock = DeviceCounters::new(DeviceKind::Vsock, "vsock");
        vsock.received(10);
        vsock.sent(3);
        vsock.sent(4);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        evt.write(1).unwrap();
        evt.write(1).unwrap();
        vsock.take_notifications(&evt);
        vsock.take_notifications(&evt);
        let s = vsock.snapshot();
        assert_eq!(s.packets, [("rx".into(), 1), ("tx".into(), 2)].into());
        assert_eq!(s.bytes, [("rx".into(), 10), ("tx".into(), 7)].into());
        assert_eq!(s.notifications, 2);
        assert!(s.requests.is_empty());
    }

    #[test]
    fn names_are_cut_to_the_limit() {
        let long = "é".repeat(40);
        let c = DeviceCounters::new(DeviceKind::Net, &long);
        assert!(c.snapshot().name.len() <= names::NAME_MAX);
    }
}
