//! End-to-end tests: the device with its worker thread over hand-laid
//! virtqueues in real guest memory, a fake FUSE driver in the test thread,
//! and a real directory on the host side. The FUSE messages are laid out
//! byte by byte here, independently of fuse-backend-rs' own ABI types.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActiveQueue, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};
use super::{CacheMode, DaxWindow, SharedDir, VirtioFs};

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 8 << 20;
const HIPRIO_RING: u64 = 0x0;
const REQUEST_RING: u64 = 0x1000;
const REQ_BUF: u64 = 0x10_0000;
const REPLY_BUF: u64 = 0x20_0000;
const REPLY_MAX: u32 = (1 << 20) + 0x1000;
const WAIT: Duration = Duration::from_secs(30);

const OP_LOOKUP: u32 = 1;
const OP_GETATTR: u32 = 3;
const OP_SETATTR: u32 = 4;
const OP_MKNOD: u32 = 8;
const OP_OPEN: u32 = 14;
const OP_READ: u32 = 15;
const OP_WRITE: u32 = 16;
const OP_RELEASE: u32 = 18;
const OP_INIT: u32 = 26;
const OP_CREATE: u32 = 35;
const OP_SETUPMAPPING: u32 = 48;
const OP_REMOVEMAPPING: u32 = 49;
const ROOT: u64 = 1;
const FATTR_SIZE: u32 = 0x8;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nacre-fs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn guest_memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The driver's view of one split virtqueue.
struct Ring<'a> {
    mem: &'a GuestMemory,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl<'a> Ring<'a> {
    fn at(mem: &'a GuestMemory, base: u64) -> Self {
        let avail = base + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        Self {
            mem,
            desc: base,
            avail,
            used,
            next_avail: 0,
            next_used: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Publishes a chain of (addr, len, device-writable) descriptors.
    fn push(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        for (k, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let d = SplitDescriptor::new(addr, len, flags as u16, k as u16 + 1);
            self.mem
                .write_obj(d, GuestAddress(self.desc + 16 * k as u64))
                .unwrap();
        }
        let slot = u64::from(self.next_avail % QSIZE);
        self.mem
            .write_obj(0u16, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        std::sync::atomic::fence(Ordering::Release);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        self.next_avail
    }

    /// Waits for the next used element; returns its length.
    fn wait_used(&mut self) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            std::sync::atomic::fence(Ordering::Acquire);
            if idx != self.next_used {
                let at = self.used + 4 + 8 * u64::from(self.next_used % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                assert_eq!(id, 0);
                self.next_used = self.next_used.wrapping_add(1);
                return self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            }
            assert!(Instant::now() < deadline, "no reply from the device");
            thread::sleep(Duration::from_micros(100));
        }
    }
}

/// A FUSE reply: the error (0 or -errno) and the payload after the header.
#[derive(Debug)]
struct Reply {
    error: i32,
    unique: u64,
    body: Vec<u8>,
}

impl Reply {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
}

/// Offsets in `struct fuse_entry_out`.
const ENTRY_NODEID: usize = 0;
const ENTRY_ATTR_SIZE: usize = 40 + 8;
const ENTRY_ATTR_MODE: usize = 40 + 60;
/// Offsets in `struct fuse_attr_out`.
const ATTR_OUT_SIZE: usize = 16 + 8;

struct Driver<'a> {
    mem: &'a GuestMemory,
    hiprio: Ring<'a>,
    request: Ring<'a>,
    hiprio_kick: EventFd,
    request_kick: EventFd,
    irq_status: Arc<AtomicU32>,
    unique: u64,
    device: VirtioFs,
}

impl<'a> Driver<'a> {
    fn start(mem: &'a GuestMemory, root: &Path) -> Self {
        Self::start_with(mem, root, CacheMode::Auto)
    }

    fn start_with(mem: &'a GuestMemory, root: &Path, cache: CacheMode) -> Self {
        Self::start_full(mem, root, cache, None)
    }

    fn start_full(
        mem: &'a GuestMemory,
        root: &Path,
        cache: CacheMode,
        window: Option<Arc<DaxWindow>>,
    ) -> Self {
        let dir = SharedDir {
            tag: "nacre".into(),
            path: root.to_path_buf(),
            cache,
        };
        let mut device = VirtioFs::new(&dir).unwrap();
        if let Some(w) = window {
            device.set_window(w);
        }
        let hiprio = Ring::at(mem, HIPRIO_RING);
        let request = Ring::at(mem, REQUEST_RING);
        let notify = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues = vec![
            ActiveQueue {
                queue: hiprio.queue(),
                notify: notify(),
            },
            ActiveQueue {
                queue: request.queue(),
                notify: notify(),
            },
        ];
        let hiprio_kick = queues[0].notify.try_clone().unwrap();
        let request_kick = queues[1].notify.try_clone().unwrap();
        let irq_status = Arc::new(AtomicU32::new(0));
        let interrupt =
            Arc::new(Interrupt::new(irq_status.clone(), notify()).counted(device.counters()));
        device.set_acked_features(device.avail_features());
        device.activate(mem.clone(), interrupt, queues).unwrap();
        Self {
            mem,
            hiprio,
            request,
            hiprio_kick,
            request_kick,
            irq_status,
            unique: 0,
            device,
        }
    }

