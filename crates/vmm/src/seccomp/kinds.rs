//! The vCPU, API and small helper threads.

use super::ioctls::*;
use super::rule::{allow, with, Arg, Rule};

/// A vCPU: KVM_RUN and the exits it handles (port and MMIO I/O on the
/// device buses, which activate and reset devices), and saving its own
/// state for a snapshot.
pub const VCPU: &[Rule] = &[
    // KVM_RUN; registers for the profiler and error reports; the state a
    // snapshot saves (each vCPU saves its own while parked).
    with(
        "ioctl",
        libc::SYS_ioctl,
        Arg::Ioctl {
            kvm: false,
            requests: &[
                KVM_RUN,
                KVM_GET_REGS,
                KVM_GET_SREGS,
                KVM_TRANSLATE,
                KVM_GET_MSRS,
                KVM_GET_MP_STATE,
                KVM_GET_XSAVE,
                KVM_GET_XSAVE2,
                KVM_GET_XCRS,
                KVM_GET_DEBUGREGS,
                KVM_GET_LAPIC,
                KVM_GET_VCPU_EVENTS,
            ],
        },
    ),
    // A device activated by the driver (a DRIVER_OK write) creates its
    // worker's epoll and eventfds here; the worker thread itself comes
    // from the launcher.
    allow("eventfd2", libc::SYS_eventfd2),
    allow("epoll_create1", libc::SYS_epoll_create1),
    allow("epoll_ctl", libc::SYS_epoll_ctl),
    // EventFd::try_clone.
    allow("dup", libc::SYS_dup),
    allow("fcntl", libc::SYS_fcntl),
    // Draining eventfds on device reset.
    allow("read", libc::SYS_read),
];

/// Open flags of a snapshot: new files and directories in the target.
const SNAPSHOT_OPEN_FLAGS: u64 = (libc::O_WRONLY
    | libc::O_RDWR
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_LARGEFILE
    | libc::O_CLOEXEC) as u64;

/// The control socket: the accepting thread and one thread per
/// connection (same list). `snapshot` writes a template from here.
pub const API: &[Rule] = &[
    // The listener; per-connection reads and writes.
    allow("accept4", libc::SYS_accept4),
    allow("read", libc::SYS_read),
    allow("recvfrom", libc::SYS_recvfrom),
    allow("sendto", libc::SYS_sendto),
    // Read/write timeouts of a connection.
    allow("setsockopt", libc::SYS_setsockopt),
    // UnixStream::try_clone.
    allow("fcntl", libc::SYS_fcntl),
    // Closing a connection.
    allow("shutdown", libc::SYS_shutdown),
    // snapshot: the VM's interrupt controllers, PIT and clock.
    with(
        "ioctl",
        libc::SYS_ioctl,
        Arg::Ioctl {
            kvm: false,
            requests: &[KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK],
        },
    ),
    // snapshot: the template directory and its files.
    with(
        "openat",
        libc::SYS_openat,
        Arg::OpenFlags(SNAPSHOT_OPEN_FLAGS),
    ),
    allow("mkdirat", libc::SYS_mkdirat),
    allow("mkdir", libc::SYS_mkdir),
    allow("getdents64", libc::SYS_getdents64),
    allow("rename", libc::SYS_rename),
    allow("renameat", libc::SYS_renameat),
    allow("renameat2", libc::SYS_renameat2),
    allow("unlinkat", libc::SYS_unlinkat),
    allow("fstat", libc::SYS_fstat),
    allow("statx", libc::SYS_statx),
    allow("newfstatat", libc::SYS_newfstatat),
    // snapshot: the kernel's and initrd's canonical paths (realpath).
    allow("readlink", libc::SYS_readlink),
    allow("readlinkat", libc::SYS_readlinkat),
    // snapshot: guest memory (sparse: SEEK_DATA/SEEK_HOLE) and digests.
    allow("lseek", libc::SYS_lseek),
    allow("pread64", libc::SYS_pread64),
    allow("pwrite64", libc::SYS_pwrite64),
    allow("ftruncate", libc::SYS_ftruncate),
    allow("fsync", libc::SYS_fsync),
    allow("fdatasync", libc::SYS_fdatasync),
    allow("copy_file_range", libc::SYS_copy_file_range),
    allow("msync", libc::SYS_msync),
];

/// The signal thread: sigwait for SIGTERM/SIGINT, then an exit event.
pub const SIGNALS: &[Rule] = &[
    // sigwait.
    allow("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
];

/// The owner-watch thread: a blocking read of the lifeline pipe, then
/// exit_group (common).
pub const OWNER: &[Rule] = &[
    // The lifeline pipe.
    allow("read", libc::SYS_read),
];

/// The profiler's ticker: sleeps, kicks the vCPUs (tgkill, common) and
/// flushes samples (write, common).
pub const PROFILE: &[Rule] = &[];
