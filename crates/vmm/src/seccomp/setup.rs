//! The main thread: setup (boot or restore) after the jail, then the
//! wait for the first exit event and the cleanup. It never runs guest
//! code or serves a device; it reads the kernel, initrd and a template.

use super::ioctls::{FIONBIO, TCGETS, TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};
use super::rule::{allow, with, Arg, Rule};

/// Open flags of the main thread: the kernel, initrd and template (read),
/// the serial log (create, append), the profile output (create,
/// truncate), /dev/net/tun (read-write). No O_PATH, O_TMPFILE, O_DIRECT.
const OPEN_FLAGS: u64 = (libc::O_WRONLY
    | libc::O_RDWR
    | libc::O_CREAT
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_NOCTTY
    | libc::O_DIRECTORY
    | libc::O_LARGEFILE
    | libc::O_CLOEXEC) as u64;

pub const MAIN: &[Rule] = &[
    // Kernel, initrd, template files, serial log, profile output.
    with("openat", libc::SYS_openat, Arg::OpenFlags(OPEN_FLAGS)),
    // Reading the kernel, initrd, template state and memory checks.
    allow("read", libc::SYS_read),
    allow("pread64", libc::SYS_pread64),
    allow("lseek", libc::SYS_lseek),
    // File sizes and identities (template kernel/initrd checks).
    allow("fstat", libc::SYS_fstat),
    allow("statx", libc::SYS_statx),
    allow("newfstatat", libc::SYS_newfstatat),
    // canonicalize: a share's root, the kernel and initrd a template
    // names (realpath reads each link).
    allow("readlink", libc::SYS_readlink),
    allow("readlinkat", libc::SYS_readlinkat),
    // Guest RAM: a memfd of the VM's size.
    allow("memfd_create", libc::SYS_memfd_create),
    allow("ftruncate", libc::SYS_ftruncate),
    // Every KVM request of setup and restore (create the VM and vCPUs,
    // memory slots, irqfds, ioeventfds, CPUID, registers, restored
    // state), the taps' setup (checked or created by name), sockets
    // made non-blocking, and the log writer's terminal check. The vCPU
    // and API threads get exact lists; setup's is the KVMIO type.
    with(
        "ioctl",
        libc::SYS_ioctl,
        Arg::Ioctl {
            kvm: true,
            requests: &[
                TUNSETIFF,
                TUNGETIFF,
                TUNSETOFFLOAD,
                TUNSETVNETHDRSZ,
                FIONBIO,
                TCGETS,
            ],
        },
    ),
    // irqfds, ioeventfds, the serial irq.
    allow("eventfd2", libc::SYS_eventfd2),
    // Restored devices start their workers' epolls here.
    allow("epoll_create1", libc::SYS_epoll_create1),
    allow("epoll_ctl", libc::SYS_epoll_ctl),
    // The vsock and API listening sockets: Unix only.
    with(
        "socket",
        libc::SYS_socket,
        Arg::OneOf(0, &[libc::AF_UNIX as u64]),
    ),
    allow("bind", libc::SYS_bind),
    // The sockets are made 0600 between bind and listen
    // (`unix_socket::bind_private`).
    allow("fchmodat", libc::SYS_fchmodat),
    allow("listen", libc::SYS_listen),
    allow("getsockname", libc::SYS_getsockname),
    // Cleanup removes the sockets at exit (listing the directory for
    // the vsock port sockets).
    allow("getdents64", libc::SYS_getdents64),
    allow("unlink", libc::SYS_unlink),
    allow("unlinkat", libc::SYS_unlinkat),
    // try_clone of eventfds and sockets; O_NONBLOCK.
    allow("fcntl", libc::SYS_fcntl),
    allow("dup", libc::SYS_dup),
    // virtio-fs raises its RLIMIT_NOFILE soft limit.
    allow("prlimit64", libc::SYS_prlimit64),
    // The vCPU kick handler; blocking SIGTERM/SIGINT.
    allow("rt_sigaction", libc::SYS_rt_sigaction),
    // Writing the serial log when flushing.
    allow("writev", libc::SYS_writev),
    allow("fsync", libc::SYS_fsync),
];