    /// The device's counters now.
    fn counters(&self) -> nacre_vmm_api::DeviceCounters {
        self.device.counters().unwrap().snapshot()
    }

    /// The device's counters once the worker has taken `kicks` queue
    /// notifications (the last one may be read after its request was
    /// served).
    fn counters_after(&self, kicks: u64) -> nacre_vmm_api::DeviceCounters {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.counters();
            if c.notifications >= kicks || Instant::now() > deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// A request: `fuse_in_header` then `args`.
    fn message(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let len = 40 + args.len() as u32;
        let mut m = Vec::with_capacity(len as usize);
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&opcode.to_le_bytes());
        m.extend_from_slice(&self.unique.to_le_bytes());
        m.extend_from_slice(&nodeid.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes()); // uid
        m.extend_from_slice(&0u32.to_le_bytes()); // gid
        m.extend_from_slice(&1u32.to_le_bytes()); // pid
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(args);
        m
    }

    /// Sends raw request bytes with a reply buffer of `reply_len`; returns
    /// the used length and the reply bytes.
    fn send_raw(&mut self, bytes: &[u8], reply_len: u32) -> (u32, Vec<u8>) {
        self.mem.write_slice(bytes, GuestAddress(REQ_BUF)).unwrap();
        let mut descs = vec![(REQ_BUF, bytes.len() as u32, false)];
        if reply_len > 0 {
            descs.push((REPLY_BUF, reply_len, true));
        }
        self.send_chain(&descs)
    }

