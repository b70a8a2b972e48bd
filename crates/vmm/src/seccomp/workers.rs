//! The device worker threads (one per active virtio device).

use super::ioctls::FIONBIO;
use super::rule::{allow, with, Arg, Rule};

/// Calls every worker's event loop makes.
const LOOP: &[Rule] = &[
    // The worker's epoll of queue eventfds and its kill eventfd.
    allow("epoll_wait", libc::SYS_epoll_wait),
    allow("epoll_pwait", libc::SYS_epoll_pwait),
    // Draining eventfds.
    allow("read", libc::SYS_read),
];

/// virtio-vsock: the hybrid vsock muxer on Unix sockets in the run dir.
pub const VSOCK: &[Rule] = &[
    // Host connections on the listener; guest connections to
    // `<uds>_<port>`: Unix sockets only.
    allow("accept4", libc::SYS_accept4),
    with(
        "socket",
        libc::SYS_socket,
        Arg::OneOf(0, &[libc::AF_UNIX as u64]),
    ),
    allow("connect", libc::SYS_connect),
    // Connection data (a wrapped ring buffer goes out as two slices).
    allow("recvfrom", libc::SYS_recvfrom),
    allow("sendto", libc::SYS_sendto),
    allow("writev", libc::SYS_writev),
    allow("shutdown", libc::SYS_shutdown),
    allow("getsockopt", libc::SYS_getsockopt),
    // Connections are non-blocking (set_nonblocking).
    with(
        "ioctl",
        libc::SYS_ioctl,
        Arg::Ioctl {
            kvm: false,
            requests: &[FIONBIO],
        },
    ),
    allow("fcntl", libc::SYS_fcntl),
    // Adding and removing connections from the epoll.
    allow("epoll_ctl", libc::SYS_epoll_ctl),
];

/// virtio-net: frames between the queues and the tap.
pub const NET: &[Rule] = &[
    // Frames from and to the tap (with the virtio-net header).
    allow("readv", libc::SYS_readv),
    allow("writev", libc::SYS_writev),
    // Interest in tap readiness changes with the rx queue.
    allow("epoll_ctl", libc::SYS_epoll_ctl),
    // The worker's tap and eventfd clones and their flags (seen in the
    // audit log of a `make test` run in log mode).
    allow("fcntl", libc::SYS_fcntl),
];

/// virtio-fs: the passthrough file system acting for guest users on the
/// share. Paths are confined by the jail (only the share is mounted) and
/// fuse-backend-rs (no `..` above the root); the open flags are the
/// guest's, so `openat` is not narrowed beyond that.
pub const FS: &[Rule] = &[
    // The worker's own root, cwd and umask (`unshare(CLONE_FS)`), and
    // nothing else may be unshared.
    with(
        "unshare",
        libc::SYS_unshare,
        Arg::OneOf(0, &[libc::CLONE_FS as u64]),
    ),
    allow("openat", libc::SYS_openat),
    allow("pread64", libc::SYS_pread64),
    allow("pwrite64", libc::SYS_pwrite64),
    allow("preadv", libc::SYS_preadv),
    allow("pwritev", libc::SYS_pwritev),
    allow("preadv2", libc::SYS_preadv2),
    allow("pwritev2", libc::SYS_pwritev2),
    allow("readv", libc::SYS_readv),
    allow("writev", libc::SYS_writev),
    allow("lseek", libc::SYS_lseek),
    allow("statx", libc::SYS_statx),
    allow("newfstatat", libc::SYS_newfstatat),
    allow("fstat", libc::SYS_fstat),
    allow("fstatfs", libc::SYS_fstatfs),
    allow("getdents64", libc::SYS_getdents64),
    allow("readlinkat", libc::SYS_readlinkat),
    allow("mkdirat", libc::SYS_mkdirat),
    // Regular files and fifos only: the fs layer refuses device nodes.
    allow("mknodat", libc::SYS_mknodat),
    allow("unlinkat", libc::SYS_unlinkat),
    allow("renameat", libc::SYS_renameat),
    allow("renameat2", libc::SYS_renameat2),
    allow("linkat", libc::SYS_linkat),
    allow("symlinkat", libc::SYS_symlinkat),
    allow("fchmod", libc::SYS_fchmod),
    allow("fchmodat", libc::SYS_fchmodat),
    allow("fchown", libc::SYS_fchown),
    allow("fchownat", libc::SYS_fchownat),
    allow("utimensat", libc::SYS_utimensat),
    allow("ftruncate", libc::SYS_ftruncate),
    allow("fallocate", libc::SYS_fallocate),
    allow("fsync", libc::SYS_fsync),
    allow("fdatasync", libc::SYS_fdatasync),
    allow("copy_file_range", libc::SYS_copy_file_range),
    allow("flock", libc::SYS_flock),
    allow("fcntl", libc::SYS_fcntl),
    allow("dup", libc::SYS_dup),
    // Extended attributes (through /proc/self/fd/N for O_PATH inodes).
    allow("getxattr", libc::SYS_getxattr),
    allow("fgetxattr", libc::SYS_fgetxattr),
    allow("setxattr", libc::SYS_setxattr),
    allow("fsetxattr", libc::SYS_fsetxattr),
    allow("listxattr", libc::SYS_listxattr),
    allow("flistxattr", libc::SYS_flistxattr),
    allow("removexattr", libc::SYS_removexattr),
    allow("fremovexattr", libc::SYS_fremovexattr),
    // Calls of the previous process-wide list kept for the passthrough's
    // less common paths (statfs, hints, l*xattr).
    allow("statfs", libc::SYS_statfs),
    allow("fadvise64", libc::SYS_fadvise64),
    allow("sync_file_range", libc::SYS_sync_file_range),
    allow("sendfile", libc::SYS_sendfile),
    allow("lgetxattr", libc::SYS_lgetxattr),
    allow("lsetxattr", libc::SYS_lsetxattr),
    allow("llistxattr", libc::SYS_llistxattr),
    allow("lremovexattr", libc::SYS_lremovexattr),
    allow("getcwd", libc::SYS_getcwd),
    allow("fchdir", libc::SYS_fchdir),
    allow("umask", libc::SYS_umask),
    // Acting as the guest's caller: per-thread uid/gid switches
    // (ScopedUid/ScopedGid) and the capability juggling of killpriv.
    allow("setresuid", libc::SYS_setresuid),
    allow("setresgid", libc::SYS_setresgid),
    allow("setfsuid", libc::SYS_setfsuid),
    allow("setfsgid", libc::SYS_setfsgid),
    allow("getuid", libc::SYS_getuid),
    allow("geteuid", libc::SYS_geteuid),
    allow("getgid", libc::SYS_getgid),
    allow("getegid", libc::SYS_getegid),
    allow("capget", libc::SYS_capget),
    allow("capset", libc::SYS_capset),
];

/// The worker kinds' lists with the event loop's.
pub fn with_loop(list: &'static [Rule]) -> [&'static [Rule]; 2] {
    [LOOP, list]
}