    fn send_chain(&mut self, descs: &[(u64, u32, bool)]) -> (u32, Vec<u8>) {
        self.request.push(descs);
        self.request_kick.write(1).unwrap();
        let used = self.request.wait_used();
        // The interrupt follows the used ring update of the batch.
        let deadline = Instant::now() + WAIT;
        while self.irq_status.swap(0, Ordering::SeqCst) & VIRTIO_MMIO_INT_VRING == 0 {
            assert!(Instant::now() < deadline, "no interrupt after a reply");
            thread::sleep(Duration::from_micros(50));
        }
        let mut reply = vec![0; used.min(REPLY_MAX) as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY_BUF))
            .unwrap();
        (used, reply)
    }

    fn call(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Reply {
        let reply = self.call_or_drop(opcode, nodeid, args);
        reply.unwrap_or_else(|| panic!("no reply to opcode {opcode}"))
    }

    /// A request the device may answer with an error or drop (used
    /// length 0) as malformed; a reply must not claim success.
    fn call_malformed(&mut self, opcode: u32, nodeid: u64, args: &[u8]) {
        if let Some(r) = self.call_or_drop(opcode, nodeid, args) {
            assert_ne!(r.error, 0, "{r:?}");
        }
    }

    fn call_or_drop(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Option<Reply> {
        let msg = self.message(opcode, nodeid, args);
        let (used, bytes) = self.send_raw(&msg, REPLY_MAX);
        if used == 0 {
            return None;
        }
        assert!(used >= 16, "short reply ({used} bytes) to opcode {opcode}");
        let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        assert_eq!(len, used, "out header length vs used length");
        Some(Reply {
            error: i32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            unique: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            body: bytes[16..].to_vec(),
        })
    }

    fn init(&mut self) {
        let mut args = Vec::new();
        for v in [7u32, 31, 128 << 10, 0] {
            args.extend_from_slice(&v.to_le_bytes());
        }
        let r = self.call(OP_INIT, 0, &args);
        assert_eq!(r.error, 0, "{r:?}");
        assert_eq!(r.unique, self.unique);
        assert_eq!(r.u32_at(0), 7, "major");
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Reply {
        let mut args = name.as_bytes().to_vec();
        args.push(0);
        self.call(OP_LOOKUP, parent, &args)
    }

    fn lookup_ok(&mut self, parent: u64, name: &str) -> u64 {
        let r = self.lookup(parent, name);
        assert_eq!(r.error, 0, "lookup {name}: {r:?}");
        r.u64_at(ENTRY_NODEID)
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Reply {
        let mut args = (flags as u32).to_le_bytes().to_vec();
        args.extend_from_slice(&0u32.to_le_bytes());
        self.call(OP_OPEN, nodeid, &args)
    }

    fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Reply {
        let mut args = Vec::new();
        args.extend_from_slice(&fh.to_le_bytes());
        args.extend_from_slice(&offset.to_le_bytes());
        args.extend_from_slice(&size.to_le_bytes());
        args.extend_from_slice(&[0; 20]);
        self.call(OP_READ, nodeid, &args)
    }

    fn write(&mut self, nodeid: u64, fh: u64, data: &[u8]) -> Reply {
        let mut args = Vec::new();
        args.extend_from_slice(&fh.to_le_bytes());
        args.extend_from_slice(&0u64.to_le_bytes());
        args.extend_from_slice(&(data.len() as u32).to_le_bytes());
        args.extend_from_slice(&[0; 20]);
        args.extend_from_slice(data);
        self.call(OP_WRITE, nodeid, &args)
    }

    fn release(&mut self, nodeid: u64, fh: u64) {
        let mut args = fh.to_le_bytes().to_vec();
        args.extend_from_slice(&[0; 16]);
        let r = self.call(OP_RELEASE, nodeid, &args);
        assert_eq!(r.error, 0, "{r:?}");
    }

    fn truncate(&mut self, nodeid: u64, size: u64) -> Reply {
        // struct fuse_setattr_in: valid, padding, fh, size, lock_owner,
        // atime, mtime, ctime, 3 nsec, mode, unused4, uid, gid, unused5.
        let mut args = vec![0u8; 88];
        args[0..4].copy_from_slice(&FATTR_SIZE.to_le_bytes());
        args[16..24].copy_from_slice(&size.to_le_bytes());
        self.call(OP_SETATTR, nodeid, &args)
    }

    fn create(&mut self, parent: u64, name: &str) -> Reply {
        let mut args = Vec::new();
        for v in [libc::O_RDWR as u32, 0o100644, 0o022, 0] {
            args.extend_from_slice(&v.to_le_bytes());
        }
        args.extend_from_slice(name.as_bytes());
        args.push(0);
        self.call(OP_CREATE, parent, &args)
    }
}

/// The calling thread's umask, from /proc.
fn thread_umask() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    line.to_string()
}

#[test]
fn init_lookup_getattr_read_write() {
    let dir = temp_dir("basic");
    std::fs::write(dir.join("hello.txt"), b"hello from the host\n").unwrap();
    let umask_before = thread_umask();
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    d.init();
    // PassthroughFs sets its umask to 0 on INIT: only in the worker thread.
    assert_eq!(thread_umask(), umask_before);

    let r = d.lookup(ROOT, "hello.txt");
    assert_eq!(r.error, 0, "{r:?}");
    let node = r.u64_at(ENTRY_NODEID);
    assert!(node > ROOT);
    assert_eq!(r.u64_at(ENTRY_ATTR_SIZE), 20);
    assert_eq!(r.u32_at(ENTRY_ATTR_MODE) & libc::S_IFMT, libc::S_IFREG);

    let r = d.call(OP_GETATTR, node, &[0; 16]);
    assert_eq!(r.error, 0, "{r:?}");
    assert_eq!(r.u64_at(ATTR_OUT_SIZE), 20);

    let r = d.lookup(ROOT, "missing");
    assert_eq!(r.error, -libc::ENOENT);

    let r = d.open(node, libc::O_RDONLY);
    assert_eq!(r.error, 0, "{r:?}");
    let fh = r.u64_at(0);
    let r = d.read(node, fh, 0, 4096);
    assert_eq!(r.error, 0);
    assert_eq!(r.body, b"hello from the host\n");
    d.release(node, fh);

    let r = d.create(ROOT, "out.txt");
    assert_eq!(r.error, 0, "{r:?}");
    let out_node = r.u64_at(ENTRY_NODEID);
    let out_fh = r.u64_at(128);
    let r = d.write(out_node, out_fh, b"data\n");
    assert_eq!(r.error, 0, "{r:?}");
    assert_eq!(r.u32_at(0), 5);
    d.release(out_node, out_fh);
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), b"data\n");
    // The guest asked for 0644 with umask 022: the host file has exactly
    // that mode, and the VMM's own umask was left alone.
    let mode = std::fs::metadata(dir.join("out.txt"))
        .unwrap()
        .permissions();
    assert_eq!(mode.mode() & 0o777, 0o644);

    // Ten requests, each kicked and answered with an interrupt; the file
    // data both ways is counted, not the FUSE headers around it.
    let c = d.counters_after(10);
    assert_eq!((c.device.as_str(), c.name.as_str()), ("fs", "nacre"));
    assert_eq!(c.notifications, 10, "{c:?}");
    assert_eq!(c.interrupts, 10, "{c:?}");
    let want = [
        ("other", 1),  // INIT
        ("lookup", 2), // LOOKUP twice
        ("stat", 1),   // GETATTR
        ("open", 4),   // OPEN, RELEASE, CREATE, RELEASE
        ("read", 1),
        ("write", 1),
        ("readdir", 0),
        ("modify", 0),
        ("sync", 0),
    ];
    for (op, n) in want {
        assert_eq!(c.requests.get(op), Some(&n), "{op}: {c:?}");
    }
    assert_eq!(c.bytes, [("read".into(), 20), ("write".into(), 5)].into());

    assert!(d.device.reset());
    // Counters outlive a reset: they count since the VMM started.
    assert_eq!(d.counters().requests["read"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cache_mode_sets_the_open_flags() {
    const FOPEN_DIRECT_IO: u32 = 1;
    const FOPEN_KEEP_CACHE: u32 = 2;
    let dir = temp_dir("cache");
    std::fs::write(dir.join("f"), b"x").unwrap();
    for (mode, flags) in [
        (CacheMode::Auto, 0),
        (CacheMode::Always, FOPEN_KEEP_CACHE),
        (CacheMode::Never, FOPEN_DIRECT_IO),
    ] {
        let mem = guest_memory();
        let mut d = Driver::start_with(&mem, &dir, mode);
        d.init();
        let node = d.lookup_ok(ROOT, "f");
        let r = d.open(node, libc::O_RDONLY);
        assert_eq!(r.error, 0);
        assert_eq!(r.u32_at(8) & 3, flags, "{mode}");
        d.release(node, r.u64_at(0));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reads_a_large_file() {
    let dir = temp_dir("large");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big"), &data).unwrap();
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    d.init();
    let node = d.lookup_ok(ROOT, "big");
    let r = d.open(node, libc::O_RDONLY);
    assert_eq!(r.error, 0);
    let fh = r.u64_at(0);
    let start = Instant::now();
    let mut got = Vec::with_capacity(data.len());
    let chunk = 1u32 << 20;
    while got.len() < data.len() {
        let r = d.read(node, fh, got.len() as u64, chunk);
        assert_eq!(r.error, 0);
        assert!(!r.body.is_empty());
        got.extend_from_slice(&r.body);
    }
    let took = start.elapsed();
    assert!(got == data, "content differs");
    assert!(took < Duration::from_secs(5), "4 MiB took {took:?}");
    eprintln!("virtio-fs: read 4 MiB in {took:?}");
    d.release(node, fh);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stays_inside_the_shared_directory() {
    let dir = temp_dir("escape");
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(dir.join("secret"), b"host only").unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("up-link")).unwrap();
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &share);
    d.init();

    // `..` of the root is the root.
    assert_eq!(d.lookup_ok(ROOT, ".."), ROOT);
    let sub = d.lookup_ok(ROOT, "sub");
    let up = d.lookup_ok(sub, "..");
    assert_eq!(up, ROOT);
    assert_eq!(d.lookup(up, "secret").error, -libc::ENOENT);
    // Names with a slash are refused.
    assert_eq!(d.lookup(ROOT, "../secret").error, -libc::EINVAL);
    assert_eq!(d.lookup(ROOT, "/etc").error, -libc::EINVAL);
    // Symlinks are not followed by the host: the guest gets the link.
    let r = d.lookup(ROOT, "etc-link");
    assert_eq!(r.error, 0);
    assert_eq!(r.u32_at(ENTRY_ATTR_MODE) & libc::S_IFMT, libc::S_IFLNK);
    let link = r.u64_at(ENTRY_NODEID);
    assert_ne!(d.lookup(link, "passwd").error, 0);
    assert_ne!(d.open(link, libc::O_RDONLY).error, 0);
    let link = d.lookup_ok(ROOT, "up-link");
    assert_ne!(d.open(link, libc::O_RDONLY).error, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn special_files_are_not_opened_or_created() {
    let dir = temp_dir("special");
    let fifo = std::ffi::CString::new(dir.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    d.init();
    // Opening a FIFO on the host would block the device: refused.
    let node = d.lookup_ok(ROOT, "fifo");
    assert_ne!(d.open(node, libc::O_RDONLY).error, 0);
    assert_ne!(d.open(node, libc::O_RDWR | libc::O_NONBLOCK).error, 0);
    // Device nodes cannot be made; FIFOs can.
    let mknod = |mode: u32, rdev: u32, name: &str| {
        let mut args = Vec::new();
        for v in [mode, rdev, 0, 0] {
            args.extend_from_slice(&v.to_le_bytes());
        }
        args.extend_from_slice(name.as_bytes());
        args.push(0);
        args
    };
    let r = d.call(OP_MKNOD, ROOT, &mknod(libc::S_IFBLK | 0o600, 0x0800, "sda"));
    assert_eq!(r.error, -libc::EPERM);
    let r = d.call(
        OP_MKNOD,
        ROOT,
        &mknod(libc::S_IFCHR | 0o666, 0x0103, "null"),
    );
    assert_eq!(r.error, -libc::EPERM);
    assert!(!dir.join("sda").exists() && !dir.join("null").exists());
    let r = d.call(OP_MKNOD, ROOT, &mknod(libc::S_IFIFO | 0o600, 0, "fifo2"));
    assert_eq!(r.error, 0, "{r:?}");
    // Regular files (type 0 too) can, whatever rdev says; other types not.
    let r = d.call(OP_MKNOD, ROOT, &mknod(libc::S_IFREG | 0o600, 0x0103, "reg"));
    assert_eq!(r.error, 0, "{r:?}");
    let r = d.call(OP_MKNOD, ROOT, &mknod(0o600, 0, "reg0"));
    assert_eq!(r.error, 0, "{r:?}");
    let r = d.call(OP_MKNOD, ROOT, &mknod(libc::S_IFDIR | 0o700, 0, "dir"));
    assert_eq!(r.error, -libc::EPERM);
    let r = d.call(OP_MKNOD, ROOT, &mknod(libc::S_IFLNK | 0o777, 0, "lnk"));
    assert_eq!(r.error, -libc::EPERM);
    assert!(std::fs::metadata(dir.join("reg")).unwrap().is_file());
    assert!(std::fs::metadata(dir.join("reg0")).unwrap().is_file());
    assert!(!dir.join("dir").exists() && !dir.join("lnk").exists());
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["fifo", "fifo2", "reg", "reg0"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// M2, the double-fetch attack: while MKNOD requests are served, a
/// second "vCPU" flips the request's mode word in guest memory between a
/// regular file and a character device (1:3) as fast as it can. Safe
/// outcome: no device node ever appears on the host; every node made is
/// a regular file (the rule is checked on the value the server parsed).
#[test]
fn flipping_the_mknod_mode_never_makes_a_device_node() {
    const REQUESTS: u32 = 3000;
    let dir = temp_dir("mknod-flip");
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    d.init();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (mem, stop) = (mem.clone(), stop.clone());
        thread::spawn(move || {
            let mut flips = 0u64;
            let mode_at = GuestAddress(REQ_BUF + 40);
            while !stop.load(Ordering::Relaxed) {
                for mode in [libc::S_IFCHR | 0o666, libc::S_IFREG | 0o600] {
                    mem.write_obj(mode, mode_at).unwrap();
                }
                flips += 2;
            }
            flips
        })
    };
    let (mut refused, mut made) = (0u32, 0u32);
    // Until the flips have raced the server both ways (some nodes made,
    // some refused), at least REQUESTS requests: the flipper's pace
    // depends on the host's load, so no count of flips is asserted.
    let mut i = 0u32;
    while i < REQUESTS || ((made == 0 || refused == 0) && i < 10 * REQUESTS) {
        i += 1;
        let mut args = Vec::new();
        for v in [libc::S_IFREG | 0o600, 0x0103, 0, 0] {
            args.extend_from_slice(&v.to_le_bytes());
        }
        args.extend_from_slice(format!("n{i}").as_bytes());
        args.push(0);
        match d.call(OP_MKNOD, ROOT, &args).error {
            0 => made += 1,
            e if e == -libc::EPERM => refused += 1,
            e => panic!("mknod n{i}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    eprintln!("{i} MKNODs under {flips} mode flips: {made} regular files, {refused} refused");
    assert!(
        made > 0 && refused > 0,
        "the flips never raced the server: {made} made, {refused} refused, {flips} flips"
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert!(
            meta.is_file(),
            "a node that is not a regular file: {meta:?}"
        );
    }
    assert_eq!(made + refused, REQUESTS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_requests_do_not_stop_the_device() {
    let dir = temp_dir("malformed");
    std::fs::write(dir.join("f"), b"x").unwrap();
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    d.init();

    // Shorter than a header: dropped.
    let (used, _) = d.send_raw(&[1, 2, 3], 64);
    assert_eq!(used, 0);
    // No reply buffer: dropped.
    let msg = d.message(OP_GETATTR, ROOT, &[0; 16]);
    let (used, _) = d.send_raw(&msg, 0);
    assert_eq!(used, 0);
    // A reply buffer too small for the reply.
    let msg = d.message(OP_LOOKUP, ROOT, b"f\0");
    let (used, _) = d.send_raw(&msg, 8);
    assert_eq!(used, 0);
    // Buffers outside guest memory: dropped.
    let (used, _) = d.send_chain(&[(MEM_SIZE as u64 - 8, 64, false), (REPLY_BUF, 64, true)]);
    assert_eq!(used, 0);
    let (used, _) = d.send_chain(&[(u64::MAX - 8, 64, false), (REPLY_BUF, 64, true)]);
    assert_eq!(used, 0);
    let msg = d.message(OP_GETATTR, ROOT, &[0; 16]);
    d.mem.write_slice(&msg, GuestAddress(REQ_BUF)).unwrap();
    let (used, _) = d.send_chain(&[
        (REQ_BUF, msg.len() as u32, false),
        (MEM_SIZE as u64 + 0x1000, 4096, true),
    ]);
    assert_eq!(used, 0);
    // Unknown opcode: ENOSYS.
    assert_eq!(d.call(9999, ROOT, &[]).error, -libc::ENOSYS);
    // A header claiming a huge length.
    let mut msg = d.message(OP_GETATTR, ROOT, &[0; 16]);
    msg[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (used, bytes) = d.send_raw(&msg, 4096);
    if used >= 16 {
        assert!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()) < 0);
    }
    // Truncated arguments, a name without NUL, bogus node ids and handles.
    d.call_malformed(OP_READ, ROOT, &[0; 4]);
    d.call_malformed(OP_LOOKUP, ROOT, b"f");
    d.call_malformed(OP_INIT, 0, &[0; 3]);
    assert_ne!(d.call(OP_GETATTR, 0xdead_beef, &[0; 16]).error, 0);
    assert_ne!(d.read(ROOT, 0xdead, 0, 16).error, 0);
    assert_ne!(d.open(0xdead_beef, libc::O_RDONLY).error, 0);
    // A write whose header claims more data than was sent.
    let mut args = Vec::new();
    args.extend_from_slice(&1u64.to_le_bytes());
    args.extend_from_slice(&0u64.to_le_bytes());
    args.extend_from_slice(&(1u32 << 30).to_le_bytes());
    args.extend_from_slice(&[0; 20]);
    d.call_malformed(OP_WRITE, ROOT, &args);
    // The hiprio queue gets a FORGET (no reply) and garbage.
    d.hiprio.push(&[(REQ_BUF, 3, false)]);
    d.hiprio_kick.write(1).unwrap();
    assert_eq!(d.hiprio.wait_used(), 0);

    // Still serving.
    let node = d.lookup_ok(ROOT, "f");
    assert_eq!(d.call(OP_GETATTR, node, &[0; 16]).error, 0);
    // The failed READ and the WRITE that claimed 1 GiB moved no data.
    let c = d.counters();
    assert_eq!(c.bytes, [("read".into(), 0), ("write".into(), 0)].into());
    assert!(
        c.requests["lookup"] >= 1 && c.requests["stat"] >= 2,
        "{c:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Read-only bind mounts inside the shared directory stay read-only, also
/// when the same file is reachable writable through another path. Needs
/// root (a private mount namespace for this thread); skipped otherwise.
#[test]
fn read_only_bind_mounts_stay_read_only() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for bind mounts");
        return;
    }
    let dir = temp_dir("robind");
    let handle = thread::spawn(move || ro_bind_checks(&dir));
    let result = handle.join();
    assert!(result.is_ok(), "read-only bind mount checks failed");
}

fn ro_bind_checks(dir: &Path) {
    use std::ffi::CString;
    let rw = dir.join("rw");
    let ro = dir.join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("f"), b"original").unwrap();
    let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain syscalls on valid NUL-terminated paths; the mount
    // namespace is private to this thread (and the threads it spawns).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            eprintln!(
                "skipped: unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        assert_eq!(
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        let (src, dst) = (c(&rw), c(&ro));
        assert_eq!(
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null()
            ),
            0
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null()
            ),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
    let mem = guest_memory();
    let mut d = Driver::start(&mem, dir);
    d.init();
    // The writable path first, so its inode is known before the other one.
    let rw_dir = d.lookup_ok(ROOT, "rw");
    let rw_f = d.lookup_ok(rw_dir, "f");
    let ro_dir = d.lookup_ok(ROOT, "ro");
    let ro_f = d.lookup_ok(ro_dir, "f");
    assert_ne!(rw_f, ro_f, "the ro path must not reuse the rw inode");
    for flags in [libc::O_RDWR, libc::O_WRONLY, libc::O_WRONLY | libc::O_TRUNC] {
        let r = d.open(ro_f, flags);
        assert_eq!(r.error, -libc::EROFS, "open flags {flags:#x}: {r:?}");
    }
    assert_eq!(d.truncate(ro_f, 0).error, -libc::EROFS);
    assert_eq!(d.create(ro_dir, "new").error, -libc::EROFS);
    let r = d.open(ro_f, libc::O_RDONLY);
    assert_eq!(r.error, 0);
    d.release(ro_f, r.u64_at(0));
    // The writable path still works.
    let r = d.open(rw_f, libc::O_RDWR);
    assert_eq!(r.error, 0, "{r:?}");
    d.release(rw_f, r.u64_at(0));
    assert_eq!(std::fs::read(rw.join("f")).unwrap(), b"original");
    drop(d);
    // SAFETY: unmounting the bind mount made above, in this namespace.
    unsafe { libc::umount2(c(&ro).as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir_all(dir);
}

/// A LOOKUP whose 1 MiB name has no NUL makes fuse-backend-rs log the whole
/// body in `Debug` form (about 4 MiB): what reaches the log stays bounded.
#[test]
fn a_huge_malformed_lookup_logs_a_bounded_line() {
    use crate::logging::test_util::{bridge_log, SharedBuf};
    use crate::logging::{subscriber, LogLimits};

    bridge_log();
    let dir = temp_dir("hugelookup");
    std::fs::write(dir.join("f"), b"x").unwrap();
    let buf = SharedBuf::default();
    let limits = LogLimits::default();
    let (sub, handle) = subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        &limits,
        buf.clone(),
    );
    const BIG_REQ: u64 = 0x30_0000;
    tracing::subscriber::with_default(sub, || {
        let mem = guest_memory();
        let mut d = Driver::start(&mem, &dir);
        d.init();
        for _ in 0..50 {
            let name = vec![b'a'; (1 << 20) - 64];
            let msg = d.message(OP_LOOKUP, ROOT, &name);
            mem.write_slice(&msg, GuestAddress(BIG_REQ)).unwrap();
            // fuse-backend-rs writes EINVAL but returns an error, so the
            // worker drops the request (used length 0).
            let (used, _) =
                d.send_chain(&[(BIG_REQ, msg.len() as u32, false), (REPLY_BUF, 4096, true)]);
            assert_eq!(used, 0);
        }
        // Still serving.
        d.lookup_ok(ROOT, "f");
    });
    handle.flush();
    let text = buf.contents();
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    eprintln!(
        "50 x 1 MiB LOOKUP: {} log bytes, longest line {longest}, {} suppressed",
        text.len(),
        handle.suppressed()
    );
    assert!(text.contains("bytes to cstr error"), "{text}");
    assert!(longest <= limits.max_line, "{longest}");
    assert!(text.len() < 32 << 10, "{}", text.len());
    // fuse-backend-rs logs twice per request: 40 + 40 dropped. The worker
    // warns about its first 16 dropped requests in the process (other
    // tests share that counter), so up to 6 more.
    assert!(
        (80..=86).contains(&handle.suppressed()),
        "{}",
        handle.suppressed()
    );
    assert!(text.contains("40 messages from fuse_backend_rs"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// fuse_setupmapping_in: fh, foffset, len, flags (2: read), moffset.
fn setupmapping(fh: u64, foffset: u64, len: u64, moffset: u64) -> Vec<u8> {
    [fh, foffset, len, 2, moffset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// fuse_removemapping_in (count) and its fuse_removemapping_one entries.
fn removemapping(count: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut args = count.to_le_bytes().to_vec();
    for (moffset, len) in ranges {
        args.extend_from_slice(&moffset.to_le_bytes());
        args.extend_from_slice(&len.to_le_bytes());
    }
    args
}

/// The attack: a guest asks the device to map a file outside its DAX
/// window (past the end, wrapping around, unaligned), or to remove a
/// huge list of ranges it did not send. The safe outcome: an error
/// reply, and the window alone changes: a mapping inside it shows the
/// file, a removal hides it again; without a window nothing is mapped.
#[test]
fn mappings_stay_inside_the_dax_window() {
    const PAGE: u64 = 4096;
    let dir = temp_dir("dax");
    let mut data = vec![b'a'; PAGE as usize];
    data.extend(vec![b'b'; PAGE as usize]);
    std::fs::write(dir.join("bin"), &data).unwrap();
    let window = Arc::new(DaxWindow::new(1 << 32, 16 * PAGE).unwrap());
    let mem = guest_memory();
    let mut d = Driver::start_full(&mem, &dir, CacheMode::Auto, Some(window.clone()));
    d.init();
    let node = d.lookup_ok(ROOT, "bin");
    let r = d.open(node, libc::O_RDONLY);
    assert_eq!(r.error, 0, "{r:?}");
    let fh = r.u64_at(0);

    let r = d.call(OP_SETUPMAPPING, node, &setupmapping(fh, 0, 2 * PAGE, PAGE));
    assert_eq!(r.error, 0, "{r:?}");
    let at = |offset: u64| (window.host_addr() + offset) as *const u8;
    // SAFETY: window pages 1 and 2 map the file's two pages (read-only).
    assert_eq!(unsafe { (*at(PAGE), *at(2 * PAGE)) }, (b'a', b'b'));

    for (what, args) in [
        ("past the end", setupmapping(fh, 0, PAGE, 16 * PAGE)),
        ("across the end", setupmapping(fh, 0, 2 * PAGE, 15 * PAGE)),
        (
            "wrapping",
            setupmapping(fh, 0, 2 * PAGE, u64::MAX - PAGE + 1),
        ),
        ("unaligned", setupmapping(fh, 1, PAGE, 0)),
        ("huge", setupmapping(fh, 0, !(PAGE - 1), 0)),
    ] {
        let r = d.call(OP_SETUPMAPPING, node, &args);
        assert_eq!(r.error, -libc::EINVAL, "{what}: {r:?}");
    }
    d.call_malformed(OP_REMOVEMAPPING, node, &removemapping(u32::MAX, &[]));
    d.call_malformed(
        OP_REMOVEMAPPING,
        node,
        &removemapping(1 << 20, &[(0, PAGE)]),
    );
    let r = d.call(
        OP_REMOVEMAPPING,
        node,
        &removemapping(1, &[(16 * PAGE, PAGE)]),
    );
    assert_eq!(r.error, -libc::EINVAL, "{r:?}");
    // SAFETY: as above: the refused requests left the mapping alone.
    assert_eq!(unsafe { *at(PAGE) }, b'a');

    let r = d.call(
        OP_REMOVEMAPPING,
        node,
        &removemapping(1, &[(PAGE, 2 * PAGE)]),
    );
    assert_eq!(r.error, 0, "{r:?}");
    let mut resident = [0u8; 1];
    // SAFETY: mincore only reports on the range.
    let rc = unsafe { libc::mincore(at(PAGE) as *mut _, PAGE as usize, resident.as_mut_ptr()) };
    assert_eq!((rc, resident[0] & 1), (0, 0), "the page is reserved again");
    let c = d.counters();
    assert_eq!(c.requests.get("map"), Some(&10), "{c:?}");

    // A device the VM gave no window maps nothing.
    let dir2 = temp_dir("nodax");
    std::fs::write(dir2.join("bin"), &data).unwrap();
    let mem2 = guest_memory();
    let mut d2 = Driver::start(&mem2, &dir2);
    d2.init();
    let node = d2.lookup_ok(ROOT, "bin");
    let fh = d2.open(node, libc::O_RDONLY).u64_at(0);
    let r = d2.call(OP_SETUPMAPPING, node, &setupmapping(fh, 0, PAGE, 0));
    assert_eq!(r.error, -libc::EINVAL, "{r:?}");
}

/// The guest maps only a container rootfs's files through the DAX window
/// (a volume may shrink under it from the host). With per-file DAX
/// negotiated, an entry inside `<cid>/rootfs` carries FUSE_ATTR_DAX; one
/// in a volume (`<cid>/mounts/<n>`), at the top or of a directory does not.
#[test]
fn only_rootfs_files_may_be_mapped() {
    const FLAGS: usize = 40 + 84; // fuse_entry_out.attr.flags
    const DAX: u32 = 1 << 1; // FUSE_ATTR_DAX
    let dir = temp_dir("daxscope");
    std::fs::create_dir_all(dir.join("c1/rootfs/bin")).unwrap();
    std::fs::create_dir_all(dir.join("c1/mounts/0")).unwrap();
    std::fs::write(dir.join("c1/rootfs/bin/sh"), b"x").unwrap();
    std::fs::write(dir.join("c1/mounts/0/app.log"), b"x").unwrap();
    std::fs::write(dir.join("top.txt"), b"x").unwrap();
    let mem = guest_memory();
    let mut d = Driver::start(&mem, &dir);
    // fuse_init_in: 7.31, 128 KiB readahead, INIT_EXT; flags2:
    // FUSE_HAS_INODE_DAX (bit 33).
    let mut args = Vec::new();
    for v in [7u32, 31, 128 << 10, 0x4000_0000, 2] {
        args.extend_from_slice(&v.to_le_bytes());
    }
    args.extend_from_slice(&[0; 44]);
    let r = d.call(OP_INIT, 0, &args);
    assert_eq!(r.error, 0, "{r:?}");
    // fuse_init_out: flags (INIT_EXT, so the guest reads flags2) at 12,
    // flags2 (FUSE_HAS_INODE_DAX) at 32.
    assert_ne!(r.u32_at(12) & 0x4000_0000, 0, "INIT_EXT");
    assert_ne!(r.u32_at(32) & 2, 0, "FUSE_HAS_INODE_DAX");
    let flags = |r: &Reply| {
        assert_eq!(r.error, 0, "{r:?}");
        r.u32_at(FLAGS) & DAX
    };
    let c1 = d.lookup_ok(ROOT, "c1");
    let rootfs = d.lookup(c1, "rootfs");
    assert_eq!(flags(&rootfs), 0, "a directory");
    let bin = d.lookup_ok(rootfs.u64_at(ENTRY_NODEID), "bin");
    assert_eq!(flags(&d.lookup(bin, "sh")), DAX, "a rootfs file");
    let mounts = d.lookup_ok(c1, "mounts");
    let vol = d.lookup_ok(mounts, "0");
    assert_eq!(flags(&d.lookup(vol, "app.log")), 0, "a volume file");
    assert_eq!(
        flags(&d.lookup(ROOT, "top.txt")),
        0,
        "outside any container"
    );
}
